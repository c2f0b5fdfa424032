"""Denoisers ↔ ``.safetensors`` files: tensors plus class, architecture, certificate and (for the
certified networks) per-layer norm bounds in the metadata. Loading never unpickles. A SHA-256 digest of the
whole content (every tensor and every metadata entry) catches any accidental change; since anyone can recompute
it, the stored bounds are trusted as they are only in the package's own ``weights/`` folder, and every other file
has them recomputed on loading (``verify``). Files written before the digest covered the metadata (digest of the
tensors only) still load, always verified. Three classes are stored: :class:`AveragedDenoiser`,
:class:`ConvexRidgeDenoiser` (certified without norm bounds: it is a proximal map) and the unconstrained
:class:`DnCNNBaseline`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from deepinv.models import Denoiser

from .._finite import check_finite_model, check_finite_tensors
from .._safetensors import (ShippedFolder, content_digest, metadata_json, norm_bounds_entry, read_safetensors, tensor_digest,
                            write_safetensors)
from ..theory import Certificate
from .averaged import AveragedDenoiser
from .baselines import DnCNNBaseline
from .convex_ridge import ConvexRidgeDenoiser
from .layers import install_norm_bounds

__all__ = ["save_denoiser", "load_denoiser_file", "read_denoiser_tensors", "trained_noise_range"]

FORMAT = "pnp-stable-denoiser/1"
SHIPPED = ShippedFolder(Path(__file__).parent / "weights", "denoiser")
STORABLE = {cls.__name__: cls for cls in (AveragedDenoiser, ConvexRidgeDenoiser, DnCNNBaseline)}


def _norm_bounds(model) -> list[float]:
    return [conv.weight_norm_bound() for conv in model.bounded_convs()] if isinstance(model, AveragedDenoiser) else []


def save_denoiser(model: Denoiser, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write weights, config, certificate (computed now from guaranteed bounds), ``extra`` metadata and the content
    digest, atomically (an interrupted write leaves no truncated file)."""
    if type(model).__name__ not in STORABLE:
        raise ValueError(f"save_denoiser writes {' or '.join(STORABLE)} models, got {type(model).__name__}")
    check_finite_model(model, f"save_denoiser({path})")
    was_training = model.training
    model.eval()
    certificate = model.certificate
    bounds = _norm_bounds(model)
    model.train(was_training)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "class": type(model).__name__,
        "config": json.dumps(model.config, sort_keys=True),
        "certificate": certificate.to_json(),
        "weight_norm_bounds": json.dumps(bounds),
    }
    for key, value in (extra or {}).items():
        if key in metadata or key == "sha256":
            raise ValueError(f"metadata key '{key}' is reserved")
        metadata[key] = str(value)
    return write_safetensors(path, tensors, metadata)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a denoiser file, validated (no tensors are loaded)."""
    return read_safetensors(path, "denoiser file", FORMAT, tensors=False)[0]


def read_denoiser_tensors(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a denoiser file, refused unless the content matches its recorded SHA-256 and the
    tensors are all finite (a NaN weight saved with its own digest still makes the network output NaN)."""
    return _read(path)[:2]


def _read(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor], bool]:
    """:func:`read_denoiser_tensors`, and whether the digest covers the metadata too (:func:`_metadata_digested`)."""
    metadata, tensors = read_safetensors(path, "denoiser file", FORMAT)
    covered = _metadata_digested(path, metadata, tensors)
    check_finite_tensors(tensors, str(path))
    return metadata, tensors, covered


def _metadata_digested(path: str | Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> bool:
    """True when the recorded digest covers tensors and metadata, False for an older file whose digest covers only
    the tensors; ``ValueError`` when the digest is missing or matches neither."""
    if "sha256" not in metadata:
        raise ValueError(f"{path}: metadata key 'sha256' is missing, so the weights cannot be verified; "
                         "write the file with save_denoiser")
    if metadata["sha256"] == content_digest(tensors, metadata):
        return True
    if metadata["sha256"] == tensor_digest(tensors):
        return False
    raise ValueError(f"{path}: content does not match its recorded digest (file modified or corrupt)")


def _json_entry(metadata: dict[str, str], key: str, path: str | Path):
    return metadata_json(metadata, key, path, "save_denoiser")


def _build_model(metadata: dict[str, str], path: str | Path) -> Denoiser:
    """An untrained model of the stored class (metadata 'class', one of :data:`STORABLE`) built from the
    stored architecture (metadata 'config', a JSON object of constructor arguments)."""
    name = metadata.get("class", "AveragedDenoiser")
    if name not in STORABLE:
        raise ValueError(f"{path}: metadata 'class' is {name!r}; expected one of {', '.join(STORABLE)}")
    config = _json_entry(metadata, "config", path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: metadata 'config' must be a JSON object of {name} arguments, got {metadata['config']!r}")
    try:
        return STORABLE[name](**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: metadata 'config' is not a valid {name} configuration ({err})") from err


def _stored_certificate(metadata: dict[str, str], path: str | Path) -> Certificate:
    if "certificate" not in metadata:
        raise ValueError(f"{path}: metadata key 'certificate' is missing; write the file with save_denoiser")
    try:
        return Certificate.from_json(metadata["certificate"])
    except ValueError as err:
        raise ValueError(f"{path}: metadata 'certificate' is invalid ({err})") from err


def trained_noise_range(metadata: dict[str, str]) -> tuple[float, float] | None:
    """(σ_min, σ_max) of the training noise levels recorded in the metadata's ``training`` entry (the trainer's
    ``sigma``: a range, or one level σ for (σ, σ)), or None where the file records none or an unreadable one (it is
    information, not part of the certificate)."""
    try:
        sigma = json.loads(metadata["training"])["sigma"]
        low, high = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
        low, high = float(low), float(high)
    except (KeyError, TypeError, ValueError):
        return None
    return (low, high) if 0 <= low <= high < math.inf else None


def load_denoiser_file(path: str | Path, verify: bool | None = None) -> Denoiser:
    """Build the denoiser stored in ``path`` (eval mode) and restore its certified norm bounds. The model's
    ``noise_range`` is the range of noise levels it was trained on (:func:`trained_noise_range`), or None.

    ``verify`` recomputes every per-layer bound, refuses a stored bound below the recomputed one (to within 1e-6
    of the supremum, so only a true bound closer than that can be refused) and installs the larger of the two
    (:func:`~.layers.install_norm_bounds`; about a second for a shipped model).
    None (the default): verify every file outside the package's ``weights/`` folder, whose digest anyone could
    have recomputed after editing a bound; an older file whose digest covers only the tensors is always verified.
    A changed file, non-finite tensors and malformed metadata (each key is checked) are refused with a ``ValueError``.
    """
    metadata, tensors, covered = _read(path)
    if verify is None:
        verify = SHIPPED.verify_by_default(path)
    verify = verify or not covered
    model = _build_model(metadata, path)
    stored = _stored_certificate(metadata, path)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the recorded architecture: {err}") from err
    model.eval()
    if isinstance(model, ConvexRidgeDenoiser):
        model.check_state(str(path))
    convs = model.bounded_convs() if isinstance(model, AveragedDenoiser) else []
    bounds = norm_bounds_entry(metadata, path, len(convs), "save_denoiser", "block")
    install_norm_bounds(convs, bounds, verify, str(path), "block")
    try:
        recomputed = model.certificate
    except (ArithmeticError, RuntimeError) as err:  # e.g. a time span so long that the sub-step count overflows
        raise ValueError(f"{path}: the certificate cannot be recomputed from the stored weights and bounds "
                         f"({type(err).__name__}: {err}); the file is corrupt") from err
    if (recomputed.alpha is None) != (stored.alpha is None) or (
        stored.alpha is not None and abs(recomputed.alpha - stored.alpha) > 1e-6
    ):
        raise ValueError(f"{path}: stored certificate ({stored}) disagrees with the weights ({recomputed})")
    model.noise_range = trained_noise_range(metadata)
    return model
