"""Per-sample bookkeeping of a batched fixed-point run: which samples still run, why each stopped, the
current estimate, and the best evaluation (returned when a sample diverges or turns non-finite)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["STATUSES", "SampleTracker"]

STATUSES = ("converged", "accuracy-limited", "max-iterations", "diverged", "non-finite")


class SampleTracker:
    """A sample stops as 'converged' once (r + e)/‖T(p)‖ < ``tol``, where e bounds the evaluation's error against
    the exact map (so the exact residual ‖T(p) − p‖ ≤ r + e is below the tolerance too); as 'accuracy-limited' once
    r/‖T(p)‖ < ``tol`` and r ≤ 2e (the computed residual is within the noise of two inexact evaluations, where it
    may stay however long the run goes on: more iterations cannot prove more; :attr:`exact_bound` keeps
    (r + e)/‖T(p)‖); 'diverged' once r > ``divergence_factor``·min_j r_j, the smallest residual so far (an
    uncertified run that first settles and then blows up grows from there, not from r₀; an averaged T's residual
    never grows beyond its errors), 'non-finite' at a NaN/Inf in T(p) or its estimate, else 'max-iterations'. Only evaluations that the
    iteration keeps (plain steps and accepted extrapolations) count for these tests and for the estimate; a
    rejected extrapolation, even a non-finite one, is dropped by the iteration and stops nothing."""

    def __init__(self, z0: Tensor, max_iter: int, tol: float, divergence_factor: float):
        if isinstance(divergence_factor, bool) or not float(divergence_factor) >= 1:
            raise ValueError(f"divergence_factor must be ≥ 1 (a sample whose residual exceeds it times its smallest "
                             f"residual so far is stopped as diverged; inf never stops one), got {divergence_factor!r}")
        batch = z0.shape[0]
        self.batch = batch
        self.tol, self.divergence_factor = tol, divergence_factor
        self.status = ["max-iterations"] * batch
        self.iterations = [max_iter] * batch
        self.active = torch.ones(batch, dtype=torch.bool)
        self.estimate = z0
        self.best_residual = torch.full((batch,), float("inf"), dtype=torch.float64)
        self.best_image, self.best_estimate = z0.clone(), z0.clone()
        self.exact_bound = torch.full((batch,), float("nan"), dtype=torch.float64)  # accuracy-limited samples

    def running(self) -> Tensor:
        return torch.nonzero(self.active).flatten()

    def record(self, index: Tensor, k: int, images: Tensor, estimates: Tensor, r: Tensor, r_norm: Tensor,
               finite: Tensor, kept: Tensor, error_norm: Tensor | float = 0.0) -> Tensor:
        """Take evaluation ``k`` of the samples ``index`` (``error_norm``: the bound on its error against the
        exact map, relative to ‖T(p)‖); return the samples that stop after it."""
        finite = finite.cpu()
        counted = kept & finite
        if len(index) == self.batch and bool(counted.all()):
            self.estimate = estimates  # no copy in the common case
        elif counted.any():  # never in place: the tensor may be shared with the steps rule or the caller
            rows = torch.nonzero(counted).flatten()
            self.estimate = self.estimate.index_copy(0, index[rows].to(estimates.device), estimates[rows])
        better = counted & (r < self.best_residual[index])
        for position in torch.nonzero(better).flatten().tolist():
            b = int(index[position])
            self.best_residual[b] = r[position]
            self.best_image[b], self.best_estimate[b] = images[position], estimates[position]
        errors = torch.as_tensor(error_norm, dtype=torch.float64).expand(len(index))
        stop = []
        for position, b in enumerate(index.tolist()):
            if not kept[position]:  # a rejected extrapolation, finite or not: the iteration falls back to T(anchor)
                continue
            if not finite[position]:
                self.status[b], self.iterations[b] = "non-finite", k + 1  # calls made, the non-finite one included
            elif self.best_residual[b] > 0 and r[position] > self.divergence_factor * self.best_residual[b]:
                self.status[b], self.iterations[b] = "diverged", k + 1
            elif r_norm[position] + errors[position] < self.tol:
                self.status[b], self.iterations[b] = "converged", k + 1
            elif r_norm[position] < self.tol and r_norm[position] <= 2 * errors[position]:
                self.status[b], self.iterations[b] = "accuracy-limited", k + 1
                self.exact_bound[b] = float(r_norm[position] + errors[position])
            else:
                continue
            stop.append(b)
        stopped = torch.tensor(stop, dtype=torch.long)
        self.active[stopped] = False
        return stopped

    def finish(self, governing: Tensor) -> tuple[Tensor, Tensor]:
        """(governing variable, estimate) per sample: the best evaluation for a sample that diverged or turned
        non-finite, the last kept one otherwise. The two never share storage."""
        failed = [b for b, status in enumerate(self.status) if status in ("diverged", "non-finite")]
        estimate = self.estimate.clone() if self.estimate.data_ptr() == governing.data_ptr() else self.estimate
        if failed:
            rows = torch.tensor(failed, device=governing.device)
            governing = governing.index_copy(0, rows, self.best_image[rows])
            estimate = estimate.index_copy(0, rows, self.best_estimate[rows])
        return governing, estimate

    @property
    def converged(self) -> list[bool]:
        return [status == "converged" for status in self.status]
