"""Tuning of the defaults (denoiser strength, step) of every solver on validation images.

Validation images are training images (Train400 for gray, CBSD432 for colour), so disjoint from every
test set (BSD68, CBSD68/CBSD10, Set12, Set3C); centre crops, blurred with motion kernels that are not
the Levin test kernels, at the deblurring benchmark's noise levels. For each solver: a coarse search
over σ_d = strength·σ_n at the theory's step, step alternatives at the best strength, then a
refinement of the strength (×√2 either side) at the best step, repeated while the best moves. The chosen setting maximises the mean PSNR over all images, both
models and all noise levels; ``pnp_stable/solvers/defaults.py`` copies it (a test compares the two).
Writes ``benchmarks/results/tuning.md``.

    .venv/bin/python benchmarks/tune.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _images import load_crops, spread  # noqa: E402
from _report import RESULTS, ROOT, header  # noqa: E402

import pnp_stable as ps  # noqa: E402
from pnp_stable.solvers.defaults import Tuned  # noqa: E402
from pnp_stable.training import list_images  # noqa: E402

VALIDATION = {"averaged-gray": ("train/gray/Train400", 1), "averaged-color": ("train/color/CBSD432", 3)}
STEP_ALTERNATIVES = {"fb": (0.5, 1.5, 1.9), "hqs": (0.5, 2.0, 4.0), "drs": (0.5, 2.0, 4.0), "admm": (0.5, 2.0, 4.0)}


def validation_problems(data: Path, model: str, count: int, size: int, noises: list[float], kernel_seeds: list[int]):
    """(clean batch, kernel, noise, measurement) for each noise level; kernel seed cycles with the noise."""
    folder, channels = VALIDATION[model]
    paths = list_images(data / folder)
    picks = spread(paths, count)
    clean = torch.cat(load_crops(picks, size, gray=channels == 1))
    problems = []
    for index, noise in enumerate(noises):
        kernel = ps.motion_kernel(kernel_seeds[index % len(kernel_seeds)], 19)
        op = ps.blur(kernel, img_size=tuple(clean.shape[1:]), noise_sigma=noise, rng=torch.Generator().manual_seed(index))
        problems.append((clean, kernel, noise, op(clean)))
    return [p.name for p in picks], problems


def evaluate(models, problems, solver: str, strength: float, step_scale: float, max_iter: int) -> dict:
    psnrs, iterations, violations, statuses = [], [], 0, set()
    for model, model_problems in zip(models, problems):
        for clean, kernel, noise, y in model_problems:
            physics = ps.blur(kernel, img_size=tuple(y.shape[1:]))
            f = ps.L2Fidelity(physics, y, noise)
            sigma_d = strength * noise
            theory = ps.solvers.default_step(solver, f, sigma_d)
            result = ps.solve(physics, y, model, noise, solver=solver, denoiser_sigma=sigma_d,
                              step=step_scale * theory, max_iter=max_iter, tol=1e-5)
            psnrs += ps.psnr(result.estimate, clean).tolist()
            iterations += result.iterations
            violations += len(result.violations)
            statuses |= set(result.status)
    return dict(psnr=statistics.mean(psnrs), iterations=statistics.mean(iterations), violations=violations,
                status="/".join(sorted(statuses)))


def tune_solver(models, problems, solver, strengths, max_iter, bar) -> tuple[Tuned, list[dict]]:
    rows = []

    def run(strength, step_scale):
        for row in rows:
            if row["strength"] == strength and row["step_scale"] == step_scale:
                return row
        row = dict(solver=solver, strength=strength, step_scale=step_scale,
                   **evaluate(models, problems, solver, strength, step_scale, max_iter))
        rows.append(row)
        bar.update(1)
        return row

    for strength in strengths:
        run(strength, 1.0)
    best = max(rows, key=lambda r: r["psnr"])
    for step_scale in STEP_ALTERNATIVES[solver]:
        run(best["strength"], step_scale)
    best = max(rows, key=lambda r: r["psnr"])
    factor = 2**0.5
    for _ in range(4):  # refine the strength at the best step; keep going while the best sits on the edge
        for candidate in (best["strength"] / factor, best["strength"] * factor):
            run(round(candidate, 3), best["step_scale"])
        previous, best = best, max(rows, key=lambda r: r["psnr"])
        if best is previous:
            break
    return Tuned(strength=best["strength"], step_scale=best["step_scale"], max_iter=max_iter), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--models", nargs="+", default=list(VALIDATION), choices=list(VALIDATION))
    parser.add_argument("--images", type=int, default=3, help="validation images per model")
    parser.add_argument("--size", type=int, default=96, help="side of the centre crops")
    parser.add_argument("--noises", type=float, nargs="+", default=[2.55, 7.65], help="noise levels on the 0–255 scale")
    parser.add_argument("--kernel-seeds", type=int, nargs="+", default=[10, 11], help="motion_kernel seeds (19 px)")
    parser.add_argument("--solvers", nargs="+", default=["fb", "hqs", "drs", "admm"])
    parser.add_argument("--strengths", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    noises = [n / 255 for n in args.noises]
    models = [ps.load_denoiser(name) for name in args.models]
    problems, names = [], {}
    for name in args.models:
        names[name], model_problems = validation_problems(data, name, args.images, args.size, noises, args.kernel_seeds)
        problems.append(model_problems)
    start = time.perf_counter()
    chosen, rows = {}, []
    per_solver = len(args.strengths) + 3 + 2
    with tqdm(total=per_solver * len(args.solvers), desc="tuning", mininterval=30) as bar:
        for solver in args.solvers:
            chosen[solver], solver_rows = tune_solver(models, problems, solver, args.strengths, args.max_iter, bar)
            rows += solver_rows
    lines = header("Tuning of the solvers' default denoiser strength and step")
    lines += [
        f"- validation images (training sets, disjoint from every test set): "
        + "; ".join(f"{m}: {', '.join(names[m])} from `{VALIDATION[m][0]}`" for m in args.models),
        f"- {args.size}×{args.size} centre crops, motion kernels `motion_kernel(seed, 19)` with seeds {args.kernel_seeds}, "
        f"noise σ·255 ∈ {args.noises}, circular boundary, max {args.max_iter} iterations, tol 1e-5",
        "- σ_d = strength·σ_n; step τ = step_scale × theory default (FB: 1/L; HQS/DRS/ADMM: σ_d²)",
        f"- wall time {time.perf_counter() - start:.0f} s",
        "",
        "| solver | strength | step_scale | mean PSNR (dB) | mean iterations | violations | statuses |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        mark = " **chosen**" if (chosen[row["solver"]].strength, chosen[row["solver"]].step_scale) == (row["strength"], row["step_scale"]) else ""
        lines.append(f"| {row['solver']}{mark} | {row['strength']:g} | {row['step_scale']:g} | {row['psnr']:.2f} | "
                     f"{row['iterations']:.0f} | {row['violations']} | {row['status']} |")
    lines += ["", "Chosen defaults (copied into `pnp_stable/solvers/defaults.py`; FISTA uses FB's):", "",
              "```json", json.dumps({s: vars(t) for s, t in chosen.items()}, indent=1), "```", ""]
    (RESULTS / "tuning.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
