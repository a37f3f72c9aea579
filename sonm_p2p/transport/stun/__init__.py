"""STUN: a Binding responder (RFC 5389, with RFC 5780 OTHER-ADDRESS / CHANGE-REQUEST) and a client
that learns a node's public mapping and classifies its NAT. ``_codec.py`` (messages, answers),
``_client.py`` (classification, client), ``_responder.py`` (the responder's I/O).

Messages are encoded and parsed by ``aioice.stun`` (the aiortc project's codec; only its pure
``Message`` / ``parse_message`` are used, none of its asyncio code). This module adds what a server
and an RFC 5780 client need around it: the magic-cookie check, 420 for unknown
comprehension-required attributes, which socket answers a CHANGE-REQUEST, and the classification.

Pure core (no sockets, no clock): :func:`encode_request`, :func:`decode_response`,
:func:`answer`, :func:`classify_mapping`, :func:`classify_filtering`. I/O: :class:`StunResponder`
(a trio task via ``serve()``, or its own thread via ``start()``) and the blocking client
:func:`binding` / :func:`probe_nat` (from trio, call them through ``trio.to_thread.run_sync``).

With only a primary ``(ip, port)`` the responder answers Binding requests and refuses
CHANGE-REQUEST with 420, as RFC 5780 asks; given an alternate ``(ip2, port2)`` it listens on all
four combinations and advertises OTHER-ADDRESS, which lets clients tell endpoint-independent,
address-dependent and symmetric NATs apart. Without one, a client can still compare the mappings
seen by several responders (``probe_nat(..., extra_servers=...)``): two ports of one IP (the
hub's default, 3478 and 3479: ``second_port``) tell a symmetric NAT from one that keeps its
mapping, and responders on other IPs (other hubs) tell the rest; :func:`not_told_apart` says
what one set of answers cannot tell.
"""

from sonm_p2p.errors import StunError
from sonm_p2p.transport.stun._client import (
    Ambiguity,
    ClientOptions,
    Filtering,
    NatReport,
    NatType,
    Observation,
    binding,
    classify_filtering,
    classify_mapping,
    not_told_apart,
    probe_nat,
)
from sonm_p2p.transport.stun._codec import (
    SOFTWARE,
    STUN_PORT,
    STUN_SECOND_PORT,
    Address,
    BindingResponse,
    Reply,
    ResponderAddresses,
    answer,
    decode_response,
    encode_request,
)
from sonm_p2p.transport.stun._responder import StunResponder

__all__ = [
    "SOFTWARE",
    "STUN_PORT",
    "STUN_SECOND_PORT",
    "Address",
    "Ambiguity",
    "BindingResponse",
    "ClientOptions",
    "Filtering",
    "NatReport",
    "NatType",
    "Observation",
    "Reply",
    "ResponderAddresses",
    "StunError",
    "StunResponder",
    "answer",
    "binding",
    "classify_filtering",
    "classify_mapping",
    "decode_response",
    "encode_request",
    "not_told_apart",
    "probe_nat",
]
