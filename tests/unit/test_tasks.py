"""The pure task lifecycle: transitions, invariants, formatting, ID prefixes."""

from __future__ import annotations

import random

import pytest

from sonm_p2p.errors import (
    AmbiguousMiner,
    InvalidRequest,
    MinerNotFound,
    TaskNotFound,
)
from sonm_p2p.tasks import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Endpoint,
    Exited,
    Failed,
    Found,
    Lost,
    Pulled,
    Started,
    Stopped,
    Task,
    TaskState,
    can_apply,
    format_endpoint,
    format_endpoints,
    next_state,
    resolve_prefix,
)

S = TaskState
EP_TCP = Endpoint(27960, "tcp", "1.2.3.4", 32768)
EP_UDP = Endpoint(27960, "udp", "1.2.3.4", 32769)
MINER = "0x12aBcDeF0000000000000000000000000000beef"


def task_in(state: TaskState, **kw) -> Task:
    fields = dict(
        task_id="7f3a9c2e-0000-4000-8000-000000000000",
        miner_id=MINER,
        image="alpine:3.20",
        owner="0xowner",
        state=state,
        endpoints=(),
        exit_code=None,
        error="",
        created_at=100.0,
        updated_at=100.0,
    )
    fields.update(kw)
    return Task(**fields)


# (from state, event, to state): every allowed transition.
ALLOWED = [
    (S.PULLING, Pulled(), S.STARTING),
    (S.PULLING, Started((EP_TCP,)), S.RUNNING),
    (S.PULLING, Failed("pull access denied"), S.FAILED),
    (S.PULLING, Stopped(), S.STOPPED),
    (S.PULLING, Lost(), S.LOST),
    (S.PULLING, Found(S.PULLING), S.PULLING),
    (S.PULLING, Found(S.STARTING), S.STARTING),
    (S.PULLING, Found(S.RUNNING, endpoints=(EP_TCP,)), S.RUNNING),
    (S.PULLING, Found(S.EXITED, exit_code=0), S.EXITED),
    (S.PULLING, Found(S.FAILED, error="no space"), S.FAILED),
    (S.PULLING, Found(S.STOPPED), S.STOPPED),
    (S.STARTING, Started((EP_TCP, EP_UDP), container_id="c0ffee"), S.RUNNING),
    (S.STARTING, Exited(1), S.EXITED),
    (S.STARTING, Failed("port is already allocated"), S.FAILED),
    (S.STARTING, Stopped(), S.STOPPED),
    (S.STARTING, Lost(), S.LOST),
    (S.STARTING, Found(S.STARTING), S.STARTING),
    (S.STARTING, Found(S.RUNNING), S.RUNNING),
    (S.STARTING, Found(S.EXITED, exit_code=3), S.EXITED),
    (S.STARTING, Found(S.FAILED, error="x"), S.FAILED),
    (S.STARTING, Found(S.STOPPED, exit_code=137), S.STOPPED),
    (S.RUNNING, Exited(0), S.EXITED),
    (S.RUNNING, Failed("container removed"), S.FAILED),
    (S.RUNNING, Stopped(143), S.STOPPED),
    (S.RUNNING, Lost(), S.LOST),
    (S.RUNNING, Found(S.RUNNING, endpoints=(EP_UDP,)), S.RUNNING),
    (S.RUNNING, Found(S.EXITED, exit_code=2), S.EXITED),
    (S.RUNNING, Found(S.FAILED, error="oom"), S.FAILED),
    (S.RUNNING, Found(S.STOPPED, exit_code=0), S.STOPPED),
    (S.LOST, Failed("miner returned without the container"), S.FAILED),
    (S.LOST, Found(S.PULLING), S.PULLING),
    (S.LOST, Found(S.STARTING), S.STARTING),
    (S.LOST, Found(S.RUNNING, endpoints=(EP_TCP,)), S.RUNNING),
    (S.LOST, Found(S.EXITED, exit_code=42), S.EXITED),
    (S.LOST, Found(S.FAILED, error="gone"), S.FAILED),
    (S.LOST, Found(S.STOPPED, exit_code=137), S.STOPPED),
]

# A sample of refused transitions (terminal states are covered exhaustively below).
REFUSED = [
    (S.PULLING, Exited(0)),
    (S.STARTING, Pulled()),
    (S.RUNNING, Pulled()),
    (S.RUNNING, Started((EP_TCP,))),
    (S.RUNNING, Found(S.PULLING)),
    (S.RUNNING, Found(S.STARTING)),
    (S.STARTING, Found(S.PULLING)),
    (S.LOST, Lost()),
    (S.LOST, Pulled()),
    (S.LOST, Started()),
    (S.LOST, Exited(0)),
    (S.LOST, Stopped(0)),
]

EVENT_SAMPLES = [
    Pulled(),
    Started((EP_TCP,)),
    Exited(0),
    Failed("x"),
    Stopped(0),
    Stopped(),
    Lost(),
    *(Found(s) for s in (S.PULLING, S.STARTING, S.RUNNING, S.FAILED, S.STOPPED)),
    Found(S.EXITED, exit_code=0),
]


@pytest.mark.parametrize(("state", "event", "to"), ALLOWED, ids=repr)
def test_allowed_transition(state, event, to):
    assert can_apply(state, event)
    assert next_state(state, event) is to
    before = task_in(state)
    after = before.apply(event, now=200.0)
    assert after.state is to
    assert after.updated_at == 200.0
    assert after.created_at == 100.0
    assert before.state is state, "apply must not mutate the task"


def test_allowed_table_is_complete():
    """Every (state, event kind) pair not in ALLOWED is refused: the table has no extras."""
    allowed = {(s, _kind(e)) for s, e, _ in ALLOWED}
    for state in TaskState:
        for event in EVENT_SAMPLES:
            assert can_apply(state, event) == ((state, _kind(event)) in allowed), (state, event)


def _kind(event):
    return (Found, event.state) if isinstance(event, Found) else type(event)


@pytest.mark.parametrize(("state", "event"), REFUSED, ids=repr)
def test_refused_transition(state, event):
    assert not can_apply(state, event)
    with pytest.raises(InvalidRequest, match="not allowed"):
        next_state(state, event)
    with pytest.raises(InvalidRequest, match="7f3a9c2e"):
        task_in(state).apply(event, now=1.0)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES, key=lambda s: s.value))
@pytest.mark.parametrize("event", EVENT_SAMPLES, ids=repr)
def test_terminal_states_refuse_everything(state, event):
    assert state.terminal
    assert not can_apply(state, event)
    with pytest.raises(InvalidRequest, match=f"already {state.value}"):
        task_in(state, exit_code=0 if state is S.EXITED else None).apply(event, now=1.0)


def test_state_sets():
    assert TERMINAL_STATES == {S.EXITED, S.FAILED, S.STOPPED}
    assert ACTIVE_STATES == {S.PULLING, S.STARTING, S.RUNNING, S.LOST}
    assert all(s.value == s.name for s in TaskState)


def test_happy_path_keeps_details():
    t = Task.create(task_id="t1", miner_id=MINER, image="alpine", owner="0xo", now=10.0)
    assert t.state is S.PULLING and t.endpoints == () and t.exit_code is None
    t = t.apply(Pulled(), 11.0)
    t = t.apply(Started([EP_TCP, EP_UDP], container_id="abc123"), 12.0)
    assert t.endpoints == (EP_TCP, EP_UDP)
    assert t.container_id == "abc123"
    t = t.apply(Exited(3), 13.0)
    assert (t.state, t.exit_code, t.updated_at, t.created_at) == (S.EXITED, 3, 13.0, 10.0)
    assert t.endpoints == (EP_TCP, EP_UDP) and t.container_id == "abc123"
    assert t.terminal


def test_failure_keeps_reason():
    t = task_in(S.PULLING).apply(Failed("manifest unknown"), 5.0)
    assert (t.state, t.error, t.exit_code) == (S.FAILED, "manifest unknown", None)


def test_stop_with_and_without_code():
    assert task_in(S.RUNNING).apply(Stopped(137), 1.0).exit_code == 137
    assert task_in(S.PULLING).apply(Stopped(), 1.0).exit_code is None


def test_miner_offline_then_back_running():
    t = task_in(S.RUNNING, endpoints=(EP_TCP,), container_id="c1")
    t = t.apply(Lost(), 1.0)
    assert t.state is S.LOST and not t.terminal
    assert t.endpoints == (EP_TCP,) and t.container_id == "c1"
    # Reported without endpoints: keep ours; with endpoints: take theirs.
    assert t.apply(Found(S.RUNNING), 2.0).endpoints == (EP_TCP,)
    back = t.apply(Found(S.RUNNING, endpoints=(EP_UDP,), container_id="c2"), 2.0)
    assert (back.state, back.endpoints, back.container_id) == (S.RUNNING, (EP_UDP,), "c2")
    # An explicit empty list means "no published ports".
    assert t.apply(Found(S.RUNNING, endpoints=()), 2.0).endpoints == ()


def test_miner_offline_then_back_exited():
    t = task_in(S.RUNNING).apply(Lost(), 1.0).apply(Found(S.EXITED, exit_code=7), 2.0)
    assert (t.state, t.exit_code) == (S.EXITED, 7)


def test_miner_back_reports_failure():
    t = task_in(S.LOST).apply(Found(S.FAILED, error="oom killed"), 2.0)
    assert (t.state, t.error) == (S.FAILED, "oom killed")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"state": S.LOST},
        {"state": S.EXITED},
        {"state": S.RUNNING, "exit_code": 0},
        {"state": S.FAILED, "exit_code": 1},
    ],
)
def test_inconsistent_report_refused(kwargs):
    with pytest.raises(InvalidRequest):
        Found(**kwargs)


def test_found_accepts_state_names():
    assert Found("RUNNING").state is S.RUNNING
    assert task_in("LOST").state is S.LOST


def test_repr():
    assert repr(task_in(S.RUNNING)) == "<Task 7f3a9c2e RUNNING miner=0x12aB…>"


def test_random_walks_keep_invariants():
    rng = random.Random(0)

    def random_event():
        kind = rng.randrange(8)
        code = rng.choice([None, 0, 1, 137])
        if kind == 0:
            return Pulled()
        if kind == 1:
            return Started(tuple(rng.sample([EP_TCP, EP_UDP], rng.randrange(3))))
        if kind == 2:
            return Exited(rng.choice([0, 1, 255]))
        if kind == 3:
            return Failed(rng.choice(["a", "b"]))
        if kind == 4:
            return Stopped(code)
        if kind == 5:
            return Lost()
        state = rng.choice([s for s in TaskState if s is not S.LOST])
        if state is S.EXITED:
            return Found(state, exit_code=rng.choice([0, 2]))
        if state is S.STOPPED:
            return Found(state, exit_code=code)
        return Found(state)

    seen_states = set()
    for walk in range(300):
        task = Task.create(task_id=f"t{walk}", miner_id=MINER, image="i", owner="o", now=0.0)
        now = 0.0
        for _ in range(rng.randrange(1, 15)):
            event = random_event()
            now += rng.random()
            before = task
            if not can_apply(task.state, event):
                with pytest.raises(InvalidRequest):
                    task.apply(event, now)
                continue
            task = task.apply(event, now)
            seen_states.add(task.state)
            assert not before.terminal, "a terminal state changed"
            assert task.updated_at == now
            assert task.task_id == before.task_id and task.created_at == before.created_at
            # exit_code is set iff the task ended EXITED/STOPPED by an event carrying a code.
            carried = getattr(event, "code", getattr(event, "exit_code", None))
            if task.state in (S.EXITED, S.STOPPED) and carried is not None:
                assert task.exit_code == carried
            else:
                assert task.exit_code is None
            if task.state is S.EXITED:
                assert task.exit_code is not None
            if isinstance(event, Failed):
                assert task.error == event.reason
        if task.terminal:
            for event in EVENT_SAMPLES:
                with pytest.raises(InvalidRequest):
                    task.apply(event, now + 1)
    assert seen_states == set(TaskState), "the walk should reach every state"


# --- formatting -------------------------------------------------------------------------------


def test_format_endpoint():
    assert format_endpoint(EP_TCP) == "27960/tcp->1.2.3.4:32768"
    assert format_endpoint(Endpoint(80, "tcp", "::1", 8080)) == "80/tcp->[::1]:8080"
    assert format_endpoint(Endpoint(80, "tcp", "", 8080)) == "80/tcp->:8080"


def test_format_endpoints():
    assert format_endpoints([EP_TCP, EP_UDP]) == (
        "[27960/tcp->1.2.3.4:32768 27960/udp->1.2.3.4:32769]"
    )
    assert format_endpoints(iter([EP_UDP])) == "[27960/udp->1.2.3.4:32769]"
    assert format_endpoints([]) == "[]"


# --- ID prefixes ------------------------------------------------------------------------------

MINERS = [
    "0xAbC1000000000000000000000000000000000001",
    "0xAbC2000000000000000000000000000000000002",
    "0xDef0000000000000000000000000000000000003",
]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("0xabc1", MINERS[0]),
        ("abc1", MINERS[0]),
        ("ABC2", MINERS[1]),
        ("0XABC2", MINERS[1]),
        ("d", MINERS[2]),
        ("  0xdef ", MINERS[2]),
        (MINERS[2].lower(), MINERS[2]),
    ],
)
def test_resolve_miner_prefix(prefix, expected):
    assert resolve_prefix(MINERS, prefix, kind="miner") == expected


def test_resolve_miner_none():
    with pytest.raises(MinerNotFound, match="0x99"):
        resolve_prefix(MINERS, "0x99", kind="miner")
    with pytest.raises(MinerNotFound):
        resolve_prefix([], "ab", kind="miner")


def test_resolve_miner_ambiguous_lists_matches():
    with pytest.raises(AmbiguousMiner) as info:
        resolve_prefix(MINERS, "0xabc", kind="miner")
    assert MINERS[0] in str(info.value) and MINERS[1] in str(info.value)
    assert MINERS[2] not in str(info.value)


def test_resolve_ambiguous_lists_at_most_five():
    many = [f"0xaa{i:02d}" for i in range(8)]
    with pytest.raises(AmbiguousMiner) as info:
        resolve_prefix(many, "aa", kind="miner")
    message = str(info.value)
    assert sum(m in message for m in many) == 5
    assert "and 3 more" in message


def test_resolve_task_prefix():
    tasks = ["7f3a9c2e-aaaa", "7f3b0000-bbbb", "0x5-odd"]
    assert resolve_prefix(tasks, "7F3A", kind="task") == "7f3a9c2e-aaaa"
    assert resolve_prefix(tasks, "0x5", kind="task") == "0x5-odd"
    with pytest.raises(TaskNotFound):
        resolve_prefix(tasks, "5", kind="task")  # "0x" is only optional for node IDs
    with pytest.raises(InvalidRequest) as info:
        resolve_prefix(tasks, "7f3", kind="task")
    assert not isinstance(info.value, AmbiguousMiner)


def test_resolve_exact_match_wins_and_duplicates_collapse():
    assert resolve_prefix(["ab", "abc"], "ab", kind="task") == "ab"
    assert resolve_prefix(["0xab", "0xab"], "ab", kind="miner") == "0xab"


def test_resolve_rejects_empty_prefix_and_unknown_kind():
    with pytest.raises(InvalidRequest):
        resolve_prefix(MINERS, "", kind="miner")
    with pytest.raises(InvalidRequest):
        resolve_prefix(MINERS, "0x", kind="miner")
    with pytest.raises(ValueError):
        resolve_prefix(MINERS, "ab", kind="hub")
