"""Spans the OTLP export drops are counted, told while it runs and at shutdown; its queue is bounded in bytes.

Defects a review found, with a collector slower than spans come: the span
processor's queue-full drops happened inside the OpenTelemetry SDK, logged
without a count ("Queue full, dropping Span.") and counted nowhere, so the
shutdown line ("N spans were not exported") told a fraction of the spans
lost (about 130,000 of 160,000 went uncounted), and nothing was told while
the sidecar ran; the queue was bounded in spans only (65,536), whatever
their size, so small spans took some 300 MB and large ones could take
gigabytes.

Each test runs a real sidecar against a real OTLP receiver whose Export
blocks until the test releases it (a stalled collector), with the
smallest export queue (``--otlp-max-queue-bytes``, 1 MiB). The receiver
answers a blocked call shortly before its deadline all the same (a slow
collector, then), so that every span is either received or dropped by the
sidecar, whatever the machine's speed: the spans the sidecar says it did
not export are exactly the spans produced less those received.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from are_core.trace import EventDraft
from are_sdk.testing import SidecarProcess
from sidecar._trace import TEST_HOOK_ENV, TEST_HOOK_METHOD

MIB = 1024 * 1024
_QUEUE_BYTES = MIB  # the smallest --otlp-max-queue-bytes
_WAIT_S = 60.0  # the bound of every wait (a hang guard; no timing is asserted)
_SHUTDOWN_LINE = re.compile(r"(\d+) spans were not exported")
_RUNNING_LINE = re.compile(r"OTLP export: (\d+) spans dropped .*?\((\d+) found the export queue full")


class StalledReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP receiver whose Export blocks until :meth:`release`; it counts the spans it took."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.exporting = threading.Event()  # an Export call has come in
        self._released = threading.Event()
        self._lock = threading.Lock()

    def Export(  # noqa: N802 - the collector's RPC name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.exporting.set()
        remaining = context.time_remaining()  # until the exporter's deadline (5 s), or None
        self._released.wait(_WAIT_S if remaining is None else max(0.0, remaining - 1.0))
        if not context.is_active():  # the sidecar gave up after all: a failed export, not received
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the caller gave up")
        with self._lock:
            self.names.extend(
                span.name for r in request.resource_spans for s in r.scope_spans for span in s.spans
            )
        return trace_service_pb2.ExportTraceServiceResponse()

    def release(self) -> None:
        """Lets every Export call, blocked or to come, through."""
        self._released.set()

    @property
    def received(self) -> list[str]:
        with self._lock:
            return list(self.names)


@pytest.fixture
def receiver() -> Iterator[tuple[StalledReceiver, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    collector = StalledReceiver()
    # grpcio's generated helper has no annotations.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, f"http://127.0.0.1:{port}"
    finally:
        collector.release()
        server.stop(grace=None)


def _record(target: str, workflows: list[list[EventDraft]]) -> None:
    """Records the workflows' events through the test hook in one batch: their spans end at once."""
    with grpc.insecure_channel(target) as channel:
        record = channel.unary_unary(TEST_HOOK_METHOD)
        record(msgspec.msgpack.encode([draft for drafts in workflows for draft in drafts]), timeout=60)


def _workflow(
    wf: str, task_id: str = "t", *, calls: int = 0, custom: list[dict[str, str]] | None = None
) -> list[EventDraft]:
    """A finished one-task workflow: its span, its attempt's span, and a span for each LLM call."""
    task = {"workflow_id": wf, "task_id": task_id, "attempt": 1}
    drafts = [
        EventDraft(event_type="WORKFLOW_SUBMITTED", workflow_id=wf, name="drops"),
        EventDraft(event_type="TASK_DISPATCHED", worker_id="w", **task),  # type: ignore[arg-type]
    ]
    drafts += [EventDraft(event_type="LLM_CALL", name=f"model-{i}", **task) for i in range(calls)]  # type: ignore[arg-type]
    drafts += [
        EventDraft(event_type="WORKER_CUSTOM", name="note", attributes=attributes, **task)  # type: ignore[arg-type]
        for attributes in custom or []
    ]
    drafts += [
        EventDraft(event_type="TASK_COMPLETED", task_state="COMPLETED", **task),  # type: ignore[arg-type]
        EventDraft(event_type="WORKFLOW_COMPLETED", workflow_id=wf, workflow_state="COMPLETED"),
    ]
    return drafts


def _start(endpoint: str) -> SidecarProcess:
    env = {TEST_HOOK_ENV: "1", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    args = ["--otlp-endpoint", endpoint, "--otlp-max-queue-bytes", str(_QUEUE_BYTES)]
    return SidecarProcess.start(env=env, args=args)


def _stall(process: SidecarProcess, collector: StalledReceiver) -> int:
    """Records a first workflow and waits until its export is blocked in the receiver; its spans."""
    _record(process.target, [_workflow("wf-plug", "plug")])
    assert collector.exporting.wait(_WAIT_S), process.log_text()[-3000:]
    return 2


def _wait_for_line(process: SidecarProcess, line: re.Pattern[str]) -> re.Match[str] | None:
    deadline = time.monotonic() + _WAIT_S
    while time.monotonic() < deadline:
        found = line.search(process.log_text())
        if found is not None:
            return found
        time.sleep(0.1)
    return None


def test_every_span_dropped_with_the_queue_full_is_told_while_running_and_counted_at_shutdown(
    receiver: tuple[StalledReceiver, str],
) -> None:
    collector, endpoint = receiver
    workflows, calls = 100, 10  # 1,200 spans of some 3 KiB each: about 300 fit in the queue
    with _start(endpoint) as process:
        produced = _stall(process, collector)
        _record(process.target, [_workflow(f"wf-{i}", calls=calls) for i in range(workflows)])
        produced += workflows * (2 + calls)
        # Told while the sidecar runs and the collector is still stalled, not only at shutdown.
        running = _wait_for_line(process, _RUNNING_LINE)
        assert running is not None, process.log_text()[-3000:]
        assert int(running.group(1)) >= 1
        assert int(running.group(2)) >= 1
        collector.release()
        assert process.stop() == 0
        log = process.log_text()
    received = len(collector.received)
    assert 0 < received < produced
    assert _SHUTDOWN_LINE.findall(log) == [str(produced - received)], log[-3000:]
    # The span processor itself never dropped one (uncounted) of the spans it was handed.
    assert "Queue full, dropping" not in log


def test_the_export_queue_is_bounded_in_bytes_not_only_in_spans(
    receiver: tuple[StalledReceiver, str],
) -> None:
    collector, endpoint = receiver
    big = 8  # task attempt spans of 2 events x 64 attributes x 4 KiB: over 512 KiB each
    custom = [{f"note.{k}": f"{k}".ljust(4096, "x") for k in range(64)} for _ in range(2)]
    with _start(endpoint) as process:
        produced = _stall(process, collector)
        _record(process.target, [_workflow(f"wf-big-{i}", custom=custom) for i in range(big)])
        produced += 2 * big  # far fewer spans than the 65,536 the queue may hold
        running = _wait_for_line(process, _RUNNING_LINE)
        assert running is not None, process.log_text()[-3000:]
        collector.release()
        assert process.stop() == 0
        log = process.log_text()
    received = collector.received
    # The large spans ended while the queue held the first export: only one fitted in 1 MiB (two,
    # had that export ended meanwhile); the small workflow spans still did.
    assert 1 <= received.count("task t") <= _QUEUE_BYTES // (512 * 1024)
    assert received.count("workflow drops") == 1 + big
    assert _SHUTDOWN_LINE.findall(log) == [str(produced - len(received))], log[-3000:]
    assert produced - len(received) >= big - 2
