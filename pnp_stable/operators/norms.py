"""Operator checks: the adjoint test and the spectral norm ‖A‖ (plain, never squared)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import deepinv as dinv
import torch
from torch import Tensor

from .._modules import device_of

__all__ = ["COMPLEX_BUFFERS", "NORM_KINDS", "OperatorNorm", "adjoint_test", "has_closed_form_prox", "has_known_svd",
           "normal_operator", "operator_norm", "power_iteration"]


def normal_operator(op):
    """v ↦ Aᵀ(Av), from the two maps that :func:`adjoint_test` checks; a physics' own ``A_adjoint_A`` may take a
    shortcut that holds only for its assumed structure (``DecomposablePhysics``: V diag(mask²) Vᵀ, wrong when
    U is not orthogonal), which nothing checks."""
    return lambda v: op.A_adjoint(op.A(v))


#: deepinv classes whose SVD A = U diag(mask) Vᵀ has orthogonal U, V and whose closed-form ``prox_l2`` solves the
#: prox (tests/test_physics.py checks both in float64). Not ``Decolorize``: its ``prox_l2`` is wrong (relative
#: optimality residual 0.6); nor subclasses, which may redefine U or V. A ``SinglePixelCamera`` has an exact norm
#: always, a closed-form prox only with ``fast=True`` (:func:`has_closed_form_prox`).
KNOWN_SVD_CLASSES = (dinv.physics.BlurFFT, dinv.physics.Inpainting, dinv.physics.Denoising, dinv.physics.MRI,
                     dinv.physics.SinglePixelCamera, dinv.physics.Demosaicing)


def has_known_svd(op) -> bool:
    """True when A = U diag(mask) Vᵀ with U and V orthogonal and an exact closed-form prox: one of
    :data:`KNOWN_SVD_CLASSES`, or a bare ``DecomposablePhysics`` whose U and V are deepinv's default identities. A
    ``DecomposablePhysics`` built from the caller's U and V, or a subclass, may have U, V that are not orthogonal
    (then max |mask| is not ‖A‖ and the closed-form prox is wrong), so it is treated as any other operator: its
    norm estimated, its prox by conjugate gradients."""
    kind = type(op)
    if kind in KNOWN_SVD_CLASSES:
        return True
    if kind is not dinv.physics.DecomposablePhysics:
        return False
    codes = [getattr(getattr(op, name, None), "__code__", None) for name in ("_U", "_U_adjoint", "_V", "_V_adjoint")]
    return all(code is not None and code.co_filename == dinv.physics.forward.__file__ for code in codes)


def has_closed_form_prox(op) -> bool:
    """True when deepinv's ``prox_l2`` of ``op`` is the exact prox: :func:`has_known_svd`, except a
    ``SinglePixelCamera(fast=False)``, whose V is thin (n × m columns of an SVD, m < n measurements): its ``prox_l2``
    drops the part of its input outside V's range (relative optimality residual 0.65 measured; a certified HQS ended
    7 dB under the CG prox's answer). Its norm, max |mask|, stays exact."""
    if type(op) is dinv.physics.SinglePixelCamera and not op.fast:
        return False
    return has_known_svd(op)


def _batched_shape(x_shape: Sequence[int]) -> tuple[int, ...]:
    x_shape = tuple(int(s) for s in x_shape)
    if len(x_shape) == 3:
        return (1, *x_shape)
    if len(x_shape) != 4:
        raise ValueError(f"x_shape must be (C, H, W) or (B, C, H, W), got {x_shape}")
    return x_shape


#: deepinv classes that hold Fourier-domain buffers as complex tensors (tests/test_physics.py checks that fresh ones
#: do). ``Module.to(torch.float64)`` casts them to a real dtype, dropping their imaginary parts: a BlurFFT with an
#: asymmetric kernel then applies another operator (10 % relative change measured), a Downsampling another prox.
COMPLEX_BUFFERS = {dinv.physics.BlurFFT: ("angle",), dinv.physics.Downsampling: ("Fh", "Fhc", "Fh2")}


def _check_linear(op) -> None:
    if not isinstance(op, dinv.physics.LinearPhysics):
        raise ValueError(
            f"expected a deepinv.physics.LinearPhysics, got {type(op).__name__}; "
            "wrap plain functions with pnp_stable.custom_operator"
        )
    _check_complex_buffers(op)


def _check_complex_buffers(op) -> None:
    """Refuses an operator whose complex Fourier buffers (:data:`COMPLEX_BUFFERS`) were cast to a real dtype."""
    for module in op.modules():
        for kind, names in COMPLEX_BUFFERS.items():
            if not isinstance(module, kind):
                continue
            cast = [name for name in names if isinstance(getattr(module, name, None), Tensor)
                    and not getattr(module, name).is_complex()]
            if cast:
                raise ValueError(
                    f"this {kind.__name__}'s complex Fourier buffer(s) {', '.join(cast)} hold real values: it was cast "
                    "with .to(a real dtype), which discards their imaginary parts (torch.nn.Module.to), so it no "
                    "longer applies the operator it was built for; rebuild it and convert it with "
                    "pnp_stable.operators.to_dtype(op, torch.float64), which keeps complex buffers complex")


def adjoint_test(op, x_shape: Sequence[int], seed: int = 0, num_samples: int = 8, like: Tensor | None = None) -> float:
    """Relative adjoint error ‖A − Bᵀ‖_F / ‖A‖_F of ``B = op.A_adjoint``, estimated by Monte Carlo, with probes in
    the dtype and on the device of ``like`` (the problem's data: an operator on a GPU or in float64 takes its own).

    Uses E|vᵀMu|² = ‖M‖_F² for standard Gaussian u, v; the inner products are summed in
    float64 so that the result measures the operator, not the summation (≈1e-7 for an
    exact float32 adjoint, O(1) for a wrong one). Each probe's (vᵀMu)² scatters like a χ²₁ variable, so for a
    wrong adjoint two seeds or sample counts can give values several-fold apart (0.6 and 3.9 for a shift taken
    the wrong way): read the order of magnitude.
    """
    _check_linear(op)
    shape = _batched_shape(x_shape)
    rng = torch.Generator().manual_seed(int(seed))
    u = _probe(torch.randn((num_samples, *shape[1:]), generator=rng), like, op)
    Au = op.A(u)
    v = _probe(torch.randn(Au.shape, generator=rng), like, op)
    Btv = op.A_adjoint(v)
    if Btv.shape != u.shape:
        raise ValueError(f"A_adjoint returns shape {tuple(Btv.shape)} but A takes {tuple(u.shape)}")
    vAu = (v.double() * Au.double()).flatten(1).sum(1)
    uBv = (u.double() * Btv.double()).flatten(1).sum(1)
    return float(((vAu - uBv).pow(2).mean() / vAu.pow(2).mean()).sqrt())


#: how a norm value was obtained; the first three are guaranteed ‖A‖ ≤ value
NORM_KINDS = ("exact", "upper bound", "given", "estimate")


@dataclass(frozen=True)
class OperatorNorm:
    """‖A‖ (not squared) and how it is known: ``kind`` 'exact' (closed form), 'upper bound' (a proved
    bound), 'given' (the caller's bound) or 'estimate' (power iteration: a lower bound, not guaranteed)."""

    value: float
    kind: str
    method: str
    iterations: int = 0

    def __post_init__(self):
        if self.kind not in NORM_KINDS:
            raise ValueError(f"kind must be one of {NORM_KINDS}, got {self.kind!r}")
        if not (math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"an operator norm must be finite and > 0, got {self.value}")

    @property
    def exact(self) -> bool:
        return self.kind == "exact"

    @property
    def guaranteed(self) -> bool:
        """True when ‖A‖ ≤ ``value`` is proved (exact, a proved upper bound, or given by the caller)."""
        return self.kind != "estimate"

    def __float__(self) -> float:
        return self.value


def power_iteration(
    gram, x0: torch.Tensor, tol: float = 1e-4, max_iter: int = 1000
) -> tuple[float, torch.Tensor, int]:
    """Largest eigenvalue of the PSD map ``gram`` (e.g. AᵀA) by power iteration from ``x0``.

    Stops once the eigen-residual ‖Gx − ρx‖ ≤ ``tol``·ρ (ρ = xᵀGx, ‖x‖ = 1; the Rayleigh quotient is then
    within ~tol²·ρ of an eigenvalue), not when ρ merely changes little: ρ creeps up slowly while a weak
    component of the top eigenvector grows, and a stop on small changes can land far below it. Returns the
    estimate (a lower bound on the largest eigenvalue), the last unit vector and the iteration count.
    """
    x = x0 / x0.norm()
    value = 0.0
    for it in range(1, max_iter + 1):
        gx = gram(x)
        value = float((x * gx).sum())
        norm = gx.norm()
        if norm == 0:
            return 0.0, x, it
        settled = float((gx - value * x).norm()) <= tol * abs(value)
        x = gx / norm
        if settled:
            return value, x, it
    return value, x, max_iter


#: relative gap between the Collatz–Wielandt upper bound and the Rayleigh lower bound at which it stops
BOUND_RTOL = 1e-3


def _blur_norm_bound(op: dinv.physics.Blur, shape: tuple[int, ...], max_iter: int = 2000) -> OperatorNorm:
    """Guaranteed ‖A‖ ≤ value for a deepinv ``Blur`` with any padding, from |A| (the blur by |k|).

    |AᵀA| ≤ |A|ᵀ|A| entrywise, so ‖A‖² = ρ(AᵀA) ≤ ρ(M) with M = |A|ᵀ|A| ≥ 0 (equality for k ≥ 0, as every
    padding only copies pixels). Collatz–Wielandt: Mw ≤ t·w with w > 0 gives ρ(M) ≤ t, so each power
    iterate w (kept ≥ 1e-6·max w) yields t = max_i (Mw)_i/w_i ≥ ρ(M); the bound tightens as w converges.
    Computed by FFT in float64 on one channel (every channel is blurred alike); stopped when within
    ``BOUND_RTOL`` of the Rayleigh quotient (a lower bound) or after 50 iterations that gained less than
    BOUND_RTOL/10; padded by 1e-9 relative for float64 rounding. With zero padding or 'valid',
    ‖A‖ ≤ ‖k‖₁ (Young's inequality) caps it from the start.
    """
    kernel = op.filter.detach().abs().double().cpu()
    if op.padding == "circular" and (kernel.shape[-2] > shape[-2] or kernel.shape[-1] > shape[-1]):
        # the FFT convolution below would crop the taps that wrap around an image smaller than the kernel; the
        # circulant A has rows of |taps| summing to ‖k‖₁ at most, so ‖A‖ ≤ ‖k‖₁ (Young's inequality on the torus)
        return OperatorNorm(float(kernel.sum()) * (1 + 1e-9), kind="upper bound", iterations=0,
                            method="‖k‖₁ (Young's inequality): the kernel is larger than the circular image")
    conv, adjoint = dinv.physics.functional.conv2d_fft, dinv.physics.functional.conv_transpose2d_fft
    gram = lambda v: adjoint(conv(v, kernel, padding=op.padding), kernel, padding=op.padding)
    w = torch.ones((1, 1, *shape[-2:]), dtype=torch.float64)
    # zero padding and 'valid' restrict the convolution on ℤ², whose norm is ≤ ‖k‖₁ (Young's inequality)
    upper, lower = (float(kernel.sum()) ** 2 if op.padding in ("constant", "valid") else math.inf), 0.0
    uppers = []
    for it in range(1, max_iter + 1):
        mw = gram(w)
        upper = min(upper, float((mw / w).max()))
        lower = max(lower, float((w * mw).sum() / (w * w).sum()))
        uppers.append(upper)
        if upper - lower <= BOUND_RTOL * upper or (it > 50 and uppers[-51] - upper <= 0.1 * BOUND_RTOL * upper):
            break
        w = (mw / mw.max()).clamp_min(1e-6)  # w > 0, and no tiny w_i to magnify the FFT's rounding in (Mw)_i/w_i
    value = math.sqrt(upper * (1 + 1e-9))
    return OperatorNorm(value, kind="upper bound", iterations=it,
                        method=f"Collatz–Wielandt bound on |A|ᵀ|A| after {it} iterations (power estimate "
                               f"{math.sqrt(lower):.6g})")


def _probe(x: Tensor, like: Tensor | None, op) -> Tensor:
    """A probe drawn on the CPU (reproducible for a seed on any machine), moved to ``like``'s dtype and device, or
    without ``like`` to the device of ``op`` (a physics on a GPU keeps its filters there)."""
    return x.to(device_of(op)) if like is None else x.to(device=like.device, dtype=like.dtype)


def operator_norm(op, x_shape: Sequence[int], seed: int = 0, tol: float = 1e-4, max_iter: int = 1000,
                  starts: int = 3, like: Tensor | None = None) -> OperatorNorm:
    """Spectral norm ‖A‖ of a linear operator acting on images of shape ``x_shape``, and how it is known.

    * deepinv's own ``DecomposablePhysics`` (circular ``BlurFFT``, inpainting, denoising; :func:`has_known_svd`):
      exact, max |singular value|.
    * deepinv ``Blur`` with one 2-D kernel and any padding (our reflect, replicate, zeros and valid blurs): a
      guaranteed upper bound (:func:`_blur_norm_bound`); for a nonnegative kernel usually within 0.1% of ‖A‖,
      a little more where the bound stalls first (≤ 2% in the tests).
    * Anything else: an *estimate* — the largest of ``starts`` power iterations on AᵀA (from the constant
      image, then random images seeded by ``seed``), each run until its eigen-residual settles
      (:func:`power_iteration`). Not guaranteed: a certificate built on it is called estimated. The starts take
      ``like``'s dtype and device, as in :func:`adjoint_test`.
    """
    _check_linear(op)
    shape = _batched_shape(x_shape)
    op_size = getattr(op, "img_size", None)
    if op_size is not None and tuple(op_size) != shape[1:]:
        raise ValueError(f"operator is built for images {tuple(op_size)}, but x_shape is {shape[1:]}")
    if has_known_svd(op):
        value = float(torch.as_tensor(op.mask).abs().max())
        return OperatorNorm(value, kind="exact", method="max singular value of the SVD (DecomposablePhysics.mask)")
    filter_ = getattr(op, "filter", None)
    if type(op) is dinv.physics.Blur and filter_ is not None and filter_.dim() == 4 and filter_.shape[:2] == (1, 1):
        return _blur_norm_bound(op, shape)
    rng = torch.Generator().manual_seed(int(seed))
    candidates = [torch.ones((1, *shape[1:]))] + [torch.randn((1, *shape[1:]), generator=rng) for _ in range(starts - 1)]
    candidates = [_probe(x0, like, op) for x0 in candidates]
    runs = [power_iteration(normal_operator(op), x0, tol=tol, max_iter=max_iter) for x0 in candidates]
    value = max(run[0] for run in runs)
    return OperatorNorm(
        value**0.5, kind="estimate", iterations=sum(run[2] for run in runs),
        method=f"power iteration on AᵀA, largest of {len(runs)} starts (seed {seed}, eigen-residual ≤ {tol:g}): "
               "a lower bound, not guaranteed",
    )
