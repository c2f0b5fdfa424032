"""Named pretrained denoisers shipped inside the package (``denoisers/weights/*.safetensors``)."""

from __future__ import annotations

from pathlib import Path

from .._validation import float64_levels
from .averaged import AveragedDenoiser
from .baselines import DnCNNBaseline
from .ensemble import SelfEnsemble, self_ensemble
from .serialization import SHIPPED, load_denoiser_file, read_metadata

__all__ = ["denoiser_file", "denoiser_label", "list_denoisers", "load_denoiser", "noise_range_text", "outside_training"]


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


def denoiser_label(denoiser) -> str:
    """How results and messages name a denoiser: a name or path as given, a model by the ``name`` it was loaded by
    (:func:`load_denoiser`), anything else by its class."""
    if isinstance(denoiser, (str, Path)):
        return str(denoiser)
    return getattr(denoiser, "name", None) or type(denoiser).__name__


def noise_range_text(low: float, high: float) -> str:
    """A training range of noise levels as users give them: '[0, 25]/255'."""
    return f"[{low * 255:.4g}, {high * 255:.4g}]/255"


def outside_training(denoiser, sigma, label: str | None = None, level: str = "sigma") -> str | None:
    """What to tell a user who calls ``denoiser`` at a noise level outside the range it was last trained on (its
    ``noise_range``, read from the file it was loaded from), or None when every level of ``sigma`` is inside or the
    range is unknown (``level`` names the level in the message). A network extrapolates there (``averaged-color``,
    last trained on σ ≤ 25/255, is below TV at 50/255 in ``denoise.md``); its certificate holds at every σ, only the
    quality is in question."""
    trained = getattr(denoiser, "noise_range", None)
    if trained is None:
        return None
    low, high = trained
    levels = float64_levels(sigma, f"{level} must be a noise level or one per image").reshape(-1)
    outside = levels[(levels > high * (1 + 1e-3) + 1e-9) | (levels < low * (1 - 1e-3) - 1e-9)]
    if not len(outside):
        return None
    label = label or denoiser_label(denoiser)
    return (f"{level} = {float(outside[0]) * 255:.4g}/255 is outside the noise levels denoiser '{label}' was last "
            f"trained on ({noise_range_text(low, high)}): expect a poorer estimate")
