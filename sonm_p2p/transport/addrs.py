"""Addresses, in one place: parsing and formatting of ``host:port`` / ``[v6]:port``, multiaddrs and
circuit addresses, and this machine's interface addresses. Pure, except :func:`interface_ips`."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from sonm_p2p.errors import ConfigError

__all__ = [
    "Circuit",
    "circuit_addr",
    "expand_listen",
    "format_hostport",
    "interface_ips",
    "is_circuit",
    "local_ips_of",
    "parse_circuit",
    "parse_hostport",
    "parse_target",
    "split_circuit",
    "tcp_multiaddr",
    "tcp_target",
]


def parse_hostport(
    text: str, *, default_port: int | None = None, allow_zero: bool = False
) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` / ``host`` (with ``default_port``) into its parts.

    ``allow_zero`` accepts port 0 (an ephemeral port, for listen addresses)."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"bad address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"bad address {text!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:  # bare IPv6 without a port
        host = text
    if not host:
        raise ConfigError(f"bad address {text!r}: no host")
    if port_text:
        low = 0 if allow_zero else 1
        if not port_text.isdigit() or not low <= int(port_text) < 65536:
            raise ConfigError(f"bad address {text!r}: port must be 1-65535")
        return host, int(port_text)
    if default_port is None:
        raise ConfigError(f"bad address {text!r}: expected host:port")
    return host, default_port


def format_hostport(host: str, port: int) -> str:
    """``host:port``, or ``[v6]:port`` for an IPv6 address (inverse of :func:`parse_hostport`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tcp_target(addr: object) -> tuple[str, int] | None:
    """(ip, port) of an ``/ip4/…/tcp/…`` or ``/ip6/…/tcp/…`` multiaddr (anything after is
    ignored); None for any other address."""
    parts = str(addr).split("/")
    if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        return None
    return parts[2], int(parts[4])


def tcp_multiaddr(host: str, port: int) -> str:
    """The TCP multiaddr for a host (IPv4, IPv6 or DNS name) and port."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"/dns/{host}/tcp/{port}"
    return f"/ip{ip.version}/{ip}/tcp/{port}"


def parse_target(text: str) -> tuple[str, str | None]:
    """A dial target as (multiaddr without /p2p, peer ID or None)."""
    text = text.strip()
    if not text.startswith("/"):
        return tcp_multiaddr(*parse_hostport(text)), None
    parts = text.split("/p2p/")
    if len(parts) > 2 or "/p2p-circuit" in text:
        raise ConfigError(f"bad multiaddr {text!r}: relayed addresses are not dialled directly")
    base = parts[0]
    peer = parts[1].strip("/") if len(parts) == 2 else None
    try:
        import multiaddr

        multiaddr.Multiaddr(base)
    except Exception as exc:
        raise ConfigError(f"bad multiaddr {text!r}: {exc}") from None
    return base, peer or None


class Circuit(NamedTuple):
    """A relayed address ``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>``, in parts."""

    relay_addr: str  # the relay's own multiaddr, without /p2p
    relay_id: str
    peer_id: str

    @property
    def relay(self) -> str:
        """The relay's dial target: its multiaddr with /p2p."""
        return f"{self.relay_addr}/p2p/{self.relay_id}"


def is_circuit(addr: str) -> bool:
    """Whether ``addr`` is a relayed (circuit) address."""
    return "/p2p-circuit" in addr


def circuit_addr(relay_addr: str, relay_id: str, target_id: str) -> str:
    """``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<target>`` (``relay_addr`` without /p2p)."""
    base = relay_addr.split("/p2p/")[0].rstrip("/")
    return f"{base}/p2p/{relay_id}/p2p-circuit/p2p/{target_id}"


def split_circuit(addr: str) -> Circuit | None:
    """The parts of a circuit address as found on the wire or on a connection (the relay's
    address may be empty: ``/p2p/<relay>/p2p-circuit/p2p/<peer>``); None for any other address
    or a circuit address that does not name both peers. Never raises: see :func:`parse_circuit`
    for what users type."""
    head, sep, tail = addr.partition("/p2p-circuit")
    if not sep:
        return None
    target = tail.strip("/").removeprefix("p2p/").split("/")[0]
    relay_part, sep, relay_id = head.rpartition("/p2p/")
    if not sep or not relay_id.strip("/") or not target:
        return None
    return Circuit(relay_part, relay_id.strip("/"), target)


def parse_circuit(text: str) -> Circuit | None:
    """The parts of a relayed address, None for any other address; ConfigError for a relayed
    address that does not name both the relay and the peer (or relays through a relay)."""
    text = text.strip()
    if "/p2p-circuit" not in text:
        return None
    relay_part, _, peer_part = text.partition("/p2p-circuit")
    if "/p2p-circuit" in peer_part:
        raise ConfigError(f"bad multiaddr {text!r}: a circuit through more than one relay")
    relay_addr, relay_id = parse_target(relay_part) if relay_part else ("", None)
    peer_id = peer_part.removeprefix("/p2p/").strip("/")
    if not relay_id or not peer_part.startswith("/p2p/") or not peer_id or "/" in peer_id:
        raise ConfigError(
            f"bad multiaddr {text!r}: "
            "expected <relay addr>/p2p/<relay id>/p2p-circuit/p2p/<peer id>"
        )
    return Circuit(relay_addr, relay_id, peer_id)


def interface_ips(*, loopback: bool = True) -> list[str]:
    """This machine's (this network namespace's) interface addresses, IPv4 first, without
    link-local ones; loopback ones unless ``loopback`` is False."""
    import ifaddr

    v4: list[str] = []
    v6: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                addr = ipaddress.ip_address(text.split("%")[0])
            except ValueError:
                continue
            if addr.is_link_local or (addr.is_loopback and not loopback):
                continue
            bucket = v4 if addr.version == 4 else v6
            if str(addr) not in bucket:
                bucket.append(str(addr))
    return v4 + v6


def expand_listen(addrs: list[str], ips: list[str] | None = None) -> list[str]:
    """Listen multiaddrs with a wildcard host (0.0.0.0, ::) replaced by each interface address
    of that family (``ips``, default :func:`interface_ips`); loopback only when a family has
    nothing else, since other machines cannot dial it."""
    out: list[str] = []
    for addr in addrs:
        parts = addr.split("/")
        if len(parts) > 2 and parts[2] in ("0.0.0.0", "::"):
            version = 4 if parts[2] == "0.0.0.0" else 6
            pool = interface_ips() if ips is None else ips
            same = [ip for ip in pool if ipaddress.ip_address(ip).version == version]
            usable = [ip for ip in same if not ipaddress.ip_address(ip).is_loopback] or same
            for ip in usable:
                expanded = "/".join([*parts[:1], f"ip{version}", ip, *parts[3:]])
                if expanded not in out:
                    out.append(expanded)
        elif addr not in out:
            out.append(addr)
    return out


def local_ips_of(addrs: list[str]) -> list[str]:
    """The IP addresses in a list of ``/ip4`` / ``/ip6`` multiaddrs."""
    ips: list[str] = []
    for addr in addrs:
        parts = addr.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6") and parts[2] not in ips:
            ips.append(parts[2])
    return ips
