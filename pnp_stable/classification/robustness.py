"""Certified radii from margins and Lipschitz bounds, the margin loss that trains for them, and the attacks that
test them (a PGD ℓ2 attack and an adversarial search for the Lipschitz constant: tests of a certificate, never
its source).

Certificate. If K_ij ≥ Lip(x ↦ z_i(x) − z_j(x)) for the logits z, and ŷ = argmax z(x), then for every δ with
‖δ‖₂ < r(x) = min_{j≠ŷ} (z_ŷ(x) − z_j(x))/K_ŷj each difference stays positive: z_ŷ − z_j at x + δ is
≥ (z_ŷ − z_j)(x) − K_ŷj‖δ‖ > 0, so the prediction cannot change. With a Lipschitz bound L of the logits,
K_ij = √2·L holds for every pair (|δz_i − δz_j| ≤ √2‖δz‖), giving the usual margin/(√2L).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pairwise_bounds", "certified_radius", "certified_accuracy", "margin_loss", "pgd_l2", "robust_accuracy",
           "lipschitz_search"]


def pairwise_bounds(model) -> Tensor:
    """K (float64, [classes, classes]): the model's :meth:`pairwise_lipschitz` when it has one, else √2·L from its
    :meth:`lipschitz_bound`. Refused in training mode: the certificate describes the eval network."""
    if getattr(model, "training", False):
        raise ValueError("certified radii describe the eval network: call model.eval() first")
    if hasattr(model, "pairwise_lipschitz"):
        return model.pairwise_lipschitz()
    if hasattr(model, "lipschitz_bound"):
        classes = model.config["classes"]
        return torch.full((classes, classes), math.sqrt(2) * float(model.lipschitz_bound()), dtype=torch.float64)
    raise TypeError(f"{type(model).__name__} has no pairwise_lipschitz() or lipschitz_bound(): no certificate")


def _radius(logits: Tensor, bounds: Tensor) -> tuple[Tensor, Tensor]:
    """(prediction, certified radius) per sample from float64 logits and K."""
    prediction = logits.argmax(1)
    gaps = logits.gather(1, prediction[:, None]) - logits
    ratio = gaps / bounds[prediction].clamp_min(1e-300)
    ratio.scatter_(1, prediction[:, None], math.inf)
    return prediction, ratio.min(1).values.clamp_min(0.0)


@torch.no_grad()
def _certified_logits(model, x: Tensor) -> Tensor:
    """The logits the certificate describes: pixels in [0, 1] (the radii are in those units) and the network in full
    precision even under an enclosing autocast (its bounds are for the fp32 network, not a bf16 evaluation)."""
    if x.dim() != 4:
        raise ValueError(f"images must be a batch [B, C, H, W], got shape {tuple(x.shape)}"
                         + ("; add the batch axis (x[None])" if x.dim() == 3 else ""))
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        hint = "divide 8-bit images by 255" if float(x.max()) > 1.5 else "rescale them to [0, 1]"
        raise ValueError(f"pixels must lie in [0, 1] (the certified radius is measured in those units), got values in "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}]; {hint}")
    if not len(x):
        return x.new_empty((0, model.config["classes"]), dtype=torch.float64)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return model(x.float()).double()


def certified_radius(model, x: Tensor) -> tuple[Tensor, Tensor]:
    """(predicted class, certified ℓ2 radius) for each image of x ([B, C, H, W]): no perturbation of norm below the
    radius changes the prediction (module docstring)."""
    bounds = pairwise_bounds(model)
    return _radius(_certified_logits(model, x), bounds.to(x.device))


@torch.no_grad()
def certified_accuracy(model, loader: Iterable[tuple[Tensor, Tensor]], eps_list: Sequence[float]) -> dict:
    """Clean accuracy and, for each ε, the fraction of images classified correctly with certified radius > ε.
    Returns {'clean': float, 'certified': {ε: float}, 'count': int}."""
    bounds = pairwise_bounds(model)
    correct, certified, count = 0, {float(eps): 0 for eps in eps_list}, 0
    for images, labels in loader:
        if not isinstance(labels, Tensor) or labels.shape != (len(images),) or labels.is_floating_point():
            raise ValueError(f"labels must be one integer class per image ({len(images)}), got "
                             f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}"
                             f"{' floats' if isinstance(labels, Tensor) and labels.is_floating_point() else ''}")
        prediction, radius = _radius(_certified_logits(model, images), bounds.to(images.device))
        right = prediction == labels
        correct += int(right.sum())
        for eps in certified:
            certified[eps] += int((right & (radius > eps)).sum())
        count += len(labels)
    if not count:
        raise ValueError("the loader yielded no images")
    return {"clean": correct / count, "certified": {eps: n / count for eps, n in certified.items()}, "count": count}


def margin_loss(logits: Tensor, labels: Tensor, bounds: Tensor, eps: float, temperature: float) -> Tensor:
    """Cross-entropy on logits whose wrong classes are raised by ε·K_yj (the worst case within ‖δ‖ ≤ ε):
    z'_j = z_j + ε·K_yj for j ≠ y. Minimising it pushes every margin above its certified size at radius ε
    (Tsuzuku, Sato & Sugiyama 2018, 'Lipschitz-margin training'); ``temperature`` scales z' before the softmax."""
    shift = eps * bounds.to(logits.dtype)[labels]
    shift = shift.scatter(1, labels[:, None], 0.0)
    return F.cross_entropy(temperature * (logits + shift), labels)


def _margin(logits: Tensor, labels: Tensor) -> Tensor:
    """z_y − max_{j≠y} z_j per sample."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], -math.inf)
    return true - others.max(1).values


def _check_attack_inputs(model, images: Tensor) -> None:
    """Attacks compare with certificates: they need the eval network and images in the box [0, 1] they stay in."""
    if getattr(model, "training", False):
        raise ValueError("attack the eval network, which the certificate describes: call model.eval() first")
    if not images.is_floating_point() or float(images.min()) < 0 or float(images.max()) > 1:
        raise ValueError("attacked images must be floating point with pixels in [0, 1] (the attack stays in that box)")


def pgd_l2(model, images: Tensor, labels: Tensor, eps: float | Tensor, steps: int = 20, step_size: float | None = None,
           restarts: int = 1, seed: int = 0) -> Tensor:
    """Projected gradient descent on the margin z_y − max_{j≠y} z_j within {‖δ‖₂ ≤ ε, x + δ ∈ [0, 1]} (ε a float
    or one radius per image); returns the perturbed images with the smallest margin found. Restarts after the first
    start from a random point of the ball. Step size 2.5ε/steps by default (Madry et al. 2018)."""
    _check_attack_inputs(model, images)
    shape = (-1,) + (1,) * (images.ndim - 1)
    eps = torch.as_tensor(eps, dtype=images.dtype, device=images.device).expand(len(images)).reshape(shape)
    step_size = 2.5 * eps / steps if step_size is None else torch.as_tensor(step_size, dtype=images.dtype, device=images.device)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    best, best_margin = images.clone(), torch.full((len(images),), math.inf, device=images.device)
    for restart in range(restarts):
        delta = torch.zeros_like(images)
        if restart:
            delta = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
            radius = eps * torch.rand(len(images), generator=generator, device=images.device, dtype=images.dtype).view(shape)
            delta = delta / delta.flatten(1).norm(dim=1).view(shape) * radius
        for step in range(steps + 1):
            delta = ((images + delta).clamp(0, 1) - images).requires_grad_(True)
            margin = _margin(model(images + delta), labels)
            better = margin.detach() < best_margin
            best[better], best_margin[better] = (images + delta).detach()[better], margin.detach()[better]
            if step == steps:
                break
            (gradient,) = torch.autograd.grad(margin.sum(), delta)
            direction = gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            delta = delta.detach() - step_size * direction
            norms = delta.flatten(1).norm(dim=1).view(shape)
            delta = delta * torch.where(norms > eps, eps / norms.clamp_min(1e-30), torch.ones_like(norms))
    return best


def robust_accuracy(model, images: Tensor, labels: Tensor, eps: float, **attack) -> float:
    """Fraction of images still classified correctly after :func:`pgd_l2` at radius ε (an upper bound of the true
    robust accuracy, so it must be ≥ the certified accuracy)."""
    adversarial = pgd_l2(model, images, labels, eps, **attack)
    with torch.no_grad():
        return float((model(adversarial).argmax(1) == labels).float().mean())


def lipschitz_search(model, images: Tensor, steps: int = 100, lr: float = 1e-2, seed: int = 0) -> float:
    """Largest ‖z(x) − z(y)‖/‖x − y‖ found by Adam over pairs started at ``images`` and small perturbations of
    them (the logits map's local Lipschitz constant): a lower bound that the certified bound must exceed."""
    if getattr(model, "training", False):
        raise ValueError("search the eval network, which the certificate describes: call model.eval() first")
    generator = torch.Generator().manual_seed(seed)
    x = images.clone().requires_grad_(True)
    y = (images + 1e-2 * torch.randn(images.shape, generator=generator)).requires_grad_(True)
    optimiser = torch.optim.Adam([x, y], lr=lr)
    best = 0.0
    for _ in range(steps + 1):
        ratio = (model(x) - model(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1).clamp_min(1e-12)
        best = max(best, float(ratio.detach().max()))
        x.grad, y.grad = torch.autograd.grad(-ratio.sum(), [x, y])  # the model's parameters get no .grad
        optimiser.step()
    return best
