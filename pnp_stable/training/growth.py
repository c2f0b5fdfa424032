"""Starting a wider network from a trained narrower one.

Every trained tensor keeps its entries in the leading corner of the wider tensor. The new entries of
convolution weights are small (``scale``·std of the trained ones), the new channels' learned activations
(:class:`~pnp_stable.denoisers.layers.MonotoneSpline`) take their fresh initialisation, and all other new entries
(biases, power vectors) are zero, so at the start the new channels carry O(scale) signals and the output moves by
O(scale²): the wider network starts from the trained function, and the small non-zero weights give the
new channels gradients (exactly zero weights would leave them dead behind a ReLU).
The certified network stays certified whatever the weights are: its norm bounds are recomputed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoisers.layers import MonotoneSpline

__all__ = ["GROWTH_SCALE", "embed", "fits", "grow_state"]

GROWTH_SCALE = 0.01


def fits(trained: torch.Size, shape: torch.Size) -> bool:
    """Whether a tensor of shape ``trained`` fits into one of ``shape`` (same dimensions, none larger)."""
    return len(trained) == len(shape) and all(t <= s for t, s in zip(trained, shape))


def embed(trained: Tensor, shape: torch.Size, noise: bool, generator: torch.Generator, scale: float = GROWTH_SCALE,
          base: Tensor | None = None) -> Tensor:
    """``trained`` in the leading corner of a tensor of ``shape``; new entries scale·std(trained)·N(0, 1)
    when ``noise``, else those of ``base`` (a tensor of ``shape``), else 0."""
    if not fits(trained.shape, shape):
        raise ValueError(f"a tensor of shape {tuple(trained.shape)} does not fit into {tuple(shape)}")
    grown = torch.zeros(shape, dtype=trained.dtype) if base is None else base.detach().clone().to(trained.dtype)
    if noise:
        std = float(trained.float().std()) if trained.numel() > 1 else 1.0
        grown.normal_(0.0, scale * std, generator=generator)
    grown[tuple(slice(0, n) for n in trained.shape)] = trained
    return grown


def grow_state(trained: dict[str, Tensor], own: dict[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """The trained tensors, each embedded into the model's (possibly larger) tensor of the same name;
    convolution weights (names ending in ``weight`` with 4 dimensions) get small random new entries, learned
    activations (``MonotoneSpline.PER_CHANNEL``) the model's own."""
    generator = torch.Generator().manual_seed(seed)
    return {name: tensor if tensor.shape == own[name].shape
            else embed(tensor, own[name].shape, name.endswith("weight") and tensor.ndim == 4, generator,
                       base=own[name] if name.rsplit(".", 1)[-1] in MonotoneSpline.PER_CHANNEL else None)
            for name, tensor in trained.items()}
