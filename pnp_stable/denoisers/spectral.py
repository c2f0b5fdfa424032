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
    w = weight.detach().to(torch.float64).flatten(2)  # [co, ci, P]
    phase = torch.exp(-1j * (freqs.to(torch.float64) @ _offsets(weight).T))  # [Q, P]
    return torch.einsum("qp,oip->qoi", phase, w.to(torch.complex128))


def _sigma_max(matrices: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(matrices, ord=2)


def circular_conv_norm(weight: Tensor, size: tuple[int, int]) -> float:
    """Exact ‖·‖ of the circular convolution with ``weight`` on an H×W grid (per-frequency SVD, float64)."""
    h, w = size
    if weight.shape[-2] > h or weight.shape[-1] > w:
        raise ValueError(f"kernel {tuple(weight.shape[-2:])} is larger than the grid {size}")
    spectrum = torch.fft.rfft2(weight.detach().to(torch.float64), s=(h, w))  # [co, ci, h, w//2+1]
    return float(_sigma_max(spectrum.permute(2, 3, 0, 1)).max())


def conv_norm_upper_bound(
    weight: Tensor, rel_tol: float = 1e-2, grid: int = 64, max_levels: int = 10, max_cells: int = 60_000
) -> float:
    """Guaranteed upper bound of sup_ω σ_max(Ŵ(ω)), hence of ‖conv‖ for any image size, zero padding or stride.

    For unit u, v the map ω ↦ uᴴŴ(ω)v is a trigonometric polynomial of degree d_y = (k_h − 1)/2 and
    d_x = (k_w − 1)/2 (after centring the kernel), so Bernstein's inequality ‖q'‖ ≤ d‖q‖ along each
    axis gives, inside a cell of half-width w around ω_c,  σ_max(Ŵ(ω)) ≤ σ_max(Ŵ(ω_c)) + w (d_y + d_x) S
    for any global bound S (first S = G / (1 − π(d_y + d_x)/grid) from the grid maximum G).
    A real kernel has Ŵ(−ω) = conj Ŵ(ω), so only the cells with ω_y > 0 are searched (the grid and every
    refinement are symmetric about 0, so no cell straddles ω_y = 0). Branch and bound: cells that cannot exceed the best value found by more than ``rel_tol``
    (relative) are discarded, the others split 3×3, and S is tightened after every level. The
    result never falls below the true supremum (float64 SVD round-off ≈ 1e-13 aside) and is
    within ``rel_tol`` of it when the refinement finishes within ``max_levels`` levels of at most
    ``max_cells`` cells (otherwise the current, looser, bound S is returned).
    """
    w64 = weight.detach().to(torch.float64)
    degree = (weight.shape[-2] - 1) / 2 + (weight.shape[-1] - 1) / 2
    half = math.pi / grid
    axis = -math.pi + half + 2 * half * torch.arange(grid, dtype=torch.float64)
    centres = torch.cartesian_prod(axis[axis > 0], axis)  # σ(−ω) = σ(ω) for a real kernel: half the torus suffices
    values = _sigma_max(symbol(w64, centres))
    best = float(values.max())
    if degree == 0:
        return best * (1 + 1e-12)
    if math.pi * degree / grid >= 1:
        raise ValueError(f"grid {grid} too coarse for a kernel of size {tuple(weight.shape[-2:])}")
    bound_all = best / (1 - math.pi * degree / grid)
    for _ in range(max_levels):
        cell_bounds = values + half * degree * bound_all
        keep = cell_bounds > best * (1 + rel_tol)
        if not keep.any():
            return best * (1 + rel_tol) * (1 + 1e-12)
        bound_all = min(bound_all, max(best * (1 + rel_tol), float(cell_bounds[keep].max())))
        if int(keep.sum()) * 9 > max_cells:
            break
        half /= 3
        step = torch.tensor([-2 * half, 0.0, 2 * half], dtype=torch.float64)
        centres = (centres[keep][:, None, :] + torch.cartesian_prod(step, step)[None]).reshape(-1, 2)
        values = _sigma_max(symbol(w64, centres))
        best = max(best, float(values.max()))
    return bound_all * (1 + 1e-12)
