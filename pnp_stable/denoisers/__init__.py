"""Denoisers: certified averaged networks, their layers and checks, and baselines."""

from .averaged import AveragedDenoiser, RelaxedDenoiser
from .certificates import certificate_of
from .convex_ridge import ConvexRidgeDenoiser
from .baselines import BM3DDenoiser, DnCNNBaseline, SpectralResNet, TVDenoiser, parameter_count
from .blocks import NonexpansiveBlock
from .guided import GuidedDenoiser, LinearisedBM3D, SymmetricKernelFilter
from .ensemble import SelfEnsemble
from .switch import NoiseLevelSwitch
from .certify import (CertificateCheck, adversarial_lipschitz, averagedness_defects, check_certificate, lipschitz_vs_depth,
                      natural_starts)
from .layers import ACTIVATIONS, INTEGRATORS, CertifiedConv, get_activation, get_integrator
from .serialization import load_denoiser_file, read_metadata, save_denoiser
from .spectral import circular_conv_norm, conv_norm_upper_bound
from .tiling import TiledDenoiser, tiled
from .zoo import list_denoisers, load_denoiser

__all__ = [
    "ACTIVATIONS",
    "AveragedDenoiser",
    "BM3DDenoiser",
    "CertifiedConv",
    "ConvexRidgeDenoiser",
    "DnCNNBaseline",
    "GuidedDenoiser",
    "LinearisedBM3D",
    "INTEGRATORS",
    "NoiseLevelSwitch",
    "NonexpansiveBlock",
    "RelaxedDenoiser",
    "SelfEnsemble",
    "SpectralResNet",
    "SymmetricKernelFilter",
    "TVDenoiser",
    "TiledDenoiser",
    "tiled",
    "CertificateCheck",
    "adversarial_lipschitz",
    "averagedness_defects",
    "certificate_of",
    "check_certificate",
    "circular_conv_norm",
    "conv_norm_upper_bound",
    "get_activation",
    "get_integrator",
    "lipschitz_vs_depth",
    "list_denoisers",
    "load_denoiser",
    "load_denoiser_file",
    "natural_starts",
    "parameter_count",
    "read_metadata",
    "save_denoiser",
]
