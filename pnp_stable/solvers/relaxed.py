"""Krasnosel'skii–Mann relaxation of any scheme: z ↦ z + λ(Tz − z), λβ-averaged for λ ∈ (0, 1/β)."""

from __future__ import annotations

from .schemes import Scheme


class KrasnoselskiiMann(Scheme):
    """z ↦ z + λ(Tz − z) around ``base``'s T. For a β-averaged T this is λβ-averaged when λ < 1/β, so it
    converges; over-relaxing (λ > 1) a T without a β, or λ ≥ 1/β, has no guarantee and is refused unless
    ``allow_unsafe`` (then β is None)."""

    def __init__(self, base: Scheme, relaxation: float, allow_unsafe: bool = False):
        self.base = base
        self.relaxation = float(relaxation)
        self.name = f"{base.name}+KM"
        self.guaranteed = base.guaranteed
        self.fidelity = base.fidelity
        self.denoiser = base.denoiser  # run in eval mode by the loop, as the certificate describes it
        self.step_size = base.step_size
        self.notes = list(base.notes)
        self.trusted = list(base.trusted)
        beta, basis = base.beta()
        if not 0 < self.relaxation < float("inf"):
            raise ValueError(f"relaxation λ must be finite and > 0, got {relaxation}")
        if allow_unsafe:
            return
        if beta is None and self.relaxation > 1:
            raise ValueError(f"relaxation λ = {relaxation} > 1 over-relaxes an iteration that has no averagedness β "
                             f"({basis}): only an averaged iteration is known to converge with λ > 1; use λ ≤ 1 or "
                             "pass allow_unsafe_step=True (CLI: --allow-unsafe-step) to run anyway")
        if beta is not None and self.relaxation >= 1 / beta:
            raise ValueError(f"relaxation λ = {relaxation} must be < 1/β = {1 / beta:.6g} for a {beta:.4g}-averaged "
                             "iteration; use a smaller λ or pass allow_unsafe_step=True (CLI: --allow-unsafe-step) to run anyway")

    def init(self, x0):
        return self.base.init(x0)

    def step(self, z, fidelity, index):
        t, x = self.base.step(z, fidelity, index)
        return z + self.relaxation * (t - z), x

    def certificate_gaps(self):
        return self.base.certificate_gaps()

    def evaluation_error(self, numel):
        """z + λ(T̃z − z) differs from z + λ(Tz − z) by λ‖T̃z − Tz‖."""
        return self.relaxation * self.base.evaluation_error(numel)

    def inexact_sources(self):
        return self.base.inexact_sources()

    def accuracy_records(self):
        return self.base.accuracy_records()

    def beta(self):
        beta, basis = self.base.beta()
        if beta is None:
            return None, basis
        if self.relaxation * beta >= 1:
            return None, f"λ·β = {self.relaxation:g}·{beta:.4g} ≥ 1: the relaxed iteration is not averaged"
        return self.relaxation * beta, f"λ·β with λ = {self.relaxation:g}, β = {beta:.4g} ({basis})"
