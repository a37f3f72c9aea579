"""The supervisor owns what it starts: close() stops services, cancels queued work, joins all."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sonm_p2p.supervisor import Supervisor


def _threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def test_close_joins_services_and_workers() -> None:
    sup = Supervisor("t-join", workers=3)
    ticks = threading.Event()
    sup.every("tick", 0.01, ticks.set)
    sup.service("loop", lambda stop: stop.wait())
    results = [sup.submit(pow, 2, n) for n in range(10)]
    assert [f.result(timeout=5) for f in results] == [2**n for n in range(10)]
    assert ticks.wait(5)
    assert len(_threads("t-join")) <= 2 + 3  # two services, at most three workers
    sup.close()
    assert _threads("t-join") == []
    assert sup.closed
    sup.close()  # idempotent


def test_pool_is_bounded_and_queued_work_is_cancelled_at_close() -> None:
    sup = Supervisor("t-bound", workers=2)
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> bool:
        started.release()
        return release.wait(5)

    running = [sup.submit(hold) for _ in range(2)]
    for _ in running:  # both taken by a worker, not still queued (close would cancel them)
        assert started.acquire(timeout=5)
    queued = [sup.submit(int, "1") for _ in range(50)]
    assert len(_threads("t-bound")) == 2
    closer = threading.Thread(target=sup.close)
    closer.start()
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert all(f.result(timeout=1) for f in running)
    assert all(f.cancelled() or f.result(timeout=1) == 1 for f in queued)
    assert _threads("t-bound") == []


def test_nothing_starts_after_close() -> None:
    sup = Supervisor("t-after")
    sup.close()
    with pytest.raises(RuntimeError):
        sup.submit(int)
    with pytest.raises(RuntimeError):
        sup.service("late", lambda stop: None)


def test_a_failing_service_is_logged_not_silent(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor("t-fail")
    done = threading.Event()

    def boom(stop: threading.Event) -> None:
        done.set()
        raise ValueError("broken")

    sup.service("boom", boom)
    assert done.wait(5)
    sup.close()
    assert "service boom failed" in caplog.text


def test_an_exception_in_work_reaches_its_future() -> None:
    sup = Supervisor("t-exc")
    try:
        with pytest.raises(ZeroDivisionError):
            sup.submit(lambda: 1 / 0).result(timeout=5)
        assert sup.submit(int, "7").result(timeout=5) == 7  # the worker survived
    finally:
        sup.close()


def test_asyncio_loop_runs_until_close_and_its_tasks_are_cancelled() -> None:
    sup = Supervisor("t-loop")
    loop = sup.asyncio_loop("loop")
    cancelled = threading.Event()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def add(a: int, b: int) -> int:
        return a + b

    assert asyncio.run_coroutine_threadsafe(add(2, 3), loop).result(timeout=5) == 5
    asyncio.run_coroutine_threadsafe(forever(), loop)
    assert started.wait(5)
    sup.close()
    assert cancelled.is_set()
    assert loop.is_closed()
    assert _threads("t-loop") == []
