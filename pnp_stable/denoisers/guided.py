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
   pixel lies in exactly p² patches: Λ = p²I, so W = M/p² is symmetric with 0 ≼ W ≼ I. With positions
   on a lattice of step s dividing p, H and W, each pixel lies in exactly (p/s)² of them: Λ = (p/s)²I.
   An average of such W over several partitions is a convex combination, so it keeps both properties.
   (BM3D's own overlapping groups make Λ vary from pixel to pixel, with how many selected patches cover
   each; Λ^{-1/2} M Λ^{-1/2} is then certified too, but it modulates the image by Λ^{±1/2}. The partition
   keeps Λ flat.)
3. **Symmetric kernel filter** (:class:`SymmetricKernelFilter`, non-local means on the guide).
   K symmetric with K_ij ≥ 0, K_ii > 0. Symmetric Sinkhorn balancing (Milanfar 2013, "Symmetrizing
   smoothing filters") finds a positive diagonal B with M = BKB nearly doubly stochastic; S = M/ρ with
   ρ = max_i Σ_j M_ij, computed from the final B, whether or not the balancing has converged. A symmetric
   matrix with non-negative entries has ‖S‖₂ ≤ (‖S‖₁‖S‖_∞)^{1/2} = max row sum = 1, so the spectrum of S lies
   in [−1, 1] and W = S² is symmetric with spectrum in [0, 1]. Balancing makes S1 ≈ 1, so flat regions
   keep their mean (the similar D^{-1/2}KD^{-1/2} does not: at σ = 25/255 with an oracle guide, its
   S1 ranges over 0.4–1.3 on a 128² camera crop and the filter loses 6 dB to this one).
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

from .._validation import check_image, check_noise_level, check_whole, float64_levels
from ..theory import Certificate
from .colour import opponent_matrix

__all__ = [
    "CONSTRUCTIONS",
    "GuidedDenoiser",
    "LinearisedBM3D",
    "SymmetricKernelFilter",
    "dct_matrix",
    "partition_patches",
]


def dct_matrix(n: int, dtype=torch.float64) -> Tensor:
    """The orthonormal DCT-II matrix C (C Cᵀ = I): (C x)_k = √(2/n) c_k Σ_j x_j cos(π(2j + 1)k/(2n))."""
    j = torch.arange(n, dtype=dtype)
    matrix = torch.cos(math.pi * (2 * j[None, :] + 1) * j[:, None] / (2 * n)) * math.sqrt(2 / n)
    matrix[0] /= math.sqrt(2)
    return matrix


def _to_opponent(x: Tensor) -> Tensor:
    """[C, H, W] → opponent channels (identity for gray)."""
    if x.shape[0] == 1:
        return x
    return torch.einsum("dc,chw->dhw", opponent_matrix(x.dtype).to(x.device), x)


def _from_opponent(x: Tensor) -> Tensor:
    if x.shape[0] == 1:
        return x
    return torch.einsum("dc,dhw->chw", opponent_matrix(x.dtype).to(x.device), x)


def _patch_spectra(image: Tensor, transform: Tensor, patch: int, stride: int) -> Tensor:
    """[C, H, W] → the 2-D DCTs of the circular patches at positions (r, c) ∈ (stride·ℤ)², [N, C, p²]
    (position n = (r·W/stride + c)/stride covers rows r…r+p−1 and columns c…c+p−1 mod (H, W))."""
    channels = image.shape[0]
    padded = F.pad(image[None], (0, patch - 1, 0, patch - 1), mode="circular")
    columns = F.unfold(padded, patch, stride=stride)[0].view(channels, patch * patch, -1)
    return (transform @ columns).permute(2, 0, 1).contiguous()


def _patch_spectra_adjoint(spectra: Tensor, transform: Tensor, patch: int, stride: int, height: int, width: int) -> Tensor:
    """The adjoint of :func:`_patch_spectra`: [N, C, p²] → [C, H, W], overlapping patches summed circularly."""
    channels = spectra.shape[1]
    columns = (transform.T @ spectra.permute(1, 2, 0)).reshape(1, channels * patch * patch, -1)
    out = F.fold(columns, (height + patch - 1, width + patch - 1), patch, stride=stride)[0]
    image = out[:, :height, :width].clone()
    image[:, : patch - 1, :] += out[:, height:, :width]
    image[:, :, : patch - 1] += out[:, :height, width:]
    image[:, : patch - 1, : patch - 1] += out[:, height:, width:]
    return image


def _principal_order(features: Tensor, sets: Tensor) -> Tensor:
    """Each row of ``sets`` ([B, n] positions) sorted by the projection of its ``features`` on the set's
    top principal direction (six power iterations)."""
    centred = features[sets]
    centred = centred - centred.mean(1, keepdim=True)
    direction = torch.ones(centred.shape[0], centred.shape[2], dtype=centred.dtype)
    for _ in range(6):
        direction = torch.einsum("bnd,bn->bd", centred, torch.einsum("bnd,bd->bn", centred, direction))
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.gather(sets, 1, torch.einsum("bnd,bd->bn", centred, direction).argsort(1))


def _bisect(features: Tensor, tiles: list[Tensor], group: int) -> tuple[Tensor, Tensor]:
    """Split each tile's n positions into ⌊n/group⌋ groups of ``group`` similar patches by recursive cuts
    along the top principal direction (a k-d tree whose cuts leave a whole number of groups on each
    side); the n mod group positions left at the end become groups of one. Sets of equal size and
    group count are cut together. Returns ([G, group] groups, [S] singletons)."""
    pending: dict[tuple[int, int], list[Tensor]] = {}
    for tile in tiles:
        pending.setdefault((tile.numel(), tile.numel() // group), []).append(tile.reshape(1, -1))
    groups, singles = [torch.empty(0, group, dtype=torch.long)], [torch.empty(0, dtype=torch.long)]
    while pending:
        (size, units), sets = pending.popitem()
        sets = torch.cat(sets)
        if units <= 1:  # a [S, 0] slice of a tile too small for one group is reshaped to [0, group] for the cat
            groups.append(sets[:, : group * units].reshape(-1, group))
            singles.append(sets[:, group * units :].flatten())
            continue
        sets = _principal_order(features, sets)
        cut = units // 2 * group
        pending.setdefault((cut, units // 2), []).append(sets[:, :cut])
        pending.setdefault((size - cut, units - units // 2), []).append(sets[:, cut:])
    return torch.cat(groups), torch.cat(singles)


def _segments(length: int, tile: int) -> list[tuple[int, int]]:
    """[start, stop) of ⌈length/tile⌉ consecutive segments of near-equal length covering range(length)."""
    count = -(-length // tile)
    bounds = [round(i * length / count) for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _partition(features: Tensor, height: int, width: int, tile: int, group: int,
               shift: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """:func:`partition_patches` from the patches' ``features`` [H·W, d]: ([G, group] groups, [S] singletons)."""
    if group < 1 or tile < 1:
        raise ValueError(f"tile and group must be ≥ 1, got tile {tile}, group {group}")
    positions = torch.roll(torch.arange(height * width).reshape(height, width), (-shift[0], -shift[1]), (0, 1))
    tiles = [positions[top:bottom, left:right] for top, bottom in _segments(height, tile)
             for left, right in _segments(width, tile)]
    return _bisect(features, tiles, group)


def partition_patches(luminance: Tensor, patch: int = 8, tile: int = 32, group: int = 16,
                      shift: tuple[int, int] = (0, 0)) -> list[Tensor]:
    """Partition all H·W circular patch positions of ``luminance`` ([H, W]) into groups of similar patches.

    The position grid, rolled by ``shift``, is cut into ⌈H/tile⌉×⌈W/tile⌉ tiles of near-equal size; the
    positions of each tile are split by :func:`_bisect` into groups of ``group`` similar patches (distances
    between patches equal those between their orthonormal DCTs) and at most ``group`` − 1 groups of one.
    Each position lies in exactly one group, so Σ_g P_gᵀP_g = p²·I. Returns index tensors [G, K] of
    flat positions, one per group size K.
    """
    height, width = luminance.shape
    transform = torch.kron(dct_matrix(patch), dct_matrix(patch)).to(luminance.dtype)
    features = _patch_spectra(luminance[None], transform, patch, 1)[:, 0]
    groups, singles = _partition(features, height, width, tile, group, shift)
    return [index for index in (groups, singles[:, None]) if index.numel()]


DEFAULT_PATCH = 4


class LinearisedBM3D:
    """W = (1/n) Σ_partitions (s/p)² Σ_g P_gᵀ Tᵀ S_g T P_g (module docstring, item 2), for one guide.

    Built once from ``guide`` ([C, H, W], C = 1 or 3; colour works in opponent space, groups formed on
    its luminance): ``shifts`` partitions of the circular patch positions on a lattice of step
    s = ``stride`` into groups of similar patches (:func:`partition_patches`); partition k = a + s·b moves
    the lattice by (a, a + b) pixels (mod s) and its tiles by k·tile/``shifts``. When s divides p, H and W, every pixel
    lies in exactly (p/s)² lattice patches, so each partition has Λ = Σ_g P_gᵀP_g = (p/s)²I exactly: its
    term is symmetric with spectrum in [0, 1], and so is the average of the partitions.
    ``patch`` may be a tuple of sizes: W is then the average of one such filter per size, again a convex
    combination (sizes 4 and 6 with 8 partitions, ``denoise-guided.md``: +0.03 to +0.13 dB over the default on BSD68 /
    CBSD68 at σ = 25/255 with BM3D, DnCNN or averaged guides, at 5–7× the one-size filter's time; with a BM3D guide 28.64 /
    31.09 dB against BM3D's 28.61 / 31.08).
    :meth:`apply` uses the Wiener factors S = c²/(c² + σ²) of the guide's coefficients c; one
    application costs, per partition, one patch transform, a permutation, two small products and back,
    on (H/s)·(W/s) positions: stride 2 is 5–8× faster, and costs 0.3 dB as a denoiser on Set3C at
    σ = 25/255 (one-off runs of #20); inside the guided deblurring of whole 256² photos it saves 2.1 s of 25.9 and
    costs 0.10 dB (``guided_speed.md``).
    """

    def __init__(self, guide: Tensor, patch: int | tuple[int, ...] = DEFAULT_PATCH, tile: int = 64,
                 group: int | None = None, shifts: int = 4, stride: int = 1):
        # chosen against BM3D at σ = 25/255 with a BM3D guide, on images outside every test set (notes of #20):
        # the last 8 of Train400's held-out 40, gray: 28.56 dB (BM3D 28.55; the earlier 8×8 patches, groups of 16,
        # tiles of 32 and 2 partitions were 0.22 dB below BM3D on 4 of them); 3 CBSD68 images outside CBSD10,
        # colour: 30.31 (BM3D 30.25; before, 8×8 patches, groups of 32: 30.22); in the guided deblurring of 4
        # validation crops 34.57 dB against 34.55 before
        self.channels, self.height, self.width = guide.shape
        self.patches = (patch,) if isinstance(patch, int) else tuple(patch)
        if not self.patches:
            raise ValueError("patch must be a size or a non-empty tuple of sizes")
        group = (16 if self.channels == 3 else 8) if group is None else group
        for name, value in (("tile", tile), ("group", group), ("stride", stride)):
            check_whole(value, name)
        if self.channels not in (1, 3):
            raise ValueError(f"a guided filter needs a gray (1-channel) or colour (3-channel) guide, got "
                             f"{self.channels} channels")
        check_whole(shifts, "shifts (the number of partitions averaged)")
        for size in self.patches:
            check_whole(size, f"every patch size (patch={patch!r})")
            if self.height < size or self.width < size:
                raise ValueError(f"image of {self.height}×{self.width} pixels is smaller than the {size}×{size} patch; "
                                 "use a smaller patch (patch=...) or a larger image")
            if size % stride or self.height % stride or self.width % stride:
                raise ValueError(f"stride {stride} must divide the patch size {size} and the image size "
                                 f"{self.height}×{self.width}, or the patches would not cover every pixel equally often")
        self.stride, self.group, self.dtype = stride, group, guide.dtype
        self.transforms = {size: torch.kron(dct_matrix(size), dct_matrix(size)).to(self.dtype) for size in self.patches}
        self.group_transform = dct_matrix(group).to(self.dtype)
        opponent = _to_opponent(guide)
        self.partitions = []  # (patch size, lattice roll, position order, its inverse, group count, c² in that order)
        for size in self.patches:
            for k in range(shifts):
                roll = (k % stride, (k + k // stride) % stride)  # (0, 0), (1, 1), (0, 1), (1, 0) for stride 2
                spectra = self._spectra(opponent, size, roll)
                lattice_shift = (k * tile // shifts // stride,) * 2
                groups, singles = _partition(spectra[:, 0], self.height // stride, self.width // stride,
                                             max(tile // stride, 1), group, lattice_shift)
                order = torch.cat([groups.flatten(), singles])
                energy = self._group_transform(spectra[order], len(groups)).pow(2)
                self.partitions.append((size, roll, order, order.argsort(), len(groups), energy))
        self._cache: tuple[float, list[Tensor]] | None = None

    def _spectra(self, image: Tensor, patch: int, roll: tuple[int, int]) -> Tensor:
        return _patch_spectra(torch.roll(image, (-roll[0], -roll[1]), (1, 2)), self.transforms[patch], patch, self.stride)

    def _group_transform(self, spectra: Tensor, groups: int, inverse: bool = False) -> Tensor:
        """The 1-D DCT along each group of permuted spectra [G·K + S, C, p²] (groups of one: identity)."""
        matrix = self.group_transform.T if inverse else self.group_transform
        size = groups * self.group
        if groups == 0:  # every tile smaller than one group: all singletons
            return spectra
        grouped = matrix @ spectra[:size].view(groups, self.group, -1)
        return torch.cat([grouped.reshape(size, *spectra.shape[1:]), spectra[size:]])

    def _factors(self, sigma: float) -> list[Tensor]:
        """Wiener factors S = c²/(c² + σ²) ∈ [0, 1] for noise level σ, cached for the last σ."""
        if self._cache is None or self._cache[0] != sigma:
            self._cache = (sigma, [energy / (energy + sigma**2) for *_, energy in self.partitions])
        return self._cache[1]

    def apply(self, x: Tensor, sigma: float) -> Tensor:
        """W(g, σ) x for one image x of the guide's shape [C, H, W]."""
        opponent = _to_opponent(x.to(self.dtype))
        out = 0
        for (size, roll, order, inverse, groups, _), factors in zip(self.partitions, self._factors(float(sigma))):
            coefficients = self._group_transform(self._spectra(opponent, size, roll).index_select(0, order), groups) * factors
            filtered = self._group_transform(coefficients, groups, inverse=True).index_select(0, inverse)
            image = _patch_spectra_adjoint(filtered, self.transforms[size], size, self.stride, self.height, self.width)
            out = out + torch.roll(image, roll, (1, 2)) * (self.stride / size) ** 2
        out = out / len(self.partitions)
        return _from_opponent(out).to(x.dtype)


class SymmetricKernelFilter:
    """W = S², S = BKB/ρ, the balanced non-local-means kernel of the guide (module docstring, item 3):
    K_ij = exp(−d_ij/(h·σ)²), h = ``strength``, for pixels j within ±``search`` of i, d_ij the mean squared
    difference of the guide's (2·``radius`` + 1)² patches around i and j over all channels, K_ii = 1.
    K is symmetric by construction: each offset pair (o, −o) uses one weight map. B is balanced until every
    row sum of BKB is within ``BALANCE_TOLERANCE`` of 1 (at most ``BALANCE_STEPS`` steps; about 20 suffice);
    the certificate does not depend on it. The default strength 0.5 is the best of 0.3/0.5/0.7/1.0 on three of five
    128² scikit-image crops at σ = 25/255 with a BM3D guide (camera, brick, coffee; 0.3 on moon, +0.27 dB, and 0.6 on
    astronaut, +0.16 dB; one-off checks of 2026-12-07, none of the crops in a test set)."""

    BALANCE_TOLERANCE = 1e-6
    BALANCE_STEPS = 200

    def __init__(self, guide: Tensor, search: int = 5, radius: int = 3, strength: float = 0.5):
        self.channels, self.height, self.width = guide.shape
        self.strength = float(strength)
        if not 0 < self.strength < math.inf:
            raise ValueError(f"strength must be finite and > 0 (the kernel's width in units of σ), got {strength!r}")
        check_whole(search, "search")
        check_whole(radius, "radius", least=0)
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
            inside = torch.isfinite(squared)  # the box averages the pairs that exist: near the bottom and right
            total, count = (F.avg_pool2d(F.pad(t, (radius,) * 4, mode="replicate"), size, stride=1)  # edges a NaN
                            for t in (torch.where(inside, squared, 0.0), inside.double()))  # would void the pair
            distances.append(torch.where(inside, total / count.clamp_min(1e-300), float("nan"))[0, 0])
        self.distance = torch.stack(distances).double()  # d(i, i + o) [offsets, H, W]; NaN where i + o is outside
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

    def _kernel(self, v: Tensor, weights: Tensor) -> Tensor:
        """K v, with K_ii = 1 and K(i, i + o) = K(i + o, i) = weights[o][i]."""
        out = v.clone()
        for weight, (dy, dx) in zip(weights, self.offsets):
            out += weight * self._shift(v, dy, dx) + self._unshift(weight * v, dy, dx)
        return out

    def _factors(self, sigma: float) -> tuple[Tensor, Tensor]:
        """The kernel's weights and the diagonal b of S = diag(b) K diag(b), in float64, max row sum of S = 1."""
        if self._cache is None or self._cache[0] != sigma:
            bandwidth = max(self.strength * sigma, 1e-6) ** 2
            weights = torch.exp(-self.distance / bandwidth).nan_to_num(nan=0.0)  # K(i, i + o)
            balance = torch.ones(self.height, self.width, dtype=torch.float64)
            for step in range(self.BALANCE_STEPS + 1):
                rows = balance * self._kernel(balance, weights)  # row sums of diag(b) K diag(b)
                if step == self.BALANCE_STEPS or float((rows - 1).abs().max()) <= self.BALANCE_TOLERANCE:
                    break
                balance = balance / rows.sqrt()  # b ← (b / Kb)^{1/2}, fixed point b ⊙ Kb = 1
            balance = balance / rows.max().sqrt()  # ‖S‖₂ ≤ max row sum = 1 for symmetric S ≥ 0
            self._cache = (sigma, weights, balance)
        return self._cache[1], self._cache[2]

    def _smooth(self, v: Tensor, weights: Tensor, balance: Tensor) -> Tensor:
        """S v = diag(b) K diag(b) v."""
        return balance * self._kernel(balance * v, weights)

    def apply(self, x: Tensor, sigma: float) -> Tensor:
        """W(g, σ) x = S(S x) for one image of the guide's shape."""
        weights, balance = self._factors(float(sigma))
        v = x.double()
        return self._smooth(self._smooth(v, weights, balance), weights, balance).to(x.dtype)


CONSTRUCTIONS: dict[str, Callable[..., object]] = {"bm3d": LinearisedBM3D, "nlm": SymmetricKernelFilter}


class GuidedDenoiser(dinv.models.Denoiser):
    """D(x, σ) = W(g, σ)x for a frozen guide g ([B, C, H, W]): a deepinv ``Denoiser``, certified firmly
    non-expansive for every σ by construction (module docstring). ``construction``: ``'bm3d'``
    (:class:`LinearisedBM3D`) or ``'nlm'`` (:class:`SymmetricKernelFilter`); ``options`` go to it.
    Its inputs must have the guide's shape: the filter of sample b is built from guide b; a single guide's filter
    applies to every image of a batch (the block-diagonal operator, certified alike). The filters are built and
    applied on the CPU (their patch grouping is sequential work); inputs on another device come back there.
    ``guide`` is a copy of the guide the filters were built from: the guide cannot change after construction (it
    is no buffer, so neither ``load_state_dict`` nor an in-place edit can make it disagree with the filters).
    """

    def __init__(self, guide: Tensor, construction: str = "bm3d", **options):
        super().__init__()
        if construction not in CONSTRUCTIONS:
            raise ValueError(f"unknown guided construction '{construction}'; choose one of {sorted(CONSTRUCTIONS)}")
        guide = check_image(guide, "guide")
        self.construction = construction
        self.channels = guide.shape[1]
        self._guide = guide.detach().clone()
        self.filters = [CONSTRUCTIONS[construction](image.cpu(), **options) for image in self._guide]  # CPU-built
        self.eval()  # nothing trains: the filter is fixed once built

    @property
    def guide(self) -> Tensor:
        return self._guide.clone()

    def forward(self, x: Tensor, sigma=0.1, **kwargs) -> Tensor:
        check_image(x, "denoiser input", channels=self.channels)
        shape = self._guide.shape
        if tuple(x.shape[1:]) != tuple(shape[1:]) or not (shape[0] == 1 or x.shape[0] == shape[0]):
            raise ValueError(f"input of shape {tuple(x.shape)} differs from the guide's {tuple(shape)}: a guided filter "
                             "applies only to images of its guide's size, one guide per image or one for all")
        filters = self.filters * x.shape[0] if len(self.filters) == 1 else self.filters
        sigmas = float64_levels(sigma, "sigma must be a float or one value per sample").flatten()
        if sigmas.numel() == 1:
            sigmas = sigmas.expand(x.shape[0])
        if sigmas.numel() != x.shape[0]:
            raise ValueError(f"sigma must be a float or one value per sample ({x.shape[0]}), got {sigmas.numel()} values")
        values = [check_noise_level(float(s), "sigma", positive=True) for s in sigmas]
        out = torch.stack([f.apply(image.cpu(), s) for f, image, s in zip(filters, x, values)]).to(x.device)
        if not torch.isfinite(out).all():
            raise ValueError(f"the guided filter returned NaN or Inf for a finite input: its coefficients overflow for "
                             f"this guide (values up to {float(self._guide.abs().max()):.3g}); give a guide on the "
                             "[0, 1] scale of the images")
        return out

    def subset(self, index: Tensor) -> "GuidedDenoiser":
        """The filters of samples ``index`` only (the solvers use it once some samples have stopped); a single
        guide's filter serves every sample."""
        if len(self.filters) == 1:
            return self
        view = copy.copy(self)
        view._guide = self._guide[index]
        view.filters = [self.filters[i] for i in index.tolist()]
        return view

    @property
    def certificate(self) -> Certificate:
        return Certificate(
            lipschitz=1.0, alpha=0.5,
            method=f"frozen-guide linear filter ({self.construction}): symmetric, 0 ≼ W ≼ I by construction, "
                   "so firmly non-expansive (the prox of a convex quadratic) for this guide",
        )
