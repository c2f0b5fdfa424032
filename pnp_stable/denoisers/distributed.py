"""The certificate-keeping tiling on deepinv's distributed engine: tiles spread over processes (``torchrun``; gloo on
CPU, nccl on GPU), each process denoising its share, the partial outputs summed by an all-reduce.

:class:`CertifiedTiling` is a ``deepinv.distributed`` tiling strategy for the operator of :mod:`.tiling`,
T x = Σ_t P_tᵀ S_t D(S_t P_t x): it hands out the windowed tiles S_t P_t x and adds S_t D(S_t P_t x) back into a zero
image. deepinv's all-reduce sums the processes' partial images, and a sum does not depend on which process added
which tile, so every process obtains T x itself: the same operator, with the same certificate, as
:class:`~.tiling.TiledDenoiser` (whose proof is in :mod:`.tiling`). deepinv's own default strategy instead crops each
tile's core and places it, with no windows.
"""

from __future__ import annotations

from deepinv.distributed import distribute
from deepinv.distributed.strategies import DistributedSignalStrategy
from torch import Tensor

from .._validation import check_image
from .tiling import DEFAULT_OVERLAP, TiledDenoiser, image_tiles

__all__ = ["CertifiedTiling", "DistributedTiledDenoiser"]


class CertifiedTiling(DistributedSignalStrategy):
    """Tile t of an image of ``img_size``: the patch √w_t·P_t x out, √w_t·(its denoised patch) added back
    (:func:`~.tiling.image_tiles`; every patch has the same shape, as deepinv's batching requires)."""

    def __init__(self, img_size, tile: int, overlap: int = DEFAULT_OVERLAP):
        super().__init__(img_size)
        self.tiles = image_tiles(self.img_size, tile, overlap)

    def get_num_patches(self) -> int:
        return len(self.tiles)

    def get_local_patches(self, x: Tensor, local_indices: list[int]) -> list[tuple[int, Tensor]]:
        return [(index, x[self.tiles[index][0]] * self.tiles[index][1].to(x)) for index in local_indices]

    def reduce_patches(self, out_tensor: Tensor, local_pairs: list[tuple[int, Tensor]]) -> None:
        for index, patch in local_pairs:
            where, root = self.tiles[index]
            out_tensor[where] += root.to(patch) * patch


class DistributedTiledDenoiser(TiledDenoiser):
    """:class:`~.tiling.TiledDenoiser` with its tiles spread over the processes of a deepinv ``DistributedContext``
    (``with DistributedContext() as context: ...`` inside a ``torchrun`` launch; one process without it). Every
    process returns the whole output; the certificate is D's. ``max_batch_size`` tiles go through D per call
    (None: all of a process's tiles at once); with one noise level per image, one tile per call."""

    def __init__(self, denoiser, context, tile: int = 256, overlap: int = DEFAULT_OVERLAP, max_batch_size: int | None = None):
        super().__init__(denoiser, tile, overlap)
        self.context, self.max_batch_size = context, max_batch_size
        self._engines: dict[tuple, object] = {}

    def forward(self, x: Tensor, sigma=None, **kwargs) -> Tensor:
        check_image(x, "denoiser input")
        per_image = isinstance(sigma, Tensor) and sigma.ndim > 0  # stacked tiles would not match a [B] σ
        key = (tuple(x.shape), per_image)
        if key not in self._engines:  # deepinv keeps a strategy for one shape: one engine per shape
            self._engines[key] = distribute(
                self.denoiser, self.context, tiling_strategy=CertifiedTiling(x.shape, self.tile, self.overlap),
                max_batch_size=1 if per_image else self.max_batch_size,
            )
        return self._engines[key](x.to(self.context.device), sigma, **kwargs).to(x.device)
