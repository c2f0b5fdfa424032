import math

import pytest
import torch

from pnp_stable.denoisers import CertifiedConv, NonexpansiveBlock, circular_conv_norm, conv_norm_upper_bound, get_activation
from pnp_stable.operators import power_iteration


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(16, 16), (15, 18)])
def test_conv_adjoint_is_exact(stride, size):
    conv = CertifiedConv(3, 5, kernel_size=3, stride=stride, normalise=False)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    w = conv.weight.double()
    y = torch.randn_like(conv._conv(x, w))
    lhs = (conv._conv(x, w) * y).sum()
    rhs = (x * conv._conv_T(y, w, size)).sum()
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


@pytest.mark.parametrize("shape", [(8, 8, 3), (4, 6, 3), (6, 3, 5)])
def test_upper_bound_dominates_power_estimates(shape):
    co, ci, k = shape
    torch.manual_seed(sum(shape))
    weight = torch.randn(co, ci, k, k) / (ci * k * k) ** 0.5
    bound = conv_norm_upper_bound(weight)
    pad = k // 2
    for size in (8, 21, 48):
        # zero-padded convolution on several image sizes
        gram = lambda u: torch.nn.functional.conv_transpose2d(  # noqa: E731
            torch.nn.functional.conv2d(u, weight.double(), padding=pad), weight.double(), padding=pad
        )
        sq, _, _ = power_iteration(gram, torch.randn(1, ci, size, size, dtype=torch.float64), tol=1e-10, max_iter=3000)
        assert bound >= sq**0.5
        assert bound >= circular_conv_norm(weight, (size, size))
    assert bound <= 1.011 * circular_conv_norm(weight, (256, 256))  # tight: rel_tol 1e-2


def test_upper_bound_holds_when_the_supremum_lies_between_grid_points():
    # symbol 2cos(ω_x) + cos(ω_y): supremum 3 at ω = 0, which no point of the (even, offset) grid hits
    weight = torch.tensor([[0.0, 0.5, 0.0], [1.0, 0.0, 1.0], [0.0, 0.5, 0.0]])[None, None]
    for rel_tol in (1e-2, 1e-4):
        bound = conv_norm_upper_bound(weight, rel_tol=rel_tol)
        assert 3 <= bound <= 3 * (1 + rel_tol)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_upper_bound_within_tolerance_of_a_dense_sampling(k):
    # 5×5 and 7×7 kernels need refinement levels below the first grid
    torch.manual_seed(k)
    weight = torch.randn(4, 3, k, k)
    dense = circular_conv_norm(weight, (720, 720))  # σ_max on a 720×720 grid: a lower bound of the supremum
    supremum_at_most = dense / math.cos(math.pi * (k - 1) / 2 / 720) ** 2  # the grid form of the same inequality
    for rel_tol in (1e-2, 1e-4):
        assert dense <= conv_norm_upper_bound(weight, rel_tol=rel_tol) <= (1 + rel_tol) * supremum_at_most


def test_upper_bound_refuses_a_grid_that_cannot_cover_the_torus():
    with pytest.raises(ValueError, match="grid"):
        conv_norm_upper_bound(torch.randn(2, 2, 3, 3), grid=33)
    with pytest.raises(ValueError, match="grid"):
        conv_norm_upper_bound(torch.randn(2, 2, 9, 9), grid=8)


def test_circular_norm_matches_power_iteration_within_one_percent():
    torch.manual_seed(1)
    weight = torch.randn(6, 6, 3, 3) / 4
    size = 24

    def circ(u, w):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(u, (1, 1, 1, 1), mode="circular"), w)

    def circ_T(v, w):  # adjoint of circular cross-correlation: circular correlation with the flipped, transposed kernel
        return torch.nn.functional.conv2d(
            torch.nn.functional.pad(v, (1, 1, 1, 1), mode="circular"), w.flip(-1, -2).transpose(0, 1)
        )

    w = weight.double()
    sq, _, _ = power_iteration(lambda u: circ_T(circ(u, w), w), torch.randn(1, 6, size, size, dtype=torch.float64),
                               tol=1e-12, max_iter=5000)
    exact = circular_conv_norm(weight, (size, size))
    assert exact >= sq**0.5 * (1 - 1e-9)
    assert sq**0.5 == pytest.approx(exact, rel=1e-2)


def test_layer_bound_in_normalised_mode():
    conv = CertifiedConv(4, 4)
    est = float(conv.power_estimate().detach())
    assert conv.norm_upper_bound() >= 1.0 - 1e-6  # A = W/s with s a lower estimate of ‖W‖
    assert conv.weight_norm_bound() >= est


def test_the_normalised_bound_covers_the_rounding_of_w_over_s():
    """The forward's A is fl(W/s) in float32, not W/s: the bound must hold for the rounded weights the map uses."""
    torch.manual_seed(0)
    for _ in range(5):
        conv = CertifiedConv(6, 6)
        with torch.no_grad():
            conv.weight.mul_(torch.exp(torch.randn_like(conv.weight)))  # uneven magnitudes, so rounding is uneven
        s = float(conv.power_estimate().detach())
        rounded = conv.effective_weight().detach().double()  # fl(W/s), held exactly in float64
        error = rounded - conv.weight.detach().double() / s
        margin = conv.norm_upper_bound() - conv.weight_norm_bound() / s
        assert error.abs().max() > 0  # the rounding is there
        assert circular_conv_norm(error, (64, 64)) <= margin  # ‖fl(W/s) − W/s‖ ≤ what the bound adds
        assert margin <= 1e-5 * conv.norm_upper_bound()  # and the bound adds no more than rounding needs


def test_scaling_the_weight_raises_substeps_and_keeps_the_certificate():
    torch.manual_seed(0)
    block = NonexpansiveBlock(4, normalise=False, learn_time=False, time=1.0, budget=0.9).eval()
    n_before = block.substeps()
    alpha_before = block.averagedness()
    with torch.no_grad():
        block.conv.weight.mul_(10)
    n_after, q = block.step_averagedness()
    assert n_after > n_before
    assert n_after >= 50 * n_before  # ‖A‖² grew a hundredfold
    assert q <= 0.9 + 1e-12
    alpha_after = block.averagedness()
    assert alpha_after is not None and alpha_before is not None
    # and the block really is non-expansive after scaling
    x, y = torch.randn(2, 4, 4, 12, 12).unbind(0)
    with torch.no_grad():
        assert (block(x) - block(y)).norm() <= (x - y).norm() * (1 + 1e-5)


def test_training_forward_adapts_substeps_from_the_power_estimate():
    torch.manual_seed(0)
    block = NonexpansiveBlock(4, normalise=False, learn_time=False, time=1.0, budget=0.5).train()
    x = torch.randn(2, 4, 16, 16)
    block(x)
    n = block.substeps()
    with torch.no_grad():
        block.conv.weight.mul_(5)
    for _ in range(5):  # the warm-started power vector follows the new weight
        block(x)
    assert block.substeps() > n


@pytest.mark.parametrize("learn_time", [True, False])
def test_block_forward_is_the_euler_step_of_the_gradient_flow(learn_time):
    """The fused forward (bias inside the convolution, −Aᵀ folded into the kernel, x + h·v in one pass, channels-last
    input) is x ↦ x − h·Aᵀσ(Ax + b) written out with conv_transpose2d, per sub-step; also under bf16 autocast."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    block = NonexpansiveBlock(6, time=5.0, learn_time=learn_time).eval()  # T > 2·budget: several sub-steps
    with torch.no_grad():
        block.conv.bias.normal_()
    x = torch.randn(2, 6, 11, 9)
    with torch.no_grad():
        weight, n = block.conv.effective_weight(), block.substeps()
        h, expected = float(block.time_span()) / n, x
        for _ in range(n):
            hidden = F.leaky_relu(F.conv2d(expected, weight, padding=1) + block.conv.bias[:, None, None], 0.01)
            expected = expected - h * F.conv_transpose2d(hidden, weight, padding=1)
        assert n > 1
        assert torch.allclose(block(x), expected, atol=1e-5)
        assert torch.allclose(block(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(x)
        assert (low.float() - expected).norm() < 0.05 * expected.norm()


def test_monotone_spline_has_difference_quotients_in_unit_interval_and_keeps_dtype_and_layout():
    """σ_i is continuous piecewise linear with slopes in (0, 1) at 0 and g_i: every difference quotient in [0, 1]
    (the blocks' condition on σ), equal to the interpolation of its knots, one function per channel."""
    import numpy as np

    from pnp_stable.denoisers.layers import MonotoneSpline

    torch.manual_seed(0)
    spline = MonotoneSpline(4)
    with torch.no_grad():
        spline.slope_logits.copy_(10 * torch.randn(3, 4))
        spline.log_gap.copy_(torch.randn(4))
    t = 3 * torch.randn(2, 4, 9, 9, dtype=torch.float64)
    s = 3 * torch.randn(2, 4, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        spline.double()
        quotient = (spline(t) - spline(s)) / (t - s)
        assert quotient.min() >= 0 and quotient.max() <= 1
        slopes, gaps = spline.slopes(), torch.exp(spline.log_gap)
        for i in range(4):  # the same function as the interpolation through its knots −10, 0, g, g + 10
            knots = np.array([-10.0, 0.0, float(gaps[i]), float(gaps[i]) + 10])
            values = np.cumsum([0.0, 10 * float(slopes[0, i]), float(gaps[i] * slopes[1, i]), 10 * float(slopes[2, i])])
            expected = np.interp(t[:, i].numpy(), knots, values - values[1])
            np.testing.assert_allclose(spline(t)[:, i].numpy(), expected, atol=1e-9)
        spline.float()
        layout = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(spline(layout), spline(layout.contiguous()))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert spline(layout.bfloat16()).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="instantiate"):
        get_activation("spline")(t)


def test_only_integrators_with_a_proof_give_a_guaranteed_certificate():
    """Euler (a gradient step) and Heun (½x + ½E_h(E_h(x))) are proved non-expansive on convex gradient flows;
    classical RK4 has circle-contractivity radius 0 (a₃₁ = 0, a₃₂a₂₁ > 0), so its network is only estimated."""
    import pnp_stable as ps

    for integrator, guaranteed in (("euler", True), ("heun", True), ("rk4", False)):
        model = ps.AveragedDenoiser(channels=1, width=4, depth=2, integrator=integrator).eval()
        certificate = model.certificate
        assert certificate.guaranteed is guaranteed and certificate.lipschitz == 1.0, integrator
        assert ("estimated" in certificate.method) is not guaranteed
        assert model.relaxed(0.5).certificate.guaranteed is guaranteed



def test_a_float64_sll_block_computes_in_float64():
    """The fp32 division under autocast must not round a float64 module's hidden layer (it broke (A) checks in fp64):
    the block equals x − 2θAᵀT⁻¹σ(Ax + b) evaluated in float64 to float64 precision."""
    import torch.nn.functional as F

    from pnp_stable.denoisers.blocks import SLLBlock

    torch.manual_seed(0)
    block = SLLBlock(3).double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        hidden = block.activation(F.conv2d(x, block.weight, block.bias, padding=block.padding))
        formula = x - 2 * block.theta() * F.conv_transpose2d(hidden / block.scaling()[None, :, None, None],
                                                            block.weight, padding=block.padding)
        out = block(x)
    assert out.dtype == torch.float64 and (out - formula).abs().max() < 1e-13
