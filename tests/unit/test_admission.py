"""The hub's edge: every field of a start bounded and checked before it is stored or passed on."""

from __future__ import annotations

import pytest

from sonm_p2p.errors import InvalidRequest
from sonm_p2p.hub.admission import MAX_ARG_BYTES, check_id, check_spec, shown
from sonm_p2p.hub.limits import RateLimit
from sonm_p2p.model import RunSpec

WEB = "sonm-test/web:latest"


@pytest.mark.parametrize(
    "spec",
    [
        RunSpec(WEB),
        RunSpec("127.0.0.1:5000/team/app@sha256:" + "a" * 64),
        RunSpec(WEB, env={"A": "1", "_x.y-z": ""}, command=("sh", "-c", "echo hi")),
        RunSpec(WEB, cpus=0.5, memory_bytes=64 << 20, restart="on-failure:3"),
    ],
)
def test_good_specs_pass(spec: RunSpec) -> None:
    check_spec(spec)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (RunSpec(""), "an image is required"),
        (RunSpec("x" * 4_000_000), "bad image reference 'xxxx"),
        (RunSpec("web\nFAKE LOG LINE"), "bad image reference 'web\\nFAKE LOG LINE'"),
        (RunSpec("web latest"), "bad image reference"),
        (RunSpec(WEB, cpus=float("nan")), "--cpu nan"),
        (RunSpec(WEB, cpus=float("inf")), "--cpu inf"),
        (RunSpec(WEB, cpus=1e-12), "--cpu 1e-12"),
        (RunSpec(WEB, cpus=-1), "--cpu -1"),
        (RunSpec(WEB, memory_bytes=1), "--memory 1 bytes"),
        (RunSpec(WEB, env={"": "x"}), "bad environment variable name ''"),
        (RunSpec(WEB, env={"A=B": "x"}), "bad environment variable name"),
        (RunSpec(WEB, env={f"K{i}": "" for i in range(200)}), "200 environment variables"),
        (RunSpec(WEB, env={"A": "x" * (MAX_ARG_BYTES + 1)}), "environment variable A: "),
        (RunSpec(WEB, command=("a\x00b",)), "NUL"),
        (RunSpec(WEB, command=("x",) * 300), "300 command arguments"),
        (RunSpec(WEB, command=("x" * 30_000,) * 10), "at most 262144"),
        (RunSpec(WEB, restart="sometimes"), "restart policy 'sometimes'"),
    ],
)
def test_bad_specs_are_invalid_with_the_value_shown_safely(spec: RunSpec, says: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        check_spec(spec)
    assert says in str(err.value), str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_shown_escapes_and_cuts() -> None:
    assert shown("ok") == "'ok'"
    assert shown("a\nb\x00") == "'a\\nb\\x00'"
    assert shown("x" * 1000, 10) == "'xxxxxxxxxx'… (1000 characters)"


def test_ids_are_bounded() -> None:
    assert check_id("  abc  ", "task") == "abc"
    with pytest.raises(InvalidRequest, match="bad task ID 'xxxx"):
        check_id("x" * 10_000, "task")
    with pytest.raises(InvalidRequest, match="bad miner ID"):
        check_id("0xab\ncd", "miner")


def test_rate_limit_allows_a_burst_then_the_rate() -> None:
    limit = RateLimit(rate=2.0, burst=3)
    assert [limit.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.take("a", 100.0) == pytest.approx(0.5)
    assert limit.take("b", 100.0) == 0.0  # per key
    assert limit.take("a", 100.5) == 0.0  # one token back after 1/rate
    assert limit.take("a", 100.5) > 0


def test_rate_limit_forgets_idle_keys() -> None:
    limit = RateLimit(rate=1.0, burst=1)
    for i in range(5000):
        limit.take(f"k{i}", float(i))
    assert len(limit._buckets) < 4200
