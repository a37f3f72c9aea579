"""Node identity: one secp256k1 key per node, its Ethereum address as node ID.

The same key is the node's libp2p key, so its peer ID (which embeds the public key) proves the node
ID too: :func:`node_id_from_peer_id` recovers a peer's node ID from a Noise-authenticated peer ID.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_keys import keys as eth_keys

from sonm_p2p.errors import ConfigError

__all__ = ["Identity", "load_or_create", "node_id_from_public_key", "node_id_from_peer_id"]

KEY_FILE = "key"


@dataclass(frozen=True)
class Identity:
    """A node's private key and the names derived from it."""

    private_key: bytes  # 32 bytes

    @property
    def node_id(self) -> str:
        """The Ethereum (EIP-55 checksummed) address of the key: ``0x…``."""
        return Account.from_key(self.private_key).address

    @property
    def public_key_compressed(self) -> bytes:
        return eth_keys.PrivateKey(self.private_key).public_key.to_compressed_bytes()

    def libp2p_key_pair(self):  # noqa: ANN201 - libp2p types are imported lazily (import cost)
        """The libp2p ``KeyPair`` for this key (imports libp2p)."""
        from libp2p.crypto.keys import KeyPair
        from libp2p.crypto.secp256k1 import Secp256k1PrivateKey

        priv = Secp256k1PrivateKey.from_bytes(self.private_key)
        return KeyPair(priv, priv.get_public_key())

    def sign(self, message: bytes) -> bytes:
        """An Ethereum personal-message signature (65 bytes) over ``message``."""
        from eth_account.messages import encode_defunct

        return bytes(Account.sign_message(encode_defunct(message), self.private_key).signature)

    def __repr__(self) -> str:
        return f"<Identity {self.node_id}>"

    @classmethod
    def generate(cls) -> Identity:
        return cls(secrets.token_bytes(32))


def load_or_create(home: Path) -> Identity:
    """Load ``home/key`` or create it (mode 0600, home created 0700) on first run.

    Raises ConfigError when the file exists but is not a key, or is readable by others.
    """
    path = home / KEY_FILE
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"{path}: key file is readable by others (mode {mode:o}); chmod 600")
        text = path.read_text().strip()
        try:
            raw = bytes.fromhex(text.removeprefix("0x"))
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ConfigError(f"{path}: not a secp256k1 private key (64 hex digits expected)")
        return Identity(raw)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    ident = Identity.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(ident.private_key.hex() + "\n")
    return ident


def node_id_from_public_key(public_key: bytes) -> str:
    """Node ID (checksummed address) of a compressed or uncompressed secp256k1 public key."""
    if len(public_key) == 33:
        pk = eth_keys.PublicKey.from_compressed_bytes(public_key)
    elif len(public_key) == 65:
        pk = eth_keys.PublicKey(public_key[1:])
    else:
        pk = eth_keys.PublicKey(public_key)
    return pk.to_checksum_address()


def node_id_from_peer_id(peer_id: str) -> str | None:
    """Node ID of a libp2p peer ID that embeds a secp256k1 key; None for other key types."""
    from libp2p.peer.id import ID

    pid = ID.from_base58(peer_id)
    try:
        pub = pid.extract_public_key()
    except Exception:
        return None
    if pub is None or pub.get_type().name != "Secp256k1":
        return None
    return node_id_from_public_key(pub.to_bytes())
