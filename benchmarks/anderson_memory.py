"""Memory and time of one safeguarded-Anderson candidate on large colour images.

Anderson acceleration (on by default for FB, HQS, DRS and ADMM) keeps m + 1 evaluations (T(p), g(p)) per
image; its candidate solves a least-squares fit over their differences. Each row is a fresh process that fills
the buffers of memory m = 10 for one colour image of 1, 4 or 12 megapixels and forms one candidate: peak
resident memory (ru_maxrss) after the buffers, and after the candidate, and the candidate's wall time.
The buffers are 2(m + 1) images; the candidate should add about one image and its fixed float64 chunks
(~0.2 GiB), not a stack of whole-image differences.

    .venv/bin/python benchmarks/anderson_memory.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, ROOT, header  # noqa: E402

ONE_CANDIDATE = """
import resource, sys, time, torch
from pnp_stable.solvers.anderson import Anderson, AndersonMemory
torch.set_num_threads(int(sys.argv[1]))
image = torch.zeros(1, 3, int(sys.argv[2]), int(sys.argv[3]))
memory, index = AndersonMemory(Anderson(memory=10), 1, image), torch.tensor([0])
for k in range(11):
    point = torch.rand(image.shape, generator=torch.Generator().manual_seed(k))
    memory.add(index, point, 0.9 * point)
buffers = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
candidate, usable = memory.candidate(index)
seconds = time.perf_counter() - start
assert usable.item() and torch.isfinite(candidate).all()
print(buffers, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, seconds)
"""
SIZES = {1: (750, 1333), 4: (1500, 2667), 12: (3000, 4000)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "anderson_memory.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image_mib = {mp: 3 * h * w * 4 / 2**20 for mp, (h, w) in SIZES.items()}
    lines = header("Memory and time of one Anderson candidate (memory 10) on colour images") + [
        f"- each row a fresh process, {args.threads} thread(s); one colour image of float32 is "
        + ", ".join(f"{image_mib[mp]:.0f} MiB at {mp} MP" for mp in SIZES), "",
        "| image | buffers 2(m + 1) images (MiB) | peak RSS after the buffers (MiB) | peak RSS after the candidate (MiB) | "
        "added by the candidate (MiB) | candidate (s) |", "|---|---:|---:|---:|---:|---:|"]
    for megapixels, (height, width) in SIZES.items():
        done = subprocess.run([sys.executable, "-c", ONE_CANDIDATE, str(args.threads), str(height), str(width)],
                              capture_output=True, text=True, cwd=ROOT, check=True)
        buffers, peak, seconds = map(float, done.stdout.split())
        lines.append(f"| {height}×{width} ({megapixels} MP) | {22 * image_mib[megapixels]:.0f} | {buffers / 1024:.0f} | "
                     f"{peak / 1024:.0f} | {(peak - buffers) / 1024:.0f} | {seconds:.1f} |")
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
