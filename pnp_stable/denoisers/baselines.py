"""Baselines, each with an honest certificate: an unconstrained DnCNN, a spectrally normalised
plain ResNet, TV denoising and (optional extra) BM3D."""

from __future__ import annotations

import deepinv as dinv
import numpy as np
import torch
from torch import Tensor, nn

from .._validation import check_count, check_image, check_whole, per_image_levels
from ..theory import Certificate
from .layers import CertifiedConv, get_activation

__all__ = ["DnCNNBaseline", "SpectralResNet", "TVDenoiser", "BM3DDenoiser", "parameter_count"]


def parameter_count(model: nn.Module) -> int:
    """Number of learnable parameters (frozen ones included)."""
    return sum(p.numel() for p in model.parameters())


class DnCNNBaseline(dinv.models.Denoiser):
    """deepinv's DnCNN (random init unless trained): unconstrained, so no certificate."""

    def __init__(self, channels: int = 1, depth: int = 12, width: int = 32):
        for name, value in (("channels", channels), ("width", width), ("depth", depth)):
            check_whole(value, name)
        if depth < 2:
            raise ValueError(f"a DnCNN needs depth ≥ 2 (its first and last convolutions), got {depth}")
        super().__init__()
        self.config = dict(channels=channels, depth=depth, width=width)
        self.channels = channels
        self.net = dinv.models.DnCNN(in_channels=channels, out_channels=channels, depth=depth, nf=width, pretrained=None)

    def forward(self, x: Tensor, sigma=None, **kwargs) -> Tensor:
        check_image(x, "denoiser input", channels=self.channels)
        dtype = next(self.net.parameters()).dtype
        return self.net(x.to(dtype), sigma).to(x.dtype)

    @property
    def certificate(self) -> Certificate:
        return Certificate.none("unconstrained DnCNN: no Lipschitz or averagedness guarantee")


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, activation: str):
        super().__init__()
        self.inner = CertifiedConv(width, width, normalise=True)
        self.outer = CertifiedConv(width, width, normalise=True)
        self.activation = get_activation(activation).instantiate(width)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.inner.power_step()
            self.outer.power_step()
        return x + self.outer.A(self.activation(self.inner.A(x)))


class SpectralResNet(dinv.models.Denoiser):
    """Plain ResNet x + Bσ(Ax) with A, B normalised by their power estimates (‖A‖, ‖B‖ ≈ 1).

    Each block is (1 + L_σ‖A‖‖B‖)-Lipschitz, so the certified bound is Π_k (1 + L_σ‖A_k‖‖B_k‖)
    ≈ 2^depth (from guaranteed norm bounds): the growth that the averaged blocks avoid.
    """

    def __init__(self, channels: int = 1, width: int = 16, depth: int = 4, activation: str = "leaky_relu"):
        super().__init__()
        if width < channels:
            raise ValueError(f"width {width} must be ≥ channels {channels}")
        self.channels, self.width = channels, width
        self.config = dict(channels=channels, width=width, depth=depth, activation=activation)
        self.blocks = nn.ModuleList(_ResidualBlock(width, activation) for _ in range(depth))

    def forward(self, x: Tensor, sigma=None, **kwargs) -> Tensor:
        check_image(x, "denoiser input", channels=self.channels)
        z = torch.cat([x, x.new_zeros(x.shape[0], self.width - self.channels, *x.shape[-2:])], dim=1)
        for block in self.blocks:
            z = block(z)
        return z[:, : self.channels]

    @property
    def certificate(self) -> Certificate:
        bound = 1.0
        for block in self.blocks:
            bound *= 1 + block.activation.lipschitz * block.inner.norm_upper_bound() * block.outer.norm_upper_bound()
        return Certificate(lipschitz=bound, alpha=None, method="product of (1 + L‖A‖‖B‖) over residual blocks")


class TVDenoiser(dinv.models.Denoiser):
    """prox_{λ·TV} computed by deepinv's iterative TV solver, with λ = ``strength``·σ.

    The exact prox of a convex function is firmly non-expansive (α = 1/2); the iterative
    solver stops after ``n_it_max`` steps, so the certificate is approximate (guaranteed=False).
    """

    def __init__(self, strength: float = 1.0, n_it_max: int = 200, crit: float = 1e-5):
        super().__init__()
        self.strength = float(strength)
        self.n_it_max = n_it_max
        self.tv = dinv.models.TVDenoiser(n_it_max=n_it_max, crit=crit)

    def forward(self, x: Tensor, sigma=0.1, **kwargs) -> Tensor:
        return self.tv(x, ths=self.strength * float(sigma))

    @property
    def certificate(self) -> Certificate:
        return Certificate(
            lipschitz=1.0, alpha=0.5, guaranteed=False,
            method=f"prox of convex TV (firmly non-expansive when exact); iterative solver, ≤ {self.n_it_max} steps",
        )


class BM3DDenoiser(dinv.models.Denoiser):
    """BM3D (Dabov et al. 2007) through the ``bm3d`` package (``pip install pnp-stable[bm3d]``); no certificate.

    ``profile``: ``'np'`` (the package's normal profile) or ``'lc'`` (its low-complexity profile: smaller
    search windows and groups: a 256² colour guided restoration 2.5× faster and 0.20 dB lower, ``guided_speed.md``).
    ``threads``: ``None`` lets the package use every core; its multithreaded aggregation is not deterministic,
    so two calls on the same input can differ, which a convergence monitor sees as a residual jump
    (``bm3d_threads.md``, four 96² colour photos × 15 calls on 2 cores: bit-identical on an idle machine; beside a
    process busy on one core every call differed from the first, by up to 1.1e-4). ``threads=1`` is bit-reproducible,
    1.28–1.31× slower than every core on an idle machine and 0.80–0.84× its time with a core busy.
    """

    PROFILES = ("np", "lc")

    def __init__(self, profile: str = "np", threads: int | None = None):
        super().__init__()
        try:
            import bm3d  # noqa: F401
        except ImportError as err:
            raise ImportError("BM3D needs the optional extra: pip install 'pnp-stable[bm3d]'") from err
        if profile not in self.PROFILES:
            raise ValueError(f"unknown BM3D profile '{profile}'; choose one of {self.PROFILES}")
        self.profile = profile
        self.threads = None if threads is None else check_count(threads, "BM3D threads (None: every core)")

    def _profile(self):
        from bm3d.profiles import BM3DProfile, BM3DProfileLC

        profile = BM3DProfileLC() if self.profile == "lc" else BM3DProfile()
        profile.num_threads = 0 if self.threads is None else self.threads
        return profile

    def forward(self, x: Tensor, sigma=0.1, **kwargs) -> Tensor:
        import bm3d

        check_image(x, "denoiser input")
        if min(x.shape[-2:]) < 9:  # the bm3d package refuses images under its 8×8 blocks and crashes the process on 8×8
            raise ValueError(f"BM3D needs images of at least 9×9 pixels, got {x.shape[-2]}×{x.shape[-1]}")
        sigmas = per_image_levels(sigma, x, torch.float64)  # the package takes Python floats: no float32 detour
        out = []
        for image, s in zip(x.detach().cpu().numpy(), sigmas.tolist()):
            if image.shape[0] == 3:
                result = bm3d.bm3d_rgb(image.transpose(1, 2, 0), s, profile=self._profile()).transpose(2, 0, 1)
            else:
                result = np.stack([bm3d.bm3d(channel, s, profile=self._profile()) for channel in image])
            out.append(torch.from_numpy(np.ascontiguousarray(result, dtype=np.float32)))
        return torch.stack(out).to(x)  # the input's device and precision (the package computes in float32)

    @property
    def certificate(self) -> Certificate:
        return Certificate.none("BM3D: no Lipschitz or averagedness guarantee")
