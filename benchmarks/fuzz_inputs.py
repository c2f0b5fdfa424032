"""Input fuzz (issue #21, acceptance item 5): bad or odd input to the command line and the Python API.

A reproducible cross product of the issue's seven categories of bad input (output paths, input range and type,
NaN/Inf, tracebacks that must become one line, silent acceptance, late failures, non-image measurements), each
bad value tried on every entry point it reaches: ``pnp-stable deblur`` (with and without ``--simulate``),
``denoise``, ``certify`` and ``train`` run in-process (``pnp_stable.cli.main``), and ``ps.deblur``, ``ps.denoise``,
``ps.solve``, ``ps.blur``, ``ps.to_tensor``, ``ps.load_image``, ``ps.load_denoiser``, ``ps.kernel_from_spec`` and
``ps.load_kernels``. Every input lives in a fresh temporary folder (tiny images, 16×16; tiny denoisers
``AveragedDenoiser(width=4, depth=1)`` saved with ``ps.save_denoiser``; two iterations), so the whole fuzz takes a
few minutes on one thread. Every case is checked for:

- a traceback: an exception other than ``SystemExit`` escaping ``cli.main``, or an API call raising anything but
  a ``ValueError`` (or a subclass); the command line must exit 0, 2 (one line on stderr, no traceback) or 1
  (only ``certify`` with a violated certificate); an API ``ValueError`` needs a non-empty one-line message;
- an overwritten input: every input file (and, for the API, every array, tensor and model passed) is hashed
  before and after the case;
- NaN returned: every returned tensor (estimate, governing iterate, kernel, model weights) and every written
  output (images as the command line hands them to the writer and as read back, weights and checkpoints)
  must be finite;
- silent acceptance: a value that the case marks invalid (``refuse``: the issue's list, and values like them)
  must be refused (exit 2 or ``ValueError``), not run.

Writes ``benchmarks/results/fuzz.md`` (``--out``) with a table per category and every failing case with the
command or call that reproduces it (``--workdir DIR --keep`` keeps the inputs those name as ``{F}``); exit code 1
when any case fails. ``tests/test_fuzz_inputs.py`` runs one case per category.

    .venv/bin/python benchmarks/fuzz_inputs.py
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, header  # noqa: E402

import pnp_stable as ps  # noqa: E402
from pnp_stable import cli  # noqa: E402
from pnp_stable._safetensors import content_digest  # noqa: E402

CATEGORIES = {
    1: "Output paths",
    2: "Input range and type",
    3: "NaN and Inf",
    4: "Tracebacks that must become one line (exit 2)",
    5: "Silent acceptance",
    6: "Late failures",
    7: "Non-image measurements",
}
SIZE = 16  # side of every test image
KINDS = ("traceback", "overwritten input", "NaN returned", "other")


# --- cases ------------------------------------------------------------------------------------------
class Lazy:
    """An API argument built when the case runs, from the fixture folder F and the case's output folder O;
    ``label`` is how the reproduction line writes it."""

    def __init__(self, label: str, make: Callable[[Path, Path], Any]):
        self.label, self.make = label, make

    def __repr__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Case:
    category: int
    name: str
    argv: tuple[str, ...] | None = None  # command line; "{F}" is the fixture folder, "{O}" the case's output folder
    fn: Callable | None = None  # Python API
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    refuse: bool = False  # the issue lists this input as invalid: only a refusal passes
    slow: bool = False  # seconds rather than milliseconds (left out of the quick test subset)

    @property
    def repro(self) -> str:
        if self.argv is not None:
            return "pnp-stable " + " ".join(_quote(a) for a in self.argv)
        label = getattr(self.fn, "label", None) or f"ps.{self.fn.__name__}"
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{label}({', '.join(parts)})"


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w{}./:=+,@%-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def labelled(label: str):
    def wrap(fn):
        fn.label = label
        return fn
    return wrap


def _sub(value, F: Path, O: Path):
    if isinstance(value, Lazy):
        return value.make(F, O)
    if isinstance(value, str):
        return value.replace("{F}", str(F)).replace("{O}", str(O))
    return value


# --- inputs ---------------------------------------------------------------------------------------
def _rand(*shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float64).astype(np.float32)


def _with(arr: np.ndarray, index, value) -> np.ndarray:
    arr = arr.copy()
    arr[index] = value
    return arr


#: bad or odd numpy images (category 2), each also saved as F/arrays/NAME.npy
ARRAYS: dict[str, Callable[[], np.ndarray]] = {
    "float-0-255": lambda: _rand(SIZE, SIZE) * 255,
    "float-negative": lambda: -5 * _rand(SIZE, SIZE),
    "float-slightly-negative": lambda: _rand(SIZE, SIZE) - 0.5,
    "float-3e38": lambda: np.full((SIZE, SIZE), 3e38, np.float32),
    "float64": lambda: _rand(SIZE, SIZE).astype(np.float64),
    "float16": lambda: _rand(SIZE, SIZE).astype(np.float16),
    "int64": lambda: (_rand(SIZE, SIZE) * 255).astype(np.int64),
    "int64-70000": lambda: (_rand(SIZE, SIZE) * 70000).astype(np.int64),
    "int64-negative": lambda: (_rand(SIZE, SIZE) * 255).astype(np.int64) - 1,
    "int32": lambda: (_rand(SIZE, SIZE) * 255).astype(np.int32),
    "uint16": lambda: (_rand(SIZE, SIZE) * 65535).astype(np.uint16),
    "uint8": lambda: (_rand(SIZE, SIZE) * 255).astype(np.uint8),
    "bool": lambda: _rand(SIZE, SIZE) > 0.5,
    "channels-first-3HW": lambda: _rand(3, SIZE, SIZE),
    "HW1": lambda: _rand(SIZE, SIZE, 1),
    "HW2": lambda: _rand(SIZE, SIZE, 2),
    "HW3": lambda: _rand(SIZE, SIZE, 3),
    "HW4": lambda: _rand(SIZE, SIZE, 4),
    "1-D": lambda: _rand(SIZE * SIZE),
    "4-D": lambda: _rand(1, 1, SIZE, SIZE),
    "0-D": lambda: np.array(0.5, np.float32),
    "empty-0x0": lambda: np.zeros((0, 0), np.float32),
    "empty-0xWx3": lambda: np.zeros((0, SIZE, 3), np.float32),
    "1x1": lambda: _rand(1, 1),
    "complex64": lambda: _rand(SIZE, SIZE).astype(np.complex64),
    "object": lambda: _rand(SIZE, SIZE).astype(object),
    "unicode": lambda: np.full((SIZE, SIZE), "a"),
}

#: NaN/Inf images (category 3), saved as F/nan/NAME.npy
NAN_ARRAYS: dict[str, Callable[[], np.ndarray]] = {
    "one-NaN-pixel": lambda: _with(_rand(SIZE, SIZE), (3, 4), np.nan),
    "all-NaN": lambda: np.full((SIZE, SIZE), np.nan, np.float32),
    "one-+Inf-pixel": lambda: _with(_rand(SIZE, SIZE), (0, 0), np.inf),
    "one--Inf-pixel": lambda: _with(_rand(SIZE, SIZE), (15, 15), -np.inf),
    "colour-one-NaN": lambda: _with(_rand(SIZE, SIZE, 3), (2, 2, 1), np.nan),
    "float64-NaN": lambda: _with(_rand(SIZE, SIZE).astype(np.float64), (5, 5), np.nan),
}


def _torch_images() -> dict[str, Callable[[], torch.Tensor]]:
    """Tensors of category 2: the numpy arrays torch can hold, plus a batch of 0 and autograd/strided ones."""
    out: dict[str, Callable[[], torch.Tensor]] = {}
    for name, make in ARRAYS.items():
        try:
            torch.from_numpy(make())
        except (TypeError, RuntimeError):
            continue  # object and unicode arrays have no tensor
        out[name] = lambda make=make: torch.from_numpy(make())
    out["batch-of-0"] = lambda: torch.zeros(0, 1, SIZE, SIZE)
    out["requires-grad"] = lambda: torch.from_numpy(_rand(1, 1, SIZE, SIZE)).requires_grad_()
    out["non-contiguous"] = lambda: torch.from_numpy(_rand(SIZE, SIZE)).t()
    out["bfloat16"] = lambda: torch.from_numpy(_rand(1, 1, SIZE, SIZE)).to(torch.bfloat16)
    out["complex-tensor"] = lambda: torch.complex(torch.rand(1, 1, SIZE, SIZE), torch.rand(1, 1, SIZE, SIZE))
    return out


TORCH_IMAGES = _torch_images()


def _is_colour(shape: tuple[int, ...], torch_layout: bool) -> bool:
    if torch_layout:
        return (len(shape) == 3 and shape[0] == 3) or (len(shape) == 4 and shape[1] == 3)
    return len(shape) == 3 and shape[2] == 3


def _write_weights(path: Path, source: Path, tensors_edit=None, metadata_edit=None) -> None:
    """A copy of the weights file ``source`` with edited tensors and/or metadata and a valid digest."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
    tensors = load_file(str(source))
    if tensors_edit:
        tensors_edit(tensors)
    metadata["sha256"] = before = content_digest(tensors, metadata)
    if metadata_edit:
        metadata_edit(metadata)
        if metadata.get("sha256") == before:  # an edit elsewhere: the digest follows it (edits of the digest stay)
            metadata["sha256"] = content_digest(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def _set(key: str, value: str):
    def edit(metadata):
        metadata[key] = value
    return edit


def _drop(key: str):
    def edit(metadata):
        metadata.pop(key, None)
    return edit


def _scale_alpha(metadata):
    certificate = json.loads(metadata["certificate"])
    certificate["alpha"] = 0.1
    metadata["certificate"] = json.dumps(certificate)


def _nan_tensor(name: str, value: float):
    def edit(tensors):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = value
    return edit


#: weights files with NaN/Inf tensors or corrupt bytes (category 3), in F/weights/
BROKEN_WEIGHTS = ("nan-conv-weight", "nan-conv-bias", "inf-time-logit", "flipped-data-byte", "flipped-header-byte",
                  "truncated", "empty", "text-file")

#: weights files whose metadata is doctored, the digest kept valid (category 4), in F/weights/
DOCTORED_WEIGHTS: dict[str, Callable] = {
    "bounds-scalar": _set("weight_norm_bounds", "0.5"),
    "bounds-NaN": _set("weight_norm_bounds", "[NaN]"),
    "bounds-Infinity": _set("weight_norm_bounds", "[Infinity]"),
    "bounds-1e400": _set("weight_norm_bounds", "[1e400]"),
    "bounds-negative": _set("weight_norm_bounds", "[-1]"),
    "bounds-string": _set("weight_norm_bounds", '["a"]'),
    "bounds-bool": _set("weight_norm_bounds", "[true]"),
    "bounds-too-many": _set("weight_norm_bounds", "[1, 1]"),
    "bounds-null": _set("weight_norm_bounds", "null"),
    "bounds-not-JSON": _set("weight_norm_bounds", "["),
    "bounds-missing": _drop("weight_norm_bounds"),
    "config-not-JSON": _set("config", "{"),
    "config-list": _set("config", "[]"),
    "config-unknown-key": _set("config", '{"channels": 1, "depth": 1, "width": 4, "colour": 1}'),
    "config-channels-0": _set("config", '{"channels": 0, "depth": 1, "width": 4}'),
    "config-depth-string": _set("config", '{"channels": 1, "depth": "1", "width": 4}'),
    "class-unknown": _set("class", "Foo"),
    "class-DnCNNBaseline": _set("class", "DnCNNBaseline"),
    "certificate-invalid": _set("certificate", "{}"),
    "certificate-not-JSON": _set("certificate", "{"),
    "certificate-alpha-changed": _scale_alpha,
    "format-wrong": _set("format", "something/1"),
    "sha256-missing": _drop("sha256"),
    "sha256-wrong": _set("sha256", "0" * 64),
}

#: kernel files (category 4), in F/kernels/, and whether reading them must fail (a colour PNG is read as its
#: luminance; the 1×21 kernel is valid but wider than the 16×16 images, which category 5 checks)
KERNEL_FILES = {
    "truncated.npz": True, "pickled-object.npz": True, "empty.npz": True, "empty.npy": True, "nan.npz": True,
    "inf.npy": True, "negative.npy": True, "all-zero.npy": True, "1-D.npy": True, "text.npy": True,
    "no-arrays.npz": True, "pickled-object.npy": True, "garbage.mat": True, "garbage.png": True, "colour.png": False,
    "kernel.txt": True, "stack.npy": False, "valid.npz": False, "k.png": False, "wide-1x21.npy": False,
}


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def build_fixtures(F: Path) -> None:
    """Every input file of the fuzz, deterministic, in the folder F."""
    F.mkdir(parents=True, exist_ok=True)
    gray_model = ps.AveragedDenoiser(channels=1, width=4, depth=1).eval()
    ps.save_denoiser(gray_model, F / "g.safetensors")
    ps.save_denoiser(ps.AveragedDenoiser(channels=3, width=4, depth=1).eval(), F / "c.safetensors")
    gray8 = (_rand(SIZE, SIZE, seed=1) * 255).astype(np.uint8)
    colour8 = (_rand(SIZE, SIZE, 3, seed=2) * 255).astype(np.uint8)
    _save_png(F / "gray.png", gray8)
    _save_png(F / "color.png", colour8)
    np.save(F / "gray.npy", _rand(SIZE, SIZE, seed=3))
    np.save(F / "color.npy", _rand(SIZE, SIZE, 3, seed=4))
    for folder in ("a", "b"):
        _save_png(F / folder / "img.png", gray8)
    _save_png(F / "c" / "img_denoised.png", gray8)
    os.symlink("gray.png", F / "link.png")
    os.symlink("gray.npy", F / "link.npy")
    for name in ("gray.png", "gray.npy"):
        os.link(F / name, F / f"hard{Path(name).suffix}")
    (F / "notafolder.txt").write_text("a file, not a folder\n")
    (F / "dir.png").mkdir()
    for index in range(2):
        _save_png(F / "train" / f"{index}.png", (_rand(24, 24, seed=10 + index) * 255).astype(np.uint8))
    (F / "emptytrain").mkdir()
    (F / "arrays").mkdir()
    for name, make in ARRAYS.items():
        np.save(F / "arrays" / f"{name}.npy", make(), allow_pickle=True)
    (F / "nan").mkdir()
    for name, make in NAN_ARRAYS.items():
        np.save(F / "nan" / f"{name}.npy", make())
    # kernels
    K = F / "kernels"
    K.mkdir()
    k3 = np.ones((3, 3), np.float32) / 9
    np.savez(K / "valid.npz", k1=k3, k2=np.ones((5, 5)))
    (K / "truncated.npz").write_bytes((K / "valid.npz").read_bytes()[:60])
    np.savez(K / "pickled-object.npz", k=np.array([np.ones((3, 3)), np.ones((5, 5))], dtype=object), allow_pickle=True)
    (K / "empty.npz").write_bytes(b"")
    (K / "empty.npy").write_bytes(b"")
    np.savez(K / "nan.npz", k=_with(k3, (1, 1), np.nan))
    np.save(K / "inf.npy", _with(k3, (0, 0), np.inf))
    np.save(K / "negative.npy", _with(k3, (0, 0), -1.0))
    np.save(K / "all-zero.npy", np.zeros((3, 3)))
    np.save(K / "1-D.npy", np.ones(5))
    (K / "text.npy").write_text("0 1 0\n1 1 1\n0 1 0\n")
    np.savez(K / "no-arrays.npz")
    np.save(K / "pickled-object.npy", np.array([np.ones((3, 3)), np.ones((5, 5))], dtype=object), allow_pickle=True)
    (K / "garbage.mat").write_bytes(b"MATLAB 5.0 MAT-file, but not really" + bytes(range(64)))
    (K / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    _save_png(K / "colour.png", colour8[:3, :3])
    (K / "kernel.txt").write_text("1 1 1\n")
    np.save(K / "stack.npy", np.ones((2, 3, 3)))
    _save_png(K / "k.png", np.full((3, 3), 255, np.uint8))
    np.save(K / "wide-1x21.npy", np.ones((1, 21)))
    # weights
    W = F / "weights"
    W.mkdir()
    source = F / "g.safetensors"
    _write_weights(W / "nan-conv-weight.safetensors", source, _nan_tensor("blocks.0.conv.weight", float("nan")))
    _write_weights(W / "nan-conv-bias.safetensors", source, _nan_tensor("blocks.0.conv.bias", float("nan")))
    _write_weights(W / "inf-time-logit.safetensors", source, _nan_tensor("blocks.0.time_logit", float("inf")))
    data = bytearray(source.read_bytes())
    data[-3] ^= 0xFF
    (W / "flipped-data-byte.safetensors").write_bytes(bytes(data))
    data = bytearray(source.read_bytes())
    data[12] ^= 0x20  # inside the JSON header
    (W / "flipped-header-byte.safetensors").write_bytes(bytes(data))
    (W / "truncated.safetensors").write_bytes(source.read_bytes()[: len(data) // 2])
    (W / "empty.safetensors").write_bytes(b"")
    (W / "text-file.safetensors").write_text("not weights\n")
    for name, edit in DOCTORED_WEIGHTS.items():
        _write_weights(W / f"{name}.safetensors", source, metadata_edit=edit)


# --- API helpers --------------------------------------------------------------------------------
def _model(name: str) -> Lazy:
    path = {"gray": "g.safetensors", "colour": "c.safetensors"}[name]
    return Lazy(f"ps.load_denoiser('{{F}}/{path}')", lambda F, O: ps.load_denoiser(F / path))


def _array(name: str, table=None) -> Lazy:
    table = ARRAYS if table is None else table
    which = "ARRAYS" if table is ARRAYS else "NAN_ARRAYS"
    return Lazy(f"{which}['{name}']()", lambda F, O: table[name]())


def _tensor(name: str) -> Lazy:
    return Lazy(f"TORCH_IMAGES['{name}']()", lambda F, O: TORCH_IMAGES[name]())


def _nan_tensor_image(name: str) -> Lazy:
    return Lazy(f"ps.to_tensor(np.nan_to_num(NAN_ARRAYS['{name}']())) with the NaN/Inf put back",
                lambda F, O: _tensor_with_nonfinite(NAN_ARRAYS[name]()))


def _tensor_with_nonfinite(arr: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(arr)).float()
    return x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]


def _clean(channels: int = 1, batch: int = 1, seed: int = 5) -> Lazy:
    return Lazy(f"torch.rand({batch}, {channels}, {SIZE}, {SIZE})",
                lambda F, O: torch.from_numpy(_rand(batch, channels, SIZE, SIZE, seed=seed)))


@labelled("fuzz_inputs.apply_blur")
def apply_blur(kernel, x, boundary: str = "circular"):
    """``ps.blur(kernel, boundary, img_size=x.shape[1:])(x)``: the operator built for x and applied to it."""
    size = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else None
    return ps.blur(kernel, boundary=boundary, img_size=size)(x)


@labelled("fuzz_inputs.solve_blur")
def solve_blur(y, denoiser, noise_sigma=0.01, kernel="gaussian:1", boundary="circular", **kwargs):
    """``ps.solve(ps.blur(kernel, boundary, img_size=y.shape[1:]), y, denoiser, noise_sigma, max_iter=2, ...)``."""
    physics = ps.blur(kernel, boundary=boundary, img_size=tuple(y.shape[1:]))
    kwargs.setdefault("max_iter", 2)
    return ps.solve(physics, y, denoiser, noise_sigma, **kwargs)


@labelled("fuzz_inputs.solve_cs")
def solve_cs(y, denoiser, solver: str = "fb", m: int = 64):
    """``ps.solve(dinv.physics.CompressedSensing(m, img_size=(1, 16, 16), rng=seed 0), y, denoiser, 0.01,
    solver, max_iter=3)``."""
    import deepinv as dinv

    physics = dinv.physics.CompressedSensing(m=m, img_size=(1, SIZE, SIZE), rng=torch.Generator().manual_seed(0))
    return ps.solve(physics, y, denoiser, 0.01, solver=solver, max_iter=3)


def _cs_measurement(batch: int = 1, edit=None, label: str = "") -> Lazy:
    import deepinv as dinv

    def make(F, O):
        physics = dinv.physics.CompressedSensing(m=64, img_size=(1, SIZE, SIZE), rng=torch.Generator().manual_seed(0))
        y = physics.A(torch.from_numpy(_rand(batch, 1, SIZE, SIZE, seed=7)))
        return edit(y) if edit else y
    return Lazy(f"CS(m=64).A(torch.rand({batch}, 1, {SIZE}, {SIZE})){label}", make)


class BadDenoiser:
    """A ``denoiser(x, sigma)`` that returns ``value`` (NaN, Inf) in ``rows`` of its output from call ``after + 1`` on."""

    def __init__(self, value: float, after: int = 0, rows: int | None = None):
        self.value, self.after, self.rows, self.calls = value, after, rows, 0

    def __call__(self, x, sigma=None):
        self.calls += 1
        out = x.clone()
        if self.calls > self.after:
            out[slice(None) if self.rows is None else slice(0, self.rows)] = self.value
        return out


def _bad_denoiser(value: float, after: int = 0, rows: int | None = None) -> Lazy:
    return Lazy(f"BadDenoiser({value}, after={after}, rows={rows})", lambda F, O: BadDenoiser(value, after, rows))


# --- the case list --------------------------------------------------------------------------------
G, C = "{F}/g.safetensors", "{F}/c.safetensors"
BLUR = ("--kernel", "gaussian:1", "--noise", "0.01", "--iters", "2", "--quiet")
CERTIFY = ("--size", "8", "--restarts", "1", "--steps", "2", "--pairs", "2")
TRAIN = ("train", "--data", "{F}/train", "--out", "{O}/w.safetensors", "--steps", "3", "--patch", "8", "--batch", "2",
         "--width", "4", "--depth", "1", "--validate-every", "0", "--quiet")


def deblur_argv(image: str, *extra: str, simulate: bool = False, denoiser: str = G) -> tuple[str, ...]:
    return ("deblur", image, *(("--simulate",) if simulate else ()), *BLUR, "--denoiser", denoiser, *extra)


def denoise_argv(*images: str, extra: tuple[str, ...] = (), denoiser: str = G) -> tuple[str, ...]:
    return ("denoise", *images, "--sigma", "0.1", "--denoiser", denoiser, "--quiet", *extra)


def command(kind: str, image: str, *extra: str, denoiser: str = G) -> tuple[str, ...]:
    """``kind``: 'deblur', 'deblur --simulate' or 'denoise'."""
    if kind == "denoise":
        return denoise_argv(image, extra=extra, denoiser=denoiser)
    return deblur_argv(image, *extra, simulate=kind.endswith("--simulate"), denoiser=denoiser)


COMMANDS = ("deblur", "deblur --simulate", "denoise")


def all_cases() -> list[Case]:
    """Every case, in a fixed order."""
    out: list[Case] = []

    def cli_case(category, name, argv, refuse=False, slow=False):
        out.append(Case(category, f"pnp-stable {name}", argv=tuple(argv), refuse=refuse, slow=slow))

    def api_case(category, name, fn, *args, refuse=False, **kwargs):
        out.append(Case(category, f"ps.{name}", fn=fn, args=args, kwargs=kwargs, refuse=refuse))

    # 1. output paths -----------------------------------------------------------------------------
    for kind in COMMANDS:
        for image in ("gray.png", "gray.npy"):
            suffix = Path(image).suffix
            spellings = {"same path": f"{{F}}/{image}", "path with /./": f"{{F}}/./{image}",
                         "symlink to it": f"{{F}}/link{suffix}", "hard link to it": f"{{F}}/hard{suffix}"}
            for spelling, path in spellings.items():
                cli_case(1, f"{kind}: --out is the input ({image}, {spelling})",
                         command(kind, f"{{F}}/{image}", "--out", path), refuse=True)
        for suffix, invalid in ((".npy", False), (".txt", True), ("", False), (".webp", True),
                                (".PNG", False), (".jpeg", False), (".tif", False)):
            cli_case(1, f"{kind}: --out with suffix '{suffix}'", command(kind, "{F}/gray.png", "--out", f"{{O}}/out{suffix}"),
                     refuse=invalid)
        for where in ("/proc/x.png", "/proc/no/such/folder/x.png", "{F}/notafolder.txt/x.png"):
            cli_case(1, f"{kind}: --out in an unwritable place {where}", command(kind, "{F}/gray.png", "--out", where),
                     refuse=True)
        cli_case(1, f"{kind}: --out is an existing folder", command(kind, "{F}/gray.png", "--out", "{O}"))
        cli_case(1, f"{kind}: --out is an existing folder named dir.png", command(kind, "{F}/gray.png", "--out", "{F}/dir.png"),
                 refuse=True)
    for kind in COMMANDS[:2]:
        simulate = kind.endswith("--simulate")
        cli_case(1, f"{kind}: no --out (writes IN_deblurred.png next to IN)", deblur_argv("{F}/gray.png", simulate=simulate))
        for plot, invalid in (("{O}/out.png", True), ("{O}/p.xyz", True), ("{F}/gray.png", True),
                              ("{O}/out_degraded.png", simulate), ("/proc/p.png", True), ("{F}/dir.png", True),
                              ("{O}/p", True), ("{O}/p.pdf", False), ("{O}/p.PNG", False)):
            cli_case(1, f"{kind}: --plot {plot} with --out {{O}}/out.png",
                     deblur_argv("{F}/gray.png", "--out", "{O}/out.png", "--plot", plot, simulate=simulate), refuse=invalid)
        cli_case(1, f"{kind}: --out is the --reference file",
                 deblur_argv("{F}/gray.npy", "--reference", "{F}/gray.png", "--out", "{F}/gray.png", simulate=simulate),
                 refuse=True)
        for option in ("--out", "--plot"):
            extra = ("--out", "{F}/kernels/k.png") if option == "--out" else ("--out", "{O}/out.png", "--plot", "{F}/kernels/k.png")
            cli_case(1, f"{kind}: {option} is the kernel file",
                     ("deblur", "{F}/gray.png", *(("--simulate",) if simulate else ()), "--kernel", "file:{F}/kernels/k.png",
                      "--noise", "0.01", "--iters", "2", "--quiet", "--denoiser", G, *extra), refuse=True)
    for name, images, target, invalid in (
        ("two inputs of the same name into one folder", ("{F}/a/img.png", "{F}/b/img.png"), "{O}", True),
        ("two inputs of the same name into a new folder", ("{F}/a/img.png", "{F}/b/img.png"), "{O}/new", True),
        ("the same input twice", ("{F}/a/img.png", "{F}/a/img.png"), "{O}", True),
        ("two inputs into one file name", ("{F}/a/img.png", "{F}/b/img.png"), "{O}/x.png", True),
        ("one input's result would overwrite the other input", ("{F}/a/img.png", "{F}/c/img_denoised.png"), "{F}/c", True),
        ("two inputs of different names into one folder", ("{F}/a/img.png", "{F}/gray.png"), "{O}", False),
        ("one input into its own folder", ("{F}/a/img.png",), "{F}/a", False),
    ):
        cli_case(1, f"denoise: {name}", denoise_argv(*images, extra=("--out", target)), refuse=invalid)

    # 2. input range and type --------------------------------------------------------------------
    for name, make in ARRAYS.items():
        colour = _is_colour(make().shape, torch_layout=False)
        path, den = f"{{F}}/arrays/{name}.npy", C if colour else G
        cli_case(2, f"deblur: .npy {name}", deblur_argv(path, "--out", "{O}/out.png", denoiser=den))
        cli_case(2, f"denoise: .npy {name}", denoise_argv(path, extra=("--out", "{O}/out.png"), denoiser=den))
        api_case(2, f"load_image: .npy {name}", ps.load_image, path)
        api_case(2, f"to_tensor: numpy {name}", ps.to_tensor, _array(name))
        api_case(2, f"deblur: numpy {name}", ps.deblur, _array(name), "gaussian:1", 0.01, denoiser=den, max_iter=2)
        api_case(2, f"denoise: numpy {name}", ps.denoise, _array(name), 0.1, denoiser=den)
    for name, make in TORCH_IMAGES.items():
        den = C if _is_colour(tuple(make().shape), torch_layout=True) else G
        api_case(2, f"to_tensor: torch {name}", ps.to_tensor, _tensor(name))
        api_case(2, f"deblur: torch {name}", ps.deblur, _tensor(name), "gaussian:1", 0.01, denoiser=den, max_iter=2)
        api_case(2, f"denoise: torch {name}", ps.denoise, _tensor(name), 0.1, denoiser=den)

    # 3. NaN and Inf -----------------------------------------------------------------------------
    for name, make in NAN_ARRAYS.items():
        colour = make().ndim == 3
        path, den = f"{{F}}/nan/{name}.npy", C if colour else G
        reference_for = "{F}/color.npy" if colour else "{F}/gray.npy"
        cli_case(3, f"deblur: .npy {name}", deblur_argv(path, "--out", "{O}/out.png", denoiser=den), refuse=True)
        cli_case(3, f"deblur --simulate: .npy {name}", deblur_argv(path, "--out", "{O}/out.png", simulate=True, denoiser=den),
                 refuse=True)
        cli_case(3, f"deblur: --reference .npy {name}",
                 deblur_argv(reference_for, "--reference", path, "--out", "{O}/out.png", denoiser=den), refuse=True)
        cli_case(3, f"denoise: .npy {name}", denoise_argv(path, extra=("--out", "{O}/out.png"), denoiser=den), refuse=True)
        api_case(3, f"load_image: .npy {name}", ps.load_image, path, refuse=True)
        api_case(3, f"to_tensor: numpy {name}", ps.to_tensor, _array(name, NAN_ARRAYS), refuse=True)
        api_case(3, f"to_tensor: torch {name}", ps.to_tensor, _nan_tensor_image(name), refuse=True)
        api_case(3, f"deblur: numpy {name}", ps.deblur, _array(name, NAN_ARRAYS), "gaussian:1", 0.01, denoiser=den,
                 max_iter=2, refuse=True)
        api_case(3, f"deblur: torch {name}", ps.deblur, _nan_tensor_image(name), "gaussian:1", 0.01, denoiser=den,
                 max_iter=2, refuse=True)
        clean = _clean(3 if colour else 1)
        api_case(3, f"deblur: reference= torch {name}", ps.deblur, clean, "gaussian:1", 0.01, denoiser=den, max_iter=2,
                 reference=_nan_tensor_image(name), refuse=True)
        api_case(3, f"deblur: x0= torch {name}", ps.deblur, clean, "gaussian:1", 0.01, denoiser=den, max_iter=2,
                 boundary="circular", x0=_nan_tensor_image(name), refuse=True)
        api_case(3, f"denoise: torch {name}", ps.denoise, _nan_tensor_image(name), 0.1, denoiser=den, refuse=True)
        api_case(3, f"blur: apply to torch {name}", apply_blur, "gaussian:1", _nan_tensor_image(name), refuse=True)
        api_case(3, f"solve: y= torch {name}", solve_blur, _nan_tensor_image(name), _model("colour" if colour else "gray"),
                 refuse=True)
    for value in (float("nan"), float("inf")):
        for after, rows, what in ((0, None, "always"), (1, None, "from the 2nd call"), (0, 1, "in image 1 of 2")):
            batch = 2 if rows else 1
            bad = _bad_denoiser(value, after, rows)
            label = f"a denoiser callable returning {value} {what}"
            api_case(3, f"deblur: {label}", ps.deblur, _clean(batch=batch), "gaussian:1", 0.01, denoiser=bad, max_iter=3)
            api_case(3, f"denoise: {label}", ps.denoise, _clean(batch=batch), 0.1, denoiser=bad, refuse=after == 0)
            api_case(3, f"solve: {label}", solve_blur, _clean(batch=batch), bad, max_iter=3)
    nan_model = Lazy("a tiny AveragedDenoiser with a NaN conv weight", lambda F, O: _nan_model())
    api_case(3, "save_denoiser: a model with a NaN weight", labelled("ps.save_denoiser")(ps.save_denoiser), nan_model,
             "{O}/nan.safetensors", refuse=True)
    for name in BROKEN_WEIGHTS:
        path = f"{{F}}/weights/{name}.safetensors"
        api_case(3, f"load_denoiser: weights {name}", ps.load_denoiser, path, refuse=True)
        api_case(3, f"load_denoiser: weights {name}, verify=True", ps.load_denoiser, path, verify=True, refuse=True)
        cli_case(3, f"certify: weights {name}", ("certify", path, *CERTIFY), refuse=True)
        cli_case(3, f"certify --verify: weights {name}", ("certify", path, "--verify", *CERTIFY), refuse=True)
        cli_case(3, f"deblur: --denoiser weights {name}", deblur_argv("{F}/gray.png", "--out", "{O}/out.png", denoiser=path),
                 refuse=True)
        cli_case(3, f"denoise: --denoiser weights {name}",
                 denoise_argv("{F}/gray.png", extra=("--out", "{O}/out.png"), denoiser=path), refuse=True)
        api_case(3, f"deblur: denoiser= weights {name}", ps.deblur, _clean(), "gaussian:1", 0.01, denoiser=path,
                 max_iter=2, refuse=True)
        api_case(3, f"denoise: denoiser= weights {name}", ps.denoise, _clean(), 0.1, denoiser=path, refuse=True)

    # 4. tracebacks that must become one line -----------------------------------------------------
    for name, invalid in KERNEL_FILES.items():
        spec = f"file:{{F}}/kernels/{name}"
        for simulate in (False, True):
            cli_case(4, f"deblur{' --simulate' if simulate else ''}: --kernel {spec}",
                     ("deblur", "{F}/gray.png", *(("--simulate",) if simulate else ()), "--kernel", spec, "--noise", "0.01",
                      "--iters", "2", "--quiet", "--denoiser", G, "--out", "{O}/out.png"), refuse=invalid)
        api_case(4, f"kernel_from_spec: {spec}", ps.kernel_from_spec, spec, refuse=invalid)
        api_case(4, f"load_kernels: kernels/{name}", ps.load_kernels, f"{{F}}/kernels/{name}", refuse=invalid)
        api_case(4, f"deblur: kernel= {spec}", ps.deblur, _clean(), spec, 0.01, denoiser=G, max_iter=2, refuse=invalid)
    for spec in ("file:{F}/kernels/valid.npz:5", "file:{F}/kernels/valid.npz:-3", "file:{F}/kernels/valid.npz:nope",
                 "file:{F}/kernels/missing.npz", "file:{F}/kernels", "file:{F}/kernels/stack.npy:1"):
        invalid = not spec.endswith("stack.npy:1")
        cli_case(4, f"deblur: --kernel {spec}", ("deblur", "{F}/gray.png", "--kernel", spec, "--noise", "0.01", "--iters", "2",
                                               "--quiet", "--denoiser", G, "--out", "{O}/out.png"), refuse=invalid)
        api_case(4, f"kernel_from_spec: {spec}", ps.kernel_from_spec, spec, refuse=invalid)
    for device in ("foo", "mps", "meta", "cuda:9", "CPU", "cpu:0", "", "cuda:-1"):
        for kind in COMMANDS:
            cli_case(4, f"{kind}: --device '{device}'", command(kind, "{F}/gray.png", "--out", "{O}/out.png",
                                                                f"--device={device}"), refuse=True)
    for device in ("foo", "meta", "cuda:9", "mps"):
        api_case(4, f"deblur: device='{device}'", ps.deblur, _clean(), "gaussian:1", 0.01, denoiser=G, max_iter=2,
                 device=device, refuse=True)
        api_case(4, f"denoise: device='{device}'", ps.denoise, _clean(), 0.1, denoiser=G, device=device, refuse=True)
    noises = {"--": True, "1e-20": True, "-1": True, "nan": True, "inf": True, "loud": True, "": True, "1/0": True,
              "0/0": True, "1e-13": True, "1e400": True, "-0": False, "7.65/255": False, "0x10": True, "1_0": False}
    for value, invalid in noises.items():
        for kind in COMMANDS[:2]:
            cli_case(4, f"{kind}: --noise={value}", ("deblur", "{F}/gray.png", *(("--simulate",) if "simulate" in kind else ()),
                                                    "--kernel", "gaussian:1", f"--noise={value}", "--iters", "2", "--quiet",
                                                    "--denoiser", G, "--out", "{O}/out.png"), refuse=invalid or value == "-0")
        cli_case(4, f"denoise: --sigma={value}", ("denoise", "{F}/gray.png", f"--sigma={value}", "--denoiser", G,
                                                  "--out", "{O}/out.png"), refuse=invalid)
        cli_case(4, f"certify: --sigma={value}", ("certify", G, f"--sigma={value}", *CERTIFY), refuse=invalid)
    for name in DOCTORED_WEIGHTS:
        path = f"{{F}}/weights/{name}.safetensors"
        cli_case(4, f"certify: weights with {name}", ("certify", path, *CERTIFY), refuse=True)
        cli_case(4, f"deblur: --denoiser weights with {name}",
                 deblur_argv("{F}/gray.png", "--out", "{O}/out.png", denoiser=path), refuse=True)
        cli_case(4, f"denoise: --denoiser weights with {name}",
                 denoise_argv("{F}/gray.png", extra=("--out", "{O}/out.png"), denoiser=path), refuse=True)
        api_case(4, f"load_denoiser: weights with {name}", ps.load_denoiser, path, refuse=True)
    cli_case(4, "certify averaged-gray --verify (shipped model, small search)",
             ("certify", "averaged-gray", "--verify", *CERTIFY), slow=True)
    cli_case(4, "certify: tiny model --verify", ("certify", G, "--verify", *CERTIFY))
    for extra, invalid in ((("--size=0",), True), (("--size=1",), False), (("--restarts=0",), True), (("--steps=0",), True),
                           (("--pairs=0",), True), (("--seed=-1",), True), (("--seed=1e23",), True), (("--size=x",), True)):
        cli_case(4, f"certify: {' '.join(extra)}", ("certify", G, *CERTIFY, *extra), refuse=invalid)
    for model, invalid in (("nope", True), ("{F}/missing.safetensors", True), ("{F}/dir.png", True), ("{F}/gray.png", True),
                           ("{F}", True), ("", True)):
        cli_case(4, f"certify: model '{model}'", ("certify", model, *CERTIFY), refuse=invalid)
    for extra, invalid in (
        (("--patch=0",), True), (("--batch=0",), True), (("--calibrate-every=0",), True), (("--channels=2",), True),
        (("--channels=0",), True), (("--depth=0",), True), (("--sigma=nan",), True), (("--lr=1e10",), True),
        (("--seed=1e23",), True), (("--seed=-1",), True), (("--steps=0",), True), (("--width=0",), True),
        (("--lr=inf",), True), (("--lr=0",), True), (("--lr=nan",), True), (("--patch=100",), True),
        (("--data", "{F}/missing"), True), (("--data", "{F}/emptytrain"), True), (("--sigma", "0.2", "0.1"), False),
        (("--sigma", "0.1", "0.2", "0.3"), True), (("--loss-floor=0",), True), (("--checkpoint-minutes=0",), True),
        (("--validate-every=-1",), True), (("--log-every=0",), False), (("--log-every=-1",), True),
        (("--init", "{F}/missing.safetensors"), True),
        (("--init", "{F}/weights/nan-conv-weight.safetensors"), True), (("--init", C), True),
        (("--out", "{F}/dir.png"), True), (("--out", "/proc/w.safetensors"), True), (("--resume",), True),
        (("--model=dncnn", "--noise-adaptive"), True), (("--val", "{F}/emptytrain"), True), ((), False),
    ):
        cli_case(4, f"train: {' '.join(extra) or '(valid)'}", (*TRAIN, *extra), refuse=invalid)

    # 5. silent acceptance ------------------------------------------------------------------------
    specs = {"motion:1:4": True, "gaussian:1.5:4": True, "gaussian:1:2.5": True, "uniform:0": True, "gaussian:-1": True,
             "motion:x": True, "uniform:2": True, "uniform:-3": True, "gaussian:0": True, "gaussian:nan": True,
             "gaussian:inf": True, "motion:1:0": True, "motion:1.5": True, "uniform:1e400": True, "motion:nan": True,
             "gaussian:1:1e400": True, "": True, "gaussian": True, "gaussian:": True, ":": True, "box:3": True,
             "gaussian:1:3:5": True, "GAUSSIAN:1": True, "uniform:3.0": False, "gaussian: 1": False, "motion:-1": False}
    for spec, invalid in specs.items():
        for simulate in (False, True):
            cli_case(5, f"deblur{' --simulate' if simulate else ''}: --kernel='{spec}'",
                     ("deblur", "{F}/gray.png", *(("--simulate",) if simulate else ()), f"--kernel={spec}", "--noise", "0.01",
                      "--iters", "2", "--quiet", "--denoiser", G, "--out", "{O}/out.png"), refuse=invalid)
        api_case(5, f"kernel_from_spec: '{spec}'", ps.kernel_from_spec, spec, refuse=invalid)
        api_case(5, f"deblur: kernel='{spec}'", ps.deblur, _clean(), spec, 0.01, denoiser=G, max_iter=2, refuse=invalid)
        api_case(5, f"blur: kernel='{spec}'", apply_blur, spec, _clean(), refuse=invalid)
    options = {"--step": {"inf": True, "-1": True, "0": True, "nan": True, "1e10": True, "x": True},
               "--iters": {"0": True, "-1": True, "1.5": True, "x": True, "1e3": True},
               "--tol": {"nan": True, "-1": False, "inf": False, "x": True, "0": False},
               "--denoiser-weight": {"nan": True, "0": True, "-1": True, "inf": True, "1e9": True},
               "--denoiser-sigma": {"nan": True, "-1": True, "inf": True, "0": True},
               "--guided-rounds": {"0": True}}
    for option, values in options.items():
        for value, invalid in values.items():
            for simulate in (False, True):
                cli_case(5, f"deblur{' --simulate' if simulate else ''}: {option}={value}",
                         deblur_argv("{F}/gray.png", f"{option}={value}", "--out", "{O}/out.png", simulate=simulate),
                         refuse=invalid)
    keywords = {
        "denoiser_sigma": {"inf": float("inf"), "nan": float("nan"), "-1": -1.0, "0": 0.0},
        "max_iter": {"-1": -1, "0": 0, "1.5": 1.5, "True": True, "nan": float("nan"), "inf": float("inf")},
        "step": {"inf": float("inf"), "nan": float("nan"), "-1": -1.0, "0": 0.0, "1e10": 1e10},
        "tol": {"nan": float("nan")},
        "relaxation": {"nan": float("nan"), "0": 0.0, "-1": -1.0, "inf": float("inf")},
        "denoiser_weight": {"nan": float("nan"), "0": 0.0, "-1": -1.0, "inf": float("inf")},
        "solver": {"'foo'": "foo"},
        "progress": {"'foo'": "foo"},
    }
    for keyword, values in keywords.items():
        for label, value in values.items():
            api_case(5, f"deblur: {keyword}={label}", ps.deblur, _clean(), "gaussian:1", 0.01, denoiser=G,
                     **({"max_iter": 2} if keyword != "max_iter" else {}), **{keyword: value}, refuse=True)
            api_case(5, f"solve: {keyword}={label}", solve_blur, _clean(), _model("gray"),
                     **{keyword: value}, refuse=True)
    for label, value in {"nan": float("nan"), "-1": -1.0, "inf": float("inf"), "0": 0.0, "1e-20": 1e-20}.items():
        api_case(5, f"deblur: noise_sigma={label}", ps.deblur, _clean(), "gaussian:1", value, denoiser=G, max_iter=2,
                 refuse=True)
        api_case(5, f"solve: noise_sigma={label}", solve_blur, _clean(), _model("gray"), value, refuse=True)
        api_case(5, f"denoise: sigma={label}", ps.denoise, _clean(), value, denoiser=G, refuse=label != "0")
    api_case(5, "deblur: boundary='foo'", ps.deblur, _clean(), "gaussian:1", 0.01, denoiser=G, max_iter=2, boundary="foo",
             refuse=True)
    for spec in ("gaussian:5", "file:{F}/kernels/wide-1x21.npy"):
        for boundary in ("valid", "circular", "reflect", "replicate", "zeros"):
            what = f"a kernel larger than the image ({spec}), boundary {boundary}"
            api_case(5, f"deblur: {what}", ps.deblur, _clean(), spec, 0.01, denoiser=G, max_iter=2, boundary=boundary,
                     refuse=True)
            api_case(5, f"blur: {what}", apply_blur, spec, _clean(), boundary, refuse=True)
            for simulate in (False, True):
                cli_case(5, f"deblur{' --simulate' if simulate else ''}: {what}",
                         ("deblur", "{F}/gray.png", *(("--simulate",) if simulate else ()), "--kernel", spec, "--noise", "0.01",
                          "--iters", "2", "--quiet", "--denoiser", G, "--boundary", boundary, "--out", "{O}/out.png"),
                         refuse=True)

    # 6. late failures ------------------------------------------------------------------------------
    kernels = {"None": None, "'abc'": "abc", "123": 123, "1.5": 1.5, "[]": [], "[[1]]": [[1]], "zeros 3x3": np.zeros((3, 3)),
               "[[-1.0]]": [[-1.0]], "{}": {}, "object()": object(),
               "complex 3x3": torch.ones(3, 3, dtype=torch.complex64), "3-D [2, 3, 3]": np.ones((2, 3, 3)),
               "b'gaussian:1'": b"gaussian:1", "bool 3x3": torch.ones(3, 3, dtype=torch.bool),
               "ragged [[1, 2], [3]]": [[1, 2], [3]], "nan": float("nan"), "Path('gaussian:1')": Path("gaussian:1")}
    valid_kernels = {"[[1]]", "bool 3x3"}
    for label, kernel in kernels.items():
        api_case(6, f"deblur: kernel={label}", ps.deblur, _clean(), kernel, 0.01, denoiser=G, max_iter=2,
                 refuse=label not in valid_kernels)
        api_case(6, f"blur: kernel={label}", apply_blur, kernel, _clean(), refuse=label not in valid_kernels)
    sigmas = {"[0.1] * 3": ([0.1] * 3, False), "[0.1] * 2": ([0.1] * 2, True), "[0.1] * 4": ([0.1] * 4, True),
              "[0.1]": ([0.1], False), "[]": ([], True), "[[0.1] * 3]": ([[0.1] * 3], False),
              "torch.tensor([0.1] * 3)": (torch.tensor([0.1] * 3), False), "np.array([0.1] * 3)": (np.array([0.1] * 3), False),
              "[0.1, nan, 0.1]": ([0.1, float("nan"), 0.1], True), "[0.1, -1, 0.1]": ([0.1, -1.0, 0.1], True),
              "['a'] * 3": (["a"] * 3, True), "None": (None, True), "'0.1'": ("0.1", True),
              "torch.tensor(0.1)": (torch.tensor(0.1), False), "[0.1, 0.1, inf]": ([0.1, 0.1, float("inf")], True),
              "torch.tensor([0.1] * 2)": (torch.tensor([0.1] * 2), True)}
    for label, (sigma, invalid) in sigmas.items():
        for channels, den in ((1, G), (3, C)):
            api_case(6, f"denoise: 3 {'gray' if channels == 1 else 'colour'} images, sigma={label}", ps.denoise,
                     _clean(channels, batch=3), sigma, denoiser=den, refuse=invalid)
    late = [
        ("deblur: denoiser=42", ps.deblur, (_clean(), "gaussian:1", 0.01), dict(denoiser=42, max_iter=2), True),
        ("deblur: denoiser='nope'", ps.deblur, (_clean(), "gaussian:1", 0.01), dict(denoiser="nope", max_iter=2), True),
        ("deblur: a colour denoiser on a gray image", ps.deblur, (_clean(), "gaussian:1", 0.01), dict(denoiser=C, max_iter=2), True),
        ("deblur: a gray denoiser on a colour image", ps.deblur, (_clean(3), "gaussian:1", 0.01), dict(denoiser=G, max_iter=2), True),
        ("deblur: a one-argument denoiser lambda x: x", ps.deblur, (_clean(), "gaussian:1", 0.01),
         dict(denoiser=Lazy("lambda x: x", lambda F, O: lambda x: x), max_iter=2), False),
        ("deblur: x0 of the wrong shape", ps.deblur, (_clean(), "gaussian:1", 0.01),
         dict(denoiser=G, max_iter=2, boundary="circular", x0=Lazy("torch.rand(1, 1, 8, 8)", lambda F, O: torch.rand(1, 1, 8, 8))), True),
        ("deblur: reference of the wrong shape", ps.deblur, (_clean(), "gaussian:1", 0.01),
         dict(denoiser=G, max_iter=2, reference=Lazy("torch.rand(1, 1, 8, 8)", lambda F, O: torch.rand(1, 1, 8, 8))), True),
        ("deblur: reference uint8 numpy", ps.deblur, (_clean(), "gaussian:1", 0.01),
         dict(denoiser=G, max_iter=2, reference=_array("uint8")), False),
        ("deblur: denoiser='guided', guide='nope'", ps.deblur, (_clean(), "gaussian:1", 0.01),
         dict(denoiser="guided", guide="nope", max_iter=2), True),
        ("deblur: denoiser='guided' with step=0.1", ps.deblur, (_clean(), "gaussian:1", 0.01),
         dict(denoiser="guided", guide=G, step=0.1, max_iter=2), True),
        ("deblur: solver='fista'", ps.deblur, (_clean(), "gaussian:1", 0.01), dict(denoiser=G, solver="fista", max_iter=2), False),
        ("deblur: boundary=None", ps.deblur, (_clean(), "gaussian:1", 0.01), dict(denoiser=G, boundary=None, max_iter=2), True),
        ("denoise: denoiser=42", ps.denoise, (_clean(), 0.1), dict(denoiser=42), True),
        ("denoise: denoiser='nope'", ps.denoise, (_clean(), 0.1), dict(denoiser="nope"), True),
        ("denoise: a colour denoiser on a gray image", ps.denoise, (_clean(), 0.1), dict(denoiser=C), True),
        ("denoise: denoiser='guided'", ps.denoise, (_clean(), 0.1), dict(denoiser="guided"), True),
        ("solve: denoiser=None", solve_blur, (_clean(), None), {}, True),
        ("solve: y of another size than the operator's", labelled("ps.solve")(ps.solve),
         (Lazy("ps.blur('gaussian:1', img_size=(1, 16, 16))", lambda F, O: ps.blur("gaussian:1", img_size=(1, SIZE, SIZE))),
          Lazy("torch.rand(1, 1, 12, 12)", lambda F, O: torch.rand(1, 1, 12, 12)), _model("gray"), 0.01),
         dict(max_iter=2), True),
        ("load_denoiser: a name that is not shipped", ps.load_denoiser, ("nope",), {}, True),
        ("load_denoiser: None", ps.load_denoiser, (None,), {}, True),
        ("load_image: a missing file", ps.load_image, ("{F}/missing.png",), {}, True),
        ("load_image: a folder", ps.load_image, ("{F}/dir.png",), {}, True),
        ("load_image: a text file", ps.load_image, ("{F}/notafolder.txt",), {}, True),
        ("load_image: a weights file", ps.load_image, (G,), {}, True),
        ("load_kernels: a folder", ps.load_kernels, ("{F}/kernels",), {}, True),
    ]
    for name, fn, args, kwargs, invalid in late:
        api_case(6, name, fn, *args, refuse=invalid, **kwargs)

    # 7. non-image measurements ---------------------------------------------------------------------
    measurements = {
        "y [1, 64]": (_cs_measurement(1), False),
        "y [2, 64]": (_cs_measurement(2), False),
        "y [1, 63] (wrong m)": (_cs_measurement(1, lambda y: y[:, :63], "[:, :63]"), True),
        "y [1, 65] (wrong m)": (_cs_measurement(1, lambda y: torch.cat([y, y[:, :1]], 1), " with one more entry"), True),
        "y [64] (no batch axis)": (_cs_measurement(1, lambda y: y[0], "[0]"), True),
        "y [1, 1, 64]": (_cs_measurement(1, lambda y: y[:, None], "[:, None]"), True),
        "y with a NaN": (_cs_measurement(1, lambda y: _with_t(y, (0, 3), float("nan")), " with y[0, 3] = NaN"), True),
        "y with an Inf": (_cs_measurement(1, lambda y: _with_t(y, (0, 3), float("inf")), " with y[0, 3] = Inf"), True),
        "y as numpy": (_cs_measurement(1, lambda y: y.numpy(), ".numpy()"), True),
        "y int64": (_cs_measurement(1, lambda y: (y * 100).long(), " * 100 as int64"), True),
        "y an image [1, 1, 16, 16]": (_clean(), True),
        "y empty [0, 64]": (_cs_measurement(1, lambda y: y[:0], "[:0]"), True),
        "y float64": (_cs_measurement(1, lambda y: y.double(), ".double()"), False),
    }
    for label, (y, invalid) in measurements.items():
        for solver in ("fb", "hqs", "drs", "admm"):
            api_case(7, f"solve: compressed sensing m=64, {label}, solver {solver}", solve_cs, y, _model("gray"), solver,
                     refuse=invalid)
    api_case(7, "solve: compressed sensing, the operator's m=63 and y [1, 64]", solve_cs, _cs_measurement(1), _model("gray"),
             "fb", 63, refuse=True)
    api_case(7, "solve: compressed sensing with a colour denoiser", solve_cs, _cs_measurement(1), _model("colour"), "fb",
             refuse=True)
    names = [case.name for case in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"duplicate case names: {duplicates}"
    return out


def _with_t(y: torch.Tensor, index, value) -> torch.Tensor:
    y = y.clone()
    y[index] = value
    return y


def _nan_model():
    model = ps.AveragedDenoiser(channels=1, width=4, depth=1).eval()
    with torch.no_grad():
        model.blocks[0].conv.weight.view(-1)[0] = float("nan")
    return model


# --- running a case ------------------------------------------------------------------------------
@dataclass
class Outcome:
    case: Case
    failures: list[tuple[str, str]]  # (kind, message)
    result: str  # 'exit N' or 'returned' / 'ValueError'
    seconds: float


class CaseTimeout(Exception):
    pass


def _fingerprint(value) -> str | None:
    """A digest of an array, tensor or model passed to the API (None for other values)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        try:
            data = t.contiguous().numpy().tobytes()
        except (TypeError, RuntimeError):
            data = repr(t.float().tolist() if not t.is_complex() else t.tolist()).encode()
        return f"{t.dtype}{tuple(t.shape)}" + hashlib.sha256(data).hexdigest()
    if isinstance(value, np.ndarray):
        data = repr(value.tolist()).encode() if value.dtype == object else value.tobytes()
        return f"{value.dtype}{value.shape}" + hashlib.sha256(data).hexdigest()
    if isinstance(value, torch.nn.Module):
        state = value.state_dict()
        return f"training={value.training}" + "".join(f"{k}:{_fingerprint(v)}" for k, v in sorted(state.items()))
    if isinstance(value, (list, tuple)):
        parts = [_fingerprint(v) for v in value]
        return None if all(p is None for p in parts) else repr(parts)
    return None


def _nonfinite(value, where: str = "result", depth: int = 0) -> list[str]:
    """Where a returned value holds NaN/Inf: tensors, arrays, models (their weights and their output on a test
    image), dicts, lists and the estimate/governing tensors of a result."""
    if depth > 3:
        return []
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.is_floating_point() or t.is_complex():
            count = int((~torch.isfinite(t)).sum())
            return [f"{where} has {count} NaN/Inf value(s)"] if count else []
        return []
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.inexact):
            count = int((~np.isfinite(value)).sum())
            return [f"{where} has {count} NaN/Inf value(s)"] if count else []
        return []
    if isinstance(value, torch.nn.Module):
        found = [m for name, t in value.state_dict().items() for m in _nonfinite(t, f"{where}.{name}", depth + 1)]
        channels = getattr(value, "channels", None)
        if isinstance(channels, int) and channels > 0 and not found:
            try:
                with torch.no_grad():
                    output = value(torch.from_numpy(_rand(1, channels, SIZE, SIZE, seed=9)), 0.1)
            except Exception:  # noqa: BLE001 - an unusable model is another kind of failure (see run_case)
                return found
            found += _nonfinite(output, f"{where}(x, 0.1)", depth + 1)
        return found
    if isinstance(value, dict):
        return [m for k, v in value.items() for m in _nonfinite(v, f"{where}[{k!r}]", depth + 1)]
    if isinstance(value, (list, tuple)):
        return [m for i, v in enumerate(value) for m in _nonfinite(v, f"{where}[{i}]", depth + 1)]
    found = []
    for name in ("estimate", "governing"):
        if isinstance(getattr(value, name, None), torch.Tensor):
            found += _nonfinite(getattr(value, name), f"{where}.{name}", depth + 1)
    for name in ("earlier_rounds",):
        for i, earlier in enumerate(getattr(value, name, None) or []):
            found += _nonfinite(earlier, f"{where}.{name}[{i}]", depth + 1)
    return found


def _written_nonfinite(path: Path) -> list[str]:
    """NaN/Inf in a file the command line wrote: images read back, arrays, weights and checkpoints."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"):
            with Image.open(path) as im:
                return _nonfinite(np.asarray(im), f"written {path.name}")
        if suffix == ".npy":
            return _nonfinite(np.load(path, allow_pickle=False), f"written {path.name}")
        if suffix in (".safetensors", ".ckpt"):
            from safetensors.torch import load_file

            return _nonfinite(load_file(str(path)), f"written {path.name}")
    except Exception as err:  # noqa: BLE001 - an unreadable output is a failure to report, not to raise
        return [f"written {path.name} cannot be read back: {type(err).__name__}: {err}"]
    return []


def _snapshot(folder: Path) -> dict[str, tuple[str, str]]:
    """Every file and link under ``folder``: ('file', sha256) or ('link', target)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = ("link", os.readlink(path))
        elif path.is_file():
            found[key] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        elif path.is_dir():
            found[key] = ("dir", "")
    return found


def _restore(folder: Path, before: dict, after: dict, originals: dict[str, bytes]) -> tuple[list[str], list[Path]]:
    """Put the fixture folder back as it was: changed or removed inputs are reported and restored; new files
    (outputs written next to an input) are returned and removed."""
    changed = [k for k, v in before.items() if after.get(k) != v]
    created = [folder / k for k in after if k not in before]
    for key in changed:
        path = folder / key
        kind, value = before[key]
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir() and kind != "dir":
            shutil.rmtree(path)
        if kind == "file":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(originals[key])
        elif kind == "link":
            os.symlink(value, path)
        else:
            path.mkdir(parents=True, exist_ok=True)
    return changed, created


def _fresh_process_warnings() -> None:
    """The warning filters of a fresh ``pnp-stable`` process (each warning once per place; deprecation, import
    and resource warnings hidden), so that stderr holds what a user would see."""
    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)


def _one_line(text: str) -> bool:
    return len(text.strip("\n").split("\n")) == 1 and text.strip() != ""


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    try:
        location = Path(frame.filename).resolve().relative_to(Path(ps.__file__).resolve().parents[1])
    except ValueError:
        location = Path(frame.filename).name
    return f" (raised at {location}:{frame.lineno})"


def run_case(case: Case, F: Path, O: Path, written: list) -> Outcome:
    failures: list[tuple[str, str]] = []
    start = time.perf_counter()
    if case.argv is not None:
        argv = [_sub(a, F, O) for a in case.argv]
        stdout, stderr = io.StringIO(), io.StringIO()
        code, escaped = None, None
        with warnings.catch_warnings(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            _fresh_process_warnings()
            try:
                code = cli.main(argv)
            except SystemExit as exit_:
                code = 0 if exit_.code is None else exit_.code
            except CaseTimeout:
                raise
            except Exception as err:  # noqa: BLE001 - the fuzz records it
                escaped = err
        err_text = stderr.getvalue()
        if escaped is not None:
            failures.append(("traceback", f"{type(escaped).__name__}: {' '.join(str(escaped).split())[:300]}"
                                          f"{_where(escaped)}"))
            result = f"{type(escaped).__name__} escaped"
        else:
            result = f"exit {code}"
            if code == 2:
                if not _one_line(err_text) or "Traceback" in err_text:
                    lines = err_text.strip("\n").split("\n")
                    failures.append(("other", f"exit 2 with {len(lines)} stderr line(s): "
                                              f"{' | '.join(line.strip() for line in lines)[:300]}"))
            elif code == 1:
                if not (argv[0] == "certify" and "CERTIFICATE VIOLATED" in stdout.getvalue()):
                    failures.append(("other", f"exit 1 outside certify's violated certificate; stderr: {err_text.strip()[:200]}"))
            elif code != 0:
                failures.append(("other", f"exit {code}; stderr: {err_text.strip()[:200]}"))
            if case.refuse and code == 0:
                failures.append(("other", "accepted (exit 0) an input this case marks invalid (a refusal, exit 2, was expected)"))
        for message in written:
            failures.append(("NaN returned", message))
        if O.exists():
            for path in sorted(O.rglob("*")):
                if path.is_file():
                    failures += [("NaN returned", m) for m in _written_nonfinite(path)]
    else:
        fn = case.fn
        args = [_sub(a, F, O) for a in case.args]
        kwargs = {k: _sub(v, F, O) for k, v in case.kwargs.items()}
        passed = [(f"argument {i}", a) for i, a in enumerate(args)] + [(f"{k}=", v) for k, v in kwargs.items()]
        prints = {label: _fingerprint(value) for label, value in passed}
        value, raised = None, None
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                value = fn(*args, **kwargs)
            except CaseTimeout:
                raise
            except Exception as err:  # noqa: BLE001 - the fuzz records it
                raised = err
        if raised is None:
            result = "returned"
            failures += [("NaN returned", m) for m in _nonfinite(value)]
            if case.refuse:
                failures.append(("other", "returned for an input this case marks invalid (a ValueError was expected)"))
        elif isinstance(raised, ValueError):
            result = type(raised).__name__
            message = str(raised).strip()
            if not message:
                failures.append(("other", f"{type(raised).__name__} with an empty message"))
            elif "\n" in message:
                failures.append(("other", f"{type(raised).__name__} message of {message.count(chr(10)) + 1} lines: "
                                          f"{' | '.join(message.splitlines())[:300]}"))
        else:
            result = f"{type(raised).__name__} raised"
            failures.append(("traceback", f"{type(raised).__name__}: {' '.join(str(raised).split())[:300]}{_where(raised)}"))
        for label, value_ in passed:
            if prints[label] is not None and _fingerprint(value_) != prints[label]:
                failures.append(("overwritten input", f"the caller's {label} was modified in place"))
    return Outcome(case, failures, result, time.perf_counter() - start)


@contextlib.contextmanager
def _instrumented(written: list):
    """Record NaN/Inf in every image the command line hands to its writer (a NaN pixel becomes a plain 0 in
    an 8-bit file, so reading the file back cannot see it)."""
    original = cli._write_image

    def checked(x, path, source):
        written.extend(_nonfinite(x, f"the image written to {Path(path).name}"))
        return original(x, path, source)

    cli._write_image = checked
    try:
        yield
    finally:
        cli._write_image = original


@contextlib.contextmanager
def _time_limit(seconds: float):
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise CaseTimeout(f"the case ran longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run(cases: list[Case] | None = None, workdir: str | Path | None = None, progress_every: int = 50,
        case_timeout: float = 120.0, keep: bool = False, log=print) -> list[Outcome]:
    """Run ``cases`` (default: all of :func:`all_cases`) on fresh inputs in ``workdir`` (default: a temporary folder,
    removed afterwards unless ``keep``); one :class:`Outcome` per case, in order."""
    cases = all_cases() if cases is None else cases
    root = Path(tempfile.mkdtemp(prefix="pnp-fuzz-")) if workdir is None else Path(workdir)
    F, outputs = root / "inputs", root / "outputs"
    if F.exists():
        shutil.rmtree(F)
    if outputs.exists():
        shutil.rmtree(outputs)
    build_fixtures(F)
    if keep or workdir is not None:
        log(f"inputs ({{F}}) in {F}, outputs ({{O}}) in {outputs}/NNNN (NNNN: the case's index)")
    originals = {str(p.relative_to(F)): p.read_bytes() for p in F.rglob("*") if p.is_file() and not p.is_symlink()}
    shipped = Path(ps.__file__).parent / "denoisers" / "weights"
    shipped_before = _snapshot(shipped)
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    try:
        for index, case in enumerate(cases):
            O = outputs / f"{index:04d}"
            O.mkdir(parents=True)
            before = _snapshot(F)
            written: list[str] = []
            torch.manual_seed(0)
            try:
                with _instrumented(written), _time_limit(case_timeout):
                    outcome = run_case(case, F, O, written)
            except CaseTimeout as err:
                outcome = Outcome(case, [("other", str(err))], "timeout", case_timeout)
            after = _snapshot(F)
            changed, created = _restore(F, before, after, originals)
            for key in changed:
                outcome.failures.append(("overwritten input", f"input file {{F}}/{key} was modified or removed"))
            for path in created:
                if path.is_file():
                    outcome.failures += [("NaN returned", m) for m in _written_nonfinite(path)]
                    path.unlink()
                elif path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
            outcomes.append(outcome)
            if progress_every and (index + 1) % progress_every == 0:
                failed = sum(1 for o in outcomes if o.failures)
                log(f"[{index + 1}/{len(cases)}] {time.perf_counter() - start:.1f} s, {failed} failed so far", flush=True)
        if _snapshot(shipped) != shipped_before:
            outcomes[-1].failures.append(("overwritten input", f"a shipped weights file in {shipped} was modified"))
    finally:
        if not keep and workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return outcomes


# --- report ----------------------------------------------------------------------------------------
def report(outcomes: list[Outcome], seconds: float) -> list[str]:
    lines = header("Input fuzz: bad or odd input to the command line and the Python API (issue #21)") + [
        "Each case passes one bad or odd input (issue #21's seven categories, each value on every entry point it "
        "reaches) to `pnp-stable` (in-process `pnp_stable.cli.main`) or to the Python API, and fails on a "
        "**traceback** (an exception other than `SystemExit` out of `main`; an API exception other than "
        "`ValueError`), an **overwritten input** (input files, and the arrays, tensors and models passed to the API, "
        "hashed before and after), **NaN returned** (returned tensors and models, images as handed to the writer "
        "and as read back, written weights and checkpoints) or an **other** failure: an exit code other than 0, 2 "
        "or certify's 1, exit 2 without exactly one stderr line, a `ValueError` without a one-line message, or an "
        "input that the case marks invalid (the issue's list, and values like them) accepted. The case list is `all_cases()` in "
        "`benchmarks/fuzz_inputs.py`; inputs are 16×16 images, tiny denoisers and two iterations.",
        "",
        f"{len(outcomes)} cases in {seconds:.0f} s; {sum(1 for o in outcomes if o.failures)} failed.",
        "",
        "| # | category | cases | passed | tracebacks | overwritten inputs | NaN returned | other failures |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    totals = [0] * 6
    for category, title in CATEGORIES.items():
        mine = [o for o in outcomes if o.case.category == category]
        if not mine:
            continue
        counts = [len(mine), sum(1 for o in mine if not o.failures)]
        counts += [sum(1 for o in mine if any(kind == k for kind, _ in o.failures)) for k in KINDS]
        totals = [a + b for a, b in zip(totals, counts)]
        lines.append(f"| {category} | {title} | " + " | ".join(str(c) for c in counts) + " |")
    lines.append("| | **all** | " + " | ".join(f"**{c}**" for c in totals) + " |")
    lines += ["", "## Failures", ""]
    failing = [o for o in outcomes if o.failures]
    if not failing:
        lines.append("None.")
    for outcome in failing:
        case = outcome.case
        lines.append(f"- [{case.category}] {case.name} ({outcome.result}): "
                     + "; ".join(f"**{kind}**: {message}" for kind, message in outcome.failures).replace("|", "\\|"))
        lines.append(f"  - reproduce: `{case.repro}`")
    slowest = sorted(outcomes, key=lambda o: -o.seconds)[:5]
    lines += ["", "## Slowest cases", ""] + [f"- {o.seconds:.2f} s: [{o.case.category}] {o.case.name}" for o in slowest]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS / "fuzz.md"), help="results file")
    parser.add_argument("--only", default=None, metavar="REGEX", help="run only the cases whose name matches")
    parser.add_argument("--workdir", default=None, help="folder for the inputs ({F} = WORKDIR/inputs) and outputs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--case-timeout", type=float, default=120.0, help="seconds before a case counts as hung")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-slow", action="store_true",
                        help="leave out the slow cases (certify averaged-gray --verify, about 20 s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    selected = [c for c in all_cases() if (args.only is None or re.search(args.only, c.name))
                and not (args.no_slow and c.slow)]
    counts = {k: sum(1 for c in selected if c.category == k) for k in CATEGORIES}
    print(f"{len(selected)} cases: " + ", ".join(f"{k}. {CATEGORIES[k]} {n}" for k, n in counts.items()), flush=True)
    start = time.perf_counter()
    outcomes = run(selected, workdir=args.workdir, case_timeout=args.case_timeout, keep=args.keep)
    seconds = time.perf_counter() - start
    lines = report(outcomes, seconds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    failed = [o for o in outcomes if o.failures]
    print(f"{len(outcomes)} cases in {seconds:.0f} s, {len(failed)} failed; wrote {args.out}")
    for outcome in failed:
        print(f"FAIL [{outcome.case.category}] {outcome.case.name}: {outcome.failures}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
