"""The exact proximal map of a learned convex ridge regulariser: a denoiser certified firmly non-expansive for every
value of its weights, with no norm bound in its certificate.

    R(x) = Σ_c Σ_p ψ_c((w_c ⊛ Ex)_p),    D_σ(y) = argmin_x F(x),  F(x) = ½‖x − y‖² + (λ/μ) R(μx),

with w_c zero-mean k×k filters (convolution, 'valid' on the boundary extension Ex: reflect or circular), ψ_c even and
convex with ψ_c' = σ_c, σ_c(t) = Σ_j s_cj clamp(t, −τ_j, τ_j), s_cj ≥ 0 (a sum of Huber penalties, the last knot ∞:
a quadratic term), and λ = λ(σ) ≥ 0, μ = μ(σ) > 0 interpolated from learned values at the knots ``sigma_knots``
(λ(0) = 0: D_0 = I). (λ/μ)R(μ·) is convex for every such λ, μ (Goujon et al. 2023's CRR-NN family), so D_σ is the
proximal map of a convex function: firmly non-expansive (½-averaged) at every σ.

Colour: ``colour='rgb'`` regularises each channel by R (the prox of a separable sum is the channelwise prox);
``colour='opponent'`` regularises the components of Qx, Q the orthonormal opponent basis (luminance (1, 1, 1)/√3,
chrominances (1, 0, −1)/√2 and (1, −2, 1)/√6), each with its own λ_k(σ), μ_k(σ): D(y) = Qᵀ [D_k((Qy)_k)]_k, the prox
of Σ_k (λ_k/μ_k) R(μ_k (Qx)_k) (prox of f∘Q is Qᵀ prox_f Q for orthogonal Q), so firmly non-expansive too. White
noise stays white of the same σ under Q; the chrominances, smoother than the channels, take a stronger penalty.

The computed output is certified too: F is 1-strongly convex, so every x satisfies ‖x − D_σ(y)‖ ≤ ‖∇F(x)‖. The solver
(Nesterov's method for the 1-strongly convex, (1 + λμL_R)-smooth F, each image with its own step, warm-started from
the output of the nearer of the last two calls) stops once that bound, evaluated in float64, is ≤ ``tolerance`` RMS
per image (a PnP run lowers that tolerance along the summable schedule of :mod:`pnp_stable._accuracy`); :attr:`accuracy`
keeps the worst bound of all calls, and :attr:`certificate` is guaranteed only while every call met ``tolerance`` (a
call above the run's lower scheduled tolerance only withdraws that run's convergence claim). The smoothness bound: ∇²R(x) = Eᵀ Σ_c W_cᵀ diag(σ_c') W_c E ⪯ Σ_c S_c EᵀW_cᵀW_cE with
S_c = sup σ_c' = Σ_j s_cj; circular: W_cE is circular convolution, exact norm max_ω Σ_c S_c |ŵ_c(ω)|² on the image's
grid; reflect: W_c is a restriction of the circular convolution on the padded grid (norm ≤ the same max there) and
‖E‖² ≤ 4 (a pixel appears at most twice per axis); it only sets the step (:meth:`smoothness`), the certificate never
uses it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings

import deepinv as dinv
import scipy.fft
import torch
from deepinv.optim.linear import conjugate_gradient
import torch.nn.functional as F
from torch import Tensor, nn

from .._accuracy import AccuracyRecord
from .._validation import check_image, per_image_levels
from ..theory import Certificate
from ._cache import TensorKeyedCache
from .colour import OPPONENT

__all__ = ["BOUNDARIES", "COLOURS", "HUBER_KNOTS", "ConvexRidgeDenoiser", "RidgeFilters"]

HUBER_KNOTS = tuple(0.005 * 2**j for j in range(6)) + (math.inf,)  # τ_j of σ_c = Σ_j s_cj clamp(t, −τ_j, τ_j)
BOUNDARIES = ("reflect", "circular")
COLOURS = ("rgb", "opponent")
#: A bound on the float64 arithmetic of y ↦ Qy or x ↦ Qᵀx relative to the RMS of its input, Q's rounded entries
#: included: each output entry Σ_j q_ij v_j (3 terms, rows of unit norm) is off by at most (γ_3 + 2u)‖v_pixel‖
#: (Cauchy–Schwarz), u = 2⁻⁵³, so the RMS error is ≤ √3 (γ_3 + 2u) RMS(v) < 16u RMS(v).
TRANSFORM_ROUNDING = 16 * 2.0**-53


def _huber_sum(t: Tensor, slopes: Tensor) -> Tensor:
    """σ_c(t) = Σ_j s_cj clamp(t, −τ_j, τ_j) on [N, c, H, W]."""
    return sum(slopes[None, :, j, None, None] * t.clamp(-tau, tau) for j, tau in enumerate(HUBER_KNOTS))


def _huber_sum_derivative(t: Tensor, slopes: Tensor) -> Tensor:
    """σ_c'(t) = Σ_j s_cj 1[|t| < τ_j] on [N, c, H, W]."""
    magnitude = t.abs()
    return sum(slopes[None, :, j, None, None] * (magnitude < tau).to(t) for j, tau in enumerate(HUBER_KNOTS))


COMPILE_FROM = 2**18  # values (e.g. 64 filters × 64 × 64 pixels) from which the activation is compiled


def _ridge_response(t: Tensor, slopes: Tensor, scale: Tensor, window: Tensor) -> Tensor:
    """window·σ(μt): the activation at the scaled filter responses, zeroed outside the image's window of the grid."""
    return window * _huber_sum(scale * t, slopes)


@contextlib.contextmanager
def _quiet_cpp_extension():
    """Silence torch.utils.cpp_extension's import-time log line ('No CUDA runtime is found, using CUDA_HOME=…', on a
    CPU machine with CUDA_HOME set), which would break this package's one-line warnings; its errors still show."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _Fused:
    """A pointwise function compiled by torch.compile into one loop (the seven clamps of σ_c cost 19× less: 13 vs
    253 ms on 64 × 321 × 481 values, 2 threads; a whole BSD68 image's solve at σ = 25/255 16–19 s against 45–49 s
    eager, measured 2026-12-07), used outside autograd on tensors of at least ``COMPILE_FROM``
    values (below that, the eager call costs less than a compilation); where compilation fails (no C++ compiler)
    it warns once and runs the eager function, which gives the same values."""

    def __init__(self, function):
        self.function, self.compiled, self.failed = function, None, False  # compiled on first use (torch.compile's
        # import alone costs ~1.5 s)

    def __call__(self, t: Tensor, *args: Tensor) -> Tensor:
        if torch.is_grad_enabled() or self.failed or t.numel() < COMPILE_FROM:
            return self.function(t, *args)
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.function, dynamic=True)
                with _quiet_cpp_extension():  # the first call compiles, importing torch.utils.cpp_extension
                    return self.compiled(t, *args)
            return self.compiled(t, *args)
        except Exception as error:  # torch._dynamo / inductor raise many types; any of them means: run eagerly
            warnings.warn(f"torch.compile of {self.function.__name__} failed ({type(error).__name__}: {error}); "
                          "the convex-ridge prox runs eagerly, about 3× slower", RuntimeWarning, stacklevel=2)
            self.failed = True
            return self.function(t, *args)


_activation_derivative = _Fused(_huber_sum_derivative)
_response = _Fused(_ridge_response)


class RidgeFilters:
    """The linear map W E for images of one shape [..., H, W]: E the boundary extension (reflect: by the filters'
    reach r = k // 2, through an index map; circular: none), W the convolutions w_c ⊛ · as circular convolutions
    on an FFT grid, cropped to the image's grid. Circular: the image's grid. Reflect: the extension's grid, zero-padded
    to a fast FFT length (scipy's next_fast_len); no output window reaches the padding or wraps ('valid' convolution
    of Ex), and the prime factors of e.g. 333 × 493 cost 2–3× in each FFT. :meth:`adjoint` is its exact transpose:
    zero-embedding (crop's adjoint), the conjugate spectrum summed over the filters, the extension's window of the
    grid, and Eᵀ (each extended pixel's value added back to the pixel it copies)."""

    def __init__(self, filters: Tensor, shape, boundary: str):
        kernel = filters.shape[-1]
        self.height, self.width = shape[-2:]
        self.reach = kernel // 2 if boundary == "reflect" else 0
        self.extended = (self.height + 2 * self.reach, self.width + 2 * self.reach)
        self.grid = (tuple(scipy.fft.next_fast_len(n, real=True) for n in self.extended) if self.reach
                     else self.extended)
        padded = F.pad(filters[:, 0], (0, self.grid[1] - kernel, 0, self.grid[0] - kernel))
        self.spectrum = torch.fft.rfft2(torch.roll(padded, (-(kernel // 2), -(kernel // 2)), (-2, -1)))  # centred
        self.window = torch.zeros(self.grid, dtype=filters.dtype, device=filters.device)
        self.window[self.reach : self.reach + self.height, self.reach : self.reach + self.width] = 1
        self.index = None
        if self.reach:
            pixels = torch.arange(self.height * self.width, dtype=torch.float64).view(1, 1, self.height, self.width)
            self.index = F.pad(pixels, (self.reach,) * 4, mode="reflect").long().flatten().to(filters.device)

    def _extend(self, x: Tensor) -> Tensor:
        return x if self.index is None else x.flatten(-2)[..., self.index].unflatten(-1, self.extended)

    def _extend_adjoint(self, p: Tensor) -> Tensor:
        if self.index is None:
            return p
        window = p[..., : self.extended[0], : self.extended[1]].flatten(-2)
        flat = p.new_zeros(*p.shape[:-2], self.height * self.width).index_add(-1, self.index, window)
        return flat.unflatten(-1, (self.height, self.width))

    def _on_grid(self, x: Tensor) -> Tensor:
        """[N, 1, H, W] → the circular convolutions of Ex on the whole grid, [N, c, *grid]."""
        return torch.fft.irfft2(torch.fft.rfft2(self._extend(x), s=self.grid) * self.spectrum, s=self.grid)

    def _from_grid(self, t: Tensor) -> Tensor:
        """[N, c, *grid] → [N, 1, H, W]: the circular convolutions' transpose, summed over the filters, then Eᵀ."""
        spectrum = (torch.fft.rfft2(t) * self.spectrum.conj()).sum(1, keepdim=True)
        return self._extend_adjoint(torch.fft.irfft2(spectrum, s=self.grid))

    def __call__(self, x: Tensor) -> Tensor:
        """[N, 1, H, W] → [N, c, H, W]."""
        return self._on_grid(x)[..., self.reach : self.reach + self.height, self.reach : self.reach + self.width]

    def adjoint(self, t: Tensor) -> Tensor:
        """[N, c, H, W] → [N, 1, H, W]."""
        right, bottom = self.grid[1] - self.width - self.reach, self.grid[0] - self.height - self.reach
        return self._from_grid(F.pad(t, (self.reach, right, self.reach, bottom)))

    def normal(self, x: Tensor, pointwise) -> Tensor:
        """(WE)ᵀ f(WEx) for a pointwise f, evaluated as ``pointwise(WEx on the grid, window)`` with window 1 on the
        image's positions and 0 elsewhere: the crop and its adjoint (a zero-embedding) folded into f, two copies of
        the c filter responses fewer than ``adjoint(f(self(x)))``, which it equals."""
        return self._from_grid(pointwise(self._on_grid(x), self.window))


def _rms(batch: Tensor) -> Tensor:
    """The RMS of each image of a batch ([B])."""
    return batch.flatten(1).pow(2).mean(1).sqrt()


class _ProxJacobian(torch.autograd.Function):
    """Passes x = D(y) through, and back-propagates with the Jacobian (I + ∇²((λ/μ)R(μ·))(x))⁻¹ (symmetric)."""

    @staticmethod
    def forward(ctx, y, x, model, strength, scale):
        ctx.save_for_backward(x, strength, scale)
        ctx.model = model
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        x, strength, scale = ctx.saved_tensors
        return ctx.model.inverse_hessian(x, grad, strength, scale), None, None, None, None


class ConvexRidgeDenoiser(dinv.models.Denoiser):
    """D_σ(y) = prox of (λ(σ)/μ(σ))·R(μ(σ)·) (module docstring), applied to each colour channel ('rgb') or each
    opponent component ('opponent') separately.

    ``filters`` ridge directions of ``kernel``×``kernel``; ``sigma_knots`` the noise levels (> 0, increasing) at which
    λ and μ are learned (linear in σ between knots, λ → 0 at σ = 0; σ above the last knot is refused);
    ``boundary`` 'reflect' or 'circular'; ``colour`` 'rgb' (one λ, μ for every channel) or 'opponent' (3 channels:
    the opponent components, each with its own λ, μ: ``log_strength`` and ``log_scale`` are then [3, knots]);
    ``tolerance`` the certified RMS error of every call (per image, over all its channels); ``max_iter`` the solver's
    cap (a call that reaches it without meeting the tolerance voids :attr:`certificate`).
    """

    def __init__(self, channels: int = 1, filters: int = 64, kernel: int = 9, sigma_knots=(25 / 255,),
                 boundary: str = "reflect", tolerance: float = 1e-5, max_iter: int = 3000, seed: int = 0,
                 colour: str = "rgb"):
        super().__init__()
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        if colour not in COLOURS or (colour == "opponent" and channels != 3):
            raise ValueError(f"colour must be one of {COLOURS} ('opponent' needs channels = 3), got {colour!r} with "
                             f"{channels} channels")
        knots = torch.as_tensor(sigma_knots, dtype=torch.float32).flatten()
        if knots.numel() == 0 or not bool((knots > 0).all()) or not bool((knots.diff() > 0).all()):
            raise ValueError(f"sigma_knots must be positive and increasing, got {knots.tolist()}")
        if kernel % 2 == 0 or kernel < 1 or filters < 1:
            raise ValueError(f"kernel must be odd (a centred filter) and filters ≥ 1, got kernel {kernel}, filters {filters}")
        if not 0 < tolerance < math.inf or max_iter < 1:
            raise ValueError(f"tolerance must be > 0 and finite and max_iter ≥ 1, got {tolerance}, {max_iter}")
        self.channels, self.boundary, self.colour, self.max_iter = channels, boundary, colour, int(max_iter)
        self.config = dict(channels=channels, filters=filters, kernel=kernel, sigma_knots=knots.tolist(),
                           boundary=boundary, tolerance=float(tolerance), max_iter=int(max_iter))
        if colour != "rgb":  # files written before the option keep their config
            self.config["colour"] = colour
        w = torch.randn(filters, 1, kernel, kernel, generator=torch.Generator().manual_seed(seed))
        self.weight = nn.Parameter(w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.3)
        self.theta = nn.Parameter(torch.full((filters, len(HUBER_KNOTS)), -3.0))
        self.register_buffer("sigma_knots", knots)
        components = (3,) if colour == "opponent" else ()
        self.log_strength = nn.Parameter(torch.zeros(*components, knots.numel()))  # log λ at the knots
        self.log_scale = nn.Parameter(torch.zeros(*components, knots.numel()))  # log μ at the knots
        self.accuracy = AccuracyRecord(tolerance)  # the certified RMS error bounds of the calls
        self._smoothness = TensorKeyedCache(across_devices=True)  # a float
        self._operators = TensorKeyedCache()  # {(shape, dtype): RidgeFilters} for the current weights (their device)
        self._recent: list[tuple[Tensor, Tensor]] = []  # the last two calls' (components in, out): warm starts

    def check_state(self, source: str) -> None:
        """Refuse loaded tensors that the constructor's checks did not see: knots other than the config's (the
        buffer would override them), and λ, μ at the knots or ridge slopes that are not finite in float32 (every
        call would fail)."""
        if not torch.equal(self.sigma_knots, torch.tensor(self.config["sigma_knots"], dtype=self.sigma_knots.dtype)):
            raise ValueError(f"{source}: tensor sigma_knots {self.sigma_knots.tolist()} differs from the config's "
                             f"{self.config['sigma_knots']}; the file is corrupt")
        with torch.no_grad():
            for name, value in (("λ at the knots", self.log_strength.exp()), ("μ at the knots", self.log_scale.exp()),
                                ("ridge slopes", self.slopes())):
                if not bool(torch.isfinite(value).all()):
                    raise ValueError(f"{source}: {name} overflow float32 ({value.max().item():.3g}); the file is corrupt")

    def for_channels(self, channels: int, colour: str = "rgb") -> "ConvexRidgeDenoiser":
        """The same regulariser R on images of ``channels`` channels: 'rgb' regularises each channel separately (the
        prox of Σ_k R(x_k) is the channelwise prox); 'opponent' (3 channels) each opponent component, every one
        starting from this model's λ(σ), μ(σ) (to be calibrated per component; from an 'opponent' model to 'rgb':
        the luminance's). Both stay firmly non-expansive."""
        if channels < 1:
            raise ValueError(f"channels must be ≥ 1, got {channels}")
        twin = type(self)(**{**self.config, "channels": channels, "colour": colour})
        state = self.state_dict()
        for name in ("log_strength", "log_scale"):
            value, target = state[name], getattr(twin, name)
            state[name] = (value[0] if value.dim() > target.dim() else value).expand_as(target).clone()
        twin.load_state_dict(state)
        return twin.to(self.weight)

    # --- the regulariser -------------------------------------------------------------------------------------------
    def filters(self) -> Tensor:
        """The zero-mean filters w_c (constants are not penalised)."""
        return self.weight - self.weight.mean(dim=(2, 3), keepdim=True)

    def slopes(self) -> Tensor:
        """s_cj ≥ 0."""
        return F.softplus(self.theta)

    def strength_and_scale(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """λ(σ), μ(σ) per image and component ([B, m] each, m = 3 for 'opponent', else 1): linear interpolation of
        the knot values, λ linear from 0 at σ = 0."""
        top = float(self.sigma_knots[-1])
        if not bool((sigma <= top * (1 + 1e-6)).all()):
            raise ValueError(f"noise level {float(sigma.max()):.6g} is above this denoiser's calibrated range "
                             f"(σ ≤ {top:.6g}); use a model calibrated for it")
        knots = torch.cat([self.sigma_knots.new_zeros(1), self.sigma_knots])
        log_strength, log_scale = (v.view(-1, knots.numel() - 1) for v in (self.log_strength, self.log_scale))
        strength = torch.cat([log_strength.new_zeros(log_strength.shape[0], 1), log_strength.exp()], 1)
        scale = torch.cat([log_scale[:, :1], log_scale], 1).exp()
        index = torch.searchsorted(knots, sigma.clamp(max=top).contiguous(), right=True).clamp(1, knots.numel() - 1)
        low, high = knots[index - 1], knots[index]
        weight = ((sigma - low) / (high - low))[:, None]
        return (torch.lerp(strength[:, index - 1].T, strength[:, index].T, weight),
                torch.lerp(scale[:, index - 1].T, scale[:, index].T, weight))

    def component_parameters(self, sigma: Tensor, channels: int) -> tuple[Tensor, Tensor]:
        """λ, μ for the [B·channels, 1, H, W] component images of :meth:`to_components` ([B·channels, 1, 1, 1] each)."""
        return tuple(v.expand(-1, channels).reshape(-1, 1, 1, 1) for v in self.strength_and_scale(sigma))

    def to_components(self, x: Tensor) -> Tensor:
        """[B, C, H, W] → the [B·C, 1, H, W] images the prox acts on separately: the channels, or ('opponent') the
        components of Qx, computed in float64 and rounded to x's dtype."""
        if self.colour == "opponent":
            x = torch.einsum("ij,bjhw->bihw", OPPONENT.to(x.device), x.double()).to(x.dtype)
        return x.reshape(-1, 1, *x.shape[-2:])

    def from_components(self, z: Tensor, channels: int) -> Tensor:
        """:meth:`to_components`' inverse (Qᵀ in float64 for 'opponent'), as [B, channels, H, W] in z's dtype."""
        z = z.reshape(-1, channels, *z.shape[-2:])
        if self.colour == "opponent":
            z = torch.einsum("ji,bjhw->bihw", OPPONENT.to(z.device), z.double()).to(z.dtype)
        return z

    def operator(self, shape, filters: Tensor | None = None) -> RidgeFilters:
        """W E on images of ``shape`` with ``filters`` (default :meth:`filters`, differentiable)."""
        return RidgeFilters(self.filters() if filters is None else filters, shape, self.boundary)

    def frozen_operator(self, shape, dtype: torch.dtype) -> RidgeFilters:
        """W E for images of ``shape`` in ``dtype``, from the current weights without autograd; kept (a few shapes)
        while the weights are unchanged, so the solver's calls, its float64 confirmation and the Jacobian's CG
        share one spectrum and index map."""
        operators = self._operators.get(self.weight)
        if operators is None or len(operators) >= 8:
            operators = self._operators.put({}, self.weight)
        key = (tuple(shape[-2:]), dtype)
        if key not in operators:
            with torch.no_grad():
                operators[key] = self.operator(shape, self.filters().to(dtype))
        return operators[key]

    def gradient(self, x: Tensor, operator: RidgeFilters, slopes: Tensor, strength: Tensor, scale: Tensor) -> Tensor:
        """∇ of (λ/μ)R(μx) = λ (WE)ᵀ σ(μ WEx); λ, μ broadcast as [N, 1, 1, 1]."""
        return strength * operator.normal(x, lambda t, window: _response(t, slopes, scale, window))

    def smoothness(self, shape) -> float:
        """The step's smoothness constant L_R of R on images of ``shape``, cached while the weights are unchanged.
        Circular: ‖∇²R‖ ≤ max_ω Σ_c S_c |ŵ_c(ω)|², exact on the image's grid. Reflect: the guaranteed 4·max_ω(…) on
        the padded grid is about 3× too large, so L_R is 1.1 × a 30-step power estimate of ‖Σ_c S_c EᵀW_cᵀW_cE‖,
        capped by it; a step from an estimate only risks a slower solve, caught by ``max_iter``, never an output
        outside the certified error bound."""
        key = (self.weight, self.theta, torch.tensor(list(shape[-2:])))
        cached = self._smoothness.get(*key)
        if cached is not None:
            return cached
        height, width = shape[-2:]
        with torch.no_grad():
            operator = self.frozen_operator(shape, torch.float64)
            peaks = self.slopes().double().sum(1)
            bound = float((operator.spectrum.abs().pow(2) * peaks[:, None, None]).sum(0).max())
            if self.boundary == "reflect":
                v = torch.randn(1, 1, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(
                    operator.window.device)
                for _ in range(30):
                    v = v / v.norm()
                    image = operator.adjoint(peaks[None, :, None, None] * operator(v))
                    estimate, v = float((image * v).sum()), image
                bound = min(4 * bound, 1.1 * estimate)
        return self._smoothness.put(bound, *key)

    # --- the prox ---------------------------------------------------------------------------------------------------
    def error_bound(self, x: Tensor, y: Tensor, strength: Tensor, scale: Tensor) -> Tensor:
        """‖∇F(x)‖/√n per image ≥ RMS(x − D(y)), evaluated in float64."""
        x64, y64 = x.double(), y.double()
        gradient = x64 - y64 + self.gradient(x64, self.frozen_operator(x64.shape, x64.dtype),
                                             self.slopes().double(), strength.double(), scale.double())
        return _rms(gradient)

    @torch.no_grad()
    def solve(self, y: Tensor, strength: Tensor, scale: Tensor, start: Tensor | None = None,
              tolerance: float | None = None) -> tuple[Tensor, Tensor, int]:
        """D(y) for the [N, 1, H, W] batch y from ``start`` (default y) to ``tolerance`` (default the model's), each
        image with its own step 1/L_i, L_i = 1 + λ_iμ_i L_R (the opponent chrominances' L is 2–3× the luminance's):
        Nesterov's method in y's dtype down to max(tolerance, L_i·eps·RMS(y_i)), then, for the images whose float64
        bound is still above ``tolerance``, in float64 until it is below ``tolerance`` less the rounding to come (a
        float32 iterate's rounding moves ∇F by up to L·ulp(x): at σ = 50/255, L ≈ 700, that floor is near 1e-5 RMS,
        which float32 iterations then cross only by chance). Returns x in y's dtype, its certified bounds
        (:meth:`error_bound` at the float64 iterate plus the RMS of its rounding to y's dtype: the triangle
        inequality) and the most iterations any image took."""
        lipschitz = 1 + (strength * scale).double().view(-1) * self.smoothness(y.shape)
        tolerance = self.accuracy.current if tolerance is None else tolerance
        eps = torch.finfo(y.dtype).eps
        y_rms = _rms(y.double())
        x, iterations = self._nesterov(y, strength, scale, y if start is None else start, lipschitz,
                                       (lipschitz * eps * y_rms).clamp(min=tolerance), self.max_iter)
        x = x.double()
        bound = self.error_bound(x, y, strength, scale)
        late = (bound > tolerance).nonzero().view(-1)
        budget = self.max_iter - int(iterations[late].max()) if late.numel() else 0
        if budget > 0:
            # rounding to y's dtype moves each entry by ≤ eps/2 of it, and RMS(x) ≤ RMS(y) + tolerance (D(0) = 0, as
            # R is even, so ‖D(y)‖ ≤ ‖y‖)
            target = (tolerance - 0.5 * eps * (y_rms[late] + tolerance)).clamp(min=tolerance / 2)
            x[late], more = self._nesterov(y[late].double(), strength[late], scale[late], x[late], lipschitz[late],
                                           target, budget)
            iterations[late] += more
            bound[late] = self.error_bound(x[late], y[late], strength[late], scale[late])
        rounded = x.to(y.dtype)
        return rounded, bound + _rms(rounded.double() - x), int(iterations.max())

    def _nesterov(self, y: Tensor, strength: Tensor, scale: Tensor, start: Tensor, lipschitz: Tensor, target: Tensor,
                  budget: int) -> tuple[Tensor, Tensor]:
        """Nesterov's method for the 1-strongly convex F, L_i-smooth on image i (``lipschitz`` [N]), in y's dtype
        from ``start``: step 1/L_i, momentum (1 − 1/√L_i)/(1 + 1/√L_i). Every 10 steps the images whose ‖∇F(x)‖ (in
        y's dtype) is ≤ ``target`` RMS ([N]) stop, the others go on, until ``budget`` steps. Returns x and the
        steps each image took ([N])."""
        operator, slopes = self.frozen_operator(y.shape, y.dtype), self.slopes().to(y.dtype)
        strength, scale = strength.to(y.dtype), scale.to(y.dtype)
        step = lipschitz.to(y.dtype).reciprocal().view(-1, 1, 1, 1)
        momentum = (1 - step.sqrt()) / (1 + step.sqrt())
        threshold = target.to(y.dtype) * math.sqrt(y[0].numel())
        x = start.to(y.dtype, copy=True)
        z, steps = x.clone(), torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
        active = torch.arange(y.shape[0], device=y.device)
        for _ in range(0, budget, 10):
            gradient = x[active] - y[active] + self.gradient(x[active], operator, slopes, strength[active], scale[active])
            active = active[gradient.flatten(1).norm(dim=1) > threshold[active]]
            if active.numel() == 0:
                break
            y_a, x_a, z_a, strength_a, scale_a, step_a, momentum_a = (
                v[active] for v in (y, x, z, strength, scale, step, momentum))
            for _ in range(10):
                x_next = z_a - step_a * (z_a - y_a + self.gradient(z_a, operator, slopes, strength_a, scale_a))
                z_a = x_next + momentum_a * (x_next - x_a)
                x_a = x_next
            x[active], z[active] = x_a, z_a
            steps[active] += 10
        return x, steps

    def curvature(self, x: Tensor, operator: RidgeFilters, slopes: Tensor, scale: Tensor) -> Tensor:
        """σ'(μWEx) per filter and pixel (σ_c' = Σ_j s_cj 1[|t| < τ_j]): ∇²((λ/μ)R(μ·))(x) = λμ (WE)ᵀ diag(σ') WE."""
        return _activation_derivative(scale * operator(x), slopes)

    @torch.no_grad()
    def inverse_hessian(self, x: Tensor, rhs: Tensor, strength: Tensor, scale: Tensor, iterations: int = 100,
                        tolerance: float = 1e-6) -> Tensor:
        """v = (I + ∇²((λ/μ)R(μ·))(x))⁻¹ rhs by deepinv's conjugate gradients (the matrix is symmetric, ⪰ I), to a
        relative residual ``tolerance`` over the whole batch. At x = D(y) this is the Jacobian of D at y applied to rhs (implicit function theorem
        on ∇F(x) = 0; D is piecewise smooth, so this holds wherever no μWEx sits on a knot of σ)."""
        operator, slopes = self.frozen_operator(x.shape, x.dtype), self.slopes().to(x.dtype)
        weight = strength * scale * self.curvature(x, operator, slopes, scale)
        # eps: the smallest normal float only guards 0/0 (a zero rhs); deepinv's 1e-8 would distort the small
        # loss gradients this solves for
        return conjugate_gradient(lambda v: v + operator.adjoint(weight * operator(v)), rhs, max_iter=iterations,
                                  tol=tolerance, eps=torch.finfo(rhs.dtype).tiny, parallel_dim=None)

    def forward(self, x: Tensor, sigma=25 / 255, **kwargs) -> Tensor:
        """D_σ(x); differentiable in x (its Jacobian by :meth:`inverse_hessian`), not in the weights (train those with
        :func:`pnp_stable.training.convex_ridge.implicit_backward`)."""
        check_image(x, "denoiser input", channels=self.channels)
        if x.dtype != self.weight.dtype:
            raise ValueError(f"denoiser input is {x.dtype}, but this prox is solved, and its error certified, in "
                             f"{self.weight.dtype}: pass x.to({self.weight.dtype})")
        sigma = per_image_levels(sigma, x)
        size, smallest = self.weight.shape[-1], min(x.shape[-2:])
        if self.boundary == "reflect" and smallest <= size // 2:
            raise ValueError(f"image {tuple(x.shape[-2:])} is too small for {size}×{size} filters with reflect "
                             f"boundary (needs > {size // 2} pixels per axis)")
        if self.boundary == "circular" and smallest < size:  # the FFT grid would crop the filters, not wrap them
            raise ValueError(f"image {tuple(x.shape[-2:])} is smaller than the {size}×{size} filters, which circular "
                             f"boundary needs at least (use boundary='reflect', which needs > {size // 2} pixels)")
        strength, scale = self.component_parameters(sigma, x.shape[1])
        y = self.to_components(x)
        transform_error, allowance = self._transform_rounding(x, y)
        target = self.accuracy.current
        out, bound, _ = self.solve(y.detach(), strength.detach(), scale.detach(), self._warm_start(y.detach()),
                                   max(target - allowance, target / 2))
        self._recent = [(y.detach(), out), *self._recent[:1]]
        if torch.is_grad_enabled() and y.requires_grad:
            out = _ProxJacobian.apply(y, out, self, strength.detach(), scale.detach())
        image = self.from_components(out, x.shape[1])
        bound = _rms(bound.view(x.shape[0], -1)) + transform_error  # RMS over the image's channels
        if self.colour == "opponent":
            with torch.no_grad():
                exact = self.from_components(out.detach().double(), x.shape[1])
                bound = bound + _rms(image.detach().double() - exact) + TRANSFORM_ROUNDING * _rms(out.detach().view_as(x))
        self.accuracy.record(float(bound.max()))
        return image

    def _warm_start(self, y: Tensor) -> Tensor | None:
        """Per image, the output of whichever of the last two calls had the nearest input (D is non-expansive, so
        ‖D(y) − D(y')‖ ≤ ‖y − y'‖), None (start at y) when neither had y's shape: PnP iterations move their input a
        little per call (the last call is nearest), the adversarial search alternates two points (the call before)."""
        candidates = [(previous, out) for previous, out in self._recent if previous.shape == y.shape]
        if not candidates:
            return None
        nearest = torch.stack([_rms(y - previous) for previous, _ in candidates]).argmin(0)
        return torch.stack([out for _, out in candidates])[nearest, torch.arange(y.shape[0], device=y.device)]

    @torch.no_grad()
    def _transform_rounding(self, x: Tensor, y: Tensor) -> tuple[Tensor, float]:
        """For y = :meth:`to_components` of x: a per-image RMS bound on y's distance to the exact Qx (its rounding and
        the float64 arithmetic; D is non-expansive, so it bounds the output's shift too), and an allowance for the
        output's transform back (rounding ≤ eps/2 of each entry plus the arithmetic, RMS(D(y)) ≤ RMS(y) + tolerance
        as D(0) = 0): the solve aims at the tolerance less both. Zero for 'rgb' (no arithmetic)."""
        if self.colour == "rgb":
            return x.new_zeros(x.shape[0], dtype=torch.float64), 0.0
        x64 = x.detach().double()
        error = _rms(y.detach().double().view_as(x) - self.to_components(x64).view_as(x)) + TRANSFORM_ROUNDING * _rms(x64)
        output = (0.5 * torch.finfo(x.dtype).eps + TRANSFORM_ROUNDING) * (_rms(x64) + error + self.accuracy.tolerance)
        return error, float((error + output).max())

    @property
    def certificate(self) -> Certificate:
        accuracy = self.accuracy
        method = (f"exact prox of a convex ridge regulariser (firmly non-expansive for any weights and σ); each call "
                  f"solved to a certified RMS error ≤ {accuracy.tolerance:g} (strong convexity: ‖x − D(y)‖ ≤ ‖∇F(x)‖)")
        if not accuracy.accurate:
            method += (f"; a call missed it ({accuracy.miss_text()}; max_iter = {self.max_iter}): estimated for "
                       "this model object from then on (load it afresh, or raise max_iter)")
        return Certificate(lipschitz=1.0, alpha=0.5, method=method, guaranteed=accuracy.accurate,
                           tolerance=accuracy.tolerance, scheduled=True)
