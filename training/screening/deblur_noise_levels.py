"""Which network deblurs best at which noise level: ``ps.deblur`` with its tuned defaults on held-out crops.

``--crops cbsd432``: the top-left ``--size`` square of the first ``--images`` of CBSD432's last 40 images (outside
every test set, and held out by the SLL networks' training, ``--holdout 40``; ``averaged-color`` and its low-noise
stage were trained on all of CBSD432, which can only favour them). ``--crops validation``: centre crops of
``benchmarks/deblur.py``'s validation images (CBSD68 outside CBSD10, spread evenly: seen by no denoiser in training
and by no colour test). ``--crops train400`` (gray): the top-left ``--size`` square of the first ``--images`` of
Train400's last 40 images (held out by the SLL networks' training, as above). Each crop is blurred circularly by each ``--kernel`` with noise seeded by the crop's index;
every solver runs with ``ps.deblur``'s tuned defaults (σ_d = strength·σ_n, step, weight, iteration budget), only the
denoiser changes. Prints the mean PSNR per kernel, noise level, solver and model, and writes them to ``--out``
(JSON).

    OMP_NUM_THREADS=2 .venv/bin/python training/screening/deblur_noise_levels.py --threads 2 \\
        --noises 2.55 5.1 7.65 10 20 30 --solvers fb drs \\
        --models averaged-color averaged-lownoise-color averaged-sll-color averaged-sll-highnoise-color
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import pnp_stable as ps  # noqa: E402
from _images import held_out_color_images, load_crops  # noqa: E402
from pnp_stable.training.data import load_folder, split_holdout  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--crops", choices=["cbsd432", "validation", "train400"], default="cbsd432")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--kernel", nargs="+", default=["gaussian:1.6"])
    parser.add_argument("--noises", type=float, nargs="+", default=[2.55, 10, 30], help="σ_n ×255")
    parser.add_argument("--solvers", nargs="+", default=["fb", "drs"])
    parser.add_argument("--models", nargs="+", default=["averaged-color", "averaged-sll-highnoise-color"])
    parser.add_argument("--strength", type=float, default=None, help="σ_d = STRENGTH·σ_n (default: the solver's tuned one)")
    parser.add_argument("--weight", type=float, default=None, help="denoiser weight ω (default: the solver's tuned one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.crops in ("cbsd432", "train400"):
        folder, channels = {"cbsd432": ("color/CBSD432", 3), "train400": ("gray/Train400", 1)}[args.crops]
        held_out = split_holdout(load_folder(args.data / "train" / folder, channels), 40)[1][: args.images]
        crops = [image[:, : args.size, : args.size].float()[None] / 255 for image in held_out]
    else:
        crops = load_crops(held_out_color_images(args.data, args.images), args.size, gray=False)
    results = {}
    settings = "".join(f" {name}={value:g}" for name, value in (("strength", args.strength), ("weight", args.weight))
                       if value is not None)  # in every key: a screen off the tuned defaults is never read as one
    for spec in args.kernel:
        kernel = ps.kernel_from_spec(spec)
        for noise in args.noises:
            for solver in args.solvers:
                for model in args.models:
                    psnrs = []
                    for index, clean in enumerate(crops):
                        physics = ps.blur(kernel, img_size=tuple(clean.shape[1:]), noise_sigma=noise / 255,
                                          rng=torch.Generator().manual_seed(index))
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # outside a model's trained levels is what is measured
                            result = ps.deblur(physics(clean), kernel, noise / 255, solver=solver, denoiser=model,
                                               boundary="circular", denoiser_weight=args.weight,
                                               denoiser_sigma=None if args.strength is None else args.strength * noise / 255)
                        psnrs.append(float(ps.psnr(result.estimate, clean)[0]))
                    key = f"{spec} {noise:g} {solver} {model}" + settings
                    results[key] = sum(psnrs) / len(psnrs)
                    print(f"{spec}  σ_n = {noise:g}/255  {solver:<4} {model:<30} {results[key]:.2f} dB", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
