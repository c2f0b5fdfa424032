"""Pool the results of ``deblur_noise_levels.py`` screens into the colour deblurring switch's levels.

Each argument is ``FILE:CROPS``: a screen's ``--out`` JSON and how many crops each of its values averages. Every
(kernel, σ_n, solver) measured for all ``--models`` is one row at σ_d = the solver's tuned strength × σ_n. Prints the
crop-weighted mean PSNR of each model at each σ_d, then the threshold pairs (t_1, t_2) of the three-way switch
(``--models`` in order: up to t_1, up to t_2, above) with the smallest crop-weighted mean loss against the best model
of each row — the levels of ``pnp_stable.restore.DEBLURRING_DEFAULTS``.

    cd training/screening/deblur_levels && ../../../.venv/bin/python ../pool_deblur_levels.py \\
        validation6-gaussian1.6.json:6 validation6-motion1-19.json:6 validation12-motion2-19-gaussian1.0.json:12 \\
        validation12-motion3-15-gaussian2.0.json:12 cbsd432-6-transcribed.json:6

(``cbsd432-6-transcribed.json`` holds the table of the CBSD432 screen in ``training/campaign/README.md``, copied from
its printed output before the script wrote JSON; the rows with all three models only.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pnp_stable.solvers import tuned  # noqa: E402

MODELS = ["averaged-lownoise-color", "averaged-color", "averaged-sll-highnoise-color"]


def load_rows(sources: list[str], models: list[str]) -> list[tuple[int, float, dict]]:
    """(crops, σ_d·255, {model: dB}) for every (kernel, σ_n, solver) of every source that measured all ``models``.
    A row that an earlier source holds with the same values (one measurement written to two files: the screens are
    deterministic, and other crops never give the same PSNRs to 1e-9 dB) counts once."""
    rows, seen, repeated = [], {}, 0
    for source in sources:
        path, _, crops = source.rpartition(":")
        measured = defaultdict(dict)
        for key, value in json.loads(Path(path).read_text()).items():
            if len(key.split(" ")) != 4:
                raise SystemExit(f"{path}: '{key}' was screened with its own --strength or --weight; the switch's levels "
                                 "come from screens with the tuned defaults")
            kernel, noise, solver, model = key.split(" ")
            measured[(kernel, float(noise), solver)][model] = value
        for (kernel, noise, solver), values in measured.items():
            if not all(model in values for model in models):
                continue
            earlier = seen.setdefault((kernel, noise, solver), [])
            if any(all(abs(other[m] - values[m]) < 1e-9 for m in models) for other in earlier):
                repeated += 1
                continue
            earlier.append(values)
            rows.append((int(crops), noise * tuned(solver).strength, values))
    if repeated:
        print(f"{repeated} row(s) measured again with the same values in a later file: counted once")
    return rows


def loss(rows, models: list[str], levels: tuple[float, float]) -> float:
    """Crop-weighted mean dB lost by the switch at ``levels`` (σ_d·255) against each row's best model."""
    total = weight = 0.0
    for crops, level, values in rows:
        chosen = models[sum(level > threshold for threshold in levels)]
        total += crops * (max(values[m] for m in models) - values[chosen])
        weight += crops
    return total / weight


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", metavar="FILE:CROPS")
    parser.add_argument("--models", nargs=3, default=MODELS)
    parser.add_argument("--show", type=int, default=5, help="how many of the best threshold pairs to print")
    parser.add_argument("--levels", type=float, nargs=2, action="append", default=[], metavar=("T1", "T2"),
                        help="also print the loss of these thresholds (σ_d·255); repeatable")
    args = parser.parse_args(argv)
    rows = load_rows(args.sources, args.models)
    by_level = defaultdict(lambda: [0.0, defaultdict(float)])
    for crops, level, values in rows:
        entry = by_level[round(level, 1)]
        entry[0] += crops
        for model in args.models:
            entry[1][model] += crops * values[model]
    print("σ_d·255  crops  " + "  ".join(args.models))
    for level, (crops, sums) in sorted(by_level.items()):
        print(f"{level:7.1f}  {crops:5.0f}  " + "  ".join(f"{sums[m] / crops:.2f}".rjust(len(m)) for m in args.models))
    grid = sorted({round(level, 1) for _, level, _ in rows})
    midpoints = [(a * b) ** 0.5 for a, b in zip(grid, grid[1:])]  # one candidate in every gap between measured σ_d
    pairs = sorted((loss(rows, args.models, (a, b)), a, b) for a in midpoints for b in midpoints if a < b)
    print("best (t_1, t_2) σ_d·255 and mean loss (dB):")
    for value, a, b in pairs[: args.show]:
        print(f"  ({a:.2f}, {b:.2f}): {value:.4f}")
    for a, b in args.levels:
        print(f"  given ({a:g}, {b:g}): {loss(rows, args.models, (a, b)):.4f}")


if __name__ == "__main__":
    main()
