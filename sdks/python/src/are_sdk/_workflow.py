"""The scheduler's typed facade: submit workflows, follow them, approve, size pools.

::

    handle = await client.submit_workflow(spec)      # returns at once
    async for update in handle.watch():              # typed updates until closed
        print(update.event_type, update.workflow.task_counts)
    output = await handle.result(timeout=60)         # or WorkflowFailedError

``client.workflows`` (:class:`Workflows`) submits, lists and opens handles and
lists approval gates; ``client.pools`` (:class:`Pools`) manages resource
pools. Errors are the SDK's exception tree: RPC failures are
:class:`~are_sdk.RpcError` subclasses; a workflow that closes without success
raises :class:`WorkflowFailedError` from :meth:`WorkflowHandle.result`.
"""

from __future__ import annotations

import asyncio
import builtins
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import grpc

from are_sdk._errors import (
    DeadlineExceededError,
    FieldViolation,
    InvalidArgumentError,
    ResourceExhaustedError,
    RpcCancelledError,
    RpcError,
    UnavailableError,
    retry_wait,
)
from are_sdk._payload import BlobReference, decode_payload
from are_sdk._proto.are.v1 import common_pb2, task_pb2, workflow_pb2
from are_sdk._proto.are.v1 import scheduler_service_pb2 as pb
from are_sdk._state import StateBlobs
from are_sdk._workflow_spec import TaskSpec, WorkflowSpec, WorkflowSpecError, _any, task_violations
from are_sdk._workflow_types import (
    PoolInfo,
    SpawnedTasks,
    TaskInfo,
    TaskState,
    WaitTimeoutError,
    WorkflowDescription,
    WorkflowFailedError,
    WorkflowState,
    WorkflowUpdate,
    aware,
)

__all__ = ["Pools", "WorkflowHandle", "Workflows"]

# How long a dropped watch waits before resuming, growing to the maximum.
_RESUME_INITIAL_DELAY = 0.05
_RESUME_MAX_DELAY = 2.0
# The longest one probe of a silent sidecar waits (see WorkflowHandle._until_answering).
_PROBE_TIMEOUT = 5.0
# The longest the first status of a wait may outlast its timeout: wait(timeout=0) answers a closed workflow.
_FIRST_STATUS_TIMEOUT = 5.0
_PAGE_SIZE = 1000
_CLOSED_STATES = frozenset(int(s) for s in WorkflowState if s.closed)


def _spec_message(spec: WorkflowSpec | Any) -> Any:
    if isinstance(spec, WorkflowSpec):
        return spec.to_proto()
    if isinstance(spec, workflow_pb2.WorkflowSpec):
        return spec
    raise TypeError(f"expected a WorkflowSpec or an are.v1.WorkflowSpec, got {type(spec).__name__}")


def _timestamp(value: datetime | None) -> Any:
    if value is None:
        return None
    from google.protobuf import timestamp_pb2  # noqa: PLC0415 - rarely used

    message = timestamp_pb2.Timestamp()
    message.FromDatetime(aware(value))
    return message


def _resume_wait(error: RpcError, delay: float, *, resumed: bool) -> float | None:
    """Seconds before a dropped watch resumes; None: at once, without its cursor. Raises the rest.

    ``resumed``: the watch's cursor is one it received (not the caller's).
    """
    if isinstance(error, UnavailableError | RpcCancelledError):
        return random.uniform(0, delay)  # noqa: S311 - jitter; the sidecar restarted or the connection dropped
    if isinstance(error, ResourceExhaustedError) and error.reason == "RESOURCE_LIMIT":
        # Its subscribers are all taken (a resumed watch is one): no sooner than it says. Any
        # other (a status over this client's message limit, say) would only fail again.
        return retry_wait(delay, error.retry_after)
    if isinstance(error, InvalidArgumentError) and resumed and error.reason == "SEQUENCE_BEYOND_LOG":
        # Back on another event log (its data folder replaced): the proto says to watch again
        # without the cursor, from the current status.
        return None
    raise error


class WorkflowHandle:
    """A submitted workflow: await its result, watch it, cancel it, approve its gates.

    Obtain one from :meth:`Workflows.submit` (``client.submit_workflow``) or
    :meth:`Workflows.get_handle`; creating one makes no call.

    Attributes:
        workflow_id: The workflow's id.
        deduplicated: True when the submit matched an earlier ``request_id``.
    """

    def __init__(
        self,
        raw: Any,
        workflow_id: str,
        *,
        deduplicated: bool = False,
        reconnect_window: float | None = None,
    ) -> None:
        self._raw = raw
        self.workflow_id = workflow_id
        self.deduplicated = deduplicated
        self._reconnect_window = reconnect_window

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"

    async def describe(self) -> WorkflowDescription:
        """Returns the workflow's current status.

        Raises:
            NotFoundError: No such workflow (reason WORKFLOW_NOT_FOUND).
        """
        response = await self._raw.scheduler.GetWorkflow(pb.GetWorkflowRequest(workflow_id=self.workflow_id))
        return WorkflowDescription.from_proto(response.workflow)

    async def watch(
        self, *, include_tasks: bool = False, after_sequence: int | None = None
    ) -> AsyncIterator[WorkflowUpdate]:
        """Yields the workflow's status after each change, ending once it closes.

        The first update is the current status (unless ``after_sequence`` asks
        for a replay); the last one has a closed state. A dropped stream is
        resumed from the last sequence received, so no change is missed, as
        long as the sidecar answers again within the client's
        ``reconnect_window`` (see :meth:`Client.connect <are_sdk.Client.connect>`).

        An update's ``workflow`` (and ``task``) is the status when the sidecar
        sent it: after its change, and possibly after later ones whose own
        updates follow. To tell what happened in order, read each update's
        ``event_type`` (the change itself), as ``examples/research_pipeline.py`` does.

        Args:
            include_tasks: Also carry the task that changed in each update;
                otherwise task changes are coalesced into the counts.
            after_sequence: Replay the changes recorded after this sequence.

        Raises:
            NotFoundError: No such workflow.
            UnavailableError: The stream dropped and the sidecar did not
                answer again within the reconnect window.
        """
        async for response in self._watch_raw(include_tasks=include_tasks, after_sequence=after_sequence):
            yield WorkflowUpdate.from_proto(response)

    async def _watch_raw(
        self, *, include_tasks: bool = False, after_sequence: int | None = None
    ) -> AsyncIterator[Any]:
        """The WatchWorkflow responses, resumed after drops, ending with the closed status."""
        cursor = after_sequence
        resumed = False  # whether the cursor is one this watch received (not the caller's)
        delay = _RESUME_INITIAL_DELAY
        while True:
            request = pb.WatchWorkflowRequest(workflow_id=self.workflow_id, include_tasks=include_tasks)
            if cursor is not None:
                request.after_sequence = cursor
            try:
                async for response in self._raw.watches.WatchWorkflow(request, timeout=None):
                    if response.sequence:
                        cursor, resumed = response.sequence, True
                    delay = _RESUME_INITIAL_DELAY
                    yield response
                    if response.workflow.state in _CLOSED_STATES:
                        return
            except (UnavailableError, RpcCancelledError, ResourceExhaustedError, InvalidArgumentError) as e:
                dropped = asyncio.get_running_loop().time()
                wait = _resume_wait(e, delay, resumed=resumed)
                if wait is None:
                    cursor, resumed = None, False
                    continue
                await asyncio.sleep(wait)
                delay = min(delay * 2, _RESUME_MAX_DELAY)
                if isinstance(e, UnavailableError | RpcCancelledError):
                    await self._until_answering(e, since=dropped)

    async def _until_answering(self, error: RpcError, *, since: float) -> None:
        """Returns once the sidecar answers a call again; raises when it stays silent for the window.

        A resumed watch can be silent for hours (a cursor with nothing after
        it), so its opening proves nothing: a unary GetWorkflow on the same
        connection does. Against a hung sidecar (a stopped process, a frozen
        VM) every attempt failed and the watch resumed forever; now, once
        ``reconnect_window`` seconds have passed since the drop, the last
        UNAVAILABLE is raised. A restart within the window goes unnoticed.

        Args:
            error: What dropped the watch (UNAVAILABLE or CANCELLED).
            since: When (the loop's clock) it dropped.
        """
        window = self._reconnect_window
        if window is None:
            return
        loop = asyncio.get_running_loop()
        deadline = since + window
        last = error
        delay = _RESUME_INITIAL_DELAY
        request = pb.GetWorkflowRequest(workflow_id=self.workflow_id)
        while (remaining := deadline - loop.time()) > 0:
            try:
                await self._raw.watches.GetWorkflow(request, timeout=min(remaining, _PROBE_TIMEOUT))
            except (UnavailableError, RpcCancelledError, DeadlineExceededError) as probe:
                last = probe if isinstance(probe, UnavailableError) else last
            except RpcError:
                return  # it answered; the watch meets the error itself
            else:
                return
            await asyncio.sleep(min(random.uniform(0, delay), max(0.0, deadline - loop.time())))  # noqa: S311
            delay = min(delay * 2, _RESUME_MAX_DELAY)
        if isinstance(last, UnavailableError):
            raise last
        raise UnavailableError(
            grpc.StatusCode.UNAVAILABLE,
            f"WatchWorkflow: the sidecar has not answered for {window:g}s (the reconnect window) "
            f"since the stream dropped ({last.code.name}: {last.message})",
        )

    async def wait(self, *, timeout: float | None = None) -> WorkflowDescription:
        """Waits until the workflow closes, whatever the outcome, and returns its status.

        Args:
            timeout: Seconds to wait; None waits as long as it takes. The
                first status is read whatever the timeout (for up to 5 s),
                so ``timeout=0`` returns a workflow already closed.

        Raises:
            WaitTimeoutError: It did not close within ``timeout`` seconds.
            UnavailableError: The sidecar stopped answering for longer than
                the client's ``reconnect_window``.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # asyncio.timeout(0) cancelled the watch before its first status: even a closed
        # workflow "did not close within 0s". The first status may outlast a short timeout.
        first_deadline = None if deadline is None else max(deadline, loop.time() + _FIRST_STATUS_TIMEOUT)
        try:
            async with asyncio.timeout_at(first_deadline) as scope:
                # Only the closing status is decoded: a long workflow sends many.
                async for response in self._watch_raw():
                    if response.workflow.state in _CLOSED_STATES:
                        return WorkflowDescription.from_proto(response.workflow)
                    scope.reschedule(deadline)
        except TimeoutError:
            raise WaitTimeoutError(
                f"workflow {self.workflow_id} did not close within {timeout:g}s"
                if timeout is not None
                else f"workflow {self.workflow_id} did not close"
            ) from None
        return await self.describe()  # pragma: no cover - watch always ends closed

    async def result(self, *, timeout: float | None = None) -> Any:
        """Waits for the workflow to complete and returns its decoded result.

        The result is the output of the workflow's result task (JSON decoded),
        or None when it has no result task. A result passed as a blob is
        fetched from the blob store and decoded the same way.

        Args:
            timeout: Seconds to wait; None waits as long as it takes. A
                workflow already closed is answered even with ``timeout=0``.

        Raises:
            WorkflowFailedError: The workflow closed FAILED or CANCELLED.
            WaitTimeoutError: It did not close within ``timeout``.
            NotFoundError: No such workflow.
            UnavailableError: The sidecar stopped answering for longer than
                the client's ``reconnect_window``.
        """
        workflow = await self.wait(timeout=timeout)
        if workflow.state is not WorkflowState.COMPLETED:
            raise WorkflowFailedError(workflow)
        result = workflow.result
        if isinstance(result, BlobReference):  # fetched and decoded as an inline result would be
            data = await StateBlobs(self._raw.state).get(result)
            return decode_payload(common_pb2.Payload(data=data, content_type=result.content_type))
        return result

    async def cancel(self, *, reason: str = "", requested_by: str = "") -> WorkflowDescription:
        """Cancels the workflow (idempotent) and returns its status, CANCELLING or closed."""
        response = await self._raw.scheduler.CancelWorkflow(
            pb.CancelWorkflowRequest(workflow_id=self.workflow_id, reason=reason, requested_by=requested_by)
        )
        return WorkflowDescription.from_proto(response.workflow)

    async def delete(self) -> int:
        """Deletes the closed workflow and returns the bytes freed.

        Raises:
            FailedPreconditionError: The workflow is not closed (WORKFLOW_NOT_CLOSED).
        """
        response = await self._raw.scheduler.DeleteWorkflow(
            pb.DeleteWorkflowRequest(workflow_id=self.workflow_id)
        )
        return int(response.freed_bytes)

    async def task(self, task_id: str) -> TaskInfo:
        """Returns one task's status, with its input and output.

        Raises:
            NotFoundError: No such workflow or task.
        """
        response = await self._raw.scheduler.GetTask(
            pb.GetTaskRequest(workflow_id=self.workflow_id, task_id=task_id)
        )
        return TaskInfo.from_proto(response.task)

    async def tasks(
        self, *, states: Iterable[TaskState] = (), include_payloads: bool = False
    ) -> list[TaskInfo]:
        """Returns the workflow's tasks in submission order, every page read.

        Args:
            states: Only tasks in one of these states; empty means all.
            include_payloads: Also fetch inputs and outputs (pages of 100).
        """
        result: list[TaskInfo] = []
        token = ""
        while True:
            response = await self._raw.scheduler.ListTasks(
                pb.ListTasksRequest(
                    workflow_id=self.workflow_id,
                    page_size=100 if include_payloads else _PAGE_SIZE,
                    page_token=token,
                    states=[_any(int(s)) for s in states],
                    include_payloads=include_payloads,
                )
            )
            result.extend(TaskInfo.from_proto(t) for t in response.tasks)
            token = response.next_page_token
            if not token:
                return result

    async def approve(self, task_id: str, *, approver: str = "", comment: str = "") -> TaskInfo:
        """Approves a task waiting at its approval gate; it is then scheduled.

        Raises:
            FailedPreconditionError: The task is not awaiting approval
                (reason TASK_NOT_AWAITING_APPROVAL).
            NotFoundError: No such workflow or task.
        """
        return await self._resolve(task_id, int(task_pb2.APPROVAL_DECISION_APPROVE), approver, comment)

    async def reject(self, task_id: str, *, approver: str = "", comment: str = "") -> TaskInfo:
        """Rejects a task waiting at its approval gate; its dependents follow their trigger rules.

        Raises:
            FailedPreconditionError: The task is not awaiting approval.
            NotFoundError: No such workflow or task.
        """
        return await self._resolve(task_id, int(task_pb2.APPROVAL_DECISION_REJECT), approver, comment)

    async def _resolve(self, task_id: str, decision: int, approver: str, comment: str) -> TaskInfo:
        response = await self._raw.scheduler.ResolveApproval(
            pb.ResolveApprovalRequest(
                workflow_id=self.workflow_id,
                task_id=task_id,
                decision=_any(decision),
                approver=approver,
                comment=comment,
            )
        )
        return TaskInfo.from_proto(response.task)

    async def approvals(self) -> list[TaskInfo]:
        """Returns this workflow's tasks waiting at approval gates, oldest first."""
        return await Workflows(self._raw).list_approvals(workflow_id=self.workflow_id)

    async def spawn(
        self,
        *tasks: TaskSpec,
        parent_task_id: str = "",
        parent_attempt: int = 0,
        dependents_wait: bool = False,
        request_id: str | None = None,
    ) -> SpawnedTasks:
        """Adds tasks to the running workflow and returns their ids.

        Workers spawn from a running task with :meth:`TaskContext.spawn`,
        which fills in the parent; this is the same call from outside.

        Args:
            tasks: The new tasks; they may depend on existing tasks and each other.
            parent_task_id: The task that spawns them ("" for none).
            parent_attempt: The parent's attempt (with ``parent_task_id``).
            dependents_wait: Make the parent's pending dependents also wait
                for (and receive the outputs of) the new tasks.
            request_id: An idempotency key: a retry with the same key and
                tasks adds nothing and returns the first spawn's ids.

        Returns:
            The new tasks' ids in request order, a list of ``str``;
            its ``deduplicated`` is True when ``request_id`` matched an
            earlier spawn (nothing new was added).

        Raises:
            WorkflowSpecError: A task is malformed (checked client-side).
            FailedPreconditionError: The workflow is closed (WORKFLOW_CLOSED).
            ResourceExhaustedError: A budget or pool queue is full.
        """
        return await spawn_tasks(
            self._raw,
            self.workflow_id,
            tasks,
            parent_task_id=parent_task_id,
            parent_attempt=parent_attempt,
            dependents_wait=dependents_wait,
            request_id=request_id,
        )


async def spawn_tasks(
    raw: Any,
    workflow_id: str,
    tasks: Sequence[TaskSpec],
    *,
    parent_task_id: str,
    parent_attempt: int,
    dependents_wait: bool,
    request_id: str | None,
) -> SpawnedTasks:
    """Calls SpawnTasks after the client-side checks; see :meth:`WorkflowHandle.spawn`."""
    # The workflow's own tasks are not known here: a spawned task may depend on any of them.
    violations = task_violations(tasks, None, prefix="tasks")
    if not tasks:
        violations.insert(0, FieldViolation("tasks", "spawn at least one task"))
    if violations:
        raise WorkflowSpecError(violations)
    response = await raw.scheduler.SpawnTasks(
        pb.SpawnTasksRequest(
            workflow_id=workflow_id,
            parent_task_id=parent_task_id,
            parent_attempt=parent_attempt,
            tasks=[t.to_proto() for t in tasks],
            dependents_wait=dependents_wait,
            request_id=request_id or "",
        )
    )
    return SpawnedTasks(response.task_ids, deduplicated=response.deduplicated)


class Workflows:
    """``client.workflows``: submit, list and open workflows; list approval gates."""

    def __init__(self, raw: Any, *, reconnect_window: float | None = None) -> None:
        self._raw = raw
        self._reconnect_window = reconnect_window

    async def submit(self, spec: WorkflowSpec | Any, *, request_id: str | None = None) -> WorkflowHandle:
        """Submits a workflow and returns its handle at once, without waiting for any task.

        Args:
            spec: A :class:`WorkflowSpec` (validated client-side first) or an
                ``are.v1.WorkflowSpec`` message (sent as is).
            request_id: An idempotency key: a retried submit with the same key
                returns the same workflow (``handle.deduplicated`` is then True).

        Raises:
            WorkflowSpecError: The spec failed the client-side checks.
            InvalidArgumentError: The sidecar refused the spec;
                ``field_violations`` names the field.
            AlreadyExistsError: The workflow id is taken, or ``request_id`` was
                used for another request.
            ResourceExhaustedError: A pool's queue is full (POOL_QUEUE_FULL);
                retry after ``retry_after``.
        """
        response = await self._raw.scheduler.SubmitWorkflow(
            pb.SubmitWorkflowRequest(spec=_spec_message(spec), request_id=request_id or "")
        )
        return WorkflowHandle(
            self._raw,
            response.workflow_id,
            deduplicated=response.deduplicated,
            reconnect_window=self._reconnect_window,
        )

    def get_handle(self, workflow_id: str) -> WorkflowHandle:
        """Returns a handle on an existing workflow (no call is made)."""
        return WorkflowHandle(self._raw, workflow_id, reconnect_window=self._reconnect_window)

    async def get(self, workflow_id: str) -> WorkflowDescription:
        """Returns a workflow's status.

        Raises:
            NotFoundError: No such workflow (reason WORKFLOW_NOT_FOUND).
        """
        return await self.get_handle(workflow_id).describe()

    async def list(
        self,
        *,
        states: Iterable[WorkflowState] = (),
        labels: Mapping[str, str] | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[WorkflowDescription]:
        """Yields workflows, newest first, reading pages as needed.

        Args:
            states: Only workflows in one of these states.
            labels: Only workflows having all of these labels.
            start_time: Only workflows created at or after this time.
            end_time: Only workflows created before this time.
            limit: Stop after this many.
        """
        token = ""
        count = 0
        if limit is not None and limit <= 0:
            return
        while True:
            page_size = _PAGE_SIZE if limit is None else max(1, min(_PAGE_SIZE, limit - count))
            response = await self._raw.scheduler.ListWorkflows(
                pb.ListWorkflowsRequest(
                    page_size=page_size,
                    page_token=token,
                    states=[_any(int(s)) for s in states],
                    labels=dict(labels or {}),
                    start_time=_timestamp(start_time),
                    end_time=_timestamp(end_time),
                )
            )
            for workflow in response.workflows:
                yield WorkflowDescription.from_proto(workflow)
                count += 1
                if limit is not None and count >= limit:
                    return
            token = response.next_page_token
            if not token:
                return

    async def list_approvals(
        self, *, workflow_id: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[TaskInfo]:
        """Returns the tasks waiting at approval gates, oldest request first, with their inputs.

        Args:
            workflow_id: Only gates of this workflow; empty means every workflow.
            labels: Only gates of tasks having all of these labels.
        """
        result: builtins.list[TaskInfo] = []
        token = ""
        while True:
            response = await self._raw.scheduler.ListApprovals(
                pb.ListApprovalsRequest(
                    page_size=100, page_token=token, workflow_id=workflow_id, labels=dict(labels or {})
                )
            )
            result.extend(TaskInfo.from_proto(t) for t in response.tasks)
            token = response.next_page_token
            if not token:
                return result


class Pools:
    """``client.pools``: resource pools that meter the tasks naming them."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    async def put(
        self,
        name: str,
        *,
        max_concurrency: int = 0,
        requests_per_second: float = 0.0,
        burst: int = 0,
        llm_tokens_per_minute: int = 0,
        max_queue_length: int = 0,
        description: str = "",
    ) -> PoolInfo:
        """Creates or replaces a pool's limits (0 means no limit) and returns the pool as stored.

        The returned pool's ``created`` is True when the pool did not exist before.

        Raises:
            InvalidArgumentError: A bad name or limit, naming the field.
            ResourceExhaustedError: Past 1,000 pools.
        """
        response = await self._raw.scheduler.PutPool(
            pb.PutPoolRequest(
                pool=pb.Pool(
                    name=name,
                    max_concurrency=max_concurrency,
                    requests_per_second=requests_per_second,
                    burst=burst,
                    llm_tokens_per_minute=llm_tokens_per_minute,
                    max_queue_length=max_queue_length,
                    description=description,
                )
            )
        )
        return PoolInfo.from_proto(response.pool, created=response.created)

    async def get(self, name: str) -> PoolInfo:
        """Returns a pool's limits and live counts.

        Raises:
            NotFoundError: No such pool (reason POOL_NOT_FOUND).
        """
        response = await self._raw.scheduler.GetPool(pb.GetPoolRequest(name=name))
        return PoolInfo.from_proto(response.pool, response.status)

    async def list(self) -> builtins.list[PoolInfo]:
        """Returns every pool by name, with live counts."""
        result: builtins.list[PoolInfo] = []
        token = ""
        while True:
            response = await self._raw.scheduler.ListPools(
                pb.ListPoolsRequest(page_size=_PAGE_SIZE, page_token=token)
            )
            result.extend(PoolInfo.from_proto(p.pool, p.status) for p in response.pools)
            token = response.next_page_token
            if not token:
                return result
