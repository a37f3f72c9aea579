"""A hub and miners as real processes on 127.0.0.1, over real libp2p and gRPC.

The miners use the in-memory container engine here: Docker is not what these tests are about
(tests/e2e runs the same flows on the real engine).
"""

from __future__ import annotations

import json
import time

from tests.harness import BIN, free_port, sonmcli, wait_for


def _start(hub, miner_id, image="sonm-test/web"):
    res = hub.cli("start", "--image", image, f"--miner={miner_id}")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ID ")
    return res.stdout.split()[1].rstrip(",")


def test_seed_commands_over_the_overlay(net):
    hub = net.hub()
    m1 = net.miner(hub, "m1", runtime="memory")
    m2 = net.miner(hub, "m2", runtime="memory")
    ids = {m1.node_id, m2.node_id}
    wait_for(lambda: hub.online() == ids, "both miners listed")

    ping = hub.cli("ping")
    assert (ping.returncode, ping.stdout) == (0, "OK\n")
    # Each miner classified its NAT against the hub's STUN responder: none on one machine.
    assert {m["nat_type"] for m in hub.cli_json("list")["miners"]} == {"open"}

    job = _start(hub, m1.node_id[:10])  # a unique prefix names a miner
    res = hub.cli("start", "--image", "sonm-test/web", f"--miner={m1.node_id}")
    line = res.stdout.strip()
    assert line.startswith("ID ") and ", Endpoint [8080/tcp->127.0.0.1:" in line, line
    assert " 9090/udp->127.0.0.1:" in line
    job2 = line.split()[1].rstrip(",")

    listed = hub.cli("list")
    assert listed.returncode == 0
    head, body = listed.stdout.split("\n", 1)
    assert head == "Connected Miners"
    assert json.loads(body) == {
        m1.node_id: {"values": [job, job2]},
        m2.node_id: {"values": []},
    }

    status = hub.cli_json("status", job)
    assert status["state"] == "RUNNING" and status["miner"] == m1.node_id
    assert status["owner"].startswith("0x")  # the client's own node ID

    stopped = hub.cli("stop", job)
    assert stopped.returncode == 0, stopped.stderr
    assert hub.cli_json("status", job)["state"] == "STOPPED"
    tasks = hub.cli_json("tasks")["tasks"]
    assert [(t["id"], t["state"]) for t in tasks] == [(job, "STOPPED"), (job2, "RUNNING")]


def test_bad_input_gets_clear_errors_and_exit_codes(net):
    hub = net.hub()
    m1 = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")

    cases = [
        (["start", "--image", "sonm-test/web", "--miner=0xdeadbeef"], 3, "no miner with ID"),
        (["stop", "no-such-job"], 3, "no task with ID"),
        (["status", "no-such-job"], 3, "no task with ID"),
        (
            ["start", "--image", "sonm-test/noentry", f"--miner={m1.node_id}"],
            6,
            "neither ENTRYPOINT nor CMD",
        ),
        (
            ["start", "--image", "127.0.0.1:1/nope:missing", f"--miner={m1.node_id}"],
            3,
            "127.0.0.1:1/nope:missing",
        ),
        (["start", "--image", "", f"--miner={m1.node_id}"], 6, "image"),
        (["--timeout", "soon", "ping"], 2, "not a duration"),
    ]
    for argv, code, message in cases:
        res = hub.cli(*argv)
        assert res.returncode == code, (argv, res.returncode, res.stderr)
        assert message in res.stderr, (argv, res.stderr)
        assert "Traceback" not in res.stderr
        if code != 2:  # usage errors come with click's usage line
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr

    # --json errors are machine-readable too
    res = hub.cli("--json", "stop", "no-such-job")
    assert res.returncode == 3
    assert json.loads(res.stdout)["error"]["type"] == "TaskNotFound"

    # failed starts are recorded as FAILED with their reason, never left half-done
    failed = [t for t in hub.cli_json("tasks")["tasks"] if t["state"] == "FAILED"]
    assert len(failed) == 2 and all(t["error"] for t in failed)


def test_hub_that_is_not_there_fails_fast(tmp_path):
    port = free_port()  # nothing listens here
    t0 = time.monotonic()
    res = sonmcli("--hub", f"127.0.0.1:{port}", "--timeout", "3s", "ping", home=tmp_path)
    elapsed = time.monotonic() - t0
    assert res.returncode == 4, res.stderr
    assert "not reachable" in res.stderr and "Traceback" not in res.stderr
    assert elapsed < 3 + 2  # within the --timeout (plus interpreter start-up)


def test_killed_miner_goes_offline_and_its_tasks_lost_then_return(net):
    hub = net.hub(extra=["--ping-interval", "1s", "--ping-timeout", "1s"])
    m1 = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")
    job = _start(hub, m1.node_id)

    m1.proc.kill9()
    wait_for(lambda: m1.node_id not in hub.online(), "miner offline after kill -9", timeout=10)
    assert hub.cli_json("status", job)["state"] == "LOST"
    res = hub.cli("start", "--image", "sonm-test/web", f"--miner={m1.node_id}")
    assert res.returncode == 4 and "offline" in res.stderr

    # the in-memory engine died with the process: the miner returns without the container
    m1.restart()
    wait_for(lambda: m1.node_id in hub.online(), "miner back online")
    final = hub.cli_json("status", job)
    assert final["state"] == "FAILED" and "gone" in final["error"]


def test_hub_restart_keeps_tasks_and_miners_reconnect(net):
    hub = net.hub()
    m1 = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")
    job = _start(hub, m1.node_id)
    before = hub.cli_json("status", job)

    hub.proc.kill9()
    hub.restart()
    wait_for(lambda: m1.node_id in hub.online(), "miner reconnected to the restarted hub")
    after = hub.cli_json("status", job)
    assert after["state"] == "RUNNING"
    assert (after["owner"], after["endpoints"]) == (before["owner"], before["endpoints"])


def test_miner_accepts_a_full_multiaddr(net):
    hub = net.hub()
    info = hub.cli_json("info")
    addr = info["multiaddrs"][0]
    assert "/p2p/" in addr
    m1 = net.miner(addr, "m1", runtime="memory")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed via multiaddr")


def test_only_the_owner_may_stop_a_task_or_read_its_output(net, tmp_path):
    hub = net.hub()
    m1 = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")
    job = _start(hub, m1.node_id)
    mallory = tmp_path / "mallory"
    for argv in (["stop", job], ["logs", job]):
        res = sonmcli("--hub", hub.grpc_target, *argv, home=mallory)
        assert res.returncode == 8, res.stderr
        assert "only the task's owner" in res.stderr
    # reading its state is open to anyone
    assert sonmcli("--hub", hub.grpc_target, "status", job, home=mallory).returncode == 0
    # the hub's operator (holding the hub's key) may stop it
    res = sonmcli("--hub", hub.grpc_target, "stop", job, home=hub.home)
    assert res.returncode == 0, res.stderr


def test_frozen_miner_is_offline_after_three_missed_pings_and_comes_back(net):
    import os
    import signal

    hub = net.hub(extra=["--ping-interval", "1s", "--ping-timeout", "0.5s"])
    m1 = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")
    job = _start(hub, m1.node_id)
    os.kill(m1.proc.pid, signal.SIGSTOP)  # its connection stays open; it just stops answering
    try:
        t0 = time.monotonic()
        wait_for(lambda: m1.node_id not in hub.online(), "miner offline", timeout=15)
        assert time.monotonic() - t0 >= 2  # not at the first missed ping
        assert hub.cli_json("status", job)["state"] == "LOST"
    finally:
        os.kill(m1.proc.pid, signal.SIGCONT)
    wait_for(lambda: m1.node_id in hub.online(), "miner back after it thawed", timeout=30)
    wait_for(lambda: hub.cli_json("status", job)["state"] == "RUNNING", "its task RUNNING again")


def test_detached_start_returns_at_once_and_the_task_comes_up(net):
    hub = net.hub()
    m1 = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")
    res = hub.cli("start", "--detach", "--image", "sonm-test/web", f"--miner={m1.node_id}")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ID ") and "Endpoint" not in res.stdout
    job = res.stdout.split()[1]
    wait_for(lambda: hub.cli_json("status", job)["state"] == "RUNNING", "detached task running")


def test_nat_and_miner_check_report_what_the_transport_sees(net):
    import subprocess

    from tests.harness import BIN

    hub = net.hub()
    report = hub.cli_json("nat")
    assert report["stun"]["nat_type"] == "open"  # 127.0.0.1 talks to itself: no NAT
    assert report["stun"]["mapped"] == report["stun"]["local"]
    assert report["overlay"]["path"] == "direct" and report["overlay"]["rtt_ms"] > 0
    res = subprocess.run(
        [
            str(BIN / "sonmminer"),
            "--home",
            str(net.root / "checker"),
            "-h",
            hub.p2p_target,
            "--check",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["hub"] == hub.cli_json("info")["node_id"]


def test_the_hub_reads_its_own_listen_variable(net):
    # SONM_P2P_LISTEN is the miner's and client's (the harness sets it to an ephemeral loopback
    # port); a hub on the same machine takes SONM_HUB_P2P_LISTEN, else its default 10002.
    grpc_port, p2p_port = free_port(), free_port()
    proc = net.spawn(
        "hub-env",
        [
            str(BIN / "sonmhub"), "--home", str(net.root / "hub-env"),
            "--grpc-listen", f"127.0.0.1:{grpc_port}", "--stun-listen", "127.0.0.1:0",
        ],
        SONM_HUB_P2P_LISTEN=f"/ip4/127.0.0.1/tcp/{p2p_port}",
    )  # fmt: skip
    home = net.root / "client"

    def info() -> dict | None:
        res = sonmcli("--hub", f"127.0.0.1:{grpc_port}", "--json", "info", home=home)
        return json.loads(res.stdout) if res.returncode == 0 else None

    got = wait_for(info, "the hub to answer")
    assert [a.split("/p2p/")[0] for a in got["multiaddrs"]] == [f"/ip4/127.0.0.1/tcp/{p2p_port}"]
    assert proc.alive()
