pytest_plugins = ["tests.servers"]


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's small-model tests on one thread: on 2 cores, torch's default
    oversubscribes as soon as anything else runs, and tiny matmuls gain nothing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
