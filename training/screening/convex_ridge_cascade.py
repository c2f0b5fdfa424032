"""Screen for issue #22: two exact convex-ridge proxes in a row, D = D₂∘D₁, trained jointly through both minimisers.

Each D_k is the prox of a convex ridge regulariser R_k (:class:`pnp_stable.denoisers.ConvexRidgeDenoiser`), firmly
non-expansive (½-averaged) for any weights, so D₂∘D₁ is ⅔-averaged (Combettes–Yamada: κ = 1 + 1, α = κ/(1 + κ)) and
its computed output is within ε₁ + ε₂ of the exact one (‖D₂(x̃₁) − D₂(D₁y)‖ ≤ ‖x̃₁ − D₁y‖ by non-expansiveness). The
composition is not a prox: R₂ sees D₁'s output, not the noisy image, and can learn what D₁ leaves behind, at twice
the solves. Gradients by implicit differentiation through both: with H_k = I + ∇²R_k at x_k = D_k(x_{k−1}),
∂loss/∂θ_k = −⟨v_k, ∂_θ ∇R_k(x_k)⟩ and ∂loss/∂x_{k−1} = v_k, v_k = H_k⁻¹ ∂loss/∂x_k (H_k symmetric).

Same protocol as ``convex_ridge_prox.py`` (one thread, Train400 less its last ``--holdout``, σ = ``--sigma``,
validation PSNR on the first ``--val-images`` held-out images, resumable ``--state``). ``--init`` starts D₁ from a
state of that screen; D₂ starts near the identity (random filters, slopes softplus(``--stage2-theta``)).

    OMP_NUM_THREADS=1 .venv/bin/python training/screening/convex_ridge_cascade.py --minutes 40 --kernel 13 \\
        --init training/screening/convex-ridge-prox-k13.ckpt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from convex_ridge_prox import add_arguments, init_from, run_screen, screen_denoiser  # noqa: E402
from pnp_stable.denoisers import ConvexRidgeDenoiser  # noqa: E402
from pnp_stable.training.convex_ridge import backward_through_prox  # noqa: E402


class ProxCascade(nn.Module):
    """D(y) = D_m(…D_1(y)): each stage the exact prox of its own convex ridge regulariser at its single σ."""

    def __init__(self, stages: list[ConvexRidgeDenoiser]):
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor, sigma=25 / 255) -> Tensor:
        for stage in self.stages:
            x = stage(x, sigma)
        return x


def cascade_backward(cascade: ProxCascade, noisy: Tensor, clean: Tensor, sigma: float, cg_iters: int = 30,
                     cg_tol: float = 1e-2) -> tuple[float, list[int]]:
    """Accumulate the gradient of MSE(D(noisy), clean) in every stage's parameters (module docstring); returns the
    MSE and each stage's solver iterations."""
    sigma = torch.full((noisy.shape[0],), sigma, dtype=noisy.dtype)
    outputs, parameters, iterations = [], [], []
    x = noisy
    for stage in cascade.stages:
        strength, scale = stage.component_parameters(sigma, 1)
        x, _, used = stage.solve(x, strength.detach(), scale.detach())
        outputs.append(x)
        parameters.append((strength, scale))
        iterations.append(used)
    grad = 2 * (x - clean) / x.numel()
    for stage, x, (strength, scale) in reversed(list(zip(cascade.stages, outputs, parameters))):
        grad = backward_through_prox(stage, x, grad, strength, scale, cg_iters, cg_tol)
    return float((outputs[-1] - clean).pow(2).mean()), iterations


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, state="convex-ridge-cascade.ckpt", val_images=40, minutes=40, validate_minutes=20, lr=1e-3)
    parser.add_argument("--channels", type=int, default=64, help="filters of D₁")
    parser.add_argument("--kernel", type=int, default=13, help="filter size of D₁")
    parser.add_argument("--stage2-channels", type=int, default=64)
    parser.add_argument("--stage2-kernel", type=int, default=13)
    parser.add_argument("--stage2-theta", type=float, default=-5.0, help="D₂'s initial slopes, softplus of this")
    parser.add_argument("--init", help="a convex_ridge_prox.py state to start D₁ from (fresh optimiser)")
    args = parser.parse_args(argv)
    stages = [screen_denoiser(args, filters=channels, kernel=kernel, seed=seed)
              for seed, (channels, kernel) in enumerate([(args.channels, args.kernel),
                                                         (args.stage2_channels, args.stage2_kernel)])]
    with torch.no_grad():
        stages[1].theta.fill_(args.stage2_theta)
    run_screen(args, ProxCascade(stages), cascade_backward, lambda cascade, path: init_from(cascade.stages[0], path))


if __name__ == "__main__":
    main()
