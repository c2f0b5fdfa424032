"""Certified robust classification on Fashion-MNIST (issue #25): the certified 1-Lipschitz classifier against a
spectral-normalised ResNet of the same parameters, trained for the same steps with the same loss.

Trains each model unless its weights exist (resuming from its checkpoint in ``--state`` when one is there; SIGTERM
or Ctrl-C stops it cleanly and a rerun continues), then over the full 10,000-image test set records clean accuracy
and certified accuracy at each ε, and on the first ``--pgd-images`` test images the PGD ℓ2 robust accuracy beside the
certified accuracy of the same images (every PGD cell must be ≥ its certified cell), plus an adversarial search for
each model's Lipschitz constant against its guaranteed bound. Writes ``benchmarks/results/robust_classification.md``
and ``.png`` (certified accuracy against ε). Usage (the models one after the other, two threads each: 111 min for
ours and 31 for the baseline on a 2-core AMD EPYC; ``--jobs 2 --threads 1`` trains them side by side)::

    .venv/bin/python benchmarks/robust_classification.py
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, ROOT, header  # noqa: E402

from pnp_stable._safetensors import metadata_json  # noqa: E402
from pnp_stable.classification import (certified_accuracy, fashion_mnist, lipschitz_search, load_classifier,  # noqa: E402
                                       robust_accuracy)
from pnp_stable.classification.trainer import ClassifierConfig, ClassifierTrainer  # noqa: E402
from pnp_stable.classification.storage import read_classifier_metadata  # noqa: E402

EPS = (0.1, 0.25, 0.5, 1.0)
MODELS = {  # equal parameters: a residual block holds two convolutions, a non-expansive block one
    "lipschitz": ("ours: non-expansive gradient-flow blocks, widths 32/64, 4 + 4 blocks, time span T ≤ 3.8, "
                  "2 dense blocks of 64 ridges",
                  dict(widths=[32, 64], depths=[4, 4], time=3.8, dense_blocks=2, dense_width=64)),
    "spectral-resnet": ("baseline: spectral-normalised ResNet, widths 32/64, 2 + 2 residual blocks, "
                        "2 dense residual blocks of hidden width 32",
                        dict(widths=[32, 64], depths=[2, 2], dense_blocks=2, dense_width=32)),
}
ANCHORS = [
    "The paper's setting (Sherry et al. 2024, from its public experiment description): CIFAR-10, a 1×1 lift to 16 channels, "
    "3 stages of 5 non-expansive blocks, average-pool down-sampling, a normalised linear head, SGD with a one-cycle "
    "schedule for 40,000 steps of batch 128 on a GPU; certified if the margin exceeds √2·L·ε.",
    "Published CIFAR-10 certified ℓ2 accuracy at ε = 36/255 (GPU training, hundreds of epochs, tens to hundreds of "
    "millions of parameters; Prach et al. 2023, arXiv:2311.16833, Table 4): SLL X-Large (Araujo et al., ICLR 2023) "
    "73.3 % clean, 65.8 % certified (236 M parameters); SLL Small 62.6 % certified (41 M); CPL XL (Meunier et al., "
    "ICML 2022) 78.5 % clean, 64.4 % certified.",
    "These are anchors for a GPU user running the CIFAR-10 path (`--dataset cifar10 --download`); our Fashion-MNIST "
    "numbers on 2 CPU cores are not comparable to them.",
]


def weights_path(state: Path, key: str) -> Path:
    """Where model ``key``'s exported weights live; their presence means it is trained."""
    return state / f"{key}.safetensors"


def config_for(key: str, data: Path, state: Path, steps: int) -> ClassifierConfig:
    return ClassifierConfig(data=str(data), out=str(weights_path(state, key)), checkpoint=str(state / f"{key}.ckpt"),
                            model=key, architecture=MODELS[key][1], steps=steps, batch=64, lr=2e-3, eps=0.3,
                            eps_ramp=0.5, temperature=8.0, seed=0, checkpoint_minutes=3, log_every=500, precision="bf16")


def train(key: str, data: Path, state: Path, steps: int) -> bool:
    """Train (or resume) ``key`` and export its weights; False when it was interrupted."""
    config = config_for(key, data, state, steps)
    trainer = ClassifierTrainer(config, resume=Path(config.checkpoint).is_file(), progress=False)
    if trainer.run() != "finished":
        print(f"{key}: interrupted at step {trainer.step}; rerun to continue", file=sys.stderr)
        return False
    trainer.export(fashion_mnist(data, train=False), EPS)
    return True


def train_in_processes(keys: list[str], args) -> bool:
    """Train each model in its own process with ``--threads`` torch threads, ``--jobs`` at a time; a SIGTERM to this
    process is passed on (a Ctrl-C reaches them from the terminal), so each writes its checkpoint and a rerun
    continues. True when every model finished."""
    command = [sys.executable, __file__, "--data", str(args.data), "--state", str(args.state), "--steps", str(args.steps),
               "--threads", str(args.threads), "--train-only", "--models"]
    for start in range(0, len(keys), args.jobs):
        children = [subprocess.Popen(command + [key]) for key in keys[start : start + args.jobs]]
        previous = signal.signal(signal.SIGTERM, lambda *_: [child.send_signal(signal.SIGTERM) for child in children])
        try:
            codes = [child.wait() for child in children]
        except KeyboardInterrupt:
            codes = [child.wait() or 130 for child in children]
        finally:
            signal.signal(signal.SIGTERM, previous)
        if any(codes):
            return False
    return True


def evaluate(key: str, data: Path, state: Path, pgd_images: int, pgd_steps: int) -> dict:
    path = weights_path(state, key)
    model = load_classifier(path)
    record = _training_record(path)
    images, labels = fashion_mnist(data, train=False).tensors
    batches = [(images[i : i + 1000], labels[i : i + 1000]) for i in range(0, len(labels), 1000)]
    grid = [i / 40 for i in range(61)]
    full = certified_accuracy(model, batches, sorted(set(EPS) | set(grid)))
    subset = certified_accuracy(model, [(images[:pgd_images], labels[:pgd_images])], EPS)
    attacked = {eps: robust_accuracy(model, images[:pgd_images], labels[:pgd_images], eps, steps=pgd_steps, restarts=2)
                for eps in EPS}
    search = lipschitz_search(model, images[:32], steps=200)
    return {"key": key, "clean": full["clean"], "certified": full["certified"], "subset": subset, "pgd": attacked,
            "bound": model.lipschitz_bound(), "feature_bound": model.feature_lipschitz(), "search": search,
            "parameters": sum(p.numel() for p in model.parameters()), **record}


def _training_record(path: Path) -> dict:
    """Steps, training seconds, threads and the training configuration recorded in the exported weights."""
    metadata = read_classifier_metadata(path)
    return {"steps": int(metadata["steps"]), "seconds": float(metadata["train_seconds"]),
            "threads": metadata.get("threads", "?"),
            "config": metadata_json(metadata, "training", path, "ClassifierTrainer.export")}


def _training_line(rows: list[dict], state: Path) -> str:
    """One line for the training options the models share, read from their weights (the options they really ran)."""
    keys = ("lr", "batch", "steps", "eps", "eps_ramp", "temperature", "precision", "augment")
    defaults = asdict(ClassifierConfig(data="", out=""))  # for options added after a model's weights were exported
    options = [{key: row["config"].get(key, defaults[key]) for key in keys} for row in rows]
    shared = options[0]
    if any(option != shared for option in options):
        raise ValueError("the models were trained with different options; retrain them with the same ones")
    ramp = f"ramped from 0 over the first {shared['eps_ramp']:.0%} of the steps, " if shared["eps_ramp"] else ""
    threads = ", ".join(f"{row['key']} {row['threads']}" for row in rows)
    return (f"- training: Adam, one-cycle lr {shared['lr']:g}, batch {shared['batch']}, {shared['steps']} steps, margin "
            f"loss at ε = {shared['eps']:g} ({ramp}temperature {shared['temperature']:g}), {shared['precision']}, "
            f"{'with' if shared['augment'] else 'no'} augmentation; torch threads while training: {threads}; state and "
            f"weights in `{state.relative_to(ROOT) if state.is_relative_to(ROOT) else state}`")


def report(rows: list[dict], args) -> None:
    lines = header("Certified robust classification on Fashion-MNIST")
    lines += [
        "", f"- data: Fashion-MNIST, 60,000 training images, the full 10,000-image test set; pixels in [0, 1], ℓ2 radii",
        _training_line(rows, args.state),
        f"- PGD: {args.pgd_steps} steps, 2 starts (zero and random), margin objective, on the first {args.pgd_images} "
        "test images; the certified column beside it is for the same images",
        "- certified radius: min over j ≠ ŷ of (z_ŷ − z_j)/(L_F‖w_ŷ − w_j‖), L_F the guaranteed bound of the feature map",
        "", "| model | parameters | steps | training wall time | clean | " + " | ".join(f"certified ε = {e:g}" for e in EPS) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(EPS),
    ]
    for row in rows:
        lines.append(f"| {MODELS[row['key']][0]} | {row['parameters']:,} | {row['steps']:,} | {row['seconds'] / 60:.0f} min | "
                     f"{row['clean']:.2%} | " + " | ".join(f"{row['certified'][e]:.2%}" for e in EPS) + " |")
    lines += ["", f"PGD ℓ2 robust accuracy against certified accuracy on the first {args.pgd_images} test images "
              "(robust ≥ certified in every cell, or the certificate is wrong):", "",
              "| model | ε | certified | PGD robust | holds |", "|---|---:|---:|---:|---|"]
    for row in rows:
        for eps in EPS:
            certified, attacked = row["subset"]["certified"][eps], row["pgd"][eps]
            lines.append(f"| {row['key']} | {eps:g} | {certified:.2%} | {attacked:.2%} | {'yes' if attacked >= certified else 'NO'} |")
    lines += ["", "Lipschitz constant of the logits map: guaranteed bound against an adversarial search (Adam over input "
              "pairs from 32 test images, 200 steps):", "", "| model | certified bound | of which features L_F | search found | holds |",
              "|---|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['key']} | {row['bound']:.4f} | {row['feature_bound']:.4f} | {row['search']:.4f} | "
                     f"{'yes' if row['search'] <= row['bound'] else 'NO'} |")
    lines += ["", "Anchors (not comparable):", ""] + [f"- {anchor}" for anchor in ANCHORS]
    lines += ["", "![certified accuracy against ε](robust_classification.png)", ""]
    (RESULTS / "robust_classification.md").write_text("\n".join(lines))
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for row in rows:
        grid = sorted(row["certified"])
        line, = axes.plot(grid, [row["certified"][e] for e in grid], label=f"{row['key']}: certified")
        axes.plot(list(EPS), [row["pgd"][e] for e in EPS], "o--", color=line.get_color(), label=f"{row['key']}: PGD (subset)")
    axes.set_xlabel("ℓ2 radius ε (pixels in [0, 1])")
    axes.set_ylabel("accuracy")
    axes.set_title("Fashion-MNIST test set")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "robust_classification.png", dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data")) / "fashion-mnist")
    parser.add_argument("--state", type=Path, default=ROOT / "training" / "classifiers", help="weights and checkpoints")
    parser.add_argument("--steps", type=int, default=35000, help="training steps of each model")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--pgd-images", type=int, default=500)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (of each training process with --jobs)")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once, one process each")
    parser.add_argument("--train-only", action="store_true",
                        help="train the models and stop (e.g. one process per model with --threads 1); a rerun reports")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.state.mkdir(parents=True, exist_ok=True)
    untrained = [key for key in args.models if not weights_path(args.state, key).is_file()]
    if args.jobs > 1 and len(untrained) > 1:
        finished = train_in_processes(untrained, args)
    else:
        finished = all(train(key, args.data, args.state, args.steps) for key in untrained)  # stops at an interruption
    if not finished:
        return 130
    if args.train_only:
        return 0
    rows = [evaluate(key, args.data, args.state, args.pgd_images, args.pgd_steps) for key in args.models]
    print(json.dumps(rows, default=str, indent=1))
    report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
