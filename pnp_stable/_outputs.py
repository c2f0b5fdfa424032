"""Output paths of the command line, checked before any work: a known format, a writable folder, no file
written twice, and never an input overwritten."""

from __future__ import annotations

import tempfile
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: what an image result may be written as (and a folder of inputs is read from): the image files and float .npy arrays
RESULT_SUFFIXES = IMAGE_SUFFIXES + (".npy",)


def plot_suffixes() -> tuple[str, ...]:
    """The file types matplotlib can write (png, pdf, svg, …), as suffixes."""
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(f".{kind}" for kind in FigureCanvasBase.get_supported_filetypes())


def _identity(path: Path):
    """What makes two paths one file: device and inode of an existing file (hard and soft links too), else
    the resolved path."""
    try:
        status = path.stat()
        return status.st_dev, status.st_ino
    except OSError:
        return str(path.resolve())


def _check_writable_folder(path: Path, option: str) -> None:
    """The folder of ``path`` exists, or can be made, and accepts a new file: probed with a temporary file in it,
    or in its nearest existing ancestor (nothing is created before the work succeeds)."""
    folder = path.parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is a file, not a folder")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name such as {path / 'out.png'}")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".pnp-stable-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"{option} {path}: cannot write to the folder {existing} ({err.strerror or err}); "
                         "choose a writable location") from None


def check_outputs(inputs: list[Path], outputs: list[tuple[str, Path, tuple[str, ...]]]) -> None:
    """Refuse, before any work, an output (``(option, path, allowed suffixes)``) whose suffix is not allowed,
    whose folder is not writable, that is an input file, or that another output also names (one pass: each path
    is looked at once)."""
    sources = {_identity(source): source for source in inputs}
    named: dict = {}
    folders: set[Path] = set()
    for option, path, suffixes in outputs:
        if path.suffix.lower() not in suffixes:
            raise ValueError(f"{option} {path}: unsupported file type '{path.suffix}'; use one of {', '.join(suffixes)}")
        identity = _identity(path)
        if identity in sources:
            raise ValueError(f"{option} {path} is the input file {sources[identity]}: it would be overwritten; "
                             "write the result to another file")
        if identity in named:
            raise ValueError(f"{option} and {named[identity]} both name {path}: one would replace the other; "
                             "give them different file names")
        named[identity] = option
        if path.parent not in folders:
            _check_writable_folder(path, option)
            folders.add(path.parent)


def check_training_outputs(checkpoint: Path, weights: Path, resume: bool, overwrite: bool) -> None:
    """Before a training run's work: a run that does not resume must not replace an earlier run's weights or
    checkpoint unannounced (its first SIGINT would write over the checkpoint at once), and the checkpoint must be a
    file."""
    if resume and overwrite:
        raise ValueError("--resume continues the run at --out and --overwrite starts it over: give one of them")
    if checkpoint.is_dir():
        raise ValueError(f"the checkpoint path {checkpoint} is a folder; remove it or choose another out")
    if resume or overwrite:
        return
    existing = [str(path) for path in (checkpoint, weights) if path.exists()]
    if existing:
        raise ValueError(f"{' and '.join(existing)} already {'exist' if len(existing) > 1 else 'exists'}: resume that "
                         "run (--resume), start over in its place (--overwrite), or choose another out")
