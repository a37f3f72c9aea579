"""Test helpers for what a runtime streams: its events and its log output."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable

import pytest


def next_event(events: queue.Queue, wanted: tuple[str, str], within: float) -> list:
    """Events taken from the queue until ``wanted`` (included); fail at the deadline."""
    deadline = time.monotonic() + within
    seen: list = []
    while wanted not in seen:
        try:
            seen.append(events.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            pytest.fail(f"no {wanted} event within {within} s; saw {seen}")
    return seen


def read_in_thread(stream: Iterable[bytes]) -> tuple[queue.Queue, threading.Thread]:
    """Read ``stream`` in a thread; chunks go to the queue, then None when it ends."""
    chunks: queue.Queue = queue.Queue()

    def read() -> None:
        for chunk in stream:
            chunks.put(chunk)
        chunks.put(None)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return chunks, thread
