from __future__ import annotations

import os
import stat

import pytest

from sonm_p2p.errors import ConfigError
from sonm_p2p.identity import (
    Identity,
    load_or_create,
    node_id_from_peer_id,
    node_id_from_public_key,
)


def test_key_is_created_once_with_mode_0600(tmp_path):
    home = tmp_path / "miner"
    first = load_or_create(home)
    assert stat.S_IMODE((home / "key").stat().st_mode) == 0o600
    assert load_or_create(home) == first
    assert first.node_id.startswith("0x") and len(first.node_id) == 42


def test_key_readable_by_others_is_refused(tmp_path):
    load_or_create(tmp_path)
    os.chmod(tmp_path / "key", 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create(tmp_path)


def test_garbage_key_file_names_the_file(tmp_path):
    (tmp_path / "key").write_text("not a key")
    os.chmod(tmp_path / "key", 0o600)
    with pytest.raises(ConfigError, match=str(tmp_path / "key")):
        load_or_create(tmp_path)


def test_peer_id_and_node_id_come_from_one_key():
    from libp2p.peer.id import ID

    ident = Identity(bytes(range(1, 33)))
    peer_id = ID.from_pubkey(ident.libp2p_key_pair().public_key).to_string()
    assert node_id_from_peer_id(peer_id) == ident.node_id
    assert node_id_from_public_key(ident.public_key_compressed) == ident.node_id
    assert Identity(bytes(range(2, 34))).node_id != ident.node_id


def test_signature_recovers_to_node_id():
    from eth_account import Account
    from eth_account.messages import encode_defunct

    ident = Identity.generate()
    sig = ident.sign(b"hello")
    assert Account.recover_message(encode_defunct(b"hello"), signature=sig) == ident.node_id


def test_signatures_are_eth_account_personal_messages_both_ways():
    import random

    from eth_account import Account
    from eth_account.messages import encode_defunct

    from sonm_p2p.identity import checksum_address, recover_signer

    rng = random.Random(0)
    for _ in range(20):
        ident = Identity(rng.randbytes(32))
        msg = rng.randbytes(rng.randrange(0, 300))
        acct = Account.from_key(ident.private_key)
        assert ident.node_id == acct.address
        ours = ident.sign(msg)
        theirs = bytes(Account.sign_message(encode_defunct(msg), ident.private_key).signature)
        assert ours == theirs  # RFC 6979 deterministic nonces: byte-identical
        assert recover_signer(msg, theirs) == acct.address
    assert checksum_address(bytes.fromhex("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")) == (
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # EIP-55's own example
    )


def test_malformed_signature_is_a_value_error():
    from sonm_p2p.identity import recover_signer

    with pytest.raises(ValueError):
        recover_signer(b"x", b"\x00" * 10)


def test_processes_creating_the_key_at_once_end_with_one_key(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from sonm_p2p.identity import load_or_create

    home = tmp_path / "node"
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: load_or_create(home).node_id, range(32)))
    assert len(set(ids)) == 1
    assert sorted(p.name for p in home.iterdir()) == ["key"]  # no temp file left behind
    assert load_or_create(home).node_id == ids[0]


def test_a_world_writable_home_or_a_symlinked_key_is_refused(tmp_path):
    import os

    import pytest

    from sonm_p2p.errors import ConfigError
    from sonm_p2p.identity import load_or_create

    home = tmp_path / "open"
    home.mkdir()
    os.chmod(home, 0o777)
    with pytest.raises(ConfigError, match="writable by others.*chmod 700"):
        load_or_create(home)

    real = load_or_create(tmp_path / "real")
    linked = tmp_path / "linked"
    linked.mkdir(mode=0o700)
    (linked / "key").symlink_to(tmp_path / "real" / "key")
    with pytest.raises(ConfigError, match="symbolic link"):
        load_or_create(linked)
    assert real.node_id

    readable = tmp_path / "readable"
    readable.mkdir()
    os.chmod(readable, 0o755)
    load_or_create(readable)
    assert readable.stat().st_mode & 0o777 == 0o700
    assert (readable / "key").stat().st_mode & 0o777 == 0o600
