"""Averaged blocks: the paper's explicit integration of a convex gradient flow, and an SLL layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..theory import ceil_steps, compose_averagedness
from ._cache import TensorKeyedCache
from .layers import CertifiedConv, get_activation, get_integrator

__all__ = ["NonexpansiveBlock", "SLLBlock"]


class NonexpansiveBlock(nn.Module):
    """x ↦ Φ_T(x): n explicit steps of size h = T/n of ẋ = −Aᵀσ(Ax + b) = −∇V(x), V(x) = Σ γ(Ax + b).

    ∇V is L_σ‖A‖²-Lipschitz, so with n = ceil(T·L_σ‖A‖² / (2·a·r)) (r the integrator's
    step factor, ``Integrator.step_factor``, a ≤ 1 the per-step budget) every step has h·L_σ‖A‖² ≤ 2ar:
    non-expansive, and for explicit Euler (h·L_σ‖A‖²/2 ≤ a)-averaged (a gradient step).
    While training, ‖A‖ is the warm-started power estimate times the calibration ``norm_ratio``;
    in eval mode it is the guaranteed upper bound, so the certificate describes the eval network.
    ``learn_time=True`` learns T ∈ (0, ``time``) as ``time``·sigmoid(t). ``ridges``: the output channels of A, i.e.
    the number of ridge functions γ(a_iᵀx + b_i) in V (default ``channels``); any A keeps ∇V L_σ‖A‖²-Lipschitz, so
    the certificate does not depend on it. With ``kernel_size`` 1 on a [B, d, 1, 1] input, A is a dense d → ridges
    matrix: the block acts on flattened feature vectors.
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
        ridges: int | None = None,
    ):
        super().__init__()
        if not 0 < budget <= 1:
            raise ValueError(f"per-step averagedness budget a must lie in (0, 1], got {budget}")
        if not 0 < time < math.inf:
            raise ValueError(f"time span T must be finite and > 0, got {time}")
        ridges = channels if ridges is None else int(ridges)
        self.conv = CertifiedConv(channels, ridges, kernel_size, normalise=normalise, power_size=power_size)
        self.activation = get_activation(activation).instantiate(ridges)
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
        """n = ceil(T·L_σ‖A‖²(1 + u) / (2·a·r)), u the unit roundoff of fl(T/n) (:meth:`step_averagedness`)."""
        norm = self.operator_norm() if norm is None else norm
        rate = self.activation.lipschitz * norm**2 * self._step_rounding() / (2 * self.budget * self.integrator.step_factor)
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
        negated = -weight  # −Aᵀσ(Az + b) with the negation folded into the small kernel: (−A)ᵀ = −Aᵀ

        def velocity(z: Tensor) -> Tensor:
            return self.conv.A_T(act(self.conv.A(z, weight)), size, negated)

        for _ in range(n):
            x = self.integrator.step(velocity, x, h)
        return x

    def step_averagedness(self) -> tuple[int, float]:
        """(n, q) in eval mode: n sub-steps, each with h·L_σ‖A‖²/2 = q ≤ a·r (‖A‖ from the guaranteed bound; the
        forward's h = T/n is rounded in the weight's precision, at most a unit roundoff above, which q includes)."""
        norm = self.conv.norm_upper_bound()
        n = self.substeps(norm)
        q = float(self.time_span().detach()) / n * self._step_rounding() * self.activation.lipschitz * norm**2 / 2
        return n, q

    def _step_rounding(self) -> float:
        """1 + u: the forward's h = fl(T/n), in the weight's precision, is at most that factor above T/n."""
        return 1 + torch.finfo(self.conv.weight.dtype).eps / 2

    def averagedness(self) -> float | None:
        """Certified α of the block in eval mode, or None when it is only non-expansive."""
        n, q = self.step_averagedness()
        if q > self.integrator.step_factor * (1 + 1e-12):
            raise RuntimeError(f"sub-step rule violated: h·L‖A‖²/2 = {q} > r")  # cannot happen by construction
        if not self.integrator.averaged_step or q >= 1:
            return None
        return compose_averagedness([q] * n)

    def extra_repr(self) -> str:
        return (
            f"integrator={self.integrator.name}, activation={self.activation.name}, "
            f"T≤{self.time_max:g}, budget={self.budget:g}, normalise={self.conv.normalise}"
        )


class SLLBlock(nn.Module):
    """x ↦ x − 2θ·Aᵀ T⁻¹ σ(Ax + b): a θ-averaged layer certified without any norm estimate or bound search.

    A is a 'same' zero-padded convolution (c → c channels), σ monotone with slopes in [0, 1], and T = diag(t) over
    A's output channels with t_i = Σ_j Σ_s |(AAᵀ)_ij[s]|·q_j/q_i for learned q > 0 (the SDP-based Lipschitz layer
    of Araujo et al., ICLR 2023, here with a relaxation θ = ``budget``·sigmoid(·) < 1).

    Why AAᵀ ⪯ T on every image size: for symmetric M and q > 0, zᵀMz ≤ Σ_ij |M_ij||z_i||z_j|
    ≤ Σ_i z_i² Σ_j |M_ij| q_j/q_i (AM–GM on each pair: Schur's test). The zero-padded A is R C E with C the
    convolution on the infinite grid, E the embedding of the image and R the restriction to it, so
    AAᵀ = R C EEᵀ Cᵀ Rᵀ ⪯ R CCᵀ Rᵀ, a principal block of the translation-invariant CCᵀ; its row sums are at most
    the kernel's Σ_s |(AAᵀ)_ij[s]|, which is what t uses.
    Why the layer is θ-averaged: for x, y let Δ = x − y, z = AΔ and D the diagonal of σ's difference quotients
    (0 ≤ D ≤ I). f = I − 2AᵀT⁻¹σ(A· + b) gives ‖f(x) − f(y)‖² = ‖Δ‖² − 4zᵀT⁻¹Dz + 4wᵀAAᵀw with w = T⁻¹Dz, and
    wᵀAAᵀw ≤ wᵀTw = zᵀDT⁻¹Dz ≤ zᵀT⁻¹Dz (D² ≤ D), so f is non-expansive and (1 − θ)I + θf is θ-averaged.
    t is recomputed from the weights at every training call (one c×c×(2k−1)² correlation, differentiable); in eval
    mode in float64 and rounded up, so the fp32 eval forward (the network the certificate describes) never divides
    by less than the proof needs; the division is done in fp32 even under autocast.
    """

    def __init__(self, channels: int, kernel_size: int = 3, activation: str = "leaky_relu", budget: float = 0.95):
        super().__init__()
        if not 0 < budget < 1:
            raise ValueError(f"SLL relaxation budget must lie in (0, 1) for an averaged layer, got {budget}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (centred 'same' padding), got {kernel_size}")
        self.activation = get_activation(activation).instantiate(channels)
        if self.activation.lipschitz > 1:
            raise ValueError(f"SLL layers need σ with slopes in [0, 1]; '{self.activation.name}' is {self.activation.lipschitz}-Lipschitz")
        self.budget = float(budget)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_q = nn.Parameter(torch.zeros(channels))
        self.theta_logit = nn.Parameter(torch.tensor(2.0))
        self._scaling_cache = TensorKeyedCache()

    def theta(self) -> Tensor:
        return self.budget * torch.sigmoid(self.theta_logit)

    def scaling(self) -> Tensor:
        """t (one per output channel) from Schur's test on |AAᵀ| with weights q = exp(log_q). In eval mode: float64,
        rounded up by 1e-6 (relative), cast to the weight's dtype; cached while the weight and q stay unchanged
        unless gradients with respect to them are being taken."""
        if self.training:
            return self._schur_scaling(self.weight, self.log_q)
        differentiable = torch.is_grad_enabled() and (self.weight.requires_grad or self.log_q.requires_grad)
        if differentiable:
            return self._rounded_up(self.weight, self.log_q)
        t = self._scaling_cache.get(self.weight, self.log_q)
        if t is None:
            with torch.inference_mode(False), torch.no_grad():
                t = self._scaling_cache.put(self._rounded_up(self.weight, self.log_q), self.weight, self.log_q)
        return t

    def _rounded_up(self, weight: Tensor, log_q: Tensor) -> Tensor:
        return (self._schur_scaling(weight.double(), log_q.double()) * (1 + 1e-6)).to(weight.dtype)

    @staticmethod
    def _schur_scaling(weight: Tensor, log_q: Tensor) -> Tensor:
        with torch.autocast(device_type=weight.device.type, enabled=False):
            gram = F.conv2d(weight, weight, padding=weight.shape[-1] - 1)  # (AAᵀ)_ij[s], [c, c, 2k−1, 2k−1]
            q = torch.exp(log_q)
            return ((gram.abs().sum((-2, -1)) @ q) / q).clamp_min(1e-12)

    def forward(self, x: Tensor) -> Tensor:
        t = self.scaling()
        hidden = F.conv2d(x, self.weight, self.bias, padding=self.padding)
        hidden = self.activation(hidden)  # divided in fp32 even under autocast (float64 stays float64)
        hidden = hidden.to(torch.promote_types(hidden.dtype, torch.float32)) / t[None, :, None, None]
        return x - 2 * self.theta() * F.conv_transpose2d(hidden, self.weight, padding=self.padding)

    def averagedness(self) -> float:
        """Certified α = θ (module docstring)."""
        return float(self.theta().detach())

    def substeps(self) -> int:
        return 1

    def calibrate(self) -> float:
        """Nothing to calibrate: t comes from the weights in closed form."""
        return 1.0

    def extra_repr(self) -> str:
        return f"channels={self.weight.shape[0]}, activation={self.activation.name}, budget={self.budget:g}"
