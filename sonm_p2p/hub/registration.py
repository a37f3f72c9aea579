"""A hub's registration on the chain: register at start, update when its addresses change.

A supervisor service (:class:`~sonm_p2p.chain.poll.ChainLoop`): each step reads the hub's own
entry and sends the one transaction that makes it match (register with the stake, or update the
endpoints and top the stake up). The hub serves all along: with too little balance it logs one
line naming its address and the ether to send, and tries again until it is funded; a chain that
does not answer is logged once and retried with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sonm_p2p.chain import ChainSettings, format_eth
from sonm_p2p.chain.poll import ChainLoop
from sonm_p2p.identity import Identity

__all__ = ["HubRegistration"]

log = logging.getLogger(__name__)


class HubRegistration:
    """Keeps ``identity`` registered with ``stake`` wei and its current endpoints.

    ``endpoints()`` returns (overlay multiaddrs, client-API endpoint) as the hub announces them.
    ``state`` is "unregistered", "registered", "unfunded" or "deregistered" (it was
    registered in this run, then deregistered by its key: it does not register again);
    ``registered_stake`` the stake held (wei).
    """

    def __init__(
        self,
        chain: ChainSettings,
        identity: Identity,
        stake: int,
        endpoints: Callable[[], tuple[list[str], str]],
        *,
        interval: float = 15.0,
        registry: Any = None,
    ) -> None:
        self.chain, self.identity, self.stake = chain, identity, stake
        self._endpoints = endpoints
        self._registry = registry
        self.loop = ChainLoop("registration", self.step, interval=interval, backoff_max=interval)
        self.state = "unregistered"
        self.registered_stake = 0
        self._asked = 0  # the amount last asked for in the log (wei), to say it once

    def run(self, stop: Any) -> None:
        self.loop.run(stop)

    def step(self) -> float | None:
        from sonm_p2p.chain.registry import InsufficientFunds, Registry, fit_endpoints

        if self._registry is None:
            self._registry = Registry.open(self.chain.url, self.chain.registry)
        reg = self._registry
        addrs, endpoint = self._endpoints()
        if not addrs:
            return 1.0  # the node is not listening yet
        want = fit_endpoints(addrs, endpoint)
        node = self.identity.node_id
        entry = reg.entry(node)
        if entry is None and self.state in ("registered", "deregistered"):
            # It was registered in this run and is no longer: someone holding its key
            # deregistered it (sonmhub --deregister). Registering again would undo that.
            if self.state == "registered":
                log.warning(
                    "hub %s was deregistered; it stays out of the registry (restart it with "
                    "--stake to register again)",
                    node,
                )
            self.state = "deregistered"
            return None
        try:
            if entry is None:
                held = reg.stake_of(node)  # left over from an earlier registration
                reg.register(self.identity, *want, stake=max(0, self.stake - held))
                log.info(
                    "hub %s registered in %s with %s ETH",
                    node,
                    reg.address,
                    format_eth(max(self.stake, held)),
                )
            elif (list(entry.multiaddrs), entry.grpc_endpoint) != (want[0], want[1]) or (
                entry.stake < self.stake
            ):
                reg.update(self.identity, *want, add=max(0, self.stake - entry.stake))
                log.info("hub %s: registered endpoints updated", node)
        except InsufficientFunds as exc:
            self.state = "unfunded"
            short = exc.needed - exc.balance
            if short != self._asked:
                self._asked = short
                log.warning(
                    "hub %s is not registered: its account holds %s ETH, send it %s ETH more "
                    "(stake %s plus gas); retrying every %gs",
                    node,
                    format_eth(exc.balance),
                    format_eth(short),
                    format_eth(self.stake),
                    self.loop.interval,
                )
            return None
        self.state = "registered"
        self.registered_stake = reg.stake_of(node)
        self._asked = 0
        return None
