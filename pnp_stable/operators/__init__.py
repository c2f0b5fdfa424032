"""Forward models (deepinv ``LinearPhysics``), kernels, operator checks and the data term."""

from .fidelity import L2Fidelity
from .kernels import KERNEL_SPECS, gaussian_kernel, kernel_from_spec, load_kernel, load_kernels, motion_kernel, uniform_kernel, validate_kernel
from .norms import OperatorNorm, adjoint_test, operator_norm, power_iteration
from .physics import BOUNDARIES, blur, custom_operator, denoising, downsampling, inpainting, to_dtype

__all__ = [
    "BOUNDARIES",
    "KERNEL_SPECS",
    "L2Fidelity",
    "OperatorNorm",
    "adjoint_test",
    "blur",
    "custom_operator",
    "denoising",
    "downsampling",
    "gaussian_kernel",
    "inpainting",
    "kernel_from_spec",
    "load_kernel",
    "load_kernels",
    "motion_kernel",
    "operator_norm",
    "power_iteration",
    "to_dtype",
    "uniform_kernel",
    "validate_kernel",
]
