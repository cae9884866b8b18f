"""State review, over gRPC against a real sidecar: patch error messages, a fork of a memory of several pages.

Defects: PATCH_NOT_APPLICABLE named a pointer without its first token
(``/a/b/0/z`` reported ``'/b/0'``, ``/n/x`` reported ``''``); a merge patch
with a lone surrogate escape was refused as "Input data was truncated";
ForkWorkflow read its source's notes into one list before copying them
(now a page at a time, several commits: the fork must still copy them all,
with the ids, and none created after its version).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from are_sdk import Client, FailedPreconditionError, InvalidArgumentError, MemoryNote, RpcError
from are_sdk._proto.are.v1 import state_service_pb2

# A running workflow per test (the write gate wants one the scheduler knows), as test_state makes it.
from tests.integration.test_state import _scheduler_target, _wid  # noqa: F401 - an autouse fixture


def _assert_error(error: RpcError, code: grpc.StatusCode, reason: str, field: str | None = None) -> None:
    assert error.code == code, error
    assert error.reason == reason, error
    if field is not None:  # a precondition failure names no field (no BadRequest)
        assert [v.field for v in error.field_violations] == [field], error


@pytest.mark.parametrize(
    ("path", "place"),
    [("/a/b/0/z", "'/a/b/0' is not an object or array"), ("/n/x", "'/n' is not an object or array")],
)
async def test_a_set_that_cannot_apply_names_the_place_in_the_whole_document(
    client: Client, path: str, place: str
) -> None:
    wid = _wid("na")
    await client.state.patch(wid, {"a": {"b": [7]}, "n": 5})
    with pytest.raises(FailedPreconditionError) as caught:
        await client.state.patch(wid, set={path: 1})
    _assert_error(caught.value, grpc.StatusCode.FAILED_PRECONDITION, "PATCH_NOT_APPLICABLE")
    assert f"cannot set {path!r}: {place}" in str(caught.value), caught.value


async def test_a_lone_surrogate_in_a_merge_patch_is_named(client: Client) -> None:
    wid = _wid("sur")
    request = state_service_pb2.PatchStateRequest(workflow_id=wid)
    request.patch.merge_patch_json = rb'{"a": "\ud800"}'
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.state.PatchState(request)
    _assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JSON", "patch.merge_patch_json")
    message = str(caught.value)
    assert r"'\ud800' at byte 7 is a lone UTF-16 high surrogate" in message, message
    assert "truncated" not in message


async def test_a_fork_copies_a_memory_of_several_pages(client: Client) -> None:
    """5,000 notes (pages of 2,000 at most): all copied, ids kept; those after the fork's version not."""
    wid = _wid("src")
    state = client.state.for_workflow(wid)
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((5000, 8)).astype(np.float32)
    ids: list[str] = []
    for start in range(0, 5000, 1000):
        ids += await state.memory.add(
            [MemoryNote(text=f"n{i}", vector=vectors[i].tolist()) for i in range(start, start + 1000)]
        )
    version = await state.patch({"step": 1})
    await state.patch({"step": 2})
    after = await state.memory.add([MemoryNote(text="after the fork's version", vector=[1.0] * 8)])
    fork = await client.state.fork(wid, version=version)
    assert fork.source_version == version
    forked = client.state.for_workflow(fork.workflow_id)
    for i in (0, 1999, 2000, 3999, 4000, 4999):
        hits = await forked.memory.hydrate(vectors[i].tolist(), top_k=1)
        assert hits.texts == [f"n{i}"]
        assert [hit.memory_id for hit in hits.hits] == [ids[i]]
    hits = await forked.memory.hydrate([1.0] * 8, top_k=100)
    assert "after the fork's version" not in hits.texts
    added = await forked.memory.add([MemoryNote(text="new", vector=[0.5] * 8)])
    assert added == after  # the fork's next id follows its last copied note, as the source's did
