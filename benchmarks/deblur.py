"""Deblurring benchmark: certified PnP vs the same-budget unconstrained baseline, PnP-BM3D, TV and Wiener.

Test sets: Set3C and CBSD10 (colour; ``--gray``: Set12) × the 8 Levin kernels × noise σ ∈ ``--noises`` (/255),
circular boundary, noise seeded per (image, kernel). Each family's models below are the colour ones; ``--gray``
swaps in their gray counterparts (:data:`GRAY`). Methods:

- ``ours-<solver>``: our FB / HQS / DRS / ADMM with a certified colour model, ``averaged-color`` or
  ``averaged-lownoise-color`` (``--models ours=NAME,NAME`` chooses among others; monitor verdicts reported);
- ``auto-<solver>``: ``ps.deblur``'s defaults (its colour model at σ_d, the solver's tuned strength, weight and
  budget, accelerated; the benchmark's circular blur and ``--tol``), nothing tuned; ``--models auto=auto,NAME`` adds a row per model at the
  same defaults;
- ``dncnn-<solver>``: the same solvers with ``dncnn-color`` or ``dncnn-lownoise-color`` (unconstrained, each
  trained with the same data and budget as its certified counterpart);
- ``ridge-<solver>``: the same solvers with ``convex-ridge-color``, the exact prox of the learned convex ridge
  regulariser on the opponent colour components (firmly non-expansive for any weights);
- ``bm3d-hqs``: PnP-HQS with BM3D (``bm3d`` package; slow: ``--bm3d-iters`` iterations);
- ``bm3d-dpir``: PnP with BM3D in the DPIR schedule (``--bm3d-iters`` HQS iterations, σ_d geometric from 49/255
  down to σ_n, data weight λ tuned; no guarantee): the strongest peer that needs no download;
- ``guided-<guide>-<solver>``: the frozen-guide route (``ps.solvers.guided_solve``): a DPIR-schedule pilot with
  the guide denoiser (``bm3d``, ``bm3dlc``: BM3D's low-complexity profile, ``dncnn``: dncnn-color, ``averaged``:
  averaged-color) gives the guide g, then
  the certified solver runs with the linear filter W(g) for the guide's default number of re-guiding rounds
  (``ps.solvers.guided_defaults``);
  violations are counted over every round;
- ``tv``: proximal gradient on ½‖Ax − y‖²/σ² + λ·TV(x) (deepinv's TV prox, exact FB, convex);
- ``wiener``: Tikhonov/Wiener filter argmin ½‖Ax − y‖² + λ/2‖x‖², closed form by FFT.

Each method's parameter (denoiser strength σ_d/σ_n, or λ; for FB also the denoiser weight ω; for PnP also
which of the family's models) is tuned per
noise level on validation crops of CBSD68 images outside CBSD10 (``--gray``: BSD68 images outside its first 10;
disjoint from the test sets, and seen by no denoiser in training: CBSD432 and Train400 are BSDS500 minus CBSD68)
blurred by motion kernels that are not the Levin kernels; the test images are never used for tuning; a grid is extended while its best value sits
on an end. ``--jobs`` runs (method, noise) tasks in parallel worker processes. Writes
``benchmarks/results/deblur.md`` and ``deblur.png`` (one image, every method).

    .venv/bin/python benchmarks/deblur.py                                   # everything (hours on 2 CPU cores)
    .venv/bin/python benchmarks/deblur.py --sets Set3C --noises 2.55 --size 96 --jobs 2 --threads 1   # reduced (CPU)
    .venv/bin/python benchmarks/deblur.py --gray --sets Set12 --noises 2.55 --size 96 --jobs 2 --threads 1   # gray
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import deepinv as dinv
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _images import held_out_color_images, held_out_gray_images, load_crops  # noqa: E402
from _report import RESULTS, ROOT, header, output_path  # noqa: E402

import pnp_stable as ps  # noqa: E402
from pnp_stable.denoisers import BM3DDenoiser  # noqa: E402
from pnp_stable.training import list_images  # noqa: E402

GRIDS = {"tv": [0.25, 0.5, 1.0, 2.0, 4.0], "wiener": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]}
PNP_FACTORS = [0.5, 1.0, 2.0]  # PnP strengths tried: these × the solver's tuned default (solvers/defaults.py)
FB_WEIGHTS = [1.0, 0.3, 0.1]  # FB's denoiser weights ω tried, each with strengths around ω·s² = the default's s²


@dataclass(frozen=True)
class Palette:
    """What a colour or a gray run uses: the shipped models each PnP family chooses from on validation, each
    ``guided-<guide>-<solver>``'s guide model, and the held-out images it tunes on."""

    channels: int
    families: dict
    guides: dict
    validation_source: str
    validation_set: str
    held_out: object  # (data root, count) → paths

    def validation_images(self, data: Path, count: int, test_sets: list[str]) -> list[Path]:
        """``count`` held-out images, refused when their set is also a test set (tuning would then see test images)."""
        if self.validation_set in test_sets:
            raise ValueError(f"the validation images come from {self.validation_set}, so it cannot be a test set here")
        return self.held_out(data, count)


#: colour: the general model and the one trained last on σ ≤ 12.75/255 of each family
COLOR = Palette(3, {"auto": ("auto",), "ours": ("averaged-color", "averaged-lownoise-color"),
                    "dncnn": ("dncnn-color", "dncnn-lownoise-color"), "bm3d": ("bm3d",), "ridge": ("convex-ridge-color",)},
                {"bm3d": "bm3d", "bm3dlc": "bm3d-lc", "dncnn": "dncnn-color", "averaged": "averaged-color"},
                "CBSD68 images outside CBSD10", "CBSD68", held_out_color_images)
#: gray: the campaign network and its two PnP fine-tunings (σ ≤ 25/255, then ≤ 12.75/255)
GRAY = Palette(1, {"auto": ("auto",), "ours": ("averaged-sll-gray", "averaged-sll-pnp-gray", "averaged-sll-lownoise-gray"),
                   "dncnn": ("dncnn-gray",), "bm3d": ("bm3d",), "ridge": ("convex-ridge-gray",)},
               {"bm3d": "bm3d", "bm3dlc": "bm3d-lc", "dncnn": "dncnn-gray", "averaged": "averaged-sll-gray"},
               "BSD68 images outside its first 10", "BSD68", held_out_gray_images)
DPIR_WEIGHTS = [0.1, 0.23, 0.5]  # bm3d-dpir's data weight λ tried (DPIR's own value: 0.23)


@dataclass
class Outcome:
    estimate: torch.Tensor
    iterations: list[int] = field(default_factory=list)
    violations: int = 0
    statuses: set = field(default_factory=set)


class Methods:
    """name → run(physics, y, noise, parameter) and the parameter grid to tune it on."""

    def __init__(self, max_iter: int | None, bm3d_iters: int, tol: float, palette: Palette = COLOR, families: dict | None = None):
        self.max_iter, self.bm3d_iters, self.tol, self.palette = max_iter, bm3d_iters, tol, palette
        self.families = palette.families if families is None else families
        self.models = {}

    def model(self, name):
        if name not in self.models:
            self.models[name] = (BM3DDenoiser("lc" if name == "bm3d-lc" else "np", threads=torch.get_num_threads())
                                 if name.startswith("bm3d")
                                 else ps.load_denoiser(name))
        return self.models[name]

    def variants(self, method: str) -> list[tuple[str | None, float | None]]:
        """(denoiser model, denoiser weight ω) pairs to tune over: a PnP method tries each model of its family;
        FB's prior weight is tied to its strength (τ < 2/L caps the data term), so FB methods also search
        the denoiser weight ω; the other solvers keep their default ω (None); TV and Wiener have neither."""
        if method in GRIDS:
            return [(None, None)]
        if method == "bm3d-dpir":
            return [("bm3d", None)]
        if method.startswith("guided-"):
            return [(self.palette.guides[method.split("-")[1]], None)]
        weights = FB_WEIGHTS if method.endswith("-fb") else [None]
        return [(model, weight) for model in self.families[method.split("-")[0]] for weight in weights]

    def grid(self, method: str, weight: float | None = None) -> list[float]:
        if method in GRIDS:
            return GRIDS[method]
        if method == "bm3d-dpir":
            return DPIR_WEIGHTS
        if method.startswith("guided-"):
            strength = ps.solvers.guided_defaults(self.model(self.palette.guides[method.split("-")[1]])).strength
            return [round(factor * strength, 4) for factor in PNP_FACTORS]
        strength = ps.solvers.tuned(method.split("-")[1]).strength / (1.0 if weight is None else weight) ** 0.5
        return [round(factor * strength, 4) for factor in PNP_FACTORS]

    def run(self, method: str, physics, y, noise: float, parameter: float, model: str | None = None,
            weight: float | None = None) -> Outcome:
        if method == "wiener":
            return Outcome(physics.prox_l2(torch.zeros_like(y), y, gamma=1.0 / parameter), [1])
        if method == "tv":
            return self._pnp(physics, y, noise, _TV(), "fb", parameter, weight=1.0)  # the exact prox: no weighting
        if method == "bm3d-dpir":
            result = ps.solvers.dpir(physics, y, self.model("bm3d"), noise, iterations=self.bm3d_iters, weight=parameter)
            return Outcome(result.estimate, result.iterations, len(result.violations), {"no guarantee"})
        if method.startswith("guided-"):
            result = ps.solvers.guided_solve(physics, y, self.model(model), noise, solver=method.split("-")[2],
                                             denoiser_sigma=parameter * noise,
                                             max_iter=self.max_iter, tol=self.tol)
            rounds = result.earlier_rounds + [result]
            iterations = [sum(r.iterations[b] for r in rounds) for b in range(len(result.iterations))]
            return Outcome(result.estimate, iterations, sum(len(r.violations) for r in rounds),
                           {status for r in rounds for status in r.status})
        family, solver = method.split("-")
        if family == "auto":  # as ps.deblur runs it: its choice of model at σ_d, accelerated where it has a β
            return self._pnp(physics, y, noise, self.model(self.resolve(model, parameter * noise)), solver, parameter,
                             accelerate="auto")
        return self._pnp(physics, y, noise, self.model(model), solver, parameter,
                         max_iter=self.bm3d_iters if family == "bm3d" else self.max_iter, weight=weight)

    def resolve(self, model: str, denoiser_sigma: float) -> str:
        """``'auto'`` → the model ``ps.deblur`` takes at σ_d for these channels; any other name as given."""
        return ps.restore.choose_denoiser(model, self.palette.channels, denoiser_sigma, "deblur")[1]

    def label(self, model: str | None, denoiser_sigma: float) -> str:
        """The model column: the name, and for the 'auto' family's 'auto' the model it took."""
        if model != "auto":
            return f"`{model}`"
        return f"auto → `{self.resolve(model, denoiser_sigma)}`"

    def _pnp(self, physics, y, noise, denoiser, solver, strength, max_iter=None, weight=None, accelerate=False) -> Outcome:
        result = ps.solve(physics, y, denoiser, noise, solver=solver, denoiser_sigma=strength * noise,
                          denoiser_weight=weight, max_iter=max_iter or self.max_iter, tol=self.tol, accelerate=accelerate)
        return Outcome(result.estimate, result.iterations, len(result.violations), set(result.status))


class _TV:
    """deepinv's TV prox with threshold σ_d (= strength·σ_n): inside FB with step τ this is exact proximal
    gradient on ½‖Ax − y‖²/σ_n² + (σ_d/τ)·TV(x), a convex problem."""

    certificate = ps.Certificate(lipschitz=1.0, alpha=0.5, guaranteed=False, method="prox of TV (iterative solver)")

    def __init__(self):
        self.tv = dinv.models.TVDenoiser(n_it_max=100)

    def __call__(self, x, sigma):
        return self.tv(x, ths=float(sigma))


def families(palette: Palette, overrides: list[str], parser: argparse.ArgumentParser) -> dict:
    """The palette's families with each ``FAMILY=NAME,NAME`` of ``--models`` replacing that family's models."""
    chosen = dict(palette.families)
    for override in overrides:
        family, _, names = override.partition("=")
        if family not in chosen or not names:
            parser.error(f"--models takes FAMILY=NAME,NAME with FAMILY one of {sorted(chosen)}, got {override!r}")
        chosen[family] = tuple(names.split(","))
    return chosen


def degrade(clean: torch.Tensor, kernel, noise: float, seed: int):
    op = ps.blur(kernel, img_size=tuple(clean.shape[1:]), noise_sigma=noise, rng=torch.Generator().manual_seed(seed))
    return ps.blur(kernel, img_size=tuple(clean.shape[1:])), op(clean)


def tune(methods: Methods, method: str, validation, noise: float) -> tuple[float, str | None, float | None, float]:
    """(parameter, model, denoiser weight ω, validation PSNR) with the best mean validation PSNR over the
    strength search of each (model, weight) in ``methods.variants(method)``."""
    searches = [(*search_parameter(methods, method, validation, noise, model, weight), model, weight)
                for model, weight in methods.variants(method)]
    parameter, score, model, weight = max(searches, key=lambda search: search[1])
    return parameter, model, weight, score


def search_parameter(methods: Methods, method: str, validation, noise: float, model: str | None, weight: float | None,
                     max_tries: int = 10) -> tuple[float, float]:
    """The value with the best mean validation PSNR: while the best sits on an end of the values tried, the
    grid is extended geometrically past that end (so the choice is never an artefact of the grid's range);
    then the values halfway (geometrically) to the best one's neighbours are tried (nor of its spacing)."""
    grid = methods.grid(method, weight)
    ratio = grid[1] / grid[0]
    scores = {}

    def score(parameter):
        values = []
        for index, (clean, kernel) in enumerate(validation):
            physics, y = degrade(clean, kernel, noise, seed=1000 + index)
            values += ps.psnr(methods.run(method, physics, y, noise, parameter, model, weight).estimate, clean).tolist()
        scores[parameter] = statistics.mean(values)

    for parameter in grid:
        score(parameter)
    while len(scores) < max_tries:
        best, tried = max(scores, key=scores.get), sorted(scores)
        if best == tried[0]:
            score(round(best / ratio, 6))
        elif best == tried[-1]:
            score(round(best * ratio, 6))
        else:
            break
    best = max(scores, key=scores.get)
    for parameter in (best / ratio**0.5, best * ratio**0.5):
        score(round(parameter, 6))
    best = max(scores, key=scores.get)
    return best, scores[best]


def evaluate(args, validation_paths: list[Path], method: str, noise255: float) -> tuple[list[str], dict]:
    """Tune ``method`` at this noise level on the validation crops, then run it on every test problem:
    the table rows (one per set) and the showcase entry (first image, first kernel, first set)."""
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    levin = ps.load_kernels(data / "kernels" / "levin09.npz")
    kernels = [list(levin.values())[i] for i in args.kernels]
    validation = [(c, ps.motion_kernel(20 + i, 19))
                  for i, c in enumerate(load_crops(validation_paths, args.validation_size, gray=args.gray))]
    methods = Methods(args.max_iter, args.bm3d_iters, args.tol, GRAY if args.gray else COLOR, args.families)
    noise = noise255 / 255
    if method.startswith("auto-"):  # ps.deblur's defaults as they are: each model of the family, nothing tuned
        strength = ps.solvers.tuned(method.split("-")[1]).strength
        settings = [(strength, model, None, None) for model in args.families["auto"]]
    else:
        settings = [tune(methods, method, validation, noise)]
    rows, showcase = [], {}
    for parameter, model, weight, val_psnr in settings:
        rows += test_rows(args, data, kernels, methods, method, noise255, parameter, model, weight, val_psnr, showcase)
    return rows, showcase


def test_rows(args, data, kernels, methods, method, noise255, parameter, model, weight, val_psnr, showcase) -> list[str]:
    """One table row per test set for ``method`` with these settings; the first image's result goes to
    ``showcase`` if it holds none yet."""
    noise = noise255 / 255
    shown = methods.label(model, parameter * noise)
    chosen = ", ".join([f"{parameter:.4g}"] + ([] if model in (None, "bm3d") else [shown])
                       + ([] if weight is None else [f"ω {weight:g}"]))
    chosen += " (untuned)" if val_psnr is None else f" ({val_psnr:.2f})"
    rows = []
    for set_name in args.sets:
        paths = list_images(data / "test" / set_name)[: args.images]
        images = ([ps.load_image(path, gray=args.gray) for path in paths] if args.size is None
                  else load_crops(paths, args.size, gray=args.gray))
        psnrs, ssims, iterations, violations, statuses, seconds = [], [], [], 0, set(), 0.0
        for i, clean in enumerate(images):
            for j, kernel in zip(args.kernels, kernels):
                physics, y = degrade(clean, kernel, noise, seed=100 * i + j)
                t0 = time.perf_counter()
                outcome = methods.run(method, physics, y, noise, parameter, model, weight)
                seconds += time.perf_counter() - t0
                psnrs += ps.psnr(outcome.estimate, clean).tolist()
                ssims += ps.ssim(outcome.estimate, clean).tolist()
                iterations += outcome.iterations
                violations += outcome.violations
                statuses |= outcome.statuses
                if i == 0 and j == args.kernels[0] and set_name == args.sets[0] and not showcase:
                    showcase.update(estimate=outcome.estimate, psnr=psnrs[-1], y=y, clean=clean)
        count = len(psnrs)
        rows.append(f"| {set_name} | {noise255:g} | {method} | {chosen} | "
                    f"{statistics.mean(psnrs):.3f} | {statistics.mean(ssims):.4f} | {statistics.mean(iterations):.0f} | "
                    f"{seconds / count:.1f} | {violations} | {', '.join(sorted(statuses)) or '—'} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PNP_STABLE_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--gray", action="store_true", help="gray images and the gray models (default: colour)")
    parser.add_argument("--sets", nargs="+", default=None, help="test sets (default: Set3C CBSD10; --gray: Set12)")
    parser.add_argument("--noises", type=float, nargs="+", default=[2.55, 7.65], help="σ on the 0–255 scale")
    parser.add_argument("--kernels", type=int, nargs="+", default=list(range(8)), help="Levin kernel indices")
    parser.add_argument("--methods", nargs="+", default=[f"ours-{s}" for s in ("fb", "hqs", "drs", "admm")] + ["ridge-drs"]
                        + [f"dncnn-{s}" for s in ("fb", "hqs", "drs", "admm")] + ["bm3d-hqs", "tv", "wiener"])
    parser.add_argument("--images", type=int, default=None, help="first N images of each set")
    parser.add_argument("--size", type=int, default=None, help="centre crops of this side instead of whole test images")
    parser.add_argument("--max-iter", type=int, default=None, help="iterations of every PnP run and TV; None: each solver's tuned budget")
    parser.add_argument("--bm3d-iters", type=int, default=8, help="iterations of bm3d-hqs and bm3d-dpir")
    parser.add_argument("--tol", type=float, default=1e-5, help="PnP and TV stop at r_k/‖z_k‖ < TOL")
    parser.add_argument("--validation", type=int, default=4,
                        help="crops of held-out images used for tuning (CBSD68 outside CBSD10; --gray: BSD68 outside its first 10)")
    parser.add_argument("--validation-size", type=int, default=96)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes, one (method, noise) task each")
    parser.add_argument("--threads", type=int, default=2, help="torch and BM3D threads per worker (1: bit-reproducible BM3D)")
    parser.add_argument("--models", nargs="+", default=[], metavar="FAMILY=NAME,NAME",
                        help="the models a PnP family chooses from on validation, e.g. "
                             "ours=averaged-color,averaged-sll-highnoise-color (default: COLOR's or GRAY's families)")
    parser.add_argument("--out", default=str(RESULTS / "deblur"), help="output prefix (.md and .png are added)")
    args = parser.parse_args()
    palette = GRAY if args.gray else COLOR
    args.sets = args.sets or (["Set12"] if args.gray else ["Set3C", "CBSD10"])
    args.families = families(palette, args.models, parser)
    args.data = str(args.data)
    torch.set_num_threads(args.threads)
    try:
        validation_paths = palette.validation_images(Path(args.data), args.validation, args.sets)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    crop = "whole images" if args.size is None else f"{args.size}×{args.size} centre crops"
    title = f"{'Gray deblurring' if args.gray else 'Deblurring'}: certified PnP vs unconstrained PnP, BM3D, TV, Wiener"
    lines = header(title) + [
        f"- test: {', '.join(args.sets)}{'' if args.images is None else f' (first {args.images} images)'} ({crop}) × Levin kernels "
        f"{args.kernels}, circular boundary, noise seed = 100·image + kernel",
        f"- tuning: {args.validation} centre crops of {palette.validation_source} ({args.validation_size} px: {', '.join(p.name for p in validation_paths)}) "
        f"× motion kernels `motion_kernel(20 + i, 19)`; grids {GRIDS}, PnP strengths {PNP_FACTORS} × the solver's default, each extended "
        f"geometrically while the best value sits on an end, then refined by the square root of the grid ratio on both sides of the best; FB also over denoiser weights ω ∈ {FB_WEIGHTS}, with strengths "
        f"{PNP_FACTORS} × default/√ω (equal prior weight ω·s² at the middle); PnP also over the family's models {args.families}",
        f"- PnP: up to {args.max_iter or 'the solver’s tuned number of'} iterations (BM3D: {args.bm3d_iters}), tol {args.tol:g}, "
        f"tuned strength, the solver's default step, denoiser weight ω (FB: tuned) and iteration budget "
        f"({'; '.join(f'{name}: {t.step_scale:g} × theory, ω = {t.denoiser_weight:g}, {t.max_iter}' for name, t in ps.solvers.TUNED.items())}); "
        f"TV: FB with ω = 1",
        f"- bm3d-dpir: {args.bm3d_iters} HQS iterations, σ_d geometric from 49/255 to σ_n, data weight λ ∈ {DPIR_WEIGHTS} (DPIR: 0.23); "
        f"guided-<guide>-<solver>: a DPIR pilot with the guide (models {palette.guides}), then certified rounds with W(g) "
        "(each round's estimate guides the next) with each guide's defaults "
        f"({'; '.join(f'{kind}: {d.pilot_iterations} pilot iterations at λ {d.pilot_weight:g}, {d.rounds} round(s), stride {d.stride}, strengths {PNP_FACTORS} × {d.strength}' for kind, d in ps.solvers.GUIDED_DEFAULTS.items())}); "
        "s/image includes the pilot",
        "",
        "| set | σ·255 | method | parameter, model (val PSNR) | PSNR | SSIM | iterations | s/image | violations | statuses |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    tasks = [(method, noise255) for noise255 in args.noises for method in args.methods]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(evaluate, args, validation_paths, method, noise255) for method, noise255 in tasks]
        for _ in tqdm(as_completed(futures), total=len(futures), desc="method × noise", disable=not sys.stderr.isatty()):
            pass
    showcase = {}
    for (method, noise255), future in zip(tasks, futures):
        rows, shown = future.result()
        lines += rows
        if noise255 == args.noises[0] and shown:
            showcase[method] = shown
    report, figure = output_path(args.out, ".md"), output_path(args.out, ".png")
    lines += ["", f"Wall time {time.perf_counter() - start:.0f} s ({args.jobs} worker(s) × {args.threads} thread(s)); "
              f"s/image is each worker's own time. PNG: `{figure.name}`."]
    report.parent.mkdir(parents=True, exist_ok=True)
    _grid(showcase, figure)
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _grid(showcase: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not showcase:
        return
    first = next(iter(showcase.values()))
    y, clean = first["y"], first["clean"]
    panels = [("clean", clean, None), ("blurred", y, ps.psnr(y, clean).item())]
    panels += [(name, shown["estimate"], shown["psnr"]) for name, shown in showcase.items()]
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, image, value) in zip(axes.flat, panels):
        ax.imshow(ps.to_numpy(image.clamp(0, 1)), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name if value is None else f"{name}: {value:.2f} dB", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
