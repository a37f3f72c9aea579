"""A hub's numbers in the Prometheus text format (``/metrics`` of ``sonmhub --http-listen``).

Counters the hub keeps as it goes (RPCs by method and code) live in a ``prometheus_client``
registry of their own (one per hub: tests run several in a process); the rest (miners online,
tasks by state, relay reservations and circuits, gossip messages accepted and dropped by reason)
are read from the hub when scraped, so they are never stale and cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "HubMetrics", "HubReadings"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, kw_only=True)
class HubReadings:
    """Where a scrape reads the hub's current numbers (each a callable, called per scrape).

    miners_online: miners with a live session. tasks_by_state: state -> tasks in the table.
    relay: (reservations held, circuits open) on the hub's relay. gossip: the announcement
    validator's counters, ``{"accepted": n, "dropped": {reason: n}}``.
    """

    miners_online: Callable[[], int]
    tasks_by_state: Callable[[], dict[str, int]]
    relay: Callable[[], tuple[int, int]]
    gossip: Callable[[], dict]


class _Readings(Collector):
    def __init__(self, readings: HubReadings) -> None:
        self.readings = readings

    def collect(self) -> Iterator[Metric]:
        r = self.readings
        yield GaugeMetricFamily(
            "sonm_hub_miners_online", "Miners connected to this hub now.", value=r.miners_online()
        )
        tasks = GaugeMetricFamily(
            "sonm_hub_tasks", "Tasks in this hub's table, by state.", labels=["state"]
        )
        for state, n in sorted(r.tasks_by_state().items()):
            tasks.add_metric([state], n)
        yield tasks
        reservations, circuits = r.relay()
        yield GaugeMetricFamily(
            "sonm_hub_relay_reservations",
            "Peers holding a circuit relay v2 reservation on this hub.",
            value=reservations,
        )
        yield GaugeMetricFamily(
            "sonm_hub_relay_circuits", "Relayed connections open through this hub.", value=circuits
        )
        gossip = r.gossip()
        messages = CounterMetricFamily(
            "sonm_hub_gossip_messages",
            "Hub announcements received on the gossip topic: accepted, or dropped by reason.",
            labels=["result", "reason"],
        )
        messages.add_metric(["accepted", ""], gossip.get("accepted", 0))
        for reason, n in sorted(gossip.get("dropped", {}).items()):
            messages.add_metric(["dropped", str(getattr(reason, "value", reason))], n)
        yield messages


class HubMetrics:
    """One hub's registry: :meth:`rpc_done` counts, :meth:`exposition` renders a scrape."""

    def __init__(self, readings: HubReadings) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._rpcs = Counter(
            "sonm_hub_rpcs",
            "Client-API calls served, by method and gRPC status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.registry.register(_Readings(readings))

    def rpc_done(self, method: str, code: str) -> None:
        """Count one finished call of ``method`` that ended with ``code`` (e.g. "OK")."""
        self._rpcs.labels(method, code).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
