"""The task lifecycle, as a pure state machine: no I/O, no clock, no randomness.

Time comes in as ``now`` (float unix seconds). The hub and the miner feed it events they learned
from Docker or from each other, and store what :meth:`Task.apply` returns.

::

    PULLING ──Pulled──▶ STARTING ──Started──▶ RUNNING ──Exited(code)──▶ EXITED
       └──────────────Started───────────────────▲    (STARTING ──Exited──▶ EXITED too)
    PULLING / STARTING / RUNNING ──Stopped(code)──▶ STOPPED
    PULLING / STARTING / RUNNING ──Lost──▶ LOST
    PULLING / STARTING / RUNNING / LOST ──Failed(reason)──▶ FAILED
    PULLING / STARTING / RUNNING / LOST ──Found(state the miner reports)──▶ that state

``EXITED``, ``FAILED`` and ``STOPPED`` are terminal: every event for a terminal task is refused.
``LOST`` is not terminal: the miner went offline and the task may still be running; when the miner
returns, a :class:`Found` carrying what it reports moves the task on (``Found(TaskState.RUNNING)``,
``Found(TaskState.EXITED, exit_code=0)``); a miner that returns without the task lets the hub
apply ``Failed("...")``.

:class:`Found` is also how any report reconciles the table: it may move a task forward
(``PULLING`` → ``RUNNING``) or refresh it in place (``RUNNING`` → ``RUNNING`` with new endpoints),
never backward (``RUNNING`` → ``PULLING`` is refused).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace

from sonm_p2p.errors import (
    AmbiguousMiner,
    InvalidRequest,
    MinerNotFound,
    TaskNotFound,
)

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "Endpoint",
    "Event",
    "Exited",
    "Failed",
    "Found",
    "Lost",
    "Pulled",
    "Started",
    "Stopped",
    "Task",
    "TaskState",
    "can_apply",
    "format_endpoint",
    "format_endpoints",
    "next_state",
    "resolve_prefix",
]


class TaskState(enum.Enum):
    """Where a task is in its life. Values are the names of the proto enum ``sonm.v1.TaskState``."""

    PULLING = "PULLING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    LOST = "LOST"

    @property
    def terminal(self) -> bool:
        """True for EXITED, FAILED and STOPPED: the state never changes again."""
        return self in TERMINAL_STATES


#: States a task never leaves.
TERMINAL_STATES: frozenset[TaskState] = frozenset(
    {TaskState.EXITED, TaskState.FAILED, TaskState.STOPPED}
)
#: Every other state, LOST included (its container may still be running).
ACTIVE_STATES: frozenset[TaskState] = frozenset(TaskState) - TERMINAL_STATES


@dataclass(frozen=True)
class Endpoint:
    """A published container port and where it can be reached."""

    container_port: int
    protocol: str  # "tcp" or "udp"
    host_ip: str
    host_port: int
    #: "direct" (host_ip:host_port answers), "forward" (behind NAT: `sonmcli forward`), "" unknown
    reach: str = ""


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pulled:
    """The image is present on the miner; the container is being created."""


@dataclass(frozen=True)
class Started:
    """The container runs; ``endpoints`` are its published ports (may be empty)."""

    endpoints: tuple[Endpoint, ...] = ()
    container_id: str = ""  # "": keep the task's current one

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(self.endpoints))


@dataclass(frozen=True)
class Exited:
    """The container's process ended by itself with ``code``."""

    code: int


@dataclass(frozen=True)
class Failed:
    """The task could not be run or kept running (pull failed, engine error, container gone)."""

    reason: str


@dataclass(frozen=True)
class Stopped:
    """The owner stopped the task; ``code`` is the container's exit code, None if none ran."""

    code: int | None = None


@dataclass(frozen=True)
class Lost:
    """The task's miner went offline; the task's real state is unknown until it returns."""


@dataclass(frozen=True)
class Found:
    """What the miner reports about the task (on reconnect, or in any status report).

    ``state`` may be any state but LOST (a miner always knows its own containers). ``exit_code``
    is required for EXITED, optional for STOPPED, and refused for other states. ``endpoints`` and
    ``container_id`` replace the task's when given (``None`` / ``""`` keep them); a non-empty
    ``error`` replaces the task's.

    Raises :class:`~sonm_p2p.errors.InvalidRequest` for an inconsistent report.
    """

    state: TaskState
    exit_code: int | None = None
    endpoints: tuple[Endpoint, ...] | None = None
    error: str = ""
    container_id: str = ""

    def __post_init__(self) -> None:
        state = TaskState(self.state)
        object.__setattr__(self, "state", state)
        if self.endpoints is not None:
            object.__setattr__(self, "endpoints", tuple(self.endpoints))
        if state is TaskState.LOST:
            raise InvalidRequest("a miner cannot report a task as LOST")
        if state is TaskState.EXITED and self.exit_code is None:
            raise InvalidRequest("a report of an EXITED task must carry its exit code")
        if self.exit_code is not None and state not in (TaskState.EXITED, TaskState.STOPPED):
            raise InvalidRequest(f"a report of a {state.value} task cannot carry an exit code")


Event = Pulled | Started | Exited | Failed | Stopped | Lost | Found

# --- the transition table (h11 style) ---------------------------------------------------------

_S = TaskState
# Found is keyed by (Found, reported state): its target depends on what the miner reports.
_EventKey = type | tuple[type, TaskState]


def _found(*states: TaskState) -> dict[_EventKey, TaskState]:
    return {(Found, s): s for s in states}


_TRANSITIONS: dict[TaskState, dict[_EventKey, TaskState]] = {
    _S.PULLING: {
        Pulled: _S.STARTING,
        Started: _S.RUNNING,  # image was already local: no separate pull step
        Failed: _S.FAILED,
        Stopped: _S.STOPPED,
        Lost: _S.LOST,
        **_found(_S.PULLING, _S.STARTING, _S.RUNNING, _S.EXITED, _S.FAILED, _S.STOPPED),
    },
    _S.STARTING: {
        Started: _S.RUNNING,
        Exited: _S.EXITED,  # died before its ports were read
        Failed: _S.FAILED,
        Stopped: _S.STOPPED,
        Lost: _S.LOST,
        **_found(_S.STARTING, _S.RUNNING, _S.EXITED, _S.FAILED, _S.STOPPED),
    },
    _S.RUNNING: {
        Exited: _S.EXITED,
        Failed: _S.FAILED,
        Stopped: _S.STOPPED,
        Lost: _S.LOST,
        **_found(_S.RUNNING, _S.EXITED, _S.FAILED, _S.STOPPED),
    },
    _S.LOST: {
        Failed: _S.FAILED,  # the miner came back without the container
        **_found(_S.PULLING, _S.STARTING, _S.RUNNING, _S.EXITED, _S.FAILED, _S.STOPPED),
    },
    _S.EXITED: {},
    _S.FAILED: {},
    _S.STOPPED: {},
}


def _key(event: Event) -> _EventKey:
    if isinstance(event, Found):
        return (Found, event.state)
    return type(event)


def _describe(event: Event) -> str:
    if isinstance(event, Found):
        return f"Found({event.state.value})"
    return type(event).__name__


def can_apply(state: TaskState, event: Event) -> bool:
    """Whether ``event`` is allowed in ``state`` (never for a terminal state)."""
    return _key(event) in _TRANSITIONS[state]


def next_state(state: TaskState, event: Event) -> TaskState:
    """The state ``event`` moves a task in ``state`` to.

    Raises :class:`~sonm_p2p.errors.InvalidRequest` when the table has no such transition,
    which includes every event for a terminal state.
    """
    try:
        return _TRANSITIONS[state][_key(event)]
    except KeyError:
        if state.terminal:
            raise InvalidRequest(
                f"task is already {state.value}: {_describe(event)} cannot change it"
            ) from None
        raise InvalidRequest(
            f"{_describe(event)} is not allowed for a {state.value} task"
        ) from None


# --- the task ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One container run on one miner on behalf of one owner.

    Immutable: :meth:`apply` returns a new ``Task`` and leaves this one alone, so a task can be
    shared between threads and stored as is. ``exit_code`` is set only in EXITED, or in STOPPED
    when a container ran; ``error`` says why a task failed. Times are unix seconds.
    """

    task_id: str
    miner_id: str
    image: str
    owner: str
    state: TaskState
    endpoints: tuple[Endpoint, ...]
    exit_code: int | None
    error: str
    created_at: float
    updated_at: float
    container_id: str = ""
    #: In a miner's report: the record (hub signature) the task was started with; see
    #: :func:`sonm_p2p.auth.task_record`. Not stored by the hub.
    record: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", TaskState(self.state))
        object.__setattr__(self, "endpoints", tuple(self.endpoints))

    @classmethod
    def create(cls, *, task_id: str, miner_id: str, image: str, owner: str, now: float) -> Task:
        """A new task in PULLING, created at ``now``."""
        return cls(
            task_id=task_id,
            miner_id=miner_id,
            image=image,
            owner=owner,
            state=TaskState.PULLING,
            endpoints=(),
            exit_code=None,
            error="",
            created_at=now,
            updated_at=now,
        )

    @property
    def terminal(self) -> bool:
        """True once the task is EXITED, FAILED or STOPPED."""
        return self.state.terminal

    def apply(self, event: Event, now: float) -> Task:
        """The task after ``event`` happened at ``now`` (a new object; ``self`` is unchanged).

        Raises :class:`~sonm_p2p.errors.InvalidRequest` for an event the current state does not
        allow (see the module docstring); a terminal task refuses every event.
        """
        try:
            state = next_state(self.state, event)
        except InvalidRequest as e:
            raise InvalidRequest(f"task {self.task_id}: {e}") from None
        changes: dict[str, object] = {"state": state, "updated_at": now}
        match event:
            case Started(endpoints=endpoints, container_id=container_id):
                changes["endpoints"] = endpoints
                if container_id:
                    changes["container_id"] = container_id
            case Exited(code=code) | Stopped(code=code):
                changes["exit_code"] = code
            case Failed(reason=reason):
                changes["error"] = reason
            case Found():
                changes["exit_code"] = event.exit_code
                if event.endpoints is not None:
                    changes["endpoints"] = event.endpoints
                if event.container_id:
                    changes["container_id"] = event.container_id
                if event.error:
                    changes["error"] = event.error
        return replace(self, **changes)

    def __repr__(self) -> str:
        return f"<Task {self.task_id[:8]} {self.state.value} miner={self.miner_id[:6]}…>"


# --- presentation -----------------------------------------------------------------------------


def format_endpoint(ep: Endpoint) -> str:
    """The seed's form, ``27960/tcp->1.2.3.4:32768`` (an IPv6 host in brackets)."""
    host = ep.host_ip
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name, or empty: print as is
    return f"{ep.container_port}/{ep.protocol}->{host}:{ep.host_port}"


def format_endpoints(eps: Iterable[Endpoint]) -> str:
    """The seed's list form, ``[27960/tcp->1.2.3.4:32768 27960/udp->1.2.3.4:32769]``."""
    return "[" + " ".join(format_endpoint(ep) for ep in eps) + "]"


# --- ID prefixes ------------------------------------------------------------------------------

_MAX_LISTED = 5


def resolve_prefix(candidates: Iterable[str], prefix: str, *, kind: str) -> str:
    """The one candidate that ``prefix`` names, as spelled in ``candidates``.

    Matching is case-insensitive; for ``kind="miner"`` the ``0x`` of node IDs is optional on
    either side. An exact match wins even when it is also a prefix of a longer candidate.

    Raises :class:`~sonm_p2p.errors.MinerNotFound` / :class:`~sonm_p2p.errors.TaskNotFound`
    (by ``kind``, ``"miner"`` or ``"task"``) when nothing matches,
    :class:`~sonm_p2p.errors.AmbiguousMiner` / :class:`~sonm_p2p.errors.InvalidRequest` when
    several do (the message lists up to 5 of them), and ``InvalidRequest`` for an empty prefix.
    ``ValueError`` for another ``kind``.
    """
    if kind == "miner":
        not_found, ambiguous = MinerNotFound, AmbiguousMiner
    elif kind == "task":
        not_found, ambiguous = TaskNotFound, InvalidRequest
    else:
        raise ValueError(f"kind must be 'miner' or 'task', not {kind!r}")

    def norm(s: str) -> str:
        s = s.strip().lower()
        if kind == "miner" and s.startswith("0x"):
            s = s[2:]
        return s

    want = norm(prefix)
    if not want:
        raise InvalidRequest(f"empty {kind} ID")
    matches = sorted({c for c in candidates if norm(c).startswith(want)})
    exact = [c for c in matches if norm(c) == want]
    if len(exact) == 1:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise not_found(f"no {kind} with ID {prefix!r}")
    listed = ", ".join(matches[:_MAX_LISTED])
    more = len(matches) - _MAX_LISTED
    if more > 0:
        listed += f" and {more} more"
    raise ambiguous(f"{kind} ID prefix {prefix!r} is ambiguous: it matches {listed}")
