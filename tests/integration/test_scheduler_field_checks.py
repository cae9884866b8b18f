"""Fields the scheduler, state and trace services once took unchecked, over real gRPC.

Each bad input is INVALID_ARGUMENT (or LIMIT_EXCEEDED, or NOT_FOUND for a
missing blob) naming its exact field, and changes nothing; each read of a
Workflow carries its state document's version, wherever it is returned.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from google.protobuf import duration_pb2

from are_sdk import Client, InvalidArgumentError, NotFoundError
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import event_pb2 as e
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import state_pb2 as sp
from are_sdk._proto.are.v1 import state_service_pb2 as st
from are_sdk._proto.are.v1 import trace_service_pb2 as tr
from are_sdk._proto.are.v1 import worker_service_pb2 as w

from .test_scheduler import expect_error, submit, task, unique_capability

_MiB = 1 << 20


async def _listed(client: Client, workflow_id: str) -> None:
    """Nothing was stored: the workflow id is unknown."""
    await expect_error(
        client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=workflow_id)),
        NotFoundError,
        "WORKFLOW_NOT_FOUND",
    )


# ----------------------------------------------------------- retry policies


@pytest.mark.parametrize("where", ["task", "default"])
async def test_a_non_retryable_failure_type_over_256_characters_is_limit_exceeded(
    client: Client, where: str
) -> None:
    wf_id = f"nonretry-{where}-{unique_capability('x')}"
    long_policy = c.RetryPolicy(non_retryable_failure_types=["Fine", "E" * 257])
    spec: dict[str, Any] = {"workflow_id": wf_id}
    if where == "task":
        tasks = [task("a", unique_capability("never"), retry_policy=long_policy)]
        field = "spec.tasks[0].retry_policy.non_retryable_failure_types[1]"
    else:
        tasks = [task("a", unique_capability("never"))]
        spec["default_retry_policy"] = long_policy
        field = "spec.default_retry_policy.non_retryable_failure_types[1]"
    error = await expect_error(submit(client, *tasks, **spec), InvalidArgumentError, "LIMIT_EXCEEDED", field)
    assert error.metadata["limit"] == "256"
    await _listed(client, wf_id)


async def test_a_large_non_retryable_failure_type_is_refused_not_stored(client: Client) -> None:
    policy = c.RetryPolicy(non_retryable_failure_types=["E" * (10 * _MiB)])
    await expect_error(
        submit(client, task("a", unique_capability("never"), retry_policy=policy)),
        InvalidArgumentError,
        "LIMIT_EXCEEDED",
        "spec.tasks[0].retry_policy.non_retryable_failure_types[0]",
    )


async def test_non_retryable_failure_types_of_256_characters_are_kept(client: Client) -> None:
    policy = c.RetryPolicy(non_retryable_failure_types=["E" * 256] * 64)
    wf_id = await submit(client, task("a", unique_capability("never"), retry_policy=policy))
    got = await client.raw.scheduler.GetTask(s.GetTaskRequest(workflow_id=wf_id, task_id="a"))
    assert list(got.task.spec.retry_policy.non_retryable_failure_types) == ["E" * 256] * 64
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))


# ---------------------------------------------------------------- durations


_BAD_DURATIONS = [
    pytest.param(duration_pb2.Duration(seconds=5, nanos=-1), id="mixed-signs"),
    pytest.param(duration_pb2.Duration(seconds=5, nanos=2_000_000_000), id="nanos-over-a-second"),
    pytest.param(duration_pb2.Duration(seconds=-5, nanos=1), id="negative-mixed-signs"),
]


@pytest.mark.parametrize("value", _BAD_DURATIONS)
@pytest.mark.parametrize(
    ("task_fields", "spec_fields", "field"),
    [
        pytest.param(
            lambda d: {"start_to_close_timeout": d},
            lambda d: {},
            "spec.tasks[0].start_to_close_timeout",
            id="start_to_close",
        ),
        pytest.param(
            lambda d: {"heartbeat_timeout": d},
            lambda d: {},
            "spec.tasks[0].heartbeat_timeout",
            id="heartbeat",
        ),
        pytest.param(
            lambda d: {"retry_policy": c.RetryPolicy(initial_interval=d)},
            lambda d: {},
            "spec.tasks[0].retry_policy.initial_interval",
            id="initial_interval",
        ),
        pytest.param(
            lambda d: {},
            lambda d: {"default_retry_policy": c.RetryPolicy(maximum_interval=d)},
            "spec.default_retry_policy.maximum_interval",
            id="maximum_interval",
        ),
    ],
)
async def test_a_malformed_duration_is_invalid_argument_naming_it(
    client: Client, value: duration_pb2.Duration, task_fields: Any, spec_fields: Any, field: str
) -> None:
    wf_id = f"dur-{unique_capability('x')}"
    spec = submit(client, task("a", "never", **task_fields(value)), workflow_id=wf_id, **spec_fields(value))
    error = await expect_error(spec, InvalidArgumentError, "INVALID_ARGUMENT", field)
    assert "nanos" in error.message, error
    await _listed(client, wf_id)


# -------------------------------------------------------- GetUsage, filters


@pytest.mark.parametrize("key", ["bad key!", "x" * 129, "k" * (10 * _MiB), "é"])
async def test_get_usage_refuses_a_group_by_label_that_is_not_a_label_key(client: Client, key: str) -> None:
    await expect_error(
        client.raw.scheduler.GetUsage(s.GetUsageRequest(group_by_label=key)),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "group_by_label",
    )


async def test_get_usage_groups_by_a_valid_label_key(client: Client) -> None:
    team = unique_capability("team")
    wf_id = await submit(client, task("a", unique_capability("never")), labels={"usage/team": team})
    usage = await client.raw.scheduler.GetUsage(s.GetUsageRequest(group_by_label="usage/team"))
    assert team in {g.label_value for g in usage.groups}
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))


@pytest.mark.parametrize(
    ("event_filter", "field"),
    [
        pytest.param(e.EventFilter(workflow_ids=["a b"]), "filter.workflow_ids[0]", id="workflow-id-space"),
        pytest.param(
            e.EventFilter(workflow_ids=["ok", "x" * 129]), "filter.workflow_ids[1]", id="workflow-id-long"
        ),
        pytest.param(e.EventFilter(task_ids=["a/b"]), "filter.task_ids[0]", id="task-id-slash"),
        pytest.param(e.EventFilter(worker_id="w" * (10 * _MiB)), "filter.worker_id", id="worker-id-10MiB"),
        pytest.param(e.EventFilter(worker_id="a b"), "filter.worker_id", id="worker-id-space"),
    ],
)
async def test_an_event_filter_refuses_ids_outside_the_id_shape(
    client: Client, event_filter: e.EventFilter, field: str
) -> None:
    await expect_error(
        client.raw.trace.ListEvents(tr.ListEventsRequest(filter=event_filter)),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        field,
    )


async def test_an_event_filter_takes_the_worker_ids_the_sidecar_gives(client: Client) -> None:
    cap = unique_capability("evw")
    wf_id = await submit(client, task("a", cap))
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="n" * 128, capabilities=[cap]), timeout=10
    )
    assert "@" in polled.worker_id and len(polled.worker_id) > 128
    listed = await client.raw.trace.ListEvents(
        tr.ListEventsRequest(filter=e.EventFilter(workflow_ids=[wf_id], worker_id=polled.worker_id))
    )
    assert listed.events
    assert {ev.worker_id for ev in listed.events} == {polled.worker_id}
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))


# ------------------------------------------------------------------ attempts


async def test_patch_state_for_a_task_with_attempt_0_is_invalid_argument(client: Client) -> None:
    cap = unique_capability("never")
    wf_id = await submit(client, task("a", cap))
    await expect_error(
        client.raw.state.PatchState(
            st.PatchStateRequest(
                workflow_id=wf_id, task_id="a", attempt=0, patch=sp.StatePatch(merge_patch_json=b'{"x":1}')
            )
        ),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "attempt",
    )
    got = await client.raw.state.GetState(st.GetStateRequest(workflow_id=wf_id))
    assert got.version == 1  # nothing changed
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))


async def test_spawn_tasks_with_a_parent_and_parent_attempt_0_is_invalid_argument(client: Client) -> None:
    cap = unique_capability("never")
    wf_id = await submit(client, task("a", cap))
    await expect_error(
        client.raw.scheduler.SpawnTasks(
            s.SpawnTasksRequest(
                workflow_id=wf_id, parent_task_id="a", parent_attempt=0, tasks=[task("b", cap)]
            )
        ),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "parent_attempt",
    )
    listed = await client.raw.scheduler.ListTasks(s.ListTasksRequest(workflow_id=wf_id))
    assert [x.task_id for x in listed.tasks] == ["a"]
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))


# --------------------------------------------------------------------- blobs


async def test_add_memory_with_a_missing_blob_names_the_content_blob(client: Client) -> None:
    wf_id = await submit(client, task("a", unique_capability("never")))
    missing = hashlib.sha256(b"never stored " + wf_id.encode()).hexdigest()
    await expect_error(
        client.raw.state.AddMemory(
            st.AddMemoryRequest(
                workflow_id=wf_id,
                entries=[
                    st.MemoryEntry(text="fine"),
                    st.MemoryEntry(text="note", content=c.Payload(blob=c.BlobRef(sha256=missing))),
                ],
            )
        ),
        NotFoundError,
        "BLOB_NOT_FOUND",
        "entries[1].content.blob",
    )
    hits = await client.raw.state.HydrateMemory(st.HydrateMemoryRequest(workflow_id=wf_id, text="fine note"))
    assert not hits.hits  # nothing was stored
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))


# ------------------------------------------------------------ state_version


async def test_every_workflow_read_carries_the_state_version(client: Client) -> None:
    label = unique_capability("sv")
    wf_id = await submit(client, task("a", unique_capability("never")), labels={"sv": label})
    await client.raw.state.PatchState(
        st.PatchStateRequest(workflow_id=wf_id, patch=sp.StatePatch(merge_patch_json=b'{"x":1}'))
    )
    got = await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=wf_id))
    assert got.workflow.state_version == 2
    listed = await client.raw.scheduler.ListWorkflows(s.ListWorkflowsRequest(labels={"sv": label}))
    assert [x.state_version for x in listed.workflows] == [2]
    async with asyncio.timeout(10):
        async for update in client.raw.scheduler.WatchWorkflow(s.WatchWorkflowRequest(workflow_id=wf_id)):
            assert update.workflow.state_version == 2
            break
        async for update in client.raw.scheduler.WatchWorkflow(
            s.WatchWorkflowRequest(workflow_id=wf_id, include_tasks=True)
        ):
            assert update.workflow.state_version == 2
            break
    cancelled = await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))
    assert cancelled.workflow.state_version == 2
