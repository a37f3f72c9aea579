"""The hub registry on a real chain (anvil) with real hubs, miners and sonmcli processes.

A hub registers from its own key with a stake; a miner given nothing but the chain and the
registry finds it and joins; an unregistered hub on the same overlay is never used and its
announcements are dropped; a hub that deregisters is left within one poll; bad chain input
gives one line and the right exit code, and never stops a daemon.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from sonm_p2p.chain import WEI
from sonm_p2p.chain.devchain import LocalChain, anvil_path
from sonm_p2p.identity import Identity, load_or_create
from tests.harness import free_port, sonmcli, wait_for

pytestmark = pytest.mark.skipif(
    anvil_path() is None, reason="needs anvil: run 'make anvil' (npm @foundry-rs/anvil)"
)

POLL = "1s"


@pytest.fixture
def chain():
    with LocalChain.start() as c:
        yield c


@pytest.fixture
def mdns_ns(net):
    ns = "t" + uuid.uuid4().hex[:8]  # this test's own mDNS namespace: no other test's hubs
    net.env["SONM_MDNS_NAMESPACE"] = ns
    return ns


def registry_of(chain: LocalChain, address: str):
    from sonm_p2p.chain.registry import Registry

    return Registry.open(chain.url, address)


def funded_home(net, chain: LocalChain, name: str, ether: int = 10):
    """A node home whose key holds ``ether`` on the chain."""
    home = net.root / name
    ident = load_or_create(home)
    chain.fund(ident.node_id, ether * WEI)
    return home, ident


def test_a_miner_with_only_a_registry_joins_a_registered_hub_and_never_an_unregistered_one(
    net, chain, mdns_ns
):
    address = chain.deploy_registry(min_stake=WEI, unlock_delay=3600)
    reg = registry_of(chain, address)
    flags = ["--chain", chain.url, "--registry", address]
    _, staked_id = funded_home(net, chain, "staked")
    staked = net.hub("staked", extra=[*flags, "--stake", "2", "--registry-poll", POLL, "--no-mdns"])
    wait_for(lambda: reg.is_registered(staked_id.node_id), "the hub to register", timeout=60)
    assert reg.stake_of(staked_id.node_id) == 2 * WEI
    entry = reg.entry(staked_id.node_id)
    assert entry.grpc_endpoint == staked.grpc_target
    assert any(str(staked.p2p_port) in a for a in entry.multiaddrs)

    # An unregistered hub on the same overlay (it bootstraps from the staked one), announcing.
    stranger = net.hub("stranger", extra=["--no-mdns", "--bootstrap", staked.p2p_target])
    stranger_id = stranger.cli_json("info")["node_id"]
    wait_for(
        lambda: stranger_id in {h["node_id"] for h in stranger.cli_json("hubs")["hubs"]},
        "the stranger to announce itself",
    )

    # The miner: the chain and the registry, nothing else (mDNS finds no hub in this namespace).
    miner = net.miner("", "m", runtime="memory", extra=[*flags, "--registry-poll", POLL])
    wait_for(lambda: miner.node_id in staked.online(), "the miner to join the staked hub", 60)
    assert miner.node_id not in stranger.online()
    assert "registry" in miner.proc.output()

    client = net.root / "client"
    # sonmcli with the registry uses the registered hub; hubs shows registered and stake.
    res = sonmcli(*flags, "--json", "list", home=client)
    assert res.returncode == 0, res.stderr
    assert f"using hub {staked_id.node_id}" in res.stderr
    assert miner.node_id in res.stdout
    # (hubs that require registration do not forward the stranger's announcements: hear it
    # from the stranger itself)
    res = sonmcli(*flags, "--bootstrap", stranger.p2p_target, "--json", "hubs", home=client)
    assert res.returncode == 0, res.stderr
    rows = {h["node_id"]: h for h in json.loads(res.stdout)["hubs"]}
    assert rows[staked_id.node_id]["registered"] and rows[staked_id.node_id]["stake"] == "2"
    assert rows[stranger_id]["registered"] is False
    # ... and refuses the unregistered one unless it is named in full.
    near = [*flags, "--bootstrap", stranger.p2p_target]
    res = sonmcli(*near, "--hub", stranger_id[:10], "--timeout", "6s", "ping", home=client)
    assert res.returncode == 4, res.stderr
    res = sonmcli(*near, "--hub", stranger_id, "ping", home=client)
    assert res.returncode == 0, res.stderr

    # chain hubs: stake, endpoints, announcing.
    res = sonmcli(*flags, "--json", "chain", "hubs", home=client)
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert [h["node_id"] for h in listed["hubs"]] == [staked_id.node_id]
    assert listed["hubs"][0]["announcing"] is True and listed["hubs"][0]["stake"] == "2"

    # The hub deregisters (sonmhub --deregister, its key): the miner leaves it within a poll,
    # and the running hub does not register itself again.
    res = _run_hub_cli(net, "staked", *flags, "--deregister")
    assert res.returncode == 0 and "deregistered" in res.stdout, res.stderr
    wait_for(lambda: miner.node_id not in staked.online(), "the miner to leave the hub", 30)
    time.sleep(2.5)  # two registry polls of the hub: it must not re-register
    assert not reg.is_registered(staked_id.node_id)
    assert "stays out of the registry" in staked.proc.output()
    assert miner.node_id not in stranger.online()
    assert miner.proc.alive()


def test_an_unfunded_hub_serves_says_what_to_send_and_registers_once_funded(net, chain, mdns_ns):
    address = chain.deploy_registry(min_stake=WEI)
    reg = registry_of(chain, address)
    flags = ["--chain", chain.url, "--registry", address]
    hub = net.hub("poor", extra=[*flags, "--stake", "1", "--registry-poll", POLL, "--no-mdns"])
    node_id = hub.cli_json("info")["node_id"]
    line = wait_for(
        lambda: re.search(r".*is not registered.*send it.*", hub.proc.output()),
        "the line asking for funds",
    ).group(0)
    assert node_id in line and "ETH" in line
    assert hub.cli("ping").returncode == 0  # serving all along
    chain.fund(node_id, 5 * WEI)
    wait_for(lambda: reg.is_registered(node_id), "the hub to register once funded", 30)
    assert hub.proc.output().count("send it") == 1  # one line, not one per retry


def test_bad_chain_input(net, chain, mdns_ns):
    client = net.root / "client"
    dead = f"http://127.0.0.1:{free_port()}"
    address = chain.deploy_registry()
    somebody = Identity.generate().node_id

    # sonmcli chain: unreachable exits 4, no contract / not a registry exits 2, one line each.
    for args, code, words in [
        (["--chain", dead, "--registry", address, "chain", "hubs"], 4, "unreachable"),
        (["--chain", dead, "chain", "deploy"], 4, "unreachable"),
        (["--chain", chain.url, "--registry", somebody, "chain", "hubs"], 2, "no contract"),
        (["--chain", chain.url, "--registry", "0x12", "chain", "hubs"], 2, "contract address"),
        (["--chain", "ftp://x", "--registry", address, "chain", "hubs"], 2, "http"),
    ]:
        res = sonmcli(*args, home=client)
        assert res.returncode == code, (args, res.stderr)
        assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr

    # A contract that is not a registry (here: a registry's own address shifted to a
    # contract of another kind is hard to come by, so deploy a trivial one).
    from sonm_p2p.chain.registry import connect

    w3 = connect(chain.url)
    deployer = Identity.generate()
    chain.fund(deployer.node_id)
    tx = {
        "from": deployer.node_id,
        "data": "0x6007600c60003960076000f3602060006000f3",
        "nonce": 0,
        "gas": 100_000,
        "gasPrice": w3.eth.gas_price,
        "chainId": w3.eth.chain_id,
    }
    signed = w3.eth.account.sign_transaction(tx, deployer.private_key)
    other = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction)
    )["contractAddress"]
    res = sonmcli("--chain", chain.url, "--registry", other, "chain", "hubs", home=client)
    assert res.returncode == 2 and "not a sonm hub registry" in res.stderr, res.stderr

    # Reverted transactions name the reason.
    flags = ["--chain", chain.url, "--registry", address]
    res = sonmcli(*flags, "chain", "withdraw", home=client)
    assert res.returncode == 6 and "deregister first" not in res.stderr, res.stderr
    assert "no stake" in res.stderr
    home, ident = funded_home(net, chain, "h")
    reg = registry_of(chain, address)
    reg.register(ident, [f"/ip4/127.0.0.1/tcp/1/p2p/{_peer(ident)}"], "127.0.0.1:1", stake=WEI)
    res = sonmcli(*flags, "chain", "deregister", "--key-home", str(home), home=client)
    assert res.returncode == 0, res.stderr
    res = sonmcli(*flags, "chain", "withdraw", "--key-home", str(home), home=client)
    assert res.returncode == 6 and "stake still locked" in res.stderr, res.stderr
    chain.increase_time(3601)
    res = sonmcli(*flags, "chain", "withdraw", "--key-home", str(home), home=client)
    assert res.returncode == 0 and "withdrew 1 ETH" in res.stdout, res.stderr

    # A malformed entry is skipped and counted; the miner keeps going.
    bad = Identity.generate()
    chain.fund(bad.node_id, 5 * WEI)
    reg.register(bad, ["not a multiaddr"], "x", stake=WEI)
    miner = net.miner("", "m", runtime="memory", extra=[*flags, "--registry-poll", POLL])
    wait_for(lambda: f"registry entry of {bad.node_id} skipped" in miner.proc.output(), "skip")
    res = sonmcli(*flags, "chain", "hubs", "--wait", "0", home=client)
    assert res.returncode == 0 and f"skipped {bad.node_id}" in res.stderr, res.stderr

    # A daemon whose chain does not answer keeps running, logs once, retries.
    m2 = net.miner("", "m2", runtime="memory", extra=["--chain", dead, "--registry", address,
                                                      "--registry-poll", POLL])  # fmt: skip
    wait_for(lambda: "unreachable" in m2.proc.output(), "the unreachable line")
    time.sleep(3)  # several retries
    assert m2.proc.alive()
    assert m2.proc.output().count("unreachable") <= 2  # the start check, then the loop once

    # A daemon given an address with no registry exits 2 with one line.
    proc = net.spawn("nohub", [str(_bin("sonmhub")), "--home", str(net.root / "nohub"),
                               "--chain", chain.url, "--registry", somebody, "--no-mdns",
                               "--grpc-listen", f"127.0.0.1:{free_port()}",
                               "--p2p-listen", f"/ip4/127.0.0.1/tcp/{free_port()}",
                               "--stun-listen", ""])  # fmt: skip
    assert proc.popen.wait(timeout=60) == 2
    assert "no contract" in proc.output()


def _bin(name: str):
    from tests.harness import BIN

    return BIN / name


def _run_hub_cli(net, home_name: str, *args: str):
    import subprocess

    return subprocess.run(
        [str(_bin("sonmhub")), "--home", str(net.root / home_name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _peer(ident: Identity) -> str:
    from libp2p.peer.id import ID

    return ID.from_pubkey(ident.libp2p_key_pair().public_key).to_base58()
