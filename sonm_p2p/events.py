"""Task events and a small thread-safe fan-out for them (miner → hub → clients)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sonm_p2p.model import PullProgress
from sonm_p2p.tasks import Task

__all__ = ["EventBus", "Subscription", "TaskEvent"]


@dataclass(frozen=True)
class TaskEvent:
    """A task's new state (``task``) or pull progress (``progress``), at unix time ``at``."""

    task_id: str
    at: float
    task: Task | None = None
    progress: PullProgress | None = None


class Subscription:
    """Events for one subscriber; iterate it, or ``get()``; ``close()`` ends the iteration."""

    _CLOSED = object()

    def __init__(
        self,
        bus: EventBus,
        accept: Callable[[TaskEvent], bool],
        size: int,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._bus = bus
        self._accept = accept
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._wake = wake
        self.closed = False

    def _offer(self, event: TaskEvent) -> None:
        if self.closed or not self._accept(event):
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            # A slow reader loses old progress, never the end: drop the oldest item and retry.
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                pass
        if self._wake is not None:
            self._wake()

    def get(self, timeout: float | None = None) -> TaskEvent | None:
        """The next event, or None on timeout or once closed."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is self._CLOSED:
            self._queue.put_nowait(self._CLOSED)  # keep later get() calls returning None
            return None
        return item

    def __iter__(self) -> Iterator[TaskEvent]:
        while True:
            item = self.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        """Stop receiving; a blocked ``get()`` returns None. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._bus._remove(self)
        try:
            self._queue.put_nowait(self._CLOSED)
        except queue.Full:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._queue.put_nowait(self._CLOSED)
        if self._wake is not None:
            self._wake()


class EventBus:
    """Publish events to every current subscriber (each has a bounded queue)."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()

    def subscribe(
        self,
        accept: Callable[[TaskEvent], bool] = lambda e: True,
        *,
        size: int = 256,
        wake: Callable[[], None] | None = None,
    ) -> Subscription:
        """A new subscription. ``wake()`` (if given) is called after each event it queues and
        at its close, from the publisher's thread: an asyncio reader passes a function that
        sets an ``asyncio.Event`` through ``loop.call_soon_threadsafe`` and reads with
        ``get(timeout=0)``."""
        sub = Subscription(self, accept, size, wake)
        with self._lock:
            self._subs.append(sub)
        return sub

    def publish(self, event: TaskEvent) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub._offer(event)

    def close(self) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def __repr__(self) -> str:
        return f"<EventBus subscribers={len(self._subs)}>"
