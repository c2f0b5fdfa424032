"""Empirical checks of a certificate: adversarial search for the Lipschitz constant of D and of
N = (D − (1 − α)I)/α, and inequality (A) on pairs. A test of the certificate, never its source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from skimage import data as skdata
from torch import Tensor

from .._modules import device_of
from ..io import LUMA_WEIGHTS
from ..theory import averagedness_defect

__all__ = ["SearchResult", "natural_starts", "adversarial_lipschitz", "averagedness_defects", "lipschitz_vs_depth"]


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
    dx, dy = denoiser(x, sigma), denoiser(y, sigma)
    norm2 = lambda t: t.double().flatten(1).pow(2).sum(1)  # noqa: E731
    d2 = norm2(x - y)
    defect = averagedness_defect(d2, norm2(dx - dy), norm2((x - dx) - (y - dy)), alpha)
    return defect / d2


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
