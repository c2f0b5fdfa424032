"""Screen for issue #22: the exact prox of a convex *group* ridge regulariser, ridges of the norms of filter groups.

    R(x) = Σ_g Σ_p ψ_g(‖(W_g x)_p‖),    W_g = (w_g1, …, w_gk) a group of k filters,  ψ_g' = σ_g ≥ 0 on [0, ∞),

σ_g(r) = Σ_j s_gj min(r, τ_j) as in :class:`pnp_stable.denoisers.ConvexRidgeDenoiser` (k = 1 is that model). ψ_g is
convex and non-decreasing on [0, ∞), so ψ_g(‖·‖) is convex and R is: D(y) = prox_R(y) stays firmly non-expansive for
any weights, solved and certified exactly as the ridge model (F = ½‖x − y‖² + R(x) is 1-strongly convex, ‖x − D(y)‖ ≤
‖∇F(x)‖). With u = W_g x and r = ‖u‖, ∇_u ψ_g(‖u‖) = m_g(r) u, m_g(r) = σ_g(r)/r = Σ_j s_gj min(1, τ_j/r), and
∇²_u = m_g I + (σ_g'(r) − m_g) ûûᵀ, whose eigenvalues σ_g'(r) and m_g(r) are both ≤ S_g = Σ_j s_gj: the smoothness
bound Σ_c S_{g(c)} W_cᵀW_c of the ridge model holds unchanged. A pair of filters (k = 2) can respond to an edge
whatever its phase (a quadrature pair's energy), which no sum of single ridges does.

``--init`` starts from a ``convex_ridge_prox.py`` state: each of its filters w_c becomes group c with partners of
norm ``--partner-norm``·‖w_c‖ in random directions and w_c's slopes, so the model starts near the state's map.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from deepinv.optim.linear import conjugate_gradient
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from convex_ridge_prox import add_arguments, run_screen, screen_denoiser  # noqa: E402
from pnp_stable.denoisers import ConvexRidgeDenoiser  # noqa: E402
from pnp_stable.denoisers.convex_ridge import HUBER_KNOTS, RidgeFilters, _Fused, _huber_sum_derivative  # noqa: E402
from pnp_stable.training.checkpoint import load_checkpoint, model_tensors  # noqa: E402
from pnp_stable.training.convex_ridge import implicit_backward  # noqa: E402


def _ratio(r: Tensor, slopes: Tensor) -> Tensor:
    """m(r) = σ(r)/r = Σ_j s_j min(1, τ_j/r) = Σ_j s_j τ_j/max(r, τ_j) for group slopes s [G, knots] (= Σ_j s_j at
    r = 0; finite derivatives everywhere, the last knot τ = ∞ contributing s_j)."""
    shape = (1, -1) + (1,) * (r.dim() - 2)
    return sum(slopes[:, j].view(shape) * (1 if math.isinf(tau) else tau / torch.maximum(r, r.new_tensor(tau)))
               for j, tau in enumerate(HUBER_KNOTS))


def _group_response(t: Tensor, slopes: Tensor, scale: Tensor, window: Tensor, group: int) -> Tensor:
    """window·∇ψ_g(u) = window·m(‖u‖)u at u = μt, for filter responses t [N, c, …] in consecutive groups of ``group``
    and per-filter slopes [c, knots]."""
    u = (scale * t).unflatten(1, (-1, group))
    return window * (u * _ratio(u.norm(dim=2, keepdim=True), slopes[::group])).flatten(1, 2)


_response = _Fused(_group_response)


class GroupRidgeDenoiser(ConvexRidgeDenoiser):
    """The prox of the group ridge regulariser (module docstring); ``group`` consecutive filters share one ψ_g."""

    def __init__(self, group: int = 2, **kwargs):
        super().__init__(**kwargs)
        filters = self.weight.shape[0]
        if group < 1 or filters % group:
            raise ValueError(f"group must divide the {filters} filters, got {group}")
        self.group = group
        self.config["group"] = group
        self.theta = nn.Parameter(torch.full((filters // group, len(HUBER_KNOTS)), -3.0))

    def slopes(self) -> Tensor:
        """s_gj ≥ 0, repeated for each filter of the group ([filters, knots], as the ridge model's smoothness bound
        reads them)."""
        return F.softplus(self.theta).repeat_interleave(self.group, 0)

    def gradient(self, x: Tensor, operator: RidgeFilters, slopes: Tensor, strength: Tensor, scale: Tensor) -> Tensor:
        """∇ of (λ/μ)R(μx) = λ Wᵀ [m(‖μW_g x‖) μW_g x]_g."""
        return strength * operator.normal(x, lambda t, window: _response(t, slopes, scale, window, self.group))

    @torch.no_grad()
    def inverse_hessian(self, x: Tensor, rhs: Tensor, strength: Tensor, scale: Tensor, iterations: int = 100,
                        tolerance: float = 1e-6) -> Tensor:
        """(I + λμ Wᵀ H W)⁻¹ rhs by conjugate gradients, H per group and pixel m I + (σ' − m) ûûᵀ at u = μWx."""
        operator = self.frozen_operator(x.shape, x.dtype)
        u = (scale * operator(x)).unflatten(1, (-1, self.group))
        r, group_slopes = u.norm(dim=2, keepdim=True), self.slopes().to(x.dtype)[:: self.group]
        direction = u / r.clamp(min=torch.finfo(x.dtype).tiny)
        ratio = _ratio(r, group_slopes)
        derivative = _huber_sum_derivative(r.squeeze(2), group_slopes).unsqueeze(2)  # σ_g'(r)
        weight = (strength * scale).view(-1, 1, 1, 1, 1)

        def hessian(v: Tensor) -> Tensor:
            w = operator(v).unflatten(1, (-1, self.group))
            w = ratio * w + (derivative - ratio) * direction * (direction * w).sum(2, keepdim=True)
            return v + operator.adjoint((weight * w).flatten(1, 2))

        return conjugate_gradient(hessian, rhs, max_iter=iterations, tol=tolerance, eps=torch.finfo(rhs.dtype).tiny,
                                  parallel_dim=None)


def init_groups(model: GroupRidgeDenoiser, path: str, partner_norm: float) -> dict:
    """Group c = (w_c, partners of norm ``partner_norm``·‖w_c‖) with w_c's slopes, from a ridge state at ``path``."""
    tensors, meta = load_checkpoint(path)
    weight, theta = (model_tensors(tensors)[name] for name in ("weight", "theta"))
    if weight.shape[0] * model.group != model.weight.shape[0] or weight.shape[1:] != model.weight.shape[1:]:
        raise ValueError(f"{path} holds {tuple(weight.shape)} filters: --channels must be {weight.shape[0]} × "
                         f"--group and --kernel {weight.shape[-1]}")
    centred = weight - weight.mean(dim=(2, 3), keepdim=True)
    with torch.no_grad():
        partners = model.filters().unflatten(0, (-1, model.group))[:, 1:]
        partners *= partner_norm * centred.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1) / partners.flatten(2).norm(
            dim=2).view(*partners.shape[:2], 1, 1, 1)
        model.weight.copy_(torch.cat([centred[:, None], partners], 1).flatten(0, 1))
        model.theta.copy_(theta)
    return meta


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, state="convex-ridge-groups.ckpt", val_images=40, minutes=40, validate_minutes=20, lr=1e-3)
    parser.add_argument("--channels", type=int, default=128, help="filters in all")
    parser.add_argument("--group", type=int, default=2, help="filters per group")
    parser.add_argument("--kernel", type=int, default=13)
    parser.add_argument("--partner-norm", type=float, default=0.1, help="see --init")
    parser.add_argument("--init", help="a convex_ridge_prox.py state with --channels / --group filters (module docstring)")
    args = parser.parse_args(argv)
    model = screen_denoiser(args, GroupRidgeDenoiser, group=args.group, filters=args.channels, kernel=args.kernel)
    run_screen(args, model, implicit_backward, lambda model, path: init_groups(model, path, args.partner_norm))


if __name__ == "__main__":
    main()
