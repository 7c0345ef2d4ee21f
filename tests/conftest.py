import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so randomly initialised models are the same everywhere."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: two OpenMP threads on a busy 2-core machine make tiny convs ~1000x
    slower. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _analysis_cache(tmp_path_factory):
    """The analysis cache (dsa.cache) of the test session lives in a temp folder, never in ~/.cache."""
    import os

    old = os.environ.get("DSA_CACHE_DIR")
    os.environ["DSA_CACHE_DIR"] = str(tmp_path_factory.mktemp("dsa-cache"))
    yield
    if old is None:
        os.environ.pop("DSA_CACHE_DIR", None)
    else:
        os.environ["DSA_CACHE_DIR"] = old
