"""Certified classification (issue #25): radii that no attack breaks, Lipschitz bounds above every search,
weights files that round-trip and refuse tampering, and a trainer that resumes exactly. Tiny models on a
synthetic stand-in; Fashion-MNIST only where the shared data folder exists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pnp_stable.classification import (LipschitzClassifier, SpectralResNetClassifier, certified_accuracy, certified_radius,
                                       fashion_mnist, lipschitz_search, load_classifier, pgd_l2, robust_accuracy,
                                       save_classifier, synthetic)
from pnp_stable.classification.trainer import ClassifierConfig, ClassifierTrainer

FASHION = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
TINY = dict(widths=[8, 16], depths=[1, 1])


def _trained(tmp_path, model="lipschitz", steps=60, dataset="fashion-mnist", data=None, architecture=TINY):
    data = synthetic(512, 1, 28) if data is None else data
    config = ClassifierConfig(data="-", out=str(tmp_path / f"{model}.safetensors"), dataset=dataset, model=model,
                              architecture=dict(architecture), steps=steps, batch=32, eps=0.3)
    trainer = ClassifierTrainer(config, progress=False, dataset=data)
    assert trainer.run() == "finished"
    return trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("classifier")).model.eval()


def test_the_tiny_model_learns_the_stand_in(trained):
    images, labels = synthetic(256, 1, 28, seed=1).tensors
    result = certified_accuracy(trained, [(images, labels)], [0.1])
    assert result["clean"] > 0.9 and result["certified"][0.1] > 0.5


def test_no_attack_breaks_a_certified_radius(trained):
    images, _ = synthetic(64, 1, 28, seed=2).tensors
    prediction, radius = certified_radius(trained, images)
    assert float(radius.min()) > 0.05  # the test has radii to attack
    adversarial = pgd_l2(trained, images, prediction, radius * 0.999, steps=30, restarts=2)
    assert float((adversarial - images).flatten(1).norm(dim=1).div(radius).max()) <= 0.999 + 1e-5
    with torch.no_grad():
        assert torch.equal(trained(adversarial).argmax(1), prediction)
    # the same attack at twice the radius does succeed somewhere: it is strong enough to mean something
    beyond = pgd_l2(trained, images, prediction, radius * 2 + 0.2, steps=30, restarts=2)
    with torch.no_grad():
        assert not torch.equal(trained(beyond).argmax(1), prediction)


def test_empirical_robust_accuracy_is_at_least_the_certified_one(trained):
    images, labels = synthetic(128, 1, 28, seed=3).tensors
    certified = certified_accuracy(trained, [(images, labels)], [0.25, 0.5])["certified"]
    for eps, value in certified.items():
        assert robust_accuracy(trained, images, labels, eps, steps=20) >= value


@pytest.mark.parametrize("kind", [LipschitzClassifier, SpectralResNetClassifier])
def test_the_lipschitz_bound_exceeds_an_adversarial_search(kind):
    torch.manual_seed(0)
    model = kind(**TINY).eval()
    images = synthetic(8, 1, 28, seed=4).tensors[0]
    found = lipschitz_search(model, images, steps=60)
    bound = model.lipschitz_bound()
    assert found <= bound * (1 + 1e-5)
    assert found > 0.05 * bound  # the search is not vacuous


def test_blocks_may_take_one_full_non_expansive_step():
    """time = 1.9: one Euler step with h·‖A‖² up to 2·0.999 (non-expansive, no longer averaged); the bound holds."""
    torch.manual_seed(0)
    model = LipschitzClassifier(**TINY, time=1.9)
    for stage in model.stages:
        for block in stage:
            block.time_logit.data.fill_(8.0)  # T ≈ 1.9, beyond the firmly non-expansive h ≤ 1 of the default time = 1
    model.eval()
    steps = [block.step_averagedness() for stage in model.stages for block in stage]
    assert all(q <= 0.999 for n, q in steps)  # every sub-step has q = h·‖A‖²/2 ≤ 0.999 (guaranteed ‖A‖)
    assert max(q for n, q in steps if n == 1) > 0.9  # a single step well past the averaged q ≤ 1/2
    images = synthetic(8, 1, 28, seed=4).tensors[0]
    assert lipschitz_search(model, images, steps=60) <= model.lipschitz_bound() * (1 + 1e-5)


def test_the_baseline_pays_for_depth_in_its_bound():
    """Residual blocks are bounded by 1 + ‖C₂‖‖C₁‖ ≈ 2 each: the product grows with depth, ours stays ≈ 1."""
    torch.manual_seed(0)
    ours = LipschitzClassifier(widths=[8, 16], depths=[2, 2]).eval()
    baseline = SpectralResNetClassifier(widths=[8, 16], depths=[1, 1]).eval()
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(ours) == pytest.approx(count(baseline), abs=4)  # ours learns one time span T per block
    assert ours.feature_lipschitz() < 1.01
    assert baseline.feature_lipschitz() > 3.5


def test_weights_round_trip_and_refuse_tampering(trained, tmp_path):
    path = save_classifier(trained, tmp_path / "c.safetensors", extra={"note": "test"})
    loaded = load_classifier(path, verify=True)
    images = synthetic(16, 1, 28, seed=5).tensors[0]
    with torch.no_grad():
        assert torch.equal(loaded(images), trained(images))
    assert loaded.lipschitz_bound() == pytest.approx(trained.lipschitz_bound(), rel=1e-12)
    tensors = load_file(str(path))
    tensors["head.weight"] = tensors["head.weight"] * 2
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match="digest"):
        load_classifier(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_classifier(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("cls", [LipschitzClassifier, SpectralResNetClassifier])
def test_power_vectors_live_on_the_feature_grids_and_round_trip(cls, tmp_path):
    model = cls(widths=[8, 16], depths=[1, 1])
    sides = {name: tuple(buffer.shape[-2:]) for name, buffer in model.named_buffers() if name.endswith("power_vector")}
    assert {side for name, side in sides.items() if name.startswith("stages.0")} == {(14, 14)}
    assert {side for name, side in sides.items() if not name.startswith("stages.0")} == {(7, 7)}
    path = save_classifier(model.eval(), tmp_path / "grid.safetensors")
    assert load_classifier(path).power_grids == [14, 7]
    assert cls(widths=[8, 16], depths=[1, 1], power_size=32).power_grids == [32, 32]


def test_bad_inputs_are_refused(trained):
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\]"):
        trained(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="NaN"):
        trained(torch.full((1, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="eval"):
        certified_radius(trained.train(), torch.zeros(1, 1, 28, 28))
    trained.eval()


def test_training_resumes_exactly(tmp_path):
    data = synthetic(256, 1, 28)
    straight = _trained(tmp_path / "a", steps=12, data=data).model
    config = ClassifierConfig(data="-", out=str(tmp_path / "b" / "m.safetensors"), architecture=dict(TINY), steps=12,
                              batch=32, eps=0.3)
    first = ClassifierTrainer(config, progress=False, dataset=data)
    original = first.train_step
    first.train_step = lambda: (first.request_stop() if first.step == 5 else None, original())[1]
    assert first.run() == "interrupted" and first.step == 6
    with pytest.raises(ValueError, match=r"m.safetensors.ckpt already exists: resume that run \(--resume\), start over in its place"):
        ClassifierTrainer(config, progress=False, dataset=data)  # a fresh run would write over the checkpoint
    second = ClassifierTrainer(config, resume=True, progress=False, dataset=data)
    assert second.step == 6 and second.run() == "finished"
    for (name, a), b in zip(straight.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert ClassifierTrainer(replace(config, overwrite=True), progress=False, dataset=data).step == 0


def test_cifar_shaped_inputs_train_on_a_stand_in(tmp_path):
    trainer = _trained(tmp_path, steps=3, dataset="cifar10", data=synthetic(64, 3, 32), architecture=dict(widths=[12, 16], depths=[1, 1]))
    model = trainer.model.eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert model.lipschitz_bound() < 1.01


@pytest.mark.skipif(not FASHION.is_dir(), reason="shared Fashion-MNIST folder absent")
def test_fashion_mnist_loads_from_the_gzipped_files(tmp_path):
    from pnp_stable.classification.data import fashion_mnist as load

    test = load(FASHION, train=False, cache=tmp_path)
    images, labels = test.tensors
    assert images.shape == (10000, 1, 28, 28) and labels.unique().tolist() == list(range(10))
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert fashion_mnist is load


def test_concurrent_extractions_do_not_collide(tmp_path, monkeypatch):
    """Two trainings started together both extract the IDX files into the same cache: each writes its own
    temporary file, so neither truncates nor renames away the other's (the race that once killed one of them)."""
    import gzip
    import shutil
    import threading

    from pnp_stable.classification import data

    source = tmp_path / "source"
    source.mkdir()
    for name in data._FASHION_FILES:
        with gzip.open(source / f"{name}.gz", "wb") as out:
            out.write(name.encode() * 1000)
    both_copying, copy = threading.Barrier(2, timeout=30), shutil.copyfileobj

    def copy_when_both_copy(source_file, out):
        both_copying.wait()
        copy(source_file, out)

    monkeypatch.setattr(data.shutil, "copyfileobj", copy_when_both_copy)
    raw, errors = tmp_path / "cache", []

    def extract():
        try:
            data._extract_idx_files(source, raw)
        except Exception as error:  # collected and asserted empty below
            errors.append(error)

    threads = [threading.Thread(target=extract) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(path.name for path in raw.iterdir()) == sorted(data._FASHION_FILES)
    assert all((raw / name).read_bytes() == name.encode() * 1000 for name in data._FASHION_FILES)


def test_classify_command_prints_class_and_radius(trained, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from pnp_stable import cli

    path = save_classifier(trained, tmp_path / "c.safetensors")
    image = synthetic(1, 1, 28, seed=6).tensors[0][0, 0].numpy()
    Image.fromarray((image * 255).round().astype(np.uint8)).save(tmp_path / "item.png")
    Image.fromarray((image * 255).round().astype(np.uint8)).resize((56, 56)).save(tmp_path / "large.png")
    assert cli.main(["classify", str(tmp_path / "item.png"), "--model", str(path)]) == 0
    out = capsys.readouterr().out
    assert "certified ℓ2 radius" in out and "Lipschitz ≤ 1.0" in out
    assert cli.main(["classify", str(tmp_path / "large.png"), "--model", str(path)]) == 2
    assert "--resize" in capsys.readouterr().err
    assert cli.main(["classify", str(tmp_path / "large.png"), "--model", str(path), "--resize"]) == 0
    assert cli.main(["classify", str(tmp_path / "item.png"), "--model", "no-such-model"]) == 2
    folder = tmp_path / "items"  # a folder stands for its images ('image file not found' before)
    folder.mkdir()
    Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / "a.png")
    capsys.readouterr()
    assert cli.main(["classify", str(folder), "--model", str(path)]) == 0
    assert f"{folder / 'a.png'}: class" in capsys.readouterr().out


def test_edited_bounds_are_refused_even_with_a_recomputed_digest(trained, tmp_path):
    """The digest covers the metadata; a deliberate edit that recomputes it is caught by recomputing the bounds,
    which is the default for every file that is not shipped."""
    import json

    from safetensors import safe_open

    from pnp_stable._safetensors import content_digest

    path = save_classifier(trained, tmp_path / "c.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    bounds = [b / 10 for b in json.loads(metadata["weight_norm_bounds"])]
    edited = {**metadata, "weight_norm_bounds": json.dumps(bounds)}
    save_file(tensors, str(tmp_path / "stale.safetensors"), metadata=edited)
    with pytest.raises(ValueError, match="digest"):
        load_classifier(tmp_path / "stale.safetensors")
    edited["sha256"] = content_digest(tensors, edited)
    save_file(tensors, str(tmp_path / "forged.safetensors"), metadata=edited)
    with pytest.raises(ValueError, match="below the verified"):
        load_classifier(tmp_path / "forged.safetensors")


def test_attacks_and_inputs_are_checked(trained):
    with pytest.raises(ValueError, match="floating point"):
        trained(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd_l2(trained, torch.full((1, 1, 28, 28), 2.0), torch.zeros(1, dtype=torch.long), 0.5)
    assert trained(torch.zeros(1, 1, 28, 28, dtype=torch.float64)).dtype == torch.float32


def test_the_shipped_classifier_loads_and_its_certificate_reproduces():
    from pnp_stable.classification import list_classifiers

    assert [row["name"] for row in list_classifiers()] == ["fashion-mnist-lipschitz"]
    model = load_classifier("fashion-mnist-lipschitz")
    assert model.lipschitz_bound() < 1.01
    images = synthetic(4, 1, 28, seed=7).tensors[0]
    assert lipschitz_search(model, images, steps=20) <= model.lipschitz_bound()


def test_augmentation_flips_and_shifts_reproducibly_and_resumes_exactly(tmp_path):
    from pnp_stable.classification.data import augmented

    images = torch.rand(64, 1, 28, 28)
    a = augmented(images, torch.Generator().manual_seed(3))
    assert a.shape == images.shape and torch.equal(a, augmented(images, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, images) and a.abs().sum() <= images.abs().sum() + 1e-3  # shifts only drop pixels
    data = synthetic(128, 1, 28)
    runs = []
    for name, stop_at in (("straight", None), ("resumed", 3)):
        config = ClassifierConfig(data="-", out=str(tmp_path / name / "m.safetensors"), architecture=dict(TINY), steps=8,
                                  batch=16, eps=0.3, augment=True)
        trainer = ClassifierTrainer(config, progress=False, dataset=data)
        if stop_at is not None:
            original = trainer.train_step
            trainer.train_step = lambda: (trainer.request_stop() if trainer.step == stop_at else None, original())[1]
            assert trainer.run() == "interrupted"
            trainer = ClassifierTrainer(config, resume=True, progress=False, dataset=data)
        assert trainer.run() == "finished"
        runs.append(trainer.model.state_dict())
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


def test_train_classifier_refuses_a_time_span_for_the_baseline(tmp_path, capsys):
    from pnp_stable.classification.__main__ import main

    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "m.safetensors"), "--model", "spectral-resnet", "--time", "1.9"]
    assert main(argv) == 2
    assert "has none" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has none"):  # the same check guards the Python API
        ClassifierConfig(data="-", out="m.safetensors", model="spectral-resnet", architecture=dict(TINY, time=1.9))


def test_learned_spline_activations_keep_the_bound_and_round_trip(tmp_path, capsys):
    """Blocks with a learned monotone spline per channel (slopes in (0, 1)) keep the certified Lipschitz bound; the
    file restores the learned functions; the baseline, which has no such blocks, refuses the option."""
    from pnp_stable.classification.__main__ import main

    torch.manual_seed(0)
    model = LipschitzClassifier(**TINY, activation="spline")
    with torch.no_grad():
        for block in (block for stage in model.stages for block in stage):
            block.activation.slope_logits.copy_(8 * torch.randn_like(block.activation.slope_logits))
    model.calibrate()
    model.eval()
    images = synthetic(8, 1, 28, seed=4).tensors[0]
    assert lipschitz_search(model, images, steps=60) <= model.lipschitz_bound() * (1 + 1e-5)
    path = save_classifier(model, tmp_path / "spline.safetensors")
    loaded = load_classifier(path)
    assert loaded.config["activation"] == "spline"
    torch.testing.assert_close(loaded(images), model(images))
    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "m.safetensors"), "--model", "spectral-resnet",
            "--activation", "spline"]
    assert main(argv) == 2
    assert "activation" in capsys.readouterr().err


def test_the_training_radius_ramps_from_zero_and_the_loss_uses_it(tmp_path, capsys):
    from pnp_stable.classification.__main__ import main

    data = synthetic(64, 1, 28)
    config = ClassifierConfig(data="-", out=str(tmp_path / "r.safetensors"), architecture=dict(TINY), steps=8,
                              batch=16, eps=0.4, eps_ramp=0.5)
    ramped = ClassifierTrainer(config, progress=False, dataset=data)
    radii = []
    for step in range(8):
        ramped.step = step
        radii.append(ramped.training_radius())
    assert radii == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4])
    ramped.step = 0
    ramped.train_step()  # radius 0 at step 0: the same update as training at ε = 0
    plain = ClassifierTrainer(ClassifierConfig(data="-", out=str(tmp_path / "p.safetensors"), architecture=dict(TINY),
                                               steps=8, batch=16, eps=0.0), progress=False, dataset=data)
    plain.train_step()
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, ramped.model.state_dict()[name]), name
    ramped.train_step()  # radius 0.1 at step 1: no longer the ε = 0 update
    plain.train_step()
    assert not torch.equal(plain.model.head.weight, ramped.model.head.weight)
    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "m.safetensors"), "--eps-ramp", "1.5"]
    assert main(argv) == 2
    assert "eps_ramp" in capsys.readouterr().err


def test_a_signal_during_the_final_calibration_still_saves_the_last_step(tmp_path, monkeypatch):
    """As for the denoiser trainer: the final calibration and save run under the stop handler."""
    import os
    import signal

    data = synthetic(64, 1, 28)
    config = ClassifierConfig(data="-", out=str(tmp_path / "m.safetensors"), architecture=dict(TINY), steps=3,
                              batch=16, eps=0.3)
    trainer = ClassifierTrainer(config, progress=False, dataset=data)
    calibrate = trainer.model.calibrate
    monkeypatch.setattr(trainer.model, "calibrate",
                        lambda: (os.kill(os.getpid(), signal.SIGTERM) if trainer.step == 3 else None, calibrate())[1])
    assert trainer.run() == "finished"
    assert ClassifierTrainer(config, resume=True, progress=False, dataset=data).step == 3


def test_the_cache_follows_the_source_folder(tmp_path):
    """Another folder of IDX files is extracted anew, not read from the cache of the first one."""
    import gzip

    from pnp_stable.classification import data

    def write_set(folder, label):
        folder.mkdir()
        for name, count in (("train", 3), ("t10k", 2)):
            images = bytes([0, 0, 8, 3, 0, 0, 0, count, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(count * 28 * 28)
            labels = bytes([0, 0, 8, 1, 0, 0, 0, count]) + bytes([label] * count)
            (folder / f"{name}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
            (folder / f"{name}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))

    write_set(tmp_path / "zeros", 0)
    write_set(tmp_path / "sevens", 7)
    cache = tmp_path / "cache"
    assert data.fashion_mnist(tmp_path / "zeros", cache=cache).tensors[1].tolist() == [0, 0, 0]
    assert data.fashion_mnist(tmp_path / "sevens", cache=cache).tensors[1].tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="not found"):
        data.fashion_mnist(tmp_path, cache=cache)


def test_certified_radii_need_unit_scale_pixels_and_ignore_an_enclosing_autocast(tmp_path):
    model = _trained(tmp_path, steps=3).model.eval()
    images = synthetic(8, 1, 28).tensors[0]
    with pytest.raises(ValueError, match="divide 8-bit images by 255"):
        certified_radius(model, 255 * images)
    with pytest.raises(ValueError, match=r"got values in \[-0.5, .*rescale them to \[0, 1\]"):
        certified_radius(model, images - 0.5)
    with pytest.raises(ValueError, match=r"add the batch axis \(x\[None\]\)"):
        certified_radius(model, images[0])
    empty = certified_radius(model, images[:0])  # a conv error before
    assert empty[0].shape == empty[1].shape == (0,)
    for labels in (torch.zeros(1, dtype=torch.long), torch.zeros(8)):  # broadcast, or 0 % from float labels, before
        with pytest.raises(ValueError, match="labels must be one integer class per image"):
            certified_accuracy(model, [(images, labels)], [0.1])
    with pytest.raises(ValueError, match="call model.eval"):
        lipschitz_search(model.train(), images[:1], steps=1)
    model.eval()
    plain = certified_radius(model, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = certified_radius(model, images)
    assert torch.equal(plain[0], under_autocast[0]) and torch.equal(plain[1], under_autocast[1])


def test_a_corrupt_power_vector_is_refused_when_the_classifier_loads(tmp_path):
    from pnp_stable._safetensors import content_digest
    from pnp_stable.classification.storage import load_classifier, save_classifier
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = save_classifier(_trained(tmp_path, steps=2).model.eval(), tmp_path / "c.safetensors")
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
    key = next(k for k in tensors if k.startswith("downs.") and k.endswith("power_vector"))
    tensors[key] = torch.zeros_like(tensors[key])
    metadata["sha256"] = content_digest(tensors, {k: v for k, v in metadata.items() if k != "sha256"})
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match="corrupt"):
        load_classifier(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("factor", [1 - 1e-4, 1 + 1e-4])
def test_a_stored_certificate_below_the_weights_loads_with_a_warning_and_one_above_is_refused(tmp_path, factor):
    """A file written before a rounding term joined the bounds records a slightly smaller Lipschitz bound: it loads,
    warned, and certifies with the recomputed one (the shipped baseline was refused); a larger stored one is not the
    weights' certificate."""
    import json

    from pnp_stable._safetensors import content_digest
    from pnp_stable.classification.storage import load_classifier, save_classifier
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = _trained(tmp_path, steps=2).model.eval()
    path = save_classifier(model, tmp_path / "c.safetensors")
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "sha256"}
    certificate = json.loads(metadata["certificate"])
    certificate["lipschitz"] *= factor
    metadata["certificate"] = json.dumps(certificate)
    metadata["sha256"] = content_digest(tensors, metadata)
    save_file(tensors, str(tmp_path / "older.safetensors"), metadata=metadata)
    if factor < 1:
        with pytest.warns(UserWarning, match="predates the current rounding terms"):
            loaded = load_classifier(tmp_path / "older.safetensors")
        assert loaded.lipschitz_bound() == pytest.approx(model.lipschitz_bound(), rel=1e-9)
    else:
        with pytest.raises(ValueError, match="disagrees with the weights"):
            load_classifier(tmp_path / "older.safetensors")


def test_resume_accepts_defaults_written_out_and_refuses_a_changed_architecture(tmp_path):
    data = synthetic(64, 1, 28)

    def config(**architecture):
        return ClassifierConfig(data="-", out=str(tmp_path / "m.safetensors"), steps=4, batch=16, eps=0.3,
                                architecture=dict(TINY, **architecture))

    first = ClassifierTrainer(config(time=1.0, activation="relu"), progress=False, dataset=data)
    first.train_step = lambda original=first.train_step: (first.request_stop() if first.step == 1 else None,
                                                           original())[1]
    assert first.run() == "interrupted"
    assert ClassifierTrainer(config(), resume=True, progress=False, dataset=data).step == 2
    with pytest.raises(ValueError, match=r"other architecture \(architecture.time: 1.0 there, 3.8 here\)"):
        ClassifierTrainer(config(time=3.8), resume=True, progress=False, dataset=data)


def test_dense_blocks_stay_non_expansive_keep_the_bound_and_round_trip(tmp_path):
    """Dense flow blocks on the flattened features (f − hAᵀσ(Af + b), A dense): every Jacobian of a block taking the
    longest span (T ≈ 3.8: two sub-steps of h·‖A‖² ≈ 1.9, eigenvalues down to −0.9) has norm ≤ 1, which one step of
    h·‖A‖² = 3.8 would break (−2.8); the model's bound stays above a search, and the file restores the blocks."""
    torch.manual_seed(0)
    model = LipschitzClassifier(**TINY, time=3.8, dense_blocks=2, dense_width=24)
    with torch.no_grad():
        for block in model.dense:
            block.time_logit.fill_(8.0)
            block.conv.bias.normal_()  # ridges active on both sides of their kinks
    model.calibrate()
    model.eval()
    assert [block.step_averagedness()[0] for block in model.dense] == [2, 2]
    features = model.head.weight.shape[1]
    for block in model.dense:
        for seed in range(3):
            point = torch.randn(1, features, 1, 1, generator=torch.Generator().manual_seed(seed))
            jacobian = torch.autograd.functional.jacobian(lambda f: block(f).flatten(), point).reshape(features, features)
            norm = float(torch.linalg.matrix_norm(jacobian.double(), ord=2))
            assert 0.99 < norm <= 1 + 1e-5
    images = synthetic(8, 1, 28, seed=4).tensors[0]
    assert lipschitz_search(model, images, steps=60) <= model.lipschitz_bound() * (1 + 1e-5)
    loaded = load_classifier(save_classifier(model, tmp_path / "dense.safetensors"))
    assert (loaded.config["dense_blocks"], loaded.config["dense_width"]) == (2, 24)
    torch.testing.assert_close(loaded(images), model(images))
    assert loaded.lipschitz_bound() == pytest.approx(model.lipschitz_bound(), rel=1e-9)


def test_dense_blocks_train_for_both_models_at_equal_parameters(tmp_path):
    """The baseline's dense residual block holds two matrices: dense_width 8 there has the parameters of 16 here;
    both train from the trainer's architecture options, and the baseline's bound pays 1 + ‖C₂‖‖C₁‖ for it."""
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    ours = _trained(tmp_path, steps=20, architecture=dict(widths=[8, 16], depths=[2, 2], dense_blocks=1, dense_width=16))
    baseline = _trained(tmp_path, "spectral-resnet", steps=20,
                        architecture=dict(widths=[8, 16], depths=[1, 1], dense_blocks=1, dense_width=8))
    assert count(ours.model) == pytest.approx(count(baseline.model), abs=800)  # the biases: 16 + 8 + 784 against 16
    assert count(ours.model) - count(LipschitzClassifier(widths=[8, 16], depths=[2, 2])) == 784 * 16 + 16 + 1
    plain = SpectralResNetClassifier(widths=[8, 16], depths=[1, 1]).eval()
    assert baseline.model.eval().feature_lipschitz() > 1.5 * plain.feature_lipschitz()
    assert ours.model.eval().feature_lipschitz() < 1.01
    for model in (LipschitzClassifier, SpectralResNetClassifier):
        with pytest.raises(ValueError, match="dense_blocks must be ≥ 0"):
            model(widths=[8, 16], depths=[1, 1], dense_blocks=-1)


def test_an_overflowed_adam_moment_stops_the_classifier_run_before_any_save(tmp_path):
    """The loop the denoiser trainer runs too: a non-finite optimiser moment (finite weights now, NaN next step) is a
    divergence, raised before the checkpoint that would have kept it."""
    from pnp_stable.training.loop import TrainingDiverged

    config = ClassifierConfig(data="-", out=str(tmp_path / "c.safetensors"), dataset="fashion-mnist",
                              architecture=dict(TINY), steps=5, batch=8, checkpoint_minutes=0)
    trainer = ClassifierTrainer(config, progress=False, dataset=synthetic(64, 1, 28))
    step = trainer.train_step

    def overflowing():
        loss = step()
        if trainer.step == 2:
            next(iter(trainer.optimizer.state.values()))["exp_avg_sq"].view(-1)[0] = float("inf")
        return loss

    trainer.train_step = overflowing
    with pytest.raises(TrainingDiverged, match=r"step 2: 'optimizer exp_avg_sq of .*step 1\) is kept"):
        trainer.run()
    assert trainer.saved_step == 1  # every step saved (checkpoint_minutes = 0), but not the diverged one
