"""Image quality metrics on ``[B, C, H, W]`` tensors in [0, 1] (peak 1), one value per sample; numpy images
(``[H, W]`` / ``[H, W, C]``) are read by :func:`~pnp_stable.io.to_tensor`'s rule (integers by bit depth)."""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor

from ._validation import check_image
from .io import to_tensor

__all__ = ["psnr", "ssim"]


def _pairs(x: Tensor, reference: Tensor):
    x = x if isinstance(x, Tensor) else to_tensor(x, "estimate")
    reference = reference if isinstance(reference, Tensor) else to_tensor(reference, "reference")
    check_image(x, "estimate")
    check_image(reference, "reference")
    if x.shape != reference.shape:
        raise ValueError(f"estimate {tuple(x.shape)} and reference {tuple(reference.shape)} differ in shape")
    xs = x.detach().cpu().double().numpy()
    rs = reference.detach().cpu().double().numpy()
    return zip(xs, rs)


def psnr(x: Tensor, reference: Tensor) -> Tensor:
    """PSNR in dB, 10·log10(1 / MSE), peak value 1; shape ``[B]``."""
    with np.errstate(divide="ignore"):  # identical images: MSE 0, PSNR inf without numpy's warning
        values = [peak_signal_noise_ratio(r, e, data_range=1.0) for e, r in _pairs(x, reference)]
    return torch.tensor(values)


def ssim(x: Tensor, reference: Tensor) -> Tensor:
    """SSIM with scikit-image's defaults (a uniform 7×7 window, sample covariances; Wang et al. 2004 use an 11×11
    Gaussian window of σ = 1.5, which gives somewhat different values), data range 1, averaged over channels; shape
    ``[B]``. Every SSIM in ``benchmarks/results`` is this one."""
    values = [
        structural_similarity(np.moveaxis(r, 0, -1), np.moveaxis(e, 0, -1), data_range=1.0, channel_axis=-1)
        for e, r in _pairs(x, reference)
    ]
    return torch.tensor(values)
