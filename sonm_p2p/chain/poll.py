"""A daemon's loop on the chain: do one step every so often, survive a chain that is away.

No web3 here (the step imports it). A chain that does not answer is logged once (and once more
when it is back), retried with a doubling backoff; other errors are logged once per message.
The daemon goes on without the chain meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sonm_p2p.errors import SonmError, Timeout, Unavailable

__all__ = ["ChainLoop"]

log = logging.getLogger(__name__)


class ChainLoop:
    """``step()`` every ``interval`` seconds until ``stop`` is set (run it as a supervisor
    service: ``supervisor.service(name, loop.run)``). ``step`` may return a shorter wait."""

    def __init__(
        self,
        name: str,
        step: Callable[[], float | None],
        *,
        interval: float,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self.name = name
        self._step = step
        self.interval = interval
        self._initial, self._max = backoff_initial, max(backoff_max, backoff_initial)
        self.failures = 0  # consecutive failed steps
        self.last_error = ""

    def run(self, stop: threading.Event) -> None:
        delay = self._initial
        while not stop.is_set():
            try:
                wait = self._step()
            except (Unavailable, Timeout) as exc:
                self._failed(f"{exc}; retrying with backoff (up to {self._max:g}s)", exc)
                stop.wait(delay)
                delay = min(delay * 2, self._max)
                continue
            except SonmError as exc:
                self._failed(str(exc), exc)
                stop.wait(max(self.interval, self._initial))
                continue
            if self.failures:
                log.info("%s: chain answers again", self.name)
            self.failures, self.last_error, delay = 0, "", self._initial
            stop.wait(self.interval if wait is None else wait)

    def _failed(self, message: str, exc: SonmError) -> None:
        self.failures += 1
        if str(exc) != self.last_error:  # one line per distinct trouble, not one per retry
            log.warning("%s: %s", self.name, message)
        else:
            log.debug("%s: %s", self.name, message)
        self.last_error = str(exc)
