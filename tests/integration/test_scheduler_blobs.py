"""Blob references as task payloads over real gRPC: inputs, outputs, results, refusals, lifetime."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

from are_sdk import Client, InvalidArgumentError, NotFoundError
from are_sdk._proto.are.v1 import cache_service_pb2 as cs
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import errors_pb2
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import state_service_pb2 as st
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf

from .test_scheduler import (
    StreamWorker,
    completion,
    expect_error,
    get_task,
    submit,
    task,
    unique_capability,
    wait_closed,
)

_MiB = 1024 * 1024


def _ref_payload(sha256: str, size: int = 0, content_type: str = "") -> c.Payload:
    return c.Payload(blob=c.BlobRef(sha256=sha256, size_bytes=size), content_type=content_type)


def _blob_completion(a: w.TaskAssignment, sha256: str, size: int) -> w.TaskCompletion:
    return w.TaskCompletion(
        workflow_id=a.workflow_id, task_id=a.task_id, attempt=a.attempt, output=_ref_payload(sha256, size)
    )


async def _held(worker: StreamWorker, task_id: str, timeout: float = 10.0) -> w.TaskAssignment:
    """Waits (bounded) until the worker holds an assignment of ``task_id``."""
    async with asyncio.timeout(timeout):
        while True:
            for (_, held_id), a in list(worker.held.items()):
                if held_id == task_id:
                    return a
            await asyncio.sleep(0.02)


async def test_a_blob_input_and_a_blob_output_flow_between_tasks(client: Client) -> None:
    cap = unique_capability("blob")
    big = os.urandom(5 * _MiB)
    ref = await client.state.blobs.put(big, content_type="application/octet-stream")
    out_bytes = os.urandom(5 * _MiB + 7)
    out_ref = await client.state.blobs.put(out_bytes, content_type="application/x-out")
    async with StreamWorker(client, lambda a: None, capabilities=[cap]) as worker:  # holds every task
        wf_id = await submit(
            client,
            task("produce", cap, input=_ref_payload(ref.sha256, len(big))),
            task("consume", cap, "produce"),
            result_task_id="consume",
        )
        a = await _held(worker, "produce")
        assert a.input.WhichOneof("content") == "blob"
        assert (a.input.blob.sha256, a.input.blob.size_bytes) == (ref.sha256, len(big))
        assert a.input.content_type == "application/octet-stream"  # from the stored blob
        assert await client.state.blobs.get(a.input.blob.sha256) == big
        await worker.send(
            w.ConnectRequest(complete=w.CompletionBatch(completions=[_blob_completion(a, out_ref.sha256, 0)]))
        )
        b = await _held(worker, "consume")
        (dep,) = b.dependencies
        assert dep.output.WhichOneof("content") == "blob"
        assert (dep.output.blob.sha256, dep.output.blob.size_bytes) == (out_ref.sha256, len(out_bytes))
        assert dep.output.content_type == "application/x-out"
        assert await client.state.blobs.get(dep.output.blob.sha256) == out_bytes
        # The unary CompleteTask takes a blob output too.
        await client.raw.worker.CompleteTask(
            w.CompleteTaskRequest(completion=_blob_completion(b, out_ref.sha256, len(out_bytes)))
        )
        closed = await wait_closed(client, wf_id)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    assert closed.result.WhichOneof("content") == "blob"
    assert closed.result.blob.sha256 == out_ref.sha256
    got = await client.raw.scheduler.GetWorkflow(s.GetWorkflowRequest(workflow_id=wf_id))
    assert got.workflow.result.blob.sha256 == out_ref.sha256
    produce = await get_task(client, wf_id, "produce")
    assert produce.spec.input.blob.sha256 == ref.sha256
    assert produce.output.blob.sha256 == out_ref.sha256
    listed = await client.raw.scheduler.ListTasks(
        s.ListTasksRequest(workflow_id=wf_id, include_payloads=True)
    )
    assert [x.output.blob.sha256 for x in listed.tasks] == [out_ref.sha256, out_ref.sha256]


async def test_a_missing_blob_is_not_found_naming_the_field_and_changes_nothing(client: Client) -> None:
    missing = hashlib.sha256(b"never stored " + os.urandom(8)).hexdigest()
    before = await client.raw.scheduler.ListWorkflows(s.ListWorkflowsRequest(page_size=1000))
    await expect_error(
        submit(client, task("a"), task("b", input=_ref_payload(missing)), workflow_id="blob-missing-1"),
        NotFoundError,
        "BLOB_NOT_FOUND",
        "spec.tasks[1].input.blob",
    )
    await expect_error(
        submit(client, task("a", input=_ref_payload("ABC")), workflow_id="blob-missing-2"),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "spec.tasks[0].input.blob.sha256",
    )
    ref = await client.state.blobs.put(b"twelve bytes")
    await expect_error(
        submit(client, task("a", input=_ref_payload(ref.sha256, 13)), workflow_id="blob-missing-3"),
        InvalidArgumentError,
        "INVALID_ARGUMENT",
        "spec.tasks[0].input.blob.size_bytes",
    )
    after = await client.raw.scheduler.ListWorkflows(s.ListWorkflowsRequest(page_size=1000))
    ids = {x.workflow_id for x in after.workflows}
    assert not ids & {"blob-missing-1", "blob-missing-2", "blob-missing-3"}
    assert len(after.workflows) >= len(before.workflows)


async def test_a_completion_with_a_missing_blob_is_refused_and_the_task_stays_held(client: Client) -> None:
    cap = unique_capability("blobout")
    missing = hashlib.sha256(os.urandom(16)).hexdigest()
    async with StreamWorker(client, lambda a: None, capabilities=[cap]) as worker:
        wf_id = await submit(client, task("a", cap))
        a = await _held(worker, "a")
        await worker.send(
            w.ConnectRequest(complete=w.CompletionBatch(completions=[_blob_completion(a, missing, 0)]))
        )
        (ack,) = await worker.wait_acks(1)
        assert not ack.accepted
        assert ack.reason == errors_pb2.ERROR_REASON_BLOB_NOT_FOUND
        assert "complete.completions[0].output.blob" in ack.message
        await expect_error(
            client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=_blob_completion(a, missing, 0))),
            NotFoundError,
            "BLOB_NOT_FOUND",
            "completion.output.blob",
        )
        # Still held: an inline completion is accepted.
        await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, {"ok": 1})))
        closed = await wait_closed(client, wf_id)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    assert json.loads((await get_task(client, wf_id, "a")).output.data) == {"ok": 1}


async def test_spawned_tasks_take_blob_inputs_and_refuse_missing_ones(client: Client) -> None:
    cap = unique_capability("blobspawn")
    ref = await client.state.blobs.put(os.urandom(1000))
    async with StreamWorker(client, lambda a: None, capabilities=[cap]) as worker:
        wf_id = await submit(client, task("parent", cap))
        parent = await _held(worker, "parent")
        await expect_error(
            client.raw.scheduler.SpawnTasks(
                s.SpawnTasksRequest(
                    workflow_id=wf_id,
                    parent_task_id="parent",
                    parent_attempt=parent.attempt,
                    tasks=[task("child", cap, input=_ref_payload(hashlib.sha256(b"nope!").hexdigest()))],
                )
            ),
            NotFoundError,
            "BLOB_NOT_FOUND",
            "tasks[0].input.blob",
        )
        await client.raw.scheduler.SpawnTasks(
            s.SpawnTasksRequest(
                workflow_id=wf_id,
                parent_task_id="parent",
                parent_attempt=parent.attempt,
                tasks=[task("child", cap, input=_ref_payload(ref.sha256))],
            )
        )
        child = await _held(worker, "child")
        assert (child.input.blob.sha256, child.input.blob.size_bytes) == (ref.sha256, 1000)
        for a in (parent, child):
            await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, 1)))
        await wait_closed(client, wf_id)


async def test_deleting_the_uploading_workflow_keeps_a_blob_another_workflow_references(
    client: Client,
) -> None:
    cap = unique_capability("blobkeep")
    data = os.urandom(3000)
    owner = await submit(client, task("a", cap))
    ref = await client.state.blobs.put(data, workflow_id=owner)
    async with StreamWorker(client, lambda a: None, capabilities=[cap]) as worker:
        user = await submit(client, task("b", cap, input=_ref_payload(ref.sha256)))
        a = await _held(worker, "a")
        b = await _held(worker, "b")
        for x in (a, b):
            await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(x, 1)))
        await wait_closed(client, owner)
        await wait_closed(client, user)
    await client.raw.scheduler.DeleteWorkflow(s.DeleteWorkflowRequest(workflow_id=owner))
    assert await client.state.blobs.get(ref) == data
    await client.raw.scheduler.DeleteWorkflow(s.DeleteWorkflowRequest(workflow_id=user))
    assert ref.sha256 not in await client.state.blobs.check([ref.sha256])


async def test_a_fork_owns_the_blobs_its_tasks_reference(client: Client) -> None:
    cap = unique_capability("blobfork")
    data = os.urandom(2000)
    owner = await submit(client, task("a", cap))
    ref = await client.state.blobs.put(data, workflow_id=owner)
    async with StreamWorker(client, lambda a: None, capabilities=[cap]) as worker:
        source = await submit(client, task("b", cap, input=_ref_payload(ref.sha256)))
        for task_id in ("a", "b"):
            held = await _held(worker, task_id)
            await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(held, 1)))
        await wait_closed(client, owner)
        await wait_closed(client, source)
    fork = await client.raw.state.ForkWorkflow(st.ForkWorkflowRequest(workflow_id=source))
    for wf_id in (owner, source):
        await client.raw.scheduler.DeleteWorkflow(s.DeleteWorkflowRequest(workflow_id=wf_id))
    assert await client.state.blobs.get(ref) == data
    forked = await get_task(client, fork.workflow_id, "b")
    assert forked.spec.input.blob.sha256 == ref.sha256


async def test_a_blob_output_is_cached_as_a_blob_and_a_hit_completes_with_the_reference(
    client: Client,
) -> None:
    namespace = f"blobs-{os.getpid()}-{os.urandom(4).hex()}"
    await client.raw.cache.PutNamespace(cs.PutNamespaceRequest(namespace=cs.CacheNamespace(name=namespace)))
    cap = unique_capability("blobcache")
    data = os.urandom(4 * _MiB + 1)
    ref = await client.state.blobs.put(data, content_type="text/plain")
    key = t.TaskCacheKey(namespace=namespace, prompt="summarise the large thing")
    async with StreamWorker(client, lambda a: None, capabilities=[cap]) as worker:
        first = await submit(client, task("a", cap, cache_key=key))
        a = await _held(worker, "a")
        await client.raw.worker.CompleteTask(
            w.CompleteTaskRequest(completion=_blob_completion(a, ref.sha256, 0))
        )
        await wait_closed(client, first)
    async with asyncio.timeout(10):  # the store follows the durable completion
        while True:
            found = await client.raw.cache.LookupCache(
                cs.LookupCacheRequest(namespace=namespace, prompt=key.prompt)
            )
            if found.hit:
                break
            await asyncio.sleep(0.02)
    assert found.response.blob.sha256 == ref.sha256
    second = await submit(client, task("a", cap, cache_key=key))
    closed = await wait_closed(client, second)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
    assert (closed.result.blob.sha256, closed.result.blob.size_bytes) == (ref.sha256, len(data))
    answered = await get_task(client, second, "a")
    assert answered.attempt == 0
    assert answered.output.blob.sha256 == ref.sha256


async def test_a_blob_output_cannot_feed_a_state_pointer_and_the_task_stays_held(client: Client) -> None:
    cap = unique_capability("blobstate")
    ref = await client.state.blobs.put(b'{"big": true}', content_type="application/json")
    async with StreamWorker(client, lambda a: None, capabilities=[cap]) as worker:
        wf_id = await submit(client, task("a", cap, output_state_pointer="/out"))
        a = await _held(worker, "a")
        await expect_error(
            client.raw.worker.CompleteTask(
                w.CompleteTaskRequest(completion=_blob_completion(a, ref.sha256, 0))
            ),
            InvalidArgumentError,
            "INVALID_ARGUMENT",
            "completion.output.blob",
        )
        await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion(a, {"v": 1})))
        closed = await wait_closed(client, wf_id)
    assert closed.state == wf.WORKFLOW_STATE_COMPLETED
