import deepinv as dinv
import pytest
import torch

import pnp_stable as ps
from pnp_stable.operators import L2Fidelity, power_iteration


def _problem(boundary, channels=3, size=32):
    shape = (channels, size, size)
    op = ps.blur(ps.motion_kernel(5, size=9), boundary=boundary, img_size=shape)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    y = op.A(x) + 0.02 * torch.randn(op.A(x).shape, generator=torch.Generator().manual_seed(1))
    return op, x, y


@pytest.mark.parametrize("boundary", ["circular", "reflect", "valid"])
def test_prox_satisfies_optimality(boundary):
    op, x, y = _problem(boundary)
    f = ps.L2Fidelity(op, y, noise_sigma=0.02)
    assert f.prox_is_exact == (boundary == "circular")
    z = torch.rand_like(x)
    for tau in (1e-5, 1e-3, 0.1):
        u = f.prox(z, tau)
        residual = (u - z) + tau * f.grad(u)  # gradient of ½‖u − z‖² + τ f(u)
        scale = z.norm() + tau * f.grad(z).norm()  # size of the terms of the optimality equation at z
        assert (residual.norm() / scale).item() < 1e-4


@pytest.mark.parametrize("boundary", ["circular", "replicate"])
def test_value_gradient_and_lipschitz(boundary):
    op, x, y = _problem(boundary, channels=1, size=20)
    f = ps.L2Fidelity(op, y, noise_sigma=0.05)
    xd = x.clone().requires_grad_(True)
    f.value(xd).sum().backward()
    assert torch.allclose(xd.grad, f.grad(x), rtol=1e-4, atol=1e-3)
    # empirical Lipschitz constant of the gradient: max over random pairs plus the power vector
    g = torch.Generator().manual_seed(2)
    ratios = []
    for _ in range(20):
        a, b = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
        ratios.append(((f.grad(a) - f.grad(b)).norm() / (a - b).norm()).item())
    assert max(ratios) <= f.lipschitz * (1 + 1e-4)
    lam, vec, _ = power_iteration(op.A_adjoint_A, torch.randn(1, *x.shape[1:], generator=g), tol=1e-9, max_iter=5000)
    vec = vec.expand_as(x)
    y0 = torch.zeros_like(vec)
    empirical = ((f.grad(vec) - f.grad(y0)).norm() / vec.norm()).item()
    assert empirical == pytest.approx(f.lipschitz, rel=1e-3)


def test_fidelity_rejects_bad_input():
    op, x, y = _problem("circular")
    with pytest.raises(ValueError, match="noise_sigma"):
        ps.L2Fidelity(op, y, noise_sigma=0)
    with pytest.raises(ValueError, match="rank 4"):
        ps.L2Fidelity(op, y[0], noise_sigma=0.1)
    with pytest.raises(ValueError, match="channel"):
        ps.L2Fidelity(op, y[:, :1], noise_sigma=0.1)
    bad = y.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ps.L2Fidelity(op, bad, noise_sigma=0.1)
    with pytest.raises(ValueError, match="tau"):
        ps.L2Fidelity(op, y, noise_sigma=0.1).prox(x, 0.0)


def test_cg_prox_at_the_exact_solution_is_finite():
    shape = (1, 16, 16)
    op = ps.blur(ps.uniform_kernel(3), boundary="reflect")
    x = torch.rand(1, *shape)
    f = ps.L2Fidelity(op, op.A(x), noise_sigma=0.1)
    u = f.prox(x, 0.5)  # x minimises both terms: the initial CG residual is exactly zero
    assert torch.isfinite(u).all() and torch.allclose(u, x, atol=1e-6)


def test_an_operator_with_a_parameter_per_sample_is_refused_with_what_to_do():
    """Samples stop at different iterations and the adjoint test probes single images: one operator must act alike on
    every image (it crashed once the first sample stopped)."""
    import deepinv as dinv

    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.3).float()
    op = dinv.physics.Inpainting(img_size=(1, 16, 16), mask=mask)
    y = op.A(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="one operator per image"):
        ps.solve(op, y, lambda v, s: v, 0.02, max_iter=2)


def test_the_adjoint_test_and_the_norm_estimate_probe_in_the_problems_precision():
    """Probes take y's dtype (and device): an operator that works only in float64 (or only on a GPU) is checked in
    float64 (on that device) instead of failing on the probes' float32 CPU default."""
    weights = torch.rand(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def only_float64(x):
        assert x.dtype == torch.float64, x.dtype
        return weights * x

    op = ps.custom_operator(only_float64, A_adjoint=only_float64)
    y = op.A(torch.rand(1, 1, 8, 8, dtype=torch.float64))
    fidelity = ps.operators.L2Fidelity(op, y, 0.01)
    assert fidelity.adjoint_error < 1e-12
    assert fidelity.operator_norm.kind == "estimate" and fidelity.operator_norm.value <= float(weights.max()) + 1e-9


def test_the_blur_bound_holds_for_a_circular_kernel_larger_than_the_image():
    """deepinv's circular Blur wraps a kernel larger than the image; the FFT bound cropped it (0.36 for a true 1)."""
    import deepinv as dinv

    from pnp_stable.operators import operator_norm

    op = dinv.physics.Blur(filter=torch.ones(1, 1, 5, 5) / 25, padding="circular")
    for size in ((3, 3), (4, 4), (4, 8)):
        probe = torch.zeros(1, 1, *size)
        probe[..., 0, 0] = 1
        columns = torch.stack([op.A(torch.roll(probe, (i, j), (-2, -1))).flatten()
                               for i in range(size[0]) for j in range(size[1])], 1).double()
        assert operator_norm(op, (1, *size)).value >= torch.linalg.matrix_norm(columns, 2) * (1 - 1e-6)


def test_a_given_operator_norm_below_a_lower_bound_is_refused():
    op = ps.blur(ps.gaussian_kernel(1.2), img_size=(1, 32, 32))
    y = op.A(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="below ‖A‖ ≥"):
        L2Fidelity(op, y, 0.01, operator_norm=0.1)
    given = L2Fidelity(op, y, 0.01, operator_norm=1.0)
    assert given.operator_norm.kind == "given" and given.operator_norm.guaranteed
    denoiser = ps.AveragedDenoiser(channels=1, width=4, depth=1)
    result = ps.solve(op, y, denoiser, 0.01, operator_norm=1.0, max_iter=2)
    assert any("given by the caller, trusted" in note for note in result.notes)
    computed = ps.solve(op, y, denoiser, 0.01, max_iter=2)  # its own norm, cached before the scheme is built
    assert not any(note.startswith("step τ from") for note in computed.notes), computed.notes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_a_measurement_below_float32_is_refused_as_a_dtype_problem(dtype):
    op = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 16, 16))
    with pytest.raises(ValueError, match="must be float32 or float64"):
        L2Fidelity(op, torch.ones(1, 1, 16, 16, dtype=dtype), 0.01)


def test_a_noise_model_other_than_the_data_terms_is_noted_in_the_result():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    kernel = ps.gaussian_kernel(1.0)
    matching = ps.blur(kernel, img_size=(1, 16, 16), noise_sigma=0.02)
    other_level = ps.blur(kernel, img_size=(1, 16, 16), noise_sigma=0.05)
    poisson = dinv.physics.BlurFFT(img_size=(1, 16, 16), filter=kernel[None, None], noise_model=dinv.physics.PoissonNoise())
    denoiser = lambda v, s: v  # noqa: E731
    with pytest.warns(UserWarning, match="GaussianNoise has σ = 0.05 but noise_sigma = 0.02"):  # overriding its own
        notes = {name: " ".join(ps.solve(op, op.A(x), denoiser, 0.02, max_iter=2).notes)
                 for name, op in (("matching", matching), ("level", other_level), ("poisson", poisson))}
    assert "noise model" not in notes["matching"] and "GaussianNoise" not in notes["matching"]
    assert "GaussianNoise has σ = 0.05 but noise_sigma = 0.02" in notes["level"]
    assert "noise model is PoissonNoise" in notes["poisson"]


def test_the_noise_level_defaults_to_the_operators_own_gaussian_noise():
    """As deepinv users set it on the physics: solve reads σ from its GaussianNoise; without one (or with one level
    per sample) it asks for noise_sigma."""
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    kernel = ps.gaussian_kernel(1.0)
    noisy = dinv.physics.BlurFFT(img_size=(1, 16, 16), filter=kernel[None, None],
                                 noise_model=dinv.physics.GaussianNoise(sigma=0.05))
    denoiser = lambda v, s: v  # noqa: E731
    read = ps.solve(noisy, noisy.A(x), denoiser, max_iter=3)
    given = ps.solve(noisy, noisy.A(x), denoiser, 0.05, max_iter=3)
    assert torch.allclose(read.estimate, given.estimate, atol=1e-6) and read.step == pytest.approx(given.step, rel=1e-6)
    for op, says in ((ps.blur(kernel, img_size=(1, 16, 16)), "a ZeroNoise noise model"),
                     (dinv.physics.BlurFFT(img_size=(1, 16, 16), filter=kernel[None, None],
                                           noise_model=dinv.physics.PoissonNoise()), "a PoissonNoise noise model"),
                     (dinv.physics.BlurFFT(img_size=(1, 16, 16), filter=kernel[None, None],
                                           noise_model=dinv.physics.GaussianNoise(sigma=torch.tensor([0.01, 0.02]))),
                      "2 different levels")):
        with pytest.raises(ValueError, match=f"noise_sigma is needed: the operator( has|'s GaussianNoise holds) {says}"):
            ps.solve(op, op.A(x), denoiser, max_iter=2)


def test_a_decomposable_physics_of_the_callers_is_not_taken_for_an_exact_svd():
    """U = V = 3·I passes the adjoint test (A = 9·mask, Aᵀ alike) but is not orthogonal: max |mask| = 1 is not
    ‖A‖ = 9, and the closed-form prox would solve the wrong system."""
    scaled = dict(U=lambda x: 3 * x, U_adjoint=lambda x: 3 * x, V=lambda x: 3 * x, V_adjoint=lambda x: 3 * x)
    op = dinv.physics.DecomposablePhysics(mask=torch.ones(1, 1, 8, 8), **scaled)
    y = torch.rand(1, 1, 8, 8)
    fidelity = L2Fidelity(op, y, 0.1)
    assert fidelity.operator_norm.kind == "estimate" and fidelity.operator_norm.value == pytest.approx(9, rel=1e-3)
    assert not fidelity.prox_is_exact
    x = torch.rand(1, 1, 8, 8)
    u = fidelity.prox(x, 0.01)  # (I + γ·81)u = x + γ·9y with γ = τ/s² = 1
    assert torch.allclose(u, (x + 9 * y) / 82, atol=1e-5)
    result = ps.solve(op, y, lambda z, sigma: z.clamp(0, 1), 0.1, solver="fb", max_iter=2)
    assert result.beta is None
    assert L2Fidelity(dinv.physics.Inpainting((1, 8, 8), mask=0.5), y, 0.1).operator_norm.kind == "exact"
    bare = dinv.physics.DecomposablePhysics(mask=torch.full((1, 1, 8, 8), 0.5))  # deepinv's identity U and V
    assert L2Fidelity(bare, y, 0.1).operator_norm.kind == "exact" and L2Fidelity(bare, y, 0.1).prox_is_exact
