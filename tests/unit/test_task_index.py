"""``_task_index``: py-libp2p's service managers find a new task's parent by an index, and find
the same one their own walk of every task found (a real ``TrioManager`` and service, no
sockets)."""

from __future__ import annotations

from typing import Any

import trio

from sonm_p2p.transport import _task_index


def _walk(manager: Any, trio_task: Any) -> Any:
    """py-libp2p's own search (``TrioManager._find_parent_task`` before the index)."""
    from libp2p.tools.anyio_service.trio_tasks import FunctionTask

    for task in FunctionTask.iterate_tasks(*manager._root_tasks):
        if task.has_trio_task and trio_task is task.trio_task:
            return task
    return None


def test_parents_are_the_ones_the_walk_finds() -> None:
    from libp2p.tools.anyio_service import Service, background_trio_service

    _task_index.install()
    _task_index.install()  # idempotent
    seen: list[tuple[str, Any, Any, Any]] = []

    class Svc(Service):
        async def run(self) -> None:
            await trio.sleep_forever()

    async def main() -> None:
        svc = Svc()
        async with background_trio_service(svc) as manager:
            done = trio.Event()

            def note(name: str) -> None:
                me = trio.lowlevel.current_task()
                found = manager._find_parent_task(me)
                parent = getattr(found, "parent", None)
                seen.append((name, found, _walk(manager, me), parent))

            async def child() -> None:
                note("child")
                done.set()

            async def parent() -> None:
                note("parent")
                manager.run_task(child)
                await done.wait()

            manager.run_task(parent)  # from a task the manager does not run: a root task
            note("outside")
            with trio.fail_after(5):
                await done.wait()
            assert manager.__dict__["_sonm_tasks"], "the manager's tasks are not indexed"
            manager.cancel()

    trio.run(main)
    by_name = {name: (indexed, walked, up) for name, indexed, walked, up in seen}
    assert by_name["outside"] == (None, None, None)
    for name in ("parent", "child"):
        indexed, walked, _ = by_name[name]
        assert indexed is not None and indexed is walked, name
    # The child was filed under the parent's task (the parent under none: it was started from
    # a task the manager does not run), as the walk would have filed them.
    assert by_name["child"][2] is by_name["parent"][0]
    assert by_name["parent"][2] is None
