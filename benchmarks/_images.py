"""Image selection shared by the benchmarks: picks spread evenly over a folder, and centre crops."""

from __future__ import annotations

from pathlib import Path

import torch

import pnp_stable as ps
from pnp_stable.training import list_images


def held_out_color_images(data: Path, count: int) -> list[Path]:
    """``count`` CBSD68 images outside CBSD10 (CBSD10 is CBSD68's first 10, by file name), spread evenly over
    the other 58: no shipped denoiser was trained on them, and no colour benchmark of ``make bench`` tests on
    them (those use Set3C, CBSD10 or CBSD68's first 10)."""
    excluded = {path.name for path in list_images(data / "test" / "CBSD10")}
    return spread([path for path in list_images(data / "test" / "CBSD68") if path.name not in excluded], count)


def held_out_gray_images(data: Path, count: int) -> list[Path]:
    """``count`` BSD68 images outside its first 10, spread evenly over the other 58: the gray twin of
    :func:`held_out_color_images` (BSD68 is CBSD68 in luminance; no shipped gray denoiser was trained on it, and
    no gray benchmark of ``make bench`` tests on these: those use BSD68's first 10 or Set12)."""
    return spread(list_images(data / "test" / "BSD68")[10:], count)


def spread(paths: list[Path], count: int) -> list[Path]:
    """``count`` paths spread evenly over the sorted list (a diverse, reproducible subset)."""
    return [paths[i * len(paths) // count] for i in range(count)]


def load_crops(paths: list[Path], size: int, gray: bool) -> list[torch.Tensor]:
    """Each image's ``size``×``size`` centre crop, ``[1, C, size, size]`` in [0, 1]."""
    crops = []
    for path in paths:
        image = ps.load_image(path, gray=gray)
        if min(image.shape[2:]) < size:
            raise ValueError(f"{path} is {image.shape[2]}×{image.shape[3]} pixels, smaller than the {size}×{size} crop; "
                             "choose a smaller --size")
        top, left = (image.shape[2] - size) // 2, (image.shape[3] - size) // 2
        crops.append(image[:, :, top : top + size, left : left + size])
    return crops
