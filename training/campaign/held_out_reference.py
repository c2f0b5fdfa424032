"""PSNR of reference denoisers on a campaign's held-out images, with the trainer's validation noise.

The images are the last ``--holdout`` of ``--data`` (the trainer's ``--holdout``), the first ``--val-images`` of
them, and the noise is :func:`pnp_stable.training.trainer.validation_psnr`'s, so the numbers compare with the
campaign's validation curve. Results are kept in ``--out`` (JSON, model → σ·255 → dB); a model already there is not
recomputed (BM3D takes minutes per σ).

    OMP_NUM_THREADS=1 .venv/bin/python training/campaign/held_out_reference.py \
        --data ../shared/data/train/color/CBSD432 --channels 3 --holdout 40 --val-images 20 \
        --out training/campaign/color-reference.json averaged-color dncnn-color bm3d
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pnp_stable import load_denoiser  # noqa: E402
from pnp_stable.denoisers import BM3DDenoiser  # noqa: E402
from pnp_stable.training.data import load_folder, split_holdout  # noqa: E402
from pnp_stable.training.trainer import validation_psnr  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="shipped model names, .safetensors files, or 'bm3d'")
    parser.add_argument("--data", required=True)
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1)
    parser.add_argument("--holdout", type=int, default=40)
    parser.add_argument("--val-images", type=int, default=40)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[25.0], help="noise levels ×255")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    images = split_holdout(load_folder(args.data, args.channels), args.holdout)[1][: args.val_images]
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.models:
        model = BM3DDenoiser() if name == "bm3d" else load_denoiser(name)
        scores = results.setdefault(name, {})
        for sigma in args.sigmas:
            if f"{sigma:g}" not in scores:
                scores[f"{sigma:g}"] = validation_psnr(model, images, sigma / 255)
                args.out.write_text(json.dumps(results, indent=1))
            print(f"{name} σ = {sigma:g}/255: {scores[f'{sigma:g}']:.3f} dB", flush=True)


if __name__ == "__main__":
    main()
