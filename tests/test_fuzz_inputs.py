"""The input fuzz of issue #21 (benchmarks/fuzz_inputs.py): every case but the slow ones (about 1,300, ~25 s)
finds no traceback, no overwritten input and no NaN returned; and the harness itself catches a planted NaN,
in-place change and traceback."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_inputs  # noqa: E402


def _planted(name, fn):
    return fuzz_inputs.Case(0, f"planted {name}", fn=fn, args=(fuzz_inputs.Lazy("x", lambda F, O: torch.rand(1, 1, 4, 4)),))


def _in_place(x):
    x.mul_(2)
    return x


def test_every_fast_fuzz_case_passes_and_planted_failures_are_caught(tmp_path):
    subset = [case for case in fuzz_inputs.all_cases() if not case.slow]
    planted = [_planted("NaN", lambda x: x * float("nan")), _planted("in-place", _in_place),
               _planted("TypeError", lambda x: x + "a")]
    outcomes = fuzz_inputs.run(cases=subset + planted, workdir=tmp_path, progress_every=0)
    assert {o.case.category for o in outcomes[: len(subset)]} == set(fuzz_inputs.CATEGORIES)
    assert [(o.case.name, o.failures) for o in outcomes[: len(subset)] if o.failures] == []
    caught = [{kind for kind, _ in o.failures} for o in outcomes[len(subset):]]
    assert caught == [{"NaN returned"}, {"overwritten input"}, {"traceback"}]
