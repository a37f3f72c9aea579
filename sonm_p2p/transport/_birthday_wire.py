"""The messages of ``/sonm/birthday/1.0.0`` (pure): JSON lines, at most :data:`MAX_LINE` bytes
each, checked field by field both ways. ``_birthday.py`` says what they mean and when each is
sent."""

from __future__ import annotations

import json
from typing import Any

from sonm_p2p.transport.birthday import Plan, Side

__all__ = ["MAX_LINE", "PROTOCOL", "decode", "encode", "no_plan", "plan_message"]

PROTOCOL = "/sonm/birthday/1.0.0"
#: Longest message line (bytes, newline included).
MAX_LINE = 4096

_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"nat": (str, type(None)), "ip": (str,), "port": (int,)},
    "refuse": {"reason": (str,)},
    "probed": {"rejects": (bool, type(None))},
    "plan": {
        "first": (str, type(None)),
        "k": (int,),
        "p": (int,),
        "rate": (int, float),
        "deadline": (int, float),
        "rtt": (int, float),
        "reason": (str,),
    },
    "ready": {},
}


def encode(kind: str, **fields: Any) -> bytes:
    """One message line. Raises ValueError for an unknown kind or a missing/wrong field."""
    msg = {"type": kind, **fields}
    _check(msg)
    line = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_LINE:
        raise ValueError(f"{kind} message too long")
    return line


def decode(line: bytes) -> dict[str, Any]:
    """The message of one line (newline optional). Raises ValueError when it is not one."""
    if len(line) > MAX_LINE:
        raise ValueError("message too long")
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    _check(msg)
    return msg


def _check(msg: Any) -> None:
    if not isinstance(msg, dict) or msg.get("type") not in _FIELDS:
        raise ValueError(f"unknown message: {str(msg)[:80]}")
    for name, types in _FIELDS[msg["type"]].items():
        value = msg.get(name)
        if isinstance(value, bool) and bool not in types:
            raise ValueError(f"{msg['type']}.{name}: {value!r}")
        if not isinstance(value, types):
            raise ValueError(f"{msg['type']}.{name}: {value!r}")
    if msg["type"] == "hello" and not 0 < msg["port"] < 65536:
        raise ValueError(f"hello.port: {msg['port']}")
    if msg["type"] == "plan" and msg["first"] not in (None, *Side):
        raise ValueError(f"plan.first: {msg['first']!r}")


def no_plan(why: str) -> bytes:
    return encode("plan", first=None, k=0, p=0, rate=0, deadline=0, rtt=0, reason=why)


def plan_message(chosen: Plan, rtt: float) -> bytes:
    return encode(
        "plan",
        first=None if chosen.first is None else str(chosen.first),
        k=chosen.mappings,
        p=chosen.probes,
        rate=chosen.rate,
        deadline=chosen.deadline,
        rtt=round(rtt, 6),
        reason=chosen.reason,
    )
