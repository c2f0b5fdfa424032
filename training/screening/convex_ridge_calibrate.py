"""Calibrate the convex-ridge prox's noise-level family and export it as a package denoiser (issue #22).

The screen (``convex_ridge_prox.py``) trains R at one σ (λ = μ = 1 there). D_σ = prox of (λ(σ)/μ(σ))R(μ(σ)·) is
firmly non-expansive for every λ, μ > 0, so a family over σ needs only those two scalars at each knot: this script
learns them with R frozen, knot by knot, through the exact minimiser (:func:`implicit_backward`), each knot starting
from the previous one's values with λ scaled by (σ/σ_previous)² (the first from λ = (σ/σ_R)², μ = 1; the screen's σ_R
from its trained λ = μ = 1), and keeps the start when the held-out PSNR at that knot (first ``--val-images`` held-out
images) does not improve: small-batch steps can overshoot an optimum already reached. It then writes a
:class:`ConvexRidgeDenoiser` file (reflect boundary) with ``save_denoiser``. One thread:

    OMP_NUM_THREADS=1 .venv/bin/python training/screening/convex_ridge_calibrate.py \\
        --state training/screening/convex-ridge-prox-k13.ckpt --out training/screening/convex-ridge.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pnp_stable.denoisers import ConvexRidgeDenoiser, save_denoiser  # noqa: E402
from pnp_stable.training.checkpoint import load_checkpoint, model_tensors  # noqa: E402
from pnp_stable.training.convex_ridge import implicit_backward  # noqa: E402
from pnp_stable.training.data import PatchSampler, load_folder, split_holdout  # noqa: E402
from pnp_stable.training.trainer import validation_psnr  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", required=True, help="a convex_ridge_prox.py state")
    parser.add_argument("--out", required=True, help="the denoiser file to write (.safetensors)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared/data/train/gray/Train400"))
    parser.add_argument("--holdout", type=int, default=40)
    parser.add_argument("--val-images", type=int, default=4)
    parser.add_argument("--knots", type=float, nargs="+", default=[1, 2.55, 5.1, 7.65, 10, 15, 25, 35, 50],
                        help="noise levels (0–255 scale) at which λ and μ are learned")
    parser.add_argument("--steps", type=int, default=40, help="Adam steps per knot")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args(argv)
    tensors, meta = load_checkpoint(args.state)
    screen = meta["config"]
    knots = sorted(k / 255 for k in args.knots)
    trained = {name: value for name, value in model_tensors(tensors).items() if name in ("weight", "theta")}
    model = ConvexRidgeDenoiser(filters=screen["channels"], kernel=screen["kernel"], sigma_knots=knots,
                                boundary="circular", tolerance=1e-4)
    model.load_state_dict(trained, strict=False)
    model.weight.requires_grad_(False)
    model.theta.requires_grad_(False)
    trained_sigma = screen["sigma"] / 255
    train, held_out = split_holdout(load_folder(args.data, 1), args.holdout)
    held_out = held_out[: args.val_images]
    report = []
    for index, sigma in enumerate(knots):
        start = time.time()
        with torch.no_grad():
            if math.isclose(sigma, trained_sigma, rel_tol=1e-6):
                model.log_strength[index], model.log_scale[index] = 0.0, 0.0
            elif index == 0:
                model.log_strength[index], model.log_scale[index] = 2 * math.log(sigma / trained_sigma), 0.0
            else:
                model.log_strength[index] = model.log_strength[index - 1] + 2 * math.log(sigma / knots[index - 1])
                model.log_scale[index] = model.log_scale[index - 1]
        initial = (model.log_strength[index].item(), model.log_scale[index].item())
        before = validation_psnr(model, held_out, sigma)
        sampler = PatchSampler(train, args.patch, args.batch, sigma, seed=index)
        optimizer = torch.optim.Adam([model.log_strength, model.log_scale], lr=args.lr)
        for _ in range(args.steps):
            noisy, clean, _ = next(sampler)
            optimizer.zero_grad()
            implicit_backward(model, noisy, clean, sigma)
            optimizer.step()
        after = validation_psnr(model, held_out, sigma)
        if after < before:
            with torch.no_grad():
                model.log_strength[index], model.log_scale[index] = initial
        entry = {"sigma_255": round(sigma * 255, 4), "psnr_start": round(before, 3), "psnr_learned": round(after, 3),
                 "kept": "learned" if after >= before else "start",
                 "strength": round(math.exp(model.log_strength[index].item()), 5),
                 "scale": round(math.exp(model.log_scale[index].item()), 5), "seconds": round(time.time() - start)}
        report.append(entry)
        print(json.dumps(entry), flush=True)
    exported = ConvexRidgeDenoiser(filters=screen["channels"], kernel=screen["kernel"], sigma_knots=knots,
                                   boundary="reflect", tolerance=1e-5)
    exported.load_state_dict(model.state_dict())
    save_denoiser(exported, args.out, extra={"calibration": json.dumps(report), "screen_state": str(args.state),
                                             "screen_step": str(meta["step"]),
                                             "screen_train_seconds": str(round(meta["history"]["train_seconds"]))})
    print(json.dumps({"weights": args.out, "certificate": str(exported.certificate)}), flush=True)


if __name__ == "__main__":
    main()
