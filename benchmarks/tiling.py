"""Tiled denoising (issue #24): does tiling keep a shipped model's certificate, what does it cost in quality, and
what does it save in memory?

(a) For a shipped certified model D (α-averaged) the script runs the adversarial search of
:func:`pnp_stable.denoisers.certify.adversarial_lipschitz` on N = (T − (1 − α)I)/α for four operators T on the same
crops: D on the whole image; :class:`~pnp_stable.denoisers.TiledDenoiser` (square-root partition-of-unity windows
before and after D: certified with D's α), fading to zero and anchored at a fixed image; non-overlapping tiles
(block diagonal: certified too); and the usual overlap-and-average tiling Σ_t P_tᵀ diag(w_t) D(P_t x), which
carries no proof. A ratio above 1 is a violation of α-averagedness found by the search.

(b) Quality: certified PnP-FB deblurring (``ps.deblur`` defaults: accelerated, tol 1e-5) of whole Set3C and the
first ``--images`` CBSD10 photos (Levin kernel 0, σ = 2.55/255, circular blur) with ``averaged-color`` on the whole
image, on certified tiles of 64/128/256 px (``ps.deblur(tile=...)``: anchored), on certified tiles that fade
to zero, on non-overlapping and on overlap-and-average tiles: PSNR, its change from the whole image, certified β
and monitor violations.

(c) Memory and time: peak resident memory and wall time of one ``averaged-color`` call on 1, 4 and 12 megapixel
colour images, whole and on 512-px certified tiles, each in a fresh process; then the command line itself on a
12-megapixel colour photo (scikit-image's astronaut, enlarged): ``pnp-stable denoise`` and
``pnp-stable deblur --iters 20`` with their defaults (which tile it), peak memory of the process.

Writes ``benchmarks/results/tiling.md``. Usage::

    .venv/bin/python benchmarks/tiling.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, ROOT, header  # noqa: E402

import pnp_stable as ps  # noqa: E402
from pnp_stable.denoisers import TiledDenoiser, adversarial_lipschitz, natural_starts  # noqa: E402
from pnp_stable.denoisers.tiling import default_overlap, image_tiles  # noqa: E402
from pnp_stable.training import list_images  # noqa: E402


class OverlapAverage(torch.nn.Module):
    """The usual tiling: D on each tile, outputs blended with the partition-of-unity weights w_t (window after D only)."""

    def __init__(self, denoiser, tile: int, overlap: int):
        super().__init__()
        self.denoiser, self.tile, self.overlap = denoiser, tile, overlap
        self.train(False)

    def forward(self, x, sigma=None):
        out = torch.zeros_like(x)
        for where, root in image_tiles(x.shape, self.tile, self.overlap):
            out[where] += (root**2).to(x) * self.denoiser(x[where], sigma)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="averaged-gray")
    parser.add_argument("--size", type=int, default=64, help="crop size of the search")
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--sigma", type=float, default=25 / 255)
    parser.add_argument("--restarts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--images", type=int, default=10, help="first N CBSD10 photos in (b) (Set3C: all 3)")
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1, 4, 12])
    parser.add_argument("--out", type=Path, default=RESULTS / "tiling.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = ps.load_denoiser(args.model).eval()
    alpha = model.certificate.alpha
    channels = model.config["channels"]
    operators = {
        "whole image": model,
        f"certified tiles ({args.tile} px, overlap {args.overlap}, √w before and after D)": TiledDenoiser(model, args.tile, args.overlap),
        f"certified tiles anchored at a fixed image ({args.tile} px, overlap {args.overlap})": TiledDenoiser(
            model, args.tile, args.overlap, anchor=natural_starts(args.restarts, (channels, args.size, args.size), seed=11)),
        f"non-overlapping tiles ({args.tile} px)": TiledDenoiser(model, args.tile, 0),
        f"overlap-and-average ({args.tile} px, overlap {args.overlap}, w after D only)": OverlapAverage(model, args.tile, args.overlap),
    }
    lines = header(f"Tiling and the certificate: adversarial search on {args.model}")
    lines += ["", f"- model: `{args.model}`, certified α = {alpha:.4f}; σ = {args.sigma * 255:.3g}/255; {args.size}×{args.size} "
              f"crops; search: Adam over pairs, {args.restarts} restarts × {args.steps} steps (half near pairs, half far)",
              "- N = (T − (1 − α)I)/α; T is α-averaged iff N is non-expansive, so a ratio above 1 is a violation found",
              "", "| operator | certified | max ‖Nx − Ny‖/‖x − y‖ found | max ‖Tx − Ty‖/‖x − y‖ found |", "|---|---|---:|---:|"]
    naive = None
    for name, operator in operators.items():
        shape = (channels, args.size, args.size)
        averaged = adversarial_lipschitz(operator, shape, args.sigma, alpha=alpha, restarts=args.restarts, steps=args.steps)
        lipschitz = adversarial_lipschitz(operator, shape, args.sigma, restarts=args.restarts, steps=args.steps)
        certified = "no" if isinstance(operator, OverlapAverage) else f"α = {alpha:.4f}"
        lines.append(f"| {name} | {certified} | {averaged.ratio:.4f} | {lipschitz.ratio:.4f} |")
        if isinstance(operator, OverlapAverage):
            naive = averaged.ratio
        print(lines[-1], flush=True)
    lines += ["", f"Overlap-and-average tiling: the search {'found a violation of' if naive > 1 else 'did not find an excess over'} "
              f"α-averagedness ({naive:.4f}); it carries no proof either way. The certified tiling cannot exceed 1."]
    args.out.write_text("\n".join(lines) + "\n")  # (a) is kept even if a later part fails
    lines += quality(args)
    args.out.write_text("\n".join(lines) + "\n")
    lines += memory_and_time(args)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def quality(args) -> list[str]:
    """(b): PnP-FB deblurring of whole photos with the denoiser on the whole image and on tiles."""
    model = ps.load_denoiser("averaged-color").eval()
    kernel = list(ps.load_kernels(args.data / "kernels" / "levin09.npz").values())[0]
    noise = 2.55 / 255
    photos = {"Set3C": list_images(args.data / "test" / "Set3C"), "CBSD10": list_images(args.data / "test" / "CBSD10")[: args.images]}
    variants = {"whole image": (model, 0)}  # name: (the denoiser passed to deblur, its tile= argument)
    for tile in (128, 256, 64):  # the acceptance row first
        variants[f"certified tiles {tile} px, overlap {default_overlap(tile)}, anchored (`tile={tile}`)"] = (model, tile)
    variants["certified tiles 128 px, overlap 33, fading to zero (no anchor)"] = (TiledDenoiser(model, 128, 33), 0)
    variants["non-overlapping tiles 128 px"] = (TiledDenoiser(model, 128, 0), 0)
    variants["overlap-and-average 128 px, overlap 33 (no certificate)"] = (OverlapAverage(model, 128, 33), 0)
    lines = ["", "## (b) Quality: certified PnP-FB deblurring of whole photos, denoiser whole or tiled", "",
             f"- Set3C ({len(photos['Set3C'])} photos) and the first {len(photos['CBSD10'])} CBSD10 photos at full size, Levin kernel 0, "
             "σ = 2.55/255, circular blur (seed 0); `ps.deblur` with `averaged-color` and every default (FB, "
             "accelerated, tol 1e-5); each tiling wraps the same model; acceleration on for all rows",
             "- `ps.deblur(tile=...)` anchors its tiles at a Wiener estimate (`pnp_stable.restore.tile_anchor`, "
             "λ = 30·σ²); the unanchored row fades each tile to zero across its ramps",
             "- receptive field of `averaged-color`: 33×33 pixels (8 blocks, each a 3×3 convolution and its transpose); "
             "the default overlap is 33 where the tile allows it ((tile − 2)/3 otherwise)",
             "", "| denoiser | Set3C PSNR (dB) | CBSD10 PSNR (dB) | change from whole (mean, min, max) | certified β | "
             "monitor violations | iterations (median) |", "|---|---:|---:|---:|---|---:|---:|"]
    whole_psnr = None
    for name, (denoiser, tile) in variants.items():
        psnrs, betas, violations, iterations = {}, set(), 0, []
        for set_name, paths in photos.items():
            psnrs[set_name] = []
            for path in paths:
                clean = ps.load_image(path)
                y = ps.blur(kernel, img_size=tuple(clean.shape[1:]), noise_sigma=noise, rng=torch.Generator().manual_seed(0))(clean)
                result = ps.deblur(y, kernel, noise, denoiser=denoiser, boundary="circular", accelerate=True, tile=tile)
                psnrs[set_name].append(float(ps.psnr(result.estimate, clean)[0]))
                betas.add("none" if result.beta is None else f"{result.beta:.4f}")
                violations += len(result.violations)
                iterations.append(int(result.iterations[0]))
        flat = psnrs["Set3C"] + psnrs["CBSD10"]
        whole_psnr = whole_psnr or flat
        changes = [a - b for a, b in zip(flat, whole_psnr)]
        lines.append(f"| {name} | {statistics.mean(psnrs['Set3C']):.2f} | {statistics.mean(psnrs['CBSD10']):.2f} | "
                     f"{statistics.mean(changes):+.3f}, {min(changes):+.3f}, {max(changes):+.3f} | {', '.join(sorted(betas))} | {violations} | "
                     f"{statistics.median(iterations):.0f} |")
        print(lines[-1], flush=True)
    return lines


MEMORY_PROBE = """
import resource, sys, time, torch
import pnp_stable as ps
torch.set_num_threads({threads})
model = ps.load_denoiser("averaged-color").eval()
x = torch.rand(1, 3, {height}, {width}, generator=torch.Generator().manual_seed(0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
ps.denoise(x, 0.05, denoiser=model, tile={tile})
seconds = time.perf_counter() - start
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, before / 1024, seconds)
"""


def memory_and_time(args) -> list[str]:
    """(c): one call on 1/4/12 MP colour images, whole and tiled, each in a fresh process (peak RSS is per process)."""
    lines = ["", "## (c) Memory and time of one `averaged-color` call on a colour image", "",
             f"- each row a fresh process, {args.threads} threads; peak resident memory (ru_maxrss) of the process, "
             "and the part added by the call (before it: the model, the image and torch itself)",
             "", "| image | denoiser | peak RSS (MiB) | added by the call (MiB) | wall time (s) |", "|---|---|---:|---:|---:|"]
    for megapixels in args.megapixels:
        height = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
        width = int(round(megapixels * 1e6 / height))
        for tile in (0, 512):
            code = MEMORY_PROBE.format(threads=args.threads, tile=tile, height=height, width=width)
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
            name = "whole image" if tile == 0 else "certified tiles 512 px, overlap 33"
            if done.returncode:
                lines.append(f"| {height}×{width} ({megapixels:g} MP) | {name} | failed: {done.stderr.strip()[-200:]} | | |")
            else:
                peak, before, seconds = map(float, done.stdout.split())
                lines.append(f"| {height}×{width} ({megapixels:g} MP) | {name} | {peak:.0f} | {peak - before:.0f} | {seconds:.1f} |")
            print(lines[-1], flush=True)
    return lines + command_line_on_a_large_photo(args)


LARGE_PHOTO = (3000, 4000)  # 12 megapixels
PEAK_OF_CHILD = "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); " \
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)"


def command_line_on_a_large_photo(args) -> list[str]:
    """(c), acceptance: ``pnp-stable denoise`` and ``deblur --iters 20`` on a 12-megapixel colour photo, with their
    defaults ('auto' tiles), each measured from a fresh wrapper process whose only child is the command."""
    from skimage import data
    from skimage.transform import resize

    height, width = LARGE_PHOTO
    folder = Path(tempfile.mkdtemp(prefix="tiling-"))
    photo = resize(data.astronaut(), (height, width), order=3, anti_aliasing=False).clip(0, 1)
    noisy = (photo + 15 / 255 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0)).numpy()).clip(0, 1)
    ps.save_image(torch.from_numpy(photo).permute(2, 0, 1)[None].float(), folder / "photo.png")
    ps.save_image(torch.from_numpy(noisy).permute(2, 0, 1)[None].float(), folder / "noisy.png")
    commands = {
        "denoise (σ = 15/255)": ["denoise", str(folder / "noisy.png"), "--sigma", "15/255", "--out", str(folder / "d.png")],
        "deblur --simulate --iters 20 (gaussian:1.6, σ = 0.01)": [
            "deblur", str(folder / "photo.png"), "--simulate", "--kernel", "gaussian:1.6", "--noise", "0.01",
            "--iters", "20", "--out", str(folder / "b.png")],
    }
    lines = ["", f"Command line on a {height}×{width} colour photo ({height * width / 1e6:g} MP; scikit-image's astronaut enlarged, 8-bit PNG), "
             "defaults (`--tile auto`: 512-px tiles, overlap 33), peak resident memory of the `pnp-stable` process:", "",
             "| command | peak RSS (MiB) | wall time (s) | exit code |", "|---|---:|---:|---:|"]
    for name, command in commands.items():
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, sys.executable, "-m", "pnp_stable.cli", *command,
                               "--quiet"], capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        peak, code = done.stdout.split()[-2:] if done.stdout.strip() else ("nan", str(done.returncode))
        lines.append(f"| `pnp-stable {name}` | {float(peak) / 1024:.0f} | {seconds:.0f} | {code} |")
        print(lines[-1], done.stderr[-300:], flush=True)
    shutil.rmtree(folder)
    return lines


if __name__ == "__main__":
    sys.exit(main())
