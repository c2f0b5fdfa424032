"""Time to a certified restoration: denoiser calls and seconds to come within 0.05 dB of the limit, plain vs
safeguarded Anderson acceleration, beside deepinv's own (unsafeguarded) Anderson acceleration and the 8-call
DPIR schedule, plus a 512×512 colour photo deblurred end to end from the command line (issue #23 §4).

Problems: centre crops (``--size`` px) of Set3C and the first ``--images`` of CBSD10 × Levin kernels
``--kernels`` × noise σ ∈ ``--noises`` (/255), circular blur, the shipped certified ``averaged-color`` with each
solver's tuned defaults (strength, step, weight ω). For each solver the plain iteration runs ``--limit``
iterations (tol 0): its last PSNR is the limit. A run *reaches* the limit at the first call after which its
PSNR stays within 0.05 dB of it; "calls" counts denoiser calls (one per evaluation of T; a rejected
extrapolation costs one). The accelerated run (tol 0, at most ``--budget`` calls) must also end at the same
point: ‖x_acc − x_plain‖/‖x_plain‖ is reported. deepinv's ``PGD``/``DRS`` with ``anderson_acceleration=True``
(its defaults: memory 10, β = 0.9, ε = 0.1) run the same map T (the same denoiser wrapped with the same ω,
step and σ_d) for ``--budget`` iterations; a run that never stays within 0.05 dB of the limit, or whose
residual rises above 10× its smallest earlier value, is counted as failing. DPIR: 8 HQS iterations with σ_d
geometric from 49/255 to σ_n and our denoiser, no guarantee.

    .venv/bin/python benchmarks/time_to_solution.py
    .venv/bin/python benchmarks/time_to_solution.py --images 1 --kernels 0 --noises 2.55 --size 48 --limit 60 --budget 40 --no-cli --out /tmp/t  # smoke test
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import deepinv as dinv
import numpy as np
import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _images import load_crops  # noqa: E402
from _report import RESULTS, ROOT, header, output_path  # noqa: E402

import pnp_stable as ps  # noqa: E402
from pnp_stable.solvers import tuned  # noqa: E402
from pnp_stable.solvers.monitor import REJECTED  # noqa: E402
from pnp_stable.training import list_images  # noqa: E402

SOLVERS = ("fb", "hqs", "drs", "admm")
WITHIN_DB = 0.05
DEFAULT_TOL = inspect.signature(ps.deblur).parameters["tol"].default
DEEPINV_ITERATIONS = {"fb": dinv.optim.PGD, "drs": dinv.optim.DRS}


class WeightedDenoiser(torch.nn.Module):
    """x ↦ x + ω(D(x, σ) − x): our FB/DRS denoising step, so that deepinv's optimiser iterates the same map."""

    def __init__(self, denoiser, weight: float):
        super().__init__()
        self.denoiser, self.weight = denoiser, weight

    def forward(self, x, sigma=None, **kwargs):
        return x + self.weight * (self.denoiser(x, sigma) - x)


def calls_to_reach(curve: list[float], limit: float) -> int | None:
    """1-based index of the first call after which every PSNR stays within WITHIN_DB of ``limit`` (None: never)."""
    far = [i for i, value in enumerate(curve) if not abs(value - limit) <= WITHIN_DB]
    if not far:
        return 1
    return far[-1] + 2 if far[-1] + 1 < len(curve) else None


def ours(physics, y, clean, denoiser, noise, solver, iterations, accelerate, x0=None):
    result = ps.solve(physics, y, denoiser, noise, solver=solver, max_iter=iterations, tol=0.0, reference=clean,
                      accelerate=accelerate, x0=x0)
    curves = torch.stack(result.history.psnr).T.tolist()  # per sample
    times = result.history.times
    return result, curves, times


def stops_at(result, tol: float) -> list[int | None]:
    """Per sample, the 1-based evaluation at which the solver's own rule (relative residual < ``tol`` on a kept
    evaluation; the rule adds the evaluation's error bound e to the residual, 0 for the exact evaluations of this
    benchmark) would have stopped it, from the recorded history of a tol-0 run (None: not within the run)."""
    relative = torch.stack(result.history.relative_residuals)  # [K, B]
    kept = torch.ones_like(relative, dtype=torch.bool)
    if result.history.kinds:
        kept = torch.stack(result.history.kinds) != REJECTED
    below = (relative < tol) & kept
    return [int(torch.nonzero(column)[0]) + 1 if column.any() else None for column in below.T]


def deepinv_run(physics, y, clean, denoiser, noise, solver, iterations):
    """deepinv's optimiser with its Anderson acceleration on the same map as our solver: (PSNR curves, residual
    curves, seconds), or an error message."""
    scheme = ps.solvers.SCHEMES[solver](ps.operators.L2Fidelity(physics, y, noise), denoiser,
                                        tuned(solver).strength * noise, 1.0, tuned(solver).denoiser_weight)
    step = tuned(solver).step_scale * ps.solvers.default_step(solver, scheme.fidelity, tuned(solver).strength * noise)
    prior = dinv.optim.PnP(denoiser=WeightedDenoiser(denoiser, scheme.denoiser_weight))
    fidelity = dinv.optim.L2(sigma=noise)
    kwargs = dict(prior=prior, data_fidelity=fidelity, stepsize=step, sigma_denoiser=tuned(solver).strength * noise,
                  max_iter=iterations, early_stop=False, anderson_acceleration=True)
    if solver == "drs":
        kwargs["beta"] = 1.0
    try:
        model = DEEPINV_ITERATIONS[solver](**kwargs)
        start = time.perf_counter()
        with torch.no_grad():
            _, metrics = model(y, physics, x_gt=clean, compute_metrics=True)
        return metrics["psnr"], metrics["residual"], time.perf_counter() - start
    except Exception as error:  # a failure of the peer is a result to report, not a crash of the benchmark
        return f"{type(error).__name__}: {error}"


def cli_photo(out: Path) -> dict:
    """``pnp-stable deblur`` on scikit-image's 512×512 colour astronaut with every default, timed end to end."""
    from skimage import data as skdata
    from skimage.io import imsave

    photo = out.parent / "astronaut-512.png"
    imsave(photo, skdata.astronaut())
    command = [sys.executable, "-m", "pnp_stable.cli", "deblur", str(photo), "--simulate", "--kernel", "motion:0:19",
               "--noise", "2.55/255", "--out", str(out.parent / "astronaut-deblurred.png")]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    for path in (photo, out.parent / "astronaut-deblurred.png", out.parent / "astronaut-deblurred_degraded.png"):
        path.unlink(missing_ok=True)
    return {"seconds": seconds, "returncode": done.returncode, "stdout": done.stdout.strip(), "stderr": done.stderr.strip()[-500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, default=3, help="first N images of CBSD10 (Set3C: all 3)")
    parser.add_argument("--kernels", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--noises", type=float, nargs="+", default=[2.55, 7.65])
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--limit", type=int, default=1000, help="iterations of the plain run that defines the limit")
    parser.add_argument("--budget", type=int, default=300, help="calls of the accelerated runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-cli", action="store_true", help="skip the 512×512 command-line row")
    parser.add_argument("--out", default=str(RESULTS / "time_to_solution"), help="output prefix (.md and .png are added)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = header("Time to a certified restoration: plain vs safeguarded Anderson acceleration")
    data, out = Path(args.data), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    denoiser = ps.load_denoiser("averaged-color")
    levin = ps.load_kernels(data / "kernels" / "levin09.npz")
    kernels = {index: list(levin.values())[index] for index in args.kernels}
    crops = {"Set3C": torch.cat(load_crops(list_images(data / "test" / "Set3C"), args.size, gray=False)),
             "CBSD10": torch.cat(load_crops(list_images(data / "test" / "CBSD10")[: args.images], args.size, gray=False))}
    rows, showcase = {}, None
    started = time.perf_counter()
    for noise255 in args.noises:
        noise = noise255 / 255
        for set_name, clean in crops.items():
            for kernel_index, kernel in kernels.items():
                op = ps.blur(kernel, img_size=tuple(clean.shape[1:]), noise_sigma=noise,
                             rng=torch.Generator().manual_seed(kernel_index))
                y = op(clean)
                physics = ps.blur(kernel, img_size=tuple(clean.shape[1:]))
                dpir = ps.solvers.dpir(physics, y, denoiser, noise)
                dpir_psnr = ps.psnr(dpir.estimate, clean).tolist()
                for solver in args.solvers:
                    plain, plain_curves, plain_times = ours(physics, y, clean, denoiser, noise, solver, args.limit, False)
                    fast, fast_curves, fast_times = ours(physics, y, clean, denoiser, noise, solver, args.budget, True)
                    start_b = torch.rand(clean.shape, generator=torch.Generator().manual_seed(1))
                    other = ours(physics, y, clean, denoiser, noise, solver, args.budget, True, x0=start_b)[0]
                    peer = deepinv_run(physics, y, clean, denoiser, noise, solver, args.budget) if solver in DEEPINV_ITERATIONS else None
                    row = rows.setdefault((noise255, solver), dict(plain=[], fast=[], plain_s=[], fast_s=[], gap=[], accepted=0,
                                                                    rejected=0, violations=0, certified=True, peer=[], peer_fail=[],
                                                                    peer_errors=set(), dpir=[], limits=[], starts=[],
                                                                    plain_stop=[], fast_stop=[], plain_stop_db=[],
                                                                    fast_stop_db=[]))
                    row["violations"] += len(plain.violations) + len(fast.violations) + len(other.violations)
                    row["starts"].append(float(((fast.estimate - other.estimate).flatten(1).norm(dim=1)
                                                / fast.estimate.flatten(1).norm(dim=1)).max()))
                    plain_stops, fast_stops = stops_at(plain, DEFAULT_TOL), stops_at(fast, DEFAULT_TOL)
                    row["certified"] &= plain.beta is not None and fast.beta is not None
                    counts = fast.history.step_counts()
                    row["accepted"] += int(counts["accepted"].sum())
                    row["rejected"] += int(counts["rejected"].sum())
                    gaps = ((fast.estimate - plain.estimate).flatten(1).norm(dim=1) / plain.estimate.flatten(1).norm(dim=1)).tolist()
                    for b in range(clean.shape[0]):
                        limit = plain_curves[b][-1]
                        row["limits"].append(limit)
                        n_plain, n_fast = calls_to_reach(plain_curves[b], limit), calls_to_reach(fast_curves[b], limit)
                        row["plain"].append(n_plain)
                        row["fast"].append(n_fast)
                        row["plain_s"].append(plain_times[n_plain - 1] if n_plain else float("nan"))
                        row["fast_s"].append(fast_times[n_fast - 1] if n_fast else float("nan"))
                        row["gap"].append(gaps[b])
                        row["dpir"].append(dpir_psnr[b] - limit)
                        for name, stop, curve in (("plain", plain_stops[b], plain_curves[b]), ("fast", fast_stops[b], fast_curves[b])):
                            row[f"{name}_stop"].append(stop)
                            row[f"{name}_stop_db"].append(curve[stop - 1] - limit if stop else float("nan"))
                        if isinstance(peer, str):
                            row["peer_errors"].add(peer)
                        elif peer is not None:
                            psnr_curve, residuals, _ = peer[0][b], peer[1][b], peer[2]
                            n_peer = calls_to_reach(psnr_curve, limit)
                            rising = any(r > 10 * min(residuals[:i]) for i, r in enumerate(residuals) if i)
                            row["peer"].append(n_peer)
                            if n_peer is None or rising:
                                row["peer_fail"].append(f"{set_name} image {b} k{kernel_index} "
                                                        f"({'residual rose' if rising else 'not within 0.05 dB'}; "
                                                        f"final {psnr_curve[-1] - limit:+.2f} dB)")
                    if showcase is None:
                        showcase = dict(plain=plain_curves[0], fast=fast_curves[0],
                                        peer=None if peer is None or isinstance(peer, str) else peer[0][0],
                                        title=f"{set_name} image 0, Levin k{kernel_index}, σ = {noise255:g}/255, {solver}")
                    print(f"σ={noise255:g} {set_name} k{kernel_index} {solver}: plain {row['plain'][-clean.shape[0]:]} "
                          f"fast {row['fast'][-clean.shape[0]:]} ({time.perf_counter() - started:.0f} s)", flush=True)
    cli = None if args.no_cli else cli_photo(out)
    lines += report(args, rows, cli)
    markdown, figure = output_path(out, ".md"), output_path(out, ".png")
    lines.append(f"\nWall time {time.perf_counter() - started:.0f} s. PNG: `{figure.name}`.")
    markdown.write_text("\n".join(lines) + "\n")
    plot(showcase, figure)
    print("\n".join(lines))


def _median(values) -> float:
    finite = [v for v in values if v is not None and v == v]
    return statistics.median(finite) if finite else float("nan")


def _stop(calls: list, differences: list) -> str:
    never = sum(c is None for c in calls)
    worst = min((d for d in differences if d == d), default=float("nan"))
    return f"{_median(calls):.0f} ({worst:+.2f})" + (f", {never} not within the run" if never else "")


def report(args, rows: dict, cli: dict | None) -> list[str]:
    images = 3 + args.images
    lines = [
        f"- problems: {images} crops of {args.size} px (Set3C, the first {args.images} of CBSD10) × Levin kernels "
        f"{args.kernels} per noise level, circular blur; the shipped `averaged-color` with each solver's tuned "
        f"defaults; limit: PSNR after {args.limit} plain iterations; accelerated and deepinv runs: {args.budget} calls",
        "- calls: denoiser calls until the PSNR stays within 0.05 dB of the limit (median over problems; ∞: never "
        "within the budget); speed-up = median of the per-problem ratios plain/accelerated",
        f"- two starts: the accelerated run from x₀ ~ U[0, 1] as well, max ‖x_a − x_b‖/‖x_a‖ after {args.budget} calls "
        "(`convergence.md`: at most 6.1e-05 for FB and 4.5e-05 for DRS/ADMM after 1000 plain iterations)",
        f"- stop at tol {DEFAULT_TOL:g} (the default of `deblur` and the CLI): median calls at which the solver's own rule "
        "((‖Tz − z‖ + e)/‖Tz‖ < tol, e = 0 here: a network and a closed-form circular prox evaluate T exactly) "
        "stops, and the worst PSNR at that stop minus the limit",
        "",
        "| σ·255 | solver | plain calls | accelerated calls | speed-up | plain s | accelerated s | accepted / rejected "
        "| violations | max ‖x_acc − x_plain‖/‖x_plain‖ | two starts | stop at tol, plain: calls (worst dB) "
        "| stop at tol, accelerated: calls (worst dB) | deepinv AA calls | deepinv AA failing | DPIR (8 calls) − limit (dB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for (noise255, solver), row in rows.items():
        ratios = [p / f for p, f in zip(row["plain"], row["fast"]) if p and f]
        never = sum(f is None for f in row["fast"])
        peer = "–" if not row["peer"] and not row["peer_errors"] else (
            f"{_median(row['peer']):.0f}" if row["peer"] else "error")
        failing = "; ".join(sorted(row["peer_errors"]) + row["peer_fail"]) or ("none" if row["peer"] else "–")
        lines.append(
            f"| {noise255:g} | {solver} | {_median(row['plain']):.0f} | {_median(row['fast']):.0f}"
            f"{f' ({never} never)' if never else ''} | {_median(ratios):.2f}× | {_median(row['plain_s']):.1f} | "
            f"{_median(row['fast_s']):.1f} | {row['accepted']} / {row['rejected']} | {row['violations']}"
            f"{'' if row['certified'] else ' (not certified)'} | {max(row['gap']):.1e} | {max(row['starts']):.1e} | "
            f"{_stop(row['plain_stop'], row['plain_stop_db'])} | {_stop(row['fast_stop'], row['fast_stop_db'])} | "
            f"{peer} | {failing} | "
            f"{statistics.mean(row['dpir']):+.2f} |")
    if cli is not None:
        summary = cli["stdout"].splitlines()
        status = next((line for line in summary if line.startswith("status:")), "")
        lines += ["", f"512×512 colour photo from the command line with every default (scikit-image's astronaut, "
                      f"`--simulate --kernel motion:0:19 --noise 2.55/255`), nothing else running: "
                      f"**{cli['seconds']:.1f} s** end to end (exit {cli['returncode']}; {status})"]
        if cli["returncode"]:
            lines.append(f"stderr: {cli['stderr']}")
    return lines


def plot(showcase: dict | None, path: Path) -> None:
    if showcase is None:
        return
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(np.arange(1, len(showcase["plain"]) + 1), showcase["plain"], label="plain")
    ax.plot(np.arange(1, len(showcase["fast"]) + 1), showcase["fast"], label="safeguarded Anderson (ours)")
    if showcase["peer"] is not None:
        ax.plot(np.arange(1, len(showcase["peer"]) + 1), showcase["peer"], ":", label="deepinv Anderson (no safeguard)")
    ax.set_xscale("log")
    ax.set_xlabel("denoiser calls")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(showcase["title"], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
