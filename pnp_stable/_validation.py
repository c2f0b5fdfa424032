"""Input checks shared by every public entry point: one clear ``ValueError`` per problem."""

from __future__ import annotations

import torch
from torch import Tensor


def check_image(x: Tensor, name: str = "image", channels: int | None = None) -> Tensor:
    """Require a finite float tensor ``[B, C, H, W]`` (with ``C == channels`` when given)."""
    if not isinstance(x, Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape [B, C, H, W], got {type(x).__name__}; "
            "convert numpy arrays with pnp_stable.io.to_tensor"
        )
    if x.ndim != 4:
        raise ValueError(
            f"{name} must have rank 4 [B, C, H, W], got shape {tuple(x.shape)}; "
            "add batch/channel axes, e.g. x[None, None] for a single gray image"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one image of at least one pixel")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channel(s) but {channels} were expected; "
            "use an operator/denoiser built for this number of channels"
        )
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values; clean the input first")
    return x


def check_start(x0: Tensor, expected) -> Tensor:
    """Require the start ``x0`` to have the problem's image shape (for a 'valid' blur, larger than y)."""
    if tuple(x0.shape) != tuple(expected):
        raise ValueError(f"x0 has shape {tuple(x0.shape)} but the problem's images have shape {tuple(expected)}")
    return x0


#: device types the solvers can compute on (a 'meta' tensor holds no values)
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device(device) -> torch.device:
    """A ``torch.device`` (or its name: ``cpu``, ``cuda:1``, ``mps``, …) of a type in :data:`DEVICE_TYPES` that
    this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unsupported device {device!r}; use e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if parsed.type not in DEVICE_TYPES:
        raise ValueError(f"unsupported device {device!r}: computing needs one of {', '.join(DEVICE_TYPES)}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine; use device 'cpu'")
        if (parsed.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"there is no {parsed}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("MPS is not available on this machine; use device 'cpu'")
    elif parsed.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ValueError("XPU is not available on this machine; use device 'cpu'")
    return parsed


def refuse_autocast(what: str) -> None:
    """Refuses to run ``what`` inside an active ``torch.autocast`` region: certificates, the monitor's inequalities
    and the stopping test hold for the maps computed in float32/float64, not for their bfloat16/float16 versions (a
    bf16 deblur measured: a certified β 'contradicted by 159 monitor violations'; a bf16 denoise 2e-3 off)."""
    for device in DEVICE_TYPES:
        try:
            active = torch.is_autocast_enabled(device)
        except RuntimeError:  # a device type this torch build does not know
            continue
        if active:
            raise RuntimeError(
                f"{what} was called inside torch.autocast({device!r}, dtype={torch.get_autocast_dtype(device)}): "
                "its certificates and checks hold for float32/float64 arithmetic, not for reduced-precision "
                f"convolutions; call it outside the autocast region, or inside torch.autocast({device!r}, enabled=False)")


def check_noise_level(sigma: float, name: str = "noise_sigma", positive: bool = False) -> float:
    """Require a finite noise level ``sigma >= 0`` (``> 0`` when ``positive``) that is 0 or at least 1e-12.

    The minimum keeps float32 arithmetic sound: the data-term weight 1/σ² ≤ 1e24 leaves 14 orders of magnitude
    below float32's overflow (reached at σ < 5.4e-20, which the solver would report as NaNs), and σ² stays a
    normal float32. It lies far below any real noise (float32 rounds [0, 1] intensities in steps of 6e-8; 8-bit
    quantisation alone is 1/(255·√12) ≈ 1.1e-3) yet admits limits such as a denoiser strength of 1e-9.
    """
    minimum = 1e-12
    if isinstance(sigma, (bool, str)):
        raise ValueError(f"{name} must be a number (on the [0, 1] intensity scale, e.g. 25/255), got {sigma!r}")
    try:
        sigma = float(sigma)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be one number (on the [0, 1] intensity scale, e.g. 25/255), got {sigma!r}") from err
    if not sigma == sigma or sigma in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {sigma}")
    if sigma < 0 or (positive and sigma == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(
            f"{name} must be {bound} (on the [0, 1] intensity scale, e.g. 25/255), got {sigma}"
        )
    if 0 < sigma < minimum:
        overflows = sigma < torch.finfo(torch.float32).max ** -0.5
        reason = ("its data-term weight 1/σ² overflows float32 (the solver would report NaNs)" if overflows else
                  "that far below float32's rounding step of intensities (6e-8) it describes no real noise")
        raise ValueError(
            f"{name} {sigma:g} is below the minimum {minimum:g} (on the [0, 1] scale): {reason}; 8-bit images carry "
            "at least their quantisation noise 1/(255·√12) ≈ 1.1e-3, and for noise-free float data use 1e-4"
        )
    return sigma


def _refuse_above_unit_scale(value: float, name: str) -> None:
    """A noise level above 1 exceeds the whole intensity range: it is a level given on the 0–255 scale."""
    if value > 1:
        raise ValueError(f"{name} = {value:g} exceeds the whole [0, 1] intensity range; noise levels are on the [0, 1] "
                         f"scale: {value:g}/255 = {value / 255:.4g}")


def unit_scale_level(value, name: str, positive: bool = False) -> float:
    """A noise level of an image on the [0, 1] scale: :func:`check_noise_level`, and at most 1 (a level above the
    whole intensity range is a level given on the 0–255 scale)."""
    value = check_noise_level(value, name, positive=positive)
    _refuse_above_unit_scale(value, name)
    return value


def float64_levels(levels, refusal: str) -> Tensor:
    """``levels`` (a number, a sequence, or a tensor on any device) as a float64 CPU tensor of the same shape, moved
    to the CPU before the cast (MPS has no float64); anything torch cannot read as numbers is refused with
    "``refusal``, got …"."""
    try:
        if isinstance(levels, Tensor):
            return levels.detach().cpu().to(torch.float64)
        return torch.as_tensor(levels, dtype=torch.float64)  # a Python float keeps its 53 bits (no float32 detour)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{refusal}, got {levels!r}") from err


def check_denoiser_sigma(denoiser_sigma, batch: int) -> Tensor:
    """The denoiser's noise level σ_d of a PnP iteration as a float64 CPU tensor: one value or one per sample of a
    ``batch``, each finite, > 0 and at most 1 (as :func:`unit_scale_level`)."""
    sigmas = float64_levels(denoiser_sigma, "denoiser_sigma must be a number or one per sample")
    if not (torch.isfinite(sigmas).all() and (sigmas > 0).all()):
        raise ValueError(f"denoiser_sigma must be finite and > 0 (on the [0, 1] scale, e.g. 2·noise_sigma), got {denoiser_sigma}")
    _refuse_above_unit_scale(float(sigmas.max()), "denoiser_sigma")
    if sigmas.ndim > 1 or (sigmas.ndim == 1 and sigmas.numel() not in (1, batch)):
        raise ValueError(f"denoiser_sigma must be one value or one per sample ([{batch}]), got shape "
                         f"{tuple(sigmas.shape)}")
    return sigmas


def check_whole(value, name: str, least: int = 1) -> int:
    """Require an ``int`` ≥ ``least`` itself (a size or a lattice step: no bool, and unlike :func:`check_count` no
    integral float either)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be a whole number ≥ {least}, got {value!r}")
    return value


def check_count(value, name: str) -> int:
    """Require a whole number ≥ 1 (an iteration or round count): refused, not truncated, when fractional."""
    try:
        whole = not isinstance(value, (bool, str)) and float(value).is_integer() and value >= 1
    except (TypeError, ValueError, RuntimeError):
        whole = False
    if not whole:
        raise ValueError(f"{name} must be a whole number ≥ 1, got {value!r}")
    return int(value)


def check_nonnegative_levels(sigma: Tensor) -> Tensor:
    """Noise levels must be finite and ≥ 0: the certificates hold for σ ≥ 0 (sup θ is taken there)."""
    if not bool((torch.isfinite(sigma) & (sigma >= 0)).all()):
        raise ValueError(f"noise level sigma must be ≥ 0 and finite, got {sigma.flatten().tolist()}")
    return sigma


def per_image_levels(sigma, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A denoiser's σ as one level per image of the batch x (a [B] tensor on x's device, in ``dtype``, default x's): a
    number, or a tensor of B levels, each finite and ≥ 0."""
    sigma = torch.as_tensor(sigma, dtype=dtype or x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a float or a tensor of shape [B] = [{x.shape[0]}], got {tuple(sigma.shape)}")
    return check_nonnegative_levels(sigma)
