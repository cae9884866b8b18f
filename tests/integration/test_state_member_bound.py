"""A state document's top-level members are bounded, so every accepted document can be forked and replaced.

Defect (found against a real sidecar): a 1 MB merge patch of 100,000
members was refused by an internal commit bound ("batch is too large ...
max_pending_mutations"), naming no field, and two accepted 60,000-member
patches built a document that ForkWorkflow and a root replace then failed
on for good. A patch that would leave more than 20,000 top-level members
is now refused up front, naming the patch; a document at the bound forks
and is replaced.
"""

from __future__ import annotations

import os
import uuid

import grpc
import pytest

from are_sdk import Client, InvalidArgumentError, WorkflowSpec
from are_sdk._errors import RpcError
from are_sdk._proto.are.v1 import state_pb2
from are_sdk._proto.are.v1 import state_service_pb2 as st

MAX_MEMBERS = 20_000  # state.proto, StatePatch


async def _workflow(client: Client) -> str:
    workflow_id = f"members-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    spec = WorkflowSpec("members", workflow_id=workflow_id)
    spec.task("hold", capability=f"nobody-{workflow_id}")
    return (await client.workflows.submit(spec)).workflow_id


def _merge(workflow_id: str, prefix: str, count: int) -> st.PatchStateRequest:
    request = st.PatchStateRequest(workflow_id=workflow_id)
    request.patch.merge_patch_json = ("{" + ",".join(f'"{prefix}{i}":0' for i in range(count)) + "}").encode()
    return request


def _assert_limit(error: RpcError, field: str) -> None:
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason == "LIMIT_EXCEEDED", error
    assert [v.field for v in error.field_violations] == [field], error
    assert error.metadata["limit"] == str(MAX_MEMBERS), error


async def test_a_patch_past_the_member_bound_is_refused_naming_it(client: Client) -> None:
    workflow_id = await _workflow(client)
    raw = client.raw.state
    with pytest.raises(InvalidArgumentError) as refused:
        await raw.PatchState(_merge(workflow_id, "a", 100_000), timeout=120)
    _assert_limit(refused.value, "patch.merge_patch_json")
    await raw.PatchState(_merge(workflow_id, "a", 12_000), timeout=120)
    with pytest.raises(InvalidArgumentError) as refused:
        await raw.PatchState(_merge(workflow_id, "b", 12_000), timeout=120)
    _assert_limit(refused.value, "patch.merge_patch_json")
    over = st.PatchStateRequest(workflow_id=workflow_id)
    value = ("{" + ",".join(f'"c{i}":0' for i in range(MAX_MEMBERS + 1)) + "}").encode()
    over.patch.operations.operations.add(op=state_pb2.PATCH_OPERATION_TYPE_SET, path="", value_json=value)
    with pytest.raises(InvalidArgumentError) as refused:
        await raw.PatchState(over, timeout=120)
    _assert_limit(refused.value, "patch.operations")
    assert (await client.state.get(workflow_id, ["/b0"])).missing_paths == ["/b0"]


async def test_a_document_at_the_bound_forks_and_its_root_is_replaced(client: Client) -> None:
    workflow_id = await _workflow(client)
    raw = client.raw.state
    await raw.PatchState(_merge(workflow_id, "a", MAX_MEMBERS // 2), timeout=120)
    await raw.PatchState(_merge(workflow_id, "b", MAX_MEMBERS // 2), timeout=120)
    fork = await client.state.fork(workflow_id)
    forked = await client.state.for_workflow(fork.workflow_id).get("")
    assert len(forked) == MAX_MEMBERS
    replace = st.PatchStateRequest(workflow_id=workflow_id)
    replace.patch.operations.operations.add(
        op=state_pb2.PATCH_OPERATION_TYPE_SET, path="", value_json=b'{"x":1}'
    )
    await raw.PatchState(replace, timeout=120)
    assert await client.state.for_workflow(workflow_id).get("") == {"x": 1}
