"""JSON values that parse but that the sidecar cannot keep, over real gRPC.

``json.loads`` takes integers of any size, ``NaN`` and ``Infinity``, numbers
past a double (``1e400`` becomes infinity), lone surrogate escapes
(``"\\ud800"``) and nesting as deep as the interpreter recurses. A task's
spec is stored as msgpack, which holds integers from -2**63 to 2**64-1 and
only valid Unicode; state documents are JSON text, which has no NaN or
Infinity. Decoding, merging and encoding recurse a level at a time, so every
JSON value taken in (and a state document patched with it) nests at most
512 arrays and objects deep. A value past any of these is INVALID_ARGUMENT
naming its field, and changes nothing; values at the edges are kept and
compared exactly.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import grpc
import pytest

from are_sdk import Client, InvalidArgumentError, NotFoundError, RpcError
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import state_pb2 as sp
from are_sdk._proto.are.v1 import state_service_pb2 as ss
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf
from tests.integration.test_scheduler import (
    StreamWorker,
    echo,
    expect_error,
    get_task,
    submit,
    task,
    unique_capability,
    wait_closed,
)

pytestmark = pytest.mark.timeout(120)

_ids = itertools.count()
DEPTH = 512  # the most arrays and objects a JSON value, or a state document, may nest


def _uid(name: str) -> str:
    return f"jv-{name}-{os.getpid()}-{next(_ids)}"


def _arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def _objects(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


def _gate(
    task_id: str, on: str, pointer: str, op: t.ComparisonOperator, value: str, *, cap: str
) -> t.TaskSpec:
    condition = t.Condition(task_id=on, pointer=pointer, operator=op, value_json=value)
    return task(task_id, cap, on, conditions=[condition])


def _json(data: bytes) -> c.Payload:
    return c.Payload(data=data, content_type="application/json")


def _check(error: RpcError, reason: str, field: str, *fragments: str) -> None:
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason == reason, error
    assert [v.field for v in error.field_violations] == [field], error
    for fragment in fragments:
        assert fragment in error.message, error


# ------------------------------------------------------------ condition values

_BIG = "123456789012345678901234567890"


@pytest.mark.parametrize(
    ("value", "reason", "fragment"),
    [
        (_BIG, "INVALID_ARGUMENT", "64 bits"),
        (str(2**64), "INVALID_ARGUMENT", "64 bits"),
        (str(-(2**63) - 1), "INVALID_ARGUMENT", "64 bits"),
        ('{"x": [1, ' + "9" * 5000 + "]}", "INVALID_ARGUMENT", "64 bits"),
        ("NaN", "INVALID_JSON", "NaN"),
        ("[Infinity]", "INVALID_JSON", "Infinity"),
        ("-Infinity", "INVALID_JSON", "Infinity"),
        ("1e400", "INVALID_JSON", "64-bit float"),
        ('{"x": -1.5e999}', "INVALID_JSON", "64-bit float"),
        ('"\\ud800"', "INVALID_JSON", "lone surrogate"),
        ('{"\\udc00x": 1}', "INVALID_JSON", "lone surrogate"),
        ('["ok", "a\\udfff"]', "INVALID_JSON", "lone surrogate"),
        (_arrays(DEPTH + 1), "INVALID_JSON", str(DEPTH)),
        (_objects(600), "INVALID_JSON", str(DEPTH)),
        (_arrays(5000), "INVALID_JSON", str(DEPTH)),
    ],
)
async def test_a_condition_value_the_task_cannot_keep_is_refused_and_stores_nothing(
    client: Client, value: str, reason: str, fragment: str
) -> None:
    """The defect: a big integer passed validation, then the engine failed to encode the task
    (UNKNOWN "OverflowError"), after the submit's initial state and request id were staged in
    the loop turn's batch; NaN, Infinity and too deep nesting were taken."""
    workflow_id, cap = _uid("cond"), unique_capability("cond")
    tasks = [task("a", cap), _gate("b", "a", "/x", t.COMPARISON_OPERATOR_EQUAL, value, cap=cap)]
    state = _json(b'{"plan": 1}')
    refused = await expect_error(
        submit(client, *tasks, request_id=workflow_id, workflow_id=workflow_id, initial_state=state),
        InvalidArgumentError,
        reason,
        "spec.tasks[1].conditions[0].value_json",
    )
    _check(refused, reason, "spec.tasks[1].conditions[0].value_json", fragment)
    await expect_error(
        client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id)),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )
    await expect_error(
        client.raw.state.GetState(ss.GetStateRequest(workflow_id=workflow_id)),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )
    # The request id was not remembered: a corrected retry makes the workflow.
    good = [task("a", cap), _gate("b", "a", "/x", t.COMPARISON_OPERATOR_EQUAL, "1", cap=cap)]
    made = await submit(client, *good, request_id=workflow_id, workflow_id=workflow_id, initial_state=state)
    assert made == workflow_id
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_a_spawned_task_with_such_a_value_is_refused_and_adds_nothing(client: Client) -> None:
    workflow_id, cap = _uid("spawn"), unique_capability("spawn")
    await submit(client, task("a", cap), workflow_id=workflow_id)
    bad = _gate("c", "a", "/x", t.COMPARISON_OPERATOR_LESS_THAN, _BIG, cap=cap)
    refused = await expect_error(
        client.raw.scheduler.SpawnTasks(
            s.SpawnTasksRequest(workflow_id=workflow_id, tasks=[task("b", cap), bad], request_id="once")
        ),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "tasks[1].conditions[0].value_json",
    )
    assert "64 bits" in refused.message
    listed = await client.raw.scheduler.ListTasks(s.ListTasksRequest(workflow_id=workflow_id))
    assert [x.task_id for x in listed.tasks] == ["a"]
    spawned = await client.raw.scheduler.SpawnTasks(
        s.SpawnTasksRequest(workflow_id=workflow_id, tasks=[task("b", cap)], request_id="once")
    )
    assert (list(spawned.task_ids), spawned.deduplicated) == (["b"], False)
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_values_at_the_edges_are_kept_and_compared_exactly(client: Client) -> None:
    """The 64-bit bounds, a surrogate pair and 512 levels are taken; an output may hold any
    integer (it is JSON text), and ordering it against a value no longer converts it to a
    float (OverflowError: CompleteTask was UNKNOWN and the gated task stayed PENDING)."""
    cap = unique_capability("edges")
    output = (
        b'{"huge": ' + b"9" * 400 + b', "u64": 18446744073709551615, "i64": -9223372036854775808, '
        b'"near": 9007199254740993, "smile": "\\ud83d\\ude00", "deep": ' + _arrays(DEPTH).encode() + b"}"
    )

    def handler(a: w.TaskAssignment) -> Any:
        return output if a.task_id == "judge" else echo(a)

    gt, lt = t.COMPARISON_OPERATOR_GREATER_THAN, t.COMPARISON_OPERATOR_LESS_THAN
    eq = t.COMPARISON_OPERATOR_EQUAL
    gates = {
        "huge-gt": ("/huge", gt, "5", True),
        "huge-lt": ("/huge", lt, "1e308", False),
        "u64-eq": ("/u64", eq, "18446744073709551615", True),
        "i64-eq": ("/i64", eq, "-9223372036854775808", True),
        "i64-lt": ("/i64", lt, "-9223372036854775807", True),
        "near-gt": ("/near", gt, "9007199254740992.0", True),  # exact, where floats are equal
        "smile-eq": ("/smile", eq, '"\\ud83d\\ude00"', True),
        "deep-eq": ("/deep", eq, _arrays(DEPTH), True),
    }
    specs = [task("judge", cap)]
    specs += [_gate(name, "judge", p, op, value, cap=cap) for name, (p, op, value, _) in gates.items()]
    async with StreamWorker(client, handler, capabilities=[cap]):
        workflow_id = await submit(client, *specs)
        status = await wait_closed(client, workflow_id)
    assert status.state == wf.WORKFLOW_STATE_COMPLETED
    for name, (_, _, value, runs) in gates.items():
        gated = await get_task(client, workflow_id, name)
        expected = t.TASK_STATE_COMPLETED if runs else t.TASK_STATE_SKIPPED
        assert gated.state == expected, (name, gated.state_reason)
        assert gated.spec.conditions[0].value_json == value  # kept as submitted


# ------------------------------------------------------------- state documents


def _set(workflow_id: str, path: str, value: str) -> ss.PatchStateRequest:
    op = sp.PatchOperation(op=sp.PATCH_OPERATION_TYPE_SET, path=path, value_json=value.encode())
    return ss.PatchStateRequest(
        workflow_id=workflow_id, patch=sp.StatePatch(operations=sp.PatchOperationList(operations=[op]))
    )


def _merge(workflow_id: str, patch: str) -> ss.PatchStateRequest:
    return ss.PatchStateRequest(workflow_id=workflow_id, patch=sp.StatePatch(merge_patch_json=patch.encode()))


async def _document(client: Client, workflow_id: str) -> tuple[int, bytes]:
    read = await client.raw.state.GetState(ss.GetStateRequest(workflow_id=workflow_id))
    return read.version, read.values[0].value_json


async def test_state_writes_nested_past_the_bound_are_refused_and_change_nothing(client: Client) -> None:
    """A set deep down in a document nests it by the path's depth plus the value's: a 500-deep
    value set 500 levels down failed to encode (UNKNOWN RecursionError); any value or
    document past 512 levels was taken, and a document another path could not handle."""
    workflow_id, cap = _uid("state"), unique_capability("state")
    await submit(client, task("a", cap), workflow_id=workflow_id, initial_state=_json(b"{}"))
    state = client.raw.state
    await state.PatchState(_merge(workflow_id, '{"k": ' + _arrays(DEPTH - 1) + "}"))  # 512 deep
    await state.PatchState(_set(workflow_id, "/half", _arrays(300)))
    await state.PatchState(_set(workflow_id, "/half" + "/0" * 200, _arrays(DEPTH - 201)))  # 512 deep
    before = await _document(client, workflow_id)
    value = "patch.operations.operations[0].value_json"
    refusals = [
        (_merge(workflow_id, '{"k": ' + _arrays(DEPTH) + "}"), "patch.merge_patch_json"),
        (_set(workflow_id, "/k2", _arrays(DEPTH)), value),
        (_set(workflow_id, "/half" + "/0" * 200, _arrays(DEPTH - 200)), value),  # 513 deep
        (_set(workflow_id, "/half" + "/0" * 299, _objects(500)), value),
    ]
    for request, field in refusals:
        with pytest.raises(InvalidArgumentError) as caught:
            await state.PatchState(request)
        _check(caught.value, "INVALID_JSON", field, str(DEPTH))
    assert await _document(client, workflow_id) == before

    # A completion's state patch and its output written at output_state_pointer, likewise.
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="jv", capabilities=[cap], max_tasks=1), timeout=10
    )
    attempt = polled.assignments[0].attempt
    completion = w.TaskCompletion(
        workflow_id=workflow_id,
        task_id="a",
        attempt=attempt,
        output=_json(b"1"),
        state_patch=sp.StatePatch(merge_patch_json=('{"k": ' + _objects(DEPTH) + "}").encode()),
    )
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion))
    _check(caught.value, "INVALID_JSON", "completion.state_patch.merge_patch_json", str(DEPTH))
    assert await _document(client, workflow_id) == before
    held = await get_task(client, workflow_id, "a")
    assert held.state == t.TASK_STATE_RUNNING
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=workflow_id))


async def test_an_output_written_into_state_past_the_bound_is_refused_and_changes_nothing(
    client: Client,
) -> None:
    workflow_id, cap = _uid("pointer"), unique_capability("pointer")
    spec = task("a", cap, output_state_pointer="/out")
    await submit(client, spec, workflow_id=workflow_id, initial_state=_json(b'{"out": null}'))
    before = await _document(client, workflow_id)
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="jv", capabilities=[cap], max_tasks=1), timeout=10
    )
    completion = w.TaskCompletion(
        workflow_id=workflow_id,
        task_id="a",
        attempt=polled.assignments[0].attempt,
        output=_json(_arrays(DEPTH).encode()),  # 513 deep once at /out
    )
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion))
    assert caught.value.reason == "INVALID_JSON", caught.value
    assert str(DEPTH) in caught.value.message, caught.value
    assert [v.field for v in caught.value.field_violations] == ["completion.output.data"], caught.value
    assert await _document(client, workflow_id) == before
    assert (await get_task(client, workflow_id, "a")).state == t.TASK_STATE_RUNNING
    completion.output.data = _arrays(DEPTH - 1).encode()
    await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion))
    version, document = await _document(client, workflow_id)
    assert (version, json.loads(document)["out"]) == (before[0] + 1, json.loads(_arrays(DEPTH - 1)))


async def test_an_initial_state_nested_past_the_bound_is_refused_and_stores_nothing(client: Client) -> None:
    workflow_id = _uid("initial")
    refused = await expect_error(
        submit(
            client,
            task("a", unique_capability("initial")),
            workflow_id=workflow_id,
            initial_state=_json(('{"k": ' + _objects(DEPTH) + "}").encode()),
        ),
        InvalidArgumentError,
        "INVALID_JSON",
        "spec.initial_state.data",
    )
    assert str(DEPTH) in refused.message
    await expect_error(
        client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id)),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )
