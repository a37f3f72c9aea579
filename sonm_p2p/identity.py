"""Node identity: one secp256k1 key per node, its Ethereum address as node ID.

The same key is the node's libp2p key, so its peer ID (which embeds the public key) proves the node
ID too: :func:`node_id_from_peer_id` recovers a peer's node ID from a Noise-authenticated peer ID.

Signatures are Ethereum personal messages (EIP-191, 65 bytes r‖s‖v), exactly what eth-account's
``sign_message``/``recover_message`` produce and accept (tests/unit/test_identity.py checks it
against eth-account). They are computed with coincurve (libsecp256k1, which py-libp2p uses too)
and safe-pysha3's keccak (eth-hash's own fast backend), because importing eth-account costs
~1.1 s (it pulls in BLS pairing code) and every ``sonmcli`` call would pay it. The keccak is
not eth-hash's: ``eth_hash.auto`` reads package metadata on import and its default pycryptodome
backend loads cffi and pycparser on first use, ~100 ms of every signed ``sonmcli`` call; the
C extension loads in ~4 ms.
"""

from __future__ import annotations

import functools
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import coincurve
from sha3 import keccak_256

from sonm_p2p.errors import ConfigError


def keccak(data: bytes) -> bytes:
    """Ethereum's keccak-256 (not NIST SHA3-256)."""
    return keccak_256(data).digest()


__all__ = [
    "Identity",
    "checksum_address",
    "load_or_create",
    "node_id_from_peer_id",
    "node_id_from_public_key",
    "recover_signer",
]

KEY_FILE = "key"


@dataclass(frozen=True)
class Identity:
    """A node's private key and the names derived from it."""

    private_key: bytes  # 32 bytes

    @functools.cached_property
    def node_id(self) -> str:
        """The Ethereum (EIP-55 checksummed) address of the key: ``0x…`` (computed once)."""
        return node_id_from_public_key(self.public_key_compressed)

    @property
    def public_key_compressed(self) -> bytes:
        return coincurve.PrivateKey(self.private_key).public_key.format(compressed=True)

    def libp2p_key_pair(self):  # noqa: ANN201 - libp2p types are imported lazily (import cost)
        """The libp2p ``KeyPair`` for this key (imports libp2p)."""
        from libp2p.crypto.keys import KeyPair
        from libp2p.crypto.secp256k1 import Secp256k1PrivateKey

        priv = Secp256k1PrivateKey.from_bytes(self.private_key)
        return KeyPair(priv, priv.get_public_key())

    def sign(self, message: bytes) -> bytes:
        """An Ethereum personal-message signature (65 bytes) over ``message``."""
        sig = coincurve.PrivateKey(self.private_key).sign_recoverable(
            _personal_hash(message), hasher=None
        )
        return sig[:64] + bytes([sig[64] + 27])

    def __repr__(self) -> str:
        return f"<Identity {self.node_id}>"

    @classmethod
    def generate(cls) -> Identity:
        return cls(secrets.token_bytes(32))


def load_or_create(home: Path) -> Identity:
    """Load ``home/key`` or create it (mode 0600, home created 0700) on first run.

    Raises ConfigError when the file exists but is not a key, is readable by others or is a
    symbolic link, or when ``home`` is writable by others (anyone could have put a key there).
    An existing home readable by others is made 0700.
    """
    path = home / KEY_FILE
    check_home(home)
    if path.is_symlink():
        raise ConfigError(f"{path}: the key is a symbolic link; keep the key itself in the home")
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
    # Written whole under another name, then linked into place: a reader (or a crash) never
    # sees a half-written key, and of two processes creating it at once both end with one key.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(ident.private_key.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_or_create(home)
    finally:
        tmp.unlink(missing_ok=True)
    return ident


def check_home(home: Path) -> None:
    """Refuse a home others can write to; make one others can read 0700 (it holds the key,
    and a daemon's state and logs). A home that does not exist yet is fine."""
    try:
        st = home.stat()
    except FileNotFoundError:
        return
    mode = st.st_mode & 0o777
    if mode & 0o022:
        raise ConfigError(
            f"{home}: writable by others (mode {mode:o}); chmod 700 it, or choose another home"
        )
    if mode & 0o077 and st.st_uid == os.getuid():
        os.chmod(home, 0o700)


def checksum_address(address20: bytes) -> str:
    """The EIP-55 mixed-case ``0x…`` form of a 20-byte address."""
    hexaddr = address20.hex()
    digest = keccak(hexaddr.encode()).hex()
    return "0x" + "".join(
        c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(hexaddr)
    )


def node_id_from_public_key(public_key: bytes) -> str:
    """Node ID (checksummed address) of a compressed or uncompressed secp256k1 public key."""
    if len(public_key) == 64:
        public_key = b"\x04" + public_key
    try:
        raw = coincurve.PublicKey(public_key).format(compressed=False)
    except ValueError as exc:
        raise ValueError(f"not a secp256k1 public key: {exc}") from None
    return checksum_address(keccak(raw[1:])[-20:])


def _personal_hash(message: bytes) -> bytes:
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


def recover_signer(message: bytes, signature: bytes) -> str:
    """The node ID whose key made ``signature`` (EIP-191) over ``message``.

    Raises ValueError for a malformed signature.
    """
    if len(signature) != 65 or signature[64] not in (0, 1, 27, 28):
        raise ValueError("a signature is 65 bytes r‖s‖v")
    v = signature[64] - 27 if signature[64] >= 27 else signature[64]
    try:
        pub = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v]), _personal_hash(message), hasher=None
        )
    except Exception as exc:
        raise ValueError(f"bad signature: {exc}") from None
    return node_id_from_public_key(pub.format(compressed=False))


@functools.lru_cache(maxsize=4096)
def node_id_from_peer_id(peer_id: str) -> str | None:
    """Node ID of a libp2p peer ID that embeds a secp256k1 key; None for other key types.

    Remembered for the last 4,096 peer IDs (each announcement checked costs one)."""
    from libp2p.peer.id import ID

    pid = ID.from_base58(peer_id)
    try:
        pub = pid.extract_public_key()
    except Exception:
        return None
    if pub is None or pub.get_type().name != "Secp256k1":
        return None
    return node_id_from_public_key(pub.to_bytes())
