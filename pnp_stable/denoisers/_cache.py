"""A value derived from tensors (a norm bound, a scaling), reused only while they are bit-identical to its source."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class TensorKeyedCache:
    """Holds one value and copies of the tensors it was computed from; :meth:`get` returns it only while the
    tensors still equal those copies (O(size) comparison). In-place edits that leave ``_version`` unchanged
    (through ``.data``, under ``no_grad``) invalidate it as surely as an optimiser step does, and the copies are
    normal tensors even when made under ``torch.inference_mode``. ``across_devices``: for a value that holds no
    tensors (a norm bound), tensors moved to another device with their values unchanged still match, so a loaded
    model's verified bounds survive ``.to("cuda")``; a value that holds tensors is recomputed on the new device."""

    def __init__(self, across_devices: bool = False) -> None:
        self.across_devices = across_devices
        self._source: tuple[Tensor, ...] | None = None
        self._value: Any = None

    def get(self, *tensors: Tensor) -> Any:
        """The cached value if ``tensors`` match its source, else None."""
        if self._source is None or len(self._source) != len(tensors):
            return None
        moved = False
        for kept, tensor in zip(self._source, tensors):
            if kept.shape != tensor.shape or kept.dtype != tensor.dtype:
                return None
            if kept.device != tensor.device:
                if not self.across_devices:
                    return None
                moved = True
            if not torch.equal(kept, tensor.detach().to(kept.device)):
                return None
        if moved:
            self.put(self._value, *tensors)  # the same values moved (``.to("cuda")``): keep the value, rekey the copies
        return self._value

    def put(self, value: Any, *tensors: Tensor) -> Any:
        """Store ``value`` as derived from ``tensors`` and return it."""
        with torch.inference_mode(False):
            self._source = tuple(tensor.detach().clone() for tensor in tensors)
        self._value = value
        return value
