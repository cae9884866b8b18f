"""The operator's client commands: ``are workflows``, ``cancel``, ``approvals`` and ``state``.

Each runs as a subprocess with its output piped, against a real sidecar over
gRPC. Workflows made here carry a label unique to the test, so that the
session's other workflows never show up in what is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from are_sdk import Client, TaskContext, Worker
from are_sdk._proto.are.v1 import (
    common_pb2,
    scheduler_service_pb2,
    state_pb2,
    state_service_pb2,
    task_pb2,
    workflow_pb2,
)
from are_sdk.testing import SidecarProcess

_STATE = {"plan": {"steps": ["search", "write"]}, "owner": "zoë", "a/b": 1, "m~n": 2}


def _are(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``are ARGS`` to its end with its output piped; a command that hangs fails after a minute."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARE_") and k != "COLUMNS"}
    env.update({"ARE_TARGET": target, "NO_COLOR": "1"})
    result = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _rows(result: subprocess.CompletedProcess[str], first_cell: str) -> list[list[str]]:
    """The body rows of a piped table whose first cell starts with ``first_cell``, split into cells."""
    assert result.returncode == 0, result.stderr
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in result.stdout.splitlines()
        if line.startswith("│") and line.strip("│ ").startswith(first_cell)
    ]


def _spec(
    run: str, name: str, *tasks: task_pb2.TaskSpec, state: dict[str, Any] | None = None
) -> workflow_pb2.WorkflowSpec:
    spec = workflow_pb2.WorkflowSpec(name=name, labels={"run": run}, tasks=tasks)
    if state is not None:
        spec.initial_state.CopyFrom(common_pb2.Payload(data=json.dumps(state).encode()))
    return spec


def _idle(task_id: str, **fields: Any) -> task_pb2.TaskSpec:
    """A task no worker serves: it waits (scheduled, or at its gate) until the workflow is cancelled."""
    return task_pb2.TaskSpec(task_id=task_id, capability=f"nobody-serves-{uuid.uuid4().hex[:8]}", **fields)


async def _submit(target: str, *specs: workflow_pb2.WorkflowSpec) -> list[str]:
    """Submits the specs one after the other, so that their creation order is theirs."""
    async with await Client.connect(target) as client:
        return [(await client.workflows.submit(spec)).workflow_id for spec in specs]


async def _cancel_all(target: str, run: str) -> None:
    """Cancels the test's open workflows, so that their tasks do not wait in the session's pools."""
    async with await Client.connect(target) as client:
        page = await client.raw.scheduler.ListWorkflows(
            scheduler_service_pb2.ListWorkflowsRequest(
                labels={"run": run}, states=[workflow_pb2.WORKFLOW_STATE_RUNNING], page_size=1000
            )
        )
        for workflow in page.workflows:
            await client.raw.scheduler.CancelWorkflow(
                scheduler_service_pb2.CancelWorkflowRequest(workflow_id=workflow.workflow_id)
            )


@pytest.fixture
def run(sidecar: SidecarProcess) -> Iterator[str]:
    """A label value unique to the test; its open workflows are cancelled afterwards."""
    value = uuid.uuid4().hex[:12]
    yield value
    asyncio.run(_cancel_all(sidecar.target, value))


def _unused_target() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


# workflows


def test_workflows_lists_newest_first_with_state_name_tasks_and_age(
    sidecar: SidecarProcess, run: str
) -> None:
    older, newer = asyncio.run(
        _submit(
            sidecar.target,
            _spec(run, "first", _idle("a"), _idle("b", depends_on=["a"])),
            _spec(run, "second [/not markup]", _idle("gate", requires_approval=True)),
        )
    )
    rows = _rows(_are(sidecar.target, "workflows", "--label", f"run={run}"), "wf_")
    assert [row[:4] for row in rows] == [
        [newer, "RUNNING", "second [/not markup]", "0/1, 1 awaiting approval"],
        [older, "RUNNING", "first", "0/2"],
    ]
    for row in rows:
        assert row[4][:2] == "20" and row[4][4] == "-", row  # the date and time it was created
        assert row[5][0].isdigit(), row  # its age

    result = _are(sidecar.target, "cancel", older)
    assert result.returncode == 0, result.stderr
    rows = _rows(_are(sidecar.target, "workflows", "--label", f"run={run}", "--state", "CANCELLED"), "wf_")
    assert [row[:4] for row in rows] == [[older, "CANCELLED", "first", "2/2"]]
    both = ["--state", "running", "--state", "cancelled"]
    rows = _rows(_are(sidecar.target, "workflows", "--label", f"run={run}", *both), "wf_")
    assert [row[0] for row in rows] == [newer, older]


def test_workflows_json_is_one_workflow_per_line_in_the_proto_json_mapping(
    sidecar: SidecarProcess, run: str
) -> None:
    ids = asyncio.run(_submit(sidecar.target, *(_spec(run, f"wf-{i}", _idle("a")) for i in range(3))))
    lines = _json_lines(_are(sidecar.target, "workflows", "--label", f"run={run}", "--json"))
    assert [line["workflowId"] for line in lines] == ids[::-1]
    assert [line["name"] for line in lines] == ["wf-2", "wf-1", "wf-0"]
    for line in lines:
        assert line["state"] == "WORKFLOW_STATE_RUNNING"
        assert line["labels"] == {"run": run}
        assert line["taskCounts"]["total"] == 1
        assert line["createTime"].endswith("Z")


def test_workflows_filters_by_state_labels_and_creation_time(sidecar: SidecarProcess, run: str) -> None:
    [tagged, plain] = asyncio.run(
        _submit(
            sidecar.target,
            _spec(run, "tagged", _idle("a")),
            _spec(run, "plain", _idle("a")),
        )
    )

    async def cancel_plain() -> None:
        async with await Client.connect(sidecar.target) as client:
            await client.raw.scheduler.CancelWorkflow(
                scheduler_service_pb2.CancelWorkflowRequest(workflow_id=plain)
            )

    asyncio.run(cancel_plain())
    mine = ["--label", f"run={run}"]
    rows = _rows(_are(sidecar.target, "workflows", *mine, "--state", "running"), "wf_")
    assert [row[0] for row in rows] == [tagged]
    rows = _rows(_are(sidecar.target, "workflows", *mine, "--created-after", "1h"), "wf_")
    assert [row[0] for row in rows] == [plain, tagged]
    rows = _rows(_are(sidecar.target, "workflows", *mine, "--created-after", "2000-01-01T00:00:00Z"), "wf_")
    assert [row[0] for row in rows] == [plain, tagged]
    for when in (["--created-before", "1d"], ["--created-after", "2999-01-01"]):
        result = _are(sidecar.target, "workflows", *mine, *when)
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        assert "no workflows match" in result.stderr
    result = _are(sidecar.target, "workflows", *mine, "--label", "other=x")
    assert (result.returncode, result.stdout) == (0, "")
    assert "no workflows match" in result.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--label", "no-equals-sign"], "--label"),
        (["--label", "=value"], "--label"),
        (["--state", "sleeping"], "--state"),
        (["--limit", "0"], "--limit"),
        (["--limit", "10001"], "--limit"),
        (["--created-after", "yesterday"], "--created-after"),
        (["--created-before", "5 minutes"], "--created-before"),
    ],
)
def test_workflows_refuses_a_bad_option_before_connecting(args: list[str], named: str) -> None:
    result = _are(_unused_target(), "workflows", *args, "--connect-timeout", "1")
    assert result.returncode == 2, result.stderr
    assert named in result.stderr


def test_a_label_the_sidecar_refuses_is_its_error_naming_the_field(sidecar: SidecarProcess) -> None:
    result = _are(sidecar.target, "workflows", "--label", "bad key=x")
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "labels['bad key']" in result.stderr


def test_the_new_commands_report_an_unreachable_sidecar_in_one_line() -> None:
    target = _unused_target()
    for args in (["workflows"], ["approvals"], ["cancel", "wf-x"], ["state", "wf-x"]):
        result = _are(target, *args, "--connect-timeout", "1")
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"no ARE sidecar answered at {target!r}" in result.stderr


@pytest.fixture(scope="module")
def crowded() -> Iterator[tuple[SidecarProcess, list[str]]]:
    """A sidecar of its own holding 1,003 workflows (more than a page), and their ids, oldest first."""
    with SidecarProcess.start() as process:

        async def submit_all() -> list[str]:
            async with await Client.connect(process.target) as client:
                ids: list[str] = []
                for batch in range(0, 1003, 100):
                    specs = [
                        workflow_pb2.WorkflowSpec(
                            workflow_id=f"wf-page-{i:04d}",
                            tasks=[task_pb2.TaskSpec(task_id="gate", capability="c", requires_approval=True)],
                        )
                        for i in range(batch, min(batch + 100, 1003))
                    ]
                    handles = await asyncio.gather(*(client.workflows.submit(spec) for spec in specs))
                    ids.extend(handle.workflow_id for handle in handles)
                return ids

        yield process, asyncio.run(submit_all())


def _newest_first(ids: list[str], lines: list[dict[str, Any]]) -> None:
    """``lines`` are workflows of ``ids``, each once, newest first (by creation time, then as listed)."""
    assert len({line["workflowId"] for line in lines}) == len(lines)
    assert {line["workflowId"] for line in lines} <= set(ids)
    times = [line["createTime"] for line in lines]
    assert times == sorted(times, reverse=True)


def test_workflows_follows_page_tokens_up_to_the_limit(crowded: tuple[SidecarProcess, list[str]]) -> None:
    process, ids = crowded
    result = _are(process.target, "workflows", "--json", "--limit", "1002")
    lines = _json_lines(result)
    assert len(lines) == 1002
    _newest_first(ids, lines)
    assert "the newest 1,002 workflows shown; --limit N shows more" in result.stderr

    for limit in ("1003", "10000"):  # all of them: no note
        result = _are(process.target, "workflows", "--json", "--limit", limit)
        lines = _json_lines(result)
        assert len(lines) == 1003
        _newest_first(ids, lines)
        assert {line["workflowId"] for line in lines} == set(ids)
        assert result.stderr == ""


def test_workflows_shows_100_by_default(crowded: tuple[SidecarProcess, list[str]]) -> None:
    process, _ = crowded
    result = _are(process.target, "workflows")
    assert len(_rows(result, "wf-page-")) == 100
    assert "the newest 100 workflows shown" in result.stderr
    result = _are(process.target, "approvals", "--limit", "150")
    assert len(_rows(result, "wf-page-")) == 150  # pages of at most 100 gates each
    assert "the oldest 150 gates shown" in result.stderr


# cancel


def test_cancel_closes_a_running_workflow_and_says_so(sidecar: SidecarProcess, run: str) -> None:
    [workflow_id] = asyncio.run(
        _submit(sidecar.target, _spec(run, "to-cancel", _idle("a"), _idle("b", depends_on=["a"])))
    )
    result = _are(
        sidecar.target, "cancel", workflow_id, "--reason", "no longer needed", "--requested-by", "ops"
    )
    assert result.returncode == 0, result.stderr
    first, counts = result.stdout.splitlines()
    assert first.startswith(f"workflow {workflow_id} is now CANCELLED")
    assert "no longer needed" in first
    assert counts == "2 tasks: 2 CANCELLED"

    async def status() -> workflow_pb2.Workflow:
        async with await Client.connect(sidecar.target) as client:
            response: scheduler_service_pb2.GetWorkflowResponse = await client.raw.scheduler.GetWorkflow(
                scheduler_service_pb2.GetWorkflowRequest(workflow_id=workflow_id)
            )
            return response.workflow

    workflow = asyncio.run(status())
    assert workflow.state == workflow_pb2.WORKFLOW_STATE_CANCELLED
    assert "no longer needed" in workflow.failure.message

    result = _are(sidecar.target, "cancel", workflow_id)  # idempotent
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"workflow {workflow_id} is now CANCELLED")


def test_cancel_leaves_a_closed_workflow_as_it_is(sidecar: SidecarProcess, run: str) -> None:
    capability = f"cli-cancel-{run}"

    async def complete() -> str:
        async with await Client.connect(sidecar.target) as client:
            worker = Worker(client, name="cli-cancel", max_concurrency=1)

            @worker.handler(capability)
            async def done(ctx: TaskContext) -> dict[str, bool]:
                return {"ok": True}

            async with worker:
                spec = _spec(run, "done", task_pb2.TaskSpec(task_id="a", capability=capability))
                handle = await client.workflows.submit(spec)
                await handle.wait(timeout=60)
            return handle.workflow_id

    workflow_id = asyncio.run(complete())
    result = _are(sidecar.target, "cancel", workflow_id)
    assert result.returncode == 0, result.stderr
    first, counts = result.stdout.splitlines()
    assert first == f"workflow {workflow_id} had already closed COMPLETED (not cancelled)"
    assert counts == "1 task: 1 COMPLETED"


def test_cancel_of_an_unknown_workflow_is_not_found(sidecar: SidecarProcess) -> None:
    result = _are(sidecar.target, "cancel", "wf-no-such-workflow")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "error: NOT_FOUND (WORKFLOW_NOT_FOUND): workflow 'wf-no-such-workflow' does not exist\n"
    )
    result = _are(sidecar.target, "cancel")
    assert result.returncode == 2
    assert "WORKFLOW_ID" in result.stderr


# approvals


def test_approvals_lists_the_waiting_gates_oldest_first(sidecar: SidecarProcess, run: str) -> None:
    timeout = task_pb2.TaskSpec()
    timeout.approval_timeout.FromSeconds(3 * 86400)
    [workflow_id] = asyncio.run(
        _submit(
            sidecar.target,
            _spec(
                run,
                "gated",
                _idle(
                    "publish",
                    requires_approval=True,
                    display_name="Publish the post",
                    input=common_pb2.Payload(data=json.dumps({"title": "x" * 100}).encode()),
                    approval_timeout=timeout.approval_timeout,
                    labels={"run": run, "kind": "publish"},
                ),
                _idle("spend", requires_approval=True, labels={"run": run}),
                _idle("after", depends_on=["publish"]),
            ),
        )
    )
    rows = _rows(_are(sidecar.target, "approvals", "--workflow", workflow_id), workflow_id)
    assert {row[1] for row in rows} == {"publish", "spend"}
    publish = next(row for row in rows if row[1] == "publish")
    spend = next(row for row in rows if row[1] == "spend")
    assert publish[2] == "Publish the post"
    assert publish[3][0].isdigit()  # how long it has waited
    assert publish[4].startswith("2d")  # its gate times out in three days, less the wait
    assert publish[5].startswith('{"title":"xxx') and publish[5].endswith("…")
    assert spend[4] == "-"  # no timeout of its own

    result = _are(sidecar.target, "approvals", "--label", f"run={run}", "--label", "kind=publish")
    assert [row[1] for row in _rows(result, workflow_id)] == ["publish"]
    assert "are approve WORKFLOW TASK" in result.stderr

    lines = _json_lines(_are(sidecar.target, "approvals", "--workflow", workflow_id, "--json"))
    assert {line["taskId"] for line in lines} == {"publish", "spend"}
    for line in lines:
        assert line["workflowId"] == workflow_id
        assert line["state"] == "TASK_STATE_AWAITING_APPROVAL"
        assert "requestTime" in line["approval"]

    result = _are(sidecar.target, "approvals", "--workflow", workflow_id, "--limit", "1")
    assert len(_rows(result, workflow_id)) == 1
    assert "the oldest 1 gates shown; --limit N shows more" in result.stderr

    result = _are(sidecar.target, "approve", workflow_id, "publish", "--approver", "me")
    assert result.returncode == 0, result.stderr
    rows = _rows(_are(sidecar.target, "approvals", "--workflow", workflow_id), workflow_id)
    assert [row[1] for row in rows] == ["spend"]


def test_approvals_says_when_none_is_waiting(sidecar: SidecarProcess, run: str) -> None:
    [workflow_id] = asyncio.run(_submit(sidecar.target, _spec(run, "ungated", _idle("a"))))
    result = _are(sidecar.target, "approvals", "--workflow", workflow_id)
    assert (result.returncode, result.stdout) == (0, "")
    assert "no task is waiting for approval of this workflow" in result.stderr
    result = _are(sidecar.target, "approvals", "--label", "run=nothing-has-this")
    assert (result.returncode, result.stdout) == (0, "")
    assert "no task is waiting for approval with these labels" in result.stderr
    result = _are(sidecar.target, "approvals", "--label", "nope")
    assert result.returncode == 2
    assert "--label" in result.stderr


# state


@pytest.fixture
def stateful(sidecar: SidecarProcess, run: str) -> str:
    """A running workflow whose state is ``_STATE`` at version 1 and has ``step`` 2 set at version 2."""
    [workflow_id] = asyncio.run(_submit(sidecar.target, _spec(run, "stateful", _idle("a"), state=_STATE)))

    async def patch() -> None:
        async with await Client.connect(sidecar.target) as client:
            await client.raw.state.PatchState(
                state_service_pb2.PatchStateRequest(
                    workflow_id=workflow_id,
                    writer="operator",
                    patch=state_pb2.StatePatch(merge_patch_json=b'{"step": 2}'),
                )
            )

    asyncio.run(patch())
    return workflow_id


def test_state_prints_the_document_as_indented_json(sidecar: SidecarProcess, stateful: str) -> None:
    result = _are(sidecar.target, "state", stateful)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {**_STATE, "step": 2}
    assert '\n  "owner": "zoë"' in result.stdout  # indented, and not escaped
    assert result.stderr == ""  # a pipe gets the document only

    result = _are(sidecar.target, "state", stateful, "--version", "1")
    assert json.loads(result.stdout) == _STATE


def test_state_prints_the_values_at_the_paths_asked(sidecar: SidecarProcess, stateful: str) -> None:
    result = _are(sidecar.target, "state", stateful, "--path", "/plan/steps/1")
    assert (result.returncode, json.loads(result.stdout)) == (0, "write")
    result = _are(sidecar.target, "state", stateful, "--path", "/plan", "--path", "/a~1b", "--path", "/m~0n")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"/plan": _STATE["plan"], "/a~1b": 1, "/m~0n": 2}
    result = _are(sidecar.target, "state", stateful, "--path", "")
    assert json.loads(result.stdout) == {**_STATE, "step": 2}
    result = _are(sidecar.target, "state", stateful, "--path", "/step", "--version", "1")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: no value at '/step' in state version 1\n"
    result = _are(sidecar.target, "state", stateful, "--path", "/owner", "--path", "/nope", "--path", "/step")
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"/owner": "zoë", "/step": 2}
    assert result.stderr == "error: no value at '/nope' in state version 2\n"


def test_state_json_carries_the_version_and_the_missing_paths(sidecar: SidecarProcess, stateful: str) -> None:
    result = _are(sidecar.target, "state", stateful, "--json", "--path", "/owner", "--path", "/nope")
    assert result.returncode == 1
    [answer] = [json.loads(line) for line in result.stdout.splitlines()]
    assert answer["version"] == "2"
    assert answer["values"] == {"/owner": "zoë"}
    assert answer["missingPaths"] == ["/nope"]
    assert answer["updateTime"].endswith("Z")


@pytest.mark.parametrize(
    ("pointer", "problem"),
    [("plan", "start with '/'"), ("/plan/~2", "'~' must be followed by '0' or '1'"), ("/x~", "'~' must")],
)
def test_state_refuses_a_bad_pointer_naming_it(pointer: str, problem: str) -> None:
    result = _are(
        _unused_target(), "state", "wf-x", "--path", "/ok", "--path", pointer, "--connect-timeout", "1"
    )
    assert result.returncode == 2, result.stderr
    assert "--path" in result.stderr
    assert repr(pointer) in result.stderr
    assert problem in result.stderr


def test_state_errors_name_what_is_wrong(sidecar: SidecarProcess, stateful: str) -> None:
    result = _are(sidecar.target, "state", "wf-no-such-workflow")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("error: NOT_FOUND (WORKFLOW_NOT_FOUND): ")
    assert "wf-no-such-workflow" in result.stderr
    result = _are(sidecar.target, "state", stateful, "--version", "99")
    assert result.returncode == 1
    assert "NOT_FOUND (STATE_VERSION_NOT_FOUND)" in result.stderr
    assert "retained: 1 to 2" in result.stderr
    for args, message in (
        (["--version", "0"], "--version"),
        (["--history", "--version", "1"], "--history"),
        (["--history", "--path", "/plan"], "--history"),
        (["--limit", "5"], "--limit applies to --history only"),
        (["--history", "--limit", "0"], "--limit"),
    ):
        result = _are(sidecar.target, "state", stateful, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)


def test_state_history_lists_the_versions_newest_first(sidecar: SidecarProcess, stateful: str) -> None:
    result = _are(sidecar.target, "state", stateful, "--history")
    rows = _rows(result, "")
    rows = [row for row in rows if row[0].isdigit()]
    assert [(row[0], row[3]) for row in rows] == [("2", "operator"), ("1", "submit")]
    for row in rows:
        assert row[1][:2] == "20"  # when it was written
        assert row[4].endswith(" B")
        assert row[5].startswith("#")
    assert "versions 1 to 2 retained" in result.stderr

    lines = _json_lines(_are(sidecar.target, "state", stateful, "--history", "--json"))
    assert [(line["version"], line["writer"]) for line in lines] == [("2", "operator"), ("1", "submit")]
    assert all(int(line["sizeBytes"]) > 0 for line in lines)

    result = _are(sidecar.target, "state", stateful, "--history", "--json", "--limit", "1")
    assert [line["version"] for line in _json_lines(result)] == ["2"]
    assert "the newest 1 versions shown; --limit N shows more" in result.stderr

    result = _are(sidecar.target, "state", "wf-no-such-workflow", "--history")
    assert result.returncode == 1
    assert "NOT_FOUND (WORKFLOW_NOT_FOUND)" in result.stderr


def test_state_history_names_the_task_that_wrote_a_version(sidecar: SidecarProcess, run: str) -> None:
    capability = f"cli-state-{run}"

    async def write() -> str:
        async with await Client.connect(sidecar.target) as client:
            worker = Worker(client, name="cli-state", max_concurrency=1)

            @worker.handler(capability)
            async def note(ctx: TaskContext) -> dict[str, str]:
                return {"written": "by a task"}

            async with worker:
                task = task_pb2.TaskSpec(task_id="writer", capability=capability, output_state_pointer="/out")
                handle = await client.workflows.submit(_spec(run, "writes-state", task))
                await handle.wait(timeout=60)
            return handle.workflow_id

    workflow_id = asyncio.run(write())
    rows = [
        row for row in _rows(_are(sidecar.target, "state", workflow_id, "--history"), "") if row[0].isdigit()
    ]
    assert [(row[0], row[3]) for row in rows] == [("2", "task writer#1"), ("1", "submit")]
    result = _are(sidecar.target, "state", workflow_id, "--path", "/out/written")
    assert json.loads(result.stdout) == "by a task"
