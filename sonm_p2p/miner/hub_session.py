"""The miner's side of a message session with its hub (``/sonm/session/3.0.0``, see
:mod:`sonm_p2p.transport._sessions`): the hub's handshake answered, then every task event sent,
on the session stream itself. An older hub calls the gRPC ``Handshake`` and ``WatchTasks``
instead, on a beat or plain session.
"""

from __future__ import annotations

import logging
import threading

from google.protobuf.message import DecodeError

from sonm_p2p._convert import event_to_pb
from sonm_p2p._pb.sonm.v1 import miner_pb2
from sonm_p2p.errors import InvalidRequest, SonmError
from sonm_p2p.events import Subscription
from sonm_p2p.miner.miner import Miner
from sonm_p2p.miner.servicer import handshake_reply
from sonm_p2p.transport.node import Session

__all__ = ["serve_hub_session"]

log = logging.getLogger(__name__)


def serve_hub_session(miner: Miner, session: Session, timeout: float) -> None:
    """Answer the hub's handshake on ``session`` (waiting up to ``timeout`` seconds for it),
    then send it every task event of ``miner`` until the session ends. Returns once the
    handshake is answered (the events go on from the publishers' threads: no thread waits for
    them). Raises Timeout, Unavailable (the session ended) or InvalidRequest (not a
    handshake)."""
    try:
        request = miner_pb2.HandshakeRequest.FromString(session.recv(timeout))
    except DecodeError:
        raise InvalidRequest("the hub's handshake is not a HandshakeRequest") from None
    # Subscribed before the tasks are listed: an event between the two is sent twice (the hub
    # takes a state it has as no change), never lost; events wait for the handshake's reply.
    lock = threading.RLock()  # reentrant: closing the subscription wakes it once more
    sub: Subscription | None = None
    replied = False

    def forward() -> None:
        with lock:  # publishers on several threads: the events leave in the order queued
            while sub is not None and replied and (event := sub.get(timeout=0)) is not None:
                message = miner_pb2.MinerSessionMessage(event=event_to_pb(event))
                try:
                    session.send(message.SerializeToString())
                except SonmError:  # the session ended
                    sub.close()
                    return

    sub = miner.events.subscribe(wake=forward)
    session.listen(lambda message: sub.close() if message is None and sub else None)
    try:
        reply = handshake_reply(miner, request)
        with lock:
            session.send(miner_pb2.MinerSessionMessage(handshake=reply).SerializeToString())
            replied = True
    except BaseException:
        sub.close()
        raise
    forward()  # what came meanwhile
