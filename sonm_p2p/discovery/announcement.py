"""A hub's signed announcement: what it is, how it is signed, encoded and verified.

Pure: no I/O, no clock. Time checks (expired, from the future, replayed) need ``now`` and live in
``validator.py``; here are the checks that depend only on the bytes: decodable, well-formed,
signed, signed by the claimed node, and node ID == the node ID of the announced peer ID.

The signature covers a canonical encoding of every field but the signature (see
``proto/sonm/v1/discovery.proto``), signed with :meth:`sonm_p2p.identity.Identity.sign` (an
Ethereum personal-message signature) and checked by recovering the signer's address.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from enum import StrEnum

from google.protobuf.message import DecodeError

from sonm_p2p._pb.sonm.v1 import discovery_pb2
from sonm_p2p.errors import InvalidAnnouncement
from sonm_p2p.identity import Identity, node_id_from_peer_id

__all__ = [
    "DEFAULT_TTL",
    "DropReason",
    "HubAnnouncement",
    "InvalidAnnouncement",
    "MAX_TTL",
    "TOPIC",
]

#: The gossip topic hubs announce themselves on.
TOPIC = "/sonm/hubs/1"
#: Default lifetime of an announcement, seconds (about three announcement periods).
DEFAULT_TTL = 10.0
#: Longest lifetime a receiver accepts, seconds; longer claims are malformed.
MAX_TTL = 300.0

_DOMAIN = b"sonm.v1.HubAnnouncement\n"
_MAX_FIELD = 1024  # bytes of one string field; whole messages are capped by the validator
_MAX_ADDRS = 32
_SIGNATURE_LEN = 65


class DropReason(StrEnum):
    """Why a message on the hub topic was dropped (the keys of the validator's counters)."""

    THROTTLED = "throttled"  # its source peer exceeded its rate
    OVERSIZED = "oversized"  # larger than the size limit
    UNDECODABLE = "undecodable"  # not a HubAnnouncement
    MALFORMED = "malformed"  # decodes, but a field is missing, out of range or too long
    UNSIGNED = "unsigned"  # no signature
    BAD_SIGNATURE = "bad_signature"  # not signed by the key of the node it claims to be
    PEER_MISMATCH = "peer_mismatch"  # node ID and peer ID are not the same key
    EXPIRED = "expired"  # issued_at + ttl is past
    FUTURE = "future"  # issued_at is ahead of our clock by more than the allowed skew
    REPLAYED = "replayed"  # not newer than one already accepted from the same node
    UNREGISTERED = "unregistered"  # a registry is required and this hub is not registered in it


@dataclass(frozen=True, kw_only=True)
class HubAnnouncement:
    """A hub's announcement (see ``proto/sonm/v1/discovery.proto`` for the meaning of fields).

    Build a signed one with :meth:`create`; read one off the wire with :meth:`decode` and then
    :meth:`verify` it (the validator does both). Times on the wire are integer milliseconds;
    :attr:`issued_at` and :attr:`expires_at` give unix seconds.
    """

    node_id: str
    peer_id: str
    multiaddrs: tuple[str, ...] = ()
    grpc_endpoint: str = ""
    version: str = ""
    miners_online: int = 0
    max_miners: int = 0
    issued_at_ms: int
    ttl_ms: int
    signature: bytes = b""

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        identity: Identity,
        *,
        peer_id: str,
        now: float,
        multiaddrs: tuple[str, ...] | list[str] = (),
        grpc_endpoint: str = "",
        version: str = "",
        miners_online: int = 0,
        max_miners: int = 0,
        ttl: float = DEFAULT_TTL,
    ) -> HubAnnouncement:
        """A new announcement issued at ``now`` (unix seconds), signed by ``identity``.

        ``peer_id`` must be the libp2p peer ID of the same key (a P2PNode built from ``identity``
        has it as ``node.peer_id``); :meth:`verify` refuses anything else.
        """
        unsigned = cls(
            node_id=identity.node_id,
            peer_id=peer_id,
            multiaddrs=tuple(multiaddrs),
            grpc_endpoint=grpc_endpoint,
            version=version,
            miners_online=miners_online,
            max_miners=max_miners,
            issued_at_ms=round(now * 1000),
            ttl_ms=int(ttl * 1000),
        )
        return unsigned.signed(identity)

    def signed(self, identity: Identity) -> HubAnnouncement:
        """A copy signed by ``identity``. Raises ValueError if it is not ``node_id``'s key."""
        if identity.node_id != self.node_id:
            raise ValueError(f"{identity!r} cannot sign for {self.node_id}")
        return replace(self, signature=identity.sign(self.signing_payload()))

    def signing_payload(self) -> bytes:
        """The canonical bytes the signature covers (every field but the signature)."""
        parts = [_DOMAIN, _str(self.node_id), _str(self.peer_id)]
        parts.append(struct.pack(">I", len(self.multiaddrs)))
        parts.extend(_str(a) for a in self.multiaddrs)
        parts += [_str(self.grpc_endpoint), _str(self.version)]
        parts.append(
            struct.pack(
                ">qqqq", self.miners_online, self.max_miners, self.issued_at_ms, self.ttl_ms
            )
        )
        return b"".join(parts)

    # -- wire --------------------------------------------------------------------------------

    def encode(self) -> bytes:
        """The protobuf bytes published on the topic."""
        return discovery_pb2.HubAnnouncement(
            node_id=self.node_id,
            peer_id=self.peer_id,
            multiaddrs=list(self.multiaddrs),
            grpc_endpoint=self.grpc_endpoint,
            version=self.version,
            miners_online=self.miners_online,
            max_miners=self.max_miners,
            issued_at_ms=self.issued_at_ms,
            ttl_ms=self.ttl_ms,
            signature=self.signature,
        ).SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> HubAnnouncement:
        """Parse wire bytes. Raises InvalidAnnouncement (UNDECODABLE); nothing else."""
        msg = discovery_pb2.HubAnnouncement()
        try:
            msg.ParseFromString(data)
        except (DecodeError, ValueError, TypeError) as exc:
            raise InvalidAnnouncement(DropReason.UNDECODABLE, str(exc)) from None
        return cls(
            node_id=msg.node_id,
            peer_id=msg.peer_id,
            multiaddrs=tuple(msg.multiaddrs),
            grpc_endpoint=msg.grpc_endpoint,
            version=msg.version,
            miners_online=msg.miners_online,
            max_miners=msg.max_miners,
            issued_at_ms=msg.issued_at_ms,
            ttl_ms=msg.ttl_ms,
            signature=bytes(msg.signature),
        )

    # -- checks ------------------------------------------------------------------------------

    def check_form(self) -> None:
        """Check what needs no cryptography: fields present, in range, not too long.

        Raises InvalidAnnouncement with MALFORMED or UNSIGNED.
        """
        if not (self.node_id.startswith("0x") and len(self.node_id) == 42):
            raise InvalidAnnouncement(DropReason.MALFORMED, f"node_id {self.node_id[:50]!r}")
        if not self.peer_id:
            raise InvalidAnnouncement(DropReason.MALFORMED, "no peer_id")
        if len(self.multiaddrs) > _MAX_ADDRS:
            raise InvalidAnnouncement(DropReason.MALFORMED, f"{len(self.multiaddrs)} multiaddrs")
        for text in (self.peer_id, self.grpc_endpoint, self.version, *self.multiaddrs):
            if len(text.encode()) > _MAX_FIELD:
                raise InvalidAnnouncement(DropReason.MALFORMED, "field too long")
        if self.issued_at_ms <= 0:
            raise InvalidAnnouncement(DropReason.MALFORMED, "no issued_at")
        if not 0 < self.ttl_ms <= MAX_TTL * 1000:
            raise InvalidAnnouncement(DropReason.MALFORMED, f"ttl_ms {self.ttl_ms}")
        if not self.signature:
            raise InvalidAnnouncement(DropReason.UNSIGNED)
        if len(self.signature) != _SIGNATURE_LEN:
            raise InvalidAnnouncement(
                DropReason.BAD_SIGNATURE, f"{len(self.signature)}-byte signature"
            )

    def verify(self) -> None:
        """Check form, then that ``node_id`` signed it and that ``peer_id`` is the same key.

        Raises InvalidAnnouncement (MALFORMED, UNSIGNED, BAD_SIGNATURE or PEER_MISMATCH).
        Costs about 0.7 ms (signature recovery and peer ID decoding).
        """
        self.check_form()
        signer = _recover(self.signing_payload(), self.signature)
        if signer is None or signer.lower() != self.node_id.lower():
            raise InvalidAnnouncement(DropReason.BAD_SIGNATURE, f"signed by {signer}")
        try:
            peer_node = node_id_from_peer_id(self.peer_id)
        except Exception:  # not base58, not a multihash, not a key: all the same to us
            peer_node = None
        if peer_node is None or peer_node.lower() != self.node_id.lower():
            raise InvalidAnnouncement(
                DropReason.PEER_MISMATCH, f"peer {self.peer_id[:20]} is not {self.node_id}"
            )

    # -- time --------------------------------------------------------------------------------

    @property
    def issued_at(self) -> float:
        return self.issued_at_ms / 1000

    @property
    def ttl(self) -> float:
        return self.ttl_ms / 1000

    @property
    def expires_at(self) -> float:
        """Unix seconds after which the announcement is no longer valid."""
        return (self.issued_at_ms + self.ttl_ms) / 1000

    def __repr__(self) -> str:
        return (
            f"<HubAnnouncement {self.node_id} miners={self.miners_online}"
            f" grpc={self.grpc_endpoint or '-'} issued={self.issued_at_ms}"
            f" ttl={self.ttl:g}s{'' if self.signature else ' unsigned'}>"
        )


def _str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">I", len(raw)) + raw


def _recover(payload: bytes, signature: bytes) -> str | None:
    from sonm_p2p.identity import recover_signer

    try:
        return recover_signer(payload, signature)
    except Exception:  # malformed r/s/v: the key cannot be recovered
        return None
