"""The data-fidelity term f(x) = ½‖Ax − y‖² / s² of Gaussian noise of level s."""

from __future__ import annotations

import math
from functools import cached_property

import deepinv as dinv
import torch
from torch import Tensor
from deepinv.optim.linear import conjugate_gradient

from .._accuracy import AccuracyRecord
from .._validation import check_noise_level
from .norms import (OperatorNorm, _check_linear, adjoint_test, has_closed_form_prox, normal_operator, operator_norm,
                    power_iteration)

__all__ = ["L2Fidelity", "ProxAccuracy", "noise_model_mismatch"]


def _gaussian_levels(model) -> Tensor:
    """The σ (one or one per sample) of a deepinv ``GaussianNoise``, flattened, in float64."""
    return torch.as_tensor(model.sigma, dtype=torch.float64).flatten()


def noise_level_of(op) -> float:
    """The σ of ``op``'s own deepinv ``GaussianNoise`` (one level for the batch), for a caller who gave none;
    refused, saying what to pass, when ``op`` has no Gaussian noise model to read it from."""
    model = getattr(op, "noise_model", None)
    if not isinstance(model, dinv.physics.GaussianNoise):
        has = "no noise model" if model is None else f"a {type(model).__name__} noise model"
        raise ValueError(f"noise_sigma is needed: the operator has {has}, not a GaussianNoise to read σ from; pass "
                         "noise_sigma=σ of the measurement's Gaussian noise ([0, 1] scale)")
    levels = _gaussian_levels(model)
    if levels.numel() == 0 or not bool((levels == levels[0]).all()):
        raise ValueError(f"noise_sigma is needed: the operator's GaussianNoise holds {levels.numel()} different levels "
                         "(one per sample), but the data term takes one for the batch; pass noise_sigma=σ, or solve "
                         "each sample with its own")
    return float(levels[0])


def noise_model_mismatch(op, noise_sigma: float) -> str | None:
    """What the data term leaves out of ``op``'s own deepinv noise model, if anything: f is the negative
    log-likelihood of Gaussian noise of level ``noise_sigma``, so a non-Gaussian model, or a Gaussian one of
    another level (more than 1 % away), is not the noise f describes. None when they agree or ``op`` has none."""
    model = getattr(op, "noise_model", None)
    if model is None or isinstance(model, dinv.physics.ZeroNoise):
        return None
    name = type(model).__name__
    if not isinstance(model, dinv.physics.GaussianNoise):
        return (f"the operator's noise model is {name}, but the data term ½‖Ax − y‖²/σ² is that of Gaussian noise "
                f"of σ = noise_sigma = {noise_sigma:.4g}; the estimate is for that model")
    level = float(_gaussian_levels(model).max())
    if level > 0 and abs(level - noise_sigma) > 0.01 * noise_sigma:
        return (f"the operator's GaussianNoise has σ = {level:.4g} but noise_sigma = {noise_sigma:.4g}: the data term "
                "uses noise_sigma")
    return None


class L2Fidelity:
    """f(x) = ½‖Ax − y‖²/s², with ∇f(x) = Aᵀ(Ax − y)/s², which is L = ‖A‖²/s²-Lipschitz.

    ``prox(x, tau) = argmin_u ½‖u − x‖² + τ f(u)`` solves (I + γAᵀA)u = x + γAᵀy with
    γ = τ/s²: in closed form for operators diagonalised by an orthogonal transform
    (deepinv's own ``DecomposablePhysics``, e.g. circular blur: :func:`~.norms.has_closed_form_prox`), otherwise by conjugate
    gradients stopped at relative residual ``cg_tol`` (at most ``cg_max_iter`` steps; a PnP run lowers it along
    :class:`~pnp_stable._accuracy.SummableSchedule` after 100 evaluations). Each CG solve's true residual
    ‖rhs − (I + γAᵀA)u‖ bounds its error ‖u − u*‖ (I + γAᵀA ≽ I); :attr:`prox_accuracy` keeps the worst one and the
    first call above its tolerance, so a certificate that assumes an exact prox can be withheld when it was not.
    ``operator_norm``: a known upper bound on ‖A‖, used instead of :func:`operator_norm` (then 'given').
    """

    def __init__(
        self,
        op: dinv.physics.LinearPhysics,
        y: Tensor,
        noise_sigma: float,
        cg_tol: float = 1e-6,
        cg_max_iter: int = 1000,
        norm_seed: int = 0,
        operator_norm: float | None = None,
    ):
        _check_linear(op)
        self.op = op
        self.prox_accuracy = ProxAccuracy(float(cg_tol))
        self.y = _check_measurement(y)
        self.noise_sigma = check_noise_level(noise_sigma, positive=True)
        self.cg_tol = float(cg_tol)
        self.cg_max_iter = int(cg_max_iter)
        self._norm_seed = norm_seed
        self._Aty = _adjoint_image(op, y)
        with torch.no_grad():
            one = op.A(self._Aty[:1]).shape[0]
        if one != 1:  # its samples stop at different iterations, and the certificate's checks probe single images
            raise ValueError(f"the operator maps one image to a batch of {one}: it carries a parameter per sample (e.g. "
                             "one mask or kernel per image); build one operator per image and solve each separately")
        if operator_norm is not None:
            self.operator_norm = self._checked_bound(operator_norm)

    def _checked_bound(self, operator_norm) -> OperatorNorm:
        """The caller's upper bound on ‖A‖, refused when below a power-iteration lower bound (‖Av‖/‖v‖ ≤ ‖A‖ for
        every v): a bound under the norm would let FB take τ ≥ 2/L and still call β certified."""
        value = float(operator_norm)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"operator_norm must be a finite bound > 0 on ‖A‖, got {operator_norm}")
        start = torch.randn(self.x_shape[1:], generator=torch.Generator().manual_seed(self._norm_seed))[None]
        with torch.no_grad():
            rho, _, _ = power_iteration(normal_operator(self.op), start.to(self._Aty), tol=1e-3, max_iter=50)
        lower = math.sqrt(max(rho, 0.0))
        if value < lower * (1 - 1e-5):
            raise ValueError(f"operator_norm = {value:g} is below ‖A‖ ≥ {lower:.6g} (a power-iteration lower bound on "
                             "this problem's images); it must be an upper bound on ‖A‖, or FB's step loses its "
                             "guarantee: omit it (pnp_stable.operator_norm computes one) or pass a true bound")
        return OperatorNorm(value, kind="given", method=f"upper bound on ‖A‖ given by the caller, trusted (checked only "
                                                        f"to lie above the power-iteration lower bound {lower:.6g})")

    def subset(self, index: Tensor) -> "L2Fidelity":
        """The same term restricted to the samples ``index`` of the batch (operator, ‖A‖ once computed, and the
        prox accuracy record shared)."""
        sub = object.__new__(L2Fidelity)
        sub.__dict__.update(self.__dict__)
        sub.y = self.y[index]
        sub._Aty = self._Aty[index]
        return sub

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of the unknown image (that of Aᵀy)."""
        return tuple(self._Aty.shape)

    @property
    def prox_is_exact(self) -> bool:
        """True when :meth:`prox` is computed in closed form."""
        return has_closed_form_prox(self.op)

    def value(self, x: Tensor) -> Tensor:
        """f(x) per sample, shape ``[B]``."""
        r = self.op.A(x) - self.y
        return 0.5 * r.pow(2).flatten(1).sum(1) / self.noise_sigma**2

    def grad(self, x: Tensor) -> Tensor:
        """∇f(x) = Aᵀ(Ax − y)/s²."""
        return (self.op.A_adjoint(self.op.A(x)) - self._Aty) / self.noise_sigma**2

    @cached_property
    def adjoint_error(self) -> float:
        """Relative adjoint error of the operator on this problem's images (:func:`adjoint_test`, 4 samples)."""
        return adjoint_test(self.op, self.x_shape[1:], seed=self._norm_seed, num_samples=4, like=self._Aty)

    @cached_property
    def operator_norm(self) -> OperatorNorm:
        """‖A‖ on images of this problem's size (see :func:`operator_norm`)."""
        return operator_norm(self.op, self.x_shape[1:], seed=self._norm_seed, like=self._Aty)

    @property
    def lipschitz(self) -> float:
        """Lipschitz constant L = ‖A‖²/s² of ∇f."""
        return self.operator_norm.value**2 / self.noise_sigma**2

    def cg_target(self, dtype: torch.dtype) -> float:
        """CG's relative residual target for the next call: ``cg_tol`` times the run's summable-schedule factor
        (:attr:`ProxAccuracy.scale`), but not below 2 ulps of ``dtype``: float32's rounding keeps the true residual
        near 3e-7 there, and CG asked for less runs ``cg_max_iter`` steps in vain (and may break down into NaN); a
        call above the schedule is recorded as a schedule miss."""
        return max(self.cg_tol * self.prox_accuracy.scale, 2 * torch.finfo(dtype).eps)

    def prox(self, x: Tensor, tau: float | Tensor) -> Tensor:
        """argmin_u ½‖u − x‖² + τ f(u), per sample; ``tau`` a float or one step per sample (a [B] tensor)."""
        if isinstance(tau, Tensor):
            if tau.shape != (x.shape[0],):
                raise ValueError(f"prox steps tau must be one per sample, shape [{x.shape[0]}], got {tuple(tau.shape)}")
            if not bool((tau > 0).all()):
                raise ValueError(f"prox steps tau must be > 0, got {tau.tolist()}")
            if bool((tau == tau[0]).all()):
                tau = float(tau[0])
        elif not tau > 0:
            raise ValueError(f"prox step tau must be > 0, got {tau}")
        if self.prox_is_exact:
            if not isinstance(tau, Tensor):
                return self.op.prox_l2(x, self.y, tau / self.noise_sigma**2)
            out = torch.empty_like(x)  # a closed form takes one γ: one call per distinct step
            for value in tau.unique().tolist():
                where = (tau == value).nonzero().flatten().to(x.device)
                out[where] = self.op.prox_l2(x[where], self.y[where], value / self.noise_sigma**2)
            return out
        gamma = tau / self.noise_sigma**2
        if isinstance(gamma, Tensor):  # one γ per sample, broadcast over its image
            gamma = gamma.to(device=x.device, dtype=x.dtype).view(-1, *[1] * (x.ndim - 1))
        rhs = x + gamma * self._Aty
        gram = normal_operator(self.op)
        normal = lambda u: u + gamma * gram(u)
        u = conjugate_gradient(
            normal,
            rhs,
            max_iter=self.cg_max_iter,
            tol=self.cg_target(x.dtype),
            eps=torch.finfo(x.dtype).tiny,  # keeps 0/0 = NaN away when x is already the solution
            init=x,
        )
        residual = torch.linalg.vector_norm((rhs - normal(u)).flatten(1), dim=1, dtype=torch.float64)
        scale = torch.linalg.vector_norm(rhs.flatten(1), dim=1, dtype=torch.float64).clamp_min(1e-30)
        self.prox_accuracy.record(float((residual / scale).max()), residual.cpu())
        return u


#: appended to a shape error when y is not an image [B, C, H, W]
_RANK_HINT = ("; an image measurement must have rank 4 [B, C, H, W] (e.g. y[None, None] for one gray image), "
              "any other measurement (compressed sensing's [B, m], k-space) a leading batch axis [B, ...]")


def _check_measurement(y: Tensor) -> Tensor:
    """Require a finite floating-point tensor with a batch axis, ``[B, ...]``: an image ``[B, C, H, W]`` or
    whatever the operator produces from images (compressed sensing's ``[B, m]``, an MRI's k-space)."""
    if not isinstance(y, Tensor):
        raise ValueError(f"measurement y must be a torch.Tensor [B, ...], got {type(y).__name__}; "
                         "convert numpy arrays with torch.from_numpy (images with pnp_stable.io.to_tensor)")
    if y.ndim < 2:
        raise ValueError(f"measurement y of shape {tuple(y.shape)} has no batch axis; give it as [B, ...], "
                         "e.g. y[None] for one measurement" + _RANK_HINT)
    if y.numel() == 0:
        raise ValueError(f"measurement y is empty (shape {tuple(y.shape)}); pass at least one measurement")
    if y.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"measurement y must be float32 or float64, got dtype {y.dtype} (the solvers' rounding "
                         "slack and error bounds assume at least float32): pass y.float()")
    if not torch.isfinite(y).all():
        raise ValueError("measurement y contains NaN or Inf values; clean the input first")
    return y


def _tensors_of(op) -> list[Tensor]:
    """The parameters and buffers of an operator that is a torch module (deepinv physics are), else none."""
    return [*op.parameters(), *op.buffers()] if isinstance(op, torch.nn.Module) else []


def _adjoint_image(op, y: Tensor) -> Tensor:
    """Aᵀy, checked to be an image ``[B, C, H, W]`` that A maps back to y's shape (so y fits the operator)."""
    hint = "" if y.ndim == 4 else _RANK_HINT
    try:
        image = op.A_adjoint(y)
    except (RuntimeError, ValueError) as err:
        held = {t.dtype for t in _tensors_of(op) if t.is_floating_point()} - {y.dtype}
        if held:  # a dtype clash reads as a shape error in torch's words: say which
            raise ValueError(f"measurement y is {y.dtype} but the operator holds {', '.join(map(str, sorted(held, key=str)))} "
                             f"tensors ({err}); convert one to the other: pnp_stable.operators.to_dtype(op, {y.dtype}) or "
                             f"y.to({held.pop()})") from err
        raise ValueError(f"measurement y of shape {tuple(y.shape)} does not fit the operator: {err}{hint}") from err
    if not isinstance(image, Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"the operator's adjoint maps measurement y of shape {tuple(y.shape)} to {shape}, not to "
                         f"images [B, C, H, W]; solve needs an operator on images{hint}")
    measured_shape = tuple(op.A(image).shape)
    if measured_shape != tuple(y.shape):
        raise ValueError(
            f"measurement y has shape {tuple(y.shape)} but the operator produces {measured_shape} "
            f"(channel mismatch?); build the operator for the image's (C, H, W){hint}"
        )
    return image


class ProxAccuracy(AccuracyRecord):
    """Worst relative normal-equation residual ‖rhs − (I + γAᵀA)u‖/‖rhs‖ of the CG proxes so far (shared by
    a fidelity and its subsets). The prox's error is at most that residual times ‖rhs‖; it is ``accurate``
    while every call stayed within ``ACCURACY_FACTOR``·cg_tol, and on a run's schedule while within that factor times
    its CG target (float32 rounding keeps the true residual a little above CG's own recursive estimate)."""

    ACCURACY_FACTOR = 10.0

    def __init__(self, cg_tol: float):
        super().__init__(self.ACCURACY_FACTOR * cg_tol)
