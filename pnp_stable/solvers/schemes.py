"""PnP iterations written as fixed-point maps z ↦ T(z) on a governing variable z, each with the
averagedness β of T that theory certifies from the denoiser's certificate at σ_d (DESIGN.md §1). D below is the
weighted denoising step D_ω = (1 − ω)I + ωD(·, σ_d), ωα_D-averaged for ω ∈ (0, 1/α_D) (ω = 1: D itself):

| scheme | T | β |
|---|---|---|
| forward-backward | x ↦ D(x − τ∇f(x)), τ < 2/L | compose(α_D, τL/2) |
| HQS | x ↦ D(prox_{τf}(x)) | compose(α_D, 1/2) |
| Douglas–Rachford | z ↦ z + D̃(2Pz − z) − Pz, P = prox_{τf} | 1/2 (D̃ firmly non-expansive) |
| ADMM | v ↦ v + P(2D̃v − v) − D̃v (DRS with D̃ first) | 1/2 |
| FISTA | accelerated forward-backward | none: no guarantee |

Krasnosel'skii–Mann relaxation z ↦ z + λ(Tz − z), λ ∈ (0, 1/β), is λβ-averaged.

Inexact evaluations. When D is computed to an RMS error ε_D (an iterative prox; its certificate's ``tolerance``)
and P by conjugate gradients to an error e_P (per sample), the computed T̃ satisfies ‖T̃z − Tz‖ ≤ a·ω‖e_D‖ + b·e_P,
with (a, b) = ``error_factors``: FB (1, 0); HQS (1, 1), D_ω being non-expansive; DRS and ADMM (1, 1), since
T = ½(I + R₁R₂) with reflections R = 2J − I that are non-expansive (D̃ and P firmly non-expansive) and an error e
of J moves R by 2e: ‖T̃z − Tz‖ ≤ ½(2e₁ + 2e₂). A run is converged only when the exact map's residual is below
the tolerance: ‖Tz − z‖ ≤ ‖T̃z − z‖ + ‖T̃z − Tz‖. (With a denoiser that has no certificate nothing is
non-expansive and nothing bounds the exact residual: such a run's 'converged' means its computed residual only.)
The run lowers the inner solvers' tolerances along a summable schedule (:mod:`pnp_stable._accuracy`), so the
inexact iteration itself converges to Fix T (Krasnosel'skii–Mann with Σ‖e_k‖ < ∞, Combettes 2004) while every call
meets it.
"""

from __future__ import annotations

from torch import Tensor

from .._accuracy import AccuracyRecord, accuracy_records
from .._modules import with_sigma_argument
from ..denoisers.certificates import certificate_of
from ..operators.fidelity import L2Fidelity, ProxAccuracy
from ..theory import Certificate, compose_averagedness, gradient_step_averagedness, relaxation_for_target

__all__ = ["Scheme", "ForwardBackward", "HalfQuadraticSplitting", "DouglasRachford", "ADMM", "FISTA", "SCHEMES"]


def _weighted_certificate(certificate: Certificate, weight: float, which: str = "at σ_d") -> Certificate:
    """Certificate of D_ω = (1 − ω)I + ωD: ωα-averaged for ω ∈ (0, 1/α), ω-averaged for a merely non-expansive
    D and ω < 1; an uncertified D stays uncertified. Other weights would void the certificate and are refused
    (``which``: the certificate's noise levels, for the message)."""
    if weight == 1 or (certificate.alpha is None and not certificate.nonexpansive):
        return certificate
    limit = 1 / certificate.alpha if certificate.alpha is not None else 1.0
    if not weight < limit:
        raise ValueError(
            f"denoiser_weight ω = {weight:g} ≥ {limit:.6g} (1/α_D {which}; 1 for a merely non-expansive D): "
            f"(1 − ω)I + ωD is then not averaged and the iteration loses its guarantee; choose ω < {limit:.6g}"
        )
    return certificate.relaxed(weight)


def _prox_gaps(fidelity: L2Fidelity) -> list[str]:
    """HQS/DRS/ADMM assume an exact prox: a CG prox that missed its tolerance voids that (a miss of the run's
    summable schedule only withdraws the inexact iteration's convergence claim: :mod:`pnp_stable._accuracy`)."""
    accuracy = fidelity.prox_accuracy
    if fidelity.prox_is_exact or accuracy.accurate:
        return []
    return [f"the prox of f was solved by conjugate gradients to a relative normal-equation residual above its "
            f"tolerance {ProxAccuracy.ACCURACY_FACTOR:g}·cg_tol ({accuracy.miss_text()}), not exactly; raise "
            "cg_max_iter if CG ran out of steps (a smaller step τ conditions the system better), and pass float64 "
            "(y.double(), pnp_stable.operators.to_dtype(op, torch.float64)) when cg_tol lies near float32's rounding "
            "(~3e-7)"]


class Scheme:
    """A PnP iteration: ``init`` makes z₀, ``step`` applies T (returning T(z) and the image estimate).

    The denoising step is D_ω(x) = x + ω(D(x, σ_d) − x) with ω = ``denoiser_weight``: σ_d sets what the
    denoiser removes, ω how far each iteration moves toward it (the prior's weight); D_ω is ωα_D-averaged.
    """

    name = "scheme"
    guaranteed = True  # False for heuristic/accelerated schemes: the monitor then checks nothing
    error_factors = (1.0, 0.0)  # (a, b): ‖T̃z − Tz‖ ≤ a·ω‖e_D‖ + b·e_P (module docstring)

    def __init__(self, fidelity: L2Fidelity, denoiser, denoiser_sigma, step: float, denoiser_weight: float = 1.0):
        if not denoiser_weight > 0:
            raise ValueError(f"denoiser_weight ω must be > 0, got {denoiser_weight}")
        self.fidelity = fidelity
        self.denoiser = denoiser
        self._denoise = with_sigma_argument(denoiser)
        self.denoiser_sigma = denoiser_sigma
        self.step_size = step if isinstance(step, Tensor) and step.numel() > 1 else float(step)
        if isinstance(self.step_size, Tensor) and self.name in ("fb", "fista"):
            raise ValueError(f"{self.name} takes one step τ for the batch (τ < 2/L, which does not depend on the "
                             f"sample), got {self.step_size.numel()} steps")
        self.notes: list[str] = []
        self.denoiser_weight = float(denoiser_weight)
        self.denoiser_certificate: Certificate = _weighted_certificate(
            certificate_of(denoiser, denoiser_sigma), self.denoiser_weight)  # at σ_d: tighter for noise-adaptive D
        self.trusted: list[str] = []  # ingredients of β the caller asserts (PnPResult.trusted)
        # the inner proxes whose tolerances a run schedules: only when the certificate's tolerance is theirs
        self.denoiser_records = accuracy_records(denoiser) if self.denoiser_certificate.scheduled else []
        if self.denoiser_certificate.alpha is not None and self.denoiser_certificate.trusted:
            self.trusted.extend(self.denoiser_certificate.trusted)
            self.notes.append(f"the denoiser's certificate rests on the caller's {' and '.join(self.trusted)}, trusted "
                              "as given, not verified by pnp-stable (check it with pnp_stable.denoisers.adversarial_lipschitz)")

    def sigma_for(self, index: Tensor | None):
        sigma = self.denoiser_sigma
        if isinstance(sigma, Tensor) and sigma.ndim == 1 and index is not None:
            return sigma[index]
        return sigma

    def step_for(self, index: Tensor | None) -> float | Tensor:
        """The proximal step of the samples ``index``: a float, or a [b] tensor of per-sample steps."""
        tau = self.step_size
        if isinstance(tau, Tensor) and index is not None:
            return tau[index.to(tau.device)]
        return tau

    def denoiser_for(self, index: Tensor | None):
        """The denoiser of the samples ``index``: a per-sample denoiser (one with ``subset``, such as a guided
        filter built from one guide per sample) is narrowed to them once some samples have stopped."""
        if index is not None and hasattr(self.denoiser, "subset"):
            return with_sigma_argument(self.denoiser.subset(index))
        return self._denoise

    def denoise(self, x: Tensor, index: Tensor | None) -> Tensor:
        """D_ω(x) = x + ω(D(x, σ_d) − x)."""
        denoised = self.checked_output(self.denoiser_for(index)(x, self.sigma_for(index)), x)
        if self.denoiser_weight == 1:
            return denoised
        return x + self.denoiser_weight * (denoised - x)

    @staticmethod
    def checked_output(denoised, x: Tensor) -> Tensor:
        """The denoiser's output for input x, refused unless it is a tensor of x's shape, precision and device."""
        if not isinstance(denoised, Tensor) or denoised.shape != x.shape:
            got = tuple(denoised.shape) if isinstance(denoised, Tensor) else type(denoised).__name__
            raise ValueError(f"the denoiser returned {got} for an input tensor of shape {tuple(x.shape)}: a PnP "
                             "denoiser must map a [B, C, H, W] tensor to a tensor of the same shape")
        if denoised.dtype != x.dtype or denoised.device != x.device:
            raise ValueError(f"the denoiser returned {denoised.dtype} on {denoised.device} for an input of {x.dtype} on "
                             f"{x.device}: a PnP denoiser must keep its input's precision and device (return out.to(x))")
        return denoised

    def init(self, x0: Tensor) -> Tensor:
        return x0

    def evaluation_error(self, numel: int) -> float | Tensor:
        """Bound on ‖T̃z − Tz‖ for the evaluation just made, for samples of ``numel`` entries: the denoiser's RMS
        output error over the whole sample (its certificate's ``tolerance``, ~0 for a network; for a scheduled inner
        prox that tolerance times its record's ``evaluation_factor``: the schedule's factor, or what its calls reached
        when above), and the last prox call's error per sample (0 for a closed-form prox), through
        :attr:`error_factors`."""
        denoiser_factor, prox_factor = self.error_factors
        rms = self.denoiser_certificate.tolerance
        if self.denoiser_records:
            rms *= max(r.evaluation_factor for r in self.denoiser_records)
        prox = self.fidelity.prox_accuracy.last_absolute if self.uses_iterative_prox else 0.0
        return denoiser_factor * self.denoiser_weight * rms * numel**0.5 + prox_factor * prox

    def accuracy_records(self) -> list[AccuracyRecord]:
        """The inner solvers whose tolerances a run lowers along its summable schedule: the iterative proxes inside
        the denoiser and the data term's CG prox (when this scheme calls it and it has no closed form)."""
        records = list(self.denoiser_records) if self.error_factors[0] > 0 else []
        if self.uses_iterative_prox:
            records.append(self.fidelity.prox_accuracy)
        return records

    @property
    def uses_iterative_prox(self) -> bool:
        """True when this scheme calls the data term's prox and that prox is solved by conjugate gradients."""
        return self.error_factors[1] > 0 and not self.fidelity.prox_is_exact

    def inexact_sources(self) -> list[tuple[str, bool]]:
        """The inner solvers whose errors :meth:`evaluation_error` counts, in words, each with whether a run's
        summable schedule lowers its tolerance (False: a denoiser whose certificate states a fixed tolerance)."""
        sources = []
        if self.error_factors[0] > 0 and self.denoiser_certificate.solved:
            sources.append((f"the denoiser: RMS error ≤ {self.denoiser_certificate.tolerance:g} per call",
                            bool(self.denoiser_records)))
        if self.uses_iterative_prox:
            sources.append((f"the data term's prox: conjugate gradients to cg_tol = {self.fidelity.cg_tol:g}", True))
        return sources

    def step(self, z: Tensor, fidelity: L2Fidelity, index: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def beta(self) -> tuple[float | None, str]:
        """Averagedness of T from the theory and what it rests on (None: no guarantee); it is certified only
        when :meth:`certificate_gaps` finds every ingredient guaranteed."""
        raise NotImplementedError

    def denoising_alpha_label(self) -> str:
        """What the denoising step's α is in a β basis: α_D itself, or ωα_D for a weighted step D_ω."""
        return "α_D" if self.denoiser_weight == 1 else f"ωα_D (ω = {self.denoiser_weight:.4g})"

    def certificate_gaps(self) -> list[str]:
        """Ingredients of :meth:`beta` that are not guaranteed (empty: β is certified). Ask after the run: the
        accuracy of an iterative prox is known only once it has been used (a scheme that never calls it, such
        as FB, leaves it untouched and accurate)."""
        now = certificate_of(self.denoiser, self.denoiser_sigma)  # an iterative prox knows its accuracy only after use
        gaps = []
        if self.denoiser_certificate.alpha is not None and not (self.denoiser_certificate.guaranteed and now.guaranteed):
            gaps.append(f"the denoiser's certificate is not guaranteed ({now.method})")
        return gaps + _prox_gaps(self.fidelity)


class ForwardBackward(Scheme):
    """PnP proximal gradient: x ↦ D(x − τ∇f(x), σ_d)."""

    name = "fb"

    def __init__(self, fidelity, denoiser, denoiser_sigma, step, denoiser_weight: float = 1.0):
        super().__init__(fidelity, denoiser, denoiser_sigma, step, denoiser_weight)
        known = fidelity.__dict__.get("operator_norm")  # given by the caller, or computed and cached already
        if known is not None and known.kind == "given":
            self.notes.append(f"step τ from ‖A‖ ≤ {known.value:.6g}: {known.method}")
            self.trusted.append(f"bound ‖A‖ ≤ {known.value:.6g}")

    def step(self, z, fidelity, index):
        x = self.denoise(z - self.step_size * fidelity.grad(z), index)
        return x, x

    def beta(self):
        alpha_d = self.denoiser_certificate.alpha
        L = self.fidelity.lipschitz
        if self.step_size * L >= 2:
            return None, f"step τL = {self.step_size * L:.4g} ≥ 2: the gradient step is not averaged"
        alpha_step = gradient_step_averagedness(self.step_size, L)
        if alpha_d is None:
            return None, f"denoiser has no averagedness certificate ({self.denoiser_certificate.method})"
        return (compose_averagedness([alpha_d, alpha_step]),
                f"compose({self.denoising_alpha_label()} = {alpha_d:.4g}, τL/2 = {alpha_step:.4g})")

    def certificate_gaps(self):
        norm = self.fidelity.operator_norm
        gaps = super().certificate_gaps()
        if not norm.guaranteed:
            gaps.append(f"‖A‖ = {norm.value:.6g} is an estimate ({norm.method}), so τL/2 may be larger than computed; "
                        "pass operator_norm= a proved upper bound on ‖A‖ to certify")
        return gaps


class HalfQuadraticSplitting(Scheme):
    """x ↦ D(prox_{τf}(x), σ_d)."""

    name = "hqs"
    error_factors = (1.0, 1.0)

    def step(self, z, fidelity, index):
        x = self.denoise(fidelity.prox(z, self.step_for(index)), index)
        return x, x

    def beta(self):
        alpha_d = self.denoiser_certificate.alpha
        if alpha_d is None:
            return None, f"denoiser has no averagedness certificate ({self.denoiser_certificate.method})"
        return compose_averagedness([alpha_d, 0.5]), f"compose({self.denoising_alpha_label()} = {alpha_d:.4g}, prox: 1/2)"


class _SplittingWithFNEDenoiser(Scheme):
    """DRS and ADMM need a firmly non-expansive denoiser: an α-averaged D_ω with α > 1/2 is relaxed further,
    to D̃ = (1 − θ)I + θD_ω with θ = 1/(2α), so the denoising weight in use is min(ω, 1/(2α_D)); a merely
    non-expansive D_ω (α = 1) gets θ = 1/2. α here is the denoiser's certificate for every σ (the iteration is the
    one tuned and benchmarked, whatever σ_d)."""

    def __init__(self, fidelity, denoiser, denoiser_sigma, step, denoiser_weight: float = 1.0):
        super().__init__(fidelity, denoiser, denoiser_sigma, step, denoiser_weight)
        every_sigma = _weighted_certificate(certificate_of(denoiser), self.denoiser_weight,
                                            "for every σ, the certificate DRS and ADMM relax against")
        alpha = every_sigma.alpha if every_sigma.alpha is not None else 1.0 if every_sigma.nonexpansive else None
        if alpha is not None and alpha > 0.5:
            theta = relaxation_for_target(alpha, 0.5)
            self.denoiser_weight *= theta
            self.denoiser_certificate = self.denoiser_certificate.relaxed(theta)
            self.notes.append(f"denoiser relaxed to firmly non-expansive: D̃ = (1 − θ)I + θD_ω with θ = {theta:.4g} "
                              f"(denoising weight {self.denoiser_weight:.4g})")

    def beta(self):
        alpha_d = self.denoiser_certificate.alpha
        if alpha_d is None or alpha_d > 0.5 + 1e-12:
            return None, f"denoiser is not certified firmly non-expansive ({self.denoiser_certificate.method})"
        return 0.5, "½(I + R₁R₂) with both reflections non-expansive (D̃ and the prox are firmly non-expansive)"


class DouglasRachford(_SplittingWithFNEDenoiser):
    """z ↦ z + D̃(2Pz − z, σ_d) − Pz with P = prox_{τf}; estimate D̃(2Pz − z) (deepinv's DRS with its relaxation 1)."""

    name = "drs"
    error_factors = (1.0, 1.0)

    def step(self, z, fidelity, index):
        p = fidelity.prox(z, self.step_for(index))
        x = self.denoise(2 * p - z, index)
        return z + x - p, x


class ADMM(_SplittingWithFNEDenoiser):
    """v ↦ v + P(2D̃v − v) − D̃v, governing variable v = u + z of deepinv's ADMM (u = P(x − z), x = D̃(u + z));
    estimate D̃(v). Initialised as v₀ = P(x₀), which reproduces deepinv's ADMM from (x₀, z₀ = 0)."""

    name = "admm"
    error_factors = (1.0, 1.0)

    def init(self, x0):
        return self.fidelity.prox(x0, self.step_size)

    def step(self, z, fidelity, index):
        x = self.denoise(z, index)
        return z + fidelity.prox(2 * x - z, self.step_for(index)) - x, x


class FISTA(ForwardBackward):
    """Accelerated PnP forward-backward (Beck–Teboulle momentum). No convergence guarantee for PnP."""

    name = "fista"
    guaranteed = False

    def init(self, x0):
        self._previous = x0
        self._t = 1.0
        return x0

    def step(self, z, fidelity, index):
        x = self.denoise(z - self.step_size * fidelity.grad(z), index)
        t_next = (1 + (1 + 4 * self._t**2) ** 0.5) / 2
        previous = self._previous if index is None else self._previous[index]
        z_next = x + ((self._t - 1) / t_next) * (x - previous)
        if index is None:
            self._previous = x
        else:
            self._previous = self._previous.clone()
            self._previous[index] = x
        self._t = t_next
        return z_next, x

    def beta(self):
        return None, "no guarantee: accelerated (momentum) PnP iterations are not averaged maps"


SCHEMES = {cls.name: cls for cls in (ForwardBackward, HalfQuadraticSplitting, DouglasRachford, ADMM, FISTA)}

#: deepinv's names of the same iterations (``optim_builder(iteration=...)``), in any case
SCHEME_ALIASES = {"pgd": "fb"}


def scheme_name(solver: str) -> str:
    """The scheme a solver name means: ours ('fb', 'hqs', 'drs', 'admm', 'fista') or deepinv's ('PGD', 'HQS',
    'DRS', 'ADMM', 'FISTA'), in any case."""
    name = SCHEME_ALIASES.get(str(solver).lower(), str(solver).lower())
    if name not in SCHEMES:
        raise ValueError(f"unknown solver '{solver}'; choose one of {sorted(SCHEMES)} (or deepinv's PGD for fb)")
    return name
