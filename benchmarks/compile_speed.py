"""Training-step speed with ``--compile`` (torch.compile of the training forward) against eager, at 2 threads.

For three certified gray networks of the architecture screening (issue #22), each in bf16 as the screening and the
campaign train them: a. the paper's gradient-flow blocks, width 32, depth 8 (fine-tuned from the shipped
averaged-gray weights, so that its sub-steps are those of a trained network); d. SLL layers, width 32, depth 8;
c + d. multi-scale SLL (16 channels at full resolution, 64 at half). Each is built twice from the same seed, eager
and compiled; the first step of the compiled one includes the compilation (reported). After ``--warmup`` steps
each, ``--repeats`` alternated repeats of every row time ``Trainer.train_step`` (batch, forward, loss, backward,
Adam). The compiled forward is also compared with the checked eager network on one batch (max |difference|).
Writes ``benchmarks/results/compile_speed.md``.

    .venv/bin/python benchmarks/compile_speed.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # cold: the compilation time is real
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, ROOT, header  # noqa: E402
from denoiser_speed import time_alternately  # noqa: E402

from pnp_stable.denoisers.zoo import denoiser_file  # noqa: E402
from pnp_stable.training import TrainConfig, Trainer  # noqa: E402

NETWORKS = {
    "a. gradient-flow, width 32, depth 8": (dict(width=32, depth=8, noise_adaptive=True), "averaged-gray"),
    "d. SLL, width 32, depth 8": (dict(width=32, depth=8, block="sll", noise_adaptive=True), None),
    "c + d. multi-scale SLL, 16/64 channels, 10 blocks": (
        dict(width=16, depth=10, scales=[1, 2, 2, 2, 2, 2, 2, 2, 2, 1], block="sll", noise_adaptive=True), None),
}


def make_trainer(data: Path, out: Path, architecture: dict, init: str | None, compile: bool) -> Trainer:
    config = TrainConfig(data=[str(data / "train" / "gray" / "Train400")], out=str(out), sigma=[0.0, 50 / 255],
                         patch=40, batch=32, steps=10_000, lr=2e-3, seed=0, calibrate_every=2000, validate_every=0,
                         checkpoint_minutes=1e6, architecture=architecture, precision="bf16",
                         init=str(denoiser_file(init)) if init else None, compile=compile)
    return Trainer(config, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--out", type=Path, default=RESULTS / "compile_speed.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    trainers, compile_seconds, differences = {}, {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        for label, (architecture, init) in NETWORKS.items():
            for compiled in (False, True):
                trainer = make_trainer(args.data, Path(workdir) / f"{len(trainers)}.safetensors", architecture, init, compiled)
                if compiled:
                    start = time.perf_counter()
                    trainer.train_step()
                    compile_seconds[label] = time.perf_counter() - start
                    noisy, _, sigma = next(trainer.sampler)
                    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                        differences[label] = float((trainer.net(noisy, sigma).float()
                                                    - trainer.model(noisy, sigma).float()).abs().max())
                trainers[(label, compiled)] = trainer
        times = time_alternately({key: trainer.train_step for key, trainer in trainers.items()}, args.warmup,
                                 args.repeats, "training steps, 2 threads")
    lines = header("Training-step speed with --compile (torch.compile of the training forward)") + [
        f"Gray Train400, batch 32 of 40×40 patches, σ ∈ [0, 50/255], bf16 autocast, 2 threads; `Trainer.train_step` "
        f"timed after {args.warmup} warm-up steps, {args.repeats} alternated repeats of every row. Compilation: the wall "
        "time of the first compiled step (compiling it and taking it), with an empty compilation cache. Difference: max |compiled − eager checked| forward on one batch under "
        "bf16 autocast (the same network; bf16 rounding differs with the fused kernels).", "",
        "| network | eager ms/step (median, min–max) | compiled ms/step (median, min–max) | speed-up | compilation (s) "
        "| max difference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in NETWORKS:
        eager, compiled = times[(label, False)], times[(label, True)]
        lines.append(f"| {label} | {1e3 * statistics.median(eager):.0f} ({1e3 * min(eager):.0f}–{1e3 * max(eager):.0f}) "
                     f"| {1e3 * statistics.median(compiled):.0f} ({1e3 * min(compiled):.0f}–{1e3 * max(compiled):.0f}) "
                     f"| **{statistics.median(eager) / statistics.median(compiled):.2f}×** | {compile_seconds[label]:.0f} "
                     f"| {differences[label]:.1e} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
