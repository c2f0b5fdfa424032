"""One denoiser per range of noise levels: D(x, σ) = D_k(x, σ) for the range k that holds σ.

A network trained for low noise leaves low noise alone but smooths too little at high noise, and one trained on the
whole range with the plain MSE loss does the reverse (``pnp_stable/denoisers/weights/README.md``); a switch on σ
uses each where it is best.

Why the certificate is the worst member's. For each fixed σ the map x ↦ D(x, σ) *is* one member's map
x ↦ D_k(x, σ), so if every D_k is α_k-averaged (‖D_k x − D_k y‖ ≤ L_k‖x − y‖), every D(·, σ) is max_k α_k-averaged
(max_k L_k-Lipschitz): an α-averaged map is α'-averaged for every α' ≥ α. This is the sense in which every
noise-conditional denoiser here is certified (for each σ, uniformly in σ), and the sense PnP needs: an iteration
calls the denoiser at one σ_d. No claim is made about x ↦ D(x, σ(x)) with a σ that depends on x.
"""

from __future__ import annotations

import math
from typing import Sequence

import deepinv as dinv
import torch
from torch import Tensor, nn

from .._modules import accepted_channels
from .._validation import per_image_levels
from ..theory import Certificate
from .certificates import certificate_of

__all__ = ["NoiseLevelSwitch", "range_index"]


def range_index(sigma, levels: Sequence[float]) -> Tensor:
    """For each noise level, how many of ``levels`` lie below it: its range in the split [0, l_1], (l_1, l_2], ….
    Compared in float32, the precision the networks see σ in, whatever form σ comes in (a Python number, a 0-d or
    [B] tensor of any dtype or device): σ = 8/255 is on the boundary 8/255 however it is given, and the member that
    denoises is the one whose certificate :meth:`NoiseLevelSwitch.certificate_at` reports."""
    sigma = torch.as_tensor(sigma).detach().reshape(-1).to(torch.float32).contiguous()
    return torch.bucketize(sigma, torch.tensor(list(levels), dtype=torch.float32, device=sigma.device))


class NoiseLevelSwitch(dinv.models.Denoiser):
    """D(x, σ) = ``denoisers[k]``(x, σ) with k the number of ``levels`` below σ (deepinv ``Denoiser``).

    ``levels`` l_1 < … < l_{K−1} split the noise levels into [0, l_1], (l_1, l_2], …, (l_{K−1}, ∞)
    (``torch.bucketize``'s convention), one for each of the K ``denoisers``; a batch with one σ per image sends each
    image to its own member. Certified as its worst member (module docstring); every member must take the same number
    of channels. ``noise_range`` (what :func:`~pnp_stable.denoisers.zoo.outside_training` checks): from the first
    member's lowest to the last member's highest training level, when both are known.
    """

    def __init__(self, levels: Sequence[float], denoisers: Sequence[nn.Module]):
        super().__init__()
        levels = [float(level) for level in levels]
        if len(denoisers) != len(levels) + 1:
            raise ValueError(f"NoiseLevelSwitch needs one denoiser more than levels (one per range of σ), got "
                             f"{len(denoisers)} denoisers for {len(levels)} levels")
        if not all(0 < a < b < math.inf for a, b in zip([math.ulp(0.0), *levels], levels)):
            raise ValueError(f"levels must be positive, finite and increasing, got {levels}")
        if not all(isinstance(d, nn.Module) for d in denoisers):
            raise ValueError("NoiseLevelSwitch takes torch modules denoiser(x, sigma), got "
                             f"{[type(d).__name__ for d in denoisers]}")
        accepted = [accepted_channels(d) for d in denoisers]  # None: a member that does not tell
        common = set.intersection(*(set(a) for a in accepted if a is not None)) if any(accepted) else None
        if common is not None and not common:
            raise ValueError(f"the denoisers of a NoiseLevelSwitch must take the same number of channels, got "
                             f"{[list(a) if a is not None else 'any' for a in accepted]}")
        self.levels = tuple(levels)
        self.members = nn.ModuleList(denoisers)
        self.channels = common.pop() if common is not None and len(common) == 1 else None
        widths = [getattr(d, "width", None) for d in denoisers]  # tiling's 'auto' memory estimate: the largest member
        self.width = max(widths) if all(isinstance(w, int) for w in widths) else None
        self.peak_feature_maps = max(getattr(d, "peak_feature_maps", 4) for d in denoisers)
        ranges = [getattr(d, "noise_range", None) for d in denoisers]
        self.noise_range = (ranges[0][0], ranges[-1][1]) if ranges[0] and ranges[-1] else None

    def forward(self, x: Tensor, sigma=None, **kwargs) -> Tensor:
        if sigma is None:
            raise ValueError("a NoiseLevelSwitch chooses its denoiser by the noise level: call it as D(x, sigma)")
        per_image = per_image_levels(sigma, x)
        index = range_index(per_image, self.levels)
        chosen = index.unique()
        if len(chosen) == 1:
            return self.members[int(chosen)](x, sigma, **kwargs)
        out = torch.empty_like(x)
        for k in chosen.tolist():
            images = index == k
            out[images] = self.members[k](x[images], per_image[images], **kwargs)
        return out

    @property
    def certificate(self) -> Certificate:
        return self._worst([certificate_of(d) for d in self.members])

    def certificate_at(self, sigma) -> Certificate:
        """The worst certificate among the members that denoise at the given noise level(s), each at those levels."""
        sigma = torch.as_tensor(sigma).detach().reshape(-1)
        index = range_index(sigma, self.levels)
        return self._worst([certificate_of(self.members[k], sigma[index == k])
                            for k in index.unique().tolist()])

    @staticmethod
    def _worst(certificates: list[Certificate]) -> Certificate:
        """max α and max L over the members (module docstring); none when a member has none."""
        lipschitz = [c.lipschitz for c in certificates]
        if any(value is None for value in lipschitz):
            return Certificate.none("NoiseLevelSwitch: a member denoiser carries no certificate")
        alphas = [c.alpha for c in certificates]
        return Certificate(
            lipschitz=max(lipschitz),
            alpha=None if any(a is None for a in alphas) else max(alphas),
            method="for each σ one member's map, so the worst member's certificate: "
                   + " | ".join(c.method for c in certificates),
            guaranteed=all(c.guaranteed for c in certificates),
            tolerance=max(c.tolerance for c in certificates),
            trusted=tuple(dict.fromkeys(source for c in certificates for source in c.trusted)),
            scheduled=all(c.scheduled or not c.solved for c in certificates),  # a network's slack is no solver's
        )

    def extra_repr(self) -> str:
        return f"levels={[round(level, 6) for level in self.levels]}"
