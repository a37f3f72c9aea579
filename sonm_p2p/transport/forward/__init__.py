"""``/sonm/forward/1.0.0``: reach a TCP or UDP port on a peer (a task's published port on a miner).

* ``_wire.py`` — the wire format (pure): requests, replies, datagram frames, statuses and the
  errors they map to;
* ``_streams.py`` / ``_udp.py`` — reading and ending forward streams; the UDP flows;
* ``_endpoints.py`` — the serving node (:func:`serve_forward`) and the user's local endpoint
  (:func:`open_forward`, :class:`Forward`);
* ``_task.py`` — ``sonmcli forward`` as a library call (:class:`TaskForwarder`): NAT check,
  dial ladder, local listener.
"""

from sonm_p2p.errors import ForwardError
from sonm_p2p.transport.forward._endpoints import (
    Forward,
    Resolver,
    open_forward,
    requester,
    serve_forward,
)
from sonm_p2p.transport.forward._task import PortSpec, TaskForward, TaskForwarder
from sonm_p2p.transport.forward._wire import (
    FORWARD,
    MAX_DATAGRAM,
    MAX_MESSAGE,
    MAX_REQUEST,
    REPLY_HEADER,
    ForwardOptions,
    ForwardRequest,
    ForwardStatus,
    FrameDecoder,
    Proto,
    decode_reply,
    decode_reply_header,
    decode_request,
    encode_datagram,
    encode_reply,
    encode_request,
    error_for,
    request_length,
    status_for,
)

__all__ = [
    "FORWARD",
    "MAX_DATAGRAM",
    "MAX_MESSAGE",
    "MAX_REQUEST",
    "REPLY_HEADER",
    "Forward",
    "ForwardError",
    "ForwardOptions",
    "ForwardRequest",
    "ForwardStatus",
    "FrameDecoder",
    "PortSpec",
    "Proto",
    "Resolver",
    "TaskForward",
    "TaskForwarder",
    "decode_reply",
    "decode_reply_header",
    "decode_request",
    "encode_datagram",
    "encode_reply",
    "encode_request",
    "error_for",
    "open_forward",
    "request_length",
    "requester",
    "serve_forward",
    "status_for",
]
