"""Spectral norms of 2-D convolutions: exact (circular), guaranteed upper bound (any size), power estimate.

A convolution with kernel W = (W_p) has symbol Ŵ(ω) = Σ_p W_p e^{−iω·p} (a c_out × c_in
matrix for each frequency ω ∈ [−π, π)²). A circular convolution on an n×n grid has norm
max over the n×n grid of σ_max(Ŵ(ω)) (Sedghi et al. 2019). A zero-padded convolution
on any H×W image is a compression of a circular one on a larger grid, and a strided one
is a subsampling of it, so both are bounded by sup_ω σ_max(Ŵ(ω)) over the whole torus.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["symbol", "circular_conv_norm", "conv_norm_upper_bound"]


def _offsets(weight: Tensor) -> Tensor:
    """Tap positions p − c relative to the kernel centre c, shape [kh·kw, 2]."""
    kh, kw = weight.shape[-2:]
    py, px = torch.meshgrid(torch.arange(kh) - (kh - 1) / 2, torch.arange(kw) - (kw - 1) / 2, indexing="ij")
    return torch.stack([py.flatten(), px.flatten()], dim=1).to(torch.float64)


def symbol(weight: Tensor, freqs: Tensor) -> Tensor:
    """Ŵ(ω) (up to a unimodular phase) at frequencies ``freqs`` [Q, 2] → complex [Q, c_out, c_in].

    Cross-correlation (torch's conv2d) has symbol Σ_p W_p e^{+iω·p}; its singular values equal those of
    e^{−iω·p}, so the sign convention does not matter for norms.
    """
    w = weight.detach().to("cpu", torch.float64).flatten(2)  # [co, ci, P]; on the CPU, as the bounds are
    phase = torch.exp(-1j * (freqs.to(torch.float64) @ _offsets(weight).T))  # [Q, P]
    return torch.einsum("qp,oip->qoi", phase, w.to(torch.complex128))


def _sigma_max(matrices: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(matrices, ord=2)


def circular_conv_norm(weight: Tensor, size: tuple[int, int]) -> float:
    """Exact ‖·‖ of the circular convolution with ``weight`` on an H×W grid (per-frequency SVD, float64). Not a bound
    on the zero-padded convolution of the same grid (a 3×3 Laplacian on 3×3: 6.0 here, 6.83 zero-padded); that needs
    a grid of at least H + k − 1 or the supremum over every frequency, :func:`conv_norm_upper_bound`."""
    h, w = size
    if weight.shape[-2] > h or weight.shape[-1] > w:
        raise ValueError(f"kernel {tuple(weight.shape[-2:])} is larger than the grid {size}")
    spectrum = torch.fft.rfft2(weight.detach().to("cpu", torch.float64), s=(h, w))  # [co, ci, h, w//2+1]
    return float(_sigma_max(spectrum.permute(2, 3, 0, 1)).max())


def conv_norm_upper_bound(
    weight: Tensor, rel_tol: float = 1e-2, grid: int = 64, max_levels: int = 10, max_cells: int = 60_000
) -> float:
    """Guaranteed upper bound of sup_ω σ_max(Ŵ(ω)), hence of ‖conv‖ for any image size, zero padding or stride.

    Let M = σ_max(Ŵ(ω*)) be the supremum, with top singular vectors u, v. Along the segment from ω* to any
    point ω*+e, t ↦ Re(e^{−iφ} uᴴŴ(ω*+te)v) is a real function of exponential type n = d_y|e_y| + d_x|e_x|
    (d_y = (k_h − 1)/2, d_x = (k_w − 1)/2 after centring the kernel), bounded by M and equal to M at t = 0.
    Szegő's inequality f'² + n²f² ≤ n²M² (Duffin–Schaeffer) then gives f(1) ≥ M cos n, so every ω in a
    square cell of half-width h around ω* has σ_max(Ŵ(ω)) ≥ M cos((d_y + d_x)h) while (d_y + d_x)h ≤ π/2.
    Hence σ_max(Ŵ(ω_c)) / cos((d_y + d_x)h) bounds M whenever the cell around ω_c holds ω*, and the
    largest such value over a partition of the torus bounds M. A real kernel has Ŵ(−ω) = conj Ŵ(ω), so
    only the cells with ω_y > 0 are searched (the grid and every refinement are symmetric about 0).
    Branch and bound: cells whose bound cannot exceed the best value found by more than ``rel_tol``
    (relative) are settled, the others split 3×3. The result never falls below the true supremum (float64
    SVD round-off ≈ 1e-13 aside) and is within ``rel_tol`` of it when the refinement finishes within
    ``max_levels`` levels of at most ``max_cells`` cells (otherwise the looser bound reached is returned).
    """
    w64 = weight.detach().to("cpu", torch.float64)  # on the CPU whatever the weight's device: the same bound
    degree = (weight.shape[-2] - 1) / 2 + (weight.shape[-1] - 1) / 2
    if degree == 0:  # a 1×1 kernel has one symbol at every frequency: its σ_max is the supremum
        return float(_sigma_max(w64[:, :, 0, 0])) * (1 + 1e-12)
    half = math.pi / grid
    if grid % 2 or degree * half >= math.pi / 2:
        raise ValueError(f"grid {grid} must be even and finer than {2 * degree:g} cells per axis for a kernel of "
                         f"size {tuple(weight.shape[-2:])}")
    axis = -math.pi + half + 2 * half * torch.arange(grid, dtype=torch.float64)
    centres = torch.cartesian_prod(axis[axis > 0], axis)  # σ(−ω) = σ(ω) for a real kernel: half the torus suffices
    values = _sigma_max(symbol(w64, centres))
    best = float(values.max())
    settled = best  # the largest bound of the cells set aside so far
    level = 0
    while True:
        cell_bounds = values / math.cos(degree * half)
        keep = cell_bounds > best * (1 + rel_tol)
        if (~keep).any():
            settled = max(settled, float(cell_bounds[~keep].max()))
        if not keep.any():
            return settled * (1 + 1e-12)
        level += 1
        if level > max_levels or int(keep.sum()) * 9 > max_cells:
            return max(settled, float(cell_bounds[keep].max())) * (1 + 1e-12)
        half /= 3
        step = torch.tensor([-2 * half, 0.0, 2 * half], dtype=torch.float64)
        centres = (centres[keep][:, None, :] + torch.cartesian_prod(step, step)[None]).reshape(-1, 2)
        values = _sigma_max(symbol(w64, centres))
        best = max(best, float(values.max()))
