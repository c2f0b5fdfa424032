"""Which blur boundary to assume for a real photo: restore real-boundary blurs with each model.

A real photo's blur mixes in scene pixels beyond the frame. Simulated here as physics does it: a
(256 + h − 1)-pixel colour crop of a held-out CBSD68 image (outside CBSD10, seen by no shipped model) is
blurred with a Levin kernel of size h (``--kernels``) keeping only the 'valid' part, which is 256×256;
Gaussian noise σ = ``--noise`` (seeded per image and kernel). The ground truth is the scene's centre
256×256. Each row restores y with ``ps.deblur``'s defaults (certified FB) and ``averaged-color`` under one
boundary model: circular, reflect, replicate, zeros, and 'valid' (x larger than y by h − 1, nothing
assumed beyond the frame) started from y continued by edge replication, its default, or from Aᵀy. Two
last rows bound what any boundary model can do. The oracle knows the unseen rim: y less the blur of the true
scene outside the frame is exactly the zero-padded blur of the truth plus y's noise, restored with the
'zeros' model; 'valid' differs from it only in not knowing the rim, so their band gap is the price of the
missing information (with the prior's share in filling it in), not ringing. The reference has no boundary
problem at all: the same 256×256 truth blurred with wrap-around (circular, same noise seed) and restored
with the circular model; its band − interior is what the image content alone gives.

Reports the PSNR and the gain over the blurred input in all of y's frame, in the ``--band``-pixel border
band and in the interior, and the gain by distance from the frame's edge: ringing shows as a deficit that
reaches far inward; the information lost at the edge (pixels there are seen through fewer observations,
mixed with unknown scene pixels) as a deficit within about the kernel's half-width.
Writes ``benchmarks/results/boundary.md``.

    .venv/bin/python benchmarks/boundary.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from functools import partial
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _images import held_out_color_images  # noqa: E402
from _report import RESULTS, ROOT, header  # noqa: E402

import pnp_stable as ps  # noqa: E402
from pnp_stable.restore import valid_frame  # noqa: E402

REFERENCE = "reference: wrap-around blur of the truth, circular model (no boundary problem)"
ORACLE = "oracle: y less the blur of the true scene beyond the frame, 'zeros' model (the unseen rim known)"
METHODS = ("circular", "reflect", "replicate", "zeros", "valid (start Aᵀy)", "valid", ORACLE, REFERENCE)
RINGS = ((0, 4), (4, 8), (8, 16))  # distances from the frame's edge (pixels) of the depth profile; beyond: interior


def regions(size: int, band: int) -> dict[str, torch.Tensor]:
    """Boolean masks of y's frame: everything, the border band of width ``band``, the interior, and the rings
    of :data:`RINGS` (then pixels ≥ 16 from the edge)."""
    index = torch.arange(size)
    depth = torch.minimum(torch.minimum(index[:, None], size - 1 - index[:, None]),
                          torch.minimum(index[None, :], size - 1 - index[None, :]))
    masks = {"all": torch.ones(size, size, dtype=torch.bool), "band": depth < band, "interior": depth >= band}
    masks.update({f"{low}–{high - 1} px": (depth >= low) & (depth < high) for low, high in RINGS})
    masks[f"≥ {RINGS[-1][1]} px"] = depth >= RINGS[-1][1]
    return masks


def masked_psnr(estimate: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    error = ((estimate.clamp(0, 1) - truth) ** 2)[..., mask].mean()
    return float(10 * torch.log10(1 / error))


def restore(method: str, y: torch.Tensor, kernel: torch.Tensor, noise: float):
    deblur = partial(ps.deblur, denoiser="averaged-color")  # the model the recorded results used
    if method == ORACLE:
        return deblur(y, kernel, noise, boundary="zeros")
    if method == REFERENCE:
        return deblur(y, kernel, noise, boundary="circular")
    if method == "valid (start Aᵀy)":
        return deblur(y, kernel, noise, boundary="valid", x0=ps.blur(kernel, boundary="valid").A_adjoint(y))
    return deblur(y, kernel, noise, boundary=method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--kernels", type=int, nargs="+", default=[0, 3], help="Levin kernel indices")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--noise", type=float, default=0.01, help="σ on the [0, 1] scale")
    parser.add_argument("--band", type=int, default=16)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="MODEL",
                        help="boundary models to run (default: all, in the order of the table)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "boundary.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    levin = list(ps.load_kernels(data / "kernels" / "levin09.npz").values())
    paths = held_out_color_images(data, args.images)
    masks = regions(args.size, args.band)
    rings = [name for name in masks if name.endswith("px")]
    rows = {method: {"psnr": [], **{name: [] for name in masks}, "seconds": [], "iterations": [],
                     "violations": 0, "certified": 0} for method in args.methods}
    for i, path in enumerate(paths):
        photo = ps.load_image(path, gray=False)
        for j in args.kernels:
            kernel = levin[j]
            side = args.size + kernel.shape[0] - 1, args.size + kernel.shape[1] - 1
            top, left = (photo.shape[2] - side[0]) // 2, (photo.shape[3] - side[1]) // 2
            scene = photo[:, :, top : top + side[0], left : left + side[1]]
            physics = ps.blur(kernel, boundary="valid", noise_sigma=args.noise,
                              rng=torch.Generator().manual_seed(100 * i + j))
            y = physics(scene)
            frame = valid_frame(kernel.shape, y.shape)
            truth = scene[:, :, frame[0], frame[1]]
            wrapped = ps.blur(kernel, img_size=tuple(truth.shape[1:]), noise_sigma=args.noise,
                              rng=torch.Generator().manual_seed(100 * i + j))(truth)
            rim = scene.clone()
            rim[:, :, frame[0], frame[1]] = 0
            rimless = y - physics.A(rim)  # = the zero-padded blur of the truth, plus y's noise
            assert torch.allclose(rimless - y + physics.A(scene), ps.blur(kernel, boundary="zeros")(truth), atol=1e-5)
            for method in args.methods:
                observed = {REFERENCE: wrapped, ORACLE: rimless}.get(method, y)
                blurred = wrapped if method == REFERENCE else y  # the oracle's gain is over the photo y, too
                before = {name: masked_psnr(blurred, truth, mask) for name, mask in masks.items()}
                start = time.perf_counter()
                result = restore(method, observed, kernel, args.noise)
                row = rows[method]
                row["seconds"].append(time.perf_counter() - start)
                row["psnr"].append(masked_psnr(result.estimate, truth, masks["all"]))
                for name, mask in masks.items():
                    row[name].append(masked_psnr(result.estimate, truth, mask) - before[name])
                row["iterations"].append(result.iterations[0])
                row["violations"] += len(result.violations)
                row["certified"] += result.beta is not None
                print(f"{path.name} k{j} {method}: {row['psnr'][-1]:.2f} dB (input {before['all']:.2f}), "
                      f"band gain {row['band'][-1]:+.2f}, interior gain {row['interior'][-1]:+.2f}", flush=True)
    runs = len(paths) * len(args.kernels)
    mean = statistics.fmean
    lines = header("Boundary model for real photos: restoring real-boundary blurs") + [
        f"- {runs} real-boundary blurs: {args.size}×{args.size} 'valid' crops of the blurred scene, CBSD68 held-out "
        f"colour images {[p.name for p in paths]} × Levin kernels {args.kernels}, σ = {args.noise:g}, noise seed "
        f"100·image + kernel; `ps.deblur` defaults (certified FB, averaged-color) with each boundary model",
        f"- gain: PSNR of the estimate minus PSNR of the blurred input y, over y's frame (all), its {args.band}-pixel "
        "border band, and the interior; ringing at the edges shows as band gain ≪ interior gain",
        "",
        "| boundary model | PSNR | gain (all) | gain (band) | gain (interior) | band − interior | iterations | "
        "violations | certified runs | s/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, row in rows.items():
        lines.append(
            f"| {method} | {mean(row['psnr']):.2f} | {mean(row['all']):+.2f} | {mean(row['band']):+.2f} | "
            f"{mean(row['interior']):+.2f} | {mean(row['band']) - mean(row['interior']):+.2f} | "
            f"{mean(row['iterations']):.0f} | {row['violations']} | {row['certified']}/{runs} | {mean(row['seconds']):.1f} |"
        )
    if {"valid", REFERENCE} <= rows.keys():
        worst = min(b - c for b, c in zip(rows["valid"]["band"], rows["valid"]["interior"]))
        cost = [v - r for v, r in zip(rows["valid"]["band"], rows[REFERENCE]["band"])]
        lines += ["", f"- 'valid' per blur: smallest gain {min(rows['valid']['all']):+.2f} dB; worst band − interior "
                  f"{worst:+.2f} dB; band gain minus the reference's {mean(cost):+.2f} dB on average, worst {min(cost):+.2f}"]
    if {"valid", ORACLE} <= rows.keys():
        unseen = [v - o for v, o in zip(rows["valid"]["band"], rows[ORACLE]["band"])]
        lines += [f"- 'valid' band gain minus the oracle's (the price of the unseen rim): {mean(unseen):+.2f} dB on "
                  f"average, worst {min(unseen):+.2f}; interior {mean(rows['valid']['interior']) - mean(rows[ORACLE]['interior']):+.2f}"]
    lines += ["", "Gain (dB) by distance from the frame's edge, mean over the blurs:", "",
              "| boundary model | " + " | ".join(rings) + " |", "|---|" + "---:|" * len(rings)]
    lines += [f"| {method} | " + " | ".join(f"{mean(row[ring]):+.2f}" for ring in rings) + " |" for method, row in rows.items()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
