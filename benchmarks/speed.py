"""Per-iteration time and peak memory of our monitored solvers vs deepinv's optimisers, and denoiser throughput.

Problems: camera (256×256 gray, ``averaged-gray``) and astronaut (512×512 colour, ``averaged-color``)
from scikit-image, circular Gaussian blur (std 1.6), noise σ = 0.01, σ_d = 0.02, the same physics and
the same denoiser for both libraries (the firmly non-expansive relaxation for DRS/ADMM, as ours uses).
Pairs: our ``fb``/``hqs``/``drs``/``admm`` vs deepinv ``PGD``/``HQS``/``DRS``/``ADMM`` with the same step,
``--iters`` iterations without early stopping. Timing runs in rounds whose order rotates, each pair
back to back (ours first in even rounds, theirs first in odd ones); the table reports the median
per-iteration time and the median of the paired ratios (same round), because absolute times on a
shared machine are noisy. Peak memory: each variant runs once more in a fresh
process, where a thread samples the resident set size every millisecond during the solve; the table
reports the peak above the level just before the call (Linux).
Denoiser throughput: megapixels per second of one call at each size.

    .venv/bin/python benchmarks/speed.py
    .venv/bin/python benchmarks/speed.py --sizes 64 --iters 2 --rounds 1 --out /tmp/speed.md   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import deepinv as dinv
import skimage.data
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, header  # noqa: E402

import pnp_stable as ps  # noqa: E402

NOISE, SIGMA_D = 0.01, 0.02
DEEPINV = {"fb": dinv.optim.PGD, "hqs": dinv.optim.HQS, "drs": dinv.optim.DRS, "admm": dinv.optim.ADMM}


def problem(size: int):
    """(clean, y, physics, denoiser): gray camera below 512 px, colour astronaut at 512 px."""
    colour = size >= 512
    image = skimage.data.astronaut() if colour else skimage.data.camera()
    step = max(1, image.shape[0] // size)
    x = ps.to_tensor(image[::step, ::step][:size, :size])
    op = ps.blur(ps.gaussian_kernel(1.6), img_size=tuple(x.shape[1:]), noise_sigma=NOISE,
                 rng=torch.Generator().manual_seed(0))
    denoiser = ps.load_denoiser("averaged-color" if colour else "averaged-gray")
    return x, op(x), ps.blur(ps.gaussian_kernel(1.6), img_size=tuple(x.shape[1:])), denoiser


def variants(y, physics, denoiser, iters: int) -> dict:
    fidelity = ps.L2Fidelity(physics, y, NOISE)
    fne = denoiser.firmly_nonexpansive()
    steps = {"fb": 1.0 / fidelity.lipschitz, "hqs": SIGMA_D**2, "drs": SIGMA_D**2, "admm": SIGMA_D**2}
    plugged = {"fb": denoiser, "hqs": denoiser, "drs": fne, "admm": fne}
    out = {}
    for solver, cls in DEEPINV.items():
        def ours(solver=solver):
            return ps.solve(physics, y, plugged[solver], NOISE, solver=solver, denoiser_sigma=SIGMA_D,
                            step=steps[solver], denoiser_weight=1.0, max_iter=iters, tol=0.0).estimate

        def theirs(solver=solver, cls=cls):
            optimiser = cls(prior=dinv.optim.PnP(denoiser=plugged[solver]), data_fidelity=dinv.optim.L2(sigma=NOISE),
                            stepsize=steps[solver], sigma_denoiser=SIGMA_D, max_iter=iters, early_stop=False)
            with torch.no_grad():
                return optimiser(y, physics)

        out[f"ours {solver}"], out[f"deepinv {cls.__name__}"] = ours, theirs
    return out


def _resident_bytes() -> int:
    """Current resident set size (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_child(size: int, name: str, iters: int, threads: int) -> None:
    """Peak extra resident memory during one call: RSS sampled every millisecond by a thread, minus the RSS
    just before the call (the process's lifetime high-water mark would hide it behind import-time peaks)."""
    torch.set_num_threads(threads)
    _, y, physics, denoiser = problem(size)
    run = variants(y, physics, denoiser, iters)[name]
    before = _resident_bytes()
    peak, done = before, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    run()
    done.set()
    sampler.join()
    peak = max(peak, _resident_bytes())
    print(json.dumps({"growth_mib": (peak - before) / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "speed.md"))
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_memory_child(int(args.child[0]), args.child[1], args.iters, args.threads)
        return
    torch.set_num_threads(args.threads)
    lines = header("Solver speed: ours vs deepinv, same denoiser and physics") + [
        f"- {args.iters} iterations per call, {args.rounds} rounds (order rotating), medians; σ_n = {NOISE}, σ_d = {SIGMA_D}",
        "- peak memory: peak resident memory above the pre-call level during one call in a fresh process "
        "(sampled every 1 ms; after loading, no warm-up)",
        "",
        "| image | pair | ours s/iter | deepinv s/iter | ours/deepinv (paired median) | ours peak MiB | deepinv peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    throughput = []
    for size in args.sizes:
        x, y, physics, denoiser = problem(size)
        label = f"{size}×{size} {'colour' if x.shape[1] == 3 else 'gray'}"
        with torch.no_grad():
            denoiser(y, SIGMA_D)
            t0 = time.perf_counter()
            for _ in range(3):
                denoiser(y, SIGMA_D)
            seconds = (time.perf_counter() - t0) / 3
        throughput.append(f"| {label} | {size * size / 1e6 / seconds:.3f} | {seconds:.3f} |")
        fs = variants(y, physics, denoiser, args.iters)
        names = list(fs)
        times = {n: [] for n in names}
        for r in tqdm(range(args.rounds), desc=label, disable=not sys.stderr.isatty()):
            shift = (r * 2) % len(names)
            order = names[shift:] + names[:shift]
            if r % 2:  # odd rounds run each pair theirs-first (ABBA), so drift within a pair cancels in the median
                order = [name for pair in zip(order[1::2], order[0::2]) for name in pair]
            for name in order:
                t0 = time.perf_counter()
                fs[name]()
                times[name].append((time.perf_counter() - t0) / args.iters)
        memory = {}
        for name in names:
            done = subprocess.run([sys.executable, __file__, "--child", str(size), name, "--iters", str(args.iters),
                                   "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            memory[name] = json.loads(done.stdout.strip().splitlines()[-1])["growth_mib"]
        for ours, theirs in zip(names[0::2], names[1::2]):
            ratio = statistics.median(a / b for a, b in zip(times[ours], times[theirs]))
            lines.append(f"| {label} | {ours} / {theirs} | {statistics.median(times[ours]):.3f} | "
                         f"{statistics.median(times[theirs]):.3f} | {ratio:.3f} | {memory[ours]:.0f} | {memory[theirs]:.0f} |")
    lines += ["", "Denoiser throughput (one call, eval mode, no grad):", "", "| image | megapixels/s | s/call |", "|---|---:|---:|"]
    lines += throughput
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
