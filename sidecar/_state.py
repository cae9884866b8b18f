"""StateService: versioned state documents, memory and blobs over gRPC.

:class:`StateCapability` owns the state engine (:mod:`are_core.state`); the
servicer validates requests (every bad field is INVALID_ARGUMENT naming its
path, and changes nothing), translates protobuf to engine types and maps the
engine's exceptions to rich statuses.

Seams for the scheduler, which is written separately:

* Any valid workflow id may be read and patched: the first PatchState
  creates its document (version 1). Until the scheduler installs
  :attr:`StateCapability.gate`, workflow existence, closed workflows and
  task leases are not checked; ``gate(operation, workflow_id, task_id,
  attempt)``, called before every write ("patch", "memory", "blob" for an
  owned blob), may
  raise :class:`~are_core.state.WorkflowNotFoundError`,
  :class:`~are_core.state.WorkflowClosedError` or
  :class:`~are_core.state.TaskNotHeldError`.
* DeleteWorkflow holds :meth:`StateCapability.deleting` from before the
  state's removal to after the scheduler's record is gone: writes to the
  workflow (patches, notes, owned blobs) are refused meanwhile
  (WORKFLOW_NOT_FOUND), and :meth:`StateCapability.delete_workflow_state`
  first waits for those already past the gate, so nothing acknowledged
  outlives the delete (nor shows up in a later workflow reusing the id).
* ForkWorkflow copies the state document and the memory notes up to the
  checkpoint; :attr:`StateCapability.fork_hook` (when installed) then
  creates the new workflow's tasks with their statuses at the checkpoint's
  ``event_sequence``. These are several commits, so the first one (the
  document) also records the fork as unfinished (``state_forks_pending``),
  and the last one (the request id's record) clears it: a fork refused
  half-way is undone at once, and one a crash cut short is undone (or, if
  the scheduler's commit made it, finished) when the sidecar starts again,
  before calls that read or write state are served. A fork is thus wholly
  applied or wholly absent. Until a fork is settled its workflow id is
  taken: SubmitWorkflow's ``engine.stage_initial`` and another fork to it
  are refused (ALREADY_EXISTS), so the settling never mixes with a
  workflow submitted meanwhile (scheduler calls do not wait for it).
* SubmitWorkflow stages version 1 with ``engine.stage_initial(batch, ...)``
  and its retention with ``engine.stage_retention``; task completions with
  an output pointer use ``engine.patch(..., extra=...)``; DeleteWorkflow
  calls :meth:`StateCapability.delete_workflow_state`.

Blobs are kept while something references them (``are_core.state._blobs``):
PutBlob naming a workflow, a memory note with blob content, and (through
the scheduler's wiring) task payloads reference a blob from their workflow
in the same commit that stores them. A background sweep, shortly after
start and then every ``blob_unreferenced_ttl_s / 4`` (at least 0.25 s, at
most 10 minutes), deletes blobs that nothing references once
``blob_unreferenced_ttl_s`` has passed since their upload.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, NoReturn, TypeAlias

import grpc
import msgspec
from google.protobuf import timestamp_pb2

from are_core.embed import Embedder, EmbedderError, load_embedder
from are_core.scheduler import SpecError
from are_core.state import (
    BLOB_TABLES,
    MAX_MEMBERS,
    MEMORY_TABLES,
    STATE_TABLES,
    BlobDigestMismatchError,
    BlobInfo,
    BlobNotFoundError,
    BlobSizeMismatchError,
    BlobStore,
    BlobUpload,
    DimensionMismatchError,
    EmbedderUnavailableError,
    InvalidJsonError,
    InvalidPointerError,
    LimitExceededError,
    MemoryStore,
    NoteContent,
    NoteInput,
    PatchNotApplicableError,
    PatchOp,
    PatchResult,
    ResourceLimitError,
    Retention,
    StateEngine,
    StateError,
    TaskNotHeldError,
    UnknownTaskError,
    VersionMismatchError,
    VersionNotFoundError,
    WorkflowClosedError,
    WorkflowExistsError,
    WorkflowNotFoundError,
    check_digest,
    workflow_referrer,
)
from are_core.storage import Batch, StorageError
from are_sdk._proto.are.v1 import common_pb2, state_pb2, state_service_pb2, state_service_pb2_grpc
from sidecar import _conventions as conventions
from sidecar._capability import Capability, Runtime
from sidecar._config import ConfigError
from sidecar._scheduler_convert import abort_for, check_labels
from sidecar._status import abort, abort_storage

__all__ = [
    "FORKS_PENDING_TABLE",
    "FORK_REQUESTS_TABLE",
    "ForkCheck",
    "ForkHook",
    "ForkPlan",
    "Gate",
    "StateCapability",
    "StateServicer",
    "abort_for_state_error",
]

_log = logging.getLogger("are.state")
_Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
_ID = conventions.ID
_METADATA_KEY = conventions.KEY
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DEFAULT_PAGE = 100
_MAX_PAGE = 1000
_MAX_METADATA = 32
_MAX_MATCH = 8
_MAX_RERUN = 10_000
_MAX_DIGESTS = 1000
_GET_CHUNK = 1024 * 1024
_MAX_WRITER = 256
_RESPONSE_SLACK = 1024  # room for GetStateResponse's version and update time
_PATH_FRAMING = 24  # a StateValue's tags and lengths (at most 18 bytes) beside its path and value
FORK_REQUESTS_TABLE = "state_fork_requests"
FORKS_PENDING_TABLE = "state_forks_pending"
_SWEEP_MIN_S = 0.25
_SWEEP_MAX_S = 600.0
_FIRST_SWEEP_MAX_S = 5.0
# A ForkWorkflow request_id is remembered this long (common.proto: a retry within 24 hours
# returns the first result); the blob sweep's passes delete older records, a page per commit.
_FORK_REQUEST_TTL_NS = 24 * 3600 * 1_000_000_000
_FORK_REQUEST_PAGE = 1000
_SWEEP_STOP_S = 10.0

Gate = Callable[[str, str, str, int], None]
"""``gate(operation, workflow_id, task_id, attempt)``: raises a StateError when the write is not allowed.

``operation`` is "patch" (PatchState; ``task_id``/``attempt`` when a worker
writes), "memory" (AddMemory) or "blob" (PutBlob naming an owner).
"""


@dataclass(frozen=True, slots=True)
class ForkPlan:
    """What a fork's hook needs to create the new workflow's tasks.

    Task statuses of the new workflow are those of the source as of the
    event ``event_sequence`` (the event that recorded ``source_version``; 0
    when events are not recorded); ``rerun_task_ids`` and their dependents
    run again.
    """

    source_workflow_id: str
    workflow_id: str
    source_version: int
    event_sequence: int
    rerun_task_ids: tuple[str, ...]
    labels: dict[str, str]
    source_time_ns: int = 0
    """When ``source_version`` was written (task outcomes after it are not kept)."""


ForkHook = Callable[[ForkPlan], Awaitable[None]]
"""Installed by the scheduler; called after the state and memory are copied."""

ForkCheck = Callable[[str, str, tuple[str, ...]], None]
"""Installed by the scheduler: (source, new workflow id, rerun task ids); raises
the StateError the fork hook would, before anything is copied."""


class _ForkRecord(msgspec.Struct, frozen=True):
    fingerprint: bytes
    workflow_id: str
    source_version: int
    # When the fork began (Unix ns): its request id's record expires a day later (see
    # _FORK_REQUEST_TTL_NS). 0: a record of an older sidecar, which never expires.
    create_ns: int = 0


class _PendingFork(msgspec.Struct, frozen=True):
    """A fork whose document is committed and whose last commit is not (``state_forks_pending``)."""

    request_id: str
    record: _ForkRecord


_fork_enc = msgspec.msgpack.Encoder()
_fork_dec = msgspec.msgpack.Decoder(_ForkRecord)
_pending_dec = msgspec.msgpack.Decoder(_PendingFork)
_token_dec = msgspec.msgpack.Decoder(tuple[str, int])


class _StateEngine(StateEngine):
    """The state engine, refusing a first version for a workflow id whose fork is not settled.

    SubmitWorkflow stages its version 1 with :meth:`stage_initial` (the
    scheduler's wiring). While a fork to the same id is unsettled (copying,
    being undone, or cut short by a crash and not yet settled at start) the
    id is taken, as the fork's document takes it: without this, a submit
    between the undo's first commit (the head) and its last would have its
    own rows deleted by the rest of the undo, and one accepted before the
    settling reached its id would have the fork finished onto it.
    """

    def __init__(self, *args: Any, unsettled: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsettled = unsettled

    def stage_initial(
        self,
        batch: Batch,
        workflow_id: str,
        document_json: bytes,
        *,
        writer: str = "submit",
        retention: Retention | None = None,
        deferred: list[Callable[[], None]] | None = None,
    ) -> PatchResult:
        """Stages version 1 (:meth:`StateEngine.stage_initial`); refused while the id's fork is unsettled.

        Raises:
            VersionMismatchError: the id's fork is not settled (as if its document existed).
        """
        if workflow_id in self._unsettled:
            raise VersionMismatchError(
                f"workflow {workflow_id!r} is the target of a fork not yet settled", expected=0, current=1
            )
        return super().stage_initial(
            batch, workflow_id, document_json, writer=writer, retention=retention, deferred=deferred
        )


class StateCapability(Capability):
    """Serves ``are.v1.StateService``: documents, checkpoints, fork, memory, blobs."""

    tables: ClassVar[tuple[str, ...]] = (
        *STATE_TABLES,
        *BLOB_TABLES,
        *MEMORY_TABLES,
        FORK_REQUESTS_TABLE,
        FORKS_PENDING_TABLE,
    )
    services: ClassVar[tuple[str, ...]] = ("are.v1.StateService",)

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        config = runtime.config
        # The new workflow ids of the forks not yet settled: those a crash cut short (loaded at
        # start, settled by _recover_forks) and those in progress (from the commit of their
        # document to their last). Bounded by the forks in flight, and those a crash left.
        self._unsettled: set[str] = set()
        self.engine: StateEngine = _StateEngine(
            runtime.storage,
            runtime.committer,
            retention=Retention(
                keep_versions=config.state_keep_versions, keep_seconds=config.state_keep_age_s
            ),
            events=runtime.events,
            max_members=MAX_MEMBERS,
            unsettled=self._unsettled,
        )
        self.blobs = BlobStore(runtime.storage, runtime.committer)
        self.memory = MemoryStore(
            runtime.storage,
            runtime.committer,
            embedder=_memory_embedder(config.memory_embedder),
            index_dir=runtime.data_dir / "indexes" / "memory",
            events=runtime.events,
            blobs=self.blobs,
        )
        self.blob_ttl_s = config.blob_unreferenced_ttl_s
        """Blobs nothing references are deleted this long after their upload."""
        self.blob_sweep_interval_s = min(_SWEEP_MAX_S, max(_SWEEP_MIN_S, self.blob_ttl_s / 4))
        """Seconds between two sweeps of unreferenced blobs."""
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.gate: Gate | None = None
        # Installed by the scheduler: the span id of a task attempt ("" unknown), for the
        # STATE_PATCHED events of the writes a task makes (event.proto Event.span_id).
        self.attempt_span: Callable[[str, str, int], str] | None = None
        """Installed by the scheduler to check workflow existence, closure and task leases."""
        self.fork_hook: ForkHook | None = None
        """Installed by the scheduler to create a fork's workflow and task statuses."""
        self.fork_check: ForkCheck | None = None
        """Installed by the scheduler to refuse a fork it would refuse, before any copy."""
        self._recovery: asyncio.Task[None] | None = None
        self._recovered = asyncio.Event()
        # Workflows being deleted (how many deletes of each are under way): their writes are
        # refused from the delete's start to its end. Bounded by the deletes in flight.
        self._deleting: dict[str, int] = {}
        # Writes past the gate and not yet finished, by workflow (a delete waits for them), and
        # the events the deletes waiting for them wait on. Bounded by the calls in flight.
        self._writes: dict[str, int] = {}
        self._drained: dict[str, asyncio.Event] = {}
        # ForkWorkflow calls in flight by request_id: (fingerprint, the fork), so a retry
        # arriving meanwhile waits for it rather than forking again. Bounded by the calls in flight.
        self._forks_in_flight: dict[str, tuple[bytes, asyncio.Task[tuple[str, int]]]] = {}

    async def start(self) -> None:
        """Drops unfinished uploads, migrates old blob owners, notes forks cut short, starts the sweep.

        A workflow's memory index is loaded when the workflow's memory is
        first used (restored from its file, topped up or rebuilt from
        LMDB), not here: loading every workflow's at start made a start
        after SIGKILL rebuild every memory ever written before serving, and
        kept the indexes of long-finished workflows in memory.
        """
        swept = await self.blobs.recover()
        migrated = await self.blobs.migrate()
        self._load_unsettled()
        _log.info(
            "state ready",
            extra={"fields": {"swept_uploads": swept, "migrated_blob_owners": migrated}},
        )
        self._stopping.clear()
        self._sweeper = asyncio.create_task(self._sweep_blobs(), name="are-blob-sweep")

    def _load_unsettled(self) -> None:
        """Takes the ids of the forks a crash cut short (settled once the server is assembled)."""
        storage = self.runtime.storage
        start = None
        while rows := storage.scan(FORKS_PENDING_TABLE, start=start, limit=1024):
            self._unsettled.update(key.decode() for key, _ in rows)
            start = rows[-1][0] + b"\x00"

    def fork_unsettled(self, workflow_id: str) -> bool:
        """Whether a fork to ``workflow_id`` is not settled yet (the id is taken meanwhile)."""
        return workflow_id in self._unsettled

    def fork_staged(self, workflow_id: str) -> None:
        """A fork's first commit (its document and pending record) is staged: its id is taken."""
        self._unsettled.add(workflow_id)

    def fork_in_flight(self, request_id: str) -> tuple[bytes, asyncio.Task[tuple[str, int]]] | None:
        """(request fingerprint, the fork) of the ForkWorkflow with ``request_id`` under way, if any."""
        return self._forks_in_flight.get(request_id)

    def fork_started(self, request_id: str, fingerprint: bytes, fork: asyncio.Task[tuple[str, int]]) -> None:
        """Reserves ``request_id`` for ``fork`` until it ends (retries meanwhile wait for it)."""
        self._forks_in_flight[request_id] = (fingerprint, fork)

        def finished(done: asyncio.Future[tuple[str, int]]) -> None:
            # Then retries find its record, or fork anew after an error (nothing was recorded).
            if self._forks_in_flight.get(request_id, (b"", None))[1] is done:
                del self._forks_in_flight[request_id]

        fork.add_done_callback(finished)

    def fork_settled(self, workflow_id: str) -> None:
        """A fork's last commit (its finish, or the end of its undo) is durable, or its first failed."""
        self._unsettled.discard(workflow_id)

    def span_of(self, workflow_id: str, task_id: str, attempt: int) -> str:
        """The span id of a task's attempt ("" for a write of no task, or when unknown)."""
        if not task_id or self.attempt_span is None:
            return ""
        return self.attempt_span(workflow_id, task_id, attempt)

    def check_gate(self, operation: str, workflow_id: str, task_id: str = "", attempt: int = 0) -> None:
        """Raises the StateError a write to ``workflow_id`` is refused with (the gate's, or a delete's).

        A workflow being deleted takes no write from the moment its delete
        starts (WORKFLOW_NOT_FOUND, as once it is gone): a note or an owned
        blob acknowledged then would outlive the delete, and show up in a
        later workflow that reuses the id.
        """
        if workflow_id in self._deleting:
            raise WorkflowNotFoundError(
                f"workflow {workflow_id!r} is being deleted", field="workflow_id", workflow_id=workflow_id
            )
        if self.gate is not None:
            self.gate(operation, workflow_id, task_id, attempt)

    @contextlib.contextmanager
    def writing(
        self, operation: str, workflow_id: str, task_id: str = "", attempt: int = 0
    ) -> Iterator[None]:
        """Checks a write (:meth:`check_gate`), then counts it as in flight until the block ends.

        The check and the count happen in one loop step: a delete starting
        later waits for the write (:meth:`delete_workflow_state`), which its
        removal then covers.
        """
        self.check_gate(operation, workflow_id, task_id, attempt)
        self._writes[workflow_id] = self._writes.get(workflow_id, 0) + 1
        try:
            yield
        finally:
            left = self._writes[workflow_id] - 1
            if left:
                self._writes[workflow_id] = left
            else:
                del self._writes[workflow_id]
                drained = self._drained.pop(workflow_id, None)
                if drained is not None:
                    drained.set()

    @contextlib.contextmanager
    def deleting(self, workflow_id: str) -> Iterator[None]:
        """Refuses writes to ``workflow_id`` (WORKFLOW_NOT_FOUND) until the block ends.

        DeleteWorkflow holds it from before the state's removal to after the
        scheduler's record is gone, so no write slips in between.
        """
        self._deleting[workflow_id] = self._deleting.get(workflow_id, 0) + 1
        try:
            yield
        finally:
            left = self._deleting[workflow_id] - 1
            if left:
                self._deleting[workflow_id] = left
            else:
                del self._deleting[workflow_id]

    async def _writes_finished(self, workflow_id: str) -> None:
        """Returns once no write to ``workflow_id`` is in flight (new ones are refused meanwhile)."""
        while workflow_id in self._writes:
            drained = self._drained.get(workflow_id)
            if drained is None:
                drained = self._drained[workflow_id] = asyncio.Event()
            await drained.wait()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers the StateService servicer and settles forks a crash cut short.

        Every capability has started by now, so the scheduler's view (the
        gate) says which of them it created; calls that read or write state
        wait for this (see :meth:`recovered`).
        """
        state_service_pb2_grpc.add_StateServiceServicer_to_server(StateServicer(self), server)
        self._recovered.clear()
        self._recovery = asyncio.get_running_loop().create_task(
            self._recover_forks(), name="are-fork-recovery"
        )

    async def recovered(self) -> None:
        """Returns once the forks a crash cut short are settled (at once, after the first calls)."""
        if not self._recovered.is_set():
            await self._recovered.wait()

    async def _recover_forks(self) -> None:
        """Finish the forks the scheduler created; undo the others (no scheduler: undo all)."""
        storage = self.runtime.storage
        try:
            while rows := storage.scan(FORKS_PENDING_TABLE, limit=256):
                for key, raw in rows:
                    pending = _pending_dec.decode(raw)
                    if self._scheduler_knows(key.decode()):
                        await self.runtime.committer.submit(_finish_fork(storage.batch(), key, pending))
                        self.fork_settled(key.decode())
                    else:
                        await self.undo_fork(key.decode())
                    _log.info("settled an unfinished fork", extra={"fields": {"workflow_id": key.decode()}})
        except Exception:  # noqa: BLE001 - the next start tries again; serving must not wait forever
            _log.warning("could not settle unfinished forks", exc_info=True)
        finally:
            self._recovered.set()

    def _scheduler_knows(self, workflow_id: str) -> bool:
        if self.gate is None or self.fork_hook is None:
            return False
        try:
            self.gate("memory", workflow_id, "", 0)
        except WorkflowNotFoundError:
            return False
        return True

    async def undo_fork(self, workflow_id: str) -> None:
        """Removes what an unfinished fork copied (document, notes, references), then its record.

        The id stays taken until the record's removal is durable (a submit
        meanwhile is refused); if a step fails, until the next start settles it.
        """
        await self.delete_workflow_state(workflow_id)
        storage = self.runtime.storage
        await self.runtime.committer.submit(storage.batch().delete(FORKS_PENDING_TABLE, workflow_id.encode()))
        self.fork_settled(workflow_id)

    async def stop(self) -> None:
        """Stops the blob sweep (between two commits) and saves the memory indexes for a fast next start."""
        recovery, self._recovery = self._recovery, None
        if recovery is not None:  # each step commits on its own; the next start redoes the rest
            recovery.cancel()
            await asyncio.gather(recovery, return_exceptions=True)
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            self._stopping.set()
            done, _ = await asyncio.wait({sweeper}, timeout=_SWEEP_STOP_S)
            if not done:  # a commit stuck that long: cancelling leaves nothing half-done on disk
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)
        await self.memory.settle()  # evicted indexes being saved: seconds at most
        try:
            self.memory.save_all()
        except OSError as error:  # derived data: the next start rebuilds it
            _log.warning("could not save memory indexes", extra={"fields": {"error": str(error)}})

    async def delete_workflow_state(self, workflow_id: str) -> int:
        """Removes a workflow's state, memory and blob references (DeleteWorkflow's hook).

        Blobs that no other workflow owns are deleted. Returns the bytes of
        state rows, notes and blobs removed (DeleteWorkflowResponse's count).
        Writes to the workflow are refused from the start (:meth:`deleting`),
        and those already past their check are waited for first, so that
        what they wrote is removed too.
        """
        with self.deleting(workflow_id):
            await self._writes_finished(workflow_id)
            removed = await self.engine.delete(workflow_id)
            removed += await self.memory.delete(workflow_id)
            removed += await self.blobs.release_referrer(workflow_referrer(workflow_id))
        return removed

    async def _expire_fork_requests(self, before_ns: int) -> int:
        """Deletes the ForkWorkflow request id records of forks begun before ``before_ns``; returns how many.

        Without it they were kept for good, one per fork that named a
        request_id. Records of older sidecars (no time) and rows that do not
        decode are left in place.
        """
        storage = self.runtime.storage
        expired = 0
        start: bytes | None = None
        while not self._stopping.is_set():
            rows = storage.scan(FORK_REQUESTS_TABLE, start=start, limit=_FORK_REQUEST_PAGE)
            batch = storage.batch()
            for key, raw in rows:
                try:
                    record = _fork_dec.decode(raw)
                except msgspec.DecodeError:
                    continue
                if 0 < record.create_ns < before_ns:
                    batch.delete(FORK_REQUESTS_TABLE, key)
            if len(batch):
                await self.runtime.committer.submit(batch)
                expired += len(batch)
            if len(rows) < _FORK_REQUEST_PAGE:
                break
            start = rows[-1][0] + b"\x00"
        return expired

    async def _sweep_blobs(self) -> None:
        """Deletes unreferenced blobs past their TTL: shortly after start, then periodically, until stop."""
        wait = min(self.blob_sweep_interval_s, _FIRST_SWEEP_MAX_S)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
            if self._stopping.is_set():
                return
            wait = self.blob_sweep_interval_s
            try:
                expired = await self._expire_fork_requests(time.time_ns() - _FORK_REQUEST_TTL_NS)
            except Exception:  # noqa: BLE001 - the next pass tries again
                _log.warning("expiring fork request ids failed", exc_info=True)
            else:
                if expired:
                    _log.info("expired fork request ids", extra={"fields": {"records": expired}})
            try:
                # In the try: a TTL whose nanoseconds overflow (the option bounds it; a Config
                # built by hand does not) fails each pass with a warning, not the task for good.
                ttl_ns = int(self.blob_ttl_s * 1e9)
                result = await self.blobs.sweep(ttl_ns, stop=self._stopping)
            except Exception:  # noqa: BLE001 - the next pass tries again; the sweep must outlive a failure
                _log.warning("blob sweep failed", exc_info=True)
                continue
            if result.deleted:
                _log.info(
                    "swept unreferenced blobs",
                    extra={
                        "fields": {
                            "blobs": result.deleted,
                            "bytes": result.deleted_bytes,
                            "scanned": result.scanned,
                        }
                    },
                )
            if result.unreadable:
                _log.warning(
                    "blob sweep skipped meta rows it could not decode (left in place)",
                    extra={"fields": {"rows": result.unreadable}},
                )


def _memory_embedder(spec: str) -> Embedder | None:
    """Workflow memory's embedder (None when off), loaded at start.

    Raises:
        ConfigError: It cannot be loaded: the start fails rather than serve
            a memory whose every text would need a vector.
    """
    if spec.strip().lower() in {"", "off", "none"}:
        return None
    try:
        return load_embedder(spec)
    except EmbedderError as error:
        raise ConfigError(f"invalid value for --memory-embedder: {error}") from error


class StateServicer(state_service_pb2_grpc.StateServiceServicer):  # type: ignore[misc]  # the generated base class is Any to mypy (are_sdk._proto is not checked)
    """Translates StateService calls to the state engine."""

    def __init__(self, capability: StateCapability) -> None:
        self._cap = capability
        self._engine = capability.engine
        self._memory = capability.memory
        self._blobs = capability.blobs

    # Documents

    async def GetState(  # noqa: N802 - the RPC's name
        self, request: state_service_pb2.GetStateRequest, context: _Context
    ) -> state_service_pb2.GetStateResponse:
        """Reads JSON-pointer paths at the latest or a given version."""
        await self._cap.recovered()
        await _check_id(context, request.workflow_id, "workflow_id")
        version = request.version if request.HasField("version") else None
        if version is not None and version < 1:
            await _invalid(context, "version", "a state version is 1 or more")
        # The values must fit in one answer with their paths and framing: each path comes back
        # once (with its value or in missing_paths), in a field of a few bytes of framing.
        paths = list(request.paths) or [""]
        framing = _RESPONSE_SLACK + sum(
            len(p.encode("utf-8", "surrogatepass")) + _PATH_FRAMING for p in paths
        )
        room = max(0, self._cap.runtime.config.max_message_bytes - framing)
        try:
            result = self._engine.get(request.workflow_id, list(request.paths), version, max_bytes=room)
        except (StateError, StorageError) as error:
            await _fail(context, error)
        return state_service_pb2.GetStateResponse(
            version=result.version,
            values=[state_service_pb2.StateValue(path=p, value_json=v) for p, v in result.values],
            missing_paths=result.missing_paths,
            update_time=_timestamp(result.update_time_ns),
        )

    async def PatchState(  # noqa: N802 - the RPC's name
        self, request: state_service_pb2.PatchStateRequest, context: _Context
    ) -> state_service_pb2.PatchStateResponse:
        """Applies a merge patch or pointer operations as one new durable version."""
        await self._cap.recovered()
        await _check_id(context, request.workflow_id, "workflow_id")
        if request.task_id:
            await _check_id(context, request.task_id, "task_id")
        if request.attempt < 0:
            await _invalid(context, "attempt", "attempt must not be negative")
        if request.task_id and request.attempt < 1:  # a task's writes name the attempt held
            await _invalid(context, "attempt", f"attempts count from 1, got {request.attempt}")
        if len(request.writer) > _MAX_WRITER:
            await _limit(context, "writer", _MAX_WRITER)
        expected = request.expected_version if request.HasField("expected_version") else None
        if expected is not None and expected < 0:
            await _invalid(context, "expected_version", "expected_version must not be negative")
        merge, operations = await _patch_from_proto(context, request.patch)
        try:
            with self._cap.writing("patch", request.workflow_id, request.task_id, request.attempt):
                result = await self._engine.patch(
                    request.workflow_id,
                    merge_patch=merge,
                    operations=operations,
                    expected_version=expected,
                    writer=request.writer,
                    task_id=request.task_id,
                    attempt=request.attempt,
                    span_id=self._cap.span_of(request.workflow_id, request.task_id, request.attempt),
                )
        except (StateError, StorageError) as error:
            await _fail(context, error, prefix="patch.")
        return state_service_pb2.PatchStateResponse(
            version=result.version, update_time=_timestamp(result.update_time_ns)
        )

    async def ListCheckpoints(  # noqa: N802 - the RPC's name
        self, request: state_service_pb2.ListCheckpointsRequest, context: _Context
    ) -> state_service_pb2.ListCheckpointsResponse:
        """Pages the retained versions, newest first."""
        await self._cap.recovered()
        await _check_id(context, request.workflow_id, "workflow_id")
        if request.page_size < 0:
            await _invalid(context, "page_size", "page_size must not be negative")
        size = min(request.page_size or _DEFAULT_PAGE, _MAX_PAGE)
        before = await _decode_token(context, request.page_token, request.workflow_id)
        try:
            page, head = self._engine.checkpoints(request.workflow_id, before=before, limit=size + 1)
        except (StateError, StorageError) as error:
            await _fail(context, error)
        token = ""
        if len(page) > size:
            page = page[:size]
            token = _encode_token(request.workflow_id, page[-1].version)
        return state_service_pb2.ListCheckpointsResponse(
            checkpoints=[
                state_service_pb2.Checkpoint(
                    version=c.version,
                    create_time=_timestamp(c.create_time_ns),
                    task_id=c.task_id,
                    attempt=c.attempt,
                    writer=c.writer,
                    size_bytes=c.size_bytes,
                    event_sequence=c.event_sequence,
                )
                for c in page
            ],
            next_page_token=token,
            oldest_version=head.oldest_version,
            latest_version=head.latest_version,
        )

    async def ForkWorkflow(  # noqa: N802 - the RPC's name
        self, request: state_service_pb2.ForkWorkflowRequest, context: _Context
    ) -> state_service_pb2.ForkWorkflowResponse:
        """Starts a new workflow's state (and memory) from a checkpoint of another."""
        await _check_fork(context, request)
        await self._cap.recovered()
        fingerprint = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
        request_id = request.request_id
        # The record, the fork in flight and the reservation are looked at and made in one
        # loop step: a retry arriving while the first is under way waits for it (its result or
        # its error) instead of forking again; one arriving after finds the record.
        previous = self._previous_fork(request_id) if request_id else None
        if previous is not None:
            if previous.fingerprint != fingerprint:
                await _request_id_conflict(context, request_id)
            return state_service_pb2.ForkWorkflowResponse(
                workflow_id=previous.workflow_id, source_version=previous.source_version
            )
        in_flight = self._cap.fork_in_flight(request_id) if request_id else None
        if in_flight is not None:
            if in_flight[0] != fingerprint:
                await _request_id_conflict(context, request_id)
            fork = in_flight[1]
        else:
            # From the document's commit on, a fork runs to its end even if its caller goes away
            # (a cancel at that commit used to leave it half done until the next start).
            new_id = request.new_workflow_id or _new_workflow_id()
            fork = asyncio.ensure_future(self._fork(request, new_id, fingerprint))
            fork.add_done_callback(_retrieved)
            if request_id:
                self._cap.fork_started(request_id, fingerprint, fork)
        try:
            new_id, source_version = await asyncio.shield(fork)
        except (StateError, StorageError) as error:
            await _fail(context, error)
        return state_service_pb2.ForkWorkflowResponse(workflow_id=new_id, source_version=source_version)

    async def _fork(
        self, request: state_service_pb2.ForkWorkflowRequest, new_id: str, fingerprint: bytes
    ) -> tuple[str, int]:
        """The checks, the document's commit, then the rest (:meth:`_finish_fork`); (new id, source version).

        The checks and the staging of the document are one step: no submit
        or other fork to ``new_id`` slips in between.
        """
        if self._cap.fork_unsettled(new_id):  # another fork to it is not settled: its id is taken
            raise WorkflowExistsError(
                f"workflow {new_id!r} is the target of a fork not yet settled", field="new_workflow_id"
            )
        if self._cap.fork_check is not None:  # a refused fork copies nothing
            self._cap.fork_check(request.workflow_id, new_id, tuple(request.rerun_task_ids))

        def unfinished(batch: Batch, source_version: int) -> None:
            record = _ForkRecord(fingerprint, new_id, source_version, time.time_ns())
            pending = _PendingFork(request.request_id, record)
            batch.put(FORKS_PENDING_TABLE, new_id.encode(), _fork_enc.encode(pending))
            self._cap.fork_staged(new_id)  # in the step that stages it: no submit slips in after

        try:
            source_version = await self._engine.fork(
                request.workflow_id, request.version, new_id, extra=unfinished
            )
        except (StateError, StorageError):
            # Refused, or its commit failed: nothing of it is stored. (Its id was not taken
            # before: that was checked above, in this same step.)
            self._cap.fork_settled(new_id)
            raise
        await self._finish_fork(request, new_id, source_version, fingerprint)
        return new_id, source_version

    async def _finish_fork(
        self,
        request: state_service_pb2.ForkWorkflowRequest,
        new_id: str,
        source_version: int,
        fingerprint: bytes,
    ) -> None:
        """After the document: the notes, the scheduler's workflow, then the record that ends the fork.

        On an error the copies are removed before it is raised.
        """
        try:
            created_ns, sequence = self._checkpoint(request.workflow_id, source_version)
            await self._memory.copy_notes(request.workflow_id, new_id, created_ns)
            await self._copy_blob_references(request.workflow_id, new_id)
            if self._cap.fork_hook is not None:
                await self._cap.fork_hook(
                    ForkPlan(
                        source_workflow_id=request.workflow_id,
                        workflow_id=new_id,
                        source_version=source_version,
                        event_sequence=sequence,
                        rerun_task_ids=tuple(request.rerun_task_ids),
                        labels=dict(request.labels),
                        source_time_ns=created_ns,
                    )
                )
        except BaseException:
            await self._cap.undo_fork(new_id)
            raise
        storage = self._cap.runtime.storage
        pending = _PendingFork(
            request.request_id, _ForkRecord(fingerprint, new_id, source_version, time.time_ns())
        )
        await self._cap.runtime.committer.submit(_finish_fork(storage.batch(), new_id.encode(), pending))
        self._cap.fork_settled(new_id)

    async def _copy_blob_references(self, source_id: str, new_id: str) -> None:
        """The fork references every blob its source does, in commits of 1,000.

        Its state starts as the source's, which may name blobs the source
        uploaded as their owner: deleting the source deleted them while the
        fork's state still named them. What its notes and task payloads
        reference is staged again here, harmlessly (a reference is a key).
        """
        blobs = self._blobs
        source, target = workflow_referrer(source_id), workflow_referrer(new_id)
        after: bytes | None = None
        while digests := blobs.references(source, limit=1000, after=after):
            batch = self._cap.runtime.storage.batch()
            for digest in digests:
                blobs.stage_reference(batch, target, digest)
            await self._cap.runtime.committer.submit(batch)
            after = digests[-1]

    def _previous_fork(self, request_id: str) -> _ForkRecord | None:
        """The record of the finished fork that used ``request_id``, if any."""
        raw = self._cap.runtime.storage.get(FORK_REQUESTS_TABLE, request_id.encode())
        return None if raw is None else _fork_dec.decode(raw)

    def _checkpoint(self, workflow_id: str, version: int) -> tuple[int, int]:
        """(create time, event sequence) of a version of the source."""
        page, _ = self._engine.checkpoints(workflow_id, before=version + 1, limit=1)
        if not page:
            return time.time_ns(), 0
        return page[0].create_time_ns, page[0].event_sequence

    # Memory

    async def AddMemory(  # noqa: N802 - the RPC's name
        self, request: state_service_pb2.AddMemoryRequest, context: _Context
    ) -> state_service_pb2.AddMemoryResponse:
        """Stores notes durably and indexes them."""
        await self._cap.recovered()
        await _check_id(context, request.workflow_id, "workflow_id")
        notes: list[NoteInput] = []
        for i, entry in enumerate(request.entries):
            field = f"entries[{i}]"
            await _check_metadata(context, entry.metadata, f"{field}.metadata", _MAX_METADATA)
            vector = None
            if entry.HasField("vector"):
                vector = list(entry.vector.values)
                await _check_vector(context, vector, f"{field}.vector.values")
            content = await self._content(context, entry, f"{field}.content")
            notes.append(
                NoteInput(text=entry.text, vector=vector, metadata=dict(entry.metadata), content=content)
            )
        try:
            with self._cap.writing("memory", request.workflow_id):
                ids = await self._memory.add(request.workflow_id, notes)
        except (StateError, StorageError) as error:
            await _fail(context, error)
        return state_service_pb2.AddMemoryResponse(memory_ids=[_memory_id(i) for i in ids])

    async def _content(
        self, context: _Context, entry: state_service_pb2.MemoryEntry, field: str
    ) -> NoteContent | None:
        if not entry.HasField("content"):
            return None
        payload = entry.content
        if len(payload.content_type) > 128:
            await _limit(context, f"{field}.content_type", 128)
        which = payload.WhichOneof("content")
        if which == "blob":
            digest = await _digest(context, payload.blob.sha256, f"{field}.blob.sha256")
            info = self._blobs.stat(digest)
            if info is None:
                await _fail(
                    context, BlobNotFoundError(f"no blob has digest {digest.hex()}", field=f"{field}.blob")
                )
            return NoteContent(
                content_type=payload.content_type,
                blob_sha256=info.sha256,
                blob_size_bytes=info.size_bytes,
                blob_content_type=info.content_type,
            )
        return NoteContent(data=payload.data, content_type=payload.content_type)

    async def HydrateMemory(  # noqa: N802 - the RPC's name
        self, request: state_service_pb2.HydrateMemoryRequest, context: _Context
    ) -> state_service_pb2.HydrateMemoryResponse:
        """Returns the most relevant notes within the count and byte budgets."""
        await self._cap.recovered()
        await _check_hydrate(context, request)
        which = request.WhichOneof("query")
        text = request.text if which == "text" else None
        vector = list(request.vector.values) if which == "vector" else None
        floor = request.min_similarity if request.HasField("min_similarity") else None
        try:
            # An unknown workflow (or one being deleted) is NOT_FOUND, not an empty memory.
            self._cap.check_gate("memory", request.workflow_id)
            hits, used, truncated = await self._memory.hydrate(
                request.workflow_id,
                text=text,
                vector=vector,
                top_k=request.top_k or 10,
                metadata_match=dict(request.metadata_match),
                max_bytes=request.max_bytes or 64 * 1024,
                min_similarity=floor,
            )
        except (StateError, StorageError) as error:
            await _fail(context, error)
        out = []
        for hit in hits:
            note = hit.note
            entry = state_service_pb2.MemoryEntry(
                memory_id=_memory_id(note.note_id),
                text=note.text,
                metadata=note.metadata,
                create_time=_timestamp(note.create_time_ns),
            )
            if request.include_vectors:
                entry.vector.values.extend(_floats(note.vector))
            if note.content is not None:
                _content_to_proto(note.content, entry.content)
            out.append(state_service_pb2.MemoryHit(entry=entry, similarity=hit.similarity))
        return state_service_pb2.HydrateMemoryResponse(hits=out, total_bytes=used, truncated=truncated)

    # Blobs

    async def PutBlob(  # noqa: N802 - the RPC's name
        self, request_iterator: AsyncIterator[state_service_pb2.PutBlobRequest], context: _Context
    ) -> state_service_pb2.PutBlobResponse:
        """Stores a streamed blob, verifying its size and digest."""
        uploads: list[BlobUpload] = []
        try:
            upload = await self._receive(request_iterator, context, uploads)
            # An owned blob's reference is staged at the finish: checked again there (its owner may
            # have gone while the chunks came), and waited for by a delete of the owner.
            owner = upload.workflow_id
            with self._cap.writing("blob", owner) if owner else contextlib.nullcontext():
                info, deduplicated = await upload.finish()
        except (StateError, StorageError) as error:
            for started in uploads:
                await started.abort()
            await _fail(context, error)
        except BaseException:
            for started in uploads:
                if started.staged:
                    await started.abort()
            raise
        return state_service_pb2.PutBlobResponse(blob=_blob_ref(info), deduplicated=deduplicated)

    async def _receive(
        self,
        request_iterator: AsyncIterator[state_service_pb2.PutBlobRequest],
        context: _Context,
        uploads: list[BlobUpload],
    ) -> BlobUpload:
        """Reads the header and every chunk into a new upload (appended to ``uploads``)."""
        upload: BlobUpload | None = None
        async for message in request_iterator:
            which = message.WhichOneof("message")
            if upload is None:
                if which != "header":
                    await _invalid(context, "header", "the first PutBlob message must be the header")
                header = message.header
                if header.workflow_id:
                    await _check_id(context, header.workflow_id, "header.workflow_id")
                    self._cap.check_gate("blob", header.workflow_id)
                upload = self._blobs.begin(
                    content_type=header.content_type,
                    size_bytes=header.size_bytes,
                    sha256=header.sha256,
                    workflow_id=header.workflow_id,
                )
                uploads.append(upload)
            elif which == "header":
                await _invalid(context, "header", "the header comes first and only once")
            elif which is None:  # not an empty chunk: a message that carries nothing is malformed
                await _invalid(context, "chunk", "every message after the header carries a chunk")
            else:
                await upload.write(message.chunk)
        if upload is None:
            await _invalid(context, "header", "the stream ended before the header")
        return upload

    async def GetBlob(  # noqa: N802 - the RPC's name
        self, request: state_service_pb2.GetBlobRequest, context: _Context
    ) -> AsyncIterator[state_service_pb2.GetBlobResponse]:
        """Streams a blob or a byte range of it in chunks of at most 1 MiB."""
        digest = await _digest(context, request.sha256, "sha256")
        if request.offset < 0:
            await _invalid(context, "offset", "offset must not be negative")
        if request.length < 0:
            await _invalid(context, "length", "length must not be negative")
        try:
            info, chunks = self._blobs.read(digest, offset=request.offset, length=request.length)
            first = True
            sent = False
            for offset, chunk in chunks:
                for start in range(0, len(chunk), _GET_CHUNK):
                    message = state_service_pb2.GetBlobResponse(
                        offset=offset + start, chunk=chunk[start : start + _GET_CHUNK]
                    )
                    if first:
                        message.blob.CopyFrom(_blob_ref(info))
                        first = False
                    sent = True
                    yield message
            if not sent:
                yield state_service_pb2.GetBlobResponse(blob=_blob_ref(info), offset=request.offset)
        except (StateError, StorageError) as error:
            await _fail(context, error)

    async def CheckBlobs(  # noqa: N802 - the RPC's name
        self, request: state_service_pb2.CheckBlobsRequest, context: _Context
    ) -> state_service_pb2.CheckBlobsResponse:
        """Splits digests into stored and missing."""
        if not request.sha256s:
            await _invalid(context, "sha256s", "give 1 to 1,000 digests")
        if len(request.sha256s) > _MAX_DIGESTS:
            await _limit(context, "sha256s", _MAX_DIGESTS)
        digests = [await _digest(context, text, f"sha256s[{i}]") for i, text in enumerate(request.sha256s)]
        if request.refresh_found:
            try:  # a full TTL again: the caller skips the upload and references them later
                # Found is what the refresh found, under the blob store's lock: a stat before
                # it could see a blob that a sweep queued on that lock then deleted.
                stored = await self._blobs.refresh_stored(digests)
            except StorageError as error:
                await _fail(context, error)
        else:
            stored = {digest: info for digest in digests if (info := self._blobs.stat(digest)) is not None}
        found, missing = [], []
        for text, digest in zip(request.sha256s, digests, strict=True):
            info = stored.get(digest)
            if info is None:
                missing.append(text)
            else:
                found.append(_blob_ref(info))
        return state_service_pb2.CheckBlobsResponse(found=found, missing=missing)


# Helpers


async def _patch_from_proto(
    context: _Context, patch: state_pb2.StatePatch
) -> tuple[bytes | None, list[PatchOp] | None]:
    kind = patch.WhichOneof("patch")
    if kind == "merge_patch_json":
        return patch.merge_patch_json, None
    if kind != "operations":
        await _invalid(context, "patch", "set merge_patch_json or operations")
    operations: list[PatchOp] = []
    for i, op in enumerate(patch.operations.operations):
        if op.op == state_pb2.PATCH_OPERATION_TYPE_SET:
            operations.append(PatchOp("set", op.path, op.value_json))
        elif op.op == state_pb2.PATCH_OPERATION_TYPE_REMOVE:
            operations.append(PatchOp("remove", op.path))
        else:
            await _invalid(context, f"patch.operations.operations[{i}].op", "op must be SET or REMOVE")
    return None, operations


async def _check_fork(context: _Context, request: state_service_pb2.ForkWorkflowRequest) -> None:
    await _check_id(context, request.workflow_id, "workflow_id")
    if request.new_workflow_id:
        await _check_id(context, request.new_workflow_id, "new_workflow_id")
    if request.request_id:
        await _check_id(context, request.request_id, "request_id")
    if request.version < 0:
        await _invalid(context, "version", "version must not be negative (0 means the latest)")
    if len(request.rerun_task_ids) > _MAX_RERUN:
        await _limit(context, "rerun_task_ids", _MAX_RERUN)
    for i, task_id in enumerate(request.rerun_task_ids):
        await _check_id(context, task_id, f"rerun_task_ids[{i}]")
    try:  # the new workflow's labels: the bounds SubmitWorkflow checks
        check_labels(request.labels, "labels")
    except SpecError as error:
        await abort_for(context, error)


async def _check_hydrate(context: _Context, request: state_service_pb2.HydrateMemoryRequest) -> None:
    await _check_id(context, request.workflow_id, "workflow_id")
    which = request.WhichOneof("query")
    if which is None:
        await _invalid(context, "query", "set text or vector")
    if which == "text" and not request.text.strip():
        # It would embed to no direction at all: every note equally (ir)relevant.
        await _invalid(context, "text", "the query text is empty")
    if which == "text" and len(request.text.encode("utf-8", "surrogatepass")) > 64 * 1024:
        await _limit(context, "text", 64 * 1024)
    if which == "vector":
        await _check_vector(context, list(request.vector.values), "vector.values")
    if not 0 <= request.top_k <= 100:
        await _invalid(context, "top_k", "top_k is 1 to 100 (0 means 10)")
    if not 0 <= request.max_bytes <= 4 * 1024 * 1024:
        await _invalid(context, "max_bytes", "max_bytes is 0 (64 KiB) to 4 MiB")
    await _check_metadata(context, request.metadata_match, "metadata_match", _MAX_MATCH)
    if request.HasField("min_similarity") and not -1.0 <= request.min_similarity <= 1.0:
        await _invalid(context, "min_similarity", "min_similarity is in [-1, 1]")


async def _request_id_conflict(context: _Context, request_id: str) -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.ALREADY_EXISTS,
        f"request_id {request_id!r} was used for a different ForkWorkflow",
        reason="REQUEST_ID_CONFLICT",
        metadata={"request_id": request_id},
    )


def _retrieved(fork: asyncio.Future[Any]) -> None:
    """Marks a fork's error as seen (every caller may have gone before it ended)."""
    if not fork.cancelled():
        fork.exception()


def _finish_fork(batch: Batch, key: bytes, pending: _PendingFork) -> Batch:
    """The last commit of a fork: its request id's record (if any) and the end of its pending record."""
    if pending.request_id:
        batch.put(FORK_REQUESTS_TABLE, pending.request_id.encode(), _fork_enc.encode(pending.record))
    return batch.delete(FORKS_PENDING_TABLE, key)


def _timestamp(unix_ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(unix_ns)
    return stamp


def _memory_id(note_id: int) -> str:
    return f"mem_{note_id}"


def _floats(raw: bytes) -> list[float]:
    import numpy as np  # noqa: PLC0415 - only when vectors are asked for

    return [float(x) for x in np.frombuffer(raw, dtype=np.float32)]


def _blob_ref(info: BlobInfo) -> common_pb2.BlobRef:
    return common_pb2.BlobRef(sha256=info.sha256, size_bytes=info.size_bytes, content_type=info.content_type)


def _content_to_proto(content: NoteContent, out: common_pb2.Payload) -> None:
    out.content_type = content.content_type
    if content.blob_sha256:
        out.blob.CopyFrom(
            common_pb2.BlobRef(
                sha256=content.blob_sha256,
                size_bytes=content.blob_size_bytes,
                content_type=content.blob_content_type,
            )
        )
    else:
        out.data = content.data


def _new_workflow_id() -> str:
    """A ULID prefixed ``wf_``: 48 bits of milliseconds, 80 random bits, Crockford base32."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "wf_" + "".join(reversed(chars))


def _encode_token(workflow_id: str, before: int) -> str:
    return base64.urlsafe_b64encode(msgspec.msgpack.encode((workflow_id, before))).decode().rstrip("=")


async def _decode_token(context: _Context, token: str, workflow_id: str) -> int | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        owner, before = _token_dec.decode(raw)
    except (ValueError, msgspec.DecodeError):
        owner, before = "", 0
    if owner != workflow_id or before < 1:
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token is malformed or was issued for another workflow",
            reason="INVALID_PAGE_TOKEN",
            field_violations=[("page_token", "not a token of this listing")],
        )
    return before


async def _invalid(context: _Context, field: str, description: str) -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field}: {description}",
        reason="INVALID_ARGUMENT",
        metadata={"field": field},
        field_violations=[(field, description)],
    )


async def _limit(context: _Context, field: str, limit: int) -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field} is over its bound of {limit}",
        reason="LIMIT_EXCEEDED",
        metadata={"field": field, "limit": str(limit)},
        field_violations=[(field, f"at most {limit}")],
    )


async def _check_id(context: _Context, value: str, field: str) -> None:
    if not _ID.fullmatch(value):
        await _invalid(context, field, "an id is 1 to 128 characters of [A-Za-z0-9._:-]")


async def _digest(context: _Context, text: str, field: str) -> bytes:
    try:
        return check_digest(text, field=field)
    except StateError as error:
        await _fail(context, error)


async def _check_vector(context: _Context, values: list[float], field: str) -> None:
    if not 1 <= len(values) <= 4096:
        await _invalid(context, field, "a vector has 1 to 4,096 components")
    if not all(math.isfinite(v) for v in values):
        await _invalid(context, field, "every component must be finite")


async def _check_metadata(context: _Context, metadata: Any, field: str, most: int) -> None:
    if len(metadata) > most:
        await _limit(context, field, most)
    for key, value in metadata.items():
        if not _METADATA_KEY.fullmatch(key):
            await _invalid(context, f"{field}[{key!r}]", "a key is 1 to 128 characters of [A-Za-z0-9._:/-]")
        if len(value.encode()) > 256:
            await _limit(context, f"{field}[{key!r}]", 256)


_PATCH_FIELDS = frozenset({"operations", "merge_patch_json"})
_STATE_ERRORS: dict[type[StateError], tuple[grpc.StatusCode, str]] = {
    InvalidJsonError: (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JSON"),
    InvalidPointerError: (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JSON_POINTER"),
    LimitExceededError: (grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED"),
    BlobDigestMismatchError: (grpc.StatusCode.INVALID_ARGUMENT, "BLOB_DIGEST_MISMATCH"),
    BlobSizeMismatchError: (grpc.StatusCode.INVALID_ARGUMENT, "BLOB_SIZE_MISMATCH"),
    DimensionMismatchError: (grpc.StatusCode.INVALID_ARGUMENT, "DIMENSION_MISMATCH"),
    PatchNotApplicableError: (grpc.StatusCode.FAILED_PRECONDITION, "PATCH_NOT_APPLICABLE"),
    EmbedderUnavailableError: (grpc.StatusCode.FAILED_PRECONDITION, "EMBEDDER_UNAVAILABLE"),
    WorkflowClosedError: (grpc.StatusCode.FAILED_PRECONDITION, "WORKFLOW_CLOSED"),
    TaskNotHeldError: (grpc.StatusCode.FAILED_PRECONDITION, "TASK_NOT_HELD"),
    UnknownTaskError: (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_DEPENDENCY"),
    VersionMismatchError: (grpc.StatusCode.ABORTED, "STATE_VERSION_MISMATCH"),
    VersionNotFoundError: (grpc.StatusCode.NOT_FOUND, "STATE_VERSION_NOT_FOUND"),
    WorkflowNotFoundError: (grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND"),
    BlobNotFoundError: (grpc.StatusCode.NOT_FOUND, "BLOB_NOT_FOUND"),
    WorkflowExistsError: (grpc.StatusCode.ALREADY_EXISTS, "WORKFLOW_ALREADY_EXISTS"),
    ResourceLimitError: (grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_LIMIT"),
}


async def abort_for_state_error(
    context: _Context, error: StateError | StorageError, *, prefix: str = ""
) -> NoReturn:
    """Ends the call as StateService would for this error (for callers outside this module)."""
    await _fail(context, error, prefix=prefix)


async def _fail(context: _Context, error: StateError | StorageError, *, prefix: str = "") -> NoReturn:
    """Ends the call with the status an engine or storage error maps to."""
    if isinstance(error, StorageError):
        await abort_storage(context, error)
    code, reason = grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    for kind in type(error).__mro__:
        if kind in _STATE_ERRORS:
            code, reason = _STATE_ERRORS[kind]
            break
    field = error.field
    if prefix and field.partition(".")[0].partition("[")[0] in _PATCH_FIELDS:
        field = prefix + field
    metadata = {"field": field} if field else {}
    metadata.update(error.identifiers)
    if isinstance(error, LimitExceededError):
        metadata["limit"] = str(error.limit)
    elif isinstance(error, VersionMismatchError):
        metadata.update(expected_version=str(error.expected), current_version=str(error.current))
    elif isinstance(error, VersionNotFoundError):
        metadata.update(oldest_version=str(error.oldest), latest_version=str(error.latest))
    elif isinstance(error, DimensionMismatchError):
        metadata.update(expected_dimension=str(error.expected), actual_dimension=str(error.actual))
    # A missing blob is named too (`entries[0].content.blob`), as the scheduler and cache name theirs.
    named = code == grpc.StatusCode.INVALID_ARGUMENT or isinstance(error, BlobNotFoundError)
    violations = [(field, error.message)] if field and named else []
    retry_after = timedelta(seconds=error.retry_after_s) if isinstance(error, ResourceLimitError) else None
    await abort(
        context,
        code,
        error.message,
        reason=reason,
        metadata=metadata,
        field_violations=violations,
        retry_after=retry_after,
    )
