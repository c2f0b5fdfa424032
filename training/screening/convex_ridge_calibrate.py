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

Colour (``--colour opponent``): R and the knots of an exported gray model (``--from-denoiser``), a λ_k, μ_k per
opponent component learned the same way on colour data (CBSD432 less its last ``--holdout``), each knot starting from
the gray model's values (the chrominances' λ times ``--chroma-start``), validated on centre crops (``--crop``):

    OMP_NUM_THREADS=1 .venv/bin/python training/screening/convex_ridge_calibrate.py --colour opponent \\
        --from-denoiser pnp_stable/denoisers/weights/convex-ridge-gray.safetensors \\
        --out training/screening/convex-ridge-opponent.safetensors --val-images 8 --crop 160
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
from pnp_stable.denoisers import ConvexRidgeDenoiser, load_denoiser_file, save_denoiser  # noqa: E402
from pnp_stable.training.checkpoint import load_checkpoint, model_tensors  # noqa: E402
from pnp_stable.training.convex_ridge import implicit_backward  # noqa: E402
from pnp_stable.training.data import PatchSampler, load_folder, split_holdout  # noqa: E402
from pnp_stable.training.trainer import validation_psnr  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--state", help="a convex_ridge_prox.py state")
    start.add_argument("--from-denoiser", help="an exported gray ConvexRidgeDenoiser: its R, knots and λ, μ")
    parser.add_argument("--out", required=True, help="the denoiser file to write (.safetensors)")
    parser.add_argument("--colour", choices=("rgb", "opponent"), default="rgb",
                        help="'opponent': a colour model (needs --from-denoiser), one λ, μ per opponent component")
    parser.add_argument("--chroma-start", type=float, default=2.0, help="opponent: the chrominances' first λ, "
                        "relative to the gray model's")
    parser.add_argument("--crop", type=int, default=0, help="validate on centre crops of this size (0: whole images)")
    parser.add_argument("--data", help="training images (default: Train400, or CBSD432 for --colour opponent)")
    parser.add_argument("--holdout", type=int, default=40)
    parser.add_argument("--val-images", type=int, default=4)
    parser.add_argument("--knots", type=float, nargs="+", default=[1, 2.55, 5.1, 7.65, 10, 15, 25, 35, 50],
                        help="noise levels (0–255 scale) at which λ and μ are learned")
    parser.add_argument("--steps", type=int, default=40, help="Adam steps per knot")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args(argv)
    if args.colour == "opponent" and not args.from_denoiser:
        parser.error("--colour opponent starts from an exported gray model: give --from-denoiser")
    channels = 3 if args.colour == "opponent" else 1
    data = args.data or str(Path(__file__).resolve().parents[3] / "shared/data/train" /
                            ("color/CBSD432" if channels == 3 else "gray/Train400"))
    if args.state:
        tensors, meta = load_checkpoint(args.state)
        screen = meta["config"]
        knots = sorted(k / 255 for k in args.knots)
        trained = {name: value for name, value in model_tensors(tensors).items() if name in ("weight", "theta")}
        model = ConvexRidgeDenoiser(filters=screen["channels"], kernel=screen["kernel"], sigma_knots=knots,
                                    boundary="circular", tolerance=1e-4)
        model.load_state_dict(trained, strict=False)
        trained_sigma = screen["sigma"] / 255
        provenance = {"screen_state": str(args.state), "screen_step": str(meta["step"]),
                      "screen_train_seconds": str(round(meta["history"]["train_seconds"]))}
    else:
        gray = load_denoiser_file(args.from_denoiser)
        if not isinstance(gray, ConvexRidgeDenoiser) or gray.channels != 1:
            raise ValueError(f"{args.from_denoiser} is not a gray ConvexRidgeDenoiser")
        model = ConvexRidgeDenoiser(**{**gray.config, "boundary": "circular", "tolerance": 1e-4}).float()
        model.load_state_dict(gray.state_dict())
        model = model.for_channels(channels, args.colour)
        knots, trained_sigma = model.sigma_knots.tolist(), None
        if args.colour == "opponent":
            with torch.no_grad():
                model.log_strength[1:] += math.log(args.chroma_start)
        provenance = {"gray_model": str(args.from_denoiser)}
    model.weight.requires_grad_(False)
    model.theta.requires_grad_(False)
    train, held_out = split_holdout(load_folder(data, channels), args.holdout)
    held_out = [_centre(image, args.crop) for image in held_out[: args.val_images]]
    report = []
    for index, sigma in enumerate(knots):
        start = time.time()
        if trained_sigma is not None:  # a screen state: start from its λ = μ = 1 at σ_R, else from the previous knot
            with torch.no_grad():
                if math.isclose(sigma, trained_sigma, rel_tol=1e-6):
                    model.log_strength[index], model.log_scale[index] = 0.0, 0.0
                elif index == 0:
                    model.log_strength[index], model.log_scale[index] = 2 * math.log(sigma / trained_sigma), 0.0
                else:
                    model.log_strength[index] = model.log_strength[index - 1] + 2 * math.log(sigma / knots[index - 1])
                    model.log_scale[index] = model.log_scale[index - 1]
        initial = (model.log_strength[..., index].clone(), model.log_scale[..., index].clone())
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
                model.log_strength[..., index], model.log_scale[..., index] = initial
        entry = {"sigma_255": round(sigma * 255, 4), "psnr_start": round(before, 3), "psnr_learned": round(after, 3),
                 "kept": "learned" if after >= before else "start",
                 "strength": _rounded(model.log_strength[..., index].exp()),
                 "scale": _rounded(model.log_scale[..., index].exp()), "seconds": round(time.time() - start)}
        report.append(entry)
        print(json.dumps(entry), flush=True)
    exported = ConvexRidgeDenoiser(**{**model.config, "boundary": "reflect", "tolerance": 1e-5})
    exported.load_state_dict(model.state_dict())
    save_denoiser(exported, args.out, extra={"calibration": json.dumps(report), **provenance})
    print(json.dumps({"weights": args.out, "certificate": str(exported.certificate)}), flush=True)


def _centre(image: torch.Tensor, size: int) -> torch.Tensor:
    """The centre size × size crop of a [C, H, W] image (the image itself for size 0)."""
    if not size:
        return image
    top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
    return image[..., top : top + size, left : left + size]


def _rounded(values: torch.Tensor):
    """A float (one component) or a list of floats (one per opponent component), 5 digits."""
    values = [round(float(v), 5) for v in values.detach().flatten()]
    return values[0] if len(values) == 1 else values


if __name__ == "__main__":
    main()
