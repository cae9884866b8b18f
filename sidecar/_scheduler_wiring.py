"""How the scheduler reaches the state, router and cache capabilities.

Each integration is found once with ``runtime.find`` when the scheduler is
constructed; a missing capability leaves its feature off (the spec field
that needs it is refused with UNIMPLEMENTED, reason NOT_IMPLEMENTED). The
hooks below are installed on the engines, so a task that uses none of
``intent``, ``cache_key`` or ``output_state_pointer`` never reaches them.

* **State.** SubmitWorkflow stages ``initial_state`` as version 1 (with the
  workflow's ``state_retention``) in the submit's own batch; a completion
  carrying a ``state_patch`` or completing a task with an
  ``output_state_pointer`` stages that write in the completion's batch,
  under the document's patch lock, so the state version and the completion
  are one commit. The state service's writes are gated on the scheduler's
  view of the workflow (unknown: WORKFLOW_NOT_FOUND; closed: WORKFLOW_CLOSED;
  a named attempt not held: TASK_NOT_HELD). ForkWorkflow's hook creates the
  new workflow's tasks; DeleteWorkflow removes the document, memory and
  blobs.
* **Router.** A task's ``intent`` is routed when the task is scheduled
  (cost-biased, the router's defaults, preferring a class served then) and
  recorded as TASK_ROUTED; stream workers appear in the router with their
  capabilities and live load, and become unavailable the moment they drain
  or disconnect. "Served" is ``Scheduler.serves``: a stream worker taking
  work (the router's ``serves``) or unary polls lately (a poll for the
  capability waiting, an attempt held by a poll worker that polled for it
  while that worker heartbeats, or the last of those ended within the
  grace, at least a second). Unary
  polls are not declared to the router (they come and go each call, and
  carry no card); the route hook passes ``Scheduler.serves`` to
  ``route_for_intent`` instead, so a class served only by pollers counts.
  While an intent task waits in a queue it is routed again each time a
  capability gains its first or loses its last stream worker, or gains its
  first poll while nothing served it (``Scheduler.served_changed``), or its
  pollers stopped a grace ago: it moves to a class served then, recorded
  as another TASK_ROUTED with ``are.route.rerouted`` and
  ``are.route.previous_capability``; only once its own class has gone
  unserved for ``router_reroute_grace_s`` (a class restarting, or not yet
  back after the sidecar's restart, keeps its tasks).
* **Cache.** A task's ``cache_key`` is looked up when the task is scheduled
  (``CacheEngine.lookup_for_task``; the exact tier alone when the key is
  ``exact_only``); a hit completes it without dispatch
  (TASK_CACHE_HIT), a miss dispatches it (TASK_CACHE_MISS) and, unless
  ``read_only``, its output is stored after the durable completion. The
  cache's own events of these name the task: the lookup's CACHE_HIT or
  CACHE_MISS its workflow and task (recorded before the TASK_CACHE_* event
  it leads to), the store's CACHE_STORED also the attempt that completed it
  and that attempt's span.
* **Blobs** (with the state service). A payload may be a blob reference:
  :meth:`Wiring.check_blobs` and :meth:`Wiring.output_blob` check that the
  blob exists (BLOB_NOT_FOUND naming the field) and that a given size
  matches, and fill in the size and media type from the store. The
  engine's ``stage_blob_reference`` hook stages the workflow's reference
  to each blob a task payload names (submit, spawn, completion, cache hit,
  fork) in the very batch that stores the payload
  (``BlobStore.stage_reference``), so a crash keeps both or neither; the
  check and the staging happen in one loop step (the blob store's rule).
  A blob is thus kept while any workflow whose tasks name it exists, and
  DeleteWorkflow releases the workflow's references. A cache-keyed task's
  blob output is stored in the cache as a blob response; a hit holding a
  blob completes the task with the reference (a hit whose blob is gone is
  a miss).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

from are_core import state as st
from are_core.router import AgentSpec
from are_core.scheduler import (
    CACHE_BLOB_SHA256,
    CACHE_BLOB_SIZE,
    CACHE_ENTRY_ID,
    CACHE_SAVED_COST,
    CACHE_SAVED_INPUT_TOKENS,
    CACHE_SAVED_OUTPUT_TOKENS,
    CACHE_SAVED_TOKENS,
    CacheKey,
    NotImplementedFieldError,
    OpenWorkLimitError,
    RoutingError,
    Scheduler,
    SpecError,
    TaskOrigin,
    TaskRecord,
    TaskSpec,
    Usage,
    WorkerHandle,
    WorkflowExistsError,
)
from are_core.scheduler import BlobNotFoundError as BlobMissingError
from are_core.scheduler import SchedulerError as _SchedulerError
from are_core.storage import Batch
from are_core.trace import EventRecorder
from are_sdk._proto.are.v1 import common_pb2, state_pb2, workflow_pb2
from sidecar import _conventions as conventions
from sidecar._cache import CacheCapability
from sidecar._capability import Runtime
from sidecar._router import InvalidFieldError, RouterCapability, agent_spec_from_card
from sidecar._scheduler_convert import BlobPayload, blob_from_proto, is_json_content_type
from sidecar._state import ForkPlan, StateCapability

__all__ = [
    "StateWrite",
    "Wiring",
    "initial_state_from_proto",
    "patch_from_proto",
    "retention_from_proto",
    "state_spec_error",
]

_log = logging.getLogger("are.scheduler")
_OPEN = frozenset({"RUNNING", "CANCELLING"})
_STORE_TIMEOUT_S = 30.0


class StateWrite(msgspec.Struct, frozen=True, kw_only=True):
    """A completion's state write: its patch (one form or none) and the output pointer write."""

    merge_patch: bytes | None = None
    operations: list[st.PatchOp] | None = None
    pointer: str = ""


def patch_from_proto(patch: state_pb2.StatePatch, field: str) -> tuple[bytes | None, list[st.PatchOp] | None]:
    """A StatePatch as the state engine takes it; raises SpecError naming the field."""
    kind = patch.WhichOneof("patch")
    if kind == "merge_patch_json":
        return patch.merge_patch_json, None
    if kind != "operations":
        raise SpecError("INVALID_ARGUMENT", field, "set merge_patch_json or operations")
    operations: list[st.PatchOp] = []
    for i, op in enumerate(patch.operations.operations):
        if op.op == state_pb2.PATCH_OPERATION_TYPE_SET:
            operations.append(st.PatchOp("set", op.path, op.value_json))
        elif op.op == state_pb2.PATCH_OPERATION_TYPE_REMOVE:
            operations.append(st.PatchOp("remove", op.path))
        else:
            raise SpecError(
                "INVALID_ARGUMENT", f"{field}.operations.operations[{i}].op", "op must be SET or REMOVE"
            )
    return None, operations


def retention_from_proto(spec: workflow_pb2.WorkflowSpec) -> st.Retention | None:
    """The workflow's own state retention, or None for the sidecar default."""
    if not spec.HasField("state_retention"):
        return None
    retention = spec.state_retention
    if retention.keep_versions < 0:
        raise SpecError("INVALID_ARGUMENT", "spec.state_retention.keep_versions", "must not be negative")
    keep_s = -1.0
    if retention.HasField("keep_duration"):
        problem = conventions.duration_problem(retention.keep_duration)
        if problem is not None:
            raise SpecError("INVALID_ARGUMENT", "spec.state_retention.keep_duration", problem)
        keep_s = retention.keep_duration.ToNanoseconds() / 1e9
        if keep_s < 0:
            raise SpecError("INVALID_ARGUMENT", "spec.state_retention.keep_duration", "must not be negative")
    return st.Retention(keep_versions=retention.keep_versions, keep_seconds=keep_s)


_INITIAL_STATE = "spec.initial_state"


def initial_state_from_proto(spec: workflow_pb2.WorkflowSpec) -> bytes | BlobPayload:
    """The initial state document's JSON text (b"" for ``{}``), or its blob reference, shape-checked.

    workflow.proto: a JSON object of at most 16 MiB (a document's bound, this
    field's own: inline, or by blob reference as any Payload). Its content type
    must be JSON (common.proto Payload: the sidecar parses only JSON). Raises
    SpecError naming the field; a blob is read by :meth:`Wiring.stage_initial`.
    """
    if not spec.HasField("initial_state"):
        return b""
    payload: common_pb2.Payload = spec.initial_state
    if payload.WhichOneof("content") == "blob":
        blob = blob_from_proto(payload, _INITIAL_STATE)
        _check_json_type(payload.content_type or payload.blob.content_type, f"{_INITIAL_STATE}.content_type")
        return blob
    problem = conventions.content_type_problem(payload.content_type)
    if problem is not None:
        raise SpecError(
            "LIMIT_EXCEEDED",
            f"{_INITIAL_STATE}.content_type",
            problem,
            limit=conventions.CONTENT_TYPE_CHARS,
        )
    _check_json_type(payload.content_type, f"{_INITIAL_STATE}.content_type")
    if len(payload.data) > st.MAX_DOCUMENT_BYTES:
        raise SpecError(
            "LIMIT_EXCEEDED",
            f"{_INITIAL_STATE}.data",
            f"the initial state is {len(payload.data):,} bytes; at most {st.MAX_DOCUMENT_BYTES:,} (16 MiB)",
            limit=st.MAX_DOCUMENT_BYTES,
        )
    return payload.data


def _check_json_type(content_type: str, field: str) -> None:
    """Refuses a content type that is not JSON (empty, application/json or ``*+json``), naming ``field``."""
    if not is_json_content_type(content_type):
        raise SpecError(
            "INVALID_ARGUMENT",
            field,
            f"the initial state is a JSON object: its content type must be JSON, got {content_type[:130]!r}",
        )


def state_spec_error(error: st.StateError, field: str) -> SpecError:
    """A state engine refusal of a submit's or completion's write, as a SpecError on ``field``."""
    if isinstance(error, st.PatchNotApplicableError):
        reason = "PATCH_NOT_APPLICABLE"
    elif isinstance(error, st.InvalidJsonError):
        reason = "INVALID_JSON"
    elif isinstance(error, st.InvalidPointerError):
        reason = "INVALID_JSON_POINTER"
    elif isinstance(error, st.LimitExceededError):
        reason = "LIMIT_EXCEEDED"
    else:
        reason = "INVALID_ARGUMENT"
    limit = error.limit if isinstance(error, st.LimitExceededError) and error.limit else None
    return SpecError(reason, field, error.message, limit=limit)


def _output_error(error: SpecError, inner: str, *, alone: bool) -> SpecError:
    """A refused output pointer write, its message speaking of the output, not of the patch it became.

    The state engine writes the output as one more patch operation, and names
    that operation (``operations.operations[0].value_json is not valid JSON``);
    the worker sent an output, and is told about it.
    """
    message = error.message
    if inner and message.startswith(inner):
        message = "the output" + message[len(inner) :]
    elif message.startswith("the operations are"):  # the bound on one patch's JSON text
        what = "the output and its pointer are" if alone else "the state patch and the output are"
        message = what + message[len("the operations are") :]
    if message == error.message:
        return error
    return SpecError(error.reason, error.field, message, limit=error.limit)


class Wiring:
    """The scheduler's view of the other capabilities, and the hooks it installs on them."""

    def __init__(self, runtime: Runtime, engine: Scheduler) -> None:
        self.engine = engine
        self.max_message_bytes = runtime.config.max_message_bytes
        self.state = runtime.find(StateCapability)
        self.router = runtime.find(RouterCapability)
        self.cache = runtime.find(CacheCapability)
        features = set()
        if self.state is not None:
            features.add("state")
            features.add("blobs")
            self.state.gate = self.gate
            self.state.attempt_span = self.engine.attempt_span_id
            self.state.fork_hook = self.fork
            self.state.fork_check = self.check_fork
            engine.stage_blob_reference = self.stage_blob_reference
        # The cards stream workers declared at registration, by worker id
        # (bounded by the connected workers; dropped when one disconnects).
        self._cards: dict[str, AgentSpec] = {}
        if self.router is not None:
            features.add("intent")
            engine.route = self.route
            engine.capability_served = self.router.engine.serves
            engine.reroute_grace_s = runtime.config.router_reroute_grace_s
            engine.worker_changed = self.worker_changed
        if self.cache is not None:
            features.add("cache")
            engine.cache_lookup = self.cache_lookup
            engine.cache_store = self.cache_store
        self.features = frozenset(features)
        events = runtime.events
        self.recorder = events if isinstance(events, EventRecorder) else None
        """The flight recorder, for WatchWorkflow's per-change stream (None: coalesced only)."""
        self._stores: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ state

    def stage_initial(self, initial: bytes | BlobPayload, retention: st.Retention | None) -> Any:
        """The submit's stage hook writing state version 1 (None without a state service).

        An initial state given by blob reference is read now (the blob must
        exist: BLOB_NOT_FOUND naming ``spec.initial_state.blob``); its content
        is copied into the document, which keeps no reference to it.
        """
        state = self.state
        if state is None:
            if isinstance(initial, BlobPayload):
                raise NotImplementedFieldError(
                    f"{_INITIAL_STATE}.blob", f"{_INITIAL_STATE}.blob: this sidecar has no blob store"
                )
            return None
        document = initial if isinstance(initial, bytes) else self._initial_blob(initial)

        def stage(batch: Batch, workflow_id: str) -> Callable[[], None]:
            deferred: list[Callable[[], None]] = []
            try:
                state.engine.stage_initial(
                    batch, workflow_id, document, retention=retention, deferred=deferred
                )
            except st.VersionMismatchError:
                raise WorkflowExistsError(f"workflow {workflow_id!r} already has a state document") from None
            except st.StateError as error:
                field = f"{_INITIAL_STATE}.{'data' if isinstance(initial, bytes) else 'blob'}"
                raise state_spec_error(error, field) from None
            (record,) = deferred
            return record  # its STATE_PATCHED, recorded after the submit's WORKFLOW_SUBMITTED

        return stage

    def _initial_blob(self, blob: BlobPayload) -> bytes:
        """The content of an initial state's blob, at most a document's bound; raises naming the field."""
        assert self.state is not None
        size, _ = self._stat(blob, _INITIAL_STATE)
        if size > st.MAX_DOCUMENT_BYTES:
            raise SpecError(
                "LIMIT_EXCEEDED",
                f"{_INITIAL_STATE}.blob",
                f"the blob is {size:,} bytes; an initial state is at most {st.MAX_DOCUMENT_BYTES:,} (16 MiB)",
                limit=st.MAX_DOCUMENT_BYTES,
            )
        try:
            _, chunks = self.state.blobs.read(bytes.fromhex(blob.sha256))
            return b"".join(chunk for _, chunk in chunks)
        except st.BlobNotFoundError:  # deleted since the stat (or a chunk is gone)
            raise BlobMissingError(f"{_INITIAL_STATE}.blob", f"no blob has digest {blob.sha256}") from None

    def state_version(self, workflow_id: str) -> int:
        """The latest version of the workflow's state document (0: none or no state service)."""
        if self.state is None:
            return 0
        head = self.state.engine.head(workflow_id)
        return head.latest_version if head is not None else 0

    async def complete_with_state(
        self,
        workflow_id: str,
        task_id: str,
        attempt: int,
        *,
        output: bytes,
        content_type: str,
        usage: Usage | None,
        write: StateWrite,
        field: str,
        blob_sha256: str = "",
        blob_size: int = 0,
    ) -> int:
        """Completes an attempt and applies its state write in one commit; returns the new version.

        Raises SchedulerError (nothing recorded) for a refused completion or write.
        """
        state = self.state
        assert state is not None
        versions: list[int] = []
        then: Sequence[st.PatchOp] = ()
        if write.pointer:
            then = (st.PatchOp("set", write.pointer, output),)

        def stage(batch: Batch, spec: TaskSpec) -> None:  # noqa: ARG001 - the hook's signature
            if blob_sha256 and state.blobs.stat(bytes.fromhex(blob_sha256)) is None:
                # Checked again in the step that stages its reference (the patch lock was awaited).
                raise BlobMissingError(f"{field}.output.blob", f"no blob has digest {blob_sha256}")
            merge, operations = write.merge_patch, write.operations
            extra = then
            if merge is None and operations is None:
                operations, extra = list(then), ()
            elif operations is not None and then:
                operations, extra = [*operations, *then], ()
            try:
                result = state.engine.stage_patch(
                    batch,
                    workflow_id,
                    merge_patch=merge,
                    operations=operations,
                    writer=f"task:{task_id}",
                    task_id=task_id,
                    attempt=attempt,
                    span_id=self.engine.attempt_span_id(workflow_id, task_id, attempt),
                    then_operations=extra,
                )
            except st.StateError as error:
                raise self._write_error(error, write, field) from None
            versions.append(result.version)

        async with state.engine.locked(workflow_id):
            durable = self.engine.complete(
                workflow_id,
                task_id,
                attempt,
                output=output,
                content_type=content_type,
                usage=usage,
                stage=stage,
                blob_sha256=blob_sha256,
                blob_size=blob_size,
            )
            await asyncio.shield(durable)  # shared by the commit's other callers
        return versions[0]

    @staticmethod
    def _write_error(error: st.StateError, write: StateWrite, field: str) -> SpecError:
        """Names the completion's field at fault: its state_patch, or its output (the pointer write)."""
        inner = error.field or ""
        if write.pointer:
            if write.merge_patch is None and write.operations is None:
                pointer_write = True
            elif write.operations is not None:
                pointer_write = inner.startswith(f"operations.operations[{len(write.operations)}]")
            else:
                pointer_write = inner.startswith("operations")
            if pointer_write or not inner:
                alone = write.merge_patch is None and write.operations is None
                return _output_error(state_spec_error(error, f"{field}.output.data"), inner, alone=alone)
        return state_spec_error(error, f"{field}.state_patch.{inner}".rstrip("."))

    def gate(self, operation: str, workflow_id: str, task_id: str, attempt: int) -> None:
        """StateService's write gate: known workflows only, open ones for patches, held attempts."""
        status = self.engine.workflow_state(workflow_id)
        if status is None:
            raise st.WorkflowNotFoundError(
                f"workflow {workflow_id!r} does not exist", field="workflow_id", workflow_id=workflow_id
            )
        if operation != "patch":
            return
        if status not in _OPEN:
            raise st.WorkflowClosedError(
                f"workflow {workflow_id!r} is {status}", field="workflow_id", workflow_id=workflow_id
            )
        if task_id:
            try:
                self.engine.check_held(workflow_id, task_id, attempt)
            except _SchedulerError as error:
                raise st.TaskNotHeldError(
                    str(error), field="task_id", workflow_id=workflow_id, task_id=task_id, attempt=attempt
                ) from None

    def check_fork(self, source_id: str, new_id: str, rerun_task_ids: tuple[str, ...]) -> None:
        """ForkWorkflow's check, before any copy: raises what :meth:`fork` would."""
        with _fork_errors():
            self.engine.check_fork(source_id, new_id, rerun_task_ids)

    async def fork(self, plan: ForkPlan) -> None:
        """ForkWorkflow's hook: the new workflow's tasks as of the checkpoint."""
        with _fork_errors():
            await self.engine.fork(
                plan.source_workflow_id,
                plan.workflow_id,
                cutoff_ns=plan.source_time_ns,
                rerun_task_ids=plan.rerun_task_ids,
                labels=plan.labels,
                source_version=plan.source_version,
            )

    def deleting(self, workflow_id: str) -> contextlib.AbstractContextManager[None]:
        """DeleteWorkflow's guard: state writes to the workflow are refused while it is held."""
        if self.state is None:
            return contextlib.nullcontext()
        return self.state.deleting(workflow_id)

    async def delete_state(self, workflow_id: str) -> int:
        """Removes the workflow's document, memory and unshared blobs; returns the bytes freed."""
        if self.state is None:
            return 0
        return await self.state.delete_workflow_state(workflow_id)

    # ------------------------------------------------------------------ blobs

    def _stat(self, blob: BlobPayload, field: str) -> tuple[int, str]:
        """The stored size and the media type of a referenced blob; raises naming ``field``."""
        assert self.state is not None
        info = self.state.blobs.stat(bytes.fromhex(blob.sha256))
        if info is None:
            raise BlobMissingError(f"{field}.blob", f"no blob has digest {blob.sha256}")
        if blob.size_bytes and blob.size_bytes != info.size_bytes:
            raise SpecError(
                "INVALID_ARGUMENT",
                f"{field}.blob.size_bytes",
                f"the blob is {info.size_bytes} bytes, not {blob.size_bytes}",
            )
        return info.size_bytes, blob.content_type or info.content_type

    @property
    def blobs(self) -> st.BlobStore | None:
        """The blob store, when the state capability runs."""
        return self.state.blobs if self.state is not None else None

    def check_blobs(self, specs: Sequence[TaskSpec], field: str) -> tuple[TaskSpec, ...]:
        """The specs with their blob inputs checked and completed (size, media type from the store).

        Raises BlobNotFoundError (``<field>[i].input.blob``) or SpecError (its ``size_bytes``).
        """
        if not any(spec.input_blob_sha256 for spec in specs):
            return tuple(specs)
        out = list(specs)
        for i, spec in enumerate(specs):
            if not spec.input_blob_sha256:
                continue
            blob = BlobPayload(
                sha256=spec.input_blob_sha256, size_bytes=spec.input_blob_size, content_type=spec.content_type
            )
            size, content_type = self._stat(blob, f"{field}[{i}].input")
            out[i] = msgspec.structs.replace(spec, input_blob_size=size, content_type=content_type)
        return tuple(out)

    def output_blob(self, payload: common_pb2.Payload, field: str) -> tuple[str, int, str]:
        """(digest, size, media type) of a completion's blob output; ``field`` names the payload.

        Raises SpecError, NotImplementedFieldError or BlobNotFoundError naming the field.
        """
        if self.state is None:
            raise NotImplementedFieldError(f"{field}.blob", f"{field}.blob: this sidecar has no blob store")
        blob = blob_from_proto(payload, field)
        size, content_type = self._stat(blob, field)
        return blob.sha256, size, content_type

    def stage_blob_reference(self, batch: Batch, workflow_id: str, sha256: str) -> None:
        """The engine's hook: the workflow references a blob its task payload names, in its batch."""
        assert self.state is not None
        self.state.blobs.stage_reference(batch, st.workflow_referrer(workflow_id), bytes.fromhex(sha256))

    # ----------------------------------------------------------------- router

    def route(self, spec: TaskSpec, rec: TaskRecord) -> tuple[str, dict[str, Any]]:  # noqa: ARG002
        """Routes a task's intent to a capability (cost-biased); raises RoutingError.

        A class counts as served as the scheduler counts it (``Scheduler.serves``:
        stream workers, and unary polls the router never sees).
        """
        assert self.router is not None
        from are_core.router import RouterError  # noqa: PLC0415 - only intents get here

        try:
            candidate = self.router.engine.route_for_intent(spec.intent, served=self.engine.serves)
        except RouterError as error:
            raise RoutingError(f"no agent for intent: {error}") from None
        return candidate.capability, {
            "are.route.agent_id": candidate.agent_id,
            "are.route.capability": candidate.capability,
            "are.route.similarity": round(candidate.similarity, 4),
            "are.route.cost_micro_usd": candidate.cost_per_call_micro_usd,
            "are.route.reason": candidate.reason[:256],
            "are.route.mode": "COST_BIASED",
        }

    def declare_card(self, worker_id: str, registration: Any) -> None:
        """Keeps the card a stream worker declared, for the router (before it connects).

        Raises:
            InvalidFieldError: The card is invalid, or names a capability the
                worker does not serve (a routed task would find no worker);
                nothing is kept.
        """
        if self.router is None or not registration.HasField("agent_card"):
            return  # without the router there is no one to describe the worker to
        field = "register.agent_card"
        served = set(registration.capabilities)
        for i, capability in enumerate(registration.agent_card.capabilities):
            if capability not in served:
                message = (
                    f"`{field}.capabilities[{i}]` ({capability!r}) is not a capability the worker serves"
                )
                raise InvalidFieldError(f"{field}.capabilities[{i}]", message)
        dimension = self.router.engine.dimension
        self._cards[worker_id] = agent_spec_from_card(registration.agent_card, dimension, field)

    def forget_card(self, worker_id: str) -> None:
        """Drops a declared card whose worker never connected."""
        self._cards.pop(worker_id, None)

    def worker_changed(self, worker: WorkerHandle) -> None:
        """Mirrors a stream worker's capabilities, load and availability in the router.

        When that changes which capabilities are served, tells the scheduler
        (it re-routes the intent tasks waiting).
        """
        if "@poll-" in worker.worker_id:
            return  # a unary poll is not a standing worker: the scheduler counts polls itself
        assert self.router is not None
        router = self.router.engine
        try:
            if not worker.connected:
                self._cards.pop(worker.worker_id, None)
                changed = router.update_worker(
                    worker.worker_id, name=worker.name, capabilities=worker.capabilities, available=False
                )
                changed |= router.remove_worker(worker.worker_id)
            else:
                changed = router.update_worker(
                    worker.worker_id,
                    name=worker.name,
                    capabilities=worker.capabilities,
                    running=worker.max_concurrency - worker.free,
                    capacity=worker.max_concurrency,
                    available=not worker.draining,
                    card=self._cards.get(worker.worker_id),
                )
            if changed:  # a class came or went: the intent tasks waiting are routed again (in the background)
                self.engine.served_changed(changed)
        except Exception:  # noqa: BLE001 - routing metadata must never break dispatch
            _log.warning("router update failed", exc_info=True)

    # ------------------------------------------------------------------ cache

    def check_namespaces(self, specs: Sequence[TaskSpec], field: str) -> None:
        """Every cache key's namespace must exist (NAMESPACE_NOT_FOUND naming the field)."""
        if self.cache is None:
            return
        from are_core.cache import CacheError  # noqa: PLC0415 - only cache keys get here

        for i, spec in enumerate(specs):
            if spec.cache_key is None:
                continue
            try:
                self.cache.engine.get_namespace(spec.cache_key.namespace)
            except CacheError:
                raise SpecError(
                    "NAMESPACE_NOT_FOUND",
                    f"{field}[{i}].cache_key.namespace",
                    f"cache namespace {spec.cache_key.namespace!r} does not exist",
                ) from None

    async def cache_lookup(
        self, key: CacheKey, origin: TaskOrigin
    ) -> tuple[bytes, str, dict[str, Any]] | None:
        """The scheduler's short-circuit lookup for the task ``origin`` names (so does its cache event)."""
        assert self.cache is not None
        from are_core.cache import NamespaceNotFoundError  # noqa: PLC0415 - only cache keys get here

        try:
            engine = self.cache.engine
            hit = await engine.lookup_for_task(
                key.namespace,
                key.prompt,
                exact_only=key.exact_only,
                workflow_id=origin.workflow_id,
                task_id=origin.task_id,
            )
        except NamespaceNotFoundError:  # deleted since the workflow was submitted: a miss
            return None
        if hit is None:
            return None
        attributes: dict[str, Any] = {
            "are.cache.namespace": key.namespace,
            CACHE_ENTRY_ID: hit.entry_id,
            "are.cache.tier": hit.tier,
            "are.cache.similarity": round(hit.similarity, 4),
            CACHE_SAVED_TOKENS: hit.input_tokens + hit.output_tokens,
            CACHE_SAVED_INPUT_TOKENS: hit.input_tokens,
            CACHE_SAVED_OUTPUT_TOKENS: hit.output_tokens,
            CACHE_SAVED_COST: hit.cost_micro_usd,
        }
        if hit.blob_sha256:
            blobs = self.state.blobs if self.state is not None else None
            if blobs is None or blobs.stat(bytes.fromhex(hit.blob_sha256)) is None:
                return None  # the answer's blob is gone (or unreachable): a miss, never a dangling reference
            attributes[CACHE_BLOB_SHA256] = hit.blob_sha256
            attributes[CACHE_BLOB_SIZE] = hit.blob_size_bytes
        return hit.response, hit.content_type, attributes

    def cache_store(  # noqa: PLR0917 - the engine's hook signature
        self,
        key: CacheKey,
        output: bytes,
        content_type: str,
        usage: Usage | None,
        blob_sha256: str,
        blob_size: int,
        origin: TaskOrigin,
    ) -> None:
        """Stores a cache-keyed task's output in the background (after its durable completion).

        ``origin`` is the task and the attempt that completed it: the store's CACHE_STORED names them.
        """
        assert self.cache is not None
        from are_core.cache import NamespaceDeletingError, NamespaceNotFoundError  # noqa: PLC0415

        engine = self.cache.engine

        async def store() -> None:
            try:
                async with asyncio.timeout(_STORE_TIMEOUT_S):
                    await engine.store(
                        key.namespace,
                        prompt=key.prompt,
                        response=output,
                        content_type=content_type,
                        blob_sha256=blob_sha256,
                        blob_size_bytes=blob_size,
                        ttl_ns=int(key.ttl_s * 1e9),
                        input_tokens=usage.input_tokens if usage else 0,
                        output_tokens=usage.output_tokens if usage else 0,
                        cost_micro_usd=usage.cost_micro_usd if usage else 0,
                        workflow_id=origin.workflow_id,
                        task_id=origin.task_id,
                        attempt=origin.attempt,
                        span_id=origin.span_id,
                    )
            except (NamespaceNotFoundError, NamespaceDeletingError) as gone:  # deleted since the submit
                _log.info(f"a task's output was not stored in the cache: {gone}")
            except Exception:  # noqa: BLE001 - a failed store costs a future hit, nothing else
                _log.warning("storing a task's output in the cache failed", exc_info=True)

        job = asyncio.ensure_future(store())
        self._stores.add(job)
        job.add_done_callback(self._stores.discard)

    async def stop(self) -> None:
        """Waits for background cache stores."""
        if self._stores:
            await asyncio.gather(*self._stores, return_exceptions=True)


@contextlib.contextmanager
def _fork_errors() -> Iterator[None]:
    """A scheduler refusal of a fork as the StateError ForkWorkflow answers with.

    A fork past a bound on open work (``--max-open-tasks``, ``--max-open-bytes``)
    is refused as a scheduler submit is: RESOURCE_EXHAUSTED, RESOURCE_LIMIT, with a retry hint.
    """
    try:
        yield
    except WorkflowExistsError as error:
        raise st.WorkflowExistsError(str(error), field="new_workflow_id") from None
    except OpenWorkLimitError as error:
        raise st.ResourceLimitError(str(error), retry_after_s=error.retry_after_s, **error.metadata) from None
    except SpecError as error:
        if error.reason == "UNKNOWN_DEPENDENCY":
            raise st.UnknownTaskError(error.message, field=error.field) from None
        if error.reason == "LIMIT_EXCEEDED" and error.limit is not None:
            raise st.LimitExceededError(error.message, field=error.field, limit=error.limit) from None
        raise st.InvalidStateArgumentError(error.message, field=error.field) from None
    except _SchedulerError as error:
        if error.reason != "WORKFLOW_NOT_FOUND":
            raise st.InvalidStateArgumentError(str(error), field="workflow_id") from None
        # The source has state but no scheduler record: only its state is forked.
