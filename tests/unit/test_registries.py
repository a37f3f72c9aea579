"""Pulls on a stranger's behalf never reach the miner's own networks (SSRF)."""

from __future__ import annotations

import pytest

from sonm_p2p.errors import Refused
from sonm_p2p.miner.registries import RegistryPolicy, registry_of

DNS = {
    "registry.example.com": ["93.184.216.34"],
    "intranet.example.com": ["10.1.2.3"],
    "rebind.example.com": ["93.184.216.34", "127.0.0.1"],
}


def policy(*allow: str) -> RegistryPolicy:
    return RegistryPolicy(allow=allow, resolve=lambda host: DNS.get(host, []))


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("busybox", ""),
        ("library/busybox:1", ""),
        ("registry.example.com/team/app:1", "registry.example.com"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000"),
        ("localhost/x", "localhost"),
        ("[::1]:5000/x@sha256:" + "a" * 64, "[::1]:5000"),
    ],
)
def test_registry_of(image: str, registry: str) -> None:
    assert registry_of(image) == registry


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "registry.example.com/team/app:1",
        "93.184.216.34:5000/x",
        "unknown.example.com/x",  # unresolvable: the pull fails on its own
    ],
)
def test_public_registries_pass(image: str) -> None:
    policy().check(image)


@pytest.mark.parametrize(
    "image",
    [
        "127.0.0.1:2375/x",
        "localhost:5000/x",
        "localhost/x",
        "[::1]:5000/x",
        "10.0.0.5/x",
        "192.168.1.1:80/x",
        "169.254.169.254/latest",  # the cloud metadata service
        "100.64.0.1/x",
        "[::ffff:127.0.0.1]:5000/x",
        "intranet.example.com/x",
        "rebind.example.com/x",  # any internal address counts
    ],
)
def test_internal_registries_are_refused(image: str) -> None:
    with pytest.raises(Refused, match="internal address.*--allow-registry"):
        policy().check(image)


def test_the_operator_can_allow_one() -> None:
    policy("127.0.0.1").check("127.0.0.1:5000/x")
    policy("127.0.0.1:5000").check("127.0.0.1:5000/x")
    with pytest.raises(Refused):
        policy("127.0.0.1:5000").check("127.0.0.1:2375/x")
    policy("intranet.example.com").check("intranet.example.com/x")
