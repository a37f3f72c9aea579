"""An attacker on the same network, against a hub and miner running as processes."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess

import grpc
import pytest

from sonm_p2p._pb.sonm.v1 import common_pb2, hub_pb2, hub_pb2_grpc
from sonm_p2p.client import HubClient
from sonm_p2p.errors import InvalidRequest
from sonm_p2p.identity import load_or_create
from sonm_p2p.model import RunSpec
from tests.harness import sonmcli, wait_for


def test_another_client_cannot_shadow_or_lock_out_a_tasks_owner(net, tmp_path):
    hub = net.hub()
    miner = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    started = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
    assert started.returncode == 0, started.stderr
    job = started.stdout.split()[1].rstrip(",")

    attacker = load_or_create(tmp_path / "attacker")
    with HubClient(hub.grpc_target, identity=attacker, timeout=30) as client:
        # The owner's ID in another case is the same ID: refused, not a second task.
        with pytest.raises(InvalidRequest, match="already used"):
            client.start_task(miner.node_id, RunSpec("sonm-test/web"), task_id=job.upper())
        # A task sharing the owner's prefix is allowed, but cannot make the owner's prefix
        # ambiguous to the owner.
        shadow = client.start_task(
            miner.node_id, RunSpec("sonm-test/web"), task_id=job[:8] + "-shadow-task"
        )
    assert shadow.task_id == job[:8] + "-shadow-task"

    assert hub.cli_json("status", job)["state"] == "RUNNING"
    logs = hub.cli("logs", job[:8])
    assert logs.returncode == 0, logs.stderr
    stopped = hub.cli("stop", job[:8])
    assert stopped.returncode == 0, stopped.stderr
    assert hub.cli_json("status", job)["state"] == "STOPPED"
    assert hub.cli_json("status", shadow.task_id)["state"] == "RUNNING"  # theirs untouched


def test_a_thousand_open_streams_leave_ping_and_list_answering(net):
    """Unsigned WatchTask streams hold no worker: with 1,000 open, ping and list still answer,
    and one over the bound is refused with RESOURCE_EXHAUSTED (Busy), not queued."""
    hub = net.hub(extra=["--max-streams", "1000", "--max-streams-per-client", "1000"])
    miner = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    started = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
    assert started.returncode == 0, started.stderr
    job = started.stdout.split()[1].rstrip(",")

    async def flood() -> None:
        async with grpc.aio.insecure_channel(hub.grpc_target) as channel:
            stub = hub_pb2_grpc.HubStub(channel)
            calls = [stub.WatchTask(common_pb2.TaskRef(task_id=job)) for _ in range(1000)]
            try:
                firsts = await asyncio.wait_for(
                    asyncio.gather(*(c.read() for c in calls)), timeout=120
                )
                assert all(f.task.task_id == job for f in firsts)  # each one is being served
                extra = stub.WatchTask(common_pb2.TaskRef(task_id=job))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await asyncio.wait_for(extra.read(), timeout=30)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert ("sonm-error", "Busy") in tuple(refused.value.trailing_metadata())
                # Meanwhile the short calls answer, in fresh processes as a user runs them.
                ping = await asyncio.to_thread(hub.cli, "--timeout", "10s", "ping")
                assert (ping.returncode, ping.stdout) == (0, "OK\n"), ping.stderr
                listed = await asyncio.to_thread(hub.cli, "--timeout", "10s", "list")
                assert listed.returncode == 0 and job in listed.stdout, listed.stderr
            finally:
                for call in calls:
                    call.cancel()

    asyncio.run(flood())

    def one_more_is_served() -> bool:  # the budget is given back as the streams end
        async def watch() -> bool:
            async with grpc.aio.insecure_channel(hub.grpc_target) as channel:
                call = hub_pb2_grpc.HubStub(channel).WatchTask(common_pb2.TaskRef(task_id=job))
                try:
                    return (await asyncio.wait_for(call.read(), 10)).task.task_id == job
                except grpc.aio.AioRpcError:
                    return False
                finally:
                    call.cancel()

        return asyncio.run(watch())

    wait_for(one_more_is_served, "a new stream served once the flood is closed")


def test_bad_fields_are_refused_at_the_hub_edge_and_break_nothing(net, tmp_path):
    hub = net.hub()
    miner = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    target = f"--miner={miner.node_id}"
    cases = [
        (["--cpu", "nan"], "--cpu nan"),
        (["--cpu", "1e-12"], "--cpu 1e-12"),
        (["--memory", "1"], "--memory 1 bytes"),
    ]
    for flags, says in cases:
        res = hub.cli("start", "--image", "sonm-test/web", target, *flags)
        assert res.returncode == 6, (flags, res.stdout, res.stderr)  # INVALID_ARGUMENT
        assert says in res.stderr and "internal" not in res.stderr.lower(), res.stderr

    attacker = load_or_create(tmp_path / "attacker")
    with HubClient(hub.grpc_target, identity=attacker, timeout=30) as client:
        with pytest.raises(InvalidRequest, match="bad image reference") as err:
            client.start_task(miner.node_id, RunSpec("x" * 3_000_000))
        assert len(str(err.value)) < 300  # a huge value is not echoed back
        with pytest.raises(InvalidRequest, match="bad environment variable name ''"):
            client.start_task(miner.node_id, RunSpec("sonm-test/web", env={"": "x"}))
        with pytest.raises(InvalidRequest, match="bad task ID"):
            client.task_status("y" * 1_000_000)
    # Nothing was stored: everyone's `tasks` still works.
    listed = hub.cli("tasks")
    assert listed.returncode == 0, listed.stderr
    assert hub.cli_json("tasks")["tasks"] == []


def test_a_pull_cannot_be_pointed_at_the_miners_own_network(net):
    hub = net.hub()
    miner = net.miner(hub, "m1", runtime="memory", allow_local_registry=False)
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    for image in ("127.0.0.1:2375/containers/json", "localhost:10001/x", "169.254.169.254/x"):
        res = hub.cli("start", "--image", image, f"--miner={miner.node_id}")
        assert res.returncode == 6, (image, res.stdout, res.stderr)
        assert "internal address" in res.stderr and "--allow-registry" in res.stderr
    assert all(t["state"] == "FAILED" for t in hub.cli_json("tasks")["tasks"])


def test_daemon_homes_keys_state_and_kept_output_are_private(net):
    hub = net.hub()
    miner = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    started = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
    job = started.stdout.split()[1].rstrip(",")
    assert hub.cli("stop", job).returncode == 0  # keeps its output in the miner's home
    wait_for(lambda: (miner.home / "logs" / f"{job}.log").exists(), "the kept output")

    def mode(path):
        return path.stat().st_mode & 0o777

    assert mode(hub.home) == mode(miner.home) == 0o700
    assert mode(hub.home / "key") == mode(miner.home / "key") == 0o600
    assert mode(hub.home / "hub.db") == 0o600
    assert mode(miner.home / "logs") == 0o700
    assert mode(miner.home / "logs" / f"{job}.log") == 0o600


def _tcp_listening(pid: int) -> set[int]:
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return {
        int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if f"pid={pid}," in line
    }


def test_no_local_process_can_speak_as_the_hub_or_the_miner(net):
    """The hub's tunnels to its miners and a miner's own gRPC are private Unix sockets: the
    only TCP ports the daemons listen on are the ones they announce."""
    hub = net.hub()
    miner = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    started = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
    assert started.returncode == 0, started.stderr  # the hub has called the miner: tunnels open
    assert _tcp_listening(hub.proc.pid) == {hub.grpc_port, hub.p2p_port}
    assert len(_tcp_listening(miner.proc.pid)) == 1  # its overlay port, nothing else


def test_tasks_are_paged_and_ended_ones_forgotten_after_the_retention(net, tmp_path):
    hub = net.hub(extra=["--task-retention", "3s"])
    miner = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    jobs = []
    for _ in range(5):
        res = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
        jobs.append(res.stdout.split()[1].rstrip(","))
    with HubClient(hub.grpc_target, timeout=30) as client:
        assert [t.task_id for t in client.list_tasks(page_size=2)] == jobs  # three pages
        with pytest.raises(InvalidRequest, match="bad page token"):
            client._call("ListTasks", hub_pb2.ListTasksRequest(page_token="forged"))
    assert [t["id"] for t in hub.cli_json("tasks")["tasks"]] == jobs
    assert hub.cli("stop", jobs[0]).returncode == 0
    wait_for(lambda: hub.cli("status", jobs[0]).returncode == 3, "the ended task forgotten")
    assert [t["id"] for t in hub.cli_json("tasks")["tasks"]] == jobs[1:]  # running ones stay


def test_the_client_api_can_serve_tls(net, tmp_path):
    cert, key = tmp_path / "hub.pem", tmp_path / "hub.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=sonm-test-hub", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    hub = net.hub(
        extra=["--tls-cert", str(cert), "--tls-key", str(key)], cli_args=["--tls-ca", str(cert)]
    )  # noqa: E501
    miner = net.miner(hub, "m1", runtime="memory")  # miners use the overlay: unaffected
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    started = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
    assert started.returncode == 0, started.stderr
    # Without the CA (plain gRPC against TLS) the hub is unreachable, said in one line.
    plain = sonmcli("--hub", hub.grpc_target, "--timeout", "5s", "ping", home=tmp_path / "c")
    assert plain.returncode == 4, plain.stderr
    missing = hub.cli("--tls-ca", str(tmp_path / "nope.pem"), "ping")
    assert missing.returncode == 2 and "nope.pem" in missing.stderr


def test_a_tasks_details_are_its_owners(net, tmp_path):
    hub = net.hub()
    miner = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    started = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
    job = started.stdout.split()[1].rstrip(",")
    mine = hub.cli_json("status", job)  # the CLI signs its reads: the owner sees everything
    assert mine["image"] == "sonm-test/web" and mine["endpoints"], mine
    stranger = sonmcli("--hub", hub.grpc_target, "--json", "status", job, home=tmp_path / "s")
    theirs = json.loads(stranger.stdout)
    assert theirs["state"] == "RUNNING" and theirs["id"] == job  # the market is public
    assert theirs["image"] == "" and not theirs["endpoints"], theirs
    with HubClient(hub.grpc_target, timeout=30) as anonymous:  # unsigned
        (seen,) = anonymous.list_tasks()
        assert seen.task_id == job and seen.image == "" and seen.endpoints == ()
    usage = json.loads(
        sonmcli(
            "--hub", hub.grpc_target, "--json", "miner-status", miner.node_id, home=tmp_path / "s"
        ).stdout  # noqa: E501
    )
    assert usage["usage"] == [] and usage["allocated"]["cpus"] > 0
    assert [u["task_id"] for u in hub.cli_json("miner-status", miner.node_id)["usage"]] == [job]


def test_a_crowd_of_idle_connections_leaves_the_hub_serving(net):
    """2,000 TCP connections that never speak (to the client API and the overlay port) take no
    worker: ping, list and a start still answer."""
    hub = net.hub()
    miner = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    crowd = []
    try:
        for port, count in ((hub.grpc_port, 1500), (hub.p2p_port, 500)):
            for _ in range(count):
                crowd.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for s in crowd[::7]:
            s.sendall(b"\x00garbage\xff" * 16)  # some of them speak nonsense
        assert hub.cli("--timeout", "10s", "ping").returncode == 0
        assert hub.cli("--timeout", "10s", "list").returncode == 0
        started = hub.cli(
            "--timeout", "20s", "start", "--image", "sonm-test/web", f"--miner={miner.node_id}"
        )  # noqa: E501
        assert started.returncode == 0, started.stderr
        assert miner.node_id in hub.online()
    finally:
        for s in crowd:
            s.close()
    assert "Traceback" not in hub.proc.output()
