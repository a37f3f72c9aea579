"""Hub discovery: signed hub announcements gossiped on ``/sonm/hubs/1``, a TTL directory of them,
bootstrap peers and mDNS on the LAN.

Pure cores (no I/O, no clock): :mod:`.announcement`, :mod:`.validator`, :mod:`.directory`.
I/O: :mod:`.gossip` (GossipSub on a P2PNode) and :mod:`.mdns` (zeroconf).
"""

from sonm_p2p.discovery.announcement import (
    DEFAULT_TTL,
    MAX_TTL,
    TOPIC,
    DropReason,
    HubAnnouncement,
    InvalidAnnouncement,
)
from sonm_p2p.discovery.directory import HubDirectory, HubEntry
from sonm_p2p.discovery.gossip import GossipOptions, HubGossip, expand_addrs, hub_announcer
from sonm_p2p.discovery.mdns import DEFAULT_NAMESPACE, LanDiscovery, LanPeer, service_type
from sonm_p2p.discovery.validator import (
    AnnouncementValidator,
    TokenBuckets,
    ValidatorOptions,
    Verdict,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_TTL",
    "MAX_TTL",
    "TOPIC",
    "AnnouncementValidator",
    "DropReason",
    "GossipOptions",
    "HubAnnouncement",
    "HubDirectory",
    "HubEntry",
    "HubGossip",
    "InvalidAnnouncement",
    "LanDiscovery",
    "LanPeer",
    "TokenBuckets",
    "ValidatorOptions",
    "Verdict",
    "expand_addrs",
    "hub_announcer",
    "service_type",
]
