"""Speed of the certified averaged denoiser on CPU: inference vs DnCNN, and the cost of the spectral-norm update.

(a) Inference. One 256×256 gray image (batch 1, ``torch.no_grad``, eval mode) through our
    default architecture ``AveragedDenoiser(channels=1)`` (width 32, depth 8, noise-level
    input) and through deepinv's DnCNN (``DnCNNBaseline``) of width 32 whose depth is chosen
    to match our parameter count as closely as possible. The first eval-mode use of our
    network computes the guaranteed per-conv norm bounds (cached afterwards); that is timed
    on its own as the *certification time* (``model.certificate``, before any forward call),
    so it is not part of the inference times. After warm-up calls, the two models are timed
    alternately (the order flips every repeat) and we report the median time of each and the
    median of the paired ratios.

(b) Training step. Forward + backward + ``Adam.step`` of our default architecture in train
    mode on a batch of 32 gray 40×40 patches (MSE to the clean patch, σ = 0.1), *with* the
    adaptive spectral-norm update (the default: every ``NonexpansiveBlock`` forward in train mode
    calls ``conv.power_step()``, one power-iteration step u ← WᵀWu/‖WᵀWu‖ on the 32×32 power
    image) and *without* it: the same model with each block's ``conv.power_step`` replaced by a
    no-op (``block.conv.power_step = lambda: None``, removed again afterwards). "Without" still
    normalises A = W/‖Wu‖ with the (then frozen) power vector u, so the difference is exactly
    the cost of the power-iteration steps. Both variants are timed alternately on the same
    model and optimiser; target: with/without ≤ 1.2.

Absolute times on 2 shared cores are noisy; the paired ratios are the robust numbers. Both (a) and
(b) are also timed with 1 thread as a supplement: whenever another process holds one of the 2
cores, every 2-thread OpenMP region waits for it, which slows many small operations (such as the
power steps on a 1×32×32×32 image) far more than large ones, so the 2-thread ratios depend on
the load at the time of the run.
Results go to stdout and ``results/denoiser_speed.md``.

    .venv/bin/python benchmarks/denoiser_speed.py            # full run (2–3 min, ~75 s of it certification; up to 5 under heavy load)
    .venv/bin/python benchmarks/denoiser_speed.py --quick    # tiny models and inputs, stdout only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import deepinv as dinv
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pnp_stable.denoisers import AveragedDenoiser, DnCNNBaseline, parameter_count

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import STARTED_AT, STARTED_COMMIT, command_line  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "denoiser_speed.md"
SIGMA, SEED, TARGET_RATIO = 0.1, 0, 1.2


def timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def time_alternately(fs: dict, warmup: int, repeats: int, desc: str) -> dict[str, list[float]]:
    """Per-call seconds of each function in ``fs``, after ``warmup`` calls each; order flips every repeat."""
    names = list(fs)
    for _ in range(warmup):
        for name in names:
            fs[name]()
    times = {name: [] for name in names}
    for r in tqdm(range(repeats), desc=desc):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(fs[name]))
    return times


def summary(times: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    """Medians and minima of ``num`` and ``den``, and the ratios: of medians, of minima, median of paired ratios."""
    med_num, med_den = statistics.median(times[num]), statistics.median(times[den])
    min_num, min_den = min(times[num]), min(times[den])
    paired = statistics.median(a / b for a, b in zip(times[num], times[den]))
    return dict(med_num=med_num, med_den=med_den, min_num=min_num, min_den=min_den,
                ratio_med=med_num / med_den, ratio_min=min_num / min_den, paired=paired)


def spread(ts: list[float]) -> str:
    return f"{1e3 * min(ts):.0f}–{1e3 * max(ts):.0f}"


def matched_dncnn(target: int, width: int) -> tuple[int, int]:
    """DnCNN depth (width fixed) whose parameter count is closest to ``target``."""
    depth = min(range(3, 41), key=lambda d: abs(parameter_count(DnCNNBaseline(1, d, width)) - target))
    return depth, parameter_count(DnCNNBaseline(1, depth, width))


def macs_per_pixel(ours: AveragedDenoiser, dncnn_depth: int, dncnn_width: int) -> tuple[int, int]:
    """Multiply–accumulates per pixel of the image convolutions (ours: A and Aᵀ per sub-step per block)."""
    k2 = ours.config["kernel_size"] ** 2
    w = ours.width
    ours_macs = sum(2 * w * w * k2 * n for n in ours.substeps())
    d = dncnn_width
    dncnn_macs = k2 * (d + (dncnn_depth - 2) * d * d + d)
    return ours_macs, dncnn_macs


def inference(ours, dncnn, side: int, warmup: int, repeats: int, single_repeats: int):
    gen = torch.Generator().manual_seed(SEED)
    x = torch.rand(1, 1, side, side, generator=gen)
    ours.eval()
    dncnn.eval()
    cert_s = timed(lambda: ours.certificate)
    certificate = ours.certificate
    with torch.no_grad():
        first_s = timed(lambda: ours(x, SIGMA))  # bounds already cached: an ordinary (cold) call
        fs = {"ours": lambda: ours(x, SIGMA), "dncnn": lambda: dncnn(x, SIGMA)}
        times = time_alternately(fs, warmup, repeats, f"inference, {torch.get_num_threads()} threads (alternating)")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            single = time_alternately(fs, warmup, single_repeats, "inference, 1 thread (alternating)")
        finally:
            torch.set_num_threads(threads)
    return cert_s, certificate, first_s, times, single


def training(ours, batch: int, patch: int, warmup: int, plan: list[tuple[int, int]]):
    """{threads: (alternated step times, median time of the power steps alone)} for each (threads, repeats)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    clean = torch.rand(batch, 1, patch, patch, generator=gen)
    noisy = clean + SIGMA * torch.randn(clean.shape, generator=gen)
    ours.train()
    optimiser = torch.optim.Adam(ours.parameters(), lr=1e-4)
    convs = [block.conv for block in ours.blocks]

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss = F.mse_loss(ours(noisy, SIGMA), clean)
        loss.backward()
        optimiser.step()

    def step_without_update():
        for conv in convs:
            conv.power_step = lambda: None  # instance attribute shadows CertifiedConv.power_step
        try:
            step()
        finally:
            for conv in convs:
                del conv.power_step

    def power_steps_only():
        for conv in convs:
            conv.power_step()

    threads_before = torch.get_num_threads()
    results = {}
    try:
        for threads, repeats in plan:
            torch.set_num_threads(threads)
            times = time_alternately({"with": step, "without": step_without_update}, warmup, repeats,
                                     f"training step, {threads} thread(s) (alternating)")
            for _ in range(warmup):
                power_steps_only()
            power_s = statistics.median(timed(power_steps_only) for _ in range(max(5, repeats)))
            results[threads] = (times, power_s)
    finally:
        torch.set_num_threads(threads_before)
    return results, ours.substeps()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 8, depth 2, 64×64 image, batch 4; stdout only")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    if args.quick:
        width, depth, side, batch, warmup, inf_repeats, single_repeats, train_repeats = 8, 2, 64, 4, 1, 3, 2, (3, 2)
    else:
        width, depth, side, batch, warmup, inf_repeats, single_repeats, train_repeats = 32, 8, 256, 32, 2, 15, 9, (12, 8)
    patch = 40

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    torch.manual_seed(SEED)
    ours = AveragedDenoiser(channels=1) if not args.quick else AveragedDenoiser(channels=1, width=width, depth=depth)
    n_ours = parameter_count(ours)
    dncnn_depth, n_dncnn = matched_dncnn(n_ours, width)
    torch.manual_seed(SEED)
    dncnn = DnCNNBaseline(channels=1, depth=dncnn_depth, width=width)

    cert_s, certificate, first_s, inf, inf1 = inference(ours, dncnn, side, warmup, inf_repeats, single_repeats)
    eval_substeps = ours.substeps()
    macs_ours, macs_dncnn = macs_per_pixel(ours, dncnn_depth, width)
    si, si1 = summary(inf, "ours", "dncnn"), summary(inf1, "ours", "dncnn")

    plan = [(args.threads, train_repeats[0])] + ([(1, train_repeats[1])] if args.threads != 1 else [])
    train, train_substeps = training(ours, batch, patch, warmup, plan)
    st = summary(train[args.threads][0], "with", "without")
    load_end = os.getloadavg()[0]

    arch = "`AveragedDenoiser(channels=1)` (defaults: width 32, depth 8, 3×3, leaky ReLU, explicit Euler, " \
        "noise-level input)" if not args.quick else f"`AveragedDenoiser(channels=1, width={width}, depth={depth})`"
    ok = st["paired"] <= TARGET_RATIO and st["ratio_med"] <= TARGET_RATIO
    report = [
        "# Denoiser speed on CPU: certified averaged denoiser vs DnCNN",
        "",
        f"- command: `{command_line()}`" + ("  (QUICK smoke run: not the default architecture)" if args.quick else ""),
        f"- date: {STARTED_AT:%Y-%m-%d %H:%M} UTC",
        f"- commit: {STARTED_COMMIT}",
        f"- machine: {platform.platform()}, os.cpu_count() = {os.cpu_count()}, torch threads {torch.get_num_threads()}; "
        f"load average (1 min) {load_start:.2f} at start, {load_end:.2f} at end (the cores are shared with other "
        "work, which inflates and scatters absolute times; the alternately timed ratios are the robust numbers)",
        f"- versions: torch {torch.__version__}, deepinv {dinv.__version__}, Python {platform.python_version()}",
        f"- ours: {arch}, {n_ours} parameters; random init (seed {SEED}); speed does not depend on the weights "
        f"except through the number of sub-steps per block (eval {eval_substeps}, train {train_substeps})",
        f"- DnCNN: `DnCNNBaseline(channels=1, depth={dncnn_depth}, width={width})` (deepinv `DnCNN`, random init), "
        f"{n_dncnn} parameters ({100 * (n_dncnn - n_ours) / n_ours:+.1f} % vs ours; depth chosen at width {width} "
        "for the closest count)",
        "",
        f"## (a) Inference: 1×1×{side}×{side}, batch 1, `torch.no_grad()`, eval mode",
        "",
        f"Certification (first `model.certificate` in eval mode: guaranteed norm bound of each of the {depth} convs, "
        f"cached until the weights or power vectors change): **{cert_s:.1f} s**. Without it the first eval-mode "
        f"forward would pay this. Certificate: {certificate}.",
        "",
        f"{warmup} warm-up calls each, then {inf_repeats} alternated repeats with {args.threads} threads (the setting "
        f"asked for) and, as a supplement, {single_repeats} with 1 thread (a 2-thread OpenMP region stalls whenever "
        "another process holds one of the 2 cores, so 1-thread times scatter less here).",
        "",
        "| model | parameters | conv MACs / pixel | threads | median (ms) | min (ms) | min–max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| ours | {n_ours} | {macs_ours} | {args.threads} | {1e3 * si['med_num']:.0f} | {1e3 * si['min_num']:.0f} "
        f"| {spread(inf['ours'])} |",
        f"| DnCNN | {n_dncnn} | {macs_dncnn} | {args.threads} | {1e3 * si['med_den']:.0f} | {1e3 * si['min_den']:.0f} "
        f"| {spread(inf['dncnn'])} |",
        f"| ours | | | 1 | {1e3 * si1['med_num']:.0f} | {1e3 * si1['min_num']:.0f} | {spread(inf1['ours'])} |",
        f"| DnCNN | | | 1 | {1e3 * si1['med_den']:.0f} | {1e3 * si1['min_den']:.0f} | {spread(inf1['dncnn'])} |",
        "",
        "| ours / DnCNN | median of paired ratios | ratio of minima | ratio of medians |",
        "|---|---:|---:|---:|",
        f"| {args.threads} threads | **{si['paired']:.2f}** | {si['ratio_min']:.2f} | {si['ratio_med']:.2f} |",
        f"| 1 thread | {si1['paired']:.2f} | {si1['ratio_min']:.2f} | {si1['ratio_med']:.2f} |",
        "",
        f"MAC ratio {macs_ours / macs_dncnn:.2f}: at equal parameters each of our blocks applies its conv twice "
        "(A and Aᵀ) per sub-step, and every layer of ours is width→width, while DnCNN's first and last are 1↔width. "
        f"First forward after certification (cold caches, {args.threads} threads): {1e3 * first_s:.0f} ms.",
        "",
        f"## (b) Training step: batch {batch}×1×{patch}×{patch}, forward + backward + Adam, train mode",
        "",
        f"{warmup} warm-up steps each, then alternated repeats on the same model and optimiser: "
        + ", ".join(f"{n} with {t} thread(s)" for t, n in plan)
        + f". \"Power steps alone\": the {depth} `conv.power_step()` calls timed by themselves (median), as a cross-check.",
        "",
        "| threads | with update, median (ms) | without, median (ms) | with / without: median of paired ratios "
        "| ratio of minima | ratio of medians | power steps alone (ms) | share of a step without |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {t} | {1e3 * s_['med_num']:.0f} ({spread(train[t][0]['with'])}) "
          f"| {1e3 * s_['med_den']:.0f} ({spread(train[t][0]['without'])}) | {'**' if t == args.threads else ''}"
          f"{s_['paired']:.3f}{'**' if t == args.threads else ''} | {s_['ratio_min']:.3f} | {s_['ratio_med']:.3f} "
          f"| {1e3 * train[t][1]:.1f} | {100 * train[t][1] / s_['med_den']:.1f} % |"
          for t, s_ in ((t, summary(train[t][0], "with", "without")) for t, _ in plan)],
        "",
        "\"with\" is the default training forward; \"without\" replaces each block's `conv.power_step` by a no-op "
        "(A = W/‖Wu‖ still uses the then frozen power vector u). Times in parentheses: min–max.",
        "",
        f"Target with / without ≤ {TARGET_RATIO} at {args.threads} threads: **{'met' if ok else 'NOT met'}** "
        f"({st['paired']:.3f}, median of paired ratios).",
    ]
    text = "\n".join(report) + "\n"
    print(text)
    if args.quick:
        print("--quick: results file not written")
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
