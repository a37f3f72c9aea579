"""The Docker engine's container events, for :meth:`DockerRuntime.watch`
(:mod:`sonm_p2p.miner.docker_runtime`): one subscription per watch, reconnected when it breaks."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import docker

from sonm_p2p.errors import RuntimeFailure, SonmError
from sonm_p2p.miner._docker_payloads import _engine_errors, _parse_time, _since_param
from sonm_p2p.miner.runtime import TASK_LABEL, WATCH_ACTIONS
from sonm_p2p.supervisor import Supervisor

log = logging.getLogger(__name__)

#: The event watcher retries a broken engine connection after this, doubling up to the maximum.
_WATCH_BACKOFF = (0.1, 2.0)
#: How long unwatching waits for the watcher thread (blocked in a connect to a hung engine).
_WATCH_JOIN = 5.0


class _EventWatch:
    """One :meth:`DockerRuntime.watch` subscription: a service of the runtime's supervisor
    reading the engine's events.

    The first connection is made in the constructor, so the caller learns at once if the engine
    is unreachable and no event after the constructor returns is missed.
    """

    def __init__(
        self,
        api: docker.APIClient,
        filters: dict[str, Any],
        callback: Callable[[str, str], None],
        supervisor: Supervisor,
    ) -> None:
        self._api = api
        self._filters = filters
        self._callback = callback
        self._lock = threading.Lock()
        self._stopped = False
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        # Resume point on reconnect: the engine's time of the last event seen, or of subscribing.
        self._since: str | None = None
        self._seen: deque[tuple[Any, ...]] = deque(maxlen=256)
        with _engine_errors("subscribing to docker events"):
            now = _parse_time(api.info().get("SystemTime"))
            self._since = None if now is None else _since_param(round(now * 1e9))
            self._stream: Any = api.events(decode=True, filters=filters, since=self._since)
        try:
            supervisor.service("watch", self._run)
        except RuntimeError as exc:  # the runtime closed meanwhile
            self._stream.close()
            raise RuntimeFailure("subscribing to docker events: the runtime is closed") from exc

    def __repr__(self) -> str:
        return f"<_EventWatch {'stopped' if self._stopped else 'watching'} since={self._since}>"

    def close(self) -> None:
        with self._lock:
            self._stopped = True
            stream, self._stream = self._stream, None
        self._wake.set()
        if stream is not None:
            with suppress(Exception):  # half-gone already
                stream.close()
        thread = self._thread
        if thread is not threading.current_thread():
            # _done first: the service may not have begun running yet; then the thread's end.
            if self._done.wait(_WATCH_JOIN) and thread is not None:
                thread.join(_WATCH_JOIN)

    def _run(self, stopping: threading.Event) -> None:
        self._thread = threading.current_thread()
        try:
            self._watch()
        finally:
            self._done.set()

    def _watch(self) -> None:
        backoff = _WATCH_BACKOFF[0]
        while True:
            with self._lock:
                stream = self._stream
            opened = time.monotonic()
            if stream is not None:
                try:
                    for event in stream:
                        self._deliver(event)
                    why = "the engine ended the stream"
                except Exception as exc:  # whatever the broken connection raised
                    why = repr(exc)
                with suppress(Exception):
                    stream.close()
                if self._stopped:
                    return
                log.warning("docker event stream broke (%s); reconnecting", why)
                if time.monotonic() - opened > 5 * _WATCH_BACKOFF[1]:
                    backoff = _WATCH_BACKOFF[0]  # it had been healthy: retry quickly
            if self._wake.wait(backoff):
                return
            backoff = min(backoff * 2, _WATCH_BACKOFF[1])
            try:
                with _engine_errors("resubscribing to docker events"):
                    stream = self._api.events(decode=True, filters=self._filters, since=self._since)
            except SonmError as exc:
                log.warning("%s; retrying in %.2g s", exc, backoff)
                stream = None
            with self._lock:
                if self._stopped:
                    if stream is not None:
                        with suppress(Exception):
                            stream.close()
                    return
                self._stream = stream

    def _deliver(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        actor = event.get("Actor") or {}
        task_id = (actor.get("Attributes") or {}).get(TASK_LABEL)
        action = event.get("Action") or event.get("status")
        when = event.get("timeNano") or int(event.get("time") or 0) * 1_000_000_000
        key = (actor.get("ID") or event.get("id"), action, when)
        if not task_id or action not in WATCH_ACTIONS or key in self._seen:
            return  # a replayed duplicate after a reconnect, or not a task event
        self._seen.append(key)
        if when:
            self._since = _since_param(int(when))
        if self._stopped:
            return
        try:
            self._callback(task_id, action)
        except Exception:
            log.exception("watch callback failed on task %s %s", task_id, action)
