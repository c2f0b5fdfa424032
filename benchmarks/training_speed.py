"""Training-step speed on this CPU: the certified denoiser in fp32 and under bf16 autocast, against the
same-budget DnCNN, and 1,000-step loss curves that show whether bf16 trains the same network (issue #22 §1).

(a) ms per ``Trainer.train_step`` (next batch, forward, fp32 loss, backward, Adam, schedule) with the shipped
training configuration (batch 32 of 40×40 patches, σ uniform in [0, 50/255], width 32, depth 8, noise-adaptive):
certified gray (Train400) and colour (CBSD432), fine-tuned from the shipped averaged-gray / averaged-color weights
(so the sub-steps per block are those of a trained network), and the unconstrained DnCNN of ``--dncnn-depth``
(about the same number of parameters, random initialisation), each in fp32 and bf16, timed alternately at 2
threads and at 1.

(b) The certified gray model trained for ``--curve-steps`` steps (one-cycle, peak lr 2e-3) three times: fp32 and
bf16 from the same seed (same initialisation, same batches), and fp32 from another seed, whose distance to the
first is the run-to-run noise that bf16's distance is measured against. Each run ends with the validation PSNR
of the fp32 eval network (certified) at σ = 25/255 on the first ``--val-images`` CBSD432 images in gray.
Writes ``benchmarks/results/training_speed.md`` and ``training_speed.png``.

    .venv/bin/python benchmarks/training_speed.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, ROOT, header  # noqa: E402
from denoiser_speed import time_alternately  # noqa: E402

from pnp_stable.denoisers import parameter_count  # noqa: E402
from pnp_stable.denoisers.zoo import denoiser_file  # noqa: E402
from pnp_stable.training import TrainConfig, Trainer  # noqa: E402

SIGMA_RANGE = [0.0, 50 / 255]
WINDOW = 100  # steps per window of the loss-curve comparison


def make_trainer(data: Path, out: Path, channels: int, model: str, precision: str, steps: int, seed: int,
                 dncnn_depth: int, val: Path | None = None, val_images: int = 0, init: str | None = None) -> Trainer:
    folder = data / "train" / ("gray/Train400" if channels == 1 else "color/CBSD432")
    architecture = dict(width=32, depth=8, noise_adaptive=True) if model == "averaged" else dict(width=32, depth=dncnn_depth)
    config = TrainConfig(data=[str(folder)], out=str(out), channels=channels, sigma=SIGMA_RANGE, patch=40, batch=32,
                         steps=steps, lr=2e-3, seed=seed, calibrate_every=1000, validate_every=0,
                         checkpoint_minutes=1e6, architecture=architecture, model=model, precision=precision,
                         val=str(val) if val else None, val_images=val_images, init=init)
    return Trainer(config, progress=False)


def speed_table(data: Path, workdir: Path, warmup: int, repeats: int, dncnn_depth: int) -> tuple[list[str], dict]:
    rows, trainers = [], {}
    for label, channels, model in (("certified gray", 1, "averaged"), ("certified colour", 3, "averaged"),
                                   (f"DnCNN (depth {dncnn_depth})", 1, "dncnn")):
        for precision in ("fp32", "bf16"):
            init = str(denoiser_file("averaged-gray" if channels == 1 else "averaged-color")) if model == "averaged" else None
            trainers[(label, precision)] = make_trainer(data, workdir / f"{model}{channels}{precision}.safetensors",
                                                        channels, model, precision, steps=10_000, seed=0,
                                                        dncnn_depth=dncnn_depth, init=init)
    threads_before = torch.get_num_threads()
    medians = {}
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            times = time_alternately({key: trainer.train_step for key, trainer in trainers.items()}, warmup, repeats,
                                     f"training steps, {threads} thread(s)")
            for key, ts in times.items():
                medians[key + (threads,)] = (statistics.median(ts), min(ts), max(ts))
    finally:
        torch.set_num_threads(threads_before)
    substeps = {label: trainer.model.substeps() for (label, _), trainer in trainers.items() if label.startswith("certified")}
    rows += [f"Sub-steps per block while training: {substeps}.", "",
             "| model | parameters | precision | threads | median ms/step | min–max | bf16 speed-up (median) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for label, precision in trainers:
        for threads in (2, 1):
            median, low, high = medians[(label, precision, threads)]
            gain = medians[(label, "fp32", threads)][0] / median
            rows.append(f"| {label} | {parameter_count(trainers[(label, precision)].model)} | {precision} | {threads} "
                        f"| {1e3 * median:.0f} | {1e3 * low:.0f}–{1e3 * high:.0f} | "
                        + (f"**{gain:.2f}×**" if precision == "bf16" else "") + " |")
    return rows, medians


def curve(data: Path, workdir: Path, precision: str, seed: int, steps: int, val_images: int) -> dict:
    trainer = make_trainer(data, workdir / f"curve-{precision}-{seed}.safetensors", 1, "averaged", precision, steps,
                           seed, dncnn_depth=0, val=data / "train" / "color" / "CBSD432", val_images=val_images)
    start = time.monotonic()
    outcome = trainer.run()
    seconds = time.monotonic() - start
    trainer.model.eval()
    certificate = trainer.model.certificate
    return dict(losses=[record["loss"] for record in trainer.log], seconds=seconds, outcome=outcome,
                val_psnr=trainer.validate(), certificate=certificate, precision=precision, seed=seed)


def windows(losses: list[float]) -> list[float]:
    return [statistics.fmean(losses[i : i + WINDOW]) for i in range(0, len(losses), WINDOW)]


def plot(runs: list[dict], path: Path) -> None:
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    for run in runs:
        means = windows(run["losses"])
        axes.plot([WINDOW * (i + 0.5) for i in range(len(means))], means, marker="o",
                  label=f"{run['precision']}, seed {run['seed']}")
    axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel(f"mean MSE loss over {WINDOW} steps")
    axes.set_title("certified gray denoiser: fp32 vs bf16 autocast")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--repeats", type=int, default=8, help="alternated timing repeats per thread count")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dncnn-depth", type=int, default=10, help="DnCNN depth at width 32 (10: 74,593 parameters)")
    parser.add_argument("--curve-steps", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "training_speed.md")
    args = parser.parse_args()
    lines = header("Training-step speed: certified denoiser in fp32 and bf16 autocast, against DnCNN")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        table, medians = speed_table(args.data, Path(workdir), args.warmup, args.repeats, args.dncnn_depth)
        torch.set_num_threads(2)
        runs = [curve(args.data, Path(workdir), precision, seed, args.curve_steps, args.val_images)
                for precision, seed in (("fp32", 0), ("bf16", 0), ("fp32", 1))]
    reference, mixed, other = (windows(run["losses"]) for run in runs)
    bf16_gap = [abs(b - a) / a for a, b in zip(reference, mixed)]
    seed_gap = [abs(b - a) / a for a, b in zip(reference, other)]
    png = args.out.with_suffix(".png")
    plot(runs, png)
    speedup = medians[("certified gray", "fp32", 2)][0] / medians[("certified gray", "bf16", 2)][0]
    lines += [
        "Training configuration of the shipped models: `TrainConfig(patch=40, batch=32, sigma=[0, 50/255], lr=2e-3, "
        "calibrate_every=1000)`, width 32, depth 8, noise-adaptive; each step is `Trainer.train_step()`: the next "
        "batch, the forward (under `torch.autocast('cpu', dtype=torch.bfloat16)` for bf16), the loss in fp32, the "
        "backward, Adam and the one-cycle schedule. Weights, Adam's state, the power iterations "
        "(`CertifiedConv._weight_precision`), the norm bounds and the certificate are fp32/fp64 in both precisions.",
        "",
        f"## (a) ms per training step ({args.warmup} warm-up steps, then {args.repeats} alternated repeats of every "
        "row, at 2 threads and then at 1)",
        "",
        *table,
        "",
        f"Certified gray at 2 threads: bf16 is **{speedup:.2f}×** faster than fp32 (issue #22 asks ≥ 1.3×).",
        "",
        f"## (b) {args.curve_steps}-step loss curves, certified gray (2 threads)",
        "",
        f"Mean loss over windows of {WINDOW} steps; relative gaps to fp32 seed 0. fp32 seed 1 has another "
        "initialisation and other batches: its gap is the run-to-run noise.",
        "",
        "| steps | fp32 seed 0 | bf16 seed 0 | fp32 seed 1 | bf16 gap | seed gap |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {WINDOW * i + 1}–{WINDOW * (i + 1)} | {a:.3e} | {b:.3e} | {c:.3e} | {100 * g:.1f} % | {100 * n:.1f} % |"
          for i, (a, b, c, g, n) in enumerate(zip(reference, mixed, other, bf16_gap, seed_gap))],
        "",
        "| run | wall time (s) | ms/step | validation PSNR, σ = 25/255 (dB) | certificate |",
        "|---|---:|---:|---:|---|",
        *[f"| {run['precision']} seed {run['seed']} | {run['seconds']:.0f} | {1e3 * run['seconds'] / args.curve_steps:.0f} "
          f"| {run['val_psnr']:.2f} | α = {run['certificate'].alpha:.4f} ({'guaranteed' if run['certificate'].guaranteed else 'NOT guaranteed'}) |"
          for run in runs],
        "",
        f"Over the last half of the curve the bf16 gap averages {100 * statistics.fmean(bf16_gap[len(bf16_gap) // 2:]):.1f} % "
        f"and the seed gap {100 * statistics.fmean(seed_gap[len(seed_gap) // 2:]):.1f} %; validation PSNR: "
        f"bf16 − fp32 = {runs[1]['val_psnr'] - runs[0]['val_psnr']:+.2f} dB, "
        f"seed 1 − seed 0 = {runs[2]['val_psnr'] - runs[0]['val_psnr']:+.2f} dB. "
        "Wall times include the two calibrations (guaranteed norm bounds) of each run.",
        "",
        f"![loss curves]({png.name})",
        "",
        f"Total time of this benchmark: {(time.monotonic() - started) / 60:.0f} min.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
