"""Classification data as tensors in memory: Fashion-MNIST from a folder of the gzipped IDX files (read by
torchvision once extracted), CIFAR-10 through torchvision (it downloads when allowed), and a tiny synthetic
stand-in for tests. Images are float32 in [0, 1], [N, C, H, W]; labels int64."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .._atomic import atomic_path

__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "augmented", "fashion_mnist", "cifar10", "synthetic", "load_dataset"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "pnp-stable"


def _source_key(folder: Path) -> str:
    """A name for the cache of ``folder``'s four IDX files: their resolved paths, sizes and modification times, so a
    different folder (or a file replaced in it) is extracted anew instead of silently reading an earlier cache."""
    parts = []
    for name in _FASHION_FILES:
        source = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
        if source is None:
            raise ValueError(f"Fashion-MNIST file {name}(.gz) not found in {folder}; point to the folder that holds "
                             f"the four IDX files ({', '.join(_FASHION_FILES)})")
        stat = source.stat()
        parts.append(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _extract_idx_files(folder: Path, raw: Path) -> None:
    """Copy (or gunzip) each missing IDX file from ``folder`` into ``raw``, each through :func:`atomic_path`: an
    interrupted copy is never reused, and processes that extract at once (two trainings started together) never
    write into, or rename, each other's file."""
    for name in _FASHION_FILES:
        target = raw / name
        if target.is_file():
            continue
        plain, gzipped = folder / name, folder / f"{name}.gz"  # one of them exists: _source_key checked
        raw.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as partial, open(partial, "wb") as out, \
                (open(plain, "rb") if plain.is_file() else gzip.open(gzipped, "rb")) as source:
            shutil.copyfileobj(source, out)


def fashion_mnist(folder: str | Path, train: bool = True, cache: str | Path | None = None) -> TensorDataset:
    """Fashion-MNIST's training (60,000) or test (10,000) split from ``folder``, which holds the four IDX files,
    gzipped (as distributed) or not. They are extracted once into ``cache``/KEY/FashionMNIST/raw (default
    ~/.cache/pnp-stable; KEY names the source files: :func:`_source_key`), where torchvision's ``FashionMNIST`` reads
    them."""
    from torchvision.datasets import FashionMNIST

    root = (Path(cache) if cache is not None else _cache_dir()) / _source_key(Path(folder))
    _extract_idx_files(Path(folder), root / "FashionMNIST" / "raw")
    dataset = FashionMNIST(str(root), train=train, download=False)
    return TensorDataset(dataset.data[:, None].float() / 255.0, dataset.targets.long())


def cifar10(folder: str | Path, train: bool = True, download: bool = False) -> TensorDataset:
    """CIFAR-10 through torchvision (``download=True`` fetches it into ``folder``; needs internet access)."""
    from torchvision.datasets import CIFAR10

    try:
        dataset = CIFAR10(str(folder), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise ValueError(f"CIFAR-10 not found in {folder} ({err}); pass --download (needs internet access) or point "
                         "--data to the folder that holds cifar-10-batches-py") from err
    images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).float() / 255.0
    return TensorDataset(images, torch.as_tensor(dataset.targets, dtype=torch.long))


def synthetic(count: int = 256, channels: int = 1, size: int = 28, classes: int = 10, seed: int = 0) -> TensorDataset:
    """A separable stand-in: class k is a bright square at one of ``classes`` positions plus uniform noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (count,), generator=generator)
    images = 0.3 * torch.rand(count, channels, size, size, generator=generator)
    side = max(size // 4, 2)
    for k in range(classes):
        top, left = (k * 7) % (size - side), (k * 11) % (size - side)
        images[labels == k, :, top : top + side, left : left + side] += 0.6
    return TensorDataset(images.clamp(0, 1), labels)


DATASETS = {"fashion-mnist": (1, 28, FASHION_MNIST_CLASSES), "cifar10": (3, 32, CIFAR10_CLASSES)}


def load_dataset(name: str, folder: str | Path, train: bool, download: bool = False) -> TensorDataset:
    """``name`` ∈ :data:`DATASETS` from ``folder``."""
    if name == "fashion-mnist":
        return fashion_mnist(folder, train)
    if name == "cifar10":
        return cifar10(folder, train, download)
    raise ValueError(f"unknown dataset '{name}'; choose one of {sorted(DATASETS)}")


def augmented(images: torch.Tensor, generator: torch.Generator, shift: int = 2) -> torch.Tensor:
    """A random horizontal flip (probability ½) and translation by up to ``shift`` pixels in each direction (zero
    fill) of every image of a ``[B, C, H, W]`` batch, drawn from ``generator`` (so that a resumed run draws the same)."""
    batch, _, height, width = images.shape
    flip = torch.rand(batch, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = torch.nn.functional.pad(images, (shift, shift, shift, shift))
    rows = torch.randint(0, 2 * shift + 1, (batch,), generator=generator).tolist()
    columns = torch.randint(0, 2 * shift + 1, (batch,), generator=generator).tolist()
    return torch.stack([padded[i, :, r : r + height, c : c + width] for i, (r, c) in enumerate(zip(rows, columns))])
