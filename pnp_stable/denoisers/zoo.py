"""Named pretrained denoisers shipped inside the package (``denoisers/weights/*.safetensors``)."""

from __future__ import annotations

from pathlib import Path

from .averaged import AveragedDenoiser
from .baselines import DnCNNBaseline
from .ensemble import SelfEnsemble, self_ensemble
from .serialization import SHIPPED, load_denoiser_file, read_metadata

__all__ = ["denoiser_file", "list_denoisers", "load_denoiser"]


def list_denoisers() -> list[dict[str, str]]:
    """Every shipped model: name, file, certificate and training metadata (read without loading tensors)."""
    return SHIPPED.listing(read_metadata)


def denoiser_file(name_or_path: str | Path) -> Path:
    """The file of a shipped model name (see :func:`list_denoisers`), or ``name_or_path`` itself when it is a
    ``.safetensors`` path or an existing file; ``ValueError`` listing the shipped names otherwise."""
    return SHIPPED.file(name_or_path)


def load_denoiser(name_or_path: str | Path, verify: bool | None = None,
                  ensemble: int = 1) -> AveragedDenoiser | DnCNNBaseline | SelfEnsemble:
    """A shipped model by name (see :func:`list_denoisers`) or any denoiser file by path; offline, no pickle.
    ``verify`` recomputes every stored norm bound; by default only for files outside the package (see
    :func:`load_denoiser_file`). ``ensemble`` 2, 4 or 8: the model wrapped in a :class:`SelfEnsemble` over that
    many flips and rotations (the same certificate, that many times the cost). The model's ``name`` is
    ``name_or_path`` as given (results and messages name it)."""
    model = load_denoiser_file(denoiser_file(name_or_path), verify=verify)
    model.name = str(name_or_path)
    return self_ensemble(model, ensemble)
