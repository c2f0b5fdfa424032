"""Frozen-guide linear denoisers: symmetric, spectrum in [0, 1], firmly non-expansive, usable everywhere."""

import deepinv as dinv
import pytest
import torch

import pnp_stable as ps
from pnp_stable.denoisers import GuidedDenoiser, adversarial_lipschitz, natural_starts
from pnp_stable.denoisers.guided import partition_patches

SMALL = {"bm3d": dict(patch=4, tile=8, group=4, shifts=2), "nlm": dict(search=3, radius=1, strength=2.0),
         "bm3d-stride": dict(patch=4, tile=8, group=4, shifts=3, stride=2),
         "bm3d-sizes": dict(patch=(2, 4), tile=8, group=4, shifts=2)}
SIGMA = 0.1


def _denoiser(construction, channels=1, size=20, batch=1, seed=4):
    guide = natural_starts(batch, (channels, size, size), noise=0.05, seed=seed).double()
    return GuidedDenoiser(guide, construction.split("-")[0], **SMALL[construction])


def _power(apply, x, iterations=300):
    """Largest eigenvalue of a symmetric PSD map by power iteration (a lower estimate that converges)."""
    for _ in range(iterations):
        x = apply(x)
        x = x / x.norm()
    return float((x * apply(x)).sum())


@pytest.mark.parametrize("construction", ["bm3d", "bm3d-stride", "bm3d-sizes", "nlm"])
@pytest.mark.parametrize("channels", [1, 3])
def test_filter_is_symmetric_with_spectrum_in_zero_one(construction, channels):
    D = _denoiser(construction, channels)
    W = lambda v: D(v, SIGMA)  # noqa: E731
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.randn(D.guide.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    assert abs(float((W(x) * y).sum() - (x * W(y)).sum())) < 1e-10 * x.norm() * y.norm()
    start = torch.rand(D.guide.shape, generator=gen, dtype=torch.float64)
    top = _power(W, start)  # λ_max(W) ≤ 1
    bottom = 1 - _power(lambda v: v - W(v), start)  # λ_min(W) = 1 − λ_max(I − W) ≥ 0
    assert 0.5 < top <= 1 + 1e-9
    assert -1e-9 <= bottom < 0.5
    assert D.certificate.alpha == 0.5 and D.certificate.guaranteed


@pytest.mark.parametrize("construction", ["bm3d", "bm3d-sizes", "nlm"])
def test_adversarial_search_never_beats_firm_nonexpansiveness(construction):
    restarts = 4
    guide = natural_starts(restarts, (3, 16, 16), noise=0.05, seed=4)
    D = GuidedDenoiser(guide, construction.split("-")[0], **SMALL[construction])
    found = adversarial_lipschitz(D, (3, 16, 16), SIGMA, alpha=0.5, restarts=restarts, steps=40)
    assert found.ratio <= 1 + 1e-4  # N = 2W − I is non-expansive


def test_several_patch_sizes_average_the_single_size_filters():
    guide = natural_starts(1, (3, 16, 16), noise=0.05, seed=2).double()
    options = dict(tile=8, group=4, shifts=2)
    x = torch.rand(guide.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    both = GuidedDenoiser(guide, "bm3d", patch=(2, 4), **options)(x, SIGMA)
    single = [GuidedDenoiser(guide, "bm3d", patch=size, **options)(x, SIGMA) for size in (2, 4)]
    assert torch.allclose(both, (single[0] + single[1]) / 2, atol=1e-12)


def test_partition_puts_every_patch_position_in_exactly_one_group():
    luminance = natural_starts(1, (1, 20, 28), noise=0.05)[0, 0]
    groups = partition_patches(luminance, patch=4, tile=8, group=4, shift=(3, 5))
    assert {tuple(g.shape[1:]) for g in groups} == {(4,), (1,)}  # full tiles and the leftover strips
    assert torch.sort(torch.cat([g.flatten() for g in groups])).values.equal(torch.arange(20 * 28))


def test_linearised_bm3d_denoises_and_tends_to_identity_at_zero_noise():
    clean = natural_starts(1, (1, 32, 32), noise=0.0, seed=2).double()
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    D = GuidedDenoiser(clean, "bm3d", patch=4, tile=8, group=4)  # oracle guide: the Wiener filter of BM3D's second stage
    assert ps.psnr(D(noisy, 0.1), clean) > ps.psnr(noisy, clean) + 5
    assert torch.allclose(D(noisy, 1e-9), noisy, atol=1e-6)


def test_balanced_kernel_filter_keeps_flat_images_and_denoises():
    clean = natural_starts(1, (1, 32, 32), noise=0.0, seed=2).double()
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    D = GuidedDenoiser(clean, "nlm", search=3, radius=1)  # oracle guide
    ones = torch.ones_like(clean)
    assert torch.allclose(D(ones, 0.1), ones, atol=1e-5)  # S1 = 1: balancing keeps the mean of flat regions
    assert ps.psnr(D(noisy, 0.1), clean) > ps.psnr(noisy, clean) + 5
    assert torch.allclose(D(noisy, 1e-9), noisy, atol=1e-6)


def test_kernel_filter_is_certified_before_its_balancing_converges(monkeypatch):
    from pnp_stable.denoisers.guided import SymmetricKernelFilter
    monkeypatch.setattr(SymmetricKernelFilter, "BALANCE_STEPS", 1)  # rows far from 1: only the rescaling bounds S
    D = _denoiser("nlm", channels=1, size=20)
    start = torch.rand(D.guide.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ones = torch.ones_like(start)
    assert (D(ones, SIGMA) - ones).abs().max() > 1e-3  # unbalanced indeed
    assert _power(lambda v: D(v, SIGMA), start) <= 1 + 1e-9
    assert 1 - _power(lambda v: v - D(v, SIGMA), start) >= -1e-9


def test_guided_filter_runs_in_our_solvers_with_a_certificate_and_no_violations():
    x = natural_starts(1, (1, 24, 24), noise=0.0, seed=3)
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 24, 24))
    y = physics(x) + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    D = GuidedDenoiser(x, "bm3d", **SMALL["bm3d"])
    for solver in ("fb", "hqs", "drs"):
        result = ps.solve(physics, y, D, 0.01, solver=solver, max_iter=60)
        assert result.beta is not None and not result.violations, (solver, result.summary())


def test_guided_filter_runs_inside_deepinv_optimiser():
    x = natural_starts(1, (1, 16, 16), noise=0.0, seed=4)
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 16, 16), noise_sigma=0.01)
    D = GuidedDenoiser(x, "bm3d", **SMALL["bm3d"])
    solver = dinv.optim.PGD(prior=dinv.optim.PnP(denoiser=D), data_fidelity=dinv.optim.L2(), stepsize=1.0,
                            sigma_denoiser=0.05, max_iter=5)
    with torch.no_grad():
        estimate = solver(physics(x), physics)
    assert estimate.shape == x.shape and torch.isfinite(estimate).all()


def test_bad_inputs_are_refused_clearly():
    D = _denoiser("bm3d")
    with pytest.raises(ValueError, match="guide's"):
        D(torch.rand(1, 1, 24, 24), SIGMA)
    with pytest.raises(ValueError, match="channel"):
        D(torch.rand(1, 3, 20, 20), SIGMA)
    with pytest.raises(ValueError, match="sigma"):
        D(torch.rand(1, 1, 20, 20), -1.0)
    with pytest.raises(ValueError, match="unknown guided construction"):
        GuidedDenoiser(torch.rand(1, 1, 20, 20), "wavelet")
    with pytest.raises(ValueError, match="smaller than"):
        GuidedDenoiser(torch.rand(1, 1, 3, 3), "bm3d")  # the default patch is 4×4
    with pytest.raises(ValueError, match="stride 2 must divide"):
        GuidedDenoiser(torch.rand(1, 1, 21, 20), "bm3d", patch=4, stride=2)
    with pytest.raises(ValueError, match=r"every patch size \(patch=\(4, 0\)\) must be a whole number"):
        GuidedDenoiser(torch.rand(1, 1, 16, 16), "bm3d", patch=(4, 0))
    with pytest.raises(ValueError, match="NaN"):
        GuidedDenoiser(torch.full((1, 1, 20, 20), float("nan")), "bm3d")


class _Smoother:
    """A stand-in guide denoiser (no certificate needed): a 3×3 box blur."""

    def __call__(self, x, sigma):
        return torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def test_dpir_schedule_decreases_sigma_geometrically_and_carries_no_guarantee():
    from pnp_stable.solvers import dpir
    from pnp_stable.solvers.schedule import DecreasingSchedule
    from pnp_stable.operators import L2Fidelity

    x = natural_starts(1, (1, 24, 24), noise=0.0, seed=4)
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 24, 24))
    y = physics(x)
    schedule = DecreasingSchedule(L2Fidelity(physics, y, 0.01), _Smoother(), 0.01, iterations=8)
    assert schedule.sigmas[0] == pytest.approx(49 / 255) and schedule.sigmas[-1] == pytest.approx(0.01)
    ratios = [b / a for a, b in zip(schedule.sigmas, schedule.sigmas[1:])]
    assert max(ratios) == pytest.approx(min(ratios))
    result = dpir(physics, y, _Smoother(), 0.01)
    assert result.beta is None and "no guarantee" in result.beta_basis and result.iterations == [8]


def test_guided_deblur_certifies_every_round_for_its_frozen_guide_in_a_batch():
    x = torch.cat([natural_starts(1, (1, 24, 24), noise=0.0, seed=s) for s in (2, 4)])
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 24, 24))
    y = physics(x) + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    result = ps.deblur(y, "gaussian:1.0", 0.01, denoiser="guided", guide=_Smoother(), guided_rounds=2, max_iter=80, tol=1e-4)
    rounds = result.earlier_rounds + [result]
    assert len(rounds) == 2
    for round_ in rounds:
        assert round_.beta == 0.5 and round_.violations == [] and round_.solver == "drs"
    assert any("certified for its frozen guide" in note for note in result.notes)
    assert (ps.psnr(result.estimate, x) > ps.psnr(physics.A_adjoint(y), x)).all()
    fista = ps.deblur(y, "gaussian:1.0", 0.01, denoiser="guided", guide=_Smoother(), solver="fista", max_iter=5)
    assert fista.beta is None and not any("certified for its frozen guide" in note for note in fista.notes)
    assert any(note.startswith("round 1/") and "not certified (solver fista)" in note for note in fista.notes)


def test_guided_deblur_refuses_options_it_sets_itself():
    y = torch.rand(1, 1, 24, 24)
    with pytest.raises(ValueError, match="guided"):
        ps.deblur(y, "gaussian:1.0", 0.01, denoiser="guided", guide=_Smoother(), step=1.0)
    with pytest.raises(ValueError, match="rounds"):
        ps.deblur(y, "gaussian:1.0", 0.01, denoiser="guided", guide=_Smoother(), guided_rounds=0)


@pytest.mark.parametrize("size, stride", [(24, 2), (23, 1)])
def test_guided_deblur_uses_the_default_lattice_stride_only_where_it_divides_the_image(size, stride, monkeypatch):
    from pnp_stable.denoisers import guided

    built = []
    original = guided.LinearisedBM3D.__init__

    def spy(self, guide, **options):
        built.append(options.get("stride"))
        original(self, guide, **options)

    monkeypatch.setattr(guided.LinearisedBM3D, "__init__", spy)
    monkeypatch.setitem(ps.solvers.guided.GUIDED_DEFAULTS, "model", ps.solvers.guided.GuidedDefaults(stride=2))
    x = natural_starts(1, (1, size, size), noise=0.0, seed=2)
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, size, size))
    result = ps.solvers.guided_solve(physics, physics(x), _Smoother(), 0.01, max_iter=20, tol=1e-4, patch=4, tile=8, group=4)
    assert set(built) == {stride} and result.violations == []


def test_linearised_bm3d_refuses_guides_and_options_it_cannot_build_from():
    for guide, options, message in ((torch.rand(1, 2, 16, 16), {}, "3-channel"), (torch.rand(1, 1, 16, 16),
                                                                                   {"shifts": 0}, "shifts")):
        with pytest.raises(ValueError, match=message):
            ps.denoisers.GuidedDenoiser(guide, **options)

    for options, message in (({"stride": 0}, "stride must be a whole number"), ({"tile": 0}, "tile must be"),
                             ({"group": 0}, "group must be"), ({"stride": 2.0}, "stride must be")):
        with pytest.raises(ValueError, match=message):
            ps.denoisers.GuidedDenoiser(torch.rand(1, 1, 16, 16), **options)
    for options, message in (({"strength": float("nan")}, "strength must be finite"), ({"strength": -1.0}, "strength"),
                             ({"search": 0}, "search must be"), ({"radius": -1}, "radius must be")):
        with pytest.raises(ValueError, match=message):
            ps.denoisers.GuidedDenoiser(torch.rand(1, 1, 16, 16), "nlm", **options)


@pytest.mark.parametrize("size, options", [(4, {"stride": 2}), (6, {"stride": 2}), (32, {"tile": 4, "stride": 2}),
                                           (32, {"tile": 2}), (32, {"group": 32, "tile": 4})])
def test_tiles_too_small_for_one_group_leave_groups_of_one(size, options):
    """A tile with fewer patch positions than a group has only singletons (it crashed the partition)."""
    guide = natural_starts(1, (3 if size == 6 else 1, size, size), noise=0.0, seed=1)
    denoiser = GuidedDenoiser(guide, **options)
    x = guide + 0.05 * torch.randn(guide.shape, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(denoiser(x, 0.05)).all()


def test_the_kernel_filter_weighs_every_pair_inside_the_image():
    """Pairs within the patch radius of the bottom or right edge kept a NaN distance (weight 0): a flat guide,
    whose every pair is at distance 0, showed 5,250 of 17,850 dropped on 20×20."""
    from pnp_stable.denoisers.guided import SymmetricKernelFilter

    height = width = 20
    kernel = SymmetricKernelFilter(torch.full((1, height, width), 0.5), search=5, radius=3)
    inside = sum((height - dy) * (width - abs(dx)) for dy, dx in kernel.offsets)
    assert int(torch.isfinite(kernel.distance).sum()) == inside and float(kernel.distance.nan_to_num().abs().max()) == 0


def test_bm3d_refuses_images_its_package_cannot_take():
    pytest.importorskip("bm3d")
    from pnp_stable.denoisers.baselines import BM3DDenoiser

    with pytest.raises(ValueError, match="at least 9×9 pixels, got 8×8"):  # the package crashes the process on 8×8
        BM3DDenoiser()(torch.rand(1, 1, 8, 8), 0.1)


def test_a_guide_that_changes_shape_or_precision_is_named_in_the_pilot():
    x = natural_starts(1, (1, 24, 24), noise=0.0, seed=2)
    y = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 24, 24))(x)
    for guide, message in ((lambda v, s: v.double(), "returned torch.float64"), (lambda v, s: v[..., :-1], "same shape")):
        with pytest.raises(ValueError, match=message):
            ps.deblur(y, "gaussian:1.0", 0.01, denoiser="guided", guide=guide, max_iter=5)


def test_the_guide_cannot_change_under_its_filters():
    """The filters are built from the guide once: the guide is no buffer (load_state_dict of another guided
    denoiser changed `guide` but not the filter, 0.11 off a fresh W(g2)) and `guide` is a copy (an in-place edit did
    the same); the output stays W(g1)."""
    first, second = _denoiser("bm3d", seed=4), _denoiser("bm3d", seed=5)
    x = natural_starts(1, (1, 20, 20), seed=9)
    before = first(x, 0.1)
    guide = first.guide
    first.load_state_dict(second.state_dict())
    first.guide.copy_(second.guide)
    assert torch.equal(first.guide, guide) and torch.equal(first(x, 0.1), before)


def test_one_guide_filters_every_image_of_a_batch_and_the_certificate_check_runs():
    """A single guide's W applies to each image of a batch (the block-diagonal operator, certified alike), so the
    certificate check's batched search runs on a guided denoiser with its defaults (it refused the batch of 4)."""
    denoiser = _denoiser("nlm")
    x = natural_starts(3, (1, 20, 20), seed=9)
    batched = denoiser(x, 0.1)
    assert torch.allclose(batched, torch.cat([denoiser(image[None], 0.1) for image in x]), atol=1e-6)
    assert denoiser.subset(torch.tensor([2])) is denoiser
    check = ps.denoisers.check_certificate(denoiser, (1, 20, 20), sigma=0.1, steps=5)
    assert check.holds
    with pytest.raises(ValueError, match="one guide per image or one for all"):
        _denoiser("nlm", batch=2)(x, 0.1)


def test_a_guide_whose_filter_overflows_is_refused_not_returned_as_nan():
    guide = torch.full((1, 1, 20, 20), 1e20)
    guide[..., ::2, :] = -1e20
    denoiser = GuidedDenoiser(guide, "bm3d", **SMALL["bm3d"])
    with pytest.raises(ValueError, match="NaN or Inf for a finite input.*give a guide on the \\[0, 1\\] scale"):
        denoiser(natural_starts(1, (1, 20, 20), seed=9), 1e-3)
