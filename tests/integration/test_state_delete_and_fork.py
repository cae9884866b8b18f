"""StateService defects a review found against a real sidecar: deletes, forks, GetState, PutBlob.

* DeleteWorkflow removed the state and memory first and the scheduler's
  record last, and the write gate only asked whether the workflow existed:
  an AddMemory (or an owned PutBlob) arriving meanwhile was acknowledged
  after the memory (or the blob references) were gone, so its note showed
  up in a later workflow reusing the id (and its blob was kept for good).
* ForkWorkflow's request_id was recorded only at the fork's last commit:
  concurrent retries each created a workflow.
* A fork re-ran tasks that had FAILED (or were SKIPPED) at the checkpoint,
  though each task keeps the status it had then.
* ForkWorkflow's labels were not checked, and were merged with the source's
  instead of replacing them.
* GetState's bound on the values read left a fixed 64 KiB for the paths
  echoed back and the framing: long paths made the answer too large to
  send (a transport RESOURCE_EXHAUSTED instead of LIMIT_EXCEEDED).
* A PutBlob message carrying neither a header nor a chunk was taken for an
  empty chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random

import grpc
import pytest

from are_sdk import (
    AlreadyExistsError,
    Client,
    InvalidArgumentError,
    MemoryNote,
    NotFoundError,
    RpcError,
)
from are_sdk._errors import error_from_rpc
from are_sdk._proto.are.v1 import (
    common_pb2,
    scheduler_service_pb2,
    state_pb2,
    state_service_pb2,
    task_pb2,
    worker_service_pb2,
    workflow_pb2,
)
from are_sdk.testing import SidecarProcess

_ids = itertools.count()
_DIMENSION = 8
_NOTES = 20_000  # enough notes that deleting the memory takes a while (writes race it)


def _name(kind: str) -> str:
    return f"sdf-{kind}-{os.getpid()}-{next(_ids)}"


def _assert_error(error: RpcError, code: grpc.StatusCode, reason: str, field: str | None = None) -> None:
    assert error.code == code, error
    assert error.reason == reason, error
    if field is not None:
        assert [v.field for v in error.field_violations] == [field], error


async def _submit(client: Client, workflow_id: str, *tasks: task_pb2.TaskSpec, **labels: str) -> None:
    """Submits a workflow (by default one task nobody serves, which keeps it running)."""
    if not tasks:
        tasks = (task_pb2.TaskSpec(task_id="hold", capability=f"nobody-{workflow_id}"),)
    spec = workflow_pb2.WorkflowSpec(workflow_id=workflow_id, tasks=tasks, labels=labels)
    await client.raw.scheduler.SubmitWorkflow(
        scheduler_service_pb2.SubmitWorkflowRequest(spec=spec), timeout=30
    )


async def _workflow(client: Client, workflow_id: str) -> workflow_pb2.Workflow:
    response = await client.raw.scheduler.GetWorkflow(
        scheduler_service_pb2.GetWorkflowRequest(workflow_id=workflow_id), timeout=30
    )
    workflow: workflow_pb2.Workflow = response.workflow
    return workflow


async def _task_states(client: Client, workflow_id: str) -> dict[str, str]:
    response = await client.raw.scheduler.ListTasks(
        scheduler_service_pb2.ListTasksRequest(workflow_id=workflow_id), timeout=30
    )
    return {t.task_id: task_pb2.TaskState.Name(t.state).removeprefix("TASK_STATE_") for t in response.tasks}


async def _take(client: Client, capability: str) -> worker_service_pb2.TaskAssignment:
    """Polls until the one task of ``capability`` is assigned (bounded)."""
    request = worker_service_pb2.PollTaskRequest(worker_name="review", capabilities=[capability], max_tasks=1)
    for _ in range(20):
        response = await client.raw.worker.PollTask(request, timeout=10)
        if response.assignments:
            assignment: worker_service_pb2.TaskAssignment = response.assignments[0]
            return assignment
    raise AssertionError(f"no task of {capability!r} was assigned")


async def _fail(client: Client, workflow_id: str, capability: str, message: str) -> None:
    """Takes the task of ``capability`` and fails it for good."""
    assignment = await _take(client, capability)
    failure = worker_service_pb2.TaskFailure(
        workflow_id=workflow_id,
        task_id=assignment.task_id,
        attempt=assignment.attempt,
        failure=common_pb2.Failure(message=message, non_retryable=True),
    )
    await client.raw.worker.FailTask(worker_service_pb2.FailTaskRequest(failure=failure), timeout=30)


async def _closed_with_many_notes(client: Client, workflow_id: str) -> None:
    """A cancelled workflow whose memory holds many notes (its delete takes a while)."""
    await _submit(client, workflow_id)
    rng = random.Random(workflow_id)
    for _ in range(0, _NOTES, 1000):
        notes = [
            MemoryNote(text="old", vector=[rng.random() + 0.01 for _ in range(_DIMENSION)])
            for _ in range(1000)
        ]
        await client.state.memory.add(workflow_id, notes)
    await client.get_workflow_handle(workflow_id).cancel()


# DeleteWorkflow against concurrent writes


async def _add_during_delete(client: Client) -> None:
    """One round: notes added while the workflow is deleted, then a new workflow with its id."""
    wid = _name("delmem")
    await _closed_with_many_notes(client, wid)
    delete = asyncio.create_task(client.get_workflow_handle(wid).delete())
    refused: list[RpcError] = []

    async def add(i: int) -> None:
        await asyncio.sleep(0.002 * i)
        try:
            await client.state.memory.add(wid, [MemoryNote(text=f"ghost-{i}", vector=[1.0] * _DIMENSION)])
        except NotFoundError as error:
            refused.append(error)

    await asyncio.wait_for(asyncio.gather(*(add(i) for i in range(60))), 120)
    await asyncio.wait_for(delete, 120)
    for error in refused:  # refused as for a deleted workflow: the contract's NOT_FOUND
        _assert_error(error, grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND")
    # A new workflow reusing the id starts with an empty memory: no acknowledged note survived.
    await _submit(client, wid)
    hits = await client.state.memory.hydrate(wid, [1.0] * _DIMENSION, top_k=10)
    assert [hit.text for hit in hits.hits] == []


async def test_notes_added_while_a_workflow_is_deleted_do_not_outlive_it(client: Client) -> None:
    for _ in range(2):
        await _add_during_delete(client)


async def _put_during_delete(client: Client) -> None:
    """One round: blobs put for an owner before and while it is deleted; none acknowledged may remain.

    The owner has many tasks, so the scheduler's part of the delete (after
    the blob references are released) takes several commits.
    """
    wid = _name("delblob")
    tasks = [task_pb2.TaskSpec(task_id=f"t{i}", capability=f"nobody-{wid}") for i in range(5000)]
    await _submit(client, wid, *tasks)
    await client.get_workflow_handle(wid).cancel()
    stored = []
    refused: list[RpcError] = []
    deleted = asyncio.Event()

    async def put(k: int) -> None:
        for i in range(2000):
            if deleted.is_set():
                return
            try:
                stored.append(await client.state.blobs.put(f"{wid} owned {k} {i}".encode(), workflow_id=wid))
            except NotFoundError as error:
                refused.append(error)
                return

    putters = asyncio.gather(*(put(k) for k in range(4)))
    for _ in range(1000):  # some are stored before the delete starts
        if len(stored) >= 20:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(client.get_workflow_handle(wid).delete(), 120)
    deleted.set()
    await asyncio.wait_for(putters, 120)
    assert stored
    for error in refused:
        _assert_error(error, grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND")
    # Every blob acknowledged for the owner was owned by it alone: its delete deleted them all
    # (one acknowledged after the delete released the references kept one from a deleted workflow).
    kept = []
    for ref in stored:
        try:
            await client.state.blobs.get(ref)
            kept.append(ref)
        except NotFoundError:
            pass
    assert kept == []


async def test_owned_blobs_put_while_their_owner_is_deleted_do_not_outlive_it(client: Client) -> None:
    for _ in range(2):
        await _put_during_delete(client)


# ForkWorkflow's request_id


async def test_concurrent_forks_with_one_request_id_create_one_workflow(client: Client) -> None:
    source = _name("forksrc")
    await _submit(client, source)
    request_id = f"req-{source}"
    forks = await asyncio.wait_for(
        asyncio.gather(*(client.state.fork(source, request_id=request_id) for _ in range(4))), 60
    )
    assert len({f.workflow_id for f in forks}) == 1, forks
    again = await client.state.fork(source, request_id=request_id)
    assert again.workflow_id == forks[0].workflow_id

    # Named: every retry gets the one fork (not WORKFLOW_ALREADY_EXISTS from its own first try).
    target = _name("forkdst")
    named = await asyncio.wait_for(
        asyncio.gather(
            *(
                client.state.fork(source, new_workflow_id=target, request_id=f"{request_id}-named")
                for _ in range(4)
            )
        ),
        60,
    )
    assert {f.workflow_id for f in named} == {target}

    # A different request with the id of one under way is the documented conflict.
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            client.state.fork(source, request_id=f"{request_id}-x"),
            client.state.fork(source, request_id=f"{request_id}-x", labels={"other": "1"}),
            return_exceptions=True,
        ),
        60,
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1, outcomes
    assert isinstance(errors[0], AlreadyExistsError), errors
    _assert_error(errors[0], grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_CONFLICT")


# ForkWorkflow keeps every terminal status


async def test_a_fork_keeps_the_tasks_that_had_failed_or_were_skipped(client: Client) -> None:
    source = _name("failsrc")
    cap = f"cap-{source}"
    nobody = f"nobody-{source}"
    await _submit(
        client,
        source,
        task_pb2.TaskSpec(task_id="A", capability=cap),
        task_pb2.TaskSpec(task_id="B", capability=nobody, depends_on=["A"]),  # ALL_SUCCESS: skipped
        task_pb2.TaskSpec(
            task_id="C", capability=nobody, depends_on=["A"], trigger_rule=task_pb2.TRIGGER_RULE_ONE_FAILED
        ),
        task_pb2.TaskSpec(task_id="H", capability=nobody),  # keeps the source running
    )
    await _fail(client, source, cap, "boom")
    assert await _task_states(client, source) == {
        "A": "FAILED",
        "B": "SKIPPED",
        "C": "SCHEDULED",
        "H": "SCHEDULED",
    }
    version = await client.state.patch(source, {"after": "the failure"})

    fork = await client.state.fork(source, version=version, new_workflow_id=_name("failfork"))
    # A stays FAILED (not dispatched again), B stays SKIPPED; C runs again, its rule met by the kept failure.
    assert await _task_states(client, fork.workflow_id) == {
        "A": "FAILED",
        "B": "SKIPPED",
        "C": "SCHEDULED",
        "H": "SCHEDULED",
    }
    view = await _workflow(client, fork.workflow_id)
    assert view.state == workflow_pb2.WORKFLOW_STATE_RUNNING
    assert (view.task_counts.failed, view.task_counts.skipped, view.task_counts.scheduled) == (1, 1, 2)
    assert (view.usage.tasks_failed, view.usage.tasks_completed) == (1, 0)
    task = await client.raw.scheduler.GetTask(
        scheduler_service_pb2.GetTaskRequest(workflow_id=fork.workflow_id, task_id="A"), timeout=30
    )
    assert task.task.failure.message == "boom"

    # Before the failure (version 1, at submit) A was not terminal: it runs again, B and C wait for it.
    early = await client.state.fork(source, version=1, new_workflow_id=_name("earlyfork"))
    assert await _task_states(client, early.workflow_id) == {
        "A": "SCHEDULED",
        "B": "PENDING",
        "C": "PENDING",
        "H": "SCHEDULED",
    }
    # Listed in rerun_task_ids, A and its dependents run again.
    rerun = await client.state.fork(
        source, version=version, rerun_task_ids=["A"], new_workflow_id=_name("rerun")
    )
    assert await _task_states(client, rerun.workflow_id) == {
        "A": "SCHEDULED",
        "B": "PENDING",
        "C": "PENDING",
        "H": "SCHEDULED",
    }


async def test_a_fork_whose_tasks_all_ended_with_an_unhandled_failure_fails(client: Client) -> None:
    source = _name("endsrc")
    await _submit(
        client,
        source,
        task_pb2.TaskSpec(task_id="A", capability=f"a-{source}"),
        task_pb2.TaskSpec(task_id="H", capability=f"h-{source}"),
    )
    await _fail(client, source, f"a-{source}", "boom")
    held = await _take(client, f"h-{source}")
    completion = worker_service_pb2.TaskCompletion(
        workflow_id=source,
        task_id="H",
        attempt=held.attempt,
        output=common_pb2.Payload(data=b"1", content_type="application/json"),
        state_patch=state_pb2.StatePatch(merge_patch_json=b'{"h": "done"}'),
    )
    await client.raw.worker.CompleteTask(
        worker_service_pb2.CompleteTaskRequest(completion=completion), timeout=30
    )
    assert (await _workflow(client, source)).state == workflow_pb2.WORKFLOW_STATE_FAILED

    # From H's completion (the latest version) every task had ended: the fork closes as the
    # source did, FAILED for the failure nothing handled, and nothing runs again.
    fork = await client.state.fork(source, new_workflow_id=_name("endfork"))
    assert await _task_states(client, fork.workflow_id) == {"A": "FAILED", "H": "COMPLETED"}
    view = await _workflow(client, fork.workflow_id)
    assert view.state == workflow_pb2.WORKFLOW_STATE_FAILED
    assert "'A'" in view.failure.message, view.failure
    assert (view.usage.tasks_failed, view.usage.tasks_completed) == (1, 1)


# ForkWorkflow's labels


async def test_fork_labels_replace_the_sources_and_are_checked(client: Client) -> None:
    source = _name("labsrc")
    await _submit(client, source, team="x", env="prod")
    given = await client.state.fork(source, labels={"env": "dev"})
    assert dict((await _workflow(client, given.workflow_id)).labels) == {"env": "dev"}
    inherited = await client.state.fork(source)
    assert dict((await _workflow(client, inherited.workflow_id)).labels) == {"team": "x", "env": "prod"}

    cases: list[tuple[dict[str, str], str, str]] = [
        ({"bad key!": "v"}, "INVALID_ARGUMENT", "labels['bad key!']"),
        ({f"k{i}": "v" for i in range(33)}, "LIMIT_EXCEEDED", "labels"),
        ({"k": "v" * 257}, "LIMIT_EXCEEDED", "labels['k']"),
    ]
    for labels, reason, field in cases:
        target = _name("labbad")
        with pytest.raises(InvalidArgumentError) as caught:
            await client.state.fork(source, new_workflow_id=target, labels=labels)
        _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, reason, field)
        with pytest.raises(NotFoundError):  # and nothing was created
            await _workflow(client, target)


# GetState's answer bound


async def test_get_state_counts_the_echoed_paths_against_the_message_bound() -> None:
    bound = 32 * 1024 * 1024  # the smallest --max-message-bytes
    name = "k" * 1023
    path = "/" + name  # 1,024 characters, echoed with each value
    size = 334_800  # x 100 fits the bound less 64 KiB, not with the 100 paths beside
    with SidecarProcess.start(args=["--max-message-bytes", str(bound)]) as sidecar:
        async with await Client.connect(sidecar.target) as client:
            wid = _name("getbig")
            await _submit(client, wid)
            await client.state.patch(wid, {name: "v" * (size - 2)})
            assert len(json.dumps("v" * (size - 2))) == size
            with pytest.raises(InvalidArgumentError) as caught:
                await client.raw.state.GetState(
                    state_service_pb2.GetStateRequest(workflow_id=wid, paths=[path] * 100), timeout=60
                )
            _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "paths")
            fewer = await client.raw.state.GetState(
                state_service_pb2.GetStateRequest(workflow_id=wid, paths=[path] * 99), timeout=60
            )
            assert len(fewer.values) == 99
            assert fewer.ByteSize() <= bound


# PutBlob messages


async def _put_raw(client: Client, messages: list[state_service_pb2.PutBlobRequest]) -> None:
    try:
        await client.raw.state.PutBlob(iter(messages))
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from None


async def test_a_put_blob_message_without_header_or_chunk_is_refused(client: Client) -> None:
    header = state_service_pb2.BlobHeader(size_bytes=1)
    messages = [
        state_service_pb2.PutBlobRequest(header=header),
        state_service_pb2.PutBlobRequest(),
        state_service_pb2.PutBlobRequest(chunk=b"a"),
    ]
    with pytest.raises(InvalidArgumentError) as caught:
        await _put_raw(client, messages)
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "chunk")


async def test_a_deduplicated_put_keeps_the_first_content_type(client: Client) -> None:
    # PutBlobResponse.blob: the media type recorded when the bytes were first stored.
    data = f"typed {_name('ct')}".encode()
    first = await client.state.blobs.put(data, content_type="text/plain", check_first=False)
    second = await client.state.blobs.put(data, content_type="application/x-other", check_first=False)
    assert (first.sha256, first.content_type) == (second.sha256, "text/plain")
