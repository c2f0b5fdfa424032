"""Convergence of PnP with the certified denoiser vs the unconstrained baseline, against the theory.

Problems: Set3C images (centre crops of ``--size`` px), one Levin kernel, noise σ = 2.55/255. For each
solver (FB, HQS, DRS, ADMM) and each denoiser (``averaged-color``, certified; ``dncnn-color``, the
same-budget unconstrained baseline) the iteration runs up to ``--iters`` iterations (tol ``--tol``)
from two initialisations, x₀ = Aᵀy and x₀ = uniform noise, batched together. Reported: the monitor's
verdict and statuses, iterations, and the relative distance ‖x_a − x_b‖/‖x_a‖ between the limits
reached from the two starts (an averaged iteration converges to a fixed point; with a unique fixed
point both runs reach it). Residual curves against sqrt(β/((1−β)(k+1)))·‖z₀ − z*‖ go to
``benchmarks/results/convergence.png``; the table to ``benchmarks/results/convergence.md``.

    .venv/bin/python benchmarks/convergence.py
    .venv/bin/python benchmarks/convergence.py --size 32 --iters 20 --solvers fb --out /tmp/c   # smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _images import load_crops  # noqa: E402
from _report import RESULTS, ROOT, header, output_path  # noqa: E402

import pnp_stable as ps  # noqa: E402
from pnp_stable.training import list_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--size", type=int, default=96, help="side of the Set3C centre crops")
    parser.add_argument("--kernel", type=int, default=1, help="index of the Levin kernel")
    parser.add_argument("--noise", type=float, default=2.55, help="noise σ on the 0–255 scale")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--tol", type=float, default=1e-7)
    parser.add_argument("--solvers", nargs="+", default=["fb", "hqs", "drs", "admm"])
    parser.add_argument("--denoisers", nargs="+", default=["averaged-color", "dncnn-color"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "convergence"), help="output prefix (.md and .png are added)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = header("PnP convergence: certified vs unconstrained denoiser, two initialisations")  # the commit the run starts from
    data = Path(args.data)
    noise = args.noise / 255
    paths = list_images(data / "test" / "Set3C")
    clean = torch.cat(load_crops(paths, args.size, gray=False))
    kernel = ps.load_kernel(data / "kernels" / "levin09.npz", args.kernel)
    op = ps.blur(kernel, img_size=tuple(clean.shape[1:]), noise_sigma=noise, rng=torch.Generator().manual_seed(0))
    y = op(clean)
    n = len(paths)
    y2 = torch.cat([y, y])
    starts = torch.cat([op.A_adjoint(y), torch.rand(y.shape, generator=torch.Generator().manual_seed(1))])
    physics = ps.blur(kernel, img_size=tuple(clean.shape[1:]))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, start = [], time.perf_counter()
    fig, axes = plt.subplots(len(args.denoisers), len(args.solvers), figsize=(4 * len(args.solvers), 3.3 * len(args.denoisers)),
                             squeeze=False, sharey=True)
    jobs = [(d, s) for d in args.denoisers for s in args.solvers]
    models = {name: ps.load_denoiser(name) for name in args.denoisers}
    for (name, solver) in tqdm(jobs, desc="convergence", disable=not sys.stderr.isatty()):
        t0 = time.perf_counter()
        result = ps.solve(physics, y2, models[name], noise, solver=solver, max_iter=args.iters, tol=args.tol, x0=starts)
        seconds = time.perf_counter() - t0
        a, b = result.estimate[:n], result.estimate[n:]
        distance = ((a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).max().item()
        psnr = ps.psnr(a, clean).mean().item()
        rows.append((name, solver, result, distance, psnr, seconds))
        ax = axes[args.denoisers.index(name)][args.solvers.index(solver)]
        residuals = result.history.residual_matrix().numpy()
        bound = result.history.rate_bound()
        k = range(1, residuals.shape[0] + 1)
        for column in range(residuals.shape[1]):
            ax.semilogy(k, residuals[:, column], lw=0.9, color=f"C{column % n}", ls="-" if column < n else ":")
        if bound is not None:
            ax.semilogy(k, bound.numpy().max(axis=1), "--", color="gray", lw=1, label="theoretical bound (max over runs)")
            ax.legend(fontsize=7)
        beta = "none" if result.beta is None else f"{result.beta:.3f}"
        ax.set_title(f"{name} / {solver}: β = {beta}, {len(result.violations)} violations", fontsize=8)
        ax.set_xlabel("iteration k")
    axes[0][0].set_ylabel("‖z_(k+1) − z_k‖ (solid: x₀ = Aᵀy, dotted: random x₀)")
    fig.tight_layout()
    figure, report = output_path(args.out, ".png"), output_path(args.out, ".md")
    report.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    plt.close(fig)

    lines += [
        f"- problems: Set3C ({', '.join(p.name for p in paths)}), {args.size}×{args.size} centre crops, Levin kernel "
        f"k{args.kernel}, noise σ = {args.noise}/255 (seed 0), circular boundary; tuned default strength and step per solver",
        f"- each run: up to {args.iters} iterations, tol {args.tol:g}, from x₀ = Aᵀy and from x₀ ~ U[0, 1] (batched)",
        f"- residual curves: `{figure.name}`; wall time {time.perf_counter() - start:.0f} s",
        "",
        "| denoiser | solver | certified β | verdict | statuses | iterations (max) | limit distance ‖x_a − x_b‖/‖x_a‖ (max) | PSNR (dB, x₀ = Aᵀy) | s |",
        "|---|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for name, solver, result, distance, psnr, seconds in rows:
        beta = "none" if result.beta is None else f"{result.beta:.4f}"
        statuses = ", ".join(sorted(set(result.status)))
        lines.append(f"| {name} | {solver} | {beta} | {result.verdict} | {statuses} | {max(result.iterations)} | "
                     f"{distance:.2e} | {psnr:.2f} | {seconds:.0f} |")
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
