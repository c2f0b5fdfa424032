"""Reading pnp-stable safetensors files (weights, checkpoints) with one clear error per problem."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file


def read_safetensors(path: str | Path, what: str, expected_format: str, tensors: bool = True
                     ) -> tuple[dict[str, str], dict[str, torch.Tensor] | None]:
    """Metadata (and tensors unless ``tensors=False``) of ``path``, whose metadata format must be
    ``expected_format``; ``ValueError`` naming ``what`` when it is missing, corrupt or of another kind."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        loaded = load_file(str(path)) if tensors else None
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from err
    if metadata.get("format") != expected_format:
        raise ValueError(f"{path} is not a pnp-stable {what} (format {metadata.get('format')!r})")
    return metadata, loaded
