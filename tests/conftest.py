pytest_plugins = ["tests.servers"]


import pytest  # noqa: E402
import torch  # noqa: E402

# Fixtures that start a server (directly or through another fixture): a test using one is
# marked `servers` at collection, so `-m "not servers"` deselects it. A test that starts a
# server any other way must carry the marker itself; tests/servers.py refuses otherwise.
SERVER_FIXTURES = {
    "s3_server", "mlflow_server", "mlflow_tracking",  # tests/servers.py
    "kube",  # the loopback Kubernetes API (tests/fake_kubernetes.py)
    "fault_registry",  # tests/faults/registry_fault_server.py
    "mirror",  # an in-process HTTP server laid out like raw.githubusercontent.com (integration/test_official_download.py)
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    from tests import servers  # here, not at the top: pytest_plugins loads it (assertion rewriting) first

    servers.CURRENT_TEST = item


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    from tests import servers

    servers.CURRENT_TEST = None


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's small-model tests on one thread: on 2 cores, torch's default
    oversubscribes as soon as anything else runs, and tiny matmuls gain nothing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
