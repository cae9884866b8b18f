"""A call ended by ``abort`` frees its request when it ends, in every RPC shape (a real grpc.aio server).

``sidecar._status.releasing_handler`` wraps the sidecar's method handlers: grpc
keeps the abort's error on the call's state, and its traceback held the
servicer's frames, so the context and the request, in a cycle that only the
cyclic collector frees. These tests serve each shape of handler from an
in-process grpc.aio server on 127.0.0.1 with the collector off, and check that
every request the server decoded is gone once the call has ended, refused or
not, and that the client still gets the status, reason included.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from are_sdk._errors import error_from_rpc
from sidecar._server import _Releasing
from sidecar._status import abort, releasing_handler

_SERVICE = "probe.Refuse"
_SIZE = 1024 * 1024
_FREED_WITHIN_S = 5.0  # generous: a loaded machine can lag its completion queue


class _Request:
    """A decoded request: bytes that a weak reference can watch."""

    def __init__(self, data: bytes) -> None:
        self.data = data


_decoded: list[weakref.ref[_Request]] = []


def _decode(data: bytes) -> _Request:
    request = _Request(data)
    _decoded.append(weakref.ref(request))
    return request


def _encode(response: bytes) -> bytes:
    return response


def _check(request: _Request) -> None:
    """The engine's check, which refuses every request: it raises, as the engine's checks do."""
    raise ValueError(f"a request of {len(request.data)} bytes")


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], request: _Request) -> None:
    """Refuses as the servicers do: an engine error caught, then mapped to a status while it is handled."""
    try:
        _check(request)
    except ValueError as error:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), reason="PROBE_REFUSED")


async def _unary_unary(request: _Request, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    if request.data.startswith(b"ok"):
        return b"done"
    await _refuse(context, request)
    raise AssertionError("unreachable")


async def _unary_stream_generator(
    request: _Request, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    yield b"first"
    if not request.data.startswith(b"ok"):
        await _refuse(context, request)


async def _unary_stream_writer(request: _Request, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.write(b"first")
    if not request.data.startswith(b"ok"):
        await _refuse(context, request)


async def _stream_unary(
    requests: AsyncIterator[_Request], context: grpc.aio.ServicerContext[Any, Any]
) -> bytes:
    async for request in requests:  # left mid-stream when refused
        if not request.data.startswith(b"ok"):
            await _refuse(context, request)
    return b"done"


async def _stream_stream_reader(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    del requests  # read with context.read(), as the worker stream is
    while (request := await context.read()) is not grpc.aio.EOF:
        if not request.data.startswith(b"ok"):
            await _refuse(context, request)
        await context.write(b"ack")


async def _stream_stream_generator(
    requests: AsyncIterator[_Request], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    async for request in requests:
        if not request.data.startswith(b"ok"):
            await _refuse(context, request)
        yield b"ack"


def _handlers() -> dict[str, grpc.RpcMethodHandler]:
    codec: dict[str, Any] = {"request_deserializer": _decode, "response_serializer": _encode}
    return {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(_unary_unary, **codec),
        "UnaryStreamGenerator": grpc.unary_stream_rpc_method_handler(_unary_stream_generator, **codec),
        "UnaryStreamWriter": grpc.unary_stream_rpc_method_handler(_unary_stream_writer, **codec),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(_stream_unary, **codec),
        "StreamStreamReader": grpc.stream_stream_rpc_method_handler(_stream_stream_reader, **codec),
        "StreamStreamGenerator": grpc.stream_stream_rpc_method_handler(_stream_stream_generator, **codec),
    }


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The cyclic collector off (the sidecar's are rare) and the decoded requests forgotten."""
    gc.collect()
    gc.disable()
    _decoded.clear()
    try:
        yield
    finally:
        gc.enable()
        _decoded.clear()


@contextlib.asynccontextmanager
async def _served() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    generic = grpc.method_handlers_generic_handler(_SERVICE, _handlers())
    server.add_generic_rpc_handlers((_Releasing(generic),))  # as the sidecar adds every service's handlers
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


async def _call(channel: grpc.aio.Channel, method: str, payloads: list[bytes]) -> list[bytes]:
    """Makes one call of ``method`` with these request payloads; returns the responses."""
    path = f"/{_SERVICE}/{method}"
    if method == "UnaryUnary":
        return [await channel.unary_unary(path)(payloads[0])]
    if method.startswith("UnaryStream"):
        return [response async for response in channel.unary_stream(path)(payloads[0])]

    async def requests() -> AsyncIterator[bytes]:
        for payload in payloads:
            yield payload

    if method == "StreamUnary":
        return [await channel.stream_unary(path)(requests())]
    return [response async for response in channel.stream_stream(path)(requests())]


async def _alive_after_the_call() -> list[int]:
    """Sizes of the decoded requests still alive once the server has ended its calls (none, waited for)."""
    deadline = asyncio.get_running_loop().time() + _FREED_WITHIN_S
    while True:
        alive = _alive_sizes()
        if not alive or asyncio.get_running_loop().time() > deadline:
            return alive
        await asyncio.sleep(0.01)


def _alive_sizes() -> list[int]:
    """Sizes of the decoded requests alive now; a function of its own, so that no reference outlives it.

    (A walrus in a comprehension binds in the enclosing scope: the waiting
    loop itself kept the last request it saw alive.)
    """
    sizes = []
    for ref in _decoded:
        request = ref()
        if request is not None:
            sizes.append(len(request.data))
    return sizes


_METHODS = list(_handlers())


@pytest.mark.usefixtures("no_collector")
@pytest.mark.parametrize("method", _METHODS)
async def test_a_refused_call_frees_its_requests_when_it_ends(method: str) -> None:
    async with _served() as channel:
        payloads = [b"ok" * 8, b"x" * _SIZE, b"ok" * 8] if method.startswith("Stream") else [b"x" * _SIZE]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _call(channel, method, payloads)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == f"a request of {_SIZE} bytes"
        assert error_from_rpc(refused.value).reason == "PROBE_REFUSED"
        assert _decoded, "the server decoded no request"
        assert await _alive_after_the_call() == []


@pytest.mark.usefixtures("no_collector")
@pytest.mark.parametrize("method", _METHODS)
async def test_a_served_call_answers_as_before_and_frees_its_requests(method: str) -> None:
    async with _served() as channel:
        payloads = (
            [b"ok" * 8, b"ok" + b"x" * _SIZE] if method.startswith("Stream") else [b"ok" + b"x" * _SIZE]
        )
        responses = await _call(channel, method, payloads)
        expected = {
            "UnaryUnary": [b"done"],
            "UnaryStreamGenerator": [b"first"],
            "UnaryStreamWriter": [b"first"],
            "StreamUnary": [b"done"],
            "StreamStreamReader": [b"ack", b"ack"],
            "StreamStreamGenerator": [b"ack", b"ack"],
        }
        assert responses == expected[method]
        assert await _alive_after_the_call() == []


async def test_an_unexpected_error_keeps_its_traceback_for_grpc_to_log() -> None:
    async def failing(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise KeyError(len(request))

    behaviour = releasing_handler(grpc.unary_unary_rpc_method_handler(failing)).unary_unary
    with pytest.raises(KeyError) as raised:
        await behaviour(b"x", None)
    frames: list[str] = []
    traceback = raised.value.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame.f_code.co_name)
        traceback = traceback.tb_next
    assert "failing" in frames


def test_wrapping_is_idempotent_and_leaves_sync_behaviours_alone() -> None:
    handler = _handlers()["StreamUnary"]
    once = releasing_handler(handler)
    assert once.stream_unary is not handler.stream_unary
    assert releasing_handler(once) == once
    assert (once.request_deserializer, once.response_serializer) == (_decode, _encode)

    def sync(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    plain = grpc.unary_unary_rpc_method_handler(sync)
    assert releasing_handler(plain) is plain


def test_the_generic_handler_serves_one_releasing_handler_per_method() -> None:
    releasing = _Releasing(grpc.method_handlers_generic_handler(_SERVICE, _handlers()))

    def details(method: str) -> Any:
        return type("Details", (), {"method": f"/{_SERVICE}/{method}", "invocation_metadata": ()})()

    first = releasing.service(details("UnaryUnary"))
    assert first is not None
    assert first.unary_unary is not _unary_unary
    assert first is releasing.service(details("UnaryUnary"))
    assert releasing.service(details("Missing")) is None
