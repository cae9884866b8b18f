"""Refused calls (a wrong or missing bearer token) are logged without flooding the log.

Defect: every refused call wrote a WARNING line: a client retrying with a wrong
token made 2,000 lines in 3.9 s. Now the first refusal of each method is
logged in full, the rest are counted and summed up at most once a minute
("refused N more unauthenticated calls in the last 60 s"), and the methods
remembered and the full lines per minute are capped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from are_sdk._proto.are.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc
from are_sdk.testing import SidecarProcess
from sidecar._interceptors import BearerTokenInterceptor, RefusalLog

TOKEN = "s3cret-token-for-log-tests-5d2a"
_FULL = "refused an unauthenticated call"


def _refusal_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "unauthenticated call" in line]


async def _storm(target: str, calls: int, metadata: tuple[tuple[str, str], ...]) -> int:
    """``calls`` GetWorkflow calls with ``metadata``, one after the other; returns how many were refused."""
    refused = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
        for _ in range(calls):
            try:
                await stub.GetWorkflow(
                    scheduler_service_pb2.GetWorkflowRequest(workflow_id="wf_x"),
                    metadata=metadata,
                    timeout=10,
                )
            except grpc.aio.AioRpcError as error:
                refused += error.code() == grpc.StatusCode.UNAUTHENTICATED
    return refused


async def test_a_storm_of_refused_calls_logs_a_line_per_method_not_per_call() -> None:
    with SidecarProcess.start(token=TOKEN) as process:
        wrong = (("authorization", "Bearer wrong"),)
        assert await _storm(process.target, 400, wrong) == 400
        assert await _storm(process.target, 400, ()) == 400  # no token at all
        async with grpc.aio.insecure_channel(process.target) as channel:
            for method in ("/are.v1.CacheService/GetCacheStats", "/are.v1.RouterService/ListAgents"):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary(method)(b"", metadata=wrong, timeout=10)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        lines = _refusal_lines(process.log_text())
        assert TOKEN not in process.log_text()
    assert len(lines) == 3, lines  # one per method; the other 799 GetWorkflow refusals are counted
    assert all(_FULL in line for line in lines)
    assert "method=/are.v1.SchedulerService/GetWorkflow" in lines[0]
    assert "had_token=True" in lines[0]
    assert "user_agent=grpc-python" in lines[0]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def captured() -> tuple[logging.Logger, _Lines]:
    logger = logging.getLogger(f"are.test.refusals.{time.monotonic_ns()}")
    logger.propagate = False
    handler = _Lines()
    logger.addHandler(handler)
    return logger, handler


async def _echo(request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


@pytest.fixture
async def guarded_echo(captured: tuple[logging.Logger, _Lines]) -> AsyncIterator[str]:
    """A grpc.aio server on 127.0.0.1 behind the sidecar's interceptor, summing up every 0.3 s."""
    logger, _ = captured
    interceptor = BearerTokenInterceptor(TOKEN, refusals=RefusalLog(logger, interval_s=0.3))
    server = grpc.aio.server(interceptors=[interceptor])
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(_echo, request_deserializer=None, response_serializer=None)
        for name in ("One", "Two")
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _wait_for(handler: _Lines, count: int) -> None:
    for _ in range(200):  # 2 s at most
        if len(handler.messages) >= count:
            return
        await asyncio.sleep(0.01)


async def test_the_summary_comes_once_an_interval_even_when_the_refusals_stop(
    guarded_echo: str, captured: tuple[logging.Logger, _Lines]
) -> None:
    _, handler = captured
    wrong = (("authorization", "Bearer wrong"),)
    async with grpc.aio.insecure_channel(guarded_echo) as channel:
        one, two = channel.unary_unary("/test.Echo/One"), channel.unary_unary("/test.Echo/Two")
        assert await one(b"hi", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5) == b"hi"
        for call in [one] * 40 + [two] * 10:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"hi", metadata=wrong, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert handler.messages == [_FULL, _FULL]  # the first of each method
        await _wait_for(handler, 3)  # no call comes: the timer writes the summary
        assert handler.messages[2].startswith("refused 48 more unauthenticated calls in the last ")
        await asyncio.sleep(0.4)  # a quiet interval: the next refusal is logged in full again
        with pytest.raises(grpc.aio.AioRpcError):
            await one(b"hi", metadata=wrong, timeout=5)
    assert handler.messages[3:] == [_FULL]


def test_refusal_log_bounds_its_keys_and_its_lines(captured: tuple[logging.Logger, _Lines]) -> None:
    logger, handler = captured
    now = [0.0]
    refusals = RefusalLog(logger, interval_s=60.0, max_keys=4, max_lines=3, clock=lambda: now[0])
    for i in range(1000):  # a thousand methods (say, a scanner): three full lines, the rest counted
        refusals.refused(f"/svc/M{i}", had_token=False)
    assert handler.messages == [_FULL] * 3
    assert refusals.suppressed == 997
    assert len(refusals._last_seen) == 4  # the most recent methods only
    now[0] = 61.0  # no loop runs here: the next refusal flushes the summary first
    refusals.refused("/svc/M999", had_token=True)
    assert handler.messages[3] == "refused 997 more unauthenticated calls in the last 61 s"
    assert handler.messages[4:] == [_FULL]  # M999 was quiet for an interval
    refusals.refused("/svc/M999", had_token=True)
    assert refusals.suppressed == 1
    refusals.flush()
    assert handler.messages[5] == "refused 1 more unauthenticated call in the last 1 s"
    refusals.flush()  # nothing counted: nothing written
    assert len(handler.messages) == 6


@pytest.mark.slow
async def test_a_real_sidecar_writes_the_summary_within_a_minute() -> None:
    with SidecarProcess.start(token=TOKEN) as process:
        assert await _storm(process.target, 200, (("authorization", "Bearer wrong"),)) == 200
        deadline = time.monotonic() + 75.0
        while time.monotonic() < deadline and len(_refusal_lines(process.log_text())) < 2:
            await asyncio.sleep(0.5)
        lines = _refusal_lines(process.log_text())
    assert len(lines) == 2, lines
    assert "refused 199 more unauthenticated calls in the last 60 s" in lines[1]
