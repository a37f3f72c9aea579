"""Which registries a miner's engine may pull from on a stranger's behalf.

An image reference names a registry host, and the engine dials it from the miner's machine: a
reference like ``127.0.0.1:2375/x`` or ``10.0.0.5/x`` would make the engine send requests into
the miner's own loopback or private network (server-side request forgery). Registries on
loopback, link-local, private, shared or reserved addresses are refused unless the operator
allows them (``sonmminer --allow-registry HOST[:PORT]``); names are resolved and judged by every
address they resolve to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from sonm_p2p.errors import ConfigError, Refused
from sonm_p2p.transport.addrs import parse_hostport

__all__ = ["RegistryPolicy", "registry_of"]

Resolver = Callable[[str], list[str]]


def registry_of(image: str) -> str:
    """The registry host[:port] an image reference names ("" for Docker Hub)."""
    first, sep, _ = image.partition("/")
    if not sep:
        return ""
    if "." in first or ":" in first or first == "localhost":
        return first
    return ""


def _resolve(host: str) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    except OSError:
        return []  # the engine will not reach it either: the pull fails as unreachable


@dataclass(frozen=True)
class RegistryPolicy:
    """allow: registries (``host`` or ``host:port``) pulled from even on internal addresses."""

    allow: tuple[str, ...] = ()
    resolve: Resolver = _resolve

    def check(self, image: str) -> None:
        """Raise Refused when ``image`` names a registry on an internal address."""
        registry = registry_of(image)
        if not registry:
            return
        try:
            host, port = parse_hostport(registry, default_port=0)
        except ConfigError:
            raise Refused(f"image {image}: {registry!r} is not a registry address") from None
        if self._allowed(host, port):
            return
        addrs = [host] if _is_ip(host) else self.resolve(host)
        if host.lower() == "localhost":
            addrs = addrs or ["127.0.0.1"]
        internal = [a for a in addrs if _internal(a)]
        if internal:
            raise Refused(
                f"image {image}: registry {registry} is on an internal address ({internal[0]}); "
                "this miner pulls only from public registries (its operator can allow this one "
                "with --allow-registry)"
            )

    def _allowed(self, host: str, port: int) -> bool:
        for entry in self.allow:
            e_host, e_port = parse_hostport(entry, default_port=0)  # 0: any port
            if e_host.lower() == host.lower() and e_port in (0, port):
                return True
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _internal(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast
