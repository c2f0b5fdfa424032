"""One-line entry points: ``deblur(y, kernel, noise_sigma)`` and ``denoise(x, sigma)``.

They accept numpy arrays (``[H, W]`` / ``[H, W, C]``, integers scaled to [0, 1]) or tensors
(``[H, W]``, ``[C, H, W]``, ``[B, C, H, W]``), gray or colour, pick the shipped certified denoiser
for the image's channels, and use the tuned defaults of :mod:`pnp_stable.solvers.defaults`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ._modules import accepted_channels, evaluation_mode, on_device, with_sigma_argument
from ._validation import (check_denoiser_sigma, check_device, check_noise_level, check_start, float64_levels,
                          refuse_autocast, unit_scale_level)
from .denoisers.certificates import certificate_of
from .denoisers.baselines import BM3DDenoiser
from .denoisers.ensemble import self_ensemble
from .denoisers.switch import NoiseLevelSwitch, range_index
from .denoisers.tiling import TiledDenoiser, tiled
from .denoisers.zoo import denoiser_label, load_denoiser, outside_training
from .io import to_tensor
from .operators.kernels import kernel_from_spec, validate_kernel
from .operators.physics import blur
from .solvers.guided import guided_solve
from .solvers.defaults import tuned
from .solvers.loop import PnPResult, solve
from .solvers.schemes import Scheme, scheme_name
from .theory import Certificate

__all__ = ["DEBLURRING_DEFAULTS", "DEFAULT_DENOISERS", "DENOISING_DEFAULTS", "DenoiseResult", "choose_denoiser", "deblur",
           "denoise", "resolve_denoiser", "resolve_guide", "tile_anchor", "valid_frame"]

#: the shipped certified model for each number of channels, when no noise level is known (``resolve_denoiser('auto')``)
DEFAULT_DENOISERS = {1: "averaged-sll-gray", 3: "averaged-color"}
#: ``denoise``'s 'auto': each shipped network on the noise levels where it denoises best on held-out images (colour:
#: CBSD432, σ·255 ≤ 8, ≤ 15, above; gray: Train400, ≤ 9, ≤ 17, above; the tables are in
#: ``pnp_stable/denoisers/weights/README.md``), as the levels and names of a NoiseLevelSwitch
DENOISING_DEFAULTS = {3: ((8 / 255, 15 / 255),
                          ("averaged-sll-lownoise-color", "averaged-sll-color", "averaged-sll-highnoise-color")),
                      1: ((9 / 255, 17 / 255), ("averaged-sll-lownoise-gray", "averaged-sll-pnp-gray", "averaged-sll-gray"))}
#: ``deblur``'s 'auto', by the level σ_d at which PnP calls the denoiser (``denoiser_sigma``; by default the solver's
#: tuned strength × σ_n): the network best at that σ_d with the tuned defaults on held-out crops (colour: 18 crops and
#: 6 kernels, σ_d·255 ≤ 9, ≤ 12, above; gray: 8 Train400 crops and 6 kernels, σ_d·255 from 3.6 to 40, ≤ 10.5, ≤ 20.5,
#: above; ``training/screening/deblur_noise_levels.py``, tables in
#: ``training/campaign/README.md``), as the levels and names of a NoiseLevelSwitch
DEBLURRING_DEFAULTS = {3: ((9 / 255, 12 / 255),
                           ("averaged-lownoise-color", "averaged-color", "averaged-sll-highnoise-color")),
                       1: ((10.5 / 255, 20.5 / 255), ("averaged-sll-lownoise-gray", "averaged-sll-pnp-gray", "averaged-sll-gray"))}
#: 1/(band power) of natural images in the Wiener anchor of deblur's tiles (:func:`tile_anchor`)
TILE_ANCHOR_SNR = 30.0


def _choose(denoiser, channels: int):
    """``'auto'`` (or None) → the name of the shipped certified model for ``channels``; anything else as given."""
    if denoiser is None or denoiser == "auto":
        if channels not in DEFAULT_DENOISERS:
            alpha = " (an RGBA image? drop its alpha channel: image[..., :3] for an [H, W, 4] array)" if channels == 4 else ""
            raise ValueError(f"no shipped denoiser for {channels}-channel images{alpha}; pass denoiser=... built for them")
        return DEFAULT_DENOISERS[channels]
    return denoiser


def choose_denoiser(denoiser, channels: int, sigma, task: str) -> tuple:
    """(denoiser, label) for the noise level(s) ``sigma`` the denoiser will run at, in ``task`` ``'denoise'`` (σ) or
    ``'deblur'`` (σ_d): a name, path or callable as given; ``'auto'`` (or None) the network of
    :data:`DENOISING_DEFAULTS` / :data:`DEBLURRING_DEFAULTS` whose range holds σ, a :class:`NoiseLevelSwitch` over
    them when the levels of a batch fall in several ranges, or :data:`DEFAULT_DENOISERS` for channels without a
    table or when ``sigma`` is None (no level known)."""
    tables = {"denoise": DENOISING_DEFAULTS, "deblur": DEBLURRING_DEFAULTS}
    if task not in tables:
        raise ValueError(f"task must be 'denoise' or 'deblur', got {task!r}")
    if not (denoiser is None or denoiser == "auto") or channels not in tables[task] or sigma is None:
        chosen = _choose(denoiser, channels)
        return chosen, denoiser_label(chosen)
    values = float64_levels(sigma, "sigma must be a noise level or one per image").reshape(-1)
    if not len(values) or not (torch.isfinite(values).all() and (values >= 0).all()):
        raise ValueError(f"sigma must be finite noise levels ≥ 0 (on the [0, 1] scale), got {sigma!r}")
    levels, names = tables[task][channels]
    ranges = range_index(values, levels).unique().tolist()
    if len(ranges) == 1:
        return names[ranges[0]], names[ranges[0]]
    switch = NoiseLevelSwitch(levels, [load_denoiser(name) for name in names])
    return switch, f"NoiseLevelSwitch({', '.join(names[k] for k in ranges)})"


def _warn_outside_training(model, sigma, label: str, channels: int, chosen_by_default: bool) -> None:
    """:func:`~pnp_stable.denoisers.zoo.outside_training` as a warning; for a model the caller chose, with a hint
    when the 'auto' choice was trained for those levels."""
    advice = outside_training(model, sigma, label)
    if not advice:
        return
    if not chosen_by_default and channels in DEFAULT_DENOISERS:
        choice, name = choose_denoiser("auto", channels, sigma, "denoise")
        if outside_training(load_denoiser(choice) if isinstance(choice, str) else choice, sigma) is None:
            advice += f"; denoiser='auto' takes {name}, trained for it"
    warnings.warn(advice, stacklevel=3)


def resolve_denoiser(denoiser, channels: int, device: str | torch.device = "cpu", ensemble: int = 1):
    """``'auto'`` → the shipped certified model for ``channels``; a name or ``.safetensors`` path → that
    model; any other callable is used as given (a module on another device: a copy moved to ``device``; the
    solvers run it in eval mode and restore its mode). Refuses a model built for another number of channels.
    ``ensemble`` 2, 4 or 8: the result averaged over that many grid symmetries (:class:`~pnp_stable.denoisers.SelfEnsemble`:
    the same certificate)."""
    denoiser = _choose(denoiser, channels)
    label = denoiser_label(denoiser)
    model = load_denoiser(denoiser) if isinstance(denoiser, (str, Path)) else denoiser
    if not callable(model):
        raise ValueError(f"denoiser must be 'auto', a model name, a .safetensors path or a callable denoiser(x, sigma), "
                         f"got {type(model).__name__}")
    accepted = accepted_channels(model)  # None for callables that do not tell
    if accepted is not None and channels not in accepted:
        expected = accepted[0]
        kind = {1: "gray", 3: "colour"}
        hint = f"; use the '{DEFAULT_DENOISERS[channels]}' denoiser" if channels in DEFAULT_DENOISERS else ""
        raise ValueError(
            f"denoiser '{label}' takes {kind.get(expected, expected)} images ({expected} channel(s)) but the image "
            f"is {kind.get(channels, channels)} ({channels} channel(s)){hint}"
        )
    if isinstance(model, torch.nn.Module):
        model = on_device(model, device)  # the caller's own model is not moved: a copy is, when needed
    return self_ensemble(with_sigma_argument(model), ensemble)


def resolve_guide(guide, channels: int, device: str | torch.device = "cpu"):
    """The denoiser that makes the guide of ``denoiser='guided'``: ``'bm3d'`` or ``'bm3d-lc'`` (its low-complexity
    profile, 2.5× faster and 0.20 dB lower in ``guided_speed.md``; both need the optional ``bm3d`` extra), a shipped
    model name or ``.safetensors`` path (``'auto'``: the certified model for ``channels``), or any
    ``denoiser(x, sigma)`` callable. It needs no certificate: the guide is frozen before the certified solve."""
    if guide in ("bm3d", "bm3d-lc"):
        return BM3DDenoiser(profile="lc" if guide == "bm3d-lc" else "np")
    return resolve_denoiser(guide, channels, device)


def _as_batch(image, name: str, device) -> Tensor:
    """Any accepted image (:func:`~pnp_stable.io.to_tensor`'s rule: integers by bit depth, floats in [0, 1]) as
    a float32 ``[B, C, H, W]`` batch on ``device``."""
    return to_tensor(image, name).to(device=device)


def _as_kernel(kernel) -> Tensor:
    return kernel_from_spec(kernel) if isinstance(kernel, str) else validate_kernel(kernel, warn_scaled=True)


def valid_frame(kernel_shape, y_shape) -> tuple[slice, slice]:
    """Where y lies inside the larger x of a ``'valid'`` blur (deepinv's convolution flips the kernel, so
    y[i, j] is centred on x[i + (h − 1)//2, j + (w − 1)//2]; for even sizes that is not h//2)."""
    (h, w), (H, W) = tuple(kernel_shape)[-2:], tuple(y_shape)[-2:]
    return slice((h - 1) // 2, (h - 1) // 2 + H), slice((w - 1) // 2, (w - 1) // 2 + W)


def _extend(image: Tensor, frame: tuple[slice, slice], x_shape) -> Tensor:
    """An image of y's size continued to x's size by repeating its edge pixels (the start of a 'valid' solve)."""
    top, left = frame[0].start, frame[1].start
    bottom, right = x_shape[2] - frame[0].stop, x_shape[3] - frame[1].stop
    return F.pad(image, (left, right, top, bottom), mode="replicate")


def deblur(
    y,
    kernel,
    noise_sigma: float,
    solver: str | None = None,
    denoiser="auto",
    boundary: str = "valid",
    denoiser_sigma: float | None = None,
    step: float | None = None,
    max_iter: int | None = None,
    tol: float = 1e-5,
    relaxation: float = 1.0,
    x0=None,
    reference=None,
    device: str | torch.device = "cpu",
    progress: bool | str = False,
    allow_unsafe_step: bool = False,
    denoiser_weight: float | None = None,
    guide="bm3d",
    guided_rounds: int | None = None,
    accelerate=None,
    tile: int | str | None = "auto",
    overlap: int | None = None,
    context=None,
    ensemble: int = 1,
) -> PnPResult:
    """Restore ``y = k * x + n`` (n ~ N(0, noise_sigma²), values on the [0, 1] scale) by monitored PnP.

    ``solver``: ``'fb'`` (the default), ``'hqs'``, ``'drs'``, ``'admm'`` or ``'fista'`` (no guarantee).
    ``kernel``: an array/tensor or a spec such as ``'gaussian:1.6'``, ``'motion:0:19'``, ``'file:k.npz:2'``.
    ``denoiser``: ``'auto'`` (the shipped network best at the level σ_d the solver calls it at, gray or colour:
    :data:`DEBLURRING_DEFAULTS`), a model name or path, or any ``denoiser(x, sigma)``; ``result.notes`` names it. ``denoiser_sigma``, ``step``, ``denoiser_weight`` (ω: the denoising
    step is x + ω(D(x, σ_d) − x)) and ``max_iter`` default to the tuned values (:func:`pnp_stable.solvers.defaults.tuned`). Returns the :class:`PnPResult` (``estimate``,
    ``status``, ``history``, certified ``beta``; ``pnp_stable.to_numpy(result.estimate)`` for an array).

    ``boundary``: how the blur treats the image's edges. ``'valid'`` (the default) is the model of a real
    photo, whose blur mixed in scene pixels beyond its frame: x is larger than y by the kernel's size less
    one, y is its blurred interior, nothing is assumed about the unseen rim (``benchmarks/results/boundary.md``:
    the best on real-boundary blurs). It is never wrong, since a blur with any padding is the 'valid' blur of
    the padded image. The solve starts from y continued by repeating its edge pixels, and ``estimate`` is the
    solution's part in y's frame (``governing`` keeps the whole). ``'circular'`` matches a simulation that
    wraps around (``ps.blur``'s default, ``--simulate``) and is faster (FFT prox for HQS/DRS/ADMM);
    ``'reflect'``, ``'replicate'`` and ``'zeros'`` assume that padding.

    ``denoiser='guided'``: the frozen-guide route (:func:`pnp_stable.solvers.guided.guided_solve`): ``guide``
    (``'bm3d'``, a model name or path, or any ``denoiser(x, sigma)``) runs a short DPIR-schedule pilot whose
    output is the guide g; the certified solve then uses the linear filter W(g), firmly non-expansive for that
    frozen guide, for ``guided_rounds`` rounds (each round's estimate guides the next). ``solver``,
    ``denoiser_sigma`` and ``guided_rounds`` then default to the guide's :func:`~pnp_stable.solvers.guided.guided_defaults`.

    ``accelerate``: True (or an :class:`~pnp_stable.solvers.Anderson`) for safeguarded Anderson acceleration,
    which keeps the convergence guarantee and the monitor's checks (:mod:`pnp_stable.solvers.anderson`); None:
    on for FB, HQS, DRS and ADMM (``Tuned.accelerate``) whenever the iteration has a β (a certified denoiser, and
    step, weight and relaxation within the theory: ``accelerate='auto'`` of :func:`solve`), off for FISTA and
    otherwise. ``max_iter`` then counts denoiser calls.

    ``tile``, ``overlap``: run the denoiser on ``tile``-pixel tiles overlapping by ``overlap`` pixels, with windows
    that keep its certificate (:func:`pnp_stable.denoisers.tiled`, anchored at a Wiener estimate from the start y
    or ``x0``: :func:`tile_anchor`): peak memory that of one tile. 'auto' (the default) tiles only images whose
    whole-image call would need more than 2 GiB by the code's estimate (about 4 megapixels for the shipped networks;
    ``tiling.md`` measured +1,093 MiB for a 4-megapixel whole-image call); 0 or None never
    tiles. ``overlap`` None: 33 pixels (the receptive field
    of averaged-gray/-color; the multi-scale SLL networks reach further), or (tile − 2)/3 for tiles too small for that. The blur stays whole (one FFT per
    iteration). ``context``: a deepinv ``DistributedContext`` of a ``torchrun`` launch, whose processes then share
    the tiles (every process runs the same iteration and gets every denoised image;
    :mod:`pnp_stable.denoisers.distributed`); an image that is not tiled is denoised whole by each.

    ``ensemble``: 2, 4 or 8 averages the network denoiser over that many flips and rotations
    (:class:`~pnp_stable.denoisers.SelfEnsemble`): the same certificate and β, that many times the cost per call
    (``benchmarks/results/architectures.md``: +0.00–0.05 dB for the 8-fold ensemble of the screened networks).
    """
    refuse_autocast("ps.deblur")
    device = check_device(device)
    solver = None if solver is None else scheme_name(solver)
    y = _as_batch(y, "blurred image y", device)
    if _several_levels(noise_sigma):
        raise ValueError(f"noise_sigma must be one number for the whole batch (the data term's weight), got "
                         f"{noise_sigma!r}; deblur images of different noise levels one call each (denoiser_sigma may "
                         "differ per image)")
    noise_sigma = unit_scale_level(noise_sigma, "noise_sigma", positive=True)
    kernel = _as_kernel(kernel)
    physics = blur(kernel, boundary=boundary, img_size=tuple(y.shape[1:]), device=device)
    reference = None if reference is None else _as_batch(reference, "reference", device)
    x0 = None if x0 is None else _as_batch(x0, "x0", device)
    frame, given_x0 = None, x0 is not None
    if boundary == "valid":
        frame = valid_frame(kernel.shape, y.shape)
        x_shape = (y.shape[0], y.shape[1], y.shape[2] + kernel.shape[0] - 1, y.shape[3] + kernel.shape[1] - 1)
        if x0 is None or x0.shape == y.shape:
            x0 = _extend(y if x0 is None else x0, frame, x_shape)
    if isinstance(denoiser, str) and denoiser == "guided":
        if tile not in ("auto", None, 0) or context is not None:
            raise ValueError("tiling (tile=, context=; on the command line --tile, --workers) applies to a network "
                             "denoiser; the guided route filters the whole image")
        if ensemble != 1:
            raise ValueError("ensemble= averages a network denoiser over flips and rotations; the guided route's "
                             "filter W(g) is built from its guide: pass guide=SelfEnsemble(...) to ensemble the guide")
        if step is not None or denoiser_weight is not None or relaxation != 1.0 or given_x0:
            raise ValueError("denoiser='guided' sets its own start (the guide), step and weight; "
                             "drop step=, denoiser_weight=, relaxation= and x0=")
        result = guided_solve(
            physics, y, resolve_guide(guide, y.shape[1], device), noise_sigma, solver=solver,
            denoiser_sigma=denoiser_sigma, rounds=guided_rounds, max_iter=max_iter, tol=tol, reference=reference,
            progress=progress, x0=x0, reference_frame=frame, accelerate=accelerate,
        )
    else:
        start = check_start(y if x0 is None else x0, y.shape if frame is None else x_shape)  # before the tiles' anchor
        defaults = tuned(solver or "fb")
        levels = check_denoiser_sigma(defaults.denoiser_sigma(noise_sigma) if denoiser_sigma is None
                                      else denoiser_sigma, y.shape[0])
        chosen, label = choose_denoiser(denoiser, y.shape[1], levels, "deblur")
        model = tiled(resolve_denoiser(chosen, y.shape[1], device, ensemble), start.shape, tile, overlap, context,
                      anchor=lambda: tile_anchor(physics, start, y, noise_sigma))
        if accelerate is None:  # the theorem of solvers/anderson.py needs an averaged T: 'auto' checks for a β
            accelerate = "auto" if defaults.accelerate else False
        result = solve(
            physics, y, model, noise_sigma, solver=solver or "fb",
            denoiser_sigma=levels, step=step, denoiser_weight=denoiser_weight, relaxation=relaxation,
            max_iter=max_iter, tol=tol, x0=x0, reference=reference, allow_unsafe_step=allow_unsafe_step,
            progress=progress, reference_frame=frame, accelerate=accelerate,
        )
        tiling = (f", tiled ({model.layout} at a Wiener estimate; certificate kept)" if isinstance(model, TiledDenoiser)
                  else "")
        result.notes.insert(0, f"denoiser {label} at σ_d = {_on_255_scale(levels)}{tiling}")
    return result if frame is None else _framed(result, frame)


def _several_levels(value) -> bool:
    """Whether ``value`` is a sequence or tensor of more than one number (anything else is for the level checks)."""
    try:
        return not isinstance(value, (int, float, str)) and float64_levels(value, "").numel() > 1
    except ValueError:
        return False


def _on_255_scale(levels: Tensor) -> str:
    """Noise levels as a reader gives them: '3.606/255', or the span '3.606–7.211/255' of several."""
    low, high = float(levels.min()) * 255, float(levels.max()) * 255
    return f"{low:.4g}/255" if f"{low:.4g}" == f"{high:.4g}" else f"{low:.4g}–{high:.4g}/255"


def tile_anchor(physics, start: Tensor, y: Tensor, noise_sigma: float) -> Tensor:
    """The fixed anchor of deblur's tiles (:mod:`pnp_stable.denoisers.tiling`), an image near the denoiser's input
    at the solution: the Tikhonov (Wiener) estimate argmin_x ½‖Ax − y‖² + (λ/2)‖x − start‖² with
    λ = :data:`TILE_ANCHOR_SNR`·max(σ, 1/255)², σ² over the band power of natural images (≈ 1/30). Any fixed image
    keeps the certificate, so the accuracy of deepinv's prox (conjugate gradients for a boundary without an FFT)
    only affects how close tiled PnP stays to the whole-image run (benchmarks/results/tiling.md)."""
    weight = TILE_ANCHOR_SNR * max(check_noise_level(noise_sigma, positive=True), 1 / 255) ** 2
    with torch.no_grad():
        return physics.prox_l2(start, y, 1 / weight)


def _framed(result: PnPResult, frame: tuple[slice, slice]) -> PnPResult:
    """The result with every estimate (also of earlier guided rounds) cut to y's frame; ``governing`` stays whole."""
    return replace(
        result, estimate=result.estimate[..., frame[0], frame[1]],
        earlier_rounds=[replace(r, estimate=r.estimate[..., frame[0], frame[1]]) for r in result.earlier_rounds],
        notes=result.notes + [f"boundary 'valid': the estimate is y's frame of the {tuple(result.estimate.shape[2:])} solution"])


@dataclass
class DenoiseResult:
    """``estimate`` D(x, σ) and the certificate of the map x ↦ D(x, σ) that produced it (at those noise levels: for a
    noise-adaptive network tighter than the one for every σ)."""

    estimate: Tensor
    certificate: Certificate
    denoiser: str


def _noise_levels(sigma, batch: int) -> float | Tensor:
    """One noise level for the batch (a float), or one per image (a float32 tensor ``[B]``), each checked."""
    if isinstance(sigma, (str, bytes)) or sigma is None:
        raise ValueError(f"sigma must be a number on the [0, 1] scale (e.g. 25/255) or one per image, got {sigma!r}")
    values = (None if isinstance(sigma, (int, float))
              else float64_levels(sigma, "sigma must be a number on the [0, 1] scale or one per image").flatten())
    if values is None or values.numel() == 1:
        return unit_scale_level(sigma if values is None else values.item(), "sigma")
    if values.numel() != batch:
        raise ValueError(f"sigma has {values.numel()} values but the batch has {batch} image(s); "
                         "pass one noise level, or one per image")
    for value in values.tolist():
        unit_scale_level(value, "sigma")
    return values.to(torch.float32)


def denoise(x, sigma, denoiser="auto", device: str | torch.device = "cpu", tile: int | str | None = "auto",
            overlap: int | None = None, context=None, ensemble: int = 1) -> DenoiseResult:
    """Remove Gaussian noise of standard deviation ``sigma`` ([0, 1] scale; one value, or one per image of a
    batch) with a (certified) denoiser; ``tile``, ``overlap``, ``context`` and ``ensemble`` as in :func:`deblur`
    (the same certificate). ``denoiser='auto'``: the shipped network best at σ, gray or colour
    (:data:`DENOISING_DEFAULTS`).
    Warns when σ lies outside the noise levels the model was trained on (its ``noise_range``)."""
    refuse_autocast("ps.denoise")
    device = check_device(device)
    x = _as_batch(x, "noisy image", device)
    sigma = _noise_levels(sigma, x.shape[0])
    if isinstance(sigma, Tensor):
        sigma = sigma.to(device)
    chosen, label = choose_denoiser(denoiser, x.shape[1], sigma, "denoise")
    model = resolve_denoiser(chosen, x.shape[1], device, ensemble)
    _warn_outside_training(model, sigma, label, x.shape[1], chosen_by_default=denoiser is None or denoiser == "auto")
    model = tiled(model, x.shape, tile, overlap, context)
    with torch.no_grad(), evaluation_mode(model):
        estimate = Scheme.checked_output(model(x, sigma), x)
    if not torch.isfinite(estimate).all():
        raise ValueError(f"the denoiser {label} returned NaN or Inf for a finite input at sigma = "
                         f"{sigma if isinstance(sigma, float) else sigma.tolist()}; "
                         "check its weights (pnp-stable certify NAME --verify) or the noise level")
    return DenoiseResult(estimate=estimate, certificate=certificate_of(model, sigma), denoiser=label)
