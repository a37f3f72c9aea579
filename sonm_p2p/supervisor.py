"""Owned concurrency for the daemons: every thread a daemon runs in the background belongs to one
:class:`Supervisor`, whose :meth:`Supervisor.close` stops and joins everything it started.

A daemon gets three kinds of work from it:

- ``service(name, fn)``: a long-running loop in a thread of its own, handed the supervisor's
  stop event; it must return promptly once that event is set (wait on it, never ``sleep``).
- ``every(name, interval, fn)``: ``fn()`` each ``interval`` seconds until close (a service).
- ``submit(fn, *args)``: short work (a detached start) on a bounded worker pool, so the
  number of threads does not grow with the number of peers.
- ``asyncio_loop(name)``: an event loop in a service thread, for I/O that would otherwise take a
  thread per peer (the hub's pings and event streams of every miner, on ``grpc.aio``).

Trio's nurseries are the model: nothing runs that nobody owns, and closing the owner ends it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Supervisor:
    """Owns a daemon's background threads and worker pool. ``close()`` is idempotent.

    name: prefix of its threads' names (seen in ``py-spy dump`` and logs).
    workers: size of the bounded pool behind :meth:`submit`; defaults to 8.
    """

    def __init__(self, name: str, *, workers: int = 8) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._workers = workers
        self._queue: queue.SimpleQueue[tuple[futures.Future[Any], Callable[..., Any], tuple]] = (
            queue.SimpleQueue()
        )
        self._pool: list[threading.Thread] = []
        self._idle = 0
        self._on_close: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        with self._lock:
            alive = sum(t.is_alive() for t in self._threads)
        state = "closed" if self.stopping.is_set() else "running"
        return f"<Supervisor {self.name} {state} services={alive} workers={self._workers}>"

    @property
    def closed(self) -> bool:
        return self.stopping.is_set()

    def service(self, name: str, fn: Callable[[threading.Event], None]) -> None:
        """Run ``fn(stop_event)`` in a thread of its own until it returns.

        ``fn`` must return soon after the stop event is set; an exception it raises is logged
        (a service that dies must not die silently) and ends only that service.
        """
        with self._lock:
            if self.stopping.is_set():
                raise RuntimeError(f"{self.name}: closed, cannot start {name}")
            thread = threading.Thread(
                target=self._run_service, args=(name, fn), name=f"{self.name}:{name}", daemon=True
            )
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _run_service(self, name: str, fn: Callable[[threading.Event], None]) -> None:
        try:
            fn(self.stopping)
        except Exception:
            if not self.stopping.is_set():
                log.exception("%s: service %s failed", self.name, name)

    def every(self, name: str, interval: float, fn: Callable[[], None]) -> None:
        """Call ``fn()`` every ``interval`` seconds (the first call after one interval)."""

        def loop(stop: threading.Event) -> None:
            while not stop.wait(interval):
                fn()

        self.service(name, loop)

    def asyncio_loop(self, name: str) -> asyncio.AbstractEventLoop:
        """A running asyncio event loop owned by this supervisor.

        At close its pending tasks are cancelled (and awaited) and the loop is closed. Submit
        work with ``asyncio.run_coroutine_threadsafe(coro, loop)``.
        """
        loop = asyncio.new_event_loop()
        running = threading.Event()

        def run(stop: threading.Event) -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(running.set)
            try:
                loop.run_forever()
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

        with self._lock:
            self._on_close.append(lambda: loop.call_soon_threadsafe(loop.stop))
        self.service(name, run)
        running.wait()
        return loop

    def submit(self, fn: Callable[..., T], *args: Any) -> futures.Future[T]:
        """Run ``fn(*args)`` on the bounded pool (queued while every worker is busy).

        Raises RuntimeError once closed; work still queued at close is cancelled.
        """
        future: futures.Future[T] = futures.Future()
        with self._lock:
            if self.stopping.is_set():
                raise RuntimeError(f"{self.name}: closed")
            self._queue.put((future, fn, args))
            if self._queue.qsize() > self._idle and len(self._pool) < self._workers:
                worker = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._pool)}", daemon=True
                )
                self._pool.append(worker)
                worker.start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
            if item is None:
                return
            future, fn, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)
            del future, item

    def executor(self) -> futures.Executor:
        """This supervisor's pool as a ``concurrent.futures.Executor`` (for ``grpc.aio``'s
        ``migration_thread_pool``, ``loop.run_in_executor``); its shutdown is :meth:`close`."""
        return _PoolExecutor(self)

    def close(self, timeout: float = 10.0) -> None:
        """Stop every service and worker and join them (at most ``timeout`` seconds each).

        Work already running on the pool finishes (it should have a deadline of its own);
        queued work is cancelled.
        """
        with self._lock:
            self.stopping.set()
            threads, self._threads = self._threads, []
            workers = list(self._pool)
            on_close, self._on_close = self._on_close, []
        for fn in on_close:
            fn()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in workers:
            self._queue.put(None)
        current = threading.current_thread()
        for thread in (*threads, *workers):
            if thread is not current:
                thread.join(timeout)
                if thread.is_alive():
                    log.warning("%s: %s did not stop within %.0fs", self.name, thread.name, timeout)


class _PoolExecutor(futures.Executor):
    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> futures.Future[T]:
        return self._sup.submit(functools.partial(fn, *args, **kwargs))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass  # the supervisor owns the workers: Supervisor.close() ends them
