"""Blur kernels: analytic ones, deepinv's random motion kernels, and kernel files.

Every kernel leaves this module as a float32 tensor of shape ``[h, w]`` that is
finite, non-negative and sums to 1 (so that a blur preserves mean intensity and,
by Young's inequality, has operator norm at most 1 with zero or circular boundary).
"""

from __future__ import annotations

import math
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "validate_kernel",
    "gaussian_kernel",
    "uniform_kernel",
    "motion_kernel",
    "load_kernels",
    "load_kernel",
    "kernel_from_spec",
    "KERNEL_SPECS",
]


def validate_kernel(kernel, name: str = "kernel", warn_scaled: bool = False) -> Tensor:
    """Return ``kernel`` as a normalised float32 ``[h, w]`` tensor (sum 1: a blur keeps the mean intensity), or
    raise ``ValueError``. ``warn_scaled``: warn when the given sum is not 1 (within 1e-3), so a caller's kernel is
    not rescaled unannounced.

    Accepts a 2-D array/tensor or a ``[1, 1, h, w]`` tensor (deepinv's filter layout).
    """
    if isinstance(kernel, Tensor):
        k = kernel
    else:
        arr = np.asarray(kernel)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must be a 2-D array of numbers or a spec such as 'gaussian:1.6' "
                             f"({KERNEL_SPECS}), got {type(kernel).__name__} {' '.join(repr(kernel).split())[:60]}")
        k = torch.as_tensor(arr)
    if torch.is_complex(k):
        raise ValueError(f"{name} must be real, got dtype {k.dtype}")
    if k.ndim == 4 and k.shape[0] == 1 and k.shape[1] == 1:
        k = k[0, 0]
    if k.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [h, w] (or [1, 1, h, w]), got shape {tuple(k.shape)}; "
            "the same kernel is applied to every colour channel"
        )
    if k.numel() == 0:
        raise ValueError(f"{name} is empty")
    k = k.to(torch.float64)
    if not torch.isfinite(k).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    if (k < 0).any():
        raise ValueError(
            f"{name} has negative entries (min {k.min().item():.3g}); a blur kernel must be non-negative (an estimated "
            "kernel's small negative values can be set to zero: np.clip(k, 0, None))"
        )
    peak = k.max()
    k = k / peak if peak > 0 else k  # the same kernel after normalisation; its sum cannot overflow then
    total = k.sum()
    if total <= 0:
        raise ValueError(f"{name} sums to {total.item():.3g}; it needs a positive sum")
    if warn_scaled and abs(float(total * peak) - 1) > 1e-3:
        warnings.warn(f"{name} sums to {float(total * peak):.6g}, not 1: it is normalised to sum 1 (a blur keeps the "
                      "mean intensity); scale the image instead if the gain is real", stacklevel=3)
    return (k / total).to(torch.float32)


#: the largest kernel side built from a spec (a 4097² float64 kernel is 134 MB; wider blurs exceed any image here)
MAX_KERNEL_SIZE = 4097


def _odd_size(size, what: str) -> int:
    """``size`` as an int, refused unless it is a positive odd integer: an even kernel has no centre pixel
    and would shift the image by half a pixel, and a fractional one would be truncated silently. Sizes above
    :data:`MAX_KERNEL_SIZE` are refused before anything is allocated."""
    if isinstance(size, bool) or not float(size).is_integer() or size < 1:
        raise ValueError(f"{what} must be a positive odd integer, got {size}")
    if size > MAX_KERNEL_SIZE:
        raise ValueError(f"{what} {int(size)} exceeds {MAX_KERNEL_SIZE} pixels; use a smaller kernel (a Gaussian's "
                         "default size is 2·ceil(3·std) + 1)")
    if int(size) % 2 == 0:
        raise ValueError(f"{what} must be odd so that the kernel has a centre pixel (an even size shifts the "
                         f"image by half a pixel), got {int(size)}; use {int(size) - 1} or {int(size) + 1}")
    return int(size)


def gaussian_kernel(std: float, size: int | None = None) -> Tensor:
    """Isotropic Gaussian kernel of standard deviation ``std`` pixels.

    ``size`` defaults to ``2 * ceil(3 * std) + 1`` (±3 std, odd so the kernel is centred).
    """
    std = float(std)
    if not std > 0 or not math.isfinite(std):
        raise ValueError(f"Gaussian kernel std must be a positive number of pixels, got {std}")
    size = _odd_size(2 * math.ceil(3 * std) + 1 if size is None else size, "Gaussian kernel size")
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (t / std) ** 2)
    return validate_kernel(torch.outer(g, g))


def uniform_kernel(size: int) -> Tensor:
    """Box kernel of ``size × size`` pixels, each weight ``1 / size²``."""
    size = _odd_size(size, "uniform kernel size")
    return validate_kernel(torch.ones(size, size))


def motion_kernel(seed: int, size: int = 25, length_scale: float = 0.3, std: float = 0.25) -> Tensor:
    """Random camera-shake kernel from deepinv's ``MotionBlurGenerator`` (Gaussian-process trajectory).

    The same ``seed`` always gives the same kernel.
    """
    from deepinv.physics.generator import MotionBlurGenerator

    size = _odd_size(size, "motion kernel size")
    rng = torch.Generator().manual_seed(int(seed))
    generator = MotionBlurGenerator(psf_size=(size, size), rng=rng, l=length_scale, sigma=std)
    return validate_kernel(generator.step(batch_size=1)["filter"])


def _kernels_from_mat(path: Path) -> dict[str, np.ndarray]:
    """Numeric 2-D arrays (and cell arrays of them) from a MATLAB file, classic or v7.3/HDF5."""
    import h5py
    import scipy.io

    if h5py.is_hdf5(path):
        found: dict[str, np.ndarray] = {}
        with h5py.File(path, "r") as f:

            def visit(name, obj):
                if not isinstance(obj, h5py.Dataset) or name.startswith("#refs#"):
                    return
                if obj.dtype == h5py.ref_dtype:
                    for i, ref in enumerate(np.asarray(obj).ravel()):
                        found[f"{name}[{i}]"] = np.asarray(f[ref]).T
                elif obj.ndim == 2:
                    found[name] = np.asarray(obj).T  # MATLAB is column-major
                elif obj.ndim == 3:
                    for i, k in enumerate(np.asarray(obj)):
                        found[f"{name}[{i}]"] = k.T

            f.visititems(visit)
        return found
    try:
        contents = scipy.io.loadmat(path)
    except Exception as err:
        raise ValueError(f"cannot read MATLAB file {path}: {err}") from err
    found = {}
    for name, value in contents.items():
        if name.startswith("__"):
            continue
        value = np.asarray(value)
        if value.dtype == object:
            for i, k in enumerate(value.ravel()):
                found[f"{name}[{i}]"] = np.asarray(k)
        elif value.ndim == 3:
            for i in range(value.shape[2]):
                found[f"{name}[{i}]"] = value[:, :, i]
        else:
            found[name] = value
    return found


def _kernels_from_image(path: Path) -> dict[str, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            grey = im.mode in ("L", "I", "F") or im.mode.startswith("I;16")  # I;16B, I;16L: 16-bit of either order
            arr = np.asarray(im if grey else im.convert("RGBA"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read kernel image {path}: {err}") from err
    if not grey:  # a greyscale kernel saved in a colour mode (matplotlib's imsave writes RGBA) has equal channels
        if not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all() and (arr[..., 3] == 255).all()):
            raise ValueError(f"kernel image {path} is a colour or transparent image ({im.mode}); a blur kernel is "
                             "one greyscale image: save it in mode L or I;16 (e.g. PIL's Image.fromarray(k8bit))")
        arr = arr[..., 0]
    return {path.stem: arr.astype(np.float64)}


def _numpy_error(path: Path, err: Exception) -> ValueError:
    """The one-line ``ValueError`` for a ``.npy``/``.npz`` file that NumPy could not read: what is wrong, what to do."""
    text = " ".join(str(err).split())
    if isinstance(err, (zipfile.BadZipFile, zlib.error)):
        return ValueError(f"cannot read kernel file {path}: it is not a valid .npz (zip) archive, probably truncated "
                          f"or corrupt ({text}); write it again with numpy.savez")
    if "Object arrays cannot be loaded" in text:
        return ValueError(f"cannot read kernel file {path}: it holds object arrays (e.g. kernels of different sizes "
                          "in one array), which only unpickling could read, and kernel files are never unpickled (that "
                          "can run code); save each kernel as its own numeric array: numpy.savez(PATH, k1=k1, k2=k2)")
    if "pickled" in text:  # neither a .npy header nor a zip: NumPy would try to unpickle it
        return ValueError(f"cannot read kernel file {path}: it has neither a NumPy .npy header nor a .npz (zip) "
                          "structure; save kernels with numpy.save or numpy.savez")
    return ValueError(f"cannot read kernel file {path}: {text}; write it again with numpy.save or numpy.savez")


def _kernels_from_numpy(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` (a 3-D one read as a stack ``[n, h, w]``) or ``.npz`` file, never unpickled."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {name: loaded[name] for name in loaded.files}
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as err:
        raise _numpy_error(path, err) from err
    return {f"{path.stem}[{i}]": k for i, k in enumerate(loaded)} if loaded.ndim == 3 else {path.stem: loaded}


def load_kernels(path: str | Path) -> dict[str, Tensor]:
    """Load every kernel in a file: ``.npy``, ``.npz``, ``.mat`` (classic or v7.3) or a greyscale image (``.png``,
    ``.tif``, ``.tiff``, ``.bmp``).

    Returns an ordered ``{name: kernel}`` dict; each kernel is validated and normalised.
    A 3-D ``.npy`` array is read as a stack ``[n, h, w]``. Every problem with the file (missing, empty,
    truncated, pickled, no kernel in it, a kernel that :func:`validate_kernel` refuses) is a one-line
    ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"kernel file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"kernel file {path} is empty (0 bytes); was it written completely?")
    suffix = path.suffix.lower()
    try:
        if suffix in (".npy", ".npz"):
            raw = _kernels_from_numpy(path)
        elif suffix == ".mat":
            raw = _kernels_from_mat(path)
        elif suffix in (".png", ".tif", ".tiff", ".bmp"):
            raw = _kernels_from_image(path)
        else:
            raise ValueError(
                f"unsupported kernel file type '{suffix}' ({path}); use .npy, .npz, .mat or a greyscale .png, .tif or .bmp"
            )
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read kernel file {path}: {err}") from err
    if not raw:
        raise ValueError(f"no kernel found in {path}; save at least one 2-D kernel array in it")
    return {name: validate_kernel(k, name=f"kernel '{name}' in {path.name}") for name, k in raw.items()}


def load_kernel(path: str | Path, index: int | str = 0) -> Tensor:
    """Load one kernel from a file, chosen by position or by name (see :func:`load_kernels`)."""
    kernels = load_kernels(path)
    if isinstance(index, str):
        if index not in kernels:
            raise ValueError(f"no kernel named '{index}' in {path}; available: {list(kernels)}")
        return kernels[index]
    names = list(kernels)
    if not -len(names) <= index < len(names):
        raise ValueError(f"kernel index {index} out of range: {path} holds {len(names)} kernel(s): {names}; "
                         f"pick one by position 0 to {len(names) - 1} or by name")
    return kernels[names[index]]


KERNEL_SPECS = "gaussian:STD[:SIZE], uniform:SIZE, motion:SEED[:SIZE], file:PATH[:INDEX or NAME]"


def kernel_from_spec(spec: str) -> Tensor:
    """A kernel from a short text spec (the CLI's ``--kernel``): one of :data:`KERNEL_SPECS`.

    ``gaussian:1.6`` (std in pixels), ``uniform:9``, ``motion:3:19`` (seed 3, 19 px), ``file:k.npz:2``.
    """
    kind, _, rest = str(spec).partition(":")
    fail = ValueError(f"bad kernel spec '{spec}'; expected {KERNEL_SPECS} (e.g. gaussian:1.6 or motion:0:25)")
    if not rest:
        raise fail
    if kind == "file":
        if not Path(rest).is_file() and ":" in rest:
            path, index = rest.rsplit(":", 1)
            return load_kernel(path, int(index) if index.lstrip("-").isdigit() else index)
        names = list(load_kernels(rest))
        if len(names) > 1:  # no silent choice of the first
            raise ValueError(f"{rest} holds {len(names)} kernels ({', '.join(names[:8])}{', …' if len(names) > 8 else ''}); "
                             f"choose one: file:{rest}:INDEX (0 to {len(names) - 1}) or file:{rest}:NAME")
        return load_kernel(rest, 0)
    try:
        values = [float(v) for v in rest.split(":")]
    except ValueError:
        raise fail from None
    if kind == "gaussian" and len(values) in (1, 2):
        return gaussian_kernel(values[0], values[1] if len(values) == 2 else None)
    if not all(math.isfinite(v) for v in values):
        raise fail
    integers = all(v == int(v) for v in values)
    if kind == "uniform" and len(values) == 1 and integers:
        return uniform_kernel(int(values[0]))
    if kind == "motion" and len(values) in (1, 2) and integers:
        return motion_kernel(int(values[0]), *(int(v) for v in values[1:]))
    raise fail
