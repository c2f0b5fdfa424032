"""Tiling that keeps a denoiser's certificate: square-root windows of a partition of unity, applied before and after.

Let P_t select tile t and w_t ≥ 0 be window weights with Σ_t P_tᵀ diag(w_t) P_t = I (a partition of unity), and
S_t = diag(√w_t). Then Φx = (S_t P_t x)_t is an isometry: ‖Φx‖² = Σ_t Σ_i w_t(i)x_i² = ‖x‖², so ΦᵀΦ = I and
‖Φᵀ‖ = 1. For an α-averaged D = (1 − α)I + αN (N non-expansive), the tiled operator
T = Φᵀ(⊕_t D)Φ = (1 − α)ΦᵀΦ + αΦᵀ(⊕_t N)Φ = (1 − α)I + αΦᵀ(⊕_t N)Φ, and
‖Φᵀ(⊕N)Φx − Φᵀ(⊕N)Φy‖ ≤ ‖Φx − Φy‖ = ‖x − y‖: T is α-averaged with D's α, and L-Lipschitz whenever D is.
The usual overlap-and-average tiling Σ_t P_tᵀ diag(w_t) D(P_t x) applies the window only after D; by Jensen's
inequality its Lipschitz constant is only bounded by √(max number of tiles covering a pixel) (2 in 2-D), and it
need not be averaged.

Windows are separable, w_t(i, j) = u_a(i)·v_b(j), each factor a 1-D partition of unity that is 1 away from the
tile's neighbours (flat top) and ramps as cos²/sin² across the ``overlap`` pixels shared with a neighbour, so
most pixels are denoised unwindowed. The noise level passed to D is unchanged.

Anchored tiles. Fading a tile's input to zero across its ramps shows D a darkened border, which costs quality at
the seams. Averagedness survives translation by fixed vectors: if D = (1 − α)I + αN then
z ↦ D(z + c) − e = (1 − α)I + α(N(· + c) + ((1 − α)c − e)/α), and N(· + c) + const is non-expansive. So for any
fixed anchor image g,
T_g x = Σ_t P_tᵀ S_t [D(S_t P_t x + (I − S_t)P_t g) − (I − S_t)D(P_t g)] = (1 − α)I + αΦᵀÑΦ
with Ñ non-expansive: T_g is α-averaged (and L-Lipschitz) exactly like T. Near g each tile sees the image itself,
blended toward g rather than toward zero, and at x = g it is the overlap-and-average output:
T_g g = Σ_t P_tᵀ S_t² D(P_t g). The closer g is to the denoiser's input at the solution, the closer T_g is to
D there. The certificate is for x ↦ T_g x with g fixed: an anchor that followed the input (g = x) would give
x ↦ Σ_t P_tᵀ S_t² D(P_t x), the uncertified overlap-and-average map. So the anchor must stay fixed while an
iteration runs: deblur makes a Wiener estimate before it starts; denoise, whose input is the image itself, does
not anchor. The offset Σ_t P_tᵀ S_t(I − S_t)D(P_t g, σ) is computed once for consecutive calls at one σ.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace

import deepinv as dinv
import torch
from torch import Tensor

from .._validation import check_image, check_whole
from ..theory import Certificate
from .certificates import certificate_of, keep_description

__all__ = ["AUTO_TILE_BYTES", "TiledDenoiser", "image_tiles", "tile_windows", "tiled", "whole_image_bytes"]

#: the estimated peak memory of one whole-image call above which ``tile='auto'`` tiles (deblur, denoise, the CLI)
AUTO_TILE_BYTES = 2 * 1024**3
AUTO_TILE = 512
#: the receptive field of averaged-gray/-color, whose 8 blocks (a 3×3 conv and its transpose each) reach 16 px; the
#: multi-scale SLL networks reach 21–35 px each side, so their ramps see less context (tiling.md measures averaged-color)
DEFAULT_OVERLAP = 33


def _check_tiling(tile: int, overlap: int) -> None:
    check_whole(tile, "tile (pixels)", 2)
    check_whole(overlap, "overlap (pixels)", 0)
    if 3 * overlap + 2 > tile:
        raise ValueError(f"tile {tile} needs an overlap between 0 and {(tile - 2) // 3} (at most (tile − 2)/3, so that a "
                         f"tile's two ramps never meet), got overlap {overlap}")


def default_overlap(tile: int) -> int:
    """:data:`DEFAULT_OVERLAP`, or less where ``tile`` is too small for it: at most (tile − 2)/3."""
    return max(0, min(DEFAULT_OVERLAP, (tile - 2) // 3))


def tile_windows(length: int, tile: int, overlap: int) -> list[tuple[int, int, Tensor]]:
    """A 1-D partition of unity over range(length): [(start, stop, √u)] for tiles of at most ``tile`` pixels whose
    neighbours share at least ``overlap`` pixels, with Σ_k u_k = 1 at every position. Tile k's weight is 1 except
    on the ``overlap`` pixels at the middle of each region it shares with a neighbour, where the two weights are
    cos² and sin² of a ramp from 0 to π/2. The ⌈(length − o)/(tile − o)⌉ tiles are spread evenly, so neighbours
    start more than (tile − o)/2 apart; 3·o + 2 ≤ tile then keeps a tile's two ramps apart."""
    _check_tiling(tile, overlap)
    if length <= tile:
        return [(0, length, torch.ones(length, dtype=torch.float64))]
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(k * (length - tile) / (count - 1)) for k in range(count)]
    weights = [torch.ones(tile, dtype=torch.float64) for _ in starts]
    for k in range(count - 1):
        shared_start, shared_stop = starts[k + 1], starts[k] + tile  # the region tiles k and k + 1 share
        ramp_start = shared_start + (shared_stop - shared_start - overlap) // 2
        angle = (torch.arange(overlap, dtype=torch.float64) + 0.5) * (math.pi / 2) / max(overlap, 1)
        left, right = torch.cos(angle) ** 2, torch.sin(angle) ** 2
        weights[k][ramp_start - starts[k] : ramp_start - starts[k] + overlap] = left
        weights[k][ramp_start + overlap - starts[k] :] = 0.0
        weights[k + 1][: ramp_start - starts[k + 1]] = 0.0
        weights[k + 1][ramp_start - starts[k + 1] : ramp_start - starts[k + 1] + overlap] = right
    return [(start, start + tile, weight.sqrt()) for start, weight in zip(starts, weights)]


def image_tiles(shape, tile: int, overlap: int) -> list[tuple[tuple, Tensor]]:
    """The tiles of an image of ``shape`` [..., H, W]: (index of the tile, the 2-D window √w_t = √u_a ⊗ √v_b) in row
    order; every tile has the same size (min(tile, H) × min(tile, W)) and Σ_t w_t = 1."""
    tiles = []
    for top, bottom, row_root in tile_windows(shape[-2], tile, overlap):
        for left, right, column_root in tile_windows(shape[-1], tile, overlap):
            tiles.append(((..., slice(top, bottom), slice(left, right)), row_root[:, None] * column_root[None, :]))
    return tiles


class TiledDenoiser(dinv.models.Denoiser):
    """T(x, σ) = Σ_t P_tᵀ S_t D(S_t P_t x, σ) for ``tile``×``tile`` tiles overlapping by ``overlap`` pixels, or with
    an ``anchor`` image g (shape of the inputs) the anchored T_g of the module docstring: D's certificate carries
    over unchanged either way. Choose ``overlap`` at least D's receptive field so that the ramps fall where each
    tile has context. Peak memory is that of D on one tile (plus the image, the output and, anchored, one offset)."""

    def __init__(self, denoiser, tile: int = 256, overlap: int | None = None, anchor: Tensor | None = None):
        super().__init__()
        overlap = default_overlap(tile) if overlap is None and isinstance(tile, int) else overlap
        _check_tiling(tile, overlap)
        self.denoiser, self.tile, self.overlap = denoiser, tile, overlap
        self.anchor = None if anchor is None else check_image(anchor.detach(), "tiling anchor")
        self._offset: tuple | None = None  # ((noise levels, dtype, device), Σ_t P_tᵀ S_t(I − S_t)D(P_t g, σ))
        self._samples: tuple | None = None  # the samples of the batch a subset() view keeps
        keep_description(self, denoiser)  # so that the solvers still check the image's channels
        self.train(getattr(denoiser, "training", False))  # the wrapper is in the mode of the denoiser it wraps

    def forward(self, x: Tensor, sigma=None, **kwargs) -> Tensor:
        check_image(x, "denoiser input")
        if self.anchor is None:
            return self._windowed(x, sigma, None, **kwargs)
        anchor = self._anchor_like(x)
        return self._windowed(x, sigma, anchor, **kwargs) - self._anchor_offset(anchor, sigma, **kwargs)

    def subset(self, index: Tensor) -> "TiledDenoiser":
        """The operator of samples ``index`` only, anchor and offset narrowed to them (the solvers use it once some
        samples have stopped)."""
        view = copy.copy(self)
        view._samples = tuple(index.tolist())
        if self.anchor is not None:
            view.anchor = self.anchor[index]
        if self._offset is not None:
            (sigmas, dtype, device), offset = self._offset
            if sigmas is not None and len(sigmas) > 1:  # one noise level per sample: narrowed like the samples
                sigmas = tuple(sigmas[i] for i in view._samples)
            view._offset = ((sigmas, dtype, device), offset[index])
        return view

    def _anchor_like(self, x: Tensor) -> Tensor:
        if tuple(self.anchor.shape) != tuple(x.shape):
            raise ValueError(f"the tiling anchor has shape {tuple(self.anchor.shape)} but the denoiser input has shape "
                             f"{tuple(x.shape)}; build the tiled denoiser for these images "
                             "(pnp_stable.denoisers.tiled(denoiser, shape, anchor=...))")
        return self.anchor.to(x)

    def _anchor_offset(self, anchor: Tensor, sigma, **kwargs) -> Tensor:
        """Σ_t P_tᵀ S_t(I − S_t)D(P_t g, σ), fixed: kept while the calls keep one noise level (a schedule that changes
        σ at every call pays this second pass each time)."""
        key = (_noise_key(sigma), anchor.dtype, anchor.device)
        if kwargs or self._offset is None or self._offset[0] != key:
            with torch.no_grad():
                self._offset = (key, self._offset_pass(anchor, sigma, **kwargs))
        return self._offset[1]

    def _windowed(self, x: Tensor, sigma, anchor: Tensor | None, **kwargs) -> Tensor:
        """Σ_t P_tᵀ S_t D(S_t P_t x + (I − S_t)P_t g, σ), with g = 0 when there is no anchor."""
        out = torch.zeros_like(x)
        for where, root in image_tiles(x.shape, self.tile, self.overlap):
            root = root.to(x)
            out[where] += root * self.denoiser(tile_input(x, where, root, anchor), sigma, **kwargs)
        return out

    def _offset_pass(self, anchor: Tensor, sigma, **kwargs) -> Tensor:
        out = torch.zeros_like(anchor)
        for where, root in image_tiles(anchor.shape, self.tile, self.overlap):
            out[where] += offset_weight(root.to(anchor)) * self.denoiser(anchor[where], sigma, **kwargs)
        return out

    @property
    def certificate(self) -> Certificate:
        return self._tiled(certificate_of(self.denoiser))

    def certificate_at(self, sigma) -> Certificate:
        if hasattr(self.denoiser, "certificate_at"):
            return self._tiled(certificate_of(self.denoiser, sigma))
        return self.certificate

    @property
    def layout(self) -> str:
        """The tiling in words: '64 px tiles, 20 px overlap' (', anchored' with an anchor)."""
        return f"{self.tile} px tiles, {self.overlap} px overlap{', anchored' if self.anchor is not None else ''}"

    def _tiled(self, base: Certificate) -> Certificate:
        """D's certificate with the tiling named and, for an inner solve, the whole image's error bound stated."""
        certificate = replace(base, tolerance=self._tolerance(base),
                              scheduled=base.scheduled and self.anchor is None)  # the cached offset keeps its first accuracy
        stated = f"; the tiled output's RMS error ≤ {certificate.tolerance:.3g}" if certificate.solved else ""
        kept = ", which keep it" if base.lipschitz is not None or base.alpha is not None else ""
        how = f"tiled with square-root partition-of-unity windows ({self.layout}){kept}"
        return replace(certificate, method=f"{base.method}; {how}{stated}")

    def _tolerance(self, base: Certificate) -> float:
        """The image's RMS error bound from the tiles' RMS bound ε: the errors e_t of the tiles reach the output
        through Φᵀ (‖Φᵀ‖ = 1), so ‖Φᵀ(⊕e_t)‖² ≤ Σ_t ‖e_t‖² ≤ ε²Σ_t N_t < 4ε²N: 2ε; anchored, the offset's D(P_t g)
        calls add as much again: 4ε. Σ_t N_t < 4N because along an axis of L > T pixels the m tiles of T pixels cover
        mT < L + T + (m − 2)o < 1.5L + 0.5T < 2L pixels ((m − 1)(T − o) < L − o by the tile count, and o ≤ T/3);
        a pixel may lie in three tiles of an axis, but not on average."""
        return base.tolerance * (4 if self.anchor is not None else 2)


def tile_input(x: Tensor, where: tuple, root: Tensor, anchor: Tensor | None) -> Tensor:
    """What D sees of tile t: S_t P_t x, or anchored S_t P_t x + (I − S_t)P_t g (``root`` = √w_t on x's device)."""
    return x[where] * root if anchor is None else torch.lerp(anchor[where].to(x), x[where], root)


def offset_weight(root: Tensor) -> Tensor:
    """S_t(I − S_t): the weight of D(P_t g) in the anchored tiling's fixed offset."""
    return root * (1 - root)


def _noise_key(sigma) -> tuple | None:
    """A hashable copy of a noise level (a number, or one per image), to recognise the one an offset was made for."""
    if sigma is None:
        return None
    if isinstance(sigma, Tensor):
        return tuple(sigma.detach().cpu().double().flatten().tolist())
    return (float(sigma),)


def whole_image_bytes(denoiser, shape) -> int | None:
    """Estimated peak memory of one call of ``denoiser`` on one whole image of ``shape`` [..., H, W]: its
    ``peak_feature_maps`` (4 when it records none) float32 maps of its ``width`` channels per pixel (one call on
    1024×1024, ``benchmarks/results/whole_image_memory.md``: 496 MiB for ``averaged-color``, width 32, 512 estimated;
    376 MiB for the multi-scale ``averaged-sll-gray``, width 16, 512 estimated; every shipped network and screened
    architecture at or under its estimate); None for a denoiser that records no ``width``. Per
    image, so that whether an image is tiled never depends on what it is batched with."""
    width = getattr(denoiser, "width", None)
    if not isinstance(width, int):
        return None
    return 4 * getattr(denoiser, "peak_feature_maps", 4) * width * shape[-2] * shape[-1]


def tiled(denoiser, shape, tile: int | str | None = "auto", overlap: int | None = None, context=None,
          anchor: Tensor | Callable[[], Tensor] | None = None):
    """``denoiser`` as it is, or wrapped in a :class:`TiledDenoiser` for images of ``shape`` ``[B, C, H, W]``:
    ``tile`` an integer: tiles of that size (unless the image fits in one); 0 or None: the whole image; 'auto':
    tiles of 512 px when one whole image would need more than :data:`AUTO_TILE_BYTES` (:func:`whole_image_bytes`).
    ``overlap`` None: :func:`default_overlap`. ``context``: a deepinv ``DistributedContext``; with more than one
    process the tiles are spread over them, one tile per network call (:class:`~.distributed.DistributedTiledDenoiser`:
    the same operator). ``anchor``: a fixed image of ``shape`` the tiles blend toward instead of zero (the anchored
    T_g of the module docstring), or a function that makes it, called only if the image is tiled (deblur: a Wiener
    estimate). The certificate is the same either way (module docstring)."""
    if tile == "auto":
        needed = whole_image_bytes(denoiser, shape)
        tile = AUTO_TILE if needed is not None and needed > AUTO_TILE_BYTES else None
    elif tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 0):
        raise ValueError(f"tile must be 'auto', 0 or None (the whole image) or a tile size in pixels, got {tile!r}")
    if not tile:
        return denoiser
    overlap = default_overlap(tile) if overlap is None else overlap
    _check_tiling(tile, overlap)
    if max(shape[-2:]) <= tile:
        return denoiser
    if callable(anchor):
        anchor = anchor()
    if context is not None and context.world_size > 1:
        from .distributed import DistributedTiledDenoiser

        return DistributedTiledDenoiser(denoiser, context, tile, overlap, max_batch_size=1, anchor=anchor)
    return TiledDenoiser(denoiser, tile, overlap, anchor)
