"""Suite ``trace``: events per second through the flight recorder and StreamEvents.

One operation records a batch of 100 events in the sidecar and waits until
every subscriber of the client process has received all of them over
``StreamEvents``; latencies are per event and throughput is events/s.

Events are driven through the sidecar's test hook (``ARE_TRACE_TEST_HOOK=1``,
``/are.testing.TraceHook/Record``): it records a batch exactly as producers do
(sequence + rows added to one batch, group commit, then publish to live
streams and the exporter). This isolates the trace path from the scheduler,
whose own benchmark measures fan-out; it costs one extra unary RPC per 100
events. Sidecars run with ``--durability relaxed`` (no fsync per commit) so
that the figure is the recorder's and the streams', not the disk's.

Contenders:

* ``trace-record``: record only, no subscriber (the cost of keeping events);
* ``trace-stream-1`` / ``trace-stream-10``: 1 or 10 live subscribers, all
  in the client process (which also decodes every message: with 10
  subscribers the client's own decoding is part of the figure);
* ``trace-stream-10-otlp``: as above with OpenTelemetry export on, to an
  OTLP/gRPC receiver in the runner process; events are task attempts
  (dispatched/completed pairs), so spans are built and exported.

The scheduler's fan-out with export off and on (``fanout-1k``,
``fanout-1k-otlp``) reuses the ``scheduler`` suite's client: a 1,000-task
fan-out to a no-op worker, default (sync) durability, figures per task. The
flight recorder is always on (every transition's event commits with it);
what the pair isolates is the OpenTelemetry export, whose overhead is the
ratio of their figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any, TypedDict

import grpc
import msgspec

from benchmarks._echo import echo_contender
from benchmarks._harness import Contender, Operation, Suite
from benchmarks._process import sidecar_env
from benchmarks.scheduler import are_client

__all__ = ["SUITE"]

BATCH = 100
FANOUT = 1_000
SIDECAR_REQUIRES = ("are_sdk.testing", "sidecar")
OTLP_REQUIRES = (*SIDECAR_REQUIRES, "opentelemetry.proto")
_HOOK_METHOD = "/are.testing.TraceHook/Record"
_STREAM_METHOD = "/are.v1.TraceService/StreamEvents"


@contextlib.contextmanager
def _otlp_receiver() -> Iterator[int]:
    """A real OTLP/gRPC trace receiver in this process that counts spans; yields its port."""
    from opentelemetry.proto.collector.trace.v1 import (  # noqa: PLC0415 - optional
        trace_service_pb2,
        trace_service_pb2_grpc,
    )

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
        def __init__(self) -> None:
            self.spans = 0
            self.lock = threading.Lock()

        def Export(self, request: Any, _context: Any) -> Any:  # noqa: N802 - the collector's RPC
            with self.lock:
                self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # opentelemetry-proto's generated grpc helper has no annotations.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


@contextlib.contextmanager
def traced_sidecar(*, otlp: bool = False, relaxed: bool = True) -> Iterator[str]:
    """A real sidecar with the trace test hook on; with ``otlp``, exporting to a local receiver."""
    from are_sdk.testing import SidecarProcess  # noqa: PLC0415 - an optional dependency

    with contextlib.ExitStack() as stack:
        args = ["--durability", "relaxed"] if relaxed else []
        env = sidecar_env(ARE_TRACE_TEST_HOOK="1")
        if otlp:
            port = stack.enter_context(_otlp_receiver())
            args += ["--otlp-endpoint", f"http://127.0.0.1:{port}"]
        sidecar = stack.enter_context(SidecarProcess.start(args=args, env=env))
        yield sidecar.target


class _TaskIds(TypedDict):
    """The ids one attempt's events share, typed so that ``**`` passes them to EventDraft."""

    workflow_id: str
    task_id: str
    attempt: int


def _drafts(spans: bool) -> bytes:
    from are_core.trace import EventDraft  # noqa: PLC0415 - the sidecar's own package

    if spans:
        drafts = []
        for index in range(BATCH // 2):
            task: _TaskIds = {"workflow_id": "bench", "task_id": f"t{index}", "attempt": 1}
            drafts.append(EventDraft(event_type="TASK_DISPATCHED", worker_id="w", **task))
            drafts.append(EventDraft(event_type="TASK_COMPLETED", task_state="COMPLETED", **task))
    else:
        drafts = [
            EventDraft(event_type="WORKER_CUSTOM", workflow_id="bench", task_id=f"t{i}", name="bench")
            for i in range(BATCH)
        ]
    return msgspec.msgpack.encode(drafts)


class _Progress:
    """Each subscriber's highest sequence, and waiters for all to reach one."""

    def __init__(self, subscribers: int) -> None:
        self.seen = [0] * subscribers
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []

    def advance(self, index: int, sequence: int) -> None:
        self.seen[index] = sequence
        low = min(self.seen)
        ready = [w for w in self.waiters if w[0] <= low]
        if ready:
            self.waiters = [w for w in self.waiters if w[0] > low]
            for _, future in ready:
                if not future.done():
                    future.set_result(None)

    async def wait(self, sequence: int) -> None:
        if not self.seen or min(self.seen) >= sequence:
            return
        future = asyncio.get_running_loop().create_future()
        self.waiters.append((sequence, future))
        await future


@contextlib.asynccontextmanager
async def stream_client(
    target: str | None, *, subscribers: int, spans: bool = False
) -> AsyncIterator[Operation]:
    """Opens ``subscribers`` live streams; one operation records 100 events and waits for all."""
    from are_sdk._proto.are.v1 import trace_service_pb2  # noqa: PLC0415 - an optional dependency

    if target is None:
        raise ValueError("the trace client needs a sidecar target")
    payload = _drafts(spans)
    progress = _Progress(subscribers)
    async with grpc.aio.insecure_channel(target) as channel:
        await channel.channel_ready()
        record = channel.unary_unary(_HOOK_METHOD)
        stream = channel.unary_stream(
            _STREAM_METHOD,
            request_serializer=trace_service_pb2.StreamEventsRequest.SerializeToString,
            response_deserializer=trace_service_pb2.StreamEventsResponse.FromString,
        )

        async def follow(index: int, started: asyncio.Event) -> None:
            call = stream(trace_service_pb2.StreamEventsRequest())
            async for message in call:
                kind = message.WhichOneof("message")
                if kind == "caught_up":
                    started.set()
                elif kind == "event":
                    progress.advance(index, message.event.sequence)
                else:
                    progress.advance(index, message.missed.last_missed_sequence)

        readers = []
        for index in range(subscribers):
            started = asyncio.Event()
            readers.append(asyncio.create_task(follow(index, started)))
            await started.wait()

        async def operation() -> object:
            reply = await record(payload)
            last = msgspec.msgpack.decode(reply, type=list[int])[-1]
            await progress.wait(last)
            return last

        try:
            yield operation
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)


def _contender(name: str, description: str, *, subscribers: int, otlp: bool = False) -> Contender:
    return Contender(
        name=name,
        client=functools.partial(stream_client, subscribers=subscribers, spans=otlp),
        server=functools.partial(traced_sidecar, otlp=otlp),
        description=description,
        requires=OTLP_REQUIRES if otlp else SIDECAR_REQUIRES,
        units=BATCH,
    )


def _fanout(name: str, description: str, *, otlp: bool) -> Contender:
    return Contender(
        name=name,
        client=functools.partial(are_client, shape="fanout", size=FANOUT),
        server=functools.partial(traced_sidecar, otlp=otlp, relaxed=False),
        description=description,
        requires=OTLP_REQUIRES if otlp else SIDECAR_REQUIRES,
        units=FANOUT,
        max_requests=10,
    )


SUITE = Suite(
    name="trace",
    description="events/s recorded and delivered through StreamEvents (per event; 100 per request)",
    baseline=echo_contender("echo", payload_bytes=16),
    contenders=(
        _contender("trace-record", "record 100 events per request, no subscriber", subscribers=0),
        _contender(
            "trace-stream-1", "record 100 events, delivered to 1 StreamEvents subscriber", subscribers=1
        ),
        _contender(
            "trace-stream-10", "record 100 events, delivered to 10 StreamEvents subscribers", subscribers=10
        ),
        _contender(
            "trace-stream-10-otlp",
            "as trace-stream-10, task attempts exported as OTLP spans to a local receiver",
            subscribers=10,
            otlp=True,
        ),
        _fanout("fanout-1k", "scheduler: 1,000-task fan-out, OTLP export off; per task", otlp=False),
        _fanout(
            "fanout-1k-otlp", "the same with every attempt exported as an OTLP span; per task", otlp=True
        ),
    ),
)
