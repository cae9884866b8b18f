"""What a workflow produced, on the command line: ``are submit --wait`` and ``are result``.

Each ``are`` runs as a subprocess with its output piped, against the
session's sidecar, while a worker of the Python SDK serves the test's own
capability (unique to the test, so that no other test's tasks reach it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from are_sdk import Client, RawPayload, TaskContext, Worker
from are_sdk._proto.are.v1 import scheduler_service_pb2, task_pb2, workflow_pb2
from are_sdk.testing import SidecarProcess

_JSON_RESULT = {"answer": 42, "owner": "zoë", "steps": ["search", "write"]}
_TEXT_RESULT = "héllo [bold]world[/bold]\nsecond line\n"
_BINARY_RESULT = b"\x00\x1b[2J\xff binary"


class Ran(msgspec.Struct):
    returncode: int
    stdout: str
    stderr: str
    raw: bytes


async def _are(target: str, *args: str) -> Ran:
    """Runs ``are ARGS`` to its end with its output piped; one that hangs fails after a minute."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARE_") and k != "COLUMNS"}
    env.update({"ARE_TARGET": target, "NO_COLOR": "1"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    ran = Ran(process.returncode, stdout.decode(errors="replace"), stderr.decode(), stdout)
    assert "Traceback" not in ran.stderr, ran.stderr
    return ran


class Served(msgspec.Struct):
    """A connected client, and the capability its worker serves for this test."""

    client: Client
    capability: str


@pytest.fixture
async def served(sidecar: SidecarProcess) -> AsyncIterator[Served]:
    """A worker serving a capability unique to the test: a task's input says what it returns."""
    capability = f"cli-result-{uuid.uuid4().hex[:8]}"
    async with await Client.connect(sidecar.target) as client:
        worker = Worker(client, name="cli-result", max_concurrency=2)

        @worker.handler(capability)
        async def produce(ctx: TaskContext) -> Any:
            kind = (ctx.input or {}).get("return", "json")
            if kind == "text":
                return RawPayload(_TEXT_RESULT.encode(), "text/plain; charset=utf-8")
            if kind == "binary":
                return _BINARY_RESULT
            if kind == "fail":
                raise ValueError("the input named no document")
            return {**_JSON_RESULT, "task": ctx.task_id}

        async with worker:
            yield Served(client, capability)


def _spec_file(tmp_path: Path, capability: str, *tasks: str) -> Path:
    """A YAML spec of tasks ``ID:RETURN[:DEPENDENCY]``; one that fails is tried once."""
    lines = ["name: cli-result", "tasks:"]
    for task in tasks:
        task_id, kind, *after = task.split(":")
        lines += [
            f"  - task_id: {task_id}",
            f"    capability: {capability}",
            f"    input: {{return: {kind}}}",
        ]
        lines += ["    retry_policy: {maximum_attempts: 1}"] if kind == "fail" else []
        lines += [f"    depends_on: [{after[0]}]"] if after else []
    path = tmp_path / "spec.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _submitted(ran: Ran) -> str:
    first = ran.stdout.splitlines()[0].split()
    assert first[0] == "submitted", ran.stdout
    return first[1]


def _after_state_line(ran: Ran, workflow_id: str, state: str) -> str:
    """What ``submit --wait`` printed after its final ``workflow ID STATE`` line."""
    lines = ran.stdout.splitlines(keepends=True)
    index = lines.index(f"workflow {workflow_id} {state}\n")
    return "".join(lines[index + 1 :])


async def test_a_json_result_is_printed_by_submit_wait_and_by_result(
    served: Served, sidecar: SidecarProcess, tmp_path: Path
) -> None:
    spec = _spec_file(tmp_path, served.capability, "fetch:json", "summarize:json:fetch")
    ran = await _are(sidecar.target, "submit", str(spec), "--wait")
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    workflow_id = _submitted(ran)
    printed = _after_state_line(ran, workflow_id, "COMPLETED")
    assert json.loads(printed) == {**_JSON_RESULT, "task": "summarize"}  # the only final task's output
    assert printed.startswith('{\n  "answer": 42,\n  "owner": "zoë"'), printed  # indented, not escaped

    ran = await _are(sidecar.target, "result", workflow_id)
    assert (ran.returncode, ran.stderr) == (0, "")
    assert ran.stdout == printed

    ran = await _are(sidecar.target, "result", workflow_id, "--json")
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    assert json.loads(ran.stdout) == {
        "workflowId": workflow_id,
        "state": "COMPLETED",
        "taskId": "summarize",
        "contentType": "application/json",
        "sizeBytes": len(
            json.dumps(
                {**_JSON_RESULT, "task": "summarize"}, separators=(",", ":"), ensure_ascii=False
            ).encode()
        ),
        "value": {**_JSON_RESULT, "task": "summarize"},
    }
    assert len(ran.stdout.splitlines()) == 1

    ran = await _are(sidecar.target, "result", workflow_id, "--task", "fetch")
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    assert json.loads(ran.stdout) == {**_JSON_RESULT, "task": "fetch"}


async def test_text_is_printed_as_text_and_binary_only_to_a_file(
    served: Served, sidecar: SidecarProcess, tmp_path: Path
) -> None:
    spec = _spec_file(tmp_path, served.capability, "write:text")
    ran = await _are(sidecar.target, "submit", str(spec), "--wait")
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    workflow_id = _submitted(ran)
    assert _after_state_line(ran, workflow_id, "COMPLETED") == _TEXT_RESULT  # as it is, not read as markup
    ran = await _are(sidecar.target, "result", workflow_id)
    assert (ran.returncode, ran.stdout) == (0, _TEXT_RESULT)
    ran = await _are(sidecar.target, "result", workflow_id, "--json")
    assert json.loads(ran.stdout)["text"] == _TEXT_RESULT

    spec = _spec_file(tmp_path, served.capability, "render:binary")
    ran = await _are(sidecar.target, "submit", str(spec), "--wait")
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    workflow_id = _submitted(ran)
    described = _after_state_line(ran, workflow_id, "COMPLETED")
    assert described == f"{len(_BINARY_RESULT)} B of application/octet-stream (binary: not printed)\n"
    assert f"save it with: are result {workflow_id} > FILE" in ran.stderr
    ran = await _are(sidecar.target, "result", workflow_id)  # to a pipe: the bytes as they are
    assert (ran.returncode, ran.raw) == (0, _BINARY_RESULT)


async def test_a_failed_workflow_says_why_on_stderr(
    served: Served, sidecar: SidecarProcess, tmp_path: Path
) -> None:
    spec = _spec_file(tmp_path, served.capability, "fetch:json", "parse:fail:fetch")
    ran = await _are(sidecar.target, "submit", str(spec), "--wait")
    assert ran.returncode == 1
    workflow_id = _submitted(ran)
    assert _after_state_line(ran, workflow_id, "FAILED") == ""
    first, *rest = ran.stderr.splitlines()
    assert first.startswith(f"error: workflow {workflow_id} FAILED"), ran.stderr
    assert "  task parse FAILED: (ValueError) the input named no document" in rest, ran.stderr

    ran = await _are(sidecar.target, "result", workflow_id)
    assert (ran.returncode, ran.stdout) == (1, "")
    assert ran.stderr.splitlines()[0] == first
    assert "  task parse FAILED: (ValueError) the input named no document" in ran.stderr.splitlines()

    ran = await _are(sidecar.target, "result", workflow_id, "--json")
    assert ran.returncode == 1
    answer = json.loads(ran.stdout)
    assert answer["state"] == "FAILED" and "value" not in answer
    [task] = answer["failedTasks"]
    assert task["taskId"] == "parse"
    assert task["failure"]["type"] == "ValueError"

    ran = await _are(sidecar.target, "result", workflow_id, "--task", "parse")
    assert (ran.returncode, ran.stdout) == (1, "")
    assert ran.stderr.startswith(
        f"error: task parse of workflow {workflow_id} FAILED: (ValueError) the input named no document\n"
    )


async def test_a_workflow_not_ended_or_cancelled_has_no_result(
    served: Served, sidecar: SidecarProcess
) -> None:
    idle = task_pb2.TaskSpec(task_id="wait", capability=f"nobody-serves-{uuid.uuid4().hex[:8]}")
    handle = await served.client.workflows.submit(workflow_pb2.WorkflowSpec(name="idle", tasks=[idle]))
    workflow_id = handle.workflow_id
    ran = await _are(sidecar.target, "result", workflow_id)
    assert (ran.returncode, ran.stdout) == (1, "")
    assert ran.stderr.startswith(f"error: workflow {workflow_id} is RUNNING: it has not ended")
    ran = await _are(sidecar.target, "result", workflow_id, "--task", "wait")
    assert (ran.returncode, ran.stdout) == (1, "")
    assert ran.stderr.startswith(f"error: task wait of workflow {workflow_id} is SCHEDULED: it has not ended")

    await served.client.raw.scheduler.CancelWorkflow(
        scheduler_service_pb2.CancelWorkflowRequest(workflow_id=workflow_id, reason="no longer needed")
    )
    ran = await _are(sidecar.target, "result", workflow_id)
    assert (ran.returncode, ran.stdout) == (1, "")
    assert ran.stderr.startswith(f"error: workflow {workflow_id} CANCELLED: ")
    assert "no longer needed" in ran.stderr.splitlines()[0]


async def test_a_workflow_without_a_result_task_says_so(
    served: Served, sidecar: SidecarProcess, tmp_path: Path
) -> None:
    spec = _spec_file(tmp_path, served.capability, "left:json", "right:json")  # two final tasks
    ran = await _are(sidecar.target, "submit", str(spec), "--wait")
    assert ran.returncode == 0, (ran.stdout, ran.stderr)  # it completed: the exit status says so
    workflow_id = _submitted(ran)
    assert _after_state_line(ran, workflow_id, "COMPLETED") == ""
    assert f"workflow {workflow_id} has no result" in ran.stderr
    ran = await _are(sidecar.target, "result", workflow_id)
    assert (ran.returncode, ran.stdout) == (1, "")
    assert ran.stderr.startswith(
        f"error: workflow {workflow_id} has no result: its spec names no result_task_id"
    )
    ran = await _are(sidecar.target, "result", workflow_id, "--task", "right")
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    assert json.loads(ran.stdout)["task"] == "right"


async def test_an_unknown_workflow_or_task_is_not_found(served: Served, sidecar: SidecarProcess) -> None:
    ran = await _are(sidecar.target, "result", "wf-no-such-workflow")
    assert (ran.returncode, ran.stdout) == (1, "")
    assert (
        ran.stderr == "error: NOT_FOUND (WORKFLOW_NOT_FOUND): workflow 'wf-no-such-workflow' does not exist\n"
    )

    idle = task_pb2.TaskSpec(task_id="wait", capability=f"nobody-serves-{uuid.uuid4().hex[:8]}")
    handle = await served.client.workflows.submit(workflow_pb2.WorkflowSpec(name="idle", tasks=[idle]))
    try:
        ran = await _are(sidecar.target, "result", handle.workflow_id, "--task", "nope")
        assert (ran.returncode, ran.stdout) == (1, "")
        assert ran.stderr.startswith("error: NOT_FOUND (TASK_NOT_FOUND): ")
    finally:
        await handle.cancel()
    ran = await _are(sidecar.target, "result")
    assert ran.returncode == 2
