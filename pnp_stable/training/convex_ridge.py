"""Training a :class:`~pnp_stable.denoisers.ConvexRidgeDenoiser` through its exact minimiser (implicit differentiation).

x* = D_σ(y) solves ∇F(x*) = x* − y + g_θ(x*) = 0 with g_θ = ∇((λ/μ)R(μ·)), so dx*/dθ = −(I + ∇g_θ(x*))⁻¹ ∂_θ g_θ(x*),
where ∇g_θ(x) = λμ (WE)ᵀ diag(σ'(μWEx)) WE ⪰ 0. The loss gradient is therefore −⟨v, ∂_θ g_θ(x*)⟩ with
(I + ∇g_θ(x*)) v = ∂loss/∂x*, a symmetric positive definite system solved by conjugate gradients
(:meth:`ConvexRidgeDenoiser.inverse_hessian`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoisers.convex_ridge import ConvexRidgeDenoiser

__all__ = ["backward_through_prox", "implicit_backward"]


def implicit_backward(model: ConvexRidgeDenoiser, noisy: Tensor, clean: Tensor, sigma, cg_iters: int = 30,
                      cg_tol: float = 1e-2) -> tuple[float, int]:
    """Accumulate in the parameters' ``.grad`` the gradient of MSE(D_σ(noisy), clean) ([N, C, H, W] batches; σ a float
    or [N]), exact up to CG's relative residual ``cg_tol``; returns the MSE and the solver's iterations. The MSE is
    taken between the components the prox acts on (channels, or opponent components: Q is orthogonal, same MSE)."""
    sigma = torch.as_tensor(sigma, dtype=noisy.dtype, device=noisy.device).expand(noisy.shape[0])
    strength, scale = model.component_parameters(sigma, noisy.shape[1])
    noisy, clean = model.to_components(noisy), model.to_components(clean)
    x, _, iterations = model.solve(noisy, strength.detach(), scale.detach())
    backward_through_prox(model, x, 2 * (x - clean) / x.numel(), strength, scale, cg_iters, cg_tol)
    return float((x - clean).pow(2).mean()), iterations


def backward_through_prox(model: ConvexRidgeDenoiser, x: Tensor, grad: Tensor, strength: Tensor, scale: Tensor,
                          cg_iters: int = 30, cg_tol: float = 1e-2) -> Tensor:
    """For x = D(y) (the [N, 1, H, W] components) and grad = ∂loss/∂x: accumulate −⟨v, ∂_θ g_θ(x)⟩ in the parameters'
    ``.grad`` and return v = (I + ∇g_θ(x))⁻¹ grad, which is ∂loss/∂y (the Jacobian is symmetric), so that a chain of
    proxes back-propagates stage by stage."""
    v = model.inverse_hessian(x, grad, strength.detach(), scale.detach(), iterations=cg_iters, tolerance=cg_tol)
    (-(v * model.gradient(x, model.operator(x.shape), model.slopes(), strength, scale)).sum()).backward()
    return v
