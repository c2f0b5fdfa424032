"""Architecture screening of certified denoisers at equal training time (issue #22 §2), resumable across sessions.

Protocol, the same for every candidate: gray Train400 without its last 40 images (``--holdout``), which are the
validation set (180×180, outside every test set and every candidate's training data); 40×40 patches, batch 32,
σ uniform in [0, 50/255], Adam with a one-cycle schedule (peak lr 2e-3), bf16 autocast, 2 threads (``--threads``:
one each for two candidates run side by side), the norm
bounds calibrated every 2,000 steps. Each candidate first times 15 steps and one calibration, then gets the
number of steps that fills ``--minutes`` of training with its calibrations, so that its one-cycle schedule ends
within the budget; validations (which recompute the norm bounds of the certified network) come on top, and the
results give the whole wall time. Validation PSNR of the fp32 eval network (certified) every 1,000 steps at
σ = 25/255, and at the end at σ = 15, 25, 50 on the 40 held-out images; then the certificate, an adversarial
search against it, and the 8-fold certified self-ensemble (inference only) of the finished network. BM3D on the
same images is the reference.

Each candidate's state lives in ``training/screening/``: ``KEY.json`` (steps, timings, validation curve, results)
and ``KEY.ckpt`` (the trainer's checkpoint). Interrupt with SIGTERM or SIGINT (``timeout -s TERM 50m …``) at any
time: training writes its checkpoint, a measurement or final evaluation under way completes, and the next run
resumes; finished candidates are not trained again. Every run ends by writing the results file from the state
of every candidate.

    .venv/bin/python benchmarks/architectures.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, ROOT, command_line, cpu_name, header  # noqa: E402

from pnp_stable._argtypes import positive_int  # noqa: E402
from pnp_stable.denoisers import SelfEnsemble, adversarial_lipschitz, parameter_count  # noqa: E402
from pnp_stable.training import TrainConfig, Trainer, validation_psnr  # noqa: E402

DEFAULT_STATE = ROOT / "training" / "screening"
BASELINE = "a-w32-d8"  # its recorded speed defines the budget's clock for every candidate
SIGMAS = (15, 25, 50)
HOLDOUT = 40
CALIBRATE_EVERY = 2000  # a calibration of a 64-channel layer takes ~40 s: every 1000 steps would eat the budget
VALIDATE_EVERY = 1000  # validating the certified network recomputes every guaranteed norm bound, as a calibration does:
#                        monitoring outside the budget, so kept rare
CANDIDATES = {  # run in this order: the baseline, then the cheaper new designs
    "a-w32-d8": ("a. today's network: width 32, depth 8", dict(width=32, depth=8, noise_adaptive=True)),
    "d-sll-w32-d8": ("d. SLL layers (closed-form per-channel scaling, no power iteration or bound search): width 32, "
                     "depth 8", dict(width=32, depth=8, block="sll", noise_adaptive=True)),
    "c-ms16-d10": ("c. multi-scale: width 16 at full resolution (blocks 1 and 10), 64 channels at half resolution "
                   "(blocks 2–9)", dict(width=16, depth=10, scales=[1, 2, 2, 2, 2, 2, 2, 2, 2, 1], noise_adaptive=True)),
    "cd-sll-ms16-d10": ("c + d. multi-scale SLL: as c with SLL layers",
                        dict(width=16, depth=10, scales=[1, 2, 2, 2, 2, 2, 2, 2, 2, 1], block="sll", noise_adaptive=True)),
    # b (wider) with d's layers: d beat a at equal time, so the width question is asked of the SLL network
    "bd-sll-w48-d8": ("b + d. wider SLL: width 48, depth 8, SLL layers", dict(width=48, depth=8, block="sll", noise_adaptive=True)),
    # c + d saturated in its 100,000-step campaign (held-out σ = 25: 27.44 after 20k steps, 27.52 after 100k), so
    # capacity is the lever: more channels at half resolution, or a quarter-resolution stage (far larger receptive field)
    "cd-sll-ms24-d10": ("c + d wide: multi-scale SLL, width 24 at full resolution (blocks 1 and 10), 96 channels at "
                        "half resolution (blocks 2–9)",
                        dict(width=24, depth=10, scales=[1, 2, 2, 2, 2, 2, 2, 2, 2, 1], block="sll", noise_adaptive=True)),
    "cd-sll-ms8q-d10": ("c + d quarter: multi-scale SLL, width 8 at full resolution (blocks 1 and 10), 32 channels at "
                        "half (blocks 2, 3, 9) and 128 at quarter resolution (blocks 4–8)",
                        dict(width=8, depth=10, scales=[1, 2, 2, 4, 4, 4, 4, 4, 2, 1], block="sll", noise_adaptive=True)),
    # or more expressive layers at the same size: a learned three-piece monotone spline per channel in place of the
    # leaky ReLU (soft thresholds and clips, as transform-domain denoisers use; the certificate is unchanged)
    "cd-sll-ms16-d10-spline": ("c + d spline: as c + d with a learned monotone spline activation per channel",
                               dict(width=16, depth=10, scales=[1, 2, 2, 2, 2, 2, 2, 2, 2, 1], block="sll",
                                    activation="spline", noise_adaptive=True)),
}

# A candidate timed beside a finished design of its own family: its layers speed up from 1 to 2 threads and across
# processors as the reference's do, which the gradient-flow baseline's do not (a-w32-d8 ran 1.3× slower at one
# thread beside another job than at two threads on the Xeon, the multi-scale SLL network 2.7×)
CLOCK_REFERENCES = {key: "cd-sll-ms16-d10" for key in ("cd-sll-ms24-d10", "cd-sll-ms8q-d10", "cd-sll-ms16-d10-spline")}


def config_for(key: str, data: Path, steps: int, state: Path, validate_every: int = VALIDATE_EVERY) -> TrainConfig:
    return TrainConfig(data=[str(data / "train" / "gray" / "Train400")], out=str(ROOT / "runs" / "screening" / f"{key}.safetensors"),
                       checkpoint=str(state / f"{key}.ckpt"), channels=1, sigma=[0.0, 50 / 255], patch=40, batch=32,
                       steps=steps, lr=2e-3, seed=0, calibrate_every=CALIBRATE_EVERY, validate_every=validate_every, val_images=HOLDOUT,
                       val_sigma=25 / 255, checkpoint_minutes=3, log_every=50, architecture=CANDIDATES[key][1],
                       precision="bf16", holdout=HOLDOUT)


def macs_per_pixel(architecture: dict) -> int:
    """Multiply–accumulates per full-resolution pixel of one forward (A and Aᵀ per block, one sub-step)."""
    width, scales = architecture["width"], architecture.get("scales", [1] * architecture["depth"])
    return sum(2 * 9 * (width * f * f) ** 2 // (f * f) for f in scales)


def probe_trainer(key: str, data: Path, steps: int, state: Path) -> Trainer:
    """A trainer of candidate ``key`` for measurements only, never saved: its out and checkpoint point to unused
    temporary paths, so it neither touches the candidate's own files nor is refused for their existence."""
    probe = Path(tempfile.gettempdir()) / f"architectures-probe-{os.getpid()}-{key}.safetensors"
    config = dataclasses.replace(config_for(key, data, steps=steps, state=state), out=str(probe), checkpoint=None)
    return Trainer(config, progress=False)


def measure_speed(key: str, data: Path, state: Path) -> dict[str, float]:
    """Seconds per training step (15 steps after 3 warm-up steps) and per calibration (guaranteed norm bounds of
    every layer, the cost that grows fastest with the width): the first step, which calibrates, less a step."""
    trainer = probe_trainer(key, data, 1000, state)
    start = time.perf_counter()
    trainer.train_step()
    first = time.perf_counter() - start
    for _ in range(3):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(15):
        trainer.train_step()
    step = (time.perf_counter() - start) / 15
    return dict(seconds_per_step=step, calibration_seconds=max(0.0, first - step))


def on_baseline_clock(key: str, data: Path, folder: Path) -> dict[str, float]:
    """The candidate's timing on the baseline's clock: a finished reference (the baseline, or the candidate's
    :data:`CLOCK_REFERENCES` entry) is timed again beside the candidate and the candidate's times are scaled by the
    reference's recorded/measured ratio, so that every candidate gets the same budget of the same machine's time
    although sessions run on different processors and thread counts."""
    timing = measure_speed(key, data, folder)
    reference = CLOCK_REFERENCES.get(key, BASELINE)
    if not (folder / f"{reference}.json").exists():  # a fresh state folder: the baseline is the clock
        reference = BASELINE
    recorded_path = folder / f"{reference}.json"
    if key == BASELINE or not recorded_path.exists():
        return timing
    recorded = json.loads(recorded_path.read_text())
    here = measure_speed(reference, data, folder)
    scale = recorded["seconds_per_step"] / here["seconds_per_step"]
    return dict(seconds_per_step=scale * timing["seconds_per_step"],
                calibration_seconds=scale * timing["calibration_seconds"], clock_scale=scale, clock_reference=reference,
                measured_seconds_per_step=timing["seconds_per_step"])


def steps_within(minutes: float, timing: dict[str, float]) -> int:
    """Steps that fit the training budget together with their calibrations (one every CALIBRATE_EVERY steps, one
    at the start and one at the end). Validations are monitoring, outside the budget."""
    per_step = timing["seconds_per_step"] + timing["calibration_seconds"] / CALIBRATE_EVERY
    return max(100, int((60 * minutes - 2 * timing["calibration_seconds"]) / per_step))


class StopRequest:
    """SIGTERM/SIGINT outside the trainer (which handles them itself while it runs): remembered, so that the
    measurement or final evaluation under way completes, its state is saved and the report is written."""

    def __init__(self) -> None:
        self.requested = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._request)

    def _request(self, signum, frame) -> None:
        self.requested = True


def train(key: str, data: Path, minutes: float, folder: Path, stop: StopRequest, threads: int) -> bool:
    """Train candidate ``key`` within its budget, resuming its checkpoint; True when it is finished."""
    path = folder / f"{key}.json"
    state = json.loads(path.read_text()) if path.exists() else {}
    if state.get("status") == "finished":
        return True
    if not state:
        timing = on_baseline_clock(key, data, folder)
        state = dict(candidate=CANDIDATES[key][0], architecture=CANDIDATES[key][1], **timing,
                     steps=steps_within(minutes, timing), validate_every=VALIDATE_EVERY, budget_minutes=minutes,
                     wall_seconds=0.0, curve=[], status="running", machines=[])
        path.write_text(json.dumps(state, indent=1))
    machine = cpu_name() if threads == 2 else f"{cpu_name()} ({threads} thread{'s' if threads > 1 else ''})"
    if machine not in state["machines"]:
        state["machines"].append(machine)
    if stop.requested:
        return False
    trainer = Trainer(config_for(key, data, state["steps"], folder, state["validate_every"]),
                      resume=(folder / f"{key}.ckpt").exists(), progress=False)
    if stop.requested:  # a signal that came while the trainer was being built
        trainer.request_stop()
    start = time.monotonic()
    outcome = trainer.run()
    state["wall_seconds"] += time.monotonic() - start
    state["curve"] += [[record["step"], record["val_psnr"]] for record in trainer.log if "val_psnr" in record]
    if outcome == "interrupted":
        stop.requested = True
    else:
        state.update(status="finished", results=finish(trainer))
    path.write_text(json.dumps(state, indent=1))
    print(f"{key}: {outcome} at step {trainer.step} of {state['steps']}", file=sys.stderr)
    return outcome == "finished"


def finish(trainer: Trainer) -> dict:
    """The finished network's measurements (fp32 eval network): validation PSNR at :data:`SIGMAS` on the held-out
    images, the 8-fold certified self-ensemble at σ = 25/255, the certificate, an adversarial search against its α
    (max ‖Nx − Ny‖/‖x − y‖ for N = (D − (1 − α)I)/α, ≤ 1 when certified), parameters and stored size."""
    model = trainer.model.float().eval()
    images = trainer.val_images
    certificate = model.certificate
    search = adversarial_lipschitz(model, (1, 40, 40), 25 / 255, alpha=certificate.alpha)
    return {"val_psnr": {str(s): validation_psnr(model, images, s / 255) for s in SIGMAS},
            "ensemble_psnr_25": validation_psnr(SelfEnsemble(model), images, 25 / 255),
            "alpha": certificate.alpha, "guaranteed": certificate.guaranteed, "adversarial_ratio": search.ratio,
            "parameters": parameter_count(model),
            "weights_mib": sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20}


def bm3d_reference(data: Path, folder: Path) -> dict:
    """BM3D's PSNR on the held-out images (computed once, kept in the state folder's bm3d.json)."""
    path = folder / "bm3d.json"
    if not path.exists():
        from pnp_stable.denoisers import BM3DDenoiser

        images = probe_trainer("a-w32-d8", data, 1, folder).val_images
        path.write_text(json.dumps({str(s): validation_psnr(BM3DDenoiser(), images, s / 255) for s in SIGMAS}, indent=1))
    return json.loads(path.read_text())


def table_row(state: dict) -> str:
    results = state.get("results")
    measured = (f"{1e3 * state['seconds_per_step']:.0f} | {state['calibration_seconds']:.0f} | {state['steps']} "
                f"| {state['wall_seconds'] / 60:.1f}")
    if results is None:
        return f"| {state['candidate']} | | | {macs_per_pixel(state['architecture'])} | {measured} | | | | | | | {state['status']} |"
    psnrs = " | ".join(f"{results['val_psnr'][str(s)]:.2f}" for s in SIGMAS)
    return (f"| {state['candidate']} | {results['parameters']} | {results['weights_mib']:.2f} "
            f"| {macs_per_pixel(state['architecture'])} | {measured} | {psnrs} | {results['ensemble_psnr_25']:.2f} "
            f"| {results['alpha']:.4f}{'' if results['guaranteed'] else ' (NOT guaranteed)'} "
            f"| {results['adversarial_ratio']:.4f} | {state['status']} |")


def plot_curves(states: dict, reference: dict, path: Path) -> None:
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    for key, state in states.items():  # training time on the baseline's clock: the budget every candidate gets
        seconds = state["seconds_per_step"]
        axes.plot([step * seconds / 60 for step, _ in state["curve"]], [value for _, value in state["curve"]],
                  marker=".", label=key)
    axes.axhline(reference["25"], color="k", linestyle="--", label="BM3D")
    axes.set_xlabel("training time on the baseline's clock (min): step × s/step")
    axes.set_ylabel("held-out PSNR at σ = 25/255 (dB)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def report(out: Path, reference: dict, folder: Path, command: str) -> None:
    states = {key: json.loads((folder / f"{key}.json").read_text()) for key in CANDIDATES if (folder / f"{key}.json").exists()}
    png = out.with_suffix(".png")
    plot_curves(states, reference, png)
    pending = [CANDIDATES[key][0] for key in CANDIDATES if key not in states]
    lines = header("Certified denoiser architectures at equal training time", command) + [
        f"Protocol (issue #22 §2): gray Train400 minus its last {HOLDOUT} images, which are the validation set; 40×40 "
        "patches, batch 32, σ ∈ [0, 50/255], Adam one-cycle (peak 2e-3), bf16 autocast, 2 threads (unless the machines line says otherwise), a calibration of the "
        f"norm bounds every {CALIBRATE_EVERY} steps; each candidate's step count fills its training budget (steps and "
        "calibrations) at its own speed, measured beside a finished reference (the baseline a, or c + d for the later "
        "variants of c + d: `clock_reference` in the state) and scaled to the reference's recorded speed, "
        "so that every budget is the same machine's time (ms/step and s/calibration are on that clock); wall (min) is the whole time on the machines listed below, with the validations of the curve (every "
        "`validate_every` steps of its state file), each of which recomputes the certified network's norm bounds. PSNR (dB) of the certified fp32 eval network on the "
        f"{HOLDOUT} held-out images; ensemble: the 8-fold certified self-ensemble (same α). State: `training/screening/`.",
        "",
        "| candidate | parameters | weights (MiB) | MACs/pixel | ms/step | s/calibration | steps | wall (min) | σ=15 "
        "| σ=25 | σ=50 | ensemble σ=25 | α | adversarial ratio | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *[table_row(state) for state in states.values()],
        f"| BM3D (reference, no certificate) | | | | | | | | {reference['15']:.2f} | {reference['25']:.2f} "
        f"| {reference['50']:.2f} | | | | |",
        "",
        "Machines: " + "; ".join(f"{key}: {', '.join(state['machines'])}" for key, state in states.items()) + ".",
        "",
        *([f"Not run yet: {'; '.join(pending)}.", ""] if pending else []),
        f"![validation curves]({png.name})",
    ]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` less each option in ``names`` and its values (the words up to the next option)."""
    kept, skipping = [], False
    for word in argv:
        if word.startswith("--"):
            skipping = word.split("=")[0] in names
        if not skipping:
            kept.append(word)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # the report's command drops --threads and --candidates by name
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--minutes", type=float, default=40.0, help="wall-time budget per candidate")
    parser.add_argument("--out", type=Path, default=RESULTS / "architectures.md")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads; 1 to run two candidates side by side (each "
                        "is timed beside its reference under the same load, so budgets stay on the baseline's clock)")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="folder of the candidates' state")
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES),
                        help="run only these (in the table's order); the report covers every candidate's state")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.state.mkdir(parents=True, exist_ok=True)
    stop = StopRequest()
    for key in [key for key in CANDIDATES if key in args.candidates]:
        if stop.requested or not train(key, args.data, args.minutes, args.state, stop, args.threads):
            break  # interrupted: the next run resumes this candidate
    # the report covers every candidate's state, so it records the command without the options that select the work
    command = command_line(without_options(sys.argv, ("--candidates", "--threads")))
    report(args.out, bm3d_reference(args.data, args.state), args.state, command)


if __name__ == "__main__":
    main()
