"""``/sonm/birthday/1.0.0``: coordinating a birthday punch over the relayed connection (trio).

The policy is ``birthday.py``, the packets ``_sweep.py``, the message format
``_birthday_wire.py``. One stream on the relayed connection,
JSON lines (at most :data:`MAX_LINE` bytes each), the side that drives upgrades (the one that
dialled) is the *initiator*:

1. initiator -> responder ``hello``: its NAT type, public IP (as the relay saw it), listen port;
2. responder -> initiator ``hello`` (the same of its own), or ``refuse`` with a reason (turned
   off, rate-limited, NAT types that do not call for it); the initiator measures the RTT;
3. each side sends one SYN to an unused port of the other's public IP: a RST back means that
   NAT *rejects* unsolicited inbound, silence that it drops; responder -> initiator ``probed``
   with what it found about the initiator's NAT;
4. initiator -> responder ``plan``: who sends first (the side behind a rejecting NAT), ``K``,
   ``P``, rate, deadline, RTT; or no plan (both reject: the relay is kept at once);
5. the first mover sends its SYNs (the hard side: ``K`` connects to the easy side's mapped
   address; the easy side: ``P`` connects from its listen port to sampled ports of the hard
   side's IP), then ``ready``; the second mover starts on ``ready``, so the first mover's SYNs
   are out before the second's arrive, whatever the clocks.

Both ends of a simultaneous open think they connected, so the coordination fixes the Noise roles:
the initiator is the Noise initiator of the new connection, on the first TCP connection that
completes on its side (the others are closed); the responder upgrades every connection that
completes on its side as inbound, and keeps the one whose handshake succeeds. Then streams move to
the direct connection as after DCUtR (``_dcutr.retire_relayed``).
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import trio

from sonm_p2p.transport._birthday_wire import (
    MAX_LINE,
    PROTOCOL,
    decode,
    encode,
    no_plan,
    plan_message,
)
from sonm_p2p.transport._conn import connections, is_relayed, reason
from sonm_p2p.transport._dcutr import PROTECT_TAG, listen_sources, retire_relayed
from sonm_p2p.transport._splice import send
from sonm_p2p.transport._sweep import Sweep, spare_descriptors
from sonm_p2p.transport.birthday import (
    BirthdayOptions,
    Plan,
    RateLimit,
    Side,
    eligible,
    plan,
    sample_ports,
    side_of,
    sweepable,
)

__all__ = [
    "MAX_LINE",
    "PROTOCOL",
    "BirthdayPunch",
    "Outcome",
    "decode",
    "encode",
]

log = logging.getLogger(__name__)

#: Seconds to wait for each coordination message (the relay may be slow under load).
MESSAGE_TIMEOUT = 10.0
#: Outcomes kept (``BirthdayPunch.results``), one per peer, oldest dropped first.
MAX_RESULTS = 1024
#: Seconds a Noise + Yamux upgrade of a punched connection may take.
UPGRADE_TIMEOUT = 5.0


class _Lines:
    """Message lines read from a libp2p stream."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf = b""

    async def read(self, *expected: str) -> dict[str, Any]:
        with trio.fail_after(MESSAGE_TIMEOUT):
            while b"\n" not in self.buf:
                if len(self.buf) > MAX_LINE:
                    raise ValueError("message too long")
                chunk = await self.stream.read(MAX_LINE)
                if not chunk:
                    raise EOFError("birthday stream closed")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        msg = decode(line)
        if expected and msg["type"] not in expected:
            raise ValueError(f"expected {'/'.join(expected)}, got {msg['type']}")
        return msg


@dataclass
class Outcome:
    """One birthday punch as one side saw it (``ok``: a direct connection now carries the peer).

    tried: the sweep ran (False: refused, ineligible, both NATs reject, or rate-limited; then
    ``reason`` says why). sockets / packets: what this side spent (SYNs estimated).
    """

    ok: bool
    tried: bool
    reason: str = ""
    side: str | None = None
    first: str | None = None
    mappings: int = 0
    probes: int = 0
    sockets: int = 0
    packets: int = 0
    connected: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _public_ipv4(host: Any) -> str | None:
    """Our IPv4 address as peers (the relay, by identify) see it; our listen IP when none did."""
    manager = getattr(host, "_observed_addr_manager", None)
    try:
        for addr in manager.addrs(min_observers=1):
            parts = str(addr).split("/")
            if len(parts) > 2 and parts[1] == "ip4" and "p2p-circuit" not in str(addr):
                return parts[2]
    except Exception:
        pass
    source = listen_sources(host).get(4)
    if source is not None and source[0] != "0.0.0.0":
        return source[0]
    return None


def _probe_timeout(rtt: float) -> float:
    # A RST comes back within one direct RTT (shorter than the relayed one measured); silence is
    # only told apart by waiting, and both sides wait at once, on every punch's critical path:
    # 1 s here made a punch take ~0.5 s longer than 0.5 s does (bench_birthday, 60/60 either way).
    return min(2.0, max(0.5, 4 * rtt))


async def _rejects(ip: str, port: int, timeout: float) -> bool | None:
    """Whether the NAT at ``ip`` answers a SYN to ``port`` (nothing mapped there) with a RST;
    None when the probe itself failed."""
    probe = Sweep()
    with trio.move_on_after(timeout):
        await probe.run([(ip, port)])
    while True:
        try:
            probe.receive().receive_nowait().socket.close()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    if probe.refused:
        return True
    if probe.failed:
        return None
    return False


def _probe_port(rng: random.Random, avoid: int) -> int:
    while True:
        port = rng.randint(33000, 60999)
        if port != avoid:
            return port


class BirthdayPunch:
    """The birthday punch of one node: serves :data:`PROTOCOL` (:meth:`handle`) and starts one
    towards a peer (:meth:`initiate`).

    local_nat: this node's NAT type now (``stun.NatType`` value or None).
    spawn: runs a task in the node's nursery (the relayed leg's retirement).
    linger: seconds the relayed leg may keep its streams after a punch (``relay_linger``).
    rng: where sampled ports and probe ports come from (seeded in tests).
    Attributes: ``punched`` (the direct connections made here), ``results`` (the last
    :class:`Outcome` per peer, for diagnostics and the benchmark).
    """

    def __init__(
        self,
        host: Any,
        *,
        options: BirthdayOptions,
        local_nat: Callable[[], str | None],
        spawn: Callable[..., None],
        linger: float,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.options = options
        self.local_nat = local_nat
        self.spawn = spawn
        self.linger = linger
        self.limit = RateLimit(options.min_interval)
        self.ip_limit = RateLimit(options.ip_interval)
        self.rng = rng or random.Random()
        self.punched: weakref.WeakSet[Any] = weakref.WeakSet()
        self.results: dict[str, Outcome] = {}

    def __repr__(self) -> str:
        return f"<BirthdayPunch peers={len(self.results)} limited={len(self.limit)}>"

    def _hello(self) -> bytes:
        source = listen_sources(self.host).get(4)
        return encode(
            "hello",
            nat=self.local_nat(),
            ip=_public_ipv4(self.host) or "0.0.0.0",
            port=source[1] if source else 1,
        )

    # -- the initiator -----------------------------------------------------------------------

    async def initiate(self, peer_id: str) -> Outcome:
        """Coordinate and run one punch with ``peer_id`` (reached over a relay now)."""
        from libp2p.peer.id import ID

        began = time.perf_counter()
        if not self.limit.allow(peer_id, trio.current_time()):
            return self._done(peer_id, Outcome(False, False, "rate-limited"), began)
        pid = ID.from_base58(peer_id)
        try:
            with trio.fail_after(MESSAGE_TIMEOUT):
                stream = await self.host.new_stream(pid, [PROTOCOL])
        except Exception as exc:
            return self._done(peer_id, Outcome(False, False, f"no stream: {reason(exc)}"), began)
        lines = _Lines(stream)
        try:
            sent = trio.current_time()
            await send(stream, self._hello())
            theirs = await lines.read("hello", "refuse")
            rtt = trio.current_time() - sent
            if theirs["type"] == "refuse":
                return self._done(peer_id, Outcome(False, False, theirs["reason"]), began)
            local, remote = self.local_nat(), theirs["nat"]
            mine = side_of(local)
            why = ""
            if not eligible(local, remote) or mine is None:
                why = f"NAT types {local} and {remote} do not call for it"
            elif not sweepable(theirs["ip"]):
                why = f"the peer's address {theirs['ip']} is not a public IPv4 address"
            elif not self.ip_limit.allow(theirs["ip"], trio.current_time()):
                why = f"rate-limited towards {theirs['ip']}"
            if why:
                await send(stream, no_plan(why))
                return self._done(peer_id, Outcome(False, False, why), began)
            avoid = theirs["port"] if side_of(remote) is Side.EASY else 0
            port = _probe_port(self.rng, avoid)
            # The peer probes our NAT meanwhile and tells what it found.
            async with trio.open_nursery() as both:
                found: dict[str, bool | None] = {}

                async def probe() -> None:
                    found["theirs"] = await _rejects(theirs["ip"], port, _probe_timeout(rtt))

                both.start_soon(probe)
                probed = await lines.read("probed")
            ours, their = probed["rejects"], found.get("theirs")
            hard_rejects, easy_rejects = (ours, their) if mine is Side.HARD else (their, ours)
            chosen = plan(
                self.options,
                local_nat=local,
                remote_nat=remote,
                hard_rejects=hard_rejects,
                easy_rejects=easy_rejects,
            )
            await send(stream, plan_message(chosen, rtt))
            if not chosen.go:
                return self._done(peer_id, Outcome(False, False, chosen.reason), began)
            outcome = await self._punch(
                stream, lines, pid, chosen, mine, theirs["ip"], theirs["port"], rtt, True
            )
            return self._done(peer_id, outcome, began)
        except Exception as exc:
            return self._done(peer_id, Outcome(False, False, f"coordination: {reason(exc)}"), began)
        finally:
            await _close(stream)

    # -- the responder -----------------------------------------------------------------------

    async def handle(self, stream: Any) -> None:
        """Serve one coordination (the peer dialled us over a relay)."""
        began = time.perf_counter()
        peer_id = stream.muxed_conn.peer_id.to_base58()
        pid = stream.muxed_conn.peer_id
        lines = _Lines(stream)
        try:
            theirs = await lines.read("hello")
            local, remote = self.local_nat(), theirs["nat"]
            mine = side_of(local)
            refusal = ""
            if not eligible(local, remote) or mine is None:
                refusal = f"NAT types {remote} and {local} do not call for it"
            elif not sweepable(theirs["ip"]):
                refusal = f"the peer's address {theirs['ip']} is not a public IPv4 address"
            elif not self.limit.allow(peer_id, trio.current_time()):
                refusal = "rate-limited"
            elif not self.ip_limit.allow(theirs["ip"], trio.current_time()):
                refusal = f"rate-limited towards {theirs['ip']}"
            if refusal:
                await send(stream, encode("refuse", reason=refusal))
                self._done(peer_id, Outcome(False, False, refusal), began)
                return
            await send(stream, self._hello())
            avoid = theirs["port"] if side_of(remote) is Side.EASY else 0
            rejects = await _rejects(
                theirs["ip"], _probe_port(self.rng, avoid), _probe_timeout(0.0)
            )
            await send(stream, encode("probed", rejects=rejects))
            msg = await lines.read("plan")
            if msg["first"] is None:
                self._done(peer_id, Outcome(False, False, msg["reason"]), began)
                return
            chosen = self._bounded(msg)
            outcome = await self._punch(
                stream, lines, pid, chosen, mine, theirs["ip"], theirs["port"], chosen.rtt, False
            )
            self._done(peer_id, outcome, began)
        except Exception as exc:
            self._done(peer_id, Outcome(False, False, f"coordination: {reason(exc)}"), began)
        finally:
            await _close(stream)

    def _bounded(self, msg: dict[str, Any]) -> _Agreed:
        """The initiator's plan within our own budget: a peer cannot make us send more, faster
        or for longer than our options allow."""
        o = self.options
        return _Agreed(
            Side(msg["first"]),
            max(0, min(msg["k"], o.mappings)),
            max(0, min(msg["p"], o.probes)),
            max(1.0, min(msg["rate"], o.rate)),
            max(0.0, min(msg["deadline"], o.deadline)),
            rtt=max(0.0, min(msg["rtt"], 2.0)),
        )

    # -- the punch ---------------------------------------------------------------------------

    async def _punch(
        self,
        stream: Any,
        lines: _Lines,
        pid: Any,
        chosen: Plan,
        side: Side,
        peer_ip: str,
        peer_port: int,
        rtt: float,
        noise_initiator: bool,
    ) -> Outcome:
        spare = spare_descriptors()
        if side is Side.EASY:
            source = listen_sources(self.host).get(4)
            if source is None:
                raise ValueError("no IPv4 listen port to sweep from")
            ports = sample_ports(self.rng, min(chosen.probes, spare))
            run = partial(Sweep.run, targets=[(peer_ip, p) for p in ports], source=source)
            rate: float | None = chosen.rate
        else:
            run = partial(Sweep.run, targets=[(peer_ip, peer_port)] * min(chosen.mappings, spare))
            rate = None
        first = chosen.first is side
        sweep = Sweep()
        network = self.host.get_network()
        network.protect(pid, PROTECT_TAG)
        ok = False
        try:
            step = self._as_initiator if noise_initiator else self._as_responder
            ok = await step(sweep, run, rate, first, stream, lines, chosen, rtt, pid)
        finally:
            _drain(sweep)
            if ok:
                for conn in connections(self.host, pid):
                    if not is_relayed(conn):
                        self.punched.add(conn)
                self.spawn(retire_relayed, self.host, pid, self.linger)
            else:
                network.unprotect(pid, PROTECT_TAG)
        return Outcome(
            ok,
            True,
            "" if ok else "no connection within the deadline",
            str(side),
            str(chosen.first),
            chosen.mappings,
            chosen.probes,
            sweep.sockets,
            sweep.packets,
            sweep.connected_count,
        )

    async def _start_sending(
        self,
        nursery: trio.Nursery,
        sweep: Sweep,
        run: Any,
        rate: float | None,
        first: bool,
        stream: Any,
        lines: _Lines,
        chosen: Plan,
        rtt: float,
    ) -> float:
        """Send our SYNs in turn; the trio time at which the punch is given up."""
        if first:
            await nursery.start(partial(run, sweep, rate=rate))
            await send(stream, encode("ready"))
            return trio.current_time() + chosen.deadline + rtt
        await lines.read("ready")
        nursery.start_soon(partial(run, sweep, rate=rate))
        return trio.current_time() + chosen.deadline

    async def _as_initiator(
        self, sweep: Sweep, run: Any, rate: float | None, first: bool, stream: Any,
        lines: _Lines, chosen: Plan, rtt: float, pid: Any,
    ) -> bool:  # fmt: skip
        network = self.host.get_network()
        got: trio.SocketStream | None = None
        with trio.CancelScope() as window:
            async with trio.open_nursery() as nursery:
                end = await self._start_sending(
                    nursery, sweep, run, rate, first, stream, lines, chosen, rtt
                )
                window.deadline = end
                got = await sweep.receive().receive()
                nursery.cancel_scope.cancel()  # the other sockets close: their far ends fail
        if got is None:
            return False
        raw = _raw(got, True)
        try:
            with trio.fail_after(UPGRADE_TIMEOUT):
                await network.upgrade_outbound_raw_conn(raw, pid)
        except Exception as exc:
            log.debug("birthday upgrade: %s", reason(exc))
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await raw.close()
            return False
        return _direct(self.host, pid)

    async def _as_responder(
        self, sweep: Sweep, run: Any, rate: float | None, first: bool, stream: Any,
        lines: _Lines, chosen: Plan, rtt: float, pid: Any,
    ) -> bool:  # fmt: skip
        import multiaddr

        network = self.host.get_network()
        won = False

        async def inbound(got: trio.SocketStream, upgrades: trio.Nursery) -> None:
            nonlocal won
            far = got.socket.getpeername()
            raw = _raw(got, False)
            try:
                with trio.fail_after(UPGRADE_TIMEOUT):
                    addr = multiaddr.Multiaddr(f"/ip4/{far[0]}/tcp/{far[1]}/p2p/{pid}")
                    muxed = await network.upgrade_inbound_raw_conn(raw, addr)
                if getattr(muxed, "peer_id", None) != pid:
                    await muxed.close()
                    return
            except Exception as exc:
                log.debug("birthday inbound upgrade: %s", reason(exc))
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await raw.close()
                return
            won = True
            upgrades.cancel_scope.cancel()

        async with trio.open_nursery() as upgrades:
            with trio.CancelScope() as window:
                async with trio.open_nursery() as nursery:
                    end = await self._start_sending(
                        nursery, sweep, run, rate, first, stream, lines, chosen, rtt
                    )
                    window.deadline = end
                    async for got in sweep.receive():
                        upgrades.start_soon(inbound, got, upgrades)
        return won and _direct(self.host, pid)

    def _done(self, peer_id: str, outcome: Outcome, began: float) -> Outcome:
        outcome.seconds = time.perf_counter() - began
        self.results.pop(peer_id, None)
        self.results[peer_id] = outcome  # oldest first; a peer that left is dropped by PeerPaths,
        while len(self.results) > MAX_RESULTS:  # one that left mid-punch by this bound
            del self.results[next(iter(self.results))]
        if outcome.tried:
            log.info(
                "birthday punch with %s: %s in %.2fs (%s side, %s first, K=%d P=%d; %d sockets, "
                "~%d SYNs, %d connected)",
                peer_id,
                "direct" if outcome.ok else "failed",
                outcome.seconds,
                outcome.side,
                outcome.first,
                outcome.mappings,
                outcome.probes,
                outcome.sockets,
                outcome.packets,
                outcome.connected,
            )
        else:
            log.info("birthday punch with %s: not tried (%s)", peer_id, outcome.reason)
        return outcome


@dataclass(frozen=True)
class _Agreed(Plan):
    """A plan as the responder runs it, with the RTT the initiator measured."""

    rtt: float = 0.0


def _raw(got: trio.SocketStream, initiator: bool) -> Any:
    from libp2p.io.trio import TrioTCPStream
    from libp2p.network.connection.raw_connection import RawConnection

    return RawConnection(TrioTCPStream(got), initiator)


def _direct(host: Any, pid: Any) -> bool:
    return any(not is_relayed(c) for c in connections(host, pid))


def _drain(sweep: Sweep) -> None:
    """Close the connections nobody took."""
    while True:
        try:
            sweep.receive().receive_nowait().socket.close()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return


async def _close(stream: Any) -> None:
    try:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.close()
    except Exception:
        pass
