"""Step sizes from the theory: forward-backward needs τ < 2/L (L = ‖A‖²/s² the Lipschitz constant of ∇f);
proximal steps accept any τ > 0 and default to the half-quadratic choice τ = σ_d², one per sample when σ_d is."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..operators.fidelity import L2Fidelity

__all__ = ["default_step", "check_step"]


def default_step(solver: str, fidelity: L2Fidelity, denoiser_sigma) -> float | Tensor:
    """FB/FISTA: τ = 1/L (a 1/2-averaged gradient step). HQS/DRS/ADMM: τ = σ_d² (prox of f with the
    penalty weight 1/σ_d² that matches a denoiser of strength σ_d), a [B] tensor for per-sample levels σ_d, so
    that each sample's iteration is the one it would have alone."""
    if solver in ("fb", "fista"):
        return 1.0 / fidelity.lipschitz
    levels = torch.as_tensor(denoiser_sigma, dtype=torch.float64).flatten()  # a float, a tensor, an array or a list
    several = levels.numel() > 1
    if not bool((levels > 0).all()):
        raise ValueError(f"denoiser_sigma must be > 0 for the default proximal step, got "
                         f"{levels.tolist() if several else float(levels[0])}")
    return levels**2 if several else float(levels[0]) ** 2


def check_step(scheme, allow_unsafe_step: bool = False) -> None:
    """Refuse τ ≤ 0 or not finite, and, unless explicitly allowed, τ ≥ 2/L for FB and τ > 1/L for FISTA."""
    tau = scheme.step_size
    if isinstance(tau, Tensor):  # per-sample proximal steps (HQS/DRS/ADMM): any τ > 0 each
        if not bool(((tau > 0) & (tau < math.inf)).all()):
            raise ValueError(f"step τ must be finite and > 0 for every sample, got {tau.tolist()}")
        return
    if not 0 < tau < math.inf:
        raise ValueError(f"step τ must be finite and > 0, got {tau}")
    if scheme.name == "fista" and not allow_unsafe_step:
        limit = 1.0 / scheme.fidelity.lipschitz
        if tau > limit * (1 + 1e-12):
            raise ValueError(
                f"step τ = {tau:.6g} > 1/L = {limit:.6g} (L = ‖A‖²/σ² = {scheme.fidelity.lipschitz:.6g}): FISTA's momentum "
                "needs τ ≤ 1/L (FB's τ < 2/L is not enough: it diverges); use a smaller step or pass "
                "allow_unsafe_step=True (CLI: --allow-unsafe-step) to run anyway"
            )
    if scheme.name == "fb" and not allow_unsafe_step:
        limit = 2.0 / scheme.fidelity.lipschitz
        if tau >= limit:
            raise ValueError(
                f"step τ = {tau:.6g} ≥ 2/L = {limit:.6g} (L = ‖A‖²/σ² = {scheme.fidelity.lipschitz:.6g}): the gradient "
                "step is then not averaged and convergence is not guaranteed; use a smaller step or pass "
                "allow_unsafe_step=True (CLI: --allow-unsafe-step) to run anyway"
            )
