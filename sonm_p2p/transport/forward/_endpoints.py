"""The two ends of a forward: the serving node (:func:`serve_forward`) and the user's local
listener or socket (:func:`open_forward`, :class:`Forward`). Runs on the node's trio thread,
through its core (``node.core``)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import trio

from sonm_p2p.auth import check_peer_grant
from sonm_p2p.errors import ForwardError, SonmError, Unavailable
from sonm_p2p.identity import node_id_from_peer_id
from sonm_p2p.transport._splice import abort, send, splice
from sonm_p2p.transport.core import NodeCore
from sonm_p2p.transport.forward._streams import finish, read_exact, read_reply
from sonm_p2p.transport.forward._udp import serve_udp_flows, serve_udp_stream
from sonm_p2p.transport.forward._wire import (
    FORWARD,
    ForwardOptions,
    ForwardRequest,
    ForwardStatus,
    Proto,
    decode_request,
    encode_reply,
    encode_request,
    error_for,
    request_length,
    status_for,
)
from sonm_p2p.transport.node import P2PNode

__all__ = ["Forward", "Resolver", "open_forward", "requester", "serve_forward"]

log = logging.getLogger("sonm_p2p.transport.forward")

#: ``resolve(peer_id, request) -> (host, port)`` of a serving node; raises to refuse.
Resolver = Callable[[str, ForwardRequest], tuple[str, int]]


def requester(peer_id: str, request: ForwardRequest, *, node_id: str) -> str:
    """The node ID a request to node ``node_id`` comes from: the client whose key granted the
    requesting peer (a ``sonmcli`` process, see ``auth.peer_grant``), else the node of the peer
    ID itself ("" when it has none). Raises Unauthenticated for a grant that does not hold."""
    if request.grant:
        return check_peer_grant(request.grant, peer_id=peer_id, audience=node_id)
    return node_id_from_peer_id(peer_id) or ""


def serve_forward(
    node: P2PNode, resolve: Resolver, *, options: ForwardOptions | None = None
) -> None:
    """Serve ``/sonm/forward/1.0.0`` on ``node``: each request goes where ``resolve`` says.

    ``resolve(peer_id, request)`` runs in a worker thread (it may block: a database, Docker)
    and returns ``(host, port)`` to connect to, or raises to refuse: a :class:`ForwardError`,
    or a SonmError mapped by class (TaskNotFound → unknown task, PermissionDenied → not
    allowed, other NotFound → port not published, see :func:`status_for`). The user gets the
    refusal's message.
    """
    o = options or ForwardOptions()

    async def handler(stream: Any) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        try:
            with trio.fail_after(o.header_timeout):
                length = request_length(await read_exact(stream, 2))
                request = decode_request(await read_exact(stream, length))
        except (ForwardError, trio.TooSlowError) as exc:
            reason = str(exc) or "no request in time"
            await finish(stream, encode_reply(ForwardStatus.BAD_REQUEST, reason), reset=False)
            return
        except Exception as exc:
            log.debug("forward from %s: %r", peer, exc)
            await finish(stream, reset=True)
            return
        try:
            host, port = await trio.to_thread.run_sync(resolve, peer, request)
        except Exception as exc:
            status, message = status_for(exc)
            if status is ForwardStatus.INTERNAL:
                log.warning("forward %s from %s: resolve failed: %r", request, peer, exc)
            else:
                log.info("forward %s from %s refused: %s", request, peer, message)
            await finish(stream, encode_reply(status, message))
            return
        if request.check and request.proto is Proto.UDP:
            await finish(stream, encode_reply(ForwardStatus.OK))
        elif request.proto is Proto.TCP:
            await _serve_tcp(stream, (host, port), request, o)
        else:
            await serve_udp_stream(stream, (host, port), request, o)

    node.core.handle(FORWARD, handler)


async def _serve_tcp(
    stream: Any, target: tuple[str, int], request: ForwardRequest, o: ForwardOptions
) -> None:
    try:
        with trio.fail_after(o.connect_timeout):
            tcp = await trio.open_tcp_stream(*target)
    except (OSError, trio.TooSlowError) as exc:
        why = "no answer" if isinstance(exc, trio.TooSlowError) else (exc.strerror or str(exc))
        message = f"{request.port}/tcp of task {request.task_id} is not reachable: {why}"
        await finish(stream, encode_reply(ForwardStatus.UNREACHABLE, message))
        return
    if request.check:  # the target answers: that is all a check asks
        await tcp.aclose()
        await finish(stream, encode_reply(ForwardStatus.OK))
        return
    try:
        await send(stream, encode_reply(ForwardStatus.OK))
    except Exception:
        await finish(stream, reset=True)
        await tcp.aclose()
        return
    await splice(stream, tcp)


class Forward:
    """A local endpoint of a forward to a peer's task port; close it when done (idempotent).

    local_addr: ``(host, port)`` to point a client at (TCP listener or UDP socket).
    connections: TCP connections (or UDP client addresses) served so far.
    errors: the last failures of individual connections (a refusal, a lost peer), newest last.
    """

    def __init__(self, core: NodeCore, peer_id: str, request: ForwardRequest) -> None:
        self._core = core
        self.peer_id = peer_id
        self.request = request
        self.local_addr: tuple[str, int] = ("", 0)
        self.connections = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._scope = trio.CancelScope()
        self.closed = False

    def failed(self, what: str) -> None:
        """Record (and log) the failure of one connection or flow."""
        log.warning("forward %s to %s…: %s", self.request, self.peer_id[:12], what)
        with self._lock:
            self.errors = [*self.errors[-19:], what]

    def close(self) -> None:
        """Stop the listener; connections and flows it carries end too."""
        if not self.closed:
            self.closed = True
            self._core.call_soon(self._scope.cancel)

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        host, port = self.local_addr
        state = "closed" if self.closed else f"{self.connections} served"
        local = f"{host}:{port}/{self.request.proto}"
        return f"<Forward {local} -> {self.request} on {self.peer_id[:12]}… {state}>"

    async def open_stream(self, o: ForwardOptions) -> Any:
        """A stream with the request written and the OK reply read (raises the refusal)."""
        try:
            stream = await self._core.open_stream(self.peer_id, FORWARD)
        except SonmError:
            raise
        except Exception as exc:
            raise Unavailable(f"cannot reach {self.peer_id[:16]}… for a forward: {exc}") from None
        try:
            with trio.fail_after(o.header_timeout):
                await send(stream, encode_request(self.request))
                status, message = await read_reply(stream)
        except BaseException:
            with trio.CancelScope(shield=True):
                await finish(stream, reset=True)
            raise
        if status is not ForwardStatus.OK:
            await finish(stream)
            raise error_for(status, message)
        return stream

    async def _serve_tcp_conn(self, tcp: trio.SocketStream, o: ForwardOptions) -> None:
        self.connections += 1
        try:
            stream = await self._core.open_stream(self.peer_id, FORWARD)
            await send(stream, encode_request(self.request))
        except Exception as exc:
            self.failed(f"cannot open a stream: {exc}")
            abort(tcp)
            await tcp.aclose()
            return

        async def expect_ok() -> None:
            with trio.fail_after(o.header_timeout):
                status, message = await read_reply(stream)
            if status is not ForwardStatus.OK:
                self.failed(message or status.name)
                raise error_for(status, message)

        await splice(stream, tcp, first=expect_ok)


def open_forward(
    node: P2PNode,
    peer_id: str,
    task_id: str,
    port: int,
    proto: str = "tcp",
    local: tuple[str, int] = ("127.0.0.1", 0),
    *,
    check: bool = True,
    grant: str = "",
    options: ForwardOptions | None = None,
) -> Forward:
    """Forward ``local`` to ``port``/``proto`` of task ``task_id`` on ``peer_id``.

    The peer must be reachable: connected, or its addresses given to ``node.connect_peer``
    (streams then redial it by the ladder). TCP: every connection to ``local`` is one stream;
    UDP: datagrams from each client address go on one stream and replies come back to it.
    With ``check`` (default) the request is asked once first, so a refusal raises here:
    TaskNotFound, PermissionDenied, NotFound (port not published), InvalidRequest,
    Unavailable (target or peer unreachable), DialError. ``grant``: whose key this node acts
    for (``auth.peer_grant``), sent with every request.
    """
    request = ForwardRequest(task_id, port, proto, grant=grant)
    return node.run(
        _open_forward, node.core, peer_id, request, local, check, options or ForwardOptions()
    )


async def _open_forward(
    core: NodeCore,
    peer_id: str,
    request: ForwardRequest,
    local: tuple[str, int],
    check: bool,
    o: ForwardOptions,
) -> Forward:
    forward = Forward(core, peer_id, request)
    if check:
        probe = Forward(core, peer_id, replace(request, check=True))
        await finish(await probe.open_stream(o))
    host, port = local
    if request.proto is Proto.TCP:
        listeners = await trio.open_tcp_listeners(port, host=host)
        forward.local_addr = listeners[0].socket.getsockname()[:2]

        async def serve() -> None:
            with forward._scope:
                try:
                    await trio.serve_listeners(
                        lambda tcp: forward._serve_tcp_conn(tcp, o), listeners
                    )
                finally:
                    for listener in listeners:
                        with trio.CancelScope(shield=True):
                            await listener.aclose()

    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        try:
            await sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        forward.local_addr = sock.getsockname()[:2]

        async def serve() -> None:
            with forward._scope:
                try:
                    await serve_udp_flows(forward, sock, o)
                finally:
                    sock.close()

    core.spawn(serve)
    return forward
