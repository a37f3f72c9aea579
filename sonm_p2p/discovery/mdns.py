"""mDNS on the LAN: hubs advertise their overlay addresses, every node browses for them.

Built on the ``zeroconf`` package directly rather than py-libp2p's ``libp2p.discovery.mdns``:

* py-libp2p reports discoveries on ``peerDiscovery``, one module-level event bus for the whole
  process, so with several nodes in a process (tests, ``sonm-devnet``) every node's handler fires
  for every node's listener, whatever its namespace (measured: a node browsing ``_p2p-nsb`` got
  the peer advertised in ``_p2p-nsa``);
* its ``MDNSDiscovery.start()`` registers with conflict probing, blocking the calling (trio)
  thread for ~1.65 s, and its constructor starts browsing at once;
* every node with it enabled also advertises; only hubs should.

One :class:`LanDiscovery` owns one ``Zeroconf`` instance (its own sockets and threads).
``start()`` and ``close()`` block briefly (register: a few ms without probing; close: ~0.25 s
for the goodbye packets), so the gossip layer calls them from a worker thread. ``on_found`` is
called on zeroconf's browser thread.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sonm_p2p.transport.addrs import interface_ips

__all__ = ["DEFAULT_NAMESPACE", "LanDiscovery", "LanPeer", "service_type"]

log = logging.getLogger(__name__)

#: The namespace hubs advertise in unless told otherwise (tests use a random one each).
DEFAULT_NAMESPACE = "hub"
_NAMESPACE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,7}[a-z0-9])?$")  # DNS-SD type labels: <= 15 B
_RESOLVE_TIMEOUT_MS = 3000


def service_type(namespace: str = DEFAULT_NAMESPACE) -> str:
    """The DNS-SD service type of a namespace: ``_sonm-<namespace>._tcp.local.``.

    Raises ValueError unless ``namespace`` is 1-9 characters of ``a-z0-9-`` (the whole service
    label may not exceed 15 bytes).
    """
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"mDNS namespace {namespace!r}: 1-9 characters of a-z, 0-9 and '-'")
    return f"_sonm-{namespace}._tcp.local."


@dataclass(frozen=True)
class LanPeer:
    """A hub seen on the LAN: its peer ID and the multiaddrs to dial (without ``/p2p/``)."""

    peer_id: str
    multiaddrs: tuple[str, ...]


class LanDiscovery:
    """Advertise this node on the LAN (when given addresses) and browse for others.

    peer_id: this node's peer ID (its own advertisement is ignored when browsing).
    on_found: called with a :class:`LanPeer` on zeroconf's thread each time a hub appears or
        changes its addresses; it must not block.
    advertise: multiaddrs to advertise (with or without ``/p2p/``); None = browse only.
        Unspecified hosts (``0.0.0.0``, ``::``) are sent as they are, with this machine's
        interface addresses in A/AAAA records; browsers substitute those.
    namespace: see :func:`service_type`; nodes see only hubs of the same namespace.
    """

    def __init__(
        self,
        *,
        peer_id: str,
        on_found: Callable[[LanPeer], None],
        advertise: Iterable[str] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self.peer_id = peer_id
        self.type = service_type(namespace)
        self._on_found = on_found
        self._advertise = None if advertise is None else [_strip_p2p(a) for a in advertise]
        self._zc = None
        self._browser = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Open the mDNS sockets, advertise, browse. Raises OSError when mDNS is unavailable
        (no multicast-capable interface); the caller logs it and goes on without mDNS."""
        from zeroconf import IPVersion, ServiceBrowser, Zeroconf

        with self._lock:
            if self._zc is not None:
                return
            zc = Zeroconf(ip_version=IPVersion.V4Only, interfaces=mdns_interfaces())
            try:
                if self._advertise is not None:
                    # A unique name (the peer ID) needs no conflict probing: ~1.6 s saved.
                    zc.register_service(self._service_info(), cooperating_responders=True)
                self._browser = ServiceBrowser(zc, self.type, handlers=[self._on_change])
            except BaseException:
                zc.close()
                raise
            self._zc = zc

    def close(self) -> None:
        """Say goodbye, stop browsing, close the sockets and join zeroconf's threads.

        Idempotent; takes ~0.25 s when it advertised (the goodbye packets)."""
        with self._lock:
            zc, browser = self._zc, self._browser
            self._zc = self._browser = None
        if browser is not None:
            browser.cancel()
        if zc is not None:
            zc.close()

    def __repr__(self) -> str:
        role = "advertising" if self._advertise is not None else "browsing"
        state = "open" if self._zc is not None else "closed"
        return f"<LanDiscovery {self.type} {role} {state}>"

    # -- advertising ---------------------------------------------------------------------------

    def _service_info(self):  # noqa: ANN202 - zeroconf is imported lazily
        import socket

        from zeroconf import ServiceInfo

        addrs = self._advertise or []
        props = {"id": self.peer_id}
        props.update({f"a{i}": a for i, a in enumerate(addrs)})
        ips = _advertised_ips(addrs)
        port = next((p for p in (_tcp_port(a) for a in addrs) if p), 0)
        label = self.peer_id[:63]
        return ServiceInfo(
            self.type,
            f"{label}.{self.type}",
            port=port,
            properties=props,
            server=f"{label}.local.",
            addresses=[socket.inet_pton(_family(ip), ip) for ip in ips],
        )

    # -- browsing ------------------------------------------------------------------------------

    def _on_change(self, zeroconf, service_type: str, name: str, state_change) -> None:  # noqa: ANN001
        from zeroconf import ServiceStateChange

        if state_change not in (ServiceStateChange.Added, ServiceStateChange.Updated):
            return
        try:
            info = zeroconf.get_service_info(service_type, name, timeout=_RESOLVE_TIMEOUT_MS)
            peer = _peer_from_info(info) if info is not None else None
        except Exception as exc:  # a malformed record from someone else's software
            log.debug("mDNS: cannot resolve %s: %r", name, exc)
            return
        if peer is None or peer.peer_id == self.peer_id:
            return
        try:
            self._on_found(peer)
        except Exception:
            log.exception("mDNS on_found callback failed")


def _peer_from_info(info) -> LanPeer | None:  # noqa: ANN001 - zeroconf.ServiceInfo
    props = {
        (k.decode(errors="replace") if isinstance(k, bytes) else k): (
            v.decode(errors="replace") if isinstance(v, bytes) else v
        )
        for k, v in (info.properties or {}).items()
    }
    peer_id = props.get("id")
    if not peer_id:
        return None
    ips = list(info.parsed_addresses())
    addrs: list[str] = []
    for key in sorted(k for k in props if k.startswith("a") and k[1:].isdigit()):
        addr = props[key]
        if not addr or not addr.startswith("/"):
            continue
        addr = _strip_p2p(addr)
        host = addr.split("/")[2] if addr.count("/") >= 2 else ""
        if host in ("0.0.0.0", "::"):
            version = "ip4" if host == "0.0.0.0" else "ip6"
            rest = addr.split("/", 3)[3]
            for ip in ips:
                if _family_name(ip) == version:
                    addrs.append(f"/{version}/{ip}/{rest}")
        else:
            addrs.append(addr)
    if not addrs and info.port:
        addrs = [f"/{_family_name(ip)}/{ip}/tcp/{info.port}" for ip in ips]
    addrs = list(dict.fromkeys(addrs))
    return LanPeer(peer_id, tuple(addrs)) if addrs else None


def _advertised_ips(addrs: list[str]) -> list[str]:
    ips: list[str] = []
    for addr in addrs:
        parts = addr.split("/")
        if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
            continue
        if parts[2] in ("0.0.0.0", "::"):
            version = 4 if parts[2] == "0.0.0.0" else 6
            ips += [
                ip
                for ip in interface_ips(loopback=False)
                if ipaddress.ip_address(ip).version == version
            ]
        else:
            ips.append(parts[2])
    return [ip for ip in dict.fromkeys(ips) if ipaddress.ip_address(ip).version == 4]


def _strip_p2p(addr: str) -> str:
    return addr.split("/p2p/")[0]


def _tcp_port(addr: str) -> int:
    parts = addr.split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "tcp" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return 0


def _family(ip: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _family_name(ip: str) -> str:
    return "ip6" if ":" in ip else "ip4"


def mdns_interfaces() -> object:
    """Interface addresses mDNS runs on: ``SONM_MDNS_INTERFACES`` (comma-separated IPs, e.g.
    ``127.0.0.1`` to keep it on this machine, as the tests and ``sonm-devnet`` do), or all."""
    import os

    from zeroconf import InterfaceChoice

    text = os.environ.get("SONM_MDNS_INTERFACES", "").strip()
    if not text:
        return InterfaceChoice.All
    return [x.strip() for x in text.split(",") if x.strip()]
