"""The scheduler capability: ``are.v1.SchedulerService`` and ``are.v1.WorkerService``.

Thin servicers over :class:`are_core.scheduler.Scheduler`: they validate and
translate (``sidecar._scheduler_convert``), call the engine, and answer once
the engine's transaction is durable.

The state, router and cache capabilities are reached through
``sidecar._scheduler_wiring`` (initial state, completion state writes,
DeleteWorkflow's state cleanup, fork, intent routing, worker load, cache
short-circuit). A capability absent from the build turns its feature off:
the spec fields that need it answer UNIMPLEMENTED, reason NOT_IMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from datetime import timedelta
from typing import Any, NoReturn, TypeAlias

import grpc
import msgspec

from are_core.scheduler import (
    TABLES,
    Scheduler,
    SchedulerError,
    SpecError,
    WorkflowNotClosedError,
    WorkflowView,
)
from are_core.state import StateError
from are_core.storage import StorageError, u64_key
from are_core.trace import (
    CaughtUp,
    EventFilter,
    EventRecorder,
    EventsMissed,
    SubscriptionClosedError,
    TraceError,
)
from are_sdk._proto.are.v1 import (
    scheduler_service_pb2 as pb,
)
from are_sdk._proto.are.v1 import (
    scheduler_service_pb2_grpc,
    task_pb2,
    worker_service_pb2_grpc,
    workflow_pb2,
)
from sidecar import _conventions as conventions
from sidecar._capability import Capability, Runtime
from sidecar._scheduler_convert import (
    abort_for,
    check_id,
    check_labels,
    enum_name,
    pool_from_proto,
    pool_status_to_proto,
    pool_to_proto,
    request_hash,
    spec_from_proto,
    task_specs_from_proto,
    task_to_proto,
    task_wire_bytes,
    timestamp,
    usage_summary_to_proto,
    workflow_to_proto,
)
from sidecar._scheduler_wiring import (
    Wiring,
    initial_state_from_proto,
    retention_from_proto,
)
from sidecar._scheduler_worker import WorkerServicer
from sidecar._state import abort_for_state_error
from sidecar._status import abort, shutting_down
from sidecar._trace import check_cursor, event_to_proto

__all__ = ["SchedulerCapability", "SchedulerServicer"]

_Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
_log = logging.getLogger("are.scheduler")
_DRAIN_MARGIN_S = 0.5  # a draining stream ends this long before the server's grace does
_LIST_SLACK_BYTES = 1 << 20  # a page of tasks stays this far under the message limit (estimates, framing)


async def _page_size(context: _Context, value: int, *, default: int = 100, maximum: int = 1000) -> int:
    """The page size to use: ``default`` for 0, clamped to ``maximum``; a negative one is refused."""
    if value < 0:
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"page_size must not be negative, got {value}",
            reason="INVALID_ARGUMENT",
            field_violations=[("page_size", f"must be 0 (default {default}) to {maximum}")],
        )
    return default if value == 0 else min(value, maximum)


_OPEN_STATES = frozenset({"RUNNING", "CANCELLING"})
_CLOSING_EVENTS = frozenset({"WORKFLOW_COMPLETED", "WORKFLOW_FAILED", "WORKFLOW_CANCELLED"})
_TOKEN_VERSION = 2
_token_decoder = msgspec.msgpack.Decoder(tuple[int, bytes, bytes])
_approval_cursor_decoder = msgspec.msgpack.Decoder(tuple[int, str, str])
_DAY_NS = 86_400 * 10**9


def _filter_digest(call: str, *parts: object) -> bytes:
    """The fingerprint of a listing call and its filter, that its page tokens carry (common.proto).

    ``parts`` must print the same for the same filter in every process: sets
    go in sorted (a set's order changes with the interpreter's hash seed).
    """
    return hashlib.blake2b(repr((call, *parts)).encode(), digest_size=8).digest()


def _token(digest: bytes, cursor: bytes) -> str:
    """An opaque page token: the cursor, and the fingerprint of the call and filter it belongs to."""
    return base64.urlsafe_b64encode(msgspec.msgpack.encode((_TOKEN_VERSION, digest, cursor))).decode()


async def _bad_token(context: _Context, field: str = "page_token") -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field} is not a token this server issued",
        reason="INVALID_PAGE_TOKEN",
        field_violations=[(field, "not a token from a previous response")],
    )


async def _untoken(context: _Context, token: str, digest: bytes, field: str = "page_token") -> bytes:
    """The cursor of a page token issued for this call and filter (``digest``); any other is refused."""
    try:
        raw = base64.b64decode(token.encode(), altchars=b"-_", validate=True)
        version, issued_for, cursor = _token_decoder.decode(raw)
    except (ValueError, msgspec.DecodeError):  # binascii.Error and msgspec.ValidationError are among them
        await _bad_token(context, field)
    if version != _TOKEN_VERSION:
        await _bad_token(context, field)
    if issued_for != digest:
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field} was issued for a different call or filter",
            reason="INVALID_PAGE_TOKEN",
            field_violations=[(field, "a token is valid only with the call and filter that returned it")],
        )
    return cursor


async def _check_ids(context: _Context, *fields: tuple[str, str]) -> None:
    """Refuses ids outside the id alphabet (see common.proto), naming the field, before any lookup."""
    try:
        for field, value in fields:
            check_id(value, field)
    except SpecError as error:
        await abort_for(context, error)


def _time_ns(request: Any, name: str) -> int | None:
    """A Timestamp field in nanoseconds (clamped, see ``unix_ns``), None when unset; a bad one is refused."""
    if not request.HasField(name):
        return None
    value = getattr(request, name)
    problem = conventions.timestamp_problem(value)
    if problem is not None:
        raise SpecError("INVALID_ARGUMENT", name, problem)
    return conventions.unix_ns(value)


def _states(values: Any, enum: Any, prefix: str) -> frozenset[str]:
    """The state names of a repeated state filter; an unknown number is refused naming its index."""
    return frozenset(enum_name(enum, v, f"states[{i}]", prefix) for i, v in enumerate(values))


def _check_usage_request(start_ns: int, end_ns: int, request: pb.GetUsageRequest) -> dict[str, str]:
    if end_ns < start_ns:
        raise SpecError("INVALID_ARGUMENT", "end_time", "end_time is before start_time")
    if end_ns - start_ns > 366 * _DAY_NS:
        raise SpecError("INVALID_ARGUMENT", "start_time", "the range exceeds 366 days")
    group_by = request.group_by_label
    if group_by and not conventions.KEY.fullmatch(group_by):
        raise SpecError(
            "INVALID_ARGUMENT",
            "group_by_label",
            f"a label key is 1 to 128 characters of [A-Za-z0-9._:/-], got {group_by[:40]!r}"
            + (f" ({len(group_by):,} characters)" if len(group_by) > 40 else ""),
        )
    return _filter_labels(request.labels)


def _filter_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A listing's label filter, checked as labels are: at most 8 (``labels``)."""
    checked = check_labels(labels, "labels")
    if len(checked) > 8:
        raise SpecError("LIMIT_EXCEEDED", "labels", f"at most 8 labels, not {len(checked)}", limit=8)
    return checked


async def coalesced_views(
    engine: Scheduler, workflow_id: str, signal: asyncio.Event, after: int | None
) -> AsyncGenerator[WorkflowView]:
    """The workflow's status after its changes, as committed, coalesced; the last is the closing one.

    ``signal`` is the engine's watch of the workflow. ``after``: a resumed
    watch's cursor (nothing until a change when none was missed). Ends
    after the closing status, or without one when the engine drains.

    The signal is cleared before each read, never after a status is
    handed out: the caller sends it meanwhile (a gRPC write, slow on a
    loaded host or to a slow reader), and a change landing then set the
    signal that a clear after the yield erased. A workflow closing at that
    moment was never reported: its watch, and every ``wait()`` and
    ``result()`` on it, waited forever.
    """
    while True:
        signal.clear()
        for _ in range(100):  # report only what is in LMDB (bounded under constant change)
            pending = engine.durable(workflow_id)
            if pending is None:
                break
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        view = engine.get_workflow(workflow_id)
        closed = view.record.state not in ("RUNNING", "CANCELLING")
        caught_up = after is not None and 0 < view.last_sequence <= after
        if closed or not caught_up:
            yield view
        after = None
        if closed:
            return
        await signal.wait()
        if engine.draining:
            return


class SchedulerServicer(scheduler_service_pb2_grpc.SchedulerServiceServicer):  # type: ignore[misc]  # the generated base class is Any to mypy (are_sdk._proto is not checked)
    """Translates SchedulerService calls to the scheduler engine."""

    def __init__(self, engine: Scheduler, wiring: Wiring) -> None:
        self._engine = engine
        self._wiring = wiring

    async def SubmitWorkflow(  # noqa: N802 - the RPC's name
        self, request: pb.SubmitWorkflowRequest, context: _Context
    ) -> pb.SubmitWorkflowResponse:
        """Validates, stores and starts a workflow; returns its id at once."""
        state = self._wiring.state
        if state is not None and state.fork_unsettled(request.spec.workflow_id):
            # A fork to this id that a crash cut short is settled at start: wait for that rather
            # than answer ALREADY_EXISTS for an id that is free once it is undone.
            await state.recovered()
        try:
            if request.request_id:
                check_id(request.request_id, "request_id", "a request_id")
            digest = request_hash(request) if request.request_id else ""
            earlier = self._engine.check_request(request.request_id, digest)
            if earlier is None:
                wiring = self._wiring
                size = request.ByteSize()  # before the conversion takes the inputs out
                spec = spec_from_proto(request.spec, wiring.features)
                self._engine.check_room(len(spec.tasks), size)
                wiring.check_namespaces(spec.tasks, "spec.tasks")
                if any(t.input_blob_sha256 for t in spec.tasks):
                    spec = msgspec.structs.replace(spec, tasks=wiring.check_blobs(spec.tasks, "spec.tasks"))
                stage = wiring.stage_initial(
                    initial_state_from_proto(request.spec), retention_from_proto(request.spec)
                )
            record, deduplicated = (
                await self._engine.submit(
                    spec, request_id=request.request_id, request_hash=digest, stage=stage
                )
                if earlier is None
                else (await self._engine.deduplicated(earlier), True)
            )
        except (SchedulerError, StorageError) as error:
            await abort_for(context, error)
        return pb.SubmitWorkflowResponse(
            workflow_id=record.workflow_id, deduplicated=deduplicated, create_time=timestamp(record.create_ns)
        )

    async def GetWorkflow(  # noqa: N802 - the RPC's name
        self, request: pb.GetWorkflowRequest, context: _Context
    ) -> pb.GetWorkflowResponse:
        """Returns a workflow's status, as committed: never a state a crash could undo."""
        await _check_ids(context, ("workflow_id", request.workflow_id))
        await self._durable(request.workflow_id)
        try:
            view = self._engine.get_workflow(request.workflow_id)
        except SchedulerError as error:
            await abort_for(context, error)
        return pb.GetWorkflowResponse(workflow=self._workflow(view))

    def _workflow(self, view: WorkflowView) -> workflow_pb2.Workflow:
        """The are.v1.Workflow of a view, with its state document's latest version (a head lookup)."""
        return workflow_to_proto(view, self._wiring.state_version(view.record.workflow_id))

    async def _durable(self, workflow_id: str) -> None:
        """Waits until the workflow's in-memory status (one transaction ahead) is in LMDB."""
        for _ in range(100):  # bounded under constant change
            pending = self._engine.durable(workflow_id)
            if pending is None:
                return
            with contextlib.suppress(Exception):  # a failed commit is reported by its writer
                await asyncio.shield(pending)

    async def ListWorkflows(  # noqa: N802 - the RPC's name
        self, request: pb.ListWorkflowsRequest, context: _Context
    ) -> pb.ListWorkflowsResponse:
        """Lists workflows, newest first, filtered by state, labels and creation time."""
        if len(request.states) > 8:
            await abort_for(context, SpecError("LIMIT_EXCEEDED", "states", "at most 8 states", limit=8))
        try:
            labels = _filter_labels(request.labels)
            states = _states(request.states, workflow_pb2.WorkflowState, "WORKFLOW_STATE_")
            start_ns = _time_ns(request, "start_time") or 0
            end = _time_ns(request, "end_time")
        except SpecError as error:
            await abort_for(context, error)
        end_ns = 0 if end is None else max(end, 1)  # 0 means unset; before the epoch, nothing matches
        digest = _filter_digest("ListWorkflows", sorted(states), sorted(labels.items()), start_ns, end_ns)
        after = await _untoken(context, request.page_token, digest) if request.page_token else None
        views, cursor = self._engine.list_workflows(
            states,
            labels=labels,
            start_ns=start_ns,
            end_ns=end_ns,
            after_key=after,
            limit=await _page_size(context, request.page_size),
        )
        return pb.ListWorkflowsResponse(
            workflows=[self._workflow(v) for v in views],
            next_page_token=_token(digest, cursor) if cursor else "",
        )

    async def WatchWorkflow(  # noqa: N802 - the RPC's name
        self, request: pb.WatchWorkflowRequest, context: _Context
    ) -> AsyncIterator[pb.WatchWorkflowResponse]:
        """Streams a workflow's status after each durable change until it closes.

        With ``include_tasks`` or ``after_sequence`` (and the flight recorder in
        the build), one message per recorded change, carrying its ``event``
        (and, with include_tasks, the task it concerned); a resumed watch
        replays each change after ``after_sequence`` before following live.
        The ``workflow`` of every message is the status when it is sent.
        Otherwise task changes are coalesced: one status per durable commit.
        """
        engine = self._engine
        await _check_ids(context, ("workflow_id", request.workflow_id))
        recorder = self._wiring.recorder
        if recorder is not None and request.HasField("after_sequence"):
            # A cursor beyond the log would skip every change up to it, the close included: the
            # watch would never end. It comes from another data folder (see ListEvents).
            await check_cursor(context, request.after_sequence, recorder, "after_sequence")
        try:
            signal = engine.watch(request.workflow_id)
        except SchedulerError as error:
            await abort_for(context, error)
        if recorder is not None and (request.include_tasks or request.HasField("after_sequence")):
            engine.unwatch(request.workflow_id, signal)
            async for message in self._watch_events(request, context, recorder):
                yield message
            return
        # A resumed watch (after_sequence) gets one coalesced status when it missed
        # changes, and nothing until the next change when it missed none.
        after = request.after_sequence if request.HasField("after_sequence") else None
        try:
            async for view in coalesced_views(engine, request.workflow_id, signal, after):
                yield pb.WatchWorkflowResponse(workflow=self._workflow(view), sequence=view.last_sequence)
            if engine.draining:
                await shutting_down(context, "watch again after its restart")
        finally:
            engine.unwatch(request.workflow_id, signal)

    async def _watch_events(  # noqa: C901, PLR0912 - replay, gaps, live, close in one loop
        self, request: pb.WatchWorkflowRequest, context: _Context, recorder: EventRecorder
    ) -> AsyncIterator[pb.WatchWorkflowResponse]:
        engine = self._engine
        wf_id = request.workflow_id
        resume = request.HasField("after_sequence")
        try:
            subscription = recorder.subscribe(
                EventFilter(workflow_ids=frozenset({wf_id})), request.after_sequence if resume else None
            )
        except TraceError as error:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                str(error),
                reason="RESOURCE_LIMIT",
                retry_after=timedelta(seconds=1),
            )
        try:
            seen = request.after_sequence if resume else 0
            if not resume:
                view = engine.get_workflow(wf_id)
                yield pb.WatchWorkflowResponse(workflow=self._workflow(view), sequence=view.last_sequence)
                seen = view.last_sequence
                if view.record.state not in _OPEN_STATES:
                    return
            while True:
                item = await subscription.next()
                if isinstance(item, CaughtUp | EventsMissed):
                    view = engine.get_workflow(wf_id)
                    closed = view.record.state not in _OPEN_STATES
                    if isinstance(item, EventsMissed) or closed:
                        # A gap (slow reader, retention) or a close whose event is gone: the status.
                        cursor = item.sequence if isinstance(item, CaughtUp) else item.last_missed_sequence
                        seen = max(seen, cursor)
                        yield pb.WatchWorkflowResponse(workflow=self._workflow(view), sequence=seen)
                    if closed and isinstance(item, CaughtUp):
                        return
                    continue
                if item.sequence <= seen:
                    continue
                seen = item.sequence
                message = pb.WatchWorkflowResponse(
                    workflow=self._workflow(engine.get_workflow(wf_id)),
                    event=event_to_proto(item),
                    sequence=item.sequence,
                )
                if request.include_tasks and item.task_id:
                    with contextlib.suppress(SchedulerError):
                        task = engine.get_task(wf_id, item.task_id)
                        message.task.CopyFrom(task_to_proto(task, include_payloads=False))
                yield message
                if item.event_type in _CLOSING_EVENTS:
                    return
        except SubscriptionClosedError:
            await shutting_down(context)
        except SchedulerError as error:  # deleted while watched
            await abort_for(context, error)
        finally:
            subscription.close()

    async def CancelWorkflow(  # noqa: N802 - the RPC's name
        self, request: pb.CancelWorkflowRequest, context: _Context
    ) -> pb.CancelWorkflowResponse:
        """Cancels a workflow; idempotent."""
        await _check_ids(context, ("workflow_id", request.workflow_id))
        if len(request.reason.encode()) > 1024 or len(request.requested_by) > 256:
            field, limit = ("reason", 1024) if len(request.reason.encode()) > 1024 else ("requested_by", 256)
            await abort_for(context, SpecError("LIMIT_EXCEEDED", field, f"at most {limit}", limit=limit))
        try:
            await self._engine.cancel(request.workflow_id, request.reason, request.requested_by)
            view = self._engine.get_workflow(request.workflow_id)
        except (SchedulerError, StorageError) as error:
            await abort_for(context, error)
        return pb.CancelWorkflowResponse(workflow=self._workflow(view))

    async def DeleteWorkflow(  # noqa: N802 - the RPC's name
        self, request: pb.DeleteWorkflowRequest, context: _Context
    ) -> pb.DeleteWorkflowResponse:
        """Removes a closed workflow: its tasks, then its state, memory and unshared blobs."""
        wf_id = request.workflow_id
        await _check_ids(context, ("workflow_id", wf_id))
        try:
            state = self._engine.workflow_state(wf_id)
            if state in ("RUNNING", "CANCELLING"):
                raise WorkflowNotClosedError(f"workflow {wf_id!r} is {state}; cancel it first")
            # The engine's first commit marks the workflow as being deleted (reads answer
            # NOT_FOUND from then on); its state goes next, then its tasks and record. If the
            # sidecar stops half-way, a repeated DeleteWorkflow finishes the job. State writes
            # are refused from here to the end: a note or owned blob acknowledged after the
            # state's removal would outlive the workflow.
            with self._wiring.deleting(wf_id):
                freed = await self._engine.delete(wf_id, before_rows=lambda: self._wiring.delete_state(wf_id))
        except (SchedulerError, StorageError) as error:
            await abort_for(context, error)
        except StateError as error:
            await abort_for_state_error(context, error)
        return pb.DeleteWorkflowResponse(freed_bytes=freed)

    async def GetTask(  # noqa: N802 - the RPC's name
        self, request: pb.GetTaskRequest, context: _Context
    ) -> pb.GetTaskResponse:
        """Returns one task with its input and output, as committed."""
        await _check_ids(context, ("workflow_id", request.workflow_id), ("task_id", request.task_id))
        await self._durable(request.workflow_id)
        try:
            view = self._engine.get_task(request.workflow_id, request.task_id)
        except SchedulerError as error:
            await abort_for(context, error)
        return pb.GetTaskResponse(task=task_to_proto(view))

    async def ListTasks(  # noqa: N802 - the RPC's name
        self, request: pb.ListTasksRequest, context: _Context
    ) -> pb.ListTasksResponse:
        """Lists a workflow's tasks in submission order, as committed."""
        await _check_ids(context, ("workflow_id", request.workflow_id))
        await self._durable(request.workflow_id)
        limit = await _page_size(
            context, request.page_size, maximum=100 if request.include_payloads else 1000
        )
        try:
            states = _states(request.states, task_pb2.TaskState, "TASK_STATE_")
        except SchedulerError as error:
            await abort_for(context, error)
        digest = _filter_digest("ListTasks", request.workflow_id, sorted(states))
        after = 0
        if request.page_token:
            raw = await _untoken(context, request.page_token, digest)
            if len(raw) != 8:
                await _bad_token(context)
            after = int.from_bytes(raw, "big")
        try:
            views, next_index = self._engine.list_tasks(request.workflow_id, states, after, limit)
        except SchedulerError as error:
            await abort_for(context, error)
        # A page is cut at the message limit too: 100 tasks with 4 MiB inputs and outputs
        # (or 1000 failed ones with 1 MiB details) could not be sent.
        room = self._wiring.max_message_bytes - _LIST_SLACK_BYTES
        size = 0
        for kept, view in enumerate(views):
            size += task_wire_bytes(view, include_payloads=request.include_payloads)
            if kept and size > room:
                views, next_index = views[:kept], view.record.index
                break
        return pb.ListTasksResponse(
            tasks=[task_to_proto(v, include_payloads=request.include_payloads) for v in views],
            next_page_token=_token(digest, u64_key(next_index)) if next_index is not None else "",
        )

    async def SpawnTasks(  # noqa: N802 - the RPC's name
        self, request: pb.SpawnTasksRequest, context: _Context
    ) -> pb.SpawnTasksResponse:
        """Adds tasks to a running workflow."""
        try:
            check_id(request.workflow_id, "workflow_id", "a workflow id")
            if request.parent_task_id:
                check_id(request.parent_task_id, "parent_task_id", "a task id")
                if request.parent_attempt < 1:  # required with parent_task_id (scheduler_service.proto)
                    raise SpecError(
                        "INVALID_ARGUMENT",
                        "parent_attempt",
                        f"attempts count from 1, got {request.parent_attempt}",
                    )
            elif request.dependents_wait:
                raise SpecError(
                    "INVALID_ARGUMENT", "dependents_wait", "dependents_wait requires parent_task_id"
                )
            # Hashed and sized before the conversion, which takes the inputs and
            # prompts out of the request's task specs (to keep each once).
            digest = ""
            if request.request_id:
                check_id(request.request_id, "request_id", "a request_id")
                # A retried parent attempt spawns once: the attempt number is
                # not part of what makes the request "the same".
                same = pb.SpawnTasksRequest()
                same.CopyFrom(request)
                same.parent_attempt = 0
                digest = request_hash(same)
            size = request.ByteSize()
            specs = task_specs_from_proto(
                request.tasks, "tasks", max_tasks=10_000, features=self._wiring.features
            )
            self._wiring.check_namespaces(specs, "tasks")
            specs = self._wiring.check_blobs(specs, "tasks")
            self._engine.check_room(len(specs), size)
            ids, deduplicated = await self._engine.spawn(
                request.workflow_id,
                specs,
                parent_task_id=request.parent_task_id,
                parent_attempt=request.parent_attempt,
                dependents_wait=request.dependents_wait,
                request_id=request.request_id,
                request_hash=digest,
            )
        except (SchedulerError, StorageError) as error:
            await abort_for(context, error)
        return pb.SpawnTasksResponse(task_ids=ids, deduplicated=deduplicated)

    async def ResolveApproval(  # noqa: N802 - the RPC's name
        self, request: pb.ResolveApprovalRequest, context: _Context
    ) -> pb.ResolveApprovalResponse:
        """Approves or rejects a task at its approval gate."""
        await _check_ids(context, ("workflow_id", request.workflow_id), ("task_id", request.task_id))
        try:
            decision = enum_name(
                task_pb2.ApprovalDecision, request.decision, "decision", "APPROVAL_DECISION_"
            )
            if decision == "UNSPECIFIED":
                raise SpecError("INVALID_ARGUMENT", "decision", "decision must be APPROVE or REJECT")
            if len(request.approver) > 256:
                raise SpecError("LIMIT_EXCEEDED", "approver", "at most 256 characters", limit=256)
            if len(request.comment.encode()) > 8 * 1024:
                raise SpecError("LIMIT_EXCEEDED", "comment", "at most 8 KiB", limit=8 * 1024)
            view = await self._engine.resolve_approval(
                request.workflow_id, request.task_id, decision == "APPROVE", request.approver, request.comment
            )
        except (SchedulerError, StorageError) as error:
            await abort_for(context, error)
        return pb.ResolveApprovalResponse(task=task_to_proto(view))

    async def ListApprovals(  # noqa: N802 - the RPC's name
        self, request: pb.ListApprovalsRequest, context: _Context
    ) -> pb.ListApprovalsResponse:
        """Lists tasks waiting at approval gates, oldest request first."""
        if request.workflow_id:
            await _check_ids(context, ("workflow_id", request.workflow_id))
        try:
            labels = _filter_labels(request.labels)
        except SpecError as error:
            await abort_for(context, error)
        digest = _filter_digest("ListApprovals", request.workflow_id, sorted(labels.items()))
        after: tuple[int, str, str] | None = None
        if request.page_token:
            raw = await _untoken(context, request.page_token, digest)
            try:
                after = _approval_cursor_decoder.decode(raw)
            except msgspec.DecodeError:
                await _bad_token(context)
        views, cursor = self._engine.list_approvals(
            request.workflow_id, labels, after, await _page_size(context, request.page_size, maximum=100)
        )
        token = _token(digest, msgspec.msgpack.encode(cursor)) if cursor is not None else ""
        return pb.ListApprovalsResponse(tasks=[task_to_proto(v) for v in views], next_page_token=token)

    async def PutPool(  # noqa: N802 - the RPC's name
        self, request: pb.PutPoolRequest, context: _Context
    ) -> pb.PutPoolResponse:
        """Creates or replaces a pool's limits."""
        try:
            limits, created = await self._engine.put_pool(pool_from_proto(request.pool))
        except (SchedulerError, StorageError) as error:
            await abort_for(context, error)
        return pb.PutPoolResponse(pool=pool_to_proto(limits), created=created)

    async def GetPool(  # noqa: N802 - the RPC's name
        self, request: pb.GetPoolRequest, context: _Context
    ) -> pb.GetPoolResponse:
        """Returns a pool's limits and live counts."""
        await _check_ids(context, ("name", request.name))
        try:
            limits, status = self._engine.get_pool(request.name)
        except SchedulerError as error:
            await abort_for(context, error)
        return pb.GetPoolResponse(pool=pool_to_proto(limits), status=pool_status_to_proto(status))

    async def ListPools(  # noqa: N802 - the RPC's name
        self, request: pb.ListPoolsRequest, context: _Context
    ) -> pb.ListPoolsResponse:
        """Lists pools by name with live counts."""
        digest = _filter_digest("ListPools")
        after = ""
        if request.page_token:
            raw = await _untoken(context, request.page_token, digest)
            try:
                after = raw.decode()
            except UnicodeDecodeError:
                await _bad_token(context)
        names = [n for n in self._engine.pool_names() if n > after]
        limit = await _page_size(context, request.page_size)
        page = names[:limit]
        out = pb.ListPoolsResponse()
        for name in page:
            limits, status = self._engine.get_pool(name)
            out.pools.add(pool=pool_to_proto(limits), status=pool_status_to_proto(status))
        if len(names) > limit:
            out.next_page_token = _token(digest, page[-1].encode())
        return out

    async def GetUsage(  # noqa: N802 - the RPC's name
        self,
        request: pb.GetUsageRequest,
        context: _Context,
    ) -> pb.GetUsageResponse:
        """Sums usage over the workflows of a time range, optionally grouped by a label."""
        try:
            end = _time_ns(request, "end_time")
            start = _time_ns(request, "start_time")
            end_ns = time.time_ns() if end is None else end
            start_ns = end_ns - 30 * _DAY_NS if start is None else start
            labels = _check_usage_request(start_ns, end_ns, request)
        except SpecError as error:
            await abort_for(context, error)
        # Clamped: nothing was created before the epoch (an end there selects nothing).
        total, groups = self._engine.usage(max(0, start_ns), max(1, end_ns), labels, request.group_by_label)
        response = pb.GetUsageResponse(total=usage_summary_to_proto(total), workflow_count=total.workflows)
        for value, group in sorted(groups.items(), key=lambda item: -item[1].usage.cost_micro_usd):
            response.groups.add(
                label_value=value, usage=usage_summary_to_proto(group), workflow_count=group.workflows
            )
        return response


EXIT_COMMIT_FAILED = 70
"""The sidecar's exit status when a scheduler commit failed (see :func:`_stop_at_once`)."""


def _stop_at_once(error: BaseException) -> None:
    """Fail-stop: a scheduler commit failed, so its memory is ahead of LMDB.

    The engine has no rollback, and carrying on would hand workers and
    watchers state that a restart would not find. Everything acknowledged is
    durable (acknowledgements follow commits), so the process ends at once,
    as a crash would, and the restart recovers from LMDB (the path the
    SIGKILL tests exercise).
    """
    _log.critical(
        f"a scheduler commit failed ({type(error).__name__}: {error}); stopping now so that a "
        "restart recovers from the durable state"
    )
    logging.shutdown()
    os._exit(EXIT_COMMIT_FAILED)


class SchedulerCapability(Capability):
    """Serves SchedulerService and WorkerService from one scheduler engine."""

    tables = TABLES
    services = ("are.v1.SchedulerService", "are.v1.WorkerService")

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.engine = Scheduler(
            runtime.storage,
            runtime.committer,
            runtime.events,
            max_open_tasks=runtime.config.max_open_tasks,
            max_open_bytes=runtime.config.max_open_bytes,
        )
        self.engine.commit_failed = _stop_at_once
        self.wiring = Wiring(runtime, self.engine)
        self._workers = WorkerServicer(self.engine, self.wiring)

    async def start(self) -> None:
        """Loads every open workflow and carries on; first finishes the deletes a stop cut short.

        A DeleteWorkflow cut short (SIGKILL between its commits) left a
        workflow that reads as NOT_FOUND, with its state, memory or tasks
        partly there: they go now, before anything is served.
        """
        await self.engine.start()
        for wf_id in self.engine.unfinished_deletes():
            try:
                with self.wiring.deleting(wf_id):
                    freed = await self.engine.delete(
                        wf_id, before_rows=functools.partial(self.wiring.delete_state, wf_id)
                    )
            except Exception:  # noqa: BLE001 - never a reason not to start: it reads as gone meanwhile
                _log.warning(
                    "could not finish a delete a stop cut short; a DeleteWorkflow of it will",
                    extra={"fields": {"workflow_id": wf_id}},
                    exc_info=True,
                )
                continue
            _log.info(
                "finished a delete a stop cut short",
                extra={"fields": {"workflow_id": wf_id, "freed_bytes": freed}},
            )

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers both servicers."""
        scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server(
            SchedulerServicer(self.engine, self.wiring), server
        )
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(self._workers, server)

    async def drain(self) -> None:
        """Tells connected workers the sidecar is stopping and ends their streams and long waits.

        Stream workers may still report what they hold for the shutdown
        grace (less a margin, so that their streams end before the server
        cancels what is left): a restart then has less to run again.
        """
        grace = max(0.0, self.runtime.config.shutdown_grace_s - _DRAIN_MARGIN_S)
        self._workers.drain(grace)
        self.engine.drain()

    async def stop(self) -> None:
        """Stops timers and waits for commits in flight; running attempts resume after restart."""
        with contextlib.suppress(asyncio.CancelledError):
            await self.engine.stop()
            await self.wiring.stop()
