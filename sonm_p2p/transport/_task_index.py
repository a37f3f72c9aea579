"""py-libp2p's service managers, finding a new task's parent in constant time.

Each ``run_task`` of a py-libp2p service manager (``TrioManager``) looks for the task that
called it by walking every task the manager holds (``_find_parent_task``). The swarm's manager
holds two tasks for every connection (its muxer's and its own), and adds two more at each join:
with 1,000 miners connected every join walked ~4,000 tasks twice, so a hub's joins got slower
the more miners it held (4 % of a hub's join samples at 300 miners, ``bench/profile_hub.py
--py-spy-join``). :func:`install` keeps, per manager, which of its tasks each trio task runs
(weakly: an entry goes with its trio task), and answers from that: the same parent, found at
once.
"""

from __future__ import annotations

import weakref
from typing import Any

import trio

__all__ = ["install"]


def install() -> None:
    """Index the tasks of every py-libp2p service manager in this process (idempotent; before
    any host runs)."""
    from libp2p.tools.anyio_service.trio_manager import TrioManager
    from libp2p.tools.anyio_service.trio_tasks import FunctionTask

    if getattr(TrioManager, "_sonm_task_index", False):
        return
    run = TrioManager._run_and_manage_task

    def index_of(manager: Any) -> weakref.WeakKeyDictionary[Any, Any]:
        index = manager.__dict__.get("_sonm_tasks")
        if index is None:
            index = manager.__dict__["_sonm_tasks"] = weakref.WeakKeyDictionary()
        return index

    async def _run_and_manage_task(self: Any, task: Any) -> None:
        if isinstance(task, FunctionTask):  # the only kind the original search finds
            index_of(self)[trio.lowlevel.current_task()] = task
        await run(self, task)

    def _find_parent_task(self: Any, trio_task: Any) -> Any:
        return index_of(self).get(trio_task)

    TrioManager._run_and_manage_task = _run_and_manage_task  # type: ignore[method-assign]
    TrioManager._find_parent_task = _find_parent_task  # type: ignore[method-assign]
    TrioManager._sonm_task_index = True  # type: ignore[attr-defined]
