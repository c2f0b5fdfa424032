"""Named pretrained denoisers shipped inside the package (``denoisers/weights/*.safetensors``)."""

from __future__ import annotations

from pathlib import Path

from .averaged import AveragedDenoiser
from .baselines import DnCNNBaseline
from .serialization import WEIGHTS_DIR, load_denoiser_file, read_metadata

__all__ = ["WEIGHTS_DIR", "denoiser_file", "list_denoisers", "load_denoiser"]


def _shipped() -> dict[str, Path]:
    return {path.name.removesuffix(".safetensors"): path for path in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def list_denoisers() -> list[dict[str, str]]:
    """Every shipped model: name, file, certificate and training metadata (read without loading tensors)."""
    rows = []
    for name, path in _shipped().items():
        metadata = read_metadata(path)
        rows.append({"name": name, "file": str(path), **{k: v for k, v in metadata.items() if k != "sha256"}})
    return rows


def denoiser_file(name_or_path: str | Path) -> Path:
    """The file of a shipped model name (see :func:`list_denoisers`), or ``name_or_path`` itself when it is a
    ``.safetensors`` path or an existing file; ``ValueError`` listing the shipped names otherwise."""
    if not isinstance(name_or_path, (str, Path)):
        raise ValueError(f"a denoiser is named by a string or a path, got {type(name_or_path).__name__}; "
                         f"shipped: {', '.join(_shipped())}")
    shipped = _shipped()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    path = Path(name_or_path)
    if path.suffix == ".safetensors" or path.exists():
        return path
    available = ", ".join(shipped) or "none shipped yet"
    raise ValueError(f"unknown denoiser '{name_or_path}'; available: {available} (or give a .safetensors path)")


def load_denoiser(name_or_path: str | Path, verify: bool | None = None) -> AveragedDenoiser | DnCNNBaseline:
    """A shipped model by name (see :func:`list_denoisers`) or any denoiser file by path; offline, no pickle.
    ``verify`` recomputes every stored norm bound; by default only for files outside the package (see
    :func:`load_denoiser_file`)."""
    return load_denoiser_file(denoiser_file(name_or_path), verify=verify)
