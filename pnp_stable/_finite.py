"""NaN/Inf in tensors: the check shared by weights files, training checkpoints, ``pnp-stable certify`` and the
trainer (NaN weights make a certificate meaningless: the network outputs NaN)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

__all__ = ["check_finite_model", "check_finite_tensors", "first_nonfinite"]


def first_nonfinite(tensors: Mapping[str, Tensor]) -> tuple[str, int] | None:
    """The name of the first floating-point tensor holding NaN or Inf values and how many it holds; None when
    every tensor is finite (integer tensors, e.g. RNG states, always are)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            count = int((~torch.isfinite(tensor.detach())).sum())
            if count:
                return name, count
    return None


def check_finite_tensors(tensors: Mapping[str, Tensor], source: str, holder: str = "the file") -> None:
    """Require every tensor to be finite: one-line ``ValueError`` naming ``source``, the first non-finite
    tensor and its count of NaN/Inf values otherwise."""
    found = first_nonfinite(tensors)
    if found is not None:
        name, count = found
        raise ValueError(f"{source}: tensor '{name}' has {count} NaN/Inf values; "
                         f"{holder} is corrupt or came from a diverged training run")


def check_finite_model(model, source: str) -> None:
    """Require every parameter and buffer of a torch model to be finite (see :func:`check_finite_tensors`);
    a denoiser that is no ``nn.Module`` has no tensors to check."""
    if isinstance(model, nn.Module):
        check_finite_tensors(model.state_dict(), source, "the model")
