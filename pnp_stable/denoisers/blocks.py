"""The paper's non-expansive block: explicit integration of a convex gradient flow."""

from __future__ import annotations


import torch
from torch import Tensor, nn

from ..theory import ceil_steps, compose_averagedness
from .layers import CertifiedConv, get_activation, get_integrator

__all__ = ["NonexpansiveBlock"]


class NonexpansiveBlock(nn.Module):
    """x ↦ Φ_T(x): n explicit steps of size h = T/n of ẋ = −Aᵀσ(Ax + b) = −∇V(x), V(x) = Σ γ(Ax + b).

    ∇V is L_σ‖A‖²-Lipschitz, so with n = ceil(T·L_σ‖A‖² / (2·a·r)) (r the integrator's
    circle-contractivity radius, a ≤ 1 the per-step budget) every step has h·L_σ‖A‖² ≤ 2ar:
    non-expansive, and for explicit Euler (h·L_σ‖A‖²/2 ≤ a)-averaged (a gradient step).
    While training, ‖A‖ is the warm-started power estimate times the calibration ``norm_ratio``;
    in eval mode it is the guaranteed upper bound, so the certificate describes the eval network.
    ``learn_time=True`` learns T ∈ (0, ``time``) as ``time``·sigmoid(t).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        activation: str = "leaky_relu",
        integrator: str = "euler",
        time: float = 1.0,
        budget: float = 0.95,
        normalise: bool = True,
        learn_time: bool = True,
        power_size: int = 32,
    ):
        super().__init__()
        if not 0 < budget <= 1:
            raise ValueError(f"per-step averagedness budget a must lie in (0, 1], got {budget}")
        if not time > 0:
            raise ValueError(f"time span T must be > 0, got {time}")
        self.conv = CertifiedConv(channels, channels, kernel_size, normalise=normalise, power_size=power_size)
        self.activation = get_activation(activation)
        self.integrator = get_integrator(integrator)
        self.budget = float(budget)
        self.time_max = float(time)
        self.time_logit = nn.Parameter(torch.zeros(())) if learn_time else None
        self.register_buffer("norm_ratio", torch.ones(()))

    def time_span(self) -> Tensor:
        if self.time_logit is None:
            return torch.tensor(self.time_max)
        return self.time_max * torch.sigmoid(self.time_logit)

    def operator_norm(self) -> float:
        """‖A‖ as used by this forward: calibrated power estimate (training) or guaranteed bound (eval)."""
        if self.training:
            return self.conv.norm_estimate() * float(self.norm_ratio)
        return self.conv.norm_upper_bound()

    def substeps(self, norm: float | None = None) -> int:
        """n = ceil(T·L_σ‖A‖² / (2·a·r))."""
        norm = self.operator_norm() if norm is None else norm
        rate = self.activation.lipschitz * norm**2 / (2 * self.budget * self.integrator.radius)
        return ceil_steps(float(self.time_span().detach()), rate)

    @torch.no_grad()
    def calibrate(self) -> float:
        """Set ``norm_ratio`` = guaranteed bound / power estimate (≥ 1), so training sees the certified norm."""
        ratio = max(1.0, self.conv.norm_upper_bound() / self.conv.norm_estimate())
        self.norm_ratio.fill_(ratio)
        return ratio

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.conv.power_step()
        weight = self.conv.effective_weight()
        n = self.substeps()
        h = self.time_span() / n
        act = self.activation
        size = x.shape[-2:]

        def velocity(z: Tensor) -> Tensor:
            return -self.conv.A_T(act(self.conv.A(z, weight)), size, weight)

        for _ in range(n):
            x = self.integrator.step(velocity, x, h)
        return x

    def step_averagedness(self) -> tuple[int, float]:
        """(n, q) in eval mode: n sub-steps, each with h·L_σ‖A‖²/2 = q ≤ a·r (‖A‖ from the guaranteed bound)."""
        norm = self.conv.norm_upper_bound()
        n = self.substeps(norm)
        q = float(self.time_span().detach()) / n * self.activation.lipschitz * norm**2 / 2
        return n, q

    def averagedness(self) -> float | None:
        """Certified α of the block in eval mode, or None when it is only non-expansive."""
        n, q = self.step_averagedness()
        if q > self.integrator.radius * (1 + 1e-12):
            raise RuntimeError(f"sub-step rule violated: h·L‖A‖²/2 = {q} > r")  # cannot happen by construction
        if not self.integrator.averaged_step or q >= 1:
            return None
        return compose_averagedness([q] * n)

    def extra_repr(self) -> str:
        return (
            f"integrator={self.integrator.name}, activation={self.activation.name}, "
            f"T≤{self.time_max:g}, budget={self.budget:g}, normalise={self.conv.normalise}"
        )
