"""The worst error bound of an iterative solver's calls so far (a CG prox of the data term, an inner prox solver)."""

from __future__ import annotations

from torch import Tensor


class AccuracyRecord:
    """Keeps the largest error bound recorded and the number of calls; ``accurate`` while every call met
    ``tolerance`` (a NaN bound counts as the worst). ``last_absolute``: the absolute error bound ‖u − u*‖ of the
    most recent call (one per sample of its batch, or one for all), for a caller that needs the error of the value
    it just received."""

    def __init__(self, tolerance: float):
        self.tolerance = float(tolerance)
        self.worst = 0.0
        self.calls = 0
        self.last_absolute = 0.0

    def record(self, bound: float, absolute: float | Tensor = 0.0) -> None:
        self.calls += 1
        self.last_absolute = absolute
        if not bound <= self.worst:
            self.worst = bound

    @property
    def accurate(self) -> bool:
        return self.worst <= self.tolerance
