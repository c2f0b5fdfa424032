import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pnp_stable.theory import (
    Certificate,
    averagedness_defect,
    compose_averagedness,
    gradient_step_averagedness,
    relaxation_averagedness,
    relaxation_for_target,
)

DIM = 6


def _averaged_matrix(alpha: float, seed: int) -> torch.Tensor:
    """(1 − α)I + αQ with Q orthogonal (‖Q‖ = 1): exactly α-averaged."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=g, dtype=torch.float64))
    return (1 - alpha) * torch.eye(DIM, dtype=torch.float64) + alpha * q


def _smallest_alpha(T: torch.Tensor) -> float:
    """Smallest α with (T − (1 − α)I)/α non-expansive, by bisection on the spectral norm."""
    eye = torch.eye(DIM, dtype=torch.float64)
    low, high = 1e-9, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if torch.linalg.matrix_norm((T - (1 - mid) * eye) / mid, ord=2) <= 1 + 1e-12:
            high = mid
        else:
            low = mid
    return high


alphas = st.floats(min_value=0.05, max_value=0.95)


@settings(max_examples=40, deadline=None)
@given(st.lists(alphas, min_size=1, max_size=5), st.integers(0, 10_000))
def test_composition_rule_bounds_the_true_averagedness(alpha_list, seed):
    T = torch.eye(DIM, dtype=torch.float64)
    for i, a in enumerate(alpha_list):
        T = _averaged_matrix(a, seed + i) @ T
    certified = compose_averagedness(alpha_list)
    assert _smallest_alpha(T) <= certified + 1e-9
    # inequality (A) holds with the composed α on random pairs
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(2, DIM, generator=g, dtype=torch.float64)
    d = x - y
    defect = averagedness_defect(d.dot(d), (T @ d).dot(T @ d), (d - T @ d).dot(d - T @ d), certified)
    assert defect <= 1e-9


@settings(max_examples=30, deadline=None)
@given(alphas, st.integers(0, 10_000))
def test_single_averaged_matrix_is_exactly_alpha(alpha, seed):
    assert _smallest_alpha(_averaged_matrix(alpha, seed)) == pytest.approx(alpha, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(alphas, st.floats(0.05, 0.95), st.integers(0, 10_000))
def test_relaxation_rules(alpha, target, seed):
    theta = relaxation_for_target(alpha, target)
    T = _averaged_matrix(alpha, seed)
    eye = torch.eye(DIM, dtype=torch.float64)
    relaxed = (1 - theta) * eye + theta * T
    assert _smallest_alpha(relaxed) <= target + 1e-9
    assert relaxation_averagedness(alpha, theta) == pytest.approx(target)


def test_hand_computed_values():
    assert compose_averagedness([0.5, 0.5]) == pytest.approx(2 / 3)
    assert compose_averagedness([0.5]) == pytest.approx(0.5)
    assert compose_averagedness([0.5, 0.0]) == pytest.approx(0.5)
    assert gradient_step_averagedness(1.0, 1.0) == pytest.approx(0.5)
    assert relaxation_for_target(0.9, 0.5) == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="2/L"):
        gradient_step_averagedness(2.0, 1.0)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        compose_averagedness([1.0])


def test_gradient_step_is_tau_L_over_2_averaged():
    eigen = torch.tensor([0.0, 0.3, 1.0, 2.0], dtype=torch.float64)  # Hessian of a convex quadratic, L = 2
    tau = 0.7
    step = torch.diag(1 - tau * eigen)
    global DIM
    saved, DIM = DIM, 4
    try:
        assert _smallest_alpha(step) <= gradient_step_averagedness(tau, 2.0) + 1e-9
    finally:
        DIM = saved


def test_certificate_json_roundtrip_and_relaxation():
    c = Certificate(lipschitz=1.0, alpha=0.9, method="test")
    assert Certificate.from_json(c.to_json()) == c
    assert c.relaxed(0.5 / 0.9).alpha == pytest.approx(0.5)
    with pytest.raises(ValueError, match="corrupt"):
        Certificate.from_json('{"lipschitz": 1}')
    none = Certificate.none("no guarantee")
    assert none.alpha is None and not none.guaranteed and not none.nonexpansive
    assert "Lipschitz" in str(c) and math.isfinite(c.lipschitz)


def test_printed_bounds_are_rounded_outward():
    from pnp_stable.theory import Certificate, format_bound

    assert format_bound(1.0000004) == "1.00001" and format_bound(0.95118, 4) == "0.9512"
    assert format_bound(0.123456789, 4, up=False) == "0.1234" and format_bound(2.0) in ("2", "2.00001")
    assert float(format_bound(1 + 1e-12)) >= 1 + 1e-12
    assert "Lipschitz ≤ 1.00001" in str(Certificate(lipschitz=1.0000004, alpha=None, guaranteed=True, method="test"))


def test_an_averaged_certificate_without_a_lipschitz_bound_is_non_expansive():
    """(A) implies ‖Dx − Dy‖ ≤ ‖x − y‖, so α alone gives the bound 1 (relaxing it used to compute θ·None)."""
    certificate = Certificate(lipschitz=None, alpha=0.9, method="averaged, no separate bound")
    assert certificate.lipschitz == 1.0 and certificate.nonexpansive
    relaxed = certificate.relaxed(0.5)
    assert relaxed.alpha == pytest.approx(0.45) and relaxed.lipschitz == 1.0
