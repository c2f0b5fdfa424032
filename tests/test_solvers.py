import math

import deepinv as dinv
import numpy as np
import pytest
import torch

import pnp_stable as ps
from pnp_stable.denoisers import AveragedDenoiser, DnCNNBaseline, natural_starts
from pnp_stable.operators import L2Fidelity
from pnp_stable.solvers import SCHEMES, default_step
from pnp_stable.solvers.schemes import _weighted_certificate
from pnp_stable.theory import Certificate, compose_averagedness

SIZE = 24


def _problem(channels=1, batch=1, noise=0.02, boundary="circular", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = natural_starts(batch, (channels, SIZE, SIZE), noise=0.0, seed=seed)
    op = ps.blur(ps.gaussian_kernel(1.2), boundary=boundary, img_size=(channels, SIZE, SIZE))
    y = op.A(x) + noise * torch.randn(op.A(x).shape, generator=g)
    return op, x, y


class SoftThreshold:
    """prox of λ‖·‖₁ around 0.5: firmly non-expansive in closed form."""

    certificate = Certificate(lipschitz=1.0, alpha=0.5, method="prox of a convex function (exact)")

    def __call__(self, x, sigma):
        c = x - 0.5
        return 0.5 + torch.sign(c) * torch.clamp(c.abs() - float(sigma), min=0)


class Expansive:
    """1.2 × an orthogonal map (a circular shift), claiming a certificate it does not deserve."""

    certificate = Certificate(lipschitz=1.0, alpha=0.5, method="a false claim, to test the monitor")

    def __call__(self, x, sigma):
        return 1.2 * torch.roll(x, shifts=1, dims=-1)


@pytest.fixture(scope="module")
def certified():
    torch.manual_seed(0)
    return AveragedDenoiser(channels=1, width=6, depth=2).eval()


@pytest.mark.parametrize("solver", ["fb", "hqs", "drs", "admm"])
@pytest.mark.parametrize("which", ["network", "soft-threshold"])
def test_certified_runs_have_no_violations(solver, which, certified):
    op, x, y = _problem()
    denoiser = certified if which == "network" else SoftThreshold()
    result = ps.solve(op, y, denoiser, 0.02, solver=solver, max_iter=300, tol=0.0, reference=x)
    assert result.beta is not None and 0 < result.beta < 1
    assert result.status == ["max-iterations"] and result.iterations == [300]
    assert result.violations == [], result.verdict
    assert result.verdict.startswith("no violations")
    r = result.history.residual_matrix()[:, 0]
    assert len(r) == 300
    slack = ps.solvers.FLOAT_SLACK * result.governing.norm().item()
    assert bool((r[1:] <= r[:-1] + slack).all())  # monotone up to float32 rounding
    assert len(result.history.psnr) == 300


def test_relaxed_iteration_is_monitored_with_lambda_beta(certified):
    op, x, y = _problem()
    tau = 1 / L2Fidelity(op, y, 0.02).lipschitz  # gradient step 1/2-averaged, so β leaves room for λ > 1
    plain = ps.solve(op, y, certified, 0.02, solver="fb", step=tau, max_iter=5)
    relaxed = ps.solve(op, y, certified, 0.02, solver="fb", step=tau, relaxation=1.2, max_iter=200, tol=0.0)
    assert relaxed.beta == pytest.approx(1.2 * plain.beta)
    assert relaxed.violations == []
    with pytest.raises(ValueError, match="1/β"):
        ps.solve(op, y, certified, 0.02, solver="fb", step=tau, relaxation=1 / plain.beta + 0.01)
    unsafe = ps.solve(op, y, certified, 0.02, solver="fb", step=tau, relaxation=1 / plain.beta + 0.01, max_iter=3,
                      allow_unsafe_step=True)
    assert unsafe.beta is None and "not averaged" in unsafe.beta_basis
    uncertified = lambda x, sigma: x  # noqa: E731  (no certificate: the iteration has no β)
    assert ps.solve(op, y, uncertified, 0.02, solver="fb", step=tau, relaxation=0.8, max_iter=2).beta is None
    with pytest.raises(ValueError, match="λ = 1.2 > 1 over-relaxes an iteration that has no averagedness β"):
        ps.solve(op, y, uncertified, 0.02, solver="fb", step=tau, relaxation=1.2)
    assert ps.solve(op, y, uncertified, 0.02, solver="fb", step=tau, relaxation=1.2, max_iter=2,
                    allow_unsafe_step=True).beta is None
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="relaxation λ must be finite and > 0"):
            ps.solve(op, y, certified, 0.02, solver="fb", step=tau, relaxation=bad)


def test_expansive_map_is_reported_and_stopped_without_nans():
    op, x, y = _problem()
    result = ps.solve(op, y, Expansive(), 0.02, solver="fb", denoiser_weight=1.0, max_iter=200)
    assert result.violations, "an expansive map must violate the claimed certificate"
    assert any(v.check == "monotone residual" and v.size > 0.05 for v in result.violations)
    assert "violations" in result.verdict
    assert f"CONTRADICTED by {len(result.violations)} monitor violations" in result.summary().splitlines()[0]
    assert result.status == ["diverged"]
    assert torch.isfinite(result.estimate).all() and torch.isfinite(result.governing).all()


class SettlesThenBlowsUp:
    """An uncertified denoiser that halves its input for its first 25 calls, then amplifies it 1.5 × per call."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        return (0.5 if self.calls <= 25 else 1.5) * x


def test_a_run_that_settles_and_then_blows_up_is_stopped_as_diverged():
    """Divergence counts from the smallest residual so far: here the residual first falls and then grows 1e4-fold
    from its minimum while staying below 1e4 × its first value, which the old test (against r₀) let run on to
    'max-iterations'; the estimate returned is the best one."""
    op, x, y = _problem()
    result = ps.solve(op, y, SettlesThenBlowsUp(), 0.02, solver="fb", denoiser_weight=1.0, max_iter=80, tol=0.0)
    residuals = result.history.residual_matrix()[:, 0].double()
    assert result.status == ["diverged"] and result.iterations[0] < 80
    assert residuals[-1] > 1e4 * residuals.min() and residuals.max() < 1e4 * residuals[0]


def test_uncertified_dncnn_runs_with_monotonicity_check_only():
    torch.manual_seed(0)
    op, x, y = _problem()
    result = ps.solve(op, y, DnCNNBaseline(channels=1, depth=4, width=8), 0.02, solver="fb", max_iter=30)
    assert result.beta is None and "no averagedness certificate" in result.beta_basis
    assert result.beta_text() == "β: none (no guarantee)" and result.summary().count(result.beta_text()) == 1
    assert result.history.checks == ("monotone residual",)
    assert torch.isfinite(result.estimate).all()


def test_deepinvs_random_equivariance_gets_no_guarantee_and_drs_is_monitored_on_its_governing_variable(certified):
    """A random transform per call (deepinv's EquivariantDenoiser) is no fixed operator: no β. DRS's monitor watches
    z, whose residual is not the estimate's."""
    op, x, y = _problem()
    random = ps.solve(op, y, dinv.models.EquivariantDenoiser(certified, random=True), 0.02, max_iter=3)
    assert random.beta is None and "EquivariantDenoiser carries no certificate" in random.beta_basis
    drs = ps.solve(op, y, certified, 0.02, solver="drs", max_iter=1, tol=0.0)
    z0 = op.A_adjoint(y)  # DRS starts at z₀ = x₀ = Aᵀy
    residual = float(drs.history.residuals[0][0])
    assert residual == pytest.approx(float((drs.governing - z0).norm()), rel=1e-4)
    assert residual != pytest.approx(float((drs.estimate - z0).norm()), rel=1e-2)


def test_non_finite_denoiser_output_stops_that_sample_only():
    op, x, y = _problem(batch=2)

    def poisoned(z, sigma):
        out = z.clone()
        if out.shape[0] == 2:  # sample 1 is poisoned while both samples run
            out[1] = float("nan")
        return out

    result = ps.solve(op, y, poisoned, 0.02, solver="fb", max_iter=20)
    assert result.status[1] == "non-finite" and result.status[0] != "non-finite"
    assert torch.isfinite(result.estimate).all()
    first = result.history.residuals[0]  # the poisoned evaluation is no residual 0 (exact convergence) in the record
    assert math.isnan(first[1]) and math.isnan(result.history.relative_residuals[0][1]) and first[0] > 0


def test_fista_carries_no_guarantee(certified):
    op, x, y = _problem()
    result = ps.solve(op, y, certified, 0.02, solver="fista", max_iter=20)
    assert result.beta is None and "no guarantee" in result.beta_basis
    assert result.verdict.startswith("no guarantee")


def test_batch_samples_stop_independently(certified):
    op, x, _ = _problem(batch=4)
    g = torch.Generator().manual_seed(3)
    noise = torch.tensor([0.0, 0.01, 0.05, 0.1])[:, None, None, None]
    y = op.A(x) + noise * torch.randn(x.shape, generator=g)
    y[3] = y[3] * 0 + float(0.5)
    result = ps.solve(op, y, certified, 0.02, solver="fb", max_iter=400, tol=1e-4)
    assert len(result.status) == 4 and len(set(result.iterations)) > 1
    assert all(s in ("converged", "max-iterations") for s in result.status)
    residuals = result.history.residual_matrix()
    for b, k in enumerate(result.iterations):
        assert torch.isnan(residuals[k:, b]).all() and not torch.isnan(residuals[:k, b]).any()


def test_beta_of_each_scheme_by_hand(certified):
    op, x, y = _problem()
    fidelity = L2Fidelity(op, y, 0.02)
    alpha_d = SoftThreshold.certificate.alpha
    tau = 1.5 / fidelity.lipschitz
    fb = ps.solve(op, y, SoftThreshold(), 0.02, solver="fb", step=tau, denoiser_weight=1.0, max_iter=1)
    kappa = 0.5 / 0.5 + 0.75 / 0.25  # α_D = 1/2, τL/2 = 3/4
    assert fb.beta == pytest.approx(kappa / (1 + kappa))
    hqs = ps.solve(op, y, SoftThreshold(), 0.02, solver="hqs", max_iter=1)
    assert hqs.beta == pytest.approx(2 / 3)  # compose(1/2, 1/2)
    for solver in ("drs", "admm"):
        result = ps.solve(op, y, certified, 0.02, solver=solver, max_iter=1)
        assert result.beta == pytest.approx(0.5)
        assert any("relaxed to firmly non-expansive" in note for note in result.notes)
    assert ps.solve(op, y, SoftThreshold(), 0.02, solver="drs", relaxation=1.5, max_iter=1).beta == pytest.approx(0.75)
    alpha = certified.certificate.alpha
    tuned_half_step = ps.solvers.TUNED["fb"].step_scale / 2  # default τ = step_scale/L: τL/2-averaged gradient step
    tuned_weight = ps.solvers.TUNED["fb"].denoiser_weight  # the default denoising step x + ω(D(x) − x): ωα_D-averaged
    assert ps.solve(op, y, certified, 0.02, solver="fb", max_iter=1).beta == pytest.approx(
        compose_averagedness([tuned_weight * alpha, tuned_half_step]))
    assert default_step("fb", fidelity, 0.05) == pytest.approx(1 / fidelity.lipschitz)
    assert default_step("hqs", fidelity, 0.05) == pytest.approx(0.0025)
    assert alpha_d == 0.5


def test_step_at_or_above_two_over_L_is_refused_unless_allowed():
    op, x, y = _problem()
    L = L2Fidelity(op, y, 0.02).lipschitz
    with pytest.raises(ValueError, match="2/L"):
        ps.solve(op, y, SoftThreshold(), 0.02, solver="fb", step=2.0 / L)
    result = ps.solve(op, y, SoftThreshold(), 0.02, solver="fb", step=2.5 / L, allow_unsafe_step=True, max_iter=3)
    assert result.beta is None and "not averaged" in result.beta_basis
    with pytest.raises(ValueError, match="solver"):
        ps.solve(op, y, SoftThreshold(), 0.02, solver="gradient-descent")
    with pytest.raises(ValueError, match="noise_sigma"):
        ps.solve(op, y, SoftThreshold(), 0.0)


@pytest.mark.parametrize("bad, match", [(dict(solver="hqs", step=math.inf), "finite"),
                                        (dict(solver="fb", step=math.nan), "finite"),
                                        (dict(denoiser_sigma=math.inf), "denoiser_sigma"),
                                        (dict(denoiser_sigma=-0.1), "denoiser_sigma"),
                                        (dict(max_iter=-1), "max_iter"),
                                        (dict(max_iter=2.5), "max_iter")])
def test_non_finite_or_negative_settings_are_refused_before_running(bad, match):
    op, x, y = _problem()
    with pytest.raises(ValueError, match=match):
        ps.solve(op, y, SoftThreshold(), 0.02, **bad)


@pytest.fixture
def deepinv_setup(certified):
    op, x, y = _problem(channels=1)
    prior = dinv.optim.PnP(denoiser=certified)
    fidelity = dinv.optim.L2(sigma=0.02)
    return op, x, y, prior, fidelity


def test_fb_matches_deepinv_pgd(deepinv_setup, certified):
    op, x, y, prior, fidelity = deepinv_setup
    tau = 0.9 / L2Fidelity(op, y, 0.02).lipschitz
    theirs = dinv.optim.PGD(prior=prior, data_fidelity=fidelity, stepsize=tau, sigma_denoiser=0.05, max_iter=20, early_stop=False)
    with torch.no_grad():
        expected = theirs(y, op)
    ours = ps.solve(op, y, certified, 0.02, solver="fb", step=tau, denoiser_sigma=0.05, denoiser_weight=1.0, max_iter=20, tol=0.0)
    assert (ours.estimate - expected).abs().max().item() < 1e-5


def test_drs_and_admm_match_deepinv(deepinv_setup, certified):
    op, x, y, prior, fidelity = deepinv_setup
    fne = certified.firmly_nonexpansive()  # pass the same firmly non-expansive denoiser to both libraries
    prior = dinv.optim.PnP(denoiser=fne)
    tau = 0.05**2
    theirs = dinv.optim.DRS(prior=prior, data_fidelity=fidelity, stepsize=tau, sigma_denoiser=0.05, max_iter=20,
                            early_stop=False, beta=1.0)
    with torch.no_grad():
        expected = theirs(y, op)
    ours = ps.solve(op, y, fne, 0.02, solver="drs", step=tau, denoiser_sigma=0.05, denoiser_weight=1.0, max_iter=20, tol=0.0)
    assert ours.notes == []  # already firmly non-expansive: no relaxation added
    assert (ours.estimate - expected).abs().max().item() < 1e-5
    # ADMM: deepinv started from (x₀, z₀ = 0), our documented initialisation v₀ = P(x₀)
    theirs = dinv.optim.ADMM(prior=prior, data_fidelity=fidelity, stepsize=tau, sigma_denoiser=0.05, max_iter=20,
                             early_stop=False, custom_init=lambda y, physics: {"est": (physics.A_adjoint(y), torch.zeros_like(physics.A_adjoint(y)))})
    with torch.no_grad():
        expected = theirs(y, op)
    ours = ps.solve(op, y, fne, 0.02, solver="admm", step=tau, denoiser_sigma=0.05, denoiser_weight=1.0, max_iter=20, tol=0.0)
    assert (ours.estimate - expected).abs().max().item() < 1e-5


def test_history_plot_leaves_the_callers_matplotlib_backend_alone(tmp_path, certified):
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("pdf")  # as a notebook would hold its inline backend
    try:
        op, x, y = _problem(batch=2)
        result = ps.solve(op, y, certified, 0.02, max_iter=30, reference=x)
        path = result.history.plot(tmp_path / "residuals.png")
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(backend)
    assert path.stat().st_size > 10_000
    assert math.isfinite(result.history.times[-1])


def test_denoiser_weight_moves_omega_of_the_way_and_scales_the_certificate(certified):
    """D_ω = x + ω(D(x) − x) is ωα_D-averaged: FB's β = compose(ωα_D, τL/2); ω ≥ 1/α_D is refused."""
    op, x, y = _problem()
    fidelity = L2Fidelity(op, y, 0.02)
    alpha = certified.certificate.alpha
    scheme = SCHEMES["fb"](fidelity, certified, 0.05, 1.0 / fidelity.lipschitz, denoiser_weight=0.3)
    z = torch.rand(1, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(scheme.denoise(z, None), z + 0.3 * (certified(z, 0.05) - z), atol=1e-6)
    assert scheme.denoiser_certificate.alpha == pytest.approx(0.3 * alpha)
    result = ps.solve(op, y, certified, 0.02, solver="fb", denoiser_weight=0.3, max_iter=200, tol=0.0)
    assert result.beta == pytest.approx(compose_averagedness([0.3 * alpha, ps.solvers.TUNED["fb"].step_scale / 2]))
    assert result.violations == [], result.verdict
    with pytest.raises(ValueError, match="1/α_D at σ_d"):
        ps.solve(op, y, certified, 0.02, solver="fb", denoiser_weight=1.01 / alpha)
    shipped = ps.load_denoiser("averaged-sll-gray")  # 0.22-averaged at σ_d = 0.014, 0.995-averaged for every σ
    with pytest.raises(ValueError, match="1/α_D for every σ, the certificate DRS and ADMM relax against"):
        ps.solve(op, y, shipped, 0.01, solver="drs", denoiser_weight=1.5)
    with pytest.raises(ValueError, match="must be > 0"):
        ps.solve(op, y, certified, 0.02, solver="fb", denoiser_weight=0.0)
    # an uncertified denoiser is weighted too, and stays uncertified
    dncnn = DnCNNBaseline(channels=1, width=4, depth=2).eval()
    weighted = SCHEMES["fb"](fidelity, dncnn, 0.05, 1.0 / fidelity.lipschitz, denoiser_weight=2.0)
    with torch.no_grad():
        assert torch.allclose(weighted.denoise(z, None), z + 2.0 * (dncnn(z, 0.05) - z), atol=1e-6)
    assert weighted.beta()[0] is None
    # a merely non-expansive D: ω < 1 makes it ω-averaged, ω > 1 is refused
    nonexpansive = Certificate(lipschitz=1.0, alpha=None, method="non-expansive only")
    assert _weighted_certificate(nonexpansive, 0.4).alpha == pytest.approx(0.4)
    with pytest.raises(ValueError, match="denoiser_weight"):
        _weighted_certificate(nonexpansive, 1.5)


def test_drs_folds_its_firm_nonexpansiveness_relaxation_into_the_weight(certified):
    """DRS needs D̃ firmly non-expansive: with ωα_D > 1/2 the weight becomes ω·1/(2ωα_D); with ωα_D ≤ 1/2
    no relaxation is added."""
    op, x, y = _problem()
    fidelity = L2Fidelity(op, y, 0.02)
    alpha = certified.certificate.alpha
    strong = SCHEMES["drs"](fidelity, certified, 0.05, 0.0025, denoiser_weight=0.9)
    assert strong.denoiser_weight == pytest.approx(0.5 / alpha) and strong.denoiser_certificate.alpha == pytest.approx(0.5)
    assert any("relaxed to firmly non-expansive" in note for note in strong.notes)
    weak = SCHEMES["drs"](fidelity, certified, 0.05, 0.0025, denoiser_weight=0.4)
    assert weak.denoiser_weight == 0.4 and weak.notes == [] and weak.beta()[0] == 0.5
    for solver in ("drs", "admm"):  # ω = 1 is the firmly non-expansive relaxation the solvers always made
        folded = ps.solve(op, y, certified, 0.02, solver=solver, denoiser_weight=1.0, max_iter=20, tol=0.0)
        wrapped = ps.solve(op, y, certified.firmly_nonexpansive(), 0.02, solver=solver, denoiser_weight=1.0, max_iter=20, tol=0.0)
        assert (folded.estimate - wrapped.estimate).abs().max().item() < 1e-6
    # a noise-adaptive D: relaxed by its σ-uniform certificate, checked with the one at σ_d
    torch.manual_seed(0)
    adaptive = AveragedDenoiser(channels=1, width=6, depth=2, noise_adaptive=True).eval()
    drs = SCHEMES["drs"](fidelity, adaptive, 0.05, 0.0025)
    assert drs.denoiser_weight == pytest.approx(0.5 / adaptive.certificate.alpha)
    assert drs.denoiser_certificate.alpha == pytest.approx(adaptive.certificate_at(0.05).alpha * drs.denoiser_weight)

    class Mirror(torch.nn.Module):  # an isometry: non-expansive, averaged for no α < 1
        certificate = Certificate(lipschitz=1.0, alpha=None, method="a mirror")

        def forward(self, x, sigma=None):
            return x.flip(-1)

    for solver in ("drs", "admm"):  # a merely non-expansive D is relaxed by θ = 1/2 (no β before)
        mirrored = ps.solve(op, y, Mirror(), 0.02, solver=solver, denoiser_weight=1.0, max_iter=30, tol=0.0)
        assert mirrored.beta == 0.5 and not mirrored.violations, (solver, mirrored.verdict)
        assert any("θ = 0.5" in note for note in mirrored.notes)


def test_fb_and_hqs_are_checked_against_the_certificate_at_the_denoiser_sigma():
    """A noise-adaptive D(·, σ_d) is θ(σ_d)α_N-averaged; β and the monitor use that tighter α."""
    torch.manual_seed(0)
    adaptive = AveragedDenoiser(channels=1, width=6, depth=2, noise_adaptive=True).eval()
    op, x, y = _problem()
    alpha = adaptive.certificate_at(0.02).alpha
    assert alpha < adaptive.certificate.alpha
    fb = ps.solve(op, y, adaptive, 0.02, solver="fb", denoiser_sigma=0.02, denoiser_weight=1.0, max_iter=150, tol=0.0)
    assert fb.beta == pytest.approx(compose_averagedness([alpha, ps.solvers.TUNED["fb"].step_scale / 2]))
    hqs = ps.solve(op, y, adaptive, 0.02, solver="hqs", denoiser_sigma=0.02, max_iter=150, tol=0.0)
    assert hqs.beta == pytest.approx(compose_averagedness([alpha, 0.5]))
    assert fb.violations == [] and hqs.violations == [], (fb.verdict, hqs.verdict)


def test_monitor_catches_a_residual_drift_hidden_inside_the_per_step_rounding_slack():
    """z_{k+1} − z_k grows by less than the float32 slack per step but by far more in total: a non-expansive map
    never does that (r_k ≤ min_{j<k} r_j), so the monitor must flag it, while a flat residual passes."""
    from pnp_stable.solvers.monitor import FLOAT_SLACK, ConvergenceMonitor

    z = torch.full((1, 1, 8, 8), 10.0)
    slack = FLOAT_SLACK * z.norm().item()
    direction = torch.ones_like(z) / 8  # unit norm
    for growth, expected in ((0.0, 0), (0.5 * slack, 1)):
        monitor, current = ConvergenceMonitor(1, beta=None), z.clone()
        for k in range(60):
            step = (0.1 + growth * k) * direction
            monitor.observe(torch.tensor([0]), current, current + step, k)
            current = current + step
        flagged = {v.check for v in monitor.history.violations}
        assert len(flagged) == expected and (not expected or flagged == {"monotone residual"})
        assert all(v.iteration >= 2 for v in monitor.history.violations)  # never within one step's slack


@pytest.mark.parametrize("sigma, reason", [(1e-20, "overflows float32"), (1e-13, "no real noise")])
def test_noise_level_below_the_minimum_names_the_cause_not_nans(sigma, reason):
    op, x, y = _problem()
    with pytest.raises(ValueError, match=rf"below the minimum 1e-12.*{reason}.*use 1e-4"):
        ps.solve(op, y, SoftThreshold(), sigma, max_iter=2)
    with pytest.raises(ValueError, match=r"below the minimum 1e-12"):
        ps.deblur(y, ps.gaussian_kernel(1.2), sigma, denoiser=SoftThreshold(), max_iter=2)
    assert ps.blur(ps.gaussian_kernel(1.2), boundary="reflect", noise_sigma=0.0) is not None  # 0: no noise, allowed
    result = ps.solve(op, y, SoftThreshold(), 1e-12, max_iter=2)  # the minimum itself runs, finite
    assert torch.isfinite(result.estimate).all()


def test_log_progress_writes_plain_lines_only_when_due(capsys):
    op, x, y = _problem(batch=2)
    ps.solve(op, y, SoftThreshold(), 0.02, max_iter=3, tol=0.0, progress="log", log_every=0)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("PnP-fb: iteration 1/3, relative residual ")
    assert "2/2 samples running" in lines[-1] and lines[-1].endswith(" s")
    ps.solve(op, y, SoftThreshold(), 0.02, max_iter=3, progress="log")  # the first line only after 10 s
    ps.solve(op, y, SoftThreshold(), 0.02, max_iter=3, progress=False, log_every=0)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="'bar' or 'log'"):
        ps.solve(op, y, SoftThreshold(), 0.02, progress="loud")


def test_compressed_sensing_measurements_of_any_shape_are_solved(certified):
    op = dinv.physics.CompressedSensing(m=96, img_size=(1, 16, 16), rng=torch.Generator().manual_seed(0))
    x = natural_starts(3, (1, 16, 16), noise=0.0, seed=0)
    y = op.A(x) + 0.01 * torch.randn(3, 96, generator=torch.Generator().manual_seed(1))
    assert y.shape == (3, 96)

    def poisoned(z, sigma):  # sample 2 stops early, so the others run on a subset of y's rows
        out = SoftThreshold()(z, sigma)
        if out.shape[0] == 3:
            out[2] = float("nan")
        return out

    for solver in ("fb", "hqs"):
        result = ps.solve(op, y, poisoned, 0.01, solver=solver, max_iter=5, tol=0.0, reference=x)
        assert result.estimate.shape == (3, 1, 16, 16) and torch.isfinite(result.estimate).all()
        assert result.status == ["max-iterations", "max-iterations", "non-finite"]
        assert result.iterations == [5, 5, 1]  # denoiser calls: the first, non-finite one counts
    network = ps.solve(op, y, certified, 0.01, max_iter=3)
    assert network.estimate.shape == (3, 1, 16, 16) and torch.isfinite(network.estimate).all()
    with pytest.raises(ValueError, match="no batch axis"):
        ps.solve(op, y[0], SoftThreshold(), 0.01)


@pytest.mark.parametrize("channels", [1, 3])
def test_two_channel_mri_with_a_one_or_three_channel_denoiser_says_how_to_apply_it_per_channel(channels):
    mask = (torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    op = dinv.physics.MRI(mask=mask, img_size=(1, 2, 16, 16))
    y = op.A(torch.rand(1, 2, 16, 16, generator=torch.Generator().manual_seed(1)))  # real and imaginary parts
    model = AveragedDenoiser(channels=channels, width=4, depth=1).eval()
    with pytest.raises(ValueError, match=r"2 channel\(s\).*torch\.cat\(\[D\(x\[:, i:i\+1\], s\) for i in range"):
        ps.solve(op, y, model, 0.01, max_iter=2)
    gray = AveragedDenoiser(channels=1, width=4, depth=1).eval()
    wrapped = ps.solve(op, y, lambda x, s: torch.cat([gray(x[:, i:i + 1], s) for i in range(x.shape[1])], 1), 0.01,
                       max_iter=2)
    assert wrapped.estimate.shape == (1, 2, 16, 16) and torch.isfinite(wrapped.estimate).all()


@pytest.mark.parametrize("boundary", ["circular", "reflect"])  # a closed-form prox, and conjugate gradients
def test_per_sample_denoiser_sigma_gives_each_sample_its_own_proximal_step(boundary):
    op, _, y = _problem(batch=2, boundary=boundary)
    D = AveragedDenoiser(channels=1, width=4, depth=2).eval()
    levels = (0.014, 0.05)
    for solver in ("hqs", "drs", "admm"):
        both = ps.solve(op, y, D, 0.02, solver=solver, denoiser_sigma=torch.tensor(levels), max_iter=4, tol=0)
        assert torch.allclose(both.step, torch.tensor(levels, dtype=torch.float64) ** 2 * both.step[0] / levels[0] ** 2)
        assert "step τ per sample" in both.summary()
        for b, level in enumerate(levels):  # the sample's iteration is the one it has alone, whatever its batch
            alone = ps.solve(op, y[b:b + 1], D, 0.02, solver=solver, denoiser_sigma=level, max_iter=4, tol=0)
            assert alone.step == pytest.approx(float(both.step[b]))
            assert torch.allclose(both.estimate[b:b + 1], alone.estimate, atol=1e-4), (solver, b)
    with pytest.raises(ValueError, match="one step τ for the batch"):
        ps.solve(op, y, D, 0.02, solver="fb", step=torch.tensor([0.1, 0.2]))


def test_deepinv_names_of_solvers_and_paddings_are_understood():
    op, _, y = _problem()
    D = AveragedDenoiser(channels=1, width=4, depth=2).eval()
    ours = ps.solve(op, y, D, 0.02, solver="fb", max_iter=3)
    theirs = ps.solve(op, y, D, 0.02, solver="PGD", max_iter=3)
    assert theirs.solver == "fb" and torch.equal(theirs.estimate, ours.estimate)
    assert ps.solve(op, y, D, 0.02, solver="HQS", max_iter=2).solver == "hqs"
    with pytest.raises(ValueError, match="unknown solver 'gd'.*deepinv's PGD"):
        ps.solve(op, y, D, 0.02, solver="gd")
    x = torch.rand(1, 1, SIZE, SIZE)
    zeros = ps.blur(ps.gaussian_kernel(1.0), boundary="zeros", img_size=(1, SIZE, SIZE))
    constant = ps.blur(ps.gaussian_kernel(1.0), boundary="constant", img_size=(1, SIZE, SIZE))
    assert torch.equal(zeros(x), constant(x))


def test_the_default_proximal_step_takes_levels_in_any_container():
    op, _, y = _problem()
    fidelity = L2Fidelity(op, y, 0.02)
    for levels in ([0.01, 0.02], np.array([0.01, 0.02]), torch.tensor([0.01, 0.02])):
        assert torch.allclose(default_step("hqs", fidelity, levels), torch.tensor([1e-4, 4e-4], dtype=torch.float64))
    assert default_step("hqs", fidelity, np.float32(0.02)) == pytest.approx(4e-4)
    assert default_step("fb", fidelity, [0.01, 0.02]) == pytest.approx(1 / fidelity.lipschitz)


def test_bm3d_keeps_its_inputs_precision_in_a_float64_solve():
    pytest.importorskip("bm3d")
    from pnp_stable.denoisers.baselines import BM3DDenoiser

    op = ps.operators.to_dtype(ps.blur(ps.gaussian_kernel(1.2), img_size=(1, SIZE, SIZE)), torch.float64)
    y = op.A(natural_starts(1, (1, SIZE, SIZE), noise=0.0, seed=2).double())
    assert ps.solve(op, y, BM3DDenoiser(threads=1), 0.02, max_iter=2).estimate.dtype == torch.float64
