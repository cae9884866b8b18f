"""grpc.aio's per-call handler lookup, replaced: same handlers, no cyclic garbage (a real server).

The replacement lives in ``sidecar._grpc_cycles``; these tests serve calls
from an in-process grpc.aio server on 127.0.0.1, with and without an
interceptor, and look at what the cyclic collector finds afterwards.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest

from sidecar._grpc_cycles import break_handler_lookup_cycle

_SERVICE = "probe.Echo"
_CALLS = 200


class _Refuse(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped (see the mypy overrides)
    """Refuses the "Refused" method before its handler runs; passes the others on."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        self.seen.append(handler_call_details.method)
        if handler_call_details.method.endswith("/Refused"):
            return grpc.unary_unary_rpc_method_handler(_refused)
        return await continuation(handler_call_details)


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _refused(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "refused")
    raise AssertionError("unreachable")


@pytest.fixture
def saved_garbage() -> Iterator[list[Any]]:
    """``gc.garbage`` as the collector leaves it with DEBUG_SAVEALL, emptied before and after."""
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@contextlib.asynccontextmanager
async def _served(interceptors: list[grpc.aio.ServerInterceptor]) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=interceptors)
    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def _lookup_garbage(garbage: list[Any]) -> int:
    return sum(type(o).__name__ == "_HandlerCallDetails" for o in garbage)


def test_the_known_lookup_is_replaced() -> None:
    # The pinned grpcio has the shape the replacement expects: an upgrade that changes it fails here.
    assert break_handler_lookup_cycle()
    assert break_handler_lookup_cycle()  # idempotent


@pytest.mark.parametrize("intercepted", [False, True], ids=["plain", "interceptor"])
async def test_calls_are_answered_as_before_and_leave_no_cycle(
    intercepted: bool, saved_garbage: list[Any]
) -> None:
    assert break_handler_lookup_cycle()
    interceptor = _Refuse()
    async with _served([interceptor] if intercepted else []) as channel:
        echo = channel.unary_unary(f"/{_SERVICE}/Echo")
        for i in range(_CALLS):
            assert await echo(i.to_bytes(2, "big")) == i.to_bytes(2, "big")
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await channel.unary_unary(f"/{_SERVICE}/Missing")(b"x")
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        if intercepted:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary(f"/{_SERVICE}/Refused")(b"x")
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert interceptor.seen.count(f"/{_SERVICE}/Echo") == _CALLS
    gc.collect()
    assert _lookup_garbage(saved_garbage) == 0
