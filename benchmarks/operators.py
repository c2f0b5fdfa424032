"""Benchmark of pnp_stable's blur operators against deepinv, and of the FFT/direct crossover.

1. Wrapper overhead. On a seeded 512×512 colour image with a 25×25 Gaussian kernel, for
   every boundary in ``pnp_stable.operators.BOUNDARIES``: time per call of ``op.A``,
   ``op.A_adjoint`` and ``L2Fidelity(op, y, 0.01).prox(x, 1e-4)`` for ``op = pnp_stable.blur(...)``,
   next to the same calls on the deepinv object built directly (``BlurFFT`` / ``Blur``, same
   ``use_fft``) and deepinv's ``prox_l2(x, y, gamma = tau / sigma²)``. The ratio ours/deepinv
   shows any overhead of the wrapper; max|Δ| checks that both compute the same thing.
2. FFT crossover. Time of ``op.A`` (reflect boundary) with ``use_fft=True`` vs ``False`` for
   several kernel sizes, to check ``pnp_stable.operators.physics.FFT_MIN_KERNEL_SIZE``.

Each pair of functions is warmed up, then timed alternately (median of the repeats), so that
load from other processes hits both alike. Results go to stdout and ``results/operators.md``.

    .venv/bin/python benchmarks/operators.py            # full run (under a minute on 2 idle cores)
    .venv/bin/python benchmarks/operators.py --quick    # 64×64 smoke test, stdout only
"""

from __future__ import annotations

import argparse
import sys
import os
import platform
import statistics
import time
from pathlib import Path

import deepinv as dinv
import torch
from sympy import factorint
from tqdm import tqdm

import pnp_stable
from pnp_stable.operators import BOUNDARIES
from pnp_stable.operators.physics import FFT_MIN_KERNEL_SIZE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import STARTED_AT, STARTED_COMMIT, cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "operators.md"
COMMAND = ".venv/bin/python benchmarks/operators.py"
NOISE_SIGMA, TAU = 0.01, 1e-4
CROSSOVER_SIZES = (5, 9, 13, 15, 19, 25)
MIN_BLOCK_S = 0.05  # fast calls are repeated within one timing to last at least this long


def time_pair(f_ours, f_ref, repeats: int) -> tuple[float, float, float]:
    """Median seconds per call of ``f_ours`` and ``f_ref``, timed alternately, and max|Δ| of their outputs."""
    t0 = time.perf_counter()
    out_ours = f_ours()
    number = max(1, round(MIN_BLOCK_S / (time.perf_counter() - t0)))
    max_diff = (out_ours - f_ref()).abs().max().item()
    times: dict = {f_ours: [], f_ref: []}
    for r in range(repeats):
        for f in (f_ours, f_ref) if r % 2 == 0 else (f_ref, f_ours):
            t0 = time.perf_counter()
            for _ in range(number):
                f()
            times[f].append((time.perf_counter() - t0) / number)
    return statistics.median(times[f_ours]), statistics.median(times[f_ref]), max_diff


def deepinv_blur(kernel, boundary: str, img_size, use_fft: bool):
    """The deepinv object equivalent to ``pnp_stable.blur(kernel, boundary, img_size=img_size)``."""
    if boundary == "circular":
        return dinv.physics.BlurFFT(img_size=img_size, filter=kernel[None, None])
    padding = "constant" if boundary == "zeros" else boundary
    return dinv.physics.Blur(filter=kernel[None, None], padding=padding, use_fft=use_fft)


def overhead_rows(x, kernel, repeats: int):
    """(boundary, call, FFT?, repeats, ours, deepinv) for the wrapper-overhead table."""
    img_size = tuple(x.shape[1:])
    gamma = TAU / NOISE_SIGMA**2
    for b in BOUNDARIES:
        ours = pnp_stable.blur(kernel, boundary=b, img_size=img_size)
        use_fft = b == "circular" or ours.use_fft
        ref = deepinv_blur(kernel, b, img_size, use_fft)
        y = ours.A(x)
        y = y + NOISE_SIGMA * torch.randn_like(y)  # noiseless y makes x the exact prox: a degenerate CG start
        fidelity = pnp_stable.L2Fidelity(ours, y, noise_sigma=NOISE_SIGMA)
        yield b, "A", use_fft, repeats, lambda o=ours: o.A(x), lambda r=ref: r.A(x)
        yield b, "Aᵀ", use_fft, repeats, lambda o=ours, y=y: o.A_adjoint(y), lambda r=ref, y=y: r.A_adjoint(y)
        yield (b, "prox", use_fft, min(repeats, 3),
               lambda f=fidelity: f.prox(x, tau=TAU), lambda r=ref, y=y: r.prox_l2(x, y, gamma))


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3g}"


def overhead_table(x, kernel, repeats: int) -> list[str]:
    lines = ["| boundary | call | FFT | ours (ms) | deepinv (ms) | ours/deepinv | max abs diff |",
             "|---|---|---|---:|---:|---:|---:|"]
    rows = list(overhead_rows(x, kernel, repeats))
    for b, call, use_fft, n, f_ours, f_ref in tqdm(rows, desc="ours vs deepinv"):
        t_ours, t_ref, diff = time_pair(f_ours, f_ref, n)
        note = "¹" if call == "prox" and b != "circular" else ""
        lines.append(f"| {b} | {call}{note} | {'yes' if use_fft else 'no'} | {ms(t_ours)} | {ms(t_ref)} "
                     f"| {t_ours / t_ref:.2f} | {diff:.1e} |")
    lines += ["", f"prox: y = Ax + σn (n standard normal), τ = {TAU:g}, σ = {NOISE_SIGMA:g}, deepinv "
              f"`prox_l2(x, y, γ = τ/σ² = {TAU / NOISE_SIGMA**2:g})`; circular: both the same closed form "
              "(`DecomposablePhysics.prox_l2`).",
              "",
              "¹ Different solvers, so the ratio is not an overhead: ours is CG on (I + γAᵀA)u = x + γAᵀy "
              "to relative residual 1e-6 (≤ 1000 steps, Aᵀy precomputed in `L2Fidelity`); deepinv's "
              "`prox_l2` runs its default CG (tol 1e-4, ≤ 50 steps, Aᵀy recomputed per call). "
              "Timed at most 3 times."]
    return lines


def crossover_table(x, repeats: int) -> list[str]:
    """FFT vs direct ``op.A`` per kernel size, with the grid deepinv's FFT convolution runs on (the image padded by
    k − 1 for a k×k kernel, not rounded to a fast FFT length, so its cost follows that length's prime factors)."""
    img_size = tuple(x.shape[1:])
    lines = ["| kernel | FFT grid (factors) | FFT (ms) | direct (ms) | FFT/direct | faster | default |",
             "|---:|---|---:|---:|---:|---|---|"]
    ratios = {}
    for size in tqdm(CROSSOVER_SIZES, desc="FFT crossover"):
        k = pnp_stable.gaussian_kernel(size / 6, size=size)
        fft = pnp_stable.blur(k, boundary="reflect", img_size=img_size, use_fft=True)
        direct = pnp_stable.blur(k, boundary="reflect", img_size=img_size, use_fft=False)
        t_fft, t_direct, _ = time_pair(lambda: fft.A(x), lambda: direct.A(x), repeats)
        ratios[size] = t_fft / t_direct
        grid = img_size[-1] + size - 1
        default = "FFT" if size >= FFT_MIN_KERNEL_SIZE else "direct"
        lines.append(f"| {size}×{size} | {grid} = {'·'.join(str(p) for p, k in factorint(grid).items() for _ in range(k))} | {ms(t_fft)} "
                     f"| {ms(t_direct)} | {ratios[size]:.2f} | {faster(ratios[size])} | {default} |")
    return lines + ["", crossover_verdict(ratios)]


TIE = 0.10  # FFT/direct within 10 % of 1: neither is faster beyond the timing noise of a shared machine


def faster(ratio: float) -> str:
    return "tie" if abs(ratio - 1) < TIE else ("FFT" if ratio < 1 else "direct")


def crossover_verdict(ratios: dict[int, float]) -> str:
    """Whether FFT_MIN_KERNEL_SIZE fits the measured FFT/direct ratios: FFT is not slower (beyond a tie) at any
    measured size from it on, and the largest measured size below it is not faster by FFT (beyond a tie)."""
    sizes = sorted(ratios)
    current = f"FFT_MIN_KERNEL_SIZE = {FFT_MIN_KERNEL_SIZE}"
    above = [s for s in sizes if s >= FFT_MIN_KERNEL_SIZE]
    below = [s for s in sizes if s < FFT_MIN_KERNEL_SIZE]
    slower = [s for s in above if faster(ratios[s]) == "direct"]
    exceptions = [s for s in below if faster(ratios[s]) == "FFT"
                  and any(faster(ratios[t]) == "direct" for t in below if t > s)]
    note = (f" FFT also wins at {', '.join(f'{s}×{s}' for s in exceptions)}, below sizes where it loses: the cost "
            "of an FFT follows its grid's prime factors." if exceptions else "")
    if slower:
        return (f"FFT is slower than direct at {', '.join(f'{s}×{s}' for s in slower)}: {current} is not supported; "
                f"the threshold should be above {slower[-1]}.{note}")
    if below and faster(ratios[below[-1]]) == "FFT":
        return (f"FFT is already faster at {below[-1]}×{below[-1]}: {current} is not supported; the threshold "
                f"could be {below[-1]}.{note}")
    return (f"FFT is not slower at any size from {FFT_MIN_KERNEL_SIZE}×{FFT_MIN_KERNEL_SIZE} on, nor faster at the "
            f"largest size below it (ties within {TIE:.0%}): {current} is supported.{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64×64 image, 1 repeat, stdout only")
    args = parser.parse_args()
    side, repeats = (64, 1) if args.quick else (512, 7)

    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.rand(1, 3, side, side, dtype=torch.float32)
    kernel = pnp_stable.gaussian_kernel(4.0, size=25)

    report = [
        "# Operator benchmark: pnp_stable vs deepinv",
        "",
        f"- command: `{COMMAND}{' --quick' if args.quick else ''}`",
        f"- date: {STARTED_AT:%Y-%m-%d %H:%M} UTC",
        f"- commit: {STARTED_COMMIT}",
        f"- machine: {cpu_name()} ({platform.machine()}), nproc {len(os.sched_getaffinity(0))}, "
        f"torch threads {torch.get_num_threads()}",
        f"- versions: torch {torch.__version__}, deepinv {dinv.__version__}, Python {platform.python_version()}",
        f"- load average (1 min) at start: {os.getloadavg()[0]:.2f}; other processes sharing the cores "
        "inflate the times (the ratios less so, as pairs are timed alternately)",
        f"- image: 1×3×{side}×{side} float32 (torch.rand, seed 0); times are medians of {repeats} "
        "alternated repeats (prox: at most 3), per call",
        "",
        "## Wrapper overhead (25×25 Gaussian kernel, std 4)",
        "",
        *overhead_table(x, kernel, repeats),
        "",
        f"## FFT vs direct convolution, `op.A`, reflect boundary, Gaussian kernels of std size/6 "
        f"(default: FFT from {FFT_MIN_KERNEL_SIZE}×{FFT_MIN_KERNEL_SIZE})",
        "",
        *crossover_table(x, repeats),
        "",
        f"Load average (1 min) at the end: {os.getloadavg()[0]:.2f}.",
    ]
    text = "\n".join(report) + "\n"
    print(text)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
