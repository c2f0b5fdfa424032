"""Image files ↔ tensors ``[1, C, H, W]`` with values in [0, 1] (PNG, JPEG, TIFF, gray or colour;
``.npy`` arrays ``[H, W]`` / ``[H, W, C]`` for float data)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ._validation import check_image

__all__ = ["FLOAT_RANGE_TOLERANCE", "check_float_range", "file_bit_depth", "holds_sixteen_bits", "load_image",
           "save_image", "to_tensor", "to_numpy"]

_MAX_BY_MODE = {"1": 1.0, "L": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0}


#: how far a float image may stray outside [0, 1]: noise pushes noisy data past it (5σ = 2 at σ = 100/255),
#: data on the 0–255 scale or in the wrong units lies far outside
FLOAT_RANGE_TOLERANCE = 4.0

#: bit depth of the integer types whose values fill their range; wider types get the bit depth of their values
_DEPTH_OF_DTYPE = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16, np.dtype(np.bool_): 1}


def _integer_scale(arr: np.ndarray) -> float:
    """The full-scale value of an integer image: 255 for uint8, 65535 for uint16; for wider or signed types
    (int32, int64, …, as ``np.array([[0, 128, 255]])`` gives) the smallest of 8 or 16 bits that holds the values."""
    depth = _DEPTH_OF_DTYPE.get(arr.dtype)
    if depth is not None:
        return float(2**depth - 1)
    scale = _inferred_scale(arr)
    warnings.warn(f"{arr.dtype} image read as {8 if scale == 255 else 16}-bit data (its values fit in "
                  f"{8 if scale == 255 else 16} bits), scaled by 1/{scale:g}; pass uint8 or uint16 to state the bit "
                  "depth", stacklevel=4)
    return scale


def _inferred_scale(arr: np.ndarray) -> float:
    """255 or 65535: the smallest full scale (8 or 16 bits) that holds a wide or signed integer image's values."""
    low, high = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if low < 0:
        raise ValueError(f"an integer image must not be negative, got values down to {low} ({arr.dtype}); "
                         "pass uint8/uint16 data, or floats in [0, 1]")
    if high > 65535:
        raise ValueError(f"integer image values reach {high} ({arr.dtype}), beyond 16 bits; "
                         "pass uint8/uint16 data, or floats in [0, 1]")
    return 255.0 if high <= 255 else 65535.0


def check_float_range(x: Tensor, name: str = "image") -> Tensor:
    """Require float values on the [0, 1] scale within :data:`FLOAT_RANGE_TOLERANCE` (noise may cross 0 and 1)."""
    if x.numel():
        low, high = float(x.detach().min()), float(x.detach().max())
        if low < -FLOAT_RANGE_TOLERANCE or high > 1 + FLOAT_RANGE_TOLERANCE:
            hint = "; it looks like 0–255 data: divide by 255" if 10 < high <= 300 and low >= -50 else ""
            raise ValueError(f"{name} values span [{low:.4g}, {high:.4g}], but float images must lie on the [0, 1] "
                             f"scale (within ±{FLOAT_RANGE_TOLERANCE:g} for noise){hint}")
    return x


def to_tensor(image, name: str = "image") -> Tensor:
    """numpy ``[H, W]`` / ``[H, W, C]`` (or a tensor ``[H, W]`` / ``[C, H, W]`` / ``[B, C, H, W]``) → float32 ``[B, C, H, W]``.

    One rule for every entry point: integers are scaled by their bit depth (uint8 → /255, uint16 → /65535;
    wider or signed integer types by the 8 or 16 bits their values need), floats must already lie on the
    [0, 1] scale (within :data:`FLOAT_RANGE_TOLERANCE`, which noise may use); anything else is refused.
    """
    if isinstance(image, Tensor):
        x = image
        if x.dtype == torch.bool or not (torch.is_floating_point(x) or torch.is_complex(x)):
            x = torch.from_numpy(_scaled(x.detach().cpu().numpy())).to(x.device)
        elif torch.is_complex(x):
            raise ValueError(f"{name} is complex ({x.dtype}); pass real and imaginary parts as two channels")
        if x.ndim in (3, 4) and x.shape[-1] in (1, 3, 4) and x.shape[-3] > 4:  # [.., H, W, C]: no image has H ≤ 4 channels
            raise ValueError(f"{name} tensor has shape {tuple(x.shape)}: tensor images are [C, H, W] or [B, C, H, W] "
                             "(channels first); for an [H, W, C] tensor pass x.permute(2, 0, 1) (or a numpy array)")
        if x.ndim == 2:
            x = x[None, None]
        elif x.ndim == 3:
            x = x[None]
    else:
        if isinstance(image, (str, Path)):
            raise ValueError(f"{name} is a path ({image}), not an image: read it first with pnp_stable.load_image")
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
            raise ValueError(f"{name} array has shape {arr.shape}: numpy images are [H, W, C] (channels last); "
                             "for a [C, H, W] array pass arr.transpose(1, 2, 0), or a torch tensor")
        if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
            arr = _scaled(arr)
        elif not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name} array has dtype {arr.dtype}; pass integers (uint8, uint16) or floats in [0, 1]")
        if arr.ndim == 2:
            arr = arr[None, None]
        elif arr.ndim == 3:
            arr = arr.transpose(2, 0, 1)[None]
        else:
            raise ValueError(f"expected an image array [H, W] or [H, W, C], got shape {arr.shape}")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    x = check_image(x.to(torch.float32), name)
    return check_float_range(x, name)


def _scaled(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) / np.float32(_integer_scale(arr))


def to_numpy(x: Tensor) -> np.ndarray:
    """``[1, C, H, W]`` tensor → numpy ``[H, W]`` (gray) or ``[H, W, C]`` (colour)."""
    check_image(x)
    if x.shape[0] != 1:
        raise ValueError(f"to_numpy takes a single image [1, C, H, W], got batch of {x.shape[0]}")
    arr = x[0].detach().cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


#: ITU-R 601 luma weights of R, G, B (Pillow's convert('L')): every colour-to-gray conversion here
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

#: Pillow modes read as one channel (a gray image, with or without alpha)
SINGLE_CHANNEL_MODES = ("L", "1", "I;16", "I;16B", "I;16L", "I", "F", "LA")


def file_channels(path: str | Path) -> int:
    """The number of channels :func:`load_image` gives the file (``gray=None``), read from its header only."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            shape = _array_shape(np.load(path, mmap_mode="r", allow_pickle=False).shape, path)
            return 1 if len(shape) == 2 else int(shape[-1])
        with Image.open(path) as im:
            return 1 if im.mode in SINGLE_CHANNEL_MODES else 3
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read {path} as an image (PNG, JPEG, TIFF or .npy expected): {err}") from err


def file_bit_depth(path: str | Path) -> int:
    """8 or 16: the bits per channel a result of this file needs to keep its precision, from its header: 16 for
    16-bit, 32-bit and float PNG/TIFF files and for .npy arrays of any type but uint8, else 8."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            return 8 if np.load(path, mmap_mode="r", allow_pickle=False).dtype == np.uint8 else 16
        with Image.open(path) as im:
            wide = im.mode in ("I", "F") or im.mode.startswith("I;16")
            sixteen = im.format in ("PNG", "TIFF") and any(";16" in str(tile[-1]) for tile in (im.tile or []))
            return 16 if wide or sixteen else 8  # (a BMP's 'BGR;16' is 5-6-5 bits, not 16 per channel)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read {path} as an image (PNG, JPEG, TIFF or .npy expected): {err}") from err


def load_image(path: str | Path, gray: bool | None = None) -> Tensor:
    """Read an image file as a float32 tensor ``[1, C, H, W]`` in [0, 1].

    ``gray=None`` keeps the file's channels (1 for greyscale, 3 for colour; alpha is
    dropped, with a warning when it is not fully opaque); ``True`` converts to luminance, ``False`` to RGB.
    16-bit files keep their precision (16-bit colour PNG excepted: Pillow reads it at 8 bits, with a warning).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    if path.suffix.lower() == ".npy":
        return _load_array(path, gray)
    try:
        with Image.open(path) as im:
            sixteen = any(";16" in str(tile[-1]) for tile in (im.tile or []))  # known before load() clears it
            im.load()
            mode = im.mode
            _warn_if_transparent(im, path)
            single = mode in SINGLE_CHANNEL_MODES
            if gray and sixteen and not single:  # 16-bit colour as luminance from its full depth (ITU-R 601, as Pillow)
                arr = _colour_array(im, path, sixteen) @ np.array(LUMA_WEIGHTS, dtype=np.float32)
            elif gray or single:  # a one-channel file read as RGB repeats its scaled channel (convert would clip)
                if mode == "I":  # 32-bit signed: the bit depth of its values, as for an int32 array (to_tensor's rule)
                    raw = np.asarray(im)
                    arr = raw.astype(np.float32) / _integer_scale(raw)
                elif mode in _MAX_BY_MODE or mode == "F":
                    arr = np.asarray(im, dtype=np.float32) / _MAX_BY_MODE.get(mode, 1.0)
                else:
                    arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
                if gray is False:
                    arr = np.repeat(arr[..., None], 3, axis=-1)
            else:
                arr = _colour_array(im, path, sixteen)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read {path} as an image (PNG, JPEG or TIFF expected): {err}") from err
    if arr.ndim == 2:
        arr = arr[None, None]
    else:
        arr = arr.transpose(2, 0, 1)[None]
    return check_float_range(check_image(torch.from_numpy(np.ascontiguousarray(arr)), str(path)), str(path))


def _colour_array(im: Image.Image, path: Path, sixteen: bool) -> np.ndarray:
    """An RGB(A) file as float32 [H, W, 3] in [0, 1] at its full bit depth where a reader keeps it: Pillow decodes
    16-bit colour to 8 bits, so a 16-bit TIFF is read by tifffile, and a 16-bit PNG is read at 8 bits with a warning."""
    if sixteen:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            raw = tifffile.imread(path)
            if raw.ndim == 3 and raw.shape[-1] in (3, 4) and raw.dtype == np.uint16:
                return raw[..., :3].astype(np.float32) / np.float32(65535)
        warnings.warn(f"{path} is 16-bit colour, which Pillow decodes to 8 bits per channel: it is read at 8 bits; "
                      "save it as a 16-bit TIFF or a .npy array to keep its precision", stacklevel=3)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _warn_if_transparent(im: Image.Image, path: Path) -> None:
    """The images are restored without their alpha channel: say so when it is not fully opaque."""
    if "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA" if im.mode == "P" else im.mode).getchannel("A"))
        if alpha.min() < 255:
            warnings.warn(f"{path} has transparent pixels: its alpha channel is dropped and the colour values are used "
                          "as they are (composite it onto a background first if those pixels matter)", stacklevel=3)


def _array_shape(shape: tuple, path: Path) -> tuple:
    """An image array's shape, [H, W] or [H, W, 1|3], or a ValueError that says what it was."""
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise ValueError(f"{path}: expected an array [H, W] or [H, W, 1|3], got shape {shape}")
    return shape


def _load_array(path: Path, gray: bool | None) -> Tensor:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read {path} as a numpy image array: {err}") from err
    _array_shape(arr.shape, path)
    x = to_tensor(arr, name=str(path))
    if gray and x.shape[1] == 3:
        x = (x * torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif gray is False and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x


def holds_sixteen_bits(suffix: str, channels: int) -> bool:
    """Whether :func:`save_image` writes 16 bits per channel to a ``suffix`` file: PNG in greyscale (Pillow cannot
    write 16-bit colour PNG), TIFF in either."""
    return suffix.lower() in (".tif", ".tiff") or (suffix.lower() == ".png" and channels == 1)


def save_image(x: Tensor, path: str | Path, clip: bool = False, bit_depth: int = 8) -> Path:
    """Write a ``[1, C, H, W]`` tensor in [0, 1] (or a numpy image, read by :func:`to_tensor`) to PNG/JPEG/TIFF/BMP,
    or to a float32 ``.npy`` array [H, W] or [H, W, 3] (format from the suffix); missing parent folders are created.

    Values outside [0, 1] raise ``ValueError`` unless ``clip=True`` asks to clip them; a ``.npy`` array keeps them as
    they are (a solve's estimate may cross 0 and 1 slightly, and float32 holds it), unless ``clip=True``.
    ``bit_depth=16`` writes 16-bit PNG/TIFF: greyscale either, colour TIFF only (Pillow cannot write 16-bit colour
    PNG; tifffile writes the TIFF). A ``.npy`` file keeps float32 whatever ``bit_depth``.
    """
    arr = to_numpy(x if isinstance(x, Tensor) else to_tensor(x))
    path = Path(path)
    suffix = path.suffix.lower()
    low, high = float(arr.min()), float(arr.max())
    if (low < 0 or high > 1) and (clip or suffix != ".npy"):
        if not clip:
            raise ValueError(
                f"image values span [{low:.4g}, {high:.4g}], outside [0, 1]; pass clip=True to clip them, or write "
                ".npy, which keeps them"
            )
        arr = np.clip(arr, 0.0, 1.0)
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if suffix == ".npy":
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:  # np.save(path) would append '.npy' to a name ending in '.NPY'
            np.save(file, arr.astype(np.float32))
        return path
    if bit_depth == 16:
        if not holds_sixteen_bits(suffix, 3 if arr.ndim == 3 else 1):
            raise ValueError(f"bit_depth=16 is written as greyscale PNG, or as greyscale or colour TIFF, not as "
                             f"{'colour ' if arr.ndim == 3 else ''}{suffix}; use .tif (or .npy for float32)")
        sixteen = np.round(arr * 65535).astype(np.uint16)
        if arr.ndim == 3:
            import tifffile

            write = lambda: tifffile.imwrite(path, sixteen, photometric="rgb")
        else:
            write = lambda: Image.fromarray(sixteen).save(path)
    else:
        write = lambda: Image.fromarray(np.round(arr * 255).astype(np.uint8)).save(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write()
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(f"cannot write {path}: {err}; use a .png, .jpg, .tif or .npy file name") from err
    return path
