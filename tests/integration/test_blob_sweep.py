"""The sweep of unreferenced blobs in a real sidecar started with a short TTL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from are_sdk import Client, InvalidArgumentError, NotFoundError
from are_sdk._proto.are.v1 import cache_service_pb2 as cs
from are_sdk._proto.are.v1 import common_pb2 as c
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import state_service_pb2 as st
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk.testing import SidecarProcess

from .test_scheduler import submit, task, unique_capability, wait_closed

TTL_S = 2.0  # long enough to reference a fresh upload, short enough to wait for
_WAIT_S = 60.0  # bound on every wait for the sweep


@pytest.fixture(scope="module")
def short_ttl_sidecar() -> Iterator[SidecarProcess]:
    with SidecarProcess.start(args=["--blob-unreferenced-ttl-s", str(TTL_S)]) as process:
        yield process


@pytest.fixture
async def client(short_ttl_sidecar: SidecarProcess) -> AsyncIterator[Client]:
    async with await Client.connect(short_ttl_sidecar.target) as connected:
        yield connected


def _blob_input(sha256: str) -> c.Payload:
    return c.Payload(blob=c.BlobRef(sha256=sha256))


async def _stored(client: Client, *digests: str) -> set[str]:
    return set(await client.state.blobs.check(list(digests)))


async def _wait_gone(client: Client, digest: str) -> None:
    """Waits (bounded) until the sweep has deleted the blob."""
    async with asyncio.timeout(_WAIT_S):
        while await _stored(client, digest):
            await asyncio.sleep(0.1)


async def _submit_referencing(client: Client, data: bytes, capability: str) -> tuple[str, str]:
    """Uploads unowned bytes and submits a workflow whose task input is that blob; (workflow, digest).

    On a machine so slow that the sweep took the blob between the two calls,
    the submit is refused (BLOB_NOT_FOUND) and the pair is simply tried again.
    """
    for _ in range(5):
        ref = await client.state.blobs.put(data, check_first=False)
        try:
            return await submit(client, task("hold", capability, input=_blob_input(ref.sha256))), ref.sha256
        except NotFoundError:
            continue
    raise AssertionError("the blob was swept before every submit")


async def test_unreferenced_blobs_are_swept_referenced_ones_kept_until_released(client: Client) -> None:
    capability = unique_capability("sweep")  # no worker: the task stays SCHEDULED
    wf_id, by_task = await _submit_referencing(client, os.urandom(3000), capability)
    by_note = (await client.state.blobs.put(os.urandom(2000), check_first=False)).sha256
    await client.raw.state.AddMemory(
        st.AddMemoryRequest(
            workflow_id=wf_id,
            entries=[
                st.MemoryEntry(
                    text="see the blob",
                    vector=c.Vector(values=[1.0, 0.0]),
                    content=c.Payload(blob=c.BlobRef(sha256=by_note)),
                )
            ],
        )
    )
    owned = (await client.state.blobs.put(os.urandom(1000), workflow_id=wf_id)).sha256
    # Uploaded last: once the sweep has taken it, every blob above was past the TTL too.
    unreferenced = (await client.state.blobs.put(os.urandom(4000), check_first=False)).sha256

    await _wait_gone(client, unreferenced)

    assert await _stored(client, by_task, by_note, owned) == {by_task, by_note, owned}
    assert len(await client.state.blobs.get(by_task)) == 3000

    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id, reason="done"))
    await wait_closed(client, wf_id)
    await client.raw.scheduler.DeleteWorkflow(s.DeleteWorkflowRequest(workflow_id=wf_id))
    assert not await _stored(client, owned)  # owned: deleted with its workflow
    for digest in (by_task, by_note):  # no longer referenced, long past the TTL: the next sweep
        await _wait_gone(client, digest)


async def test_a_blob_a_task_output_references_is_kept(client: Client) -> None:
    capability = unique_capability("sweep-out")
    wf_id = await submit(client, task("t", capability))
    polled = await client.raw.worker.PollTask(
        w.PollTaskRequest(worker_name="sweeper-test", capabilities=[capability]), timeout=10
    )
    (a,) = polled.assignments
    data = os.urandom(5000)
    for _ in range(5):  # a refused completion leaves the task held: upload again and retry
        output = (await client.state.blobs.put(data, check_first=False)).sha256
        completion = w.TaskCompletion(
            workflow_id=a.workflow_id, task_id=a.task_id, attempt=a.attempt, output=_blob_input(output)
        )
        try:
            await client.raw.worker.CompleteTask(w.CompleteTaskRequest(completion=completion))
            break
        except NotFoundError:
            continue
    await wait_closed(client, wf_id)
    unreferenced = (await client.state.blobs.put(os.urandom(4000), check_first=False)).sha256
    await _wait_gone(client, unreferenced)
    assert await _stored(client, output) == {output}


async def test_a_blob_a_cache_entry_answers_with_is_kept_while_the_entry_lives(client: Client) -> None:
    namespace = f"sweep-{os.urandom(4).hex()}"
    await client.cache.put_namespace(namespace)

    def store(sha256: str, size: int = 0) -> cs.StoreCacheRequest:
        blob = c.BlobRef(sha256=sha256, size_bytes=size)
        return cs.StoreCacheRequest(
            namespace=namespace, prompt="summarise the report", response=c.Payload(blob=blob)
        )

    with pytest.raises(NotFoundError) as missing:  # a blob the store does not hold: refused, nothing stored
        await client.raw.cache.StoreCache(store("ab" * 32))
    assert (missing.value.reason, missing.value.field_violations[0].field) == (
        "BLOB_NOT_FOUND",
        "response.blob",
    )
    data = os.urandom(6000)
    for _ in range(5):  # on a machine so slow the sweep took the fresh upload first: upload again
        answer = (await client.state.blobs.put(data, check_first=False)).sha256
        with pytest.raises(InvalidArgumentError) as wrong_size:
            await client.raw.cache.StoreCache(store(answer, size=7))
        assert wrong_size.value.field_violations[0].field == "response.blob.size_bytes"
        try:
            stored = await client.raw.cache.StoreCache(store(answer, size=6000))
            break
        except NotFoundError:
            continue
    assert (await client.cache.stats(namespace))[0].entries == 1

    unreferenced = (await client.state.blobs.put(os.urandom(4000), check_first=False)).sha256
    await _wait_gone(client, unreferenced)
    assert await _stored(client, answer) == {answer}
    hit = await client.raw.cache.LookupCache(
        cs.LookupCacheRequest(namespace=namespace, prompt="summarise the report")
    )
    assert (hit.hit, hit.response.blob.sha256) == (True, answer)

    assert await client.cache.invalidate(namespace, entry_ids=[stored.entry_id]) == 1
    await _wait_gone(client, answer)  # no longer referenced, past the TTL: the next sweep
