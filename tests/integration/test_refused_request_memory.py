"""A refused call frees its request when it ends, whatever its size, over a real sidecar.

Defect: a call that a servicer refused (``context.abort``) kept its request
alive until Python's cyclic collector ran: grpc keeps the abort's exception on
the call's state, its traceback the servicer's frames, and they the context
(a cycle) and the request; a client stream left mid-stream also kept its last
message (grpc's request iterator and its generator hold each other). The
sidecar makes collections rare (for latency), so a flood of refused calls grew
it by about twice each request: 30 refused 60 MiB ``GetWorkflow`` ids took it
from 333 MiB to 4.2 GB. Every method handler is now served through
``sidecar._status.releasing_handler``, which drops both once the servicer
method has ended.

Here refused 8 MiB requests of every shape (unary; a client stream, PutBlob; a
bidirectional stream, Connect; a server stream, WatchWorkflow) come from
several services, 256 MiB in all, and the sidecar's resident memory must grow
by less than 128 MiB: the old code grew by about 530 MiB here, the fixed one
by 30 to 70 MiB (the allocator keeps some freed blocks), measured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from are_sdk._errors import error_from_rpc
from are_sdk._proto.are.v1 import (
    cache_service_pb2,
    cache_service_pb2_grpc,
    router_service_pb2,
    router_service_pb2_grpc,
    scheduler_service_pb2,
    scheduler_service_pb2_grpc,
    state_pb2,
    state_service_pb2,
    state_service_pb2_grpc,
    task_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
    workflow_pb2,
)
from are_sdk.testing import SidecarProcess

_SIZE = 8 * 1024 * 1024  # each request's large field (the sidecar takes messages of up to 64 MiB)
_ROUNDS = 4  # of the eight refused calls below: 32 requests, 256 MiB
_RSS_GROWTH_BOUND_KIB = 128 * 1024
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", 2 * _SIZE)]
_DEADLINE_S = 30.0

Refusal = tuple[grpc.StatusCode, str]  # the status code and the field the refusal names ("" for none)


def _rss_kib(pid: int) -> int:
    """The process's resident set size (``VmRSS`` of /proc/<pid>/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


async def _refusal(call: Awaitable[object]) -> Refusal:
    """The status that ended a call which must fail, checked to carry an ErrorInfo reason."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    rich = error_from_rpc(error)
    assert rich.reason, f"{error.code().name} without a reason: {error.details()}"
    return error.code(), ",".join(v.field for v in rich.field_violations)


async def _drained(call: AsyncIterator[object]) -> None:
    async for _ in call:
        pass


async def _messages(*messages: object) -> AsyncIterator[object]:
    for message in messages:
        yield message


def _refused_calls(channel: grpc.aio.Channel) -> dict[str, tuple[Callable[[], Awaitable[object]], Refusal]]:
    """Each refused call with a large request, by name, with the refusal it must get."""
    scheduler = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
    workers = worker_service_pb2_grpc.WorkerServiceStub(channel)
    state = state_service_pb2_grpc.StateServiceStub(channel)
    cache = cache_service_pb2_grpc.CacheServiceStub(channel)
    router = router_service_pb2_grpc.RouterServiceStub(channel)
    text, raw = "x" * _SIZE, b"x" * _SIZE
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    spec = workflow_pb2.WorkflowSpec(tasks=[task_pb2.TaskSpec(task_id=text, capability="c")])
    patch = state_pb2.StatePatch(merge_patch_json=raw)
    blob = (  # a chunk over the 1 MiB a PutBlob chunk may carry
        state_service_pb2.PutBlobRequest(header=state_service_pb2.BlobHeader(size_bytes=_SIZE)),
        state_service_pb2.PutBlobRequest(chunk=raw),
    )
    register = worker_service_pb2.ConnectRequest(
        register=worker_service_pb2.WorkerRegistration(
            worker_name=text, capabilities=["c"], max_concurrency=1
        )
    )
    return {
        "GetWorkflow": (
            lambda: scheduler.GetWorkflow(
                scheduler_service_pb2.GetWorkflowRequest(workflow_id=text), timeout=_DEADLINE_S
            ),
            (invalid, "workflow_id"),
        ),
        "SubmitWorkflow": (
            lambda: scheduler.SubmitWorkflow(
                scheduler_service_pb2.SubmitWorkflowRequest(spec=spec), timeout=_DEADLINE_S
            ),
            (invalid, "spec.tasks[0].task_id"),
        ),
        "WatchWorkflow": (
            lambda: _drained(
                scheduler.WatchWorkflow(
                    scheduler_service_pb2.WatchWorkflowRequest(workflow_id=text), timeout=_DEADLINE_S
                )
            ),
            (invalid, "workflow_id"),
        ),
        "Connect": (
            lambda: _drained(workers.Connect(_messages(register), timeout=_DEADLINE_S)),
            (invalid, "register.worker_name"),
        ),
        "PatchState": (
            lambda: state.PatchState(
                state_service_pb2.PatchStateRequest(workflow_id="no-such-workflow", patch=patch),
                timeout=_DEADLINE_S,
            ),
            (grpc.StatusCode.NOT_FOUND, ""),
        ),
        "PutBlob": (lambda: state.PutBlob(_messages(*blob), timeout=_DEADLINE_S), (invalid, "chunk")),
        "LookupCache": (
            lambda: cache.LookupCache(
                cache_service_pb2.LookupCacheRequest(namespace="ns", prompt=text), timeout=_DEADLINE_S
            ),
            (invalid, "prompt"),
        ),
        "RouteTask": (
            lambda: router.RouteTask(router_service_pb2.RouteTaskRequest(text=text), timeout=_DEADLINE_S),
            (invalid, "text"),
        ),
    }


async def test_refused_large_requests_are_freed_when_their_calls_end() -> None:
    with SidecarProcess.start() as process:
        async with grpc.aio.insecure_channel(process.target, options=_CHANNEL_OPTIONS) as channel:
            calls = _refused_calls(channel)
            # One of each first: what a first call allocates for good (lazy imports, caches) is not growth.
            for name, (call, expected) in calls.items():
                assert await _refusal(call()) == expected, name
            before = _rss_kib(process.pid)
            for _ in range(_ROUNDS):
                for name, (call, expected) in calls.items():
                    assert await _refusal(call()) == expected, name
            growth = _rss_kib(process.pid) - before
        requests_mib = _ROUNDS * len(calls) * _SIZE // (1024 * 1024)
        assert growth < _RSS_GROWTH_BOUND_KIB, (
            f"the sidecar grew {growth // 1024} MiB after {requests_mib} MiB of refused requests"
        )
