"""Screen for issue #22: the exact proximal map of a learned convex ridge regulariser as the certified denoiser.

The model is :class:`pnp_stable.denoisers.ConvexRidgeDenoiser` (its module docstring has the mathematics: firmly
non-expansive for every value of the weights, each output within a certified error of the exact prox) at the single
noise level ``--sigma`` (λ = μ = 1 there), with circular boundary on the training patches, trained through its
exact minimiser by :func:`pnp_stable.training.convex_ridge.implicit_backward`. One thread, Train400 with its last
``--holdout`` images held out; validation PSNR at σ on the first ``--val-images`` of those (the noise of
:func:`validation_psnr`, so the numbers compare with ``benchmarks/architectures.py``'s). Resumable: the state
(weights, Adam, sampler, step, curve) is written to ``--state`` every ``--validate-minutes`` and at the end; rerun
the same command to continue.

    OMP_NUM_THREADS=1 .venv/bin/python training/screening/convex_ridge_prox.py --minutes 55
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pnp_stable.denoisers import ConvexRidgeDenoiser  # noqa: E402
from pnp_stable.theory import compose_averagedness  # noqa: E402
from pnp_stable.training.checkpoint import load_checkpoint, model_tensors, sampler_state, save_checkpoint  # noqa: E402
from pnp_stable.training.data import PatchSampler, load_folder, split_holdout  # noqa: E402
from pnp_stable.training.convex_ridge import implicit_backward  # noqa: E402
from pnp_stable.training.trainer import validation_psnr  # noqa: E402

#: Options that change how a run is executed or validated, not what it trains: a resume may change them (``init``
#: only acts on a fresh state, and the history records it).
EXECUTION_ONLY = ("minutes", "validate_minutes", "state", "data", "val_images", "init")
#: The parameters the screens train (by their last name): each R's filters and slopes. λ = μ = 1 at the single σ
#: (states written before the package class existed hold only these).
TRAINED = ("weight", "theta")
TRAINING_DATA = Path(__file__).resolve().parents[3] / "shared/data/train/gray/Train400"


def init_from(model: ConvexRidgeDenoiser, path: str) -> dict:
    """Load the filters and slopes of the state at ``path`` into ``model``: its filters zero-padded to the model's
    kernel and, where the model has more, joined by its own random ones whose slopes start at softplus(-8) ≈ 3e-4
    (nearly the same map); returns the state's metadata."""
    tensors, meta = load_checkpoint(path)
    weight, theta = (model_tensors(tensors)[name] for name in ("weight", "theta"))
    kernel, channels = model.weight.shape[-1], model.weight.shape[0]
    pad, old = (kernel - weight.shape[-1]) // 2, weight.shape[0]
    if (pad < 0 or weight.shape[-1] + 2 * pad != kernel or old > channels
            or theta.shape[1:] != model.theta.shape[1:]):
        raise ValueError(f"{path} holds {tuple(weight.shape)} filters with {tuple(theta.shape)} activation "
                         f"slopes; the kernel must be {weight.shape[-1]} plus an even number ≥ 0, the filters at "
                         f"least {old}, and this model has {model.theta.shape[1]} slopes per filter")
    centred = weight - weight.mean(dim=(2, 3), keepdim=True)  # what filters() made of it: padding keeps it
    with torch.no_grad():
        model.weight[:old] = F.pad(centred, (pad,) * 4)
        model.theta[:old] = theta
        model.theta[old:] = -8.0
    return meta


def add_arguments(parser: argparse.ArgumentParser, *, state: str, val_images: int, minutes: float,
                  validate_minutes: float, lr: float) -> None:
    """The options every convex-ridge screen shares (its defaults given)."""
    parser.add_argument("--data", default=str(TRAINING_DATA))
    parser.add_argument("--holdout", type=int, default=40)
    parser.add_argument("--val-images", type=int, default=val_images)
    parser.add_argument("--minutes", type=float, default=minutes, help="training minutes of this run")
    parser.add_argument("--validate-minutes", type=float, default=validate_minutes)
    parser.add_argument("--lr", type=float, default=lr, help="Adam lr of the filters; the activations' is 5×")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=40)
    parser.add_argument("--sigma", type=float, default=25)
    parser.add_argument("--state", default=str(Path(__file__).resolve().parent / state))


def screen_denoiser(args: argparse.Namespace, denoiser=ConvexRidgeDenoiser, **options) -> ConvexRidgeDenoiser:
    """A prox model as the screens train it: at the single σ = ``--sigma`` (λ = μ = 1 there), circular boundary on
    the patches, solved to 1e-4 RMS; ``options`` (filters, kernel, …) go to ``denoiser``."""
    return denoiser(sigma_knots=(args.sigma / 255,), boundary="circular", tolerance=1e-4, max_iter=5000, **options)


def run_screen(args: argparse.Namespace, model: nn.Module, backward, initialise) -> None:
    """Train ``model``'s filters and slopes (Adam, the slopes at 5× ``--lr``) for ``--minutes`` on Train400 less its
    last ``--holdout`` images, validating on the first ``--val-images`` of those at step 0 (fresh runs), every
    ``--validate-minutes`` and at the end, each time writing the resumable ``--state``; a state on disk is resumed
    (with the options it was written with). ``backward(model, noisy, clean, σ)`` accumulates the gradients and
    returns the MSE and the solver's iterations; ``initialise(model, path)`` applies ``--init`` to a fresh model and
    returns that state's metadata."""
    train, held_out = split_holdout(load_folder(args.data, 1), args.holdout)
    held_out = held_out[: args.val_images]
    sampler = PatchSampler(train, args.patch, args.batch, args.sigma / 255, seed=0)
    optimizer = torch.optim.Adam([{"params": [value], "lr": args.lr * (5 if name.endswith("theta") else 1)}
                                  for name, value in model.named_parameters() if name.split(".")[-1] in TRAINED])
    schedule = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    proxes = [module for module in model.modules() if isinstance(module, ConvexRidgeDenoiser)]
    config = {key: value for key, value in vars(args).items() if key not in EXECUTION_ONLY}
    step, history = 0, {"curve": [], "train_seconds": 0.0}
    if Path(args.state).is_file():
        tensors, meta = load_checkpoint(args.state)
        stored = {key: value for key, value in meta["config"].items() if key not in EXECUTION_ONLY}
        if stored != config:
            raise ValueError(f"{args.state} was written with other options {stored}; use them or another --state")
        model.load_state_dict({name: value for name, value in model_tensors(tensors).items()
                               if name.split(".")[-1] in TRAINED}, strict=False)
        optimizer.load_state_dict(meta["optimizer_state"])
        sampler.generator.set_state(sampler_state(tensors, args.state, rank=0, world=1))
        step, history = meta["step"], meta["history"]
    elif args.init:
        meta = initialise(model, args.init)
        history["init"] = {"state": args.init, "step": meta["step"], "train_seconds": meta["history"]["train_seconds"]}

    def checkpoint(seconds: float) -> None:
        val = validation_psnr(model, held_out, args.sigma / 255)
        history["curve"].append([step, val, len(held_out)])  # [step, dB, validation images]
        history["train_seconds"] += seconds
        print(json.dumps({"step": step, "val_psnr": round(val, 3),
                          "alpha": compose_averagedness(prox.certificate.alpha for prox in proxes),
                          "certified_inner_errors": [prox.accuracy.worst for prox in proxes],
                          "train_seconds": round(history["train_seconds"])}), flush=True)
        save_checkpoint(args.state, model, optimizer, schedule, sampler.generator.get_state(), step, config, history)

    if step == 0:
        checkpoint(0.0)
    start = last = time.time()
    while time.time() - start < args.minutes * 60:
        noisy, clean, _ = next(sampler)
        optimizer.zero_grad()
        loss, iterations = backward(model, noisy, clean, args.sigma / 255)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(json.dumps({"step": step, "train_psnr": round(-10 * math.log10(loss), 3),
                              "inner_iterations": iterations}), flush=True)
        if time.time() - last > args.validate_minutes * 60:
            checkpoint(time.time() - last)
            last = time.time()
    checkpoint(time.time() - last)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, state="convex-ridge-prox.ckpt", val_images=10, minutes=55, validate_minutes=10, lr=2e-3)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--kernel", type=int, default=9)
    parser.add_argument("--init", help="start from the weights of another state, its filters zero-padded to --kernel "
                        "and, where --channels is larger, joined by new random filters whose slopes start at "
                        "softplus(-8) ≈ 3e-4 (nearly the same map at step 0); fresh optimiser")
    args = parser.parse_args(argv)
    run_screen(args, screen_denoiser(args, filters=args.channels, kernel=args.kernel), implicit_backward, init_from)


if __name__ == "__main__":
    main()
