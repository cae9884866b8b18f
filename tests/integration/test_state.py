"""StateService end to end: a real sidecar, real gRPC, real LMDB."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from are_sdk import (
    AbortedError,
    AlreadyExistsError,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    MemoryNote,
    NotFoundError,
    RpcError,
    SyncClient,
    VersionMismatchError,
)
from are_sdk._errors import error_from_rpc
from are_sdk._proto.are.v1 import (
    common_pb2,
    event_pb2,
    scheduler_service_pb2,
    scheduler_service_pb2_grpc,
    state_pb2,
    state_service_pb2,
    task_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
    workflow_pb2,
)
from are_sdk.testing import SidecarProcess

_ids = itertools.count()
_target: list[str] = []


@pytest.fixture(autouse=True)
def _scheduler_target(sidecar: SidecarProcess) -> None:
    """State writes need a workflow the scheduler knows (the write gate); ``_wid`` submits one."""
    _target[:] = [sidecar.target]


def _wid(name: str) -> str:
    """A running workflow's id (a task nobody serves keeps it open); its state starts at version 1, ``{}``."""
    workflow_id = f"st-{name}-{os.getpid()}-{next(_ids)}"
    spec = workflow_pb2.WorkflowSpec(
        workflow_id=workflow_id,
        tasks=[task_pb2.TaskSpec(task_id="hold", capability=f"nobody-{workflow_id}")],
    )
    with grpc.insecure_channel(_target[0]) as channel:
        scheduler_service_pb2_grpc.SchedulerServiceStub(channel).SubmitWorkflow(
            scheduler_service_pb2.SubmitWorkflowRequest(spec=spec), timeout=10
        )
    return workflow_id


def _hold(workflow_id: str) -> int:
    """Takes the workflow's ``hold`` task as a worker; returns the attempt now held."""
    request = worker_service_pb2.PollTaskRequest(
        worker_name="state-test", capabilities=[f"nobody-{workflow_id}"], max_tasks=1
    )
    with grpc.insecure_channel(_target[0]) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        for _ in range(20):
            response = stub.PollTask(request, timeout=5)
            if response.assignments:
                return int(response.assignments[0].attempt)
    raise AssertionError(f"the hold task of {workflow_id} was never assigned")


def _unknown(name: str) -> str:
    """An id no workflow has (its state writes are refused, WORKFLOW_NOT_FOUND)."""
    return f"st-{name}-{os.getpid()}-{next(_ids)}"


def _assert_error(error: RpcError, code: grpc.StatusCode, reason: str, field: str | None = None) -> None:
    assert error.code == code, error
    assert error.reason == reason, error
    if field is not None:
        assert [v.field for v in error.field_violations] == [field], error
    if reason == "LIMIT_EXCEEDED":  # errors.proto: ErrorInfo.metadata "limit" holds the bound
        assert error.metadata.get("limit", "").isdigit(), error


async def test_patch_then_read_paths_at_latest_and_at_a_version(client: Client) -> None:
    wid = _wid("read")
    state = client.state.for_workflow(wid)
    assert await state.patch({"plan": {"steps": ["search", "book"]}, "budget": 10}) == 2
    assert await state.patch(set={"/plan/steps/-": "pay", "/a~1b": {"x~y": 1.5}}, remove=["/budget"]) == 3
    assert await state.get("/plan/steps") == ["search", "book", "pay"]
    assert await state.get("/a~1b/x~0y") == 1.5
    snap = await state.read("/plan/steps/0", "/budget", "/nope/deeper")
    assert snap.version == 3
    assert snap.values == {"/plan/steps/0": "search"}
    assert snap.missing_paths == ["/budget", "/nope/deeper"]
    old = await state.read("/plan/steps", "/budget", version=2)
    assert old.values == {"/plan/steps": ["search", "book"], "/budget": 10}
    assert await state.get("") == {"a/b": {"x~y": 1.5}, "plan": {"steps": ["search", "book", "pay"]}}
    assert await state.get("/missing", default="d") == "d"


async def test_numbers_keep_their_value(client: Client) -> None:
    wid = _wid("numbers")
    big = 123456789012345678901234567890
    request = state_service_pb2.PatchStateRequest(workflow_id=wid)
    request.patch.merge_patch_json = b'{"big": %d, "f": 1.0, "neg": -0.0, "pi": 3.141592653589793}' % big
    await client.raw.state.PatchState(request)
    response = await client.raw.state.GetState(
        state_service_pb2.GetStateRequest(workflow_id=wid, paths=["/big", "/f", "/neg", "/pi"])
    )
    assert [v.value_json for v in response.values] == [
        str(big).encode(),
        b"1.0",
        b"-0.0",
        b"3.141592653589793",
    ]


async def test_merge_patch_follows_rfc_7386(client: Client) -> None:
    wid = _wid("merge")
    state = client.state.for_workflow(wid)
    await state.patch({"a": {"b": 1, "c": {"d": 2}}, "e": [1, 2], "f": "x"})
    await state.patch({"a": {"b": None, "c": {"z": 3}}, "e": [3], "f": None, "g": {"h": None, "i": 1}})
    assert await state.get() == {"a": {"c": {"d": 2, "z": 3}}, "e": [3], "g": {"i": 1}}


async def test_expected_version_mismatch_is_aborted_and_changes_nothing(client: Client) -> None:
    wid = _wid("cas")
    state = client.state.for_workflow(wid)
    await state.patch({"n": 1})
    assert await state.patch({"n": 2}, expected_version=2) == 3
    with pytest.raises(VersionMismatchError) as caught:
        await state.patch({"n": 3}, expected_version=2)
    assert isinstance(caught.value, AbortedError)
    _assert_error(caught.value, grpc.StatusCode.ABORTED, "STATE_VERSION_MISMATCH")
    assert caught.value.metadata["current_version"] == "3"
    assert (await state.read("/n")).version == 3
    assert await state.get("/n") == 2
    # A submitted workflow's document exists from version 1 (its initial state).
    assert await client.state.patch(_wid("fresh"), {"x": 1}, expected_version=1) == 2


@pytest.mark.parametrize(
    ("patch", "reason", "field"),
    [
        ({"merge_patch_json": b"{not json"}, "INVALID_JSON", "patch.merge_patch_json"),
        ({"merge_patch_json": b"[1, 2]"}, "INVALID_JSON", "patch.merge_patch_json"),
        (
            {
                "ops": [
                    (state_pb2.PATCH_OPERATION_TYPE_SET, "/ok", b"1"),
                    (state_pb2.PATCH_OPERATION_TYPE_SET, "x", b"1"),
                ]
            },
            "INVALID_JSON_POINTER",
            "patch.operations.operations[1].path",
        ),
        (
            {"ops": [(state_pb2.PATCH_OPERATION_TYPE_SET, "/a~2", b"1")]},
            "INVALID_JSON_POINTER",
            "patch.operations.operations[0].path",
        ),
        (
            {"ops": [(state_pb2.PATCH_OPERATION_TYPE_SET, "/a", b"{bad")]},
            "INVALID_JSON",
            "patch.operations.operations[0].value_json",
        ),
        (
            {"ops": [(state_pb2.PATCH_OPERATION_TYPE_UNSPECIFIED, "/a", b"1")]},
            "INVALID_ARGUMENT",
            "patch.operations.operations[0].op",
        ),
        (
            {"ops": [(state_pb2.PATCH_OPERATION_TYPE_REMOVE, "", b"")]},
            "INVALID_ARGUMENT",
            "patch.operations.operations[0].path",
        ),
        (
            {"ops": [(state_pb2.PATCH_OPERATION_TYPE_SET, "/a", b"1")] * 1001},
            "LIMIT_EXCEEDED",
            "patch.operations.operations",
        ),
        (
            {"merge_patch_json": b'{"a": "' + b"x" * (4 * 1024 * 1024) + b'"}'},
            "LIMIT_EXCEEDED",
            "patch.merge_patch_json",
        ),
        ({}, "INVALID_ARGUMENT", "patch"),
    ],
)
async def test_bad_patches_name_the_field_and_change_nothing(
    client: Client, patch: dict[str, Any], reason: str, field: str
) -> None:
    wid = _wid("bad")
    await client.state.patch(wid, {"keep": True})
    request = state_service_pb2.PatchStateRequest(workflow_id=wid)
    if "merge_patch_json" in patch:
        request.patch.merge_patch_json = patch["merge_patch_json"]
    for op, path, value in patch.get("ops", []):
        request.patch.operations.operations.add(op=op, path=path, value_json=value)
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.state.PatchState(request)
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, reason, field)
    snap = await client.state.get(wid)
    assert (snap.version, snap.values) == (2, {"": {"keep": True}})


async def test_document_over_16_mib_is_refused(client: Client) -> None:
    wid = _wid("huge")
    chunk = "x" * (3 * 1024 * 1024)
    for i in range(5):
        await client.state.patch(wid, {f"k{i}": chunk})
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.patch(wid, {"k5": chunk})
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "patch.merge_patch_json")
    assert caught.value.metadata["limit"] == str(16 * 1024 * 1024)
    assert (await client.state.get(wid, ["/k5"])).missing_paths == ["/k5"]


async def test_pointer_operation_on_a_missing_parent_is_not_applicable(client: Client) -> None:
    wid = _wid("na")
    await client.state.patch(wid, {"list": [1]})
    for path in ("/nope/child", "/list/5"):
        with pytest.raises(FailedPreconditionError) as caught:
            await client.state.patch(wid, set={path: 1})
        _assert_error(caught.value, grpc.StatusCode.FAILED_PRECONDITION, "PATCH_NOT_APPLICABLE")
    assert (await client.state.get(wid)).version == 2


async def test_read_errors(client: Client) -> None:
    caught: pytest.ExceptionInfo[RpcError]  # the blocks below expect different errors
    with pytest.raises(NotFoundError) as caught:
        await client.state.get(_unknown("none"), ["/a"])
    _assert_error(caught.value, grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND")
    wid = _wid("rerr")
    await client.state.patch(wid, {"a": 1})
    with pytest.raises(NotFoundError) as caught:
        await client.state.get(wid, ["/a"], version=7)
    _assert_error(caught.value, grpc.StatusCode.NOT_FOUND, "STATE_VERSION_NOT_FOUND")
    assert caught.value.metadata["latest_version"] == "2"
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.get(wid, ["/a", "no-slash"])
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JSON_POINTER", "paths[1]")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.get(wid, ["/a"] * 101)
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "paths")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.get("bad id!", ["/a"])
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "workflow_id")


async def test_checkpoints_page_newest_first_with_writers(client: Client) -> None:
    wid = _wid("cp")
    for i in range(5):
        await client.state.patch(wid, {"i": i}, writer=f"w{i}")
    attempt = _hold(wid)
    await client.state.patch(wid, {"i": 5}, task_id="hold", attempt=attempt)
    seen = [c async for c in client.state.checkpoints(wid, page_size=2)]
    assert [c.version for c in seen] == [7, 6, 5, 4, 3, 2, 1]
    assert (seen[0].task_id, seen[0].attempt) == ("hold", attempt)
    assert [c.writer for c in seen[1:]] == ["w4", "w3", "w2", "w1", "w0", "submit"]
    assert all(c.size_bytes == len(b'{"i":0}') for c in seen[:-1])
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.state.ListCheckpoints(
            state_service_pb2.ListCheckpointsRequest(workflow_id=wid, page_token="garbage")
        )
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token")


async def test_fork_from_a_version_copies_state_and_memory(client: Client) -> None:
    wid = _wid("src")
    state = client.state.for_workflow(wid)
    await state.patch({"step": 1})
    await state.memory.add([MemoryNote(text="before fork", vector=[1.0, 0.0])])
    await state.patch({"step": 2})
    fork = await state.fork(version=2)
    assert fork.source_version == 2
    assert fork.workflow_id.startswith("wf_")
    forked = client.state.for_workflow(fork.workflow_id)
    assert await forked.get("") == {"step": 1}
    assert [c.writer async for c in forked.checkpoints()] == ["fork"]
    hits = await forked.memory.hydrate([1.0, 0.0])
    assert hits.texts == []  # the note came after version 2
    named = await client.state.fork(wid, new_workflow_id=_unknown("dst"), request_id="req-1-" + wid[-6:])
    assert named.source_version == 3
    assert (await client.state.for_workflow(named.workflow_id).memory.hydrate([1.0, 0.0])).texts == [
        "before fork"
    ]
    again = await client.state.fork(wid, new_workflow_id=named.workflow_id, request_id="req-1-" + wid[-6:])
    assert again == named
    caught: pytest.ExceptionInfo[RpcError]  # the blocks below expect different errors
    with pytest.raises(AlreadyExistsError) as caught:
        await client.state.fork(wid, new_workflow_id=named.workflow_id)
    _assert_error(caught.value, grpc.StatusCode.ALREADY_EXISTS, "WORKFLOW_ALREADY_EXISTS")
    with pytest.raises(NotFoundError) as caught:
        await client.state.fork(wid, version=9)
    _assert_error(caught.value, grpc.StatusCode.NOT_FOUND, "STATE_VERSION_NOT_FOUND")


async def test_memory_hydrates_top_k_with_filter_and_budget(client: Client) -> None:
    wid = _wid("mem")
    memory = client.state.for_workflow(wid).memory
    ids = await memory.add(
        [
            MemoryNote(text="alpha", vector=[1.0, 0.0, 0.0], metadata={"kind": "plan"}),
            MemoryNote(text="beta-long-" * 10, vector=[0.9, 0.1, 0.0], metadata={"kind": "fact"}),
            MemoryNote(text="gamma", vector=[0.0, 1.0, 0.0], metadata={"kind": "plan"}, content=b"payload"),
        ]
    )
    assert len(ids) == 3
    assert len(set(ids)) == 3
    top = await memory.hydrate([1.0, 0.0, 0.0], top_k=2)
    assert top.texts == ["alpha", "beta-long-" * 10]
    assert top.hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert top.hits[0].metadata == {"kind": "plan"}
    plans = await memory.hydrate([1.0, 0.0, 0.0], metadata={"kind": "plan"})
    assert plans.texts == ["alpha", "gamma"]
    assert plans.hits[1].content == b"payload"
    small = await memory.hydrate([1.0, 0.0, 0.0], max_bytes=20)
    assert small.texts == ["alpha", "gamma"]
    assert small.truncated
    assert small.total_bytes == len("alpha") + len("gamma") + len("payload")
    floor = await memory.hydrate([1.0, 0.0, 0.0], min_similarity=0.5, include_vectors=True)
    assert floor.texts == ["alpha", "beta-long-" * 10]
    assert floor.hits[0].vector == [1.0, 0.0, 0.0]


async def test_memory_text_uses_the_embedder_and_refuses_mismatches(client: Client) -> None:
    wid = _wid("memtext")
    memory = client.state.for_workflow(wid).memory
    await memory.add(
        ["book the cheapest flight to Lisbon", "the user is vegetarian", "hotel near the old town"]
    )
    found = await memory.hydrate("vegetarian user", top_k=1)
    assert found.texts == ["the user is vegetarian"]
    caught: pytest.ExceptionInfo[RpcError]  # the blocks below expect different errors
    with pytest.raises(InvalidArgumentError) as caught:
        await memory.add([MemoryNote(vector=[1.0, 2.0])])
    _assert_error(
        caught.value, grpc.StatusCode.INVALID_ARGUMENT, "DIMENSION_MISMATCH", "entries[0].vector.values"
    )
    assert caught.value.metadata["expected_dimension"] == "256"
    with pytest.raises(InvalidArgumentError) as caught:
        await memory.hydrate([1.0, 2.0])
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "DIMENSION_MISMATCH", "vector.values")
    with pytest.raises(NotFoundError) as caught:  # as AddMemory answers, not an empty memory
        await client.state.for_workflow(f"no-such-workflow-{os.getpid()}").memory.hydrate("anything")
    _assert_error(caught.value, grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND")
    vectors_only = client.state.for_workflow(_wid("memvec")).memory
    await vectors_only.add([MemoryNote(text="v", vector=[1.0] * 256)])
    with pytest.raises(FailedPreconditionError) as caught:
        await vectors_only.hydrate("text query")
    _assert_error(caught.value, grpc.StatusCode.FAILED_PRECONDITION, "EMBEDDER_UNAVAILABLE")


async def test_memory_bad_input_names_the_field(client: Client) -> None:
    wid = _wid("membad")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.memory.add(wid, [MemoryNote(text="ok"), MemoryNote()])
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "entries[1]")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.memory.add(wid, [MemoryNote(text="ok", vector=[float("nan")])])
    _assert_error(
        caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "entries[0].vector.values"
    )
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.memory.hydrate(wid, "q", top_k=101)
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "top_k")
    for empty in ("", " \t\n"):  # no direction to rank by: refused, not every note at random
        with pytest.raises(InvalidArgumentError) as caught:
            await client.state.memory.hydrate(wid, empty)
        _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "text")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.memory.add(wid, [MemoryNote(text="x", content=b"y" * (64 * 1024 + 1))])
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "entries[0].content")
    assert (await client.state.memory.hydrate(wid, "anything")).hits == []


async def test_blobs_are_content_addressed_chunked_and_deduplicated(client: Client) -> None:
    data = os.urandom(2 * 1024 * 1024 + 123)
    digest = hashlib.sha256(data).hexdigest()
    assert await client.state.blobs.check([digest]) == {}
    ref = await client.state.blobs.put(data, content_type="application/x-test")
    assert (ref.sha256, ref.size_bytes, ref.content_type) == (digest, len(data), "application/x-test")
    assert await client.state.blobs.get(ref) == data
    assert (
        await client.state.blobs.get(digest, offset=1024 * 1024 - 5, length=10)
        == data[1024 * 1024 - 5 :][:10]
    )
    chunks = [c async for c in client.state.blobs.stream(ref)]
    assert all(len(c) <= 1024 * 1024 for c in chunks)
    # A second upload (with an owner, so it is really sent) is deduplicated.
    request = [
        state_service_pb2.PutBlobRequest(
            header=state_service_pb2.BlobHeader(size_bytes=len(data), workflow_id=_wid("owner"))
        ),
        *(
            state_service_pb2.PutBlobRequest(chunk=data[i : i + 1024 * 1024])
            for i in range(0, len(data), 1024 * 1024)
        ),
    ]
    response = await client.raw.state.PutBlob(iter(request))
    assert response.deduplicated
    assert response.blob.sha256 == digest
    empty = await client.state.blobs.put(b"")
    assert await client.state.blobs.get(empty) == b""


async def _put_raw(client: Client, messages: list[state_service_pb2.PutBlobRequest]) -> Any:
    try:
        return await client.raw.state.PutBlob(iter(messages))
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from None


async def test_blob_errors_name_the_field(client: Client) -> None:
    header = state_service_pb2.BlobHeader
    chunk = state_service_pb2.PutBlobRequest
    cases: list[tuple[list[state_service_pb2.PutBlobRequest], str, str]] = [
        ([chunk(chunk=b"x")], "INVALID_ARGUMENT", "header"),
        ([chunk(header=header(size_bytes=3)), chunk(chunk=b"ab")], "BLOB_SIZE_MISMATCH", "header.size_bytes"),
        ([chunk(header=header(size_bytes=1)), chunk(chunk=b"ab")], "BLOB_SIZE_MISMATCH", "header.size_bytes"),
        (
            [chunk(header=header(size_bytes=2, sha256="0" * 64)), chunk(chunk=b"ab")],
            "BLOB_DIGEST_MISMATCH",
            "header.sha256",
        ),
        ([chunk(header=header(size_bytes=2, sha256="xyz"))], "INVALID_ARGUMENT", "header.sha256"),
        ([chunk(header=header(size_bytes=257 * 1024 * 1024))], "LIMIT_EXCEEDED", "header.size_bytes"),
        (
            [chunk(header=header(size_bytes=2)), chunk(header=header(size_bytes=2))],
            "INVALID_ARGUMENT",
            "header",
        ),
    ]
    caught: pytest.ExceptionInfo[RpcError]  # the blocks below expect different errors
    for messages, reason, field in cases:
        with pytest.raises(InvalidArgumentError) as caught:
            await _put_raw(client, messages)
        _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, reason, field)
    with pytest.raises(NotFoundError) as caught:
        await client.state.blobs.get("0" * 64)
    _assert_error(caught.value, grpc.StatusCode.NOT_FOUND, "BLOB_NOT_FOUND")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.blobs.check(["ABC"])
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "sha256s[0]")
    ref = await client.state.blobs.put(b"abc")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.state.blobs.get(ref, offset=2, length=5)
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "length")


async def test_memory_note_can_carry_a_blob_reference(client: Client) -> None:
    ref = await client.state.blobs.put(b"large context " * 100, content_type="text/plain")
    wid = _wid("memblob")
    await client.state.memory.add(wid, [MemoryNote(text="see blob", vector=[1.0], content=ref)])
    hit = (await client.state.memory.hydrate(wid, [1.0])).hits[0]
    assert hit.content == ref
    with pytest.raises(NotFoundError) as caught:
        await client.state.memory.add(
            wid, [MemoryNote(text="x", vector=[1.0], content=type(ref)("0" * 64, 1, ""))]
        )
    _assert_error(caught.value, grpc.StatusCode.NOT_FOUND, "BLOB_NOT_FOUND")


def test_sync_client_and_task_binding(sidecar: SidecarProcess) -> None:
    class _Task:
        workflow_id = _wid("task")
        task_id = "hold"
        attempt = _hold(workflow_id)

    with SyncClient.connect(sidecar.target) as client:
        state = client.state.for_task(_Task())
        assert state.patch({"out": json.loads('{"x": [1, 2]}')}) == 2
        assert state.get("/out/x/1") == 2
        checkpoint, _initial = list(state.checkpoints())
        assert (checkpoint.task_id, checkpoint.attempt) == ("hold", _Task.attempt)


async def test_patches_and_notes_are_recorded_as_events(client: Client) -> None:
    wid = _wid("events")
    await client.state.patch(wid, {"a": 1}, writer="me")
    await client.state.memory.add(wid, [MemoryNote(text="n", vector=[1.0])])
    checkpoint, initial = [c async for c in client.state.checkpoints(wid)]
    page = await client.trace.list_events(workflow_ids=[wid])
    state_events = [
        event
        for event in page.events
        if event.event_type in (event_pb2.EVENT_TYPE_STATE_PATCHED, event_pb2.EVENT_TYPE_MEMORY_ADDED)
    ]
    kinds = [event.event_type for event in state_events]
    assert kinds == [
        event_pb2.EVENT_TYPE_STATE_PATCHED,  # version 1, the initial state, in the submit's commit
        event_pb2.EVENT_TYPE_STATE_PATCHED,
        event_pb2.EVENT_TYPE_MEMORY_ADDED,
    ]
    assert [e.sequence for e in state_events[:2]] == [initial.event_sequence, checkpoint.event_sequence]
    assert checkpoint.event_sequence > 0
    patched, added = state_events[1].attributes, state_events[2].attributes  # the names event.proto documents
    assert patched["are.state.version"].int_value == 2
    assert patched["are.state.writer"].string_value == "me"
    assert patched["are.state.patch_size_bytes"].int_value == len(b'{"a":1}')
    assert added["are.memory.count"].int_value == 1


async def test_the_sdk_refuses_an_ambiguous_patch_before_sending(client: Client) -> None:
    state = client.state.for_workflow(_wid("sdk"))
    with pytest.raises(InvalidArgumentError):
        await state.patch()
    with pytest.raises(InvalidArgumentError):
        await state.patch({"a": 1}, set={"/b": 2})
    await state.patch({"a": 1})
    with pytest.raises(KeyError):
        await state.get("/b")


async def test_a_file_is_streamed_as_a_blob(client: Client, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 1)
    path = tmp_path / "context.bin"
    path.write_bytes(data)
    ref = await client.state.blobs.put_file(
        path, content_type="application/octet-stream", workflow_id=_wid("f")
    )
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert await client.state.blobs.get(ref) == data
    assert await client.state.blobs.put_file(path) == ref  # already stored: nothing sent


_DEEP = b'{"a":' * 50_000 + b"1" + b"}" * 50_000  # valid JSON, deeper than any decoder recurses


async def test_json_nested_too_deep_to_decode_is_invalid_json_and_changes_nothing(client: Client) -> None:
    """Found by the bad-input fuzz (UNKNOWN before): PatchState (merge patch and operation
    value), a completion's state patch and a submit's initial state all decode JSON in the
    state engine; nesting past its recursion is not JSON."""
    wid = _wid("deep")
    attempt = _hold(wid)
    state = state_service_pb2
    refusals: list[tuple[Callable[[], Awaitable[object]], str]] = [
        (
            lambda: client.raw.state.PatchState(
                state.PatchStateRequest(workflow_id=wid, patch=state_pb2.StatePatch(merge_patch_json=_DEEP))
            ),
            "patch.merge_patch_json",
        ),
        (
            lambda: client.raw.state.PatchState(
                state.PatchStateRequest(
                    workflow_id=wid,
                    patch=state_pb2.StatePatch(
                        operations=state_pb2.PatchOperationList(
                            operations=[
                                state_pb2.PatchOperation(
                                    op=state_pb2.PATCH_OPERATION_TYPE_SET, path="/a", value_json=_DEEP
                                )
                            ]
                        )
                    ),
                )
            ),
            "patch.operations.operations[0].value_json",
        ),
        (
            lambda: client.raw.worker.CompleteTask(
                worker_service_pb2.CompleteTaskRequest(
                    completion=worker_service_pb2.TaskCompletion(
                        workflow_id=wid,
                        task_id="hold",
                        attempt=attempt,
                        state_patch=state_pb2.StatePatch(merge_patch_json=_DEEP),
                    )
                )
            ),
            "completion.state_patch.merge_patch_json",
        ),
    ]
    for call, field in refusals:
        with pytest.raises(InvalidArgumentError) as caught:
            await call()
        _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JSON", field)
    spec = workflow_pb2.WorkflowSpec(
        workflow_id=_unknown("deep-initial"),
        tasks=[task_pb2.TaskSpec(task_id="t", capability="nobody-deep")],
        initial_state=common_pb2.Payload(data=_DEEP),
    )
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.scheduler.SubmitWorkflow(scheduler_service_pb2.SubmitWorkflowRequest(spec=spec))
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JSON", "spec.initial_state.data")
    assert (await client.state.for_workflow(wid).read()).version == 1  # nothing changed
    held = await client.raw.scheduler.GetTask(
        scheduler_service_pb2.GetTaskRequest(workflow_id=wid, task_id="hold")
    )
    assert held.task.state == task_pb2.TASK_STATE_RUNNING


async def test_a_fork_keeps_the_blobs_its_source_kept(client: Client) -> None:
    # A fork's state starts as its source's and may name blobs the source uploaded as their
    # owner; deleting the source deleted them at once, while the fork's state still named them.
    wid = _wid("blobsrc")
    owned = await client.state.blobs.put(os.urandom(4000), workflow_id=wid)
    await client.state.for_workflow(wid).patch({"context": {"sha256": owned.sha256}})
    fork = await client.state.fork(wid, new_workflow_id=_unknown("blobfork"))
    source = client.get_workflow_handle(wid)
    await source.cancel(reason="done with it")
    await source.wait(timeout=30)
    await source.delete()
    assert owned.sha256 in await client.state.blobs.check([owned.sha256])
    named = await client.state.for_workflow(fork.workflow_id).get("/context/sha256")
    assert named == owned.sha256
    assert await client.state.blobs.get(owned.sha256) is not None
