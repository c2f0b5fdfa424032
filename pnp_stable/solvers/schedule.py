"""PnP with a decreasing denoiser strength (the DPIR schedule of Zhang et al. 2021): strong, fast, and
without any convergence guarantee, because the map changes at every iteration.

HQS with σ_k geometric from ``sigma_start`` down to σ_n over K iterations and the data step
x_k = prox_{τ_k f}(z_{k−1}), τ_k = σ_k²/λ (DPIR's α_k = λσ_n²/σ_k² in this module's units), then
z_k = D(x_k, σ_k). It serves as the strongest uncertified peer and as a pilot for guided denoisers.
"""

from __future__ import annotations

import deepinv as dinv
from torch import Tensor

from .._validation import check_count, check_image, check_noise_level, check_start
from ..operators.fidelity import L2Fidelity
from .loop import PnPResult, run_scheme
from .schemes import Scheme

__all__ = ["DPIR_SIGMA_START", "DPIR_WEIGHT", "DecreasingSchedule", "dpir"]

DPIR_SIGMA_START = 49 / 255
DPIR_WEIGHT = 0.23  # λ of DPIR's deblurring experiments


class DecreasingSchedule(Scheme):
    """z ↦ D(prox_{τ_k f}(z), σ_k) with σ_k geometric from ``sigma_start`` to σ_n: no guarantee."""

    name = "dpir"
    guaranteed = False

    def __init__(self, fidelity: L2Fidelity, denoiser, noise_sigma: float, iterations: int = 8,
                 sigma_start: float = DPIR_SIGMA_START, weight: float = DPIR_WEIGHT):
        iterations = check_count(iterations, "iterations of the schedule")
        if not weight > 0:
            raise ValueError(f"DPIR weight λ must be > 0, got {weight}")
        start = max(float(sigma_start), noise_sigma)
        ratio = (noise_sigma / start) ** (1 / max(iterations - 1, 1))
        self.sigmas = [start * ratio**k for k in range(iterations)]
        self.weight = float(weight)
        super().__init__(fidelity, denoiser, noise_sigma, self.sigmas[0] ** 2 / self.weight)
        self._iteration = 0

    def init(self, x0: Tensor) -> Tensor:
        self._iteration = 0
        return x0

    def step(self, z, fidelity, index):
        sigma = self.sigmas[min(self._iteration, len(self.sigmas) - 1)]
        self._iteration += 1
        proximal = fidelity.prox(z, sigma**2 / self.weight)
        x = self.checked_output(self.denoiser_for(index)(proximal, sigma), proximal)
        return x, x

    def beta(self):
        return None, "no guarantee: the denoiser strength and the step change at every iteration (DPIR schedule)"


def dpir(physics: dinv.physics.LinearPhysics, y: Tensor, denoiser, noise_sigma: float, iterations: int = 8,
         sigma_start: float = DPIR_SIGMA_START, weight: float = DPIR_WEIGHT, x0: Tensor | None = None) -> PnPResult:
    """Run :class:`DecreasingSchedule` for ``iterations`` steps from x₀ = Aᵀy (the monitor reports 'no guarantee')."""
    noise_sigma = check_noise_level(noise_sigma, positive=True)
    if not sigma_start > 0:
        raise ValueError(f"sigma_start must be > 0, got {sigma_start}")
    fidelity = L2Fidelity(physics, y, noise_sigma)
    scheme = DecreasingSchedule(fidelity, denoiser, noise_sigma, iterations, sigma_start, weight)
    if x0 is not None:
        check_start(check_image(x0, "initialisation x0"), fidelity.x_shape)
    start = fidelity.op.A_adjoint(y) if x0 is None else x0
    return run_scheme(scheme, start.clone(), max_iter=iterations, tol=0.0)  # D under no_grad, in eval mode
