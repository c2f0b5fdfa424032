"""Certificate-preserving tiling (issue #24, part 1): the windows form a partition of unity, the tiled operator is
the whole-image one when a single tile covers the image, and no adversarial search finds a violation of the base
denoiser's averagedness for the tiled operator."""

from __future__ import annotations

import pytest
import torch

import pnp_stable as ps
from pnp_stable.denoisers.certify import adversarial_lipschitz, averagedness_defects, natural_starts
from pnp_stable.denoisers.tiling import TiledDenoiser, tile_windows


@pytest.mark.parametrize("length,tile,overlap", [(5, 8, 2), (8, 8, 2), (9, 8, 2), (37, 11, 3), (100, 32, 10), (64, 20, 6)])
def test_windows_are_a_partition_of_unity(length, tile, overlap):
    total = torch.zeros(length, dtype=torch.float64)
    for start, stop, root in tile_windows(length, tile, overlap):
        assert 0 <= start < stop <= length and stop - start <= tile
        total[start:stop] += root**2
    assert torch.allclose(total, torch.ones(length, dtype=torch.float64), atol=1e-14)


def test_overlap_beyond_a_third_of_the_tile_is_refused():
    with pytest.raises(ValueError, match="overlap"):
        TiledDenoiser(lambda x, s: x, tile=16, overlap=6)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ps.AveragedDenoiser(channels=1, width=4, depth=2).eval()


def test_one_tile_is_the_whole_image_operator(model):
    x = natural_starts(2, (1, 16, 16))
    with torch.no_grad():
        assert torch.allclose(TiledDenoiser(model, tile=16, overlap=4)(x, 0.1), model(x, 0.1), atol=1e-6)


def test_the_tiled_operator_keeps_the_certificate(model):
    tiled = TiledDenoiser(model, tile=8, overlap=2)
    alpha = model.certificate.alpha
    assert tiled.certificate.alpha == alpha and "tiled" in tiled.certificate.method
    search = adversarial_lipschitz(tiled, (1, 20, 20), 0.1, alpha=alpha, restarts=4, steps=40)
    assert search.ratio <= 1 + 1e-4
    x, y = natural_starts(8, (1, 20, 20)), natural_starts(8, (1, 20, 20), seed=1)
    assert float(averagedness_defects(tiled, x, y, alpha).max()) <= 1e-5
