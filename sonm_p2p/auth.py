"""Signed client requests: who is calling, proven by their key (pure; time passed in).

A client signs the hub's node ID, ``method``, a timestamp, a nonce and the SHA-256 of the
request's deterministic serialization with its node key (an Ethereum personal-message
signature) and sends them as gRPC metadata: a hub cannot replay a client's request to another
hub. The hub recovers the signer's node ID from the signature, refuses stale or future
timestamps and replayed nonces, and uses the node ID as the task's owner: only the owner (or the
hub's operator, who holds the hub's key) may stop a task or read its output.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping

from sonm_p2p.errors import Busy, PermissionDenied, Unauthenticated
from sonm_p2p.identity import Identity, recover_signer

__all__ = [
    "check_peer_grant",
    "is_task_record",
    "peer_grant",
    "task_record",
    "HEADER_ID",
    "HEADER_NONCE",
    "HEADER_SIG",
    "HEADER_TS",
    "RequestVerifier",
    "check_owner",
    "sign_request",
]

HEADER_ID = "sonm-client-id"
HEADER_TS = "sonm-ts"
HEADER_NONCE = "sonm-nonce"
HEADER_SIG = "sonm-sig"


def _message(hub_id: str, method: str, ts_ms: int, nonce: str, payload: bytes) -> bytes:
    digest = hashlib.sha256(payload).hexdigest()
    return f"sonm-request/2\n{hub_id.lower()}\n{method}\n{ts_ms}\n{nonce}\n{digest}".encode()


def sign_request(
    identity: Identity,
    method: str,
    payload: bytes,
    now: float,
    nonce: str | None = None,
    *,
    hub_id: str,
) -> tuple[tuple[str, str], ...]:
    """gRPC metadata proving ``identity`` sent ``payload`` to ``method`` of hub ``hub_id`` at
    ``now``."""
    ts_ms = int(now * 1000)
    nonce = nonce or secrets.token_hex(12)
    sig = identity.sign(_message(hub_id, method, ts_ms, nonce, payload))
    return (
        (HEADER_ID, identity.node_id),
        (HEADER_TS, str(ts_ms)),
        (HEADER_NONCE, nonce),
        (HEADER_SIG, sig.hex()),
    )


def _record_message(hub_id: str, task_id: str, miner_id: str, owner: str) -> bytes:
    fields = (hub_id.lower(), task_id, miner_id.lower(), owner.lower())
    return "\n".join(("sonm-task-record/1", *fields)).encode()


def task_record(identity: Identity, task_id: str, miner_id: str, owner: str) -> str:
    """The hub's signed record of a task it created (hex): the miner keeps it with the
    container (label ``sonm.record``) and reports it back, so a hub that lost its table adopts
    only tasks it created, with the owner it recorded, never one a miner claims."""
    return identity.sign(_record_message(identity.node_id, task_id, miner_id, owner)).hex()


def is_task_record(record: str, hub_id: str, task_id: str, miner_id: str, owner: str) -> bool:
    """Whether ``record`` is ``hub_id``'s record of this task on this miner for this owner."""
    try:
        signer = recover_signer(
            _record_message(hub_id, task_id, miner_id, owner), bytes.fromhex(record)
        )
    except ValueError:
        return False
    return signer.lower() == hub_id.lower()


def _grant_message(audience: str, peer_id: str) -> bytes:
    return f"sonm-peer-grant/1\n{audience.lower()}\n{peer_id}".encode()


def peer_grant(identity: Identity, peer_id: str, audience: str) -> str:
    """``identity``'s word that transport peer ``peer_id`` acts for it towards node
    ``audience`` (a miner): ``<node ID>:<signature hex>``.

    Each ``sonmcli`` process talks on the overlay with a key of its own, made for the process:
    libp2p assumes one peer ID is one host (one connection per peer, hole-punch and relay state
    by peer ID), so two processes sharing the client's key as their peer ID broke each other's
    connections. The grant carries the client's identity instead, bound to the process's peer
    ID, which Noise authenticates: a copy is worthless to anyone without that process's key,
    so it needs no expiry (the key dies with the process).
    """
    sig = identity.sign(_grant_message(audience, peer_id))
    return f"{identity.node_id}:{sig.hex()}"


def check_peer_grant(grant: str, *, peer_id: str, audience: str) -> str:
    """The node ID that granted ``peer_id`` (the stream's authenticated peer) to act for it
    towards ``audience`` (this node). Raises Unauthenticated for a malformed grant, or one
    signed for another peer or node, or by another key than it names."""
    claimed, _, sig = grant.partition(":")
    try:
        signer = recover_signer(_grant_message(audience, peer_id), bytes.fromhex(sig))
    except ValueError:
        raise Unauthenticated("malformed peer grant") from None
    if signer.lower() != claimed.lower():
        raise Unauthenticated("the peer grant is not for this peer and node, or not signed by "
                              f"{claimed}")  # fmt: skip
    return signer


class RequestVerifier:
    """Checks signed requests; remembers nonces for twice ``max_skew`` to refuse replays.

    max_skew: seconds a request's timestamp may differ from the hub's clock; defaults to 60.
    max_nonces: nonces remembered at most; defaults to 100 000. A nonce is never forgotten while
        its request could still be accepted (else a flood of one's own requests would let a
        recorded one be replayed): when the table is full, requests are refused (Busy) until
        old ones expire. One signer may hold at most a tenth of it.
    hub_id: the node ID requests must be signed for (this hub's).
    """

    def __init__(self, *, hub_id: str, max_skew: float = 60.0, max_nonces: int = 100_000) -> None:
        self.hub_id = hub_id
        self.max_skew = max_skew
        self.max_nonces = max_nonces
        self._per_signer: dict[str, int] = {}
        self._seen: OrderedDict[str, tuple[float, str]] = OrderedDict()  # -> (at, signer)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RequestVerifier skew={self.max_skew:g}s nonces={len(self._seen)}>"

    def verify(self, method: str, payload: bytes, headers: Mapping[str, str], now: float) -> str:
        """The node ID that signed this request. Raises Unauthenticated when it is unsigned,
        badly signed, stale, from the future, or a replay."""
        try:
            claimed = headers[HEADER_ID]
            ts_ms = int(headers[HEADER_TS])
            nonce = headers[HEADER_NONCE]
            sig = bytes.fromhex(headers[HEADER_SIG])
        except (KeyError, ValueError):
            raise Unauthenticated(
                f"{method} must be signed by the caller's key (sonmcli does this)"
            ) from None
        if not 8 <= len(nonce) <= 64:
            raise Unauthenticated("bad request nonce")
        if abs(now - ts_ms / 1000) > self.max_skew:
            raise Unauthenticated(
                f"request time is {ts_ms / 1000 - now:+.0f}s off the hub's clock "
                f"(more than {self.max_skew:g}s): check the clock"
            )
        try:
            signer = recover_signer(_message(self.hub_id, method, ts_ms, nonce, payload), sig)
        except Exception:
            raise Unauthenticated("request signature is malformed") from None
        if signer.lower() != claimed.lower():
            raise Unauthenticated("request signature does not match the claimed client ID")
        key = f"{signer}:{nonce}"
        with self._lock:
            self._forget(now)
            if key in self._seen:
                raise Unauthenticated("replayed request refused")
            if len(self._seen) >= self.max_nonces:
                raise Busy("too many signed requests in the last two minutes; try again later")
            if self._per_signer.get(signer, 0) >= self.max_nonces // 10:
                raise Busy(f"too many signed requests from {signer}; try again later")
            self._seen[key] = (now, signer)
            self._per_signer[signer] = self._per_signer.get(signer, 0) + 1
        return signer

    def _forget(self, now: float) -> None:
        horizon = now - 2 * self.max_skew
        while self._seen:
            key, (seen_at, signer) = next(iter(self._seen.items()))
            if seen_at >= horizon:
                break
            del self._seen[key]
            left = self._per_signer[signer] - 1
            if left:
                self._per_signer[signer] = left
            else:
                del self._per_signer[signer]


def check_owner(caller: str, owner: str, operator: str, what: str) -> None:
    """Raise PermissionDenied unless ``caller`` owns the task or is the hub's operator."""
    if caller.lower() in (owner.lower(), operator.lower()):
        return
    raise PermissionDenied(f"only the task's owner ({owner}) may {what}")
