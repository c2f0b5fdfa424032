import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pnp_stable as ps
from pnp_stable.training import PatchSampler, TrainConfig, Trainer, load_folder
from pnp_stable.training.checkpoint import load_checkpoint

ARCH = dict(width=6, depth=2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("train", "val"):
        (root / name).mkdir()
        for i in range(3):
            base = np.linspace(0, 255, 48)[None, :] * np.ones((48, 1))
            image = np.clip(base + rng.normal(0, 20, (48, 48)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


class SignalAtStep:
    """Sends the process a real SIGTERM while the trainer draws the batch of ``step``."""

    def __init__(self, sampler, trainer, step):
        self.sampler, self.trainer, self.step = sampler, trainer, step

    def __next__(self):
        batch = next(self.sampler)
        if self.trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    def state(self):
        return self.sampler.state()


def _config(folders, tmp_path, steps=6):
    return TrainConfig(data=[str(folders / "train")], val=str(folders / "val"), out=str(tmp_path / "m.safetensors"),
                       patch=16, batch=4, steps=steps, lr=1e-2, calibrate_every=3, validate_every=0,
                       val_images=2, architecture=ARCH)


def test_sampler_shapes_noise_and_reproducibility(folders):
    images = load_folder(folders / "train", 1)
    a = PatchSampler(images, patch=16, batch=5, sigma=(0.0, 0.2), seed=3)
    b = PatchSampler(images, patch=16, batch=5, sigma=(0.0, 0.2), seed=3)
    noisy, clean, sigma = next(a)
    assert noisy.shape == clean.shape == (5, 1, 16, 16) and sigma.shape == (5,)
    assert ((sigma >= 0) & (sigma <= 0.2)).all()
    assert torch.equal(next(b)[0], noisy)
    with pytest.raises(ValueError, match="at least"):
        PatchSampler(images, patch=64)


def test_interrupt_and_resume_gives_the_uninterrupted_result(folders, tmp_path):
    straight = Trainer(_config(folders, tmp_path / "a"), progress=False)
    assert straight.run() == "finished"

    interrupted = Trainer(_config(folders, tmp_path / "b"), progress=False)
    interrupted.sampler = SignalAtStep(interrupted.sampler, interrupted, step=2)
    assert interrupted.run() == "interrupted"
    assert interrupted.step == 3
    resumed = Trainer(_config(folders, tmp_path / "b"), resume=True, progress=False)
    assert resumed.step == 3
    assert resumed.run() == "finished"
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_the_validation_curve_and_training_time_survive_an_interruption(folders, tmp_path):
    def config(folder):
        c = _config(folders, tmp_path / folder)
        c.validate_every = 2
        return c

    straight = Trainer(config("a"), progress=False)
    straight.run()
    interrupted = Trainer(config("b"), progress=False)
    interrupted.sampler = SignalAtStep(interrupted.sampler, interrupted, step=2)
    assert interrupted.run() == "interrupted" and [step for step, _ in interrupted.curve] == [2]
    first = interrupted.train_seconds
    resumed = Trainer(config("b"), resume=True, progress=False)
    assert resumed.curve == interrupted.curve and resumed.train_seconds == pytest.approx(first, abs=0.1) and first > 0
    assert resumed.run() == "finished"
    assert resumed.curve == straight.curve and [step for step, _ in resumed.curve] == [2, 4, 6]
    assert resumed.train_seconds > first
    metadata = ps.denoisers.read_metadata(resumed.export())
    assert json.loads(metadata["val_curve"]) == resumed.curve and float(metadata["train_seconds"]) >= 0


def test_compiled_training_forward_matches_the_checked_network_and_may_be_dropped_on_resume(folders, tmp_path):
    config = _config(folders, tmp_path, steps=4)
    config.architecture, config.compile = dict(width=4, depth=2, block="sll", noise_adaptive=True), True
    trainer = Trainer(config, progress=False)
    noisy, _, sigma = next(PatchSampler(trainer.sampler.images, 16, 3, (0.0, 0.2), seed=5))
    with torch.no_grad():
        assert torch.allclose(trainer.net(noisy, sigma), trainer.model(noisy, sigma), atol=1e-5)
    trainer.sampler = SignalAtStep(trainer.sampler, trainer, step=1)
    assert trainer.run() == "interrupted"
    config.compile = False  # how the run executes, not what it computes: the resume accepts it
    resumed = Trainer(config, resume=True, progress=False)
    assert resumed.net is resumed.model and resumed.run() == "finished"
    assert resumed.model.eval().certificate.guaranteed


def test_export_writes_certificate_and_training_metadata(folders, tmp_path):
    trainer = Trainer(_config(folders, tmp_path, steps=3), progress=False)
    trainer.run()
    path = trainer.export({"data": "synthetic ramps"})
    metadata = ps.denoisers.read_metadata(path)
    assert '"steps": 3' in metadata["training"] and metadata["data"] == "synthetic ramps"
    model = ps.load_denoiser_file(path)
    assert model.certificate.alpha is not None and float(metadata["val_psnr"]) > 0


def test_resume_with_other_options_is_refused(folders, tmp_path):
    """A change of what the run computes is refused and named; the same folder spelt 'dir/' and a validation
    frequency (it reports, the weights do not depend on it) are not changes."""
    Trainer(_config(folders, tmp_path, steps=2), progress=False).run()
    with pytest.raises(ValueError, match=r"other steps \(steps: 2 there, 5 here\);"):
        Trainer(_config(folders, tmp_path, steps=5), resume=True, progress=False)
    same = dataclasses.replace(_config(folders, tmp_path, steps=2), data=[str(folders / "train") + "/"],
                               validate_every=1)
    assert Trainer(same, resume=True, progress=False).step == 2
    relative = dataclasses.replace(same, data=[os.path.relpath(folders / "train")])  # the same folder, relative
    assert Trainer(relative, resume=True, progress=False).step == 2


def test_torchrun_two_processes(folders, tmp_path):
    out = tmp_path / "ddp.safetensors"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
               "-m", "pnp_stable.training", "--data", str(folders / "train"), "--out", str(out),
               "--patch", "16", "--batch", "2", "--steps", "3", "--width", "6", "--depth", "1",
               "--validate-every", "0", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ps.load_denoiser_file(out).certificate.alpha is not None


def test_dncnn_baseline_trains_with_the_same_pipeline_and_round_trips(folders, tmp_path):
    config = _config(folders, tmp_path, steps=3)
    config.model, config.architecture = "dncnn", dict(width=6, depth=3)
    trainer = Trainer(config, progress=False)
    assert trainer.run() == "finished"
    path = trainer.export({"data": "synthetic ramps"})
    loaded = ps.load_denoiser_file(path)
    assert isinstance(loaded, ps.denoisers.DnCNNBaseline) and loaded.certificate.alpha is None
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(loaded(x, 0.1), trainer.model.eval()(x, 0.1))


def test_unknown_model_is_refused(folders, tmp_path):
    config = _config(folders, tmp_path)
    config.model = "unet"
    with pytest.raises(ValueError, match="model must be one of"):
        config.__post_init__()


def test_checkpoint_written_before_a_config_field_existed_still_resumes(folders, tmp_path):
    from pnp_stable.training.checkpoint import load_checkpoint, save_checkpoint

    trainer = Trainer(_config(folders, tmp_path, steps=2), progress=False)
    trainer.run()
    tensors, meta = load_checkpoint(trainer.checkpoint_path)
    old_config = {k: v for k, v in meta["config"].items() if k != "model"}
    save_checkpoint(trainer.checkpoint_path, trainer.model, trainer.optimizer, trainer.scheduler,
                    trainer.sampler.state(), trainer.step, old_config)
    assert Trainer(_config(folders, tmp_path, steps=2), resume=True, progress=False).step == 2


def test_fine_tuning_starts_from_a_weights_file_and_may_add_the_noise_adaptive_relaxation(folders, tmp_path):
    from pnp_stable.training.__main__ import main

    base = Trainer(_config(folders, tmp_path, steps=2), progress=False)
    base.run()
    path = base.export()
    config = _config(folders, tmp_path / "tuned", steps=2)
    config.init, config.architecture = str(path), dict(ARCH, noise_adaptive=True)
    tuned = Trainer(config, progress=False)
    for name, tensor in base.model.state_dict().items():
        assert torch.equal(tuned.model.state_dict()[name], tensor), name
    assert tuned.run() == "finished"
    exported = tuned.export()
    assert ps.load_denoiser_file(exported).config["noise_adaptive"]
    from pnp_stable.denoisers.serialization import read_metadata

    metadata = read_metadata(exported)
    assert (metadata["steps"], metadata["total_steps"]) == ("2", "4")
    config.architecture, config.overwrite = dict(width=4, depth=2), True
    with pytest.raises(ValueError, match="does not fit this architecture"):
        Trainer(config, progress=False)
    argv = ["--data", str(folders / "train"), "--out", str(tmp_path / "x.safetensors"), "--model", "dncnn", "--noise-adaptive"]
    assert main(argv) == 2


def test_noise_relative_loss_weighs_each_patch_by_its_noise_level(folders, tmp_path):
    from pnp_stable.training import denoising_loss
    from pnp_stable.training.__main__ import main

    clean = torch.zeros(2, 1, 4, 4)
    output = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.2)])
    sigma = torch.tensor([0.0, 0.5])
    assert torch.isclose(denoising_loss(output, clean, sigma), torch.tensor((0.01 + 0.04) / 2))
    floor = 0.1
    expected = (0.01 / floor**2 + 0.04 / (0.25 + floor**2)) / 2
    assert torch.isclose(denoising_loss(output, clean, sigma, "noise-relative", floor), torch.tensor(expected))
    with pytest.raises(ValueError, match="loss must be one of"):
        denoising_loss(output, clean, sigma, "l1")
    config = _config(folders, tmp_path, steps=2)
    config.loss = "noise-relative"
    trainer = Trainer(config, progress=False)
    assert trainer.run() == "finished"
    assert '"loss": "noise-relative"' in ps.denoisers.serialization.read_metadata(trainer.export())["training"]
    argv = ["--data", str(folders / "train"), "--out", str(tmp_path / "x.safetensors"), "--loss-floor", "0"]
    assert main(argv) == 2


@pytest.mark.parametrize("model", ["averaged", "averaged-spline", "dncnn"])
def test_a_wider_network_fine_tuned_from_weights_starts_from_their_function(folders, tmp_path, model):
    model, _, activation = model.partition("-")
    arch = dict(ARCH, activation=activation) if activation else ARCH
    base_config = _config(folders, tmp_path, steps=3)
    base_config.model, base_config.architecture = model, arch
    base = Trainer(base_config, progress=False)
    base.run()
    path = base.export()
    wider_config = _config(folders, tmp_path / "wider", steps=3)
    wider_config.model, wider_config.init, wider_config.architecture = model, str(path), dict(arch, width=10)
    wider = Trainer(wider_config, progress=False)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        before, after = base.model.eval()(x, 0.05), wider.model.eval()(x, 0.05)
    change = float((after - before).norm() / (before - x).norm())  # relative to what the network does to x
    assert change < 1e-3  # new entries of size 1% move the output by O(1e-4)
    new_weight = wider.model.state_dict()[[k for k in wider.model.state_dict() if k.endswith("weight")][1]][:, 6:]
    assert new_weight.abs().max() > 0  # new channels are not dead
    if activation:  # a new channel's learned activation starts as a fresh one's (≈ leaky ReLU), not as a line
        torch.testing.assert_close(wider.model.blocks[0].activation.slope_logits[:, 6:], torch.tensor([[-3.0], [3.0], [3.0]]).expand(3, 4))
    assert wider.run() == "finished"
    grown = ps.load_denoiser_file(wider.export())
    assert grown.config["width"] == 10
    if model == "averaged":
        assert grown.certificate.alpha < 1
    wider_config.channels, wider_config.overwrite = 3, True
    with pytest.raises(ValueError, match="channels 1"):
        Trainer(wider_config, progress=False)


def test_embedding_keeps_trained_entries_and_refuses_a_smaller_target():
    from pnp_stable.training.growth import embed

    g = torch.Generator().manual_seed(0)
    trained = torch.randn(2, 3)
    grown = embed(trained, torch.Size([4, 3]), noise=False, generator=g)
    assert torch.equal(grown[:2], trained) and not grown[2:].any()
    noisy = embed(trained, torch.Size([4, 5]), noise=True, generator=g)
    assert torch.equal(noisy[:2, :3], trained) and 0 < noisy[2:].abs().max() < 0.1 * trained.abs().max()
    with pytest.raises(ValueError, match="does not fit"):
        embed(trained, torch.Size([1, 3]), noise=False, generator=g)


def _tensor_bytes(path, prefix):
    """Offsets in the file ``path`` of the data of its first tensor whose name starts with ``prefix``."""
    import json

    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    begin, end = header[next(name for name in header if name.startswith(prefix))]["data_offsets"]
    return 8 + size + begin, 8 + size + end


def test_a_modified_or_unchecksummed_checkpoint_is_refused_on_resume(folders, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    Trainer(_config(folders, tmp_path, steps=2), progress=False).run()
    path = tmp_path / "m.safetensors.ckpt"
    intact = path.read_bytes()
    begin, end = _tensor_bytes(path, "rng.sampler")
    raw = bytearray(intact)
    raw[begin + 1000 : begin + 1004] = bytes(b ^ 0xFF for b in raw[begin + 1000 : begin + 1004])  # 4 bytes of the sampler state
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: checkpoint content does not match its recorded SHA-256"):
        Trainer(_config(folders, tmp_path, steps=2), resume=True, progress=False)
    path.write_bytes(intact)
    with safe_open(str(path), framework="pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if k != "sha256"}
    save_file(load_file(str(path)), str(path), metadata=metadata)  # as written before checkpoints had a digest
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: this training checkpoint has no SHA-256 digest"):
        Trainer(_config(folders, tmp_path, steps=2), resume=True, progress=False)


@pytest.mark.parametrize("model", ["averaged", "dncnn"])
def test_a_diverging_run_stops_with_exit_2_and_keeps_the_last_finite_checkpoint(folders, tmp_path, capsys, model):
    from pnp_stable.training.__main__ import main
    from pnp_stable.training.checkpoint import load_checkpoint

    out = tmp_path / "m.safetensors"
    argv = ["--data", str(folders / "train"), "--out", str(out), "--model", model, "--patch", "16", "--batch", "4",
            "--steps", "6", "--width", "6", "--depth", "2", "--lr", "1e10", "--validate-every", "0",
            "--checkpoint-minutes", "1e-9", "--quiet"]  # a checkpoint after every step
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m pnp_stable.training: error: training diverged at step "), lines
    tensors, meta = load_checkpoint(f"{out}.ckpt")  # digest and finiteness checked
    assert f"the last finite checkpoint {out}.ckpt (step {meta['step']}) is kept" in lines[0]
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert not out.exists()  # no weights exported


def test_resume_gives_each_process_its_own_sampler_state(folders, tmp_path):
    """Under torchrun rank r samples from seed + 1000·r: every rank's state is saved, and a resumed rank
    continues its own stream (ranks other than 0 used to restart theirs from the seed)."""
    from dataclasses import asdict

    from pnp_stable.training.checkpoint import save_checkpoint

    config = dataclasses.replace(_config(folders, tmp_path, steps=4), overwrite=True)  # the ranks share one out

    def process(rank):  # a trainer as rank ``rank`` of 2 builds it (without launching processes)
        trainer = Trainer(config, progress=False)
        trainer.rank, trainer.world = rank, 2
        trainer.sampler = PatchSampler(trainer.sampler.images, config.patch, config.batch, config.sigma,
                                       seed=config.seed + 1000 * rank)
        return trainer

    running = [process(rank) for rank in range(2)]
    for rank, trainer in enumerate(running):
        for _ in range(rank + 2):
            next(trainer.sampler)
    first = running[0]
    save_checkpoint(first.checkpoint_path, first.model, first.optimizer, first.scheduler,
                    [trainer.sampler.state() for trainer in running], 2, asdict(config))
    for rank, trainer in enumerate(running):
        resumed = process(rank)
        resumed.resume()
        assert resumed.step == 2 and torch.equal(next(resumed.sampler)[0], next(trainer.sampler)[0]), rank
    single = process(0)
    single.world = 1
    with pytest.raises(ValueError, match="sampler states of 2 process"):
        single.resume()


def test_bf16_training_keeps_weights_norms_and_certificate_in_fp32(folders, tmp_path):
    config = _config(folders, tmp_path, steps=4)
    config.precision = "bf16"
    trainer = Trainer(config, progress=False)
    assert trainer.run() == "finished"
    assert all(t.dtype == torch.float32 for t in trainer.model.state_dict().values())
    assert all(s["exp_avg_sq"].dtype == torch.float32 for s in trainer.optimizer.state.values())
    model = ps.load_denoiser_file(trainer.export())
    assert model.certificate.guaranteed and model.certificate.alpha is not None


def test_power_iteration_under_autocast_runs_in_the_weights_precision():
    conv = ps.denoisers.layers.CertifiedConv(4, 4)
    plain = conv.power_estimate()
    state = conv.power_vector.clone()
    conv.power_step()
    stepped = conv.power_vector.clone()
    conv.power_vector.copy_(state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = conv.power_estimate()
        conv.power_step()
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    assert conv.power_vector.dtype == torch.float32 and torch.equal(conv.power_vector, stepped)


def test_unknown_precision_is_refused(folders, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(data=[str(folders / "train")], out=str(tmp_path / "m.safetensors"), precision="fp16")


def test_holdout_keeps_the_last_images_out_of_training_for_validation(folders, tmp_path):
    config = TrainConfig(data=[str(folders / "train")], out=str(tmp_path / "m.safetensors"), patch=16, batch=2,
                         steps=1, holdout=1, val_images=5, architecture=ARCH)
    trainer = Trainer(config, progress=False)
    images = load_folder(folders / "train", 1)
    assert len(trainer.sampler.images) == 2 and all(torch.equal(a, b) for a, b in zip(trainer.sampler.images, images))
    assert len(trainer.val_images) == 1 and torch.equal(trainer.val_images[0], images[-1])
    assert trainer.validate(0.1) > trainer.validate(0.3)
    with pytest.raises(ValueError, match="holdout"):
        TrainConfig(data=config.data, out=config.out, holdout=1, val=str(folders / "val"))
    with pytest.raises(ValueError, match="no training image"):
        Trainer(TrainConfig(data=config.data, out=config.out, holdout=3, architecture=ARCH), progress=False)


def test_command_line_trains_a_multiscale_network_in_bf16_with_a_holdout(folders, tmp_path, capsys):
    from pnp_stable.training.__main__ import main

    out = tmp_path / "ms.safetensors"
    argv = ["--data", str(folders / "train"), "--out", str(out), "--steps", "2", "--batch", "2", "--patch", "16",
            "--width", "4", "--depth", "3", "--scales", "1", "2", "1", "--precision", "bf16", "--holdout", "1",
            "--activation", "spline", "--validate-every", "0", "--quiet"]
    assert main(argv) == 0
    model = ps.load_denoiser_file(out)
    assert model.config["scales"] == [1, 2, 1] and model.config["activation"] == "spline" and model.certificate.guaranteed
    training = ps.denoisers.read_metadata(out)["training"]
    assert '"precision": "bf16"' in training and '"holdout": 1' in training
    too_few = ["--data", str(folders / "train"), "--out", str(tmp_path / "x.safetensors"), "--depth", "3",
               "--scales", "1", "2", "--quiet"]
    assert main(too_few) == 2  # one factor per block
    assert "scales" in capsys.readouterr().err
    free = tmp_path / "free.safetensors"  # the paper's adaptive enforcement: free weights, sub-steps from ‖A‖
    assert main(["--data", str(folders / "train"), "--out", str(free), "--steps", "2", "--batch", "2", "--patch", "16",
                 "--width", "4", "--depth", "2", "--free-weights", "--quiet"]) == 0
    model = ps.load_denoiser_file(free)
    assert model.config["normalise"] is False and model.certificate.guaranteed
    assert main(["--data", str(folders / "train"), "--out", str(tmp_path / "y.safetensors"), "--model", "dncnn",
                 "--free-weights", "--quiet"]) == 2
    dncnn = ["--data", str(folders / "train"), "--out", str(tmp_path / "d.safetensors"), "--model", "dncnn",
             "--activation", "spline", "--quiet"]
    assert main(dncnn) == 2
    assert "--free-weights apply to the averaged model only" in capsys.readouterr().err


def test_an_interrupted_command_line_run_exports_its_current_network_and_resumes(folders, tmp_path, monkeypatch, capsys):
    from pnp_stable.training import __main__ as cli

    class StoppedAtOnce(Trainer):  # as if SIGTERM came during the first step
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.request_stop()

    out = tmp_path / "c.safetensors"
    argv = ["--data", str(folders / "train"), "--out", str(out), "--steps", "4", "--batch", "2", "--patch", "16",
            "--width", "4", "--depth", "2", "--block", "sll", "--validate-every", "0", "--quiet"]
    monkeypatch.setattr(cli, "Trainer", StoppedAtOnce)
    assert cli.main(argv) == 130
    assert ps.denoisers.read_metadata(out)["stopped"] == "interrupted at step 1 of 4"
    assert ps.load_denoiser_file(out).certificate.guaranteed and "resume with --resume" in capsys.readouterr().err

    class TerminatedAtOnce(Trainer):  # SIGTERM (a scheduler's stop): the shell's 128 + 15
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.request_stop(signal.SIGTERM)

    monkeypatch.setattr(cli, "Trainer", TerminatedAtOnce)
    assert cli.main(argv + ["--resume"]) == 143
    assert ps.denoisers.read_metadata(out)["stopped"] == "interrupted at step 2 of 4"
    monkeypatch.setattr(cli, "Trainer", Trainer)
    assert cli.main(argv + ["--resume"]) == 0
    assert ps.denoisers.read_metadata(out)["stopped"] == "finished at step 4 of 4"


def test_init_keeps_the_block_layout_it_was_trained_with(folders, tmp_path):
    config = _config(folders, tmp_path, steps=1)
    config.architecture = dict(width=4, depth=3, block="sll")
    base = Trainer(config, progress=False)
    base.run()
    path = base.export()
    tuned = _config(folders, tmp_path / "tuned", steps=1)
    tuned.init, tuned.architecture = str(path), dict(width=4, depth=3, block="sll", scales=[1, 2, 1])
    with pytest.raises(ValueError, match="block layout"):
        Trainer(tuned, progress=False)
    tuned.architecture = dict(width=4, depth=3, block="sll", activation="spline")
    with pytest.raises(ValueError, match="activation: file leaky_relu, here spline"):
        Trainer(tuned, progress=False)
    tuned.architecture = dict(width=4, depth=4, block="sll")  # a deeper network's new blocks would start untrained
    with pytest.raises(ValueError, match="depth: file 3, here 4"):
        Trainer(tuned, progress=False)
    tuned.architecture = dict(width=6, depth=3, block="sll")
    assert Trainer(tuned, progress=False).run() == "finished"  # only the width may grow
    other = _config(folders, tmp_path / "other", steps=1)  # another model kind is named as such
    other.init, other.model, other.architecture = str(path), "dncnn", dict(width=4, depth=3)
    with pytest.raises(ValueError, match=r"holds AveragedDenoiser weights, and this run trains DnCNNBaseline "
                                         r"\(--model dncnn\); train it with --model averaged"):
        Trainer(other, progress=False)


def test_train_step_calibrates_when_due(folders, tmp_path):
    trainer = Trainer(_config(folders, tmp_path, steps=4), progress=False)
    ratios = []
    for _ in range(4):
        trainer.train_step()
        ratios.append(float(trainer.model.blocks[0].norm_ratio))
    assert ratios[0] > 1 and ratios[0] == ratios[1] == ratios[2] != ratios[3]  # calibrate_every = 3


def test_a_stop_requested_before_run_stops_after_the_first_step_with_a_checkpoint(folders, tmp_path):
    trainer = Trainer(_config(folders, tmp_path, steps=5), progress=False)
    trainer.request_stop()
    assert trainer.run() == "interrupted" and trainer.step == 1
    assert Trainer(_config(folders, tmp_path, steps=5), resume=True, progress=False).step == 1


def test_an_overflowed_adam_moment_counts_as_divergence_before_the_weights_turn_nan(folders, tmp_path):
    trainer = Trainer(_config(folders, tmp_path, steps=2), progress=False)
    trainer.train_step()
    assert trainer._divergence(torch.tensor(0.1)) is None
    state = next(iter(trainer.optimizer.state.values()))
    state["exp_avg_sq"].view(-1)[0] = float("inf")
    problem = trainer._divergence(torch.tensor(0.1))
    assert problem is not None and "optimizer exp_avg_sq of " in problem and "1 NaN/Inf" in problem


def test_a_signal_during_the_final_calibration_still_saves_the_last_step(folders, tmp_path, monkeypatch):
    """The final calibration and checkpoint run under the stop handler: a SIGTERM there (a scheduler ending the job
    just as it finishes) sets the flag instead of killing the process before the last save."""
    trainer = Trainer(_config(folders, tmp_path, steps=4), progress=False)
    calibrate = trainer._calibrate

    def signalled():
        if trainer.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return calibrate()

    monkeypatch.setattr(trainer, "_calibrate", signalled)
    assert trainer.run() == "finished"
    assert Trainer(_config(folders, tmp_path, steps=4), resume=True, progress=False).step == 4


def test_training_data_options_that_would_be_misread_are_fixed_or_refused(folders, tmp_path):
    """A folder given as one string is one folder (not one per character); without validation images nothing is
    appended to the curve (it held NaN, which JSON readers refuse); a 16-bit training image is refused, not clipped."""
    config = dataclasses.replace(_config(folders, tmp_path, steps=2), data=str(folders / "train"), val=None,
                                 validate_every=1)
    trainer = Trainer(config, progress=False)
    assert trainer.config.data == [str(folders / "train")]
    trainer.run()
    assert trainer.curve == []
    wide = tmp_path / "wide"
    wide.mkdir()
    Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)).save(wide / "a.png")
    with pytest.raises(ValueError, match="not 8-bit"):
        load_folder(wide, 1)


def test_a_reversed_noise_range_is_refused(folders, tmp_path):
    with pytest.raises(ValueError, match="low ≤ high"):
        dataclasses.replace(_config(folders, tmp_path), sigma=[0.2, 0.1])


def test_a_new_run_does_not_replace_an_earlier_one_unasked(folders, tmp_path):
    Trainer(_config(folders, tmp_path, steps=2), progress=False).run()
    with pytest.raises(ValueError, match=r"already exist.*--resume.*--overwrite"):
        Trainer(_config(folders, tmp_path, steps=2), progress=False)
    assert Trainer(dataclasses.replace(_config(folders, tmp_path, steps=2), overwrite=True), progress=False).step == 0
    (tmp_path / "elsewhere.safetensors.ckpt").mkdir()
    with pytest.raises(ValueError, match="is a folder"):  # before any work, not after the last step
        Trainer(dataclasses.replace(_config(folders, tmp_path), out=str(tmp_path / "elsewhere.safetensors")), progress=False)


def test_resume_refuses_changed_image_folders(folders, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(folders / "train", data)
    config = dataclasses.replace(_config(folders, tmp_path, steps=2), data=[str(data)])
    Trainer(config, progress=False).run()
    Image.fromarray(np.zeros((48, 48), dtype=np.uint8)).save(data / "9.png")
    with pytest.raises(ValueError, match="image folders .* changed"):
        Trainer(config, resume=True, progress=False)
    (data / "9.png").unlink()
    assert Trainer(config, resume=True, progress=False).step == 2


def test_a_fine_tune_resumes_without_its_init_file(folders, tmp_path):
    base = Trainer(_config(folders, tmp_path / "base", steps=2), progress=False)
    base.run()
    init = Path(base.export())
    config = dataclasses.replace(_config(folders, tmp_path, steps=4), init=str(init))
    tuned = Trainer(config, progress=False)
    tuned.sampler = SignalAtStep(tuned.sampler, tuned, step=1)
    assert tuned.run() == "interrupted"
    init.rename(tmp_path / "moved.safetensors")  # the checkpoint holds every weight
    resumed = Trainer(config, resume=True, progress=False)
    assert resumed.run() == "finished" and resumed.init_steps == 2
    assert ps.denoisers.read_metadata(resumed.export())["total_steps"] == "6"


def test_channel_conversions_of_training_images_are_announced(folders, tmp_path):
    colour = tmp_path / "colour"
    colour.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(colour / "c.png")
    with pytest.warns(UserWarning, match="1 of the 1 images .* luminance"):
        load_folder(colour, 1)
    with pytest.warns(UserWarning, match="three equal channels"):
        load_folder(folders / "train", 3)


def test_cli_options_of_validation_and_baseline_depth(folders, tmp_path):
    from pnp_stable.training.__main__ import main

    argv = ["--data", str(folders / "train"), "--holdout", "1", "--patch", "16", "--batch", "2", "--steps", "2",
            "--width", "4", "--depth", "2", "--quiet", "--val-sigma", "10/255", "--out"]
    assert main(argv + [str(tmp_path / "v.safetensors")]) == 0
    checkpoint = load_checkpoint(str(tmp_path / "v.safetensors.ckpt"))[1]
    assert checkpoint["config"]["val_sigma"] == pytest.approx(10 / 255)
    assert main(argv[:-1] + ["--model", "dncnn", "--depth", "1", "--out", str(tmp_path / "d.safetensors")]) == 2


def test_log_every_zero_silences_the_log_lines_as_the_help_says():
    from pnp_stable.training.__main__ import build_parser

    args = build_parser().parse_args(["--data", "d", "--out", "o.safetensors", "--quiet", "--log-every", "0"])
    assert args.log_every == 0 and "(0: none)" in build_parser().format_help().replace("\n", " ").replace("  ", " ")


def test_images_smaller_than_the_patch_are_left_out_with_a_warning():
    images = [torch.rand(1, 48, 48), torch.rand(1, 20, 20), torch.rand(1, 40, 40)]
    with pytest.warns(UserWarning, match="1 of 3 training images are smaller than the 40×40 patch"):
        sampler = PatchSampler(images, patch=40, batch=2)
    assert len(sampler.images) == 2


def test_resume_and_overwrite_together_are_refused(tmp_path):
    from pnp_stable._outputs import check_training_outputs

    with pytest.raises(ValueError, match="give one of them"):
        check_training_outputs(tmp_path / "m.ckpt", tmp_path / "m.safetensors", resume=True, overwrite=True)
