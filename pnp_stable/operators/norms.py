"""Operator checks: the adjoint test and the spectral norm ‖A‖ (plain, never squared)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import deepinv as dinv
import torch

__all__ = ["OperatorNorm", "adjoint_test", "operator_norm", "power_iteration"]


def _batched_shape(x_shape: Sequence[int]) -> tuple[int, ...]:
    x_shape = tuple(int(s) for s in x_shape)
    if len(x_shape) == 3:
        return (1, *x_shape)
    if len(x_shape) != 4:
        raise ValueError(f"x_shape must be (C, H, W) or (B, C, H, W), got {x_shape}")
    return x_shape


def _check_linear(op) -> None:
    if not isinstance(op, dinv.physics.LinearPhysics):
        raise ValueError(
            f"expected a deepinv.physics.LinearPhysics, got {type(op).__name__}; "
            "wrap plain functions with pnp_stable.custom_operator"
        )


def adjoint_test(op, x_shape: Sequence[int], seed: int = 0, num_samples: int = 8) -> float:
    """Relative adjoint error ‖A − Bᵀ‖_F / ‖A‖_F of ``B = op.A_adjoint``, estimated by Monte Carlo.

    Uses E|vᵀMu|² = ‖M‖_F² for standard Gaussian u, v; the inner products are summed in
    float64 so that the result measures the operator, not the summation (≈1e-7 for an
    exact float32 adjoint, O(1) for a wrong one).
    """
    _check_linear(op)
    shape = _batched_shape(x_shape)
    rng = torch.Generator().manual_seed(int(seed))
    u = torch.randn((num_samples, *shape[1:]), generator=rng)
    Au = op.A(u)
    v = torch.randn(Au.shape, generator=rng)
    Btv = op.A_adjoint(v)
    if Btv.shape != u.shape:
        raise ValueError(f"A_adjoint returns shape {tuple(Btv.shape)} but A takes {tuple(u.shape)}")
    vAu = (v.double() * Au.double()).flatten(1).sum(1)
    uBv = (u.double() * Btv.double()).flatten(1).sum(1)
    return float(((vAu - uBv).pow(2).mean() / vAu.pow(2).mean()).sqrt())


@dataclass(frozen=True)
class OperatorNorm:
    """‖A‖ (not squared). ``exact`` is True for closed forms; a power estimate is a lower bound."""

    value: float
    exact: bool
    method: str
    iterations: int = 0

    def __float__(self) -> float:
        return self.value


def power_iteration(
    gram, x0: torch.Tensor, tol: float = 1e-6, max_iter: int = 1000
) -> tuple[float, torch.Tensor, int]:
    """Largest eigenvalue of the PSD map ``gram`` (e.g. AᵀA) by power iteration from ``x0``.

    Stops when the Rayleigh quotient changes by less than ``tol`` (relative). Returns the
    eigenvalue estimate (a lower bound), the last unit vector and the iteration count.
    """
    x = x0 / x0.norm()
    value = 0.0
    for it in range(1, max_iter + 1):
        gx = gram(x)
        new_value = float((x * gx).sum())
        norm = gx.norm()
        if norm == 0:
            return 0.0, x, it
        x = gx / norm
        if abs(new_value - value) <= tol * abs(new_value):
            return new_value, x, it
        value = new_value
    return value, x, max_iter


def operator_norm(op, x_shape: Sequence[int], seed: int = 0, tol: float = 1e-6, max_iter: int = 1000) -> OperatorNorm:
    """Spectral norm ‖A‖ of a linear operator acting on images of shape ``x_shape``.

    Exact for operators diagonalised by an orthogonal transform (``DecomposablePhysics``,
    e.g. the circular ``BlurFFT``: ‖A‖ = max |K̂|); otherwise a power-iteration estimate
    on AᵀA, deterministic for a given ``seed``, flagged ``exact=False``.
    """
    _check_linear(op)
    shape = _batched_shape(x_shape)
    op_size = getattr(op, "img_size", None)
    if op_size is not None and tuple(op_size) != shape[1:]:
        raise ValueError(f"operator is built for images {tuple(op_size)}, but x_shape is {shape[1:]}")
    if isinstance(op, dinv.physics.DecomposablePhysics):
        mask = op.mask
        value = float(torch.as_tensor(mask).abs().max())
        return OperatorNorm(value, exact=True, method="max singular value of the SVD (DecomposablePhysics.mask)")
    rng = torch.Generator().manual_seed(int(seed))
    x0 = torch.randn((1, *shape[1:]), generator=rng)
    sq, _, iters = power_iteration(op.A_adjoint_A, x0, tol=tol, max_iter=max_iter)
    return OperatorNorm(
        sq**0.5, exact=False, method=f"power iteration on AᵀA (seed {seed}, tol {tol:g})", iterations=iters
    )
