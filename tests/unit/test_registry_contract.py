"""The hub registry's rules, on web3's in-process chain (py-evm through eth-tester).

Every transaction is signed with a node key (``Identity``), as hubs sign them, and funded from
eth-tester's dev account.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sonm_p2p.chain import WEI, format_eth, parse_eth
from sonm_p2p.errors import ConfigError, Refused
from sonm_p2p.identity import Identity

pytest.importorskip("eth_tester", reason="needs the dev dependencies: make venv")

from web3 import EthereumTesterProvider, Web3  # noqa: E402

from sonm_p2p.chain.registry import (  # noqa: E402
    InsufficientFunds,
    Registry,
    deploy,
    load_artifact,
)

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400


class Chain:
    """An eth-tester chain, a deployer key, and helpers to fund keys and move time."""

    def __init__(self) -> None:
        self.provider = EthereumTesterProvider()
        self.w3 = Web3(self.provider)
        self.tester = self.provider.ethereum_tester
        self.deployer = self.funded()

    def fund(self, node_id: str, ether: float = 10) -> None:
        tx = self.w3.eth.send_transaction(
            {"from": self.w3.eth.accounts[0], "to": node_id, "value": int(ether * WEI)}
        )
        self.w3.eth.wait_for_transaction_receipt(tx)

    def funded(self, ether: float = 10) -> Identity:
        ident = Identity.generate()
        self.fund(ident.node_id, ether)
        return ident

    def registry(self, min_stake: int = WEI, unlock_delay: int = DAY) -> Registry:
        addr = deploy(self.w3, self.deployer, min_stake=min_stake, unlock_delay=unlock_delay)
        reg = Registry(self.w3, addr)
        reg.check()
        return reg

    def travel(self, seconds: int) -> None:
        now = self.w3.eth.get_block("latest")["timestamp"]
        self.tester.time_travel(now + seconds)


@pytest.fixture(scope="module")
def chain() -> Chain:
    return Chain()


def addrs(ident: Identity, port: int = 10002) -> list[str]:
    return [f"/ip4/192.0.2.1/tcp/{port}/p2p/16Uiu2{ident.node_id[2:12]}"]


def test_register_needs_the_minimum_stake(chain):
    reg = chain.registry(min_stake=2 * WEI)
    hub = chain.funded()
    with pytest.raises(Refused, match="stake below the minimum"):
        reg.register(hub, addrs(hub), "192.0.2.1:10001", stake=WEI)
    assert not reg.is_registered(hub.node_id)
    reg.register(hub, addrs(hub), "192.0.2.1:10001", stake=2 * WEI)
    assert reg.is_registered(hub.node_id)
    assert reg.stake_of(hub.node_id) == 2 * WEI
    entry = reg.entry(hub.node_id)
    assert entry is not None and entry.node_id == hub.node_id
    assert entry.multiaddrs == tuple(addrs(hub)) and entry.grpc_endpoint == "192.0.2.1:10001"
    with pytest.raises(Refused, match="already registered"):
        reg.register(hub, addrs(hub), "x:1", stake=2 * WEI)


def test_update_changes_endpoints_and_adds_stake(chain):
    reg = chain.registry()
    hub = chain.funded()
    with pytest.raises(Refused, match="not registered"):
        reg.update(hub, addrs(hub), "192.0.2.1:10001")
    reg.register(hub, addrs(hub), "192.0.2.1:10001", stake=WEI)
    reg.update(hub, addrs(hub, 20002), "192.0.2.9:20001", add=WEI // 2)
    entry = reg.entry(hub.node_id)
    assert entry.multiaddrs == tuple(addrs(hub, 20002))
    assert entry.grpc_endpoint == "192.0.2.9:20001"
    assert entry.stake == WEI + WEI // 2
    with pytest.raises(Refused, match="no multiaddrs"):
        reg.update(hub, [], "192.0.2.9:20001")


def test_deregister_then_withdraw_only_after_the_delay(chain):
    reg = chain.registry(unlock_delay=DAY)
    hub = chain.funded()
    with pytest.raises(Refused, match="not registered"):
        reg.deregister(hub)
    reg.register(hub, addrs(hub), "192.0.2.1:10001", stake=3 * WEI)
    with pytest.raises(Refused, match="deregister first"):
        reg.withdraw(hub)
    before = reg.balance(hub.node_id)
    unlock = reg.deregister(hub)
    assert not reg.is_registered(hub.node_id)
    assert reg.stake_of(hub.node_id) == 3 * WEI  # held until withdrawn
    assert unlock >= chain.w3.eth.get_block("latest")["timestamp"] + DAY - 5
    with pytest.raises(Refused, match="stake still locked"):
        reg.withdraw(hub)
    chain.travel(DAY + 1)
    assert reg.withdraw(hub) == 3 * WEI
    assert reg.stake_of(hub.node_id) == 0
    after = reg.balance(hub.node_id)
    assert 3 * WEI - WEI // 100 < after - before <= 3 * WEI  # less the gas
    with pytest.raises(Refused, match="no stake"):
        reg.withdraw(hub)


def test_listing_is_paged_and_follows_deregistrations(chain):
    reg = chain.registry()
    hubs = [chain.funded() for _ in range(7)]
    for i, h in enumerate(hubs):
        reg.register(h, addrs(h, 10000 + i), f"192.0.2.{i}:10001", stake=WEI)
    assert reg.count() == 7
    pages = list(reg.pages(page=3))
    assert [len(p) for p in pages] == [3, 3, 1]
    assert {e.node_id for p in pages for e in p} == {h.node_id for h in hubs}
    reg.deregister(hubs[1])
    reg.deregister(hubs[6])  # the last one: nothing moves
    left = {e.node_id for e in reg.entries()}
    assert left == {h.node_id for h in hubs} - {hubs[1].node_id, hubs[6].node_id}
    assert reg.count() == 5
    # A hub that left and comes back (its stake still there) needs to send nothing more.
    reg.register(hubs[1], addrs(hubs[1]), "192.0.2.1:10001", stake=0)
    assert reg.is_registered(hubs[1].node_id) and reg.stake_of(hubs[1].node_id) == WEI
    assert reg.count() == 6


def test_events_for_each_change(chain):
    reg = chain.registry(unlock_delay=0)
    hub = chain.funded()
    reg.register(hub, addrs(hub), "a:1", stake=WEI)
    reg.update(hub, addrs(hub), "b:2")
    reg.deregister(hub)
    reg.withdraw(hub)
    events = reg._contract.events
    seen = {
        name: getattr(events, name).get_logs(from_block=0)
        for name in ("Registered", "Updated", "Deregistered", "Withdrawn")
    }
    assert [e.args.node for e in seen["Registered"]] == [hub.node_id]
    assert seen["Updated"][0].args.grpc_endpoint == "b:2"
    assert seen["Deregistered"][0].args.node == hub.node_id
    assert seen["Withdrawn"][0].args.amount == WEI


def test_too_little_balance_names_the_address_and_the_amount(chain):
    reg = chain.registry(min_stake=5 * WEI)
    poor = chain.funded(ether=1)
    with pytest.raises(InsufficientFunds) as err:
        reg.register(poor, addrs(poor), "a:1", stake=5 * WEI)
    assert poor.node_id in str(err.value) and "send it 4.0" in str(err.value)
    assert err.value.needed - err.value.balance > 4 * WEI


def test_an_address_with_no_registry_is_a_config_error(chain):
    with pytest.raises(ConfigError, match="no contract"):
        Registry(chain.w3, chain.funded().node_id).check()
    with pytest.raises(ConfigError, match="not an Ethereum address"):
        Registry(chain.w3, "0x1234")


def test_a_contract_that_is_not_a_registry_is_a_config_error(chain):
    # Any other contract: here, one that returns 32 zero bytes to every call.
    code = bytes.fromhex("602060006000f3")  # runtime: RETURN(0, 32)
    init = bytes.fromhex("6007600c60003960076000f3") + code
    tx = chain.w3.eth.send_transaction({"from": chain.w3.eth.accounts[0], "data": init})
    other = chain.w3.eth.wait_for_transaction_receipt(tx)["contractAddress"]
    assert chain.w3.eth.get_code(other) == code
    with pytest.raises(ConfigError, match="not a sonm hub registry"):
        Registry(chain.w3, other).check()


def test_ether_amounts():
    assert parse_eth("1", "--stake") == WEI
    assert parse_eth("0.25", "--stake") == WEI // 4
    for bad in ("", "-1", "abc", "1e-30", "nan"):
        with pytest.raises(ConfigError, match="--stake"):
            parse_eth(bad, "--stake")
    assert format_eth(WEI) == "1" and format_eth(WEI // 4) == "0.25" and format_eth(0) == "0"


def test_the_artifact_matches_the_source():
    """As make check-contract: the checked-in artifact is what the source compiles to."""
    pytest.importorskip("vyper", reason="needs the dev dependencies: make venv")
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-contract.py"), "/dev/stdout"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == load_artifact(), "contract artifact drift: run 'make contract'"
