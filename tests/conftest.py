import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so randomly initialised models are the same everywhere."""
    torch.manual_seed(0)
