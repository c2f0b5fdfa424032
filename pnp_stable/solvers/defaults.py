"""Defaults used when the caller gives no denoiser strength, weight, step or iteration budget.

They come from ``benchmarks/tune.py`` (grid search on validation images outside every test set;
results and command in ``benchmarks/results/tuning.md`` and, for FB's denoiser weight and budget,
``tuning-fb.md``; a test compares them with this table).
σ_d = ``strength``·σ_n; FB/FISTA step τ = ``step_scale``/L (L = ‖A‖²/σ_n², so FB's averagedness needs
``step_scale`` < 2; FISTA's momentum needs τ ≤ 1/L and uses its own step, not tuned); HQS/DRS/ADMM step τ = ``step_scale``·σ_d²; the denoising step is x + ω(D(x, σ_d) − x) with
ω = ``denoiser_weight``. ``accelerate``: whether :func:`pnp_stable.deblur` and the CLI use safeguarded Anderson
acceleration when the caller does not say (``benchmarks/results/time_to_solution.md``: the same limit in a
fraction of the denoiser calls, guarantee kept); FISTA is not an averaged iteration, so it has none.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tuned", "TUNED", "tuned"]


@dataclass(frozen=True)
class Tuned:
    strength: float
    step_scale: float
    max_iter: int
    denoiser_weight: float = 1.0
    accelerate: bool = True

    def denoiser_sigma(self, noise_sigma):
        """The default level σ_d = ``strength``·σ_n the iteration calls the denoiser at."""
        return self.strength * noise_sigma


TUNED = {
    "fb": Tuned(strength=1.414, step_scale=1.9, max_iter=300, denoiser_weight=0.475),
    "fista": Tuned(strength=1.414, step_scale=1.0, max_iter=300, denoiser_weight=0.475, accelerate=False),  # FISTA's own τ ≤ 1/L
    "hqs": Tuned(strength=2.0, step_scale=2.0, max_iter=200),
    "drs": Tuned(strength=1.414, step_scale=1.0, max_iter=200),
    "admm": Tuned(strength=1.414, step_scale=1.0, max_iter=200),
}


def tuned(solver: str) -> Tuned:
    """The tuned defaults of ``solver`` (see the module docstring)."""
    if solver not in TUNED:
        raise ValueError(f"unknown solver '{solver}'; choose one of {sorted(TUNED)}")
    return TUNED[solver]
