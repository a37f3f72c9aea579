"""An unsigned MinerStatus flood against a miner on the real Docker engine: its pings are still
answered, it stays online and its task RUNNING (each status costs the engine's stats)."""

from __future__ import annotations

import asyncio
import time

import grpc

from sonm_p2p._pb.sonm.v1 import common_pb2, hub_pb2_grpc
from tests.conftest import needs_docker
from tests.harness import wait_for

pytestmark = needs_docker


def test_a_status_flood_does_not_push_a_miner_offline(net):
    pings = ["--ping-interval", "1s", "--ping-timeout", "1s", "--max-missed-pings", "2"]
    hub = net.hub(extra=pings)
    miner = net.miner(hub, "m1")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed", 60)
    started = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
    assert started.returncode == 0, started.stderr
    job = started.stdout.split()[1].rstrip(",")

    async def flood(seconds: float) -> dict[str, int]:
        outcome: dict[str, int] = {}
        async with grpc.aio.insecure_channel(hub.grpc_target) as channel:
            stub = hub_pb2_grpc.HubStub(channel)
            deadline = time.monotonic() + seconds

            async def caller() -> None:
                while time.monotonic() < deadline:
                    try:
                        await stub.MinerStatus(
                            common_pb2.MinerRef(miner_id=miner.node_id), timeout=5
                        )
                        key = "OK"
                    except grpc.aio.AioRpcError as exc:
                        key = exc.code().name
                    outcome[key] = outcome.get(key, 0) + 1

            await asyncio.gather(*(caller() for _ in range(64)))
        return outcome

    outcome = asyncio.run(flood(8.0))
    assert outcome.get("OK", 0) > 0, outcome
    assert set(outcome) <= {"OK", "RESOURCE_EXHAUSTED"}, outcome  # answered or refused, no hang
    # Two missed 1 s pings would have made it offline: it never was.
    assert "offline" not in hub.proc.output(), hub.proc.output()[-2000:]
    assert miner.node_id in hub.online()
    assert hub.cli_json("status", job)["state"] == "RUNNING"
    assert hub.cli("stop", job).returncode == 0
