"""Forgetting peers that went away (``_paths.Departures``) and the transport errors' place in the
error tree (they cross gRPC as themselves)."""

from __future__ import annotations

import grpc
import pytest

from sonm_p2p import _status, errors
from sonm_p2p.transport._paths import Departures


def test_departures_expire_after_forget_after_in_departure_order() -> None:
    d = Departures(forget_after=10)
    d.left("a", now=0)
    d.left("b", now=5)
    assert d.expire(now=9) == []
    assert d.expire(now=10) == ["a"]
    d.returned("b")  # came back: never forgotten
    assert d.expire(now=100) == []
    assert len(d) == 0


def test_departures_bounded_by_churn() -> None:
    d = Departures(forget_after=0)
    for i in range(1000):
        d.left(f"p{i % 7}", now=float(i))
        d.expire(now=float(i))
    assert len(d) == 0


def test_leaving_again_moves_a_peer_to_the_end() -> None:
    d = Departures(forget_after=10)
    d.left("a", now=0)
    d.left("b", now=1)
    d.left("a", now=2)
    assert d.expire(now=11.5) == ["b"]
    assert d.expire(now=12) == ["a"]


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailer: str) -> None:
        self._code, self._details, self._trailer = code, details, trailer

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((_status.ERROR_TRAILER, self._trailer),)


@pytest.mark.parametrize(
    ("err", "code", "exit_code"),
    [
        (errors.StunError("bad fingerprint"), "UNAVAILABLE", 4),
        (errors.RelayRefused("no reservation", 204), "UNAVAILABLE", 4),
        (errors.ForwardError(1, "bad port 0"), "UNKNOWN", 1),
        (errors.InvalidAnnouncement("expired", "by 3s"), "INVALID_ARGUMENT", 6),
    ],
)
def test_transport_errors_round_trip_through_grpc(
    err: errors.SonmError, code: str, exit_code: int
) -> None:
    assert type(err).__name__ in errors.__all__
    assert (err.grpc_code, err.exit_code) == (code, exit_code)
    back = _status.from_rpc_error(
        _RpcError(getattr(grpc.StatusCode, code), str(err), type(err).__name__)
    )
    assert type(back) is type(err) and str(back) == str(err)


def test_old_import_paths_still_work() -> None:
    from sonm_p2p.discovery import InvalidAnnouncement
    from sonm_p2p.transport.forward import ForwardError
    from sonm_p2p.transport.relay import RelayRefused
    from sonm_p2p.transport.stun import StunError

    assert (InvalidAnnouncement, ForwardError, RelayRefused, StunError) == (
        errors.InvalidAnnouncement,
        errors.ForwardError,
        errors.RelayRefused,
        errors.StunError,
    )
