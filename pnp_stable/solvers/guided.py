"""Guided restoration: any strong denoiser supplies a frozen guide, and a certified solve does the rest.

1. Pilot: the guide denoiser's own PnP in the DPIR schedule (:func:`pnp_stable.solvers.schedule.dpir`,
   a few iterations, no guarantee). Its last step is a denoiser output, so it is the guide g.
2. W(g): the frozen-guide linear filter of :mod:`pnp_stable.denoisers.guided`, symmetric with
   0 ≼ W ≼ I, hence firmly non-expansive.
3. The certified solve: any scheme of :func:`pnp_stable.solvers.solve` with D = W(g), monitored, with β.
4. Optional re-guiding rounds: the estimate of round r becomes the guide of round r + 1.

What is certified: each round's solve, for its frozen guide (a fixed averaged operator, so the monitor's
checks and the convergence theorem apply to it). The pilot and the choice of guides are not part of any
guarantee; the result is the limit of the last round's certified iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import deepinv as dinv
from torch import Tensor

from .._validation import check_count, check_noise_level
from ..denoisers.baselines import BM3DDenoiser
from ..denoisers.guided import DEFAULT_PATCH, GuidedDenoiser
from .loop import PnPResult, solve
from .schedule import DPIR_WEIGHT, dpir

__all__ = ["GUIDED_DEFAULTS", "GuidedDefaults", "guided_defaults", "guided_solve"]


@dataclass(frozen=True)
class GuidedDefaults:
    """Defaults of ``deblur(denoiser='guided')`` for one kind of guide: the certified scheme, σ_d =
    ``strength``·σ_n for W's Wiener factors, the number of guiding rounds, the pilot's DPIR iterations and
    data weight λ (:func:`~pnp_stable.solvers.schedule.dpir`), W's patch lattice ``stride`` (used where it divides the image size; else 1), and whether the certified
    solve uses safeguarded Anderson acceleration (W(g) is linear, where it excels: on 4 validation crops DRS
    reaches the same limit, 34.55 dB, in 20 evaluations instead of 133, 0.38 s instead of 2.3 s)."""

    solver: str = "drs"
    strength: float = 0.7
    rounds: int = 1
    pilot_iterations: int = 6
    stride: int = 2
    accelerate: bool = True
    pilot_weight: float = DPIR_WEIGHT


#: Chosen on validation crops (CBSD68 outside CBSD10, 96 px, motion kernels, σ_n = 2.55/255) by one-off runs when
#: #20 landed, not kept as a results file; `deblur-guided.md` and `guided_speed.md` measure the defaults chosen.
#: BM3D guides: one round beats two (35.06 vs 35.03 dB on 8 crops), stride 2 is 5× faster than 1 for 0.04 dB (on
#: whole 256² Set3C photos, `guided_speed.md`: 2.1 s of 25.9 saved, 0.10 dB lost);
#: the pilot is the full 8-iteration DPIR schedule, the peer itself: on 4 crops it reaches 34.34 dB where
#: 6 iterations reach 33.46, and W(g) then adds +0.20 dB at σ_d = 0.5σ_n (34.55; 0.35σ_n 34.54, 0.7σ_n
#: 34.54, σ_n 34.53). The pilot's data weight matters more: λ = 0.33 (the value deblur.py's tuning picks for
#: PnP-BM3D-DPIR) gives a pilot of 34.74 dB and 34.78 after W(g) at 0.7σ_n (0.5σ_n: 34.77); λ = 0.5: 34.63. Network guides (dncnn-color) are weaker, so re-guiding pays: two rounds at σ_d = 2σ_n
#: 34.44 dB against one round 34.17, and stride 1 gains 0.11 dB over 2 (the network pilot is cheap, so W's
#: cost matters less).
GUIDED_DEFAULTS = {"bm3d": GuidedDefaults(strength=0.7, pilot_iterations=8, pilot_weight=0.33),
                   "model": GuidedDefaults(strength=2.0, rounds=2, stride=1, pilot_iterations=6)}


def guided_defaults(guide_denoiser) -> GuidedDefaults:
    """:data:`GUIDED_DEFAULTS` for this guide denoiser: ``'bm3d'`` for BM3D, ``'model'`` for anything else."""
    return GUIDED_DEFAULTS["bm3d" if isinstance(guide_denoiser, BM3DDenoiser) else "model"]


def guided_solve(
    physics: dinv.physics.LinearPhysics,
    y: Tensor,
    guide_denoiser,
    noise_sigma: float,
    solver: str | None = None,
    construction: str = "bm3d",
    denoiser_sigma: float | None = None,
    rounds: int | None = None,
    pilot_iterations: int | None = None,
    max_iter: int | None = None,
    tol: float = 1e-5,
    reference: Tensor | None = None,
    progress: bool = False,
    x0: Tensor | None = None,
    reference_frame: tuple[slice, slice] | None = None,
    accelerate=None,
    **options,
) -> PnPResult:
    """Restore ``y = Ax + n`` with W(g) for a guide g from ``guide_denoiser`` (module docstring).

    ``solver``, ``denoiser_sigma`` (the noise level of W's Wiener factors), ``rounds`` and
    ``pilot_iterations`` default to :func:`guided_defaults` of the guide denoiser (σ_d = ``strength``·σ_n);
    ``options`` go to :class:`~pnp_stable.denoisers.guided.GuidedDenoiser` (``patch``, ``group``, ``stride``, …).
    The result's ``beta`` is the certificate of the last round's iteration for its frozen guide.
    ``x0`` starts the pilot (default Aᵀy); ``reference_frame`` and ``accelerate`` as in :func:`~pnp_stable.solvers.solve`
    (``accelerate`` None: the guide's default, on).
    """
    defaults = guided_defaults(guide_denoiser)
    noise_sigma = check_noise_level(noise_sigma, positive=True)
    solver = solver or defaults.solver
    denoiser_sigma = defaults.strength * noise_sigma if denoiser_sigma is None else denoiser_sigma
    rounds = check_count(defaults.rounds if rounds is None else rounds, "rounds")
    pilot_iterations = defaults.pilot_iterations if pilot_iterations is None else pilot_iterations
    if accelerate is None:  # the guide's default: Anderson wherever the iteration has a β ('auto'; never for FISTA)
        accelerate = "auto" if defaults.accelerate else False
    pilot = dpir(physics, y, guide_denoiser, noise_sigma, iterations=pilot_iterations, weight=defaults.pilot_weight, x0=x0)
    failed = [status for status in pilot.status if status in ("non-finite", "diverged")]
    if failed:
        raise ValueError(f"the guide denoiser's pilot stopped ({', '.join(failed)}), so it gives no guide; check the "
                         f"guide denoiser ({type(guide_denoiser).__name__}) on this image")
    if construction == "bm3d" and "stride" not in options:
        patch = options.get("patch", DEFAULT_PATCH)
        sizes = (*pilot.estimate.shape[2:], *((patch,) if isinstance(patch, int) else patch))
        even = all(size % defaults.stride == 0 for size in sizes)
        options["stride"] = defaults.stride if even else 1
    guide = pilot.estimate
    notes = [f"pilot: {pilot_iterations} DPIR-schedule iterations of {type(guide_denoiser).__name__} (no guarantee)"]
    rounds_done = []
    for round_ in range(1, rounds + 1):
        denoiser = GuidedDenoiser(guide, construction, **options)
        result = solve(physics, y, denoiser, noise_sigma, solver=solver, denoiser_sigma=denoiser_sigma,
                       max_iter=max_iter, tol=tol, x0=guide, reference=reference, progress=progress,
                       reference_frame=reference_frame, accelerate=accelerate)
        standing = ("certified for its frozen guide" if result.beta is not None else
                    "estimated only" if result.estimated_beta is not None else f"not certified (solver {result.solver})")
        notes.append(f"round {round_}/{rounds}: {standing} (W(g) of the '{construction}' construction, "
                     f"guide from {'the pilot' if round_ == 1 else f'round {round_ - 1}'}): {result.verdict}")
        guide = result.estimate
        rounds_done.append(result)
    result.notes = notes + result.notes
    result.earlier_rounds = rounds_done[:-1]
    return result
