"""The ``pnp-stable`` command line, driven as a subprocess like a user would."""

import argparse
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
import torch
from PIL import Image

import pnp_stable as ps
from pnp_stable.cli import build_parser
from pnp_stable.training.__main__ import build_parser as build_train_parser

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_cli(*args, stderr=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "pnp_stable.cli", *map(str, args)], stdout=subprocess.PIPE,
                          stderr=stderr, text=True, timeout=300, env=ENV)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    gray = (np.linspace(0, 1, 24)[None, :] * np.linspace(0, 1, 24)[:, None] * 200 + rng.uniform(0, 50, (24, 24)))
    Image.fromarray(gray.astype(np.uint8)).save(root / "gray.png")
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / "colour.png")
    Image.fromarray(gray[:8, :8].astype(np.uint8)).save(root / "tiny.png")
    nan = gray / 255
    nan[3, 4] = np.nan
    np.save(root / "nan.npy", nan)
    (root / "broken.png").write_bytes(b"not an image")
    torch.manual_seed(0)
    ps.save_denoiser(ps.AveragedDenoiser(channels=1, width=4, depth=1).eval(), root / "gray-net.safetensors")
    ps.save_denoiser(ps.AveragedDenoiser(channels=3, width=5, depth=1).eval(), root / "colour-net.safetensors")
    ps.save_denoiser(ps.AveragedDenoiser(channels=1, width=4, depth=1, noise_adaptive=True).eval(),
                     root / "adaptive-net.safetensors")
    return root


ERROR_CASES = [
    ("missing file", ["deblur", "{root}/absent.png", "--kernel", "gaussian:1", "--noise", "0.01"], "not found"),
    ("unreadable file", ["deblur", "{root}/broken.png", "--kernel", "gaussian:1", "--noise", "0.01"], "cannot read"),
    ("bad kernel spec", ["deblur", "{root}/gray.png", "--kernel", "gauss:1", "--noise", "0.01"], "bad kernel spec"),
    ("kernel larger than image", ["deblur", "{root}/tiny.png", "--kernel", "uniform:9", "--noise", "0.01",
                                  "--denoiser", "{root}/gray-net.safetensors"], "larger than the image"),
    ("gray image, colour denoiser", ["deblur", "{root}/gray.png", "--kernel", "gaussian:1", "--noise", "0.01",
                                     "--denoiser", "{root}/colour-net.safetensors"], "use the 'averaged-sll-gray' denoiser"),
    ("unknown model", ["denoise", "{root}/gray.png", "--sigma", "0.1", "--out", "{root}/o.png", "--denoiser", "nosuch"],
     "unknown denoiser 'nosuch'"),
    ("NaN in input", ["denoise", "{root}/nan.npy", "--sigma", "0.1", "--out", "{root}/o.png"], "NaN"),
    ("missing option", ["deblur", "{root}/gray.png", "--noise", "0.01"], "required: --kernel"),
    ("zero noise", ["deblur", "{root}/gray.png", "--kernel", "gaussian:1", "--noise", "0"], "expected a noise level > 0"),
    ("bad noise value", ["deblur", "{root}/gray.png", "--kernel", "gaussian:1", "--noise", "loud"], "not a number"),
    ("unsafe step", ["deblur", "{root}/gray.png", "--kernel", "gaussian:1", "--noise", "0.01", "--step", "1",
                     "--denoiser", "{root}/gray-net.safetensors"], "allow_unsafe_step"),
    ("denoiser weight past 1/α", ["deblur", "{root}/gray.png", "--kernel", "gaussian:1", "--noise", "0.01",
                                  "--denoiser-weight", "5", "--denoiser", "{root}/gray-net.safetensors"], "1/α_D"),
    *[(f"device {device}", ["denoise", "{root}/gray.png", "--sigma", "0.1", "--out", "{root}/o.png", "--device", device],
       f"unsupported device '{device}'") for device in ("foo", "mps", "meta")],
    ("ensemble of 3", ["denoise", "{root}/gray.png", "--sigma", "0.1", "--out", "{root}/o.png", "--ensemble", "3"],
     "invalid choice"),
    ("guided ensemble", ["deblur", "{root}/gray.png", "--kernel", "gaussian:1", "--noise", "0.01", "--denoiser", "guided",
                         "--ensemble", "2"], "guide=SelfEnsemble"),
    ("even kernel size", ["deblur", "{root}/gray.png", "--kernel", "motion:1:4", "--noise", "0.01"], "odd"),
    ("value '--'", ["deblur", "{root}/gray.png", "--kernel", "gaussian:1", "--noise=--"], "expected a value"),
    ("huge seed", ["deblur", "{root}/gray.png", "--kernel", "gaussian:1", "--noise", "0.01", "--simulate", "--seed", "1e23"],
     "not a whole number"),
    *[(f"train {option} {value}", ["train", "--data", "{root}", "--out", "{root}/t.safetensors", option, value], expected)
      for option, value, expected in [("--patch", "0", "≥ 1"), ("--batch", "0", "≥ 1"), ("--calibrate-every", "0", "≥ 1"),
                                      ("--channels", "2", "invalid choice"), ("--depth", "0", "≥ 1"),
                                      ("--sigma", "nan", "finite"), ("--lr", "inf", "finite")]],
]


def test_errors_exit_2_with_one_line_and_no_traceback(files):
    """Each case is a separate CLI process (started together: most of each is importing torch and deepinv)."""
    processes = {
        case: subprocess.Popen([sys.executable, "-m", "pnp_stable.cli", *(a.format(root=files) for a in args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for case, args, _ in ERROR_CASES
    }
    failures = []
    for case, _, expected in ERROR_CASES:
        _, stderr = processes[case].communicate(timeout=600)
        lines = stderr.strip().splitlines()
        if processes[case].returncode != 2 or len(lines) != 1 or "Traceback" in stderr or expected not in lines[0]:
            failures.append(f"{case}: exit {processes[case].returncode}, stderr {stderr!r}")
    assert not failures, "\n".join(failures)


def test_deblur_simulate_writes_images_plot_and_reports(files, tmp_path):
    out = tmp_path / "restored.png"
    done = run_cli("deblur", files / "gray.png", "--simulate", "--kernel", "gaussian:1.0", "--noise", "7.65/255",
                   "--denoiser", files / "gray-net.safetensors", "--iters", "15", "--out", out, "--plot", tmp_path / "r.png")
    assert done.returncode == 0, done.stderr
    assert out.is_file() and (tmp_path / "restored_degraded.png").is_file() and (tmp_path / "r.png").is_file()
    assert "certified β" in done.stdout and "PSNR: degraded" in done.stdout and "monitor: no violations" in done.stdout
    assert f"denoiser {files / 'gray-net.safetensors'} at σ_d = 10.82/255" in done.stdout  # FB: 1.414·σ_n
    assert done.stderr == ""  # not a terminal: no progress bar


def test_deblur_auto_names_the_colour_network_it_chose_for_the_denoiser_level(files, tmp_path):
    from pnp_stable.denoisers.switch import range_index
    from pnp_stable.restore import DEBLURRING_DEFAULTS
    from pnp_stable.solvers.defaults import TUNED

    levels, names = DEBLURRING_DEFAULTS[3]
    for noise, solver in (("2/255", "drs"), ("20/255", "hqs")):
        done = run_cli("deblur", files / "colour.png", "--simulate", "--kernel", "gaussian:1.0", "--noise", noise,
                       "--solver", solver, "--iters", "2", "--out", tmp_path / "c.png")
        level = TUNED[solver].strength * float(noise.split("/")[0]) / 255
        assert done.returncode == 0, done.stderr
        assert f"denoiser {names[int(range_index(level, levels))]} at σ_d = {level * 255:.4g}/255" in done.stdout


def test_denoise_ensemble_reports_the_unchanged_certificate(files, tmp_path):
    done = run_cli("denoise", files / "gray.png", "--sigma", "0.1", "--denoiser", files / "gray-net.safetensors",
                   "--ensemble", "8", "--out", tmp_path / "e.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "e.png").is_file() and "mean of 8 grid-symmetry conjugates" in done.stdout


def test_denoise_auto_names_the_colour_network_it_chose_for_sigma(files, tmp_path):
    for level, name in (("5/255", "averaged-sll-lownoise-color"), ("25/255", "averaged-sll-highnoise-color")):
        done = run_cli("denoise", files / "colour.png", "--sigma", level, "--out", tmp_path / "c.png")
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert f"denoiser {name}: Lipschitz ≤ 1, averaged with α" in done.stdout
    both = run_cli("denoise", files / "gray.png", files / "colour.png", "--sigma", "25/255", "--out", tmp_path / "both")
    assert both.returncode == 0, both.stderr  # one line per denoiser that ran, not only the last image's
    assert "denoiser averaged-sll-gray: " in both.stdout and "denoiser averaged-sll-highnoise-color: " in both.stdout
    outside = run_cli("denoise", files / "colour.png", "--sigma", "50/255", "--denoiser", "averaged-color", "--out",
                      tmp_path / "c.png")
    assert outside.returncode == 0 and outside.stderr.startswith(
        "pnp-stable denoise: warning: sigma = 50/255 is outside the noise levels denoiser 'averaged-color' was last "
        "trained on") and outside.stderr.count("\n") == 1  # one line, as the errors are written


def test_deblur_accelerate_reports_the_safeguard_and_no_violations(files, tmp_path):
    done = run_cli("deblur", files / "gray.png", "--simulate", "--kernel", "gaussian:1.0", "--noise", "7.65/255",
                   "--denoiser", files / "gray-net.safetensors", "--iters", "15", "--accelerate", "--out", tmp_path / "a.png")
    assert done.returncode == 0, done.stderr
    assert "safeguarded Anderson acceleration" in done.stdout and "monitor: no violations" in done.stdout
    assert "safeguard checked" in done.stdout


def test_deblur_guided_reports_each_certified_round(files, tmp_path):
    out = tmp_path / "guided.png"
    done = run_cli("deblur", files / "gray.png", "--simulate", "--kernel", "gaussian:1.0", "--noise", "2.55/255",
                   "--denoiser", "guided", "--guide", "dncnn-gray", "--guided-rounds", "2", "--iters", "30", "--out", out)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "certified β = 0.5" in done.stdout
    assert "round 1/2: certified for its frozen guide" in done.stdout and "round 2/2" in done.stdout
    assert "safeguarded Anderson acceleration" in done.stdout  # on by default for the guided route


def _stderr_on_a_terminal(*args) -> str:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a fresh pty is 0 columns wide
    process = subprocess.Popen([sys.executable, "-m", "pnp_stable.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=follower, env=ENV)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=300)
    os.close(leader)
    assert process.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_on_a_terminal_and_silenced_by_quiet(files, tmp_path):
    args = ["deblur", files / "gray.png", "--simulate", "--kernel", "gaussian:1.0", "--noise", "0.03",
            "--denoiser", files / "gray-net.safetensors", "--iters", "5", "--tol", "1e-12", "--out", tmp_path / "o.png"]
    assert "PnP-fb" in _stderr_on_a_terminal(*args)
    assert "PnP-fb" not in _stderr_on_a_terminal(*args, "--quiet")
    batch = ["denoise", files / "gray.png", files / "tiny.png", "--sigma", "0.1", "--out", tmp_path / "many",
             "--denoiser", files / "gray-net.safetensors"]
    assert "denoising" in _stderr_on_a_terminal(*batch)
    assert "denoising" not in _stderr_on_a_terminal(*batch, "--quiet")
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["gray_denoised.png", "tiny_denoised.png"]


def test_certify_and_models(files):
    done = run_cli("certify", files / "gray-net.safetensors", "--size", "12", "--steps", "5", "--pairs", "8")
    assert done.returncode == 0, done.stderr
    assert "within the certificate" in done.stdout and "averaged with α" in done.stdout and "at σ" not in done.stdout
    adaptive = run_cli("certify", files / "adaptive-net.safetensors", "--sigma", "0.01", "--size", "12", "--steps", "5",
                       "--pairs", "8")
    assert adaptive.returncode == 0, adaptive.stderr
    assert "at σ = 0.01:" in adaptive.stdout and "within the certificate" in adaptive.stdout
    models = run_cli("models")
    assert models.returncode == 0 and "averaged-gray" in models.stdout and "Lipschitz ≤ 1" in models.stdout
    assert "σ [0, 50]/255" in models.stdout and "shared/data" not in models.stdout  # levels as users give them
    assert "fashion-mnist-lipschitz" in models.stdout and "classifier" in models.stdout


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sub for name, sub in action.choices.items() if name not in ("train", "train-classifier")}


def test_every_option_of_every_subcommand_is_documented_with_its_default():
    from pnp_stable.classification.__main__ import build_parser as build_classifier_parser

    parsers = {**_subparsers(build_parser()), "train": build_train_parser(), "train-classifier": build_classifier_parser()}
    assert set(parsers) == {"deblur", "denoise", "certify", "models", "demo", "train", "classify", "train-classifier"}
    for name, parser in parsers.items():
        options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
        assert options, name
        for action in options:
            assert action.help, f"{name} {action.option_strings} has no help"
        text = " ".join(parser.format_help().split())
        assert text.count("(default:") == len(options), name


def test_certify_verify_accepts_a_shipped_model_name(monkeypatch, tmp_path, capsys):
    """``certify NAME --verify`` resolves NAME like ``certify NAME`` (it used to look for a file named NAME)."""
    from pnp_stable import cli
    from pnp_stable.denoisers import zoo
    from test_denoisers import _rewritten

    fast = ["--size", "8", "--steps", "2", "--pairs", "4", "--restarts", "1"]
    torch.manual_seed(0)
    model = ps.AveragedDenoiser(channels=1, width=4, depth=1).eval()
    path = ps.save_denoiser(model, tmp_path / "tiny.safetensors")
    bound = model.blocks[0].conv.weight_norm_bound()
    _rewritten(path, tmp_path / "understated.safetensors", weight_norm_bounds=f"[{bound / 2}]")
    monkeypatch.setattr(zoo.SHIPPED, "folder", tmp_path)  # both files are now shipped models
    assert cli.main(["certify", "tiny", "--verify", *fast]) == 0
    assert "within the certificate" in capsys.readouterr().out
    assert cli.main(["certify", "understated", "--verify", *fast]) == 2  # its halved bound: loaded with verify=True
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is below the verified bound" in lines[0], lines


def test_certify_refuses_a_model_with_non_finite_parameters(monkeypatch, capsys):
    """A model that bypasses the file checks (built in Python) is checked again before it is certified."""
    from pnp_stable import cli
    from pnp_stable.denoisers import zoo

    fast = ["--size", "8", "--steps", "2", "--pairs", "4", "--restarts", "1"]
    model = ps.AveragedDenoiser(channels=1, width=4, depth=1).eval()
    with torch.no_grad():
        model.blocks[0].conv.bias[0] = float("nan")
    monkeypatch.setattr(zoo, "load_denoiser", lambda name, verify=False: model)
    assert cli.main(["certify", "python-built", *fast]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["pnp-stable certify: error: python-built: tensor 'blocks.0.conv.bias' has 1 NaN/Inf values; "
                     "the model is corrupt or came from a diverged training run"], lines


@pytest.fixture
def small_png(tmp_path):
    Image.fromarray(np.arange(16 * 20, dtype=np.uint8).reshape(16, 20)).save(tmp_path / "small.png")
    return tmp_path / "small.png"


def _one_line_error(capsys, code) -> str:
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_broken_kernel_file_is_one_line_exit_2(small_png, tmp_path, capsys):
    from pnp_stable.cli import main

    np.savez(tmp_path / "k.npz", a=np.ones((3, 3)))
    (tmp_path / "bad.npz").write_bytes((tmp_path / "k.npz").read_bytes()[:100])  # truncated: a BadZipFile inside
    err = _one_line_error(capsys, main(["deblur", str(small_png), "--kernel", f"file:{tmp_path}/bad.npz", "--noise", "0.01"]))
    assert "bad.npz" in err and "not a valid .npz" in err
    err = _one_line_error(capsys, main(["deblur", str(small_png), "--kernel", f"file:{tmp_path}/k.npz:5", "--noise", "0.01"]))
    assert "k.npz" in err and "['a']" in err


def test_a_step_outside_the_theory_names_the_cli_flag_that_runs_it_anyway(small_png, tmp_path, capsys):
    from pnp_stable.cli import main

    args = ["deblur", str(small_png), "--kernel", "gaussian:1", "--noise", "0.01", "--step", "1", "--iters", "2",
            "--out", str(tmp_path / "out.png")]
    err = _one_line_error(capsys, main(args))
    assert "--allow-unsafe-step" in err and "allow_unsafe_step=True" in err
    assert main([*args, "--allow-unsafe-step"]) == 0
    out = capsys.readouterr().out
    assert "β: none" in out and "certified β" not in out


def test_noise_level_below_the_minimum_is_refused_with_the_reason(small_png, capsys):
    from pnp_stable.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["deblur", str(small_png), "--kernel", "gaussian:1", "--noise", "1e-20"])
    err = _one_line_error(capsys, exit_.value.code)
    assert "below the minimum 1e-12" in err and "overflows float32" in err


@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
])
def test_out_of_memory_is_one_line_naming_command_image_and_what_to_do(error, small_png, monkeypatch, capsys):
    import pnp_stable.cli as cli

    def exhausted(args):
        raise error

    monkeypatch.setattr(cli, "cmd_deblur", exhausted)
    monkeypatch.setattr(cli, "cmd_denoise", exhausted)
    err = _one_line_error(capsys, cli.main(["deblur", str(small_png), "--kernel", "gaussian:1", "--noise", "0.01"]))
    assert "deblur ran out of memory on" in err and "small.png (20×16 pixels, 1 channel(s))" in err
    assert "use a smaller image or crop it; or run the denoiser in tiles: --tile 512" in err
    err = _one_line_error(capsys, cli.main(["deblur", str(small_png), "--kernel", "gaussian:1", "--noise", "0.01",
                                            "--tile", "256"]))
    assert "or smaller denoiser tiles: --tile 128" in err
    err = _one_line_error(capsys, cli.main(["denoise", str(small_png), str(small_png), "--sigma", "0.1", "--out",
                                            str(small_png.parent)]))
    assert "denoise ran out of memory on 2 images, the largest" in err


def test_other_runtime_errors_still_propagate(small_png, monkeypatch):
    import pnp_stable.cli as cli

    def broken(args):
        raise RuntimeError("einsum(): operands do not broadcast")

    monkeypatch.setattr(cli, "cmd_deblur", broken)
    with pytest.raises(RuntimeError, match="einsum"):
        cli.main(["deblur", str(small_png), "--kernel", "gaussian:1", "--noise", "0.01"])


def test_progress_lines_when_stderr_is_not_a_terminal_unless_quiet(small_png, tmp_path, monkeypatch, capsys):
    from pnp_stable.cli import main
    from pnp_stable.solvers import loop

    monkeypatch.setattr(loop, "LOG_EVERY", 0.0)  # a line per iteration instead of one per 10 s
    args = ["deblur", str(small_png), "--kernel", "gaussian:1", "--noise", "0.02", "--iters", "3", "--tol", "0",
            "--out", str(tmp_path / "o.png")]
    assert main(args) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("PnP-fb: iteration 3/3, relative residual "), lines
    assert main([*args, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_deblur_a_folder_writes_one_result_per_image_and_skips_what_it_cannot_read(tmp_path, capsys):
    """``pnp-stable deblur DIR --out OUTDIR``: every image of DIR deblurred into OUTDIR; an unreadable file is
    reported and skipped (exit 1) without losing the others."""
    from skimage.io import imsave

    from pnp_stable import cli

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        imsave(folder / f"{name}.png", (rng.random((24, 24)) * 255).astype("uint8"))
    (folder / "broken.png").write_text("not an image")
    (folder / "notes.txt").write_text("ignored")
    weights = ps.save_denoiser(ps.AveragedDenoiser(channels=1, width=4, depth=1).eval(), tmp_path / "tiny.safetensors")
    argv = ["deblur", str(folder), "--kernel", "gaussian:1", "--noise", "0.02", "--iters", "3", "--denoiser",
            str(weights), "--out", str(tmp_path / "restored"), "--quiet"]
    one = [argv[0], str(folder / "a.png"), *argv[2:-3], "--out", str(tmp_path / "single"), "--quiet"]
    assert cli.main(one) == 0 and (tmp_path / "single" / "a_deblurred.png").is_file()  # a suffix-less --out: a folder
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == ["a_deblurred.png", "b_deblurred.png"]
    assert "deblurred 2 of 3 images" in captured.out and "skipped" in captured.err and "broken.png" in captured.err
    assert cli.main([*argv[:-3], "--out", str(tmp_path / "one.png")]) == 2
    assert "needs --out to be a folder" in capsys.readouterr().err


def test_deblur_a_folder_with_simulate_and_refusals_before_any_work(tmp_path, capsys):
    """A folder with one image still reports per file; --simulate writes each degraded image beside its result;
    two inputs that would share a result, --out naming the input folder and a missing denoiser are refused first."""
    from skimage.io import imsave

    from pnp_stable import cli

    folder = tmp_path / "photos"
    folder.mkdir()
    imsave(folder / "a.png", (np.random.default_rng(1).random((20, 20)) * 255).astype("uint8"))
    weights = ps.save_denoiser(ps.AveragedDenoiser(channels=1, width=4, depth=1).eval(), tmp_path / "tiny.safetensors")
    base = ["deblur", str(folder), "--kernel", "gaussian:1", "--noise", "0.02", "--iters", "2", "--quiet"]
    assert cli.main([*base, "--simulate", "--denoiser", str(weights), "--out", str(tmp_path / "r")]) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["a_deblurred.png", "a_deblurred_degraded.png"]
    assert "deblurred 1 of 1 images" in capsys.readouterr().out
    assert cli.main([*base, "--denoiser", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "m")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert cli.main([*base, "--denoiser", str(weights), "--out", str(folder)]) == 2
    assert "is the input folder" in capsys.readouterr().err
    imsave(folder / "a.jpg", (np.random.default_rng(2).random((20, 20)) * 255).astype("uint8"))
    assert cli.main([*base, "--denoiser", str(weights), "--out", str(tmp_path / "c")]) == 2
    assert "the result of a.png and the result of a.jpg both name" in capsys.readouterr().err


def test_certify_fails_when_the_search_exceeds_a_lipschitz_only_certificate(monkeypatch, capsys):
    """A model certified only 'Lipschitz ≤ 1' (no α) whose map triples distances must fail ``certify``."""
    from pnp_stable import cli
    from pnp_stable.denoisers import zoo
    from pnp_stable.theory import Certificate

    class Expanding(torch.nn.Module):
        channels = 1
        certificate = Certificate(lipschitz=1.0, alpha=None, method="a false claim")

        def forward(self, x, sigma=None):
            return 3 * x

    fast = ["--size", "8", "--steps", "2", "--pairs", "4", "--restarts", "1"]
    monkeypatch.setattr(zoo, "load_denoiser", lambda name, verify=False: Expanding().eval())
    assert cli.main(["certify", "expanding", *fast]) == 1
    assert "CERTIFICATE VIOLATED" in capsys.readouterr().out


@pytest.mark.parametrize("tolerance", [0.0, 1e-2])
def test_certify_allows_an_inner_solves_declared_error_and_nothing_more(monkeypatch, capsys, tolerance):
    """D = 1.001·x is within 1e-3·|x| RMS of the identity: a certificate 'Lipschitz 1 within 1e-2 RMS' holds for it,
    and 'Lipschitz 1' exactly does not."""
    from pnp_stable import cli
    from pnp_stable.denoisers import zoo
    from pnp_stable.theory import Certificate

    class NearlyIdentity(torch.nn.Module):
        channels = 1
        certificate = Certificate(lipschitz=1.0, alpha=None, method="claimed", tolerance=tolerance)

        def forward(self, x, sigma=None):
            return 1.001 * x

    monkeypatch.setattr(zoo, "load_denoiser", lambda name, verify=False: NearlyIdentity().eval())
    code = cli.main(["certify", "nearly", "--size", "8", "--steps", "2", "--pairs", "4", "--restarts", "2"])
    out = capsys.readouterr().out
    assert (code, "allowed for the inner solve's tolerance" in out) == ((0, True) if tolerance else (1, False)), out


def test_certify_judges_against_the_certificate_as_it_stands_after_its_checks(monkeypatch, capsys):
    """An inner solve that misses its tolerance during the checks withdraws the certificate: no 'within'."""
    from pnp_stable import cli
    from pnp_stable.denoisers import zoo
    from pnp_stable.theory import Certificate

    class Withdrawing(torch.nn.Module):
        channels, missed = 1, False

        @property
        def certificate(self):
            return Certificate(lipschitz=1.0, alpha=0.5, method="a prox", guaranteed=not self.missed)

        def forward(self, x, sigma=None):
            self.missed = True
            return x / 2

    monkeypatch.setattr(zoo, "load_denoiser", lambda name, verify=False: Withdrawing().eval())
    assert cli.main(["certify", "withdrawing", "--size", "8", "--steps", "2", "--pairs", "4", "--restarts", "1"]) == 1
    out = capsys.readouterr().out
    assert "CERTIFICATE WITHDRAWN during them" in out and "within the certificate" not in out


def test_certify_says_how_large_its_start_images_can_be(monkeypatch, capsys):
    from pnp_stable import cli
    from pnp_stable.denoisers import zoo

    monkeypatch.setattr(zoo, "load_denoiser", lambda name, verify=False: ps.AveragedDenoiser(1, width=4, depth=1).eval())
    assert cli.main(["certify", "tiny", "--size", "1000", "--steps", "1", "--restarts", "1"]) == 2
    assert "--size at most 300" in capsys.readouterr().err


def test_certify_says_what_an_uncertified_model_is(monkeypatch, capsys):
    """No '(certified ≤ None)' and no 'within the certificate' for a model without one; levels above 1 refused."""
    import deepinv as dinv

    from pnp_stable import cli

    class Median(dinv.models.MedianFilter):
        channels = 1

    monkeypatch.setattr("pnp_stable.denoisers.zoo.load_denoiser", lambda name, verify=None: Median().eval())
    assert cli.main(["certify", "median", "--size", "12", "--steps", "3", "--restarts", "1"]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and "within the certificate" not in out and "no certificate" in out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["certify", "median", "--sigma", "25"])
    assert exit_.value.code == 2 and "25/255" in capsys.readouterr().err


def test_denoise_takes_folders_and_checks_every_input_before_any_work(files, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("gray.png", "colour.png"):
        (folder / name).write_bytes((files / name).read_bytes())
    done = run_cli("denoise", folder, "--sigma", "0.1", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["colour_denoised.png", "gray_denoised.png"]
    mixed = run_cli("denoise", folder, "--sigma", "0.1", "--denoiser", "averaged-color", "--out", tmp_path / "mixed")
    assert mixed.returncode == 2 and "gray.png has 1 channel(s)" in mixed.stderr
    assert not (tmp_path / "mixed").exists()  # refused before any output was written
    (folder / "truncated.png").write_bytes((files / "colour.png").read_bytes()[:300])  # its header reads, not its pixels
    partial = run_cli("denoise", folder, "--sigma", "0.1", "--out", tmp_path / "partial")
    assert partial.returncode == 1 and "skipped" in partial.stderr and "truncated.png" in partial.stderr
    assert sorted(p.name for p in (tmp_path / "partial").iterdir()) == ["colour_denoised.png", "gray_denoised.png"]
    assert partial.stdout.count("wrote") == 2 and "denoised 2 of 3 images" in partial.stdout  # every file written is named


def test_an_empty_input_path_is_refused_not_read_as_the_current_folder(tmp_path, capsys):
    from pnp_stable import cli

    for command in (["deblur", "", "--kernel", "gaussian:1.6", "--noise", "0.01"], ["denoise", "", "--sigma", "0.1", "--out", str(tmp_path)]):
        assert cli.main(command) == 2
        assert "input path is empty" in capsys.readouterr().err


def test_train_errors_name_the_command_they_came_from(tmp_path, capsys):
    from pnp_stable import cli

    assert cli.main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pnp-stable train: error: image folder not found") and err.count("\n") == 1


def test_results_keep_a_16_bit_inputs_precision_where_the_format_can(files, tmp_path):
    import tifffile

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)).save(tmp_path / "g16.png")
    tifffile.imwrite(tmp_path / "c16.tif", rng.integers(0, 65535, (24, 24, 3), dtype=np.uint16), photometric="rgb")
    gray = run_cli("denoise", tmp_path / "g16.png", "--sigma", "0.05", "--out", tmp_path / "g.png")
    assert gray.returncode == 0 and "16-bit, as the input" in gray.stdout, gray.stderr
    assert Image.open(tmp_path / "g.png").mode.startswith("I")  # 16-bit greyscale (Pillow's I;16 or I)
    colour = run_cli("denoise", tmp_path / "c16.tif", "--sigma", "0.05", "--out", tmp_path / "c.tif")
    assert colour.returncode == 0 and "16-bit, as the input" in colour.stdout, colour.stderr
    written = tifffile.imread(tmp_path / "c.tif")
    assert written.dtype == np.uint16 and written.shape == (24, 24, 3)
    png = run_cli("denoise", tmp_path / "c16.tif", "--sigma", "0.05", "--out", tmp_path / "c.png")
    assert png.returncode == 0 and "8-bit although c16.tif has 16 bits" in png.stdout  # said, not silent
    array = run_cli("denoise", tmp_path / "c16.tif", "--sigma", "0.05", "--out", tmp_path / "c.npy")
    assert array.returncode == 0 and np.load(tmp_path / "c.npy").dtype == np.float32
    assert np.allclose(np.load(tmp_path / "c.npy"), written / 65535, atol=1 / 65535)
    folder = run_cli("denoise", tmp_path / "c16.tif", "--sigma", "0.05", "--out", tmp_path / "into")
    assert folder.returncode == 0 and tifffile.imread(tmp_path / "into" / "c16_denoised.tif").dtype == np.uint16
    eight = run_cli("denoise", files / "gray.png", "--sigma", "0.05", "--out", tmp_path / "e.png")
    assert eight.returncode == 0 and "16-bit" not in eight.stdout and Image.open(tmp_path / "e.png").mode == "L"


def test_guide_options_without_the_guided_denoiser_and_diverged_runs_are_said(files, tmp_path, capsys):
    from pnp_stable import cli

    stray = ["deblur", str(files / "gray.png"), "--kernel", "gaussian:1", "--noise", "0.01", "--guide", "dncnn-gray"]
    assert cli.main(stray) == 2 and "belong to --denoiser guided" in capsys.readouterr().err
    unsafe = ["deblur", str(files / "gray.png"), "--kernel", "gaussian:1", "--noise", "0.01", "--boundary", "circular",
              "--denoiser", str(files / "gray-net.safetensors"), "--step", "1", "--allow-unsafe-step", "--iters", "60",
              "--out", str(tmp_path / "o.png")]
    assert cli.main(unsafe) == 0
    captured = capsys.readouterr()
    assert "diverged" in captured.out and "warning: gray.png: the iteration diverged" in captured.err
    assert cli.main([]) == 2 and "usage" in capsys.readouterr().err


def test_models_json_gives_metadata_as_json_and_certify_points_a_classifier_to_classify(capsys):
    import json

    from pnp_stable import cli

    assert cli.main(["models", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    denoiser = next(entry for entry in entries if entry["name"] == "averaged-sll-gray")
    assert denoiser["certificate"]["lipschitz"] == 1.0 and isinstance(denoiser["config"], dict)
    classifier = next(entry for entry in entries if entry.get("kind") == "classifier")
    assert isinstance(classifier["test_accuracy"], dict)
    assert cli.main(["certify", classifier["name"]]) == 2
    assert "is a classifier" in capsys.readouterr().err
    assert cli.main(["certify", classifier["file"]]) == 2  # its file too, not 'not a denoiser file'
    assert f"{classifier['file']} is a classifier, not a denoiser" in capsys.readouterr().err
    assert cli._decoded("NaN") == "NaN" and cli._decoded("[1, 2]") == [1, 2] and cli._decoded("a-name") == "a-name"
    assert cli.build_parser().parse_args(["deblur", "x.png", "--kernel", "gaussian:1", "--noise", "0.01",
                                          "--solver", "PGD"]).solver == "fb"  # deepinv's name for it


def test_deepinvs_name_constant_is_accepted_for_zero_padding():
    from pnp_stable.cli import build_parser

    parse = lambda name: build_parser().parse_args(["deblur", "a.png", "--kernel", "gaussian:1", "--noise", "0.01",  # noqa: E731
                                                     "--boundary", name]).boundary
    assert parse("constant") == parse("zeros") == "zeros"


def test_denoise_reports_psnr_against_a_reference_or_a_simulated_degradation(tmp_path):
    """As deblur does: --simulate adds Gaussian noise of --sigma to a clean input (written as OUT_degraded, seeded)
    and --reference names the clean version of one noisy input; both print the PSNR before and after."""
    clean = tmp_path / "clean.png"
    ps.save_image(ps.denoisers.natural_starts(1, (1, 24, 24), noise=0.0, seed=3), clean)
    weights = ps.save_denoiser(ps.AveragedDenoiser(channels=1, width=4, depth=1).eval(), tmp_path / "tiny.safetensors")
    common = ["--sigma", "0.1", "--denoiser", weights, "--quiet"]
    simulated = run_cli("denoise", clean, "--simulate", "--seed", 2, "--out", tmp_path / "d.png", *common)
    assert simulated.returncode == 0, simulated.stderr
    assert f"wrote {tmp_path / 'd_degraded.png'}" in simulated.stdout
    assert "PSNR (clean.png): noisy " in simulated.stdout and " dB → denoised " in simulated.stdout
    referenced = run_cli("denoise", tmp_path / "d_degraded.png", "--reference", clean, "--out", tmp_path / "e.png", *common)
    assert referenced.returncode == 0 and "PSNR (d_degraded.png): noisy" in referenced.stdout, referenced.stderr
    both = run_cli("denoise", clean, "--simulate", "--reference", clean, "--out", tmp_path / "f.png", *common)
    assert both.returncode != 0 and "use one or the other" in both.stderr


def test_deblur_takes_the_relaxation_of_the_python_api(tmp_path):
    """--relaxation λ gives the Krasnosel'skii–Mann iteration with β scaled to λβ, as ps.deblur(relaxation=λ); a λ
    outside (0, 1/β) is refused with the way to force it."""
    clean = tmp_path / "clean.png"
    ps.save_image(ps.denoisers.natural_starts(1, (1, 24, 24), noise=0.0, seed=3), clean)
    common = ["deblur", clean, "--simulate", "--kernel", "gaussian:1", "--noise", "0.01", "--iters", "3", "--quiet",
              "--out", tmp_path / "r.png"]
    relaxed = run_cli(*common, "--relaxation", "0.8")
    assert relaxed.returncode == 0 and "fb+KM" in relaxed.stdout and "λ·β with λ = 0.8" in relaxed.stdout, relaxed.stderr
    too_far = run_cli(*common, "--relaxation", "3")
    assert too_far.returncode != 0 and "relaxation λ = 3.0 must be < 1/β" in too_far.stderr
