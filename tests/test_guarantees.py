"""#21 §1: a certified β only on guaranteed ingredients (‖A‖, adjoint, prox, denoiser certificate)."""

import math
import types

import deepinv as dinv
import pytest
import torch

import pnp_stable as ps
from pnp_stable import _accuracy as accuracy
from pnp_stable._accuracy import AccuracyRecord
from pnp_stable.denoisers import AveragedDenoiser, TiledDenoiser, natural_starts
from pnp_stable.operators import L2Fidelity
from pnp_stable.solvers import DouglasRachford, run_scheme
from pnp_stable.theory import Certificate
from test_physics import _dense

SIZE = 24


@pytest.fixture(scope="module")
def certified():
    torch.manual_seed(0)
    return AveragedDenoiser(channels=1, width=6, depth=2).eval()


def _bump(size=128):
    """A = I + 0.05·uuᵀ with u the normalised constant image: ‖A‖ = 1.05, but a random start sees u only weakly."""
    u = torch.ones(1, 1, size, size) / size

    def A(z):
        return z + 0.05 * (z * u).sum((1, 2, 3), keepdim=True) * u

    return ps.custom_operator(A, A, img_size=(1, size, size))


def test_power_estimate_does_not_stop_below_a_hidden_top_eigenvalue():
    norm = ps.operator_norm(_bump(), (1, 128, 128))
    assert norm.kind == "estimate" and not norm.guaranteed
    assert norm.value == pytest.approx(1.05, rel=1e-5)


@pytest.mark.parametrize("boundary", ["reflect", "replicate", "zeros", "valid"])
@pytest.mark.parametrize("kernel", ["motion", "signed"])
def test_blur_norm_is_a_guaranteed_upper_bound(boundary, kernel):
    k = ps.motion_kernel(3, size=7)
    if kernel == "signed":  # a sharpening-like kernel: the bound uses |k|, still above ‖A‖
        k = 2 * k - ps.uniform_kernel(7)
    op = dinv.physics.Blur(filter=k[None, None], padding="constant" if boundary == "zeros" else boundary)
    exact = torch.linalg.matrix_norm(_dense(op, (1, SIZE, SIZE)), ord=2).item()
    norm = ps.operator_norm(op, (1, SIZE, SIZE))
    assert norm.kind == "upper bound" and norm.guaranteed
    assert norm.value >= exact
    if kernel == "motion":
        assert norm.value <= exact * 1.02


def _fb_problem(op, size):
    x = natural_starts(1, (1, size, size), noise=0.0, seed=1)
    y = op.A(x) + 0.02 * torch.randn(op.A(x).shape, generator=torch.Generator().manual_seed(0))
    return x, y


def test_fb_on_an_estimated_norm_is_estimated_until_a_bound_is_given(certified):
    op = _bump(32)
    _, y = _fb_problem(op, 32)
    result = ps.solve(op, y, certified, 0.02, solver="fb", max_iter=5)
    assert result.beta is None and result.estimated_beta is not None
    assert "estimated, not certified" in result.beta_basis and "operator_norm=" in result.beta_basis
    assert "NOT certified" in result.summary() and "certified β =" not in result.summary()
    given = ps.solve(op, y, certified, 0.02, solver="fb", max_iter=5, operator_norm=1.05)
    assert given.beta is not None and given.estimated_beta is None
    assert given.trusted == ["bound ‖A‖ ≤ 1.05"] and "resting on the caller's bound ‖A‖ ≤ 1.05 (not verified)" in given.summary()
    assert given.step < result.step  # τ = 1.9/L with the larger, proved L
    with pytest.raises(ValueError, match="operator_norm"):
        ps.solve(op, y, certified, 0.02, solver="fb", operator_norm=float("nan"))


def test_fb_on_a_reflect_blur_is_certified(certified):
    op = ps.blur(ps.motion_kernel(2, size=7), boundary="reflect")
    _, y = _fb_problem(op, SIZE)
    result = ps.solve(op, y, certified, 0.02, solver="fb", max_iter=5)
    assert result.beta is not None and "certified β" in result.summary()


def test_a_wrong_adjoint_voids_the_certificate(certified):
    weights = torch.linspace(0.2, 1.0, SIZE * SIZE).reshape(1, 1, SIZE, SIZE)

    def A(z):  # not symmetric: a weighted shift
        return weights * torch.roll(z, 1, -1)

    def A_adjoint(z):
        return torch.roll(weights * z, -1, -1)

    wrong = dinv.physics.LinearPhysics(A=A, A_adjoint=A)
    slightly_wrong = dinv.physics.LinearPhysics(A=A, A_adjoint=lambda z: 1.001 * A_adjoint(z))  # error 1e-3
    assert ps.adjoint_test(wrong, (1, SIZE, SIZE)) > 0.1
    _, y = _fb_problem(wrong, SIZE)
    for op, solver in ((wrong, "fb"), (slightly_wrong, "fb"), (slightly_wrong, "drs")):
        with pytest.warns(UserWarning, match="adjoint test"):
            result = ps.solve(op, y, certified, 0.02, solver=solver, max_iter=5, operator_norm=1.0)
        assert result.beta is None and result.estimated_beta is None and "adjoint" in result.beta_basis
    right = dinv.physics.LinearPhysics(A=A, A_adjoint=A_adjoint)
    assert ps.solve(right, y, certified, 0.02, solver="drs", max_iter=5, operator_norm=1.0).beta == 0.5


def test_an_inexact_prox_is_reported_not_certified(certified):
    op = ps.blur(ps.motion_kernel(2, size=7), boundary="reflect")
    x, y = _fb_problem(op, SIZE)
    sloppy = DouglasRachford(L2Fidelity(op, y, 0.02, cg_max_iter=1), certified, 0.03, 0.03**2 * 1e4)
    result = run_scheme(sloppy, op.A_adjoint(y), max_iter=5)
    assert result.beta is None and result.estimated_beta == 0.5
    assert "conjugate gradients" in result.beta_basis and "residual" in result.beta_basis
    accurate = ps.solve(op, y, certified, 0.02, solver="drs", max_iter=5)  # CG prox that meets its tolerance
    assert accurate.beta == 0.5


def test_an_unguaranteed_denoiser_certificate_is_estimated():
    class Approximate:
        certificate = Certificate(lipschitz=1.0, alpha=0.5, method="iterative prox stopped early", guaranteed=False)

        def __call__(self, x, sigma):
            return 0.5 * x

    op, _, _ = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, SIZE, SIZE)), None, None
    y = op.A(natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=1))
    result = ps.solve(op, y, Approximate(), 0.02, solver="hqs", max_iter=3)
    assert result.beta is None and result.estimated_beta is not None and "not guaranteed" in result.beta_basis


def test_a_callers_certificate_is_trusted_and_said_to_be():
    class Halving:
        certificate = Certificate(lipschitz=0.5, alpha=0.25, method="proved by the caller")

        def __call__(self, x, sigma):
            return 0.5 * x

    op = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, SIZE, SIZE))
    y = op.A(natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=1))
    result = ps.solve(op, y, Halving(), 0.02, solver="fb", max_iter=3)
    assert result.beta is not None
    assert any("caller's Halving" in note and "not verified" in note for note in result.notes)
    beta_line = result.summary().splitlines()[0]  # the β line itself says what it rests on, not only a note below
    assert result.trusted == ["Halving certificate"]
    assert "certified β" in beta_line and "resting on the caller's Halving certificate (not verified)" in beta_line
    relaxed = ps.solve(op, y, Halving(), 0.02, solver="fb", max_iter=3, relaxation=0.9)
    assert relaxed.trusted == ["Halving certificate"]
    ours = ps.solve(op, y, lambda x, sigma: 0.5 * x, 0.02, solver="fb", max_iter=3)
    assert ours.trusted == []


def test_a_certificate_attribute_of_another_type_is_named_with_how_to_state_one():
    class Halving:
        certificate = 0.5  # meant as α

        def __call__(self, x, sigma):
            return 0.5 * x

    op = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, SIZE, SIZE))
    result = ps.solve(op, op.A(natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=1)), Halving(), 0.02, max_iter=2)
    assert result.beta is None
    assert "Halving.certificate is float 0.5, not a pnp_stable Certificate" in result.beta_basis
    assert "ps.Certificate(lipschitz=1.0, alpha=0.5" in result.beta_basis


def test_a_callers_certificate_stays_trusted_inside_every_wrapper():
    class Halving(dinv.models.Denoiser):
        certificate = Certificate(lipschitz=0.5, alpha=0.25, method="proved by the caller")
        channels = 1

        def forward(self, x, sigma=None):
            return 0.5 * x

    op = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, SIZE, SIZE))
    y = op.A(natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=1))
    wrapped = {"self-ensemble": ps.SelfEnsemble(Halving(), 2),
               "tiles": TiledDenoiser(Halving(), tile=SIZE // 2, overlap=2),
               "switch": ps.NoiseLevelSwitch([0.05], [Halving(), AveragedDenoiser(channels=1, width=4, depth=2)])}
    for name, denoiser in wrapped.items():
        for solver in ("fb", "hqs"):
            result = ps.solve(op, y, denoiser, 0.02, solver=solver, max_iter=2)
            assert result.beta is not None, (name, solver)
            assert result.trusted == ["Halving certificate"], (name, solver, result.trusted)
            assert "resting on the caller's Halving certificate (not verified)" in result.summary().splitlines()[0]
        assert "not verified" in str(denoiser.certificate), name
    own = ps.SelfEnsemble(AveragedDenoiser(channels=1, width=4, depth=2), 2)
    assert ps.solve(op, y, own, 0.02, solver="fb", max_iter=2).trusted == []
    assert "trusted" not in own.certificate.to_json()  # stored certificates keep their format
    stored = Halving.certificate.trusting("Halving certificate")
    assert Certificate.from_json(stored.to_json()) == stored


def test_fista_uses_its_own_step_and_converges_on_a_motion_blur(certified):
    op = ps.blur(ps.motion_kernel(4, size=9), img_size=(1, 32, 32))
    x, y = _fb_problem(op, 32)
    fidelity = L2Fidelity(op, y, 0.02)
    result = ps.solve(op, y, certified, 0.02, solver="fista", tol=1e-4)
    assert result.step == pytest.approx(1 / fidelity.lipschitz)
    assert result.status == ["converged"] and torch.isfinite(result.estimate).all()
    with pytest.raises(ValueError, match="1/L"):
        ps.solve(op, y, certified, 0.02, solver="fista", step=1.9 / fidelity.lipschitz)


@pytest.mark.parametrize("max_iter", [1, 2, 3])
def test_short_runs_report_no_false_rate_violations(certified, max_iter):
    op = ps.blur(ps.gaussian_kernel(1.2), img_size=(1, SIZE, SIZE))
    _, y = _fb_problem(op, SIZE)
    result = ps.solve(op, y, certified, 0.02, solver="fb", step=1e-9, max_iter=max_iter)
    assert result.violations == [] and "rate bound not checked" in result.verdict


class _Halving:
    """x ↦ x/2 (firmly non-expansive), claimed to be computed only to an RMS error ``error`` per call."""

    def __init__(self, error):
        self.certificate = Certificate(lipschitz=1.0, alpha=0.5, method="an inner solve", tolerance=error)

    def __call__(self, x, sigma):
        return 0.5 * x


@pytest.mark.parametrize("solver", ["fb", "hqs", "drs"])
def test_a_run_converges_only_when_the_exact_map_is_within_tol(solver):
    """(r + e)/‖z‖ < tol, with e the evaluations' error bound: else the run stops 'accuracy-limited' and says so."""
    op = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, SIZE, SIZE), boundary="circular")
    y = op.A(natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=1))
    exact = ps.solve(op, y, _Halving(0.0), 0.02, solver=solver, max_iter=300, tol=1e-5, accelerate=False)
    sloppy = ps.solve(op, y, _Halving(1e-3), 0.02, solver=solver, max_iter=300, tol=1e-5, accelerate=False)
    assert exact.status == ["converged"] and sloppy.status == ["accuracy-limited"]
    assert sloppy.iterations == exact.iterations and torch.equal(sloppy.estimate, exact.estimate)
    assert sloppy.beta == exact.beta is not None  # β is the exact map's; only the stop is qualified
    note = next(note for note in sloppy.notes if note.startswith("accuracy-limited"))
    assert "RMS error ≤ 0.001" in note and "not by tol" in note and sloppy.history.violations == []
    assert "the denoiser keeps a fixed tolerance" in sloppy.summary()  # a caller's tolerance no run can lower
    assert "accuracy-limited" in sloppy.summary()


def test_the_prox_error_of_conjugate_gradients_counts_too(certified):
    op = ps.blur(ps.motion_kernel(2, size=7), boundary="reflect", img_size=(1, SIZE, SIZE))
    _, y = _fb_problem(op, SIZE)
    scheme = DouglasRachford(L2Fidelity(op, y, 0.02, cg_tol=1e-3), certified, 0.03, 0.03**2)
    scheme.step(op.A_adjoint(y), scheme.fidelity, None)
    error = scheme.evaluation_error(SIZE * SIZE)  # one bound per sample: the prox's own residual (DRS: factor 1)
    assert error.shape == (1,) and float(error) == pytest.approx(float(scheme.fidelity.prox_accuracy.last_absolute), rel=1e-3)
    assert float(error) > 0
    assert any("conjugate gradients" in source for source, _ in scheme.inexact_sources())
    result = ps.solve(op, y, certified, 0.02, solver="drs", max_iter=5)  # what β means with inexact evaluations
    assert result.beta is not None and "β is the exact map T's" in result.summary()
    assert "followed the summable schedule" in result.summary() and "conjugate gradients" in result.summary()
    closed_form = ps.solve(ps.blur(ps.motion_kernel(2, size=7), img_size=(1, SIZE, SIZE)), y, certified, 0.02,
                           solver="drs", max_iter=5)  # circular: an exact prox, no such note
    assert "inexact evaluations" not in closed_form.summary()


def _spied_cg_targets(fidelity, monkeypatch) -> list[float]:
    """The CG target of each of ``fidelity``'s prox calls, appended as they are made."""
    targets, target = [], fidelity.cg_target
    monkeypatch.setattr(fidelity, "cg_target", lambda dtype: targets.append(target(dtype)) or targets[-1])
    return targets


def test_a_long_run_lowers_the_cg_tolerance_along_a_summable_schedule(monkeypatch):
    """After K evaluations the k-th prox is solved to cg_tol·(K/k)² (Σ < ∞: the inexact DRS iteration converges);
    float32 meets that while it lies above its rounding (~3e-7), then only the convergence claim goes (β, the exact
    map's, stays: each call meets cg_tol and the checks add the error it reached); float64 meets it throughout."""
    monkeypatch.setattr(accuracy, "SUMMABLE_AFTER", 2)
    op = ps.blur(ps.motion_kernel(2, size=7), boundary="reflect")
    _, y = _fb_problem(op, SIZE)
    loose = L2Fidelity(op, y, 0.02, cg_tol=1e-4)
    targets = _spied_cg_targets(loose, monkeypatch)
    result = run_scheme(DouglasRachford(loose, _Halving(0.0), 0.03, 0.03**2), op.A_adjoint(y), max_iter=30, tol=1e-12)
    assert targets == pytest.approx([1e-4 * min(1, (2 / k) ** 2) for k in range(1, 31)])
    assert result.beta == 0.5 and "followed the summable schedule" in result.summary(), result.summary()
    assert loose.prox_accuracy.scale == 1.0  # restored after the run
    for dtype, kept in [(torch.float32, False), (torch.float64, True)]:
        op, y = op.to(dtype), y.to(dtype)  # deepinv's physics is a module: .to converts it in place
        scheme = DouglasRachford(L2Fidelity(op, y, 0.02, cg_tol=1e-6), _Halving(0.0), 0.03, 0.03**2)
        result = run_scheme(scheme, op.A_adjoint(y), max_iter=30, tol=1e-12)
        assert result.beta == 0.5 and ("followed the summable schedule" in result.summary()) == kept
        if not kept:
            assert "above the" in result.summary() and "not claimed" in result.summary() and "float64" in result.summary()


class _InnerProx(torch.nn.Module):
    """An exact map z/2 standing for an iterative prox that meets whatever tolerance is in force (``misses``: that
    reaches only its full tolerance), with the :class:`AccuracyRecord` a run schedules."""

    def __init__(self, misses: bool = False):
        super().__init__()
        self.accuracy, self.misses, self.in_force = AccuracyRecord(1e-3), misses, []

    @property
    def certificate(self):
        return Certificate(lipschitz=1.0, alpha=0.5, method="an inner solve", guaranteed=self.accuracy.accurate,
                           tolerance=self.accuracy.tolerance, scheduled=True)

    def forward(self, x, sigma):
        self.in_force.append(self.accuracy.current)
        self.accuracy.record(self.accuracy.tolerance if self.misses else self.accuracy.current)
        return 0.5 * x


def test_an_inner_prox_inside_a_wrapper_follows_the_schedule(monkeypatch):
    """The run finds the record through a self-ensemble, lowers its tolerance after K evaluations and counts the
    lower error bound in the monitor; a prox that cannot follow withdraws β."""
    monkeypatch.setattr(accuracy, "SUMMABLE_AFTER", 2)
    op = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, SIZE, SIZE))
    y = op.A(natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=1))
    inner = _InnerProx()
    scheme = DouglasRachford(L2Fidelity(op, y, 0.02), ps.SelfEnsemble(inner, transforms=2), 0.03, 0.03**2)
    assert scheme.accuracy_records() == [inner.accuracy]  # the circular blur's prox is closed-form: no CG record
    errors = []
    evaluation_error = scheme.evaluation_error
    monkeypatch.setattr(scheme, "evaluation_error", lambda numel: errors.append(evaluation_error(numel)) or errors[-1])
    result = run_scheme(scheme, op.A_adjoint(y), max_iter=6, tol=1e-12)
    assert inner.in_force[::2] == pytest.approx([1e-3 * min(1, (2 / k) ** 2) for k in range(1, 7)])
    assert errors == pytest.approx([1e-3 * min(1, (2 / k) ** 2) * SIZE for k in range(1, 7)])  # RMS·√numel
    assert result.beta == 0.5 and "converges to Fix T" in result.summary() and inner.accuracy.scale == 1.0
    stuck = _InnerProx(misses=True)
    scheme = DouglasRachford(L2Fidelity(op, y, 0.02), ps.SelfEnsemble(stuck, transforms=2), 0.03, 0.03**2)
    errors.clear()
    evaluation_error = scheme.evaluation_error
    monkeypatch.setattr(scheme, "evaluation_error", lambda numel: errors.append(evaluation_error(numel)) or errors[-1])
    result = run_scheme(scheme, op.A_adjoint(y), max_iter=6, tol=1e-12, accelerate=True)
    assert errors == pytest.approx([1e-3 * SIZE] * 6)  # the bound it reached, not the one it was asked for
    assert result.beta == 0.5 and "at evaluation 3 an inner solve reached 0.001" in result.summary()


def test_a_fixed_tolerance_inside_a_wrapper_is_not_scheduled():
    """A switch that mixes a scheduled inner prox with a caller's fixed-tolerance map, and an anchored tiling
    (whose cached offset keeps its first accuracy), keep their full tolerance: no schedule, no convergence claim."""
    op = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, SIZE, SIZE))
    y = op.A(natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=1))
    inner = _InnerProx()
    mixed = ps.NoiseLevelSwitch([0.01], [_FixedModule(), inner])
    anchored = TiledDenoiser(_InnerProx(), tile=16, overlap=4, anchor=torch.zeros(1, 1, SIZE, SIZE))
    for denoiser in (mixed, anchored):
        scheme = DouglasRachford(L2Fidelity(op, y, 0.02), denoiser, 0.005, 0.005**2)
        assert scheme.accuracy_records() == [] and scheme.inexact_sources()[0][1] is False
        result = run_scheme(scheme, op.A_adjoint(y), max_iter=4, tol=1e-12)
        assert "keeps a fixed tolerance" in result.summary()


class _FixedModule(torch.nn.Module):
    """A caller's module z/2 whose certificate states a fixed RMS tolerance."""

    certificate = Certificate(lipschitz=1.0, alpha=0.5, method="a caller's solve", tolerance=1e-3)

    def forward(self, x, sigma):
        return 0.5 * x


class _PerturbedInnerProx(_InnerProx):
    """z/2 returned with an error of exactly the RMS size its record reports (the tolerance in force, or the full
    one when ``misses``), in a random direction."""

    def __init__(self, misses: bool = False):
        super().__init__(misses)
        self.generator = torch.Generator().manual_seed(3)

    def forward(self, x, sigma):
        size = self.accuracy.tolerance if self.misses else self.accuracy.current
        self.accuracy.record(size)
        direction = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        return 0.5 * x + size * direction / direction.pow(2).mean().sqrt()


def test_an_anderson_run_with_summable_errors_converges_and_says_so(monkeypatch):
    """Anderson-accelerated DRS whose denoiser errs by exactly the bound it declares: along the summable schedule it
    ends at the exact iteration's fixed point (its summary claims convergence, proof in solvers.anderson); with the
    same errors held at the full tolerance it stalls orders of magnitude farther away and claims nothing."""
    monkeypatch.setattr(accuracy, "SUMMABLE_AFTER", 2)
    op = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, SIZE, SIZE))
    y = op.A(natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=1)).double()
    exact = run_scheme(DouglasRachford(L2Fidelity(op, y, 0.02), _FixedModule(), 0.03, 0.03**2), op.A_adjoint(y),
                       max_iter=400, tol=1e-14).governing
    distances = {}
    for misses in (False, True):
        scheme = DouglasRachford(L2Fidelity(op, y, 0.02), _PerturbedInnerProx(misses), 0.03, 0.03**2)
        result = run_scheme(scheme, op.A_adjoint(y), max_iter=400, tol=0.0, accelerate=True)
        distances[misses] = float((result.governing - exact).pow(2).mean().sqrt())
        summary = result.summary()
        claimed = "the inexact iteration itself converges to Fix T (safeguarded Anderson steps" in summary
        assert claimed is not misses and result.beta == 0.5
    assert distances[False] < 1e-7 and distances[True] > 1e-5


def test_the_rate_comparison_is_a_heuristic_not_a_violation():
    """T = (1 − 5e-4)I is 0.2-averaged (spectrum in [0.6, 1]); with a loose tol it stops far from z* = 0, where
    ‖z₀ − z_K‖ understates ‖z₀ − z*‖ and the rate comparison fails: that must not be reported as a violation."""
    from test_anderson import AffineScheme

    class NearIdentity(AffineScheme):
        def __init__(self):
            super().__init__(shape=(1, 1, 8, 8))
            self.m, self.b = torch.full_like(self.m, 1 - 5e-4), torch.zeros_like(self.b)

        def beta(self):
            return 0.2, "spectrum in [0.6, 1]"

    result = run_scheme(NearIdentity(), torch.ones(1, 1, 8, 8, dtype=torch.float64), max_iter=10, tol=1e-3)
    assert result.status == ["converged"] and result.violations == []
    assert result.history.rate_exceeded > 0 and "heuristic rate bound" in result.verdict


@pytest.mark.parametrize("angle", [0.01, 0.03])
def test_a_slow_rotation_claimed_averaged_is_caught_against_the_first_evaluation(angle):
    """A rotation is an isometry, averaged for no β < 1; turning slowly, its consecutive pairs hide in the rounding
    slack (defect ∝ θ⁴), but the pair (z_0, z_k) shows a defect ∝ θ²‖z_k − z_0‖²."""
    from test_anderson import AffineScheme

    class Rotation(AffineScheme):
        def step(self, z, fidelity, index):
            a, b = z[..., 0::2], z[..., 1::2]
            c, s = math.cos(angle), math.sin(angle)
            t = torch.stack((c * a - s * b, s * a + c * b), dim=-1).flatten(-2)
            return t, t

    start = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    result = run_scheme(Rotation(shape=(1, 1, 8, 8)), start, max_iter=300, tol=1e-7)
    assert result.violations and all("first evaluation" in v.check for v in result.violations), result.verdict


def test_a_denoiser_that_changes_the_shape_or_type_is_refused_with_what_it_returned():
    op = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, SIZE, SIZE))
    y = op.A(natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=1))
    for bad, match in ((lambda x, s: x[..., 1:, :], r"returned \(1, 1, 23, 24\)"), (lambda x, s: x.numpy(), "ndarray")):
        with pytest.raises(ValueError, match=match):
            ps.solve(op, y, bad, 0.02, max_iter=2)
    with pytest.raises(ValueError, match=r"load_denoiser\('averaged-sll-gray'\)"):
        ps.solve(op, y, "averaged-sll-gray", 0.02, max_iter=2)


def test_run_scheme_applies_the_denoiser_in_eval_mode_as_its_certificate_describes(certified):
    op = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, SIZE, SIZE))
    y = op.A(natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=1))
    seen = []
    certified.train()
    hook = certified.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    try:
        scheme = ps.solvers.ForwardBackward(L2Fidelity(op, y, 0.02), certified, 0.02, 1.0)
        run_scheme(scheme, op.A_adjoint(y), max_iter=3)
    finally:
        hook.remove()
    assert seen and not any(seen) and certified.training  # eval during the run, its own mode restored after


def test_inexact_evaluations_of_an_averaged_map_are_no_violations():
    """T z = b is firmly non-expansive; evaluated with errors of size ≤ e (alternating signs), consecutive residuals
    jump from 0 to 2e: within the allowance of two inexact evaluations, not a violation."""
    from pnp_stable.solvers.monitor import ConvergenceMonitor

    monitor = ConvergenceMonitor(1, beta=0.5)
    b, e = torch.ones(1, 1, 4, 4, dtype=torch.float64), 1e-3
    unit = torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    unit /= unit.norm()
    z, index = torch.zeros_like(b), torch.tensor([0])
    for k in range(40):
        z_next = b + (-1) ** k * e * unit
        monitor.observe(index, z, z_next, k, error=e)
        z = z_next
    assert monitor.history.violations == [], monitor.history.violations[:3]


def test_each_evaluations_own_error_bound_is_allowed_and_no_more():
    """T z = z/2 (β = ½) evaluated exactly except once, off by e = ‖z‖/2, which that evaluation declares: the computed
    residuals 2, 0, 1, ½, … are what the bounds admit (the exact residual grows by at most 2e across the inexact step),
    so no check fails; checks that allowed only the current evaluation's error flagged the step after it."""
    from pnp_stable.solvers.monitor import ConvergenceMonitor

    monitor = ConvergenceMonitor(1, beta=0.5)
    z, index = torch.ones(1, 1, 4, 4, dtype=torch.float64), torch.tensor([0])
    for k in range(8):
        exact = z / 2
        error = float(z.norm()) / 2 if k == 1 else 0.0
        z_next = exact + z / 2 if k == 1 else exact
        monitor.observe(index, z, z_next, k, error=error)
        z = z_next
    assert monitor.history.violations == [], monitor.history.violations[:3]
    drifting = ConvergenceMonitor(1, beta=None)  # the same errors leave a real growth beyond them visible
    z = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    for k in range(4):
        drifting.observe(index, z, 1.5 * z, k, error=1e-12)  # r grows by half each step: far beyond 2e
        z = 1.5 * z
    assert [v.check for v in drifting.history.violations] == ["monotone residual"] * 3


@pytest.mark.parametrize("accelerate", [False, True])
def test_a_networks_tiny_error_bound_keeps_every_check_on(accelerate):
    """A certificate's tolerance of 1e-12 (every AveragedDenoiser's) makes each evaluation inexact by ~1e-11: the
    monotone check must still run, plain and accelerated (it was switched off for accelerated inexact runs and
    reduced to consecutive pairs for plain ones, so a claimed-non-expansive 1.003·x went unflagged)."""

    class Expansive(torch.nn.Module):
        certificate = Certificate(lipschitz=1.0, alpha=0.5 if accelerate else None, method="claimed", tolerance=1e-12)

        def forward(self, x, sigma):
            return 1.003 * x

    y = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    result = ps.solve(dinv.physics.Denoising(), y, Expansive(), 0.01, solver="hqs", step=1e-12, max_iter=300, tol=0,
                      accelerate=accelerate)
    assert sum(v.check == "monotone residual" for v in result.violations) >= (3 if accelerate else 250)


class _BandScheme:
    """T̃ z = T z + δ_k with T z = z/2 + c, |δ_k| = e and alternating signs: the computed residual stays near 2e."""

    name, guaranteed, step_size = "band", True, 1.0

    def __init__(self, e):
        self.e, self.k, self.notes = e, 0, []
        self.c = torch.ones(1, 1, 4, 4, dtype=torch.float64)
        self.fidelity = types.SimpleNamespace(adjoint_error=0.0, subset=lambda index: self.fidelity)

    def init(self, x0):
        return x0

    def step(self, z, fidelity, index):
        self.k += 1
        t = 0.5 * z + self.c + (-1) ** self.k * self.e / 4  # 16 entries of e/4: ‖δ‖ = e
        return t, t

    def beta(self):
        return 0.5, "z/2 + c"

    def certificate_gaps(self):
        return []

    def evaluation_error(self, numel):
        return self.e


def test_a_residual_stuck_in_the_noise_of_its_evaluations_stops_accuracy_limited():
    z0 = 2 * torch.ones(1, 1, 4, 4, dtype=torch.float64)  # ‖z*‖ = 8
    result = run_scheme(_BandScheme(e=6e-3 * 8 * 0.5), z0, max_iter=500, tol=6e-3)
    assert result.status == ["accuracy-limited"] and result.iterations[0] < 50, (result.status, result.iterations)
    assert any(note.startswith("accuracy-limited") for note in result.notes)  # no inexact_sources: no crash


def test_a_prox_error_is_each_samples_own(certified):
    """A dark image beside a bright one: its prox error is its own, so its stop does not depend on the batch."""
    op = ps.blur(ps.motion_kernel(2, size=7), boundary="reflect", img_size=(1, SIZE, SIZE))
    bright = natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=1)
    y = op.A(torch.cat([bright, 0.05 * bright]))
    both = ps.solve(op, y, certified, 0.02, solver="drs", max_iter=300, accelerate=False)
    for b in range(2):
        alone = ps.solve(op, y[b : b + 1], certified, 0.02, solver="drs", max_iter=300, accelerate=False)
        assert (both.status[b], both.iterations[b]) == (alone.status[0], alone.iterations[0]), b


def test_a_callers_module_without_recorded_channels_is_not_judged_by_its_first_convolution():
    import deepinv as dinv

    class PerChannel(torch.nn.Module):  # a one-channel network applied to each channel: takes any channels
        def __init__(self):
            super().__init__()
            self.net = dinv.models.DnCNN(in_channels=1, out_channels=1, depth=2, nf=4, pretrained=None)

        def forward(self, x, sigma):
            return torch.cat([self.net(x[:, i : i + 1], sigma) for i in range(x.shape[1])], 1)

    op = ps.blur(ps.gaussian_kernel(1.0), img_size=(3, SIZE, SIZE))
    y = op.A(natural_starts(1, (3, SIZE, SIZE), noise=0.0, seed=1))
    assert ps.solve(op, y, PerChannel(), 0.02, max_iter=2).estimate.shape == (1, 3, SIZE, SIZE)


def test_processes_records_join_into_the_record_of_all_their_calls():
    """Two processes' copies of a record, equal for 3 calls, then 2 and 1 calls of their own: the joined record
    counts 6 calls, numbers the first miss as if the processes had called in turn, keeps the largest bound and the
    earliest schedule miss; a NaN bound on either process survives the join; a miss before the pass is kept."""
    def copies():
        first, second = AccuracyRecord(1e-5), AccuracyRecord(1e-5)
        for record in (first, second):
            for _ in range(3):
                record.record(1e-6)
            record.begin(7, 0.5)
        return first, second

    first, second = copies()
    first.record(1e-6)
    first.record(2e-5)  # its call 5: above 1e-5
    second.record(3e-5)  # its call 4: the 6th in turn
    first.join([first.state(), second.state()], [3, 3])
    assert (first.calls, first.first_miss, first.worst, first.evaluation_worst) == (6, (5, 2e-5), 3e-5, 3e-5)
    assert first.schedule_miss == (7, 2e-5, 5e-6)
    first, second = copies()
    second.record(math.nan)
    first.join([first.state(), second.state()], [3, 3])
    assert math.isnan(first.worst) and first.first_miss[0] == 4 and not first.accurate
    assert first.evaluation_factor == math.inf  # no bound: the stopping test must not use the schedule's 0.5
    first, second = copies()
    first.first_miss = second.first_miss = (2, 1.0)
    second.record(1.0)
    first.join([first.state(), second.state()], [3, 3])
    assert first.first_miss == (2, 1.0) and first.calls == 4
    first, second = copies()  # process 0 made one call of its own before the pass: every call still counted once
    first.record(1e-6)
    first.record(2e-5)
    first.join([first.state(), second.state()], [4, 3])
    assert first.calls == 5 and first.first_miss == (5, 2e-5)
