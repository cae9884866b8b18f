"""The SDK with blob payloads against a real sidecar: large outputs by reference, blob inputs."""

from __future__ import annotations

import os
import uuid

from are_sdk import BlobReference, Client, TaskContext, Worker, WorkflowSpec
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s

RESULT_TIMEOUT = 60.0
_MiB = 1024 * 1024


def suffix() -> str:
    return uuid.uuid4().hex[:8]


async def test_a_large_return_value_travels_as_a_blob_and_handlers_see_values(client: Client) -> None:
    make, check = f"make-{suffix()}", f"check-{suffix()}"
    worker = Worker(client, name=f"blobs-{suffix()}")
    big_text = "x" * (5 * _MiB)

    @worker.handler(make)
    async def produce(ctx: TaskContext) -> dict[str, object]:
        return {"text": big_text, "n": ctx.input["n"]}

    @worker.handler(check)
    def consume(ctx: TaskContext) -> dict[str, object]:
        upstream = ctx.dependency_outputs["make"]
        return {"len": len(upstream["text"]), "n": upstream["n"], "raw": len(ctx.input.data)}

    raw_input = os.urandom(5 * _MiB)
    ref = await client.state.blobs.put(raw_input, content_type="application/octet-stream")
    assert isinstance(ref, BlobReference)
    async with worker:
        handle = await client.submit_workflow(
            WorkflowSpec(result_task_id="check")
            .task("make", capability=make, input={"n": 7})
            .task("check", capability=check, input=ref, depends_on=["make"])
        )
        assert await handle.result(timeout=RESULT_TIMEOUT) == {"len": 5 * _MiB, "n": 7, "raw": 5 * _MiB}
        made = await client.raw.scheduler.GetTask(
            s.GetTaskRequest(workflow_id=handle.workflow_id, task_id="make")
        )
        assert made.task.output.WhichOneof("content") == "blob"
        assert made.task.output.blob.size_bytes > 4 * _MiB

        # A large result is fetched by handle.result().
        handle2 = await client.submit_workflow(
            WorkflowSpec(result_task_id="make").task("make", capability=make, input={"n": 1})
        )
        result = await handle2.result(timeout=RESULT_TIMEOUT)
        assert result == {"text": big_text, "n": 1}


async def test_a_large_cached_response_is_stored_as_a_blob_and_read_back(client: Client) -> None:
    namespace = f"big-{suffix()}"
    await client.cache.put_namespace(namespace)
    report = {"text": "y" * (5 * _MiB), "pages": 12}
    calls = 0

    async def produce() -> dict[str, object]:
        nonlocal calls
        calls += 1
        return report

    first = await client.cache.get_or_call(namespace, "summarise the annual report", produce)
    assert (first.from_cache, first.value) == (False, report)
    again = await client.cache.get_or_call(namespace, "summarise the annual report", produce)
    assert again.from_cache
    assert again.value == report  # fetched from the blob store and decoded as stored
    assert calls == 1
    raw = await client.cache.lookup_raw(namespace, "summarise the annual report")
    assert raw.response.WhichOneof("content") == "blob"  # the entry holds a reference, not 5 MiB
    assert again.hit is not None
    assert raw.response.blob.size_bytes == len(again.hit.data)
