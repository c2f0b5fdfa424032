"""pnp-stable: Plug-and-Play restoration with provably averaged denoisers.

Three rooms: :mod:`pnp_stable.operators` (forward models), ``denoisers`` and ``solvers``.
"""

__version__ = "0.1.0"

from . import denoisers, operators, solvers, theory
from .solvers import ConvergenceMonitor, PnPResult, solve
from .denoisers import AveragedDenoiser, NoiseLevelSwitch, SelfEnsemble, list_denoisers, load_denoiser, load_denoiser_file, save_denoiser
from .io import load_image, save_image, to_numpy, to_tensor
from .metrics import psnr, ssim
from .restore import deblur, denoise
from .theory import Certificate
from .operators import (
    L2Fidelity,
    adjoint_test,
    blur,
    custom_operator,
    denoising,
    downsampling,
    gaussian_kernel,
    inpainting,
    kernel_from_spec,
    load_kernel,
    load_kernels,
    motion_kernel,
    operator_norm,
    uniform_kernel,
)

__all__ = [
    "ConvergenceMonitor",
    "PnPResult",
    "solve",
    "solvers",
    "AveragedDenoiser",
    "Certificate",
    "NoiseLevelSwitch",
    "SelfEnsemble",
    "denoisers",
    "list_denoisers",
    "load_denoiser",
    "load_denoiser_file",
    "save_denoiser",
    "theory",
    "L2Fidelity",
    "adjoint_test",
    "blur",
    "custom_operator",
    "deblur",
    "denoise",
    "denoising",
    "downsampling",
    "gaussian_kernel",
    "inpainting",
    "kernel_from_spec",
    "load_image",
    "load_kernel",
    "load_kernels",
    "motion_kernel",
    "operator_norm",
    "operators",
    "psnr",
    "save_image",
    "ssim",
    "to_numpy",
    "to_tensor",
    "uniform_kernel",
]
