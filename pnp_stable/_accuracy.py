"""Inner solvers' accuracy (a CG prox of the data term, an inner prox solver): the error bound of each call against
the tolerance in force, and the summable schedule along which a PnP run shrinks that tolerance.

Why a schedule. The Krasnosel'skii–Mann iteration of an averaged T computed with errors e_k converges to Fix T when
Σ‖e_k‖ < ∞ (Combettes 2004); errors that are merely bounded per call are not enough. A run therefore asks its k-th
evaluation of T for the tolerance tol·s_k with s_k = min(1, (K/k)²), Σ_k s_k ≤ 2K: summable. The data term's CG
tolerance is relative to ‖rhs_k‖, which the iteration keeps bounded (‖z_{k+1} − z*‖ ≤ (1 + c·s_k)‖z_k − z*‖ + c'·s_k
and Π(1 + c·s_k) < ∞), so its absolute errors are summable too. A certificate that assumes an exact inner solve holds
only while every call met the tolerance then in force.
"""

from __future__ import annotations

from torch import Tensor, nn

#: evaluations of T at the full tolerance before a run's inner tolerances start to shrink as (K/k)²
SUMMABLE_AFTER = 100


class AccuracyRecord:
    """Keeps the largest error bound recorded, the number of calls and the first call that missed the tolerance in
    force, ``tolerance``·``scale`` (:attr:`current`; a PnP run lowers ``scale`` along :class:`SummableSchedule`);
    ``accurate`` while every call met it (a NaN bound misses). ``last_absolute``: the absolute error bound
    ‖u − u*‖ of the most recent call (one per sample of its batch, or one for all), for a caller that needs the
    error of the value it just received."""

    def __init__(self, tolerance: float):
        self.tolerance = float(tolerance)
        self.scale = 1.0
        self.worst = 0.0
        self.calls = 0
        self.last_absolute = 0.0
        self.first_miss: tuple[int, float, float] | None = None  # (call, its bound, the tolerance then in force)

    @property
    def current(self) -> float:
        """The tolerance the next call must meet."""
        return self.tolerance * self.scale

    def record(self, bound: float, absolute: float | Tensor = 0.0) -> None:
        self.calls += 1
        self.last_absolute = absolute
        if not bound <= self.worst:
            self.worst = bound
        if self.first_miss is None and not bound <= self.current:
            self.first_miss = (self.calls, bound, self.current)

    @property
    def accurate(self) -> bool:
        return self.first_miss is None

    def miss_text(self) -> str:
        """The first call that missed its tolerance, in words ('' while none did)."""
        if self.first_miss is None:
            return ""
        call, bound, tolerance = self.first_miss
        return f"call {call} of {self.calls} reached {bound:.3g}, above the {tolerance:.3g} then in force"


def accuracy_records(denoiser) -> list[AccuracyRecord]:
    """The :class:`AccuracyRecord` of every iterative prox inside ``denoiser`` (a module's ``accuracy``, found through
    wrappers such as a self-ensemble, a tiling or a noise-level switch); empty for a closed-form network or a plain
    callable, whose tolerance a run cannot lower."""
    if not isinstance(denoiser, nn.Module):
        return []
    found = {id(m.accuracy): m.accuracy for m in denoiser.modules() if isinstance(getattr(m, "accuracy", None), AccuracyRecord)}
    return list(found.values())


class SummableSchedule:
    """Scales the ``records``' tolerances by s_k = min(1, (K/k)²) before the k-th evaluation of T (k = 1, 2, …;
    K = ``after``), Σ s_k ≤ 2K (module docstring); leaving the ``with`` block restores the full tolerances."""

    def __init__(self, records: list[AccuracyRecord], after: int | None = None):
        self.records, self.after = records, SUMMABLE_AFTER if after is None else after

    def factor(self, k: int) -> float:
        return min(1.0, (self.after / k) ** 2)

    def set(self, k: int) -> None:
        for record in self.records:
            record.scale = self.factor(k)

    def describe(self) -> str:
        return f"tol·min(1, ({self.after}/k)²) at the k-th evaluation of T"

    def __enter__(self) -> "SummableSchedule":
        return self

    def __exit__(self, *exc) -> None:
        for record in self.records:
            record.scale = 1.0
