"""Gaussian denoising: PSNR / SSIM of denoisers on standard test sets at σ = 15, 25, 50 (/255).

Methods: every shipped denoiser (certified averaged models and the same-budget DnCNN baselines) or
any ``--model`` file, BM3D (``bm3d`` package), TV (deepinv, λ = σ); each with its certificate and an
adversarial check: ‖N x − N y‖/‖x − y‖ ≤ 1 for N = (D − (1 − α)I)/α for certified models, the
empirical Lipschitz constant ‖D x − D y‖/‖x − y‖ for unconstrained ones. Noise is seeded per image (seed = index), so
every method sees the same noisy images. ``--guides`` adds frozen-guide rows W(g)·y: the guide g is the named
denoiser's output on y (``bm3d``, or the shipped ``dncnn``/``averaged`` model for the image's channels), and
W(g) the certified linear filter of :mod:`pnp_stable.denoisers.guided` (``--constructions``: ``bm3d`` with its
defaults, ``bm3d-4+6`` the average of its 4×4- and 6×6-patch filters over 8 partitions each, ``nlm``); the time
includes the guide. Writes ``benchmarks/results/denoise.md``.

    .venv/bin/python benchmarks/denoise.py --images 10          # first 10 images of each set
    PNP_STABLE_DATA=/path/to/data .venv/bin/python benchmarks/denoise.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, ROOT, header  # noqa: E402

import pnp_stable as ps  # noqa: E402
from pnp_stable.denoisers import (  # noqa: E402
    BM3DDenoiser, GuidedDenoiser, TVDenoiser, adversarial_lipschitz, certificate_of, natural_starts)
from pnp_stable.training import list_images  # noqa: E402

SETS = {"BSD68": 1, "Set12": 1, "CBSD68": 3}
CONSTRUCTIONS = {"bm3d": ("bm3d", {}), "bm3d-4+6": ("bm3d", dict(patch=(4, 6), shifts=8)), "nlm": ("nlm", {})}
GUIDE_MODELS = {"dncnn": {1: "dncnn-gray", 3: "dncnn-color"}, "averaged": {1: "averaged-gray", 3: "averaged-color"}}


class GuidedWiener:
    """y ↦ W(g)y with g = guide(y, σ): certified (firmly non-expansive) as the linear map W(g) for its
    frozen guide; the map y ↦ W(g(y))y as a whole is non-linear and carries no certificate."""

    def __init__(self, guide, construction: str):
        self.guide, (self.construction, self.options) = guide, CONSTRUCTIONS[construction]
        self.certificate = ps.Certificate.none("W(g(y))y: the guide depends on y; W(g) alone is firmly non-expansive")

    def __call__(self, y, sigma):
        return GuidedDenoiser(self.guide(y, sigma), self.construction, **self.options)(y, sigma)


def guide_denoiser(name: str, channels: int):
    return BM3DDenoiser() if name == "bm3d" else ps.load_denoiser(GUIDE_MODELS[name][channels])


def frozen_filter_check(construction: str, channels: int) -> float:
    """Adversarial search on W(g) with guides from natural crops: max ‖Nx − Ny‖/‖x − y‖, N = 2W − I (≤ 1)."""
    shape = (channels, 40, 40)
    name, options = CONSTRUCTIONS[construction]
    options = options | ({"tile": 16} if name == "bm3d" else {})
    frozen = GuidedDenoiser(natural_starts(4, shape, noise=0.0, seed=7), name, **options)
    return adversarial_lipschitz(frozen, shape, 25 / 255, alpha=0.5, restarts=4, steps=60).ratio


def evaluate(denoiser, images, sigma: float) -> tuple[float, float, float]:
    psnrs, ssims, start = [], [], time.perf_counter()
    for index, clean in enumerate(images):
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(index))
        with torch.no_grad():
            out = denoiser(clean + sigma * noise, sigma)
        psnrs.append(float(ps.psnr(out, clean)[0]))
        ssims.append(float(ps.ssim(out, clean)[0]))
    return statistics.mean(psnrs), statistics.mean(ssims), (time.perf_counter() - start) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--images", type=int, default=None, help="first N images of each set (default: all)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[15, 25, 50], help="noise levels on the 0–255 scale")
    parser.add_argument("--model", action="append", default=[], help="extra denoiser file(s) (.safetensors)")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--no-bm3d", action="store_true")
    parser.add_argument("--no-models", action="store_true", help="skip the shipped models and TV")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="NAME",
                        help="shipped models to skip (e.g. the convex-ridge ones, minutes per image: their own files)")
    parser.add_argument("--guides", nargs="*", default=[], choices=["bm3d", *GUIDE_MODELS],
                        help="add W(g)·y rows with the guide g from these denoisers")
    parser.add_argument("--constructions", nargs="+", default=["bm3d"], choices=list(CONSTRUCTIONS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=str(RESULTS / "denoise.md"), help="results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data) / "test"
    unknown = set(args.exclude) - {entry["name"] for entry in ps.list_denoisers()}
    if unknown:
        parser.error(f"--exclude names no shipped model: {', '.join(sorted(unknown))}")
    rows = header("Gaussian denoising")
    rows += [f"- data: `{data}`, {'all' if args.images is None else f'first {args.images}'} images per set; "
             "noise seed = image index", ""]
    rows += ["| set | σ·255 | method | PSNR | SSIM | s/image | certificate | empirical check: max ‖N x − N y‖/‖x − y‖ (certified, ≤ 1) or ‖D x − D y‖/‖x − y‖ |",
             "|---|---:|---|---:|---:|---:|---|---:|"]
    for set_name in args.sets:
        channels = SETS[set_name]
        images = [ps.load_image(p, gray=channels == 1) for p in list_images(data / set_name)[: args.images]]
        methods = {}
        for entry in [] if args.no_models else ps.list_denoisers():
            if entry["name"] in args.exclude:
                continue
            model = ps.load_denoiser(entry["name"])
            if model.channels == channels:
                methods[entry["name"]] = model
        for path in args.model:
            model = ps.load_denoiser(path)
            if model.channels == channels:
                methods[Path(path).stem] = model
        if not args.no_bm3d:
            methods["BM3D"] = BM3DDenoiser()
        if not args.no_models:
            methods["TV (λ = σ)"] = TVDenoiser()
        checks = {}
        for construction in args.constructions if args.guides else []:
            check = frozen_filter_check(construction, channels)
            for guide in args.guides:
                name = f"W(g)·y, {construction}, g = {guide}"
                methods[name] = GuidedWiener(guide_denoiser(guide, channels), construction)
                checks[name] = f"{check:.4f} (W(g) for a frozen g)"
        for name, method in methods.items():
            certificate = certificate_of(method)
            shape = (channels, 40, 40)
            if certificate.alpha is not None and certificate.guaranteed:
                checks[name] = adversarial_lipschitz(method, shape, 25 / 255, alpha=certificate.alpha, restarts=4, steps=60).ratio
            elif isinstance(method, torch.nn.Module) and any(True for _ in method.parameters()):
                found = adversarial_lipschitz(method, shape, 25 / 255, restarts=4, steps=60).ratio
                checks[name] = f"‖Dx − Dy‖/‖x − y‖ = {found:.4f}"
        for sigma255 in tqdm(args.sigmas, desc=set_name):
            for name, method in methods.items():
                p, s, t = evaluate(method, images, sigma255 / 255)
                certificate = certificate_of(method)
                cert = "none" if certificate.alpha is None else f"α = {certificate.alpha:.3g}" + ("" if certificate.guaranteed else " (approx.)")
                if isinstance(method, GuidedWiener):
                    cert = "W(g): α = 0.5 for its frozen g"
                check = checks.get(name, "–")
                check = f"{check:.4f}" if isinstance(check, float) else check
                rows.append(f"| {set_name} | {sigma255:g} | {name} | {p:.2f} | {s:.4f} | {t:.2f} | {cert} | {check} |")
                print(rows[-1], flush=True)
    out = Path(args.out)
    out.write_text("\n".join(rows) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
