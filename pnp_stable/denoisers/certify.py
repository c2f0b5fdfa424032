"""Empirical checks of a certificate: adversarial search for the Lipschitz constant of D and of
N = (D − (1 − α)I)/α, and inequality (A) on pairs. A test of the certificate, never its source."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from skimage import data as skdata
from torch import Tensor

from .._modules import device_of
from .._validation import refuse_autocast
from ..io import LUMA_WEIGHTS
from ..theory import Certificate, averagedness_defect
from .certificates import certificate_of

__all__ = ["CHECK_SLACK", "CertificateCheck", "SearchResult", "adversarial_lipschitz", "averagedness_defects",
           "check_certificate", "lipschitz_vs_depth", "natural_starts"]

#: relative slack of the empirical checks: float32 rounding of the searched ratios and defects
CHECK_SLACK = 1e-4


def natural_starts(count: int, shape: Sequence[int], noise: float = 0.1, seed: int = 0) -> Tensor:
    """``count`` random crops of scikit-image's astronaut, coffee and chelsea (gray or RGB as ``shape`` = (C, H, W))
    plus noise."""
    channels, height, width = shape
    gen = np.random.default_rng(seed)
    sources = [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]
    largest = (min(s.shape[0] for s in sources), min(s.shape[1] for s in sources))
    if height > largest[0] or width > largest[1] or height < 1 or width < 1:
        raise ValueError(f"start images of {height}×{width} do not fit the built-in photos: crops must be 1 to "
                         f"{largest[0]}×{largest[1]} pixels (--size at most {min(largest)})")
    crops = []
    for i in range(count):
        image = sources[i % len(sources)].astype(np.float32) / 255.0
        if channels == 1:
            image = image @ np.array(LUMA_WEIGHTS, dtype=np.float32)
            image = image[..., None]
        top = gen.integers(0, image.shape[0] - height + 1)
        left = gen.integers(0, image.shape[1] - width + 1)
        crops.append(image[top : top + height, left : left + width].transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(crops))
    return x + noise * torch.from_numpy(gen.standard_normal(x.shape).astype(np.float32))


@dataclass
class SearchResult:
    """Largest ratio ‖Mx − My‖/‖x − y‖ found, and the pair attaining it."""

    ratio: float
    x: Tensor
    y: Tensor
    ratios: list[float]


def _as_map(denoiser, sigma, alpha: float | None) -> Callable[[Tensor], Tensor]:
    if alpha is None:
        return lambda x: denoiser(x, sigma)
    return lambda x: (denoiser(x, sigma) - (1 - alpha) * x) / alpha


def adversarial_lipschitz(
    denoiser,
    shape: Sequence[int],
    sigma: float | None = 0.1,
    alpha: float | None = None,
    restarts: int = 4,
    steps: int = 100,
    lr: float = 1e-2,
    seed: int = 0,
) -> SearchResult:
    """Maximise ‖Mx − My‖/‖x − y‖ by Adam over (x, y), M = D or, with ``alpha``, M = (D − (1 − α)I)/α.

    Starts from noisy natural-image crops, half of them with y a tiny perturbation of x
    (probing the Jacobian), half with y another crop (probing far pairs). A certified
    α-averaged D must give a ratio ≤ 1 for M = N (up to float tolerance).
    """
    refuse_autocast("the adversarial Lipschitz search")
    if isinstance(denoiser, torch.nn.Module) and denoiser.training:
        raise ValueError("certificates describe eval mode: call denoiser.eval() before the search")
    M = _as_map(denoiser, sigma, alpha)
    x = natural_starts(restarts, shape, seed=seed)
    far = natural_starts(restarts, shape, seed=seed + 1)
    near = x + 1e-2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)  # the caller's global seed stays
    y = torch.where(torch.arange(restarts)[:, None, None, None] % 2 == 0, near, far)
    device = device_of(denoiser)
    x, y = x.to(device).requires_grad_(True), y.to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([x, y], lr=lr)
    best = torch.zeros(restarts, device=device)
    best_x, best_y = x.detach().clone(), y.detach().clone()
    for _ in range(steps + 1):
        ratio = (M(x) - M(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1).clamp_min(1e-12)
        improved = ratio.detach() > best
        best = torch.where(improved, ratio.detach(), best)
        best_x[improved], best_y[improved] = x.detach()[improved], y.detach()[improved]
        x.grad, y.grad = torch.autograd.grad(-ratio.sum(), [x, y])  # the model's parameters get no .grad
        optimiser.step()
    top = int(best.argmax())
    return SearchResult(float(best[top]), best_x[top : top + 1], best_y[top : top + 1], best.tolist())


@torch.no_grad()
def averagedness_defects(denoiser, x: Tensor, y: Tensor, alpha: float, sigma: float | None = 0.1) -> Tensor:
    """Relative defect of inequality (A) per pair: (‖Dx−Dy‖² − ‖x−y‖² + (1−α)/α‖(I−D)x − (I−D)y‖²)/‖x−y‖²; ≤ 0 when (A) holds."""
    refuse_autocast("the averagedness check")
    dx, dy = denoiser(x, sigma), denoiser(y, sigma)
    norm2 = lambda t: t.double().flatten(1).pow(2).sum(1)  # noqa: E731
    d2 = norm2(x - y)
    defect = averagedness_defect(d2, norm2(dx - dy), norm2((x - dx) - (y - dy)), alpha)
    return defect / d2


@dataclass
class CertificateCheck:
    """An empirical test of a denoiser's certificate at one σ (what ``pnp-stable certify`` prints): the largest
    ‖Dx − Dy‖/‖x − y‖ and, with an α, ‖Nx − Ny‖/‖x − y‖ for N = (D − (1 − α)I)/α that an adversarial search finds,
    and the relative defects of inequality (A) on natural image pairs. An inner solve (an iterative prox) is within
    tolerance·√n of the certified map per output, so each check allows 2·tolerance·√n/‖x − y‖ on a ratio (÷ α for N)
    and the matching slack on a defect (the ``*_allowance`` fields): beyond them, a check contradicts the
    certificate. ``after`` is the certificate once the checks ran: a model whose inner solve missed its tolerance
    during them has withdrawn it, and the numbers then describe a map less accurate than the certificate needs."""

    certificate: Certificate
    after: Certificate
    lipschitz: SearchResult
    lipschitz_allowance: float = 0.0
    averaged: SearchResult | None = None
    averaged_allowance: float = 0.0
    defects: Tensor | None = None
    defect_allowance: Tensor | None = None

    @property
    def withdrawn(self) -> bool:
        return self.after != self.certificate

    @property
    def holds(self) -> bool | None:
        """True when every check lies within the certificate, False when one exceeds it or the certificate was
        withdrawn during the checks, None when there is no certificate to check."""
        if self.certificate.lipschitz is None:
            return None
        if self.withdrawn:
            return False
        within = self.lipschitz.ratio <= self.certificate.lipschitz * (1 + CHECK_SLACK) + self.lipschitz_allowance
        if self.averaged is not None:
            within = (within and self.averaged.ratio <= 1 + CHECK_SLACK + self.averaged_allowance
                      and float((self.defects - self.defect_allowance).max()) <= CHECK_SLACK)
        return within


def check_certificate(denoiser, shape: Sequence[int], sigma: float | None = 0.1, restarts: int = 4, steps: int = 100,
                      pairs: int = 8, seed: int = 0) -> CertificateCheck:
    """Search for a violation of ``denoiser``'s certificate at ``sigma`` on images of ``shape`` = (C, H, W)
    (:class:`CertificateCheck`); a test of the certificate, never its source."""
    certificate = certificate_of(denoiser, sigma)
    lipschitz = adversarial_lipschitz(denoiser, shape, sigma, restarts=restarts, steps=steps, seed=seed)
    error = 2 * certificate.tolerance * math.sqrt(math.prod(shape))  # two outputs' inner-solve errors at most
    check = CertificateCheck(certificate, certificate, lipschitz, _allowance(error, lipschitz, 1.0))
    if certificate.lipschitz is not None and certificate.alpha is not None:
        check.averaged = adversarial_lipschitz(denoiser, shape, sigma, alpha=certificate.alpha, restarts=restarts,
                                               steps=steps, seed=seed)
        check.averaged_allowance = _allowance(error, check.averaged, certificate.alpha)
        x, y = natural_starts(pairs, shape, seed=seed), natural_starts(pairs, shape, seed=seed + 1)
        check.defects = averagedness_defects(denoiser, x, y, certificate.alpha, sigma)
        distance = (x - y).flatten(1).double().norm(dim=1)
        c = (1 - certificate.alpha) / certificate.alpha  # (A)'s terms move by 2εd + ε² and (‖(I−D)x − (I−D)y‖ ≤ 2d) 4εd + ε²
        check.defect_allowance = ((2 * error * distance + error**2) + c * (4 * error * distance + error**2)) / distance**2
    check.after = certificate_of(denoiser, sigma)
    return check


def _allowance(error: float, search: SearchResult, alpha: float) -> float:
    """What an error bound ``error`` on two outputs allows the search's best pair on a ratio bound: error/(α‖x − y‖)."""
    return error / (alpha * float((search.x - search.y).flatten().double().norm())) if error else 0.0


def lipschitz_vs_depth(
    build: Callable[[int], torch.nn.Module],
    depths: Sequence[int],
    shape: Sequence[int] = (1, 32, 32),
    sigma: float | None = 0.1,
    restarts: int = 4,
    steps: int = 60,
    seed: int = 0,
) -> list[tuple[int, float]]:
    """Empirical Lipschitz constant (adversarial search) of ``build(depth)`` for each depth."""
    results = []
    for depth in depths:
        net = build(depth).eval()
        results.append((depth, adversarial_lipschitz(net, shape, sigma, restarts=restarts, steps=steps, seed=seed).ratio))
    return results
