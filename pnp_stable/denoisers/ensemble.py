"""Certified self-ensemble: the average of a denoiser conjugated by the flips and rotations of the pixel grid.

D̄(x) = (1/|G|) Σ_{g∈G} g⁻¹ D(g x, σ) for a set G of the 8 symmetries of the square grid (the dihedral group D4:
rotations by multiples of 90°, each with or without a transpose). Every g permutes pixels, so it is orthogonal
(g⁻¹ = gᵀ) and the noise level is unchanged.

Why the certificate is unchanged. If D = (1 − α)I + αN with N non-expansive (D α-averaged), then
gᵀDg = (1 − α)I + α·gᵀNg and gᵀNg is non-expansive (‖gᵀN(gx) − gᵀN(gy)‖ = ‖N(gx) − N(gy)‖ ≤ ‖gx − gy‖ = ‖x − y‖), so
each conjugate is α-averaged; the mean (1 − α)I + α·(1/|G|)Σ gᵀNg is α-averaged too, since a convex combination
of non-expansive maps is non-expansive. The same argument keeps any Lipschitz bound. It needs D's certificate to
hold at the rotated size W×H as well as at H×W: true for the certified networks, whose norm bounds hold for every
image size. Any subset of G works, so ``transforms`` = 2 or 4 trades quality for time.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import deepinv as dinv
import torch
from torch import Tensor

from ..theory import Certificate
from .certificates import certificate_of, keep_description

__all__ = ["SYMMETRIES", "SelfEnsemble", "self_ensemble"]

#: The dihedral group of the square grid as (quarter turns k, transpose first); g(x) = rot90(xᵀ?, k). Ordered so
#: that the first 2 and the first 4 keep the image's shape (useful for batches of non-square images).
SYMMETRIES: tuple[tuple[int, bool], ...] = ((0, False), (2, False), (1, True), (3, True),
                                            (1, False), (3, False), (0, True), (2, True))


def _check_transforms(value, name: str) -> None:
    if isinstance(value, bool) or value not in (1, 2, 4, 8):
        raise ValueError(f"{name} must be 1, 2, 4 or 8 (a subset of the 8 grid symmetries), got {value!r}")


def _apply(x: Tensor, turns: int, transpose: bool) -> Tensor:
    if transpose:
        x = x.transpose(-2, -1)
    return torch.rot90(x, turns, dims=(-2, -1))


def _undo(x: Tensor, turns: int, transpose: bool) -> Tensor:
    x = torch.rot90(x, -turns, dims=(-2, -1))
    return x.transpose(-2, -1) if transpose else x


class SelfEnsemble(dinv.models.Denoiser):
    """D̄(x, σ) = mean over the first ``transforms`` grid symmetries g of g⁻¹ D(g x, σ) (deepinv ``Denoiser``).

    Certified exactly as D (module docstring): an α-averaged D gives an α-averaged D̄, at ``transforms`` times
    D's cost. The wrapped denoiser is used as given (not copied); the wrapper starts in its train/eval mode.
    """

    def __init__(self, denoiser: Callable, transforms: int = 8):
        super().__init__()
        _check_transforms(transforms, "transforms")
        if not callable(denoiser):
            raise ValueError(f"SelfEnsemble wraps a callable denoiser(x, sigma), got {type(denoiser).__name__}")
        self.base = denoiser
        self.transforms = int(transforms)
        keep_description(self, denoiser)
        self.width = getattr(denoiser, "width", None)  # one call of the base at a time: its memory (tiling's 'auto')
        self.peak_feature_maps = getattr(denoiser, "peak_feature_maps", 4)
        if isinstance(denoiser, torch.nn.Module):
            self.train(denoiser.training)  # the wrapper starts in the mode of the model it wraps

    def forward(self, x: Tensor, sigma=None, **kwargs) -> Tensor:
        total = None
        for turns, transpose in SYMMETRIES[: self.transforms]:
            out = _undo(self.base(_apply(x, turns, transpose), sigma, **kwargs), turns, transpose)
            total = out if total is None else total + out
        return total / self.transforms

    @property
    def certificate(self) -> Certificate:
        return self._described(certificate_of(self.base))

    def certificate_at(self, sigma) -> Certificate:
        return self._described(certificate_of(self.base, sigma))

    def _described(self, certificate: Certificate) -> Certificate:
        if certificate.lipschitz is None and certificate.alpha is None:
            return certificate
        return replace(certificate, method=f"{certificate.method}; mean of {self.transforms} grid-symmetry conjugates "
                       "(orthogonal conjugation and convex combination keep α and the Lipschitz bound)")

    def extra_repr(self) -> str:
        return f"transforms={self.transforms}"


def self_ensemble(denoiser: Callable, transforms: int = 1):
    """``denoiser`` itself for ``transforms`` = 1, else :class:`SelfEnsemble` over that many grid symmetries (2, 4
    or 8): the same certificate at ``transforms`` times the cost."""
    _check_transforms(transforms, "ensemble")
    return denoiser if transforms == 1 else SelfEnsemble(denoiser, transforms)
