from __future__ import annotations

import os

import pytest

from tests.harness import Network, docker_ok, stop_cli_agents


@pytest.fixture(scope="session", autouse=True)
def cli_agents(tmp_path_factory):
    """Every `sonmcli` of the run hands its command to a resident agent (cli/_launch.py), as a
    user's would: keep those agents in a directory of the run's and stop them, by PID, at its
    end."""
    directory = tmp_path_factory.mktemp("cli-agents")
    directory.chmod(0o700)
    before = os.environ.get("SONM_CLI_AGENT_DIR")
    os.environ["SONM_CLI_AGENT_DIR"] = str(directory)
    yield directory
    stop_cli_agents(directory)
    if before is None:
        os.environ.pop("SONM_CLI_AGENT_DIR", None)
    else:
        os.environ["SONM_CLI_AGENT_DIR"] = before


@pytest.fixture
def p2p_nodes():
    """A list for the P2PNodes a test makes: each one appended is closed at the test's end."""
    made = []
    yield made
    for node in made:
        node.close()


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
