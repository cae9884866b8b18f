"""OpenTelemetry export against a real OTLP/gRPC receiver started in the test.

The receiver is a grpc server implementing the collector's
``opentelemetry.proto.collector.trace.v1.TraceService``; the sidecar exports
to it with the standard OTLP exporter. Events are recorded through the
sidecar's test hook (``ARE_TRACE_TEST_HOOK=1``), as producers record them.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any, TypedDict

import grpc
import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from are_core.trace import (
    EventDraft,
    EventUsage,
    FailureInfo,
    attempt_span_id,
    task_traceparent,
    workflow_span_id,
    workflow_trace_id,
)
from are_sdk import Client, TaskContext, Worker, WorkflowSpec
from are_sdk._proto.are.v1 import scheduler_service_pb2
from are_sdk.testing import SidecarProcess
from sidecar._trace import TEST_HOOK_ENV, TEST_HOOK_METHOD


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.service_names: set[str] = set()
        self._lock = threading.Lock()

    def Export(  # noqa: N802 - the collector's RPC name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.service_names.add(attribute.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: int) -> list[trace_pb2.Span]:
        with self._lock:
            return [s for s in self.spans if int.from_bytes(s.trace_id, "big") == trace_id]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    collector = Receiver()
    # grpcio's generated helper has no annotations.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, port
    finally:
        server.stop(grace=None)


async def record(client: Client, *drafts: EventDraft) -> list[int]:
    call = client.channel.unary_unary(TEST_HOOK_METHOD)
    reply = await call(msgspec.msgpack.encode(list(drafts)), timeout=30)
    return msgspec.msgpack.decode(reply, type=list[int])


def attributes(span: trace_pb2.Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for attribute in span.attributes:
        value = attribute.value
        out[attribute.key] = getattr(value, value.WhichOneof("value") or "string_value")
    return out


class _TaskIds(TypedDict):
    """The ids every event of the one task carries, typed so that ``**`` passes them to EventDraft."""

    workflow_id: str
    task_id: str


def workflow_events(wf: str) -> list[list[EventDraft]]:
    """A workflow whose task fails once, retries, calls an LLM and a tool, and completes."""
    task: _TaskIds = {"workflow_id": wf, "task_id": "answer"}
    return [
        [EventDraft(event_type="WORKFLOW_SUBMITTED", workflow_id=wf, attributes={"are.workflow.name": "qa"})],
        [EventDraft(event_type="TASK_DISPATCHED", attempt=1, worker_id="w1", **task)],
        [
            EventDraft(
                event_type="TASK_ATTEMPT_FAILED",
                attempt=1,
                task_state="BACKING_OFF",
                failure=FailureInfo(message="rate limited", type="RateLimitError"),
                **task,
            )
        ],
        [EventDraft(event_type="TASK_DISPATCHED", attempt=2, worker_id="w1", **task)],
        [
            EventDraft(
                event_type="LLM_CALL",
                attempt=2,
                name="gpt-4o-mini",
                duration_ns=2_000_000,
                usage=EventUsage(input_tokens=100, output_tokens=25, cost_micro_usd=40),
                attributes={"gen_ai.system": "openai"},
                **task,
            ),
            EventDraft(event_type="TOOL_CALL", attempt=2, name="calculator", duration_ns=1_000_000, **task),
        ],
        [EventDraft(event_type="TASK_COMPLETED", attempt=2, task_state="COMPLETED", **task)],
        [EventDraft(event_type="WORKFLOW_COMPLETED", workflow_id=wf, workflow_state="COMPLETED")],
    ]


async def test_spans_reach_a_real_otlp_receiver(receiver: tuple[Receiver, int]) -> None:
    collector, port = receiver
    wf = "wf-otlp-1"
    env = {TEST_HOOK_ENV: "1", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    with SidecarProcess.start(env=env, args=["--otlp-endpoint", f"http://127.0.0.1:{port}"]) as process:
        async with await Client.connect(process.target) as client:
            for group in workflow_events(wf):
                await record(client, *group)
            trace_id = workflow_trace_id(wf)
            deadline = time.monotonic() + 20  # bounded wait for the batch processor
            while len(collector.of_trace(trace_id)) < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    spans = collector.of_trace(trace_id)
    assert collector.service_names == {"are-sidecar"}
    by_name: dict[str, list[trace_pb2.Span]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert sorted(by_name) == ["chat gpt-4o-mini", "execute_tool calculator", "task answer", "workflow qa"]

    (root,) = by_name["workflow qa"]
    assert int.from_bytes(root.span_id, "big") == workflow_span_id(wf)
    assert root.parent_span_id == b""
    assert root.status.code == trace_pb2.Status.STATUS_CODE_OK

    # attributes() types values as object; are.attempt is an int_value, so the attempts sort as ints.
    attempts = sorted(by_name["task answer"], key=lambda s: attributes(s)["are.attempt"])  # type: ignore[arg-type,return-value]
    assert [int.from_bytes(s.span_id, "big") for s in attempts] == [
        attempt_span_id(wf, "answer", 1),
        attempt_span_id(wf, "answer", 2),
    ]
    for attempt in attempts:
        assert attempt.parent_span_id == root.span_id
    assert attempts[0].status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert [link.span_id for link in attempts[1].links] == [attempts[0].span_id]
    assert [e.name for e in attempts[0].events] == ["are.task_attempt_failed"]
    assert [e.name for e in attempts[1].events] == ["are.llm_call", "are.tool_call"]
    # The W3C context handed to the worker of attempt 2 names the exported span.
    assert task_traceparent(wf, "answer", 2).split("-")[2] == attempts[1].span_id.hex()

    (llm,) = by_name["chat gpt-4o-mini"]
    assert llm.parent_span_id == attempts[1].span_id
    assert llm.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    llm_attributes = attributes(llm)
    assert llm_attributes["gen_ai.operation.name"] == "chat"
    assert llm_attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert llm_attributes["gen_ai.system"] == "openai"
    assert llm_attributes["gen_ai.usage.input_tokens"] == 100
    assert llm_attributes["gen_ai.usage.output_tokens"] == 25
    (tool,) = by_name["execute_tool calculator"]
    assert attributes(tool)["gen_ai.tool.name"] == "calculator"


async def test_nothing_is_exported_without_an_endpoint(receiver: tuple[Receiver, int]) -> None:
    if any(
        os.environ.get(name) for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        pytest.skip("this environment turns OTLP export on for every sidecar")
    collector, port = receiver
    # The receiver listens, but neither the option nor OTEL_EXPORTER_OTLP_ENDPOINT names it.
    with SidecarProcess.start(env={TEST_HOOK_ENV: "1", "OTEL_BSP_SCHEDULE_DELAY": "50"}) as process:
        async with await Client.connect(process.target) as client:
            for group in workflow_events("wf-otlp-off"):
                await record(client, *group)
        assert process.stop() == 0  # a clean stop flushes any exporter there is
        log = process.log_text()
    assert "exporting traces with OTLP" not in log
    assert collector.spans == []
    assert port  # the receiver was there to receive


async def test_the_standard_environment_variable_turns_export_on(receiver: tuple[Receiver, int]) -> None:
    collector, port = receiver
    env = {
        TEST_HOOK_ENV: "1",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
    }
    with SidecarProcess.start(env=env) as process:
        async with await Client.connect(process.target) as client:
            for group in workflow_events("wf-otlp-env"):
                await record(client, *group)
        assert process.stop() == 0  # shutdown flushes the queued spans
    assert len(collector.of_trace(workflow_trace_id("wf-otlp-env"))) == 5


async def test_a_workers_traceparent_names_the_exported_attempt_span(receiver: tuple[Receiver, int]) -> None:
    """With the real scheduler and a real worker: worker spans would nest under the attempt's span."""
    collector, port = receiver
    seen: dict[str, str] = {}
    env = {"OTEL_BSP_SCHEDULE_DELAY": "50"}
    with SidecarProcess.start(env=env, args=["--otlp-endpoint", f"http://127.0.0.1:{port}"]) as process:
        async with await Client.connect(process.target) as client:
            worker = Worker(client, name="otlp-test", max_concurrency=2)

            @worker.handler("otlp-echo")
            async def echo(ctx: TaskContext) -> dict[str, str]:
                seen[ctx.task_id] = ctx.traceparent
                ctx.report_llm_call("test-model", input_tokens=3, output_tokens=1)
                return {"ok": ctx.task_id}

            async with worker:
                spec = (
                    WorkflowSpec("otlp-e2e")
                    .task("a", capability="otlp-echo")
                    .task("b", capability="otlp-echo", depends_on=["a"])
                )
                handle = await client.submit_workflow(spec)
                await handle.result(timeout=30)
                described = await client.raw.scheduler.GetWorkflow(
                    scheduler_service_pb2.GetWorkflowRequest(workflow_id=handle.workflow_id)
                )
        assert process.stop() == 0  # flushes the exporter
    trace_id = int(described.workflow.trace_id, 16)
    spans = collector.of_trace(trace_id)
    names = sorted(span.name for span in spans)
    assert names == ["chat test-model", "chat test-model", "task a", "task b", "workflow otlp-e2e"]
    # The submit's state version 1 is an event of the workflow span, not dropped for coming first.
    (root,) = [s for s in spans if s.name == "workflow otlp-e2e"]
    patched = [e for e in root.events if e.name == "are.state_patched"]
    assert [{a.key: a.value.int_value for a in e.attributes}["are.state.version"] for e in patched] == [1]
    for task_id in ("a", "b"):
        version, trace_hex, span_hex, _ = seen[task_id].split("-")
        assert version == "00"
        assert int(trace_hex, 16) == trace_id
        (attempt,) = [s for s in spans if s.name == f"task {task_id}"]
        assert attempt.span_id.hex() == span_hex  # a worker span with this parent nests under it
