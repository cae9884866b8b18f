"""The SDK's Worker against a real sidecar: handlers, context, heartbeats, drain, reconnect."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from are_sdk import (
    Client,
    RetryPolicy,
    TaskContext,
    TaskResult,
    TaskSpec,
    TaskState,
    Worker,
    WorkflowSpec,
    WorkflowState,
)
from are_sdk._proto.are.v1 import event_pb2
from are_sdk.testing import SidecarProcess
from tests.integration._events import retained_events


def _scheduler_served() -> bool:
    from sidecar._capabilities import CAPABILITIES

    return any("are.v1.WorkerService" in capability.services for capability in CAPABILITIES)


pytestmark = pytest.mark.skipif(
    not _scheduler_served(), reason="no capability serves are.v1.WorkerService yet"
)

RESULT_TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parents[2]


def suffix() -> str:
    return uuid.uuid4().hex[:8]


async def test_sync_handlers_run_in_the_thread_pool(client: Client) -> None:
    cap = f"sync-{suffix()}"
    worker = Worker(client, name=f"sync-{suffix()}")

    @worker.handler(cap)
    def handle(ctx: TaskContext) -> dict[str, Any]:
        return {"main": threading.current_thread() is threading.main_thread(), "input": ctx.input}

    async with worker:
        handle_ = await client.submit_workflow(WorkflowSpec().task("x", capability=cap, input=[1, "a"]))
        assert await handle_.result(timeout=RESULT_TIMEOUT) == {"main": False, "input": [1, "a"]}
    assert worker.stats["completed"] == 1


async def test_context_carries_the_assignment(client: Client) -> None:
    cap = f"ctx-{suffix()}"
    seen: dict[str, Any] = {}
    worker = Worker(client, name=f"ctx-{suffix()}")

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> Any:
        if ctx.task_id == "up":
            return {"v": 1}
        seen.update(
            workflow_id=ctx.workflow_id,
            attempt=ctx.attempt,
            key=ctx.idempotency_key,
            deps=ctx.dependency_outputs,
            dep_state=ctx.dependencies["up"].state,
            deadline=ctx.deadline,
            traceparent=ctx.traceparent,
            labels=ctx.labels,
            maximum_attempts=ctx.maximum_attempts,
        )
        ctx.report_llm_call("model-x", input_tokens=100, output_tokens=20, cost_micro_usd=150)
        ctx.report_llm_call("model-x", input_tokens=10, output_tokens=2, cost_micro_usd=15)
        ctx.report_tool_call("search")
        return TaskResult(b"\x00raw", content_type="application/octet-stream")

    spec = (
        WorkflowSpec("ctx")
        .task("up", capability=cap)
        .task("down", capability=cap, depends_on=["up"], labels={"l": "v"}, start_to_close_timeout=20)
    )
    async with worker:
        handle_ = await client.submit_workflow(spec)
        await handle_.wait(timeout=RESULT_TIMEOUT)
    assert seen["workflow_id"] == handle_.workflow_id
    assert seen["attempt"] == 1
    assert seen["key"]
    assert seen["deps"] == {"up": {"v": 1}}
    assert seen["dep_state"] is TaskState.COMPLETED
    assert seen["deadline"] is not None
    assert seen["labels"] == {"l": "v"}
    assert seen["traceparent"].startswith("00-")
    down = await handle_.task("down")
    assert down.output.data == b"\x00raw"
    assert (down.usage.input_tokens, down.usage.output_tokens, down.usage.cost_micro_usd) == (110, 22, 165)
    assert (down.usage.llm_calls, down.usage.tool_calls) == (2, 1)
    described = await handle_.describe()
    assert described.usage.cost_micro_usd == 165


async def test_reported_calls_carry_the_gen_ai_attributes_and_custom_events_reach_the_trace(
    client: Client,
) -> None:
    """report_llm_call could not name the provider, nor a handler record a custom event; and an
    LLM_CALL carried none of the GenAI attributes event.proto lists (the sidecar now fills those
    the call itself gives)."""
    cap = f"genai-{suffix()}"
    worker = Worker(client, name=f"genai-{suffix()}")

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> Any:
        ctx.report_llm_call(
            "gpt-x", 12, 3, 40, provider="openai", response_model="gpt-x-2025", attributes={"temp": 0.5}
        )
        ctx.report_llm_call("bare-model")
        ctx.report_tool_call("search", call_id="call_7", attributes={"hits": 3, "cached": True})
        ctx.report_event("chose plan B", {"reason": "budget"})
        with pytest.raises(ValueError, match="finite"):
            ctx.report_event("bad", {"x": float("nan")})
        with pytest.raises(TypeError, match="'x' is a list"):
            ctx.report_event("bad", {"x": [1]})  # type: ignore[dict-item]  # not an attribute value, on purpose
        return None

    async with worker:
        handle_ = await client.submit_workflow(WorkflowSpec("genai").task("t", capability=cap))
        assert await handle_.result(timeout=RESULT_TIMEOUT) is None  # raises if the handler's checks failed
        kinds = ["LLM_CALL", "TOOL_CALL", "WORKER_CUSTOM"]
        events: list[event_pb2.Event] = []
        async with asyncio.timeout(RESULT_TIMEOUT):  # reported events may land after the completion
            while len(events) < 4:
                events = [
                    e
                    async for e in client.trace.iter_events(
                        workflow_ids=[handle_.workflow_id], event_types=kinds
                    )
                ]
                await asyncio.sleep(0.05)

    def values(event: event_pb2.Event) -> dict[str, object]:
        return {k: getattr(v, v.WhichOneof("value") or "string_value") for k, v in event.attributes.items()}

    llm, bare, tool, custom = events
    assert (llm.name, values(llm)) == (
        "gpt-x",
        {
            "gen_ai.system": "openai",
            "gen_ai.response.model": "gpt-x-2025",
            "gen_ai.request.model": "gpt-x",
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 3,
            "temp": 0.5,
        },
    )
    assert values(bare)["gen_ai.request.model"] == "bare-model"
    assert values(tool) == {
        "gen_ai.tool.name": "search",
        "gen_ai.tool.call.id": "call_7",
        "hits": 3,
        "cached": True,
    }
    assert custom.event_type == event_pb2.EVENT_TYPE_WORKER_CUSTOM
    assert (custom.name, values(custom)) == ("chose plan B", {"reason": "budget"})


async def test_spawned_tasks_feed_the_waiting_dependents(client: Client) -> None:
    cap = f"spawn-{suffix()}"
    worker = Worker(client, name=f"spawn-{suffix()}")

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> Any:
        if ctx.task_id == "plan":
            children = [TaskSpec(f"part-{i}", capability=cap, input={"i": i}) for i in range(3)]
            ids = await ctx.spawn(*children, dependents_wait=True, request_id=f"{ctx.task_id}.spawn")
            return {"spawned": ids}
        if ctx.task_id.startswith("part-"):
            return ctx.input["i"] * 10
        return sorted(v for k, v in ctx.dependency_outputs.items() if k.startswith("part-"))

    spec = (
        WorkflowSpec("spawn").task("plan", capability=cap).task("merge", capability=cap, depends_on=["plan"])
    )
    async with worker:
        handle_ = await client.submit_workflow(spec)
        assert await handle_.result(timeout=RESULT_TIMEOUT) == [0, 10, 20]
    assert len(await handle_.tasks()) == 5


async def test_concurrency_is_bounded_and_fan_out_is_parallel(client: Client) -> None:
    cap = f"par-{suffix()}"
    running = 0
    peak = 0
    gate = asyncio.Event()
    worker = Worker(client, name=f"par-{suffix()}", max_concurrency=4)

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if peak >= 4:
            gate.set()
        await asyncio.wait_for(gate.wait(), RESULT_TIMEOUT)
        running -= 1

    spec = WorkflowSpec("fan")
    for i in range(20):
        spec.task(f"t{i}", capability=cap)
    spec.task("join", capability=cap, depends_on=[f"t{i}" for i in range(20)])
    async with worker:
        handle_ = await client.submit_workflow(spec)
        final = await handle_.wait(timeout=RESULT_TIMEOUT)
    assert final.state is WorkflowState.COMPLETED
    assert peak == 4


async def test_automatic_heartbeats_keep_a_long_task_leased(client: Client) -> None:
    cap = f"hb-{suffix()}"
    worker = Worker(client, name=f"hb-{suffix()}")
    attempts: list[int] = []

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> str:
        attempts.append(ctx.attempt)
        assert ctx.heartbeat_timeout == 2.0
        ctx.heartbeat({"progress": 0.5})
        await asyncio.sleep(4.5)  # twice the heartbeat timeout, and more
        return "done"

    spec = WorkflowSpec("hb").task("x", capability=cap, heartbeat_timeout=2, start_to_close_timeout=30)
    async with worker:
        handle_ = await client.submit_workflow(spec)
        assert await handle_.result(timeout=RESULT_TIMEOUT) == "done"
    assert attempts == [1]


async def test_a_heartbeat_timeout_under_the_idle_tick_is_met_from_the_first_beat(client: Client) -> None:
    """The first heartbeat of a task taken while the worker idles comes within its timeout.

    The heartbeat loop computed its tick only before sleeping: idle, 1 s, so
    a task with a 0.5 s heartbeat timeout taken during that sleep waited for
    its end, and lost its lease in about half the cases. Each round waits
    past an idle tick first, so that the task comes during one.
    """
    cap = f"hb-first-{suffix()}"
    worker = Worker(client, name=f"hb-first-{suffix()}")

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> str:
        await asyncio.sleep(1.0)  # twice the heartbeat timeout, beating only automatically
        return "done"

    async with worker:
        for round_ in range(4):  # the old loop met the timeout in all four about 1 time in 16
            await asyncio.sleep(1.2)
            spec = WorkflowSpec(f"hb-{round_}").task(
                "x",
                capability=cap,
                heartbeat_timeout=0.5,
                start_to_close_timeout=30,
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
            handle_ = await client.submit_workflow(spec)
            assert await handle_.result(timeout=RESULT_TIMEOUT) == "done", round_


async def test_a_task_assigned_while_the_worker_drains_is_run_not_abandoned(client: Client) -> None:
    """A completion frees a slot just before the drain reaches the sidecar, which fills it.

    The drain waited only for the handlers running when it began, then for
    the acks; the task started meanwhile was cancelled at the half-close
    within milliseconds (a lost worker: with one attempt allowed, the task
    failed for good). It now runs within the grace and reports.
    """
    cap = f"drain-late-{suffix()}"
    worker = Worker(client, name=f"drain-late-{suffix()}", max_concurrency=1, shutdown_grace=20)
    finished: list[str] = []

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> str:
        if ctx.task_id == "first":
            worker.shutdown()  # a SIGTERM arriving as the first task ends
            return "first"
        await asyncio.sleep(0.2)
        finished.append(ctx.task_id)
        return "second"

    spec = (
        WorkflowSpec("drain-late")
        .task("first", capability=cap)
        .task("second", capability=cap, retry_policy=RetryPolicy(maximum_attempts=1))
    )
    handle_ = await client.submit_workflow(spec)
    await asyncio.wait_for(worker.run(handle_signals=False), RESULT_TIMEOUT)
    task = await handle_.task("second")
    if task.attempt:  # the sidecar gave it to this worker before the drain: it ran
        assert finished == ["second"]
        assert task.state is TaskState.COMPLETED
    else:  # the drain came first: never assigned, still waiting for a worker
        assert task.state is TaskState.SCHEDULED


async def test_shutdown_drains_in_flight_tasks(client: Client) -> None:
    cap = f"drain-{suffix()}"
    started = asyncio.Event()
    worker = Worker(client, name=f"drain-{suffix()}", shutdown_grace=20)

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "finished during drain"

    run = asyncio.create_task(worker.run(handle_signals=False))
    await worker.wait_registered(RESULT_TIMEOUT)
    handle_ = await client.submit_workflow(WorkflowSpec().task("x", capability=cap))
    await asyncio.wait_for(started.wait(), RESULT_TIMEOUT)
    worker.shutdown()
    await asyncio.wait_for(run, RESULT_TIMEOUT)
    assert worker.stats["completed"] == 1
    assert await handle_.result(timeout=RESULT_TIMEOUT) == "finished during drain"


async def test_tasks_past_the_grace_period_are_handed_back(client: Client) -> None:
    cap = f"handback-{suffix()}"
    started = asyncio.Event()
    first = Worker(client, name=f"handback-{suffix()}", shutdown_grace=0.2)

    @first.handler(cap)
    async def stuck(ctx: TaskContext) -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    handle = await client.submit_workflow(WorkflowSpec().task("x", capability=cap))
    async with first:
        await asyncio.wait_for(started.wait(), RESULT_TIMEOUT)
    second = Worker(client, name=f"handback-{suffix()}")

    @second.handler(cap)
    async def finish(ctx: TaskContext) -> int:
        return ctx.attempt

    async with second:
        assert await handle.result(timeout=RESULT_TIMEOUT) == 2


async def test_a_declared_capability_without_handler_fails_for_good(client: Client) -> None:
    cap = f"orphan-{suffix()}"
    async with Worker(client, name=f"orphan-{suffix()}", capabilities=[cap]) as worker:
        assert cap in worker.capabilities
        handle = await client.submit_workflow(WorkflowSpec().task("x", capability=cap))
        final = await handle.wait(timeout=RESULT_TIMEOUT)
    assert final.state is WorkflowState.FAILED
    task = await handle.task("x")
    assert task.failure is not None
    assert (task.failure.type, task.failure.non_retryable) == ("NonRetryableError", True)
    assert task.attempt == 1


async def test_non_retryable_failure_types_of_the_policy_apply(client: Client) -> None:
    from are_sdk import RetryPolicy, TaskError

    cap = f"typed-{suffix()}"
    worker = Worker(client, name=f"typed-{suffix()}")
    attempts: list[int] = []

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> None:
        attempts.append(ctx.attempt)
        raise TaskError("quota gone", type="QuotaExhausted", details={"left": 0})

    policy = RetryPolicy(
        maximum_attempts=5, initial_interval=0.01, non_retryable_failure_types=("QuotaExhausted",)
    )
    async with worker:
        handle_ = await client.submit_workflow(WorkflowSpec().task("x", capability=cap, retry_policy=policy))
        final = await handle_.wait(timeout=RESULT_TIMEOUT)
    assert final.state is WorkflowState.FAILED
    assert attempts == [1]
    task = await handle_.task("x")
    assert task.failure is not None
    assert (task.failure.type, task.failure.details) == ("QuotaExhausted", {"left": 0})


async def test_a_negative_llm_call_report_fails_the_attempt_with_the_reported_usage(client: Client) -> None:
    """The sidecar refuses a negative usage counter (it used to clamp it to 0): the SDK refuses
    it where it is reported, so the handler fails with the reason instead of its completion
    being refused and the attempt waiting out its timeout."""
    from are_sdk import RetryPolicy

    cap = f"negative-usage-{suffix()}"
    worker = Worker(client, name=f"negative-usage-{suffix()}")

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> str:
        ctx.report_llm_call("model-x", input_tokens=10, output_tokens=2, cost_micro_usd=3)
        ctx.report_llm_call("model-x", input_tokens=1, cost_micro_usd=-1)
        return "unreachable"

    async with worker:
        handle_ = await client.submit_workflow(
            WorkflowSpec().task("x", capability=cap, retry_policy=RetryPolicy(maximum_attempts=1))
        )
        final = await handle_.wait(timeout=RESULT_TIMEOUT)
    assert final.state is WorkflowState.FAILED
    task = await handle_.task("x")
    assert task.failure is not None
    assert task.failure.type == "ValueError"
    assert "cost_micro_usd must be at least 0, got -1" in task.failure.message
    usage = task.usage  # what was reported before the bad call, sent with the failure
    assert (usage.input_tokens, usage.output_tokens, usage.cost_micro_usd, usage.llm_calls) == (10, 2, 3, 1)


async def test_a_refused_completion_is_reported_as_a_failure(client: Client) -> None:
    """A completion the sidecar refuses as invalid (here an output content type over 128
    characters) leaves the attempt held: the worker reports a CompletionRefused failure
    naming the field, with the completion's usage, instead of leaving it RUNNING."""
    from are_sdk import RetryPolicy

    cap = f"refused-{suffix()}"
    worker = Worker(client, name=f"refused-{suffix()}", shutdown_grace=5)

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> TaskResult:
        ctx.report_llm_call("model-x", input_tokens=7, output_tokens=3, cost_micro_usd=11)
        return TaskResult(b"out", content_type="x" * 129)

    async with worker:
        handle_ = await client.submit_workflow(
            WorkflowSpec().task("x", capability=cap, retry_policy=RetryPolicy(maximum_attempts=1))
        )
        final = await handle_.wait(timeout=15)
    assert final.state is WorkflowState.FAILED
    task = await handle_.task("x")
    assert task.state is TaskState.FAILED
    assert task.failure is not None
    assert (task.failure.type, task.failure.non_retryable) == ("CompletionRefused", False)
    assert "LIMIT_EXCEEDED" in task.failure.message
    assert "complete.completions[0].output.content_type" in task.failure.message
    usage = task.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cost_micro_usd, usage.llm_calls) == (7, 3, 11, 1)
    assert (worker.stats["completed"], worker.stats["failed"]) == (0, 1)


async def test_worker_without_handlers_refuses_to_run(client: Client) -> None:
    worker = Worker(client, name="empty")
    with pytest.raises(ValueError, match="no capability"):
        await worker.run()


@pytest.mark.slow
async def test_worker_reconnects_after_a_sidecar_restart(tmp_path: Path) -> None:
    socket = tmp_path / "are.sock"
    args = ["--listen", "off", "--uds", str(socket)]
    data = tmp_path / "data"
    sidecar = SidecarProcess.start(data_dir=data, args=args)
    try:
        async with await Client.connect(sidecar.target) as client:
            cap = f"re-{suffix()}"
            worker = Worker(client, name="reconnect")

            @worker.handler(cap)
            async def handle(ctx: TaskContext) -> int:
                return ctx.attempt

            async with worker:
                sidecar.kill()
                sidecar.cleanup()
                sidecar = SidecarProcess.start(data_dir=data, args=args)
                handle_ = await client.submit_workflow(WorkflowSpec().task("x", capability=cap))
                assert await handle_.result(timeout=RESULT_TIMEOUT) == 1
            assert worker.stats["connects"] >= 2
    finally:
        sidecar.cleanup()


def test_the_example_pipeline_runs_end_to_end(sidecar: SidecarProcess) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "research_pipeline.py"), "--target", sidecar.target],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    # The story follows the recorded order: the gate opens after both drafts, is approved, then runs.
    assert "review    AWAITING_APPROVAL" in lines, result.stdout
    gate = lines.index("review    AWAITING_APPROVAL")
    assert lines.index("write     COMPLETED") < gate
    assert lines.index("design    COMPLETED") < gate
    assert lines[gate + 1 : gate + 4] == [
        "waiting for approval: review (after write, design)",
        "approved review",
        "review    RUNNING",
    ]
    assert "COMPLETED: cost 900 micro-USD" in result.stdout
    assert "published: https://example.invalid/" in result.stdout


def test_the_worker_classes_example_routes_intents_to_the_cheapest_class(sidecar: SidecarProcess) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "worker_classes.py"), "--target", sidecar.target],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "-> example.worker-classes.summarize-small" in result.stdout  # not the large one: it costs more
    assert "-> example.worker-classes.translate" in result.stdout
    assert "inbox: example.worker-classes.class-summarize-small (cheapest above" in result.stdout


_SIGTERM_WORKER = """
import asyncio, sys
from are_sdk import Client, Worker

async def main(target, cap):
    async with await Client.connect(target) as client:
        worker = Worker(client, name="sigterm", shutdown_grace=20)

        @worker.handler(cap)
        async def slow(ctx):
            print("started", flush=True)
            await asyncio.sleep(0.5)
            return "drained"

        await worker.run()
        print("stopped", worker.stats["completed"], flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_sigterm_drains_a_worker_process(client: Client, sidecar: SidecarProcess) -> None:
    cap = f"sigterm-{suffix()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SIGTERM_WORKER,
        sidecar.target,
        cap,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        handle = await client.submit_workflow(WorkflowSpec().task("x", capability=cap))
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), RESULT_TIMEOUT)
        assert line.strip() == b"started"
        process.terminate()
        out, err = await asyncio.wait_for(process.communicate(), RESULT_TIMEOUT)
        assert process.returncode == 0, err.decode()
        assert out.strip() == b"stopped 1"
        assert await handle.result(timeout=RESULT_TIMEOUT) == "drained"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_stream_worker_connecting_and_leaving_is_in_the_trace(client: Client) -> None:
    name = f"traced-{suffix()}"
    worker = Worker(client, name=name, max_concurrency=3)

    @worker.handler(f"cap-{suffix()}")
    def handle(ctx: TaskContext) -> None:
        del ctx

    async with worker:
        worker_id = worker.worker_id
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(600):  # the disconnect commits just after the stream ends (bounded: 30 s)
        events = await retained_events(
            client, worker_id=worker_id, event_types=["WORKER_CONNECTED", "WORKER_DISCONNECTED"]
        )
        seen = {event_pb2.EventType.Name(e.event_type): dict(e.attributes.items()) for e in events}
        if len(seen) == 2:
            break
        await asyncio.sleep(0.05)
    connected = seen["EVENT_TYPE_WORKER_CONNECTED"]
    assert connected["are.worker.name"].string_value == name
    assert connected["are.worker.max_concurrency"].int_value == 3
    assert "are.worker.capabilities" in connected
    assert seen["EVENT_TYPE_WORKER_DISCONNECTED"]["are.worker.held_tasks"].int_value == 0


async def test_a_handlers_chained_exceptions_are_its_failures_causes(client: Client) -> None:
    """``raise ... from ...`` (and an exception raised while handling another) reach the
    task's failure as its causes, outermost first (they were dropped)."""
    from are_sdk import RetryPolicy

    cap = f"causes-{suffix()}"
    worker = Worker(client, name=f"causes-{suffix()}")

    def find() -> None:
        models: dict[str, str] = {}
        try:
            models["model-x"]
        except KeyError as missing:
            raise LookupError("no such model") from missing

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> None:
        try:
            find()
        except LookupError:
            raise RuntimeError("the call failed")  # noqa: B904 - the implicit context is the point

    async with worker:
        handle_ = await client.submit_workflow(
            WorkflowSpec().task("x", capability=cap, retry_policy=RetryPolicy(maximum_attempts=1))
        )
        final = await handle_.wait(timeout=RESULT_TIMEOUT)
    assert final.state is WorkflowState.FAILED
    task = await handle_.task("x")
    chain = []
    failure = task.failure
    while failure is not None:
        chain.append((failure.type, failure.message))
        failure = failure.cause
    assert chain == [
        ("RuntimeError", "the call failed"),
        ("LookupError", "no such model"),
        ("KeyError", "'model-x'"),
    ]


async def test_a_failure_past_the_sidecars_bounds_is_fitted_to_them(client: Client) -> None:
    """A TaskError whose type is over 256 characters and details over 1 MiB was refused by the
    sidecar, leaving the attempt RUNNING: the worker cuts the type, drops the details saying
    so, and clamps a negative retry_after, so the attempt ends FAILED."""
    from are_sdk import RawPayload, RetryPolicy, TaskError

    cap = f"oversized-{suffix()}"
    worker = Worker(client, name=f"oversized-{suffix()}", shutdown_grace=5)

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> None:
        raise TaskError(
            "too big",
            type="T" * 299 + "é",
            details=RawPayload(b"x" * (1024 * 1024 + 1), "application/octet-stream"),
            retry_after=-5,
        )

    async with worker:
        handle_ = await client.submit_workflow(
            WorkflowSpec().task("x", capability=cap, retry_policy=RetryPolicy(maximum_attempts=1))
        )
        final = await handle_.wait(timeout=15)
    assert final.state is WorkflowState.FAILED
    task = await handle_.task("x")
    assert task.state is TaskState.FAILED
    assert task.failure is not None
    assert task.failure.type == "T" * 256
    assert task.failure.message == "too big (details of 1048577 bytes dropped: over 1 MiB)"
    assert task.failure.details is None


class _Unprintable(Exception):  # noqa: N818 - named for what the test is about
    def __str__(self) -> str:
        raise RuntimeError("a __str__ that fails")


async def test_a_handler_error_whose_message_cannot_be_read_still_fails_the_attempt(client: Client) -> None:
    """Building the failure raised again inside the worker: the attempt stayed held and heartbeated,
    RUNNING for good, and a worker of concurrency 1 took nothing more; nothing was logged."""
    from are_sdk import RetryPolicy

    cap = f"unprintable-{suffix()}"
    worker = Worker(client, name=f"unprintable-{suffix()}", max_concurrency=1)

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> str:
        if ctx.task_id == "bad":
            raise _Unprintable from ValueError("the cause")
        return "next ran"

    once = RetryPolicy(maximum_attempts=1)
    async with worker:
        bad = await client.submit_workflow(WorkflowSpec().task("bad", capability=cap, retry_policy=once))
        assert (await bad.wait(timeout=RESULT_TIMEOUT)).state is WorkflowState.FAILED
        good = await client.submit_workflow(WorkflowSpec().task("good", capability=cap))
        assert await good.result(timeout=RESULT_TIMEOUT) == "next ran"  # the worker was not wedged
    task = await bad.task("bad")
    assert task.failure is not None
    assert task.failure.type == "_Unprintable"
    assert task.failure.message == "_Unprintable()"  # its repr, as str() raised
    assert task.failure.cause is not None
    assert (task.failure.cause.type, task.failure.cause.message) == ("ValueError", "the cause")


async def test_a_cancelled_error_the_handler_raises_itself_fails_the_attempt(client: Client) -> None:
    """A CancelledError from inside the handler (a cancelled future it awaited), the attempt not
    being cancelled, was taken for a cancel: nothing reported, the attempt held for good."""
    from are_sdk import RetryPolicy

    cap = f"selfcancel-{suffix()}"
    worker = Worker(client, name=f"selfcancel-{suffix()}")
    attempts: list[int] = []

    @worker.handler(cap)
    async def handle(ctx: TaskContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            await future  # raises CancelledError into the handler
        return "second attempt"

    policy = RetryPolicy(maximum_attempts=2, initial_interval=0.01)
    async with worker:
        handle_ = await client.submit_workflow(WorkflowSpec().task("x", capability=cap, retry_policy=policy))
        assert await handle_.result(timeout=RESULT_TIMEOUT) == "second attempt"
    assert attempts == [1, 2]  # the first failed (retryable), the second completed


async def test_a_thousand_pending_waits_hold_up_no_other_call_of_the_client(client: Client) -> None:
    """Each wait holds a WatchWorkflow stream, and the sidecar serves 1,024 streams at once on a
    connection: on the client's one connection, 1,030 pending waits starved its health check
    and a worker's registration. Waits now have a connection of their own."""
    nobody = f"nobody-{suffix()}"
    handle = await client.submit_workflow(WorkflowSpec().task("x", capability=nobody))
    waits = [asyncio.create_task(handle.wait()) for _ in range(1030)]
    try:
        await asyncio.sleep(1.0)  # the waits open their streams
        assert not any(w.done() for w in waits)
        assert await client.health(timeout=10) == "SERVING"
        cap = f"beside-waits-{suffix()}"
        worker = Worker(client, name=f"beside-waits-{suffix()}")

        @worker.handler(cap)
        async def handle_(ctx: TaskContext) -> str:
            return "served"

        async with asyncio.timeout(30):
            async with worker:  # registered on its stream, beside the 1,030 waits
                other = await client.submit_workflow(WorkflowSpec().task("y", capability=cap))
                # Polled: a wait would queue behind the others on their connection, by design.
                while (await other.describe()).state is not WorkflowState.COMPLETED:
                    await asyncio.sleep(0.05)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await handle.cancel()
