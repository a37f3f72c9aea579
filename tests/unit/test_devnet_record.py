"""sonm-devnet's saved state and how it reads (pure: no process started)."""

from __future__ import annotations

import subprocess

import pytest

from sonm_p2p.devnet.record import (
    NetworkRecord,
    NodeRecord,
    check_counts,
    check_name,
    env_lines,
    miner_path,
    render_table,
)
from sonm_p2p.errors import ConfigError


def _record(tmp_path) -> NetworkRecord:
    hub = NodeRecord(
        name="hub-1", role="hub", node_id="0xH", home="h", log="l", pid=7,
        ports={"grpc": 4001, "p2p": 4002, "stun": 4003, "http": 0},
    )  # fmt: skip
    miner = NodeRecord(name="miner-1", role="miner", node_id="0xM", home="m", log="l")
    return NetworkRecord(
        name="n1", root=str(tmp_path / "it's"), bin_dir="/opt/my bin", nodes=[hub, miner]
    )


def test_the_record_survives_a_round_trip(tmp_path):
    rec = _record(tmp_path)
    (tmp_path / "it's").mkdir()
    rec.save()
    again = NetworkRecord.load(tmp_path / "it's")
    assert again == rec and again.hubs[0].grpc_target == "127.0.0.1:4001"
    assert again.node("miner-1").node_id == "0xM"
    with pytest.raises(ConfigError, match="no node 'miner-2'"):
        again.node("miner-2")


def test_env_lines_work_in_a_shell_with_awkward_paths(tmp_path):
    lines = env_lines(_record(tmp_path), tmp_path)
    script = "PATH=/usr/bin:/bin; " + "; ".join(lines) + '; echo "$PATH|$SONM_HOME|$SONM_HUB"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout
    assert out.strip() == f"/opt/my bin:/usr/bin:/bin|{tmp_path}/it's|127.0.0.1:4001"


@pytest.mark.parametrize("name", ["", "A", "a/b", "-a", "a" * 17, "a b"])
def test_bad_names_are_refused(name):
    with pytest.raises(ConfigError, match="--name"):
        check_name(name)


def test_counts():
    check_counts(1, 0)
    with pytest.raises(ConfigError, match="--hubs 0"):
        check_counts(0, 2)
    with pytest.raises(ConfigError, match="--miners -1"):
        check_counts(1, -1)


def test_a_miners_path_as_its_hub_sees_it():
    assert miner_path("", "public") == "relayed"
    assert miner_path("10.0.0.2:4000", "public") == "direct"
    assert miner_path("10.0.0.2:4000", "private") == "hole-punched"
    # a relayed connection's remote address is the relay's (a hub of the network)
    assert miner_path("203.0.113.10:10002", "private", {"203.0.113.10:10002"}) == "relayed"


def test_the_table_has_a_row_per_node():
    rows = [
        {"name": "hub-1", "role": "hub", "node_id": "0xH", "pid": 1, "alive": True,
         "addresses": ["grpc 127.0.0.1:1"]},
        {"name": "miner-1", "role": "miner", "node_id": "0xM", "pid": 2, "alive": False,
         "hub_name": "hub-1", "nat_type": "open", "path": "direct", "tasks": ["t"]},
    ]  # fmt: skip
    lines = render_table(rows).splitlines()
    assert lines[0].split()[:3] == ["NAME", "ROLE", "NODE"]
    assert lines[1].split() == ["hub-1", "hub", "0xH", "1", "yes", "grpc", "127.0.0.1:1"]
    assert lines[2].split() == [
        "miner-1",
        "miner",
        "0xM",
        "2",
        "NO",
        "open",
        "direct",
        "1",
        "hub-1",
    ]
