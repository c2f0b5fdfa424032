"""Certified averaged denoisers: the paper's network and the relaxation that sets its averagedness."""

from __future__ import annotations

import deepinv as dinv
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_image, check_nonnegative_levels, check_whole, per_image_levels
from ..theory import Certificate, compose_averagedness, relaxation_for_target
from .blocks import NonexpansiveBlock, SLLBlock
from .certificates import certificate_of, keep_description
from .layers import MonotoneSpline, get_activation, get_integrator

__all__ = ["AveragedDenoiser", "RelaxedDenoiser"]

ADAPTIVE_SIGMA_UNIT = 25 / 255  # θ(σ)'s logit is affine in σ measured in this unit
ADAPTIVE_RATE = 10.0  # the logit is ADAPTIVE_RATE × (p₀ + p₁σ/unit): Adam moves it ten times faster than the weights
ADAPTIVE_INIT = (-2.0, 6.0)  # initial logit: θ(0) ≈ 0.12, θ(25/255) ≈ 0.98
BLOCKS = ("gradient-flow", "sll")  # NonexpansiveBlock (the paper's) or SLLBlock


def _rescale(z: Tensor, current: int, target: int) -> Tensor:
    """Move z from resolution factor ``current`` to ``target`` (1, 2, 4) by pixel (un)shuffles of factor 2: each is a
    permutation of the entries, so every change of resolution is orthogonal and undone exactly by the reverse one."""
    while current < target:
        z, current = F.pixel_unshuffle(z, 2), current * 2
    while current > target:
        z, current = F.pixel_shuffle(z, 2), current // 2
    return z


class AveragedDenoiser(dinv.models.Denoiser):
    """D(x) = (1 − θ)x + θ·Pᵀ B_K∘…∘B_1 (Px + c_σ), provably averaged (deepinv ``Denoiser``).

    P zero-pads the C input channels to ``width`` channels (an isometry; Pᵀ crops them back),
    c_σ optionally writes the noise level into channel C (cropped away, so averagedness in x
    holds for every σ), and each B_k is a :class:`NonexpansiveBlock` (``block="gradient-flow"``, the paper's;
    ``integrator``, ``time``, ``normalise`` and ``learn_time`` configure it) or an :class:`SLLBlock`
    (``block="sll"``: θ-averaged by a closed-form scaling, no norm bound to compute). With α_N the composed
    averagedness of the blocks (1 when they are only non-expansive, e.g. Heun/RK4), D is
    θ·α_N-averaged; θ = ``relaxation`` (default 1, no relaxation). ``activation`` names σ (:data:`ACTIVATIONS`:
    monotone, slopes in [0, 1]); ``"spline"`` learns one three-piece linear spline per channel (:class:`MonotoneSpline`).
    ``scales`` (one factor f ∈ {1, 2, 4} per block; default all 1) runs block k at 1/f_k resolution with
    width·f_k² channels: the image is zero-padded to a multiple of max f (an isometry, cropped back by Pᵀ) and
    moved between resolutions by pixel (un)shuffles Q (permutations). For an isometry E (EᵀE = I) and an
    α-averaged N = (1 − α)I + αM, EᵀNE = (1 − α)I + α·EᵀME is α-averaged, and so is QᵀB Q; the composition
    keeps α_N. Coarse blocks see a larger neighbourhood at the same cost per pixel.
    ``noise_adaptive=True`` adds a learned relaxation toward the identity that depends on the noise
    level, D(x, σ) = (1 − θ(σ))x + θ(σ)·N(x, σ) with θ(σ) = sigmoid(affine in σ) ∈ (0, 1): for each σ
    this is θ(σ)·α_N-averaged, so the certificate α = relaxation·α_N·sup_{σ≥0} θ(σ) still holds (σ < 0 is
    refused), and at small σ
    the denoiser can stay close to the identity (which PnP-FB needs: its fixed point inherits D's
    error on clean images).
    The certificate comes from guaranteed norm bounds and describes the network in eval mode.
    """

    def __init__(
        self,
        channels: int = 1,
        width: int = 32,
        depth: int = 8,
        kernel_size: int = 3,
        activation: str = "leaky_relu",
        integrator: str = "euler",
        time: float | None = None,
        budget: float = 0.95,
        relaxation: float = 1.0,
        noise_level_input: bool = True,
        normalise: bool = True,
        learn_time: bool = True,
        noise_adaptive: bool = False,
        scales: list[int] | None = None,
        block: str = "gradient-flow",
    ):
        super().__init__()
        extra = 1 if noise_level_input else 0
        for name, value in (("channels", channels), ("width", width), ("depth", depth)):
            check_whole(value, name)
        if width < channels + extra:
            raise ValueError(f"width {width} must be ≥ channels + noise channel = {channels + extra}")
        if noise_adaptive and not noise_level_input:
            raise ValueError("noise_adaptive=True needs noise_level_input=True (θ(σ) depends on the noise level)")
        if not 0 < relaxation <= 1:
            raise ValueError(f"relaxation θ must lie in (0, 1], got {relaxation}")
        lipschitz = get_activation(activation).lipschitz
        step_factor = get_integrator(integrator).step_factor
        if time is None:  # one step of the full budget when ‖A‖ = 1
            time = 2 * budget * step_factor / lipschitz
        self.config = dict(
            channels=channels, width=width, depth=depth, kernel_size=kernel_size, activation=activation,
            integrator=integrator, time=float(time), budget=float(budget), relaxation=float(relaxation),
            noise_level_input=noise_level_input, normalise=normalise, learn_time=learn_time,
        )
        scales = [1] * depth if scales is None else scales
        if (not isinstance(scales, (list, tuple)) or len(scales) != depth
                or any(isinstance(f, bool) or not isinstance(f, int) or f not in (1, 2, 4) for f in scales)):
            raise ValueError(f"scales must be a list of one resolution factor 1, 2 or 4 (whole numbers) per block "
                             f"({depth}), got {scales!r}")
        scales = list(scales)
        if scales != [1] * depth:  # stored only when used, as noise_adaptive
            self.config["scales"] = scales
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got '{block}'")
        if block == "sll":
            if integrator != "euler" or not normalise:
                raise ValueError("an SLL block is one explicit step with its own scaling: integrator and normalise "
                                 "apply to gradient-flow blocks only")
            self.config["block"] = block
        if noise_adaptive:  # stored only when used, so earlier weights files keep loading unchanged
            self.config["noise_adaptive"] = True
            self.adaptive_logit = nn.Parameter(torch.tensor(ADAPTIVE_INIT) / ADAPTIVE_RATE)
        else:
            self.adaptive_logit = None
        self.channels = channels
        self.width = width
        self.noise_level_input = noise_level_input
        self.relaxation = float(relaxation)
        self.scales = scales
        self.blocks = nn.ModuleList(  # a coarse block's power vector is a smaller image of more channels
            SLLBlock(width * f * f, kernel_size, activation, budget) if block == "sll" else
            NonexpansiveBlock(width * f * f, kernel_size, activation, integrator, time, budget, normalise, learn_time,
                              power_size=32 // f)
            for f in scales
        )

    def forward(self, x: Tensor, sigma=None, **kwargs) -> Tensor:
        check_image(x, "denoiser input", channels=self.channels)
        dtype = next(self.parameters()).dtype
        if x.dtype != dtype:  # e.g. float64 from numpy: the network runs in its weights' precision
            return self.forward(x.to(dtype), sigma, **kwargs).to(x.dtype)
        if self.noise_level_input:
            if sigma is None:
                raise ValueError("this denoiser is conditioned on the noise level: call it as D(x, sigma)")
            sigma = per_image_levels(sigma, x)
        return self.forward_unchecked(x, sigma)

    def forward_unchecked(self, x: Tensor, sigma: Tensor | None = None) -> Tensor:
        """The network on a batch already checked as :meth:`forward` checks it (finite, ``channels`` channels; σ a
        [B] tensor ≥ 0 when conditioned on it): the trainer compiles this, since torch.compile cannot branch on the
        data as the checks do."""
        parts = [x]
        if self.noise_level_input:
            sigma_map = sigma.to(x.dtype)[:, None, None, None].expand(x.shape[0], 1, *x.shape[-2:])
            parts.append(sigma_map)
        pad = self.width - sum(p.shape[1] for p in parts)
        parts.append(x.new_zeros(x.shape[0], pad, *x.shape[-2:]))
        # channels-last: oneDNN runs these convolutions about 1.8× faster on CPU (one 512×512 colour call: 1.23 → 0.67 s)
        z = torch.cat(parts, dim=1).contiguous(memory_format=torch.channels_last)
        height, width = x.shape[-2:]
        multiple = max(self.scales)
        if height % multiple or width % multiple:
            z = F.pad(z, (0, -width % multiple, 0, -height % multiple))
        factor = 1
        for block, scale in zip(self.blocks, self.scales):
            z = block(_rescale(z, factor, scale))
            factor = scale
        out = _rescale(z, factor, 1)[:, : self.channels, :height, :width].contiguous()
        if self.adaptive_logit is not None:
            theta = self.adaptive_relaxation(sigma_map[:, :, :1, :1])  # [B, 1, 1, 1]
            out = x + theta * (out - x)
        if self.relaxation == 1:
            return out
        return (1 - self.relaxation) * x + self.relaxation * out

    @property
    def peak_feature_maps(self) -> int:
        """Float32 maps of ``width`` channels per pixel that one eval call holds at its peak (tiling's memory
        estimate), rounded up from one call on a 1024×1024 image (``benchmarks/results/whole_image_memory.md``, maps
        measured): 4 for gradient-flow blocks at full resolution (3.9–4.0), 6 with SLL layers (4.9), 8 with a change of
        resolution (gradient flow 4.9–5.0, SLL 5.8–5.9); learned spline activations hold 2 more (SLL at full
        resolution 5.9, multi-scale 6.8–6.9)."""
        spline = 2 if isinstance(self.blocks[0].activation, MonotoneSpline) else 0
        if max(self.scales) > 1:
            return 8 + spline
        return (6 if isinstance(self.blocks[0], SLLBlock) else 4) + spline

    def adaptive_relaxation(self, sigma) -> Tensor:
        """θ(σ) = sigmoid(r·(p₀ + p₁·σ/unit)) ∈ (0, 1) (r = ADAPTIVE_RATE); 1 without ``noise_adaptive``."""
        sigma = torch.as_tensor(sigma)
        sigma = sigma if sigma.is_floating_point() else sigma.float()
        if self.adaptive_logit is None:
            return torch.ones_like(sigma)
        p0, p1 = ADAPTIVE_RATE * self.adaptive_logit.to(sigma)
        return torch.sigmoid(p0 + p1 * sigma / ADAPTIVE_SIGMA_UNIT)

    def adaptive_supremum(self) -> float:
        """sup_{σ≥0} θ(σ): 1 when θ increases with σ (its limit), θ(0) otherwise."""
        if self.adaptive_logit is None:
            return 1.0
        p0, p1 = (ADAPTIVE_RATE * self.adaptive_logit.detach()).tolist()
        return 1.0 if p1 > 0 else float(torch.sigmoid(torch.tensor(p0)))

    @torch.no_grad()
    def calibrate(self) -> list[float]:
        """Align every block's training-time norm with its guaranteed bound (see NonexpansiveBlock)."""
        return [block.calibrate() for block in self.blocks]

    def certify(self, progress: bool = False) -> Certificate:
        """Compute every layer's guaranteed norm bound now (seconds per 32-channel layer; cached until the
        weights change) and return the certificate. The first eval-mode forward does this implicitly."""
        from tqdm.auto import tqdm

        for conv in tqdm(self.bounded_convs(), desc="certifying", disable=not progress, leave=False):
            conv.weight_norm_bound()
        return self.certificate

    def bounded_convs(self) -> list:
        """The convolutions whose guaranteed norm bounds enter the certificate (gradient-flow blocks; SLL blocks
        need none), in block order: what weights files store and ``verify`` recomputes."""
        return [block.conv for block in self.blocks if isinstance(block, NonexpansiveBlock)]

    def substeps(self) -> list[int]:
        return [block.substeps() for block in self.blocks]

    @property
    def certificate(self) -> Certificate:
        """Lipschitz ≤ 1 and α = θ·α_N from guaranteed per-layer norm bounds (eval-mode network), for every σ."""
        return self._certificate(self.adaptive_supremum(), "sup θ(σ)")

    def certificate_at(self, sigma) -> Certificate:
        """Certificate of D(·, σ) at the given noise level(s): α = relaxation·θ(σ)·α_N with θ(σ) the noise-adaptive
        relaxation (its largest value over a [B] tensor of levels); without ``noise_adaptive``, :attr:`certificate`."""
        if self.adaptive_logit is None:
            return self.certificate
        sigma = check_nonnegative_levels(torch.as_tensor(sigma, dtype=self.adaptive_logit.dtype).detach())  # as forward casts σ
        theta = float(self.adaptive_relaxation(sigma).detach().max())
        return self._certificate(theta, f"max θ(σ) over σ ∈ [{float(sigma.min()):.6g}, {float(sigma.max()):.6g}] given")

    def _certificate(self, theta: float, theta_label: str) -> Certificate:
        """α = relaxation·θ·α_N: N = Pᵀ B_K∘…∘B_1 P is α_N-averaged (1: only non-expansive), and
        (1 − θ)I + θN is θα_N-averaged."""
        block_alphas = [block.averagedness() for block in self.blocks]
        kind = "SLL" if self.config.get("block") == "sll" else self.config["integrator"]
        if all(a is not None for a in block_alphas):
            alpha_net = compose_averagedness(block_alphas)
            how = f"{len(self.blocks)} {kind} blocks, composed α_N = {alpha_net:.6g}"
        else:
            alpha_net = 1.0
            how = f"{len(self.blocks)} non-expansive {kind} blocks"
        alpha = self.relaxation * theta * alpha_net
        adaptive = f"; noise-adaptive relaxation {theta_label} = {theta:.6g}" if self.adaptive_logit is not None else ""
        if kind == "SLL":
            ingredients = (f"each layer θ-averaged with T from Schur's test on |AAᵀ| (closed form, float64, rounded up), "
                           f"θ ≤ {self.config['budget']:g}")
        else:
            ingredients = (f"per-layer ‖A‖ from the guaranteed conv-symbol bound (Szegő branch and bound, rel. tol "
                           f"1e-2), sub-steps h·L‖A‖² ≤ 2ar with a = {self.config['budget']:g}")
        method = f"{how}; {ingredients}; relaxation θ = {self.relaxation:g}{adaptive}"
        unproved = {block.integrator.name for block in self.blocks
                    if isinstance(block, NonexpansiveBlock) and block.integrator.proof is None}
        if unproved:
            method += (f"; estimated: no proof that a {'/'.join(sorted(unproved))} step is non-expansive on these flows "
                       "(its circle-contractivity radius is 0; see pnp_stable.denoisers.layers.Integrator)")
        alpha = None if alpha >= 1 else alpha
        return Certificate(lipschitz=1.0, alpha=alpha, method=method, guaranteed=not unproved, tolerance=1e-12)

    def relaxed(self, alpha: float) -> "RelaxedDenoiser":
        """(1 − θ)I + θD with θ = alpha/α_D, which is ``alpha``-averaged."""
        return RelaxedDenoiser(self, alpha)

    def firmly_nonexpansive(self) -> "RelaxedDenoiser":
        """The 1/2-averaged (firmly non-expansive) relaxation, as DRS/ADMM require."""
        return self.relaxed(0.5)


class RelaxedDenoiser(dinv.models.Denoiser):
    """(1 − θ)I + θD for a certified D; θ = target/α_D makes it ``target``-averaged.

    A merely non-expansive D (α_D = 1) gives θ = target < 1.
    """

    def __init__(self, base: nn.Module, target: float):
        super().__init__()
        base_certificate = certificate_of(base)
        if base_certificate.alpha is None and not base_certificate.nonexpansive:
            raise ValueError(f"cannot relax {type(base).__name__}: it has no averagedness or non-expansiveness certificate")
        self.base = base
        keep_description(self, base)
        self.target = float(target)
        base_alpha = base_certificate.alpha if base_certificate.alpha is not None else 1.0
        self.theta = relaxation_for_target(base_alpha, self.target)

    def forward(self, x: Tensor, sigma=None, **kwargs) -> Tensor:
        return (1 - self.theta) * x + self.theta * self.base(x, sigma, **kwargs)

    @property
    def certificate(self) -> Certificate:
        return certificate_of(self.base).relaxed(self.theta)

    def certificate_at(self, sigma) -> Certificate:
        """(1 − θ)I + θD(·, σ) is θα_D(σ)-averaged."""
        return certificate_of(self.base, sigma).relaxed(self.theta)
