"""``python -m pnp_stable.training`` (or ``torchrun --nproc_per_node=N -m pnp_stable.training``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

from .._argtypes import OneLineParser, level, nonnegative_int, positive_float, positive_int, seed
from .._outputs import check_outputs
from .._signals import interrupted_exit_status, signals_deferred
from ..denoisers import ACTIVATIONS
from .trainer import LOSSES, MODELS, PRECISIONS, TrainConfig, Trainer


def build_parser(prog: str = "python -m pnp_stable.training") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="Train a certified averaged denoiser (or the unconstrained DnCNN baseline).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="training image folder(s)")
    p.add_argument("--out", required=True, help="output weights (.safetensors)")
    p.add_argument("--val", default=None, help="validation image folder")
    p.add_argument("--holdout", type=nonnegative_int, default=0,
                   help="keep the last N training images (in --data order, each folder sorted by path) out of training, "
                   "as the validation images")
    p.add_argument("--val-images", type=positive_int, default=10, help="validate on the first N validation images")
    p.add_argument("--val-sigma", type=level, default="25/255",
                   help="noise level of the validation PSNR ([0, 1] scale; default 25/255)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=1, help="1 (gray) or 3 (colour)")
    p.add_argument("--sigma", type=level, nargs="+", default=[25 / 255], help="noise level, or a range LOW HIGH ([0, 1] scale)")
    p.add_argument("--patch", type=positive_int, default=40, help="patch size")
    p.add_argument("--batch", type=positive_int, default=32, help="patches per step (per process)")
    p.add_argument("--steps", type=positive_int, default=2000, help="training steps")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="optimiser")
    p.add_argument("--model", choices=sorted(MODELS), default="averaged",
                   help="certified averaged network, or deepinv's unconstrained DnCNN as a same-budget baseline")
    p.add_argument("--width", type=positive_int, default=32, help="channels inside the network")
    p.add_argument("--depth", type=positive_int, default=8, help="number of blocks (DnCNN: conv layers)")
    p.add_argument("--scales", type=int, nargs="+", choices=[1, 2, 4], default=None,
                   help="resolution factor of each block (averaged only; one per --depth): a block at factor f runs at "
                   "1/f resolution with width·f² channels, reached by pixel (un)shuffles, which keep the certificate")
    p.add_argument("--block", choices=["gradient-flow", "sll"], default="gradient-flow",
                   help="averaged only: the paper's gradient-flow block (norms from a power estimate, calibrated to "
                   "guaranteed bounds) or an SLL layer (θ-averaged by a closed-form per-channel scaling, nothing to calibrate)")
    p.add_argument("--integrator", choices=["euler", "heun", "rk4"], default="euler", help="block integrator (averaged only)")
    p.add_argument("--free-weights", action="store_true",
                   help="gradient-flow blocks only: the paper's adaptive enforcement, weights left free and each block's "
                   "sub-steps n = ceil(T·L‖A‖²/(2a)) set from ‖A‖ (by default each A is normalised to ‖A‖ ≈ 1)")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default=None,
                   help="averaged only (default leaky_relu): σ of every block, monotone with slopes in [0, 1]; 'spline' learns one three-piece "
                   "linear spline per channel (soft thresholds, clips), which keeps the certificate")
    p.add_argument("--noise-adaptive", action="store_true",
                   help="learn a noise-level-dependent relaxation toward the identity (averaged only; keeps the certificate)")
    p.add_argument("--init", default=None, help="start from these weights (fine-tuning) instead of a random initialisation")
    p.add_argument("--loss", choices=LOSSES, default="mse",
                   help="'mse', or 'noise-relative': each patch's MSE over σ² + floor², so low noise levels count as much as "
                   "high ones (the logged loss is then in those units)")
    p.add_argument("--loss-floor", type=level, default="1/255", help="the floor of the noise-relative loss ([0, 1] scale)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="arithmetic of the training forward: 'bf16' runs the convolutions under torch.autocast in bfloat16 "
                   "(1.46–1.77× faster on this project's CPU, which has AVX-512 BF16: training_speed.md); weights, optimiser, loss, norms and certificate stay fp32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training forward (single process): 1.3–1.55× faster steps for SLL networks on CPU "
                        "(compile_speed.md), none for gradient-flow ones; validation, norms and certificates stay eager "
                        "fp32; a resume may change it")
    p.add_argument("--seed", type=seed, default=0, help="random seed")
    p.add_argument("--calibrate-every", type=positive_int, default=100, help="steps between norm calibrations")
    p.add_argument("--validate-every", type=nonnegative_int, default=500, help="steps between validations (0: none)")
    p.add_argument("--checkpoint-minutes", type=positive_float, default=5.0, help="minutes between checkpoints")
    p.add_argument("--log-every", type=nonnegative_int, default=50,
                   help="steps between log lines when no progress bar is shown (0: none)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint next to --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run where --out or its checkpoint already exists (else refused without --resume)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar: a JSON line on stderr every --log-every steps instead (--log-every 0: none)")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m pnp_stable.training") -> int:
    args = build_parser(prog).parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")  # the trainer runs on the CPU (no --device): NCCL would need CUDA tensors
    sigma = args.sigma[0] if len(args.sigma) == 1 else args.sigma
    architecture = dict(width=args.width, depth=args.depth)
    if args.model == "averaged":
        architecture |= dict(integrator=args.integrator) | ({"noise_adaptive": True} if args.noise_adaptive else {})
        architecture |= ({"scales": args.scales} if args.scales else {}) | ({"block": "sll"} if args.block == "sll" else {})
        architecture |= {"activation": args.activation} if args.activation else {}
        architecture |= {"normalise": False} if args.free_weights else {}
    elif args.noise_adaptive or args.scales or args.block != "gradient-flow" or args.activation or args.free_weights:
        print(f"{prog}: error: --noise-adaptive, --scales, --block, --activation and --free-weights apply to the "
              "averaged model only", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        check_outputs([Path(args.init)] if args.init else [], [("--out", Path(args.out), (".safetensors",))])
        config = TrainConfig(
            data=args.data, out=args.out, val=args.val, channels=args.channels, sigma=sigma, patch=args.patch,
            batch=args.batch, steps=args.steps, lr=args.lr, optimizer=args.optimizer, seed=args.seed,
            calibrate_every=args.calibrate_every, validate_every=args.validate_every,
            checkpoint_minutes=args.checkpoint_minutes, log_every=args.log_every,
            architecture=architecture, model=args.model, init=args.init, loss=args.loss, loss_floor=args.loss_floor,
            precision=args.precision, holdout=args.holdout, val_images=args.val_images, compile=args.compile,
            val_sigma=args.val_sigma, overwrite=args.overwrite,
        )
        trainer = Trainer(config, resume=args.resume, progress=not args.quiet and sys.stderr.isatty())
        outcome = trainer.run()
        if trainer.rank == 0:
            # an interrupted run also exports its current network (a campaign is evaluated between sessions); the
            # metadata says where in the schedule it stopped
            with signals_deferred() as deferred:  # a SIGTERM during the export must not lose it
                path = trainer.export({"wall_time_s": f"{time.monotonic() - start:.0f}", "world_size": str(trainer.world),
                                       "stopped": f"{outcome} at step {trainer.step} of {config.steps}"})
            if deferred and trainer.step < config.steps:  # a signal during a finished run's export stops nothing
                outcome, trainer.stop_signal = "interrupted", trainer.stop_signal or deferred[0]
            print(json.dumps({"weights": str(path), "steps": trainer.step, "certificate": str(trainer.model.certificate)},
                             ensure_ascii=False))
            if outcome != "finished":
                print(f"interrupted at step {trainer.step} of {config.steps} (the weights above are that step's network); "
                      "resume with --resume", file=sys.stderr)
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0 if outcome == "finished" else interrupted_exit_status(trainer.stop_signal)


if __name__ == "__main__":
    sys.exit(main())
