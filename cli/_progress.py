"""How `sonmcli start` shows a task coming up: a bar on a terminal, else lines or JSON lines."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable

from sonm_p2p.errors import SonmError
from sonm_p2p.events import TaskEvent
from sonm_p2p.model import PullProgress

__all__ = ["StartProgress", "render_bar"]

_BAR = 30


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def render_bar(p: PullProgress, width: int = _BAR) -> str:
    """``pulling IMG [#####.....] 12.3/45.6 MB, 3/5 layers`` (pure, for tests)."""
    frac = p.current_bytes / p.total_bytes if p.total_bytes else 0.0
    if p.layers_total and p.layers_done == p.layers_total:
        frac = 1.0
    filled = int(round(frac * width))
    bar = "#" * filled + "." * (width - filled)
    return (
        f"pulling {p.image} [{bar}] {_mb(p.current_bytes)}/{_mb(p.total_bytes)}, "
        f"{p.layers_done}/{p.layers_total} layers"
    )


class StartProgress:
    """Consumes a task's events (on a watcher thread) and prints them: on a terminal a bar and
    state changes on stderr; otherwise pull progress lines on stderr, at most one a second (so
    a failed start's stderr stays one line); with --json, JSON lines on stdout."""

    def __init__(self, image: str, *, as_json: bool, tty: bool) -> None:
        self.image = image
        self.as_json = as_json
        self.tty = tty and not as_json
        # Plain lines start after a second: a quick (or no) pull prints nothing.
        self._last_line = time.monotonic()
        self._printed = False
        self._bar_shown = False
        self._state = ""
        self._lock = threading.Lock()

    def follow(self, events: Iterable[TaskEvent]) -> None:
        try:
            for event in events:
                self.show(event)
        except SonmError:
            pass  # the start call itself reports what went wrong

    def show(self, event: TaskEvent) -> None:
        with self._lock:
            if self.as_json:
                self._json(event)
            elif event.progress is not None:
                self._progress(event.progress)
            elif self.tty and event.task is not None and event.task.state.value != self._state:
                self._state = event.task.state.value
                self._clear_bar()
                print(f"task {event.task_id}: {self._state}", file=sys.stderr, flush=True)

    def _json(self, event: TaskEvent) -> None:
        if event.progress is not None:
            p = event.progress
            obj = {
                "event": "progress",
                "id": event.task_id,
                "image": p.image,
                "current_bytes": p.current_bytes,
                "total_bytes": p.total_bytes,
                "layers_done": p.layers_done,
                "layers_total": p.layers_total,
            }
        elif event.task is not None:
            obj = {"event": "state", "id": event.task_id, "state": event.task.state.value}
        else:
            return
        print(json.dumps(obj, sort_keys=True), flush=True)

    def _progress(self, p: PullProgress) -> None:
        line = render_bar(p)
        if self.tty:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
            self._bar_shown = True
            return
        now = time.monotonic()
        final = p.layers_total and p.layers_done == p.layers_total
        if (final and self._printed) or now - self._last_line >= 1.0:
            self._last_line = now
            self._printed = True
            print(line, file=sys.stderr, flush=True)

    def _clear_bar(self) -> None:
        if self._bar_shown:
            sys.stderr.write("\n")
            self._bar_shown = False

    def done(self) -> None:
        with self._lock:
            self._clear_bar()
