"""Screen for issue #22: the exact convex-ridge prox refined by K explicit, non-expansive stages that re-inject y.

    D(y) = x_K,   x_0 = P(y) = prox_{R_0}(y),   x_{k+1} = x_k − τ_k [(x_k − y) + ∇R_k(x_k)],   k = 0, …, K − 1,

P the exact prox of a convex ridge regulariser R_0 (:class:`pnp_stable.denoisers.ConvexRidgeDenoiser`, firmly
non-expansive), each R_k a convex ridge regulariser of the same parametrisation (its own filters and slopes; λ = μ = 1
at the single σ, as in the other screens), ∇²R_k ⪯ L_k I, and τ_k = t_k·2/(2 + L_k), t_k = sigmoid(a_k) ∈ (0, 1).
Non-expansive for any weights: x ↦ (1 − τ)x − τ∇R(x) = (1 − τ)(x − τ/(1 − τ)·∇R(x)) is (1 − τ)-Lipschitz, as
τ/(1 − τ) ≤ 2/L when τ(2 + L) ≤ 2 (a gradient step of size ≤ 2/L on a convex L-smooth R is non-expansive), so
Lip(x_{k+1}) ≤ (1 − τ_k)Lip(x_k) + τ_k ≤ 1 by induction from Lip(x_0) ≤ 1. D is 1-Lipschitz, not averaged:
(1 − θ)I + θD is θ-averaged for θ < 1 (the SLL networks' θ = 0.995). The same contraction carries P's certified error
ε to the output: ‖x̃_K − x_K‖ ≤ Π_k(1 − τ_k)·ε ≤ ε (up to the float32 arithmetic of the explicit stages).

L_k is R_k's :meth:`~ConvexRidgeDenoiser.smoothness` on the batch's shape (λμ·L_R, λ = μ = 1), with 1e-6 relative
margin for rounding: with circular boundary (the only one accepted here) it is the exact ‖Σ_c S_c W_cᵀW_c‖ =
max_ω Σ_c S_c|ŵ_c(ω)|² on the image's grid, S_c = sup σ_c', a guaranteed bound on ∇²R_k. It is cheap (one float64 FFT
of the filters), so it is recomputed, detached, at every training step and every validation call for the shape at hand
(cached while the weights are unchanged); τ_k is differentiable in a_k only.

Every R_k starts as a copy of R_0 (``--perturb`` adds relative Gaussian noise), so x_0 = P(y) is a fixed point of every
stage and D = P at step 0; ``--init`` with a state of this script instead continues its weights under a fresh optimiser
(another ``--lr``). Gradients: autograd through the stages, implicit differentiation through x_0
(:func:`backward_through_prox`, as in ``convex_ridge_cascade.py``) unless ``--freeze-prox`` keeps R_0 fixed. The logits
a_k (start 0: t_k = ½) are the parameter ``steps.theta``, so :func:`run_screen` trains them at its slopes' 5× lr. The
stages' regularisers are not submodules (only their filters and slopes are registered), so run_screen's printed
``alpha`` and ``certified_inner_errors`` are P's; D's own guarantee is :attr:`UnrolledRidge.certificate` (1-Lipschitz).

Same protocol as ``convex_ridge_prox.py`` (one thread, Train400 less its last ``--holdout``, σ = ``--sigma``,
validation PSNR on the first ``--val-images`` held-out images, resumable ``--state``).

    OMP_NUM_THREADS=1 .venv/bin/python training/screening/convex_ridge_unrolled.py --minutes 40 --stages 2 \\
        --init training/screening/convex-ridge-prox-k13.ckpt
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from convex_ridge_prox import TRAINED, add_arguments, init_from, run_screen, screen_denoiser  # noqa: E402
from pnp_stable.denoisers import ConvexRidgeDenoiser  # noqa: E402
from pnp_stable.theory import Certificate  # noqa: E402
from pnp_stable.training.convex_ridge import backward_through_prox  # noqa: E402
from pnp_stable.training.checkpoint import load_checkpoint, model_tensors  # noqa: E402

SMOOTHNESS_MARGIN = 1e-6  # relative, on L_k: the float64 evaluation of the spectral bound


class RidgeStage(nn.Module):
    """x ↦ x − τ[(x − y) + ∇R(x)], τ = t·2/(2 + L), R the regulariser of ``ridge`` (its filters and slopes are this
    module's parameters ``weight`` and ``theta``, shared; ``ridge`` itself is kept out of the module tree, so it is
    not taken for a prox)."""

    def __init__(self, ridge: ConvexRidgeDenoiser):
        super().__init__()
        if ridge.boundary != "circular":
            raise ValueError("the stages' smoothness bound is guaranteed only with circular boundary")
        self.weight, self.theta = ridge.weight, ridge.theta
        self.__dict__["ridge"] = ridge

    def forward(self, x: Tensor, y: Tensor, strength: Tensor, scale: Tensor, t: Tensor) -> Tensor:
        ridge = self.ridge
        lipschitz = strength * scale * (ridge.smoothness(x.shape) * (1 + SMOOTHNESS_MARGIN))
        operator = ridge.operator(x.shape) if torch.is_grad_enabled() else ridge.frozen_operator(x.shape, x.dtype)
        gradient = ridge.gradient(x, operator, ridge.slopes().to(x.dtype), strength, scale)
        return x - t * 2 / (2 + lipschitz) * (x - y + gradient)


class StepLogits(nn.Module):
    """a_k of t_k = sigmoid(a_k), named ``theta`` so that the screens train it (at the slopes' lr)."""

    def __init__(self, stages: int):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(stages))


class UnrolledRidge(nn.Module):
    """D(y) = x_K of the module docstring."""

    def __init__(self, prox: ConvexRidgeDenoiser, ridges: list[ConvexRidgeDenoiser]):
        super().__init__()
        self.prox = prox
        self.stages = nn.ModuleList(RidgeStage(ridge) for ridge in ridges)
        self.steps = StepLogits(len(ridges))

    def refine(self, x: Tensor, y: Tensor, sigma: Tensor, channels: int = 1) -> Tensor:
        """The K stages from x = x_0 with input y ([N·channels, 1, H, W] components, σ [N])."""
        for stage, t in zip(self.stages, torch.sigmoid(self.steps.theta)):
            strength, scale = (v.detach() for v in stage.ridge.component_parameters(sigma, channels))
            x = stage(x, y, strength, scale, t)
        return x

    def forward(self, x: Tensor, sigma=25 / 255) -> Tensor:
        x0 = self.prox(x, sigma)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        components = (v.reshape(-1, 1, *x.shape[-2:]) for v in (x0, x))
        return self.refine(*components, sigma, x.shape[1]).reshape_as(x)

    @property
    def certificate(self) -> Certificate:
        accuracy = self.prox.accuracy
        return Certificate(lipschitz=1.0, alpha=None, guaranteed=accuracy.accurate, tolerance=accuracy.tolerance,
                           method=f"exact convex-ridge prox then {len(self.stages)} explicit stages with "
                                  "τ_k(2 + L_k) < 2 (module docstring): non-expansive, not averaged")


def copy_prox(model: UnrolledRidge, perturb: float) -> None:
    """Every R_k := R_0, its filters plus ``perturb``·RMS(w_c)·N(0, 1) per filter, its slope logits plus
    ``perturb``·N(0, 1) (seeded per stage)."""
    with torch.no_grad():
        for k, stage in enumerate(model.stages, start=1):
            stage.weight.copy_(model.prox.weight)
            stage.theta.copy_(model.prox.theta)
            if perturb:
                generator = torch.Generator().manual_seed(k)
                rms = stage.weight.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
                stage.weight.add_(perturb * rms * torch.randn(stage.weight.shape, generator=generator))
                stage.theta.add_(perturb * torch.randn(stage.theta.shape, generator=generator))


def unrolled_backward(model: UnrolledRidge, noisy: Tensor, clean: Tensor, sigma: float, freeze_prox: bool = False,
                      cg_iters: int = 30, cg_tol: float = 1e-2) -> tuple[float, int]:
    """Accumulate the gradient of MSE(D(noisy), clean): autograd through the stages, then (unless ``freeze_prox``)
    implicit differentiation through x_0 = P(noisy); returns the MSE and P's solver iterations."""
    prox = model.prox
    sigma = torch.full((noisy.shape[0],), sigma, dtype=noisy.dtype)
    strength, scale = prox.component_parameters(sigma, noisy.shape[1])
    y, clean = prox.to_components(noisy), prox.to_components(clean)
    x0, _, iterations = prox.solve(y, strength.detach(), scale.detach())
    start = x0.clone().requires_grad_(not freeze_prox)
    loss = (model.refine(start, y, sigma, noisy.shape[1]) - clean).pow(2).mean()
    loss.backward()
    if not freeze_prox:
        backward_through_prox(prox, x0, start.grad, strength, scale, cg_iters, cg_tol)
    return float(loss.detach()), iterations


def continue_from(model: UnrolledRidge, tensors: dict, meta: dict, path: str) -> dict:
    """Load every trained tensor of an unrolled state (R_0, the stages, the step logits) into ``model``, which must
    have its shapes; returns the state's metadata."""
    stored = {name: value for name, value in model_tensors(tensors).items() if name.split(".")[-1] in TRAINED}
    shapes = {name: tuple(value.shape) for name, value in stored.items()}
    needed = {name: tuple(value.shape) for name, value in model.state_dict().items() if name.split(".")[-1] in TRAINED}
    if shapes != needed:
        raise ValueError(f"{path} holds {shapes}; this model needs {needed}: give it the --stages, --channels and "
                         "--kernel that state was trained with")
    model.load_state_dict(stored, strict=False)
    return meta


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, state="convex-ridge-unrolled.ckpt", val_images=40, minutes=40, validate_minutes=20, lr=1e-3)
    parser.add_argument("--channels", type=int, default=64, help="filters of every R_k")
    parser.add_argument("--kernel", type=int, default=13, help="filter size of every R_k")
    parser.add_argument("--stages", type=int, default=2, help="K, the explicit refinement stages")
    parser.add_argument("--perturb", type=float, default=0.0, help="relative noise on the stages' copies of R_0")
    parser.add_argument("--freeze-prox", action="store_true", help="keep R_0 fixed (no implicit backward)")
    parser.add_argument("--init", help="a convex_ridge_prox.py state to start R_0, and every R_k, from; or a state of this "
                                       "script with the same stages, filters and kernel, continued as it is (fresh "
                                       "optimiser: another --lr)")
    args = parser.parse_args(argv)
    prox, *ridges = (screen_denoiser(args, filters=args.channels, kernel=args.kernel, seed=seed)
                     for seed in range(args.stages + 1))
    model = UnrolledRidge(prox, ridges)
    copy_prox(model, args.perturb)

    def initialise(model: UnrolledRidge, path: str) -> dict:
        tensors, meta = load_checkpoint(path)
        if any(name.startswith("stages.") for name in model_tensors(tensors)):
            return continue_from(model, tensors, meta, path)
        meta = init_from(model.prox, path)
        copy_prox(model, args.perturb)
        return meta

    run_screen(args, model, functools.partial(unrolled_backward, freeze_prox=args.freeze_prox), initialise)


if __name__ == "__main__":
    main()
