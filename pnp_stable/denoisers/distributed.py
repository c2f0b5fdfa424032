"""The certificate-keeping tiling on deepinv's distributed engine: tiles spread over processes (``torchrun``; gloo on
CPU, nccl on GPU), each process denoising its share, the partial outputs summed by an all-reduce.

:class:`CertifiedTiling` is a ``deepinv.distributed`` tiling strategy for the operator of :mod:`.tiling`,
T x = Σ_t P_tᵀ S_t D(S_t P_t x): it hands out the windowed tiles S_t P_t x and adds S_t D(S_t P_t x) back into a zero
image. deepinv's all-reduce sums the processes' partial images, and a sum does not depend on which process added
which tile, so every process obtains T x itself: the same operator, with the same certificate, as
:class:`~.tiling.TiledDenoiser` (whose proof is in :mod:`.tiling`). An inner solver's accuracy records (a convex
ridge's prox) are gathered after each pass, so every process judges that certificate on every tile's call. deepinv's own default strategy instead crops each
tile's core and places it, with no windows. With an anchor g, the tiles handed out are the blends
√w_t·P_t x + (1 − √w_t)·P_t g, and :class:`AnchorTiling` sums the anchor's fixed terms on the same engine.
"""

from __future__ import annotations

from deepinv.distributed import distribute
from deepinv.distributed.strategies import DistributedSignalStrategy
from torch import Tensor

from .._accuracy import accuracy_records
from .tiling import DEFAULT_OVERLAP, TiledDenoiser, image_tiles, offset_weight, tile_input

__all__ = ["AnchorTiling", "CertifiedTiling", "DistributedTiledDenoiser"]


class CertifiedTiling(DistributedSignalStrategy):
    """Tile t of an image of ``img_size``: the patch √w_t·P_t x (anchored: √w_t·P_t x + (1 − √w_t)·P_t g) out,
    √w_t·(its denoised patch) added back (:func:`~.tiling.image_tiles`; every patch has the same shape, as deepinv's
    batching requires)."""

    def __init__(self, img_size, tile: int, overlap: int = DEFAULT_OVERLAP, anchor: Tensor | None = None):
        super().__init__(img_size)
        self.tiles, self.anchor = image_tiles(self.img_size, tile, overlap), anchor

    def get_num_patches(self) -> int:
        return len(self.tiles)

    def get_local_patches(self, x: Tensor, local_indices: list[int]) -> list[tuple[int, Tensor]]:
        return [(index, tile_input(x, self.tiles[index][0], self.tiles[index][1].to(x), self.anchor))
                for index in local_indices]

    def reduce_patches(self, out_tensor: Tensor, local_pairs: list[tuple[int, Tensor]]) -> None:
        for index, patch in local_pairs:
            where, root = self.tiles[index]
            out_tensor[where] += root.to(patch) * patch


class AnchorTiling(CertifiedTiling):
    """The anchor's fixed term Σ_t P_tᵀ S_t(I − S_t) D(P_t g): the plain patch P_t g out, S_t(I − S_t)·(its
    denoised patch) added back."""

    def get_local_patches(self, x: Tensor, local_indices: list[int]) -> list[tuple[int, Tensor]]:
        return [(index, x[self.tiles[index][0]]) for index in local_indices]

    def reduce_patches(self, out_tensor: Tensor, local_pairs: list[tuple[int, Tensor]]) -> None:
        for index, patch in local_pairs:
            where, root = self.tiles[index]
            out_tensor[where] += offset_weight(root.to(patch)) * patch


class DistributedTiledDenoiser(TiledDenoiser):
    """:class:`~.tiling.TiledDenoiser` with its tiles spread over the processes of a deepinv ``DistributedContext``
    (``with DistributedContext() as context: ...`` inside a ``torchrun`` launch; one process without it). Every
    process returns the whole output; the certificate is D's. ``max_batch_size`` tiles go through D per call
    (None: all of a process's tiles at once); with one noise level per image, one tile per call."""

    def __init__(self, denoiser, context, tile: int = 256, overlap: int | None = None,
                 max_batch_size: int | None = None, anchor: Tensor | None = None):
        super().__init__(denoiser, tile, overlap, anchor)
        self.context, self.max_batch_size = context, max_batch_size
        self._engines: dict[tuple, object] = {}

    def _windowed(self, x: Tensor, sigma, anchor: Tensor | None, **kwargs) -> Tensor:
        return self._run("windowed", x, sigma, anchor, **kwargs)

    def _offset_pass(self, anchor: Tensor, sigma, **kwargs) -> Tensor:
        return self._run("offset", anchor, sigma, None, **kwargs)

    def _run(self, kind: str, x: Tensor, sigma, anchor: Tensor | None, **kwargs) -> Tensor:
        """One pass of the ``kind`` of tiling on deepinv's engine, which keeps a strategy for one shape: one engine
        per kind, shape, noise-level layout and set of samples (a :meth:`subset` has its own anchor)."""
        per_image = isinstance(sigma, Tensor) and sigma.ndim > 0  # stacked tiles would not match a [B] σ
        key = (kind, tuple(x.shape), per_image, self._samples)
        if key not in self._engines:
            if kind == "windowed":
                anchor = None if anchor is None else anchor.to(self.context.device)
                strategy = CertifiedTiling(x.shape, self.tile, self.overlap, anchor)
            else:
                strategy = AnchorTiling(x.shape, self.tile, self.overlap)
            self._engines[key] = distribute(self.denoiser, self.context, tiling_strategy=strategy,
                                            max_batch_size=1 if per_image else self.max_batch_size)
        records = accuracy_records(self.denoiser)
        calls_before = [record.calls for record in records]
        output = self._engines[key](x.to(self.context.device), sigma, **kwargs).to(x.device)
        self._share(records, calls_before)
        return output

    def _share(self, records, calls_before: list[int]) -> None:
        """Each process's inner solvers recorded only its own tiles' calls; after the pass every process holds all
        of them (:meth:`~pnp_stable._accuracy.AccuracyRecord.join`), so that a call above the tolerance on one
        process voids the certificate on every one, and a run's stopping test and convergence claim, identical on
        every process, use the bounds of all tiles."""
        if not records:
            return
        gathered = [None] * self.context.world_size
        self.context.all_gather_object(gathered, (calls_before, [record.state() for record in records]))
        for index, record in enumerate(records):
            record.join([states[index] for _, states in gathered], [befores[index] for befores, _ in gathered])
