"""Per-workflow memory: notes with text, vector and metadata; top-k hydration.

Tables:

* ``memory_spaces`` ``wid`` -> :class:`MemorySpace` (embedder, dimension,
  counters) — fixed by the first note, a mismatch is refused;
* ``memory_notes``  ``wid NUL u64(note id)`` -> :class:`Note` (the vector
  is stored here too: LMDB is the source of truth).

The usearch index of each workflow is derived data, loaded when its memory
is used, saved under ``<index_dir>/<wid>.usearch`` on stop with the note id
it covers up to, and on load topped up from LMDB with the notes added since
(or rebuilt from LMDB when the file is missing, corrupt or of another
shape). Notes are append-only until the workflow is deleted, so "the ids
after the saved high-water mark" is exactly what a saved index lacks.

Loaded indexes are bounded (least recently used first out, see
:data:`MAX_LOADED_INDEXES`): an index evicted with many notes its file
lacks is saved (by a forked child, while the loop serves), one with few is
dropped (LMDB has them; its next use tops them up), so an eviction loses
nothing, before a stop or a crash.

A note whose content is a blob references it from its workflow
(``wf:<id>``), staged in the batch that stores the note, so the blob is kept
as long as the note (see ``_blobs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np

from are_core.embed import Embedder, LexicalEmbedder
from are_core.storage import Batch, GroupCommitter, KeyedLocks, Storage, u64_key
from are_core.trace import Event, EventDraft, EventSink
from are_core.vector import VectorError, VectorIndex, background_threads, child_exit_code

from ._blobs import BlobStore, workflow_referrer
from ._errors import (
    BlobNotFoundError,
    DimensionMismatchError,
    EmbedderUnavailableError,
    InvalidStateArgumentError,
    LimitExceededError,
)

__all__ = [
    "MAX_HYDRATE_EXAMINED",
    "MAX_LOADED_INDEXES",
    "MAX_LOADED_INDEX_BYTES",
    "MAX_NOTES_PER_CALL",
    "MAX_NOTES_PER_WORKFLOW",
    "MEMORY_TABLES",
    "MemoryHit",
    "MemoryStore",
    "Note",
    "NoteContent",
    "NoteInput",
]

SPACES, NOTES = "memory_spaces", "memory_notes"
MEMORY_TABLES = (SPACES, NOTES)
MAX_NOTES_PER_CALL = 1000
MAX_NOTES_PER_WORKFLOW = 1_000_000
MAX_TEXT_BYTES = 64 * 1024
MAX_CONTENT_BYTES = 64 * 1024
MAX_DIMENSION = 4096
MAX_TOP_K = 100
MAX_BUDGET_BYTES = 4 * 1024 * 1024
DEFAULT_BUDGET_BYTES = 64 * 1024
MAX_HYDRATE_EXAMINED = 4096
"""The most similar notes a hydration examines at most: filters, the floor and the byte budget apply to those.

A search whose filters or budget reject notes widens (4 times the notes
each round) up to this bound and no further, so its cost is bounded
whatever the memory holds: widening to the whole memory decoded every
note on the event loop (20,000 notes of 2 KB: about a second during which
no other call was served; a million notes: tens of seconds). Fewer than
``top_k`` hits when it stopped there is reported as truncated."""
_SEARCH_ON_LOOP = 512
"""Neighbours a hydration's search finds on the loop at most (a millisecond or two); wider: in a thread."""
_SCAN_PAGE = 2000
_COPY_PAGE_BYTES = 4 << 20
"""Notes a fork copies per page and commit, in bytes (some; at most :data:`_SCAN_PAGE` notes)."""
_COPY_SCAN = 128
"""Notes a fork reads at once while it fills a page (up to 128 x 150 KiB: a page ends past its bytes)."""
_INDEX_SLICE = 64
_LOAD_ON_LOOP_BYTES = 1 << 20
"""A saved index up to this size is restored on the loop (about a millisecond); a larger one in a thread."""

MAX_LOADED_INDEXES = 256
"""Workflows whose memory index stays loaded at most (the least recently used goes first).

A loaded index costs some 52 KiB resident for a few notes, and 16 MiB of
address space whatever its size: usearch's allocator maps its arenas 4 MiB
at a time (a compiled-in minimum that its Python API does not let us
lower). Every workflow that ever used its memory kept one for the life of
the process (100k conversations: 5 GB resident, 1.6 TB of address space).
256 keeps the memories of a few hundred workflows in use at once loaded,
for about 13 MB resident and 4 GiB of address space; a memory used again
after its eviction reloads in about a millisecond from its file, or from
LMDB for a few notes (see :data:`_EVICT_SAVE_FROM`)."""

MAX_LOADED_INDEX_BYTES = MAX_LOADED_INDEXES * (17 << 20)
"""Memory the loaded indexes may hold together, as usearch reports it (``memory_usage``).

It counts what usearch's allocator reserved: 16 MiB and a few hundred
bytes for a small index (of which it touches a few pages), about the
vectors and graph for a large one (1M 256-d f32 notes: some 1.2 GiB).
17 MiB a slot (4.25 GiB) lets the count decide while memories are small,
and this bound once some grow large. The index just used stays loaded
even when it alone is larger."""

_EVICT_SAVE_FROM = 64
"""Notes an evicted index holds beyond its saved file from which it is saved before it goes.

Below, it is dropped: its notes are in LMDB and its next use tops them up.
Measured (256-d f32, 2-CPU VM): saving a small index (a file, fsync, rename,
fsync of the folder) takes 3 to 15 ms; inserting 10 notes again 4 ms, 100
notes 8 ms, 1,000 notes 400 ms. Below some 64 notes inserting them again
costs no more than the save would, and is paid only if the memory is used
again, which a finished conversation's rarely is; above, the save is much
the cheaper (its next use restores the file in a millisecond or two)."""

_EVICT_SAVES_AT_ONCE = 2
"""Evicted indexes being saved at once (a forked child each, holding the index meanwhile).

An eviction past them drops its index instead: its notes are in LMDB and
its next use tops them up, in a thread, so a burst of evictions (a load of
every memory after a crash, say) neither forks a child per workflow nor
holds every evicted index in memory until it is written."""

_RESIZE_GROWTH = 8
"""An index's size is measured again once it grew by an eighth (``memory_usage``
walks every node: 3 ms at 100k entries), so a few percent stale at most."""


class NoteContent(msgspec.Struct, frozen=True, kw_only=True):
    """A payload stored with a note: inline bytes or a blob reference."""

    data: bytes = b""
    content_type: str = ""
    blob_sha256: str = ""
    blob_size_bytes: int = 0
    blob_content_type: str = ""


class Note(msgspec.Struct, frozen=True, kw_only=True):
    """One stored note (table ``memory_notes``); ``vector`` is raw float32."""

    note_id: int
    text: str
    vector: bytes
    metadata: dict[str, str]
    content: NoteContent | None
    create_time_ns: int


class NoteInput(msgspec.Struct, frozen=True, kw_only=True):
    """A note to add: text and/or a vector, metadata, an optional payload."""

    text: str = ""
    vector: Sequence[float] | None = None
    metadata: Mapping[str, str] = msgspec.field(default_factory=dict)
    content: NoteContent | None = None


class MemorySpace(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow's memory settings and counters (table ``memory_spaces``)."""

    dimension: int
    embedder: str
    """The embedder that embedded its texts ("" while only caller vectors were given)."""
    next_id: int
    count: int


class MemoryHit(msgspec.Struct, frozen=True):
    """A note chosen by ``hydrate`` and its cosine similarity to the query."""

    note: Note
    similarity: float


class _NoteHead(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a stored :class:`Note` that a search filters on or a fork copies by (no vector)."""

    note_id: int
    text: str
    metadata: dict[str, str]
    content: NoteContent | None
    create_time_ns: int


class _ContentSize(msgspec.Struct, frozen=True, kw_only=True):
    """The inline bytes of a stored :class:`NoteContent`, left encoded (only their length counts)."""

    data: msgspec.Raw = msgspec.Raw(b"\xc4\x00")  # msgpack's empty bin


class _NoteFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What a search filters a stored :class:`Note` on: its text, metadata left encoded, content size.

    Decoding a :class:`_NoteHead` (a dictionary per note, inline content
    copied) cost three times as much, for every note a search looked at.
    """

    text: str
    metadata: msgspec.Raw
    content: _ContentSize | None


_enc = msgspec.msgpack.Encoder()
_note_dec = msgspec.msgpack.Decoder(Note)
_head_dec = msgspec.msgpack.Decoder(_NoteHead)
_filter_dec = msgspec.msgpack.Decoder(_NoteFilter)
_metadata_dec = msgspec.msgpack.Decoder(dict[str, str])
_space_dec = msgspec.msgpack.Decoder(MemorySpace)


class _Loaded(NamedTuple):
    """A loaded index and what it covers."""

    vector_index: VectorIndex
    covered: int
    """Note ids it holds up to (exclusive)."""
    saved: int
    """Note ids its saved file covers up to (exclusive); 1 when there is no usable file."""
    size_bytes: int
    """Its memory (usearch's ``memory_usage``) when it held ``sized_at`` vectors."""
    sized_at: int


_log = logging.getLogger("are.state")


def _wid(workflow_id: str) -> bytes:
    return workflow_id.encode() + b"\x00"


def _note_bytes(note: Note | _NoteHead) -> int:
    content = note.content
    return len(note.text.encode()) + (len(content.data) if content is not None else 0)


def _msgpack_payload_bytes(raw: msgspec.Raw) -> int:
    """The length of the payload of one encoded msgpack bin (bytes) value, its header left out."""
    encoded = memoryview(raw)
    header = encoded[0] if encoded else 0
    return len(encoded) - {0xC4: 2, 0xC5: 3, 0xC6: 5}.get(header, 0)


def _filter_bytes(fields: _NoteFilter) -> int:
    """The bytes a hit costs the budget, as :func:`_note_bytes` counts them."""
    content = fields.content
    return len(fields.text.encode()) + (_msgpack_payload_bytes(content.data) if content is not None else 0)


def _metadata_matches(metadata: msgspec.Raw, matches: dict[str, str]) -> bool:
    """Whether the encoded metadata holds every entry of ``matches``."""
    decoded = _metadata_dec.decode(metadata)
    return all(decoded.get(k) == v for k, v in matches.items())


def _fill(
    candidates: Sequence[tuple[float, int, int]], top_k: int, max_bytes: int
) -> tuple[list[tuple[float, int]], int, bool]:
    """The first ``top_k`` candidates (best first) that fit ``max_bytes`` together.

    Returns (similarity, note id) of each, their bytes, and whether one was
    skipped for the budget on the way.
    """
    chosen: list[tuple[float, int]] = []
    used = 0
    truncated = False
    for similarity, key, size in candidates:
        if len(chosen) >= top_k:
            break
        if used + size > max_bytes:
            truncated = True
            continue
        used += size
        chosen.append((similarity, key))
    return chosen, used, truncated


class MemoryStore:
    """Notes per workflow and their vector indexes.

    Args:
        storage, committer: The sidecar's storage.
        embedder: Embeds note texts and query texts; None means callers must
            send vectors (texts alone are EMBEDDER_UNAVAILABLE).
        index_dir: Where indexes are saved between runs.
        events: Records MEMORY_ADDED events when given.
        blobs: The blob store that notes with blob content reference (their
            blobs must exist, and are kept while the notes are); None: not checked.
        save_every: Save a workflow's index once this many notes were added
            since its last save, so a restart after a crash tops up at most
            that many from LMDB instead of rebuilding everything.
        max_loaded: Indexes kept loaded at most (:data:`MAX_LOADED_INDEXES`).
        max_loaded_bytes: Their memory at most (:data:`MAX_LOADED_INDEX_BYTES`).
            Indexes in use by an add under way are not evicted: a moment's
            excess over either bound is what concurrent adds hold.
    """

    def __init__(
        self,
        storage: Storage,
        committer: GroupCommitter,
        *,
        embedder: Embedder | None,
        index_dir: Path,
        events: EventSink | None = None,
        blobs: BlobStore | None = None,
        save_every: int = 20_000,
        max_loaded: int = MAX_LOADED_INDEXES,
        max_loaded_bytes: int = MAX_LOADED_INDEX_BYTES,
    ) -> None:
        if max_loaded < 1 or max_loaded_bytes < 1:
            raise ValueError("max_loaded and max_loaded_bytes must be at least 1")
        self._storage = storage
        self._blobs = blobs
        self._committer = committer
        self.embedder = embedder
        self._index_dir = index_dir
        self._events = events
        self.save_every = save_every
        self.max_loaded = max_loaded
        self.max_loaded_bytes = max_loaded_bytes
        self._indexes: OrderedDict[str, _Loaded] = OrderedDict()
        """Loaded indexes, least recently used first."""
        self._loaded_bytes = 0
        """The sum of their ``size_bytes``."""
        self._in_use: dict[str, int] = {}
        """Workflows whose index an add is using across awaits (not evicted meanwhile), and how many."""
        self._locks = KeyedLocks()
        self._loading: set[str] = set()
        """Workflows whose index is being restored or topped up (under their lock)."""
        self._evicted: dict[str, _Loaded] = {}
        """Evicted indexes a forked child is saving: taken back, not restored, if used meanwhile."""
        self._saving: dict[str, asyncio.Task[None]] = {}
        """Each workflow's latest save of an evicted index, until it ends (one writer of a file at a time)."""

    def space(self, workflow_id: str) -> MemorySpace | None:
        """The workflow's memory settings, or None if it has no notes."""
        raw = self._storage.get(SPACES, workflow_id.encode())
        return None if raw is None else _space_dec.decode(raw)

    # Writes

    async def add(self, workflow_id: str, notes: Sequence[NoteInput]) -> list[int]:
        """Store notes durably and index them; returns their ids in order.

        Field names in errors are ``entries[i].<field>``.

        Raises:
            LimitExceededError, InvalidStateArgumentError,
            DimensionMismatchError, EmbedderUnavailableError,
            BlobNotFoundError (``entries[i].content.blob``).
        """
        _check_notes(notes)
        async with self._locks.hold(workflow_id):
            space = self.space(workflow_id)
            vectors = await self._vectors(workflow_id, space, notes)
            dimension = vectors.shape[1]
            embedded = any(n.vector is None for n in notes)
            if space is None:
                space = MemorySpace(
                    dimension=dimension,
                    embedder=self.embedder.name if embedded and self.embedder else "",
                    next_id=1,
                    count=0,
                )
            elif embedded and not space.embedder and self.embedder is not None:
                space = msgspec.structs.replace(space, embedder=self.embedder.name)
            if space.count + len(notes) > MAX_NOTES_PER_WORKFLOW:
                raise LimitExceededError(
                    f"the memory of {workflow_id!r} would hold over {MAX_NOTES_PER_WORKFLOW} notes",
                    field="entries",
                    limit=MAX_NOTES_PER_WORKFLOW,
                )
            with self._using(workflow_id):
                ids, events = await self._add_to(workflow_id, space, notes, vectors)
        if self._events is not None and events:
            self._events.publish(events)
        return ids

    async def _add_to(
        self,
        workflow_id: str,
        space: MemorySpace,
        notes: Sequence[NoteInput],
        vectors: np.ndarray[Any, np.dtype[np.float32]],
    ) -> tuple[list[int], list[Event]]:
        """Commits the notes, then indexes them (lock held, index in use); returns their ids and events."""
        index = await self._index(workflow_id, space, locked=True)
        assert index is not None  # the lock is held: the memory cannot have been deleted meanwhile
        # From here to the submit there is no await: the blobs checked
        # are referenced in the same step (the blob store's rule).
        digests = self._note_blobs(notes)
        now = time.time_ns()
        prefix = _wid(workflow_id)
        batch = self._storage.batch()
        ids = list(range(space.next_id, space.next_id + len(notes)))
        for note_id, note, vector in zip(ids, notes, vectors, strict=True):
            record = Note(
                note_id=note_id,
                text=note.text,
                vector=vector.astype(np.float32).tobytes(),
                metadata=dict(note.metadata),
                content=note.content,
                create_time_ns=now,
            )
            batch.put(NOTES, prefix + u64_key(note_id), _enc.encode(record))
        new_space = msgspec.structs.replace(space, next_id=ids[-1] + 1, count=space.count + len(notes))
        batch.put(SPACES, workflow_id.encode(), _enc.encode(new_space))
        self._stage_blobs(batch, workflow_id, digests)
        events: list[Event] = []
        if self._events is not None:
            events.append(
                self._events.record(
                    batch,
                    EventDraft(
                        event_type="MEMORY_ADDED",
                        workflow_id=workflow_id,
                        attributes={"are.memory.count": len(notes), "are.memory.first_id": ids[0]},
                    ),
                )
            )
        await self._committer.submit(batch)
        # Claim the coverage first: a search between the slices below uses
        # this index as it is (these notes are not acknowledged yet) rather
        # than topping it up from LMDB itself.
        self._keep(workflow_id, index, new_space.next_id)
        await _index_in_slices(index, np.asarray(ids, dtype=np.uint64), vectors)
        loaded = self._indexes.get(workflow_id)  # None if deleted meanwhile: nothing to save
        if loaded is not None and new_space.next_id - loaded.saved >= self.save_every:
            await self._save_aside(workflow_id, index, new_space.next_id)
        return ids, events

    def _note_blobs(self, notes: Sequence[NoteInput]) -> list[bytes]:
        """The distinct blobs the notes' contents name, each checked to exist (none without a blob store)."""
        blobs = self._blobs
        if blobs is None:
            return []
        digests: dict[bytes, None] = {}
        for i, note in enumerate(notes):
            content = note.content
            if content is None or not content.blob_sha256:
                continue
            digest = bytes.fromhex(content.blob_sha256)
            if blobs.stat(digest) is None:
                raise BlobNotFoundError(
                    f"no blob has digest {content.blob_sha256}", field=f"entries[{i}].content.blob"
                )
            digests[digest] = None
        return list(digests)

    def _stage_blobs(self, batch: Batch, workflow_id: str, digests: Sequence[bytes]) -> None:
        """Reference the notes' blobs from their workflow, in the batch that stores the notes."""
        if not digests or self._blobs is None:
            return
        referrer = workflow_referrer(workflow_id)
        for digest in digests:
            self._blobs.stage_reference(batch, referrer, digest)

    async def _vectors(
        self, workflow_id: str, space: MemorySpace | None, notes: Sequence[NoteInput]
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        dimension = space.dimension if space is not None else None
        texts = [(i, n.text) for i, n in enumerate(notes) if n.vector is None]
        embedded: dict[int, np.ndarray[Any, Any]] = {}
        if texts:
            embedder = self._embedder_for(workflow_id, space, field=f"entries[{texts[0][0]}].text")
            dimension = embedder.dimension
            matrix = await self._embed(embedder, [t for _, t in texts])
            embedded = {i: matrix[row] for row, (i, _) in enumerate(texts)}
        rows = []
        for i, note in enumerate(notes):
            if note.vector is None:
                rows.append(embedded[i])
                continue
            if dimension is None:
                dimension = len(note.vector)
            if len(note.vector) != dimension:
                raise DimensionMismatchError(
                    f"entries[{i}].vector has {len(note.vector)} components; "
                    f"the memory of {workflow_id!r} has dimension {dimension}",
                    field=f"entries[{i}].vector.values",
                    expected=dimension,
                    actual=len(note.vector),
                )
            rows.append(np.asarray(note.vector, dtype=np.float32))
        return np.vstack(rows).astype(np.float32, copy=False)

    def _embedder_for(self, workflow_id: str, space: MemorySpace | None, *, field: str) -> Embedder:
        embedder = self.embedder
        if embedder is None:
            raise EmbedderUnavailableError(
                "no memory embedder is configured; send vectors instead of text", field=field
            )
        if space is not None and space.dimension != embedder.dimension:
            raise DimensionMismatchError(
                f"the memory of {workflow_id!r} has dimension {space.dimension}; "
                f"the embedder {embedder.name!r} makes {embedder.dimension}",
                field=field,
                expected=space.dimension,
                actual=embedder.dimension,
            )
        if space is not None and space.count and space.embedder != embedder.name:
            held = f"embedder {space.embedder!r}" if space.embedder else "caller vectors only"
            raise EmbedderUnavailableError(
                f"the memory of {workflow_id!r} holds {held}; the sidecar's embedder is "
                f"{embedder.name!r}, whose vectors would not compare — send vectors",
                field=field,
            )
        return embedder

    async def _embed(self, embedder: Embedder, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        if isinstance(embedder, LexicalEmbedder):
            return embedder.embed(texts)  # tens of microseconds: not worth a thread hop
        return await asyncio.to_thread(embedder.embed, texts)

    # Reads

    async def hydrate(
        self,
        workflow_id: str,
        *,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        top_k: int = 10,
        metadata_match: Mapping[str, str] | None = None,
        max_bytes: int = DEFAULT_BUDGET_BYTES,
        min_similarity: float | None = None,
    ) -> tuple[list[MemoryHit], int, bool]:
        """The most relevant notes, best first, within ``top_k`` and ``max_bytes``.

        Returns (hits, bytes returned, truncated by the budget). A workflow
        without notes returns no hits, nor does a text whose embedding has no
        direction (no words the embedder knows): nothing is relevant to it.
        A caller's zero vector is refused (cosine is undefined there).
        """
        if (text is None) == (vector is None):
            raise InvalidStateArgumentError("set exactly one of text or vector", field="query")
        space = self.space(workflow_id)
        if space is None or not space.count:
            return [], 0, False
        query = await self._query_vector(workflow_id, space, text, vector)
        if not query.any():
            return [], 0, False
        index = await self._index(workflow_id, space, locked=False)
        if index is None:  # deleted meanwhile
            return [], 0, False
        return await self._select(
            workflow_id,
            index,
            query,
            top_k=top_k,
            matches=dict(metadata_match or {}),
            max_bytes=max_bytes,
            min_similarity=min_similarity,
        )

    async def _query_vector(
        self, workflow_id: str, space: MemorySpace, text: str | None, vector: Sequence[float] | None
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        if vector is not None:
            if len(vector) != space.dimension:
                raise DimensionMismatchError(
                    f"the query vector has {len(vector)} components; the memory of "
                    f"{workflow_id!r} has dimension {space.dimension}",
                    field="vector.values",
                    expected=space.dimension,
                    actual=len(vector),
                )
            if not any(vector):
                raise InvalidStateArgumentError(
                    "the query vector is all zeros: it has no direction to compare", field="vector.values"
                )
            return np.asarray(vector, dtype=np.float32)
        assert text is not None
        embedder = self._embedder_for(workflow_id, space, field="text")
        if not space.embedder:
            raise EmbedderUnavailableError(
                f"the memory of {workflow_id!r} holds caller vectors only; query with a vector",
                field="text",
            )
        matrix = await self._embed(embedder, [text])
        return np.asarray(matrix[0], dtype=np.float32)

    async def _select(
        self,
        workflow_id: str,
        index: VectorIndex,
        query: np.ndarray[Any, np.dtype[np.float32]],
        *,
        top_k: int,
        matches: dict[str, str],
        max_bytes: int,
        min_similarity: float | None,
    ) -> tuple[list[MemoryHit], int, bool]:
        """The best notes that pass the filters, searching wider while filters or the budget reject many.

        A wider search is walked whole, skipping the notes already looked
        at: HNSW's approximate top 4k need not begin with its top k, so it
        may hold notes a narrower search missed, better than some it found.
        The notes that pass the filters are kept as (similarity, id, bytes)
        across searches, and the hits are chosen again from all of them
        after each: best first, each note once, its bytes counted once.

        The work is bounded: the search widens up to
        :data:`MAX_HYDRATE_EXAMINED` notes and no further (stopping there
        with fewer than ``top_k`` hits while notes were left reports
        truncated); a note looked at is read for its filter fields only
        (:class:`_NoteFilter`); a search wider than :data:`_SEARCH_ON_LOOP`
        runs in a thread (HNSW takes tens of milliseconds for thousands of
        neighbours) while the loop serves. Widening to the whole memory, all
        on the loop, stalled every other call for a second at 20,000 notes.
        Notes are append-only until their workflow is deleted, so the notes
        looked at in earlier rounds are still there when the chosen ones are
        decoded whole, at the end; if not, the memory was deleted meanwhile.
        """
        prefix = _wid(workflow_id)
        total = len(index)
        bound = min(total, MAX_HYDRATE_EXAMINED)
        want = min(top_k if not matches else max(top_k * 8, 64), bound)
        looked: set[int] = set()
        candidates: list[tuple[float, int, int]] = []
        """(similarity, note id, bytes) of the notes that passed the filters, best first."""
        while True:
            if want <= _SEARCH_ON_LOOP:
                found = index.search(query, want)
            else:
                found = await asyncio.to_thread(index.search, query, want)
            fresh = [
                (key, similarity)
                for key, similarity in found
                if key not in looked and (min_similarity is None or similarity >= min_similarity)
            ]
            looked.update(key for key, _ in found)
            with self._storage.read() as view:  # no await inside
                for key, similarity in fresh:
                    raw = view.get(NOTES, prefix + u64_key(key))
                    if raw is None:
                        continue
                    fields = _filter_dec.decode(raw)
                    if matches and not _metadata_matches(fields.metadata, matches):
                        continue
                    candidates.append((similarity, key, _filter_bytes(fields)))
            candidates.sort(key=lambda candidate: -candidate[0])  # stable: ties keep the search's order
            chosen, used, truncated = _fill(candidates, top_k, max_bytes)
            exhausted = (
                want >= total
                or len(found) < want
                or (min_similarity is not None and found and found[-1][1] < min_similarity)
            )  # nothing left to find (a wider search adds only notes below the floor)
            if len(chosen) >= top_k or exhausted:
                break
            if want >= bound:  # the bound: notes not looked at might have passed
                truncated = True
                break
            want = min(want * 4, bound)
        hits = []
        with self._storage.read() as view:
            for similarity, key in chosen:
                raw = view.get(NOTES, prefix + u64_key(key))
                if raw is None:  # the memory was deleted meanwhile
                    return [], 0, False
                hits.append(MemoryHit(_note_dec.decode(raw), similarity))
        return hits, used, truncated

    async def copy_notes(self, source: str, target: str, until_ns: int) -> int:
        """Copy the source's notes up to ``until_ns`` into an empty memory (fork); returns the count.

        A page at a time: read (some :data:`_COPY_PAGE_BYTES`), filtered,
        staged and committed, the loop serving other calls between pages,
        so neither the source's notes nor a batch of them are ever held
        whole (a million notes are gigabytes). The target's space, which
        makes its notes count, goes in the last commit. The fork is all or
        nothing across these commits through its record of being pending
        (committed with its document, before this): a crash between two
        pages leaves notes under the target's prefix, which the restart's
        undo of the fork deletes by prefix, and a failure here is undone
        by the fork at once.

        The source's lock is held throughout: its notes, append-only until
        deleted, cannot be deleted meanwhile (a delete waits for the copy;
        their blobs stay referenced by the source until the target's
        references are committed), and adds to it wait (they are newer
        than ``until_ns`` anyway).
        """
        async with self._locks.hold(source):
            space = self.space(source)
            if space is None:
                return 0
            source_prefix, prefix = _wid(source), _wid(target)
            end = source_prefix[:-1] + b"\x01"
            referrer = workflow_referrer(target)
            start = source_prefix
            copied = 0
            next_id = 0
            more = True
            while more:
                rows, more = self._copy_page(start, end)
                batch = self._storage.batch()
                for key, raw in rows:
                    head = _head_dec.decode(raw)
                    if head.create_time_ns > until_ns:
                        continue
                    # The record as it is: the target's note is the source's, id included.
                    batch.put(NOTES, prefix + key[len(source_prefix) :], raw)
                    content = head.content
                    if content is not None and content.blob_sha256 and self._blobs is not None:
                        # The source's notes reference the blob meanwhile: no check needed.
                        self._blobs.stage_reference(batch, referrer, bytes.fromhex(content.blob_sha256))
                    copied += 1
                    next_id = head.note_id + 1
                if rows:
                    start = rows[-1][0] + b"\x00"
                if not more and copied:
                    new_space = msgspec.structs.replace(space, next_id=next_id, count=copied)
                    batch.put(SPACES, target.encode(), _enc.encode(new_space))
                del rows
                if len(batch):
                    await self._committer.submit(batch)
                else:
                    await asyncio.sleep(0)  # a page of newer notes only: still let other calls run
                del batch  # one page held at a time: this one goes before the next is read
            return copied

    def _copy_page(self, start: bytes, end: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
        """A fork's next page of notes from ``start``, and whether more may follow.

        Up to :data:`_SCAN_PAGE` notes, read :data:`_COPY_SCAN` at a time
        until past :data:`_COPY_PAGE_BYTES`: a page of small notes is
        thousands, of large ones (up to some 150 KiB each) tens.
        """
        rows: list[tuple[bytes, bytes]] = []
        size = 0
        while len(rows) < _SCAN_PAGE and size < _COPY_PAGE_BYTES:
            limit = min(_COPY_SCAN, _SCAN_PAGE - len(rows))
            part = self._storage.scan(NOTES, start=start, end=end, limit=limit)
            rows += part
            size += sum(len(raw) for _, raw in part)
            if len(part) < limit:
                return rows, False
            start = part[-1][0] + b"\x00"
        return rows, True

    async def delete(self, workflow_id: str) -> int:
        """Remove the workflow's notes, space and saved index; returns the bytes of notes removed.

        It waits for an add of the workflow under way: deleting meanwhile let
        that add index its notes again afterwards (kept loaded, saved at the
        next stop), for a workflow that no longer exists.
        """
        async with self._locks.hold(workflow_id):
            return await self._delete(workflow_id)

    async def _delete(self, workflow_id: str) -> int:
        self._forget(workflow_id)
        self._evicted.pop(workflow_id, None)
        saving = self._saving.get(workflow_id)
        if saving is not None:  # stopped (its child killed) before the files go: none renamed after
            saving.cancel()
            await asyncio.gather(saving, return_exceptions=True)
        prefix = _wid(workflow_id)
        await self._committer.submit(self._storage.batch().delete(SPACES, workflow_id.encode()))
        removed = 0
        while True:
            rows = self._storage.scan(NOTES, prefix=prefix, limit=5000)
            if not rows:
                break
            batch = self._storage.batch()
            for key, value in rows:
                batch.delete(NOTES, key)
                removed += len(key) + len(value)
            await self._committer.submit(batch)
        for path in self._paths(workflow_id):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return removed

    # Indexes

    def _paths(self, workflow_id: str) -> tuple[Path, Path]:
        # Ids may contain dots: append suffixes rather than replace one.
        return self._index_dir / f"{workflow_id}.usearch", self._index_dir / f"{workflow_id}.json"

    async def _index(self, workflow_id: str, space: MemorySpace, *, locked: bool) -> VectorIndex | None:
        """The workflow's index, covering every note of ``space``: loaded, or restored and topped up.

        A loaded index missing a few notes gets them at once. A load, or a
        longer top-up (after a crash: up to ``save_every`` notes, seconds of
        HNSW insertion), runs under the workflow's lock (``locked``: the
        caller holds it already) with its file read and its insertions made
        in a thread, so that the loop serves other calls meanwhile and
        concurrent callers wait for one load. None: the workflow's memory was
        deleted meanwhile (only when not ``locked``). The index becomes the
        most recently used; loading it may evict others.
        """
        evicted = self._evicted.pop(workflow_id, None)
        if (
            evicted is not None
            and workflow_id not in self._indexes
            and evicted.vector_index.dimension == space.dimension
        ):
            # Evicted and still being saved: taken back as it is (its save goes on, from the fork).
            self._keep(workflow_id, evicted.vector_index, evicted.covered, saved=evicted.saved)
        index = self._ready(workflow_id, space)
        if index is not None:
            return index
        saved = self._saved_covered(workflow_id, space)
        if workflow_id not in self._loading and self._quick_to_load(workflow_id, space, saved):
            return self._load_now(workflow_id, space)
        if locked:
            return await self._load(workflow_id, space)
        async with self._locks.hold(workflow_id):
            current = self.space(workflow_id)  # only grown, if not deleted, while this waited
            if current is None or current.dimension != space.dimension:
                return None
            return self._ready(workflow_id, current) or await self._load(workflow_id, current)

    def _ready(self, workflow_id: str, space: MemorySpace) -> VectorIndex | None:
        """The loaded index if it covers ``space`` or lacks a slice of notes at most (added); else None."""
        loaded = self._indexes.get(workflow_id)
        if loaded is None or loaded.vector_index.dimension != space.dimension or workflow_id in self._loading:
            return None
        index = loaded.vector_index
        missing = space.next_id - loaded.covered
        if missing <= 0:
            self._indexes.move_to_end(workflow_id)
            return index
        if missing > _INDEX_SLICE:
            return None
        self._top_up_now(workflow_id, index, loaded.covered)
        self._keep(workflow_id, index, space.next_id)
        return index

    def _quick_to_load(self, workflow_id: str, space: MemorySpace, saved: int) -> bool:
        """Whether the workflow's index loads in about a millisecond: a small file, a slice to top up."""
        if space.next_id - saved > _INDEX_SLICE:
            return False
        if saved <= 1:
            return True
        try:
            return self._paths(workflow_id)[0].stat().st_size <= _LOAD_ON_LOOP_BYTES
        except OSError:
            return True  # no file: nothing to read

    def _load_now(self, workflow_id: str, space: MemorySpace) -> VectorIndex:
        """Restores the workflow's index and tops it up, on the loop (:meth:`_quick_to_load` said so)."""
        self._forget(workflow_id)
        index, covered, saved = self._restore(workflow_id, space)
        if covered < space.next_id:
            self._top_up_now(workflow_id, index, covered)
        self._keep(workflow_id, index, space.next_id, saved=saved)
        return index

    async def _load(self, workflow_id: str, space: MemorySpace) -> VectorIndex:
        """Restores (or tops up the loaded) index of the workflow to cover ``space``; its lock is held."""
        self._loading.add(workflow_id)
        try:
            with self._using(workflow_id, keep=workflow_id):
                loaded = self._indexes.get(workflow_id)
                saved: int | None = None
                if loaded is not None and loaded.vector_index.dimension == space.dimension:
                    index, covered = loaded.vector_index, loaded.covered
                else:
                    self._forget(workflow_id)
                    index, covered, saved = await asyncio.to_thread(self._restore, workflow_id, space)
                await self._top_up(workflow_id, index, covered)
                self._keep(workflow_id, index, space.next_id, saved=saved)
        finally:
            self._loading.discard(workflow_id)
        return index

    def _keep(self, workflow_id: str, index: VectorIndex, covered: int, *, saved: int | None = None) -> None:
        """Records ``index`` as the workflow's, covering ids below ``covered``, most recently used.

        ``saved`` (what its file covers) carries over from the entry it
        replaces when not given. Then evicts others over the bounds.
        """
        old = self._indexes.pop(workflow_id, None)
        if old is not None:
            self._loaded_bytes -= old.size_bytes
        if saved is None:
            saved = old.saved if old is not None else 1
        if old is not None and old.vector_index is index:
            loaded = _sized(old._replace(covered=covered, saved=saved))
        else:
            loaded = _sized(_Loaded(index, covered, saved, 0, -1))
        self._indexes[workflow_id] = loaded
        self._loaded_bytes += loaded.size_bytes
        self._shrink(keep=workflow_id)

    def _forget(self, workflow_id: str) -> _Loaded | None:
        """Unloads the workflow's index (nothing saved); returns its entry."""
        old = self._indexes.pop(workflow_id, None)
        if old is not None:
            self._loaded_bytes -= old.size_bytes
        return old

    @contextlib.contextmanager
    def _using(self, workflow_id: str, *, keep: str | None = None) -> Iterator[None]:
        """Keeps the workflow's index from eviction for the block (an add or a load, across its awaits).

        Evicts over the bounds after it, never ``keep`` (a load keeps what it loaded).
        """
        self._in_use[workflow_id] = self._in_use.get(workflow_id, 0) + 1
        try:
            yield
        finally:
            users = self._in_use.pop(workflow_id)
            if users > 1:
                self._in_use[workflow_id] = users - 1
            loaded = self._indexes.get(workflow_id)
            if loaded is not None:  # it grew: measure it again if by much, then evict over the bounds
                resized = _sized(loaded)
                if resized is not loaded:
                    self._indexes[workflow_id] = resized
                    self._loaded_bytes += resized.size_bytes - loaded.size_bytes
            self._shrink(keep=keep)

    def _shrink(self, *, keep: str | None) -> None:
        """Evicts the least recently used indexes until within the bounds (never ``keep``, nor one in use)."""
        indexes = self._indexes
        while len(indexes) > self.max_loaded or self._loaded_bytes > self.max_loaded_bytes:
            victim = next((w for w in indexes if w != keep and w not in self._in_use), None)
            if victim is None:  # all in use: the adds under way give theirs back soon
                return
            self._evict(victim)

    def _evict(self, workflow_id: str) -> None:
        """Unloads an index, saving it when its file lacks many notes (:data:`_EVICT_SAVE_FROM`).

        What it does not save is in LMDB, and its next load tops it up from
        there, as after a crash. The save is written by a forked child while
        the loop serves (a large index takes seconds to write); the index
        waits in ``_evicted`` until it is written, and is taken back from
        there if the workflow is used meanwhile. Saves of one workflow's
        file run one after another, in order; past :data:`_EVICT_SAVES_AT_ONCE`
        workflows' saves under way, the index is dropped. A failed save is no error of
        the call that evicted it: the file stays as it was, still consistent.
        """
        loaded = self._forget(workflow_id)
        if loaded is None or loaded.covered - loaded.saved < _EVICT_SAVE_FROM:
            return
        space = self.space(workflow_id)
        if space is None or space.next_id < loaded.covered:
            return  # deleted meanwhile: a file would outlive its notes
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to save it aside from
            self._save_logged(workflow_id, loaded.vector_index, loaded.covered)
            return
        if len(self._saving) >= _EVICT_SAVES_AT_ONCE and workflow_id not in self._saving:
            return
        self._evicted[workflow_id] = loaded
        saving = loop.create_task(self._save_evicted(workflow_id, loaded, self._saving.get(workflow_id)))
        self._saving[workflow_id] = saving
        saving.add_done_callback(functools.partial(self._saved_evicted, workflow_id))

    async def _save_evicted(
        self, workflow_id: str, loaded: _Loaded, previous: asyncio.Task[None] | None
    ) -> None:
        """Saves an evicted index in a forked child, after the workflow's previous save ended."""
        try:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await self._write_aside(workflow_id, loaded.vector_index, loaded.covered)
        finally:
            if self._evicted.get(workflow_id) is loaded:
                del self._evicted[workflow_id]

    def _saved_evicted(self, workflow_id: str, saving: asyncio.Task[None]) -> None:
        if self._saving.get(workflow_id) is saving:
            del self._saving[workflow_id]
        if not saving.cancelled() and saving.exception() is not None:
            _log.warning(
                f"memory: could not save the index of {workflow_id!r} on eviction: {saving.exception()}"
            )

    async def settle(self) -> None:
        """Waits for the saves of evicted indexes under way (a stop awaits them before :meth:`save_all`)."""
        while self._saving:
            await asyncio.gather(*self._saving.values(), return_exceptions=True)

    def _save_logged(self, workflow_id: str, index: VectorIndex, covered: int) -> None:
        try:
            self._save(workflow_id, index, covered)
        except (OSError, RuntimeError, VectorError) as error:
            _log.warning(f"memory: could not save the index of {workflow_id!r} on eviction: {error}")

    def _saved_covered(self, workflow_id: str, space: MemorySpace) -> int:
        """The ids below which the workflow's saved index claims its notes, if it fits ``space``; else 1."""
        try:
            meta = json.loads(self._paths(workflow_id)[1].read_text())
            covered = int(meta["covered"])
        except (OSError, ValueError, KeyError, TypeError):
            return 1
        return covered if meta.get("dimension") == space.dimension and covered <= space.next_id else 1

    def _restore(self, workflow_id: str, space: MemorySpace) -> tuple[VectorIndex, int, int]:
        """A saved index that fits, with the ids it covers (twice: held, saved), or a new empty one."""
        covered = self._saved_covered(workflow_id, space)
        if covered > 1:
            path = self._paths(workflow_id)[0]
            restored = VectorIndex.restore(path, dimension=space.dimension, dtype="f32")
            if restored is not None:
                return restored, covered, covered
        return VectorIndex(dimension=space.dimension), 1, 1

    def _top_up_now(self, workflow_id: str, index: VectorIndex, from_id: int) -> None:
        """Adds to ``index`` every note with id >= ``from_id``, from LMDB, on this thread (a few notes)."""
        for keys, matrix in self._pages_from(workflow_id, index.dimension, from_id):
            index.add(keys, matrix)

    async def _top_up(self, workflow_id: str, index: VectorIndex, from_id: int) -> None:
        """Adds to ``index`` every note with id >= ``from_id``, from LMDB, a page at a time in a thread.

        Each page is read here (a few milliseconds) and inserted in a thread
        with every core but one, while the loop serves. A cancelled caller
        leaves the page under way to finish in its thread.
        """
        for keys, matrix in self._pages_from(workflow_id, index.dimension, from_id):
            await asyncio.to_thread(functools.partial(index.add, keys, matrix, threads=background_threads()))

    def _pages_from(
        self, workflow_id: str, dimension: int, from_id: int
    ) -> Iterator[tuple[np.ndarray[Any, np.dtype[np.uint64]], np.ndarray[Any, np.dtype[np.float32]]]]:
        """The notes with id >= ``from_id``, as (ids, vectors) pages of at most :data:`_SCAN_PAGE`."""
        prefix = _wid(workflow_id)
        start = prefix + u64_key(from_id)
        end = prefix[:-1] + b"\x01"
        while True:
            rows = self._storage.scan(NOTES, start=start, end=end, limit=_SCAN_PAGE)
            if not rows:
                return
            keys = np.fromiter(
                (int.from_bytes(k[-8:], "big") for k, _ in rows), dtype=np.uint64, count=len(rows)
            )
            matrix = np.empty((len(rows), dimension), dtype=np.float32)
            for row, (_, raw) in enumerate(rows):
                matrix[row] = np.frombuffer(_note_dec.decode(raw).vector, dtype=np.float32)
            yield keys, matrix
            if len(rows) < _SCAN_PAGE:
                return
            start = rows[-1][0] + b"\x00"

    async def load_all(self) -> int:
        """Load (restore or rebuild) the index of every workflow with notes; returns how many.

        The most recently loaded stay, within the bounds (``max_loaded``).
        """
        loaded = 0
        start = b""
        while True:
            rows = self._storage.scan(SPACES, start=start or None, limit=_SCAN_PAGE)
            for key, raw in rows:
                loaded += await self._index(key.decode(), _space_dec.decode(raw), locked=False) is not None
            if len(rows) < _SCAN_PAGE:
                return loaded
            start = rows[-1][0] + b"\x00"

    def save_all(self) -> int:
        """Save every loaded index with the note id it covers; returns how many are loaded.

        An index an add is still filling is skipped: its claimed coverage
        runs ahead of what it holds, and LMDB tops it up at its next load.
        So is one whose earlier save is still being written by a child
        (:meth:`settle` first): that child's rename could land after this.
        """
        self._index_dir.mkdir(parents=True, exist_ok=True)
        for workflow_id, loaded in list(self._indexes.items()):
            if (
                loaded.saved != loaded.covered
                and workflow_id not in self._in_use
                and workflow_id not in self._saving
            ):
                self._save(workflow_id, loaded.vector_index, loaded.covered)
        return len(self._indexes)

    async def _save_aside(self, workflow_id: str, index: VectorIndex, covered: int) -> None:
        """Saves one index in a forked child while the loop serves, then the id it covers.

        Writing the file takes a while for a large memory (measured: 72 ms
        for 20,000 384-d notes, 333 ms for 100,000, so seconds at the
        million a workflow may hold), every ``save_every`` notes, and the
        add's workflow lock is held throughout. The child writes the index
        as it was at the fork. Where there is no fork, it is written here.
        A failed save is no error of the add: the old file stays, consistent.
        """
        saving = self._saving.get(workflow_id)
        if saving is not None:  # an eviction's save of the file first: the later save lands last
            await asyncio.gather(saving, return_exceptions=True)
        await self._write_aside(workflow_id, index, covered)

    async def _write_aside(self, workflow_id: str, index: VectorIndex, covered: int) -> None:
        """Writes the index in a forked child, or here where there is no fork; then the id it covers."""
        self._index_dir.mkdir(parents=True, exist_ok=True)
        try:
            pid = index.save_in_child(self._paths(workflow_id)[0])
        except OSError as error:
            _log.warning(f"memory: could not start saving the index of {workflow_id!r}: {error}")
            return
        if pid is None:
            self._save(workflow_id, index, covered)
            return
        code = await child_exit_code(pid)
        if code != 0:
            _log.warning(f"memory: saving the index of {workflow_id!r} failed (child exit status {code})")
            return
        self._record_saved(workflow_id, index, covered)

    def _save(self, workflow_id: str, index: VectorIndex, covered: int) -> None:
        """Save one index, then the id it covers (so the record never claims more than the file)."""
        self._index_dir.mkdir(parents=True, exist_ok=True)
        index.save(self._paths(workflow_id)[0])
        self._record_saved(workflow_id, index, covered)

    def _record_saved(self, workflow_id: str, index: VectorIndex, covered: int) -> None:
        """Records that the index file holds the notes below ``covered`` (once that file is durable)."""
        meta_path = self._paths(workflow_id)[1]
        temporary = meta_path.with_name(f".{meta_path.name}.tmp")
        temporary.write_text(json.dumps({"covered": covered, "dimension": index.dimension}))
        temporary.replace(meta_path)
        loaded = self._indexes.get(workflow_id)
        if loaded is not None:  # the file covers what it does, whichever object wrote it
            self._indexes[workflow_id] = loaded._replace(saved=covered)


def _sized(loaded: _Loaded) -> _Loaded:
    """``loaded`` with its size measured again if it grew by an eighth since (itself otherwise)."""
    held = len(loaded.vector_index)
    if loaded.sized_at >= 0 and held <= loaded.sized_at + loaded.sized_at // _RESIZE_GROWTH:
        return loaded
    return loaded._replace(size_bytes=loaded.vector_index.memory_bytes, sized_at=held)


def _check_notes(notes: Sequence[NoteInput]) -> None:
    if not notes:
        raise InvalidStateArgumentError("give 1 to 1,000 entries", field="entries")
    if len(notes) > MAX_NOTES_PER_CALL:
        raise LimitExceededError(
            f"{len(notes)} entries; at most {MAX_NOTES_PER_CALL} per call",
            field="entries",
            limit=MAX_NOTES_PER_CALL,
        )
    for i, note in enumerate(notes):
        _check_note(i, note)


def _check_note(i: int, note: NoteInput) -> None:
    if note.vector is None and not note.text:
        raise InvalidStateArgumentError("a note needs text or a vector", field=f"entries[{i}]")
    if len(note.text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise LimitExceededError(
            f"entries[{i}].text is over {MAX_TEXT_BYTES} bytes",
            field=f"entries[{i}].text",
            limit=MAX_TEXT_BYTES,
        )
    if note.vector is not None:
        if not 1 <= len(note.vector) <= MAX_DIMENSION:
            raise InvalidStateArgumentError(
                f"a vector has 1 to {MAX_DIMENSION} components", field=f"entries[{i}].vector.values"
            )
        if not all(math.isfinite(v) for v in note.vector):
            raise InvalidStateArgumentError(
                "every vector component must be finite", field=f"entries[{i}].vector.values"
            )
        if not any(note.vector):
            raise InvalidStateArgumentError(
                "the vector is all zeros: it has no direction to compare", field=f"entries[{i}].vector.values"
            )
    if note.content is not None and len(note.content.data) > MAX_CONTENT_BYTES:
        raise LimitExceededError(
            f"entries[{i}].content is over {MAX_CONTENT_BYTES} bytes inline; store it as a blob",
            field=f"entries[{i}].content",
            limit=MAX_CONTENT_BYTES,
        )


async def _index_in_slices(index: VectorIndex, keys: np.ndarray, vectors: np.ndarray) -> None:
    """Adds committed notes to their index a slice per loop turn (HNSW insertion is slow).

    The notes are committed and their coverage claimed: a caller cancelled
    between slices (a client gone, the shutdown grace over) must not leave
    the rest unsearchable, so they are added at once before it goes.
    """
    done = 0
    try:
        while done < len(keys):
            if done:
                await asyncio.sleep(0)  # let other calls run between slices
            index.add(keys[done : done + _INDEX_SLICE], vectors[done : done + _INDEX_SLICE])
            done += _INDEX_SLICE
    except asyncio.CancelledError:
        index.add(keys[done:], vectors[done:])
        raise
