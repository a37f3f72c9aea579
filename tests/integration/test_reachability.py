"""AutoNAT dial-backs, and a hub that makes itself reachable through another hub's relay.

In process: real libp2p hosts on 127.0.0.1 ask a server to dial them back at addresses that do
answer, that do not, that another node answers, and that carry another IP. As processes: a hub
told it is private (``--reachability private``: on loopback no NAT can be detected; the netns
tests detect a real one) reserves on its bootstrap hub, announces the circuit address, and a
miner and sonmcli reach it through that address only.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable

import pytest

from sonm_p2p.identity import Identity
from sonm_p2p.transport.node import NodeOptions, P2PNode
from sonm_p2p.transport.reachability import Reachability, check_reachability
from tests.harness import BIN, Hub, Network, sonmcli, wait_for

LOCAL = ("/ip4/127.0.0.1/tcp/0",)


def _node(made: list[P2PNode], **options: object) -> P2PNode:
    node = P2PNode(Identity.generate(), NodeOptions(listen=LOCAL, **options))  # type: ignore[arg-type]
    node.start()
    made.append(node)
    return node


def _ask(node: P2PNode, server: P2PNode, addrs: list[str]) -> tuple[Reachability, str]:
    verdict, answers = node.run(check_reachability, node.core.host, [server.peer_id], addrs)
    return verdict, answers[server.peer_id]


def _listen(node: P2PNode) -> list[str]:
    return [a.split("/p2p/")[0] for a in node.addrs]


def test_a_node_that_answers_is_public(p2p_nodes: list[P2PNode]) -> None:
    server = _node(p2p_nodes, autonat_service=True)
    client = _node(p2p_nodes)
    client.connect(server.addrs[0])
    verdict, answers = client.check_reachability([server.peer_id])
    assert verdict == Reachability.PUBLIC
    assert answers[server.peer_id].startswith("reachable at /ip4/127.0.0.1/tcp/")


def test_a_closed_port_is_private(p2p_nodes: list[P2PNode]) -> None:
    server = _node(p2p_nodes, autonat_service=True)
    client = _node(p2p_nodes)
    client.connect(server.addrs[0])
    with socket.create_server(("127.0.0.1", 0)) as s:
        closed = s.getsockname()[1]
    verdict, answer = _ask(client, server, [f"/ip4/127.0.0.1/tcp/{closed}"])
    assert verdict == Reachability.PRIVATE
    assert answer.startswith("failed")


def test_an_address_another_node_answers_is_not_ours(p2p_nodes: list[P2PNode]) -> None:
    # The dial-back is a new connection with a Noise handshake: a port forwarded to someone
    # else (or a lie) is not taken for reachability. py-libp2p's own server reused the
    # connection the request came on and said "public" to everyone.
    server = _node(p2p_nodes, autonat_service=True)
    client = _node(p2p_nodes)
    other = _node(p2p_nodes)
    client.connect(server.addrs[0])
    verdict, answer = _ask(client, server, _listen(other))
    assert verdict == Reachability.PRIVATE
    assert answer.startswith("failed")


def test_only_the_requesters_own_ip_is_dialled(p2p_nodes: list[P2PNode]) -> None:
    # A server must not be usable to make connections to third parties.
    server = _node(p2p_nodes, autonat_service=True)
    client = _node(p2p_nodes)
    client.connect(server.addrs[0])
    port = _listen(client)[0].rsplit("/", 1)[1]
    verdict, answer = _ask(client, server, [f"/ip4/127.0.0.2/tcp/{port}"])
    assert verdict == Reachability.PRIVATE
    assert answer.startswith("refused")


def test_a_peer_without_the_service_gives_no_verdict(p2p_nodes: list[P2PNode]) -> None:
    plain = _node(p2p_nodes)
    client = _node(p2p_nodes)
    client.connect(plain.addrs[0])
    verdict, answers = client.check_reachability([plain.peer_id], timeout=5)
    assert verdict == Reachability.UNKNOWN
    assert answers[plain.peer_id].startswith("not asked")


# -- hubs as processes --------------------------------------------------------------------------


def _info_if(hub: Hub, cond: Callable[[dict], object]) -> dict | None:
    info = hub.cli_json("info")
    return info if cond(info) else None


def _circuits(info: dict) -> list[str]:
    return [a for a in info["multiaddrs"] if "/p2p-circuit/" in a]


def test_a_private_hub_is_reached_through_its_relay(net: Network) -> None:
    relay = net.hub("relay")
    relay_peer = relay.cli_json("info")["peer_id"]
    hub = net.hub(
        "private-hub", extra=["--bootstrap", relay.p2p_target, "--reachability", "private"]
    )
    info = wait_for(
        lambda: _info_if(hub, lambda i: _circuits(i)),
        "the private hub to hold a reservation on the relay",
    )
    assert info["reachability"] == "private"
    circuit = _circuits(info)[0]
    assert f"/p2p/{relay_peer}/p2p-circuit/p2p/{info['peer_id']}" in circuit

    # Its announcement carries the circuit address: the overlay tells clients about it.
    found = sonmcli("--json", "--bootstrap", relay.p2p_target, "hubs", home=net.root / "client")
    assert found.returncode == 0, found.stderr
    assert any(circuit in h["multiaddrs"] for h in json.loads(found.stdout)["hubs"])

    # A miner given only the circuit address reaches the hub through the relay.
    miner = net.miner(circuit, "miner", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "the miner to be online on the private hub")

    # So does sonmcli, and the hub calls the miner back over that connection.
    listed = sonmcli("--hub", circuit, "--json", "list", home=net.root / "client")
    assert listed.returncode == 0, listed.stderr
    miners = {m["node_id"]: m for m in json.loads(listed.stdout)["miners"]}
    # Classified against the relay hub's STUN responder (the private hub's is out of reach).
    assert miners[miner.node_id]["nat_type"] == "open", miners
    status = sonmcli(
        "--hub", circuit, "--json", "miner-status", miner.node_id, home=net.root / "client"
    )
    assert status.returncode == 0, status.stderr


def test_a_hub_its_bootstrap_can_dial_stays_public(net: Network) -> None:
    first = net.hub("first")
    second = net.hub("second", extra=["--bootstrap", first.p2p_target])
    info = wait_for(
        lambda: _info_if(second, lambda i: i["reachability"] != "unknown"),
        "the second hub to learn its reachability",
    )
    assert info["reachability"] == "public"
    assert _circuits(info) == []
    # A hub with nobody to ask does not guess.
    assert first.cli_json("info")["reachability"] == "unknown"


def test_a_relay_that_does_not_relay_is_reported(net: Network) -> None:
    plain = net.hub("plain", extra=["--no-relay"])
    hub = net.hub(
        "private-hub",
        extra=["--relay-via", plain.p2p_target, "--reachability", "private", "--no-mdns"],
    )
    line = wait_for(
        lambda: next(
            (x for x in hub.proc.output().splitlines() if "no reservation on relay" in x), None
        ),
        "the hub to say its reservation failed",
    )
    print(line)
    assert plain.p2p_target in line
    info = hub.cli_json("info")
    assert info["reachability"] == "private" and _circuits(info) == [], info


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--reachability", "private"], "a private hub needs a relay"),
        (["--relay-reservations", "0"], "must be at least 1"),
        (["--relay-circuit-bytes", "lots"], "expected a size like 512m"),
        (["--relay-via", "/ip4/127.0.0.1/tcp/1/p2p-circuit"], "bad multiaddr"),
        (["--relay-via", "127.0.0.1:99999"], "port must be 1-65535"),
    ],
)
def test_bad_relay_settings_are_refused_clearly(tmp_path, flags: list[str], says: str) -> None:
    res = subprocess.run(
        [
            str(BIN / "sonmhub"),
            "--home",
            str(tmp_path),
            "--no-mdns",
            "--grpc-listen",
            "127.0.0.1:0",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--stun-listen",
            "127.0.0.1:0",
            *flags,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sonmhub: error:") and says in lines[0], lines
