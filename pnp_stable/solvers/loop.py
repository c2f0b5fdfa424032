"""The fixed-point loop shared by every PnP scheme: per-sample stopping, divergence guard, best iterate."""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field

import deepinv as dinv
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._accuracy import SummableSchedule
from .._modules import accepted_channels, evaluation_mode
from .._validation import (check_count, check_denoiser_sigma, check_image, check_noise_level, check_start,
                           refuse_autocast)
from ..denoisers.zoo import outside_training
from ..operators.fidelity import L2Fidelity, noise_level_of, noise_model_mismatch
from .anderson import Anderson, AndersonSteps, anderson_options
from .monitor import REJECTED, ConvergenceMonitor, History
from .schemes import SCHEMES, Scheme, scheme_name
from .relaxed import KrasnoselskiiMann
from .defaults import tuned
from .stepsize import check_step, default_step
from .tracker import STATUSES, SampleTracker
from ..theory import format_bound

__all__ = ["ADJOINT_TOLERANCE", "PlainSteps", "PnPResult", "solve", "run_scheme", "STATUSES"]

#: largest relative adjoint error (:func:`~pnp_stable.operators.adjoint_test`) that still counts as an exact
#: adjoint: float32 round-off gives ~1e-7, a wrong adjoint O(0.1)
ADJOINT_TOLERANCE = 1e-5

#: seconds between two progress lines of ``progress='log'`` when ``log_every`` is None
LOG_EVERY = 10.0


def _progress_kind(progress) -> str | None:
    """``'bar'``, ``'log'`` or None (silent) from ``progress``: False/None, True/'bar' or 'log'."""
    if progress is None or progress is False:
        return None
    if progress is True or progress == "bar":
        return "bar"
    if progress == "log":
        return "log"
    raise ValueError(f"progress must be False, True (a progress bar), 'bar' or 'log' (plain lines), got {progress!r}")


class _ProgressLog:
    """``progress='log'``: a plain line on stderr at most every ``every`` seconds, the first after ``every`` seconds
    (short runs stay silent), for logs and pipes where a tqdm bar's carriage returns are unreadable."""

    def __init__(self, name: str, total: int, every: float | None):
        every = LOG_EVERY if every is None else float(every)
        if not 0 <= every < float("inf"):
            raise ValueError(f"log_every must be a finite number of seconds ≥ 0, got {every}")
        self.name, self.total, self.every = name, total, every
        self.start = self.last = time.perf_counter()

    def update(self, k: int, relative_residual: Tensor, running: int, batch: int) -> None:
        """Report iteration ``k`` (0-based) with the largest relative residual of the ``running`` samples, if due."""
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        samples = f", {running}/{batch} samples running" if batch > 1 else ""
        print(f"{self.name}: iteration {k + 1}/{self.total}, relative residual {float(relative_residual.max()):.2e}"
              f"{samples}, {now - self.start:.1f} s", file=sys.stderr, flush=True)


@dataclass
class PnPResult:
    """Outcome of a PnP run. ``status[b]`` is one of :data:`STATUSES`; ``beta`` is the certified
    averagedness of the iteration (None: not certified) and ``beta_basis`` what it rests on.
    ``estimated_beta`` is the theory's β when an ingredient is only estimated (an estimated ‖A‖, an
    inexact prox, an unproved denoiser certificate): the monitor checks it, nothing certifies it.
    ``trusted`` names the ingredients of a certified β that the caller asserted and pnp-stable could not prove
    (a bound given as ``operator_norm``, a certificate carried by the caller's own denoiser class)."""

    estimate: Tensor
    governing: Tensor
    status: list[str]
    iterations: list[int]
    history: History
    beta: float | None
    beta_basis: str
    solver: str
    step: float | Tensor  # one τ, or one per sample (proximal schemes with per-sample σ_d)
    notes: list[str] = field(default_factory=list)
    earlier_rounds: list["PnPResult"] = field(default_factory=list)  # guided restoration: the rounds before this one
    estimated_beta: float | None = None
    trusted: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return self.history.verdict

    @property
    def violations(self):
        return self.history.violations

    def beta_text(self) -> str:
        """β as the summary's first line gives it: 'certified β = …' (with what it rests on and any contradiction),
        'estimated β = …, NOT certified', or 'β: none'."""
        if self.beta is not None:
            beta = f"certified β = {format_bound(self.beta, 4)}"
            if self.trusted:
                beta += f", resting on the caller's {' and '.join(self.trusted)} (not verified)"
            if self.violations:  # a violation is proof against the certificate (the monitor's slack is rounding)
                beta += f", CONTRADICTED by {len(self.violations)} monitor violations: an ingredient does not hold"
        elif self.estimated_beta is not None:
            beta = f"estimated β = {self.estimated_beta:.4g}, NOT certified"
        else:
            beta = "β: none" if self.beta_basis.startswith("no guarantee") else "β: none (no guarantee)"
        return beta

    def summary(self) -> str:
        lines = [
            f"solver {self.solver}, {_step_text(self.step)}, {self.beta_text()} ({self.beta_basis})",
            f"status: {', '.join(f'{s} after {k}' for s, k in zip(self.status, self.iterations))} denoiser calls",
            f"monitor: {self.verdict}",
        ]
        return "\n".join(lines + self.notes)


def _step_text(step: float | Tensor) -> str:
    if isinstance(step, Tensor):
        return f"step τ per sample {float(step.min()):.4g} to {float(step.max()):.4g}"
    return f"step τ = {step:.4g}"


class PlainSteps:
    """Plain iterations p_{k+1} = T(p_k): every evaluation is a plain step, and the next point is its image."""

    def __init__(self, z0: Tensor):
        self.points = z0

    def points_of(self, index: Tensor, everyone: bool) -> Tensor:
        return self.points if everyone else self.points[index]

    def kinds(self, index: Tensor, points: Tensor, images: Tensor, finite: Tensor) -> None:
        return None  # all plain

    def advance(self, index, points, images, residual, kinds, finite) -> None:
        """``images``: T(points) with the loop's substitution of ``points`` where T gave NaN/Inf."""
        self.points = images if len(index) == self.points.shape[0] else self.points.index_copy(0, index.to(images.device), images)

    @property
    def governing(self) -> Tensor:
        return self.points


def _psnr_on_device(estimate: Tensor, reference: Tensor) -> Tensor:
    """10·log10(1/MSE) per sample in float64, as :func:`pnp_stable.metrics.psnr` but without leaving the device."""
    mse = (estimate.double() - reference.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse)).cpu()


def _certified_beta(scheme: Scheme) -> tuple[float | None, str]:
    """The scheme's β and basis, withdrawn (with a warning) when the operator's adjoint fails the adjoint test."""
    beta, basis = scheme.beta()
    if beta is not None and scheme.fidelity.adjoint_error > ADJOINT_TOLERANCE:
        basis = (f"none: the operator's A_adjoint fails the adjoint test (relative error, a 4-probe estimate: "
                 f"{scheme.fidelity.adjoint_error:.3g} > {ADJOINT_TOLERANCE:g}), so the gradient and prox are not those "
                 "of f; fix A_adjoint or use pnp_stable.custom_operator(A) for an autograd adjoint")
        warnings.warn(f"no certificate: {basis}", stacklevel=4)
        beta = None
    return beta, basis


def run_scheme(
    scheme: Scheme,
    x0: Tensor,
    max_iter: int = 300,
    tol: float = 1e-5,
    reference: Tensor | None = None,
    divergence_factor: float = 1e4,
    progress: bool | str = False,
    reference_frame: tuple[slice, slice] | None = None,
    log_every: float | None = None,
    accelerate: bool | str | Anderson | None = None,
) -> PnPResult:
    """Iterate T per sample until (r_k + e_k)/‖T(p_k)‖ < ``tol`` (r_k = ‖T(p_k) − p_k‖, e_k the bound on the
    evaluation's error; 'accuracy-limited' where r_k is within that error, :class:`~pnp_stable.solvers.tracker.SampleTracker`)
    or ``max_iter`` evaluations of T.

    Three parts: the scheme's step evaluates T; the steps rule (plain p_{k+1} = T(p_k), or the safeguarded
    Anderson acceleration of :mod:`pnp_stable.solvers.anderson` when ``accelerate`` is given) chooses the next
    point; a :class:`~pnp_stable.solvers.tracker.SampleTracker` keeps each sample's status, estimate and best
    evaluation. The monitor checks every evaluation; ``history`` also records PSNR (when ``reference`` is given,
    compared with the estimate's ``reference_frame``, rows and columns, else whole) and the elapsed time.

    A sample whose residual exceeds ``divergence_factor`` times its smallest so far, or whose iterate turns non-finite,
    stops with status 'diverged' / 'non-finite' and returns its best iterate (lowest residual).

    ``progress``: False (silent), True or 'bar' (a tqdm bar on stderr), or 'log': a plain line on stderr such as
    ``PnP-fb: iteration 40/300, relative residual 3.20e-04, 12.1 s`` at most every ``log_every`` seconds (None:
    :data:`LOG_EVERY`, 10 s), the first after ``log_every`` seconds, so that short runs stay silent.
    """
    refuse_autocast("a PnP solve")
    kind = _progress_kind(progress)
    log = _ProgressLog(f"PnP-{scheme.name}", max_iter, log_every) if kind == "log" else None
    accelerate = anderson_options(accelerate)
    if accelerate is not None and not scheme.guaranteed:
        raise ValueError(f"accelerate applies to averaged iterations; '{scheme.name}' is not one (no guarantee to keep)")
    beta, basis = _certified_beta(scheme)
    z0 = scheme.init(x0)
    batch = z0.shape[0]
    steps = PlainSteps(z0) if accelerate is None else AndersonSteps(z0, accelerate)
    monitor = ConvergenceMonitor(batch, beta, guaranteed_scheme=scheme.guaranteed, safeguard=accelerate)
    tracker = SampleTracker(z0, max_iter, tol, divergence_factor)
    evaluation_error = getattr(scheme, "evaluation_error", lambda numel: 0.0)  # a duck-typed scheme: exact
    history = monitor.history
    fidelity = scheme.fidelity
    schedule = SummableSchedule(getattr(scheme, "accuracy_records", lambda: [])())
    start = time.perf_counter()
    with torch.no_grad(), evaluation_mode(getattr(scheme, "denoiser", None)), schedule, \
            tqdm(total=max_iter, disable=kind != "bar", desc=f"PnP-{scheme.name}", leave=False) as bar:
        for k in range(max_iter):
            index = tracker.running()
            if len(index) == 0:
                break
            schedule.set(k + 1)
            everyone = len(index) == batch  # then no gather/scatter: the common case costs no copies
            points = steps.points_of(index, everyone)
            images, estimates = scheme.step(points, fidelity if everyone else fidelity.subset(index), None if everyone else index)
            finite = torch.isfinite(images.flatten(1)).all(1)
            if estimates is not images:  # FB returns its iterate as the estimate: one check suffices
                finite &= torch.isfinite(estimates.flatten(1)).all(1)
            safe_images = images if bool(finite.all()) else torch.where(finite[:, None, None, None], images, points)
            kinds = steps.kinds(index, points, safe_images, finite)
            error = evaluation_error(points[0].numel())
            r, r_norm, error_norm = monitor.observe(index, points, safe_images, k, kinds, finite, error)
            kept = torch.ones(len(index), dtype=torch.bool) if kinds is None else kinds != REJECTED
            stopped = tracker.record(index, k, safe_images, estimates, r, r_norm, finite, kept, error_norm)
            steps.advance(index, points, safe_images, r, kinds, finite)
            if reference is not None:
                values = torch.full((batch,), float("nan"), dtype=torch.float64)
                compared = tracker.estimate[index]
                if reference_frame is not None:
                    compared = compared[..., reference_frame[0], reference_frame[1]]
                values[index] = _psnr_on_device(compared, reference[index])
                history.psnr.append(values)
            history.times.append(time.perf_counter() - start)
            if len(stopped):
                monitor.forget(stopped)
            bar.update(1)
            if log is not None:
                log.update(k, r_norm, len(index), batch)
    governing, estimate = tracker.finish(steps.governing)
    history = monitor.finish(z0, governing, tracker.converged)
    gaps = scheme.certificate_gaps() if beta is not None else []
    if gaps:
        basis = f"{basis}; estimated, not certified: " + "; ".join(gaps)
    notes = list(scheme.notes) + ([] if accelerate is None else [accelerate.describe()])
    sources = [(source, False) if isinstance(source, str) else source  # a duck-typed scheme: words only, or none
               for source in getattr(scheme, "inexact_sources", lambda: [])()]
    limited = [b for b, status in enumerate(tracker.status) if status == "accuracy-limited"]
    if limited:
        notes.append(_accuracy_note(sources, tol, tracker.exact_bound[limited]))
    if sources and beta is not None:
        notes.append(_inexact_note(sources, schedule, accelerate is not None))
    return PnPResult(
        estimate=estimate, governing=governing, status=tracker.status, iterations=tracker.iterations, history=history,
        beta=None if gaps else beta, beta_basis=basis, solver=scheme.name, step=scheme.step_size,
        notes=notes, estimated_beta=beta if gaps else None, trusted=list(getattr(scheme, "trusted", [])),
    )


def _accuracy_note(sources: list[tuple[str, bool]], tol: float, bounds: Tensor) -> str:
    """What an 'accuracy-limited' stop means and how to go further (``sources``: the inner solvers, in words)."""
    solved = " and ".join(text for text, _ in sources) or "an inner solver"
    return (f"accuracy-limited: {len(bounds)} sample(s) moved less than the accuracy of their evaluations (r/‖z‖ < tol = "
            f"{tol:g}, and r within twice the inner solvers' error: {solved}), so the exact iteration's relative residual "
            f"there is bounded by {float(bounds.max()):.3g}, not by tol; solve the inner problems more accurately, or "
            f"stop at a tol above that bound")


def _inexact_note(sources: list[tuple[str, bool]], schedule: SummableSchedule, accelerated: bool) -> str:
    """What β means when T is evaluated by inner solvers, and whether the inexact iteration itself is proved to
    converge: only when every source followed the run's summable schedule (plain KM steps: Combettes 2004;
    safeguarded Anderson steps: the theorem with errors in :mod:`.anderson`)."""
    text = (f"inexact evaluations ({' and '.join(text for text, _ in sources)}): β is the exact map T's; each call's "
            "error bound is added to every check and stopping test, so 'converged' certifies the returned point's exact "
            "residual (r + e < tol·‖z‖) and 'accuracy-limited' bounds it; ")
    fixed = [text.split(":")[0] for text, scheduled in sources if not scheduled]
    if fixed:
        return text + (f"{' and '.join(fixed)} keeps a fixed tolerance (errors bounded per call, not summable), so the "
                       "inexact iteration's own convergence to Fix T (Krasnosel'skii–Mann with Σ‖e_k‖ < ∞) is not claimed")
    miss = schedule.miss()
    if miss is not None:
        k, bound, tolerance = miss
        return text + (f"at evaluation {k} an inner solve reached {bound:.3g}, above the {tolerance:.3g} that the "
                       f"summable schedule ({schedule.describe()}) then asked for (float32's rounding, or the solver's "
                       "iteration cap), so the inexact iteration's own convergence to Fix T is not claimed; float64 "
                       "follows the schedule far longer")
    followed = f"the tolerances followed the summable schedule ({schedule.describe()}) at every call, so "
    if accelerated:
        return text + followed + ("the inexact iteration itself converges to Fix T (safeguarded Anderson steps with "
                                  "Σ‖e_k‖ < ∞: the proof in pnp_stable.solvers.anderson, which extends Combettes "
                                  "2004's Krasnosel'skii–Mann argument to the accepted steps)")
    return text + followed + ("the inexact iteration itself converges to Fix T (Krasnosel'skii–Mann with "
                              "Σ‖e_k‖ < ∞, Combettes 2004)")


def _check_denoiser_channels(denoiser, channels: int) -> None:
    """Refuse a denoiser that records another number of ``channels`` than the problem's images (ours and the
    baselines record it), saying how to apply a one-channel denoiser to each channel (an MRI's real and imaginary
    parts, say); a callable that records none is not checked."""
    accepted = accepted_channels(denoiser)
    if accepted is None or channels in accepted:
        return
    expected = accepted[0]
    which = "D" if expected == 1 else "a 1-channel denoiser D (e.g. pnp_stable.load_denoiser('averaged-sll-gray'))"
    raise ValueError(
        f"the denoiser takes {expected}-channel images but this problem's images (Aᵀy) have {channels} channel(s), "
        f"e.g. an MRI's real and imaginary parts; apply {which} to each channel by wrapping it: denoiser=lambda x, s: "
        "torch.cat([D(x[:, i:i+1], s) for i in range(x.shape[1])], 1) (as averaged as D, but the wrapper carries no "
        f"certificate), or use a denoiser built for {channels} channel(s)"
    )


def solve(
    physics: dinv.physics.LinearPhysics,
    y: Tensor,
    denoiser,
    noise_sigma: float | None = None,
    solver: str = "fb",
    denoiser_sigma: float | Tensor | None = None,
    step: float | None = None,
    relaxation: float = 1.0,
    max_iter: int | None = None,
    tol: float = 1e-5,
    x0: Tensor | None = None,
    reference: Tensor | None = None,
    allow_unsafe_step: bool = False,
    divergence_factor: float = 1e4,
    progress: bool | str = False,
    denoiser_weight: float | None = None,
    operator_norm: float | None = None,
    reference_frame: tuple[slice, slice] | None = None,
    log_every: float | None = None,
    accelerate: bool | str | Anderson = False,
) -> PnPResult:
    """Plug-and-Play restoration of ``y = A x + n`` (n ~ N(0, noise_sigma²)) with a monitored fixed-point iteration.

    ``noise_sigma`` None: the level of ``physics``' own deepinv ``GaussianNoise`` (as a deepinv user sets it); a given
    one that differs from it by more than 1 % is used, with a warning.

    ``solver``: 'fb' (forward-backward / PnP-PGD), 'hqs', 'drs', 'admm' or 'fista' (no guarantee); deepinv's names
    ('PGD', 'HQS', 'DRS', 'ADMM', 'FISTA') and any case are accepted.
    ``denoiser``: any deepinv-style ``denoiser(x, sigma)`` (ours carry a certificate) or a plain
    callable ``denoiser(x)``; it runs under ``torch.no_grad``, a module in eval mode (its own mode is restored after).
    ``denoiser_sigma``, ``step``, ``denoiser_weight`` and ``max_iter`` default to the tuned values of
    :mod:`pnp_stable.solvers.defaults` (σ_d = strength·noise_sigma, τ = step_scale × the theory's
    default of :func:`default_step`); FB refuses τ ≥ 2/L unless ``allow_unsafe_step``.
    ``denoiser_weight`` ω makes the denoising step x + ω(D(x, σ_d) − x), ωα_D-averaged for ω ∈ (0, 1/α_D)
    (α_D: the certificate of D(·, σ_d)): the prior's weight, separate from the denoiser strength σ_d.
    DRS/ADMM use min(ω, 1/(2α_D)) with α_D the certificate for every σ (firm non-expansiveness). ``relaxation`` λ gives the
    Krasnosel'skii–Mann iteration z + λ(Tz − z), λβ-averaged for λ ∈ (0, 1/β); λ ≥ 1/β, or λ > 1 without a β, is
    refused unless ``allow_unsafe_step`` (then no β).
    β is certified only on guaranteed ingredients: an adjoint that passes :func:`adjoint_test` (else no β and a
    warning), ‖A‖ exact or a proved upper bound for FB (else pass ``operator_norm``, a known bound on ‖A‖), a
    prox that met its tolerance, a guaranteed denoiser certificate; otherwise ``estimated_beta`` says why.
    Warns when σ_d lies outside the noise levels a loaded model was last trained on (its ``noise_range``); notes
    when ``physics``' own deepinv noise model is not Gaussian of level ``noise_sigma`` (:func:`~pnp_stable.operators.fidelity.noise_model_mismatch`).
    ``reference_frame`` (rows, columns slices): the part of the estimate that ``reference`` shows, e.g. y's frame
    inside the larger x of a ``'valid'`` blur.
    ``y`` may have any shape that ``physics`` produces from images ``[B, C, H, W]`` (compressed sensing's
    ``[B, m]``, say); x0 defaults to the image Aᵀy. To continue a run, pass ``x0=result.governing``: FB, HQS and DRS
    then go on exactly where it stopped, while ADMM starts from P(x0) (its initialisation), near that point but not
    at it.
    ``progress``: False (silent), True or 'bar' (a tqdm bar), or 'log' (a plain stderr line at most every
    ``log_every`` seconds, default 10 s; see :func:`run_scheme`).
    ``accelerate``: True, 'anderson' or an :class:`~pnp_stable.solvers.Anderson` for safeguarded Anderson
    acceleration of FB/HQS/DRS/ADMM: when T is averaged (a certified or estimated β), convergence to a fixed point
    of the same T is kept (:mod:`pnp_stable.solvers.anderson`); the monitor checks the safeguard; ``max_iter``
    then counts evaluations of T, i.e. denoiser calls, and a rejected candidate costs one. 'auto': accelerate
    exactly when this iteration has a β (denoiser certificate, step, weight and relaxation within the theory).
    """
    _progress_kind(progress)
    automatic = isinstance(accelerate, str) and accelerate == "auto"
    acceleration = None if automatic else anderson_options(accelerate)
    solver = scheme_name(solver)
    noise_sigma = check_noise_level(noise_level_of(physics) if noise_sigma is None else noise_sigma, positive=True)
    fidelity = L2Fidelity(physics, y, noise_sigma, operator_norm=operator_norm)
    _check_denoiser_channels(denoiser, fidelity.x_shape[1])
    defaults = tuned(solver)
    if denoiser_sigma is None:
        denoiser_sigma = defaults.denoiser_sigma(noise_sigma)
    sigmas = check_denoiser_sigma(denoiser_sigma, fidelity.x_shape[0])  # one level for all, or one per sample:
    denoiser_sigma = float(sigmas) if sigmas.numel() == 1 else sigmas.to(device=y.device, dtype=y.dtype)
    advice = outside_training(denoiser, sigmas, level="denoiser_sigma")
    if advice:  # the certificate holds; the estimate suffers
        warnings.warn(advice, stacklevel=2)
    if max_iter is None:
        max_iter = defaults.max_iter
    max_iter = check_count(max_iter, "max_iter")
    try:
        tol = float(tol) if not isinstance(tol, bool) else None
    except (TypeError, ValueError, RuntimeError):
        tol = None
    if tol is None or not 0 <= tol < float("inf"):
        raise ValueError(f"tol must be a finite number ≥ 0 (the relative residual at which to stop), got {tol!r}")
    if denoiser_weight is None:
        denoiser_weight = defaults.denoiser_weight
    if step is None:
        step = defaults.step_scale * default_step(solver, fidelity, denoiser_sigma)
    scheme = SCHEMES[solver](fidelity, denoiser, denoiser_sigma, step, denoiser_weight)
    check_step(scheme, allow_unsafe_step)
    mismatch = noise_model_mismatch(physics, noise_sigma)
    if mismatch:
        scheme.notes.append(mismatch)
        if isinstance(getattr(physics, "noise_model", None), dinv.physics.GaussianNoise):
            warnings.warn(mismatch, stacklevel=2)  # a Gaussian level of its own that the caller overrode
    if relaxation != 1.0:
        scheme = KrasnoselskiiMann(scheme, relaxation, allow_unsafe=allow_unsafe_step)
    if (automatic and scheme.guaranteed and scheme.beta()[0] is not None
            and fidelity.adjoint_error <= ADJOINT_TOLERANCE):
        acceleration = Anderson()  # 'auto': only where T is averaged (a wrong adjoint withdraws β), as the theorem needs
    given = x0 is not None
    if x0 is None:
        x0 = fidelity.op.A_adjoint(y)
    check_image(x0, "initialisation x0")
    check_start(x0, fidelity.x_shape)
    if given and (x0.dtype != y.dtype or x0.device != y.device):
        raise ValueError(f"initialisation x0 is {x0.dtype} on {x0.device} but y is {y.dtype} on {y.device}; "
                         "pass x0.to(y) so that the iteration runs in one precision on one device")
    if reference is not None:
        check_image(reference, "reference")
        framed = x0 if reference_frame is None else x0[..., reference_frame[0], reference_frame[1]]
        if reference.shape != framed.shape:
            raise ValueError(f"reference shape {tuple(reference.shape)} differs from the image shape {tuple(framed.shape)} "
                             "[B, C, H, W]: the reference must be the clean image of the degraded one, at its size and "
                             "with its channels (crop or convert it, or leave the reference out)")
    return run_scheme(scheme, x0.clone(), max_iter, tol, reference, divergence_factor, progress, reference_frame,
                      log_every, acceleration)  # which runs D under no_grad, in eval mode
