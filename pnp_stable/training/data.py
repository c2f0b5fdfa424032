"""Training patches: random crops of image folders with flips, rotations and Gaussian noise added on the fly."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = ["IMAGE_SUFFIXES", "list_images", "load_folder", "PatchSampler"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def list_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` (recursively), sorted so that runs are reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


#: PIL modes whose values are 8-bit (gray, colour, palette, with or without alpha), which convert('L'/'RGB') keeps
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def fingerprint(folders: Sequence[str | Path]) -> str:
    """A digest of the image files of ``folders`` (their paths within each folder, in order, and their sizes): a
    resumed run checks that its data are the ones it started on."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in list_images(folder):
            digest.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def load_folder(folder: str | Path, channels: int) -> list[Tensor]:
    """Every image of ``folder`` as a uint8 tensor [C, H, W] (gray: luminance, colour: RGB), with a warning when that
    converts the folder's images (colour ones to gray, gray ones to three equal channels)."""
    mode = "L" if channels == 1 else "RGB"
    images, converted = [], 0
    for path in list_images(folder):
        try:
            with Image.open(path) as im:
                if im.mode not in EIGHT_BIT_MODES:  # PIL's convert would clip 16-bit or float values, not scale them
                    raise ValueError(f"training image {path} is not 8-bit (PIL mode {im.mode}); convert the training "
                                     "set to 8-bit PNG")
                converted += (im.mode in ("1", "L", "LA")) != (channels == 1)
                arr = np.asarray(im.convert(mode), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read training image {path}: {err}") from err
        images.append(torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], channels).transpose(2, 0, 1).copy()))
    if converted:
        what = "colour images to their luminance" if channels == 1 else "gray images to three equal channels"
        warnings.warn(f"{converted} of the {len(images)} images in {folder} are converted, {what}: the model is "
                      f"trained for {channels} channel(s) (--channels)", stacklevel=2)
    return images


def split_holdout(images: list[Tensor], holdout: int) -> tuple[list[Tensor], list[Tensor]]:
    """(training images, held-out images): the last ``holdout`` images are held out (none for 0)."""
    if holdout < 0:
        raise ValueError(f"holdout must be ≥ 0, got {holdout}")
    if holdout and holdout >= len(images):
        raise ValueError(f"holdout {holdout} leaves no training image (the data has {len(images)})")
    return (images[:-holdout], images[-holdout:]) if holdout else (images, [])


class PatchSampler:
    """Batches of (noisy, clean, sigma): random ``patch``×``patch`` crops, random flips and 90° rotations,
    noise σ fixed or uniform in [σ_min, σ_max]. All randomness comes from one seeded generator; under torchrun
    each process has its own (seed + 1000·rank) and a training checkpoint stores the state of every process's
    generator, so an interrupted run resumes exactly when it resumes with the same number of processes (another
    number is refused: see :func:`pnp_stable.training.checkpoint.sampler_state`)."""

    def __init__(
        self,
        images: Sequence[Tensor],
        patch: int = 40,
        batch: int = 32,
        sigma: float | tuple[float, float] = 25 / 255,
        seed: int = 0,
    ):
        self.images = [im for im in images if im.shape[-1] >= patch and im.shape[-2] >= patch]
        if not self.images:
            raise ValueError(f"no training image is at least {patch}×{patch}")
        if len(self.images) < len(images):
            warnings.warn(f"{len(images) - len(self.images)} of {len(images)} training images are smaller than the "
                          f"{patch}×{patch} patch and are left out (a smaller --patch keeps them)", stacklevel=2)
        self.patch, self.batch = patch, batch
        self.sigma_range = (float(sigma), float(sigma)) if np.isscalar(sigma) else tuple(map(float, sigma))
        self.generator = torch.Generator().manual_seed(seed)

    def __next__(self) -> tuple[Tensor, Tensor, Tensor]:
        g = self.generator
        crops = []
        for _ in range(self.batch):
            image = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
            top = int(torch.randint(image.shape[-2] - self.patch + 1, (1,), generator=g))
            left = int(torch.randint(image.shape[-1] - self.patch + 1, (1,), generator=g))
            crop = image[:, top : top + self.patch, left : left + self.patch]
            crop = torch.rot90(crop, int(torch.randint(4, (1,), generator=g)), dims=(-2, -1))
            if torch.rand((), generator=g) < 0.5:
                crop = crop.flip(-1)
            crops.append(crop)
        clean = torch.stack(crops).float() / 255
        low, high = self.sigma_range
        sigma = low + (high - low) * torch.rand(self.batch, generator=g)
        noisy = clean + sigma[:, None, None, None] * torch.randn(clean.shape, generator=g)
        return noisy, clean, sigma

    def __iter__(self):
        return self

    def state(self) -> Tensor:
        return self.generator.get_state()

    def restore(self, state: Tensor) -> None:
        self.generator.set_state(state)
