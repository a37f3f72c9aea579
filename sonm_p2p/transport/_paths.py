"""Executing the dial ladder, upgrading relayed paths, and what path a peer is on (trio thread).

The policy (what to try, in which order, when to hole-punch) is ``dial_ladder.py``; the hole
punch itself is ``_dcutr.py``; this module does the rest of the I/O for the node's core
(``core.py``). What it learns per peer is forgotten when the peer goes away (:class:`Departures`).
"""

from __future__ import annotations

import logging
import secrets
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from sonm_p2p.errors import DialError
from sonm_p2p.transport._conn import connections, dial, is_relayed, peer_address, reason
from sonm_p2p.transport._splice import send
from sonm_p2p.transport.addrs import is_circuit, split_circuit, tcp_multiaddr
from sonm_p2p.transport.birthday import worth_asking
from sonm_p2p.transport.dial_ladder import (
    AttemptKind,
    LadderOptions,
    PathKind,
    UpgradePolicy,
    UpgradeState,
    plan,
)
from sonm_p2p.transport.relay import dial_relayed

__all__ = [
    "Departures",
    "Path",
    "PeerPaths",
    "best_connection",
    "connections",
    "describe",
    "ping",
]

log = logging.getLogger(__name__)

PING = "/ipfs/ping/1.0.0"


@dataclass(frozen=True)
class Path:
    """The connection a peer's new streams go on.

    kind: direct, relayed or hole-punched.
    remote: the far end: ``/ip4/…/tcp/…`` for a direct or hole-punched path, the circuit address
        ``/p2p/<relay>/p2p-circuit/p2p/<peer>`` for a relayed one.
    rtt: seconds of one round trip on it (libp2p ping), None when not measured.
    relay_id: the relay's peer ID on a relayed path.
    """

    peer_id: str
    kind: PathKind
    remote: str
    rtt: float | None = None
    relay_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "kind": str(self.kind),
            "remote": self.remote,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "relay_id": self.relay_id,
        }

    def __str__(self) -> str:
        rtt = "" if self.rtt is None else f" rtt={self.rtt * 1000:.1f}ms"
        return f"{self.kind} {self.remote}{rtt}"


def best_connection(host: Any, peer: Any) -> Any | None:
    """The connection new streams to ``peer`` go on: direct first, then the busiest."""
    conns = connections(host, peer)
    if not conns:
        return None
    return max(conns, key=lambda c: (not is_relayed(c), len(c.get_streams())))


def describe(conn: Any, peer_id: str, punched: weakref.WeakSet[Any]) -> Path:
    """The :class:`Path` (without RTT) of one connection."""
    if is_relayed(conn):
        remote = str(conn.get_transport_addresses()[0])
        circuit = split_circuit(remote)
        return Path(peer_id, PathKind.RELAYED, remote, None, circuit.relay_id if circuit else "")
    kind = PathKind.HOLE_PUNCHED if conn in punched else PathKind.DIRECT
    far = peer_address(conn)
    return Path(peer_id, kind, tcp_multiaddr(*far) if far else "")


async def ping(host: Any, peer: Any, *, rounds: int = 2, timeout: float = 5.0) -> float:
    """Best of ``rounds`` libp2p pings (seconds) on the connection new streams use."""
    best = float("inf")
    with trio.fail_after(timeout):
        stream = await host.new_stream(peer, [PING])
        try:
            for _ in range(rounds):
                payload = secrets.token_bytes(32)
                began = time.perf_counter()
                await send(stream, payload)
                got = b""
                while len(got) < 32:
                    chunk = await stream.read(32 - len(got))
                    if not chunk:
                        raise EOFError("ping stream closed")
                    got += chunk
                best = min(best, time.perf_counter() - began)
                if got != payload:
                    raise ValueError("ping payload mismatch")
        finally:
            try:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.close()
            except Exception:
                pass
    return best


class Departures:
    """When each peer's last connection closed, and so when to forget what was learned about it
    (pure: time comes in as ``now``).

    forget_after: seconds a peer stays remembered after it left (its addresses are what redials
        it when a stream is wanted again); 0 forgets at once.
    """

    def __init__(self, forget_after: float) -> None:
        self.forget_after = forget_after
        self._since: dict[str, float] = {}  # peer -> when it left, oldest first

    def left(self, peer_id: str, now: float) -> None:
        self._since.pop(peer_id, None)
        self._since[peer_id] = now

    def returned(self, peer_id: str) -> None:
        self._since.pop(peer_id, None)

    def expire(self, now: float) -> list[str]:
        """Peers gone for ``forget_after`` seconds or more; they are no longer tracked."""
        out: list[str] = []
        for peer_id, since in list(self._since.items()):
            if now - since < self.forget_after:
                break  # insertion order is departure order
            del self._since[peer_id]
            out.append(peer_id)
        return out

    def __len__(self) -> int:
        return len(self._since)


class PeerPaths:
    """Reaching peers by the ladder, upgrading relayed paths, and reporting paths (trio side).

    known: addresses learned for each peer (``connect``), used again to redial it when a stream is
        wanted and the connection is gone.
    Per-peer state is pruned when the peer goes away (:meth:`peer_left`, called on the host's
    disconnect notifications): the upgrade state, last punch and lock at once; the addresses,
    NAT type and the addresses it sent in DCUtR exchanges (what tells its stale mappings apart
    when it comes back) ``forget_after`` seconds later, unless it came back. py-libp2p's DCUtR
    prunes its own per-peer tables on disconnect.
    """

    def __init__(
        self,
        host: Any,
        nursery: trio.Nursery,
        *,
        dcutr: Any | None,
        ladder: LadderOptions,
        policy: UpgradePolicy,
        local_ips: Callable[[], list[str]],
        forget_after: float = 600.0,
        birthday: Any | None = None,
    ) -> None:
        self.host = host
        self.dcutr = dcutr
        #: The birthday punch (``_birthday.BirthdayPunch``), None when turned off.
        self.birthday = birthday
        #: Peers whose relayed connection had its birthday punch (one per connection).
        self.birthday_tried: set[str] = set()
        self.ladder = ladder
        self.policy = policy
        self.nat_type: str | None = None
        self.known: dict[str, list[str]] = {}
        self.remote_nat: dict[str, str | None] = {}
        self.upgrades: dict[str, UpgradeState] = {}
        #: (succeeded, seconds) of the last hole punch per peer.
        self.last_upgrade: dict[str, tuple[bool, float]] = {}
        self._nursery = nursery
        self._local_ips = local_ips
        self._locks: dict[str, trio.Lock] = {}
        self._driving: dict[str, trio.Event] = {}
        self.departures = Departures(forget_after)

    def tracked(self) -> dict[str, int]:
        """How many peers each per-peer table holds (for tests and diagnostics)."""
        sent = self.dcutr.sent if self.dcutr is not None else ()
        return {
            "known": len(self.known),
            "remote_nat": len(self.remote_nat),
            "upgrades": len(self.upgrades),
            "last_upgrade": len(self.last_upgrade),
            "locks": len(self._locks),
            "driving": len(self._driving),
            "departures": len(self.departures),
            "punch_exchanges": len(sent),
            "birthday_tried": len(self.birthday_tried),
            "birthday_results": len(self.birthday.results) if self.birthday is not None else 0,
        }

    def peer_left(self, peer_id: str, now: float) -> None:
        """A connection to ``peer_id`` closed: when it was its last, forget the peer's transient
        state now and its addresses later (:class:`Departures`)."""
        if _safe_connected(self.host, peer_id):
            return
        self.upgrades.pop(peer_id, None)
        self.last_upgrade.pop(peer_id, None)
        self.birthday_tried.discard(peer_id)
        if self.birthday is not None:
            self.birthday.results.pop(peer_id, None)
        lock = self._locks.get(peer_id)
        if lock is not None and not lock.locked() and not lock.statistics().tasks_waiting:
            del self._locks[peer_id]
        sent = self.dcutr.sent if self.dcutr is not None else ()
        if peer_id in self.known or peer_id in self.remote_nat or peer_id in sent:
            self.departures.left(peer_id, now)
        self.prune(now)

    def peer_joined(self, peer_id: str) -> None:
        self.departures.returned(peer_id)

    def prune(self, now: float) -> list[str]:
        """Forget the addresses and NAT type of peers gone for long enough; returns them."""
        gone = self.departures.expire(now)
        for peer_id in gone:
            if _safe_connected(self.host, peer_id):
                continue
            self.known.pop(peer_id, None)
            self.remote_nat.pop(peer_id, None)
            if self.dcutr is not None:
                self.dcutr.sent.forget(peer_id)
        return gone

    def watch(self) -> Any:
        """A py-libp2p network notifee that reports connections opening and closing here;
        register it with ``network.register_notifee``."""
        from libp2p.abc import INotifee

        paths = self

        class _Watch(INotifee):
            async def connected(self, network: Any, conn: Any) -> None:
                paths.peer_joined(conn.muxed_conn.peer_id.to_base58())

            async def disconnected(self, network: Any, conn: Any) -> None:
                paths.peer_left(conn.muxed_conn.peer_id.to_base58(), trio.current_time())

            async def opened_stream(self, network: Any, stream: Any) -> None:
                pass

            async def closed_stream(self, network: Any, stream: Any) -> None:
                pass

            async def listen(self, network: Any, multiaddr: Any) -> None:
                pass

            async def listen_close(self, network: Any, multiaddr: Any) -> None:
                pass

        return _Watch()

    def _punched(self) -> weakref.WeakSet[Any]:
        punched: weakref.WeakSet[Any] = weakref.WeakSet()
        if self.dcutr is not None:
            punched |= self.dcutr.punched
        if self.birthday is not None:
            punched |= self.birthday.punched
        return punched

    def path(self, peer_id: str) -> Path | None:
        from libp2p.peer.id import ID

        conn = best_connection(self.host, ID.from_base58(peer_id))
        return None if conn is None else describe(conn, peer_id, self._punched())

    async def measured_path(self, peer_id: str) -> Path | None:
        from libp2p.peer.id import ID

        path = self.path(peer_id)
        if path is None:
            return None
        try:
            rtt = await ping(self.host, ID.from_base58(peer_id))
        except Exception as exc:
            log.debug("ping %s: %r", peer_id, exc)
            return path
        now = self.path(peer_id) or path
        return Path(now.peer_id, now.kind, now.remote, rtt, now.relay_id)

    def remember(self, peer_id: str, addrs: Sequence[str]) -> None:
        known = self.known.setdefault(peer_id, [])
        for addr in addrs:
            if addr not in known:
                known.append(addr)

    async def connect(
        self,
        peer_id: str,
        addrs: Sequence[str],
        *,
        remote_nat: str | None = None,
        upgrade_wait: float = 0.0,
    ) -> Path:
        """Reach ``peer_id`` by the ladder (unless connected); see ``P2PNode.connect_peer``."""
        from libp2p.peer.id import ID

        pid = ID.from_base58(peer_id)
        self.prune(trio.current_time())
        self.remember(peer_id, addrs)
        if remote_nat is not None:
            self.remote_nat[peer_id] = remote_nat
        lock = self._locks.setdefault(peer_id, trio.Lock())
        try:
            async with lock:
                conn = best_connection(self.host, pid)
                if conn is None:
                    conn = await self._climb(peer_id, pid)
        except BaseException:
            self.peer_left(peer_id, trio.current_time())  # never reached: forget it in time
            raise
        path = describe(conn, peer_id, self._punched())
        if path.kind is PathKind.RELAYED:
            done = self._drive_upgrades(peer_id)
            if self._birthday_due(peer_id) and upgrade_wait > 0:
                # its coordination takes a few round trips over the relay before the sweep
                upgrade_wait += self.birthday.options.deadline
            if done is not None and upgrade_wait > 0:
                with trio.move_on_after(upgrade_wait):
                    await done.wait()
            path = self.path(peer_id) or path
        return path

    async def _climb(self, peer_id: str, pid: Any) -> Any:
        import multiaddr
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        addrs = self.known.get(peer_id, [])
        relays = {c.relay_id for a in addrs if is_circuit(a) and (c := split_circuit(a))}
        connected = [r for r in relays if _safe_connected(self.host, r)]
        attempts = plan(
            peer_id,
            addrs,
            local_ips=self._local_ips(),
            connected_relays=connected,
            options=self.ladder,
        )
        if not attempts:
            raise DialError(f"no usable address for {peer_id[:16]}… (known: {addrs or 'none'})")
        failures: list[str] = []
        network = self.host.get_network()
        for attempt in attempts:
            try:
                with trio.fail_after(attempt.timeout):
                    if attempt.kind is AttemptKind.DIRECT:
                        return await network.dial_addr(multiaddr.Multiaddr(attempt.addr), pid)
                    relay = ID.from_base58(attempt.relay_id or "")
                    if not _safe_connected(self.host, attempt.relay_id or ""):
                        maddrs = [multiaddr.Multiaddr(attempt.addr)] if attempt.addr else []
                        await dial(self.host, PeerInfo(relay, maddrs))
                    return await dial_relayed(self.host, attempt.relay_id or "", peer_id)
            except trio.TooSlowError:
                failures.append(f"{attempt}: no answer within {attempt.timeout:g}s")
            except Exception as exc:
                failures.append(f"{attempt}: {reason(exc)}")
            log.debug("ladder to %s: %s", peer_id, failures[-1])
        raise DialError(f"cannot reach {peer_id[:16]}…: " + "; ".join(failures))

    def _birthday_due(self, peer_id: str) -> bool:
        """Whether a birthday punch is the next step for a relayed path: turned on, not tried on
        this connection yet, and one side known symmetric while the other is not."""
        return (
            self.birthday is not None
            and peer_id not in self.birthday_tried
            and worth_asking(self.nat_type, self.remote_nat.get(peer_id))
        )

    def _dcutr_next(self, peer_id: str) -> float | None:
        if self.dcutr is None:
            return None
        return self.policy.next_attempt(
            self.upgrades.get(peer_id, UpgradeState()),
            path=PathKind.RELAYED,
            local_nat=self.nat_type,
            remote_nat=self.remote_nat.get(peer_id),
        )

    def _drive_upgrades(self, peer_id: str) -> trio.Event | None:
        """Start upgrading a relayed path (once per peer); the event is set after an attempt."""
        if self._dcutr_next(peer_id) is None and not self._birthday_due(peer_id):
            return None
        event = self._driving.get(peer_id)
        if event is None:
            event = self._driving[peer_id] = trio.Event()
            self._nursery.start_soon(self._drive, peer_id, event)
        return event

    async def _drive(self, peer_id: str, event: trio.Event) -> None:
        from libp2p.peer.id import ID

        pid = ID.from_base58(peer_id)
        try:
            while True:
                conn = best_connection(self.host, pid)
                if conn is None or not is_relayed(conn):
                    self.upgrades.pop(peer_id, None)  # a new relayed connection starts afresh
                    self.birthday_tried.discard(peer_id)
                    return
                state = self.upgrades.get(peer_id, UpgradeState())
                at = self._dcutr_next(peer_id)
                if at is None:
                    # DCUtR is out (a symmetric NAT, or its attempts spent): the birthday punch
                    # is the last step before settling on the relay.
                    if self._birthday_due(peer_id):
                        await self.birthday_once(peer_id)
                    return
                now = trio.current_time()
                if at > now:
                    await trio.sleep(at - now)
                    continue
                ok = await self.upgrade_once(peer_id)
                self.upgrades[peer_id] = self.policy.record(state, now, succeeded=ok)
                if not ok and self.remote_nat.get(peer_id) is None and self._birthday_due(peer_id):
                    # The peer's NAT type is not known: the coordination asks it, and punches
                    # when one side is symmetric (DCUtR then cannot work whatever its retries).
                    ok = await self.birthday_once(peer_id)
                event.set()
                if ok:
                    return
        finally:
            event.set()
            self._driving.pop(peer_id, None)

    async def upgrade_once(self, peer_id: str) -> bool:
        """One DCUtR hole punch to a peer we reach through a relay; True on a direct path."""
        from libp2p.peer.id import ID

        if self.dcutr is None:
            return False
        began = time.perf_counter()
        path = self.path(peer_id)
        if path is not None and path.relay_id:
            await self._wait_identified(path.relay_id)
        try:
            ok = bool(await self.dcutr.initiate_hole_punch(ID.from_base58(peer_id)))
        except Exception as exc:
            log.debug("hole punch to %s failed: %r", peer_id, exc)
            ok = False
        took = time.perf_counter() - began
        if _safe_connected(self.host, peer_id):  # not for a peer that left meanwhile
            self.last_upgrade[peer_id] = (ok, took)
        log.info("hole punch to %s: %s in %.2fs", peer_id, "ok" if ok else "failed", took)
        return ok

    async def birthday_once(self, peer_id: str) -> bool:
        """One birthday punch to a peer we reach through a relay; True on a direct path."""
        if self.birthday is None:
            return False
        self.birthday_tried.add(peer_id)
        path = self.path(peer_id)
        if path is not None and path.relay_id:
            await self._wait_identified(path.relay_id)
        outcome = await self.birthday.initiate(peer_id)
        if _safe_connected(self.host, peer_id) and outcome.tried:
            self.last_upgrade[peer_id] = (outcome.ok, outcome.seconds)
        return outcome.ok

    async def _wait_identified(self, relay_id: str, timeout: float = 2.0) -> None:
        # DCUtR tells the peer our address as the relay observed it (identify); right after
        # connecting to the relay, that exchange may still be under way.
        from libp2p.peer.id import ID

        identified = getattr(self.host, "_identified_peers", None)
        if identified is None:
            return
        relay = ID.from_base58(relay_id)
        with trio.move_on_after(timeout):
            while relay not in identified:
                await trio.sleep(0.01)

    async def keepalive(
        self,
        interval: float,
        timeout: float,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Every ``interval`` seconds, ping each peer reached by :meth:`connect` whose connection
        carries streams; close the connections of one that does not answer within ``timeout``
        (a cut link otherwise leaves its streams hanging: TCP says nothing until it has data to
        retransmit). Peers that dialled us (miners to their hub) are left to their own
        liveness checks: a ping opens a stream (~5 ms of CPU at each end)."""
        from libp2p.peer.id import ID

        checking: set[str] = set()

        async def check(peer_id: str) -> None:
            peer = ID.from_base58(peer_id)
            try:
                await ping(self.host, peer, rounds=1, timeout=timeout)
            except trio.TooSlowError:
                log.info("peer %s silent for %gs: closing its connections", peer_id, timeout)
                with trio.move_on_after(5):
                    await self.host.disconnect(peer)
            except Exception as exc:  # e.g. no ping protocol there: not a sign of a dead link
                log.debug("keepalive ping %s: %r", peer_id, exc)
            finally:
                checking.discard(peer_id)

        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(interval)
                for peer_id in list(self.known):
                    conns = connections(self.host, ID.from_base58(peer_id))
                    if peer_id not in checking and any(c.get_streams() for c in conns):
                        checking.add(peer_id)
                        nursery.start_soon(check, peer_id)

    async def open_stream(self, peer_id: str, protocols: Sequence[str]) -> Any:
        """A new stream to ``peer_id`` on its best connection, redialling by the ladder when the
        connection is gone and addresses are known."""
        from libp2p.peer.id import ID

        pid = ID.from_base58(peer_id)
        if best_connection(self.host, pid) is None and self.known.get(peer_id):
            await self.connect(peer_id, ())
        return await self.host.new_stream(pid, list(protocols))


def _safe_connected(host: Any, peer_id: str) -> bool:
    from libp2p.peer.id import ID

    try:
        return bool(connections(host, ID.from_base58(peer_id)))
    except Exception:
        return False
