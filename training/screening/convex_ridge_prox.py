"""Screen for issue #22: the exact proximal map of a learned convex ridge regulariser as the certified denoiser.

    R(x) = Σ_c Σ_p ψ_c((w_c ⊛ x)_p),    D(y) = argmin_x F(x),  F(x) = ½‖x − y‖² + R(x),

with w_c zero-mean k×k filters acting by circular convolution and ψ_c even and convex: ψ_c' = σ_c with
σ_c(t) = Σ_j s_cj clamp(t, −τ_j, τ_j), s_cj ≥ 0 (a sum of Huber penalties; τ fixed, the last one ∞: a quadratic term).
D is the proximal map of a convex function, hence firmly non-expansive (½-averaged) for every value of the weights:
no norm bound enters its certificate. F is 1-strongly convex, so every iterate x of the inner solver satisfies
‖x − D(y)‖ ≤ ‖∇F(x)‖: the inner accuracy is certified by one gradient evaluation. The solver is Nesterov's method
for a 1-strongly convex, (1 + L_R)-smooth F: ∇²R = Σ_c W_cᵀ diag(σ_c') W_c ⪯ Σ_c S_c W_cᵀW_c with S_c = Σ_j s_cj, whose
norm is computed exactly in Fourier, L_R = max_ω Σ_c S_c |ŵ_c(ω)|².

Training differentiates the exact minimiser implicitly: ∇F(x*) = 0 gives dx*/dθ = −(I + ∇²R(x*))⁻¹ ∂_θ∇R(x*), solved
by conjugate gradients (∇²R(x*) = Wᵀ diag(σ'(Wx*)) W ⪰ 0). One thread, Train400 with its last ``--holdout`` images
held out; validation PSNR at σ on the first ``--val-images`` of those (the noise of :func:`validation_psnr`, so the
numbers compare with ``benchmarks/architectures.py``'s). Resumable: the state (weights, Adam, sampler, step, curve)
is written to ``--state`` every ``--validate-minutes`` and at the end; rerun the same command to continue.

    OMP_NUM_THREADS=1 .venv/bin/python training/screening/convex_ridge_prox.py --minutes 55
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pnp_stable.training.checkpoint import load_checkpoint, model_tensors, sampler_state, save_checkpoint  # noqa: E402
from pnp_stable.training.data import PatchSampler, load_folder, split_holdout  # noqa: E402
from pnp_stable.training.trainer import validation_psnr  # noqa: E402

HUBER_KNOTS = [0.005 * 2**j for j in range(6)] + [math.inf]
#: Options that change how a run is executed or validated, not what it trains: a resume may change them (``init``
#: only acts on a fresh state, and the history records it).
EXECUTION_ONLY = ("minutes", "validate_minutes", "state", "data", "val_images", "init")


class ConvexRidgeProx(torch.nn.Module):
    """D(y) = prox_R(y) for the convex ridge regulariser R of the module docstring; ``forward`` solves to an RMS
    certified error ≤ ``tolerance`` per image and keeps the largest certified bound in ``certified_error``."""

    def __init__(self, channels: int = 64, kernel: int = 9, tolerance: float = 1e-4, seed: int = 0):
        super().__init__()
        w = torch.randn(channels, 1, kernel, kernel, generator=torch.Generator().manual_seed(seed))
        self.weight = torch.nn.Parameter(w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.3)
        self.theta = torch.nn.Parameter(torch.full((channels, len(HUBER_KNOTS)), -3.0))
        self.tolerance = tolerance
        self.certified_error = 0.0

    def filters(self) -> torch.Tensor:
        return self.weight - self.weight.mean(dim=(2, 3), keepdim=True)  # zero mean: constants are not penalised

    def slopes(self) -> torch.Tensor:
        return F.softplus(self.theta)

    def spectrum(self, w: torch.Tensor, shape) -> torch.Tensor:
        """rfft2 of the filters centred on an H×W grid: W is circular convolution, Wᵀ its conjugate."""
        (height, width), k = shape, w.shape[-1]
        padded = F.pad(w[:, 0], (0, width - k, 0, height - k))
        return torch.fft.rfft2(torch.roll(padded, (-(k // 2), -(k // 2)), (-2, -1)))

    @staticmethod
    def apply_w(x: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x) * spec, s=x.shape[-2:])

    @staticmethod
    def apply_wt(t: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2((torch.fft.rfft2(t) * spec.conj()).sum(1, keepdim=True), s=t.shape[-2:])

    def activation(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """σ_c(t) = Σ_j s_cj clamp(t, −τ_j, τ_j)."""
        return sum(s[None, :, j, None, None] * t.clamp(-tau, tau) for j, tau in enumerate(HUBER_KNOTS))

    def grad_r(self, x: torch.Tensor, spec: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """∇R(x) = Wᵀσ(Wx), with ``spec`` = :meth:`spectrum` of the filters on x's grid and ``s`` the slopes."""
        return self.apply_wt(self.activation(self.apply_w(x, spec), s), spec)

    def curvature(self, x: torch.Tensor, spec: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """σ'(Wx) per channel and pixel, the diagonal of ∇²R(x) = Wᵀ diag(σ') W."""
        magnitude = self.apply_w(x, spec).abs()
        return sum(s[None, :, j, None, None] * (magnitude < tau).to(magnitude) for j, tau in enumerate(HUBER_KNOTS))

    def hessian_vector(self, d: torch.Tensor, v: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        return self.apply_wt(d * self.apply_w(v, spec), spec)

    @staticmethod
    def smoothness(spec: torch.Tensor, s: torch.Tensor) -> float:
        """L_R = ‖Σ_c S_c W_cᵀW_c‖ ≥ ‖∇²R‖ on this grid (S_c = sup σ_c' = Σ_j s_cj): max_ω Σ_c S_c |ŵ_c(ω)|²."""
        return float((spec.abs().pow(2) * s.sum(1)[:, None, None]).sum(0).max())

    @torch.no_grad()
    def solve(self, y: torch.Tensor, max_iter: int = 5000) -> tuple[torch.Tensor, float, int]:
        """Nesterov's method for the 1-strongly convex F; returns x, the certified bound max_b RMS(∇F(x_b)) ≥
        RMS(x_b − D(y_b)), and the iterations used."""
        spec, s = self.spectrum(self.filters(), y.shape[-2:]), self.slopes()
        lipschitz = 1 + self.smoothness(spec, s)
        momentum = (1 - math.sqrt(1 / lipschitz)) / (1 + math.sqrt(1 / lipschitz))
        x, z = y.clone(), y.clone()
        for iteration in range(1, max_iter + 1):
            x_next = z - (z - y + self.grad_r(z, spec, s)) / lipschitz
            z = x_next + momentum * (x_next - x)
            x = x_next
            if (iteration % 10 == 0 or iteration == max_iter) and (bound := self.error_bound(x, y, spec, s)) <= self.tolerance:
                break
        return x, bound, iteration

    def error_bound(self, x, y, spec, s) -> float:
        gradient = x - y + self.grad_r(x, spec, s)
        return float((gradient.flatten(1).norm(dim=1) / math.sqrt(y[0].numel())).max())

    def forward(self, y: torch.Tensor, sigma=None) -> torch.Tensor:
        x, error, _ = self.solve(y)
        self.certified_error = max(self.certified_error, error)
        return x


def implicit_step(model: ConvexRidgeProx, noisy: torch.Tensor, clean: torch.Tensor, cg_iters: int = 30) -> tuple[float, int]:
    """Accumulates the exact gradient of MSE(D(y), x) in the weights (up to the CG tolerance); returns the MSE and the
    inner iterations."""
    x, _, iterations = model.solve(noisy)
    loss_grad = 2 * (x - clean) / x.numel()
    spec = model.spectrum(model.filters().detach(), x.shape[-2:])
    d = model.curvature(x, spec, model.slopes().detach())
    v, r = torch.zeros_like(loss_grad), loss_grad.clone()
    p, rs = r.clone(), (r * r).sum()
    for _ in range(cg_iters):  # (I + ∇²R(x*)) v = ∂loss/∂x*
        a_p = p + model.hessian_vector(d, p, spec)
        step = rs / (p * a_p).sum()
        v, r = v + step * p, r - step * a_p
        rs_next = (r * r).sum()
        if rs_next.sqrt() < 1e-2 * loss_grad.norm():
            break
        p, rs = r + rs_next / rs * p, rs_next
    (-(v * model.grad_r(x, model.spectrum(model.filters(), x.shape[-2:]), model.slopes())).sum()).backward()
    return float((x - clean).pow(2).mean()), iterations


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared/data/train/gray/Train400"))
    parser.add_argument("--holdout", type=int, default=40)
    parser.add_argument("--val-images", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=55, help="training minutes of this run")
    parser.add_argument("--validate-minutes", type=float, default=10)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--kernel", type=int, default=9)
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam lr of the filters; the activations' is 5×")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=40)
    parser.add_argument("--sigma", type=float, default=25)
    parser.add_argument("--init", help="start from the weights of another state, its filters zero-padded to --kernel "
                        "(the same map at step 0); fresh optimiser")
    parser.add_argument("--state", default=str(Path(__file__).resolve().parent / "convex-ridge-prox.ckpt"))
    args = parser.parse_args(argv)
    train, held_out = split_holdout(load_folder(args.data, 1), args.holdout)
    held_out = held_out[: args.val_images]
    sampler = PatchSampler(train, args.patch, args.batch, args.sigma / 255, seed=0)
    model = ConvexRidgeProx(args.channels, args.kernel)
    optimizer = torch.optim.Adam([{"params": [model.weight], "lr": args.lr}, {"params": [model.theta], "lr": 5 * args.lr}])
    schedule = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    config = {key: value for key, value in vars(args).items() if key not in EXECUTION_ONLY}
    step, history = 0, {"curve": [], "train_seconds": 0.0}
    if Path(args.state).is_file():
        tensors, meta = load_checkpoint(args.state)
        stored = {key: value for key, value in meta["config"].items() if key not in EXECUTION_ONLY}
        if stored != config:
            raise ValueError(f"{args.state} was written with other options {stored}; use them or another --state")
        model.load_state_dict(model_tensors(tensors))
        optimizer.load_state_dict(meta["optimizer_state"])
        sampler.generator.set_state(sampler_state(tensors, args.state, rank=0, world=1))
        step, history = meta["step"], meta["history"]
    elif args.init:
        tensors, meta = load_checkpoint(args.init)
        weight, theta = (model_tensors(tensors)[name] for name in ("weight", "theta"))
        pad = (args.kernel - weight.shape[-1]) // 2
        if pad < 0 or weight.shape[-1] + 2 * pad != args.kernel or theta.shape != model.theta.shape:
            raise ValueError(f"{args.init} holds {tuple(weight.shape)} filters; --kernel must be {weight.shape[-1]} "
                             f"plus an even number ≥ 0 and --channels {weight.shape[0]}")
        centred = weight - weight.mean(dim=(2, 3), keepdim=True)  # what filters() made of it: padding keeps it
        model.load_state_dict({"weight": F.pad(centred, (pad,) * 4), "theta": theta})
        history["init"] = {"state": args.init, "step": meta["step"], "train_seconds": meta["history"]["train_seconds"]}

    def checkpoint(seconds: float) -> None:
        val = validation_psnr(model, held_out, args.sigma / 255)
        history["curve"].append([step, val, len(held_out)])  # [step, dB, validation images]
        history["train_seconds"] += seconds
        print(json.dumps({"step": step, "val_psnr": round(val, 3), "certified_inner_error": model.certified_error,
                          "train_seconds": round(history["train_seconds"])}), flush=True)
        save_checkpoint(args.state, model, optimizer, schedule, sampler.generator.get_state(), step, config, history)

    start = last = time.time()
    while time.time() - start < args.minutes * 60:
        noisy, clean, _ = next(sampler)
        optimizer.zero_grad()
        loss, iterations = implicit_step(model, noisy, clean)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(json.dumps({"step": step, "train_psnr": round(-10 * math.log10(loss), 3), "inner_iterations": iterations}),
                  flush=True)
        if time.time() - last > args.validate_minutes * 60:
            checkpoint(time.time() - last)
            last = time.time()
    checkpoint(time.time() - last)


if __name__ == "__main__":
    main()
