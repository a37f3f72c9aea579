"""The STUN responder's I/O: a trio task or its own thread."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import trio

from sonm_p2p.transport.stun._codec import (
    _MAX_DATAGRAM,
    SOFTWARE,
    Address,
    ResponderAddresses,
    _family,
    _norm,
    answer,
)

# --- responder I/O ---------------------------------------------------------------------------


class StunResponder:
    """A STUN Binding responder on UDP (the hub runs one on 3478/udp and 3479/udp).

    Either ``await responder.serve()`` in a trio nursery, or ``start()`` / ``close()`` to run it on
    its own thread. Sockets are bound by ``bind()`` (called by both), so a caller can bind inside a
    particular network namespace first; port 0 asks for ephemeral ports (see ``addresses``).
    """

    def __init__(self, addresses: ResponderAddresses, *, software: str | None = SOFTWARE) -> None:
        self.addresses = addresses
        self.software = software
        self.answered = 0
        self._socks: dict[Address, socket.socket] = {}
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        where = " ".join(f"{ip}:{port}" for ip, port in self.addresses.local_addresses)
        state = "running" if self._thread or self._socks else "idle"
        return f"<StunResponder {where} {state} answered={self.answered}>"

    def bind(self) -> ResponderAddresses:
        """Bind the listening sockets (idempotent); returns the addresses with real ports.

        OSError when an address cannot be bound (nothing stays bound then).
        """
        if self._socks:
            return self.addresses
        family = _family(self.addresses.primary[0])
        socks: dict[Address, socket.socket] = {}
        with contextlib.ExitStack() as opened:

            def bind_one(addr: Address) -> Address:
                s = opened.enter_context(socket.socket(family, socket.SOCK_DGRAM))
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(addr)
                bound = _norm(s.getsockname())
                socks[bound] = s
                return bound

            primary, alternate, second = bind_one(self.addresses.primary), None, None
            if self.addresses.alternate is not None:
                ip2, port2 = _norm(self.addresses.alternate)
                alternate = (ip2, bind_one((primary[0], port2))[1])
                bind_one((ip2, primary[1]))
                bind_one(alternate)
            elif self.addresses.second_port is not None:
                second = bind_one((primary[0], self.addresses.second_port))[1]
            opened.pop_all()  # all bound: keep them open
        self.addresses = ResponderAddresses(primary, alternate, second)
        self._socks = socks
        return self.addresses

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Answer requests until cancelled; ``task_status.started(addresses)`` once listening."""
        self.bind()
        tsocks = {addr: trio.socket.from_stdlib_socket(s) for addr, s in self._socks.items()}
        try:
            async with trio.open_nursery() as nursery:
                for local, tsock in tsocks.items():
                    nursery.start_soon(self._answer_on, local, tsock, tsocks)
                task_status.started(self.addresses)
        finally:
            for tsock in tsocks.values():
                tsock.close()
            self._socks = {}

    async def _answer_on(self, local: Address, tsock: Any, tsocks: dict[Address, Any]) -> None:
        while True:
            try:
                data, client = await tsock.recvfrom(_MAX_DATAGRAM)
            except OSError:  # an ICMP error surfacing on the socket
                continue
            reply = answer(data, client, local, self.addresses, software=self.software)
            if reply is None:
                continue
            try:
                await tsocks[reply.source].sendto(reply.data, reply.destination)
                self.answered += 1
            except OSError:
                pass  # unreachable client: UDP has no one to tell

    def start(self) -> ResponderAddresses:
        """Run ``serve()`` on a thread of its own; returns once listening (idempotent)."""
        if self._thread is None:
            self.bind()  # binding errors surface here, in the caller's thread
            started = threading.Event()
            self._scope = trio.CancelScope()

            async def main() -> None:
                self._token = trio.lowlevel.current_trio_token()
                with self._scope:
                    started.set()
                    await self.serve()

            self._thread = threading.Thread(target=trio.run, args=(main,), name="stun", daemon=True)
            self._thread.start()
            started.wait()
        return self.addresses

    def close(self) -> None:
        """Stop the thread started by ``start()`` and close the sockets (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            thread.join()
        for s in self._socks.values():
            s.close()
        self._socks = {}
