"""Safeguarded Anderson acceleration of an averaged fixed-point map T, with its convergence guarantee kept.

Let T be β-averaged (hence non-expansive) with Fix T ≠ ∅, and g(p) = T(p) − p its residual. The run keeps
an *anchor* p_k, the last point whose evaluation was accepted, and one evaluation of T per iteration:

* a **plain** step evaluates T at p_{k+1} = T(p_k), always accepted;
* an **accelerated** step evaluates T at the type-II Anderson candidate c = T(p_k) + Σ_j γ_j ΔT_j (γ from the
  regularised least-squares fit of the last ``memory`` residual differences ΔG_j, ΔT_j the matching
  differences of T), proposed only when ‖c − p_k‖ ≤ C‖g(p_k)‖, and accepted as p_{k+1} = c only when
  ‖g(c)‖ ≤ ρ‖g(p_k)‖ (C = ``max_jump``, ρ = ``decrease`` < 1). A rejected c is dropped: the next iteration
  evaluates the plain step T(p_k) (so a rejection costs one evaluation).

**Theorem.** The anchors converge to a fixed point of T. *Proof.* Along plain steps ‖g‖ does not increase
(‖g(Tp)‖ = ‖T(Tp) − Tp‖ ≤ ‖Tp − p‖ by non-expansiveness), and each accepted step multiplies it by at most ρ,
so after n accepted steps ‖g(p_k)‖ ≤ ρⁿ‖g(p_0)‖. For z* ∈ Fix T a plain step is Fejér, ‖T(p) − z*‖ ≤
‖p − z*‖, and the n-th accepted step moves at most C‖g‖ ≤ Cρ^{n−1}‖g(p_0)‖, so ‖p_{k+1} − z*‖ ≤ ‖p_k − z*‖ + ε_k
with Σε_k ≤ C‖g(p_0)‖/(1 − ρ) < ∞: the sequence is quasi-Fejér, bounded, and ‖p_k − z*‖ converges for every
z* ∈ Fix T. Its residuals tend to 0 (geometrically over accepted steps; over a tail of plain steps by the
Krasnosel'skii–Mann theorem), so by continuity of g every cluster point is a fixed point, and a quasi-Fejér
sequence with all cluster points in Fix T converges to one of them (Combettes 2001, quasi-Fejér monotone
sequences).
This is the mechanism of Zhang, O'Donoghue and Boyd (2020, SIAM J. Optim. 30(4)): safeguarded steps with
bounded length and summable residuals; their Powell regularisation is replaced by the explicit length test.

**With inexact evaluations.** If each evaluation returns T̃(p) = T(p) + δ with ‖δ‖ ≤ e (inner solvers; the tests
above use the computed g̃ = T̃ − I) and Σ e_k < ∞ over evaluations, the anchors still converge to a fixed point
of T. *Proof.* Let r_k = ‖g̃(p_k)‖, d_k = ‖p_k − z*‖ and e_k the error of T̃(p_k). A plain step gives
d_{k+1} ≤ d_k + e_k and r_{k+1} ≤ ‖T p_{k+1} − T p_k‖ + e_{k+1} + e_k ≤ r_k + e_k + e_{k+1}; an accepted one
d_{k+1} ≤ d_k + C r_k and r_{k+1} ≤ ρ r_k; a rejection changes neither. So Φ_k = d_k + C r_k/(1 − ρ) does not
grow on accepted steps and grows by at most (1 + C/(1 − ρ))(e_k + e_{k+1}) on plain ones: Φ_k converges (for
errors relative to the iterate, e_k ≤ c·s_k(1 + d_k) with Σ s_k < ∞, through Φ_{k+1} ≤ (1 + a_k)Φ_k + b_k with
summable a, b). Also r_k → 0: with finitely many accepted steps the tail is the Krasnosel'skii–Mann iteration
with summable errors (Combettes 2004); with infinitely many, r_k ≤ ρ^{n(k) − n(J)}r_J + Σ_{j ≥ J}(e_j + e_{j+1})
for k ≥ J (n: accepted steps so far), small for J, then k, large. Hence d_k = Φ_k − C r_k/(1 − ρ) converges for
every z* ∈ Fix T, ‖g(p_k)‖ ≤ r_k + e_k → 0, and Opial's lemma gives convergence to a fixed point. A run's summable
schedule (:mod:`pnp_stable._accuracy`) supplies exactly such errors; with e = 0 this is the theorem above.

What the monitor checks (:mod:`pnp_stable.solvers.monitor`): the averagedness inequality of T for every
pair of consecutive evaluations (it holds for any two points), the monotone residual along plain steps,
and the two safeguard conditions on every accepted step; the O(1/k) rate bound of the plain iteration does
not apply to an accelerated run and is not checked there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_whole
from .monitor import ACCEPTED, PLAIN, REJECTED, sample_norms

__all__ = ["Anderson", "AndersonSteps", "anderson_options"]

GRAM_CHUNK = 1 << 20  #: pixels per chunk of the candidate's float64 least-squares sums


@dataclass(frozen=True)
class Anderson:
    """Safeguarded type-II Anderson acceleration (module docstring): ``memory`` m residual differences,
    acceptance when the residual falls by the factor ``decrease`` ρ < 1, candidates at most ``max_jump``
    C times the anchor's residual away from it, Tikhonov ``regularisation`` relative to the Gram's trace."""

    memory: int = 10
    decrease: float = 0.9
    max_jump: float = 1e3
    regularisation: float = 1e-8

    def __post_init__(self):
        check_whole(self.memory, "Anderson memory")
        for name in ("decrease", "max_jump", "regularisation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"Anderson {name} must be a number, got {value!r}")
        if not 0 < self.decrease < 1:
            raise ValueError(f"Anderson decrease ρ must lie in (0, 1) for the guarantee, got {self.decrease}")
        if not 0 < self.max_jump < float("inf"):
            raise ValueError(f"Anderson max_jump C must be finite and > 0 for the guarantee, got {self.max_jump}")
        if not 0 < self.regularisation < float("inf"):
            raise ValueError(f"Anderson regularisation must be finite and > 0, got {self.regularisation}")

    def describe(self) -> str:
        return (f"safeguarded Anderson acceleration (type II, memory {self.memory}; a candidate is accepted when its "
                f"residual ≤ {self.decrease:g}× the anchor's and it lies within {self.max_jump:g}× that residual)")


def anderson_options(accelerate) -> Anderson | None:
    """``accelerate`` as given to :func:`~pnp_stable.solvers.solve`: False/None (plain iterations), True or
    ``'anderson'`` (the defaults of :class:`Anderson`), or an :class:`Anderson`."""
    if accelerate is None or accelerate is False:
        return None
    if accelerate is True or accelerate == "anderson":
        return Anderson()
    if isinstance(accelerate, Anderson):
        return accelerate
    raise ValueError(f"accelerate must be False, True, 'anderson' or a pnp_stable.solvers.Anderson, got {accelerate!r}")


class AndersonMemory:
    """Per-sample ring buffers of the last m + 1 evaluations (T(p), g(p) = T(p) − p), and the type-II candidate
    they give. The candidate is formed one sample and one chunk of :data:`GRAM_CHUNK` pixels at a time, so that
    beyond the buffers it holds one image and a float64 chunk per slot (``benchmarks/results/anderson_memory.md``:
    +125 MiB beside 3 GiB of buffers at 12 megapixels), where stacking the float64 differences of whole images
    would hold about 8(m + 1) more images."""

    def __init__(self, options: Anderson, batch: int, like: Tensor):
        slots = options.memory + 1
        self.options = options
        self.images = torch.zeros((slots, batch, *like.shape[1:]), dtype=like.dtype, device=like.device)
        self.residuals = torch.zeros_like(self.images)
        self.count = torch.zeros(batch, dtype=torch.long)

    def add(self, index: Tensor, points: Tensor, images: Tensor) -> None:
        slot = self.count[index] % self.images.shape[0]
        self.images[slot, index] = images
        self.residuals[slot, index] = images - points
        self.count[index] += 1

    def candidate(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """(c, usable) for the samples ``index``: c = T(p_new) + Σ_j γ_j (T(p_j) − T(p_new)) with γ minimising
        ‖g_new + Σ_j γ_j (g_j − g_new)‖² + λ‖γ‖² over the other stored evaluations; ``usable`` is False where
        fewer than two evaluations are stored (c is then T(p_new))."""
        pairs = [self._candidate_of(sample) for sample in index.tolist()]
        return torch.stack([c for c, _ in pairs]), torch.tensor([usable for _, usable in pairs], dtype=torch.bool)

    def _candidate_of(self, sample: int) -> tuple[Tensor, bool]:
        slots, count = self.images.shape[0], int(self.count[sample])
        newest = (count - 1) % slots
        others = [slot for slot in range(min(count, slots)) if slot != newest]
        t_new = self.images[newest, sample]
        if not others:
            return t_new, False
        residuals = self.residuals[:, sample].flatten(1)  # a view [S, N]
        g_new, chosen = residuals[newest], torch.tensor(others, device=residuals.device)
        gram = torch.zeros(len(others), len(others), dtype=torch.float64, device=residuals.device)
        rhs = torch.zeros(len(others), dtype=torch.float64, device=residuals.device)
        for start in range(0, g_new.numel(), GRAM_CHUNK):
            g = g_new[start : start + GRAM_CHUNK].double()
            diff = residuals[chosen, start : start + GRAM_CHUNK].double() - g  # ΔG_j on this chunk
            gram += diff @ diff.T
            rhs += diff @ g
        scale = gram.diagonal().sum().clamp_min(1e-300)
        gram += self.options.regularisation * scale * torch.eye(len(others), dtype=gram.dtype, device=gram.device)
        gamma = -torch.linalg.solve(gram, rhs)
        candidate = t_new.clone()
        for weight, slot in zip(gamma.tolist(), others):
            candidate.add_(self.images[slot, sample] - t_new, alpha=weight)
        return candidate, True


class AndersonSteps:
    """The safeguarded iteration of the module docstring for a batch: per sample the anchor p, T(p), ‖g(p)‖, and
    the point to evaluate next (a candidate, flagged ``jumped``, or the plain step T(p))."""

    def __init__(self, z0: Tensor, options: Anderson):
        batch = z0.shape[0]
        self.options = options
        self.points = z0
        self.anchor = z0.clone()
        self.anchor_image = z0.clone()
        self.anchor_residual = torch.full((batch,), float("nan"), dtype=torch.float64)
        self.jumped = torch.zeros(batch, dtype=torch.bool)
        self.memory = AndersonMemory(options, batch, z0)

    def points_of(self, index: Tensor, everyone: bool) -> Tensor:
        return self.points if everyone else self.points[index]

    def kinds(self, index: Tensor, points: Tensor, images: Tensor, finite: Tensor) -> Tensor:
        """PLAIN for plain steps; for candidates ACCEPTED when T(c) is finite and ‖g(c)‖ ≤ ρ‖g(p)‖ (the length
        test was passed when proposed), else REJECTED (the next point is then T(p), known to be finite)."""
        jumped = self.jumped[index]
        kinds = torch.full((len(index),), PLAIN, dtype=torch.long)
        if jumped.any():
            rows = torch.nonzero(jumped).flatten()
            residual = sample_norms(images[rows] - points[rows]).cpu()
            accept = (residual <= self.options.decrease * self.anchor_residual[index[rows]]) & finite.cpu()[rows]
            kinds[rows] = torch.where(accept, ACCEPTED, REJECTED)
        return kinds

    def advance(self, index: Tensor, points: Tensor, images: Tensor, residual: Tensor, kinds: Tensor, finite: Tensor) -> None:
        """Store the finite evaluations, move the anchors of the kept ones, and choose each sample's next point:
        a new candidate where one passes the length test, else the plain step T(p) from its anchor."""
        finite = finite.cpu()
        stored = torch.nonzero(finite).flatten()
        self.memory.add(index[stored], points[stored], images[stored])
        kept = torch.nonzero((kinds != REJECTED) & finite).flatten()
        moved = index[kept]
        self.anchor[moved], self.anchor_image[moved] = points[kept], images[kept]
        self.anchor_residual[moved] = residual[kept]
        following = self.anchor_image[index]  # the plain step T(p) from each anchor (indexing copies)
        jumped = torch.zeros(len(index), dtype=torch.bool)
        if len(moved):
            candidate, usable = self.memory.candidate(moved)
            length = sample_norms(candidate - self.anchor[moved]).cpu()
            ok = usable & (length <= self.options.max_jump * residual[kept]) & torch.isfinite(length)
            following[kept[ok]] = candidate[ok]
            jumped[kept[ok]] = True
        self.points = self.points.index_copy(0, index.to(following.device), following) if len(index) < self.points.shape[0] else following
        self.jumped[index] = jumped

    @property
    def governing(self) -> Tensor:
        """T(p) of every anchor: the next plain iterate, as the governing variable of a plain run."""
        return self.anchor_image
