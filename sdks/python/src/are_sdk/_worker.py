"""The worker: run task handlers for the sidecar over one bidirectional stream.

::

    worker = Worker(client, name="writer", max_concurrency=8)

    @worker.handler("write")
    async def write(ctx: TaskContext) -> dict[str, str]:
        notes = ctx.dependency_outputs["research"]
        ctx.report_llm_call("gpt-x", input_tokens=900, output_tokens=300, cost_micro_usd=1200)
        return {"draft": f"About {notes['topic']}..."}

    await worker.run()          # until worker.shutdown() or SIGTERM

A handler takes a :class:`TaskContext` and returns the task's output (any
JSON value; ``bytes`` or :class:`~are_sdk.RawPayload` for other content; a
:class:`TaskResult` to add a state patch). Async handlers run on the event
loop; plain functions run in a thread pool. An exception fails the attempt
with a ``Failure`` whose type is the exception's class name (the exceptions
it was raised from, or while handling, become its causes); raise
:class:`NonRetryableError` (or :class:`TaskError` with ``non_retryable``) to
forbid retries. A completion the sidecar refuses as invalid (an output
content type over 128 characters, say) is reported instead as a retryable
failure of type ``CompletionRefused`` quoting the sidecar's reason, so the
attempt does not wait out its timeout.

The worker registers on ``WorkerService.Connect``, receives batches of
assignments (never more than ``max_concurrency`` held), sends completions
and failures batched (everything finished while the previous write was in
flight goes in the next message), heartbeats automatically, and reconnects
with backoff when the stream drops (tasks held on a lost stream are retried
by the sidecar, so their handlers are cancelled). :meth:`Worker.shutdown`
drains: the sidecar stops assigning, tasks in flight get ``shutdown_grace``
seconds to finish and report, and the rest are handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import importlib.metadata
import inspect
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from are_sdk._errors import (
    AreError,
    ClientClosedError,
    RpcError,
    closed_under_caller,
    error_from_rpc,
    retry_wait,
)
from are_sdk._payload import OCTET_STREAM, decode_payload, encode_payload
from are_sdk._proto.are.v1 import common_pb2, errors_pb2, event_pb2, state_pb2
from are_sdk._proto.are.v1 import worker_service_pb2 as wpb
from are_sdk._router import AgentCard
from are_sdk._workflow import spawn_tasks
from are_sdk._workflow_spec import Duration, TaskSpec, _any, to_duration
from are_sdk._workflow_types import FailureInfo, SpawnedTasks, TaskState, timestamp

if TYPE_CHECKING:
    from are_sdk._client import Client

__all__ = [
    "DependencyResult",
    "Handler",
    "NonRetryableError",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "Worker",
]

_log = logging.getLogger("are_sdk.worker")

#: A task handler: takes the context, returns the output (or an awaitable of it).
Handler = Callable[["TaskContext"], Any]

_Key = tuple[str, str, int]
_NOT_SENT: Any = object()
_P = ParamSpec("_P")
_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)

try:
    _SDK = f"are-sdk-python/{importlib.metadata.version('are-sdk')}"
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    _SDK = "are-sdk-python"

# Stream errors after which reconnecting cannot help: the worker stops.
_FATAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# Reconnecting: the first wait (jittered), doubling up to Worker.reconnect_max_delay; only a
# session that lived this long sets it back to the first.
_FIRST_RECONNECT_DELAY_S = 0.05
_STABLE_SESSION_S = 10.0
_MAX_BATCH = 1000
_MAX_BATCH_BYTES = 16 << 20
"""A batch the worker sends is cut at this many bytes too: twenty 4 MiB outputs
finishing at once made one 80 MiB message, over the sidecar's 64 MiB limit,
which ended the stream (and took every attempt on it back) at each try."""
_MAX_STACK_TRACE = 64 * 1024
_MAX_MESSAGE = 32 * 1024
_MAX_CAUSES = 8  # a Failure's causes nest at most 8 deep (common.proto)
# The sidecar refuses a Failure beyond these (common.proto); a refused failure would leave
# its attempt RUNNING, so the worker fits every failure it builds to them before sending it.
_MAX_TYPE = 256  # characters
_MAX_DETAILS = 1024 * 1024  # bytes, inline only; also the bound of a failure with its causes
_MAX_CONTENT_TYPE = 128  # characters
_MAX_RETRY_AFTER_S = 315_576_000_000  # the largest google.protobuf.Duration
#: Outputs over this many bytes are uploaded as a blob and completed by reference.
MAX_INLINE_BYTES = 4 * 1024 * 1024
_DEFAULT_HEARTBEAT_INTERVAL = 10.0
# The failure type reported in place of a completion the sidecar refused as invalid.
_COMPLETION_REFUSED = "CompletionRefused"
# Refusals meaning the attempt is no longer this worker's: nothing more to report.
# Any other refusal of a completion left the attempt held (worker_service.proto).
_HEARTBEAT_DETAILS_BYTES = 1 << 20  # worker_service.proto: TaskHeartbeat.details at most 1 MiB
_GONE = frozenset(
    {
        errors_pb2.ERROR_REASON_TASK_NOT_HELD,
        errors_pb2.ERROR_REASON_TASK_ALREADY_COMPLETED,
        errors_pb2.ERROR_REASON_TASK_NOT_FOUND,
        errors_pb2.ERROR_REASON_WORKFLOW_NOT_FOUND,
    }
)


class TaskError(AreError):
    """Raise from a handler to fail the attempt with a chosen type, details and retry hint.

    Any other exception fails the attempt too; this one lets the handler say
    more.

    Args:
        message: The failure's message.
        type: The failure's type (matched against a retry policy's
            ``non_retryable_failure_types``); default the class name.
        details: A JSON value (or bytes) carried as the failure's details.
        non_retryable: Forbid retries whatever the retry policy says.
        retry_after: The least delay before a retry (a provider's Retry-After).
    """

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,  # noqa: A002 - the contract's name
        details: Any = None,
        non_retryable: bool = False,
        retry_after: Duration | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type or self.__class__.__name__
        self.details = details
        self.non_retryable = non_retryable
        self.retry_after = retry_after


class NonRetryableError(TaskError):
    """Raise from a handler to fail the attempt for good: no retry, whatever the policy."""

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,  # noqa: A002 - the contract's name
        details: Any = None,
    ) -> None:
        super().__init__(message, type=type, details=details, non_retryable=True)


@dataclass(frozen=True, slots=True)
class TaskResult:
    """A handler's output with extras: a content type and a state patch.

    Attributes:
        output: The output (JSON value, bytes or RawPayload).
        content_type: The output's content type, when not the default.
        state_merge_patch: A JSON Merge Patch applied to the workflow's state
            document in the same commit as the completion.
    """

    output: Any = None
    content_type: str | None = None
    state_merge_patch: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DependencyResult:
    """What a task received about one of its dependencies."""

    task_id: str
    state: TaskState
    output: Any
    failure: FailureInfo | None


def _task_state(value: int) -> TaskState:
    try:
        return TaskState(value)
    except ValueError:
        return TaskState.UNSPECIFIED


def _now_timestamp() -> Any:
    message = timestamp_pb2.Timestamp()
    message.GetCurrentTime()
    return message


AttributeScalar = str | int | float | bool
"""An event attribute's value (event.proto AttributeValue)."""


def _set_attribute(target: Any, key: str, value: AttributeScalar) -> None:
    """Sets an ``are.v1.AttributeValue`` from a Python value; a bool is a bool, not an int."""
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"attribute {key!r} is {value!r}: event attributes must be finite numbers")
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    else:
        raise TypeError(f"attribute {key!r} is a {type(value).__name__}: give a str, int, float or bool")


class TaskContext:
    """Everything a handler knows about its task attempt, and what it can report.

    Attributes:
        workflow_id: The task's workflow.
        task_id: The task's id.
        attempt: The attempt number, from 1.
        idempotency_key: The same for every attempt of the task, across
            restarts: use it to make side effects idempotent.
        capability: The capability the task was assigned for.
        input: The decoded input.
        dependencies: What each dependency ended as, by task id, in
            ``depends_on`` order.
        deadline: When the attempt's start-to-close timeout ends.
        heartbeat_timeout: Seconds without a heartbeat before the lease is
            lost (the worker heartbeats automatically), or None.
        traceparent: The W3C ``traceparent`` of the attempt's span, so the
            handler's own spans nest under it ("" if none).
        tracestate: The W3C ``tracestate`` ("" if none).
        labels: The task's labels.
        last_failure: The previous attempt's failure, on retries.
        last_heartbeat_details: The previous attempt's last heartbeat details.
        maximum_attempts: The retry policy's maximum attempts.
        state_version: The workflow state document's version at dispatch.
    """

    def __init__(self, session: _Session, assignment: Any) -> None:
        self._session = session
        self._loop = session.loop
        self._assignment = assignment
        self.workflow_id: str = assignment.workflow_id
        self.task_id: str = assignment.task_id
        self.attempt: int = assignment.attempt
        self.idempotency_key: str = assignment.idempotency_key
        self.capability: str = assignment.capability
        self.maximum_attempts: int = assignment.maximum_attempts
        self.state_version: int = assignment.state_version
        self.heartbeat_timeout: float | None = (
            assignment.heartbeat_timeout.ToTimedelta().total_seconds()
            if assignment.HasField("heartbeat_timeout")
            else None
        )
        #: ``(workflow_id, task_id, attempt)``: the attempt's identity.
        self.key: tuple[str, str, int] = (self.workflow_id, self.task_id, self.attempt)
        # Plain flags, not locks: the loop sets them, a handler's thread reads.
        self._cancelled = False
        # Usage is added only by the handler and read once it has returned.
        self._usage: Any = None

    # The rest is decoded on first use: most handlers read little of it.

    @functools.cached_property
    def input(self) -> Any:
        """The decoded input."""
        assignment = self._assignment
        return decode_payload(assignment.input) if assignment.HasField("input") else None

    @functools.cached_property
    def dependencies(self) -> dict[str, DependencyResult]:
        """What each dependency ended as, by task id, in ``depends_on`` order."""
        return {
            d.task_id: DependencyResult(
                task_id=d.task_id,
                state=_task_state(d.state),
                output=decode_payload(d.output) if d.HasField("output") else None,
                failure=FailureInfo.from_proto(d.failure) if d.HasField("failure") else None,
            )
            for d in self._assignment.dependencies
        }

    @functools.cached_property
    def deadline(self) -> datetime | None:
        """When the attempt's start-to-close timeout ends."""
        return timestamp(self._assignment, "deadline_time")

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` of the attempt's span ("" if none)."""
        return str(self._assignment.trace_context.traceparent)

    @property
    def tracestate(self) -> str:
        """The W3C ``tracestate`` ("" if none)."""
        return str(self._assignment.trace_context.tracestate)

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        """The task's labels."""
        return dict(self._assignment.labels)

    @functools.cached_property
    def last_failure(self) -> FailureInfo | None:
        """The previous attempt's failure, on retries."""
        assignment = self._assignment
        return (
            FailureInfo.from_proto(assignment.last_failure) if assignment.HasField("last_failure") else None
        )

    @functools.cached_property
    def last_heartbeat_details(self) -> Any:
        """The previous attempt's last heartbeat details, to resume from."""
        assignment = self._assignment
        if not assignment.HasField("last_heartbeat_details"):
            return None
        return decode_payload(assignment.last_heartbeat_details)

    def __repr__(self) -> str:
        return f"TaskContext({self.workflow_id!r}, {self.task_id!r}, attempt={self.attempt})"

    @property
    def dependency_outputs(self) -> dict[str, Any]:
        """The outputs of the dependencies that COMPLETED, by task id."""
        return {k: d.output for k, d in self.dependencies.items() if d.state is TaskState.COMPLETED}

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure of this attempt will not be retried by policy."""
        return self.maximum_attempts > 0 and self.attempt >= self.maximum_attempts

    @property
    def cancelled(self) -> bool:
        """True once the sidecar asked to stop this attempt (poll it in sync handlers)."""
        return self._cancelled

    def _call_soon(self, function: Callable[[], None]) -> None:
        # Sync handlers run in threads; the session belongs to the loop.
        if self._session.loop_thread == threading.get_ident():
            function()
            return
        try:
            self._loop.call_soon_threadsafe(function)
        except RuntimeError:
            # A sync handler handed back when its worker stopped may run on after the loop
            # closed: what it reports is nobody's, as once its stream ended (queue_event).
            if not self._loop.is_closed():
                raise

    def heartbeat(self, details: Any = None) -> None:
        """Records progress now (the worker also heartbeats on its own).

        Args:
            details: Progress to hand to the next attempt if this one is lost
                (any JSON value), or None.

        Raises:
            ValueError: The details are over 1 MiB encoded (the sidecar would
                refuse them); raised in the handler, it fails the attempt.
        """
        beat = wpb.TaskHeartbeat(workflow_id=self.workflow_id, task_id=self.task_id, attempt=self.attempt)
        if details is not None:
            payload = encode_payload(details)
            if len(payload.data) > _HEARTBEAT_DETAILS_BYTES:
                raise ValueError(
                    f"heartbeat details are at most {_HEARTBEAT_DETAILS_BYTES} bytes encoded, "
                    f"got {len(payload.data)}: keep progress small (a cursor, not the data)"
                )
            beat.details.CopyFrom(payload)
        self._call_soon(functools.partial(self._session.queue_heartbeat, beat))

    def report_llm_call(
        self,
        model: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_micro_usd: int = 0,
        *,
        duration: Duration | None = None,
        provider: str = "",
        response_model: str = "",
        attributes: Mapping[str, AttributeScalar] | None = None,
    ) -> None:
        """Records one LLM call: an event in the flight recorder, and usage on the result.

        The tokens and cost are summed into the usage sent with the attempt's
        completion or failure, which the workflow's budgets and the pool's
        token rate count. ``provider`` ("openai", "anthropic", ...) and
        ``response_model`` become the GenAI attributes "gen_ai.system" and
        "gen_ai.response.model"; ``attributes`` adds others (at most 64 in
        all; keys 1 to 128 characters; strings at most 16 KiB). The sidecar
        fills "gen_ai.request.model", "gen_ai.operation.name" and the token
        counts from the call itself.

        Raises:
            ValueError: A count or cost is negative (the sidecar would refuse
                the attempt's result), or an attribute value is NaN or an
                infinity; raised in the handler, it fails the attempt.
            TypeError: An attribute value is not a str, int, float or bool.
        """
        counts = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_micro_usd": cost_micro_usd,
        }
        for name, value in counts.items():
            if value < 0:
                raise ValueError(f"{name} must be at least 0, got {value}")
        gen_ai = {"gen_ai.system": provider, "gen_ai.response.model": response_model}
        extra: dict[str, AttributeScalar] = {key: value for key, value in gen_ai.items() if value}
        extra.update(attributes or {})
        event = self._event(int(event_pb2.EVENT_TYPE_LLM_CALL), model, duration, extra)
        usage = common_pb2.Usage(
            input_tokens=input_tokens, output_tokens=output_tokens, cost_micro_usd=cost_micro_usd, llm_calls=1
        )
        self._add_usage(usage)
        event.usage.CopyFrom(usage)
        self._call_soon(functools.partial(self._session.queue_event, event))

    def report_tool_call(
        self,
        name: str,
        *,
        duration: Duration | None = None,
        call_id: str = "",
        attributes: Mapping[str, AttributeScalar] | None = None,
    ) -> None:
        """Records one tool call in the flight recorder and in the attempt's usage.

        ``call_id`` (the model's id for the call) becomes "gen_ai.tool.call.id";
        ``attributes`` as for :meth:`report_llm_call`.
        """
        extra: dict[str, AttributeScalar] = {"gen_ai.tool.call.id": call_id} if call_id else {}
        extra.update(attributes or {})
        event = self._event(int(event_pb2.EVENT_TYPE_TOOL_CALL), name, duration, extra)
        self._add_usage(common_pb2.Usage(tool_calls=1))
        self._call_soon(functools.partial(self._session.queue_event, event))

    def report_event(self, name: str, attributes: Mapping[str, AttributeScalar] | None = None) -> None:
        """Records anything else worth seeing in the trace (a decision, a milestone) as WORKER_CUSTOM.

        It shows among the attempt's events (``are trace``) and on its span in
        OpenTelemetry; ``attributes`` as for :meth:`report_llm_call`.
        """
        event = self._event(int(event_pb2.EVENT_TYPE_WORKER_CUSTOM), name, None, attributes or {})
        self._call_soon(functools.partial(self._session.queue_event, event))

    def _event(
        self,
        event_type: int,
        name: str,
        duration: Duration | None,
        attributes: Mapping[str, AttributeScalar],
    ) -> Any:
        event = event_pb2.ReportedEvent(
            workflow_id=self.workflow_id,
            task_id=self.task_id,
            attempt=self.attempt,
            event_type=_any(event_type),
            event_time=_now_timestamp(),
            name=name,
        )
        if duration is not None:
            event.duration.CopyFrom(to_duration(duration))
        for key, value in attributes.items():
            _set_attribute(event.attributes[key], key, value)
        return event

    def _add_usage(self, usage: Any) -> None:
        if self._usage is None:
            self._usage = common_pb2.Usage()
        total = self._usage
        total.input_tokens += usage.input_tokens
        total.output_tokens += usage.output_tokens
        total.cost_micro_usd += usage.cost_micro_usd
        total.llm_calls += usage.llm_calls
        total.tool_calls += usage.tool_calls

    def usage_message(self) -> Any:
        """The usage reported so far, as an ``are.v1.Usage`` (None when nothing was reported)."""
        return self._usage

    async def spawn(
        self, *tasks: TaskSpec, dependents_wait: bool = False, request_id: str | None = None
    ) -> SpawnedTasks:
        """Adds tasks to this workflow as children of this attempt and returns their ids.

        Args:
            tasks: The new tasks; they may depend on existing tasks and each other.
            dependents_wait: Make this task's pending dependents also wait
                for (and receive the outputs of) the new tasks.
            request_id: An idempotency key, so a retried attempt spawns
                once: scoped to the workflow, so the task id plus a suffix
                (``f"{ctx.task_id}.plan"``) is enough. A retry with the same
                key and tasks returns the ids of the first spawn; the same key
                with other tasks is refused (REQUEST_ID_CONFLICT).

        Returns:
            The new tasks' ids in request order, a list of ``str``; its
            ``deduplicated`` is True when ``request_id`` matched an earlier
            spawn (a retried attempt: nothing new was added).
        """
        return await spawn_tasks(
            self._session.client.raw,
            self.workflow_id,
            tasks,
            parent_task_id=self.task_id,
            parent_attempt=self.attempt,
            dependents_wait=dependents_wait,
            request_id=request_id,
        )

    def spawn_blocking(
        self, *tasks: TaskSpec, dependents_wait: bool = False, request_id: str | None = None
    ) -> SpawnedTasks:
        """:meth:`spawn` for sync handlers (which run in a thread); blocks until done."""
        if self._session.loop_thread == threading.get_ident():
            raise RuntimeError("spawn_blocking is for sync handlers; await ctx.spawn(...) instead")
        coroutine = self.spawn(*tasks, dependents_wait=dependents_wait, request_id=request_id)
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop closed (a handler handed back when its worker stopped)
            coroutine.close()  # never run: not a coroutine "never awaited"
            raise
        return future.result()


def _valid_text(text: str) -> str:
    """``text`` as valid UTF-8: lone surrogates, which protobuf cannot encode, become "?"."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="replace").decode()
    return text


def _fit_one(failure: Any) -> None:
    """Fits one Failure (not its causes) to the sidecar's bounds, in place.

    The type is cut to 256 characters; details by reference, over 1 MiB or
    with a content type over 128 characters are dropped, saying so in the
    message. Its strings are valid UTF-8 already (protobuf refuses others:
    the failure's builder makes them so); the sidecar cuts a long message
    or stack trace, never refusing it.
    """
    failure.type = failure.type[:_MAX_TYPE]
    if not failure.HasField("details"):
        return
    details = failure.details
    why = None
    if details.WhichOneof("content") == "blob":
        why = f"details by reference ({details.blob.size_bytes} bytes) dropped: inline only"
    elif len(details.data) > _MAX_DETAILS:
        why = f"details of {len(details.data)} bytes dropped: over 1 MiB"
    elif len(details.content_type) > _MAX_CONTENT_TYPE:
        why = f"details dropped: content type of {len(details.content_type)} characters, over 128"
    if why is not None:
        failure.ClearField("details")
        failure.message = f"{failure.message} ({why})"


def _fit_failure(failure: Any) -> Any:
    """Fits a Failure and its causes to the bounds the sidecar refuses beyond, in place.

    At most 8 causes are kept, and causes are dropped from the deepest while
    the whole is over 1 MiB (the sidecar's bound on a failure with causes).
    """
    chain = [failure]
    while chain[-1].HasField("cause") and len(chain) <= _MAX_CAUSES:
        chain.append(chain[-1].cause)
    chain[-1].ClearField("cause")  # a ninth cause and below
    for one in chain:
        _fit_one(one)
    while len(chain) > 1 and failure.ByteSize() > _MAX_DETAILS:
        chain.pop()
        chain[-1].ClearField("cause")
    return failure


def _fit_task_failure(failure: Any) -> Any:
    """Fits a TaskFailure to the sidecar's bounds, so that it is never refused for its shape.

    Its Failure as :func:`_fit_failure`; a negative usage counter becomes 0 and a
    negative retry_after 0 s (one past the largest Duration the largest).
    """
    _fit_failure(failure.failure)
    if failure.HasField("usage"):
        failure.usage.CopyFrom(_non_negative(failure.usage))
    if failure.HasField("retry_after"):
        delay = failure.retry_after
        if delay.seconds < 0 or delay.nanos < 0:
            failure.retry_after.Clear()
        elif delay.seconds > _MAX_RETRY_AFTER_S:
            failure.retry_after.CopyFrom(duration_pb2.Duration(seconds=_MAX_RETRY_AFTER_S))
    return failure


def _retry_after(value: Duration) -> Any:
    """A handler's retry hint as a Duration, negative as 0 and huge as the largest Duration."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0:  # negative, zero or NaN
        return duration_pb2.Duration()
    if seconds >= _MAX_RETRY_AFTER_S:
        return duration_pb2.Duration(seconds=_MAX_RETRY_AFTER_S)
    return to_duration(value)


def _failure_from_exception(error: BaseException) -> Any:
    """The Failure of what a handler raised; never raises itself (an attempt must always be reported)."""
    try:
        return _failure_of(error)
    except Exception:  # noqa: BLE001 - its str(), a property or its details raised: the essentials alone
        name = _text_of(error.__class__.__name__)[:_MAX_TYPE] or "Exception"
        return common_pb2.Failure(
            message=f"{name} (its message could not be read)",
            type=name,
            kind=common_pb2.FAILURE_KIND_APPLICATION,
            stack_trace=_valid_text("".join(traceback.format_exception(error))[-_MAX_STACK_TRACE:]),
        )


def _text_of(value: object) -> str:
    """``str(value)``; its ``repr`` when that raises, or its class name (a ``__str__`` may fail)."""
    for describe in (str, repr):
        with contextlib.suppress(Exception):
            return _valid_text(describe(value))
    return type(value).__name__


def _failure_of(error: BaseException) -> Any:
    failure = common_pb2.Failure(
        message=_text_of(error)[:_MAX_MESSAGE] or error.__class__.__name__,
        type=error.__class__.__name__[:_MAX_TYPE],
        kind=common_pb2.FAILURE_KIND_APPLICATION,
        stack_trace=_valid_text("".join(traceback.format_exception(error))[-_MAX_STACK_TRACE:]),
    )
    if isinstance(error, TaskError):
        failure.message = _valid_text(error.message[:_MAX_MESSAGE])
        failure.type = _valid_text(error.type[:_MAX_TYPE])
        failure.non_retryable = error.non_retryable
        if error.details is not None:
            with contextlib.suppress(TypeError, ValueError):  # not JSON, or a content type not UTF-8
                failure.details.CopyFrom(encode_payload(error.details))
    else:
        failure.non_retryable = bool(getattr(error, "non_retryable", False))
    # The exceptions it was raised from ("raise ... from ..."), or while handling, as its causes
    # (common.proto keeps 8 levels); their tracebacks are in the stack trace already.
    below, seen = failure, {id(error)}
    link = _raised_from(error)
    for _ in range(_MAX_CAUSES):
        if link is None or id(link) in seen:
            break
        seen.add(id(link))
        below.cause.CopyFrom(
            common_pb2.Failure(
                message=_text_of(link)[:_MAX_MESSAGE] or link.__class__.__name__,
                type=link.__class__.__name__[:_MAX_TYPE],
                kind=common_pb2.FAILURE_KIND_APPLICATION,
            )
        )
        below = below.cause
        link = _raised_from(link)
    return failure


def _raised_from(error: BaseException) -> BaseException | None:
    """The exception ``error`` was raised from, or while handling (unless suppressed), if any."""
    return error.__cause__ or (None if error.__suppress_context__ else error.__context__)


async def _load_blobs(ctx: TaskContext, client: Client) -> None:
    """Fetches an assignment's blob input and dependency outputs, so handlers see the values.

    ``ctx.input`` and ``ctx.dependencies`` then decode the blob's bytes
    exactly as they would an inline payload of the same content type.
    """
    assignment = ctx._assignment  # noqa: SLF001 - the session owns its contexts
    payloads = [assignment.input, *(d.output for d in assignment.dependencies)]
    if not any(p.WhichOneof("content") == "blob" for p in payloads):
        return
    fetched: dict[str, bytes] = {}

    async def inline(payload: Any) -> Any:
        blob = payload.blob
        if blob.sha256 not in fetched:
            fetched[blob.sha256] = await client.state.blobs.get(blob.sha256)
        content_type = payload.content_type or blob.content_type or OCTET_STREAM
        return common_pb2.Payload(data=fetched[blob.sha256], content_type=content_type)

    resolved = wpb.TaskAssignment()
    resolved.CopyFrom(assignment)
    if resolved.input.WhichOneof("content") == "blob":
        resolved.input.CopyFrom(await inline(resolved.input))
    for dep in resolved.dependencies:
        if dep.output.WhichOneof("content") == "blob":
            dep.output.CopyFrom(await inline(dep.output))
    ctx._assignment = resolved  # noqa: SLF001 - read by the cached properties on first use


async def _by_reference(completion: Any, client: Client) -> Any:
    """The completion with an output over 4 MiB uploaded as a blob (owned by its workflow)."""
    output = completion.output
    if output.WhichOneof("content") == "data" and len(output.data) > MAX_INLINE_BYTES:
        ref = await client.state.blobs.put(
            output.data, content_type=output.content_type, workflow_id=completion.workflow_id
        )
        completion.output.CopyFrom(encode_payload(ref, output.content_type or ref.content_type))
    return completion


def _output_completion(ctx: TaskContext, result: Any) -> Any:
    completion = wpb.TaskCompletion(workflow_id=ctx.workflow_id, task_id=ctx.task_id, attempt=ctx.attempt)
    if isinstance(result, TaskResult):
        if result.output is not None or result.content_type is not None:
            completion.output.CopyFrom(encode_payload(result.output, result.content_type))
        if result.state_merge_patch is not None:
            patch = encode_payload(dict(result.state_merge_patch))
            completion.state_patch.CopyFrom(state_pb2.StatePatch(merge_patch_json=patch.data))
    elif result is not None:
        completion.output.CopyFrom(encode_payload(result))
    usage = ctx.usage_message()
    if usage is not None:
        completion.usage.CopyFrom(usage)
    return completion


def _non_negative(usage: Any) -> Any:
    """A copy of an ``are.v1.Usage`` with any negative counter as 0 (None stays None)."""
    if usage is None:
        return None
    return common_pb2.Usage(
        input_tokens=max(0, usage.input_tokens),
        output_tokens=max(0, usage.output_tokens),
        cost_micro_usd=max(0, usage.cost_micro_usd),
        llm_calls=max(0, usage.llm_calls),
        tool_calls=max(0, usage.tool_calls),
    )


async def _no_handler(worker: str, ctx: TaskContext) -> Any:
    raise NonRetryableError(f"worker {worker} has no handler for {ctx.capability!r}")


class _Session:
    """One registered stream: reads assignments and acks, writes batched results."""

    def __init__(self, worker: Worker, client: Client) -> None:
        self.worker = worker
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.call: Any = None
        self.worker_id = ""
        self.heartbeat_interval = _DEFAULT_HEARTBEAT_INTERVAL
        self.attempts: dict[_Key, tuple[TaskContext, asyncio.Task[None]]] = {}
        self.unacked: set[_Key] = set()
        # The usage of each completion sent and not yet acknowledged (None
        # when it carried none): a refused one is reported as a failure with it.
        self._completing: dict[_Key, Any] = {}
        self._completions: list[Any] = []
        self._failures: list[Any] = []
        self._heartbeats: dict[_Key, Any] = {}
        self._events: list[Any] = []
        self._drain_reason: str | None = None
        self._ping = False
        self._closing = False
        self._ended = False  # the stream ended: nothing queued here is ever sent
        self._wake = asyncio.Event()
        self._held = asyncio.Event()  # an attempt was taken: the heartbeat loop computes its tick again
        self._settled = asyncio.Event()
        self._last_write = time.monotonic()

    # -- queueing (loop thread only) -------------------------------------

    def _kick(self) -> None:
        self._wake.set()

    def queue_heartbeat(self, beat: Any) -> None:
        key = (beat.workflow_id, beat.task_id, beat.attempt)
        if key in self.attempts:
            self._heartbeats[key] = beat
            self._kick()

    def queue_event(self, event: Any) -> None:
        # A handler that outlived its stream (a cancelled sync handler, an async one that
        # ignores its cancellation) still reports calls: no writer drains this session any
        # more, and its events piled up here for as long as the handler ran.
        if self._ended:
            return
        self._events.append(event)
        self._kick()

    # -- the stream ----------------------------------------------------------

    async def open_unless(self, stop: asyncio.Event) -> bool:
        """Opens the stream and registers (see :meth:`open`); False if ``stop`` was set first.

        A sidecar that hangs answers no registration until the keepalive
        gives up on it (40 s by default): a shutdown meanwhile returns at
        once. A registration that fails or is given up cancels its call.
        """
        opening = asyncio.ensure_future(self.open())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not opening.done():
                opening.cancel()
                with contextlib.suppress(BaseException):
                    await opening
            if (opening.cancelled() or opening.exception() is not None) and self.call is not None:
                self.call.cancel()
        if opening.cancelled():
            return False
        opening.result()  # raises the registration's error
        return True

    async def open(self) -> None:
        """Opens the stream and registers."""
        if self.client.closed:
            raise ClientClosedError("WorkerService.Connect")
        worker = self.worker
        self.call = self.client.raw.worker.Connect()
        registration = wpb.WorkerRegistration(
            worker_name=worker.name,
            capabilities=sorted(worker.capabilities),
            max_concurrency=worker.max_concurrency,
            identity=worker.identity,
            sdk=_SDK,
            labels=worker.labels,
            agent_card=worker.card.to_proto() if worker.card is not None else None,
        )
        try:
            await self.call.write(wpb.ConnectRequest(register=registration))
            first = await self.call.read()
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None
        if first is grpc.aio.EOF:
            status = await self.call.code()
            raise RpcError(status, "the sidecar closed the worker stream before registering")
        if first.WhichOneof("message") != "registered":
            raise RpcError(grpc.StatusCode.INTERNAL, "the sidecar's first message was not `registered`")
        registered = first.registered
        self.worker_id = registered.worker_id
        if registered.HasField("heartbeat_interval"):
            interval = registered.heartbeat_interval.ToTimedelta().total_seconds()
            if interval > 0:
                self.heartbeat_interval = interval

    async def serve(self, stop: asyncio.Event) -> bool:
        """Runs the stream until it ends; returns True when it ended by a drain."""
        reader = asyncio.create_task(self._read(), name="are-worker-read")
        writer = asyncio.create_task(self._write(), name="are-worker-write")
        beater = asyncio.create_task(self._beat(), name="are-worker-heartbeat")
        stopper = asyncio.create_task(stop.wait(), name="are-worker-stop")
        try:
            done, _ = await asyncio.wait({reader, writer, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                await self._drain(reader, writer)
                return True
            for task in done:
                task.result()  # raises the stream's error
            return False
        finally:
            for task in (reader, writer, beater, stopper):
                task.cancel()
            for task in (reader, writer, beater, stopper):
                with contextlib.suppress(BaseException):
                    await task
            self._abandon()
            self._ended = True
            self._events.clear()
            self.call.cancel()

    async def _drain(self, reader: asyncio.Task[None], writer: asyncio.Task[None]) -> None:
        grace = self.worker.shutdown_grace
        deadline = self.loop.time() + grace
        self._drain_reason = "worker shutting down"
        self._kick()
        # Until every handler ended and its result was acknowledged, those of tasks
        # started meanwhile included: the sidecar may assign a task (to the slot a
        # completion freed) before it reads the drain, and the assignment may come
        # with the acks. Taking the running handlers once, the drain abandoned such
        # a task within milliseconds of starting it (a lost worker, charged to its
        # retry policy).
        while True:
            running = {task for _, task in self.attempts.values() if not task.done()}
            if running:
                _, late = await asyncio.wait(running, timeout=max(0.0, deadline - self.loop.time()))
                if late:
                    for task in late:
                        task.cancel()  # handed back: the sidecar retries it once the stream closes
                    _log.warning(
                        "worker %s: %d task(s) still running after %.1fs, handed back",
                        self.worker.name,
                        len(late),
                        grace,
                    )
                    break
            # Wait for the acks of what was sent, within the grace period.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.5, deadline - self.loop.time())):
                    while self.unacked or self._completions or self._failures:
                        if reader.done() or writer.done():
                            break
                        self._settled.clear()
                        await self._settled.wait()
            if reader.done() or writer.done() or self.loop.time() >= deadline:
                break
            if not any(not task.done() for _, task in self.attempts.values()):
                break
        # Half-close after the last write; the sidecar then ends the stream.
        self._closing = True
        self._kick()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, RpcError):
            await asyncio.wait_for(asyncio.shield(writer), timeout=2.0)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, RpcError):
            await asyncio.wait_for(asyncio.shield(reader), timeout=2.0)

    def _abandon(self) -> None:
        """Stops every attempt still held: its lease ended with the stream."""
        for ctx, task in self.attempts.values():
            ctx._cancelled = True  # noqa: SLF001 - the session owns its contexts
            task.cancel()
        self.attempts.clear()
        self.unacked.clear()
        self._completing.clear()

    async def _read(self) -> None:
        call = self.call
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                kind = message.WhichOneof("message")
                if kind == "assignments":
                    for assignment in message.assignments.assignments:
                        self._start(assignment)
                elif kind == "acks":
                    self._on_acks(message.acks.acks)
                elif kind == "cancellations":
                    for cancellation in message.cancellations.cancellations:
                        self._cancel((cancellation.workflow_id, cancellation.task_id, cancellation.attempt))
                elif kind == "drain":
                    _log.info(
                        "worker %s: the sidecar is draining (%s)", self.worker.name, message.drain.reason
                    )
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None

    def _on_acks(self, acks: Sequence[Any]) -> None:
        for ack in acks:
            key = (ack.workflow_id, ack.task_id, ack.attempt)
            if ack.subject in (wpb.ACK_SUBJECT_COMPLETION, wpb.ACK_SUBJECT_FAILURE):
                self.unacked.discard(key)
            completing = (
                self._completing.pop(key, _NOT_SENT)
                if ack.subject == wpb.ACK_SUBJECT_COMPLETION
                else _NOT_SENT
            )
            if not ack.accepted:
                _log.warning(
                    "worker %s: the sidecar refused %s of %s/%s attempt %d: %s",
                    self.worker.name,
                    _ack_subject(ack.subject),
                    ack.workflow_id,
                    ack.task_id,
                    ack.attempt,
                    ack.message or ack.reason,
                )
                if ack.subject == wpb.ACK_SUBJECT_HEARTBEAT:
                    if ack.reason in _GONE:
                        self._cancel(key)  # the lease is gone: stop working on it
                    # Otherwise the heartbeat alone was refused (its details invalid): the lease
                    # holds. Cancelling here dropped the attempt with nothing reported, and the
                    # task stayed RUNNING until a timeout.
                elif completing is not _NOT_SENT and ack.reason not in _GONE:
                    self._fail_refused(ack, completing)
        self._settled.set()

    def _fail_refused(self, ack: Any, usage: Any) -> None:
        """Reports a completion refused as invalid as a failure, once: the attempt is still held.

        The failure carries the completion's usage, so budgets count it, with
        any negative counter (itself a reason for the refusal) as 0, so that it
        is not refused too; if it is refused all the same, that refusal is only
        logged.
        """
        try:
            reason = errors_pb2.ErrorReason.Name(ack.reason).removeprefix("ERROR_REASON_")
        except ValueError:  # a reason newer than this SDK
            reason = str(ack.reason)
        failure = wpb.TaskFailure(
            workflow_id=ack.workflow_id,
            task_id=ack.task_id,
            attempt=ack.attempt,
            failure=common_pb2.Failure(
                message=f"the sidecar refused the completion ({reason}): {ack.message or 'no message'}",
                type=_COMPLETION_REFUSED,
                kind=common_pb2.FAILURE_KIND_APPLICATION,
            ),
            usage=_non_negative(usage),  # None leaves it unset
        )
        self._failures.append(_fit_task_failure(failure))
        self.unacked.add((ack.workflow_id, ack.task_id, ack.attempt))
        self.worker.stats["completed"] -= 1
        self.worker.stats["failed"] += 1
        self._kick()

    def _cancel(self, key: _Key) -> None:
        held = self.attempts.pop(key, None)
        if held is not None:
            ctx, task = held
            ctx._cancelled = True  # noqa: SLF001 - the session owns its contexts
            task.cancel()
            self.worker.stats["cancelled"] += 1

    def _start(self, assignment: Any) -> None:
        ctx = TaskContext(self, assignment)
        handler = self.worker.handlers.get(ctx.capability)
        task = asyncio.create_task(self._run(ctx, handler))
        self.attempts[ctx.key] = (ctx, task)
        if ctx.heartbeat_timeout:
            self._held.set()

    async def _run(self, ctx: TaskContext, handler: Handler | None) -> None:
        try:
            message = await self._completion(ctx, handler)
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                return  # stopped by the sidecar or handed back on shutdown: nothing to report
            # Raised by the handler itself (a cancelled future it awaited, a library's
            # timeout), not a cancellation of this attempt: a failure like any other, or the
            # attempt would stay held (and heartbeated) with nothing ever reported.
            reported = self._fail(ctx, error)
        except (KeyboardInterrupt, SystemExit):
            raise  # the process is ending: its stream ends with it, and the sidecar retries the attempt
        except BaseException as error:  # noqa: BLE001 - every handler error becomes a Failure
            # Exception or not (gevent's Timeout, a test framework's outcome, a BaseException of
            # the handler's own): unreported, the attempt stayed held and heartbeated until its
            # start-to-close timeout, 10 minutes by default.
            reported = self._fail(ctx, error)
        else:
            reported = self._complete(ctx, message)
        if not reported:
            return  # the attempt is no longer held: no acknowledgement to wait for
        self.attempts.pop(ctx.key, None)
        self._heartbeats.pop(ctx.key, None)
        self.unacked.add(ctx.key)
        self._kick()

    async def _completion(self, ctx: TaskContext, handler: Handler | None) -> Any:
        """Runs the handler; its completion message (an output too large inline goes as a blob)."""
        await _load_blobs(ctx, self.client)
        if handler is None:
            result = await _no_handler(self.worker.name, ctx)
        elif self.worker.is_async(handler):
            result = await handler(ctx)
        else:
            result = await self.worker._in_thread(handler, ctx)  # noqa: SLF001 - the session runs its handlers
            if inspect.isawaitable(result):
                result = await result
        return await _by_reference(_output_completion(ctx, result), self.client)

    def _complete(self, ctx: TaskContext, message: Any) -> bool:
        """Queues the attempt's completion; False if the attempt is no longer held."""
        if self.attempts.get(ctx.key) is None:
            return False
        self._completions.append(message)
        self._completing[ctx.key] = message.usage if message.HasField("usage") else None
        self.worker.stats["completed"] += 1
        return True

    def _fail(self, ctx: TaskContext, error: BaseException) -> bool:
        """Queues the attempt's failure from what the handler raised; False if the attempt is not held."""
        if self.attempts.get(ctx.key) is None:
            return False
        failure = wpb.TaskFailure(
            workflow_id=ctx.workflow_id,
            task_id=ctx.task_id,
            attempt=ctx.attempt,
            failure=_failure_from_exception(error),
            usage=ctx.usage_message(),  # None leaves it unset
        )
        # A hint to wait: the handler's own (TaskError), or the sidecar's on a call the
        # handler made (an RpcError such as a spawn refused by a full pool queue).
        hint = error.retry_after if isinstance(error, TaskError | RpcError) else None
        if hint is not None:
            failure.retry_after.CopyFrom(_retry_after(hint))
        self._failures.append(_fit_task_failure(failure))
        self.worker.stats["failed"] += 1
        return True

    async def _write(self) -> None:
        call = self.call
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._flush(call)
                if self._closing:
                    await call.done_writing()
                    return
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None
        except asyncio.InvalidStateError:
            # "RPC already finished": the stream ended (the sidecar went away) while
            # this was writing; the reader reports how, and nothing more can be sent.
            return

    async def _flush(self, call: Any) -> None:
        # Heartbeats and events first: they concern attempts whose results may
        # be in the same flush, and are refused once a result is recorded.
        beats, self._heartbeats = list(self._heartbeats.values()), {}
        events, self._events = self._events, []
        completions, self._completions = self._completions, []
        failures, self._failures = self._failures, []
        for batch in _batches(beats):
            await call.write(wpb.ConnectRequest(heartbeat=wpb.HeartbeatBatch(heartbeats=batch)))
        for batch in _batches(events):
            await call.write(wpb.ConnectRequest(report_events=wpb.EventBatch(events=batch)))
        for batch in _batches(completions):
            await call.write(wpb.ConnectRequest(complete=wpb.CompletionBatch(completions=batch)))
        for batch in _batches(failures):
            await call.write(wpb.ConnectRequest(fail=wpb.FailureBatch(failures=batch)))
        if self._drain_reason is not None:
            reason, self._drain_reason = self._drain_reason, None
            await call.write(wpb.ConnectRequest(drain=wpb.WorkerDrain(reason=reason)))
        elif self._ping:
            # An empty batch is a liveness ping.
            await call.write(wpb.ConnectRequest(heartbeat=wpb.HeartbeatBatch()))
        self._ping = False
        self._last_write = time.monotonic()

    async def _beat(self) -> None:
        """Heartbeats held attempts that need it, and pings when the stream is idle.

        A tick is a quarter of the shortest heartbeat timeout held (at most
        1 s). An attempt taken during a tick shortens it: computed only
        before the sleep, the tick of an idle worker (1 s) delayed the first
        heartbeat of a task with a heartbeat timeout under 1 s past it. The
        tick only shortens, from when it began, so attempts taken often
        never postpone a beat.
        """
        began = time.monotonic()
        while True:
            timeouts = [c.heartbeat_timeout for c, _ in self.attempts.values() if c.heartbeat_timeout]
            tick = max(0.05, min([self.heartbeat_interval / 2, 1.0, *(t / 4 for t in timeouts)]))
            delay = began + tick - time.monotonic()
            if delay > 0:
                self._held.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._held.wait()
                continue
            began = time.monotonic()
            beats = 0
            for ctx, _ in self.attempts.values():
                if ctx.heartbeat_timeout and ctx.key not in self._heartbeats:
                    self._heartbeats[ctx.key] = wpb.TaskHeartbeat(
                        workflow_id=ctx.workflow_id, task_id=ctx.task_id, attempt=ctx.attempt
                    )
                    beats += 1
            if not beats and time.monotonic() - self._last_write >= self.heartbeat_interval / 2:
                self._ping = True
            if beats or self._ping:
                self._kick()


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Marks a future's exception as retrieved (asyncio logs one that never is)."""
    if not future.cancelled():
        future.exception()


def _batches(items: list[_M]) -> Iterator[list[_M]]:
    """``items`` in order, cut at :data:`_MAX_BATCH` items or :data:`_MAX_BATCH_BYTES` (one may pass it)."""
    if len(items) <= 1:
        yield items
        return
    batch: list[_M] = []
    size = 0
    for item in items:
        item_size = item.ByteSize() + 8  # its tag and length in the batch
        if batch and (len(batch) == _MAX_BATCH or size + item_size > _MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch


class _HandlerThreads(Executor):
    """The threads sync handlers run in: at most ``size``, started as needed and reused.

    Not a ``ThreadPoolExecutor``: Python joins its threads when the
    interpreter exits, so a handler that never returned, handed back when its
    worker stopped (its result nobody's), kept the process from exiting once
    :meth:`Worker.run` had returned. These threads are daemons: such a
    handler ends with the process. Once shut down, each thread ends as soon
    as its handler returns, and an idle one at once.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        # The name ThreadPoolExecutor gives its queue; None tells a thread to end.
        self._work_queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._idle = threading.Semaphore(0)  # threads waiting for work
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Runs ``fn(*args, **kwargs)`` in one of the threads; its future."""
        future: Future[_T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot run a handler once the worker's run has ended")
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                thread.start()  # first: a thread that cannot start leaves nothing queued
                self._threads.append(thread)
            self._work_queue.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Ends each thread once it is idle (``wait``: and waits for that)."""
        with self._lock:
            self._shutdown = True
            while cancel_futures:
                try:
                    item = self._work_queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
            self._work_queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        work = self._work_queue
        while True:
            item = work.get()
            if item is None:
                work.put(None)  # for the next thread
                return
            future, call = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as error:  # noqa: BLE001 - the future carries what it raised
                    future.set_exception(error)
                else:
                    future.set_result(result)
                    del result
            del future, call  # an idle thread keeps nothing of the task it ran
            self._idle.release()


class Worker:
    """Runs task handlers for one or more capabilities; see the module documentation.

    Args:
        client: A connected async :class:`~are_sdk.Client`.
        name: The worker's name, shared by its replicas (id alphabet).
        capabilities: Capabilities to declare besides those with handlers.
        max_concurrency: The most tasks held at once (1 to 10,000); sync
            handlers among them run at most ``max_threads`` at a time.
        identity: Who this process is, for humans; default ``host:pid N``.
        labels: Free labels sent with the registration.
        shutdown_grace: Seconds tasks in flight get to finish on shutdown.
        max_threads: Threads for sync handlers; default ``min(max_concurrency, 32)``.
            A thread cannot be stopped: a sync handler cancelled (by the
            sidecar, or past the shutdown grace) keeps its thread until it
            returns, and tasks assigned meanwhile wait for a free one while
            their start-to-close clock runs. Prefer async handlers for long
            work, or check ``ctx.cancelled`` in loops. Each :meth:`run` has
            threads of its own: handlers still running when it returns keep
            theirs until they return (their reports are dropped), and count
            nothing against a later run's ``max_threads``. Those threads
            are daemons, so they do not keep the process from exiting: a
            handler that never returns holds one thread for the life of
            the process, and nothing else.
        reconnect_max_delay: The longest wait between reconnection attempts.
        card: How the router shows this worker (its class): agent_id,
            description or vector, cost per call, labels. Replicas sending
            the same agent_id share one card whose load and availability
            follow them, so intent-routed tasks go to the cheapest class
            that fits. Its capabilities must be among the worker's (they
            default to them). Without a card the worker still appears, as
            a card named after it that costs nothing.
    """

    def __init__(
        self,
        client: Client,
        *,
        name: str,
        capabilities: Sequence[str] = (),
        max_concurrency: int = 16,
        identity: str | None = None,
        labels: Mapping[str, str] | None = None,
        shutdown_grace: float = 10.0,
        max_threads: int | None = None,
        reconnect_max_delay: float = 5.0,
        card: AgentCard | None = None,
    ) -> None:
        if not 1 <= max_concurrency <= 10_000:
            raise ValueError(f"max_concurrency must be 1 to 10,000, got {max_concurrency}")
        self.client = client
        self.name = name
        self.max_concurrency = max_concurrency
        self.identity = identity or f"{socket.gethostname()}:pid {os.getpid()}"
        self.labels = dict(labels or {})
        self.shutdown_grace = shutdown_grace
        self.reconnect_max_delay = reconnect_max_delay
        self.card = card
        self.handlers: dict[str, Handler] = {}
        self._async: dict[Handler, bool] = {}
        self._declared = set(capabilities)
        self._max_threads = max_threads or min(max_concurrency, 32)
        self._executor: _HandlerThreads | None = None  # this run's threads
        self._threads: asyncio.Semaphore | None = None  # slots of the pool's threads (see _in_thread)
        self._stop: asyncio.Event | None = None
        self._shutdown_asked = False  # shutdown() was called (before run(), it ends that run at once)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: _Session | None = None
        # Set while registered. An asyncio.Event belongs to the first loop that waits on it:
        # a run on another loop gets a new one (see _registration).
        self._registered = asyncio.Event()
        self._registered_loop: asyncio.AbstractEventLoop | None = None
        self._background: asyncio.Task[None] | None = None
        #: Counters since construction: completed, failed, cancelled, connects,
        #: and disconnects (streams that ended other than by a shutdown).
        self.stats: dict[str, int] = {
            "completed": 0,
            "failed": 0,
            "cancelled": 0,
            "connects": 0,
            "disconnects": 0,
        }

    @property
    def capabilities(self) -> set[str]:
        """Every capability declared: those with handlers and those given."""
        return self._declared | set(self.handlers)

    @property
    def worker_id(self) -> str:
        """The id the sidecar gave the current connection ("" when not connected)."""
        return self._session.worker_id if self._session is not None else ""

    @property
    def in_flight(self) -> int:
        """How many attempts are running now."""
        return len(self._session.attempts) if self._session is not None else 0

    def handler(self, capability: str) -> Callable[[Handler], Handler]:
        """Decorates an async or sync function as the handler of ``capability``."""

        def decorate(function: Handler) -> Handler:
            self.register(capability, function)
            return function

        return decorate

    def register(self, capability: str, function: Handler) -> None:
        """Sets the handler of ``capability`` (replacing any earlier one)."""
        self.handlers[capability] = function

    def is_async(self, handler: Handler) -> bool:
        """True when ``handler`` is a coroutine function (run on the loop, not in a thread)."""
        known = self._async.get(handler)
        if known is None:
            known = self._async[handler] = inspect.iscoroutinefunction(handler)
        return known

    def executor(self) -> Executor:
        """The threads sync handlers run in (created on first use; a run's own, shut down with it)."""
        if self._executor is None:
            self._executor = _HandlerThreads(self._max_threads, "are-worker")
            self._threads = asyncio.Semaphore(self._max_threads)
        return self._executor

    async def _in_thread(self, handler: Handler, ctx: TaskContext) -> Any:
        """Runs a sync handler in the pool, never queueing there more than it has threads.

        A pool's queue keeps a work item, its task's context and input with
        it, until a thread takes it, even once the attempt was cancelled:
        while every thread was busy (a blocking call without a timeout), each
        sync attempt that came, timed out and came again piled up there, for
        as long as the threads stayed busy. So an attempt takes one of
        ``max_threads`` slots before it goes to the pool, and gives it back
        when its thread is done with it; one cancelled meanwhile waits here
        (nothing held once it is gone), or, already submitted, is skipped by
        the thread that takes it.
        """
        executor = self.executor()
        threads = self._threads
        assert threads is not None
        await threads.acquire()
        run = contextvars.copy_context().run
        abandoned = False

        def call() -> Any:
            return None if abandoned else run(handler, ctx)

        try:
            done = executor.submit(call)
        except BaseException:
            threads.release()
            raise
        loop = asyncio.get_running_loop()

        def release(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the pool goes with the run
                loop.call_soon_threadsafe(threads.release)

        done.add_done_callback(release)
        result = asyncio.wrap_future(done)
        try:
            # Shielded: cancelling the wait must not cancel the work item, which would leave
            # it queued (holding its context) with its slot given back.
            return await asyncio.shield(result)
        except asyncio.CancelledError:
            abandoned = True
            result.add_done_callback(_retrieved)  # what it raises later is nobody's
            raise

    def _registration(self) -> asyncio.Event:
        """The event set while registered, for the running loop.

        One Worker may run under one event loop, stop, and run again under
        another (a second ``asyncio.run``). The event of the first loop
        refused every wait from the next with ``RuntimeError``: ``async with``
        entered before the worker had registered, and ``wait_registered``
        raised. A waiter can only be on a loop the worker runs on, so a new
        loop gets a new event.
        """
        loop = asyncio.get_running_loop()
        if self._registered_loop is not loop:
            if self._registered_loop is not None:
                self._registered = asyncio.Event()
            self._registered_loop = loop
        return self._registered

    async def wait_registered(self, timeout: float | None = None) -> None:
        """Waits until the worker's stream is registered with the sidecar."""
        registered = self._registration()
        async with asyncio.timeout(timeout):
            await registered.wait()

    def shutdown(self) -> None:
        """Starts a graceful drain; :meth:`run` returns once it is done. Thread-safe.

        Called before :meth:`run` has started, it makes that run return at once.
        """
        self._shutdown_asked = True
        stop, loop = self._stop, self._loop
        if stop is None or loop is None:
            return
        if threading.get_ident() == getattr(self._session, "loop_thread", None) or not loop.is_running():
            stop.set()
        else:
            loop.call_soon_threadsafe(stop.set)

    async def run(self, *, handle_signals: bool = True) -> None:
        """Serves tasks until :meth:`shutdown` (or SIGTERM/SIGINT), reconnecting as needed.

        Args:
            handle_signals: Drain on SIGTERM and SIGINT (only when running in
                the main thread).

        Raises:
            ValueError: No capability to serve.
            RpcError: The sidecar refused the worker for a reason that
                reconnecting cannot fix (bad registration, authentication,
                a sidecar without the scheduler).
            ClientClosedError: The client was closed under the worker. Its
                stream ends with it: the attempts it held fail with
                WORKER_LOST and are retried by their policy, as after any
                lost connection.
        """
        if not self.capabilities:
            raise ValueError("the worker declares no capability; add a handler first")
        self._loop = asyncio.get_running_loop()
        self._registration()
        self._stop = asyncio.Event()
        if self._shutdown_asked:  # shutdown() came before this run had a stop event to set
            self._stop.set()
        installed: list[signal.Signals] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    self._loop.add_signal_handler(signum, self._stop.set)
                    installed.append(signum)
        try:
            await self._serve_forever(self._stop)
        finally:
            self._shutdown_asked = False
            for signum in installed:
                self._loop.remove_signal_handler(signum)
            if self._executor is not None:
                # Its threads end as their handlers return; the next run has threads of its own.
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
                self._threads = None
            self._registered.clear()

    async def _serve_forever(self, stop: asyncio.Event) -> None:
        try:
            await self._reconnecting(stop)
        except asyncio.CancelledError:
            # Closing the client cancels the stream's calls, and grpc raises CancelledError
            # in the tasks awaiting them, this one included, which nobody cancelled.
            if closed_under_caller(lambda: self.client.closed):
                raise ClientClosedError("WorkerService.Connect") from None
            raise

    async def _reconnecting(self, stop: asyncio.Event) -> None:
        delay = _FIRST_RECONNECT_DELAY_S
        while not stop.is_set():
            session = _Session(self, self.client)
            self._session = session
            hint: timedelta | None = None
            try:
                if not await session.open_unless(stop):
                    return  # shut down while registering
            except RpcError as error:
                if error.code in _FATAL_CODES:
                    raise
                hint = error.retry_after
                _log.warning("worker %s: cannot connect (%s); retrying", self.name, error)
            else:
                self.stats["connects"] += 1
                self._registered.set()
                opened = time.monotonic()
                try:
                    if await session.serve(stop):
                        return
                    self.stats["disconnects"] += 1
                    _log.warning("worker %s: the sidecar ended the stream; reconnecting", self.name)
                except RpcError as error:
                    self.stats["disconnects"] += 1
                    if error.code in _FATAL_CODES:
                        raise
                    hint = error.retry_after
                    _log.warning("worker %s: stream ended (%s); reconnecting", self.name, error)
                finally:
                    self._registered.clear()
                # Only a session that lived resets the backoff: one the sidecar ends just after
                # registering (refusing it, failing) would otherwise reconnect 20 times a second.
                if time.monotonic() - opened >= _STABLE_SESSION_S:
                    delay = _FIRST_RECONNECT_DELAY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry_wait(delay, hint))
            delay = min(delay * 2, self.reconnect_max_delay)

    async def __aenter__(self) -> Self:
        """Runs the worker in the background until the block ends (no signal handling).

        Returns once the worker has registered. Cancelled before that (a
        timeout around the block), it stops the worker: no ``__aexit__``
        would ever stop it.
        """
        background = asyncio.create_task(self.run(handle_signals=False), name=f"are-worker-{self.name}")
        self._background = background
        registered = asyncio.create_task(self._registration().wait())
        try:
            done, _ = await asyncio.wait({background, registered}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self.shutdown()
            with contextlib.suppress(Exception):  # the cancellation is what the caller sees
                await background
            raise
        finally:
            registered.cancel()
        if background in done:
            background.result()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()
        if self._background is not None:
            await self._background


def _ack_subject(subject: int) -> str:
    """An ack's subject for a log line ("completion"); a number for one newer than this SDK."""
    if subject not in wpb.AckSubject.values():
        return f"subject {subject}"
    return str(wpb.AckSubject.Name(subject)).removeprefix("ACK_SUBJECT_").lower()
