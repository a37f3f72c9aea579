"""Registered hubs in discovery (pure parts): checking registry entries, the validator's
``unregistered`` drops, the directory forgetting hubs that left, chain settings, and that web3
stays out of every path without a chain."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from sonm_p2p.chain import ChainSettings
from sonm_p2p.discovery import AnnouncementValidator, DropReason, HubAnnouncement, HubDirectory
from sonm_p2p.discovery.registered import RegisteredHubs, check_entry
from sonm_p2p.errors import ConfigError
from sonm_p2p.identity import Identity


@dataclass
class Entry:
    node_id: str
    stake: int
    multiaddrs: tuple[str, ...]
    grpc_endpoint: str = "192.0.2.1:10001"


def _peer(ident: Identity) -> str:
    from libp2p.peer.id import ID

    return ID.from_pubkey(ident.libp2p_key_pair().public_key).to_base58()


def good(ident: Identity, stake: int = 1) -> Entry:
    return Entry(ident.node_id, stake, (f"/ip4/192.0.2.1/tcp/10002/p2p/{_peer(ident)}",))


def test_a_good_entry_is_usable():
    ident = Identity.generate()
    hub = check_entry(good(ident))
    assert not isinstance(hub, str)
    assert hub.peer_id == _peer(ident) and hub.node_id == ident.node_id
    relayed = Entry(
        ident.node_id,
        1,
        (f"/ip4/192.0.2.9/tcp/1/p2p/{_peer(Identity.generate())}/p2p-circuit/p2p/{_peer(ident)}",),
    )
    assert not isinstance(check_entry(relayed), str)


@pytest.mark.parametrize(
    "addrs, reason",
    [
        ((), "no multiaddrs"),
        (("not a multiaddr",), "malformed"),
        (("/ip4/192.0.2.1/tcp/99999",), "malformed"),
        (("/ip4/192.0.2.1/tcp/10002",), "without the hub's /p2p/"),
        (("/ip4/192.0.2.1/tcp/10002/p2p/OTHER",), "not the key that registered"),
    ],
)
def test_malformed_entries_are_skipped_and_counted(addrs, reason):
    ident = Identity.generate()
    other = Identity.generate()
    addrs = tuple(a.replace("OTHER", _peer(other)) for a in addrs)
    assert reason in check_entry(Entry(ident.node_id, 1, addrs))
    hubs = RegisteredHubs.of([Entry(ident.node_id, 1, addrs), good(other)])
    assert len(hubs) == 1 and other.node_id in hubs and ident.node_id not in hubs
    assert list(hubs.skipped) == [ident.node_id]


def test_largest_stake_first():
    idents = [Identity.generate() for _ in range(3)]
    hubs = RegisteredHubs.of(good(i, stake) for i, stake in zip(idents, (1, 3, 2), strict=True))
    assert [h.node_id for h in hubs.by_stake(2)] == [idents[1].node_id, idents[2].node_id]
    assert hubs.stake(idents[0].node_id.lower()) == 1 and hubs.stake("0x" + "0" * 40) is None


def _announcement(ident: Identity, now: float) -> bytes:
    return HubAnnouncement.create(ident, peer_id=_peer(ident), now=now).encode()


def test_validator_drops_unregistered_hubs_under_their_own_reason():
    registered, stranger = Identity.generate(), Identity.generate()
    v = AnnouncementValidator(registered=frozenset())
    now = time.time()
    assert v.check(_announcement(registered, now), now=now).reason == DropReason.UNREGISTERED
    v.registered = frozenset({registered.node_id.lower()})
    assert v.check(_announcement(registered, now + 1), now=now + 1)
    assert v.check(_announcement(stranger, now + 1), now=now + 1).reason == "unregistered"
    assert v.drops["unregistered"] == 2 and v.accepted == 1
    # Without a registry, nobody is refused for it.
    assert AnnouncementValidator().check(_announcement(stranger, now), now=now)


def test_directory_forgets_hubs_that_left_the_registry():
    a, b = Identity.generate(), Identity.generate()
    d = HubDirectory()
    now = time.time()
    for i in (a, b):
        d.update(HubAnnouncement.create(i, peer_id=_peer(i), now=now), now)
    assert d.retain({a.node_id.lower()}) == [b.node_id]
    assert [e.node_id for e in d.live(now)] == [a.node_id]


def test_chain_settings_flags_env_and_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SONM_CHAIN", raising=False)
    monkeypatch.delenv("SONM_REGISTRY", raising=False)
    reg = "0x" + "ab" * 20
    assert not ChainSettings.resolve(None, None, tmp_path).enabled
    (tmp_path / "config.toml").write_text(
        f'chain = "http://file:8545"\nregistry = "{reg}"\nrequire_registered = false\n'
    )
    s = ChainSettings.resolve(None, None, tmp_path)
    assert (s.url, s.registry, s.trusting) == ("http://file:8545", reg, False)
    monkeypatch.setenv("SONM_CHAIN", "http://env:8545")
    s = ChainSettings.resolve(None, None, tmp_path, require_registered=True)
    assert (s.url, s.trusting) == ("http://env:8545", True)
    assert ChainSettings.resolve("http://flag:1", None, tmp_path).url == "http://flag:1"
    with pytest.raises(ConfigError, match="0x… contract address"):
        ChainSettings.resolve(None, "0x12", tmp_path)
    monkeypatch.delenv("SONM_CHAIN")
    (tmp_path / "config.toml").write_text(f'registry = "{reg}"\n')
    with pytest.raises(ConfigError, match="no chain"):
        ChainSettings.resolve(None, None, tmp_path)


def test_web3_only_on_chain_paths():
    """sonmcli, sonmhub and sonmminer import no web3 (over a second) unless a chain is used."""
    code = (
        "import sys\n"
        "import cli.sonmcli, cli.sonmhub, cli.sonmminer, sonm_p2p.chain\n"
        "import sonm_p2p.hub.daemon, sonm_p2p.miner.daemon, sonm_p2p.discovery.registry_watch\n"
        "mods = ('web3', 'eth_account', 'sonm_p2p.chain.registry')\n"
        "bad = [m for m in mods if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_chain_loop_logs_a_trouble_once_and_backs_off(caplog):
    import threading

    from sonm_p2p.chain.poll import ChainLoop
    from sonm_p2p.errors import Unavailable

    stop = threading.Event()
    calls: list[float] = []

    def step() -> None:
        calls.append(time.monotonic())
        if len(calls) >= 5:
            stop.set()
            return
        raise Unavailable("chain http://127.0.0.1:1 unreachable (read): connection refused")

    loop = ChainLoop("registry", step, interval=10, backoff_initial=0.01, backoff_max=0.04)
    with caplog.at_level("INFO", logger="sonm_p2p.chain.poll"):
        loop.run(stop)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in line for line in lines) == 1, lines
    assert any("answers again" in line for line in lines)
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert gaps[2] >= gaps[0] and loop.failures == 0
