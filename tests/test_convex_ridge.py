"""The convex-ridge prox: firmly non-expansive at every σ, outputs within their certified error, exact gradients."""

import math

import pytest
import torch

import pnp_stable as ps
from pnp_stable.denoisers import ConvexRidgeDenoiser, adversarial_lipschitz, averagedness_defects, natural_starts
from pnp_stable.training.convex_ridge import implicit_backward

KNOTS = (10 / 255, 25 / 255)


def _model(boundary="reflect", tolerance=1e-9, seed=0, **options):
    model = ConvexRidgeDenoiser(filters=4, kernel=5, sigma_knots=KNOTS, boundary=boundary, tolerance=tolerance,
                                seed=seed, **options).double()
    with torch.no_grad():  # slopes large enough that the prox is far from the identity
        model.theta.add_(torch.linspace(0, 4, model.theta.numel()).view_as(model.theta))
        model.log_strength.copy_(torch.tensor([-0.5, 0.3]))
        model.log_scale.copy_(torch.tensor([0.2, -0.1]))
    return model


def _exact_prox(model, y, sigma):
    """D_σ(y) by plain gradient descent with step 1/(1 + λμL) to float64 precision (independent of the solver)."""
    strength, scale = model.component_parameters(torch.full((y.shape[0],), sigma, dtype=y.dtype), 1)
    operator, slopes = model.operator(y.shape), model.slopes()
    step = 1 / (1 + float((strength * scale).max().detach()) * model.smoothness(y.shape) * 1.5)
    x = y.clone()
    with torch.no_grad():
        for _ in range(5000):
            x = x - step * (x - y + model.gradient(x, operator, slopes, strength, scale))
    return x


@pytest.mark.parametrize("boundary", ["reflect", "circular"])
def test_adjoint_is_exact(boundary):
    model = _model(boundary)
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 1, 9, 11, generator=gen, dtype=torch.float64), torch.randn(2, 4, 9, 11, generator=gen, dtype=torch.float64)
    operator = model.operator(x.shape, model.filters().detach())
    assert abs(float((operator(x) * t).sum() - (x * operator.adjoint(t)).sum())) < 1e-10


@pytest.mark.parametrize("boundary", ["reflect", "circular"])
def test_filters_are_the_valid_convolution_of_the_extended_image(boundary):
    """W E x = w ⊛ Ex, 'valid' (reflect: the FFT grid 24 × 27 is zero-padded past the 21 × 27 extension) or circular."""
    model = _model(boundary)
    x = torch.randn(2, 1, 17, 23, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    operator = model.operator(x.shape, model.filters().detach())
    flipped = model.filters().detach().flip(-2, -1)  # conv2d correlates; ⊛ convolves
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2,) * 4, mode=boundary), flipped)
    assert operator.grid == ((24, 27) if boundary == "reflect" else (17, 23))
    assert torch.allclose(operator(x), expected, atol=1e-12)


def test_the_compiled_activation_and_its_eager_stand_in(monkeypatch):
    from pnp_stable.denoisers import convex_ridge

    fused = convex_ridge._Fused(convex_ridge._huber_sum)
    t, slopes = 0.02 * torch.randn(1, 64, 64, 64), torch.rand(64, len(convex_ridge.HUBER_KNOTS))  # 2^18: compiled
    with torch.no_grad():
        assert torch.allclose(fused(t, slopes), convex_ridge._huber_sum(t, slopes), atol=1e-6)
    assert fused.compiled is not None and not fused.failed  # compiled on this first large call, and it ran

    def broken(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fused, "compiled", broken)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="runs eagerly"):
        assert torch.equal(fused(t, slopes), convex_ridge._huber_sum(t, slopes))
    assert fused.failed


@pytest.mark.parametrize("boundary", ["reflect", "circular"])
def test_output_is_the_prox_within_its_certified_error(boundary):
    model = _model(boundary, tolerance=1e-6)
    y = natural_starts(2, (1, 12, 12), noise=0.1, seed=3).double()
    with torch.no_grad():
        out = model(y, 0.07)
    exact = _exact_prox(model, y, 0.07)
    rms = (out - exact).flatten(1).norm(dim=1) / math.sqrt(144)
    assert float(rms.max()) <= 1e-6 and float((out - y).abs().max()) > 1e-3  # certified and far from the identity
    assert model.certificate.guaranteed and model.certificate.alpha == 0.5


def test_float32_input_below_its_rounding_floor_is_finished_in_float64():
    """tolerance 1e-7 is under float32's floor L·eps·RMS(y) at L ≈ 90 (float32 iterations alone stall at 1.3e-6 after
    3,000 steps): the float32 phase stops at the floor, float64 finishes the solve."""
    model = _model(tolerance=1e-7).float()
    with torch.no_grad():
        model.log_strength[1] = 3.0
    y = natural_starts(2, (1, 12, 12), noise=0.1, seed=3)
    with torch.no_grad():
        out = model(y, 25 / 255)
    exact = _exact_prox(model.double(), y.double(), 25 / 255)
    assert out.dtype == torch.float32 and model.certificate.guaranteed and model.accuracy.worst <= 1e-7
    assert float(((out.double() - exact).flatten(1).norm(dim=1) / 12).max()) <= 1e-7


def test_each_image_iterates_with_its_own_step_until_it_converges():
    """A batch of a weak and a strong prox (λμ 100× apart): each reaches the tolerance with its own step 1/L_i, the
    weak one stops first (while the strong one goes on), and an image that already meets it takes no step."""
    model = _model(tolerance=1e-8)
    y = natural_starts(3, (1, 12, 12), noise=0.1, seed=4).double()
    strength = torch.tensor([0.05, 5.0, 1.0], dtype=torch.float64).view(-1, 1, 1, 1)
    scale = torch.ones_like(strength)
    start = y.clone()
    with torch.no_grad():
        start[2:] = model.solve(y[2:], strength[2:], scale[2:])[0]
        lipschitz = 1 + (strength * scale).view(-1) * model.smoothness(y.shape)
        x, steps = model._nesterov(y, strength, scale, start, lipschitz, torch.full((3,), 1e-8, dtype=y.dtype), 3000)
        bound = model.error_bound(x, y, strength, scale)
    assert bool((bound <= 1e-8).all())
    assert 0 < steps[0] < steps[1] and steps[2] == 0
    for i in range(3):  # the same iterates as a solve of that image alone
        with torch.no_grad():
            alone, alone_steps = model._nesterov(y[i:i + 1], strength[i:i + 1], scale[i:i + 1], start[i:i + 1],
                                                 lipschitz[i:i + 1], torch.full((1,), 1e-8, dtype=y.dtype), 3000)
        assert torch.allclose(alone, x[i:i + 1], atol=1e-14) and alone_steps[0] == steps[i]


def test_each_image_starts_from_the_output_of_the_nearest_recent_input():
    """Alternating calls (the adversarial search's x, y): each image warm-starts from the call two back, the one
    whose input is nearest; an input of a new shape starts from itself."""
    model = _model(tolerance=1e-6)
    a, b = natural_starts(2, (1, 12, 12), noise=0.1, seed=5).double(), natural_starts(2, (1, 12, 12), noise=0.1, seed=6).double()
    with torch.no_grad():
        out_a, out_b = model(a, 0.07), model(b, 0.07)
    mixed = torch.stack([a[0], b[1]]) + 1e-4
    assert torch.equal(model._warm_start(mixed), torch.stack([out_a[0], out_b[1]]))
    assert model._warm_start(a[:1]) is None


@pytest.mark.parametrize("sigma", [0.02, 0.07, 25 / 255])
def test_firmly_nonexpansive_at_every_sigma(sigma):
    model = _model()
    x, y = natural_starts(4, (1, 12, 12), noise=0.1, seed=5).double(), natural_starts(4, (1, 12, 12), noise=0.1, seed=6).double()
    with torch.no_grad():
        defects = averagedness_defects(model, x, y, alpha=0.5, sigma=sigma)
    assert float(defects.max()) <= 1e-8


def test_jacobian_in_the_input_and_the_adversarial_search():
    model = _model(tolerance=1e-11)
    y = natural_starts(1, (1, 10, 10), noise=0.1, seed=2).double().requires_grad_(True)
    direction = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (model(y, 0.07) * direction).sum().backward()
    with torch.no_grad():
        numeric = ((model(y + 1e-6 * direction, 0.07) - model(y - 1e-6 * direction, 0.07)) / 2e-6 * direction).sum()
    assert abs(float((y.grad * direction).sum()) - float(numeric)) <= 1e-3 * abs(float(numeric))
    y.grad = None
    model(y, 0.07).mul(0).sum().backward()  # a zero upstream gradient: a zero right-hand side for the CG
    assert torch.equal(y.grad, torch.zeros_like(y))
    search = adversarial_lipschitz(_model(tolerance=1e-5).float().eval(), (1, 12, 12), sigma=0.07, alpha=0.5, restarts=2, steps=30)
    assert search.ratio <= 1 + 1e-3, search.ratios  # 2D − I is non-expansive for a firmly non-expansive D


def test_sigma_family():
    model = _model()
    y = natural_starts(1, (1, 10, 10), noise=0.1, seed=2).double()
    with torch.no_grad():
        assert torch.equal(model(y, 0.0), y)  # λ(0) = 0: the identity
        strength, scale = (v.squeeze(1) for v in model.strength_and_scale(torch.tensor([KNOTS[0] / 2, KNOTS[0], KNOTS[1]], dtype=torch.float64)))
    assert torch.allclose(strength, torch.tensor([math.exp(-0.5) / 2, math.exp(-0.5), math.exp(0.3)], dtype=torch.float64))
    assert torch.allclose(scale, torch.tensor([math.exp(0.2), math.exp(0.2), math.exp(-0.1)], dtype=torch.float64))
    with pytest.raises(ValueError, match="above this denoiser's calibrated range"):
        model(y, 30 / 255)


def test_certificate_is_voided_when_a_call_misses_its_tolerance():
    model = _model(tolerance=1e-12, max_iter=10)
    with torch.no_grad():
        model(natural_starts(1, (1, 12, 12), noise=0.1, seed=2).double(), 0.09)
    assert not model.certificate.guaranteed and "estimated" in model.certificate.method


def test_implicit_gradient_matches_finite_differences():
    model = _model("circular", tolerance=1e-11)
    clean = natural_starts(2, (1, 10, 10), noise=0.0, seed=7).double()
    noisy = clean + 0.08 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    model.zero_grad()
    implicit_backward(model, noisy, clean, 0.08, cg_iters=200, cg_tol=1e-12)
    _assert_matches_finite_differences(model, noisy, clean, ("weight", "theta", "log_strength", "log_scale"))


def _assert_matches_finite_differences(model, noisy, clean, names):
    """Each parameter's accumulated gradient along a random direction equals the central difference of the MSE."""
    for name in names:
        parameter = getattr(model, name)
        direction = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        losses = []
        for sign in (1, -1):
            with torch.no_grad():
                parameter.add_(sign * 1e-5 * direction)
                losses.append(float((model(noisy, 0.08) - clean).pow(2).mean()))
                parameter.sub_(sign * 1e-5 * direction)
        numeric = (losses[0] - losses[1]) / 2e-5
        assert abs(float((parameter.grad * direction).sum()) - numeric) <= 1e-3 * abs(numeric), name  # kinks of σ: ~1e-4


def test_a_gray_model_regularises_colour_channel_by_channel():
    gray = _model(tolerance=1e-8)
    color = gray.for_channels(3)
    y = natural_starts(1, (3, 12, 12), noise=0.1, seed=4).double()
    with torch.no_grad():
        out = color(y, 0.07)
        for channel in range(3):
            assert torch.allclose(out[:, channel : channel + 1], gray(y[:, channel : channel + 1], 0.07), atol=1e-7)
    assert color.channels == 3 and color.config["channels"] == 3 and color.certificate.alpha == 0.5


def test_save_and_load_round_trip(tmp_path):
    model = _model().float()
    path = ps.save_denoiser(model, tmp_path / "ridge.safetensors")
    loaded = ps.load_denoiser_file(path)
    assert isinstance(loaded, ConvexRidgeDenoiser) and loaded.config == model.config
    assert loaded.certificate.alpha == 0.5 and loaded.certificate.guaranteed
    y = natural_starts(1, (1, 12, 12), noise=0.1, seed=2)
    with torch.no_grad():
        assert torch.allclose(loaded(y, 0.05), model(y, 0.05), atol=1e-5)


def test_loading_refuses_tensors_the_constructor_never_checked(tmp_path):
    """Knots that differ from the config's (the buffer would win) and λ = e¹⁰⁰ (inf in float32) are refused on load."""
    model = _model().float()
    with torch.no_grad():
        model.log_strength.fill_(100.0)
    with pytest.raises(ValueError, match="λ at the knots overflow float32"):
        ps.load_denoiser_file(ps.save_denoiser(model, tmp_path / "huge.safetensors"))
    model = _model().float()
    model.sigma_knots.mul_(100)
    with pytest.raises(ValueError, match="tensor sigma_knots .* differs from the config's"):
        ps.load_denoiser_file(ps.save_denoiser(model, tmp_path / "knots.safetensors"))


def test_bad_input_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="too small"):
        model(torch.rand(1, 1, 2, 8, dtype=torch.float64), 0.05)
    with pytest.raises(ValueError, match="channel"):
        model(torch.rand(1, 3, 12, 12, dtype=torch.float64), 0.05)
    with pytest.raises(ValueError, match="sigma"):
        model(torch.rand(1, 1, 12, 12, dtype=torch.float64), -0.1)
    with pytest.raises(ValueError, match="sigma_knots"):
        ConvexRidgeDenoiser(sigma_knots=(0.1, 0.05))
    with pytest.raises(ValueError, match="tolerance"):
        ConvexRidgeDenoiser(tolerance=-1e-5)
    with pytest.raises(ValueError, match="kernel must be odd"):
        ConvexRidgeDenoiser(kernel=4)


@pytest.mark.parametrize("solver", ["fb", "drs"])
def test_pnp_with_the_prox_is_certified_without_violations(solver):
    x = natural_starts(1, (1, 16, 16), noise=0.0, seed=4)
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 16, 16))
    y = physics(x) + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    model = _model(tolerance=1e-6).float()
    result = ps.solve(physics, y, model, 0.01, solver=solver, denoiser_sigma=0.02, max_iter=40)
    assert result.beta is not None and not result.violations, result.summary()
    model.accuracy.record(1.0)  # a call that missed the tolerance: the next run's β is only estimated
    result = ps.solve(physics, y, model, 0.01, solver=solver, denoiser_sigma=0.02, max_iter=5)
    assert result.beta is None and result.estimated_beta is not None


def test_a_long_pnp_run_solves_the_prox_ever_more_accurately(monkeypatch):
    """After K evaluations the prox's tolerance shrinks as (K/k)² (summable: the inexact iteration converges); the
    ridge meets each one, so β stays certified, and its tolerance is whole again after the run."""
    from pnp_stable import _accuracy

    monkeypatch.setattr(_accuracy, "SUMMABLE_AFTER", 2)
    x = natural_starts(1, (1, 16, 16), noise=0.0, seed=4)
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 16, 16))
    y = physics(x) + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    model = _model(tolerance=1e-5).float()
    in_force, solve = [], model.solve
    monkeypatch.setattr(model, "solve", lambda *args: in_force.append(model.accuracy.current) or solve(*args))
    result = ps.solve(physics, y, model, 0.01, solver="drs", denoiser_sigma=0.02, max_iter=12, tol=1e-12)
    assert in_force == pytest.approx([1e-5 * min(1, (2 / k) ** 2) for k in range(1, 13)])
    assert model.accuracy.first_miss is None and model.accuracy.scale == 1.0
    assert result.beta == 0.5 and "followed the summable schedule" in result.summary(), result.summary()


def _opponent(tolerance=1e-8):
    """A colour model on the opponent components, each with its own λ(σ), μ(σ)."""
    model = _model(tolerance=tolerance).for_channels(3, colour="opponent")
    with torch.no_grad():
        model.log_strength.copy_(torch.tensor([[-0.5, 0.3], [0.4, 1.2], [0.1, 0.9]]))
        model.log_scale.copy_(torch.tensor([[0.2, -0.1], [0.0, 0.3], [-0.2, 0.1]]))
    return model


def test_opponent_colour_is_the_prox_of_each_component_with_its_own_strength():
    """D(y) = Qᵀ [D_k((Qy)_k)]_k with Q orthonormal, each D_k the gray prox with component k's λ, μ; float32 output
    within its certified error (the transform's rounding included) of the float64 composition of exact proxes."""
    from pnp_stable.denoisers.colour import OPPONENT

    assert torch.allclose(OPPONENT @ OPPONENT.T, torch.eye(3, dtype=torch.float64), atol=1e-15)
    model = _opponent(tolerance=1e-6)
    y = natural_starts(2, (3, 12, 12), noise=0.1, seed=3).double()
    with torch.no_grad():
        out = model.float()(y.float(), 0.07)
    model = model.double()
    components = torch.einsum("ij,bjhw->bihw", OPPONENT, y)
    exact = []
    for k in range(3):
        gray = _model()
        with torch.no_grad():
            gray.log_strength.copy_(model.log_strength[k])
            gray.log_scale.copy_(model.log_scale[k])
        exact.append(_exact_prox(gray, components[:, k : k + 1], 0.07))
    exact = torch.einsum("ji,bjhw->bihw", OPPONENT, torch.cat(exact, 1))
    rms = (out.double() - exact).flatten(1).norm(dim=1) / math.sqrt(3 * 144)
    assert float(rms.max()) <= model.accuracy.worst <= 1e-6 and model.certificate.guaranteed
    per_channel = model.for_channels(3)  # the same R on each channel with the luminance's λ: another map
    with torch.no_grad():
        assert float((per_channel(y, 0.07) - exact).abs().max()) > 1e-3


def test_opponent_colour_is_firmly_nonexpansive_and_trains_per_component():
    model = _opponent(tolerance=1e-11)
    x, y = natural_starts(3, (3, 12, 12), noise=0.1, seed=5).double(), natural_starts(3, (3, 12, 12), noise=0.1, seed=6).double()
    with torch.no_grad():
        assert float(averagedness_defects(model, x, y, alpha=0.5, sigma=0.07).max()) <= 1e-8
    clean = natural_starts(2, (3, 10, 10), noise=0.0, seed=7).double()
    noisy = clean + 0.08 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    model.zero_grad()
    implicit_backward(model, noisy, clean, 0.08, cg_iters=200, cg_tol=1e-12)
    assert model.log_strength.grad.shape == (3, 2) and bool((model.log_strength.grad[:, 1] != 0).all())
    _assert_matches_finite_differences(model, noisy, clean, ("log_strength", "weight"))


def test_opponent_colour_round_trip_and_bad_options(tmp_path):
    model = _opponent().float()
    loaded = ps.load_denoiser_file(ps.save_denoiser(model, tmp_path / "ridge-colour.safetensors"))
    assert loaded.config["colour"] == "opponent" and loaded.log_strength.shape == (3, 2)
    y = natural_starts(1, (3, 12, 12), noise=0.1, seed=2)
    with torch.no_grad():
        assert torch.allclose(loaded(y, 0.05), model(y, 0.05), atol=1e-5)
    with pytest.raises(ValueError, match="'opponent' needs channels = 3"):
        ConvexRidgeDenoiser(channels=1, colour="opponent")
    with pytest.raises(ValueError, match="colour must be one of"):
        ConvexRidgeDenoiser(channels=3, colour="lab")


def test_circular_boundary_refuses_images_smaller_than_the_filters():
    """The FFT grid of a smaller image would crop the filters instead of wrapping them: not the documented R."""
    ridge = ps.denoisers.ConvexRidgeDenoiser(filters=2, kernel=7, sigma_knots=[0.1], boundary="circular").eval()
    with pytest.raises(ValueError, match="smaller than the 7×7 filters"):
        ridge(torch.rand(1, 1, 6, 12), 0.1)
    assert ridge(torch.rand(1, 1, 7, 7), 0.1).shape == (1, 1, 7, 7)
