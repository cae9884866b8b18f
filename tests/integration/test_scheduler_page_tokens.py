"""SchedulerService page tokens over real gRPC: bound to their call and filter, forged ones refused.

common.proto: a page_token is valid with the same filter only, and a bad one
(malformed, or issued for a different filter) is INVALID_ARGUMENT, reason
INVALID_PAGE_TOKEN, naming ``page_token``. Never UNKNOWN, whatever the bytes.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import msgspec
import pytest

from are_sdk import Client, InvalidArgumentError
from are_sdk._proto.are.v1 import cache_service_pb2 as cs
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import task_pb2 as t
from are_sdk._proto.are.v1 import workflow_pb2 as wf

from .test_scheduler import expect_error, submit, task, unique_capability


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def _bound_to(call: str, *filter_parts: object, cursor: bytes) -> str:
    """A token carrying the right call-and-filter fingerprint but a cursor the call cannot read."""
    digest = hashlib.blake2b(repr((call, *filter_parts)).encode(), digest_size=8).digest()
    return _b64(msgspec.msgpack.encode((2, digest, cursor)))


async def _refused(call: Any) -> None:
    await expect_error(call, InvalidArgumentError, "INVALID_PAGE_TOKEN", "page_token")


async def _pools(client: Client, prefix: str, count: int) -> None:
    for i in range(count):
        await client.raw.scheduler.PutPool(s.PutPoolRequest(pool=s.Pool(name=f"{prefix}-{i}")))


# Old-format tokens ("are1:" and a raw cursor) whose cursor is not UTF-8 once were decoded
# outside the token checks: UNKNOWN, a Python UnicodeDecodeError in the message.
_FORGED = [
    pytest.param("ListPools", _b64(b"are1:\xff"), id="pools-old-format-not-utf8"),
    pytest.param("ListApprovals", _b64(b"are1:" + b"\x01" * 8 + b"\x00\xff\x00x"), id="approvals-old-format"),
    pytest.param("ListTasks", _b64(b"are1:" + b"\xff" * 8), id="tasks-old-format"),
    pytest.param("ListWorkflows", _b64(b"are1:" + b"\xff" * 40), id="workflows-old-format"),
    pytest.param("ListPools", _b64(b"\x93\x02\xc4\x00\xc4\x01\xff"), id="pools-msgpack-no-digest"),
    pytest.param("ListPools", _bound_to("ListPools", cursor=b"\xff"), id="pools-cursor-not-utf8"),
    pytest.param(
        "ListApprovals", _bound_to("ListApprovals", "", [], cursor=b"\xff"), id="approvals-bad-cursor"
    ),
    pytest.param("ListTasks", _bound_to("ListTasks", "wf-x", [], cursor=b"\x01"), id="tasks-short-cursor"),
    pytest.param("ListWorkflows", "%%%", id="not-base64"),
    pytest.param("ListPools", "A" * 4096, id="long-garbage"),
]


@pytest.mark.parametrize(("rpc", "token"), _FORGED)
async def test_a_forged_page_token_is_invalid_page_token_never_unknown(
    client: Client, rpc: str, token: str
) -> None:
    scheduler = client.raw.scheduler
    requests: dict[str, Any] = {
        "ListPools": lambda: scheduler.ListPools(s.ListPoolsRequest(page_token=token)),
        "ListApprovals": lambda: scheduler.ListApprovals(s.ListApprovalsRequest(page_token=token)),
        "ListWorkflows": lambda: scheduler.ListWorkflows(s.ListWorkflowsRequest(page_token=token)),
        "ListTasks": lambda: scheduler.ListTasks(s.ListTasksRequest(workflow_id="wf-x", page_token=token)),
    }
    await _refused(requests[rpc]())


async def test_a_list_workflows_token_is_refused_with_another_filter(client: Client) -> None:
    label = unique_capability("tokens")
    for _ in range(3):
        await submit(client, task("a", unique_capability("never")), labels={"batch": label})
    scheduler = client.raw.scheduler
    first = await scheduler.ListWorkflows(s.ListWorkflowsRequest(page_size=1, labels={"batch": label}))
    token = first.next_page_token
    assert token
    same = await scheduler.ListWorkflows(
        s.ListWorkflowsRequest(page_size=1, labels={"batch": label}, page_token=token)
    )
    assert [w.workflow_id for w in same.workflows] != [w.workflow_id for w in first.workflows]
    await _refused(
        scheduler.ListWorkflows(
            s.ListWorkflowsRequest(
                labels={"batch": label}, states=[wf.WORKFLOW_STATE_CANCELLED], page_token=token
            )
        )
    )
    await _refused(scheduler.ListWorkflows(s.ListWorkflowsRequest(page_token=token)))
    await _refused(
        scheduler.ListWorkflows(s.ListWorkflowsRequest(labels={"batch": "other"}, page_token=token))
    )


async def test_a_list_tasks_token_is_refused_for_another_workflow_or_states(client: Client) -> None:
    cap = unique_capability("never")
    first_wf = await submit(client, task("a", cap), task("b", cap), task("c", cap))
    other_wf = await submit(client, task("a", cap), task("b", cap), task("c", cap))
    scheduler = client.raw.scheduler
    page = await scheduler.ListTasks(s.ListTasksRequest(workflow_id=first_wf, page_size=1))
    token = page.next_page_token
    assert token
    rest = await scheduler.ListTasks(s.ListTasksRequest(workflow_id=first_wf, page_token=token))
    assert [x.task_id for x in rest.tasks] == ["b", "c"]
    await _refused(scheduler.ListTasks(s.ListTasksRequest(workflow_id=other_wf, page_token=token)))
    await _refused(
        scheduler.ListTasks(
            s.ListTasksRequest(workflow_id=first_wf, states=[t.TASK_STATE_SCHEDULED], page_token=token)
        )
    )


async def test_a_list_pools_token_is_refused_by_every_other_listing(client: Client) -> None:
    await _pools(client, unique_capability("tokpool"), 2)
    scheduler = client.raw.scheduler
    page = await scheduler.ListPools(s.ListPoolsRequest(page_size=1))
    token = page.next_page_token
    assert token
    await scheduler.ListPools(s.ListPoolsRequest(page_size=1, page_token=token))  # its own call takes it
    await _refused(scheduler.ListWorkflows(s.ListWorkflowsRequest(page_token=token)))
    await _refused(scheduler.ListApprovals(s.ListApprovalsRequest(page_token=token)))
    await _refused(scheduler.ListTasks(s.ListTasksRequest(workflow_id="wf-x", page_token=token)))
    await _refused(client.raw.cache.ListNamespaces(cs.ListNamespacesRequest(page_token=token)))


async def test_a_list_approvals_token_pages_and_is_bound_to_its_workflow(client: Client) -> None:
    cap = unique_capability("gate")
    wf_id = await submit(
        client,
        task("g1", cap, requires_approval=True),
        task("g2", cap, requires_approval=True),
        task("g3", cap, requires_approval=True),
    )
    scheduler = client.raw.scheduler
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = await scheduler.ListApprovals(
            s.ListApprovalsRequest(workflow_id=wf_id, page_size=1, page_token=token)
        )
        seen.extend(x.task_id for x in page.tasks)
        token = page.next_page_token
        if not token:
            break
        await _refused(scheduler.ListApprovals(s.ListApprovalsRequest(page_token=token)))
        await _refused(scheduler.ListPools(s.ListPoolsRequest(page_token=token)))
    assert sorted(seen) == ["g1", "g2", "g3"]
    await client.raw.scheduler.CancelWorkflow(s.CancelWorkflowRequest(workflow_id=wf_id))
