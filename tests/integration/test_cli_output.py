"""What the client commands print: text as given, every task of a deep DAG, true durations, whole error lines.

Defects: ids, messages and descriptions were read as rich markup, so
``are status 'a[/b]'``, ``are approve W 'x[/y]'`` and a pool described as
``GPU boxes [/see docs]`` ended in a MarkupError traceback and ``[red]a``
lost its brackets; ``are status`` silently dropped the tasks of a DAG deeper
than 64 levels (and, in a terminal, those past its width), and squeezed a
piped tree into 80 columns; a task backing off showed a duration that kept
growing; error lines sent to a pipe were cut at 80 columns.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from are_sdk import Client, TaskContext, TaskState, Worker
from are_sdk._proto.are.v1 import common_pb2, task_pb2, workflow_pb2
from are_sdk.testing import SidecarProcess

_DURATION = re.compile(r"[0-9.]+m?s|[0-9]+m[0-9]+s|[0-9]+h[0-9]+m")


def _are(target: str, *args: str, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``are ARGS`` with its output piped (no terminal; ``COLUMNS`` only if given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARE_") and k != "COLUMNS"}
    env.update({"ARE_TARGET": target, "NO_COLOR": "1"})
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


def _clean(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "MarkupError" not in result.stderr, result.stderr


def test_ids_given_on_the_command_line_are_printed_as_they_are(sidecar: SidecarProcess) -> None:
    result = _are(sidecar.target, "status", "a[/b]")
    _clean(result)
    assert result.returncode == 1
    assert "a[/b]" in result.stderr
    result = _are(sidecar.target, "approve", "wf-x", "x[/y]")
    _clean(result)
    assert result.returncode == 1
    assert "x[/y]" in result.stderr
    result = _are(sidecar.target, "trace", "[red]wf")
    _clean(result)
    assert result.returncode == 1
    assert "[red]wf" in result.stderr


def test_server_text_is_printed_as_it_is(sidecar: SidecarProcess, tmp_path: Path) -> None:
    pool = f"cli-markup-{uuid.uuid4().hex[:8]}"
    description = "GPU boxes [/see docs] [red]alert :thumbs_up:"

    async def put() -> None:
        async with await Client.connect(sidecar.target) as client:
            await client.pools.put(pool, description=description)

    asyncio.run(put())
    result = _are(sidecar.target, "pools")
    _clean(result)
    assert result.returncode == 0
    assert description in result.stdout

    spec = tmp_path / "wf.yaml"
    spec.write_text("tasks:\n  - {task_id: 'fetch[/docs]', capability: c}\n")
    result = _are(sidecar.target, "submit", str(spec))
    _clean(result)
    assert result.returncode == 1
    assert "fetch[/docs]" in result.stderr


def test_error_lines_to_a_pipe_are_not_cut(sidecar: SidecarProcess) -> None:
    missing = "wf-" + "long" * 30  # a valid id of 123 characters
    result = _are(sidecar.target, "status", missing)
    assert result.returncode == 1
    line = next(line for line in result.stderr.splitlines() if "NOT_FOUND" in line)
    assert missing in line, result.stderr


def _chain(length: int) -> workflow_pb2.WorkflowSpec:
    capability = f"nobody-serves-{uuid.uuid4().hex[:8]}"
    tasks = [task_pb2.TaskSpec(task_id="t0", capability=capability)]
    tasks += [
        task_pb2.TaskSpec(task_id=f"t{i}", capability=capability, depends_on=[f"t{i - 1}"])
        for i in range(1, length)
    ]
    return workflow_pb2.WorkflowSpec(name="a-chain-deeper-than-the-tree-nests", tasks=tasks)


@pytest.fixture(scope="module")
def chain(sidecar: SidecarProcess) -> str:
    async def submit() -> str:
        async with await Client.connect(sidecar.target) as client:
            return (await client.workflows.submit(_chain(100))).workflow_id

    return asyncio.run(submit())


@pytest.mark.parametrize("columns", [None, 80])
def test_status_shows_every_task_of_a_deep_dag(
    sidecar: SidecarProcess, chain: str, columns: int | None
) -> None:
    result = _are(sidecar.target, "status", chain, columns=columns)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for i in range(100):
        assert any(re.search(rf"\bt{i} (PENDING|SCHEDULED)\b", line) for line in lines), (i, result.stdout)
    assert "listed flat" in result.stdout
    assert lines[-1] == "100 tasks: 99 PENDING, 1 SCHEDULED"
    if columns is None:  # piped: as wide as the tree needs, not wrapped at 80 columns
        assert any(len(line) > 80 for line in lines)
        assert "a-chain-deeper-than-the-tree-nests" in lines[0]


@pytest.fixture
def backing_off(sidecar: SidecarProcess) -> str:
    """A workflow whose one task failed its first attempt and waits (an hour at most) for its retry."""
    capability = f"cli-flaky-{uuid.uuid4().hex[:8]}"
    retry = common_pb2.RetryPolicy(maximum_attempts=3)
    retry.initial_interval.FromSeconds(3600)
    spec = workflow_pb2.WorkflowSpec(
        name="backing-off",
        tasks=[task_pb2.TaskSpec(task_id="flaky", capability=capability, retry_policy=retry)],
    )

    async def fail_once() -> str:
        async with await Client.connect(sidecar.target) as client:
            failed = asyncio.Event()
            worker = Worker(client, name="cli-flaky", max_concurrency=1)

            @worker.handler(capability)
            async def flaky(ctx: TaskContext) -> None:
                failed.set()
                raise RuntimeError("boom")

            async with worker:
                handle = await client.workflows.submit(spec)
                await asyncio.wait_for(failed.wait(), 60)
                for _ in range(600):  # bounded: until the failure is recorded
                    task = await handle.task("flaky")
                    if task.state in {TaskState.BACKING_OFF, TaskState.SCHEDULED} and task.attempt >= 1:
                        break
                    await asyncio.sleep(0.05)
                assert task.state in {TaskState.BACKING_OFF, TaskState.SCHEDULED}, task
            return handle.workflow_id

    return asyncio.run(fail_once())


def test_status_counts_no_duration_for_a_task_that_is_not_running(
    sidecar: SidecarProcess, backing_off: str
) -> None:
    result = _are(sidecar.target, "status", backing_off, columns=200)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "flaky" in line)
    words = line.split()
    state = next(i for i, word in enumerate(words) if word in {"BACKING_OFF", "SCHEDULED"})
    assert not _DURATION.fullmatch(words[state + 1]), line
    if words[state] == "BACKING_OFF":
        assert "next attempt in" in line
