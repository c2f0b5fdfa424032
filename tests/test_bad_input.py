"""Bad input is refused clearly and loses nothing (issue #21 §3–4): output paths, the input-range rule, NaN
pixels, late failures, and the caller's model left as it was."""

import numpy as np
import pytest
import torch
from PIL import Image

import pnp_stable as ps
from pnp_stable import cli
from pnp_stable.restore import resolve_denoiser


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / "x.png")
    return tmp_path / "x.png"


@pytest.fixture
def no_solve(monkeypatch):
    """Any solve fails the test: every refusal below must come before the work."""

    def fail(*args, **kwargs):
        raise AssertionError("the solve ran although an output path was bad")

    monkeypatch.setattr("pnp_stable.restore.deblur", fail)
    monkeypatch.setattr("pnp_stable.restore.denoise", fail)


def _refused(capsys, argv) -> str:
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


DEBLUR = ["--kernel", "gaussian:1", "--noise", "0.01"]


@pytest.mark.parametrize("command", [["deblur", *DEBLUR], ["deblur", "--simulate", *DEBLUR], ["denoise", "--sigma", "0.1"]])
def test_out_equal_to_the_input_is_refused_and_the_input_kept(command, photo, capsys, no_solve):
    before = photo.read_bytes()
    err = _refused(capsys, [command[0], photo, *command[1:], "--out", photo])
    assert "would be overwritten" in err and photo.read_bytes() == before


def test_the_simulated_degraded_image_may_not_overwrite_the_input(tmp_path, photo, capsys, no_solve):
    source = tmp_path / "y_degraded.png"
    source.write_bytes(photo.read_bytes())
    err = _refused(capsys, ["deblur", source, "--simulate", *DEBLUR, "--out", tmp_path / "y.png"])
    assert "would be overwritten" in err and "--simulate's degraded image" in err and "of --out" not in err


def test_plot_equal_to_out_is_refused(photo, tmp_path, capsys, no_solve):
    out = tmp_path / "o.png"
    assert "both name" in _refused(capsys, ["deblur", photo, *DEBLUR, "--out", out, "--plot", out])


def test_two_inputs_with_one_name_are_refused_not_merged(tmp_path, photo, capsys, no_solve):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "x.png").write_bytes(photo.read_bytes())
    err = _refused(capsys, ["denoise", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "--sigma", "0.1",
                            "--out", tmp_path / "out"])
    assert "would both be written to" in err


@pytest.mark.parametrize("option, name, expected", [
    ("--plot", "p.xyz", "unsupported file type '.xyz'"),
    ("--out", "o.raw", "unsupported file type '.raw'"),
    ("--out", "/proc/x.png", "cannot write to the folder /proc"),
])
def test_bad_output_paths_fail_before_the_solve(option, name, expected, photo, tmp_path, capsys, no_solve):
    path = name if name.startswith("/") else tmp_path / name
    err = _refused(capsys, ["deblur", photo, *DEBLUR, option, path])
    assert expected in err and "extension" not in err


def test_one_input_rule_integers_by_bit_depth_floats_on_the_unit_scale():
    ramp = [[0, 128, 255]]
    for image in (np.array(ramp), np.array(ramp, dtype=np.int32), torch.tensor(ramp), torch.tensor(ramp, dtype=torch.uint8)):
        assert ps.to_tensor(image).flatten().tolist() == pytest.approx([0, 128 / 255, 1]), image.dtype
    assert ps.to_tensor(np.array([[0, 65535]], dtype=np.uint16)).max() == 1
    assert ps.to_tensor(np.array([[0, 4095]], dtype=np.int64)).max() == pytest.approx(4095 / 65535)
    with pytest.raises(ValueError, match="divide by 255"):
        ps.to_tensor(np.full((4, 4), 200.0))
    with pytest.raises(ValueError, match="divide by 255"):
        ps.to_tensor(torch.full((1, 1, 4, 4), 200.0))
    with pytest.raises(ValueError, match="must not be negative"):
        ps.to_tensor(np.array([[-1, 3]]))
    ps.to_tensor(np.array([[-0.3, 1.4]]))  # noise may cross 0 and 1


def test_every_entry_point_applies_the_rule():
    bright = torch.rand(1, 1, 16, 16) * 255
    with pytest.raises(ValueError, match="divide by 255"):
        ps.denoise(bright, 0.1)
    with pytest.raises(ValueError, match="divide by 255"):
        ps.deblur(bright, "gaussian:1", 0.01)
    with pytest.raises(ValueError, match=r"values span \[.*e\+38") as error:
        ps.deblur(torch.rand(1, 1, 16, 16) * 3e38, "gaussian:1", 0.01)
    assert "x0" not in str(error.value)
    whole = ps.denoise(torch.full((1, 1, 16, 16), 128, dtype=torch.int64), 0.1).estimate
    assert 0.3 < float(whole.mean()) < 0.7  # scaled by 255, not left at 128 or divided by 2⁶³


def test_float_npy_on_the_0_255_scale_is_refused_by_the_cli(tmp_path, capsys, no_solve):
    np.save(tmp_path / "big.npy", np.full((16, 16), 180.0))
    assert "divide by 255" in _refused(capsys, ["denoise", tmp_path / "big.npy", "--sigma", "0.1", "--out", tmp_path / "o.png"])


def test_channels_first_numpy_array_names_the_expected_layout():
    with pytest.raises(ValueError, match=r"\[H, W, C\].*transpose\(1, 2, 0\)"):
        ps.to_tensor(np.zeros((3, 64, 64)))


def test_blurring_a_nan_pixel_is_refused_not_spread():
    image = torch.rand(1, 1, 16, 16)
    image[0, 0, 5, 5] = float("nan")
    for boundary in ("circular", "reflect"):
        with pytest.raises(ValueError, match="1 NaN/Inf value"):
            ps.blur("gaussian:1", boundary=boundary, img_size=(1, 16, 16))(image)


def test_late_failures_become_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        ps.denoise(torch.zeros(0, 1, 16, 16), 0.1)
    with pytest.raises(ValueError, match="spec such as 'gaussian:1.6'"):
        ps.deblur(torch.rand(1, 1, 16, 16), None, 0.01)
    batch = torch.rand(2, 1, 16, 16)
    per_image = ps.denoise(batch, torch.tensor([0.05, 0.15])).estimate
    for b, sigma in enumerate((0.05, 0.15)):
        assert torch.allclose(per_image[b], ps.denoise(batch[b : b + 1], sigma).estimate[0], atol=1e-6)
    with pytest.raises(ValueError, match="3 values but the batch has 2"):
        ps.denoise(batch, [0.1, 0.2, 0.3])


class _Smoother(torch.nn.Module):
    """A tiny module denoiser with a training-mode dependent layer (dropout)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x, sigma=None):
        return self.drop(x) * self.scale + (1 - self.scale) * x.mean()


def test_the_callers_model_keeps_its_mode_and_device():
    model = _Smoother().train()
    y = torch.rand(1, 1, 16, 16)
    physics = ps.blur("gaussian:1", img_size=(1, 16, 16))
    first = ps.solve(physics, y, model, 0.05, max_iter=3)
    assert model.training and model.drop.training  # restored after the run
    assert torch.equal(first.estimate, ps.solve(physics, y, model, 0.05, max_iter=3).estimate)  # dropout was off
    ps.denoise(y, 0.1, denoiser=model)
    assert model.training
    moved = resolve_denoiser(model, 1, device="meta")
    assert moved is not model and moved.scale.device.type == "meta" and model.scale.device.type == "cpu"
    assert resolve_denoiser(model, 1, device="cpu") is model


def test_noisy_data_scalars_and_devices_that_are_fine_stay_accepted():
    noisy = torch.full((1, 1, 16, 16), 0.95) + 100 / 255 * torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(noisy.max()) > 2 and ps.to_tensor(noisy).shape == noisy.shape  # σ = 100/255 noise passes 2
    physics = ps.blur("gaussian:1", img_size=(1, 16, 16))
    assert ps.solve(physics, torch.rand(1, 1, 16, 16), lambda x, s: x, 0.05, tol=np.float32(1e-5), max_iter=2).iterations == [2]
    for device in ("cpu:0", torch.device("cpu", 0)):
        assert ps.denoise(torch.rand(1, 1, 16, 16), 0.1, device=device).estimate.shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="unsupported device 'meta'"):
        ps.denoise(torch.rand(1, 1, 16, 16), 0.1, device="meta")


def test_wide_integer_images_say_which_bit_depth_was_assumed():
    with pytest.warns(UserWarning, match="int64 image read as 8-bit"):
        assert float(ps.to_tensor(np.array([[0, 255]])).max()) == 1
    with pytest.warns(UserWarning, match="16-bit"):
        ps.to_tensor(np.array([[0, 300]], dtype=np.int32))


def test_denoisers_take_float64_input_or_say_which_precision_they_need():
    """A float64 image (numpy's default) runs networks in their weights' precision and returns float64; the convex
    ridge prox, whose error bound is certified for its own precision, says what to pass instead of a conv error."""
    x = torch.rand(2, 1, 16, 12, dtype=torch.float64)
    torch.manual_seed(0)
    for model in (ps.AveragedDenoiser(channels=1, width=4, depth=1).eval(),
                  ps.denoisers.DnCNNBaseline(channels=1, depth=2, width=4).eval()):
        with torch.no_grad():
            out = model(x, 0.1)
            assert out.dtype == torch.float64 and torch.equal(out, model(x.float(), 0.1).double())
    ridge = ps.denoisers.ConvexRidgeDenoiser(filters=2, kernel=3, sigma_knots=[0.1]).eval()
    with pytest.raises(ValueError, match="pass x.to"):
        ridge(x, 0.1)


@pytest.mark.parametrize("sigma", [float("inf"), float("nan")])
def test_non_finite_noise_levels_are_refused(sigma):
    x = torch.rand(1, 1, 16, 16)
    adaptive = ps.AveragedDenoiser(channels=1, width=4, depth=1, noise_level_input=True).eval()
    ridge = ps.denoisers.ConvexRidgeDenoiser(filters=2, kernel=3, sigma_knots=[0.1]).eval()
    for model in (adaptive, ridge):
        with pytest.raises(ValueError, match="finite"):
            model(x, sigma)


def test_the_dncnn_baseline_checks_its_input():
    model = ps.denoisers.DnCNNBaseline(channels=1, depth=2, width=4).eval()
    for bad, message in ((torch.full((1, 1, 8, 8), float("nan")), "NaN"), (torch.rand(1, 3, 8, 8), "channel"),
                         (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "floating-point")):
        with pytest.raises(ValueError, match=message):
            model(bad, 0.1)


def test_an_initialisation_in_another_precision_than_y_is_refused():
    x = torch.rand(1, 1, 16, 16)
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 16, 16))
    y = physics(x)
    with pytest.raises(ValueError, match="pass x0.to"):
        ps.solve(physics, y, lambda v, s: v, 0.01, x0=x.double(), max_iter=2)


def test_a_precision_clash_between_operator_denoiser_and_y_is_named():
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 16, 16), boundary="reflect")  # holds a float32 filter
    y = physics(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"y is torch.float64 but the operator holds torch.float32.*to_dtype\(op, torch.float64\)"):
        ps.solve(physics, y.double(), lambda v, s: v, 0.01, max_iter=2)
    with pytest.raises(ValueError, match="returned torch.float64 on cpu for an input of torch.float32"):
        ps.solve(physics, y, lambda v, s: v.double(), 0.01, max_iter=2)
    ps.operators.to_dtype(physics, torch.float64)  # in place, as torch.nn.Module.to
    assert ps.solve(physics, y.double(), lambda v, s: v, 0.01, max_iter=2).estimate.dtype == torch.float64


def test_operator_and_solver_parameters_outside_their_meaning_are_refused():
    with pytest.raises(ValueError, match="whole number"):
        ps.downsampling((1, 16, 16), factor=2.5)
    for mask in (torch.ones(3, 16, 16), torch.ones(8, 8), torch.ones(2, 1, 16, 16)):  # channels, size, one per sample
        with pytest.raises(ValueError, match="does not broadcast"):
            ps.inpainting((1, 16, 16), mask)
    assert ps.inpainting((1, 16, 16), torch.ones(1, 1, 16, 16)) is not None
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 16, 16))
    y = physics(torch.rand(1, 1, 16, 16))
    for factor in (0.5, -1, float("nan")):
        with pytest.raises(ValueError, match="divergence_factor"):
            ps.solve(physics, y, lambda v, s: v, 0.01, divergence_factor=factor, max_iter=2)


def test_a_finite_kernel_whose_sum_overflows_is_normalised_not_refused():
    kernel = ps.operators.validate_kernel(torch.full((3, 3), 1e308, dtype=torch.float64))
    assert torch.allclose(kernel, torch.full((3, 3), 1 / 9))


def test_a_32_bit_integer_image_file_follows_the_arrays_rule(tmp_path):
    """PIL's mode 'I' (int32 TIFF) gets the bit depth of its values, as an int32 array does in to_tensor."""
    small, large = tmp_path / "small.tif", tmp_path / "large.tif"
    Image.fromarray(np.arange(256, dtype=np.int32).reshape(16, 16), mode="I").save(small)
    Image.fromarray(np.full((4, 4), 250000, dtype=np.int32), mode="I").save(large)
    with pytest.warns(UserWarning, match="8-bit"):
        assert float(ps.load_image(small).max()) == 1
    with pytest.raises(ValueError, match="beyond 16 bits"):
        ps.load_image(large)


def test_per_sample_denoiser_sigmas_must_match_the_batch():
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 16, 16))
    y = physics(torch.rand(2, 1, 16, 16))
    assert ps.solve(physics, y, lambda v, s: v, 0.01, denoiser_sigma=[0.05, 0.1], max_iter=2).iterations == [2, 2]
    for wrong in (torch.tensor([0.05, 0.1, 0.2]), torch.tensor([[0.05], [0.1]])):
        with pytest.raises(ValueError, match="one per sample"):
            ps.solve(physics, y, lambda v, s: v, 0.01, denoiser_sigma=wrong, max_iter=2)


def test_a_denoiser_level_on_the_255_scale_is_refused_as_the_cli_refuses_it():
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 16, 16))
    y = physics(torch.rand(2, 1, 16, 16))
    for wrong in (25, [0.05, 25]):
        with pytest.raises(ValueError, match="exceeds the whole .0, 1. intensity range.*25/255 = 0.09804"):
            ps.solve(physics, y, lambda v, s: v, 0.01, denoiser_sigma=wrong, max_iter=2)
    with pytest.raises(ValueError, match="exceeds the whole"):
        ps.deblur(y, "gaussian:1.0", 0.01, denoiser=lambda v, s: v, denoiser_sigma=25, max_iter=2)


def test_a_16_bit_gray_file_read_as_colour_keeps_its_values(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)
    colour = ps.load_image(path, gray=False)
    assert colour.shape == (1, 3, 8, 8) and torch.allclose(colour, torch.full_like(colour, 32768 / 65535))


def test_solver_arguments_of_the_wrong_type_get_a_value_error():
    """Types that float()/range()/torch.as_tensor refuse or misread give a ValueError that names the argument."""
    y = torch.rand(1, 1, 24, 24)
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 24, 24))
    for noise in (None, [0.01, 0.02], "0.01", True):
        with pytest.raises(ValueError, match="noise_sigma must be"):
            ps.deblur(y, "gaussian:1.0", noise, denoiser=lambda v, s: v, max_iter=2)
    with pytest.raises(ValueError, match="denoiser_sigma must be"):
        ps.deblur(y, "gaussian:1.0", 0.01, denoiser=lambda v, s: v, denoiser_sigma="a", max_iter=2)
    with pytest.raises(ValueError, match="rounds must be a whole number"):
        ps.deblur(y, "gaussian:1.0", 0.01, denoiser="guided", guide=lambda v, s: v, guided_rounds=1.5, max_iter=2)
    with pytest.raises(ValueError, match="whole number"):
        ps.solvers.dpir(physics, y, lambda v, s: v, 0.01, iterations=2.5)
    with pytest.raises(ValueError, match="x0"):
        ps.solvers.dpir(physics, y, lambda v, s: v, 0.01, x0=torch.rand(1, 1, 20, 20))


def test_the_guided_route_reports_a_failed_pilot_and_takes_fista_without_acceleration():
    y = torch.rand(1, 1, 24, 24)
    with pytest.raises(ValueError, match="pilot stopped"):
        ps.deblur(y, "gaussian:1.0", 0.01, boundary="circular", denoiser="guided", guide=lambda v, s: v * float("nan"))
    result = ps.deblur(y, "gaussian:1.0", 0.01, boundary="circular", denoiser="guided", guide=lambda v, s: v,
                       solver="fista", max_iter=2)
    assert result.beta is None and result.estimate.shape == y.shape


def test_a_noise_level_given_on_the_0_255_scale_is_refused_with_its_conversion():
    image = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="25/255"):
        ps.denoise(image, 25, denoiser=lambda v, s: v)
    with pytest.raises(ValueError, match="2.55/255"):
        ps.deblur(image, "gaussian:1.0", 2.55, denoiser=lambda v, s: v, max_iter=2)


def test_noise_levels_are_read_as_float64_cpu_tensors_and_non_numbers_refused():
    """One reading of σ for every entry point (choose_denoiser, outside_training, denoise, guided filters, the
    solvers' σ_d): detached, on the CPU before the float64 cast (MPS has none), same shape."""
    from pnp_stable._validation import float64_levels

    level = torch.tensor([[0.1, 0.2]], dtype=torch.float32, requires_grad=True)
    read = float64_levels(level, "sigma must be a number")
    assert read.dtype == torch.float64 and read.device.type == "cpu" and not read.requires_grad
    assert read.shape == (1, 2) and torch.equal(read, level.detach().double())
    assert float64_levels(0.05, "sigma must be a number").item() == 0.05
    with pytest.raises(ValueError, match=r"sigma must be a number, got 'abc'"):
        float64_levels("abc", "sigma must be a number")
    with pytest.raises(ValueError, match="sigma must be a noise level or one per image"):
        ps.restore.choose_denoiser("auto", 1, [0.1, "x"], "deblur")


def test_a_path_or_an_rgba_array_given_as_the_image_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"is a path .*cam.png.*pnp_stable.load_image"):
        ps.deblur(str(tmp_path / "cam.png"), "gaussian:1.0", 0.01)
    with pytest.raises(ValueError, match=r"is a path .*pnp_stable.load_image"):
        ps.denoise(tmp_path / "cam.png", 0.1)
    with pytest.raises(ValueError, match=r"RGBA image\? drop its alpha channel"):
        ps.deblur(np.zeros((16, 16, 4), dtype=np.uint8), "gaussian:1.0", 0.01, max_iter=2)


def test_restoration_inside_an_autocast_region_is_refused():
    """Under torch.autocast the convolutions run in bfloat16: a certified deblur's β was 'contradicted by 159 monitor
    violations' and a denoise 2e-3 off, silently. Every entry point that certifies or checks refuses it, naming the
    way out; the same calls with autocast disabled run."""
    x = torch.rand(1, 1, 24, 24)
    model = ps.AveragedDenoiser(channels=1, width=4, depth=1).eval()
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 24, 24))
    calls = {"ps.denoise": lambda: ps.denoise(x, 0.1, denoiser=model),
             "ps.deblur": lambda: ps.deblur(x, ps.gaussian_kernel(1.0), 0.01, denoiser=model, max_iter=2),
             "a PnP solve": lambda: ps.solve(physics, physics(x), model, 0.01, max_iter=2),
             "the adversarial Lipschitz search": lambda: ps.denoisers.adversarial_lipschitz(model, (1, 16, 16),
                                                                                            restarts=2, steps=1)}
    for name, call in calls.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            refused = rf"{name} was called inside torch.autocast\('cpu', dtype=torch.bfloat16\).*enabled=False"
            with pytest.raises(RuntimeError, match=refused):
                call()
            with torch.autocast("cpu", enabled=False):
                call()
