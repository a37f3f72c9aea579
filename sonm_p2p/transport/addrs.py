"""Parsing of the address forms users type: ``host:port``, ``[v6]:port``, multiaddrs."""

from __future__ import annotations

import ipaddress

from sonm_p2p.errors import ConfigError

__all__ = ["parse_hostport", "parse_target", "tcp_multiaddr"]


def parse_hostport(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` / ``host`` (with ``default_port``) into its parts."""
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
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"bad address {text!r}: port must be 1-65535")
        return host, int(port_text)
    if default_port is None:
        raise ConfigError(f"bad address {text!r}: expected host:port")
    return host, default_port


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
