"""The convergence monitor: per iteration and per sample, on the governing variable z, it checks
what theory promises for a β-averaged map T with a fixed point z* (iterates z_{k+1} = T z_k,
residual r_k = ‖z_{k+1} − z_k‖):

* monotonicity   r_k ≤ r_{k−1}, checked as r_k ≤ min_{j<k} r_j (the same for a non-increasing sequence), so
  a slow drift whose every step hides inside the rounding slack below is still caught once it adds up;
* inequality (A) for the pair (z_{k−1}, z_k): r_k² ≤ r_{k−1}² − (1−β)/β ‖(z_k − z_{k−1}) − (z_{k+1} − z_k)‖²;
* inequality (A) for the pair (z_0, z_k), the sample's first evaluation and this one, in its general form
  ‖Tz_k − Tz_0‖² ≤ ‖z_k − z_0‖² − (1−β)/β ‖g(z_k) − g(z_0)‖² (g = T − I). Consecutive pairs see a defect of
  the size of the iterates' changes, second order in them: a map that turns its iterates slowly (a rotation by θ
  per step, an isometry, averaged for no β < 1) has a consecutive defect of order θ⁴‖z‖², which hides in the
  rounding slack, but against z_0 the defect is (1−β)/β·‖g(z_k) − g(z_0)‖² ≈ θ²‖z_k − z_0‖², so it is caught
  once θ reaches about 1e-2 instead of 5e-2 (with β = ½ the consecutive defect θ⁴‖z‖² passes the float32 slack
  below, ≈ 1.4e-4·θ‖z‖², only from θ ≈ 5e-2; tests/test_guarantees.py: rotations by 0.01 and 0.03 are caught by the
  pair (z_0, z_k) alone).

A failed check is a violation: proof that T is not what its certificate says (beyond the rounding slack below).
The rate r_k² ≤ β/((1−β)(k+1)) ‖z_0 − z*‖² is compared too, but only as a heuristic and never counted as a
violation: z* is unknown, and its stand-in z_K (the last iterate, for converged samples only) can sit anywhere
within 2‖z_0 − z*‖ of z_0 (Fejér monotonicity gives only ‖z_0 − z_K‖ ≤ 2‖z_0 − z*‖), so the comparison can
flag an averaged map that stopped early (a near-identity T meets a loose tolerance far from z*) as easily as it
can miss a real excess.

Float32 tolerance: T evaluated in float32 is exact only up to rounding of relative size
≈ ε = 1.2e-7 per operation, so every check allows an absolute slack of ``FLOAT_SLACK``·‖z_k‖
(= 100 ε ‖z_k‖, the rounding error of a few hundred operations) on r, and the matching slack on r².
An evaluation computed by an inner solver (an iterative prox) comes with a bound e_k ≥ ‖T̃z_k − T z_k‖ on its error
against the exact T, and every check allows exactly what those bounds allow, so that a violation is always proof
against the certificate, never the inner solver's tolerance: a pair check e_p + e_q more for the pair of
evaluations p, q; monotonicity compares r̃_k − e_k (a lower bound on the exact residual at z_k) with the chain bound
P_k = min_j (r̃_j + e_j) + 2 Σ_{i=j..k−1} e_i, an upper bound on it: from z_{i+1} = T̃z_i = T z_i + δ, ‖δ‖ ≤ e_i,
the exact residuals obey r_{i+1} ≤ ‖Tz_{i+1} − Tz_i‖ + ‖δ‖ ≤ r_i + 2e_i. With e = 0 this is the chain minimum above;
an evaluation whose error is unknown (e = ∞) restarts the chain at the next one.
Without a certified β (an uncertified denoiser) only monotonicity is checked — it holds for every
non-expansive T, so a violation is evidence that T is expansive. Momentum schemes (FISTA) get no checks.

Safeguarded Anderson acceleration (:mod:`pnp_stable.solvers.anderson`) evaluates T at points that are not
T of the previous one. Every evaluation is then recorded with its kind (plain step, accepted or rejected
extrapolation) and the checks become: inequality (A) in its general form ‖Tp − Tq‖² ≤ ‖p − q‖² −
(1−β)/β‖g(p) − g(q)‖² (g = T − I) for every pair of consecutive evaluations (it holds for any two points);
monotonicity along plain steps since the last accepted extrapolation; on every accepted extrapolation c from
the anchor p (the last accepted point), the safeguard ‖g(c)‖ ≤ ρ‖g(p)‖ and ‖c − p‖ ≤ C‖g(p)‖. The rate
bound describes the plain iteration and is not checked for a sample with extrapolations.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..theory import format_bound

__all__ = ["FLOAT_SLACK", "PLAIN", "ACCEPTED", "REJECTED", "ConvergenceMonitor", "History", "Violation"]

#: absolute slack of every check, relative to ‖z_k‖ (100 × float32 machine epsilon)
FLOAT_SLACK = 100 * torch.finfo(torch.float32).eps

#: kinds of an evaluation of T: a plain step p = T(anchor), an accepted or a rejected extrapolation
PLAIN, ACCEPTED, REJECTED = 0, 1, 2


@dataclass(frozen=True)
class Violation:
    """One failed check: which, for which sample, at which iteration, and by how much (relative to the reference
    residual, or r² for inequality (A), or ‖g‖ of the anchor for the safeguard, floored at the rounding slack so
    that a reference of 0 gives a finite size)."""

    check: str
    sample: int
    iteration: int
    size: float

    def __str__(self) -> str:
        return f"{self.check} violated at iteration {self.iteration} (sample {self.sample}) by {self.size:.3g}"


@dataclass
class History:
    """What the monitor saw: per-iteration tensors of shape [B] (NaN where a sample had stopped)."""

    beta: float | None
    checks: tuple[str, ...]
    residuals: list[Tensor] = field(default_factory=list)
    relative_residuals: list[Tensor] = field(default_factory=list)
    psnr: list[Tensor] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    distance_estimate: Tensor | None = None
    distance_basis: str = "‖z₀ − z_K‖ with z_K the last iterate (a proxy for ‖z₀ − z*‖)"
    rate_exceeded: int = 0  # evaluations above the heuristic rate bound (not violations: module docstring)
    rate_worst: float = 0.0  # … the largest such excess, relative to the bound
    rate_unchecked: int = 0  # samples that did not converge, whose rate bound was therefore not compared
    accelerated_unchecked: int = 0  # samples with extrapolations: the rate bound does not apply to them
    kinds: list[Tensor] = field(default_factory=list)  # accelerated runs: PLAIN / ACCEPTED / REJECTED, −1 once stopped
    safeguard: str | None = None  # accelerated runs: what the safeguard was

    def step_counts(self) -> dict[str, Tensor]:
        """Accelerated runs: per sample, how many evaluations were plain steps, accepted and rejected extrapolations."""
        kinds = torch.stack(self.kinds) if self.kinds else torch.empty(0, 0, dtype=torch.long)
        return {name: (kinds == kind).sum(0) for name, kind in (("plain", PLAIN), ("accepted", ACCEPTED), ("rejected", REJECTED))}

    def residual_matrix(self) -> Tensor:
        """r_k for every iteration and sample, shape [K, B]."""
        return torch.stack(self.residuals) if self.residuals else torch.empty(0)

    def rate_bound(self) -> Tensor | None:
        """sqrt(β/((1−β)(k+1)))·‖z₀ − z*‖ per iteration and sample, shape [K, B] (None without β)."""
        if self.beta is None or self.distance_estimate is None or not self.residuals:
            return None
        k = torch.arange(len(self.residuals), dtype=torch.float64)[:, None]
        return (self.beta / ((1 - self.beta) * (k + 1))).sqrt() * self.distance_estimate[None, :]

    @property
    def verdict(self) -> str:
        if not self.checks:
            return "no guarantee: nothing to check"
        if not self.violations:
            prefix = "no violations" if self.beta is not None else "no violations of non-expansiveness (no guarantee)"
            return f"{prefix} ({', '.join(self.checks)} checked{self._rate_comparison()})"
        worst = max(self.violations, key=lambda v: v.size)
        return f"{len(self.violations)} violations; worst: {worst}{self._rate_comparison()}"

    def _rate_comparison(self) -> str:
        """The heuristic rate comparison, which is no check (module docstring)."""
        if self.beta is None or not self.checks:
            return ""
        text = ""
        if self.rate_exceeded:
            text += (f"; heuristic rate bound (‖z₀ − z_K‖ for ‖z₀ − z*‖, no violation) exceeded at {self.rate_exceeded} "
                     f"iteration(s), by up to {self.rate_worst:.3g}")
        if self.rate_unchecked:
            text += (f"; heuristic rate bound not checked for {self.rate_unchecked} sample(s) whose status is not "
                     "'converged' (z_K may be far from z*)")
        if self.accelerated_unchecked:
            text += f"; rate bound not applicable to {self.accelerated_unchecked} accelerated sample(s)"
        return text

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Residuals (log scale) against the theoretical bound, and PSNR when a reference was given."""
        from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) stays as it is

        residuals = self.residual_matrix().double().numpy()
        fig = Figure(figsize=(7, 4.2))
        ax = fig.subplots()
        iterations = range(1, len(residuals) + 1)
        for b in range(residuals.shape[1]):
            ax.semilogy(iterations, residuals[:, b], lw=1.4, label=f"residual ‖z_(k+1) − z_k‖, sample {b}")
        bound = self.rate_bound()
        if bound is not None:
            extrapolated = (torch.stack(self.kinds) > PLAIN).any(0) if self.kinds else torch.zeros(bound.shape[1], dtype=torch.bool)
            plain_only = [b for b in range(bound.shape[1]) if not extrapolated[b]]
            for b in plain_only:  # the bound describes the plain iteration only
                ax.semilogy(iterations, bound[:, b].numpy(), "--", lw=1, color="gray",
                            label="heuristic bound sqrt(β/((1−β)(k+1)))·‖z₀ − z_K‖" if b == plain_only[0] else None)
            if len(plain_only) < bound.shape[1]:
                ax.plot([], [], " ", label="no bound for accelerated samples: their points are not plain steps")
        ax.set_xlabel("iteration k")
        ax.set_ylabel("residual")
        if self.psnr:
            twin = ax.twinx()
            psnr = torch.stack(self.psnr).numpy()
            for b in range(psnr.shape[1]):
                twin.plot(iterations, psnr[:, b], ":", lw=1.2, color=f"C{(residuals.shape[1] + b) % 10}",
                          label=f"PSNR sample {b}")  # colours after the residuals': a twin axis restarts the cycle
            twin.set_ylabel("PSNR (dB)")
            twin.legend(loc="center right", fontsize=7)
        ax.legend(loc="upper right", fontsize=7)
        title = title or f"β = {self.beta if self.beta is None else format_bound(self.beta, 4)}; {self.verdict}"
        ax.set_title(textwrap.fill(title, 110), fontsize=8)  # a long verdict wraps instead of running off the figure
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        return path


def sample_norms(t: Tensor) -> Tensor:
    """Per-sample Euclidean norms, accumulated in float64 without copying ``t``."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1, dtype=torch.float64)


class ConvergenceMonitor:
    """Checks each evaluation p ↦ T(p) of a fixed-point iteration against a β-averaged map (see module doc).
    ``safeguard``: the :class:`~pnp_stable.solvers.anderson.Anderson` options of an accelerated run (None: plain)."""

    def __init__(self, batch_size: int, beta: float | None, guaranteed_scheme: bool = True, slack: float = FLOAT_SLACK,
                 safeguard=None):
        if beta is not None and not 0 < beta < 1:
            raise ValueError(f"β must lie in (0, 1), got {beta}")
        self.beta = beta
        self.slack = slack
        self.safeguard = safeguard
        if not guaranteed_scheme:
            checks: tuple[str, ...] = ()
        elif beta is None:
            checks = ("monotone residual",)
        else:
            checks = ("monotone residual", "inequality (A)")
        if checks and safeguard is not None:
            checks = checks + ("safeguard",)
        self.history = History(beta=beta, checks=checks, safeguard=None if safeguard is None else safeguard.describe())
        nan = torch.full((batch_size,), float("nan"), dtype=torch.float64)
        self._previous_residual = nan.clone()  # r of the previous evaluation …
        self._previous_error = nan.clone()  # … and its error bound e
        self._chain_bound = nan.clone()  # P: bound on the exact r of the next plain step (module docstring)
        self._anchor_residual = nan.clone()  # r of the anchor, the last accepted point
        self._previous_step: Tensor | None = None  # g of the previous evaluation
        self._previous_point: Tensor | None = None  # accelerated runs: the previous evaluated point …
        self._first_point: Tensor | None = None  # certified runs: each sample's first evaluated point, its g …
        self._first_step: Tensor | None = None
        self._first_slack = nan.clone()  # … that evaluation's rounding slack and inner-solver error (NaN: none yet)
        self._first_error = nan.clone()
        self._first_iteration = torch.full((batch_size,), -1, dtype=torch.long)
        self._anchor: Tensor | None = None  # … and the anchor
        self._extrapolated = torch.zeros(batch_size, dtype=torch.long)  # accepted or rejected extrapolations
        self.batch_size = batch_size

    def observe(self, index: Tensor, z: Tensor, z_next: Tensor, iteration: int, kinds: Tensor | None = None,
                finite: Tensor | None = None, error: float | Tensor = 0.0) -> tuple[Tensor, Tensor, Tensor]:
        """Record the evaluation z ↦ z_next = T(z) of the samples ``index`` (z, z_next, ``kinds`` and ``finite``
        have only those rows; ``kinds`` None: all plain steps); return their residuals r = ‖T(z) − z‖, r/‖T(z)‖
        and the error bound relative to ‖T(z)‖, e/‖T(z)‖ (NaN where e is).
        Rows not ``finite`` (T(z) had NaN/Inf, and the caller passed z in its place) are neither checked nor kept.
        ``error``: a bound e on ‖T̃(z) − T(z)‖ (one, or one per row) when T is computed by an inner solver; the
        checks allow what these bounds allow (module docstring), so they never flag an error the bounds admit."""
        step = z_next - z
        r = sample_norms(step).cpu()
        scale = sample_norms(z_next).cpu()
        error = torch.as_tensor(error, dtype=torch.float64).expand(len(index))
        relative_error = error / scale.clamp_min(1e-30)
        error = torch.nan_to_num(error, nan=float("inf"))  # an unknown error allows anything: no false violation
        float_slack = self.slack * scale
        accelerated = self.safeguard is not None
        if kinds is None:
            kinds = torch.full((len(index),), PLAIN, dtype=torch.long)
        finite = torch.ones(len(index), dtype=torch.bool) if finite is None else finite.cpu()
        plain, accepted = (kinds == PLAIN) & finite, (kinds == ACCEPTED) & finite
        residual = torch.full((self.batch_size,), float("nan"), dtype=torch.float64)
        residual[index] = r
        relative = torch.full_like(residual, float("nan"))
        relative[index] = r / scale.clamp_min(1e-30)
        r_prev = self._previous_residual[index]
        have_previous = ~torch.isnan(r_prev) & finite
        if self.history.checks and have_previous.any():
            bound = self._chain_bound[index]
            margin = (r - error) - bound  # > 0: the exact residual exceeds every bound the chain gives it
            checked = have_previous & plain & ~torch.isnan(bound)
            self._record("monotone residual", index, checked & (margin > float_slack), margin / torch.fmax(bound, float_slack),
                         iteration)
            if self.beta is not None:
                slack = float_slack + error + self._previous_error[index]  # for the pair of evaluations
                self._check_pair(index, z, step, r, r_prev, have_previous, slack, iteration, accelerated)
                self._check_first_pair(index, z, step, finite, float_slack, error, iteration)
            if accelerated:
                r_anchor = self._anchor_residual[index]
                jump = sample_norms(z - self._anchor[index]).cpu()
                excess = torch.maximum(r - self.safeguard.decrease * r_anchor, jump - self.safeguard.max_jump * r_anchor)
                self._record("safeguard", index, accepted & (excess > float_slack), excess / torch.fmax(r_anchor, float_slack),
                             iteration)  # the iteration's own rule on the values it computed: rounding only
        returned = relative[index]
        residual[index[~finite]] = relative[index[~finite]] = float("nan")  # not a residual of 0: T(z) was not finite
        self.history.residuals.append(residual)
        self.history.relative_residuals.append(relative)
        if accelerated:
            recorded = torch.full((self.batch_size,), -1, dtype=torch.long)
            recorded[index] = kinds
            self.history.kinds.append(recorded)
        if self.beta is not None and self.history.checks:
            self._remember_first(index, z, step, float_slack, error, finite, iteration)
        kept = torch.nonzero(finite).flatten()
        self._update(index[kept], z[kept], step[kept], r[kept], error[kept], plain[kept], accepted[kept], accelerated)
        return r, returned, relative_error

    def _check_pair(self, index, z, step, r, r_prev, have_previous, slack, iteration, accelerated) -> None:
        """Inequality (A) for the previous evaluation q and this one p: ‖Tp − Tq‖² ≤ ‖p − q‖² − (1−β)/β‖g(p) − g(q)‖²
        (for a plain step p = T(q), so ‖p − q‖ = r_prev and ‖Tp − Tq‖ = r)."""
        change = step - self._previous_step[index]
        if accelerated:
            move = sample_norms(z - self._previous_point[index]).cpu()
            image_move = sample_norms(change + (z - self._previous_point[index])).cpu()
        else:
            move, image_move = r_prev, r
        defect = image_move**2 - move**2 + (1 - self.beta) / self.beta * sample_norms(change).cpu() ** 2  # ≤ 0 when (A) holds
        tolerance = 2 * slack * (image_move + move + slack) * (1 + 2 * (1 - self.beta) / self.beta)  # rounding of the norms
        self._record("inequality (A)", index, have_previous & (defect > tolerance), defect / torch.fmax(move**2, tolerance),
                     iteration)

    def _check_first_pair(self, index, z, step, finite, float_slack, error, iteration) -> None:
        """Inequality (A) for the sample's first evaluation a and this one p: ‖Tp − Ta‖² ≤ ‖p − a‖² −
        (1−β)/β‖g(p) − g(a)‖², skipped while a is the previous evaluation (the consecutive check covers it);
        The slack is the consecutive check's: one rounding slack (the larger of the two) plus both evaluations'
        inner-solver errors."""
        due = finite & (self._first_iteration[index] >= 0) & (self._first_iteration[index] < iteration - 1)
        if not due.any():
            return
        offset = z - self._first_point[index]
        change = step - self._first_step[index]
        move, image_move = sample_norms(offset).cpu(), sample_norms(offset + change).cpu()
        c = (1 - self.beta) / self.beta
        defect = image_move**2 - move**2 + c * sample_norms(change).cpu() ** 2
        both = torch.fmax(float_slack, self._first_slack[index]) + error + self._first_error[index]
        tolerance = 2 * both * (image_move + move + both) * (1 + 2 * c)
        self._record("inequality (A) against the first evaluation", index, due & (defect > tolerance),
                     defect / torch.fmax(move**2, tolerance), iteration)

    def _remember_first(self, index, z, step, float_slack, error, finite, iteration) -> None:
        """Keep each sample's first finite evaluation (point, g and slack) for :meth:`_check_first_pair`."""
        new = finite & (self._first_iteration[index] < 0)
        if not new.any():
            return
        if self._first_point is None:
            self._first_point = torch.zeros((self.batch_size, *z.shape[1:]), dtype=z.dtype, device=z.device)
            self._first_step = torch.zeros_like(self._first_point)
        rows = torch.nonzero(new).flatten()
        samples = index[rows]
        self._first_point[samples] = z[rows]
        self._first_step[samples] = step[rows]
        self._first_slack[samples] = float_slack[rows]
        self._first_error[samples] = error[rows]
        self._first_iteration[samples] = iteration

    def _update(self, index, z, step, r, error, plain, accepted, accelerated) -> None:
        """Remember this evaluation for the next checks: the chain bound P ← min(P, r + e) + 2e restarts at an
        accepted extrapolation (P ← r + 3e), and a rejected one is no anchor and no part of the chain (the next plain
        step is T̃ of the anchor)."""
        kept = plain | accepted
        self._previous_residual[index] = r
        self._previous_error[index] = error
        here = r + error  # an upper bound on the exact residual at this point
        chain = torch.where(accepted, here, torch.fmin(self._chain_bound[index], here)) + 2 * error
        self._chain_bound[index] = torch.where(kept, chain, self._chain_bound[index])
        self._anchor_residual[index] = torch.where(kept, r, self._anchor_residual[index])
        self._extrapolated[index] += (~plain).long()
        if self.beta is not None:
            if self._previous_step is None:
                self._previous_step = torch.zeros((self.batch_size, *step.shape[1:]), dtype=step.dtype, device=step.device)
            self._previous_step[index] = step
        if accelerated:
            if self._previous_point is None:
                self._previous_point = torch.zeros((self.batch_size, *z.shape[1:]), dtype=z.dtype, device=z.device)
                self._anchor = torch.zeros_like(self._previous_point)
            self._previous_point[index] = z
            kept_rows = torch.nonzero(kept).flatten()
            self._anchor[index[kept_rows]] = z[kept_rows]

    def forget(self, index: Tensor) -> None:
        """Stop tracking samples (they stopped); later rows for them stay NaN."""
        self._previous_residual[index] = float("nan")
        self._chain_bound[index] = float("nan")

    def _record(self, check: str, index: Tensor, failed: Tensor, size: Tensor, iteration: int) -> None:
        for position in torch.nonzero(failed).flatten().tolist():
            self.history.violations.append(Violation(check, int(index[position]), iteration, float(size[position])))

    def finish(self, z0: Tensor, z_last: Tensor, converged: list[bool] | None = None) -> History:
        """Compare the residuals with the heuristic rate bound, ‖z₀ − z*‖ ≈ ‖z₀ − z_K‖, and return the history. The
        proxy means something only once z_K is near z*: samples not ``converged`` (a short or stopped run) are not
        compared, nor are samples with extrapolations, accepted or rejected (the bound describes the plain
        iteration). Excesses are counted in ``rate_exceeded``, never as violations (module docstring)."""
        history = self.history
        history.distance_estimate = sample_norms(z0 - z_last).cpu()
        bound = history.rate_bound()
        if bound is not None and history.checks:
            residuals = history.residual_matrix()
            scale = sample_norms(z_last).cpu()[None, :] * self.slack
            excess = residuals - bound
            checked = torch.ones(residuals.shape[1], dtype=torch.bool) if converged is None else torch.tensor(converged)
            history.rate_unchecked = int((~checked).sum())
            plain_only = self._extrapolated == 0
            history.accelerated_unchecked = int((checked & ~plain_only).sum())
            failed = (excess > scale) & ~torch.isnan(residuals) & (checked & plain_only)[None, :]
            history.rate_exceeded = int(failed.sum())
            if history.rate_exceeded:
                history.rate_worst = float((excess / bound)[failed].max())
        return history
