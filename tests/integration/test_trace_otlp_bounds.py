"""OTLP export defects a review found, each driven against a real sidecar and a real OTLP receiver.

* ReportEvents clamped an event_time before 1970 or after 2262, and took a
  call longer than its event_time since 1970 (its span then started before
  1970: the encoder raised, and the whole batch of up to 512 spans was lost);
* exports had no byte bound: reported calls' attributes, copied onto two
  spans each, made a request over the 4 MiB a collector (and grpc) takes by
  default, refused whole, every span in it lost;
* a call reported after the completion that closed its workflow named a
  parent span that exists nowhere;
* after a restart the workflow span was never exported (SIGKILL) or was
  exported unfinished and never completed (graceful stop).

The receiver is a grpc server with grpc's default 4 MiB receive limit, as
the OpenTelemetry Collector's default ``max_recv_msg_size_mib``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from are_sdk import Client, InvalidArgumentError
from are_sdk._proto.are.v1 import event_pb2 as ev
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk.testing import SidecarProcess
from tests.integration.test_scheduler import completion, expect_error, submit, task, unique_capability
from tests.integration.test_trace_otlp import attributes
from tests.integration.test_worker_usage import poll_one

MIB = 1024 * 1024
ENV = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects every span exported to it, and the size of each request it took."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.request_bytes: list[int] = []
        self._lock = threading.Lock()

    def Export(  # noqa: N802 - the collector's RPC name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            self.request_bytes.append(request.ByteSize())
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_hex: str) -> list[trace_pb2.Span]:
        with self._lock:
            return [span for span in self.spans if span.trace_id.hex() == trace_hex]

    async def wait_for(self, trace_hex: str, names: list[str]) -> list[trace_pb2.Span]:
        """The trace's spans once ``names`` (sorted, with repeats) have all arrived; bounded wait."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            spans = self.of_trace(trace_hex)
            if sorted(span.name for span in spans) == sorted(names):
                return spans
            await asyncio.sleep(0.05)
        return self.of_trace(trace_hex)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))  # grpc's default 4 MiB receive limit
    collector = Receiver()
    # grpcio's generated helper has no annotations.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def reported(
    a: w.TaskAssignment, kind: ev.EventType = ev.EVENT_TYPE_LLM_CALL, name: str = "model-x"
) -> ev.ReportedEvent:
    return ev.ReportedEvent(
        workflow_id=a.workflow_id, task_id=a.task_id, attempt=a.attempt, event_type=kind, name=name
    )


async def trace_of(client: Client, workflow_id: str) -> str:
    described = await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id))
    return str(described.workflow.trace_id)


async def llm_calls(client: Client, workflow_id: str) -> list[ev.Event]:
    return [
        event
        async for event in client.trace.iter_events(
            workflow_ids=[workflow_id], event_types=[ev.EVENT_TYPE_LLM_CALL], page_size=1000
        )
    ]


# ------------------------------------------------------------ reported times


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("event_time", {"event_time": timestamp_pb2.Timestamp(seconds=-315_619_200)}),  # 1960
        ("event_time", {"event_time": timestamp_pb2.Timestamp(seconds=13_569_465_600)}),  # 2400
        (
            "duration",  # 100 years, ending in 2023: it would have started in 1923
            {
                "event_time": timestamp_pb2.Timestamp(seconds=1_700_000_000),
                "duration": duration_pb2.Duration(seconds=100 * 365 * 86_400),
            },
        ),
    ],
    ids=["event_time 1960", "event_time 2400", "a duration longer than since 1970"],
)
async def test_report_events_refuses_a_time_it_cannot_keep_rather_than_clamping_it(
    client: Client, field: str, change: dict[str, Any]
) -> None:
    cap = unique_capability("event-times")
    workflow_id = await submit(client, task("a", cap))
    a = await poll_one(client, cap)
    bad = reported(a)
    for name, value in change.items():
        getattr(bad, name).CopyFrom(value)
    error = await expect_error(
        client.raw.worker.ReportEvents(w.ReportEventsRequest(events=[reported(a), bad])),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        f"events[1].{field}",
    )
    assert error.message.startswith(f"events[1].{field}: "), error.message
    assert await llm_calls(client, workflow_id) == []  # all or nothing
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


# --------------------------------------------------------------- byte bound


async def test_large_reported_calls_reach_a_collector_with_a_4_mib_limit(
    receiver: tuple[Receiver, str],
) -> None:
    collector, endpoint = receiver
    with SidecarProcess.start(env=ENV, args=["--otlp-endpoint", endpoint]) as process:
        async with await Client.connect(process.target) as client:
            cap = unique_capability("big-calls")
            workflow_id = await submit(client, task("a", cap), name="big")
            a = await poll_one(client, cap)
            events = []
            for i in range(25):  # 12 attributes of 16 KiB each, every bound respected: some 5 MiB
                event = reported(a, name=f"model-{i}")
                for k in range(12):
                    event.attributes[f"prompt.{k}"].string_value = "x" * 16_384
                events.append(event)
            await client.raw.worker.ReportEvents(w.ReportEventsRequest(events=events), timeout=30)
            await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, 1)))
            trace_hex = await trace_of(client, workflow_id)
            expected = ["task a", "workflow big", *(f"chat model-{i}" for i in range(25))]
            spans = await collector.wait_for(trace_hex, expected)
        assert process.stop() == 0
    assert sorted(span.name for span in spans) == sorted(expected)
    assert max(collector.request_bytes) <= 3 * MIB  # the default --otlp-max-export-bytes
    call = next(span for span in spans if span.name == "chat model-0")
    assert attributes(call)["prompt.0"] == "x" * 4096  # SPAN_LIMITS.max_attribute_length
    (attempt,) = [span for span in spans if span.name == "task a"]
    assert len(attempt.events) == 25
    assert all(not key.key.startswith("prompt.") for e in attempt.events for key in e.attributes)


async def test_requests_stay_under_the_configured_bound_and_a_huge_span_is_cut_and_marked(
    receiver: tuple[Receiver, str],
) -> None:
    collector, endpoint = receiver
    bound = 64 * 1024
    args = ["--otlp-endpoint", endpoint, "--otlp-max-export-bytes", str(bound)]
    with SidecarProcess.start(env=ENV, args=args) as process:
        async with await Client.connect(process.target) as client:
            cap = unique_capability("huge-span")
            workflow_id = await submit(client, task("a", cap), name="huge")
            a = await poll_one(client, cap)
            events = [reported(a, name=f"model-{i}") for i in range(200)]
            for i in range(3):  # custom events stay on the attempt's span: 3 x 64 x 4 KiB once cut
                event = reported(a, kind=ev.EVENT_TYPE_WORKER_CUSTOM, name=f"note-{i}")
                for k in range(64):
                    event.attributes[f"k{k}"].string_value = "y" * 16_384
                events.append(event)
            await client.raw.worker.ReportEvents(w.ReportEventsRequest(events=events), timeout=30)
            await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, 1)))
            trace_hex = await trace_of(client, workflow_id)
            expected = ["task a", "workflow huge", *(f"chat model-{i}" for i in range(200))]
            spans = await collector.wait_for(trace_hex, expected)
        assert process.stop() == 0
        assert "were cut to fit" in process.log_text()
    assert sorted(span.name for span in spans) == sorted(expected)
    assert len(collector.request_bytes) > 1
    assert max(collector.request_bytes) <= bound
    (attempt,) = [span for span in spans if span.name == "task a"]
    marks = attributes(attempt)
    assert marks["are.span.truncated"] is True
    # The span keeps its last 128 events (SPAN_LIMITS), then the first of those that fit the bound.
    assert 0 < len(attempt.events) < 128
    assert marks["are.span.dropped_events"] == 128 - len(attempt.events)
    assert all(e.attributes[-1].key != "k63" for e in attempt.events)  # the custom events did not fit
    assert all("are.span.truncated" not in attributes(span) for span in spans if span is not attempt)


# ------------------------------------------------------------ late call parent


async def test_a_call_reported_after_the_completion_that_closed_its_workflow_nests_under_its_attempt(
    receiver: tuple[Receiver, str],
) -> None:
    collector, endpoint = receiver
    with SidecarProcess.start(env=ENV, args=["--otlp-endpoint", endpoint]) as process:
        async with await Client.connect(process.target) as client:
            cap = unique_capability("late-call")
            workflow_id = await submit(client, task("a", cap), name="late")
            a = await poll_one(client, cap)
            await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, 1)))
            trace_hex = await trace_of(client, workflow_id)
            await collector.wait_for(trace_hex, ["task a", "workflow late"])  # closed and exported
            await client.raw.worker.ReportEvents(w.ReportEventsRequest(events=[reported(a, name="late")]))
            spans = await collector.wait_for(trace_hex, ["task a", "workflow late", "chat late"])
        assert process.stop() == 0
    by_name = {span.name: span for span in spans}
    assert by_name["chat late"].parent_span_id == by_name["task a"].span_id
    assert by_name["task a"].span_id.hex() == a.trace_context.traceparent.split("-")[2]


# --------------------------------------------------------- restart and root


async def poll_until(client: Client, cap: str) -> w.TaskAssignment:
    """The next assignment of ``cap`` (after a restart, the task may take a moment); bounded."""
    for _ in range(30):
        polled = await client.raw.worker.PollTask(
            w.PollTaskRequest(worker_name="restart", capabilities=[cap]), timeout=10
        )
        if polled.assignments:
            assignment: w.TaskAssignment = polled.assignments[0]
            return assignment
    raise AssertionError(f"no task of {cap} was assigned")


@pytest.mark.parametrize("kill", [True, False], ids=["SIGKILL", "graceful stop"])
async def test_a_workflow_that_spans_a_restart_has_its_span_exported_once_and_complete(
    receiver: tuple[Receiver, str], tmp_path: Path, kill: bool
) -> None:
    collector, endpoint = receiver
    args = ["--otlp-endpoint", endpoint]
    cap = unique_capability("restart")
    with SidecarProcess.start(data_dir=tmp_path / "data", env=ENV, args=args) as process:
        async with await Client.connect(process.target) as client:
            workflow_id = await submit(client, task("a", cap), task("b", cap, "a"), name="across")
            a = await poll_until(client, cap)
            await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, 1)))
            trace_hex = await trace_of(client, workflow_id)
            await collector.wait_for(trace_hex, ["task a"])
        if kill:
            process.kill()
        else:
            assert process.stop() == 0
    with SidecarProcess.start(data_dir=tmp_path / "data", env=ENV, args=args) as process:
        async with await Client.connect(process.target) as client:
            b = await poll_until(client, cap)
            await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(b, 1)))
            spans = await collector.wait_for(trace_hex, ["task a", "task b", "workflow across"])
        assert process.stop() == 0
    assert sorted(span.name for span in collector.of_trace(trace_hex)) == [
        "task a",
        "task b",
        "workflow across",
    ]
    (root,) = [span for span in spans if span.name == "workflow across"]
    assert root.parent_span_id == b""
    assert root.status.code == trace_pb2.Status.STATUS_CODE_OK
    assert "are.span.unfinished" not in attributes(root)
    assert root.start_time_unix_nano < root.end_time_unix_nano
    for span in spans:
        if span is not root:
            assert span.parent_span_id == root.span_id, span.name
