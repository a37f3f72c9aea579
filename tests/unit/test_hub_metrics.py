"""The hub's /metrics body, read back with Prometheus's own parser (no hub needed)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sonm_p2p.hub.metrics import HubMetrics, HubReadings


def _samples(metrics: HubMetrics) -> dict:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_readings_are_taken_at_each_scrape_and_calls_are_counted():
    online = [3]
    metrics = HubMetrics(
        HubReadings(
            miners_online=lambda: online[0],
            tasks_by_state=lambda: {"RUNNING": 2, "STOPPED": 5},
            relay=lambda: (4, 1),
            gossip=lambda: {"accepted": 7, "dropped": {"expired": 2, "unsigned": 0}},
        )
    )
    metrics.rpc_done("StartTask", "OK")
    metrics.rpc_done("StartTask", "OK")
    metrics.rpc_done("TaskStatus", "NOT_FOUND")
    s = _samples(metrics)
    assert s[("sonm_hub_miners_online", ())] == 3
    assert s[("sonm_hub_tasks", (("state", "RUNNING"),))] == 2
    assert s[("sonm_hub_tasks", (("state", "STOPPED"),))] == 5
    assert s[("sonm_hub_relay_reservations", ())] == 4
    assert s[("sonm_hub_relay_circuits", ())] == 1
    assert s[("sonm_hub_rpcs_total", (("code", "OK"), ("method", "StartTask")))] == 2
    assert s[("sonm_hub_rpcs_total", (("code", "NOT_FOUND"), ("method", "TaskStatus")))] == 1
    gossip = "sonm_hub_gossip_messages_total"
    assert s[(gossip, (("reason", ""), ("result", "accepted")))] == 7
    assert s[(gossip, (("reason", "expired"), ("result", "dropped")))] == 2
    online[0] = 0
    assert _samples(metrics)[("sonm_hub_miners_online", ())] == 0


def test_two_hubs_in_one_process_keep_their_own_counts():
    readings = HubReadings(
        miners_online=lambda: 0, tasks_by_state=dict, relay=lambda: (0, 0), gossip=dict
    )
    a, b = HubMetrics(readings), HubMetrics(readings)
    a.rpc_done("Ping", "OK")
    assert ("sonm_hub_rpcs_total", (("code", "OK"), ("method", "Ping"))) not in _samples(b)
