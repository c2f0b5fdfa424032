"""The baseline a user without this architecture would build: a ResNet with per-layer spectral normalisation.

Each residual block is x ↦ x + C₂ρ(C₁x + b₁) + b₂ with both convolutions divided by a power-iteration estimate
of their operator norm (:class:`~pnp_stable.denoisers.layers.CertifiedConv` with ``normalise=True``, the
convolution's own norm rather than the reshaped matrix's). Its guaranteed Lipschitz bound is the product of
layer bounds, 1 + ‖C₂‖‖C₁‖ ≈ 2 per block, so depth costs certified radius: the comparison
``benchmarks/robust_classification.py`` makes. Stem, down-sampling and head are the classifier's own
(:class:`~pnp_stable.classification.network.LipschitzClassifier`), so only the blocks differ; its dense blocks are
the same residual blocks on the flattened features (1×1 convolutions on a 1×1 grid).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..denoisers.layers import CertifiedConv
from .network import ROUNDING_MARGIN, LipschitzClassifier

__all__ = ["SpectralResNetClassifier"]


class SpectralResidualBlock(nn.Module):
    """x ↦ x + C₂ρ(C₁x + b₁) + b₂, both convolutions spectrally normalised; Lip ≤ 1 + ‖C₂‖‖C₁‖. ``hidden``: the
    channels between C₁ and C₂ (default ``channels``)."""

    def __init__(self, channels: int, kernel_size: int = 3, power_size: int = 32, hidden: int | None = None):
        super().__init__()
        hidden = channels if hidden is None else int(hidden)
        self.first = CertifiedConv(channels, hidden, kernel_size, power_size=power_size)
        self.second = CertifiedConv(hidden, channels, kernel_size, power_size=power_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.first.power_step()
            self.second.power_step()
        return x + self.second.A(F.relu(self.first.A(x)))

    def lipschitz_bound(self) -> float:
        margin = ROUNDING_MARGIN**2  # the fp32 weights W/s may exceed the float64 bounds by ~1e-7 (relative)
        return 1 + self.first.norm_upper_bound() * self.second.norm_upper_bound() * margin


class SpectralResNetClassifier(LipschitzClassifier):
    """:class:`LipschitzClassifier`'s stem, down-sampling and head around spectrally normalised residual blocks.

    A residual block holds two convolutions where a non-expansive block holds one, so ``depths`` counts
    residual blocks: depths (2, 2) has the parameters of the certified classifier with depths (4, 4). Likewise a
    dense residual block holds two d × ``dense_width`` matrices where a dense non-expansive block holds one:
    ``dense_width`` 64 here has the parameters of 128 there.
    """

    def __init__(self, in_channels: int = 1, classes: int = 10, image_size: int = 28, widths=(32, 64), depths=(2, 2),
                 kernel_size: int = 3, power_size: int | None = None, dense_blocks: int = 0, dense_width: int = 64):
        super().__init__(in_channels, classes, image_size, widths, depths, kernel_size, power_size=power_size,
                         dense_blocks=dense_blocks, dense_width=dense_width)
        for option in ("activation", "time"):  # the residual blocks take neither: ReLU, one residual step
            del self.config[option]

    def stage_block(self, width: int, grid: int) -> nn.Module:
        return SpectralResidualBlock(width, self.config["kernel_size"], grid)

    def dense_block(self, features: int) -> nn.Module:
        return SpectralResidualBlock(features, 1, 1, hidden=self.config["dense_width"])

    def bounded_convs(self) -> list[CertifiedConv]:
        """Every convolution of the certificate: the stage blocks', the down-samplings', the dense blocks'."""
        stage_convs = [conv for stage in self.stages for block in stage for conv in (block.first, block.second)]
        return stage_convs + list(self.downs) + [conv for block in self.dense for conv in (block.first, block.second)]

    def calibrate(self) -> None:
        """Nothing to calibrate: spectral normalisation trains against its power estimates."""

    def feature_lipschitz_estimate(self) -> float:
        """Π (1 + ‖C₂‖‖C₁‖) from the power estimates (1 each when normalised: 2 per block), times the down-samplings'."""
        bound = super().feature_lipschitz_estimate()
        for block in self.blocks():
            bound *= 1 + block.first.norm_estimate() * block.second.norm_estimate()
        return bound

    def feature_lipschitz(self) -> float:
        """Π (1 + ‖C₂‖‖C₁‖) over the blocks (dense ones included) times Π ‖D_k‖ over the down-samplings (guaranteed
        bounds)."""
        bound = super().feature_lipschitz()
        for block in self.blocks():
            bound *= block.lipschitz_bound()
        return bound
