"""Krasnosel'skii–Mann relaxation of any scheme: z ↦ z + λ(Tz − z), λβ-averaged for λ ∈ (0, 1/β)."""

from __future__ import annotations

from .schemes import Scheme


class KrasnoselskiiMann(Scheme):
    def __init__(self, base: Scheme, relaxation: float):
        self.base = base
        self.relaxation = float(relaxation)
        self.name = f"{base.name}+KM"
        self.guaranteed = base.guaranteed
        self.fidelity = base.fidelity
        self.step_size = base.step_size
        self.notes = list(base.notes)
        beta, _ = base.beta()
        if not self.relaxation > 0:
            raise ValueError(f"relaxation λ must be > 0, got {relaxation}")
        if beta is not None and self.relaxation >= 1 / beta:
            raise ValueError(f"relaxation λ = {relaxation} must be < 1/β = {1 / beta:.6g} for a {beta:.4g}-averaged iteration")

    def init(self, x0):
        return self.base.init(x0)

    def step(self, z, fidelity, index):
        t, x = self.base.step(z, fidelity, index)
        return z + self.relaxation * (t - z), x

    def certificate_gaps(self):
        return self.base.certificate_gaps()

    def beta(self):
        beta, basis = self.base.beta()
        if beta is None:
            return None, basis
        return self.relaxation * beta, f"λ·β with λ = {self.relaxation:g}, β = {beta:.4g} ({basis})"
