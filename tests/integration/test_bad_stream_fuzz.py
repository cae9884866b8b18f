"""Bad input never hurts a stream: a seeded, bounded fuzz of the streaming RPCs against one real sidecar.

The rule (DESIGN.md, contract conventions) is the unary fuzz's
(``test_bad_input_fuzz.py``, whose descriptor-driven mutations and checks this
module reuses): every bad input gets a clear answer naming the field, and
changes nothing; everything has a bound.

``WorkerService.Connect``: each sequence submits a workflow for a capability of
its own, registers a worker (sometimes with a mutated registration, or a first
message that is not one), takes the assignments, and sends a few messages:
valid ones (heartbeats with details, events, pings, completions) interleaved
with one or two bad ones, each a valid message mutated from the descriptors
(ids, enums, numbers, sizes, unset oneofs) or broken the stream's own ways (a
second register, attempts not held, batches over or under their count bounds,
an empty message). After each message a sentinel heartbeat for a task that
does not exist is sent; its refusal, with the acks every completion and
failure is owed, marks the end of the message's answers. The checks:

* every completion and failure is acknowledged once; a refusal (of any item)
  has a client-error reason, and an invalid item's (INVALID_ARGUMENT,
  LIMIT_EXCEEDED, ...) message begins with a field path that exists in
  ConnectRequest and names that item; an id outside the id alphabet or an
  attempt below 1 is refused so, as the unary calls refuse it;
* the stream ends only where worker_service.proto says it does (a bad or
  second register, a first message that is not one, an empty message, a
  batch over its bound), with a client-error status, an ErrorInfo reason and,
  for INVALID_ARGUMENT, a field of ConnectRequest; never UNKNOWN or INTERNAL,
  and never a hang (every wait is bounded);
* a refused item changes nothing: a message whose items were all refused
  leaves the workflow (status, tasks, state) and the event log as they were,
  and a refused item's attempt stays held;
* after each sequence the sidecar still serves: its health check, and a
  normal worker that takes a task and completes it.

``SchedulerService.WatchWorkflow`` and ``TraceService.StreamEvents``: a valid
request mutated once or twice must either run (a first message, or nothing
before a short deadline) or end at once with a client error whose fields
exist in the request; never UNKNOWN.

Deterministic for a seed: ``ARE_FUZZ_SEED`` (shared with the unary fuzz),
``ARE_STREAM_FUZZ_COUNT`` (worker stream sequences; server stream requests
are twice as many) and ``ARE_STREAM_FUZZ_SECONDS`` (the time each part may
take) override the defaults; ``ARE_FUZZ_VERBOSE=1`` prints what a run
covered. A problem names the seed and the sequence, so it replays exactly
(``ARE_STREAM_FUZZ_ONLY=40`` runs only sequence 40 of the seed, printing each
message with ``ARE_FUZZ_VERBOSE=1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from are_sdk._errors import error_from_rpc
from are_sdk._proto.are.v1 import (
    agent_pb2,
    common_pb2,
    errors_pb2,
    event_pb2,
    scheduler_service_pb2,
    task_pb2,
    trace_service_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from are_sdk.testing import SidecarProcess
from tests.integration.test_bad_input_fuzz import (
    CALL_EVENTS,
    CALL_TIMEOUT_S,
    CLIENT_ERRORS,
    MAX_REQUEST_BYTES,
    NAMED_FIELD,
    NOBODY,
    MiB,
    Report,
    Rpc,
    World,
    _changed,
    _check_error,
    _duration,
    _event_filter,
    _json,
    _timestamp,
    field_exists,
    mutate,
)

W = worker_service_pb2
SEED = int(os.environ.get("ARE_FUZZ_SEED", "20250611"))
COUNT = int(os.environ.get("ARE_STREAM_FUZZ_COUNT", "60"))
SECONDS = float(os.environ.get("ARE_STREAM_FUZZ_SECONDS", "8"))
VERBOSE = os.environ.get("ARE_FUZZ_VERBOSE", "") not in ("", "0")
ONLY = {int(i) for i in os.environ.get("ARE_STREAM_FUZZ_ONLY", "").split(",") if i}  # replay these sequences

WAIT_S = 5.0  # the longest any one answer may take
STREAM_DEADLINE_S = 120.0  # the deadline of every worker stream: nothing outlives it
SERVER_STREAM_S = 0.4  # a server stream that sends nothing this long is running
TASKS = ("t0", "t1", "t2", "t3")  # the sequence's tasks for its own capability; t3 writes its output to state
CONCURRENCY = len(TASKS)
CONNECT: Any = W.ConnectRequest.DESCRIPTOR
# worker_service.proto's per-message bounds.
BATCH_BOUNDS = {"complete": 1000, "fail": 1000, "heartbeat": 10_000, "report_events": 1000}
ITEMS = {
    "complete": ("completions", W.ACK_SUBJECT_COMPLETION),
    "fail": ("failures", W.ACK_SUBJECT_FAILURE),
    "heartbeat": ("heartbeats", W.ACK_SUBJECT_HEARTBEAT),
    "report_events": ("events", W.ACK_SUBJECT_EVENT),
}
DRAIN_REASON_BYTES = 1024
# Reasons of an invalid item, whose ack message names the field (worker_service.proto, Connect).
FIELD_REASONS = frozenset(
    errors_pb2.ErrorReason.Value(f"ERROR_REASON_{name}")
    for name in (
        "INVALID_ARGUMENT",
        "LIMIT_EXCEEDED",
        "INVALID_JSON",
        "INVALID_JSON_POINTER",
        "DIMENSION_MISMATCH",
        "BLOB_DIGEST_MISMATCH",
        "BLOB_SIZE_MISMATCH",
    )
)
_CLIENT_REASON_MAX = 100  # ErrorReason numbers below 100 are the client's errors; above, the server's
_ID_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
# Stream ends worker_service.proto documents for a message (code, reason).
_PROTOCOL_END = (grpc.StatusCode.FAILED_PRECONDITION, "STREAM_PROTOCOL_VIOLATION")
# The Python aio client reports this instead of the server's status when one of its writes fails
# because the server has just ended the stream (grpc/grpc#36066): a client artifact, not a status the
# sidecar sent. The fuzz writes its sentinel right after each message, so it meets it now and then.
_LOST_STATUS = (grpc.StatusCode.INTERNAL, "Internal error from Core")


def _valid_id(value: str) -> bool:
    return 1 <= len(value) <= 128 and set(value) <= _ID_ALPHABET


def _items(message: W.ConnectRequest) -> tuple[str | None, list[Any]]:
    """The message's kind and its batch items (empty for register, drain and an unset oneof)."""
    kind = message.WhichOneof("message")
    if kind in ITEMS:
        return kind, list(getattr(getattr(message, kind), ITEMS[kind][0]))
    return kind, []


def ends_stream(message: W.ConnectRequest, *, first: bool) -> bool:
    """Whether worker_service.proto says this message ends the stream (with a client error).

    A first message ends it unless it is a register (a bad register ends it too:
    see ``may_end``); a later one when it is a second register, an empty message,
    a batch over its bound or a drain whose reason is over 1 KiB.
    """
    kind, items = _items(message)
    if first:
        return kind != "register"
    if kind is None or kind == "register":
        return True
    if kind == "drain":
        return len(message.drain.reason.encode()) > DRAIN_REASON_BYTES
    return len(items) > BATCH_BOUNDS[kind]


def may_end(message: W.ConnectRequest, *, first: bool) -> bool:
    """Whether the stream may end after this message: a first message may be a bad register."""
    return first or ends_stream(message, first=first)


# ---------------------------------------------------------------- one worker stream


class Link:
    """One raw Connect stream: what it received, read by a task of its own, every wait bounded."""

    def __init__(self, world: World, channel: grpc.aio.Channel) -> None:
        self.world = world
        self.stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        self.call: Any = None
        self.registered: W.WorkerRegistered | None = None
        self.acks: list[W.TaskAck] = []
        self.held: dict[tuple[str, str], int] = {}
        self.error: grpc.RpcError | None = None
        self.eof = False
        self.ended = asyncio.Event()
        self._changed = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.call = self.stub.Connect(timeout=STREAM_DEADLINE_S)
        self._pump = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = await self.call.read()
                if message is grpc.aio.EOF:
                    self.eof = True
                    return
                kind = message.WhichOneof("message")
                if kind == "registered":
                    self.registered = message.registered
                elif kind == "assignments":
                    for a in message.assignments.assignments:
                        self.held[(a.workflow_id, a.task_id)] = a.attempt
                elif kind == "acks":
                    self.acks.extend(message.acks.acks)
                elif kind == "cancellations":
                    for c in message.cancellations.cancellations:
                        if self.held.get((c.workflow_id, c.task_id)) == c.attempt:
                            del self.held[(c.workflow_id, c.task_id)]
                self._changed.set()
        except grpc.RpcError as error:
            self.error = error
        except asyncio.CancelledError:
            pass
        finally:
            self.ended.set()
            self._changed.set()

    async def send(self, message: W.ConnectRequest) -> bool:
        """Writes a message; False when the stream is over."""
        if self.ended.is_set():
            return False
        try:
            await asyncio.wait_for(self.call.write(message), WAIT_S)
        except (grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError, RuntimeError, TimeoutError):
            return False
        return True

    async def until(self, done: Callable[[], bool], timeout: float = WAIT_S) -> bool:
        """Waits until ``done()`` (True), the stream ends or ``timeout`` passes (False unless done)."""
        deadline = time.monotonic() + timeout
        while True:
            if done():
                return True
            remaining = deadline - time.monotonic()
            if self.ended.is_set() or remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def close(self) -> bool:
        """Half-closes and waits for the end; True when the stream ended OK."""
        if not self.ended.is_set():
            with contextlib.suppress(
                grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError, RuntimeError, TimeoutError
            ):
                await asyncio.wait_for(self.call.done_writing(), WAIT_S)
        ended = await self.until(self.ended.is_set)
        self.call.cancel()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        return ended and self.eof


# ---------------------------------------------------------------- messages


def _registration(capability: str, workflow_id: str) -> W.WorkerRegistration:
    return W.WorkerRegistration(
        worker_name="fz-stream",
        capabilities=[capability, f"{capability}-spare"],
        max_concurrency=CONCURRENCY,
        identity="fuzz-host:1",
        sdk="fuzz/0.1",
        labels={"fz": "stream"},
        agent_card=agent_pb2.AgentCard(
            agent_id=f"{workflow_id}-agent",
            description="a fuzzed stream worker",
            capabilities=[capability],
            cost_per_call_micro_usd=10,
        ),
    )


def _usage() -> common_pb2.Usage:
    return common_pb2.Usage(input_tokens=3, output_tokens=2, cost_micro_usd=1, llm_calls=1, tool_calls=1)


def _completion(held: tuple[str, str, int]) -> W.TaskCompletion:
    workflow_id, task_id, attempt = held
    output = b'{"ok":1}' if task_id == TASKS[-1] else b'{"ok":true}'
    completion = W.TaskCompletion(
        workflow_id=workflow_id, task_id=task_id, attempt=attempt, output=_json(output), usage=_usage()
    )
    if task_id == TASKS[0]:
        completion.state_patch.merge_patch_json = b'{"p":{"q":1}}'
    return completion


def _failure(held: tuple[str, str, int]) -> W.TaskFailure:
    workflow_id, task_id, attempt = held
    return W.TaskFailure(
        workflow_id=workflow_id,
        task_id=task_id,
        attempt=attempt,
        failure=common_pb2.Failure(
            message="it broke",
            type="Boom",
            kind=common_pb2.FAILURE_KIND_APPLICATION,
            details=_json(b'{"why":1}'),
            cause=common_pb2.Failure(message="root"),
        ),
        usage=_usage(),
        retry_after=_duration(30),
    )


def _heartbeat(held: tuple[str, str, int]) -> W.TaskHeartbeat:
    workflow_id, task_id, attempt = held
    return W.TaskHeartbeat(
        workflow_id=workflow_id, task_id=task_id, attempt=attempt, details=_json(b'{"progress":0.5}')
    )


def _event(held: tuple[str, str, int], kind: event_pb2.EventType) -> event_pb2.ReportedEvent:
    workflow_id, task_id, attempt = held
    return event_pb2.ReportedEvent(
        workflow_id=workflow_id,
        task_id=task_id,
        attempt=attempt,
        event_type=kind,
        name="fz-call",
        usage=_usage(),
        duration=_duration(1.5),
        event_time=_timestamp(),
        attributes={"model": event_pb2.AttributeValue(string_value="m1")},
        span_id="00f067aa0ba902b7",
    )


# ---------------------------------------------------------------- one sequence


@dataclass
class StreamReport(Report):
    """What a stream run did and what it found."""

    sequences: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)


def _reason_name(value: int) -> str:
    try:
        return str(errors_pb2.ErrorReason.Name(value)).removeprefix("ERROR_REASON_")
    except ValueError:
        return str(value)


def _check_end(error: grpc.RpcError | None, message: W.ConnectRequest, *, first: bool) -> list[str]:
    """Problems with the status that ended a stream after ``message`` (a documented client error)."""
    if error is None:
        return ["the stream ended OK (no status) after a message that does not end it"]
    code = error.code()
    if (code, error.details()) == _LOST_STATUS and may_end(message, first=first):
        return []  # the stream was to end here; its status was lost on the client
    if code not in CLIENT_ERRORS:
        return [f"status {code.name}: {error.details()}"]
    rich = error_from_rpc(error)
    problems: list[str] = []
    if not rich.reason:
        problems.append(f"{code.name} without an ErrorInfo reason: {rich.message}")
    if not may_end(message, first=first):
        problems.append(
            f"ended the stream ({code.name} {rich.reason}: {rich.message}) for a per-item problem"
        )
    if code in NAMED_FIELD:
        if not rich.field_violations:
            problems.append(f"{code.name} ({rich.reason}) names no field: {rich.message}")
        problems.extend(
            f"{code.name} names {violation.field!r}, not a ConnectRequest field"
            for violation in rich.field_violations
            if not field_exists(CONNECT, violation.field)
        )
    elif (code, rich.reason) != _PROTOCOL_END and code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        problems.append(f"an undocumented stream end: {code.name} {rich.reason}: {rich.message}")
    return problems


def _check_acks(  # noqa: PLR0912 - one check per way an ack can be wrong
    message: W.ConnectRequest, acks: list[W.TaskAck], sentinel: str
) -> list[str]:
    """Problems with the acks of one message's items (the sentinel's excluded)."""
    kind, items = _items(message)
    problems: list[str] = []
    own = [a for a in acks if a.task_id != sentinel]
    if kind not in ITEMS:
        if own:
            problems.append(f"{len(own)} acks for a {kind} message")
        return problems
    name, subject = ITEMS[kind]
    wrong = [a for a in own if a.subject != subject]
    if wrong:
        problems.append(f"acks of subject {W.AckSubject.Name(wrong[0].subject)} for a {kind} batch")
    if subject in (W.ACK_SUBJECT_COMPLETION, W.ACK_SUBJECT_FAILURE):
        if len(own) != len(items):
            problems.append(f"{len(items)} {name} got {len(own)} acks")
    elif any(a.accepted for a in own):
        problems.append(f"an accepted {kind} item was acknowledged (only refusals are)")
    for ack in own:
        if ack.accepted:
            if ack.reason or ack.message:
                problems.append(f"an accepted ack with reason {_reason_name(ack.reason)}: {ack.message!r}")
            continue
        reason = _reason_name(ack.reason)
        if not 0 < ack.reason < _CLIENT_REASON_MAX:
            problems.append(f"refused with reason {reason}: {ack.message[:200]!r}")
        if ack.reason in FIELD_REASONS:
            path = ack.message.split(": ", 1)[0]
            if not field_exists(CONNECT, path) or not path.startswith(f"{kind}.{name}["):
                problems.append(f"{reason} ack names no field of the message: {ack.message[:200]!r}")
            else:
                index = int(path[len(kind) + len(name) + 2 : path.index("]")])
                if index >= len(items):
                    problems.append(f"{reason} ack names item {index} of {len(items)}: {ack.message[:200]!r}")
    # An id outside the alphabet or an attempt below 1 is refused naming it, as the unary calls do.
    bad = [
        (i, item)
        for i, item in enumerate(items)
        if not _valid_id(item.workflow_id) or not _valid_id(item.task_id) or item.attempt < 1
    ]
    named = [a.message.split(": ", 1)[0] for a in own if not a.accepted and a.reason in FIELD_REASONS]
    for i, item in bad:
        prefix = f"{kind}.{name}[{i}]."
        if not any(path.startswith(prefix) for path in named):
            problems.append(
                f"{prefix[:-1]} (workflow_id {item.workflow_id[:40]!r}, task_id {item.task_id[:40]!r}, "
                f"attempt {item.attempt}) was not refused naming its field"
            )
    return problems


@dataclass
class Sequence:
    """One worker stream's run: a workflow of its own, a registration, messages good and bad."""

    world: World
    rng: random.Random
    report: StreamReport
    label: str
    channel: grpc.aio.Channel
    workflow_id: str = ""
    capability: str = ""
    sentinels: int = 0

    def setup(self) -> None:
        self.workflow_id = self.world.uid("cx")
        self.capability = f"{self.workflow_id}-cap"
        once = common_pb2.RetryPolicy(maximum_attempts=1)
        tasks = [task_pb2.TaskSpec(task_id=t, capability=self.capability, retry_policy=once) for t in TASKS]
        tasks[-1].output_state_pointer = "/out"
        tasks.append(task_pb2.TaskSpec(task_id="tail", capability=NOBODY))
        self.world.submit(self.workflow_id, tasks, initial_state=b'{"out":null,"p":{}}')

    def problem(self, text: str) -> None:
        self.report.problems.append(f"{self.label}: {text}")

    def held(self, link: Link) -> list[tuple[str, str, int]]:
        return sorted((wf, task, attempt) for (wf, task), attempt in link.held.items())

    # -- messages

    def valid(self, link: Link, kind: str) -> W.ConnectRequest:  # noqa: PLR0911 - one message per kind
        """A valid message of ``kind`` over the attempts held (none held: a ping)."""
        held = self.held(link)
        rng = self.rng
        some = rng.sample(held, min(len(held), rng.randint(1, 3))) if held else []
        if kind == "complete" and some:
            return W.ConnectRequest(complete=W.CompletionBatch(completions=[_completion(h) for h in some]))
        if kind == "fail" and some:
            return W.ConnectRequest(fail=W.FailureBatch(failures=[_failure(h) for h in some]))
        if kind == "heartbeat" and some:
            return W.ConnectRequest(heartbeat=W.HeartbeatBatch(heartbeats=[_heartbeat(h) for h in some]))
        if kind == "report_events" and some:
            types = (event_pb2.EVENT_TYPE_LLM_CALL, event_pb2.EVENT_TYPE_TOOL_CALL)
            events = [_event(h, rng.choice(types)) for h in some]
            return W.ConnectRequest(report_events=W.EventBatch(events=events))
        if kind == "register":
            return W.ConnectRequest(register=_registration(self.capability, self.workflow_id))
        if kind == "drain":
            return W.ConnectRequest(drain=W.WorkerDrain(reason="fuzz"))
        return W.ConnectRequest(heartbeat=W.HeartbeatBatch())

    def not_held(self, link: Link) -> tuple[str, str, int]:
        """An attempt nobody holds: a later or earlier attempt, a task of nobody, a finished one."""
        held = self.held(link)
        choice = self.rng.randrange(3)
        if held and choice == 0:
            wf, task, attempt = self.rng.choice(held)
            return wf, task, attempt + self.rng.choice((1, 7, 2**31 - 1 - attempt))
        done = [t for t in TASKS if (self.workflow_id, t) not in link.held]
        if choice == 1 or not done:
            return self.workflow_id, "tail", 1  # pending, never assigned
        return self.workflow_id, self.rng.choice(done), 1  # completed, failed or released

    def bad(self, link: Link) -> tuple[W.ConnectRequest, str]:
        """A bad message and what made it bad."""
        rng = self.rng
        kind = rng.choice(("complete", "complete", "fail", "heartbeat", "report_events", "drain", "ping"))
        message = self.valid(link, kind)
        roll = rng.random()
        if roll < 0.6:
            what = mutate(message, rng, self.world)
            return message, f"{kind} mutated [{'; '.join(what)}]"
        if roll < 0.7:
            return self.valid(link, "register"), "a second register"
        if roll < 0.8:
            item = self.not_held(link)
            builders: dict[str, Callable[[tuple[str, str, int]], Message]] = {
                "complete": _completion,
                "fail": _failure,
                "heartbeat": _heartbeat,
            }
            target = rng.choice(list(builders))
            message = W.ConnectRequest()
            name = ITEMS[target][0]
            getattr(getattr(message, target), name).append(builders[target](item))
            return message, f"{target} of an attempt not held {item}"
        if roll < 0.88:
            target = rng.choice(list(BATCH_BOUNDS))
            bound = BATCH_BOUNDS[target]
            count = rng.choice((0, bound + 1, bound + 1, 2 * bound))
            message = W.ConnectRequest()
            batch = getattr(message, target)
            batch.SetInParent()
            name = ITEMS[target][0]
            item = self.not_held(link)
            makers: dict[str, Callable[[], Message]] = {
                "complete": lambda: _completion(item),
                "fail": lambda: _failure(item),
                "heartbeat": lambda: _heartbeat(item),
                "report_events": lambda: _event(item, event_pb2.EVENT_TYPE_TOOL_CALL),
            }
            one = makers[target]()
            getattr(batch, name).extend([one] * count)
            return message, f"{target} batch of {count}"
        if roll < 0.93:
            return W.ConnectRequest(), "an empty message"
        return (
            W.ConnectRequest(drain=W.WorkerDrain(reason="r" * (DRAIN_REASON_BYTES + rng.choice((1, MiB))))),
            "a drain reason over 1 KiB",
        )

    # -- the run

    async def run(self) -> None:
        self.setup()
        link = Link(self.world, self.channel)
        await link.open()
        try:
            await self._run(link)
        finally:
            ended = link.ended.is_set()  # an end during the run was checked there
            if not await link.close() and not ended:
                error = link.error
                self.problem(
                    f"a half-close did not end the stream OK: {error.code().name if error else 'hung'}"
                )

    async def _run(self, link: Link) -> None:
        rng = self.rng
        first = self.valid(link, "register")
        what = "register"
        roll = rng.random()
        if roll < 0.15:
            what = f"register mutated [{'; '.join(mutate(first, rng, self.world))}]"
        elif roll < 0.2:
            first, what = self.valid(link, rng.choice(("heartbeat", "drain", "complete"))), "no register"
        self.report.kinds[what.split(" [")[0]] += 1
        await link.send(first)
        if not await link.until(lambda: link.registered is not None):
            self._ended(link, first, what, first_message=True)
            return
        if ends_stream(first, first=True):
            self.problem(f"{what}: registered, though the first message was not a register")
        registration = first.register
        if self.capability in registration.capabilities:
            expect = min(CONCURRENCY, max(registration.max_concurrency, 0))
            if not await link.until(lambda: len(link.held) >= expect):
                self.problem(f"{what}: {len(link.held)} of {expect} tasks were assigned")
                if link.ended.is_set():
                    return
        steps = rng.randint(3, 6)
        bad_steps = set(rng.sample(range(steps), rng.choice((1, 1, 2))))
        for step in range(steps):
            if step in bad_steps:
                message, what = self.bad(link)
                bad = True
            else:
                kind = rng.choice(("heartbeat", "heartbeat", "report_events", "ping", "complete"))
                message, what, bad = self.valid(link, kind), f"valid {kind}", False
            self.report.kinds[what.split(" [")[0].split(" of ")[0]] += 1
            if VERBOSE and ONLY:
                print(f"{self.label} step {step}: {what}: {str(message)[:300]!r}")
            if not await self._step(link, message, f"step {step} {what}", checked=bad):
                return

    def _ended(self, link: Link, message: W.ConnectRequest, what: str, *, first_message: bool) -> None:
        if not link.ended.is_set():
            self.problem(f"{what}: no answer within {WAIT_S:g} s")
            return
        self.report.outcomes[link.error.code().name if link.error else "EOF"] += 1
        for p in _check_end(link.error, message, first=first_message):
            self.problem(f"{what}: {p}")

    async def _step(  # noqa: PLR0912 - send, wait, then each check in turn
        self, link: Link, message: W.ConnectRequest, what: str, *, checked: bool
    ) -> bool:
        """Sends one message and checks its answers; False when the stream is over."""
        world = self.world
        kind, items = _items(message)
        before: dict[str, Any] = {}
        if checked:
            world.sync_head()
            before = {"workflow": world.probe_workflow(self.workflow_id)}
        held_before = dict(link.held)
        start = len(link.acks)
        self.sentinels += 1
        sentinel = f"fz-sentinel-{self.sentinels}"
        ping = W.TaskHeartbeat(workflow_id=self.workflow_id, task_id=sentinel, attempt=1)
        await link.send(message)
        await link.send(W.ConnectRequest(heartbeat=W.HeartbeatBatch(heartbeats=[ping])))
        owed = len(items) if kind in ("complete", "fail") and len(items) <= BATCH_BOUNDS[kind] else 0

        def answered() -> bool:
            acks = link.acks[start:]
            return (
                any(a.task_id == sentinel for a in acks) and sum(a.task_id != sentinel for a in acks) >= owed
            )

        if not await link.until(answered):
            if link.ended.is_set():
                self._ended(link, message, what, first_message=False)
            else:
                self.problem(f"{what}: its answers did not come within {WAIT_S:g} s")
            return False
        if ends_stream(message, first=False):
            self.problem(f"{what}: the stream carried on after a message that ends it")
        acks = link.acks[start:]
        for p in _check_acks(message, acks, sentinel):
            self.problem(f"{what}: {p}")
        refused = [a for a in acks if not a.accepted and a.task_id != sentinel]
        accepted = [a for a in acks if a.accepted]
        self.report.outcomes["refused"] += len(refused)
        self.report.outcomes["accepted"] += len(accepted)
        if not checked:
            return True
        if kind in ITEMS and len(refused) < len(items):
            return True  # some items were recorded
        if kind in ("drain", "register"):
            return True
        # Every item was refused: each attempt that was held still is, and nothing changed.
        for ack in refused:
            key = (ack.workflow_id, ack.task_id)
            if held_before.get(key) == ack.attempt and link.held.get(key) != ack.attempt:
                self.problem(f"{what}: refused {key} attempt {ack.attempt}, and it is no longer held")
        after = {"workflow": world.probe_workflow(self.workflow_id)}
        changed = _changed(before, after)
        if changed:
            self.problem(f"{what}: every item refused, but changed {changed}")
        events = [
            e for e in world.sync_head() if e.event_type in CALL_EVENTS or e.workflow_id == self.workflow_id
        ]
        if events:
            kinds = sorted({event_pb2.EventType.Name(e.event_type) for e in events})
            self.problem(f"{what}: every item refused, but recorded {kinds}")
        return True


async def still_serves(world: World, channel: grpc.aio.Channel) -> list[str]:
    """Problems, if any, of a health check and a normal worker taking and completing one task."""
    health = world.health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
    if health.status != health_pb2.HealthCheckResponse.SERVING:
        return [f"health is {health.status}"]
    workflow_id = world.uid("ok")
    capability = f"{workflow_id}-cap"
    world.submit(workflow_id, [task_pb2.TaskSpec(task_id="only", capability=capability)])
    link = Link(world, channel)
    await link.open()
    try:
        registration = W.WorkerRegistration(
            worker_name="fz-normal", capabilities=[capability], max_concurrency=1
        )
        await link.send(W.ConnectRequest(register=registration))
        if not await link.until(lambda: bool(link.held)):
            return [f"a normal worker got no task ({link.error.code().name if link.error else 'no error'})"]
        (attempt,) = link.held.values()
        done = W.TaskCompletion(workflow_id=workflow_id, task_id="only", attempt=attempt, output=_json(b"1"))
        await link.send(W.ConnectRequest(complete=W.CompletionBatch(completions=[done])))
        if not await link.until(lambda: bool(link.acks)) or not link.acks[0].accepted:
            return [f"a normal worker's completion was not accepted: {link.acks[:1]}"]
    finally:
        ended_ok = await link.close()
    if not ended_ok:
        return [f"a normal worker's stream did not end OK: {link.error}"]
    return []


async def run_connect_fuzz(world: World, target: str, seed: int, count: int, seconds: float) -> StreamReport:
    """Runs up to ``count`` worker stream sequences in ``seconds``, checking the sidecar serves after each."""
    rng = random.Random(seed)
    report = StreamReport()
    options = [("grpc.max_receive_message_length", 64 * MiB), ("grpc.max_send_message_length", 64 * MiB)]
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        for i in range(count):
            if time.monotonic() > deadline:
                break
            label = f"seed={seed} sequence={i}"
            sequence = Sequence(world, random.Random(rng.getrandbits(64)), report, label, channel)
            if ONLY and i not in ONLY:
                continue
            report.sequences += 1
            await sequence.run()
            report.problems.extend(f"{label}: {p}" for p in await still_serves(world, channel))
    return report


# ---------------------------------------------------------------- server streams


def _watch(world: World, rng: random.Random) -> Message:
    request = scheduler_service_pb2.WatchWorkflowRequest(
        workflow_id=rng.choice((world.main, world.running("watch"))), include_tasks=rng.random() < 0.5
    )
    if rng.random() < 0.5:
        request.after_sequence = max(world.head - rng.randrange(20), 0)
    return request


def _stream_events(world: World, rng: random.Random) -> Message:
    request = trace_service_pb2.StreamEventsRequest(filter=_event_filter(world))
    if rng.random() < 0.7:
        request.after_sequence = max(world.head - rng.randrange(50), 0)
    return request


SERVER_STREAMS = (
    Rpc("scheduler", "WatchWorkflow", _watch, timeout=SERVER_STREAM_S),
    Rpc("trace", "StreamEvents", _stream_events, timeout=SERVER_STREAM_S),
)


def _open_server_stream(world: World, rpc: Rpc, request: Message) -> Any:
    """The open call: grpc's (untyped) stream that yields the responses and can be cancelled."""
    stub = world.scheduler if rpc.service == "scheduler" else world.trace
    return getattr(stub, rpc.method)(request, timeout=rpc.timeout)


def run_server_stream_fuzz(world: World, seed: int, count: int, seconds: float) -> StreamReport:
    """Opens ``count`` mutated watch and event streams; each runs or ends with a client error."""
    rng = random.Random(seed)
    report = StreamReport()
    deadline = time.monotonic() + seconds
    world.sync_head()
    for i in range(count):
        if time.monotonic() > deadline:
            break
        rpc = SERVER_STREAMS[i % len(SERVER_STREAMS)]
        request = rpc.build(world, rng)
        what = mutate(request, rng, world) if i >= len(SERVER_STREAMS) else ["(the valid request)"]
        assert request.ByteSize() <= MAX_REQUEST_BYTES
        where = f"seed={seed} stream={i} {rpc.name} [{'; '.join(what)}]"
        report.calls[rpc.name] += 1
        call = _open_server_stream(world, rpc, request)
        try:
            next(iter(call), None)
            report.codes["OK"] += 1
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                report.codes["RUNNING"] += 1  # nothing yet to send: it runs
                continue
            report.codes[error.code().name] += 1
            problems, _ = _check_error(rpc, request, error)
            report.problems.extend(f"{where}: {p}" for p in problems)
            if i < len(SERVER_STREAMS):
                report.problems.append(f"{where}: the valid request failed: {error.code().name}")
        finally:
            call.cancel()
    return report


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def stream_sidecar() -> Iterator[SidecarProcess]:
    """A sidecar of its own: the fuzz leaves workers' cards, failed tasks and odd events behind."""
    with SidecarProcess.start() as process:
        yield process


@pytest.fixture(scope="module")
def world(stream_sidecar: SidecarProcess) -> Iterator[World]:
    options = [("grpc.max_receive_message_length", 64 * MiB), ("grpc.max_send_message_length", 64 * MiB)]
    with grpc.insecure_channel(stream_sidecar.target, options=options) as channel:
        yield World(channel)


def _print(name: str, report: StreamReport) -> None:
    if VERBOSE:
        print(f"\n{name} seed {SEED}: {report.sequences} sequences, {sum(report.calls.values())} calls")
        print("kinds:", dict(report.kinds.most_common()))
        print("outcomes:", dict(report.outcomes.most_common()), "codes:", dict(report.codes.most_common()))


async def test_worker_stream_fuzz(world: World, stream_sidecar: SidecarProcess) -> None:
    report = await run_connect_fuzz(world, stream_sidecar.target, SEED, COUNT, SECONDS)
    _print("Connect", report)
    assert stream_sidecar.returncode is None, "the sidecar exited"
    assert report.sequences >= min(COUNT, 5), report.sequences
    assert not report.problems, "\n".join(report.problems[:50])


def test_server_stream_fuzz(world: World, stream_sidecar: SidecarProcess) -> None:
    report = run_server_stream_fuzz(world, SEED, 2 * COUNT, SECONDS)
    _print("WatchWorkflow/StreamEvents", report)
    assert stream_sidecar.returncode is None, "the sidecar exited"
    assert all(report.calls[rpc.name] >= 2 for rpc in SERVER_STREAMS), report.calls
    assert not report.problems, "\n".join(report.problems[:50])


# ---------------------------------------------------------------- regressions found by the fuzz


async def _held_link(world: World, channel: grpc.aio.Channel) -> tuple[Link, str]:
    """A registered worker stream holding task ``t0`` of a new workflow; and that workflow."""
    workflow_id = world.uid("rg")
    capability = f"{workflow_id}-cap"
    world.submit(
        workflow_id,
        [
            task_pb2.TaskSpec(task_id="t0", capability=capability),
            task_pb2.TaskSpec(task_id="tail", capability=NOBODY),
        ],
    )
    link = Link(world, channel)
    await link.open()
    registration = W.WorkerRegistration(
        worker_name="fz-regression", capabilities=[capability], max_concurrency=1
    )
    await link.send(W.ConnectRequest(register=registration))
    assert await link.until(lambda: bool(link.held)), link.error
    return link, workflow_id


def _aio_channel(sidecar: SidecarProcess) -> grpc.aio.Channel:
    options = [("grpc.max_receive_message_length", 64 * MiB), ("grpc.max_send_message_length", 64 * MiB)]
    return grpc.aio.insecure_channel(sidecar.target, options=options)


async def test_stream_items_with_bad_ids_are_refused_naming_the_field(
    world: World, stream_sidecar: SidecarProcess
) -> None:
    """Ids outside the alphabet and attempts below 1 are refused as the unary calls refuse them.

    The stream used to look them up (WORKFLOW_NOT_FOUND, TASK_NOT_HELD), and
    every ack echoed the ids in full: 20 completions naming a 1 MiB workflow
    id were answered by an ack batch of over 40 MiB.
    """
    async with _aio_channel(stream_sidecar) as channel:
        link, workflow_id = await _held_link(world, channel)
        ((_, task_id), attempt), *_ = link.held.items()
        huge = "w" * MiB
        bad = [W.TaskCompletion(workflow_id=huge, task_id=task_id, attempt=attempt) for _ in range(20)]
        bad.append(W.TaskCompletion(workflow_id=workflow_id, task_id=task_id, attempt=0))
        bad.append(W.TaskCompletion(workflow_id=workflow_id, task_id="bad id!", attempt=attempt))
        before = world.probe_workflow(workflow_id)
        await link.send(W.ConnectRequest(complete=W.CompletionBatch(completions=bad)))
        assert await link.until(lambda: len(link.acks) >= len(bad)), link.error
        paths = [ack.message.split(": ", 1)[0] for ack in link.acks]
        assert [ack.reason for ack in link.acks] == [errors_pb2.ERROR_REASON_INVALID_ARGUMENT] * len(bad)
        assert paths == [f"complete.completions[{i}].workflow_id" for i in range(20)] + [
            "complete.completions[20].attempt",
            "complete.completions[21].task_id",
        ]
        assert all(len(ack.workflow_id) <= 128 and len(ack.message) <= 1024 for ack in link.acks)
        assert world.probe_workflow(workflow_id) == before
        assert link.held == {(workflow_id, task_id): attempt}
        heartbeat = W.TaskHeartbeat(workflow_id=workflow_id, task_id=task_id, attempt=-1)
        event = event_pb2.ReportedEvent(
            workflow_id=huge, task_id=task_id, attempt=attempt, event_type=event_pb2.EVENT_TYPE_TOOL_CALL
        )
        await link.send(W.ConnectRequest(heartbeat=W.HeartbeatBatch(heartbeats=[heartbeat])))
        await link.send(W.ConnectRequest(report_events=W.EventBatch(events=[event])))
        assert await link.until(lambda: len(link.acks) >= len(bad) + 2), link.error
        assert [ack.message.split(": ", 1)[0] for ack in link.acks[len(bad) :]] == [
            "heartbeat.heartbeats[0].attempt",
            "report_events.events[0].workflow_id",
        ]
        assert await link.close()


@pytest.mark.parametrize(
    ("message", "reason", "path"),
    [
        (W.ConnectRequest(), "INVALID_ARGUMENT", "message"),
        (
            W.ConnectRequest(heartbeat=W.HeartbeatBatch(heartbeats=[W.TaskHeartbeat()] * 10_001)),
            "LIMIT_EXCEEDED",
            "heartbeat.heartbeats",
        ),
        (
            W.ConnectRequest(complete=W.CompletionBatch(completions=[W.TaskCompletion()] * 1001)),
            "LIMIT_EXCEEDED",
            "complete.completions",
        ),
        (W.ConnectRequest(drain=W.WorkerDrain(reason="r" * 1025)), "LIMIT_EXCEEDED", "drain.reason"),
    ],
    ids=["empty", "heartbeats", "completions", "drain-reason"],
)
async def test_a_bad_stream_message_ends_the_stream_naming_the_field(
    world: World, stream_sidecar: SidecarProcess, message: W.ConnectRequest, reason: str, path: str
) -> None:
    """An empty message, a batch over its bound or a drain reason over 1 KiB: INVALID_ARGUMENT naming it.

    They used to be ignored (an empty message), or applied whatever their size
    (a batch of 10,001 heartbeats was answered by 10,001 acks), and the
    worker was never told.
    """
    async with _aio_channel(stream_sidecar) as channel:
        link, _ = await _held_link(world, channel)
        await link.send(message)
        assert await link.until(link.ended.is_set), "the stream carried on"
        assert link.error is not None
        assert link.error.code() == grpc.StatusCode.INVALID_ARGUMENT
        rich = error_from_rpc(link.error)
        assert rich.reason == reason
        assert [v.field for v in rich.field_violations] == [path]
        assert not link.acks
        await link.close()
        assert await still_serves(world, channel) == []


async def test_empty_batches_change_nothing_and_carry_on(
    world: World, stream_sidecar: SidecarProcess
) -> None:
    """An empty completion, failure or event batch is answered by nothing (worker_service.proto)."""
    async with _aio_channel(stream_sidecar) as channel:
        link, workflow_id = await _held_link(world, channel)
        before = world.probe_workflow(workflow_id)
        for kind in ("complete", "fail", "report_events", "heartbeat"):
            message = W.ConnectRequest()
            getattr(message, kind).SetInParent()
            assert await link.send(message)
        ping = W.TaskHeartbeat(workflow_id=workflow_id, task_id="nothing", attempt=1)
        await link.send(W.ConnectRequest(heartbeat=W.HeartbeatBatch(heartbeats=[ping])))
        assert await link.until(lambda: bool(link.acks)), link.error
        assert [ack.task_id for ack in link.acks] == ["nothing"]
        assert world.probe_workflow(workflow_id) == before
        assert await link.close()


def test_a_watch_from_beyond_the_log_is_refused(world: World) -> None:
    """A resume cursor beyond the event log is OUT_OF_RANGE, as for StreamEvents.

    It used to be accepted and every change up to it skipped, the close
    included: the watch never ended.
    """
    world.sync_head()
    request = scheduler_service_pb2.WatchWorkflowRequest(
        workflow_id=world.main, after_sequence=world.head + 1000
    )
    for include_tasks in (False, True):
        request.include_tasks = include_tasks
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(world.scheduler.WatchWorkflow(request, timeout=WAIT_S)))
        assert raised.value.code() == grpc.StatusCode.OUT_OF_RANGE
        rich = error_from_rpc(raised.value)
        assert rich.reason == "SEQUENCE_BEYOND_LOG"
        assert [v.field for v in rich.field_violations] == ["after_sequence"]
    request.after_sequence = world.head
    with pytest.raises(grpc.RpcError) as raised:  # the end of the log is a good cursor: nothing new yet
        next(iter(world.scheduler.WatchWorkflow(request, timeout=SERVER_STREAM_S)))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
