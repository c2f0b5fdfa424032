"""Safeguarded Anderson acceleration: fewer evaluations, the same fixed point, the monitor still in charge."""

import types

import pytest
import torch

import pnp_stable as ps
from pnp_stable.denoisers import AveragedDenoiser, natural_starts
from pnp_stable.solvers import Anderson, run_scheme
from pnp_stable.solvers.anderson import AndersonSteps
from pnp_stable.solvers.monitor import ACCEPTED, PLAIN, REJECTED, ConvergenceMonitor
from pnp_stable.theory import Certificate

SIZE = 24


class AffineScheme:
    """T(z) = m ⊙ z + b with 0 ≤ m ≤ 0.98 elementwise: symmetric with spectrum in [0, 1], so firmly
    non-expansive (β = 1/2), with the known fixed point b / (1 − m)."""

    name, guaranteed, step_size = "affine", True, 1.0

    def __init__(self, shape=(2, 1, 8, 8), seed=0):
        g = torch.Generator().manual_seed(seed)
        self.m = torch.linspace(0, 0.98, shape[-1] * shape[-2]).reshape(shape[-2:]).expand(shape).double()
        self.b = torch.randn(shape, generator=g, dtype=torch.float64)
        self.fixed_point = self.b / (1 - self.m)
        self.fidelity = types.SimpleNamespace(adjoint_error=0.0, subset=lambda index: self.fidelity)
        self.notes = []

    def init(self, x0):
        return x0

    def step(self, z, fidelity, index):
        m, b = (self.m, self.b) if index is None else (self.m[index], self.b[index])
        t = m * z + b
        return t, t

    def beta(self):
        return 0.5, "0 ≼ M ≼ I"

    def certificate_gaps(self):
        return []


class Expansive:
    certificate = Certificate(lipschitz=1.0, alpha=0.5, method="a false claim, to test the monitor")

    def __call__(self, x, sigma):
        return 1.2 * torch.roll(x, shifts=1, dims=-1)


def _blur_problem(batch=1, seed=0):
    x = natural_starts(batch, (1, SIZE, SIZE), noise=0.0, seed=seed)
    op = ps.blur(ps.motion_kernel(3, 7), img_size=(1, SIZE, SIZE))
    y = op.A(x) + 0.02 * torch.randn(op.A(x).shape, generator=torch.Generator().manual_seed(seed))
    return op, x, y


@pytest.fixture(scope="module")
def certified():
    torch.manual_seed(0)
    return AveragedDenoiser(channels=1, width=6, depth=2).eval()


def test_contractive_affine_map_reaches_its_fixed_point_in_fewer_evaluations():
    scheme = AffineScheme()
    x0 = torch.zeros_like(scheme.b)
    plain = run_scheme(scheme, x0, max_iter=2000, tol=1e-9)
    fast = run_scheme(scheme, x0, max_iter=2000, tol=1e-9, accelerate=True)
    assert plain.status == fast.status == ["converged", "converged"]
    for result in (plain, fast):
        error = (result.estimate - scheme.fixed_point).norm() / scheme.fixed_point.norm()
        assert error < 1e-6, float(error)  # r/‖z‖ < 1e-9 and 1 − m ≥ 0.02: ‖z − z*‖ ≤ r/0.02 ≤ 5e-8 ‖z‖
        assert result.violations == [], result.verdict
    assert max(fast.iterations) * 3 <= min(plain.iterations), (plain.iterations, fast.iterations)
    counts = fast.history.step_counts()
    assert counts["accepted"].sum() > 0 and "safeguard" in fast.history.checks


def test_expansive_map_under_acceleration_is_still_caught():
    op, x, y = _blur_problem()
    result = ps.solve(op, y, Expansive(), 0.02, solver="fb", denoiser_weight=1.0, max_iter=100, accelerate=True)
    assert result.violations, "an expansive map must violate the claimed certificate, accelerated or not"
    assert {v.check for v in result.violations} & {"inequality (A)", "monotone residual"}
    assert torch.isfinite(result.estimate).all()


def test_safeguard_rejects_a_candidate_whose_residual_does_not_fall_and_steps_plainly_instead():
    options = Anderson(memory=2, decrease=0.9)
    z0 = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    steps, index = AndersonSteps(z0, options), torch.tensor([0])
    finite = torch.tensor([True])
    image = z0 + 1.0  # residual 4 at the anchor z0
    assert int(steps.kinds(index, z0, image, finite)) == PLAIN
    steps.advance(index, z0, image, torch.tensor([4.0], dtype=torch.float64), torch.tensor([PLAIN]), finite)
    second = image + 0.5  # residual 2 at T(z0): the memory now proposes a candidate
    steps.advance(index, image, second, torch.tensor([2.0], dtype=torch.float64), torch.tensor([PLAIN]), finite)
    assert bool(steps.jumped[0])
    candidate = steps.points.clone()
    worse = candidate + 0.6  # residual 2.4 > 0.9 × 2
    kinds = steps.kinds(index, candidate, worse, finite)
    assert int(kinds) == REJECTED
    steps.advance(index, candidate, worse, torch.tensor([2.4], dtype=torch.float64), kinds, finite)
    assert torch.equal(steps.points, second) and not bool(steps.jumped[0])  # back to the plain step T(anchor)
    better = candidate + 0.1 * (second - image)
    steps.jumped[0], steps.points = True, candidate
    assert int(steps.kinds(index, candidate, better, finite)) == ACCEPTED
    assert int(steps.kinds(index, candidate, better, torch.tensor([False]))) == REJECTED  # T(c) had NaN/Inf


def test_monitor_flags_an_accepted_step_that_breaks_the_safeguard():
    monitor = ConvergenceMonitor(1, beta=0.5, safeguard=Anderson(decrease=0.5, max_jump=10.0))
    index, p0 = torch.tensor([0]), torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    monitor.observe(index, p0, p0 + 0.25, 0, torch.tensor([PLAIN]))  # anchor p0, residual 1
    far = p0 + 100.0  # 400 away from the anchor: more than 10 × its residual
    monitor.observe(index, far, far + 0.1, 1, torch.tensor([ACCEPTED]))
    assert [v.check for v in monitor.history.violations if v.check == "safeguard"] == ["safeguard"]


def test_certified_accelerated_runs_keep_the_limit_with_fewer_calls_and_no_violations(certified):
    op, x, y = _blur_problem()
    for solver in ("fb", "drs"):
        plain = ps.solve(op, y, certified, 0.02, solver=solver, max_iter=400, tol=1e-6)
        fast = ps.solve(op, y, certified, 0.02, solver=solver, max_iter=400, tol=1e-6, accelerate=True)
        assert plain.beta is not None and fast.beta == plain.beta
        assert fast.violations == [] and plain.violations == [], (fast.verdict, plain.verdict)
        assert fast.status == ["converged"] and fast.iterations[0] < plain.iterations[0]
        gap = (fast.estimate - plain.estimate).norm() / plain.estimate.norm()
        assert gap < 1e-3, (solver, float(gap))
        assert "accelerated sample" in fast.verdict and any("Anderson" in note for note in fast.notes)


def test_batch_samples_are_accelerated_independently(certified):
    op, x, y = _blur_problem(batch=2, seed=3)
    both = ps.solve(op, y, certified, 0.02, solver="fb", max_iter=300, tol=1e-5, accelerate=True)
    for b in range(2):
        alone = ps.solve(op, y[b : b + 1], certified, 0.02, solver="fb", max_iter=300, tol=1e-5, accelerate=True)
        assert abs(alone.iterations[0] - both.iterations[b]) <= 2  # float32 batched convolutions round differently
        assert torch.allclose(alone.estimate[0], both.estimate[b], atol=1e-4)


def test_acceleration_is_refused_where_there_is_no_guarantee_and_bad_options_are_named(certified):
    op, x, y = _blur_problem()
    with pytest.raises(ValueError, match="averaged iterations"):
        ps.solve(op, y, certified, 0.02, solver="fista", accelerate=True, max_iter=5)
    with pytest.raises(ValueError, match="accelerate must be"):
        ps.solve(op, y, certified, 0.02, accelerate="fast", max_iter=5)
    for bad, match in ((dict(memory=0), "memory"), (dict(decrease=1.0), "decrease"), (dict(max_jump=float("inf")), "max_jump")):
        with pytest.raises(ValueError, match=match):
            Anderson(**bad)


class NaNPastTheFixedPoint(AffineScheme):
    """The affine map, except that T returns NaN at points where a coordinate has overshot the fixed point
    (seen from the start 0): plain steps never do (z_k − z* = mᵏ(z₀ − z*) with m ≥ 0), extrapolations do, and
    must then be rejected (the iteration falls back to the plain step) instead of ending the run."""

    def step(self, z, fidelity, index):
        t, _ = super().step(z, fidelity, index)
        fixed = self.fixed_point if index is None else self.fixed_point[index]
        far = ((z - fixed) * (0 - fixed) < -1e-12).flatten(1).any(1)
        t = torch.where(far[:, None, None, None], torch.full_like(t, float("nan")), t)
        return t, t


def test_a_non_finite_candidate_is_rejected_and_the_plain_iteration_goes_on():
    scheme = NaNPastTheFixedPoint(shape=(1, 1, 8, 8))
    result = run_scheme(scheme, torch.zeros_like(scheme.b), max_iter=3000, tol=1e-7, accelerate=Anderson(max_jump=1e6))
    counts = result.history.step_counts()
    assert int(counts["rejected"][0]) > 0, counts
    assert result.status == ["converged"] and torch.isfinite(result.estimate).all()
    assert result.violations == [], result.verdict


def test_rate_bound_is_not_checked_on_samples_with_only_rejected_extrapolations():
    monitor = ConvergenceMonitor(1, beta=0.5, safeguard=Anderson(decrease=0.5, max_jump=10.0))
    index, p = torch.tensor([0]), torch.ones(1, 1, 2, 2, dtype=torch.float64)
    half = lambda q: 0.5 * q  # noqa: E731  (firmly non-expansive, fixed point 0)
    monitor.observe(index, p, half(p), 0, torch.tensor([PLAIN]))
    monitor.observe(index, half(p), half(half(p)), 1, torch.tensor([PLAIN]))
    candidate = half(p) + 3.0  # rejected: its residual is far larger
    monitor.observe(index, candidate, half(candidate), 2, torch.tensor([REJECTED]))
    q = half(half(p))
    for k in range(3, 40):
        monitor.observe(index, q, half(q), k, torch.tensor([PLAIN]))
        q = half(q)
    history = monitor.finish(p, q, [True])
    assert history.violations == [] and history.accelerated_unchecked == 1


@pytest.mark.parametrize("chunk", [1 << 20, 7])
def test_candidate_solves_the_regularised_least_squares_fit(monkeypatch, chunk):
    """c = T_new + Σ γ_j (T_j − T_new), γ = argmin ‖g_new + Σ γ_j (g_j − g_new)‖² + λ‖ΔG‖_F²‖γ‖², per sample of a
    batch whose samples stored different numbers of evaluations (the ring wraps for sample 0), chunked or not."""
    from pnp_stable.solvers import anderson

    monkeypatch.setattr(anderson, "GRAM_CHUNK", chunk)
    options = Anderson(memory=3)
    memory = anderson.AndersonMemory(options, 2, torch.zeros(2, 1, 5, 4, dtype=torch.float64))
    history = {0: [], 1: []}
    g = torch.Generator().manual_seed(3)
    for step in range(6):
        index = torch.tensor([0, 1] if step % 2 else [0])
        points = torch.randn(len(index), 1, 5, 4, generator=g, dtype=torch.float64)
        images = 0.7 * points + 0.1 * torch.randn(points.shape, generator=g, dtype=torch.float64)
        memory.add(index, points, images)
        for row, sample in enumerate(index.tolist()):
            history[sample] = (history[sample] + [(images[row], images[row] - points[row])])[-4:]
    candidates, usable = memory.candidate(torch.tensor([1, 0]))
    assert usable.tolist() == [True, True]
    for row, sample in enumerate([1, 0]):
        (t_new, g_new), older = history[sample][-1], history[sample][:-1]
        delta_g = torch.stack([r - g_new for _, r in older]).flatten(1)  # [k, N]
        gram = delta_g @ delta_g.T
        gamma = -torch.linalg.solve(gram + options.regularisation * gram.trace() * torch.eye(len(older), dtype=gram.dtype),
                                    delta_g @ g_new.flatten())
        expected = t_new + sum(w * (t - t_new) for w, (t, _) in zip(gamma, older))
        torch.testing.assert_close(candidates[row], expected, rtol=1e-10, atol=1e-12)
    fresh = anderson.AndersonMemory(options, 1, torch.zeros(1, 1, 5, 4))
    fresh.add(torch.tensor([0]), torch.ones(1, 1, 5, 4), torch.zeros(1, 1, 5, 4))
    candidate, usable = fresh.candidate(torch.tensor([0]))
    assert not usable.item() and torch.equal(candidate, torch.zeros(1, 1, 5, 4))


def test_auto_acceleration_only_where_the_iteration_keeps_its_beta(certified):
    """'auto' accelerates a certified iteration, but not one whose β the adjoint test withdraws."""
    op, _, y = _blur_problem()
    assert ps.solve(op, y, certified, 0.02, solver="hqs", max_iter=5, accelerate="auto").history.safeguard is not None
    wrong = ps.custom_operator(op.A, A_adjoint=lambda v: 0.5 * op.A_adjoint(v))
    with pytest.warns(UserWarning, match="adjoint test"):
        result = ps.solve(wrong, y, certified, 0.02, solver="hqs", max_iter=5, accelerate="auto")
    assert result.beta is None and result.history.safeguard is None
