"""One-line entry points: ``deblur(y, kernel, noise_sigma)`` and ``denoise(x, sigma)``.

They accept numpy arrays (``[H, W]`` / ``[H, W, C]``, integers scaled to [0, 1]) or tensors
(``[H, W]``, ``[C, H, W]``, ``[B, C, H, W]``), gray or colour, pick the shipped certified denoiser
for the image's channels, and use the tuned defaults of :mod:`pnp_stable.solvers.defaults`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ._validation import check_image, check_noise_level
from .denoisers.averaged import certificate_of
from .denoisers.zoo import load_denoiser
from .io import to_tensor
from .operators.kernels import kernel_from_spec, validate_kernel
from .operators.physics import blur
from .solvers.guided import guided_solve
from .solvers.loop import PnPResult, solve
from .theory import Certificate

__all__ = ["DEFAULT_DENOISERS", "DenoiseResult", "deblur", "denoise", "resolve_denoiser", "resolve_guide"]

DEFAULT_DENOISERS = {1: "averaged-gray", 3: "averaged-color"}


def _choose(denoiser, channels: int):
    """``'auto'`` (or None) → the name of the shipped certified model for ``channels``; anything else as given."""
    if denoiser is None or denoiser == "auto":
        if channels not in DEFAULT_DENOISERS:
            raise ValueError(f"no shipped denoiser for {channels}-channel images; pass denoiser=... built for them")
        return DEFAULT_DENOISERS[channels]
    return denoiser


def _label(denoiser) -> str:
    return str(denoiser) if isinstance(denoiser, (str, Path)) else type(denoiser).__name__


def resolve_denoiser(denoiser, channels: int, device: str | torch.device = "cpu"):
    """``'auto'`` → the shipped certified model for ``channels``; a name or ``.safetensors`` path → that
    model; any other callable is used as given. Refuses a model built for another number of channels."""
    denoiser = _choose(denoiser, channels)
    label = _label(denoiser)
    model = load_denoiser(denoiser) if isinstance(denoiser, (str, Path)) else denoiser
    expected = getattr(model, "channels", None)  # ours and the baselines record it; None for other callables
    if expected is not None and expected != channels:
        kind = {1: "gray", 3: "colour"}
        hint = f"; use the '{DEFAULT_DENOISERS[channels]}' denoiser" if channels in DEFAULT_DENOISERS else ""
        raise ValueError(
            f"denoiser '{label}' takes {kind.get(expected, expected)} images ({expected} channel(s)) but the image "
            f"is {kind.get(channels, channels)} ({channels} channel(s)){hint}"
        )
    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
    return model


def resolve_guide(guide, channels: int, device: str | torch.device = "cpu"):
    """The denoiser that makes the guide of ``denoiser='guided'``: ``'bm3d'`` or ``'bm3d-lc'`` (its 3× faster
    low-complexity profile; both need the optional ``bm3d`` extra), a shipped model name or ``.safetensors``
    path (``'auto'``: the certified model for ``channels``), or any ``denoiser(x, sigma)`` callable. It needs
    no certificate: the guide is frozen before the certified solve."""
    if guide in ("bm3d", "bm3d-lc"):
        from .denoisers.baselines import BM3DDenoiser

        return BM3DDenoiser(profile="lc" if guide == "bm3d-lc" else "np")
    return resolve_denoiser(guide, channels, device)


def _as_batch(image, name: str, device) -> Tensor:
    x = to_tensor(image) if not isinstance(image, Tensor) or image.ndim != 4 else image
    return check_image(x.to(device=device, dtype=torch.float32), name)


def _as_kernel(kernel) -> Tensor:
    return kernel_from_spec(kernel) if isinstance(kernel, str) else validate_kernel(kernel)


def deblur(
    y,
    kernel,
    noise_sigma: float,
    solver: str | None = None,
    denoiser="auto",
    boundary: str = "circular",
    denoiser_sigma: float | None = None,
    step: float | None = None,
    max_iter: int | None = None,
    tol: float = 1e-5,
    relaxation: float = 1.0,
    x0=None,
    reference=None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    allow_unsafe_step: bool = False,
    denoiser_weight: float | None = None,
    guide="bm3d",
    guided_rounds: int | None = None,
) -> PnPResult:
    """Restore ``y = k * x + n`` (n ~ N(0, noise_sigma²), values on the [0, 1] scale) by monitored PnP.

    ``solver``: ``'fb'`` (the default), ``'hqs'``, ``'drs'``, ``'admm'`` or ``'fista'`` (no guarantee).
    ``kernel``: an array/tensor or a spec such as ``'gaussian:1.6'``, ``'motion:0:19'``, ``'file:k.npz:2'``.
    ``denoiser``: ``'auto'`` (``averaged-gray``/``averaged-color`` by channels), a model name or path,
    or any ``denoiser(x, sigma)``. ``denoiser_sigma``, ``step``, ``denoiser_weight`` (ω: the denoising
    step is x + ω(D(x, σ_d) − x)) and ``max_iter`` default to the tuned values (:func:`pnp_stable.solvers.defaults.tuned`). Returns the :class:`PnPResult` (``estimate``,
    ``status``, ``history``, certified ``beta``; ``pnp_stable.to_numpy(result.estimate)`` for an array).

    ``denoiser='guided'``: the frozen-guide route (:func:`pnp_stable.solvers.guided.guided_solve`): ``guide``
    (``'bm3d'``, a model name or path, or any ``denoiser(x, sigma)``) runs a short DPIR-schedule pilot whose
    output is the guide g; the certified solve then uses the linear filter W(g), firmly non-expansive for that
    frozen guide, for ``guided_rounds`` rounds (each round's estimate guides the next). ``solver``,
    ``denoiser_sigma`` and ``guided_rounds`` then default to the guide's :func:`~pnp_stable.solvers.guided.guided_defaults`.
    """
    y = _as_batch(y, "blurred image y", device)
    physics = blur(_as_kernel(kernel), boundary=boundary, img_size=tuple(y.shape[1:]), device=device)
    if isinstance(denoiser, str) and denoiser == "guided":
        if step is not None or denoiser_weight is not None or relaxation != 1.0 or x0 is not None:
            raise ValueError("denoiser='guided' sets its own start (the guide), step and weight; "
                             "drop step=, denoiser_weight=, relaxation= and x0=")
        return guided_solve(
            physics, y, resolve_guide(guide, y.shape[1], device), noise_sigma, solver=solver,
            denoiser_sigma=denoiser_sigma, rounds=guided_rounds, max_iter=max_iter, tol=tol, reference=None if reference is None else _as_batch(reference, "reference", device),
            progress=progress,
        )
    model = resolve_denoiser(denoiser, y.shape[1], device)
    return solve(
        physics, y, model, noise_sigma, solver=solver or "fb", denoiser_sigma=denoiser_sigma, step=step,
        denoiser_weight=denoiser_weight, relaxation=relaxation, max_iter=max_iter, tol=tol,
        x0=None if x0 is None else _as_batch(x0, "x0", device),
        reference=None if reference is None else _as_batch(reference, "reference", device),
        allow_unsafe_step=allow_unsafe_step, progress=progress,
    )


@dataclass
class DenoiseResult:
    """``estimate`` D(x, σ) and the certificate of the denoiser that produced it."""

    estimate: Tensor
    certificate: Certificate
    denoiser: str


def denoise(x, sigma: float, denoiser="auto", device: str | torch.device = "cpu") -> DenoiseResult:
    """Remove Gaussian noise of standard deviation ``sigma`` ([0, 1] scale) with a (certified) denoiser."""
    sigma = check_noise_level(sigma, "sigma")
    x = _as_batch(x, "noisy image", device)
    chosen = _choose(denoiser, x.shape[1])
    model = resolve_denoiser(chosen, x.shape[1], device)
    with torch.no_grad():
        estimate = model(x, sigma)
    if not torch.isfinite(estimate).all():
        raise ValueError(f"the denoiser {_label(chosen)} returned NaN or Inf for a finite input at sigma = {sigma:g}; "
                         "check its weights (pnp-stable certify NAME --verify) or the noise level")
    return DenoiseResult(estimate=estimate, certificate=certificate_of(model), denoiser=_label(chosen))
