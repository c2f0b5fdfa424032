"""``python -m pnp_stable.classification`` (also ``pnp-stable train-classifier``): train a certified classifier."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._argtypes import OneLineParser, nonnegative_float, nonnegative_int, positive_float, positive_int, seed
from .._outputs import check_outputs
from .._signals import interrupted_exit_status
from ..denoisers import ACTIVATIONS
from .data import DATASETS, load_dataset
from .trainer import CLASSIFIERS, ClassifierConfig, ClassifierTrainer


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="pnp-stable train-classifier", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      description="Train a certified 1-Lipschitz classifier (or the spectral-normalised ResNet baseline).")
    p.add_argument("--data", required=True, help="dataset folder (Fashion-MNIST: the four IDX files, gzipped or not)")
    p.add_argument("--out", required=True, help="output weights (.safetensors)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist", help="which dataset --data holds")
    p.add_argument("--download", action="store_true", help="CIFAR-10 only: let torchvision download it into --data")
    p.add_argument("--model", choices=sorted(CLASSIFIERS), default="lipschitz",
                   help="the certified classifier or the spectral-normalised ResNet baseline")
    p.add_argument("--widths", type=positive_int, nargs="+", default=[32, 64], help="channels of each stage")
    p.add_argument("--depths", type=positive_int, nargs="+", default=[3, 3],
                   help="blocks of each stage (the baseline's residual blocks hold two convolutions: halve them for "
                   "equal parameters)")
    p.add_argument("--time", type=positive_float, default=None,
                   help="certified classifier only: cap T of each block's learned time span (default 1: one Euler step of "
                   "size ≤ 1, firmly non-expansive; up to 2·0.999/‖A‖² one step stays non-expansive, longer spans take "
                   "more sub-steps)")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default=None,
                   help="σ of the non-expansive blocks (lipschitz model; default relu): monotone with slopes in [0, 1]; "
                   "'spline' learns one three-piece linear spline per channel")
    p.add_argument("--dense-blocks", type=nonnegative_int, default=None,
                   help="dense blocks on the flattened features before the head (default 0): non-expansive flow steps "
                   "f − hAᵀσ(Af + b) for the certified classifier, spectrally normalised residual blocks for the baseline")
    p.add_argument("--dense-width", type=positive_int, default=None,
                   help="rows of each dense block's matrix (default 128 for the certified classifier; the baseline's "
                   "blocks hold two matrices: its default 64 gives equal parameters)")
    p.add_argument("--steps", type=positive_int, default=5000, help="training steps")
    p.add_argument("--batch", type=positive_int, default=128, help="images per step")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--eps", type=nonnegative_float, default=0.5, help="training radius of the margin loss (ℓ2, pixels in [0, 1])")
    p.add_argument("--eps-ramp", type=nonnegative_float, default=0.0, metavar="FRACTION",
                   help="grow the training radius linearly from 0 to --eps over this fraction of the steps (0 to 1; "
                   "default 0: --eps from the first step)")
    p.add_argument("--temperature", type=positive_float, default=8.0, help="scale of the shifted logits in the loss")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="arithmetic of the training forward")
    p.add_argument("--augment", action="store_true", help="random horizontal flips and shifts by up to 2 pixels")
    p.add_argument("--seed", type=seed, default=0, help="random seed")
    p.add_argument("--calibrate-every", type=positive_int, default=200, help="steps between norm calibrations")
    p.add_argument("--checkpoint-minutes", type=positive_float, default=5.0, help="minutes between checkpoints")
    p.add_argument("--log-every", type=positive_int, default=100, help="steps between log lines when no progress bar is shown")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint next to --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start over where --out or its checkpoint already exist (without it such a run is refused)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.widths) != len(args.depths):
        print(f"{parser.prog}: error: --widths and --depths need one value per stage, got {args.widths} and "
              f"{args.depths}", file=sys.stderr)
        return 2
    try:
        check_outputs([], [("--out", Path(args.out), (".safetensors",))])
        architecture = dict(widths=args.widths, depths=args.depths)
        # only the options given: ClassifierConfig refuses any that the model does not take
        for option in ("time", "activation", "dense_blocks", "dense_width"):
            if getattr(args, option) is not None:
                architecture[option] = getattr(args, option)
        config = ClassifierConfig(
            data=args.data, out=args.out, dataset=args.dataset, model=args.model,
            architecture=architecture, steps=args.steps, batch=args.batch, lr=args.lr,
            eps=args.eps, eps_ramp=args.eps_ramp, temperature=args.temperature, seed=args.seed,
            calibrate_every=args.calibrate_every, checkpoint_minutes=args.checkpoint_minutes, log_every=args.log_every,
            precision=args.precision, download=args.download, augment=args.augment, overwrite=args.overwrite)
        trainer = ClassifierTrainer(config, resume=args.resume, progress=not args.quiet and sys.stderr.isatty())
        outcome = trainer.run()
        if outcome != "finished":
            print(f"interrupted at step {trainer.step}; resume with --resume", file=sys.stderr)
            return interrupted_exit_status(trainer.stop_signal)
        test = load_dataset(args.dataset, args.data, train=False, download=args.download)
        path = trainer.export(test)
        print(json.dumps({"weights": str(path), "steps": trainer.step, "train_seconds": round(trainer.train_seconds),
                          "lipschitz": trainer.model.lipschitz_bound()}))
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
