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

from .._modules import evaluation_mode
from .._validation import check_image, check_noise_level
from ..metrics import psnr as psnr_metric
from ..operators.fidelity import L2Fidelity
from .monitor import ConvergenceMonitor, History
from .schemes import SCHEMES, Scheme
from .relaxed import KrasnoselskiiMann
from .defaults import tuned
from .stepsize import check_step, default_step

__all__ = ["ADJOINT_TOLERANCE", "PnPResult", "solve", "run_scheme", "STATUSES"]

STATUSES = ("converged", "max-iterations", "diverged", "non-finite")

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
    inexact prox, an unproved denoiser certificate): the monitor checks it, nothing certifies it."""

    estimate: Tensor
    governing: Tensor
    status: list[str]
    iterations: list[int]
    history: History
    beta: float | None
    beta_basis: str
    solver: str
    step: float
    notes: list[str] = field(default_factory=list)
    earlier_rounds: list["PnPResult"] = field(default_factory=list)  # guided restoration: the rounds before this one
    estimated_beta: float | None = None

    @property
    def verdict(self) -> str:
        return self.history.verdict

    @property
    def violations(self):
        return self.history.violations

    def summary(self) -> str:
        if self.beta is not None:
            beta = f"certified β = {self.beta:.4g}"
        elif self.estimated_beta is not None:
            beta = f"estimated β = {self.estimated_beta:.4g}, NOT certified"
        else:
            beta = "β: none (no guarantee)"
        lines = [
            f"solver {self.solver}, step τ = {self.step:.4g}, {beta} ({self.beta_basis})",
            f"status: {', '.join(f'{s} after {k}' for s, k in zip(self.status, self.iterations))}",
            f"monitor: {self.verdict}",
        ]
        return "\n".join(lines + self.notes)


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
) -> PnPResult:
    """Iterate z_{k+1} = T(z_k) per sample until r_k/‖z_{k+1}‖ < ``tol`` or ``max_iter``.

    ``reference`` is compared with the estimate's ``reference_frame`` (rows, columns) when given, else whole.

    A sample whose residual exceeds ``divergence_factor``·r_0, or whose iterate turns non-finite,
    stops with status 'diverged' / 'non-finite' and returns its best iterate (lowest residual).

    ``progress``: False (silent), True or 'bar' (a tqdm bar on stderr), or 'log': a plain line on stderr such as
    ``PnP-fb: iteration 40/300, relative residual 3.20e-04, 12.1 s`` at most every ``log_every`` seconds (None:
    :data:`LOG_EVERY`, 10 s), the first after ``log_every`` seconds, so that short runs stay silent.
    """
    kind = _progress_kind(progress)
    log = _ProgressLog(f"PnP-{scheme.name}", max_iter, log_every) if kind == "log" else None
    beta, basis = scheme.beta()
    if beta is not None and scheme.fidelity.adjoint_error > ADJOINT_TOLERANCE:
        basis = (f"none: the operator's A_adjoint fails the adjoint test (relative error "
                 f"{scheme.fidelity.adjoint_error:.3g} > {ADJOINT_TOLERANCE:g}), so the gradient and prox are not those "
                 "of f; fix A_adjoint or use pnp_stable.custom_operator(A) for an autograd adjoint")
        warnings.warn(f"no certificate: {basis}", stacklevel=3)
        beta = None
    z = scheme.init(x0)
    z0 = z.clone()
    batch = z.shape[0]
    monitor = ConvergenceMonitor(batch, beta, guaranteed_scheme=scheme.guaranteed)
    status = ["max-iterations"] * batch
    iterations = [max_iter] * batch
    best_residual = torch.full((batch,), float("inf"), dtype=torch.float64)
    best_z, best_x = z.clone(), z.clone()
    estimate = z.clone()
    first_residual = torch.full((batch,), float("nan"), dtype=torch.float64)
    active = torch.ones(batch, dtype=torch.bool)
    fidelity = scheme.fidelity
    start = time.perf_counter()
    with torch.no_grad(), tqdm(total=max_iter, disable=kind != "bar", desc=f"PnP-{scheme.name}", leave=False) as bar:
        for k in range(max_iter):
            index = torch.nonzero(active).flatten()
            if len(index) == 0:
                break
            everyone = len(index) == batch  # then no gather/scatter: the common case costs no copies
            sub = None if everyone else index
            sub_fidelity = fidelity if everyone else fidelity.subset(index)
            z_active = z if everyone else z[index]
            z_next, x_next = scheme.step(z_active, sub_fidelity, sub)
            finite = torch.isfinite(z_next.flatten(1)).all(1)
            if x_next is not z_next:  # FB returns its iterate as the estimate: one check suffices
                finite &= torch.isfinite(x_next.flatten(1)).all(1)
            all_finite = bool(finite.all())
            safe_next = z_next if all_finite else torch.where(finite[:, None, None, None], z_next, z_active)
            r, r_norm = monitor.observe(index, z_active, safe_next, k)
            if k == 0:
                first_residual[index] = r
            stop = []
            for position, b in enumerate(index.tolist()):
                if not finite[position]:
                    status[b], iterations[b] = "non-finite", k
                    stop.append(b)
                    continue
                if r[position] < best_residual[b]:
                    best_residual[b] = r[position]
                    best_z[b], best_x[b] = z_next[position], x_next[position]
                if r[position] > divergence_factor * first_residual[b]:
                    status[b], iterations[b] = "diverged", k + 1
                    stop.append(b)
                elif r_norm[position] < tol:
                    status[b], iterations[b] = "converged", k + 1
                    stop.append(b)
            safe_x = x_next if all_finite else torch.where(finite[:, None, None, None], x_next, estimate[index])
            if everyone:
                z, estimate = safe_next, safe_x
            else:
                if estimate.data_ptr() == z.data_ptr():  # schemes whose iterate is the estimate (FB) return one tensor
                    estimate = estimate.clone()
                z[index], estimate[index] = safe_next, safe_x
            if reference is not None:
                values = torch.full((batch,), float("nan"), dtype=torch.float64)
                compared = estimate[index]
                if reference_frame is not None:
                    compared = compared[..., reference_frame[0], reference_frame[1]]
                values[index] = psnr_metric(compared, reference[index]).double()
                monitor.history.psnr.append(values)
            monitor.history.times.append(time.perf_counter() - start)
            if stop:
                stopped = torch.tensor(stop)
                active[stopped] = False
                monitor.forget(stopped)
            bar.update(1)
            if log is not None:
                log.update(k, r_norm, len(index), batch)
    if estimate.data_ptr() == z.data_ptr():
        estimate = estimate.clone()
    for b in range(batch):
        if status[b] in ("diverged", "non-finite"):
            z[b], estimate[b] = best_z[b], best_x[b]
    history = monitor.finish(z0, z, [s == "converged" for s in status])
    gaps = scheme.certificate_gaps() if beta is not None else []
    if gaps:
        basis = f"{basis}; estimated, not certified: " + "; ".join(gaps)
    return PnPResult(
        estimate=estimate, governing=z, status=status, iterations=iterations, history=history,
        beta=None if gaps else beta, beta_basis=basis, solver=scheme.name, step=scheme.step_size,
        notes=list(scheme.notes), estimated_beta=beta if gaps else None,
    )


def _check_denoiser_channels(denoiser, channels: int) -> None:
    """Refuse a denoiser that records another number of ``channels`` than the problem's images (ours and the
    baselines record it), saying how to apply a one-channel denoiser to each channel (an MRI's real and imaginary
    parts, say); a callable that records none is not checked."""
    expected = getattr(denoiser, "channels", None)
    if not isinstance(expected, int) or expected == channels:
        return
    which = "D" if expected == 1 else "a 1-channel denoiser D (e.g. pnp_stable.load_denoiser('averaged-gray'))"
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
    noise_sigma: float,
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
) -> PnPResult:
    """Plug-and-Play restoration of ``y = A x + n`` (n ~ N(0, noise_sigma²)) with a monitored fixed-point iteration.

    ``solver``: 'fb' (forward-backward / PnP-PGD), 'hqs', 'drs', 'admm' or 'fista' (no guarantee).
    ``denoiser``: any deepinv-style ``denoiser(x, sigma)`` (ours carry a certificate) or a plain
    callable ``denoiser(x)``; it runs under ``torch.no_grad``, a module in eval mode (its own mode is restored after).
    ``denoiser_sigma``, ``step``, ``denoiser_weight`` and ``max_iter`` default to the tuned values of
    :mod:`pnp_stable.solvers.defaults` (σ_d = strength·noise_sigma, τ = step_scale × the theory's
    default of :func:`default_step`); FB refuses τ ≥ 2/L unless ``allow_unsafe_step``.
    ``denoiser_weight`` ω makes the denoising step x + ω(D(x, σ_d) − x), ωα_D-averaged for ω ∈ (0, 1/α_D)
    (α_D: the certificate of D(·, σ_d)): the prior's weight, separate from the denoiser strength σ_d.
    DRS/ADMM use min(ω, 1/(2α_D)) with α_D the certificate for every σ (firm non-expansiveness). ``relaxation`` λ gives the
    Krasnosel'skii–Mann iteration z + λ(Tz − z), λβ-averaged for λ ∈ (0, 1/β).
    β is certified only on guaranteed ingredients: an adjoint that passes :func:`adjoint_test` (else no β and a
    warning), ‖A‖ exact or a proved upper bound for FB (else pass ``operator_norm``, a known bound on ‖A‖), a
    prox that met its tolerance, a guaranteed denoiser certificate; otherwise ``estimated_beta`` says why.
    ``reference_frame`` (rows, columns slices): the part of the estimate that ``reference`` shows, e.g. y's frame
    inside the larger x of a ``'valid'`` blur.
    ``y`` may have any shape that ``physics`` produces from images ``[B, C, H, W]`` (compressed sensing's
    ``[B, m]``, say); x0 defaults to the image Aᵀy.
    ``progress``: False (silent), True or 'bar' (a tqdm bar), or 'log' (a plain stderr line at most every
    ``log_every`` seconds, default 10 s; see :func:`run_scheme`).
    """
    _progress_kind(progress)
    if solver not in SCHEMES:
        raise ValueError(f"unknown solver '{solver}'; choose one of {sorted(SCHEMES)}")
    noise_sigma = check_noise_level(noise_sigma, positive=True)
    fidelity = L2Fidelity(physics, y, noise_sigma, operator_norm=operator_norm)
    _check_denoiser_channels(denoiser, fidelity.x_shape[1])
    defaults = tuned(solver)
    if denoiser_sigma is None:
        denoiser_sigma = defaults.strength * noise_sigma
    sigmas = torch.as_tensor(denoiser_sigma, dtype=torch.float64)
    if not (torch.isfinite(sigmas).all() and (sigmas > 0).all()):
        raise ValueError(f"denoiser_sigma must be finite and > 0 (on the [0, 1] scale, e.g. 2·noise_sigma), got {denoiser_sigma}")
    if max_iter is None:
        max_iter = defaults.max_iter
    if isinstance(max_iter, bool) or not float(max_iter).is_integer() or max_iter < 1:
        raise ValueError(f"max_iter must be a whole number ≥ 1, got {max_iter}")
    max_iter = int(max_iter)
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
    if relaxation != 1.0:
        scheme = KrasnoselskiiMann(scheme, relaxation)
    if x0 is None:
        x0 = fidelity.op.A_adjoint(y)
    check_image(x0, "initialisation x0")
    if tuple(x0.shape) != fidelity.x_shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)} but the problem's images have shape {fidelity.x_shape}")
    if reference is not None:
        check_image(reference, "reference")
        framed = x0 if reference_frame is None else x0[..., reference_frame[0], reference_frame[1]]
        if reference.shape != framed.shape:
            raise ValueError(f"reference shape {tuple(reference.shape)} differs from the image shape {tuple(framed.shape)}")
    with evaluation_mode(denoiser):
        return run_scheme(scheme, x0.clone(), max_iter, tol, reference, divergence_factor, progress, reference_frame,
                          log_every)
