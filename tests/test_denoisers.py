import re
from pathlib import Path

import deepinv as dinv
import pytest
import torch

import pnp_stable as ps
from pnp_stable.denoisers import (
    AveragedDenoiser,
    DnCNNBaseline,
    SpectralResNet,
    TVDenoiser,
    adversarial_lipschitz,
    averagedness_defects,
    certificate_of,
    natural_starts,
    parameter_count,
)

SHAPE = (1, 20, 20)
TOL = 1e-4

CONFIGS = [
    dict(width=8, depth=2, integrator="euler"),
    dict(width=6, depth=3, integrator="heun", relaxation=0.8),
    dict(width=6, depth=2, integrator="rk4", relaxation=0.6, activation="tanh"),
    dict(width=8, depth=3, integrator="euler", normalise=False, learn_time=False, time=1.0, budget=0.5),
    dict(width=5, depth=2, integrator="euler", relaxation=0.5, activation="elu", noise_level_input=False),
    dict(width=8, depth=2, integrator="euler", noise_adaptive=True),
    dict(width=4, depth=3, integrator="euler", scales=[1, 2, 4], noise_adaptive=True),  # 20 px: padded to 4·6
    dict(width=6, depth=3, integrator="euler", block="sll", noise_adaptive=True),
    dict(width=4, depth=3, integrator="euler", block="sll", scales=[1, 2, 1], relaxation=0.9),
    dict(width=6, depth=2, integrator="euler", activation="spline"),
    dict(width=4, depth=3, integrator="euler", block="sll", scales=[1, 2, 1], activation="spline", noise_adaptive=True),
]


def _briefly_trained(config, steps=8):
    torch.manual_seed(0)
    model = AveragedDenoiser(channels=1, **config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    clean = natural_starts(8, SHAPE, noise=0.0, seed=5)
    for _ in range(steps):
        noisy = clean + 0.1 * torch.randn_like(clean)
        loss = (model(noisy, 0.1) - clean).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.calibrate()
    return model


@pytest.mark.parametrize("trained", [False, True], ids=["untrained", "trained"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_empirical_search_stays_within_certificate(config, trained):
    model = _briefly_trained(config) if trained else AveragedDenoiser(channels=1, **config)
    model.eval()
    certificate = model.certificate
    assert certificate.guaranteed is (config["integrator"] != "rk4") and certificate.lipschitz <= 1  # RK4: estimated
    if config["integrator"] != "euler" and "relaxation" in config:
        assert certificate.alpha == pytest.approx(config["relaxation"])  # Heun/RK4: averaged only by relaxation
    lipschitz = adversarial_lipschitz(model, SHAPE, 0.1, restarts=4, steps=60).ratio
    assert lipschitz <= certificate.lipschitz * (1 + TOL)
    if certificate.alpha is not None:
        result = adversarial_lipschitz(model, SHAPE, 0.1, alpha=certificate.alpha, restarts=4, steps=60)
        assert result.ratio <= 1 + TOL
        # inequality (A) on 1,000 pairs: random pairs, near pairs and perturbations of the adversarial pair
        g = torch.Generator().manual_seed(1)
        x = natural_starts(500, SHAPE, seed=2)
        y = torch.cat([natural_starts(250, SHAPE, seed=3), x[250:] + 1e-2 * torch.randn(x[250:].shape, generator=g)])
        x = torch.cat([x, result.x + 1e-3 * torch.randn((500, *SHAPE), generator=g)])
        y = torch.cat([y, result.y + 1e-3 * torch.randn((500, *SHAPE), generator=g)])
        assert averagedness_defects(model, x, y, certificate.alpha).max().item() <= TOL


def test_noise_adaptive_relaxation_scales_the_step_toward_identity_and_the_certificate():
    from pnp_stable.denoisers.averaged import ADAPTIVE_RATE

    torch.manual_seed(0)
    plain = AveragedDenoiser(channels=1, width=8, depth=2).eval()
    torch.manual_seed(0)
    adaptive = AveragedDenoiser(channels=1, width=8, depth=2, noise_adaptive=True).eval()
    assert adaptive.certificate.alpha == pytest.approx(plain.certificate.alpha)  # θ increasing: sup θ = 1
    x = natural_starts(4, SHAPE, seed=6)
    for sigma in (0.0, 0.02, 0.2):
        theta = adaptive.adaptive_relaxation(sigma).item()
        assert 0 < theta < 1
        torch.testing.assert_close(adaptive(x, sigma) - x, theta * (plain(x, sigma) - x), rtol=1e-5, atol=1e-6)
    assert adaptive.adaptive_relaxation(0.0) < 0.2 < 0.9 < adaptive.adaptive_relaxation(25 / 255)
    with torch.no_grad():  # decreasing θ: the supremum is θ(0), and the certificate shrinks by it
        adaptive.adaptive_logit.copy_(torch.tensor([1.0, -1.0]) / ADAPTIVE_RATE)
    theta0 = float(torch.sigmoid(torch.tensor(1.0)))
    assert adaptive.certificate.alpha == pytest.approx(theta0 * plain.certificate.alpha)
    y = natural_starts(200, SHAPE, seed=7)
    defects = averagedness_defects(adaptive, natural_starts(200, SHAPE, seed=8), y, adaptive.certificate.alpha, sigma=0.0)
    assert defects.max().item() <= TOL
    with pytest.raises(ValueError, match="noise_level_input"):
        AveragedDenoiser(channels=1, width=8, depth=2, noise_adaptive=True, noise_level_input=False)


def test_certificate_at_a_noise_level_is_theta_of_sigma_times_alpha_n_and_holds_there():
    """D(·, σ) = (1 − θ(σ))I + θ(σ)N(·, σ) is θ(σ)α_N-averaged: tighter than the σ-uniform certificate at small σ."""
    from pnp_stable.denoisers.averaged import ADAPTIVE_RATE

    torch.manual_seed(0)
    plain = AveragedDenoiser(channels=1, width=8, depth=2).eval()
    torch.manual_seed(0)
    adaptive = AveragedDenoiser(channels=1, width=8, depth=2, noise_adaptive=True).eval()
    assert plain.certificate_at(0.01) == plain.certificate
    alpha_n = plain.certificate.alpha
    x, y = natural_starts(200, SHAPE, seed=8), natural_starts(200, SHAPE, seed=9)
    for sigma in (0.0, 0.01, 0.05):
        at_sigma = adaptive.certificate_at(sigma).alpha
        assert at_sigma == pytest.approx(adaptive.adaptive_relaxation(sigma).item() * alpha_n)
        assert at_sigma < adaptive.certificate.alpha
        assert averagedness_defects(adaptive, x, y, at_sigma, sigma=sigma).max().item() <= TOL
    batch = torch.tensor([0.0, 0.05])  # a batch of levels: the largest θ over it, whichever way θ runs
    assert adaptive.certificate_at(batch).alpha == pytest.approx(adaptive.certificate_at(0.05).alpha)
    decreasing = AveragedDenoiser(channels=1, width=8, depth=2, noise_adaptive=True).eval()
    with torch.no_grad():
        decreasing.adaptive_logit.copy_(torch.tensor([1.0, -1.0]) / ADAPTIVE_RATE)
    assert decreasing.certificate_at(batch).alpha == pytest.approx(decreasing.certificate_at(0.0).alpha)
    assert decreasing.certificate_at(0.0).alpha > decreasing.certificate_at(0.05).alpha
    assert ps.denoisers.certificate_of(adaptive, 0.01) == adaptive.certificate_at(0.01)
    assert adaptive.relaxed(0.3).certificate_at(0.01).alpha == pytest.approx(0.3 / adaptive.certificate.alpha * adaptive.certificate_at(0.01).alpha)
    with pytest.raises(ValueError, match="≥ 0"):
        adaptive.certificate_at(-0.1)


def test_relaxed_and_firmly_nonexpansive():
    model = AveragedDenoiser(channels=1, width=6, depth=2).eval()
    fne = model.firmly_nonexpansive()
    assert fne.certificate.alpha == pytest.approx(0.5)
    x = natural_starts(200, SHAPE, seed=4)
    y = natural_starts(200, SHAPE, seed=5)
    assert averagedness_defects(fne, x, y, 0.5).max().item() <= TOL
    assert model.relaxed(0.3).certificate.alpha == pytest.approx(0.3)


def test_denoiser_contract_and_input_errors():
    model = AveragedDenoiser(channels=3, width=8, depth=1).eval()
    assert isinstance(model, dinv.models.Denoiser)
    x = torch.rand(2, 3, 16, 16)
    assert model(x, 0.1).shape == x.shape
    assert model(x, torch.tensor([0.05, 0.2])).shape == x.shape
    with pytest.raises(ValueError, match="channel"):
        model(torch.rand(1, 1, 16, 16), 0.1)
    with pytest.raises(ValueError, match="sigma"):
        model(x)
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 3, 8, 8), float("nan")), 0.1)
    with pytest.raises(ValueError, match="integrator"):
        AveragedDenoiser(integrator="leapfrog")
    with pytest.raises(ValueError, match="activation"):
        AveragedDenoiser(activation="softmax")


def test_works_inside_deepinv_optimiser():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16)
    physics = ps.blur(ps.gaussian_kernel(1.0), img_size=(1, 16, 16), noise_sigma=0.01)
    y = physics(x)
    model = AveragedDenoiser(channels=1, width=6, depth=2).eval()
    prior = dinv.optim.PnP(denoiser=model)
    solver = dinv.optim.PGD(prior=prior, data_fidelity=dinv.optim.L2(), stepsize=1.0, sigma_denoiser=0.05, max_iter=5)
    with torch.no_grad():
        estimate = solver(y, physics)
    assert estimate.shape == x.shape and torch.isfinite(estimate).all()


def test_baselines_certificates_are_honest():
    dncnn = DnCNNBaseline(channels=1, depth=12, width=32)
    ours = AveragedDenoiser(channels=1, width=32, depth=8)
    assert abs(parameter_count(dncnn) - parameter_count(ours)) / parameter_count(ours) < 0.3
    assert certificate_of(dncnn).lipschitz is None
    assert certificate_of(lambda x, s: x).alpha is None
    resnet = SpectralResNet(channels=1, width=6, depth=3).eval()
    bound = resnet.certificate.lipschitz
    assert 2**3 * 0.99 <= bound <= 2**3 * 1.1
    state = torch.get_rng_state()
    empirical = adversarial_lipschitz(resnet, SHAPE, None, restarts=2, steps=20).ratio
    assert torch.equal(torch.get_rng_state(), state)  # the search draws from its own generator
    assert empirical <= bound
    tv = TVDenoiser()
    assert tv.certificate.alpha == 0.5 and not tv.certificate.guaranteed
    assert tv(torch.rand(1, 1, 16, 16), 0.1).shape == (1, 1, 16, 16)


def test_an_interrupted_write_leaves_the_previous_file_and_no_partial_one(tmp_path, monkeypatch):
    """Weights, checkpoints and extracted data share one write-then-rename (atomic_path): a write that fails midway
    leaves the old file whole and removes its own temporary file."""
    from pnp_stable import _safetensors

    target = tmp_path / "w.safetensors"
    _safetensors.write_safetensors(target, {"x": torch.ones(3)}, {"format": "test"})
    before = target.read_bytes()

    def fail_midway(tensors, filename, metadata):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(_safetensors, "save_file", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        _safetensors.write_safetensors(target, {"x": torch.zeros(3)}, {"format": "test"})
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_written_weights_get_an_ordinary_files_permissions(tmp_path):
    """safetensors creates its files 0600; a weights file to share gets 0666 less the umask, or keeps the mode of
    the file it replaces."""
    import os

    from pnp_stable import _safetensors

    mask = os.umask(0o022)
    try:
        _safetensors.write_safetensors(tmp_path / "w.safetensors", {"x": torch.ones(3)}, {"format": "test"})
        assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
        os.chmod(tmp_path / "w.safetensors", 0o640)
        _safetensors.write_safetensors(tmp_path / "w.safetensors", {"x": torch.zeros(3)}, {"format": "test"})
        assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(mask)


def test_safetensors_roundtrip(tmp_path):
    model = _briefly_trained(dict(width=6, depth=2), steps=3).eval()
    path = ps.save_denoiser(model, tmp_path / "m.safetensors", extra={"data": "tiny test set"})
    loaded = ps.load_denoiser_file(path)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x, 0.1), model(x, 0.1), atol=1e-6)
    assert loaded.certificate == model.certificate
    assert ps.load_denoiser_file(path, verify=True).certificate.alpha == pytest.approx(model.certificate.alpha)
    assert ps.denoisers.read_metadata(path)["data"] == "tiny test set"


def test_corrupt_and_mismatched_files(tmp_path):
    model = AveragedDenoiser(channels=1, width=6, depth=1)
    path = ps.save_denoiser(model, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt|readable"):
        ps.load_denoiser_file(tmp_path / "truncated.safetensors")
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF  # a weight byte
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="digest"):
        ps.load_denoiser_file(tmp_path / "flipped.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError):
        ps.load_denoiser_file(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="not found"):
        ps.load_denoiser_file(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="not a pnp-stable"):
        ps.load_denoiser_file(tmp_path / "other.safetensors")
    from pnp_stable.classification.storage import SHIPPED

    classifier = SHIPPED.file("fashion-mnist-lipschitz")
    with pytest.raises(ValueError, match="is a pnp-stable classifier file, not a denoiser file"):
        ps.load_denoiser_file(classifier)


def test_bm3d_baseline_denoises_without_certificate():
    pytest.importorskip("bm3d")
    from pnp_stable.denoisers import BM3DDenoiser

    clean = natural_starts(1, (1, 32, 32), noise=0.0)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    out = BM3DDenoiser()(noisy, 0.1)
    assert out.shape == clean.shape
    assert ps.psnr(out, clean).item() > ps.psnr(noisy, clean).item() + 3
    assert BM3DDenoiser().certificate.alpha is None
    for bad, message in ((float("nan"), "≥ 0 and finite"), (-0.1, "≥ 0 and finite"), (torch.tensor([0.1, 0.1]), "shape")):
        with pytest.raises(ValueError, match=message):  # NaN came back as a NaN image, -0.1 ran, [2] a torch error
            BM3DDenoiser()(noisy, bad)


def test_bm3d_threads_pin_the_package_and_bad_counts_are_refused():
    pytest.importorskip("bm3d")
    from pnp_stable.denoisers import BM3DDenoiser

    assert BM3DDenoiser()._profile().num_threads == 0
    assert BM3DDenoiser("lc", threads=1)._profile().num_threads == 1
    noisy = natural_starts(1, (1, 32, 32), noise=0.1)
    single = BM3DDenoiser(threads=1)
    assert torch.equal(single(noisy, 0.1), single(noisy, 0.1))
    assert torch.allclose(single(noisy, 0.1), BM3DDenoiser()(noisy, 0.1), atol=1e-4)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"BM3D threads \(None: every core\) must be a whole number"):
            BM3DDenoiser(threads=bad)


def test_zoo_lists_and_loads_shipped_models_offline():
    rows = ps.list_denoisers()
    assert {"averaged-gray", "averaged-sll-gray", "averaged-color", "averaged-lownoise-color", "averaged-sll-color",
            "averaged-sll-lownoise-color", "averaged-sll-highnoise-color", "averaged-sll-pnp-gray", "averaged-sll-lownoise-gray",
            "convex-ridge-gray", "convex-ridge-color", "dncnn-gray", "dncnn-color",
            "dncnn-lownoise-color"} <= {row["name"] for row in rows}
    for row in rows:
        assert row["format"] == "pnp-stable-denoiser/1" and "certificate" in row and "training" in row
        model = ps.load_denoiser(row["name"])
        if row["name"].startswith(("averaged-", "convex-ridge-")):  # the certified models
            assert model.certificate.alpha is not None and model.certificate.guaranteed
        else:  # the unconstrained baselines say so
            assert model.certificate.alpha is None and not model.certificate.guaranteed
        assert model.channels == (3 if row["name"].endswith("-color") else 1)
        assert Path(row["file"]).stat().st_size < 3 * 2**20
    with pytest.raises(ValueError, match="unknown denoiser"):
        ps.load_denoiser("no-such-model")


def test_every_shipped_file_survives_reverification_and_a_search_for_a_violation():
    """Shipped files are trusted by default (no bound recomputation on load): here every one is re-verified under
    the current rounding rules (a stale stored bound is how the classifier baseline broke), and an adversarial search
    on a gradient-flow and an SLL network stays within α at σ = 0, 25/255 and 1."""
    from pnp_stable.classification.storage import list_classifiers, load_classifier
    from pnp_stable.denoisers.serialization import load_denoiser_file

    for row in ps.list_denoisers():
        load_denoiser_file(row["file"], verify=True)
    for row in list_classifiers():
        load_classifier(row["file"], verify=True)
    for name in ("averaged-gray", "averaged-sll-gray"):
        model = ps.load_denoiser(name)
        for sigma in (0.0, 25 / 255, 1.0):
            alpha = certificate_of(model, sigma).alpha
            search = adversarial_lipschitz(model, (1, 16, 16), sigma, alpha=alpha, restarts=2, steps=15)
            assert search.ratio <= 1 + 1e-4, (name, sigma, search.ratio)


def test_check_certificate_reports_holds_as_certify_does():
    from pnp_stable.denoisers import check_certificate

    model = AveragedDenoiser(channels=1, width=4, depth=1).eval()
    check = check_certificate(model, (1, 12, 12), 0.1, restarts=1, steps=3, pairs=2)
    assert check.holds is True and check.averaged is not None and check.defects.shape == (2,) and not check.withdrawn

    class Tripling(torch.nn.Module):
        certificate = ps.Certificate(lipschitz=1.0, alpha=0.5, method="a false claim")

        def forward(self, x, sigma=None):
            return 3 * x

    assert check_certificate(Tripling().eval(), (1, 12, 12), 0.1, restarts=1, steps=2, pairs=2).holds is False
    uncertified = check_certificate(DnCNNBaseline(channels=1, width=4, depth=2).eval(), (1, 12, 12), 0.1, restarts=1, steps=2)
    assert uncertified.holds is None and uncertified.averaged is None


def test_negative_noise_level_is_refused():
    model = AveragedDenoiser(channels=1, width=6, depth=1, noise_adaptive=True).eval()
    with pytest.raises(ValueError, match="must be ≥ 0"):
        model(torch.rand(1, 1, 8, 8), -0.1)


def _rewritten(path, target, tensors=None, **metadata):
    """The denoiser file ``path`` copied to ``target`` with some tensors and metadata entries replaced (None
    deletes an entry) and the content digest recomputed: only the replaced content itself can be refused."""
    from pnp_stable._safetensors import write_safetensors
    from pnp_stable.denoisers.serialization import read_denoiser_tensors

    stored, original = read_denoiser_tensors(path)
    tensors = {**original, **(tensors or {})}
    entries = {**stored, **metadata}
    return write_safetensors(target, tensors, {k: v for k, v in entries.items() if v is not None and k != "sha256"})


def test_non_finite_weights_with_a_valid_digest_are_refused(tmp_path):
    model = AveragedDenoiser(channels=1, width=4, depth=1).eval()
    path = ps.save_denoiser(model, tmp_path / "m.safetensors")
    bias = model.blocks[0].conv.bias.detach().clone()
    bias[:2], bias[2] = float("nan"), float("inf")
    bad = _rewritten(path, tmp_path / "nan.safetensors", {"blocks.0.conv.bias": bias})
    message = rf"^{re.escape(str(bad))}: tensor 'blocks\.0\.conv\.bias' has 3 NaN/Inf values; the file is corrupt or came from"
    with pytest.raises(ValueError, match=message):
        ps.load_denoiser_file(bad)  # it used to load, output NaN and claim a guaranteed certificate


def test_the_digest_covers_the_metadata_and_edited_bounds_are_caught(tmp_path, monkeypatch):
    """An edit that keeps the old digest is refused; a consistent file with an understated bound (its certificate and
    digest recomputed from it) is caught by the default verification of every file outside the package; an older
    file (digest of the tensors only) is always verified."""
    from safetensors.torch import save_file

    from pnp_stable._safetensors import tensor_digest
    from pnp_stable.denoisers import serialization
    from pnp_stable.denoisers.serialization import read_denoiser_tensors

    torch.manual_seed(0)
    model = AveragedDenoiser(channels=1, width=4, depth=1).eval()
    path = ps.save_denoiser(model, tmp_path / "m.safetensors")
    bound = model.blocks[0].conv.weight_norm_bound()
    metadata, tensors = read_denoiser_tensors(path)
    save_file(tensors, str(tmp_path / "stale.safetensors"), metadata={**metadata, "config": metadata["config"] + " "})
    with pytest.raises(ValueError, match="content does not match its recorded digest"):
        ps.load_denoiser_file(tmp_path / "stale.safetensors")
    model.blocks[0].conv.set_weight_norm_bound(bound / 2)
    understated = ps.save_denoiser(model, tmp_path / "understated.safetensors")  # bounds, α and digest all agree
    with pytest.raises(ValueError, match="is below the verified bound"):
        ps.load_denoiser_file(understated)  # verify=None: a file outside the package is verified
    trusted = ps.load_denoiser_file(understated, verify=False)  # the caller explicitly trusts it
    assert trusted.blocks[0].conv.weight_norm_bound() == pytest.approx(bound / 2)
    monkeypatch.setattr(serialization.SHIPPED, "folder", tmp_path)  # a file in the package's folder is trusted as it is
    assert ps.load_denoiser_file(understated).blocks[0].conv.weight_norm_bound() == pytest.approx(bound / 2)
    for name, source in (("older", path), ("older-understated", understated)):
        stored, weights = read_denoiser_tensors(source)
        save_file(weights, str(tmp_path / f"{name}.safetensors"), metadata={**stored, "sha256": tensor_digest(weights)})
    assert ps.load_denoiser_file(tmp_path / "older.safetensors", verify=False).blocks[0].conv.weight_norm_bound() == bound
    with pytest.raises(ValueError, match="is below the verified bound"):
        ps.load_denoiser_file(tmp_path / "older-understated.safetensors", verify=False)


@pytest.mark.parametrize("key, value, expected", [
    ("weight_norm_bounds", "3.0", "must be a JSON list of 1 finite norm bounds ≥ 0"),
    ("weight_norm_bounds", "[1.0, 2.0]", "got 2 bounds"),
    ("weight_norm_bounds", '["1.2"]', "entry 0 is '1.2'"),
    ("weight_norm_bounds", "[true]", "entry 0 is True"),
    ("weight_norm_bounds", "[NaN]", "entry 0 is nan"),
    ("weight_norm_bounds", "[-1.0]", "entry 0 is -1.0"),
    ("weight_norm_bounds", "[1.0", "is not valid JSON"),
    ("weight_norm_bounds", None, "is missing"),
    ("config", '[1, 2]', "must be a JSON object"),
    ("config", '{"width": "wide"}', "is not a valid AveragedDenoiser configuration"),
    ("config", None, "is missing"),
    ("class", "UNet", "expected one of AveragedDenoiser, ConvexRidgeDenoiser, DnCNNBaseline"),
    ("certificate", "3.0", "is invalid"),
    ("sha256", None, "is missing"),
], ids=lambda v: str(v))
def test_malformed_metadata_is_one_value_error_naming_the_file_and_the_key(tmp_path, key, value, expected):
    path = ps.save_denoiser(AveragedDenoiser(channels=1, width=4, depth=1).eval(), tmp_path / "m.safetensors")
    bad = _rewritten(path, tmp_path / "bad.safetensors", **{key: value})
    if key == "sha256":  # _rewritten recomputes the digest: drop it afterwards
        from safetensors.torch import load_file, save_file

        save_file(load_file(str(bad)), str(bad), metadata={k: v for k, v in ps.denoisers.read_metadata(bad).items() if k != key})
    with pytest.raises(ValueError) as caught:
        ps.load_denoiser_file(bad)
    message = str(caught.value)
    assert message.startswith(f"{bad}: metadata ") and f"'{key}'" in message and expected in message, message
    assert "\n" not in message


def test_multiscale_blocks_run_at_coarser_resolutions_and_round_trip(tmp_path):
    model = _briefly_trained(dict(width=4, depth=3, scales=[1, 2, 1]), steps=3).eval()
    assert [block.conv.weight.shape[0] for block in model.blocks] == [4, 16, 4]
    x = torch.rand(2, 1, 13, 18)  # odd height: zero-padded to even, then cropped back
    with torch.no_grad():
        out = model(x, 0.1)
    assert out.shape == x.shape
    path = ps.save_denoiser(model, tmp_path / "m.safetensors")
    loaded = ps.load_denoiser_file(path)
    with torch.no_grad():
        assert torch.allclose(loaded(x, 0.1), out, atol=1e-6)
    assert loaded.config["scales"] == [1, 2, 1] and loaded.certificate == model.certificate
    assert "scales" not in AveragedDenoiser(channels=1, width=4, depth=2).config  # older files keep loading
    with pytest.raises(ValueError, match="scales"):
        AveragedDenoiser(channels=1, width=4, depth=2, scales=[1, 3])


def test_self_ensemble_keeps_the_certificate_and_its_search_stays_within_it():
    from pnp_stable.denoisers import SelfEnsemble

    model = _briefly_trained(dict(width=6, depth=2, noise_adaptive=True)).eval()
    ensemble = SelfEnsemble(model, transforms=8)
    assert ensemble.certificate.alpha == model.certificate.alpha and ensemble.certificate.guaranteed
    assert "grid-symmetry" in ensemble.certificate.method
    assert ensemble.certificate_at(0.1).alpha == model.certificate_at(0.1).alpha
    x = torch.rand(1, 1, 12, 17)  # non-square: rotated copies are 17×12
    with torch.no_grad():
        manual = sum(torch.rot90(model(torch.rot90(x, k, (-2, -1)), 0.1), -k, (-2, -1)) for k in range(4))
        manual = manual + sum(torch.rot90(model(torch.rot90(x.transpose(-2, -1), k, (-2, -1)), 0.1), -k,
                                          (-2, -1)).transpose(-2, -1) for k in range(4))
        assert torch.allclose(ensemble(x, 0.1), manual / 8, atol=1e-6)
    alpha = ensemble.certificate.alpha
    assert adversarial_lipschitz(ensemble, SHAPE, 0.1, alpha=alpha, restarts=2, steps=40).ratio <= 1 + TOL
    with pytest.raises(ValueError, match="transforms"):
        SelfEnsemble(model, transforms=3)
    assert certificate_of(SelfEnsemble(lambda x, s: x, 2)).alpha is None  # no certificate in, none out


def test_sll_scaling_dominates_the_gram_of_the_zero_padded_convolution_and_needs_no_bounds(tmp_path):
    from pnp_stable.denoisers.blocks import SLLBlock

    torch.manual_seed(0)
    block = SLLBlock(3, kernel_size=3)
    with torch.no_grad():
        block.log_q.copy_(torch.randn(3))
    block.eval()
    t = block.scaling().double()
    conv = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False).double()
    conv.weight.data.copy_(block.weight.data.double())
    for size in (1, 2, 5, 9):  # T − AAᵀ ⪰ 0 for the dense zero-padded A on each size
        n = 3 * size * size
        A = torch.stack([conv(e.reshape(1, 3, size, size)).flatten() for e in torch.eye(n, dtype=torch.float64)], 1)
        T = torch.diag(t.repeat_interleave(size * size))
        assert torch.linalg.eigvalsh(T - A @ A.T).min() >= -1e-12
    model = AveragedDenoiser(channels=1, width=4, depth=2, block="sll").eval()
    assert model.bounded_convs() == [] and model.certificate.alpha is not None and "SLL" in model.certificate.method
    path = ps.save_denoiser(model, tmp_path / "sll.safetensors")
    assert ps.load_denoiser_file(path, verify=True).certificate == model.certificate
    with pytest.raises(ValueError, match="gradient-flow"):
        AveragedDenoiser(channels=1, width=4, depth=2, block="sll", integrator="heun")
    with pytest.raises(ValueError, match="block"):
        AveragedDenoiser(channels=1, width=4, depth=2, block="other")


def test_cached_bounds_and_scalings_follow_every_change_of_the_weights():
    from pnp_stable.denoisers.blocks import SLLBlock

    sll = SLLBlock(3).eval()
    with torch.no_grad():
        t = sll.scaling().clone()
        sll.weight.data.mul_(10)  # an in-place edit that leaves _version unchanged
        assert torch.allclose(sll.scaling(), 100 * t, rtol=1e-5)
    with torch.inference_mode():
        sll.weight.data.mul_(0.1)
        sll(torch.rand(1, 3, 8, 8))
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    sll(x).sum().backward()  # the scaling cached under inference mode still serves autograd
    grad_eval = torch.autograd.grad(sll(x).sum(), sll.weight)[0]
    sll.train()
    grad_train = torch.autograd.grad(sll(x).sum(), sll.weight)[0]
    assert torch.allclose(grad_eval, grad_train, rtol=1e-3, atol=1e-6)  # eval gradients include t's dependence
    conv = ps.denoisers.CertifiedConv(2, 2, normalise=False)
    bound = conv.weight_norm_bound()
    conv.weight.data.mul_(3)
    assert conv.weight_norm_bound() == pytest.approx(3 * bound, rel=2e-2)


def test_scales_must_be_whole_factors():
    for scales in ([1.9, 2, 1], "121", [True, 2, 1]):
        with pytest.raises(ValueError, match="scales"):
            AveragedDenoiser(channels=1, width=4, depth=3, scales=scales)


@pytest.mark.parametrize("block", ["gradient-flow", "sll"])
def test_learned_spline_activations_keep_the_certificate_at_any_shape_and_round_trip(block, tmp_path):
    """Slopes pushed to the ends of (0, 1) and knots spread out: the certificate needs nothing from the spline's
    shape, so the adversarial search and inequality (A) must hold as for a fixed activation; the weights file
    restores the learned functions."""
    torch.manual_seed(3)
    model = AveragedDenoiser(channels=1, width=6, depth=2, block=block, activation="spline")
    with torch.no_grad():
        for spline in (b.activation for b in model.blocks):
            spline.slope_logits.copy_(8 * torch.randn_like(spline.slope_logits))
            spline.log_gap.copy_(torch.randn_like(spline.log_gap))
    model.calibrate()
    model.eval()
    certificate = model.certificate
    assert certificate.guaranteed and certificate.alpha is not None
    result = adversarial_lipschitz(model, SHAPE, 0.1, alpha=certificate.alpha, restarts=4, steps=60)
    assert result.ratio <= 1 + TOL
    x, y = natural_starts(300, SHAPE, seed=11), natural_starts(300, SHAPE, seed=12)
    assert averagedness_defects(model, x, y, certificate.alpha).max().item() <= TOL
    path = ps.save_denoiser(model, tmp_path / "spline.safetensors")
    loaded = ps.load_denoiser(path).eval()
    assert loaded.config["activation"] == "spline" and loaded.certificate.alpha == pytest.approx(certificate.alpha)
    torch.testing.assert_close(loaded(x[:4], 0.1), model(x[:4], 0.1))


def test_a_file_whose_certificate_cannot_be_evaluated_is_refused_with_a_value_error(tmp_path):
    """Contents that pass the digest and the per-key checks but break the arithmetic (a zero power-iteration vector,
    an infinite time span) are refused as corrupt, not with a ZeroDivisionError or OverflowError traceback."""
    import json

    model = AveragedDenoiser(channels=1, width=4, depth=1).eval()
    path = ps.save_denoiser(model, tmp_path / "m.safetensors")
    zero = {"blocks.0.conv.power_vector": torch.zeros_like(model.blocks[0].conv.power_vector)}
    with pytest.raises(ValueError, match="corrupt"):
        ps.load_denoiser(_rewritten(path, tmp_path / "zero.safetensors", tensors=zero))
    from pnp_stable.denoisers.serialization import read_denoiser_tensors

    config = json.loads(read_denoiser_tensors(path)[0]["config"])
    infinite = _rewritten(path, tmp_path / "time.safetensors", config=json.dumps({**config, "time": float("inf")}))
    with pytest.raises(ValueError, match="safetensors"):
        ps.load_denoiser(infinite)


def test_noise_level_switch_sends_each_image_to_its_range_and_is_certified_as_its_worst_member():
    torch.manual_seed(0)
    low = AveragedDenoiser(channels=1, width=4, depth=1, noise_adaptive=True).eval()
    high = AveragedDenoiser(channels=1, width=4, depth=3).eval()
    switch = ps.NoiseLevelSwitch([0.1], [low, high]).eval()
    x = torch.rand(3, 1, 10, 10)
    sigma = torch.tensor([0.05, 0.1, 0.2])  # a level on a boundary belongs to the range below it
    with torch.no_grad():
        expected = torch.cat([low(x[:1], sigma[:1]), low(x[1:2], sigma[1:2]), high(x[2:], sigma[2:])])
        assert torch.allclose(switch(x, sigma), expected, atol=1e-6)
        assert torch.equal(switch(x, 0.2), high(x, 0.2)) and torch.equal(switch(x, 0.01), low(x, 0.01))
    worst = max(low.certificate.alpha, high.certificate.alpha)
    assert switch.certificate.alpha == worst and switch.certificate.guaranteed and switch.certificate.lipschitz == 1
    assert switch.certificate_at(0.05).alpha == pytest.approx(low.certificate_at(0.05).alpha)
    assert switch.certificate_at(sigma).alpha == max(low.certificate_at(sigma[:2]).alpha, high.certificate.alpha)
    for given in (0.1, torch.tensor(0.1, dtype=torch.float64), torch.tensor([0.1])):  # the member that runs at 0.1
        assert switch.certificate_at(given).alpha == pytest.approx(low.certificate_at(0.1).alpha)
        assert torch.equal(switch(x[:1].double(), given), low(x[:1].double(), given))
    for level in (0.05, 0.3):  # at each σ the adversarial search stays within the worst member's certificate
        search = adversarial_lipschitz(switch, (1, 12, 12), level, alpha=worst, restarts=2, steps=25)
        assert search.ratio <= 1 + 1e-4
    assert ps.NoiseLevelSwitch([0.1], [low, DnCNNBaseline(channels=1, width=4, depth=2)]).certificate.alpha is None
    with pytest.raises(ValueError, match="one denoiser more than levels"):
        ps.NoiseLevelSwitch([0.1, 0.2], [low, high])
    with pytest.raises(ValueError, match="positive, finite and increasing"):
        ps.NoiseLevelSwitch([0.2, 0.1, 0.3], [low, high, low, high])
    with pytest.raises(ValueError, match=r"same number of channels, got \[\[1\], \[3\]\]"):
        ps.NoiseLevelSwitch([0.1], [low, AveragedDenoiser(channels=3, width=5, depth=1)])
    deepinv_member = dinv.models.DnCNN(in_channels=1, out_channels=1, depth=2, nf=4, pretrained=None)
    assert ps.NoiseLevelSwitch([0.1], [low, deepinv_member]).channels == 1  # its first convolution tells
    with pytest.raises(ValueError, match=r"got \[\[3\], \[1\]\]"):  # 'got [None, 3]' before, whatever it took
        ps.NoiseLevelSwitch([0.1], [AveragedDenoiser(channels=3, width=5, depth=1), deepinv_member])
    with pytest.raises(ValueError, match="call it as D\\(x, sigma\\)"):
        switch(x)


def test_loaded_models_know_the_noise_levels_they_were_trained_on(tmp_path):
    from pnp_stable.denoisers.serialization import trained_noise_range

    assert ps.load_denoiser("averaged-color").noise_range == pytest.approx((0, 25 / 255))
    assert ps.load_denoiser("averaged-sll-highnoise-color").noise_range == pytest.approx((0, 50 / 255))
    assert ps.load_denoiser("averaged-sll-color", ensemble=2).noise_range == pytest.approx((0, 25 / 255))
    path = ps.save_denoiser(AveragedDenoiser(channels=1, width=4, depth=1).eval(), tmp_path / "m.safetensors")
    assert ps.load_denoiser(path).noise_range is None  # no training entry: nothing claimed
    assert trained_noise_range({"training": '{"sigma": 0.1}'}) == (0.1, 0.1)  # trained at one level
    for entry in ("not json", '["sigma"]', '{"sigma": [0, "x"]}', '{"sigma": [0.2, 0.1]}', '{"sigma": [0, NaN]}',
                  '{"sigma": [0, 0.1, 0.2]}'):
        assert trained_noise_range({"training": entry}) is None
