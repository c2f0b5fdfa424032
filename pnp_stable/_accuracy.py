"""Inner solvers' accuracy (a CG prox of the data term, an inner prox solver): the error bound of each call against
its tolerance and against the summable schedule along which a PnP run lowers that tolerance.

Why a schedule. The Krasnosel'skii–Mann iteration of an averaged T (with Fix T ≠ ∅) computed with errors e_k
converges to Fix T when Σ‖e_k‖ < ∞ (Combettes 2004); errors that are merely bounded per call are not enough. A run
therefore asks, at its k-th evaluation of T, each inner solver for its tolerance times s_k = min(1, (K/k)²), with
Σ_k s_k ≤ 2K: summable. The data term's CG tolerance is relative to ‖rhs_k‖, which the iteration keeps bounded
(‖z_{k+1} − z*‖ ≤ (1 + c·s_k)‖z_k − z*‖ + c'·s_k through non-expansive maps, and Π(1 + c·s_k) < ∞), so its absolute
errors are summable too. Two verdicts follow: a call above the solver's own tolerance voids a certificate that
assumes an exact solve (:attr:`AccuracyRecord.accurate`); a call above the schedule only withdraws the claim that the
inexact iteration itself converges (:meth:`SummableSchedule.miss`), since every monitor check and stopping test
adds the error bound each call actually reached.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

#: evaluations of T at the full tolerance before a run's inner tolerances start to shrink as (K/k)²
SUMMABLE_AFTER = 100


class AccuracyRecord:
    """Keeps the largest error bound recorded, the number of calls and the first call above ``tolerance``
    (``accurate`` while there is none; a NaN bound misses). A PnP run lowers the tolerance in force to
    :attr:`current` = ``tolerance``·``scale`` and reads, per evaluation of T, the largest bound its calls reached
    (:attr:`evaluation_worst`) and the first call above the tolerance then in force (:attr:`schedule_miss`).
    ``last_absolute``: the absolute error bound ‖u − u*‖ of the most recent call (one per sample of its batch, or one
    for all), for a caller that needs the error of the value it just received."""

    def __init__(self, tolerance: float):
        self.tolerance = float(tolerance)
        self.scale = 1.0
        self.worst = 0.0
        self.calls = 0
        self.last_absolute = 0.0
        self.first_miss: tuple[int, float] | None = None  # (call, its bound) above tolerance
        self.evaluation = 0  # the run's evaluation of T under way (0: outside a run)
        self.evaluation_worst = 0.0
        self.schedule_miss: tuple[int, float, float] | None = None  # (evaluation, bound, tolerance then in force)

    @property
    def current(self) -> float:
        """The tolerance the next call must meet."""
        return self.tolerance * self.scale

    def begin(self, evaluation: int, scale: float) -> None:
        """A run's evaluation ``evaluation`` of T starts, its calls asked for ``scale`` × the tolerance."""
        self.evaluation, self.scale, self.evaluation_worst = evaluation, scale, 0.0

    def record(self, bound: float, absolute: float | Tensor = 0.0) -> None:
        self.calls += 1
        self.last_absolute = absolute
        if not bound <= self.worst:
            self.worst = bound
        if not bound <= self.evaluation_worst:
            self.evaluation_worst = bound
        if self.first_miss is None and not bound <= self.tolerance:
            self.first_miss = (self.calls, bound)
        if self.schedule_miss is None and self.evaluation and not bound <= self.current:
            self.schedule_miss = (self.evaluation, bound, self.current)

    @property
    def accurate(self) -> bool:
        return self.first_miss is None

    def state(self) -> dict:
        """What :meth:`join` needs from another process's copy of this record."""
        return dict(calls=self.calls, worst=self.worst, evaluation_worst=self.evaluation_worst,
                    first_miss=self.first_miss, schedule_miss=self.schedule_miss)

    def join(self, states: list[dict], calls_before: list[int]) -> None:
        """Becomes the record of every process's calls (their :meth:`state`, in process order) after a pass whose calls
        were spread over processes, process p having made ``calls_before[p]`` calls before it: each call counted once
        (the pass's calls after the most any process had made before; a first miss in the pass numbered as if the
        processes had called in turn, one from before it kept), the largest bounds (NaN if any), the earliest schedule
        miss. ``last_absolute`` stays this process's own."""
        base = max(calls_before)
        earlier = [state["first_miss"] for state, before in zip(states, calls_before)
                   if state["first_miss"] is not None and state["first_miss"][0] <= before]
        misses, offset = [], base
        for state, before in zip(states, calls_before):
            if state["first_miss"] is not None and state["first_miss"][0] > before:
                call, bound = state["first_miss"]
                misses.append((offset + call - before, bound))
            offset += state["calls"] - before
        self.calls = offset
        self.worst = _largest(state["worst"] for state in states)
        self.evaluation_worst = _largest(state["evaluation_worst"] for state in states)
        self.first_miss = min(earlier, default=None) or min(misses, default=None)
        self.schedule_miss = _earliest_schedule_miss(state["schedule_miss"] for state in states)

    @property
    def evaluation_factor(self) -> float:
        """The multiple of :attr:`tolerance` that bounds the calls of the evaluation under way: the schedule's factor,
        or the largest bound/tolerance they reached when above it (inf after a NaN bound: no bound at all)."""
        reached = self.evaluation_worst / self.tolerance
        return math.inf if math.isnan(reached) else max(self.scale, reached)

    def miss_text(self) -> str:
        """The first call above the tolerance, in words ('' while none was)."""
        if self.first_miss is None:
            return ""
        call, bound = self.first_miss
        return f"call {call} of {self.calls} reached {bound:.3g} > {self.tolerance:g}"


def _earliest_schedule_miss(misses) -> tuple[int, float, float] | None:
    """The (evaluation, bound, tolerance then in force) of the earliest evaluation among ``misses`` (None entries
    skipped; the first given among those of one evaluation), or None."""
    return min((miss for miss in misses if miss is not None), key=lambda miss: miss[0], default=None)


def _largest(values) -> float:
    """max, NaN if any value is NaN (a NaN bound is a miss and must not be lost to max's order)."""
    values = list(values)
    return math.nan if any(math.isnan(value) for value in values) else max(values)


def accuracy_records(denoiser) -> list[AccuracyRecord]:
    """The :class:`AccuracyRecord` of every iterative prox inside ``denoiser`` (a module's ``accuracy``, found through
    wrappers such as a self-ensemble, a tiling or a noise-level switch); empty for a closed-form network or a plain
    callable, whose tolerance a run cannot lower."""
    if not isinstance(denoiser, nn.Module):
        return []
    found = {id(m.accuracy): m.accuracy for m in denoiser.modules() if isinstance(getattr(m, "accuracy", None), AccuracyRecord)}
    return list(found.values())


class SummableSchedule:
    """Lowers the ``records``' tolerances to s_k = min(1, (K/k)²) times theirs before the k-th evaluation of T
    (k = 1, 2, …; K = ``after``, default :data:`SUMMABLE_AFTER`), Σ s_k ≤ 2K (module docstring). Entering the
    ``with`` block forgets earlier runs' schedule misses; leaving it restores the full tolerances."""

    def __init__(self, records: list[AccuracyRecord], after: int | None = None):
        self.records, self.after = records, SUMMABLE_AFTER if after is None else after

    def factor(self, k: int) -> float:
        return min(1.0, (self.after / k) ** 2)

    def set(self, k: int) -> None:
        for record in self.records:
            record.begin(k, self.factor(k))

    def miss(self) -> tuple[int, float, float] | None:
        """The earliest (evaluation, bound, tolerance then in force) at which a call left the schedule, or None."""
        return _earliest_schedule_miss(record.schedule_miss for record in self.records)

    def describe(self) -> str:
        return f"each inner solver's tolerance × min(1, ({self.after}/k)²) at the k-th evaluation of T"

    def __enter__(self) -> "SummableSchedule":
        for record in self.records:
            record.schedule_miss = None
        return self

    def __exit__(self, *exc) -> None:
        for record in self.records:
            record.begin(0, 1.0)
