"""Classifiers ↔ ``.safetensors`` files: tensors, class, architecture, the certificate (Lipschitz bounds computed
from guaranteed per-layer bounds at save time) and every layer bound, with a SHA-256 digest of the whole content
(tensors and metadata), so that any accidental change is refused. A digest inside the file cannot stop a deliberate
edit of bounds and digest together: files from elsewhere are therefore loaded with every bound recomputed
(``verify``), and only the shipped files in ``classification/weights/`` are trusted as they are. Loading never
unpickles."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from .._finite import check_finite_model, check_finite_tensors
from .._safetensors import ShippedFolder, content_digest, metadata_json, norm_bounds_entry, read_safetensors, write_safetensors
from ..denoisers.layers import install_norm_bounds
from .baseline import SpectralResNetClassifier
from .network import LipschitzClassifier

__all__ = ["FORMAT", "SHIPPED", "save_classifier", "load_classifier", "read_classifier_metadata", "list_classifiers",
           "classifier_file"]

FORMAT = "pnp-stable-classifier/1"
STORABLE = {cls.__name__: cls for cls in (LipschitzClassifier, SpectralResNetClassifier)}
SHIPPED = ShippedFolder(Path(__file__).parent / "weights", "classifier")


def _certificate(model) -> dict:
    return {"feature_lipschitz": model.feature_lipschitz(), "lipschitz": model.lipschitz_bound(),
            "method": "product of guaranteed per-layer bounds (Szegő-certified convolution norms, exact 1×1 and head "
                      "singular values); non-expansive blocks are 1-Lipschitz by their sub-step rule"}


def save_classifier(model: LipschitzClassifier, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write weights, architecture, certificate and per-layer bounds (computed now, in eval mode) and ``extra``."""
    if type(model).__name__ not in STORABLE:
        raise ValueError(f"save_classifier writes {' or '.join(STORABLE)} models, got {type(model).__name__}")
    check_finite_model(model, f"save_classifier({path})")
    was_training = model.training
    model.eval()
    certificate = _certificate(model)
    bounds = [conv.weight_norm_bound() for conv in model.bounded_convs()]
    model.train(was_training)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "class": type(model).__name__, "config": json.dumps(model.config, sort_keys=True),
                "certificate": json.dumps(certificate, sort_keys=True), "weight_norm_bounds": json.dumps(bounds)}
    for key, value in (extra or {}).items():
        if key in metadata or key == "sha256":
            raise ValueError(f"metadata key '{key}' is reserved")
        metadata[key] = str(value)
    return write_safetensors(path, tensors, metadata)


def _json(metadata: dict[str, str], key: str, path) -> object:
    return metadata_json(metadata, key, path, "save_classifier")


def load_classifier(path: str | Path, verify: bool | None = None) -> LipschitzClassifier:
    """The classifier stored in ``path`` (a file, or a shipped name: :func:`list_classifiers`), in eval mode, with its
    norm bounds installed. ``verify`` (default: True except for the shipped files) recomputes every bound and installs
    the larger of stored and recomputed, a few seconds; otherwise the stored bounds are used. Refused with a
    ``ValueError``: another kind of file, a missing or wrong digest, NaN/Inf tensors, malformed metadata, a stored
    bound below its recomputation, or a stored certificate below what the installed bounds give (one above it, as
    in files written before a rounding term was added to the bounds, loads with a warning: the larger one is used)."""
    path = classifier_file(path)
    if verify is None:
        verify = SHIPPED.verify_by_default(path)
    metadata, tensors = read_safetensors(path, "classifier file", FORMAT)
    if "sha256" not in metadata:
        raise ValueError(f"{path}: metadata key 'sha256' is missing, so the content cannot be checked; write the file "
                         "with save_classifier")
    if metadata["sha256"] != content_digest(tensors, metadata):
        raise ValueError(f"{path}: content does not match its recorded digest (file modified or corrupt)")
    check_finite_tensors(tensors, str(path))
    name = metadata.get("class")
    if name not in STORABLE:
        raise ValueError(f"{path}: metadata 'class' is {name!r}; expected one of {', '.join(STORABLE)}")
    config = _json(metadata, "config", path)
    try:
        model = STORABLE[name](**{"power_size": 32, **config})  # files written before the option used 32×32
        model.load_state_dict(tensors, strict=True)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: weights and metadata 'config' do not describe a valid {name} ({err})") from err
    model.eval()
    convs = model.bounded_convs()
    bounds = norm_bounds_entry(metadata, path, len(convs), "save_classifier", "layer")
    install_norm_bounds(convs, bounds, verify, str(path), "layer")
    stored = _json(metadata, "certificate", path)
    recomputed = model.lipschitz_bound()
    if not isinstance(stored, dict) or not isinstance(stored.get("lipschitz"), (int, float)) \
            or stored["lipschitz"] - recomputed > 1e-6 * max(1.0, recomputed):
        raise ValueError(f"{path}: stored certificate {stored!r} disagrees with the weights (Lipschitz {recomputed:.6g})")
    if recomputed - stored["lipschitz"] > 1e-6 * max(1.0, recomputed):  # the model certifies with the larger one
        warnings.warn(f"{path}: its stored Lipschitz bound {stored['lipschitz']:.8g} predates the current rounding "
                      f"terms; the weights give {recomputed:.8g}, which the radii use; re-save the file with "
                      "save_classifier to record it", stacklevel=2)
    return model


def classifier_file(name_or_path: str | Path) -> Path:
    """A shipped classifier's file by name, or ``name_or_path`` itself when it is a ``.safetensors`` path or an
    existing file."""
    return SHIPPED.file(name_or_path)


def read_classifier_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a classifier file, validated (no tensors are loaded)."""
    return read_safetensors(path, "classifier file", FORMAT, tensors=False)[0]


def list_classifiers() -> list[dict[str, str]]:
    """Every shipped classifier: name, file and metadata (read without loading tensors)."""
    return SHIPPED.listing(read_classifier_metadata)
