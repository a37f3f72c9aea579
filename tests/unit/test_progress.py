from __future__ import annotations

from cli._progress import render_bar
from sonm_p2p.events import EventBus, TaskEvent
from sonm_p2p.model import PullProgress


def test_bar_shows_bytes_and_layers():
    p = PullProgress("reg/img:1", 5_000_000, 10_000_000, 1, 3)
    line = render_bar(p, width=10)
    assert line == "pulling reg/img:1 [#####.....] 5.0 MB/10.0 MB, 1/3 layers"


def test_bar_is_full_when_every_layer_is_done():
    p = PullProgress("img", 0, 0, 2, 2)
    assert "[##########]" in render_bar(p, width=10)


def test_event_bus_filters_and_drops_oldest_when_full():
    bus = EventBus()
    mine = bus.subscribe(lambda e: e.task_id == "a", size=2)
    for i in range(3):
        bus.publish(TaskEvent("a", float(i)))
    bus.publish(TaskEvent("b", 9.0))
    assert [mine.get(0).at, mine.get(0).at] == [1.0, 2.0]  # the oldest was dropped
    assert mine.get(0) is None
    mine.close()
    assert mine.get(0) is None and mine.closed
    bus.publish(TaskEvent("a", 5.0))  # no subscriber left: nothing happens
