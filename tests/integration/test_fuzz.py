"""Property-based fuzz of every hub and miner RPC: random and malformed messages, signed or not,
find no crash, hang, INTERNAL or UNKNOWN status, or traceback; the servers keep answering.

The hub runs as a process (with a miner on the in-memory engine, so starts reach a real miner);
the miner's service is fuzzed in-process on its own gRPC server, as its hub would call it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass as message_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sonm_p2p._pb.sonm.v1 import common_pb2, hub_pb2, miner_pb2, miner_pb2_grpc  # noqa: F401
from sonm_p2p._status import add_servicer
from sonm_p2p.auth import sign_request
from sonm_p2p.client import SIGNED_METHODS
from sonm_p2p.identity import load_or_create
from sonm_p2p.miner.memory_runtime import MemoryRuntime
from sonm_p2p.miner.miner import Miner
from sonm_p2p.miner.servicer import MinerServicer
from tests.harness import Network, wait_for

#: Statuses a server must never answer with: its own failure (INTERNAL: an unexpected error;
#: UNKNOWN: an exception grpc caught for us).
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
FIELD = pb_descriptor.FieldDescriptor

_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "0x", "..", "a" * 300, "\x00", "\n\r", "-1", "0" * 64, "*", "😀"]),
)


_32_BIT = {
    FIELD.TYPE_INT32,
    FIELD.TYPE_SINT32,
    FIELD.TYPE_SFIXED32,
    FIELD.TYPE_UINT32,
    FIELD.TYPE_FIXED32,
}


def _value(field: pb_descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy:
    kind = field.type
    if kind == FIELD.TYPE_MESSAGE:
        return _message(message_class(field.message_type), depth + 1)
    if kind == FIELD.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values] + [99])
    if kind == FIELD.TYPE_STRING:
        return _TEXT
    if kind == FIELD.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FIELD.TYPE_BOOL:
        return st.booleans()
    if kind in (FIELD.TYPE_DOUBLE, FIELD.TYPE_FLOAT):
        return st.floats(
            allow_nan=True, allow_infinity=True, width=32 if kind == FIELD.TYPE_FLOAT else 64
        )  # noqa: E501
    bits = 32 if kind in _32_BIT else 64
    if kind in (FIELD.TYPE_UINT32, FIELD.TYPE_FIXED32, FIELD.TYPE_UINT64, FIELD.TYPE_FIXED64):
        return st.integers(0, 2**bits - 1)
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _message(cls: type[Message], depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``cls`` with any subset of fields set to any value (nested up to 3 deep)."""
    if depth > 3:
        return st.just(cls())
    fields = {}
    for f in cls.DESCRIPTOR.fields:
        value = _value(f, depth)
        if f.is_repeated:
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                continue  # maps: covered by the raw-bytes half
            value = st.lists(value, max_size=3)
        fields[f.name] = value
    return st.fixed_dictionaries({}, optional=fields).map(lambda kw: _build(cls, kw))


def _build(cls: type[Message], kw: dict) -> Message:
    msg = cls()
    for name, value in kw.items():
        field = getattr(msg, name)
        if isinstance(value, Message):
            field.CopyFrom(value)
        elif isinstance(value, list):
            if value and isinstance(value[0], Message):
                field.extend(value)
            else:
                field.extend(value)
        else:
            setattr(msg, name, value)
    return msg


def _payloads(cls: type[Message]) -> st.SearchStrategy[bytes]:
    """A well-formed message with wild values, or bytes that may not parse at all."""
    return st.one_of(
        _message(cls).map(lambda m: m.SerializeToString(deterministic=True)),
        st.binary(max_size=200),
    )


def _methods(service: pb_descriptor.ServiceDescriptor) -> Iterator[tuple[str, type, bool]]:
    for m in service.methods:
        yield m.name, message_class(m.input_type), m.server_streaming


def _call(
    channel: grpc.Channel, path: str, payload: bytes, streaming: bool, metadata
) -> grpc.StatusCode:  # noqa: E501
    try:
        if streaming:
            call = channel.unary_stream(path)(payload, timeout=1.0, metadata=metadata)
            try:
                for _ in call:
                    break
            finally:
                call.cancel()
        else:
            channel.unary_unary(path)(payload, timeout=5.0, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory) -> Iterator[tuple[Network, object, object]]:
    net = Network(tmp_path_factory.mktemp("fuzz"))
    try:
        hub = net.hub()
        miner = net.miner(hub, "m1", runtime="memory")
        wait_for(lambda: miner.node_id in hub.online(), "miner listed")
        yield net, hub, miner
    finally:
        net.close()


HUB_METHODS = list(_methods(hub_pb2.DESCRIPTOR.services_by_name["Hub"]))
MINER_METHODS = list(_methods(miner_pb2.DESCRIPTOR.services_by_name["Miner"]))


@pytest.mark.parametrize(
    ("method", "cls", "streaming"), HUB_METHODS, ids=[m[0] for m in HUB_METHODS]
)  # noqa: E501
def test_hub_rpc_survives_anything(fuzz_hub, tmp_path, method, cls, streaming):
    net, hub, miner = fuzz_hub
    me = load_or_create(tmp_path / "fuzzer")
    hub_id = hub.cli_json("info")["node_id"]
    path = f"/sonm.v1.Hub/{method}"
    seen: set[str] = set()
    with grpc.insecure_channel(hub.grpc_target) as channel:

        @settings(
            max_examples=60,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(payload=_payloads(cls), signed=st.booleans())
        def check(payload: bytes, signed: bool) -> None:
            metadata = None
            if signed and method in SIGNED_METHODS:
                metadata = sign_request(me, method, payload, time.time(), hub_id=hub_id)
            code = _call(channel, path, payload, streaming, metadata)
            seen.add(code.name)
            assert code not in FORBIDDEN, (method, payload[:80])

        check()
    assert hub.cli("--timeout", "10s", "ping").returncode == 0  # still serving
    assert "Traceback" not in hub.proc.output(), hub.proc.output()[-3000:]
    assert seen  # every example got an answer


@pytest.fixture(scope="module")
def miner_server(tmp_path_factory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("fuzz-miner")
    runtime = MemoryRuntime(images={"sonm-test/web:latest": (["8080/tcp"], True)})
    miner = Miner("0x" + "11" * 20, runtime, logs_dir=home / "logs")
    server = grpc.server(futures.ThreadPoolExecutor(4))
    add_servicer(miner_pb2_grpc.add_MinerServicer_to_server, MinerServicer(miner), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=0).wait()
        miner.close()


@pytest.mark.parametrize(
    ("method", "cls", "streaming"), MINER_METHODS, ids=[m[0] for m in MINER_METHODS]
)  # noqa: E501
def test_miner_rpc_survives_anything(miner_server, caplog, method, cls, streaming):
    path = f"/sonm.v1.Miner/{method}"
    with grpc.insecure_channel(miner_server) as channel:

        @settings(
            max_examples=60,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(payload=_payloads(cls))
        def check(payload: bytes) -> None:
            code = _call(channel, path, payload, streaming, None)
            assert code not in FORBIDDEN, (method, payload[:80])

        check()
        assert _call(channel, "/sonm.v1.Miner/Ping", b"", False, None) == grpc.StatusCode.OK
    assert "Traceback" not in caplog.text
