"""Reading pnp-stable safetensors files (weights, checkpoints) with one clear error per problem."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ._atomic import atomic_path


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
    stored = metadata.get("format")
    if stored != expected_format:
        kind = stored.removeprefix("pnp-stable-").split("/")[0] if str(stored).startswith("pnp-stable-") else None
        raise ValueError(f"{path} is a pnp-stable {kind} file, not a {what} (format {stored!r})" if kind else
                         f"{path} is not a pnp-stable {what} (format {stored!r})")
    return metadata, loaded


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name and bytes, in name order: the digest of denoiser files written before
    :func:`content_digest` (it leaves the metadata unprotected, so such files are loaded with their bounds verified)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def content_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 of everything a file stores: each tensor's name, dtype, shape and bytes, and each metadata entry but
    the digest itself (in name order). Catches any accidental change; a deliberate edit can recompute it."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    for key in sorted(k for k in metadata if k != "sha256"):
        h.update(f"{key}={metadata[key]}\0".encode())
    return h.hexdigest()


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` with ``metadata`` plus its :func:`content_digest` (key 'sha256') through
    :func:`~pnp_stable._atomic.atomic_path`, so an interrupted write never leaves a truncated file under ``path``."""
    metadata = {**metadata, "sha256": content_digest(tensors, metadata)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata=metadata)
    return path


def metadata_json(metadata: dict[str, str], key: str, path: str | Path, writer: str):
    """The JSON value of metadata ``key``; ``ValueError`` naming the file and the key when it is missing (write the
    file with ``writer``) or not JSON."""
    if key not in metadata:
        raise ValueError(f"{path}: metadata key '{key}' is missing; write the file with {writer}")
    try:
        return json.loads(metadata[key])
    except ValueError as err:
        raise ValueError(f"{path}: metadata '{key}' is not valid JSON ({err})") from err


def norm_bounds_entry(metadata: dict[str, str], path: str | Path, count: int, writer: str, unit: str) -> list[float]:
    """The per-layer norm bounds (metadata 'weight_norm_bounds'): a JSON list of ``count`` finite numbers ≥ 0, one per
    certified ``unit``; anything else (a scalar, another length, strings, NaN, a negative bound) is refused."""
    bounds = metadata_json(metadata, "weight_norm_bounds", path, writer)
    expected = f"must be a JSON list of {count} finite norm bounds ≥ 0 (one per certified {unit})"
    if not isinstance(bounds, list):
        raise ValueError(f"{path}: metadata 'weight_norm_bounds' {expected}, got {metadata['weight_norm_bounds']!r}")
    if len(bounds) != count:
        raise ValueError(f"{path}: metadata 'weight_norm_bounds' {expected}, got {len(bounds)} bounds")
    for index, bound in enumerate(bounds):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound < 0:
            raise ValueError(f"{path}: metadata 'weight_norm_bounds' {expected}; entry {index} is {bound!r}")
    return [float(bound) for bound in bounds]


class ShippedFolder:
    """The ``.safetensors`` files a package ships in ``folder``, each named by its stem: looked up by name, listed,
    and trusted as they are. Any other file is verified by default: its digest proves nothing, as anyone who edits
    a bound can recompute it."""

    def __init__(self, folder: Path, kind: str):
        self.folder, self.kind = folder, kind

    def files(self) -> dict[str, Path]:
        return {path.name.removesuffix(".safetensors"): path for path in sorted(self.folder.glob("*.safetensors"))}

    def file(self, name_or_path: str | Path) -> Path:
        """The file of a shipped name, or ``name_or_path`` itself when it is a ``.safetensors`` path or an existing
        file; ``ValueError`` listing the shipped names otherwise."""
        shipped = self.files()
        if not isinstance(name_or_path, (str, Path)):
            raise ValueError(f"a {self.kind} is named by a string or a path, got {type(name_or_path).__name__}; "
                             f"shipped: {', '.join(shipped) or 'none'}")
        if str(name_or_path) in shipped:
            return shipped[str(name_or_path)]
        path = Path(name_or_path)
        if path.suffix == ".safetensors" or path.exists():
            return path
        raise ValueError(f"unknown {self.kind} '{name_or_path}'; shipped: {', '.join(shipped) or 'none'} "
                         "(or give a .safetensors path)")

    def verify_by_default(self, path: str | Path) -> bool:
        """True for every file outside the shipped folder."""
        return Path(path).resolve().parent != self.folder.resolve()

    def listing(self, read_metadata: Callable[[Path], dict[str, str]]) -> list[dict[str, str]]:
        """Name, file and metadata (less the digest) of every shipped file, read without loading tensors."""
        return [{"name": name, "file": str(path), **{k: v for k, v in read_metadata(path).items() if k != "sha256"}}
                for name, path in self.files().items()]
