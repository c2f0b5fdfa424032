"""Building blocks of certified networks: monotone activations, a convolution with its exact
adjoint and spectral-norm control, and explicit integrators with their contractivity radius."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._cache import TensorKeyedCache
from .spectral import conv_norm_upper_bound

__all__ = ["Activation", "MonotoneSpline", "ACTIVATIONS", "get_activation", "Integrator", "INTEGRATORS", "get_integrator", "CertifiedConv"]


@dataclass(frozen=True)
class Activation:
    """σ = γ' for a convex γ: monotone, with Lipschitz constant ``lipschitz`` (L_σ). A fixed function (``fn``), or
    a learned one per channel (``learned``, a module class built by :meth:`instantiate` with the channel count)."""

    name: str
    fn: Callable[[Tensor], Tensor] | None
    lipschitz: float
    monotone: bool = True
    learned: type[nn.Module] | None = None

    def __call__(self, x: Tensor) -> Tensor:
        if self.fn is None:
            raise TypeError(f"activation '{self.name}' is learned per channel: call instantiate(channels) first")
        return self.fn(x)

    def instantiate(self, channels: int) -> Activation | nn.Module:
        """The callable a layer of ``channels`` channels applies: this fixed function, or a new learned module."""
        return self if self.learned is None else self.learned(channels)


class MonotoneSpline(nn.Module):
    """σ_i(t) = s_i1·min(t, 0) + s_i2·clamp(t, 0, g_i) + s_i3·max(t − g_i, 0), learned per channel i.

    Continuous and piecewise linear, with slopes s_i1, s_i2, s_i3 = sigmoid(·) ∈ [0, 1] (in floating point) on
    (−∞, 0), [0, g_i) and [g_i, ∞), g_i = exp(·) > 0: each difference quotient is a convex combination of the slopes,
    so it lies in [0, 1], the condition the gradient-flow block (σ = γ' with γ convex, L_σ = 1) and the SLL layer
    (0 ≤ D ≤ I) put on σ. Each piece's slope is a stored s_ij itself, and every operation is monotone under
    rounding, so the computed σ_i is monotone too. Three pieces take shapes a ReLU cannot (soft thresholds,
    clips); learned linear splines are what makes 1-Lipschitz networks expressive (Neumayer et al. 2023;
    Ducotterd et al., JMLR 2024), here restricted to slopes in [0, 1]. σ_i(0) = 0, as for the fixed
    activations; the layer's bias places the first knot anywhere. Starts close to a leaky ReLU.
    """

    name = "spline"
    lipschitz = 1.0
    #: its per-channel parameters: a widened network's new channels start from a fresh spline (training.growth)
    PER_CHANNEL = ("slope_logits", "log_gap")

    def __init__(self, channels: int):
        super().__init__()
        self.slope_logits = nn.Parameter(torch.tensor([[-3.0], [3.0], [3.0]]).repeat(1, channels))  # s ≈ 0.05, 0.95, 0.95
        self.log_gap = nn.Parameter(torch.full((channels,), math.log(0.25)))

    def slopes(self) -> Tensor:
        """[3, C]: the slopes of the three pieces, each in [0, 1]."""
        return torch.sigmoid(self.slope_logits)

    def forward(self, t: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (t.dim() - 2)  # channels on dimension 1, whatever the memory format
        first, middle, last = (s.to(t.dtype).view(shape) for s in self.slopes())  # under autocast: stay in bf16
        gap = torch.exp(self.log_gap).to(t.dtype).view(shape)
        return first * t.clamp(max=0) + middle * torch.minimum(t.clamp(min=0), gap) + last * (t - gap).clamp(min=0)

    def extra_repr(self) -> str:
        return f"channels={self.log_gap.numel()}"


ACTIVATIONS = {
    "relu": Activation("relu", F.relu, 1.0),
    "leaky_relu": Activation("leaky_relu", lambda x: F.leaky_relu(x, 0.01), 1.0),
    "tanh": Activation("tanh", torch.tanh, 1.0),
    "elu": Activation("elu", F.elu, 1.0),  # derivative 1 for x > 0 and e^x ≤ 1 for x ≤ 0
    "spline": Activation("spline", None, 1.0, learned=MonotoneSpline),
}


def get_activation(name: str | Activation) -> Activation:
    if isinstance(name, Activation):
        activation = name
    elif name in ACTIVATIONS:
        activation = ACTIVATIONS[name]
    else:
        raise ValueError(f"unknown activation '{name}'; choose one of {sorted(ACTIVATIONS)}")
    if not activation.monotone:
        raise ValueError(f"activation '{activation.name}' is not monotone, so it is not the gradient of a convex γ")
    return activation


@dataclass(frozen=True)
class Integrator:
    """An explicit Runge–Kutta method for ẋ = f(x), stepped with h·L ≤ 2·``step_factor`` on gradient flows of convex V
    with L-Lipschitz ∇V (``step_factor`` = 1 for all three methods here: a proof for Euler and Heun, only linear
    stability for RK4); ``proof`` says why such a step is non-expansive, None when nothing proves it.

    For f = −∇V, ∇V is (1/L)-cocoercive (Baillon–Haddad), so the Euler step E_h = I − h∇V is non-expansive for
    h·L ≤ 2 (and (hL/2)-averaged). A method whose step is a convex combination of compositions of such E_h
    (a Shu–Osher form with non-negative coefficients: radius 1, its SSP coefficient) is non-expansive too.
    Classical RK4 has no such form: a₃₁ = 0 while a₃₂a₂₁ > 0, so its threshold factor, which is its radius of
    circle contractivity for non-linear problems (Kraaijevanger, BIT 1991), is 0. Its step rule h·L ≤ 2 is the
    linear-stability one (|R(−hλ)| ≤ 1 on [0, 2.78]); numerical searches over symmetric stage Jacobians
    0 ⪯ M_k ⪯ L·I find no expansion, but nothing here proves it, so an RK4 network is only *estimated*."""

    name: str
    step: Callable[[Callable[[Tensor], Tensor], Tensor, float], Tensor]
    step_factor: float
    #: True when one step is certified (h L / 2)-averaged (explicit Euler: a gradient step)
    averaged_step: bool
    proof: str | None


def _euler(f, x, h):
    return torch.addcmul(x, f(x), torch.as_tensor(h, device=x.device))  # x + h·f(x) in one pass (h may be learned)


def _heun(f, x, h):
    k1 = f(x)
    k2 = f(x + h * k1)
    return x + (h / 2) * (k1 + k2)


def _rk4(f, x, h):
    k1 = f(x)
    k2 = f(x + (h / 2) * k1)
    k3 = f(x + (h / 2) * k2)
    k4 = f(x + h * k3)
    return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


INTEGRATORS = {
    "euler": Integrator("euler", _euler, step_factor=1.0, averaged_step=True,
                        proof="a gradient step of a convex V, h·L ≤ 2 (Baillon–Haddad)"),
    "heun": Integrator("heun", _heun, step_factor=1.0, averaged_step=False,
                       proof="Heun's step is ½x + ½E_h(E_h(x)), a convex combination of Euler steps"),
    "rk4": Integrator("rk4", _rk4, step_factor=1.0, averaged_step=False, proof=None),
}


def get_integrator(name: str) -> Integrator:
    if name not in INTEGRATORS:
        raise ValueError(f"unknown integrator '{name}'; choose one of {sorted(INTEGRATORS)}")
    return INTEGRATORS[name]


class CertifiedConv(nn.Module):
    """x ↦ Ax + b with a 2-D zero-padded convolution A, its exact adjoint Aᵀ, and its norm.

    ``normalise=True`` uses A = W/s with s = ‖W u‖ the warm-started power estimate of ‖W‖
    (differentiable in W, as torch's spectral_norm), so that ‖A‖ ≈ 1 while training.
    The power vector ``u`` (an image of ``power_size``²) starts from ``init_power_steps`` steps,
    persists across training steps and takes one power-iteration step per training forward.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        normalise: bool = True,
        power_size: int = 32,
        init_power_steps: int = 50,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (centred 'same' padding), got {kernel_size}")
        self.stride = int(stride)
        self.padding = kernel_size // 2
        self.normalise = normalise
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        u = torch.randn(1, in_channels, power_size, power_size, generator=torch.Generator().manual_seed(0))
        self.register_buffer("power_vector", u / u.norm())
        self._bound_cache = TensorKeyedCache(across_devices=True)  # a float
        for _ in range(init_power_steps):
            self.power_step()

    # --- the operator -------------------------------------------------------------------
    def _weight_precision(self):
        """A context with autocast off on the weight's device: under mixed precision (bf16 training) the power
        iteration and the normalising s = ‖W u‖ stay in the weight's own precision (fp32), never in bf16."""
        return torch.autocast(device_type=self.weight.device.type, enabled=False)

    def power_step(self) -> None:
        """One power-iteration step u ← AᵀA u / ‖AᵀA u‖ on the raw weight (no gradient, weight precision)."""
        with torch.no_grad(), self._weight_precision():
            v = self._conv_T(self._conv(self.power_vector, self.weight), self.weight, self.power_vector.shape[-2:])
            self.power_vector.copy_(v / v.norm().clamp_min(1e-30))

    def power_estimate(self) -> Tensor:
        """s = ‖W u‖ for the current unit power vector u: a lower estimate of ‖W‖, differentiable in W, computed in
        the weight's precision."""
        with self._weight_precision():
            return self._conv(self.power_vector, self.weight).norm()

    def norm_estimate(self) -> float:
        """Power estimate of ‖A‖ for the operator in use: 1 when normalised (A = W/s), else s."""
        return 1.0 if self.normalise else float(self.power_estimate().detach())

    def effective_weight(self) -> Tensor:
        return self.weight / self.power_estimate() if self.normalise else self.weight

    def _is_matrix(self, weight: Tensor, grid) -> bool:
        """A 1×1 kernel on a 1×1 grid: the convolution is the matrix W[:, :, 0, 0] (dense blocks), computed as one."""
        return weight.shape[-2:] == (1, 1) and tuple(grid) == (1, 1) and self.stride == 1

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if self._is_matrix(weight, x.shape[-2:]):
            return F.linear(x.flatten(1), weight.flatten(1), bias)[:, :, None, None]
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding)

    def _conv_T(self, y: Tensor, weight: Tensor, out_hw) -> Tensor:
        if self._is_matrix(weight, out_hw):  # stride 1, no padding: y lies on the same 1×1 grid
            return (y.flatten(1) @ weight.flatten(1))[:, :, None, None]
        k = weight.shape[-1]
        extra = [out_hw[i] - ((y.shape[-2 + i] - 1) * self.stride - 2 * self.padding + k) for i in range(2)]
        return F.conv_transpose2d(y, weight, stride=self.stride, padding=self.padding, output_padding=tuple(extra))

    def A(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        """Ax + b (affine)."""
        weight = self.effective_weight() if weight is None else weight
        return self._conv(x, weight, self.bias)

    def A_T(self, y: Tensor, out_hw, weight: Tensor | None = None) -> Tensor:
        """Aᵀy of the linear part: conv_transpose2d with the same weight, stride and padding."""
        weight = self.effective_weight() if weight is None else weight
        return self._conv_T(y, weight, out_hw)

    # --- norms ----------------------------------------------------------------------------
    def norm_upper_bound(self) -> float:
        """Guaranteed upper bound of ‖A‖ (linear part, any image size): bound(‖W‖), divided by the
        current power estimate s when normalised. The bound of W is cached until W changes. A normalised A is the
        rounded quotient fl(W/s), each entry within u|W_ij|/s of W_ij/s (u the unit roundoff of W's dtype), so
        ‖A‖ ≤ (bound(W) + u·‖|W|‖)/s, ‖|W|‖ ≤ √(max row sum · max column sum) of |W| (Schur's test)."""
        bound = self.weight_norm_bound()
        if not self.normalise:
            return bound
        magnitude = self.weight.detach().abs().double()
        rows = float(magnitude.sum(dim=(1, 2, 3)).max())  # an output channel's taps over every input channel
        columns = float(magnitude.sum(dim=(0, 2, 3)).max())  # an input channel's taps over every output channel
        rounding = torch.finfo(self.weight.dtype).eps / 2 * math.sqrt(rows * columns)
        return (bound + rounding) * (1 + 1e-12) / float(self.power_estimate().detach())

    def weight_norm_bound(self) -> float:
        """Guaranteed upper bound of ‖W‖ for the raw weight (cached until the weight changes in any way)."""
        bound = self._bound_cache.get(self.weight)
        if bound is None:
            bound = self.set_weight_norm_bound(conv_norm_upper_bound(self.weight))
        return bound

    def check_power_vector(self, name: str) -> None:
        """Refuse a loaded power vector whose estimate s = ‖W u‖ is not finite and > 0: the normalised A = W/s, and
        every bound divided by s, would be undefined. ``name`` says where the layer came from."""
        if self.normalise:
            estimate = float(self.power_estimate().detach())
            if not 0 < estimate < math.inf:
                raise ValueError(f"{name}: its stored power-iteration vector gives the norm estimate {estimate:g}; "
                                 "the file is corrupt")

    def set_weight_norm_bound(self, bound: float) -> float:
        """Install a bound of ‖W‖ computed for exactly these weights (used when loading verified files)."""
        return self._bound_cache.put(float(bound), self.weight)


def install_norm_bounds(convs, bounds: list[float], verify: bool, where: str, unit: str) -> None:
    """Install the stored bounds of ‖W‖ of a loaded file's layers (``unit`` names them in messages: 'block',
    'layer'). With ``verify`` each is recomputed first: the fast bound (within 1e-2 of the supremum) accepts a stored
    bound at or above it; otherwise the bound within 1e-6 does, and a stored bound more than 1e-6 below that is
    refused (only a true bound closer than 1e-6 to the supremum can be). The larger of stored and recomputed is
    installed, so every installed bound is a guaranteed one."""
    for index, (conv, bound) in enumerate(zip(convs, bounds)):
        if verify:
            verified = conv_norm_upper_bound(conv.weight)
            if bound < verified:
                verified = conv_norm_upper_bound(conv.weight, rel_tol=1e-6)
                if bound < verified * (1 - 1e-6):
                    raise ValueError(f"{where}: stored norm bound {bound:.6g} of {unit} {index} is below the verified "
                                     f"bound {verified:.6g}")
            bound = max(bound, verified)
        conv.set_weight_norm_bound(float(bound))
        conv.check_power_vector(f"{where}: {unit} {index}")
