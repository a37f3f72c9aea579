"""Error translation at the gRPC boundary, in both directions.

Servicers raise domain errors; :func:`translate_errors` turns them into a status code, a message
and a ``sonm-error`` trailer naming the class, so the typed clients (:func:`from_rpc_error`)
raise the very same class on the other side. Anything unexpected becomes INTERNAL with the
traceback logged on the server, never a crash.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

from sonm_p2p import errors

__all__ = [
    "ERROR_TRAILER",
    "Malformed",
    "ServerStream",
    "abort",
    "add_servicer",
    "from_rpc_error",
    "translate_errors",
]

log = logging.getLogger(__name__)

ERROR_TRAILER = "sonm-error"

_BY_NAME: dict[str, type[errors.SonmError]] = {
    name: getattr(errors, name) for name in errors.__all__
}
_BY_CODE: dict[grpc.StatusCode, type[errors.SonmError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: errors.Refused,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Timeout,
    grpc.StatusCode.INTERNAL: errors.RuntimeFailure,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
}

C = TypeVar("C", bound=type)


def abort(context: grpc.ServicerContext, err: errors.SonmError) -> NoReturn:
    """End the current call with ``err``'s status code, message and class trailer."""
    context.set_trailing_metadata(((ERROR_TRAILER, type(err).__name__),))
    context.abort(getattr(grpc.StatusCode, err.grpc_code), str(err))
    raise AssertionError("unreachable")  # context.abort raises


_INTERNAL = "internal error (see the server's log)"


def _aborted(context: Any, exc: Exception) -> bool:
    """True when ``exc`` is the call being ended on purpose (``context.abort``)."""
    if isinstance(exc, grpc.aio.AbortError):
        return True
    code = getattr(context, "code", None)  # a sync handler under grpc.aio has no code()
    return code is not None and code() is not None


def _status_of(exc: Exception, method: Callable[..., Any]) -> tuple[grpc.StatusCode, str, str]:
    """The status, message and class trailer a failed call ends with: a domain error as itself,
    anything else INTERNAL, with its traceback logged here and never sent."""
    if isinstance(exc, errors.SonmError):
        return getattr(grpc.StatusCode, exc.grpc_code), str(exc), type(exc).__name__
    log.exception("%s failed", method.__qualname__)
    return grpc.StatusCode.INTERNAL, _INTERNAL, ""


def _end(context: grpc.ServicerContext, exc: Exception, method: Callable[..., Any]) -> None:
    if _aborted(context, exc):
        raise exc
    code, message, name = _status_of(exc, method)
    if name:
        context.set_trailing_metadata(((ERROR_TRAILER, name),))
    context.abort(code, message)


async def _aend(
    context: grpc.aio.ServicerContext, exc: Exception, method: Callable[..., Any]
) -> None:
    if _aborted(context, exc):
        raise exc
    code, message, name = _status_of(exc, method)
    if name:
        context.set_trailing_metadata(((ERROR_TRAILER, name),))
    await context.abort(code, message)


def _observe(
    servicer: Any, method: Callable[..., Any], context: Any, exc: Exception | None
) -> None:  # noqa: E501
    """Tell the servicer's ``observe_call(method, code)`` (if it has one: the hub's metrics) how
    a call ended: OK, the domain error's code, or the code it was aborted with."""
    hook = getattr(servicer, "observe_call", None)
    if hook is None:
        return
    if exc is None:
        code: Any = grpc.StatusCode.OK
    elif isinstance(exc, errors.SonmError):
        code = getattr(grpc.StatusCode, exc.grpc_code)
    elif _aborted(context, exc):
        code = (context.code() if hasattr(context, "code") else None) or "UNKNOWN"
    else:
        code = grpc.StatusCode.INTERNAL
    hook(method.__name__, getattr(code, "name", str(code)))


def _refuse_malformed(request: Any) -> None:
    if isinstance(request, Malformed):
        raise errors.InvalidRequest(f"malformed request: {type(request.error).__name__}")


def _wrap(method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def astream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                _refuse_malformed(request)
                async for item in method(self, request, context):
                    yield item
            except Exception as exc:
                _observe(self, method, context, exc)
                await _aend(context, exc, method)
            else:
                _observe(self, method, context, None)

        return astream

    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def aunary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                _refuse_malformed(request)
                reply = await method(self, request, context)
            except Exception as exc:
                _observe(self, method, context, exc)
                await _aend(context, exc, method)
            else:
                _observe(self, method, context, None)
                return reply

        return aunary

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                _refuse_malformed(request)
                yield from method(self, request, context)
            except Exception as exc:
                _observe(self, method, context, exc)
                _end(context, exc, method)
            else:
                _observe(self, method, context, None)

        return stream

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            _refuse_malformed(request)
            reply = method(self, request, context)
        except Exception as exc:
            _observe(self, method, context, exc)
            _end(context, exc, method)
        else:
            _observe(self, method, context, None)
            return reply

    return unary


class Malformed:
    """What a request that does not parse as its message becomes (see :func:`add_servicer`)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, bad UTF-8 in a string field, ...
            return Malformed(exc)

    return parse


class _Registration:
    """Stands in for a server while generated code registers a servicer: every handler gets a
    deserializer that cannot fail (grpc itself would answer a request that does not parse with
    INTERNAL; ours reach the servicer as :class:`Malformed`, refused as INVALID_ARGUMENT)."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come again, by name, through the call below

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        safe = {
            name: h._replace(request_deserializer=_tolerant(h.request_deserializer))
            for name, h in handlers.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, safe),)
        )  # noqa: E501
        self._server.add_registered_method_handlers(service, safe)


def add_servicer(add_to_server: Callable[[Any, Any], None], servicer: Any, server: Any) -> None:
    """``add_XServicer_to_server(servicer, server)`` with requests that do not parse refused as
    InvalidRequest (INVALID_ARGUMENT) by :func:`translate_errors`, not INTERNAL."""
    add_to_server(servicer, _Registration(server))


def translate_errors(cls: C) -> C:
    """Class decorator for servicers: every public RPC method translates domain errors."""
    for name, value in list(vars(cls).items()):
        if name[:1].isupper() and callable(value):
            setattr(cls, name, _wrap(value))
    return cls


def from_rpc_error(
    exc: grpc.RpcError, *, unavailable: type[errors.SonmError] = errors.Unavailable, peer: str = ""
) -> errors.SonmError:
    """The domain error a failed call stands for.

    A status without a ``sonm-error`` trailer (the transport failed, not the service) maps by
    code; UNAVAILABLE becomes ``unavailable`` (HubUnavailable, MinerUnavailable, …) with ``peer``
    named in the message.
    """
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or str(code)
    trailers = dict(exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else {}
    name = trailers.get(ERROR_TRAILER)
    if name in _BY_NAME:
        return _BY_NAME[name].from_message(details)
    if code == grpc.StatusCode.CANCELLED:
        # A unary call we did not cancel ends CANCELLED when its channel is closed under it:
        # the peer's session ended (a miner that went away mid-call).
        where = f"{peer} " if peer else "the peer "
        return unavailable(f"{where}went away during the call")
    if code == grpc.StatusCode.UNAVAILABLE:
        where = f"{peer} " if peer else ""
        return unavailable(f"{where}is not reachable: {_short(details)}".strip())
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        where = f" from {peer}" if peer else ""
        return errors.Timeout(f"no answer{where} before the deadline")
    return _BY_CODE.get(code, errors.SonmError)(details)


class ServerStream:
    """A server-streaming call as the typed clients hand it out: iterating yields
    ``convert(message)`` and raises domain errors; ``cancel()`` (from any thread) ends it
    quietly."""

    def __init__(
        self,
        call: grpc.Call,
        convert: Callable[[Any], Any],
        *,
        unavailable: type[errors.SonmError],
        peer: str,
    ) -> None:
        self._call = call
        self._convert = convert
        self._unavailable = unavailable
        self._peer = peer

    def cancel(self) -> None:
        self._call.cancel()

    def __iter__(self) -> Any:
        try:
            for msg in self._call:
                yield self._convert(msg)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(exc, unavailable=self._unavailable, peer=self._peer) from None


def _short(details: str) -> str:
    # grpc's connection errors are long; keep the part a user can act on.
    for marker in (
        "Connection refused",
        "No route to host",
        "Name or service not known",
        "Socket closed",
        "Connection reset",
        "Broken pipe",
        "failed to connect",
    ):
        if marker.lower() in details.lower():
            return marker.lower()
    return details.splitlines()[0][:200]
