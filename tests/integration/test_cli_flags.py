"""`sonmcli` takes its group options after the command too, as Docker and kubectl users type
them, with the same result as before it."""

from __future__ import annotations

import json

from tests.harness import sonmcli, wait_for


def test_json_and_hub_after_the_command(net):
    hub = net.hub()
    miner = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    started = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
    job = started.stdout.split()[1].rstrip(",")
    home = net.root / "client"
    for command in (
        ["list"],
        ["status", job],
        ["info"],
        ["tasks"],
        ["miner-status", miner.node_id],
    ):  # noqa: E501
        before = sonmcli("--hub", hub.grpc_target, "--json", *command, home=home)
        after = sonmcli(*command, "--json", "--hub", hub.grpc_target, home=home)
        assert before.returncode == after.returncode == 0, (command, after.stderr)
        assert _steady(json.loads(before.stdout)) == _steady(json.loads(after.stdout)), command
    timed = sonmcli("ping", "--timeout=5s", "--hub", hub.grpc_target, home=home)
    assert (timed.returncode, timed.stdout) == (0, "OK\n")


_VOLATILE = {"uptime_seconds", "last_seen_ms", "last_seen"}  # move between two calls


def _steady(value):
    """``value`` without the fields that change from one call to the next, at any depth."""
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_steady(v) for v in value]
    return value


def test_a_second_hub_on_the_stun_port_names_the_flag(net):
    first = net.hub()
    # The harness gives each hub its own STUN port; a second hub on the default (3478) clashes
    # the same way, so take the first hub's actual one.
    second = _run_hub(net, ["--stun-listen", first.cli_json("info")["stun_endpoint"]])
    assert second.returncode == 2, second.stderr
    assert "--stun-listen" in second.stderr and "in use" in second.stderr.lower(), second.stderr


def _run_hub(net, extra):
    import subprocess

    from tests.harness import BIN, free_port

    argv = [
        str(BIN / "sonmhub"), "--home", str(net.root / "hub2"),
        "--grpc-listen", f"127.0.0.1:{free_port()}",
        "--p2p-listen", f"/ip4/127.0.0.1/tcp/{free_port()}", *extra,
    ]  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )  # noqa: E501


def test_forward_takes_one_local_per_port_at_most(tmp_path):
    # Refused before any hub is asked: --hub points nowhere.
    for extra, message in (
        (["--local", "127.0.0.1:1", "--local", "127.0.0.1:2"], "2 --local for 1 port(s)"),
        (["9090/tcp", "--local", "127.0.0.1:7", "--local", "127.0.0.1:7"], "share one --local"),
        (["70000/udp"], "expected PORT/tcp or PORT/udp"),
    ):
        res = sonmcli("--hub", "127.0.0.1:9", "forward", "JOB", "8080/tcp", *extra, home=tmp_path)
        assert res.returncode == 6 and message in res.stderr, (extra, res.stderr)
    usage = sonmcli("forward", "JOB", home=tmp_path)
    assert usage.returncode == 2 and "PORT..." in usage.stderr, usage.stderr
