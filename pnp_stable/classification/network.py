"""A certified 1-Lipschitz image classifier built from the paper's non-expansive blocks.

x ↦ logits = W·F(x), with the feature map F a composition of
- an orthogonal pixel-unshuffle (a permutation of the pixels) and a zero-padding of the channels (an isometry);
- per stage, :class:`~pnp_stable.denoisers.blocks.NonexpansiveBlock` s: explicit Euler steps of the convex
  gradient flow ẋ = −Aᵀσ(Ax + b) with h·L_σ‖A‖² ≤ 2 from the guaranteed bound of ‖A‖ (gradient steps on a convex
  function with an L-Lipschitz gradient and step ≤ 2/L), hence 1-Lipschitz;
- between stages, a pixel-unshuffle followed by a 1×1 convolution whose norm is bounded exactly (a 1×1
  convolution is one matrix at every frequency, so :func:`~pnp_stable.denoisers.spectral.conv_norm_upper_bound`
  returns its largest singular value);
- a flatten (an isometry);
- optionally, dense non-expansive blocks on the flattened feature vector f: Euler steps f − hAᵀσ(Af + b) of the
  same flow with A a dense d × m matrix (m ridge functions; ‖A‖ its exact largest singular value), the dense layers
  of CPL/SLL classifiers in this family: mixing across the whole image, where the convolutional blocks mix 3×3
  neighbourhoods.
Hence Lip(F) ≤ L_F = Π_k ‖D_k‖, the product of the down-sampling bounds (every other piece is 1-Lipschitz).
The head W is normalised to ‖W‖₂ = 1 by its exact largest singular value. For classes i ≠ j, z_i − z_j =
(w_i − w_j)ᵀF(x) is L_F‖w_i − w_j‖-Lipschitz: :meth:`pairwise_lipschitz` returns these guaranteed constants,
and :func:`~pnp_stable.classification.robustness.certified_radius` turns margins into certified ℓ2 radii.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..denoisers.blocks import NonexpansiveBlock
from ..denoisers.layers import CertifiedConv

__all__ = ["LipschitzClassifier", "NormalisedHead", "check_classifier_input"]

#: Euler sub-steps take h·L_σ‖A‖² ≤ 2·0.999: the 0.1 % margin covers the fp32 rounding of the normalised weight W/s,
#: which can exceed the float64 bound of ‖A‖ by ~1e-7 (relative). Down-sampling bounds get the same 1e-6 margin.
BLOCK_BUDGET = 0.999
ROUNDING_MARGIN = 1 + 1e-6


def check_classifier_input(x: Tensor, channels: int, size: int) -> Tensor:
    """Refuse anything but a finite [B, channels, size, size] batch, with a message that says what to pass."""
    if not isinstance(x, Tensor):
        raise TypeError(f"classifier input must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != channels or tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"classifier input must have shape [B, {channels}, {size}, {size}], got {tuple(x.shape)}; "
                         "resize the images to the size the model was built for")
    if not x.is_floating_point():
        raise ValueError(f"classifier input must be floating point with pixels in [0, 1], got {x.dtype}; divide 8-bit "
                         "images by 255")
    if not torch.isfinite(x).all():
        raise ValueError("classifier input contains NaN or Inf values")
    return x


class NormalisedHead(nn.Module):
    """Logits z = Wf with W = V/‖V‖₂ (‖W‖₂ = 1, the exact largest singular value, differentiable in V)."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, features) / features**0.5)
        self.bias = nn.Parameter(torch.zeros(classes))

    def effective_weight(self) -> Tensor:
        with torch.autocast(device_type=self.weight.device.type, enabled=False):
            return self.weight / torch.linalg.matrix_norm(self.weight, ord=2)

    def forward(self, features: Tensor) -> Tensor:
        return features @ self.effective_weight().T.to(features.dtype) + self.bias.to(features.dtype)

    @torch.no_grad()
    def pairwise_row_distances(self) -> Tensor:
        """‖w_i − w_j‖ in float64 for the weight the forward uses, rounded up by 1e-6 (relative): [classes, classes]."""
        rows = self.effective_weight().double()
        return torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist") * (1 + 1e-6)

    @torch.no_grad()
    def norm_bound(self) -> float:
        """‖W‖₂ in float64 for the weight the forward uses, rounded up by 1e-6 (relative)."""
        return float(torch.linalg.matrix_norm(self.effective_weight().double(), ord=2)) * (1 + 1e-6)


class LipschitzClassifier(nn.Module):
    """The certified classifier of the module docstring for ``in_channels``×``image_size``² inputs in [0, 1].

    ``widths[s]`` channels and ``depths[s]`` non-expansive blocks at stage s; stage 0 works at half the input
    resolution (the input is pixel-unshuffled once, so ``image_size`` must be divisible by 2^len(widths)), each
    later stage at half the previous one. ``kernel_size``, ``activation`` and ``time`` configure the blocks
    (T ≤ ``time``, learned; up to T·‖A‖² ≤ 2·0.999 a block is one Euler step, beyond that more sub-steps, so the
    default 1 keeps every step firmly non-expansive and larger caps buy longer steps, see
    ``training/classifiers/README.md``). ``power_size``: side of the power-iteration vectors that normalise each convolution
    while training; None (the default) takes each layer's own feature grid (14×14, 7×7 for 28-pixel images),
    whose stored buffers are 5–20× smaller than the 32×32 of files written before the option (which record 32),
    so that wider networks fit a 3-MiB file. ``dense_blocks`` dense blocks of ``dense_width`` ridge functions each
    follow the last stage (same activation and time cap; 0, the default, for none).
    """

    def __init__(self, in_channels: int = 1, classes: int = 10, image_size: int = 28, widths=(32, 64), depths=(3, 3),
                 kernel_size: int = 3, activation: str = "relu", time: float = 1.0, power_size: int | None = None,
                 dense_blocks: int = 0, dense_width: int = 128):
        super().__init__()
        widths, depths = [int(w) for w in widths], [int(d) for d in depths]
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths and depths need one entry per stage, got {widths} and {depths}")
        if image_size % 2 ** len(widths):
            raise ValueError(f"image_size {image_size} must be divisible by 2^{len(widths)} (one pixel-unshuffle per stage)")
        if widths[0] < 4 * in_channels:
            raise ValueError(f"widths[0] = {widths[0]} must be ≥ 4·in_channels = {4 * in_channels}: the lift is a zero-padding")
        if dense_blocks < 0 or dense_width < 1:
            raise ValueError(f"dense_blocks must be ≥ 0 and dense_width ≥ 1, got {dense_blocks} and {dense_width}")
        self.config = dict(in_channels=in_channels, classes=classes, image_size=image_size, widths=widths,
                           depths=depths, kernel_size=kernel_size, activation=activation, time=time, power_size=power_size,
                           dense_blocks=int(dense_blocks), dense_width=int(dense_width))
        #: side of each stage's power vectors (the down-sampling into stage s uses stage s's)
        self.power_grids = grids = [power_size or image_size // 2 ** (stage + 1) for stage in range(len(widths))]
        self.stages = nn.ModuleList(nn.Sequential(*[self.stage_block(width, grid) for _ in range(depth)])
                                    for width, depth, grid in zip(widths, depths, grids))
        self.downs = nn.ModuleList(CertifiedConv(4 * a, b, kernel_size=1, power_size=grid)
                                   for a, b, grid in zip(widths[:-1], widths[1:], grids[1:]))
        side = image_size // 2 ** len(widths)
        self.dense = nn.ModuleList(self.dense_block(widths[-1] * side * side) for _ in range(dense_blocks))
        self.head = NormalisedHead(widths[-1] * side * side, classes)

    def stage_block(self, width: int, grid: int) -> nn.Module:
        """One block of a stage of ``width`` channels whose power vectors are ``grid``×``grid``: a 1-Lipschitz Euler
        step of the convex gradient flow (subclasses swap the block, the rest of the network stays)."""
        config = self.config
        return NonexpansiveBlock(width, config["kernel_size"], config["activation"], "euler", config["time"],
                                 budget=BLOCK_BUDGET, power_size=grid)

    def dense_block(self, features: int) -> nn.Module:
        """One dense block on the ``features``-long flattened vector: the same flow with ``dense_width`` ridges, as a
        1×1 convolution on a 1×1 grid."""
        config = self.config
        return NonexpansiveBlock(features, 1, config["activation"], "euler", config["time"], budget=BLOCK_BUDGET,
                                 power_size=1, ridges=config["dense_width"])

    def features(self, x: Tensor) -> Tensor:
        """F(x): [B, C, H, W] → [B, features], Lip(F) ≤ :meth:`feature_lipschitz` in eval mode."""
        z = F.pixel_unshuffle(x - 0.5, 2)
        z = F.pad(z, (0, 0, 0, 0, 0, self.config["widths"][0] - z.shape[1]))
        for index, stage in enumerate(self.stages):
            if index:
                down = self.downs[index - 1]
                if self.training:
                    down.power_step()
                z = down.A(F.pixel_unshuffle(z, 2))
            z = stage(z)
        z = z.flatten(1)[:, :, None, None]  # a dense d × m matrix is a 1×1 convolution on a 1×1 grid
        for block in self.dense:
            z = block(z)
        return z.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        check_classifier_input(x, self.config["in_channels"], self.config["image_size"])
        return self.head(self.features(x.to(self.head.weight.dtype)))

    def blocks(self) -> list[nn.Module]:
        """The blocks in the order of the forward: each stage's, then the dense ones."""
        return [block for stage in self.stages for block in stage] + list(self.dense)

    def bounded_convs(self) -> list[CertifiedConv]:
        """Every convolution whose guaranteed norm bound enters the certificate (blocks, down-samplings, dense blocks)."""
        return [block.conv for stage in self.stages for block in stage] + list(self.downs) + [b.conv for b in self.dense]

    def calibrate(self) -> None:
        """Let training see the certified norms (:meth:`NonexpansiveBlock.calibrate`)."""
        for block in self.blocks():
            block.calibrate()

    def feature_lipschitz(self) -> float:
        """L_F = Π ‖D_k‖ (guaranteed bounds): blocks, dense ones included, are 1-Lipschitz in eval mode by their
        sub-step rule."""
        if self.training:
            raise RuntimeError("the certificate describes the eval network: call model.eval() first")
        bound = 1.0
        for down in self.downs:
            bound *= down.norm_upper_bound() * ROUNDING_MARGIN  # the fp32 W/s the forward uses may exceed the fp64 bound
        return bound

    def pairwise_lipschitz(self) -> Tensor:
        """K_ij ≥ Lip(x ↦ z_i(x) − z_j(x)) = L_F‖w_i − w_j‖ (float64, [classes, classes])."""
        return self.feature_lipschitz() * self.head.pairwise_row_distances()

    def feature_lipschitz_estimate(self) -> float:
        """L_F as training sees it: the product of the down-samplings' power estimates (1 when normalised)."""
        bound = 1.0
        for down in self.downs:
            bound *= down.norm_estimate()
        return bound

    def training_pairwise_lipschitz(self) -> Tensor:
        """K for the training loss: the estimate of L_F times ‖w_i − w_j‖, differentiable in the head."""
        rows = self.head.effective_weight()
        return self.feature_lipschitz_estimate() * torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")

    def lipschitz_bound(self) -> float:
        """Guaranteed Lipschitz constant of x ↦ logits (ℓ2 → ℓ2): L_F·‖W‖₂."""
        return self.feature_lipschitz() * self.head.norm_bound()
