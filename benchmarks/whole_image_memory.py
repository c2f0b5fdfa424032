"""Peak memory of one whole-image call of the certified networks, against the estimate that decides tiling.

``ps.denoise``/``ps.deblur`` with ``tile='auto'`` tile an image when :func:`pnp_stable.denoisers.tiling.whole_image_bytes`
(``peak_feature_maps`` float32 maps of ``width`` channels per pixel) exceeds the budget. Each row is a fresh process
that loads a denoiser and, under ``torch.no_grad()`` in eval mode, applies it first to a 64×64 image (the one-off
costs of a first call: lazy norms, caches, thread pools; the estimate does not model them) and then once to the
whole image, each after resetting the kernel's peak-RSS counter (``/proc/self/clear_refs``; VmHWM): the memory each
call added (peak minus the resident memory just before it), the image call's in MiB and in maps of ``width``
channels, beside the estimate.
The rows are every shipped certified network plus the untrained architectures of the screening whose map counts
``AveragedDenoiser.peak_feature_maps`` also records (full-resolution SLL blocks, a multi-scale gradient flow,
learned spline activations). Linux only (``/proc``).

    .venv/bin/python benchmarks/whole_image_memory.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, ROOT, header  # noqa: E402

SHIPPED = ("averaged-gray", "averaged-color", "averaged-lownoise-color", "averaged-sll-gray", "averaged-sll-color",
           "averaged-sll-pnp-gray", "averaged-sll-lownoise-gray", "averaged-sll-lownoise-color",
           "averaged-sll-highnoise-color")
MULTI_SCALE = [1] + [2] * 8 + [1]
#: name → AveragedDenoiser options of the screening architectures (random weights: memory does not depend on them)
SCREENED = {
    "SLL, width 32, full resolution": dict(width=32, depth=8, block="sll"),
    "SLL, width 32, full resolution, spline": dict(width=32, depth=8, block="sll", activation="spline"),
    "gradient flow, width 16, multi-scale": dict(width=16, depth=10, scales=MULTI_SCALE),
    "SLL, width 16, multi-scale, spline": dict(width=16, depth=10, scales=MULTI_SCALE, block="sll",
                                               activation="spline"),
}

ONE_CALL = """
import json, sys, torch
import pnp_stable as ps
from pnp_stable.denoisers import AveragedDenoiser
from pnp_stable.denoisers.tiling import whole_image_bytes

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(field + " missing from /proc/self/status")

spec, channels, height, width, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
model = (ps.load_denoiser(spec) if isinstance(spec, str) else AveragedDenoiser(channels=channels, **spec)).eval()
def added_by_one_call(x):
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident set
    before = status("VmRSS")
    with torch.no_grad():
        out = model(x, 25 / 255)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    return status("VmHWM") - before

first = added_by_one_call(torch.rand(1, channels, 64, 64, generator=torch.Generator().manual_seed(1)))
x = torch.rand(1, channels, height, width, generator=torch.Generator().manual_seed(0))
print(json.dumps({"first": first, "added": added_by_one_call(x), "width": model.width,
                  "maps": model.peak_feature_maps, "estimate": whole_image_bytes(model, x.shape)}))
"""


def measure(spec, channels: int, size: int, threads: int) -> dict:
    done = subprocess.run([sys.executable, "-c", ONE_CALL, json.dumps([spec, channels, size, size, threads])],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{spec}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="square image side (pixels)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "whole_image_memory.md")
    args = parser.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        parser.error("needs Linux's /proc/self/clear_refs to reset the peak resident memory")
    torch.set_num_threads(args.threads)  # the children's count, so that the header reports it
    mib = 2**20
    lines = header("Peak memory of one whole-image denoiser call against the tiling estimate") + [
        f"- {args.size}×{args.size} images, one call each in a fresh process ({args.threads} thread(s), eval mode, "
        "no autograd); added: peak resident memory during the call (VmHWM, reset just before it) minus the resident "
        "memory before it; a map is one float32 image of `width` channels (4·width·H·W bytes); before the image, "
        "one call on a 64×64 image pays the first call's one-off costs (its own column)",
        "- estimate: `whole_image_bytes` = `peak_feature_maps` maps, what `tile='auto'` compares with its budget; "
        "it should not be below the measurement",
        "", "| denoiser | channels | width | first call, 64×64 (MiB) | added by the image call (MiB) | added, in maps | "
        "`peak_feature_maps` | estimate (MiB) | estimate ≥ added |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    rows = [(name, name, 3 if name.endswith("-color") else 1) for name in SHIPPED]
    rows += [(f"{name} (untrained)", spec, channels) for name, spec in SCREENED.items() for channels in (1, 3)]
    for label, spec, channels in rows:
        result = measure(spec, channels, args.size, args.threads)
        one_map = 4 * result["width"] * args.size**2
        lines.append(f"| {label} | {channels} | {result['width']} | {result['first'] / mib:.0f} | "
                     f"{result['added'] / mib:.0f} | {result['added'] / one_map:.2f} | {result['maps']} | "
                     f"{result['estimate'] / mib:.0f} | {'yes' if result['estimate'] >= result['added'] else '**no**'} |")
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
