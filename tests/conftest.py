import os
from pathlib import Path

import pytest
import torch

# Tests use tiny tensors, for which one thread beats OpenMP's start-up and contention costs by ~10×.
torch.set_num_threads(1)

#: ../shared/data beside the checkout (override with PNP_STABLE_DATA); tests using it skip when absent
DATA_ROOT = Path(os.environ.get("PNP_STABLE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def data_root() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.skip(f"shared data folder {DATA_ROOT} is absent")
    return DATA_ROOT


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
