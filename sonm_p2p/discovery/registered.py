"""Registered hubs as discovery uses them: who may be trusted, and whom to dial to join.

Pure: no chain, no clock. :class:`RegisteredHubs` is one read of the registry (see
``sonm_p2p/chain``), each entry checked (:func:`check_entry`): an entry whose multiaddrs do not
parse, or do not end in the peer ID of the registering key, is skipped and counted; it never
reaches a dialler.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from sonm_p2p.identity import node_id_from_peer_id

__all__ = ["RegisteredHub", "RegisteredHubs", "check_entry"]


class _Entry(Protocol):  # sonm_p2p.chain.registry.RegistryEntry, without importing web3
    node_id: str
    stake: int
    multiaddrs: tuple[str, ...]
    grpc_endpoint: str


@dataclass(frozen=True)
class RegisteredHub:
    """A usable registry entry: where to dial the hub (``peer_id`` at ``multiaddrs``)."""

    node_id: str
    peer_id: str
    stake: int  # wei
    multiaddrs: tuple[str, ...]
    grpc_endpoint: str


def check_entry(entry: _Entry) -> RegisteredHub | str:
    """The entry as a :class:`RegisteredHub`, or why it cannot be used (a short reason)."""
    import multiaddr

    peer_ids = set()
    if not entry.multiaddrs:
        return "no multiaddrs"
    for text in entry.multiaddrs:
        try:
            multiaddr.Multiaddr(text)
        except Exception:
            return f"malformed multiaddr {text[:60]!r}"
        last = text.rsplit("/p2p/", 1)
        if len(last) != 2 or not last[1] or "/" in last[1].strip("/"):
            return f"multiaddr without the hub's /p2p/ peer ID: {text[:60]!r}"
        peer_ids.add(last[1].strip("/"))
    if len(peer_ids) != 1:
        return "multiaddrs name different peers"
    peer_id = peer_ids.pop()
    try:
        node = node_id_from_peer_id(peer_id)
    except Exception:
        node = None
    if node is None or node.lower() != entry.node_id.lower():
        return f"peer {peer_id[:20]}… is not the key that registered ({entry.node_id})"
    return RegisteredHub(
        entry.node_id, peer_id, int(entry.stake), tuple(entry.multiaddrs), entry.grpc_endpoint
    )


@dataclass(frozen=True)
class RegisteredHubs:
    """One read of the registry: usable hubs by node ID (lower case), and what was skipped."""

    hubs: dict[str, RegisteredHub] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # node ID -> reason

    @classmethod
    def of(cls, entries: Iterable[_Entry]) -> RegisteredHubs:
        hubs: dict[str, RegisteredHub] = {}
        skipped: dict[str, str] = {}
        for entry in entries:
            checked = check_entry(entry)
            if isinstance(checked, str):
                skipped[entry.node_id] = checked
            else:
                hubs[checked.node_id.lower()] = checked
        return cls(hubs, skipped)

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, str) and node_id.lower() in self.hubs

    def get(self, node_id: str) -> RegisteredHub | None:
        return self.hubs.get(node_id.lower())

    def stake(self, node_id: str) -> int | None:
        hub = self.hubs.get(node_id.lower())
        return None if hub is None else hub.stake

    def ids(self) -> frozenset[str]:
        """Registered node IDs, lower case."""
        return frozenset(self.hubs)

    def by_stake(self, limit: int | None = None) -> list[RegisteredHub]:
        """The hubs with the largest stake first (ties by node ID), at most ``limit``."""
        ranked = sorted(self.hubs.values(), key=lambda h: (-h.stake, h.node_id.lower()))
        return ranked if limit is None else ranked[:limit]

    def __len__(self) -> int:
        return len(self.hubs)
