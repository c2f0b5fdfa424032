"""Is BM3D reproducible, and what does reproducibility cost? ``BM3DDenoiser(threads=None)`` against ``threads=1``.

The ``bm3d`` package aggregates its groups on every core when ``num_threads`` is 0; the order of the
floating-point sums then depends on the schedule, so two calls on the same input can differ. A PnP monitor sees
such a difference as a jump of the residual. For each of four 96×96 colour crops of scikit-image's bundled
photos (σ = ``--sigma``/255, noise seed = image index), ``--calls`` calls of each setting on the same noisy
input: how many differ from the first call, the largest difference, and the mean time per call; once on an idle
machine and once beside a process that keeps one core busy (a shared machine, or a second job), where the
threads' schedule varies from call to call.
Writes ``benchmarks/results/bm3d_threads.md``.

    .venv/bin/python benchmarks/bm3d_threads.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, header  # noqa: E402

import pnp_stable as ps  # noqa: E402
from pnp_stable.denoisers import BM3DDenoiser  # noqa: E402

#: (name, 96×96 crop of a bundled photo): textured, flat and mixed regions
CROPS = {"astronaut": data.astronaut()[100:196, 180:276], "coffee": data.coffee()[150:246, 250:346],
         "chelsea": data.chelsea()[80:176, 120:216], "rocket": data.rocket()[200:296, 200:296]}


def repeated_calls(denoiser: BM3DDenoiser, noisy: torch.Tensor, sigma: float, calls: int) -> tuple[int, float, float]:
    """(calls differing from the first, max |difference|, mean seconds per call) of ``calls`` identical calls."""
    outputs, seconds = [], []
    for _ in range(calls):
        start = time.perf_counter()
        outputs.append(denoiser(noisy, sigma))
        seconds.append(time.perf_counter() - start)
    gaps = [float((out - outputs[0]).abs().max()) for out in outputs[1:]]
    return sum(gap > 0 for gap in gaps), max(gaps), statistics.mean(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--sigma", type=float, default=25.0, help="σ on the 0–255 scale")
    parser.add_argument("--out", default=str(RESULTS / "bm3d_threads.md"))
    args = parser.parse_args()
    sigma = args.sigma / 255
    lines = header("BM3D's threads: reproducibility and speed") + [
        f"- 96×96 colour crops of scikit-image's photos, σ = {args.sigma:g}/255, noise seed = image index; "
        f"{args.calls} calls of each setting on the same noisy input; 'differ': calls whose output is not "
        "bit-identical to the first call's",
        "",
        "| machine | image | threads | calls that differ | max difference | ms/call |",
        "|---|---|---|---:|---:|---:|",
    ]
    speed = {}
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for index, (name, crop) in enumerate(CROPS.items()):
                clean = ps.to_tensor(crop)
                noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(index))
                for threads in (None, 1):
                    differ, gap, seconds = repeated_calls(BM3DDenoiser(threads=threads), noisy, sigma, args.calls)
                    speed.setdefault((busy, threads), []).append(seconds)
                    lines.append(f"| {'one core busy' if busy else 'idle'} | {name} | "
                                 f"{'every core (None)' if threads is None else '1'} | {differ} of {args.calls - 1} | "
                                 f"{gap:.1e} | {1000 * seconds:.0f} |")
                    print(lines[-1], flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
    lines.append("")
    for busy in (False, True):
        ratios = [one / every for one, every in zip(speed[busy, 1], speed[busy, None])]
        lines.append(f"- {'one core busy' if busy else 'idle'}: threads=1 takes {min(ratios):.2f}–{max(ratios):.2f}× "
                     "the time of every core per image")
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
