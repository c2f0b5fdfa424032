"""Forward models as deepinv ``LinearPhysics``: blur, downsampling, inpainting, denoising, custom.

Every factory returns a stock deepinv object (nothing is re-implemented), so the result
works in deepinv's optimisers and in ours alike.
"""

from __future__ import annotations

from typing import Callable, Sequence

import deepinv as dinv
import torch
from torch import Tensor

from .._modules import same_device
from .._validation import check_count, check_noise_level
from .kernels import kernel_from_spec, validate_kernel
from .norms import COMPLEX_BUFFERS

__all__ = ["BOUNDARIES", "blur", "downsampling", "inpainting", "denoising", "custom_operator", "to_dtype"]

#: boundary conditions of :func:`blur`; ``circular`` is diagonalised by the FFT (exact prox and norm)
BOUNDARIES = ("circular", "reflect", "replicate", "zeros", "valid")
#: deepinv's padding names for the same boundaries (``dinv.physics.Blur(padding=...)``)
BOUNDARY_ALIASES = {"constant": "zeros"}

#: kernels with at least this many rows or columns are applied by FFT for non-circular boundaries. The crossover
#: on 2 CPU cores is not sharp: deepinv's FFT convolution runs on the padded grid (512 + k − 1 for a k×k kernel on a
#: 512² image) without rounding it to a fast FFT length, so its cost follows that length's prime factors (FFT wins
#: at 9×9, 520 = 2³·5·13, and loses at 13×13, 524 = 2²·131). ``benchmarks/results/operators.md``: direct 1.9×
#: faster at 13×13, a tie at 15×15, FFT 1.3–2.2× faster from 19×19 on; the threshold sits in the tie.
FFT_MIN_KERNEL_SIZE = 17


def _check_generator_device(rng: torch.Generator | None, device: str | torch.device) -> None:
    """Refuse a generator on another device than the operator's: deepinv draws noise and masks on the operator's
    device with the generator given."""
    if rng is not None and not same_device(rng.device, device):
        raise ValueError(f"rng is a generator on {rng.device} but the operator computes on {device}: pass one made on "
                         f"that device, e.g. torch.Generator(device={str(device)!r}).manual_seed(0)")


def _noise_model(noise_sigma: float, rng: torch.Generator | None, device: str | torch.device):
    """Gaussian noise of level ``noise_sigma`` drawn by ``rng``, which must live on the physics' ``device`` (deepinv
    draws the noise there); unused without noise."""
    noise_sigma = check_noise_level(noise_sigma)
    if noise_sigma == 0:
        return dinv.physics.ZeroNoise()
    _check_generator_device(rng, device)
    return dinv.physics.GaussianNoise(sigma=noise_sigma, rng=rng)


def _refuse_non_finite(physics: dinv.physics.Physics, args: tuple) -> None:
    """Forward pre-hook: ``physics(x)`` refuses an x with NaN/Inf, which a blur (FFT or convolution) would
    spread over every output pixel instead of failing."""
    x = args[0] if args else None
    if isinstance(x, Tensor) and not torch.isfinite(x).all():
        count = int((~torch.isfinite(x)).sum())
        raise ValueError(f"the image given to {type(physics).__name__} has {count} NaN/Inf value(s), which the "
                         "operator would spread over its output; replace them first (e.g. torch.nan_to_num, or "
                         "inpaint them with pnp_stable.inpainting)")


def _guarded(physics: dinv.physics.Physics) -> dinv.physics.Physics:
    """The stock deepinv object, with :func:`_refuse_non_finite` attached to its ``__call__``."""
    physics.register_forward_pre_hook(_refuse_non_finite)
    return physics


def _check_img_size(img_size: Sequence[int] | None) -> tuple[int, int, int] | None:
    if img_size is None:
        return None
    img_size = tuple(int(s) for s in img_size)
    if len(img_size) != 3 or min(img_size) < 1:
        raise ValueError(f"img_size must be (C, H, W) with positive entries, got {img_size}")
    return img_size


def blur(
    kernel,
    boundary: str = "circular",
    noise_sigma: float = 0.0,
    img_size: Sequence[int] | None = None,
    use_fft: bool | None = None,
    rng: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> dinv.physics.LinearPhysics:
    """Convolution ``y = k * x + n`` with ``n ~ N(0, noise_sigma²)``, as a deepinv ``LinearPhysics``.

    ``kernel``: a 2-D array/tensor or a spec such as ``'gaussian:1.6'`` (:func:`kernel_from_spec`).
    Calling it on an image with NaN/Inf raises ``ValueError`` (a blur would spread them everywhere).

    ``boundary='circular'`` gives ``deepinv.physics.BlurFFT`` (needs ``img_size=(C, H, W)``;
    the operator is diagonal in Fourier, so its prox and norm are exact). The other
    boundaries give ``deepinv.physics.Blur``; ``'valid'`` returns a smaller image.
    Colour images are blurred channel by channel with the same kernel.
    ``use_fft`` (non-circular only) defaults to FFT for kernels of side ≥ ``FFT_MIN_KERNEL_SIZE``.
    """
    boundary = BOUNDARY_ALIASES.get(boundary, boundary)
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary '{boundary}'; choose one of {BOUNDARIES} (or deepinv's 'constant' for 'zeros')")
    k = kernel_from_spec(kernel) if isinstance(kernel, str) else validate_kernel(kernel, warn_scaled=True)
    img_size = _check_img_size(img_size)
    if img_size is not None and (k.shape[0] > img_size[1] or k.shape[1] > img_size[2]):
        raise ValueError(
            f"kernel of size {tuple(k.shape)} is larger than the image {img_size[1:]}; "
            "use a smaller kernel or a larger image"
        )
    filt = k[None, None].to(device)
    noise = _noise_model(noise_sigma, rng, device)
    if boundary == "circular":
        if img_size is None:
            raise ValueError(
                "boundary='circular' uses an FFT diagonalisation that needs img_size=(C, H, W); "
                "pass img_size=x.shape[1:]"
            )
        return _guarded(dinv.physics.BlurFFT(img_size=img_size, filter=filt, noise_model=noise, device=device))
    if use_fft is None:
        use_fft = max(k.shape) >= FFT_MIN_KERNEL_SIZE
    padding = "constant" if boundary == "zeros" else boundary
    rows, columns = (int(k.shape[0] == 1), int(k.shape[1] == 1))
    if img_size is not None and boundary == "reflect":  # reflecting a 1-pixel side by one row (column) is impossible
        rows, columns = rows * (img_size[1] > 1), columns * (img_size[2] > 1)  # and reflect needs no zero row there
    if boundary != "valid" and (rows or columns):
        # the same operator with a zero row (column) on each side: deepinv's reflect padding fails on a 1-pixel
        # side of the kernel and its replicate adjoint is wrong there (adjoint test 0.66-1.25), not on 3 pixels
        k = torch.nn.functional.pad(k, (columns, columns, rows, rows))
        filt = k[None, None].to(device)
    return _guarded(dinv.physics.Blur(filter=filt, padding=padding, use_fft=use_fft, noise_model=noise, device=device))


def downsampling(
    img_size: Sequence[int],
    factor: int = 2,
    filter: str | Tensor | None = "bicubic",
    boundary: str = "circular",
    noise_sigma: float = 0.0,
    rng: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> dinv.physics.LinearPhysics:
    """Anti-aliased decimation by an integer ``factor`` (deepinv ``Downsampling``)."""
    img_size = _check_img_size(img_size)
    factor = check_count(factor, "factor")
    if img_size[1] % factor or img_size[2] % factor:
        raise ValueError(f"factor must be a positive integer dividing H and W of {img_size}, got {factor}")
    if isinstance(filter, Tensor) or not isinstance(filter, (str, type(None))):
        filter = validate_kernel(filter, name="downsampling filter", warn_scaled=True)[None, None]
    return _guarded(dinv.physics.Downsampling(
        img_size=img_size,
        filter=filter,
        factor=factor,
        padding="constant" if boundary == "zeros" else boundary,
        noise_model=_noise_model(noise_sigma, rng, device),
        device=device,
    ))


def inpainting(
    img_size: Sequence[int],
    mask: Tensor | float,
    noise_sigma: float = 0.0,
    rng: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> dinv.physics.LinearPhysics:
    """Masking ``y = m ⊙ x + n`` (deepinv ``Inpainting``).

    ``mask`` is a 0/1 tensor broadcastable to ``img_size``, or a float in (0, 1): the
    fraction of pixels kept at random (seeded by ``rng``).
    """
    img_size = _check_img_size(img_size)
    if isinstance(mask, Tensor):
        if not torch.isfinite(mask).all() or ((mask != 0) & (mask != 1)).any():
            raise ValueError("inpainting mask must contain only 0 and 1")
        frame = (1, *img_size)
        try:
            fits = torch.broadcast_shapes(mask.shape, frame) == frame
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"inpainting mask of shape {tuple(mask.shape)} does not broadcast to one image {img_size} "
                             "(one mask for every sample; for a mask per sample, solve each sample separately)")
        mask = mask.to(torch.float32)
    elif not 0 < float(mask) <= 1:
        raise ValueError(f"inpainting mask fraction must lie in (0, 1], got {mask}")
    _check_generator_device(rng, device)  # the mask is drawn with it even without noise
    return _guarded(dinv.physics.Inpainting(
        img_size=img_size, mask=mask, noise_model=_noise_model(noise_sigma, rng, device), rng=rng, device=device
    ))


def denoising(
    noise_sigma: float, rng: torch.Generator | None = None, device: str | torch.device = "cpu"
) -> dinv.physics.LinearPhysics:
    """Identity operator with Gaussian noise (deepinv ``Denoising``): pure denoising as an inverse problem."""
    return _guarded(dinv.physics.Denoising(noise_model=_noise_model(noise_sigma, rng, device), device=device))


def to_dtype(op: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``op`` (in place, and returned) with its real floating-point tensors in ``dtype`` and its complex ones in the
    complex dtype of that precision (complex128 for float64); the Fourier buffers of the deepinv classes in
    :data:`~.norms.COMPLEX_BUFFERS` are then recomputed from the cast filter, so that they hold ``dtype``'s accuracy
    (cast from float32 they would keep float32's: a float64 BlurFFT prox off by 5e-9 relative, measured).
    ``op.to(torch.float64)`` would cast complex buffers to real numbers, changing the operator (refused by the
    solvers); ``op.double()`` would leave them in complex64."""
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a real floating-point dtype such as torch.float64, got {dtype}")
    complex_dtype = torch.promote_types(dtype, torch.complex64)  # float64 → complex128
    op._apply(  # the traversal Module.to uses, with the complex rule it lacks
        lambda t: t.to(complex_dtype) if t.is_complex() else t.to(dtype) if t.is_floating_point() else t)
    for module in op.modules():
        if isinstance(module, tuple(COMPLEX_BUFFERS)):
            module.update_parameters(filter=module.filter)
    return op


def _autograd_adjoint(A: Callable[[Tensor], Tensor], img_size: tuple[int, int, int]):
    """``Aᵀy = ∇ₓ⟨A x, y⟩``, exact for linear ``A`` and valid for any batch size."""

    def A_adjoint(y: Tensor, **kwargs) -> Tensor:
        x0 = torch.zeros((y.shape[0], *img_size), dtype=y.dtype, device=y.device)
        _, vjp = torch.func.vjp(lambda x: A(x), x0)
        return vjp(y)[0]

    return A_adjoint


def _check_linear_map(A: Callable[[Tensor], Tensor], img_size: Sequence[int], device) -> None:
    """Refuse an ``A`` that is not linear: A(ax + by) against aA(x) + bA(y) on two random images (float32 rounding
    allowed: a relative defect above 1e-4 is no rounding). Every guarantee here rests on A being linear."""
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(1, *img_size, generator=g).to(device) for _ in range(2))
    try:
        with torch.no_grad():
            combined, separate = A(2.0 * x - 3.0 * y), 2.0 * A(x) - 3.0 * A(y)
    except (RuntimeError, TypeError, ValueError):  # an A that takes float64 only
        x, y = x.double(), y.double()
        with torch.no_grad():
            combined, separate = A(2.0 * x - 3.0 * y), 2.0 * A(x) - 3.0 * A(y)
    scale = float(separate.norm()) + float(combined.norm())
    defect = float((combined - separate).norm()) / max(scale, 1e-30)
    if not defect <= 1e-4:
        raise ValueError(f"A is not linear: A(2x − 3y) differs from 2A(x) − 3A(y) by {defect:.3g} (relative) on random "
                         "images; custom_operator wraps linear maps only (PnP's data term ½‖Ax − y‖² needs a linear A)")


def custom_operator(
    A: Callable[[Tensor], Tensor],
    A_adjoint: Callable[[Tensor], Tensor] | None = None,
    img_size: Sequence[int] | None = None,
    noise_sigma: float = 0.0,
    rng: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> dinv.physics.LinearPhysics:
    """Wrap plain functions ``A`` (and optionally ``A_adjoint``) as a deepinv ``LinearPhysics``.

    Without ``A_adjoint`` the adjoint comes from autograd (``Aᵀy = ∇ₓ⟨Ax, y⟩``) and
    ``img_size=(C, H, W)`` is required. Check the result with :func:`adjoint_test`.
    """
    img_size = _check_img_size(img_size)
    if img_size is not None:
        _check_linear_map(A, img_size, device)
    if A_adjoint is None:
        if img_size is None:
            raise ValueError("custom_operator without A_adjoint needs img_size=(C, H, W) for the autograd adjoint")
        A_adjoint = _autograd_adjoint(A, img_size)
    return _guarded(dinv.physics.LinearPhysics(
        A=lambda x, **kwargs: A(x),
        A_adjoint=lambda y, **kwargs: A_adjoint(y),
        img_size=img_size,
        noise_model=_noise_model(noise_sigma, rng, device),
        device=device,
    ))
