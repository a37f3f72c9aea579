"""``sonmcli forward`` as a library call: check this machine's NAT, reach the task's miner by the
dial ladder, open a local listener per port (:class:`TaskForwarder`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sonm_p2p.auth import peer_grant
from sonm_p2p.errors import MinerUnavailable
from sonm_p2p.identity import Identity
from sonm_p2p.transport._paths import Path
from sonm_p2p.transport.dial_ladder import PathKind, UpgradeState
from sonm_p2p.transport.forward._endpoints import Forward, open_forward
from sonm_p2p.transport.nat import NatProbe
from sonm_p2p.transport.node import NodeOptions, P2PNode

__all__ = ["PortSpec", "TaskForward", "TaskForwarder"]


@dataclass(frozen=True)
class TaskForward:
    """An open forward to a task's port and how it was reached.

    nat_type / nat_error: this machine's NAT as STUN saw it ("unknown" and why when it failed).
    miner_nat_type: the miner's, as its hub lists it ("unknown" when not known).
    punch_skipped: the path is relayed and no hole punch was tried: not DCUtR (a symmetric NAT),
        nor a birthday punch (turned off, both NATs symmetric, or both answering stray SYNs
        with a RST).
    peer: the forwarding process's own peer ID (see :class:`TaskForwarder`).
    """

    forward: Forward
    task_id: str
    port: int
    proto: str
    miner_id: str
    path: Path
    nat_type: str
    nat_error: str | None
    miner_nat_type: str
    punch_skipped: bool
    peer: str = ""  # this process's own peer ID on the overlay (not the client's key)

    def as_dict(self) -> dict[str, Any]:
        host, lport = self.forward.local_addr
        return {
            "local": f"{host}:{lport}", "task": self.task_id, "port": f"{self.port}/{self.proto}",
            "miner": self.miner_id, "path": str(self.path.kind), "remote": self.path.remote,
            "rtt_ms": None if self.path.rtt is None else round(self.path.rtt * 1000, 3),
            "nat_type": self.nat_type, "nat_error": self.nat_error,
            "miner_nat_type": self.miner_nat_type, "punch_skipped": self.punch_skipped,
            "peer": self.peer,
        }  # fmt: skip


@dataclass(frozen=True)
class PortSpec:
    """One port of a task to forward: ``port``/``proto`` there, ``local`` (host, port) here."""

    port: int
    proto: str = "tcp"
    local: tuple[str, int] = ("127.0.0.1", 0)


class TaskForwarder:
    """Forwards local ports to a task's published ports on its miner, through the overlay.

    Created first, it starts classifying this machine's NAT against the hub's STUN responders
    (``stun_endpoints()``, e.g. the hub's Info RPC; at most ~3 s) while the caller goes on
    looking the task up; :meth:`release` waits until ``stun_endpoints`` is done (the caller's
    client may then close). :meth:`open` then starts a node, reaches the miner (behind a
    symmetric NAT here or there: no hopeless DCUtR punch, but a birthday punch when the other
    side is endpoint-independent, unless ``birthday_punch`` is off) and opens a listener per
    port, all over one connection. :meth:`close` ends the forwards and the node (idempotent).

    The node's peer ID is its own, made for this forwarder, not the client's key: libp2p keeps
    one connection, one hole punch and one relay circuit set per peer ID, so two processes with
    one peer ID (two ``sonmcli forward`` of one client home) would take each other's. The
    client's key signs a grant for that peer ID (``auth.peer_grant``), sent with each request:
    the miner serves the task's owner, whoever's process asks.
    """

    def __init__(
        self,
        stun_endpoints: Callable[[], Sequence[str]],
        *,
        listen: Sequence[str],
        birthday_punch: bool = True,
    ) -> None:
        self._nat = NatProbe(stun_endpoints)
        self._listen = tuple(listen)
        self._birthday_punch = birthday_punch
        self._node: P2PNode | None = None
        self._forwards: list[Forward] = []

    def release(self) -> None:
        self._nat.release()

    def open(
        self,
        identity: Identity,
        *,
        peer_id: str,
        multiaddrs: Sequence[str],
        miner_id: str,
        miner_nat_type: str,
        task_id: str,
        ports: Sequence[PortSpec],
    ) -> list[TaskForward]:
        """One forward per port of ``ports``, in order, for the client ``identity``. Raises
        MinerUnavailable when the miner's connection is lost at once, and what
        ``P2PNode.connect_peer`` and ``open_forward`` raise (DialError, TaskNotFound...); the
        forwards opened before a failure are closed by :meth:`close`."""
        node = self._node = P2PNode(
            Identity.generate(),
            NodeOptions(listen=self._listen, birthday_punch=self._birthday_punch),
        )
        node.start()
        stun = self._nat.report()
        nat_type = str(stun.get("nat_type") or "unknown")
        if not stun.get("error"):
            node.nat_type = nat_type  # a symmetric NAT: no hole punch, relayed at once
        miner_nat = miner_nat_type if miner_nat_type not in ("", "unknown") else None
        connected = node.connect_peer(peer_id, list(multiaddrs), remote_nat=miner_nat)
        paths = node.core.paths
        punch_skipped = (
            connected.kind is PathKind.RELAYED
            and node.options.upgrade.next_attempt(
                UpgradeState(), path=PathKind.RELAYED, local_nat=node.nat_type, remote_nat=miner_nat
            )
            is None
            and not _birthday_swept(paths, peer_id)
        )
        path = node.path(peer_id)  # the path new streams take, its RTT measured by a ping
        if path is None:
            raise MinerUnavailable(f"lost the connection to miner {miner_id}")
        grant = peer_grant(identity, node.peer_id, miner_id)
        out = []
        for spec in ports:
            fwd = open_forward(
                node, peer_id, task_id, spec.port, spec.proto, spec.local, grant=grant
            )
            self._forwards.append(fwd)
            out.append(
                TaskForward(
                    forward=fwd,
                    task_id=task_id,
                    port=spec.port,
                    proto=spec.proto,
                    miner_id=miner_id,
                    path=path,
                    nat_type=nat_type,
                    nat_error=stun.get("error"),
                    miner_nat_type=miner_nat_type or "unknown",
                    punch_skipped=punch_skipped,
                    peer=node.peer_id,
                )
            )
        return out

    def close(self) -> None:
        for fwd in self._forwards:
            fwd.close()
        if self._node is not None:
            self._node.close()

    def __repr__(self) -> str:
        return f"<TaskForwarder {self._forwards!r}>"


def _birthday_swept(paths: Any, peer_id: str) -> bool:
    """Whether a birthday punch towards ``peer_id`` sent its SYNs (it may have failed)."""
    punch = getattr(paths, "birthday", None)
    outcome = punch.results.get(peer_id) if punch is not None else None
    return bool(outcome is not None and outcome.tried)
