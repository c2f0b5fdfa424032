"""The one-line Python entry points ``ps.deblur`` and ``ps.denoise``."""

import dataclasses
import numpy as np
import pytest
import torch
from skimage import data

import pnp_stable as ps
from pnp_stable.solvers.defaults import TUNED


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return {1: ps.AveragedDenoiser(channels=1, width=4, depth=1).eval(),
            3: ps.AveragedDenoiser(channels=3, width=5, depth=1).eval()}


@pytest.mark.parametrize("channels", [1, 3])
def test_deblur_takes_numpy_gray_and_colour_and_returns_a_monitored_result(tiny_models, channels):
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 1, (20, 20) if channels == 1 else (20, 20, 3)).astype(np.float32)
    kernel = ps.gaussian_kernel(1.0)
    op = ps.blur(kernel, img_size=(channels, 20, 20), noise_sigma=0.02, rng=torch.Generator().manual_seed(0))
    y = ps.to_numpy(op(ps.to_tensor(clean)))
    result = ps.deblur(y, "gaussian:1.0", 0.02, denoiser=tiny_models[channels], max_iter=40, reference=clean)
    assert result.estimate.shape == (1, channels, 20, 20)
    assert result.beta is not None and result.violations == [] and len(result.history.psnr) == result.iterations[0]
    assert ps.to_numpy(result.estimate).shape == clean.shape


def test_deblur_accepts_tensors_of_rank_2_3_4_and_array_kernels(tiny_models):
    x = torch.rand(16, 16)
    for y in (x, x[None], x[None, None]):
        result = ps.deblur(y, ps.uniform_kernel(3).numpy(), 0.05, denoiser=tiny_models[1], max_iter=3, tol=0)
        assert result.estimate.shape == (1, 1, 16, 16) and result.iterations == [3]


def test_tuned_defaults_are_used_when_nothing_is_given(tiny_models):
    y = torch.rand(1, 1, 16, 16)
    result = ps.deblur(y, "uniform:3", 0.05, solver="hqs", denoiser=tiny_models[1], max_iter=2)
    defaults = TUNED["hqs"]
    assert result.step == pytest.approx(defaults.step_scale * (defaults.strength * 0.05) ** 2)


def test_denoise_returns_estimate_and_certificate(tiny_models):
    noisy = np.random.default_rng(1).uniform(0, 1, (12, 12, 3))
    result = ps.denoise(noisy, 0.1, denoiser=tiny_models[3])
    assert result.estimate.shape == (1, 3, 12, 12) and result.certificate.alpha is not None
    adaptive = ps.load_denoiser("averaged-sll-gray")  # noise-adaptive: the certificate of D(·, σ), tighter than for all σ
    at_sigma = ps.denoise(noisy[..., 0], 25 / 255, denoiser=adaptive).certificate
    assert at_sigma.alpha == pytest.approx(adaptive.certificate_at(25 / 255).alpha)
    assert at_sigma.alpha < adaptive.certificate.alpha


def test_channel_mismatch_and_bad_inputs_are_explained(tiny_models):
    with pytest.raises(ValueError, match="takes colour images .* but the image is gray"):
        ps.denoise(np.zeros((8, 8)), 0.1, denoiser=tiny_models[3])
    with pytest.raises(ValueError, match="NaN"):
        ps.denoise(np.full((8, 8), np.nan), 0.1, denoiser=tiny_models[1])
    with pytest.raises(ValueError, match="bad kernel spec"):
        ps.deblur(np.zeros((8, 8)), "box:3", 0.1, denoiser=tiny_models[1])
    with pytest.raises(ValueError, match="no shipped denoiser for 2-channel"):
        ps.denoise(np.zeros((8, 8, 2)), 0.1)


def test_ensemble_option_averages_grid_symmetries_and_keeps_the_certificate(tiny_models, tmp_path):
    model = tiny_models[1]
    noisy = torch.rand(1, 1, 10, 14)
    plain = ps.denoise(noisy, 0.1, denoiser=model)
    result = ps.denoise(noisy, 0.1, denoiser=model, ensemble=8)
    with torch.no_grad():
        assert torch.allclose(result.estimate, ps.SelfEnsemble(model, 8)(noisy, 0.1), atol=1e-6)
    assert not torch.allclose(result.estimate, plain.estimate, atol=1e-4)  # the option is not ignored
    assert result.certificate.alpha == plain.certificate.alpha and "grid-symmetry" in result.certificate.method
    y = torch.rand(1, 1, 16, 16)
    solved = ps.deblur(y, "uniform:3", 0.05, denoiser=model, max_iter=3, tol=0, ensemble=2)
    assert solved.beta == ps.deblur(y, "uniform:3", 0.05, denoiser=model, max_iter=3, tol=0).beta
    path = ps.save_denoiser(model, tmp_path / "m.safetensors")
    loaded = ps.load_denoiser(path, ensemble=4)
    assert isinstance(loaded, ps.SelfEnsemble) and loaded.transforms == 4
    assert loaded.certificate.alpha == ps.load_denoiser(path).certificate.alpha
    for bad in (3, 0, True):
        with pytest.raises(ValueError, match="ensemble must be 1, 2, 4 or 8"):
            ps.denoise(noisy, 0.1, denoiser=model, ensemble=bad)
    with pytest.raises(ValueError, match="guide=SelfEnsemble"):
        ps.deblur(y, "uniform:3", 0.05, denoiser="guided", ensemble=2)


def test_denoise_auto_takes_the_network_trained_for_sigma_and_warns_outside_a_models_training():
    import warnings

    x = torch.rand(2, 3, 24, 24)
    chosen = {level: ps.denoise(x[:1], level / 255).denoiser for level in (5, 8, 10, 15, 25, 50)}
    assert chosen == {5: "averaged-sll-lownoise-color", 8: "averaged-sll-lownoise-color", 10: "averaged-sll-color",
                      15: "averaged-sll-color", 25: "averaged-sll-highnoise-color", 50: "averaged-sll-highnoise-color"}
    for level in (8 / 255, 15 / 255):  # a level on a boundary belongs to the range below, however it is given
        below = ps.denoise(x[:1], level).denoiser
        for given in (torch.tensor(level), torch.tensor([level]), torch.tensor(level, dtype=torch.float64),
                      np.float32(level), torch.tensor([level, level])):
            assert ps.denoise(x if given.ndim and len(given) == 2 else x[:1], given).denoiser == below
    mixed = ps.denoise(x, [5 / 255, 25 / 255])
    assert mixed.denoiser == "NoiseLevelSwitch(averaged-sll-lownoise-color, averaged-sll-highnoise-color)"
    alone = torch.cat([ps.denoise(x[:1], 5 / 255).estimate, ps.denoise(x[1:], 25 / 255).estimate])
    assert torch.allclose(mixed.estimate, alone, atol=1e-5) and mixed.certificate.guaranteed
    gray = {level: ps.denoise(x[:1, :1], level / 255).denoiser for level in (5, 9, 10, 17, 25)}
    assert gray == {5: "averaged-sll-lownoise-gray", 9: "averaged-sll-lownoise-gray", 10: "averaged-sll-pnp-gray",
                    17: "averaged-sll-pnp-gray", 25: "averaged-sll-gray"}
    with pytest.warns(UserWarning, match=r"sigma = 50/255 is outside the noise levels denoiser 'averaged-color' was "
                                         r"last trained on \(\[0, 25\]/255\).*; denoiser='auto' takes "
                                         r"averaged-sll-highnoise-color, trained for it$"):
        ps.denoise(x[:1], 50 / 255, denoiser="averaged-color")
    for call in (lambda: ps.denoise(x[:1], 60 / 255), lambda: ps.denoise(x[:1, :1], 60 / 255, denoiser="averaged-gray")):
        with pytest.warns(UserWarning, match="60/255 is outside") as caught:
            call()
        assert not any("auto" in str(w.message) for w in caught)  # 'auto' has nothing trained for 60/255 either
    with pytest.warns(UserWarning, match=r"^denoiser_sigma = 36.06/255 is outside the noise levels denoiser "
                                         r"'averaged-color' was last trained on"):
        ps.deblur(x[:1], "gaussian:1.0", 0.1, denoiser="averaged-color", max_iter=2)  # FB's σ_d = 1.414·σ_n
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps.denoise(x[:1], 50 / 255)
        ps.denoise(x[:1], 25 / 255, denoiser="averaged-color")
        ps.deblur(x[:1], "gaussian:1.0", 0.05, max_iter=2)
        ps.deblur(x[:1], "gaussian:1.0", 0.1, max_iter=2)  # 'auto' takes a network trained for σ_d = 36/255


def test_deblur_auto_takes_the_network_for_the_level_the_solver_calls_it_at():
    from pnp_stable.restore import DEBLURRING_DEFAULTS

    x = torch.rand(2, 3, 20, 20)

    def label(result):
        note = result.notes[0]
        assert note.startswith("denoiser ") and " at σ_d = " in note, note
        return note[len("denoiser "):note.index(" at σ_d")]

    for channels in (1, 3):
        levels, names = DEBLURRING_DEFAULTS[channels]
        image = x[:1, :channels]
        for solver in ("fb", "hqs"):
            strength = TUNED[solver].strength
            # σ_d on each range's upper end (it belongs to that range) and just above; 0.15 in the top range
            cases = [(level, names[k]) for k, level in enumerate(levels)] + [(0.15, names[-1])]
            cases += [(level * 1.01, names[k + 1]) for k, level in enumerate(levels)]
            for level, expected in cases:
                result = ps.deblur(image, "gaussian:1.0", level / strength, solver=solver, max_iter=1)
                assert label(result) == expected, (channels, solver, level * 255)
                given = ps.deblur(image, "gaussian:1.0", 0.01, solver=solver, denoiser_sigma=level, max_iter=1)
                assert label(given) == expected and label(given) == label(ps.deblur(
                    image, "gaussian:1.0", 0.01, solver=solver, denoiser_sigma=torch.tensor([level]), max_iter=1))
    levels, names = DEBLURRING_DEFAULTS[3]
    assert label(ps.deblur(x[:1], "gaussian:1.0", 0.05, denoiser="averaged-color", max_iter=1)) == "averaged-color"
    both = (levels[0] / 2, levels[-1] * 2)  # one image in the lowest range, one in the highest
    mixed = ps.deblur(x, "gaussian:1.0", 0.01, denoiser_sigma=torch.tensor(both), max_iter=3, tol=0, accelerate=False)
    assert label(mixed) == f"NoiseLevelSwitch({names[0]}, {names[-1]})"
    alone = [ps.deblur(x[b:b + 1], "gaussian:1.0", 0.01, denoiser_sigma=both[b], max_iter=3, tol=0, accelerate=False)
             for b in range(2)]
    assert torch.allclose(mixed.estimate, torch.cat([r.estimate for r in alone]), atol=1e-5)
    assert mixed.beta == pytest.approx(max(r.beta for r in alone))  # certified as its worst member
    for solver, options in (("hqs", {}), ("drs", {}), ("fb", dict(tile=12, overlap=2))):  # any form of per-sample σ_d
        for given in (list(both), np.array(both), torch.tensor(both)):
            result = ps.deblur(x, "gaussian:1.0", 0.01, solver=solver, denoiser_sigma=given, max_iter=1, **options)
            assert label(result) == f"NoiseLevelSwitch({names[0]}, {names[-1]})"
        one = ps.deblur(x, "gaussian:1.0", 0.01, solver=solver, denoiser_sigma=[both[0]], max_iter=1, **options)
        assert label(one) == names[0]  # one level for the whole batch
    with pytest.raises(ValueError, match="denoiser_sigma must be finite and > 0"):
        ps.deblur(x[:1], "gaussian:1.0", 0.01, denoiser_sigma=-1.0)
    from pnp_stable.restore import DEFAULT_DENOISERS, choose_denoiser

    assert choose_denoiser("auto", 3, None, "deblur") == (DEFAULT_DENOISERS[3], DEFAULT_DENOISERS[3])
    for bad in (float("nan"), -1.0, torch.tensor([])):
        with pytest.raises(ValueError, match="sigma must be finite noise levels"):
            choose_denoiser("auto", 3, bad, "deblur")


def test_deblur_says_how_to_restore_images_of_different_noise_levels():
    for levels in ([0.01, 0.02], torch.tensor([0.01, 0.02])):
        with pytest.raises(ValueError, match="one number for the whole batch .* one call each"):
            ps.deblur(torch.rand(2, 1, 16, 16), "gaussian:1", levels)


def test_denoise_refuses_to_return_nan_from_a_broken_denoiser():
    with pytest.raises(ValueError, match="returned NaN or Inf"):
        ps.denoise(np.full((8, 8), 0.5), 0.1, denoiser=lambda x, sigma: x * float("nan"))
    with pytest.raises(ValueError, match=r"returned \(1, 1, 4, 4\) for an input tensor of shape \(1, 1, 8, 8\)"):
        ps.denoise(np.full((8, 8), 0.5), 0.1, denoiser=lambda x, sigma: x[..., :4, :4])  # was returned silently
    with pytest.raises(ValueError, match="returned ndarray"):
        ps.denoise(np.full((8, 8), 0.5), 0.1, denoiser=lambda x, sigma: x.numpy())


def test_defaults_table_matches_the_recorded_tuning_run():
    import json
    import re
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    chosen = {}
    for name in ("tuning.md", "tuning-fb.md"):  # the FB run (denoiser weight search) supersedes FB's row of the first
        text = (results / name).read_text()
        chosen.update(json.loads(re.search(r"```json\n(.*?)```", text, flags=re.S).group(1)))
    assert set(chosen) == {"fb", "hqs", "drs", "admm"}
    for solver, values in chosen.items():
        recorded = (values["strength"], values["step_scale"], values.get("denoiser_weight", 1.0), values["max_iter"])
        assert (TUNED[solver].strength, TUNED[solver].step_scale, TUNED[solver].denoiser_weight, TUNED[solver].max_iter) == recorded, solver
    # FISTA keeps its own τ = 1/L and, having momentum instead of an averaged map, no Anderson acceleration
    assert TUNED["fista"] == dataclasses.replace(TUNED["fb"], step_scale=1.0, accelerate=False)


def test_demo_writes_its_grid_and_plots(tmp_path):
    from pnp_stable.demo import run_demo

    lines = []
    cases = run_demo(tmp_path, iterations=2, echo=lines.append)
    assert [c.name for c in cases] == ["camera", "astronaut"]
    assert cases[0].clean.shape[1] == 1 and cases[1].clean.shape[1] == 3
    assert {p.name for p in tmp_path.iterdir()} == {"grid.png", "residuals_camera.png", "residuals_astronaut.png"}
    assert any("certified β" in line for line in lines) and any("monitor: no violations" in line for line in lines)


def _real_boundary_blur(size: int = 48, kernel_spec: str = "motion:0:9"):
    """A real photo's blur: a larger scene blurred, its 'valid' part kept (scikit-image's camera, a textured crop)."""
    from skimage import data

    kernel = ps.kernel_from_spec(kernel_spec)
    h = kernel.shape[0]
    scene = ps.to_tensor(data.camera())[:, :, 100 : 100 + size + h - 1, 200 : 200 + size + h - 1]
    y = ps.blur(kernel, boundary="valid", noise_sigma=0.01, rng=torch.Generator().manual_seed(0))(scene)
    return y, kernel, scene[:, :, h // 2 : h // 2 + size, h // 2 : h // 2 + size]


def test_valid_boundary_restores_y_frame_from_a_replicated_start_without_edge_ringing():
    y, kernel, truth = _real_boundary_blur()
    band = torch.ones(48, 48, dtype=torch.bool)
    band[8:-8, 8:-8] = False

    def band_gain(estimate):
        return float(10 * torch.log10(((y - truth)[..., band] ** 2).mean() / ((estimate - truth)[..., band] ** 2).mean()))

    valid = ps.deblur(y, kernel, 0.01, boundary="valid", max_iter=40, reference=truth)
    circular = ps.deblur(y, kernel, 0.01, boundary="circular", max_iter=40)
    assert valid.estimate.shape == y.shape and valid.governing.shape == (1, 1, 56, 56)
    assert valid.beta is not None and valid.violations == [] and len(valid.history.psnr) == 40
    assert float(ps.psnr(valid.estimate, truth)[0]) > float(ps.psnr(y, truth)[0]) + 2  # 40 iterations; +3 dB: boundary.md
    assert band_gain(valid.estimate) > 3 and band_gain(circular.estimate) < 0  # circular rings along the edges


def test_the_cli_assumes_a_valid_boundary_for_a_photo_and_circular_for_a_simulation(tmp_path, capsys):
    from pnp_stable import cli

    y, _, _ = _real_boundary_blur(size=24, kernel_spec="motion:0:5")
    ps.save_image(y.clamp(0, 1), tmp_path / "photo.png")
    assert cli.main(["deblur", str(tmp_path / "photo.png"), "--kernel", "motion:0:5", "--noise", "0.01", "--iters", "3",
                     "--out", str(tmp_path / "out.png")]) == 0
    assert "boundary model: valid" in capsys.readouterr().out
    assert ps.load_image(tmp_path / "out.png").shape == (1, 1, 24, 24)
    assert cli.main(["deblur", str(tmp_path / "photo.png"), "--simulate", "--kernel", "motion:0:5", "--noise", "0.01",
                     "--iters", "3", "--out", str(tmp_path / "sim.png")]) == 0
    assert "boundary model: circular" in capsys.readouterr().out


def test_valid_frame_follows_deepinv_for_even_kernels():
    """deepinv flips the kernel: a 4×4 kernel whose one tap sits at (2, 2) is the identity, so the 'valid'
    estimate must match y without the one-pixel shift an h//2 frame gave."""
    y = torch.zeros(1, 1, 40, 40)
    y[..., 10:30, 10:30] = 1
    kernel = np.zeros((4, 4))
    kernel[2, 2] = 1
    estimate = ps.deblur(y, kernel, 0.01, max_iter=30).estimate
    assert float((estimate - y).abs().max()) < 0.05
    assert ps.restore.valid_frame((4, 6), (1, 1, 40, 40)) == (slice(1, 41), slice(2, 42))


def test_guided_refuses_a_start_and_valid_crops_every_round(tiny_models):
    y = torch.rand(1, 1, 24, 24)
    with pytest.raises(ValueError, match="x0="):
        ps.deblur(y, "gaussian:1.0", 0.01, denoiser="guided", guide=tiny_models[1], x0=y)
    result = ps.deblur(y, "gaussian:1.0", 0.01, denoiser="guided", guide=tiny_models[1], guided_rounds=2, max_iter=3)
    assert [r.estimate.shape for r in [*result.earlier_rounds, result]] == [y.shape, y.shape]


def test_a_deepinv_denoiser_for_other_channels_is_refused_before_the_run():
    import deepinv as dinv

    gray = ps.to_tensor(data.camera()[::8, ::8])
    colour_net = dinv.models.DnCNN(in_channels=3, out_channels=3, pretrained=None)
    with pytest.raises(ValueError, match="takes colour images"):
        ps.deblur(gray, ps.gaussian_kernel(1.0), 0.01, denoiser=colour_net, max_iter=2)
    with pytest.raises(ValueError, match="takes colour images"):
        ps.denoise(gray, 0.1, denoiser=colour_net)


def test_an_image_tensor_in_channels_last_layout_is_refused_with_the_fix():
    hwc = torch.from_numpy(data.astronaut()[::8, ::8].copy())
    with pytest.raises(ValueError, match=r"permute\(2, 0, 1\)"):
        ps.denoise(hwc, 0.1)


def test_a_module_or_function_of_x_alone_is_a_denoiser_without_a_certificate():
    """A plain nn.Sequential (forward(x)) and a function of x are called without sigma, in eval mode, uncertified."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 3, padding=1))
    net.train()
    y = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        expected = net.eval()(y)
    net.train()
    out = ps.denoise(y, 0.05, denoiser=net)
    assert torch.allclose(out.estimate, expected) and out.certificate.alpha is None
    assert net.training  # the caller's mode comes back
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 24, 24))
    for denoiser in (net, lambda x: 0.9 * x):
        result = ps.solve(physics, physics(y), denoiser, 0.01, max_iter=3)
        assert result.iterations == [3] and result.beta is None
