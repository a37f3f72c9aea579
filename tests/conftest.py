from __future__ import annotations

import pytest

from tests.harness import Network, docker_ok


@pytest.fixture
def net(tmp_path, request):
    """A fresh set of real hub/miner processes; all stopped (and their containers removed)."""
    network = Network(tmp_path)
    yield network
    network.close()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(network.logs())
    network.remove_containers()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


needs_docker = pytest.mark.skipif(
    not docker_ok(), reason="needs a Docker engine: run `make test`, which installs and starts one"
)
