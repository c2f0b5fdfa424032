"""Tuning of the defaults (denoiser strength, step, denoiser weight) of every solver on validation images.

Validation images are disjoint from every test image of the benchmarks: for colour, CBSD68 images outside
CBSD10 (held out from training too, as in ``deblur.py``); for gray, training images (Train400), since
no gray natural set is held out from both training and testing; centre crops, blurred with motion kernels that are not
the Levin test kernels, at the deblurring benchmark's noise levels. For each solver: a coarse search
over σ_d = strength·σ_n at the theory's step, step alternatives at the best strength; for FB a search
over the denoiser weight ω (denoising step x + ω(D(x, σ_d) − x)) along the ridge ω·strength²/step_scale =
w of equal prior weight w (for D a prox of σ_d²φ, FB's fixed point balances τf against ωσ_d²φ); then a
refinement of the strength (and for FB the weight), ×√2 either side, repeated while the best moves.
The chosen setting maximises the mean PSNR over all images, both models and all noise levels;
``pnp_stable/solvers/defaults.py`` copies it (a test compares the two). ``--jobs`` evaluates
(setting, model, noise) tasks in parallel worker processes. Writes ``benchmarks/results/tuning.md``
(or ``--out``).

    .venv/bin/python benchmarks/tune.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _images import held_out_color_images, load_crops, spread  # noqa: E402
from _report import RESULTS, ROOT, header  # noqa: E402

import pnp_stable as ps  # noqa: E402
from pnp_stable.solvers.defaults import Tuned  # noqa: E402
from pnp_stable.training import list_images  # noqa: E402


def _train400(data: Path, count: int) -> list[Path]:
    """``count`` Train400 images spread over the sorted folder (training images: no gray set is held out)."""
    return spread(list_images(data / "train" / "gray" / "Train400"), count)


#: model → (where its validation images come from, how to pick ``count`` of them under the data root)
VALIDATION = {
    "averaged-gray": ("Train400 (training images)", _train400),
    "averaged-color": ("CBSD68 outside CBSD10 (held out)", held_out_color_images),
}
STEP_ALTERNATIVES = {"fb": (0.5, 1.5, 1.9), "hqs": (0.5, 2.0, 4.0), "drs": (0.5, 2.0, 4.0), "admm": (0.5, 2.0, 4.0)}
#: FB: strengths × prior weights w = ω·strength²/step_scale searched for the denoiser weight ω
WEIGHT_RIDGE = {"fb": ((2.0, 3.0, 4.0), (0.25, 0.5, 1.0))}
SQRT2 = 2**0.5


def validation_problems(data: Path, model: str, count: int, size: int, noises: list[float], kernel_seeds: list[int]):
    """(clean batch, kernel, noise, measurement) for each noise level; kernel seed cycles with the noise."""
    picks = VALIDATION[model][1](data, count)
    clean = torch.cat(load_crops(picks, size, gray=model.endswith("gray")))
    problems = []
    for index, noise in enumerate(noises):
        kernel = ps.motion_kernel(kernel_seeds[index % len(kernel_seeds)], 19)
        op = ps.blur(kernel, img_size=tuple(clean.shape[1:]), noise_sigma=noise, rng=torch.Generator().manual_seed(index))
        problems.append((clean, kernel, noise, op(clean)))
    return [p.name for p in picks], problems


_MODELS: dict = {}


def run_problem(model_name: str, problem, solver: str, setting: tuple[float, float, float], max_iter: int, tol: float,
                threads: int):
    """One validation problem under one (strength, step_scale, denoiser weight) setting (in a worker)."""
    torch.set_num_threads(threads)
    if model_name not in _MODELS:
        _MODELS[model_name] = ps.load_denoiser(model_name)
    strength, step_scale, weight = setting
    clean, kernel, noise, y = problem
    physics = ps.blur(kernel, img_size=tuple(y.shape[1:]))
    sigma_d = strength * noise
    theory = ps.solvers.default_step(solver, ps.L2Fidelity(physics, y, noise), sigma_d)
    result = ps.solve(physics, y, _MODELS[model_name], noise, solver=solver, denoiser_sigma=sigma_d,
                      step=step_scale * theory, denoiser_weight=weight, max_iter=max_iter, tol=tol)
    return ps.psnr(result.estimate, clean).tolist(), result.iterations, len(result.violations), set(result.status)


class Search:
    """Evaluates settings (strength, step_scale, weight) of one solver, each once, tasks spread over a pool."""

    def __init__(self, pool, problems: dict, solver: str, max_iter: int, tol: float, threads: int, bar):
        self.pool, self.problems, self.solver = pool, problems, solver
        self.max_iter, self.tol, self.threads, self.bar = max_iter, tol, threads, bar
        self.rows: list[dict] = []

    def run(self, settings) -> dict:
        """Evaluate the settings not seen yet (in parallel); return the best row so far."""
        seen = {(r["strength"], r["step_scale"], r["weight"]) for r in self.rows}
        fresh = list(dict.fromkeys(s for s in settings if s not in seen))
        futures = {s: [self.pool.submit(run_problem, name, problem, self.solver, s, self.max_iter, self.tol, self.threads)
                       for name, model_problems in self.problems.items() for problem in model_problems]
                   for s in fresh}
        for setting, parts in futures.items():
            psnrs, iterations, violations, statuses = [], [], 0, set()
            for part in parts:
                p, it, v, st = part.result()
                psnrs += p
                iterations += it
                violations += v
                statuses |= st
            strength, step_scale, weight = setting
            self.rows.append(dict(solver=self.solver, strength=strength, step_scale=step_scale, weight=weight,
                                  psnr=statistics.mean(psnrs), iterations=statistics.mean(iterations),
                                  violations=violations, status="/".join(sorted(statuses))))
            self.bar.update(1)
        return max(self.rows, key=lambda r: r["psnr"])


def tune_solver(search: Search, strengths) -> Tuned:
    solver = search.solver
    best = search.run([(s, 1.0, 1.0) for s in strengths])
    best = search.run([(best["strength"], step, 1.0) for step in STEP_ALTERNATIVES[solver]])
    step = best["step_scale"]
    weighted = solver in WEIGHT_RIDGE
    if weighted:
        ridge_strengths, prior_weights = WEIGHT_RIDGE[solver]
        best = search.run([(s, step, round(w * step / s**2, 4)) for s in ridge_strengths for w in prior_weights])
    for _ in range(4):  # refine at the best step; keep going while the best moves
        s, w = best["strength"], best["weight"]
        candidates = [(round(s / SQRT2, 3), step, w), (round(s * SQRT2, 3), step, w)]
        if weighted:
            candidates += [(s, step, round(w / SQRT2, 4))] + ([(s, step, round(w * SQRT2, 4))] if w * SQRT2 <= 1 else [])
        previous, best = best, search.run(candidates)
        if best is previous:
            break
    return Tuned(strength=best["strength"], step_scale=step, max_iter=search.max_iter, denoiser_weight=best["weight"])


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
    parser.add_argument("--tol", type=float, default=1e-5,
                        help="stop at (r_k + e_k)/‖z_k‖ < TOL (the solvers' stop rule); small prior weights ω move slowly, so 1e-5 "
                             "can stop them early")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes, one (setting, model, noise) task each")
    parser.add_argument("--out", default=str(RESULTS / "tuning.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    noises = [n / 255 for n in args.noises]
    problems, names = {}, {}
    for name in args.models:
        names[name], problems[name] = validation_problems(data, name, args.images, args.size, noises, args.kernel_seeds)
    lines = header("Tuning of the solvers' default denoiser strength, step and denoiser weight")  # before the run: its commit
    start = time.perf_counter()
    chosen, rows = {}, []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool, tqdm(desc="settings", mininterval=30, disable=not sys.stderr.isatty()) as bar:
        for solver in args.solvers:
            search = Search(pool, problems, solver, args.max_iter, args.tol, args.threads, bar)
            chosen[solver] = tune_solver(search, args.strengths)
            rows += search.rows
    lines += [
        "- validation images (disjoint from every test set): "
        + "; ".join(f"{m}: {', '.join(names[m])} from {VALIDATION[m][0]}" for m in args.models),
        f"- {args.size}×{args.size} centre crops, motion kernels `motion_kernel(seed, 19)` with seeds {args.kernel_seeds}, "
        f"noise σ·255 ∈ {args.noises}, circular boundary, max {args.max_iter} iterations, tol {args.tol:g}",
        "- σ_d = strength·σ_n; step τ = step_scale × theory default (FB: 1/L; HQS/DRS/ADMM: σ_d²); "
        "denoising step x + ω(D(x, σ_d) − x) with ω = weight",
        f"- wall time {time.perf_counter() - start:.0f} s",
        "",
        "| solver | strength | step_scale | weight | mean PSNR (dB) | mean iterations | violations | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        pick = chosen[row["solver"]]
        mark = " **chosen**" if (pick.strength, pick.step_scale, pick.denoiser_weight) == (row["strength"], row["step_scale"], row["weight"]) else ""
        lines.append(f"| {row['solver']}{mark} | {row['strength']:g} | {row['step_scale']:g} | {row['weight']:g} | {row['psnr']:.2f} | "
                     f"{row['iterations']:.0f} | {row['violations']} | {row['status']} |")
    lines += ["", "Chosen defaults (copied into `pnp_stable/solvers/defaults.py`; FISTA uses FB's):", "",
              "```json", json.dumps({s: vars(t) for s, t in chosen.items()}, indent=1), "```", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
