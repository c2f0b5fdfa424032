"""Time to a certified guided restoration of a whole 256×256 colour photo, against its peers.

Set3C (256×256 colour, whole images) × Levin kernels ``--kernels``, σ = ``--noise``/255, circular boundary,
noise seed = 100·image + kernel. Each row runs ``ps.deblur`` with its defaults, as a user would:
``denoiser='guided'`` with each ``--guides`` (pilot + certified rounds), PnP-BM3D in the DPIR schedule
(no guarantee) and the certified FB default; one more row runs the BM3D-guided default through
:func:`pnp_stable.solvers.guided.guided_solve` with its filter on every patch position (``stride=1``; the
default takes 2 where the image's sides allow). Reports wall time per image on ``--threads`` torch threads,
PSNR, monitor violations over every certified round. Writes ``benchmarks/results/guided_speed.md``.

    .venv/bin/python benchmarks/guided_speed.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, ROOT, header  # noqa: E402

import pnp_stable as ps  # noqa: E402
from pnp_stable.denoisers import BM3DDenoiser  # noqa: E402
from pnp_stable.training import list_images  # noqa: E402


#: rows that change one option of the BM3D-guided default (``guided_solve``'s keywords)
VARIANTS = {"guided-bm3d, stride 1": dict(stride=1)}


def run(method: str, y, kernel, noise: float):
    """(estimate, violations, iterations) of one method with its defaults."""
    if method == "bm3d-dpir":
        physics = ps.blur(kernel, img_size=tuple(y.shape[1:]))
        result = ps.solvers.dpir(physics, y, BM3DDenoiser(), noise)
        return result.estimate, len(result.violations), sum(result.iterations)
    if method == "certified-fb":
        result = ps.deblur(y, kernel, noise, boundary="circular")
        return result.estimate, len(result.violations), sum(result.iterations)
    if method in VARIANTS:
        physics = ps.blur(kernel, img_size=tuple(y.shape[1:]))
        result = ps.solvers.guided.guided_solve(physics, y, BM3DDenoiser(), noise, **VARIANTS[method])
    else:
        result = ps.deblur(y, kernel, noise, boundary="circular", denoiser="guided", guide=method.removeprefix("guided-"))
    rounds = result.earlier_rounds + [result]
    return result.estimate, sum(len(r.violations) for r in rounds), sum(sum(r.iterations) for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--guides", nargs="+", default=["bm3d", "bm3d-lc", "dncnn-color", "averaged-color"])
    parser.add_argument("--kernels", type=int, nargs="+", default=[0], help="Levin kernel indices")
    parser.add_argument("--noise", type=float, default=2.55, help="σ on the 0–255 scale")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "guided_speed.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    levin = list(ps.load_kernels(data / "kernels" / "levin09.npz").values())
    images = [ps.load_image(path, gray=False) for path in list_images(data / "test" / "Set3C")]
    noise = args.noise / 255
    lines = header("Time to a certified guided restoration (256×256 colour)") + [
        f"- Set3C whole images (256×256) × Levin kernels {args.kernels}, σ = {args.noise:g}/255, circular boundary, "
        "noise seed = 100·image + kernel; every method with `ps.deblur`'s defaults "
        f"(guided: {ps.solvers.GUIDED_DEFAULTS}); s/image is wall time on {args.threads} thread(s), guide and pilot included",
        "",
        "| method | PSNR | s/image (mean) | s/image (max) | iterations/image | violations | guarantee |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    methods = [f"guided-{guide}" for guide in args.guides] + list(VARIANTS) + ["bm3d-dpir", "certified-fb"]
    for method in methods:
        psnrs, seconds, iterations, violations = [], [], [], 0
        for i, clean in enumerate(images):
            for j in args.kernels:
                kernel = levin[j]
                op = ps.blur(kernel, img_size=tuple(clean.shape[1:]), noise_sigma=noise,
                             rng=torch.Generator().manual_seed(100 * i + j))
                y = op(clean)
                start = time.perf_counter()
                estimate, found, steps = run(method, y, kernel, noise)
                seconds.append(time.perf_counter() - start)
                psnrs.append(float(ps.psnr(estimate, clean)[0]))
                iterations.append(steps)
                violations += found
        guarantee = {"bm3d-dpir": "none", "certified-fb": "β certified"}.get(method, "β = 1/2 per round, frozen guide")
        lines.append(f"| {method} | {statistics.mean(psnrs):.2f} | {statistics.mean(seconds):.1f} | {max(seconds):.1f} | "
                     f"{statistics.mean(iterations):.0f} | {violations} | {guarantee} |")
        print(lines[-1], flush=True)
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
