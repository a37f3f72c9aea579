"""Reading the hub registry into discovery, every poll: who is registered, whom to dial.

The I/O around :class:`~sonm_p2p.discovery.registered.RegisteredHubs`: a supervisor service
that reads the registry (``sonm_p2p.chain.registry``, web3: imported on first use only) and
hands each read to :meth:`HubGossip.set_registered`. A hub that leaves the registry drops out
of discovery within one poll. The chain being away changes nothing but the log (one line): the
last read stays in force, and before any read, with a registry required, no hub is trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sonm_p2p.chain import ChainSettings
from sonm_p2p.chain.poll import ChainLoop
from sonm_p2p.discovery.registered import RegisteredHubs

__all__ = ["RegistryWatch", "check_registry"]

log = logging.getLogger(__name__)

DEFAULT_POLL = 15.0  # seconds between reads of the registry


def check_registry(chain: ChainSettings, *, timeout: float = 3.0) -> Any:
    """At a daemon's start: the registry (a ``sonm_p2p.chain.registry.Registry``), checked;
    ConfigError when the address holds none. A chain that does not answer is only logged and
    gives None (the daemon starts anyway; its loops retry)."""
    from sonm_p2p.chain.registry import Registry
    from sonm_p2p.errors import Timeout, Unavailable

    try:
        return Registry.open(chain.url, chain.registry, timeout=timeout)
    except (Unavailable, Timeout) as exc:
        log.warning("%s; going on without the registry until it answers", exc)
        return None


class RegistryWatch:
    """Reads the registry every ``interval`` seconds and calls ``on_read(hubs)``.

    ``skipped`` counts entries skipped as malformed (each logged once); ``last`` is the last
    read (None before the first). ``registry`` may be given (tests pass one on eth-tester).
    """

    def __init__(
        self,
        chain: ChainSettings,
        on_read: Callable[[RegisteredHubs], Any],
        *,
        interval: float = DEFAULT_POLL,
        registry: Any = None,
    ) -> None:
        self.chain = chain
        self._on_read = on_read
        self._registry = registry
        self.loop = ChainLoop("registry", self.read_once, interval=interval, backoff_max=interval)
        self.last: RegisteredHubs | None = None
        self.skipped = 0
        self._reported: set[tuple[str, str]] = set()

    def run(self, stop: Any) -> None:
        self.loop.run(stop)

    def read_once(self) -> None:
        """One read (raises Unavailable/Timeout when the chain does not answer)."""
        if self._registry is None:
            from sonm_p2p.chain.registry import Registry

            self._registry = Registry.open(self.chain.url, self.chain.registry)
        hubs = RegisteredHubs.of(self._registry.entries())
        for node_id, reason in hubs.skipped.items():
            if (node_id, reason) not in self._reported:
                self._reported.add((node_id, reason))
                self.skipped += 1
                log.warning("registry entry of %s skipped: %s", node_id, reason)
        first = self.last is None
        self.last = hubs
        self._on_read(hubs)
        if first:
            log.info(
                "registry %s: %d hubs registered%s",
                self.chain.registry,
                len(hubs),
                f", {len(hubs.skipped)} skipped" if hubs.skipped else "",
            )
