"""Frozen-guide linear denoisers: W(g) symmetric with 0 ≼ W ≼ I, hence firmly non-expansive.

A guide image g (from any denoiser: BM3D, a DnCNN, the certified network, a user's DRUNet) is computed
once and frozen. From it a *linear* filter W(g) is built whose certificate holds by construction:

1. **Firm non-expansiveness.** W symmetric with spectrum in [0, 1] ⇒ for d = x − y,
   ‖Wd‖² = dᵀW²d ≤ dᵀWd = ⟨Wd, d⟩, because W − W² = W^{1/2}(I − W)W^{1/2} ≽ 0: W is 1/2-averaged.
   It is the prox of the convex φ(x) = ½xᵀ(W⁺ − I)x + ι_{range W}(x) (W⁺ ≽ I on range W):
   p = prox_φ(v) ⇔ v − p ∈ (W⁺ − I)p + ker W ⇔ p = Wv.
2. **Linearised BM3D** (:class:`LinearisedBM3D`). All circular p×p patch positions are partitioned
   into groups of similar patches of g; with P_g the selection of a group's K patches, T an orthonormal
   3-D transform (2-D DCT ⊗ 1-D DCT) and Wiener factors 0 ≤ S_g ≤ 1 from the guide's coefficients,
   M = Σ_g P_gᵀ Tᵀ S_g T P_g satisfies 0 ≼ M ≼ Λ = Σ_g P_gᵀ P_g, because 0 ≼ Tᵀ S_g T ≼ I. Λ is
   diagonal (P_g only selects coordinates), and since every position lies in exactly one group, each
   pixel lies in exactly p² patches: Λ = p²I, so W = M/p² is symmetric with 0 ≼ W ≼ I. An average of
   such W over several partitions is a convex combination, so it keeps both properties.
   (BM3D's own overlapping groups make Λ vary ~60× from pixel to pixel; Λ^{-1/2} M Λ^{-1/2} is then
   certified too, but it modulates the image by Λ^{±1/2} and loses ~10 dB. The partition keeps Λ flat.)
3. **Symmetric kernel filter** (:class:`SymmetricKernelFilter`, non-local means on the guide).
   K symmetric with K_ij ≥ 0 and d_i = Σ_j K_ij > 0: S = D^{-1/2} K D^{-1/2} is similar to the
   row-stochastic D^{-1}K, so its spectrum lies in [−1, 1]; W = S² is symmetric with spectrum in [0, 1].
4. **Colour.** The orthonormal opponent transform Q (QᵀQ = I) keeps both: QᵀWQ is symmetric with
   spectrum in [0, 1] whenever W is.
5. **What the guarantee covers.** For a guide frozen during a run, D(·, σ) = W(g, σ) is one fixed
   firmly non-expansive operator, so every PnP scheme of :mod:`pnp_stable.solvers` is averaged and the
   monitor's checks apply; the limit minimises the convex τf + φ. Re-guiding between runs builds a new
   operator: each run is certified for its own guide, the sequence of runs is not one averaged iteration.
   This is a certified *operator for a fixed guide*, not a denoiser certified for every input:
   x ↦ W(g(x))x, with the guide recomputed from x, is non-linear and carries no certificate.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import deepinv as dinv
import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_image, check_noise_level
from ..theory import Certificate

__all__ = [
    "CONSTRUCTIONS",
    "GuidedDenoiser",
    "LinearisedBM3D",
    "SymmetricKernelFilter",
    "dct_matrix",
    "opponent_matrix",
    "partition_patches",
]


def dct_matrix(n: int, dtype=torch.float64) -> Tensor:
    """The orthonormal DCT-II matrix C (C Cᵀ = I): (C x)_k = √(2/n) c_k Σ_j x_j cos(π(2j + 1)k/(2n))."""
    j = torch.arange(n, dtype=dtype)
    matrix = torch.cos(math.pi * (2 * j[None, :] + 1) * j[:, None] / (2 * n)) * math.sqrt(2 / n)
    matrix[0] /= math.sqrt(2)
    return matrix


def opponent_matrix(dtype=torch.float64) -> Tensor:
    """Orthonormal opponent colour transform (rows: luminance, red−blue, green vs magenta); QᵀQ = I."""
    return torch.tensor([[1 / 3**0.5] * 3,
                         [1 / 2**0.5, 0.0, -1 / 2**0.5],
                         [1 / 6**0.5, -2 / 6**0.5, 1 / 6**0.5]], dtype=dtype)


def _to_opponent(x: Tensor) -> Tensor:
    """[C, H, W] → opponent channels (identity for gray)."""
    if x.shape[0] == 1:
        return x
    return torch.einsum("dc,chw->dhw", opponent_matrix(x.dtype).to(x.device), x)


def _from_opponent(x: Tensor) -> Tensor:
    if x.shape[0] == 1:
        return x
    return torch.einsum("dc,dhw->chw", opponent_matrix(x.dtype).to(x.device), x)


def _circular_patches(image: Tensor, patch: int) -> Tensor:
    """[C, H, W] → all H·W circular patches [C, H·W, p²]; patch (r, c) covers rows r…r+p−1 mod H."""
    padded = F.pad(image[None], (0, patch - 1, 0, patch - 1), mode="circular")[0]
    return F.unfold(padded[:, None], patch).transpose(1, 2)


def _circular_fold(patches: Tensor, height: int, width: int, patch: int) -> Tensor:
    """The adjoint of :func:`_circular_patches`: [C, H·W, p²] → [C, H, W], overlaps summed."""
    out = F.fold(patches.transpose(1, 2), (height + patch - 1, width + patch - 1), patch)[:, 0]
    image = out[:, :height, :width].clone()
    image[:, : patch - 1, :] += out[:, height:, :width]
    image[:, :, : patch - 1] += out[:, :height, width:]
    image[:, : patch - 1, : patch - 1] += out[:, height:, width:]
    return image


def _bisect(features: Tensor, members: Tensor, group: int) -> Tensor:
    """Split each row of ``members`` ([T, n], n = group·2^j) into groups of ``group`` by recursive median
    cuts along the top principal direction of their ``features`` (a balanced k-d tree): [T·n/group, group]."""
    groups = members[:, None, :]
    while groups.shape[2] > group:
        centred = features[groups]
        centred = centred - centred.mean(2, keepdim=True)
        direction = torch.ones(*centred.shape[:2], centred.shape[3], dtype=centred.dtype)
        for _ in range(6):  # power iteration for the top principal direction of each set
            direction = torch.einsum("tgnd,tgn->tgd", centred, torch.einsum("tgnd,tgd->tgn", centred, direction))
            direction = direction / direction.norm(dim=2, keepdim=True).clamp_min(1e-12)
        order = torch.einsum("tgnd,tgd->tgn", centred, direction).argsort(2)
        groups = torch.gather(groups, 2, order).reshape(groups.shape[0], groups.shape[1] * 2, -1)
    return groups.reshape(-1, group)


def partition_patches(luminance: Tensor, patch: int = 8, tile: int = 32, group: int = 16,
                      shift: tuple[int, int] = (0, 0)) -> list[Tensor]:
    """Partition all H·W circular patch positions of ``luminance`` ([H, W]) into groups of similar patches.

    The position grid, rolled by ``shift``, is cut into ``tile``×``tile`` tiles; the positions of each
    tile are split into groups of ``group`` by :func:`_bisect` on the guide's patches. Positions in
    the strips left over when ``tile`` does not divide H or W form groups of one. Each position lies in
    exactly one group, so Σ_g P_gᵀP_g = p²·I. Returns index tensors [G, K] of flat positions, one per
    group size K.
    """
    height, width = luminance.shape
    if group & (group - 1) or tile * tile % group:
        raise ValueError(f"group size {group} must be a power of two dividing tile² = {tile * tile}")
    positions = torch.roll(torch.arange(height * width).reshape(height, width), (-shift[0], -shift[1]), (0, 1))
    rows, cols = height // tile * tile, width // tile * tile
    full = positions[:rows, :cols].reshape(rows // tile, tile, cols // tile, tile).permute(0, 2, 1, 3)
    full = full.reshape(-1, tile * tile)
    rest = torch.cat([positions[rows:, :].flatten(), positions[:rows, cols:].flatten()])
    groups = []
    if full.numel():
        groups.append(_bisect(_circular_patches(luminance[None], patch)[0], full, group))
    if rest.numel():
        groups.append(rest[:, None])
    return groups


class LinearisedBM3D:
    """W = (1/n) Σ_partitions p⁻² Σ_g P_gᵀ Tᵀ S_g T P_g (module docstring, item 2), for one guide.

    Built once from ``guide`` ([C, H, W], C = 1 or 3; colour works in opponent space, groups formed
    on its luminance; default tiles/groups 32/16 for gray, 64/32 for colour): ``shifts`` partitions of all circular patch positions into groups of similar
    patches (:func:`partition_patches`). Each partition has Λ = Σ_g P_gᵀP_g = p²I exactly, so its
    term is symmetric with spectrum in [0, 1], and so is the average of the partitions.
    :meth:`apply` uses the Wiener factors S = c²/(c² + σ²) of the guide's coefficients c.
    """

    def __init__(self, guide: Tensor, patch: int = 8, tile: int | None = None, group: int | None = None, shifts: int = 2):
        self.channels, self.height, self.width = guide.shape
        tile = tile or (64 if self.channels == 3 else 32)  # chosen on BSD68/CBSD68 images 1–4 at σ = 25/255 (notes of #20)
        group = group or (32 if self.channels == 3 else 16)
        if self.height < patch or self.width < patch:
            raise ValueError(f"image of {self.height}×{self.width} pixels is smaller than the {patch}×{patch} patch; "
                             "use a smaller patch (patch=...) or a larger image")
        self.patch, self.dtype = patch, guide.dtype
        opponent = _to_opponent(guide)
        offsets = [(i * tile // shifts, i * tile // shifts) for i in range(shifts)]
        self.partitions = [partition_patches(opponent[0], patch, tile, group, offset) for offset in offsets]
        self.patch_transform = torch.kron(dct_matrix(patch), dct_matrix(patch)).to(self.dtype)
        guide_spectra = _circular_patches(opponent, patch) @ self.patch_transform.T
        self.group_transforms = {size: dct_matrix(size).to(self.dtype)
                                 for size in {index.shape[1] for partition in self.partitions for index in partition}}
        self.guide_energy = [[self._group_transform(guide_spectra[:, index]).pow(2) for index in partition]
                             for partition in self.partitions]  # c² per group: [C, G, K, p²]
        # each position lies in exactly one group, so putting the filtered patches back is a permutation
        self.inverse = [torch.cat([index.flatten() for index in partition]).argsort() for partition in self.partitions]
        self._cache: tuple[float, list] | None = None

    def _group_transform(self, spectra: Tensor, inverse: bool = False) -> Tensor:
        """The 1-D DCT along each group of 2-D patch spectra [C, G, K, p²] (T = this ⊗ the 2-D DCT)."""
        matrix = self.group_transforms[spectra.shape[2]]
        return (matrix.T if inverse else matrix) @ spectra

    def _factors(self, sigma: float) -> list:
        """Wiener factors S = c²/(c² + σ²) ∈ [0, 1] for noise level σ, cached for the last σ."""
        if self._cache is None or self._cache[0] != sigma:
            self._cache = (sigma, [[energy / (energy + sigma**2) for energy in partition] for partition in self.guide_energy])
        return self._cache[1]

    def apply(self, x: Tensor, sigma: float) -> Tensor:
        """W(g, σ) x for one image x of the guide's shape [C, H, W]."""
        spectra = _circular_patches(_to_opponent(x.to(self.dtype)), self.patch) @ self.patch_transform.T
        out = 0
        for partition, factors, inverse in zip(self.partitions, self._factors(float(sigma)), self.inverse):
            filtered = [self._group_transform(shrink * self._group_transform(spectra[:, index]), inverse=True).flatten(1, 2)
                        for index, shrink in zip(partition, factors)]
            out = out + torch.cat(filtered, 1)[:, inverse]
        out = (out @ self.patch_transform) / (len(self.partitions) * self.patch**2)
        return _from_opponent(_circular_fold(out, self.height, self.width, self.patch)).to(x.dtype)


class SymmetricKernelFilter:
    """W = S², S = D^{-1/2} K D^{-1/2} with the non-local-means kernel of the guide (module docstring, item 3):
    K_ij = exp(−d_ij/(h·σ)²) for pixels j within ±``search`` of i, d_ij the mean squared difference of
    the guide's (2·``radius`` + 1)² patches around i and j over all channels, K_ii = 1.
    K is symmetric by construction: each offset pair (o, −o) uses one weight map."""

    def __init__(self, guide: Tensor, search: int = 5, radius: int = 3, strength: float = 1.0):
        self.channels, self.height, self.width = guide.shape
        self.dtype = guide.dtype
        self.strength = float(strength)
        if self.height <= search or self.width <= search:
            raise ValueError(f"image of {self.height}×{self.width} pixels is too small for a ±{search} search window")
        self.offsets = [(dy, dx) for dy in range(0, search + 1) for dx in range(-search, search + 1) if dy > 0 or dx > 0]
        g = guide.double()
        size = 2 * radius + 1
        distances = []
        for dy, dx in self.offsets:
            diff = torch.full_like(g, float("nan"))
            diff[:, : self.height - dy, max(0, -dx) : self.width - max(0, dx)] = (
                g[:, : self.height - dy, max(0, -dx) : self.width - max(0, dx)]
                - g[:, dy:, max(0, dx) : self.width + min(0, dx)])
            squared = diff.pow(2).mean(0, keepdim=True)[None]
            box = F.avg_pool2d(F.pad(squared, (radius,) * 4, mode="replicate"), size, stride=1)
            distances.append(box[0, 0])
        self.distance = torch.stack(distances).to(self.dtype)  # d(i, i + o) [offsets, H, W]; NaN where i + o is outside
        self._cache: tuple[float, Tensor, Tensor] | None = None

    def _shift(self, v: Tensor, dy: int, dx: int) -> Tensor:
        """(shift v)[i] = v[i + o], zero where i + o is outside."""
        out = torch.zeros_like(v)
        out[..., : self.height - dy, max(0, -dx) : self.width - max(0, dx)] = v[..., dy:, max(0, dx) : self.width + min(0, dx)]
        return out

    def _unshift(self, v: Tensor, dy: int, dx: int) -> Tensor:
        """The adjoint of :meth:`_shift`: (unshift v)[i + o] = v[i]."""
        out = torch.zeros_like(v)
        out[..., dy:, max(0, dx) : self.width + min(0, dx)] = v[..., : self.height - dy, max(0, -dx) : self.width - max(0, dx)]
        return out

    def _factors(self, sigma: float) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[0] != sigma:
            bandwidth = max(self.strength * sigma, 1e-6) ** 2
            weights = torch.exp(-self.distance / bandwidth).nan_to_num(nan=0.0)  # K(i, i + o)
            degree = torch.ones(self.height, self.width, dtype=self.dtype)
            for weight, (dy, dx) in zip(weights, self.offsets):
                degree = degree + weight + self._unshift(weight, dy, dx)
            self._cache = (sigma, weights, degree.rsqrt())
        return self._cache[1], self._cache[2]

    def _smooth(self, v: Tensor, weights: Tensor, inv_sqrt: Tensor) -> Tensor:
        """S v = D^{-1/2} K D^{-1/2} v."""
        u = v * inv_sqrt
        out = u.clone()
        for weight, (dy, dx) in zip(weights, self.offsets):
            out += weight * self._shift(u, dy, dx) + self._unshift(weight * u, dy, dx)
        return out * inv_sqrt

    def apply(self, x: Tensor, sigma: float) -> Tensor:
        """W(g, σ) x = S(S x) for one image of the guide's shape."""
        weights, inv_sqrt = self._factors(float(sigma))
        v = x.to(self.dtype)
        return self._smooth(self._smooth(v, weights, inv_sqrt), weights, inv_sqrt).to(x.dtype)


CONSTRUCTIONS: dict[str, Callable[..., object]] = {"bm3d": LinearisedBM3D, "nlm": SymmetricKernelFilter}


class GuidedDenoiser(dinv.models.Denoiser):
    """D(x, σ) = W(g, σ)x for a frozen guide g ([B, C, H, W]): a deepinv ``Denoiser``, certified firmly
    non-expansive for every σ by construction (module docstring). ``construction``: ``'bm3d'``
    (:class:`LinearisedBM3D`) or ``'nlm'`` (:class:`SymmetricKernelFilter`); ``options`` go to it.
    Its inputs must have the guide's shape: the filter of sample b is built from guide b.
    """

    def __init__(self, guide: Tensor, construction: str = "bm3d", **options):
        super().__init__()
        if construction not in CONSTRUCTIONS:
            raise ValueError(f"unknown guided construction '{construction}'; choose one of {sorted(CONSTRUCTIONS)}")
        guide = check_image(guide, "guide")
        self.construction = construction
        self.channels = guide.shape[1]
        self.register_buffer("guide", guide.detach().clone())
        self.filters = [CONSTRUCTIONS[construction](image, **options) for image in self.guide]
        self.eval()  # nothing trains: the filter is fixed once built

    def forward(self, x: Tensor, sigma=0.1, **kwargs) -> Tensor:
        check_image(x, "denoiser input", channels=self.channels)
        if tuple(x.shape) != tuple(self.guide.shape):
            raise ValueError(f"input of shape {tuple(x.shape)} differs from the guide's {tuple(self.guide.shape)}: "
                             "a guided filter applies only to images of its guide's size (build one per image)")
        sigmas = torch.as_tensor(sigma, dtype=torch.float64).flatten()
        if sigmas.numel() == 1:
            sigmas = sigmas.expand(x.shape[0])
        if sigmas.numel() != x.shape[0]:
            raise ValueError(f"sigma must be a float or one value per sample ({x.shape[0]}), got {sigmas.numel()} values")
        values = [check_noise_level(float(s), "sigma", positive=True) for s in sigmas]
        return torch.stack([f.apply(image, s) for f, image, s in zip(self.filters, x, values)])

    def subset(self, index: Tensor) -> "GuidedDenoiser":
        """The filters of samples ``index`` only (the solvers use it once some samples have stopped)."""
        view = copy.copy(self)
        view._buffers = dict(self._buffers, guide=self.guide[index])
        view.filters = [self.filters[i] for i in index.tolist()]
        return view

    @property
    def certificate(self) -> Certificate:
        return Certificate(
            lipschitz=1.0, alpha=0.5,
            method=f"frozen-guide linear filter ({self.construction}): symmetric, 0 ≼ W ≼ I by construction, "
                   "so firmly non-expansive (the prox of a convex quadratic) for this guide",
        )
