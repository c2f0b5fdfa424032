import deepinv as dinv
import numpy as np
import pytest
import torch

import pnp_stable as ps
from pnp_stable.operators import BOUNDARIES

SIZE = 24


def _dense(op, shape):
    """Dense matrix of a linear operator on images of ``shape`` (small images only)."""
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float32).reshape(n, *shape)
    return op.A(basis).reshape(n, -1).T.double()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("use_fft", [False, True])
def test_blur_adjoint(boundary, channels, use_fft):
    if boundary == "circular" and use_fft:
        pytest.skip("circular is always FFT")
    shape = (channels, 32, 28)
    op = ps.blur(ps.motion_kernel(1, size=9), boundary=boundary, img_size=shape, use_fft=use_fft)
    assert isinstance(op, dinv.physics.LinearPhysics)
    assert ps.adjoint_test(op, shape, seed=1) < 1e-5


def test_adjoint_test_detects_a_wrong_adjoint():
    op = ps.custom_operator(lambda x: torch.roll(x, 1, dims=-1), lambda y: torch.roll(y, 1, dims=-1))
    assert ps.adjoint_test(op, (1, 16, 16)) > 0.5


@pytest.mark.parametrize("channels", [1, 3])
def test_downsampling_inpainting_denoising_adjoint(channels):
    shape = (channels, 32, 32)
    mask = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    for op in (
        ps.downsampling(shape, factor=2),
        ps.inpainting(shape, mask),
        ps.inpainting(shape, 0.3, rng=torch.Generator().manual_seed(0)),
        ps.denoising(0.1),
    ):
        assert ps.adjoint_test(op, shape) < 1e-5


class ShiftAndScale(dinv.physics.LinearPhysics):
    """A user's operator written the deepinv way: a diagonal scaling after a circular shift."""

    def __init__(self, weights, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("weights", weights)

    def A(self, x, **kwargs):
        return self.weights * torch.roll(x, shifts=(2, -1), dims=(-2, -1))

    def A_adjoint(self, y, **kwargs):
        return torch.roll(self.weights * y, shifts=(-2, 1), dims=(-2, -1))


def test_user_linear_physics_subclass():
    op = ShiftAndScale(torch.linspace(0.1, 2.0, 20 * 20).reshape(1, 1, 20, 20))
    assert ps.adjoint_test(op, (1, 20, 20)) < 1e-5
    norm = ps.operator_norm(op, (1, 20, 20))
    assert norm.kind == "estimate" and not norm.guaranteed and norm.value == pytest.approx(2.0, rel=1e-3)


def test_custom_operator_autograd_adjoint_any_batch():
    weights = torch.rand(1, 1, 12, 12) + 0.5

    def A(x):
        return weights * torch.nn.functional.avg_pool2d(x, 1) + x.flip(-1)

    op = ps.custom_operator(A, img_size=(1, 12, 12))
    assert ps.adjoint_test(op, (1, 12, 12), num_samples=5) < 1e-5
    dense = _dense(op, (1, 12, 12))
    y = torch.randn(3, 1, 12, 12)
    expected = (dense.T @ y.reshape(3, -1).T.double()).T.reshape(3, 1, 12, 12)
    assert torch.allclose(op.A_adjoint(y).double(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="img_size"):
        ps.custom_operator(A)


def test_circular_norm_is_max_of_kernel_spectrum():
    shape = (3, 40, 36)
    kernel = ps.gaussian_kernel(2.0)
    op = ps.blur(kernel, boundary="circular", img_size=shape)
    padded = torch.zeros(shape[1:])
    padded[: kernel.shape[0], : kernel.shape[1]] = kernel
    expected = torch.fft.fft2(padded.double()).abs().max().item()
    norm = ps.operator_norm(op, shape)
    assert norm.exact and norm.value == pytest.approx(expected, abs=1e-4)
    # an anisotropic kernel whose spectrum peaks away from DC (a finite difference-like motion kernel)
    motion = ps.motion_kernel(4, size=11)
    op = ps.blur(motion, boundary="circular", img_size=shape)
    padded = torch.zeros(shape[1:])
    padded[:11, :11] = motion
    assert ps.operator_norm(op, shape).value == pytest.approx(torch.fft.fft2(padded.double()).abs().max().item(), abs=1e-4)


def test_noise_model_and_validation():
    x = torch.rand(1, 1, 16, 16)
    op = ps.blur(ps.uniform_kernel(3), boundary="circular", img_size=(1, 16, 16), noise_sigma=0.1,
                 rng=torch.Generator().manual_seed(0))
    noise = op(x) - op.A(x)
    assert noise.std().item() == pytest.approx(0.1, rel=0.2)
    with pytest.raises(ValueError, match="noise_sigma"):
        ps.blur(ps.uniform_kernel(3), noise_sigma=-0.1, img_size=(1, 16, 16))
    with pytest.raises(ValueError, match="larger than the image"):
        ps.blur(ps.uniform_kernel(21), boundary="reflect", img_size=(1, 16, 16))
    with pytest.raises(ValueError, match="img_size"):
        ps.blur(ps.uniform_kernel(3), boundary="circular")
    with pytest.raises(ValueError, match="boundary"):
        ps.blur(ps.uniform_kernel(3), boundary="periodic", img_size=(1, 16, 16))
    with pytest.raises(ValueError, match="3-D|2-D"):
        ps.blur(np.ones((3, 3, 3)), img_size=(1, 16, 16))
    with pytest.raises(ValueError, match="x_shape"):
        ps.operator_norm(op, (16, 16))
    with pytest.raises(ValueError, match="LinearPhysics"):
        ps.adjoint_test(lambda x: x, (1, 4, 4))


@pytest.mark.parametrize("boundary", ["reflect", "replicate", "zeros"])
@pytest.mark.parametrize("kernel_shape", [(1, 5), (5, 1), (1, 1)])
def test_one_pixel_wide_kernels_blur_exactly_with_an_exact_adjoint(boundary, kernel_shape):
    """A 1×N kernel is the 3×N one with zero rows: deepinv's reflect padding failed on it and its replicate
    adjoint was wrong (adjoint test 0.66)."""
    kernel = np.random.default_rng(0).random(kernel_shape)
    kernel /= kernel.sum()
    op = ps.blur(kernel, boundary=boundary, img_size=(1, 12, 10))
    assert ps.adjoint_test(op, (1, 12, 10), seed=1) < 1e-5
    x = torch.rand(1, 1, 12, 10, generator=torch.Generator().manual_seed(2))
    mode = {"reflect": "reflect", "replicate": "edge", "zeros": "constant"}[boundary]
    h, w = kernel_shape
    padded = np.pad(x[0, 0].double().numpy(), ((h // 2, h // 2), (w // 2, w // 2)), mode=mode)
    expected = sum(kernel[i, j] * padded[h - 1 - i : h - 1 - i + 12, w - 1 - j : w - 1 - j + 10]
                   for i in range(h) for j in range(w))  # convolution (flipped kernel), same size
    assert np.allclose(op.A(x)[0, 0].double().numpy(), expected, atol=1e-6)


def test_custom_operator_refuses_a_map_that_is_not_linear():
    with pytest.raises(ValueError, match="A is not linear"):
        ps.custom_operator(lambda x: x**2, img_size=(1, 8, 8))
    with pytest.raises(ValueError, match="A is not linear"):
        ps.custom_operator(lambda x: x + 1, lambda y: y, img_size=(1, 8, 8))
    assert ps.custom_operator(lambda x: x.double() * 2, img_size=(1, 8, 8)) is not None  # float64 out is linear too


@pytest.mark.parametrize("boundary", ["reflect", "replicate", "zeros"])
@pytest.mark.parametrize("img_size, kernel_shape", [((1, 1, 64), (1, 5)), ((1, 64, 1), (5, 1)), ((1, 1, 1), (1, 1)),
                                                    ((1, 3, 1), (1, 1))])
def test_a_one_pixel_wide_kernel_on_a_one_pixel_high_signal_has_an_exact_adjoint(boundary, img_size, kernel_shape):
    """Reflect cannot pad a 1-pixel side and needs no zero row there; replicate does need it (its adjoint test was
    1.0 on a 1×64 strip, 3.0 on a 1×1 image, and the solve ran with a wrong gradient)."""
    op = ps.blur(np.ones(kernel_shape) / np.prod(kernel_shape), boundary=boundary, img_size=img_size)
    x = torch.rand(1, *img_size, generator=torch.Generator().manual_seed(0))
    assert op.A(x).shape == x.shape and ps.adjoint_test(op, img_size) < 1e-5


def test_a_generator_on_another_device_than_the_operator_is_refused():
    """deepinv draws the noise on the physics' device: a CPU generator for a GPU operator would fail there (or lose
    its seed); the message says which generator to pass."""
    with pytest.raises(ValueError, match=r"rng is a generator on cpu but the operator computes on meta.*Generator\(device='meta'\)"):
        ps.denoising(0.1, rng=torch.Generator().manual_seed(0), device="meta")


def test_an_unused_generator_is_not_refused_and_inpainting_checks_its_mask_generator():
    assert ps.denoising(0.0, rng=torch.Generator(), device="meta") is not None  # no noise: the generator is unused
    with pytest.raises(ValueError, match="rng is a generator on cpu"):
        ps.inpainting((1, 8, 8), 0.5, noise_sigma=0.0, rng=torch.Generator(), device="meta")


def _svd_operators():
    """One operator of each class that has_known_svd trusts, with its image shape (C, H, W)."""
    gray = (1, 16, 16)
    return {
        dinv.physics.BlurFFT: (dinv.physics.BlurFFT(img_size=gray, filter=ps.gaussian_kernel(1.0)[None, None]), gray),
        dinv.physics.Inpainting: (dinv.physics.Inpainting(gray, mask=0.5), gray),
        dinv.physics.Denoising: (dinv.physics.Denoising(), gray),
        dinv.physics.MRI: (dinv.physics.MRI(mask=(torch.rand(16, 16) > 0.5).float(), img_size=(2, 16, 16)), (2, 16, 16)),
        dinv.physics.SinglePixelCamera: (dinv.physics.SinglePixelCamera(m=64, img_size=gray, fast=True), gray),
        dinv.physics.Demosaicing: (dinv.physics.Demosaicing(img_size=(3, 16, 16)), (3, 16, 16)),
    }


def _dense_norm(op, shape) -> float:
    """‖A‖ from the dense float64 matrix (small images only)."""
    n = int(np.prod(shape))
    columns = op.A(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, -1)
    return float(torch.linalg.matrix_norm(columns.T, 2))


def test_the_svds_taken_as_exact_give_the_norm_and_the_prox_in_closed_form():
    """What has_known_svd trusts is checked here in float64, so a deepinv release that breaks it fails a test:
    ‖A‖ = max |mask| (power iteration) and prox_l2 meets its optimality condition u − z + γAᵀ(Au − y) = 0."""
    from pnp_stable.operators.norms import KNOWN_SVD_CLASSES, has_known_svd

    torch.manual_seed(0)
    operators = _svd_operators()
    assert set(operators) == set(KNOWN_SVD_CLASSES)
    for kind, (op, shape) in operators.items():
        op = ps.operators.to_dtype(op, torch.float64)
        assert has_known_svd(op), kind.__name__
        z, x = torch.rand(2, 1, *shape, dtype=torch.float64)
        y = op.A(x)
        u = op.prox_l2(z, y, 0.7)
        residual = (u - z) + 0.7 * op.A_adjoint(op.A(u) - y)
        assert residual.norm() <= 1e-12 * z.norm(), kind.__name__
        norm = ps.operator_norm(op, shape, like=z)
        assert norm.kind == "exact" and norm.value == pytest.approx(_dense_norm(op, shape), rel=1e-9), kind.__name__
    assert not has_known_svd(dinv.physics.Decolorize())  # its prox_l2 is not the prox (residual 0.6)


def test_a_single_pixel_camera_with_a_thin_svd_gets_the_conjugate_gradient_prox():
    """SinglePixelCamera(fast=False) with m < n keeps an m × n V: deepinv's closed-form prox_l2 drops the part of its
    input outside V's range (optimality residual ~0.6; it gave a certified HQS 7 dB under the CG prox's answer), so
    the fidelity solves that prox by CG, to its tolerance; its norm, max |mask|, stays exact."""
    from pnp_stable.operators.norms import has_closed_form_prox

    op = dinv.physics.SinglePixelCamera(m=64, img_size=(1, 16, 16), fast=False, rng=torch.Generator().manual_seed(0))
    z, x = torch.rand(2, 1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = op.A(x)
    optimality = lambda u: ((u - z) + 0.7 * op.A_adjoint(op.A(u) - y)).norm() / z.norm()  # noqa: E731
    assert optimality(op.prox_l2(z, y, 0.7)) > 0.1  # what is no longer trusted
    fidelity = ps.L2Fidelity(op, y, 1.0, cg_tol=1e-7)
    assert not has_closed_form_prox(op) and not fidelity.prox_is_exact
    assert optimality(fidelity.prox(z, 0.7)) < 1e-5
    norm = ps.operator_norm(op, (1, 16, 16))  # its SVD is still right: the norm stays exact
    assert norm.kind == "exact" and norm.value == pytest.approx(_dense_norm(op.double(), (1, 16, 16)), rel=1e-5)


def test_a_float64_operator_keeps_its_complex_fourier_buffers():
    """to_dtype casts a circular blur with an asymmetric kernel and a downsampling to float64 without changing them
    (A, and the closed-form prox to float64 accuracy: their Fourier buffers are recomputed); Module.to(torch.float64) drops the imaginary part of their
    Fourier buffers (A moved by 10 %, deepinv's prox off by 1 %), and such an operator is refused by name."""
    from pnp_stable.operators.norms import COMPLEX_BUFFERS

    kernel = torch.zeros(5, 5)
    kernel[2, :4] = 0.25  # a horizontal motion: its Fourier transform is not real
    fresh = {dinv.physics.BlurFFT: lambda: ps.blur(kernel, img_size=(1, 16, 16)),
             dinv.physics.Downsampling: lambda: ps.downsampling((1, 16, 16), 2, filter=kernel)}
    assert set(fresh) == set(COMPLEX_BUFFERS)
    x, z = torch.rand(2, 1, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for kind, build in fresh.items():
        assert all(getattr(build(), name).is_complex() for name in COMPLEX_BUFFERS[kind])  # a deepinv rename fails here
        reference = build()
        cast = ps.operators.to_dtype(build(), torch.float64)
        assert all(getattr(cast, name).dtype == torch.complex128 for name in COMPLEX_BUFFERS[kind])
        assert torch.allclose(cast.A(x), reference.A(x.float()).double(), rtol=0, atol=1e-6)
        y = cast.A(x)
        u = cast.prox_l2(z, y, 0.7)
        assert ((u - z) + 0.7 * cast.A_adjoint(cast.A(u) - y)).norm() <= 1e-12 * z.norm()
        broken = build().to(torch.float64)
        with pytest.raises(ValueError, match=rf"{kind.__name__}'s complex Fourier buffer.*to_dtype\(op, torch.float64\)"):
            ps.solve(broken, broken.A(x), lambda v, s: v, 0.01, max_iter=2)
    moved = fresh[dinv.physics.BlurFFT]().to(torch.float64).A(x) - fresh[dinv.physics.BlurFFT]().A(x.float()).double()
    assert moved.norm() > 0.05 * y.norm()  # what the refusal prevents
    with pytest.raises(ValueError, match="real floating-point dtype"):
        ps.operators.to_dtype(ps.denoising(0.1), torch.complex128)
