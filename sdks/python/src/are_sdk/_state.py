"""The typed facade of StateService: ``client.state``.

State is one JSON document per workflow, read by JSON Pointer and patched
with optimistic concurrency; every patch makes a durable version you can
read again, list, and fork from. Beside it each workflow has a memory of
notes (top-k hydration by text or vector within a byte budget) and the
sidecar keeps content-addressed blobs::

    state = client.state.for_workflow(workflow_id)
    await state.patch({"plan": {"steps": ["search", "book"]}})
    steps = await state.get("/plan/steps")                # one path, decoded
    snap = await state.read("/plan", "/budget", version=3)  # several, at a version
    await state.memory.add(["the user prefers aisle seats"])
    notes = await state.memory.hydrate("seat preference", top_k=5, max_bytes=2048)
    ref = await client.state.blobs.put(big_bytes, workflow_id=workflow_id)

Inside a worker handler, ``client.state.for_task(ctx)`` binds the task's
workflow and records the task attempt as the writer of each patch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import grpc

from are_sdk._errors import FieldViolation, InvalidArgumentError, call_errors
from are_sdk._payload import BlobReference
from are_sdk._proto.are.v1 import common_pb2, state_pb2, state_service_pb2

__all__ = [
    "BoundMemory",
    "BoundState",
    "MemoryHit",
    "MemoryHydration",
    "MemoryNote",
    "StateBlobs",
    "StateCheckpoint",
    "StateClient",
    "StateFork",
    "StateMemory",
    "StateSnapshot",
]

_CHUNK = 1024 * 1024
_MISSING: Any = object()


def _dumps(value: Any, name: str = "", pointer: str = "") -> bytes:
    """``value`` as compact UTF-8 JSON, for the patch argument ``name`` (at ``pointer`` in the document).

    Raises:
        InvalidArgumentError: A string (or key) holds a lone UTF-16 surrogate,
            which UTF-8 cannot carry, or a number is NaN or infinite, which
            JSON has no way to write; the violation names where (a bare
            UnicodeEncodeError or ValueError said neither which value nor where).
    """
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError as error:
        where, bad = _first_at(value, pointer, _surrogate) or (pointer, repr(error.object[error.start]))
        problem = (
            f"the string at {where or '/'!r} has a lone UTF-16 surrogate {bad}, which UTF-8 JSON cannot carry"
        )
    except ValueError as error:
        found = _first_at(value, pointer, _non_finite)
        if found is None:
            raise  # a circular reference: the caller's bug, not a value the sidecar refuses
        where, bad = found
        problem = f"the number at {where or '/'!r} is {bad}, which JSON cannot write ({error})"
    raise InvalidArgumentError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the state value at {where or '/'!r} is not valid JSON text",
        reason="INVALID_JSON",
        field_violations=[FieldViolation(name, problem)],
    )


def _surrogate(value: Any) -> str | None:
    """The first lone surrogate of a string, shown as Python would (None: none, or not a string)."""
    if not isinstance(value, str):
        return None
    char = next((c for c in value if "\ud800" <= c <= "\udfff"), None)
    return None if char is None else repr(char)


def _non_finite(value: Any) -> str | None:
    """``value`` written out if it is a float JSON cannot hold (NaN, infinity), else None."""
    return repr(value) if isinstance(value, float) and not math.isfinite(value) else None


def _first_at(value: Any, pointer: str, test: Callable[[Any], str | None]) -> tuple[str, str] | None:
    """The JSON pointer of the first value or key in ``value`` ``test`` describes, and the description."""
    found = test(value)
    if found is not None:
        return pointer, found
    if isinstance(value, Mapping):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        inner = f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"
        key_found = test(key) if isinstance(key, str) else None
        if key_found is not None:
            return inner, key_found
        nested = _first_at(item, inner, test)
        if nested is not None:
            return nested
    return None


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _time(stamp: Any) -> datetime:
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)


def _ref(blob: common_pb2.BlobRef) -> BlobReference:
    return BlobReference(sha256=blob.sha256, size_bytes=blob.size_bytes, content_type=blob.content_type)


class _TaskLike(Protocol):
    workflow_id: str
    task_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """Values read from one version of a state document.

    Attributes:
        version: The version read.
        update_time: When that version was written.
        values: Decoded JSON values by the path asked for.
        missing_paths: The paths that did not resolve, in request order.
    """

    version: int
    update_time: datetime
    values: dict[str, Any]
    missing_paths: list[str]

    def __getitem__(self, path: str) -> Any:
        return self.values[path]

    def get(self, path: str, default: Any = None) -> Any:
        """The value at ``path``, or ``default`` if it did not resolve."""
        return self.values.get(path, default)


@dataclass(frozen=True, slots=True)
class StateCheckpoint:
    """One retained version: when, by whom, how large."""

    version: int
    create_time: datetime
    writer: str
    task_id: str
    attempt: int
    size_bytes: int
    event_sequence: int


@dataclass(frozen=True, slots=True)
class StateFork:
    """The workflow a fork created and the source version it started from."""

    workflow_id: str
    source_version: int


@dataclass(frozen=True, slots=True)
class MemoryNote:
    """A note to add: text and/or a vector, metadata, an optional payload.

    ``content`` is bytes (stored inline, at most 64 KiB) or a
    :class:`BlobReference` to something stored with ``blobs.put``.
    """

    text: str = ""
    vector: Sequence[float] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    content: bytes | BlobReference | None = None
    content_type: str = ""


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """A note returned by ``hydrate``, with its cosine similarity to the query."""

    memory_id: str
    text: str
    similarity: float
    metadata: dict[str, str]
    create_time: datetime
    content: bytes | BlobReference | None
    content_type: str
    vector: list[float] | None


@dataclass(frozen=True, slots=True)
class MemoryHydration:
    """The notes chosen, best first, the bytes they carry, and whether some were left out.

    ``truncated``: a note was skipped for the byte budget, or the search stopped at its bound
    (the 4,096 notes most similar to the query) with fewer than ``top_k`` hits.
    """

    hits: list[MemoryHit]
    total_bytes: int
    truncated: bool

    @property
    def texts(self) -> list[str]:
        """The notes' texts, best first (ready for a prompt)."""
        return [hit.text for hit in self.hits]


def _operations(
    set_values: Mapping[str, Any] | None, remove: Iterable[str]
) -> list[state_pb2.PatchOperation]:
    ops = [
        state_pb2.PatchOperation(
            op=state_pb2.PATCH_OPERATION_TYPE_SET, path=path, value_json=_dumps(value, f"set[{path!r}]", path)
        )
        for path, value in (set_values or {}).items()
    ]
    ops += [state_pb2.PatchOperation(op=state_pb2.PATCH_OPERATION_TYPE_REMOVE, path=path) for path in remove]
    return ops


class StateMemory:
    """Workflow memory: ``client.state.memory``."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    async def add(self, workflow_id: str, notes: Sequence[MemoryNote | str]) -> list[str]:
        """Stores notes (a plain string is a text note); returns their ids in order."""
        entries = []
        for note in notes:
            item = MemoryNote(text=note) if isinstance(note, str) else note
            entry = state_service_pb2.MemoryEntry(text=item.text, metadata=dict(item.metadata))
            if item.vector is not None:
                entry.vector.values.extend(item.vector)
            if isinstance(item.content, BlobReference):
                entry.content.blob.CopyFrom(
                    common_pb2.BlobRef(
                        sha256=item.content.sha256,
                        size_bytes=item.content.size_bytes,
                        content_type=item.content.content_type,
                    )
                )
                entry.content.content_type = item.content_type
            elif item.content is not None:
                entry.content.data = item.content
                entry.content.content_type = item.content_type
            entries.append(entry)
        response = await self._raw.AddMemory(
            state_service_pb2.AddMemoryRequest(workflow_id=workflow_id, entries=entries)
        )
        return list(response.memory_ids)

    async def hydrate(
        self,
        workflow_id: str,
        query: str | Sequence[float],
        *,
        top_k: int = 10,
        metadata: Mapping[str, str] | None = None,
        max_bytes: int = 0,
        min_similarity: float | None = None,
        include_vectors: bool = False,
    ) -> MemoryHydration:
        """The notes most relevant to ``query`` (text, or a vector), best first.

        Args:
            workflow_id: Whose memory.
            query: Text (embedded by the sidecar) or a vector.
            top_k: At most this many notes (1 to 100).
            metadata: Only notes having all these metadata entries.
            max_bytes: Budget of text plus inline content bytes (0: 64 KiB).
            min_similarity: Only notes at least this similar.
            include_vectors: Return the notes' vectors too.
        """
        request = state_service_pb2.HydrateMemoryRequest(
            workflow_id=workflow_id,
            top_k=top_k,
            metadata_match=dict(metadata or {}),
            max_bytes=max_bytes,
            include_vectors=include_vectors,
        )
        if isinstance(query, str):
            request.text = query
        else:
            request.vector.values.extend(query)
        if min_similarity is not None:
            request.min_similarity = min_similarity
        response = await self._raw.HydrateMemory(request)
        hits = []
        for hit in response.hits:
            entry = hit.entry
            content: bytes | BlobReference | None = None
            if entry.HasField("content"):
                which = entry.content.WhichOneof("content")
                content = _ref(entry.content.blob) if which == "blob" else entry.content.data
            hits.append(
                MemoryHit(
                    memory_id=entry.memory_id,
                    text=entry.text,
                    similarity=hit.similarity,
                    metadata=dict(entry.metadata),
                    create_time=_time(entry.create_time),
                    content=content,
                    content_type=entry.content.content_type if entry.HasField("content") else "",
                    vector=list(entry.vector.values) if entry.HasField("vector") else None,
                )
            )
        return MemoryHydration(hits=hits, total_bytes=response.total_bytes, truncated=response.truncated)


class StateBlobs:
    """Content-addressed blobs: ``client.state.blobs``."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    async def put(
        self, data: bytes, *, content_type: str = "", workflow_id: str = "", check_first: bool = True
    ) -> BlobReference:
        """Stores ``data`` (streamed in 1 MiB chunks) and returns its reference.

        With ``check_first`` (and no owner to record), bytes the sidecar
        already holds are not sent again.
        """
        digest = hashlib.sha256(data).hexdigest()
        if check_first and not workflow_id:
            found = await self.check([digest], refresh=True)  # the upload it stands for would have
            if digest in found:
                return found[digest]

        async def messages() -> AsyncIterator[state_service_pb2.PutBlobRequest]:
            yield state_service_pb2.PutBlobRequest(
                header=state_service_pb2.BlobHeader(
                    content_type=content_type, size_bytes=len(data), sha256=digest, workflow_id=workflow_id
                )
            )
            view = memoryview(data)
            for start in range(0, len(data), _CHUNK):
                yield state_service_pb2.PutBlobRequest(chunk=bytes(view[start : start + _CHUNK]))

        return await self._upload(messages())

    async def put_file(
        self, path: str | os.PathLike[str], *, content_type: str = "", workflow_id: str = ""
    ) -> BlobReference:
        """Stores a file's bytes, read and sent 1 MiB at a time (never all in memory).

        The file is hashed first (one read), so the sidecar checks the digest
        and nothing is sent when it already holds the bytes and no owner is given.
        """
        digest, size = await asyncio.to_thread(_hash_file, Path(path))
        if not workflow_id:
            found = await self.check([digest], refresh=True)  # the upload it stands for would have
            if digest in found:
                return found[digest]

        async def messages() -> AsyncIterator[state_service_pb2.PutBlobRequest]:
            yield state_service_pb2.PutBlobRequest(
                header=state_service_pb2.BlobHeader(
                    content_type=content_type, size_bytes=size, sha256=digest, workflow_id=workflow_id
                )
            )
            with Path(path).open("rb") as file:
                while chunk := await asyncio.to_thread(file.read, _CHUNK):
                    yield state_service_pb2.PutBlobRequest(chunk=chunk)

        return await self._upload(messages())

    async def _upload(self, messages: AsyncIterator[state_service_pb2.PutBlobRequest]) -> BlobReference:
        """Sends one PutBlob stream; raises the SDK's errors, or what reading the bytes raised.

        An error of the request stream (a file gone while it is read) makes
        grpc cancel the call, and the awaiting task saw a bare CancelledError
        that nobody asked for: it gets the error itself. A client closed
        before or under the upload raises ClientClosedError, as every call does.
        """
        failed: list[Exception] = []

        async def guarded() -> AsyncIterator[state_service_pb2.PutBlobRequest]:
            try:
                async for message in messages:
                    yield message
            except Exception as error:
                failed.append(error)
                raise

        with call_errors("PutBlob", self._raw.client_closed):
            try:
                response = await self._raw.PutBlob(guarded())
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                task = asyncio.current_task()
                if failed and not (task is not None and task.cancelling()):
                    raise failed[0] from None
                raise
        return _ref(response.blob)

    async def stream(
        self, blob: str | BlobReference, *, offset: int = 0, length: int = 0
    ) -> AsyncIterator[bytes]:
        """Yields the blob's bytes (or a range) in chunks of at most 1 MiB."""
        sha = blob.sha256 if isinstance(blob, BlobReference) else blob
        request = state_service_pb2.GetBlobRequest(sha256=sha, offset=offset, length=length)
        async for message in self._raw.GetBlob(request, timeout=None):
            if message.chunk:
                yield message.chunk

    async def get(self, blob: str | BlobReference, *, offset: int = 0, length: int = 0) -> bytes:
        """The blob's bytes (or a range of them)."""
        parts = [chunk async for chunk in self.stream(blob, offset=offset, length=length)]
        return b"".join(parts)

    async def check(self, digests: Sequence[str], *, refresh: bool = False) -> dict[str, BlobReference]:
        """The stored blobs among ``digests``, by digest.

        ``refresh``: give those found a full unreferenced TTL again, as
        uploading them would (for a caller that skips their upload and
        references them later); a probe that only looks leaves it off.
        """
        request = state_service_pb2.CheckBlobsRequest(sha256s=list(digests), refresh_found=refresh)
        response = await self._raw.CheckBlobs(request)
        return {ref.sha256: _ref(ref) for ref in response.found}


class StateClient:
    """StateService: ``client.state`` (documents, checkpoints, forks, memory, blobs)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw.state
        self.memory = StateMemory(self._raw)
        """Workflow memory (``add``, ``hydrate``)."""
        self.blobs = StateBlobs(self._raw)
        """Content-addressed blobs (``put``, ``put_file``, ``get``, ``stream``, ``check``)."""

    def for_workflow(self, workflow_id: str, *, task_id: str = "", attempt: int = 0) -> BoundState:
        """A handle on one workflow's state and memory."""
        return BoundState(self, workflow_id, task_id=task_id, attempt=attempt)

    def for_task(self, task: _TaskLike) -> BoundState:
        """A handle for a worker handler: its task's workflow, patches recorded as that attempt's."""
        return BoundState(self, task.workflow_id, task_id=task.task_id, attempt=task.attempt)

    async def get(
        self, workflow_id: str, paths: Sequence[str] = (), *, version: int | None = None
    ) -> StateSnapshot:
        """Reads JSON-pointer ``paths`` (none: the whole document, path "") at a version (None: latest)."""
        request = state_service_pb2.GetStateRequest(workflow_id=workflow_id, paths=list(paths))
        if version is not None:
            request.version = version
        response = await self._raw.GetState(request)
        return StateSnapshot(
            version=response.version,
            update_time=_time(response.update_time),
            values={v.path: json.loads(v.value_json) for v in response.values},
            missing_paths=list(response.missing_paths),
        )

    async def patch(
        self,
        workflow_id: str,
        merge: Mapping[str, Any] | None = None,
        *,
        set: Mapping[str, Any] | None = None,  # noqa: A002 - reads best at call sites
        remove: Iterable[str] = (),
        expected_version: int | None = None,
        writer: str = "",
        task_id: str = "",
        attempt: int = 0,
    ) -> int:
        """Applies one patch and returns the new version.

        Give either ``merge`` (an RFC 7386 merge patch: ``None`` values
        remove members) or pointer operations: ``set={"/plan/steps/-": x}``
        and ``remove=["/draft"]`` (applied sets first, then removes).

        Raises:
            VersionMismatchError: ``expected_version`` is not the latest.
            InvalidArgumentError: neither or both forms given, or bad JSON/pointers
                (a string with a lone UTF-16 surrogate is refused before the
                call, the violation naming its path).
        """
        removes = list(remove)
        if (merge is None) == (set is None and not removes):
            raise InvalidArgumentError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "give either merge or set/remove operations",
                reason="INVALID_ARGUMENT",
            )
        request = state_service_pb2.PatchStateRequest(
            workflow_id=workflow_id, writer=writer, task_id=task_id, attempt=attempt
        )
        if merge is not None:
            request.patch.merge_patch_json = _dumps(merge, "merge")
        else:
            request.patch.operations.operations.extend(_operations(set, removes))
        if expected_version is not None:
            request.expected_version = expected_version
        response = await self._raw.PatchState(request)
        return int(response.version)

    async def checkpoints(self, workflow_id: str, *, page_size: int = 100) -> AsyncIterator[StateCheckpoint]:
        """Every retained version, newest first (pages fetched as needed)."""
        token = ""
        while True:
            response = await self._raw.ListCheckpoints(
                state_service_pb2.ListCheckpointsRequest(
                    workflow_id=workflow_id, page_size=page_size, page_token=token
                )
            )
            for c in response.checkpoints:
                yield StateCheckpoint(
                    version=c.version,
                    create_time=_time(c.create_time),
                    writer=c.writer,
                    task_id=c.task_id,
                    attempt=c.attempt,
                    size_bytes=c.size_bytes,
                    event_sequence=c.event_sequence,
                )
            token = response.next_page_token
            if not token:
                return

    async def fork(
        self,
        workflow_id: str,
        *,
        version: int = 0,
        new_workflow_id: str = "",
        rerun_task_ids: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> StateFork:
        """Starts a new workflow from a checkpoint (0: the latest) of another."""
        response = await self._raw.ForkWorkflow(
            state_service_pb2.ForkWorkflowRequest(
                workflow_id=workflow_id,
                version=version,
                new_workflow_id=new_workflow_id,
                rerun_task_ids=list(rerun_task_ids),
                labels=dict(labels or {}),
                request_id=request_id,
            )
        )
        return StateFork(workflow_id=response.workflow_id, source_version=response.source_version)


class BoundMemory:
    """One workflow's memory (``BoundState.memory``)."""

    def __init__(self, memory: StateMemory, workflow_id: str) -> None:
        self._memory = memory
        self.workflow_id = workflow_id

    async def add(self, notes: Sequence[MemoryNote | str]) -> list[str]:
        """Stores notes; see :meth:`StateMemory.add`."""
        return await self._memory.add(self.workflow_id, notes)

    async def hydrate(self, query: str | Sequence[float], **options: Any) -> MemoryHydration:
        """The most relevant notes; see :meth:`StateMemory.hydrate`."""
        return await self._memory.hydrate(self.workflow_id, query, **options)


class BoundState:
    """One workflow's state document and memory, from ``client.state.for_workflow``."""

    def __init__(self, state: StateClient, workflow_id: str, *, task_id: str = "", attempt: int = 0) -> None:
        self._state = state
        self.workflow_id = workflow_id
        self.task_id = task_id
        self.attempt = attempt
        self.memory = BoundMemory(state.memory, workflow_id)
        """The workflow's memory."""

    async def get(self, path: str = "", default: Any = _MISSING, *, version: int | None = None) -> Any:
        """The decoded value at one JSON pointer ("" is the whole document).

        Raises:
            KeyError: the path does not resolve and no ``default`` was given.
        """
        snapshot = await self._state.get(self.workflow_id, [path], version=version)
        if path in snapshot.values:
            return snapshot.values[path]
        if default is _MISSING:
            raise KeyError(path)
        return default

    async def read(self, *paths: str, version: int | None = None) -> StateSnapshot:
        """Several paths from one version, with the version and the missing paths."""
        return await self._state.get(self.workflow_id, paths, version=version)

    async def patch(
        self,
        merge: Mapping[str, Any] | None = None,
        *,
        set: Mapping[str, Any] | None = None,  # noqa: A002 - reads best at call sites
        remove: Iterable[str] = (),
        expected_version: int | None = None,
        writer: str = "",
    ) -> int:
        """Applies one patch; see :meth:`StateClient.patch`. Returns the new version."""
        return await self._state.patch(
            self.workflow_id,
            merge,
            set=set,
            remove=remove,
            expected_version=expected_version,
            writer=writer,
            task_id=self.task_id,
            attempt=self.attempt,
        )

    def checkpoints(self, *, page_size: int = 100) -> AsyncIterator[StateCheckpoint]:
        """Every retained version, newest first."""
        return self._state.checkpoints(self.workflow_id, page_size=page_size)

    async def fork(self, *, version: int = 0, **options: Any) -> StateFork:
        """Forks this workflow from a version; see :meth:`StateClient.fork`."""
        return await self._state.fork(self.workflow_id, version=version, **options)
