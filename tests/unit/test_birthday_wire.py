"""The messages of /sonm/birthday/1.0.0 and the coordination's pure helpers."""

from __future__ import annotations

import json
import random

import pytest

from sonm_p2p.transport._birthday import BirthdayPunch, Outcome, _probe_port, _probe_timeout
from sonm_p2p.transport._birthday_wire import MAX_LINE, PROTOCOL, decode, encode
from sonm_p2p.transport._birthday_wire import plan_message as _plan_message
from sonm_p2p.transport.birthday import BirthdayOptions, Plan, Side


def test_protocol_id_is_ours():
    assert PROTOCOL == "/sonm/birthday/1.0.0"


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("hello", {"nat": "symmetric", "ip": "203.0.113.7", "port": 4001}),
        ("hello", {"nat": None, "ip": "0.0.0.0", "port": 1}),
        ("refuse", {"reason": "rate-limited"}),
        ("probed", {"rejects": True}),
        ("probed", {"rejects": None}),
        ("ready", {}),
    ],
)
def test_messages_round_trip_as_one_json_line(kind, fields):
    line = encode(kind, **fields)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == {"type": kind, **fields}


def test_plan_message_round_trip():
    plan = Plan(Side.EASY, 256, 986, 1000.0, 2.0)
    msg = decode(_plan_message(plan, 0.0123456789))
    assert msg["first"] == "easy" and (msg["k"], msg["p"]) == (256, 986)
    assert msg["rate"] == 1000 and msg["deadline"] == 2 and msg["rtt"] == pytest.approx(0.012346)
    no = decode(_plan_message(Plan(None, reason="both NATs answer with a RST"), 0.1))
    assert no["first"] is None and "RST" in no["reason"]


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[]",
        b'{"type":"bogus"}',
        b'{"type":"hello","nat":null,"ip":"1.2.3.4"}',  # no port
        b'{"type":"hello","nat":null,"ip":"1.2.3.4","port":0}',
        b'{"type":"hello","nat":null,"ip":"1.2.3.4","port":70000}',
        b'{"type":"hello","nat":3,"ip":"1.2.3.4","port":5}',
        b'{"type":"hello","nat":null,"ip":"1.2.3.4","port":true}',  # a bool is not a port
        b'{"type":"probed","rejects":"yes"}',
        b'{"type":"plan","first":"sideways","k":1,"p":1,"rate":1,"deadline":1,"rtt":0,"reason":""}',
        b"\xff\xfe",
        b'{"type":"refuse","reason":"' + b"x" * MAX_LINE + b'"}',
    ],
)
def test_malformed_messages_are_refused(line):
    with pytest.raises(ValueError):
        decode(line)


def test_encoding_checks_fields_too():
    with pytest.raises(ValueError):
        encode("hello", nat="symmetric", ip="1.2.3.4")
    with pytest.raises(ValueError):
        encode("nope")
    with pytest.raises(ValueError):
        encode("refuse", reason="x" * MAX_LINE)


def test_probe_port_avoids_the_mapped_listen_port_and_timeout_is_bounded():
    rng = random.Random(0)
    ports = {_probe_port(rng, 40000) for _ in range(2000)}
    assert 40000 not in ports and all(33000 <= p <= 60999 for p in ports)
    assert _probe_timeout(0.0) == 0.5 and _probe_timeout(0.25) == 1.0 and _probe_timeout(5) == 2.0


def test_outcome_as_dict_is_json():
    out = Outcome(True, True, side="easy", first="hard", mappings=256, probes=986, sockets=33)
    assert json.loads(json.dumps(out.as_dict()))["sockets"] == 33


def test_the_responder_bounds_the_initiators_plan_by_its_own_budget():
    punch = BirthdayPunch(
        None,
        options=BirthdayOptions(mappings=128, max_probes=500, rate=500, deadline=1.5),
        local_nat=lambda: "symmetric",
        spawn=lambda *a: None,
        linger=0,
    )
    greedy = decode(_plan_message(Plan(Side.HARD, 65535, 65535, 1e9, 3600.0), 999.0))
    agreed = punch._bounded(greedy)
    assert agreed.first is Side.HARD
    assert (agreed.mappings, agreed.probes, agreed.rate, agreed.deadline) == (128, 500, 500, 1.5)
    assert agreed.rtt == 2.0
    modest = punch._bounded(decode(_plan_message(Plan(Side.EASY, 64, 100, 200.0, 1.0), 0.01)))
    assert (modest.mappings, modest.probes, modest.rate, modest.deadline) == (64, 100, 200, 1.0)
