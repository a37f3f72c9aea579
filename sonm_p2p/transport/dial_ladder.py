"""The dial ladder: in which order to try a peer's addresses, and when to hole-punch. Pure policy.

No sockets, no clock (time comes in as ``now``): ``node.py`` executes what this module decides.

Order of attempts for a peer (:func:`plan`):

1. direct, public IPv6 addresses;
2. direct, public IPv4 addresses;
3. direct, addresses that are only reachable on a shared network: private IPv6 (ULA) in one of
   our own /48s, private IPv4 (RFC 1918, CGNAT) in one of our own /16s, loopback when we have a
   loopback address ourselves (tests, one machine) - each with a short timeout, since a wrong
   guess (two homes both on 192.168.1.0/24) costs a timeout, not an error;
4. relayed, through a relay the peer has reserved on (``…/p2p/<relay>/p2p-circuit/p2p/<peer>``),
   relays we are already connected to first.

"Public" means any unicast address that is not private, loopback, link-local or unspecified. The
documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) count as
public: the network-namespace tests use them as their internet.

A relayed path is upgraded by a DCUtR hole punch (:class:`UpgradePolicy`): at once, then after a
doubling back-off, a bounded number of times; never when either side is known to sit behind a
symmetric NAT (a hole punch between port-preserving mappings cannot line up with a random one).
Then, before settling on the relay, a birthday-paradox punch when one side is endpoint-independent
and the other symmetric (``birthday.py``: its own policy; ``_paths.py`` runs it).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sonm_p2p.transport.addrs import split_circuit

__all__ = [
    "Attempt",
    "AttemptKind",
    "LadderOptions",
    "PathKind",
    "Scope",
    "UpgradePolicy",
    "UpgradeState",
    "classify",
    "plan",
]


class PathKind(enum.StrEnum):
    """How a connection to a peer runs."""

    DIRECT = "direct"  #: a TCP connection one side dialled to the other's address
    RELAYED = "relayed"  #: a circuit through a relay
    HOLE_PUNCHED = "hole-punched"  #: a direct TCP connection made by a DCUtR upgrade


class AttemptKind(enum.StrEnum):
    DIRECT = "direct"
    RELAY = "relay"


class Scope(enum.IntEnum):
    """Where an address is reachable from, best first."""

    PUBLIC = 0
    SITE = 1  #: private (RFC 1918, CGNAT, ULA): only from the same network
    LOOPBACK = 2  #: only from the same machine
    UNUSABLE = 3  #: unspecified, link-local, multicast, or not an IP address


@dataclass(frozen=True, kw_only=True)
class LadderOptions:
    """Knobs of :func:`plan`.

    direct_timeout: seconds for one direct attempt to a public address; defaults to 5.
    local_timeout: seconds for one attempt to a site or loopback address; defaults to 1.
    relay_timeout: seconds for one relayed attempt (connecting to the relay included);
        defaults to 10.
    v4_site_prefix / v6_site_prefix: how much of a private address must match one of ours for
        it to count as "our network"; default /16 and /48.
    """

    direct_timeout: float = 5.0
    local_timeout: float = 1.0
    relay_timeout: float = 10.0
    v4_site_prefix: int = 16
    v6_site_prefix: int = 48


@dataclass(frozen=True)
class Attempt:
    """One rung of the ladder.

    addr: what to dial: the transport multiaddr (``/ip4/…/tcp/…``, no ``/p2p``) of a direct
        attempt; the relay's multiaddr (may be empty when only its ID is known) of a relay one.
    relay_id: peer ID of the relay (relay attempts only).
    """

    kind: AttemptKind
    addr: str
    timeout: float
    relay_id: str | None = None
    scope: Scope = Scope.PUBLIC

    def __str__(self) -> str:
        if self.kind is AttemptKind.RELAY:
            return f"relay {self.relay_id} {self.addr}".rstrip()
        return f"direct {self.addr}"


_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_RFC1918 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
_ULA = ipaddress.ip_network("fc00::/7")


def _ip_of(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    parts = addr.split("/")
    if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
        return None
    try:
        return ipaddress.ip_address(parts[2].split("%")[0])
    except ValueError:
        return None


def classify(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Scope:
    """The :class:`Scope` of an IP address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_link_local or ip.is_multicast:
        return Scope.UNUSABLE
    if ip.is_loopback:
        return Scope.LOOPBACK
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _CGNAT or any(ip in n for n in _RFC1918):
            return Scope.SITE
        return Scope.PUBLIC
    return Scope.SITE if ip in _ULA else Scope.PUBLIC


def _same_site(
    ip: ipaddress._BaseAddress, ours: Iterable[ipaddress._BaseAddress], o: LadderOptions
) -> bool:
    prefix = o.v4_site_prefix if ip.version == 4 else o.v6_site_prefix
    net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    return any(own.version == ip.version and own in net for own in ours)


def _strip_peer(addr: str, peer_id: str) -> str | None:
    """The transport part of a direct address; None when it names another peer."""
    base, sep, tail = addr.partition("/p2p/")
    if sep and tail.strip("/") != peer_id:
        return None
    return base.rstrip("/")


def plan(
    peer_id: str,
    addrs: Sequence[str],
    *,
    local_ips: Sequence[str] = (),
    connected_relays: Sequence[str] = (),
    options: LadderOptions | None = None,
) -> list[Attempt]:
    """The attempts to make, in order, to reach ``peer_id`` at ``addrs``.

    local_ips: this node's own interface addresses (decides which site and loopback addresses
        are worth a try).
    connected_relays: peer IDs of relays this node is connected to (tried first).
    Addresses of other peers, unusable ones and duplicates are dropped.
    """
    o = options or LadderOptions()
    ours = [ip for ip in (_safe_ip(a) for a in local_ips) if ip is not None]
    have_loopback = any(ip.is_loopback for ip in ours)
    direct: list[tuple[tuple[int, int, int], Attempt]] = []
    relayed: list[tuple[tuple[int, int, int], Attempt]] = []
    seen: set[tuple[str, str | None]] = set()
    for index, addr in enumerate(addrs):
        circuit = split_circuit(addr)
        if circuit is not None:
            relay_addr, relay_id, target = circuit
            if target != peer_id or relay_id == peer_id or (relay_addr, relay_id) in seen:
                continue
            seen.add((relay_addr, relay_id))
            ip = _ip_of(relay_addr)
            scope = classify(ip) if ip is not None else Scope.PUBLIC
            if scope is Scope.UNUSABLE:
                continue
            rank = (0 if relay_id in connected_relays else 1, int(scope), index)
            relayed.append(
                (rank, Attempt(AttemptKind.RELAY, relay_addr, o.relay_timeout, relay_id, scope))
            )
            continue
        base = _strip_peer(addr, peer_id)
        ip = _ip_of(base) if base else None
        if base is None or ip is None or "/tcp/" not in base or (base, None) in seen:
            continue
        seen.add((base, None))
        scope = classify(ip)
        if scope is Scope.UNUSABLE:
            continue
        if scope is Scope.SITE and not _same_site(ip, ours, o):
            continue
        if scope is Scope.LOOPBACK and not have_loopback:
            continue
        timeout = o.direct_timeout if scope is Scope.PUBLIC else o.local_timeout
        family = 0 if ip.version == 6 else 1
        direct.append(
            ((int(scope), family, index), Attempt(AttemptKind.DIRECT, base, timeout, None, scope))
        )
    direct.sort(key=lambda item: item[0])
    relayed.sort(key=lambda item: item[0])
    return [a for _, a in direct] + [a for _, a in relayed]


def _safe_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


#: NAT types (``stun.NatType`` values) a hole punch cannot get through: a fresh random port per
#: destination never matches the port the peer was told.
_NO_PUNCH = frozenset({"symmetric"})


@dataclass
class UpgradeState:
    """What :class:`UpgradePolicy` remembers about upgrading one peer's relayed path."""

    attempts: int = 0
    last_attempt: float | None = None
    succeeded: bool = False


@dataclass(frozen=True, kw_only=True)
class UpgradePolicy:
    """When to try a DCUtR hole punch on a relayed connection.

    max_attempts: hole punches per relayed connection before giving up; defaults to 3.
    backoff: seconds after the first failed attempt before the next; doubles each time;
        defaults to 30.
    """

    max_attempts: int = 3
    backoff: float = 30.0

    def next_attempt(
        self,
        state: UpgradeState,
        *,
        path: PathKind,
        local_nat: str | None = None,
        remote_nat: str | None = None,
    ) -> float | None:
        """When (a ``now`` value) to try the next upgrade; None for never.

        ``local_nat`` / ``remote_nat`` are NAT types as STUN reports them (``stun.NatType``
        values), or None when unknown.
        """
        if path is not PathKind.RELAYED or state.succeeded:
            return None
        if local_nat in _NO_PUNCH or remote_nat in _NO_PUNCH:
            return None
        if state.attempts >= self.max_attempts:
            return None
        if state.last_attempt is None:
            return 0.0
        return state.last_attempt + self.backoff * 2 ** max(state.attempts - 1, 0)

    def should_attempt(
        self,
        state: UpgradeState,
        now: float,
        *,
        path: PathKind,
        local_nat: str | None = None,
        remote_nat: str | None = None,
    ) -> bool:
        """Whether to start a hole punch at ``now``."""
        at = self.next_attempt(state, path=path, local_nat=local_nat, remote_nat=remote_nat)
        return at is not None and now >= at

    @staticmethod
    def record(state: UpgradeState, now: float, *, succeeded: bool) -> UpgradeState:
        """The state after an attempt that started at ``now``."""
        return UpgradeState(state.attempts + 1, now, state.succeeded or succeeded)
