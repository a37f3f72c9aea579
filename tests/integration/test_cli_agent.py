"""`sonmcli` through its resident agent (cli/_launch.py, cli/_agent.py), as a user runs it.

Each test keeps its agents in a directory of its own and stops them by PID at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.harness import BIN, cli_agents, pid_alive, sonmcli, stop_cli_agents, wait_for


@pytest.fixture
def agents(tmp_path):
    directory = tmp_path / "agents"
    directory.mkdir(mode=0o700)
    yield directory
    stop_cli_agents(directory)


def _env(agents: Path, **extra: str) -> dict[str, str]:
    return {"SONM_CLI_AGENT_DIR": str(agents), "SONM_CLI_AGENT": "on", **extra}


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _agent(agents: Path) -> int:
    return wait_for(lambda: next(iter(cli_agents(agents).values()), None), "the agent to run")


@pytest.fixture
def silent_hub():
    """A TCP port that accepts and never answers: a call to it waits for its deadline."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}", accepted
    stop.set()
    thread.join(5)
    server.close()
    for conn in accepted:
        conn.close()


def test_commands_through_the_agent_answer_as_in_process(net, agents):
    hub = net.hub()
    home = net.root / "client"
    first = sonmcli("--hub", hub.grpc_target, "--json", "ping", home=home, env=_env(agents))
    assert first.returncode == 0, first.stderr  # no agent yet: ran in-process, started one
    _agent(agents)
    cases = [
        ("--hub", hub.grpc_target, "--json", "list"),
        ("--hub", hub.grpc_target, "status", "no-such-job"),
        ("--hub", hub.grpc_target, "--json", "status", "no-such-job"),
        ("--hub", "127.0.0.1:1", "ping"),
        ("--version",),
        ("--help",),
        ("start", "--help"),
        ("no-such-command",),
    ]
    for args in cases:
        via = sonmcli(*args, home=home, env=_env(agents))
        alone = sonmcli(*args, home=home, env={"SONM_CLI_AGENT": "off"})
        assert (via.returncode, via.stdout, via.stderr) == (
            alone.returncode,
            alone.stdout,
            alone.stderr,
        ), args
    assert sonmcli("--hub", hub.grpc_target, "status", "x", home=home).returncode == 3


def _ping_forever(target: str, agents: Path, mode: str) -> subprocess.Popen:
    argv = [str(BIN / "sonmcli"), "--home", str(agents.parent / "client"), "--hub", target]
    return subprocess.Popen(
        [*argv, "--timeout", "60s", "ping"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **_env(agents), "SONM_CLI_AGENT": mode},
    )


def _version(agents: Path, **extra: str) -> subprocess.CompletedProcess:
    return sonmcli("--version", home=agents.parent / "client", env=_env(agents, **extra))


def test_ctrl_c_reaches_the_command_and_its_exit_code_comes_back(agents, silent_hub):
    target, accepted = silent_hub
    assert _version(agents).returncode == 0
    agent = _agent(agents)
    codes = {}
    for mode in ("off", "on"):
        proc = _ping_forever(target, agents, mode)
        try:
            wait_for(lambda: accepted, "the call to reach the hub")
            if mode == "on":
                wait_for(lambda: _children(agent), "the command to run in the agent")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        codes[mode] = (proc.returncode, err.strip().splitlines()[-1:])
        accepted.clear()
    assert codes["off"] == codes["on"], codes
    assert codes["off"][0] == 130, codes
    assert _children(agent) == []


def test_a_killed_front_end_interrupts_its_command(agents, silent_hub):
    target, accepted = silent_hub
    assert _version(agents).returncode == 0
    agent = _agent(agents)
    proc = _ping_forever(target, agents, "on")
    try:
        child = wait_for(lambda: _children(agent), "the command to run in the agent")[0]
        proc.kill()
        proc.wait(10)
        wait_for(lambda: not pid_alive(child), "the command to end with its front end")
    finally:
        proc.kill()
    assert pid_alive(agent)


def test_the_agent_leaves_when_idle_or_when_its_socket_is_removed(agents):
    assert _version(agents, SONM_CLI_AGENT_IDLE="1").returncode == 0
    idle = _agent(agents)
    wait_for(lambda: not pid_alive(idle), "the idle agent to leave")
    assert list(agents.glob("*.sock")) == [] and cli_agents(agents) == {}

    assert _version(agents).returncode == 0
    agent = _agent(agents)
    next(agents.glob("*.sock")).unlink()
    wait_for(lambda: not pid_alive(agent), "the agent to leave with its socket")


def test_off_starts_no_agent_and_closed_stdin_runs_in_process(agents):
    for _ in range(2):
        res = _version(agents, SONM_CLI_AGENT="off")
        assert res.returncode == 0 and res.stdout.startswith("sonmcli ")
    assert cli_agents(agents) == {}
    script = f"exec 0<&-; {BIN / 'sonmcli'} --version"
    for _ in range(3):  # the first starts an agent; the others cannot pass a closed stdin to it
        res = subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **_env(agents)},
        )
        assert res.returncode == 0 and res.stdout.startswith("sonmcli "), res.stderr
    _agent(agents)  # the first one started it, in the background


def test_agent_status_and_stop(agents):
    def agent(*args: str) -> subprocess.CompletedProcess:
        return sonmcli("agent", *args, home=agents.parent / "client", env=_env(agents))

    res = agent("status")
    assert res.returncode == 3 and res.stdout.startswith("not running"), res
    assert cli_agents(agents) == {}  # asking did not start one
    assert _version(agents).returncode == 0
    pid = _agent(agents)
    info = json.loads(agent("status", "--json").stdout)
    assert info["running"] and info["pid"] == pid and info["served"] >= 1, info
    assert info["commands_running"] == 0 and info["taking_commands"], info
    res = agent("stop")
    assert res.returncode == 0 and res.stdout.strip() == f"agent {pid} stopped", res
    wait_for(lambda: not pid_alive(pid), "the agent to leave")
    assert agent("status").returncode == 3
