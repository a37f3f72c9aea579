"""A hostile miner for tests: the real ``sonmminer`` (same process, protocol and session with its
hub), with lies added to what it tells the hub. Test-only: nothing here is in the product.

    python -m tests.hostile_miner PLAN.json -- SONMMINER-ARGS...

PLAN.json names a task of another miner (``victim_task``) and the owner to claim for a forged
task (``claimed_owner``). The miner then

* reports, at its handshake, the victim's task as one of its own (running, at a forged address),
  and a task the hub never created (``forged_task``) belonging to ``claimed_owner``, with a
  record the miner signed itself in place of the hub's;
* sends, first on its event stream to the hub, the victim's task with its endpoint moved to
  the forged address, then EXITED (code 0).

It prints ``hostile: <what>`` to stdout as it tells each lie, so a test knows they were sent.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sonm_p2p._convert import event_to_pb, task_to_pb
from sonm_p2p._pb.sonm.v1 import miner_pb2
from sonm_p2p.auth import task_record
from sonm_p2p.events import TaskEvent
from sonm_p2p.identity import load_or_create
from sonm_p2p.miner import daemon, hub_session
from sonm_p2p.miner.servicer import MinerServicer
from sonm_p2p.tasks import Endpoint, Task, TaskState

FORGED_HOST, FORGED_PORT = "6.6.6.6", 666


def _task(plan: dict[str, Any], miner_id: str, task_id: str, state: TaskState, **kw: Any) -> Task:
    now = time.time()
    defaults: dict[str, Any] = {
        "image": "sonm-test/web",
        "owner": plan["claimed_owner"],
        "endpoints": (Endpoint(8080, "tcp", FORGED_HOST, FORGED_PORT),),
        "exit_code": None,
        "error": "",
        "created_at": now,
        "updated_at": now,
        "container_id": "f" * 64,
    }
    return Task(task_id, miner_id, state=state, **{**defaults, **kw})


def install(plan: dict[str, Any], home: Path) -> None:
    """Patch the miner (in this process only) to tell the plan's lies, over gRPC to an older
    hub and on the message session to a hub of today."""
    identity = load_or_create(home)
    me = identity.node_id
    victim, forged = plan["victim_task"], plan["forged_task"]
    handshake, watch = MinerServicer.Handshake, MinerServicer.WatchTasks

    def lying_handshake(self: MinerServicer, request: Any, context: Any) -> Any:
        reply = handshake(self, request, context)
        claimed = _task(plan, me, victim, TaskState.RUNNING)
        # A record signed with the miner's own key, not the hub's.
        record = task_record(identity, forged, me, plan["claimed_owner"])
        adopted = _task(plan, me, forged, TaskState.RUNNING, record=record)
        reply.tasks.extend([task_to_pb(claimed), task_to_pb(adopted)])
        print(f"hostile: handshake claims {victim} and {forged}", flush=True)
        return reply

    def lying_events() -> Iterator[Any]:
        moved = _task(plan, me, victim, TaskState.RUNNING)
        exited = _task(plan, me, victim, TaskState.EXITED, exit_code=0, endpoints=())
        for task in (moved, exited):
            yield event_to_pb(TaskEvent(victim, time.time(), task=task))
            print(f"hostile: event {victim} {task.state.value}", flush=True)

    def lying_watch(self: MinerServicer, request: Any, context: Any) -> Iterator[Any]:
        yield from lying_events()
        yield from watch(self, request, context)

    MinerServicer.Handshake = lying_handshake  # type: ignore[method-assign]
    MinerServicer.WatchTasks = lying_watch  # type: ignore[method-assign]

    # The same lies on a message session (what a hub of today hears): the handshake's reply,
    # then the events, on the session stream.
    serve = daemon.serve_hub_session

    def lying_reply(miner: Any, request: Any) -> Any:
        return lying_handshake(MinerServicer(miner), request, None)

    def lying_session(miner: Any, session: Any, timeout: float) -> None:
        serve(miner, session, timeout)
        for event in lying_events():
            session.send(miner_pb2.MinerSessionMessage(event=event).SerializeToString())

    hub_session.handshake_reply = lying_reply  # type: ignore[assignment]
    daemon.serve_hub_session = lying_session  # type: ignore[assignment]


def main() -> None:
    plan_path, sep, *miner_args = sys.argv[1:]
    assert sep == "--", "usage: python -m tests.hostile_miner PLAN.json -- SONMMINER-ARGS..."
    plan = json.loads(Path(plan_path).read_text())
    home = Path(miner_args[miner_args.index("--home") + 1])
    install(plan, home)
    from cli.sonmminer import main as sonmminer

    sonmminer(miner_args, prog_name="sonmminer")


if __name__ == "__main__":
    main()
