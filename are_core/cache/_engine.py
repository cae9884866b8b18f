"""CacheEngine: the exact and semantic tiers, namespaces, TTL, LRU, stats, durability."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np

from are_core._backoff import backoff
from are_core.embed import Embedder, EmbedderError, LexicalEmbedder, OnnxEmbedder
from are_core.storage import (
    BatchTooLargeError,
    Codec,
    GroupCommitter,
    Storage,
    StorageBusyError,
    StorageError,
    join_key,
    prefix_key,
    u64_key,
)
from are_core.trace import Event, EventDraft, EventSink, record_in_slices
from are_core.vector import (
    EXACT_SEARCH_BELOW,
    EXPANSION_SEARCH,
    LADDER,
    Calibration,
    ChildSearch,
    ChildSweep,
    VectorError,
    VectorIndex,
    background_threads,
    child_exit_code,
    choose_expansion,
)

from ._errors import (
    BlobNotFoundError,
    CacheLimitError,
    DimensionMismatchError,
    EmbedderMismatchError,
    EmbedderUnavailableError,
    ImmutableFieldError,
    InvalidationBusyError,
    InvalidCacheArgumentError,
    NamespaceDeletingError,
    NamespaceLimitError,
    NamespaceNotFoundError,
    NamespaceUnavailableError,
    NamespaceWritesUnavailableError,
)
from ._hot import DEFAULT_HOT_BYTES, HotBodies
from ._model import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_RECALL_TARGET,
    DEFAULT_THRESHOLD,
    DEFAULT_TTL_NS,
    MAX_NAMESPACES,
    CacheHit,
    CacheStats,
    EntryBody,
    EntryHead,
    LookupResult,
    Namespace,
    NamespaceSettings,
    SnapshotMark,
    StatsRecord,
    StoreResult,
)
from ._normalise import entry_id_text, is_blank, parse_entry_id, prompt_hash
from ._table import Entries, EntryTable, ExactView, RecencyView

__all__ = ["CACHE_TABLES", "DEFAULT_INDEX_AT_START", "MUTABLE_SETTINGS", "CacheEngine"]

_log = logging.getLogger("are.cache")

NAMESPACES = "cache_namespaces"
HEADS = "cache_heads"
BODIES = "cache_bodies"
VECTORS = "cache_vectors"
STATS = "cache_stats"
JOURNAL = "cache_journal"
MARKS = "cache_marks"
META = "cache_meta"
CACHE_TABLES: tuple[str, ...] = (NAMESPACES, HEADS, BODIES, VECTORS, STATS, JOURNAL, MARKS, META)
"""The LMDB tables the cache keeps (entries are the truth; indexes and entry tables are derived).

``cache_journal`` has one row per write that changed a namespace's heads
(namespace, sequence -> the changed entry ids), committed with the write;
``cache_marks`` names each namespace's current saved entry table. A start
reads the table and replays the journal rows after it instead of decoding
every head. ``cache_meta`` holds the entry-id high-water mark
(``next_entry_id``: every id below it was handed out once), written in the
same commit as each store that allocates ids, so that no id is ever reused,
even after a SIGKILL.
"""

_MAX_TTL_NS = 366 * 86_400 * 1_000_000_000
_MAX_ENTRIES_BOUND = 100_000_000
_MAX_BYTES_BOUND = 1 << 40
_MAX_DIMENSION = 4096
_DTYPES = ("f32", "f16", "i8")
_CANDIDATES = 8
# A semantic lookup whose nearest candidates cannot answer (removed, expired
# but not yet swept, or older than max_age) searches deeper, four times as
# many at a time, while they are still above the threshold: at most this many.
_MAX_CANDIDATES = 512
# Exact confirmations of semantic misses (see CacheEngine.lookup) may take this
# share of wall-clock time per namespace, with a burst of _CONFIRM_BURST_NS:
# each holds the index's lock for up to a millisecond, and a load of mostly
# misses (a cold cache) must not hand the event loop to them. Past it, the
# graph's answer stands.
_CONFIRM_SHARE = 0.1
_CONFIRM_BURST_NS = 50_000_000
_NEXT_ID_KEY = b"next_entry_id"
_INT64_MAX = 2**63 - 1
_SCAN_PAGE = 10_000
_MAX_PENDING_EVENTS = 10_000
_INVALIDATE_CHUNK = 5_000
# A deletion removes the namespace once no store under way adds to it; rounds of removals before.
_DELETE_ROUNDS = 4
# Evictions past the bounds per commit (a shrink, a flush), and at most this many a store makes
# past its own share: the rest waits for the next chunk (see CacheEngine._shrink).
_EVICT_CHUNK = 5_000

_namespace_codec = Codec(Namespace)
_head_codec = Codec(EntryHead)
_body_codec = Codec(EntryBody)
_stats_codec = Codec(StatsRecord)
_mark_codec = Codec(SnapshotMark)
# A namespace's entry table is saved again once this many entries changed since
# the last one (bounds the journal a start after SIGKILL replays), or journal rows.
_SNAPSHOT_CHANGES = 100_000
_SNAPSHOT_ROWS = 20_000
# Recency (the LRU order) changes with every hit and is saved only with the
# entry table: at most this often while lookups touch entries, and at stop.
_RECENCY_SAVE_NS = 300 * 1_000_000_000
# After a table save that failed (a full disk, say): not again before this long. Each
# try exports every entry of the namespace on the event loop, so a flush a second
# retrying would stall the loop once a second for as long as the disk stays full.
_SNAPSHOT_RETRY_NS = 60 * 1_000_000_000
_MAX_EXPANSION = 1024
_BLOB_REFERRER = b"cache:"  # + an entry id: what a blob-backed entry's reference is filed under
_FOLD_AT = 50_000  # overlay changes of a memory-mapped index before a private copy is loaded
_FLUSH_CHUNK = 2048  # lookup events per flush commit
# Upper estimates of the rows a write carries besides its entries' own, for the committer's
# admission check before memory changes (see CacheEngine._room). The largest encodings
# measured: counters (a StatsRecord with a calibration) 390 bytes; a cache event 640 with a
# 128-byte namespace name, which it holds twice; a namespace row 1,740 with every field at
# its bound.
_BOOKKEEPING_MUTATIONS = 3  # the entry-id mark, the counters, the journal row
_BOOKKEEPING_BYTES = 32 + 512  # the mark (21), the journal's key past the name (9); counters
_EVENT_BYTES = 512  # past twice the namespace's name
_NAMESPACE_BYTES = 2048  # past the name
_REMOVAL_MUTATIONS = 3  # an entry's head, body and vector deleted
_REMOVAL_BYTES = 9 + 8 + 8 + 8  # their keys past the name, and the entry's id in the journal row
_REFERENCE_MUTATIONS = 2  # the two key-only rows of a blob reference (staged or released)
_REFERENCE_BYTES = 2 * (len(_BLOB_REFERRER) + 8 + 1 + 32)
# Evictions over max_bytes take the least recently used entries until the rest fits, so
# how many is known only as they are taken: estimated as twice as many mean-sized
# entries as the excess makes, and this many more (see CacheEngine._evictions).
_EVICTION_MARGIN = 8
DEFAULT_INDEX_AT_START = 4096
"""Missing vectors a start indexes before the engine serves; more are indexed after it, in the background."""
# Background indexing adds vectors in chunks sized to take about this long:
# a lookup or store that needs the index meanwhile waits for the chunk.
_BACKLOG_CHUNK_NS = 5_000_000
_BACKLOG_FIRST_CHUNK = 16
_BACKLOG_MAX_CHUNK = 1024
# A namespace's index is written again (in a forked child) once this many of
# its entries changed since it was last written (or a twentieth of the index,
# if more), or this long after, if any did: what a start after SIGKILL has
# to index again stays bounded.
_CHECKPOINT_CHANGES = DEFAULT_INDEX_AT_START
_CHECKPOINT_NS = 600 * 1_000_000_000
_CHECKPOINT_RETRY_NS = 60 * 1_000_000_000
# Search-expansion calibration: on the last this many semantic lookups'
# queries, again after as many more once the index grew or shrank by a
# quarter, or an hour passed. The 95% lower bound of a recall measured on
# n lookups is what decides: with 1,024, an expansion whose true recall is
# 0.999 passed a 0.995 target only when it missed at most one (73% of the
# time); with 2,048, when it missed at most four (95%).
_CALIBRATION_QUERIES = 2048
_RECALIBRATE_NS = 3600 * 1_000_000_000
# How long a calibration or sweep child may run. Both run at idle priority: on a
# CPU kept busy they barely advance, while the pages that the engine changes
# after the fork are copied for them (up to the whole index). Past this, the
# child is killed; a calibration is made again after as many new lookups, a
# sweep after _REPAIR_RETRY_NS. At 1M entries both take a few minutes of CPU.
_CHILD_DEADLINE_S = 1800.0
# A namespace's index is swept for entries no search reaches by their own
# vector (in a forked child, see CacheEngine.repair_due) once this many of its
# entries with vectors were removed or replaced since its last sweep (or a
# tenth of the index, if more). The entries found are inserted again on the
# event loop, in chunks sized like background indexing's.
_REPAIR_CHANGES = 1000
_REPAIR_PASSES = 3  # inserting nodes again can strand others: sweeps again while a pass inserted any
_REPAIR_RETRY_NS = 60 * 1_000_000_000  # after a sweep that failed (a child killed, say): not at once
_REPAIR_FIRST_CHUNK = 16
_REPAIR_MAX_CHUNK = 256
# A namespace out of service whose reload failed (see CacheEngine._resync) is reloaded again
# at a flush once this long passed, doubling with each failure up to _RELOAD_MAX_DELAY_NS: a
# reload reads the namespace and indexes its vectors again on the event loop, which a flush
# every second must not repeat for as long as the storage fails (a full disk, say).
_RELOAD_FIRST_DELAY_NS = 1_000_000_000
_RELOAD_MAX_DELAY_NS = 60 * 1_000_000_000
# After a write of a namespace failed to commit (a full disk, say; its memory was reloaded from
# LMDB, see CacheEngine._resync), by a call or by a flush: no write of it is made again before
# this long, doubling with each failed try in a row up to _FLUSH_MAX_DELAY_NS; calls that write
# are refused meanwhile, before they change anything. The reload succeeds (reads still work) and
# leaves the same expired entries and counters to write, so a flush every second wrote them,
# failed and reloaded the namespace on the event loop again, for as long as the disk stayed full;
# and every StoreCache a client retried did the same (at a million entries a read of every head
# and an index rebuilt, each time). Lookup events wait likewise after a write of theirs failed
# (they stay queued, within the bound).
_FLUSH_FIRST_DELAY_NS = 1_000_000_000
_FLUSH_MAX_DELAY_NS = 60 * 1_000_000_000
# After a fold of a view's overlay that failed (memory refused under RLIMIT_AS or strict
# overcommit, say; see CacheEngine._warm): not again before this long, doubling with each
# failure in a row up to _FOLD_MAX_DELAY_NS. Each try holds the GIL for its copy (about 0.7 s
# at 1M entries); meanwhile the view serves on, its overlay growing.
_FOLD_FIRST_DELAY_NS = 60 * 1_000_000_000
_FOLD_MAX_DELAY_NS = 600 * 1_000_000_000
# Counters of what lookups and repairs did in memory (written with any later commit): a
# reload after a failed commit keeps those memory counted since the last commit that ended.
_MEMORY_COUNTERS = (
    "lookups",
    "exact_hits",
    "semantic_hits",
    "misses",
    "saved_tokens",
    "saved_cost_micro_usd",
    "repaired",
)


class _WriteRetry:
    """A run of failed writes in a row (of one namespace, or of lookup events), and the next try.

    Kept apart from the namespace's :class:`_State`: the failure reloads the
    namespace (see CacheEngine._resync), and the delay must outlive that.
    """

    __slots__ = ("cause", "failures", "retry_ns", "since_ns")

    def __init__(self) -> None:
        self.failures = 0
        self.since_ns = 0  # when the first of the run failed (engine clock)
        self.retry_ns = 0  # when the next try is due (engine clock)
        self.cause = ""  # why the last one failed

    def due(self, now: int) -> bool:
        """Whether the next try is due (also when the clock stepped back past the longest delay)."""
        return now >= self.retry_ns or self.retry_ns - now > _FLUSH_MAX_DELAY_NS

    def failed(self, now: int, error: BaseException) -> bool:
        """Counts a failure and sets when the next try is due; returns whether it began the run."""
        self.cause = str(error) or type(error).__name__
        first = not self.failures
        if first:
            self.since_ns = now
        self.failures += 1
        self.retry_ns = now + backoff(self.failures, _FLUSH_FIRST_DELAY_NS, _FLUSH_MAX_DELAY_NS)
        return first


class _State:
    """One namespace in memory: entry heads (exact map, recency, expiry), the index, the journal.

    ``heads``, ``exact`` and ``lru`` are views of one :class:`Entries`
    (a saved table plus the changes since). Every change of a head is noted
    in ``pending`` and written as one journal row with the write that made
    it; ``seq`` is the last journal row assigned, ``mark`` the snapshot
    mark in force.
    """

    __slots__ = (
        "backlog",
        "backlog_removed",
        "backlog_total",
        "backlog_vectors",
        "calibrated_at",
        "calibrating",
        "calibration_unfinished",
        "checkpoint_ns",
        "checkpoint_retry_ns",
        "committed_removals",
        "confirm_at_ns",
        "confirm_budget_ns",
        "counted_removals",
        "embedder",
        "embedder_error",
        "entries",
        "exact",
        "fold_failures",
        "fold_retry_ns",
        "heads",
        "index",
        "index_changes",
        "index_dirty",
        "index_incomplete",
        "journal_cuts",
        "lru",
        "mark",
        "name_bytes",
        "namespace",
        "overdue",
        "pending",
        "queries",
        "queries_seen",
        "reload_error",
        "reload_failures",
        "reload_retry_ns",
        "reload_since_ns",
        "repair_retry_ns",
        "saved_ns",
        "seq",
        "since",
        "snapshot_due",
        "snapshot_retry_ns",
        "stats",
        "stats_dirty",
        "sweeping",
        "thresholds",
        "touched",
        "unsaved_changes",
        "unsaved_rows",
    )

    def __init__(
        self,
        namespace: Namespace,
        embedder: Embedder | None,
        index: VectorIndex,
        base: EntryTable | None = None,
        *,
        now: int,
    ) -> None:
        self.namespace = namespace
        self.name_bytes = len(namespace.name.encode("utf-8"))  # the name's share of its rows' keys
        self.embedder = embedder
        # Why text cannot be embedded here although the namespace has an
        # embedder (the configured model no longer fits it); "" when it can.
        self.embedder_error = ""
        self.index = index
        self.index_dirty = False
        self.index_incomplete = False  # some entries' vectors may be missing from it (checked at a start)
        # Entries whose vectors a start left to index after serving began
        # (ids, in order); None once none are left.
        self.backlog: np.ndarray[Any, np.dtype[np.uint64]] | None = None
        self.backlog_total = 0
        # While it is indexed, changes to the index wait for the indexer too (so
        # that no store or removal waits for its lock with the event loop): the
        # vectors of entries stored since, and keys removed since.
        self.backlog_vectors: dict[int, np.ndarray[Any, np.dtype[np.float32]]] = {}
        self.backlog_removed: list[int] = []
        self.index_changes = 0  # entries changed since the index file was last written
        # Times a deletion dropped the journal ahead of its table (see CacheEngine._forget_journal):
        # a table saved from before then must not be made current.
        self.journal_cuts = 0
        # sweeping: a repair sweep is under way (see index_removals); after one
        # that failed, none before repair_retry_ns.
        self.sweeping = False
        self.repair_retry_ns = 0
        # The last semantic lookups' queries and thresholds (a ring), for calibration;
        # half precision (0.75 MB at 384-d), and only in namespaces of over 2,048 vectors.
        self.queries: np.ndarray[Any, np.dtype[np.float16]] | None = None
        self.thresholds: np.ndarray[Any, np.dtype[np.float32]] | None = None
        self.queries_seen = 0
        self.calibrated_at = 0  # queries_seen when the last calibration began
        # The last calibration ended without a result (it could not start, failed, ran
        # past its deadline, or too few of its lookups could hit): not again before
        # _CALIBRATION_QUERIES more lookups, else it would fork every flush.
        self.calibration_unfinished = False
        self.calibrating: ChildSearch | None = None
        self.checkpoint_ns = now  # when it was last written, or loaded (engine clock)
        self.checkpoint_retry_ns = 0  # after a failed checkpoint: not before then
        # Folds of the overlay that failed in a row (see CacheEngine._warm), and not before when again.
        self.fold_failures = 0
        self.fold_retry_ns = 0
        self.stats = StatsRecord()
        self.stats_dirty = False
        # Evictions and expirations as of the last write submitted, and of the writes
        # committed (see take_removals): a failed write's must not stay counted.
        self.counted_removals = (0, 0)
        self.committed_removals = (0, 0)
        self.touched: set[int] = set()  # entries used since the last table export
        # Time left for exact confirmations of misses (monotonic ns; see _CONFIRM_SHARE).
        self.confirm_budget_ns = _CONFIRM_BURST_NS
        self.confirm_at_ns = time.monotonic_ns()
        self.saved_ns = now  # when the recency in memory was last saved or loaded (engine clock)
        self.pending: list[int] = []
        # (expire_ns, entry_id) taken from the expiry order whose removal a flush left for
        # the next (backpressure, or past a commit's chunk; see CacheEngine._flush_namespace).
        self.overdue: list[tuple[int, int]] = []
        self.seq = 0
        self.mark: SnapshotMark | None = None
        self.since: list[int] | None = None  # ids changed while a snapshot is being written
        self.snapshot_due = False
        self.snapshot_retry_ns = 0  # after a table save that failed: not before then (engine clock)
        self.unsaved_changes = 0
        self.unsaved_rows = 0
        # Out of service (see CacheEngine._resync): why its last reload failed ("" before one
        # did), how many failed in a row, when the first of them failed and when the next is due.
        self.reload_error = ""
        self.reload_failures = 0
        self.reload_since_ns = 0
        self.reload_retry_ns = 0
        self._use(Entries(base))

    def _use(self, entries: Entries) -> None:
        self.entries = entries
        self.heads = entries
        self.exact = ExactView(entries)
        self.lru = RecencyView(entries)

    def use_stats(self, stats: StatsRecord) -> None:
        """Counts on from these counters (as LMDB holds them)."""
        self.stats = stats
        self.counted_removals = self.committed_removals = (stats.evictions, stats.expirations)

    def take_removals(self) -> tuple[int, int]:
        """The evictions and expirations counted since the last write was submitted: this write's.

        Both are counted only in the loop step that builds the write removing
        the entries (see CacheEngine._evict and _expire), and every write that
        follows carries the counters as memory has them: when one fails, a later
        one may commit its share too (see CacheEngine._carry_stats).
        """
        stats, (evicted, expired) = self.stats, self.counted_removals
        self.counted_removals = (stats.evictions, stats.expirations)
        return stats.evictions - evicted, stats.expirations - expired

    def settle_removals(self, share: tuple[int, int]) -> None:
        """Counts a committed write's evictions and expirations as LMDB's truth."""
        evicted, expired = self.committed_removals
        self.committed_removals = (evicted + share[0], expired + share[1])

    @property
    def size_bytes(self) -> int:
        """Bytes of prompts and responses held."""
        return self.entries.size_bytes

    def admit(self, head: EntryHead) -> None:
        self.entries.admit(head)
        self.changed(head.entry_id)

    def forget(self, entry_id: int) -> EntryHead | None:
        head = self.entries.forget(entry_id)
        if head is None:
            return None
        self.touched.discard(entry_id)
        self.changed(entry_id)
        return head

    def changed(self, entry_id: int) -> None:
        self.index_changes += 1
        self.pending.append(entry_id)
        if self.since is not None:
            self.since.append(entry_id)

    def rebase(self, table: EntryTable) -> None:
        """Serves from a freshly saved table, carrying over what changed since its export."""
        since = [*(self.since or ()), *self.touched]
        self._use(self.entries.rebase(table, since))

    @property
    def index_removals(self) -> int:
        """Entries with vectors removed or replaced since the index was last swept (see repair_due).

        Kept with the durable counters, so a restart does not start the
        count again: a sidecar restarted more often than it reaches the
        bound would otherwise never sweep.
        """
        return self.stats.unswept_removals

    @index_removals.setter
    def index_removals(self, value: int) -> None:
        self.stats.unswept_removals = value
        self.stats_dirty = True


class BlobReferences(Protocol):
    """What the cache needs of the sidecar's blob store (``are_core.state.BlobStore``).

    An entry whose response is a blob references it from its own commit,
    and drops the reference in the commit that removes it; the blob store
    keeps a referenced blob and sweeps unreferenced ones.
    """

    def stat(self, digest: bytes) -> Any:
        """The blob's info (``size_bytes``, ``content_type``), or None when it does not exist."""
        ...

    def stage_reference(self, batch: Any, referrer: bytes, digest: bytes) -> None:
        """Adds ``referrer``'s reference to the blob to ``batch``."""
        ...

    def stage_release(self, batch: Any, referrer: bytes, digest: bytes) -> None:
        """Adds the removal of ``referrer``'s reference to the blob to ``batch``."""
        ...


class CacheEngine:
    """The semantic cache: a lookup tries the exact tier, then the semantic tier.

    Entries live in LMDB (heads, bodies and vectors in their own tables,
    written in one batch per change). In memory the engine keeps, per
    namespace, each entry's head (hash, times, size), the exact-tier map,
    the recency order (least recently used evicted first), an expiry heap
    and the usearch index (derived: restored by memory map at start,
    repaired from LMDB when it disagrees, rebuilt when missing, saved at
    stop). Lookups write nothing on their path: counters and the
    CACHE_HIT/CACHE_MISS events are flushed every ``flush_interval`` seconds
    (and at stop), so a SIGKILL can lose at most that much of them, never an
    acknowledged entry or removal. The event of a task's lookup
    (:meth:`lookup_for_task` naming its workflow) is the exception: it is
    recorded at once, before the scheduler records what the lookup decided
    (see :meth:`_record_task_event`). Recency (which entry an eviction takes
    first) is kept in memory and saved with the entry table, at most every
    five minutes while lookups use entries and at stop: rewriting the head of
    every entry a lookup touched cost more than the lookups themselves, and
    a SIGKILL only makes the eviction order up to five minutes stale.

    Expired, evicted or invalidated entries never answer: expiry is checked
    on every lookup; removals leave memory before their commit is awaited.
    Every write is checked against the group committer's bounds before it
    changes memory, and admitted in the same loop step: under backpressure a
    call is refused (``StorageBusyError``) with nothing changed, and a flush
    leaves its work to the next one.
    The bodies of entries that answered lately stay in memory (``hot_bytes``),
    so a repeated hit reads nothing from LMDB; a kept body answers only for
    an entry whose head is still there.

    Args:
        storage: The open storage (with :data:`CACHE_TABLES`).
        committer: The group committer writes go through.
        index_dir: Where saved indexes live (derived data beside LMDB).
        events: The event sink, or None to record no events.
        models: Local model directories by name, usable as namespace embedders.
        coalesce: Batch the semantic searches of concurrent lookups into one
            native call in a worker thread (pays only with idle cores).
        flush_interval: Seconds between flushes of counters and lookup events.
        blobs: The blob store responses stored as blob references are checked
            against and referenced in; None refuses them (BlobNotFoundError).
        hot_bytes: Memory for the bodies of recently answered entries (see
            :class:`~are_core.cache._hot.HotBodies`); 0 reads every hit's body
            from LMDB.
        index_at_start: Vectors missing from a namespace's index that
            :meth:`start` adds before returning; past that many (a missing or
            stale index file after a crash), they are added in the background
            while the engine serves (see :meth:`start`).
        checkpoint_changes: Entries changed in a namespace before its index
            is written again (in a forked child, see :meth:`checkpoint_due`);
            0 means 4,096 or a twentieth of the index, whichever is more.
        repair_changes: Entries with vectors removed or replaced in a
            namespace before its index is swept for entries that no search
            reaches (in a forked child, see :meth:`repair_due`); 0 means
            1,000 or a tenth of the index, whichever is more.
        huge_pages: After a start, move each index restored as a view of its
            file into memory in huge pages, in a worker thread while the view
            serves (:meth:`VectorIndex.into_huge_pages`): faster searches for
            the index's size in resident memory. False leaves views in their
            files' mappings (the page cache's memory, shared and reclaimable).
        clock: Nanoseconds since the epoch (tests may pass their own).
    """

    def __init__(
        self,
        storage: Storage,
        committer: GroupCommitter,
        *,
        index_dir: Path,
        events: EventSink | None = None,
        models: Mapping[str, Path] | None = None,
        coalesce: bool = False,
        flush_interval: float = 1.0,
        clock: Callable[[], int] = time.time_ns,
        blobs: BlobReferences | None = None,
        hot_bytes: int = DEFAULT_HOT_BYTES,
        index_at_start: int = DEFAULT_INDEX_AT_START,
        checkpoint_changes: int = 0,
        repair_changes: int = 0,
        huge_pages: bool = True,
    ) -> None:
        self._storage = storage
        self._huge_pages = huge_pages
        self._index_at_start = index_at_start
        self._checkpoint_changes = checkpoint_changes
        self._repair_changes = repair_changes
        self._indexers: set[asyncio.Task[None]] = set()  # background indexing, one task per namespace
        self._stopping = False
        self._hot = HotBodies(hot_bytes)
        self._committer = committer
        self._index_dir = index_dir
        self._events = events
        self._models = dict(models or {})
        self._loaded_models: dict[str, Embedder] = {}
        self._flush_interval = flush_interval
        self._coalesce = coalesce
        self._clock = clock
        self._states: dict[str, _State] = {}
        # Namespaces out of service until reloaded from LMDB (a commit failed; see _resync),
        # by name: the state memory had, which no call reads any more.
        self._reloading: dict[str, _State] = {}
        self._next_id = 1
        self._pending_events: list[EventDraft] = []
        self._dropped_events = 0
        # Runs of failed writes: each namespace's by name (see _write_failed; its _State is replaced
        # by the reload the failure causes), and the lookup events' (see flush).
        self._write_retries: dict[str, _WriteRetry] = {}
        self._events_retry = _WriteRetry()
        self._flusher: asyncio.Task[None] | None = None
        self._tick: asyncio.Future[None] | None = None
        self._warmers: set[asyncio.Task[Any]] = set()  # index prefaults and folds in worker threads
        self._folding: set[str] = set()  # namespaces whose overlay is being folded into a private copy
        self._calibrations: set[asyncio.Task[None]] = set()
        self._repairs: set[asyncio.Task[None]] = set()  # a sweep and its re-insertions (one at a time)
        self._sweep: ChildSweep | None = None  # the sweep child running, if any
        self._writers: dict[int, str] = {}  # children writing an index (checkpoints): pid -> namespace
        self._deleting: set[str] = set()  # namespaces being deleted (see delete_namespace)
        self._write_lock = asyncio.Lock()
        self._tickets = 0  # _submit calls begun
        self._inflight: dict[int, asyncio.Future[None]] = {}  # commits under way, by ticket
        self._committing: dict[int, list[_State]] = {}  # the namespaces each commit under way changes
        self._failures = 0  # _submit calls that failed (memory was reloaded)
        self._snapshotting = False
        self._blobs = blobs
        self._entry_blobs: dict[int, bytes] = {}  # blob-backed entries stored since start -> digest
        # Bodies of entries stored whose commit is under way (see _answer).
        self._unsettled: dict[int, EntryBody] = {}

    # -- lifecycle -------------------------------------------------------

    def _remove_temporaries(self) -> None:
        """Removes index files a killed writer left half-written (``.NAME.PID.tmp``)."""
        with contextlib.suppress(OSError):
            for path in self._index_dir.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    path.unlink()

    async def start(self) -> None:
        """Loads every namespace and its entries, restores or repairs the indexes, starts the flusher.

        A namespace whose saved index lacks more than ``index_at_start``
        vectors (no index file, or one saved long before a crash) is not
        rebuilt before serving: at 1M entries that took minutes, during
        which the whole sidecar did not serve. Its missing vectors are added
        in the background instead, in chunks of about 5 ms. Meanwhile the
        exact tier answers every entry and the semantic tier those indexed
        so far; :meth:`stats` counts the rest (``unindexed_entries``) and
        CACHE_INDEXING events show the progress.
        """
        self._remove_temporaries()
        self._next_id = max(self._next_id, self._stored_next_id())
        for _, raw in self._scan(NAMESPACES, b""):
            namespace = _decode_namespace(raw)
            self._states[namespace.name] = self._load(namespace)
        self._remove_orphan_files()
        self._start_indexing()
        for state in self._states.values():
            if state.index.is_view:  # outside the GIL: searches meanwhile fault pages in themselves
                task = asyncio.create_task(asyncio.to_thread(self._settle_view, state.index))
                self._warmers.add(task)
                task.add_done_callback(self._warmers.discard)
        self._flusher = asyncio.create_task(self._flush_loop())

    def _remove_orphan_files(self) -> None:
        """Deletes index and entry-table files of namespaces that no longer exist.

        A deletion removes its namespace's files after the commit that removes
        the namespace; a SIGKILL between the two leaves them, and nothing
        else would ever read or remove them (a namespace created again under
        the name removes its own stale files, but only for its dtype).
        """
        try:
            names = [entry.name for entry in self._index_dir.iterdir()]
        except OSError:
            return
        for file_name in names:
            owner, middle, kind = [*file_name.rsplit(".", 2), "", ""][:3]
            derived = (kind == "usearch" and middle in _DTYPES) or (kind == "entries" and middle.isdigit())
            if derived and owner not in self._states:  # (temporary files end in .tmp: not these)
                with contextlib.suppress(OSError):
                    (self._index_dir / file_name).unlink()

    def _settle_view(self, index: VectorIndex) -> None:
        """Maps a restored view's pages, then moves it into huge pages (a worker thread)."""
        index.prefault()
        if self._huge_pages and not self._stopping:
            index.into_huge_pages()

    def _fold_due(self) -> None:
        """Starts loading a private copy of each memory-mapped index whose overlay grew large.

        A restored index serves from its memory-mapped file and takes changes
        in an overlay (see :class:`~are_core.vector.VectorIndex`). Loading the
        copy holds the GIL (about 0.7 s at 1M i8 entries), stalling every
        call meanwhile, so it happens only once the overlay holds
        ``_FOLD_AT`` changes or a twentieth of the index (or at stop, to save);
        after a fold that failed, not before its delay (see :meth:`_warm`).
        """
        now = self._clock()
        for state in self._states.values():
            index = state.index
            if not index.is_view or index.pending_changes < max(_FOLD_AT, len(index) // 20):
                continue
            if state.namespace.name in self._deleting:  # its index is about to go whole
                continue
            if now < state.fold_retry_ns:  # the last fold failed (see _warm)
                continue
            if any(not task.done() for task in self._warmers):
                return
            task = asyncio.create_task(self._warm(state))
            self._warmers.add(task)
            task.add_done_callback(self._warmers.discard)
            return

    def checkpoint_due(self) -> asyncio.Task[None] | None:
        """Starts writing the index of a namespace that changed enough since it was last written.

        Only a clean stop used to write an index, so a SIGKILL weeks after a
        start left a start with every vector added since to index again. A
        checkpoint writes the index from a forked child (this process pauses
        for the fork only), one namespace at a time. Returns the task doing
        it, if one started.
        """
        if any(not task.done() for task in self._warmers):
            return None
        now = self._clock()
        for state in self._states.values():
            if not state.index_changes or state.index.is_view or not len(state.index):
                continue
            if state.namespace.name in self._deleting:  # its index is about to go whole
                continue
            if now < state.checkpoint_retry_ns:
                continue
            bound = self._checkpoint_changes or max(_CHECKPOINT_CHANGES, len(state.index) // 20)
            if state.backlog is not None:  # a rebuild behind a start: a checkpoint per quarter of it
                bound = max(bound, state.backlog_total // 4)
            if state.index_changes < bound and now - state.checkpoint_ns < _CHECKPOINT_NS:
                continue
            task = asyncio.create_task(self._checkpoint(state))
            self._warmers.add(task)
            task.add_done_callback(self._warmers.discard)
            return task
        return None

    async def _checkpoint(self, state: _State) -> None:
        name = state.namespace.name
        began = time.monotonic()
        started = self._clock()
        state.checkpoint_retry_ns = started + _CHECKPOINT_RETRY_NS  # cleared once written
        if not await self._disown_index(state) or self._stopping or self._states.get(name) is not state:
            return
        changes = state.index_changes
        try:
            pid = state.index.save_in_child(self._index_path(state.namespace))
        except OSError as error:
            _log.warning(f"cache: could not start writing the index of {name!r}: {error}")
            return
        if pid is None:
            return
        self._writers[pid] = name
        try:
            code = await child_exit_code(pid)
        finally:
            self._writers.pop(pid, None)
        if code != 0:
            if not self._stopping and self._states.get(name) is state:  # else stopped or deleted
                _log.warning(f"cache: writing the index of {name!r} failed (child exit status {code})")
            return
        if self._states.get(name) is state:
            state.index_changes -= changes
            state.checkpoint_ns = started
            state.checkpoint_retry_ns = 0
        seconds = time.monotonic() - began
        _log.info(f"cache: wrote the index of {name!r} ({len(state.index)} vectors) in {seconds:.1f} s")

    async def _disown_index(self, state: _State) -> bool:
        """Before a checkpoint overwrites the index file: the mark no longer vouches for it.

        A clean stop's mark says the saved index agrees with its table, so a
        start repairs it from the journal after the table alone. A checkpoint
        writes the index as it is in memory at the fork, which may hold
        changes whose commits never end (a SIGKILL meanwhile): an entry
        stored again has its old key gone and its new one there, the count
        unchanged, and the old entry, still in LMDB, would never answer a
        semantic lookup again. Once disowned, a start checks the file whole.
        Returns False (no checkpoint now) while a table is being saved (its
        mark comes next) or when the commit failed.
        """
        mark = state.mark
        if mark is None or mark.index_seq < 0:
            return True
        if self._snapshotting:
            return False
        disowned = msgspec.structs.replace(mark, index_seq=-1)
        batch = self._storage.batch()
        batch.put(MARKS, state.namespace.name.encode(), _mark_codec.encode(disowned))
        try:
            await self._committer.submit(batch)
        except Exception as error:  # noqa: BLE001 - no checkpoint this time; the next turn retries
            _log.warning(f"cache: could not prepare a checkpoint of {state.namespace.name!r}: {error}")
            return False
        if state.mark is mark:
            state.mark = disowned
        return True

    def calibrate_due(self) -> asyncio.Task[None] | None:
        """Starts calibrating the search expansion of a namespace that is due; returns the task.

        Due: a namespace whose expansion is not fixed, with over
        ``EXACT_SEARCH_BELOW`` vectors (smaller ones are searched exactly)
        and ``_CALIBRATION_QUERIES`` semantic lookups remembered, never
        calibrated (or for another target, on another :data:`LADDER` or on
        another number of lookups), or with as many lookups since the last
        calibration and an index a quarter larger or smaller, or an hour
        older. The searches run in a forked child at idle priority
        (:meth:`VectorIndex.search_in_child`), forked here, between two
        folds of the overlay (a fold holds the index's lock for its copy).
        """
        now = self._clock()
        for state in self._states.values():
            namespace = state.namespace
            if (
                namespace.expansion_fixed
                or namespace.name in self._deleting
                or state.calibrating is not None
                or state.sweeping
                or state.queries is None
                or state.thresholds is None
                or state.queries_seen < _CALIBRATION_QUERIES
                or namespace.name in self._folding
                or len(state.index) <= EXACT_SEARCH_BELOW
            ):
                continue
            entries = len(state.index)
            if (
                state.calibration_unfinished
                and state.queries_seen - state.calibrated_at < _CALIBRATION_QUERIES
            ):
                continue
            last = state.stats.calibration
            if (
                last is not None
                and last.target == namespace.recall_target
                and last.ladder == LADDER
                and last.queries == _CALIBRATION_QUERIES
            ):
                if state.queries_seen - state.calibrated_at < _CALIBRATION_QUERIES:
                    continue
                resized = not last.entries * 0.8 <= entries <= last.entries * 1.25
                if not resized and now - last.time_ns < _RECALIBRATE_NS:
                    continue
            try:
                child = state.index.search_in_child(state.queries.astype(np.float32), LADDER)
            except OSError as error:
                # No pipe or fork now (EMFILE, ENOMEM, EAGAIN at a pids limit): a calibration
                # that ended without a result, made again after as many new lookups, not at the
                # next flush (a try a second, each taking the index's locks, and a warning).
                state.calibration_unfinished = True
                state.calibrated_at = state.queries_seen
                _log.warning(
                    f"cache: could not start calibrating {namespace.name!r}: {error}; "
                    f"again after {_CALIBRATION_QUERIES:,} more lookups"
                )
                continue
            if child is None:
                continue
            state.calibrating = child
            state.calibrated_at = state.queries_seen
            task = asyncio.create_task(self._calibrate(state, child, state.thresholds.copy(), entries))
            self._calibrations.add(task)
            task.add_done_callback(self._calibrations.discard)
            return task
        return None

    async def _calibrate(
        self, state: _State, child: ChildSearch, thresholds: np.ndarray[Any, Any], entries: int
    ) -> None:
        name = state.namespace.name
        state.calibration_unfinished = True  # until a result is in force
        try:
            async with asyncio.timeout(_CHILD_DEADLINE_S):  # cancelled, the wait kills the child
                found = await child.result()
        except TimeoutError:
            _log.warning(
                f"cache: calibrating {name!r} did not end within {_CHILD_DEADLINE_S:g} s (its child runs "
                f"at idle priority, and the CPU was kept busy); killed, made again after "
                f"{_CALIBRATION_QUERIES:,} more lookups"
            )
            return
        except (VectorError, OSError, ValueError) as error:
            if not self._stopping and self._states.get(name) is state:  # else stopped or deleted
                _log.warning(f"cache: calibrating {name!r} failed: {error}")
            return
        finally:
            state.calibrating = None
        if self._states.get(name) is not state or state.namespace.expansion_fixed:
            return
        reference = found.pop(0)
        result = choose_expansion(
            found,
            reference,
            thresholds,
            target=state.namespace.recall_target,
            similarity_error=state.index.similarity_error,
            entries=entries,
            time_ns=self._clock(),
        )
        if result is None:
            _log.info(
                f"cache: too few of {name!r}'s last lookups could hit to calibrate; "
                f"again after {_CALIBRATION_QUERIES:,} more"
            )
            return
        previous = state.index.expansion_search
        state.calibration_unfinished = False
        state.stats.calibration = result
        state.stats_dirty = True
        state.namespace = _in_force(state.namespace, result)
        state.index.expansion_search = result.expansion
        self._queue_event(
            EventDraft(
                event_type="CACHE_CALIBRATED",
                name=name,
                attributes={
                    "are.cache.namespace": name,
                    "are.cache.search_expansion": result.expansion,
                    "are.cache.previous_search_expansion": previous,
                    "are.cache.recall": round(result.recall, 6),
                    "are.cache.recall_lower_bound": round(result.lower_bound, 6),
                    "are.cache.samples": result.samples,
                    "are.cache.recall_target": result.target,
                    "are.cache.met": result.met,
                },
            )
        )
        _log.info(
            f"cache: {name!r} searches with expansion {result.expansion} (was {previous}): recall@1 "
            f"{result.recall:.4f} on {result.samples} lookups, at least {result.lower_bound:.4f} at 95%"
        )

    def repair_due(self) -> asyncio.Task[None] | None:
        """Starts sweeping the index of a namespace that saw enough removals for entries no search reaches.

        Removals and replacements (evictions, expiry, invalidations, a
        prompt stored again) leave some HNSW nodes that no search reaches by
        their own vector, so a lookup by an entry's own vector misses it.
        Where a brute-force search is cheap a miss is confirmed by one
        (:meth:`lookup`); above that, nothing else finds them. Due: a
        namespace of over ``EXACT_SEARCH_BELOW`` vectors with
        ``repair_changes`` entries with vectors removed or replaced since
        its last sweep (by default 1,000 or a tenth of the index, whichever
        is more), no calibration running on it, no fold of its overlay, no
        start's backlog, not a view of its saved file (see
        :meth:`_may_sweep`), and none failed there in the last minute; the
        most overdue first. The count is durable: a restart goes on with
        it. A forked child at idle priority finds the keys
        (:meth:`VectorIndex.sweep_in_child`), one sweep in the whole engine
        at a time; the entries still live are inserted again (see
        :meth:`_repair`). Returns the task doing it, if one started.
        """
        if self._stopping or any(not task.done() for task in self._repairs):
            return None
        now = self._clock()
        due: list[tuple[float, _State]] = []
        for state in self._states.values():
            if not self._may_sweep(state) or now < state.repair_retry_ns:
                continue
            bound = self._repair_changes or max(_REPAIR_CHANGES, len(state.index) // 10)
            if state.index_removals >= bound:
                due.append((state.index_removals / bound, state))
        if not due:
            return None
        # The most overdue first: a namespace churning during its own sweeps never starves the others.
        state = max(due, key=lambda pair: pair[0])[1]
        child = _fork_sweep(state)
        if child is None:  # no fork here, or it failed
            state.repair_retry_ns = now + _REPAIR_RETRY_NS
            return None
        removals, state.index_removals = state.index_removals, 0  # those after the fork: the next sweep's
        self._sweep = child
        state.sweeping = True
        task = asyncio.create_task(self._repair(state, child, removals))
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)
        return task

    async def _repair(self, state: _State, child: ChildSweep, removals: int) -> None:
        """Collects a sweep's unreachable keys, inserts those of live entries again, and sweeps again.

        A key whose entry was removed or replaced since the fork (an entry id
        is never reused: a replacement is a new entry) or expired is
        skipped: it never answers, and must not come back into the index.
        The others are inserted again (:meth:`_reinsert`). Inserting a node
        rewrites its neighbours' links and can leave another node
        unreachable, so while a pass inserted any, another pass follows, up
        to ``_REPAIR_PASSES``. Records a CACHE_INDEXING event
        (``are.cache.reason`` "REPAIR") and adds what was inserted again to
        the namespace's ``repaired_entries``.
        """
        name = state.namespace.name
        began = time.monotonic()
        checked = unreachable = reinserted = passes = 0
        try:
            while True:
                passes += 1
                try:
                    async with asyncio.timeout(_CHILD_DEADLINE_S):  # cancelled, the wait kills the child
                        found = await child.result()
                except (VectorError, OSError, ValueError, TimeoutError) as error:
                    if not self._stopping and self._states.get(name) is state:  # else stopped or deleted
                        failure = (
                            f"did not end within {_CHILD_DEADLINE_S:g} s (its child runs at idle priority, "
                            "and the CPU was kept busy)"
                            if isinstance(error, TimeoutError)
                            else f"failed: {error}"
                        )
                        _log.warning(f"cache: sweeping the index of {name!r} {failure}")
                        state.index_removals += removals if passes == 1 else 0  # due again, later
                        state.repair_retry_ns = self._clock() + _REPAIR_RETRY_NS
                    return
                finally:
                    self._sweep = None
                if self._stopping or self._states.get(name) is not state:
                    return
                checked += found.checked
                unreachable += int(found.unreachable.size)
                try:
                    done = await self._reinsert(state, found.unreachable)
                except Exception:  # noqa: BLE001 - a repair must never take the engine down
                    _log.exception(f"cache: inserting the unreachable entries of {name!r} again failed")
                    state.repair_retry_ns = self._clock() + _REPAIR_RETRY_NS
                    break
                reinserted += done
                if not done or passes >= _REPAIR_PASSES or not self._may_sweep(state):
                    break
                again = _fork_sweep(state)
                if again is None:
                    break
                child = self._sweep = again
        finally:
            state.sweeping = False
        seconds = time.monotonic() - began
        if reinserted:
            state.stats.repaired += reinserted
            state.stats_dirty = True
        self._queue_event(
            EventDraft(
                event_type="CACHE_INDEXING",
                name=name,
                duration_ns=int(seconds * 1e9),
                attributes={
                    "are.cache.namespace": name,
                    "are.cache.reason": "REPAIR",
                    "are.cache.passes": passes,
                    "are.cache.checked": checked,
                    "are.cache.unreachable": unreachable,
                    "are.cache.reinserted": reinserted,
                    "are.cache.seconds": round(seconds, 3),
                    "are.cache.indexed": reinserted,
                    "are.cache.total": reinserted,
                    "are.cache.done": True,
                },
            )
        )
        _log.info(
            f"cache: swept the index of {name!r} ({passes} passes, {checked} searches): {unreachable} "
            f"entries unreachable by their own vector, {reinserted} inserted again, in {seconds:.1f} s"
        )

    def _may_sweep(self, state: _State) -> bool:
        """Whether a namespace's index may be swept now: no calibration, fold or start's backlog, no view.

        A fork waits for the index's lock, which a fold holds for as long as
        its copy takes (the event loop would wait with it). A view (an index
        restored from its file, see VectorIndex) is not swept: removals only
        hide its keys, and its searches look past hidden keys with a wider
        expansion, so the damage they do shows only once the view is folded
        into a private copy; the removals counted meanwhile make the sweep
        due then.
        """
        return (
            not self._stopping
            and self._states.get(state.namespace.name) is state
            and state.namespace.name not in self._deleting
            and state.calibrating is None
            and state.backlog is None
            and state.namespace.name not in self._folding
            and not state.index.is_view
            and len(state.index) > EXACT_SEARCH_BELOW
        )

    async def _reinsert(self, state: _State, keys: np.ndarray[Any, np.dtype[np.uint64]]) -> int:
        """Inserts the live entries of these keys again, a chunk per loop turn; returns how many."""
        name = state.namespace.name
        chunk = _REPAIR_FIRST_CHUNK
        done = 0
        at = 0
        while at < keys.size:
            if self._stopping or self._states.get(name) is not state or state.backlog is not None:
                break
            began = time.monotonic_ns()
            part = keys[at : at + chunk]
            at += int(part.size)
            now = self._clock()
            live = [
                n
                for n in part.tolist()
                if (head := state.heads.get(n)) is not None and head.has_vector and head.expire_ns > now
            ]
            if live:
                wanted = np.asarray(live, dtype=np.uint64)
                ids, matrix = self._read_vectors(state, wanted[state.index.contains_many(wanted)])
                if ids:  # one thread: usearch's concurrent insertion strands nodes itself
                    state.index.add(ids, matrix, threads=1)
                    done += len(ids)
                    state.index_changes += len(ids)
                    state.index_dirty = True
            spent = max(time.monotonic_ns() - began, 1)
            chunk = int(min(_REPAIR_MAX_CHUNK, max(1, chunk * _BACKLOG_CHUNK_NS / spent)))
            await asyncio.sleep(0)  # the next chunk in another loop turn
        return done

    async def _warm(self, state: _State) -> None:
        """Loads a private copy of a memory-mapped index off the loop (its overlay folded in).

        When that fails (memory refused under RLIMIT_AS or strict overcommit,
        say), the view serves on with its overlay, and the fold is due again
        after a minute, doubling with each failure in a row up to ten (see
        :data:`_FOLD_FIRST_DELAY_NS`); logged once per run of failures.
        """
        name = state.namespace.name
        self._folding.add(name)
        try:
            await asyncio.to_thread(state.index.materialize)
        except Exception as error:  # noqa: BLE001 - derived data: the view serves on; tried again later
            state.fold_failures += 1
            delay = backoff(state.fold_failures, _FOLD_FIRST_DELAY_NS, _FOLD_MAX_DELAY_NS)
            state.fold_retry_ns = self._clock() + delay
            if state.fold_failures == 1:
                _log.warning(
                    f"cache: folding the overlay of {name!r}'s index into a private copy failed ({error}); "
                    f"its saved index serves on, and the fold is tried again after "
                    f"{_FOLD_FIRST_DELAY_NS // 1_000_000_000} s, then less often "
                    f"(at most every {_FOLD_MAX_DELAY_NS // 1_000_000_000} s) while it fails"
                )
            else:
                _log.debug(f"cache: folding the overlay of {name!r}'s index failed again ({error})")
            return
        finally:
            self._folding.discard(name)
        if state.fold_failures:
            _log.warning(
                f"cache: folded the overlay of {name!r}'s index after {state.fold_failures} failed attempt(s)"
            )
            state.fold_failures = state.fold_retry_ns = 0

    async def _stop_background(self) -> None:
        """Cuts calibrations, sweeps and checkpoints short; lets background indexing end its chunk.

        A calibration is only a measurement, a sweep only a repair (the next
        start's sweeps find what it would have), and a stop writes every
        changed index itself: waiting for a checkpoint child would write it twice.
        """
        states = [*self._states.values(), *self._reloading.values()]
        children = [*self._writers, *(s.calibrating.pid for s in states if s.calibrating)]
        if self._sweep is not None:
            children.append(self._sweep.pid)
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        # Also the calibrations of namespaces reloaded since they forked (their states
        # are gone from the maps above): cancelled, a wait kills and reaps its child.
        for task in self._calibrations:
            task.cancel()
        for task in [*self._calibrations, *self._repairs, *self._indexers]:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        """Flushes counters and recency, and saves every changed index and entry table for a fast start.

        Each index is saved once every commit begun before has ended (see
        :meth:`_may_overwrite_index`), so that the mark written after it
        never vouches for a change that LMDB lacks.
        """
        self._stopping = True
        await self._stop_background()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._tick is not None:  # a flush or table save under way finishes first
            with contextlib.suppress(Exception):
                await self._tick
            self._tick = None
        for task in list(self._warmers):  # a copy being loaded: saving waits for it anyway
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        self._remove_temporaries()  # of the checkpoints cut short above
        with contextlib.suppress(Exception):
            await self.flush()
        self._index_dir.mkdir(parents=True, exist_ok=True)
        for name in [*self._states, *self._reloading]:
            # Every commit begun so far ends first: one that failed reloads its
            # namespaces from LMDB, so the index saved below holds no change LMDB lacks.
            # A namespace still out of service (its reload failed, see _resync) has
            # nothing saved: its table, index and mark stay as LMDB's last ones.
            await self._settled(self._tickets)
            state = self._states.get(name)
            if state is None:
                continue
            if state.index_dirty and await self._may_overwrite_index(state):
                try:
                    state.index.save(self._index_path(state.namespace))
                    state.index_dirty = False
                except (OSError, RuntimeError, VectorError) as error:
                    # Derived data: the next start repairs it. The old file stays whole
                    # (usearch reports a failed write as a RuntimeError).
                    _log.warning(f"cache: could not save the index of {state.namespace.name!r}: {error}")
            mark = state.mark
            # An index still missing vectors is saved (its progress kept), but
            # not as agreeing with the table: the next start checks it whole.
            complete = state.backlog is None and not state.index_incomplete
            index_seq = state.seq if not state.index_dirty and complete else -1
            if mark is None or mark.seq != state.seq or mark.index_seq != index_seq or state.touched:
                with contextlib.suppress(Exception):  # derived data: the next start rebuilds it
                    await self._snapshot(state, index_seq=index_seq)

    async def _may_overwrite_index(self, state: _State) -> bool:
        """Whether stop may write a namespace's index file now; disowns the mark first if it must.

        The mark in force may vouch for the file (a start then repairs it from
        the journal after the table alone). Writing over it is sound only
        when the file written agrees with LMDB up to some journal row: every
        commit its changes belong to has ended, none failed (stop waited for
        them just before), and no vector is still left to index. Otherwise (a
        commit began meanwhile, or the index is incomplete) the mark is
        disowned first, as before a checkpoint, for a commit that then fails,
        or a SIGKILL before the new mark, leaves a file the mark must not
        vouch for. False: the disowning failed, or the namespace was reloaded
        meanwhile; the file is left as it is.
        """
        if not self._inflight and state.backlog is None and not state.index_incomplete:
            return True
        return await self._disown_index(state) and self._states.get(state.namespace.name) is state

    # -- namespaces ------------------------------------------------------

    async def put_namespace(
        self, settings: NamespaceSettings, *, only: frozenset[str] | None = None
    ) -> tuple[Namespace, bool]:
        """Creates a namespace or updates its mutable settings; returns it and whether it is new.

        ``only``: the mutable settings to change (names of
        :data:`MUTABLE_SETTINGS`); the others keep their values, and the
        namespace must exist. None: every mutable setting is set from
        ``settings`` (zero values meaning the defaults).

        Bounds lowered below what the namespace holds evict its least recently
        used entries past them before the call returns, a chunk of at most
        5,000 per commit (fewer on a committer of small bounds): the settings
        commit with the first chunk. If the storage refuses a later chunk
        (backpressure), or its commit fails, the call still returns: the
        settings are in force, and the flushes that follow (every
        ``flush_interval``) evict the rest, a chunk at a time, least recently
        used first. Until then those entries still answer lookups (the bounds
        are about size, not freshness), and stores evict no more than their
        own share and a chunk (see :meth:`store`).

        Raises:
            InvalidCacheArgumentError: A setting is out of range.
            NamespaceNotFoundError: ``only`` was given and there is no such namespace.
            NamespaceDeletingError: The namespace is being deleted.
            ImmutableFieldError: The embedder, dimension or dtype of an existing namespace changed.
            EmbedderUnavailableError: The embedder is unknown or cannot be loaded.
            NamespaceLimitError: There are already 1,000 namespaces.
            StorageBusyError: Too many writes are waiting for the storage; retry later. Nothing
                changed (checked before the settings commit, with the first chunk of evictions).
        """
        async with self._write_lock:
            if only is not None:
                unknown = sorted(only - MUTABLE_SETTINGS)
                if unknown:
                    raise InvalidCacheArgumentError(f"not a mutable setting: {unknown[0]}", field="only")
                state = self._state(settings.name)  # not found, or out of service
                settings = _kept(settings, state.namespace, MUTABLE_SETTINGS - only)
            return await self._put_namespace(settings)

    async def _put_namespace(self, settings: NamespaceSettings) -> tuple[Namespace, bool]:
        _check_settings(settings)
        if settings.name in self._reloading:
            raise self._unavailable(settings.name)
        if settings.name in self._deleting:
            raise NamespaceDeletingError(settings.name)
        now = self._clock()
        state = self._states.get(settings.name)
        threshold = settings.similarity_threshold or DEFAULT_THRESHOLD
        ttl = settings.default_ttl_ns or DEFAULT_TTL_NS
        max_entries = settings.max_entries or DEFAULT_MAX_ENTRIES
        max_bytes = settings.max_bytes or DEFAULT_MAX_BYTES
        if state is not None:
            old = state.namespace
            embedder_spec = settings.embedder or old.embedder
            dtype = settings.vector_dtype or old.vector_dtype
            expansion = settings.search_expansion or EXPANSION_SEARCH[dtype]
            for field, before, after in (
                ("namespace.embedder", old.embedder, embedder_spec),
                ("namespace.vector_dtype", old.vector_dtype, dtype),
            ):
                if before != after:
                    raise ImmutableFieldError(field=field, old=before, new=after)
            if settings.dimension and settings.dimension != old.dimension:
                raise ImmutableFieldError(
                    field="namespace.dimension", old=old.dimension, new=settings.dimension
                )
            namespace = msgspec.structs.replace(
                old,
                similarity_threshold=threshold,
                default_ttl_ns=ttl,
                max_entries=max_entries,
                max_bytes=max_bytes,
                description=settings.description,
                search_expansion=expansion,
                expansion_fixed=bool(settings.search_expansion),
                recall_target=settings.recall_target or DEFAULT_RECALL_TARGET,
                update_time_ns=now,
            )
            namespace = _in_force(namespace, state.stats.calibration)
            # The settings commit with the first chunk of the evictions past the new bounds, the
            # rest a chunk per commit (_shrink): one batch of them all could be over the
            # committer's bound, refused every time. Refused for backpressure before the
            # settings change (see _room).
            evicting = min(
                self._evictions(state, namespace, 0, 0),
                self._removal_room(state, namespace_row=True),
                _EVICT_CHUNK,
            )
            self._room(
                state, mutations=0, nbytes=0, changes=0, removals=evicting, events=1, namespace_row=True
            )
            batch = self._storage.batch()
            batch.put(NAMESPACES, settings.name.encode(), _namespace_codec.encode(namespace))
            state.namespace = namespace
            state.index.expansion_search = namespace.search_expansion
            evicted = self._evict(state, batch, keep=None, limit=evicting)
            self._put_stats(batch, state)
            await self._submit(batch, state, self._removal_drafts(state, evicted, "EVICTED"))
            try:
                await self._shrink(state)
            except StorageError as error:  # the settings are in force: the flushes evict the rest
                _log.warning(
                    f"cache: evicting past the new bounds of {settings.name!r} failed ({error}); "
                    "the flushes that follow evict the rest"
                )
            return namespace, False
        if len(self._states) + len(self._reloading) >= MAX_NAMESPACES:
            raise NamespaceLimitError(f"at most {MAX_NAMESPACES} cache namespaces")
        embedder_spec = settings.embedder or "lexical"
        embedder, embedder_name, dimension = self._resolve_embedder(embedder_spec, settings.dimension)
        namespace = Namespace(
            name=settings.name,
            embedder=embedder_spec,
            embedder_name=embedder_name,
            dimension=dimension,
            similarity_threshold=threshold,
            default_ttl_ns=ttl,
            max_entries=max_entries,
            max_bytes=max_bytes,
            vector_dtype=settings.vector_dtype or "f32",
            description=settings.description,
            search_expansion=settings.search_expansion or EXPANSION_SEARCH[settings.vector_dtype or "f32"],
            expansion_fixed=bool(settings.search_expansion),
            recall_target=settings.recall_target or DEFAULT_RECALL_TARGET,
            create_time_ns=now,
            update_time_ns=now,
        )
        state = _State(namespace, embedder, _new_index(namespace), now=now)
        batch = self._storage.batch()
        batch.put(NAMESPACES, settings.name.encode(), _namespace_codec.encode(namespace))
        batch.put(STATS, settings.name.encode(), _stats_codec.encode(state.stats))
        self._forget_older(batch, settings.name)
        # Served once created: a call naming it meanwhile finds no namespace. One that
        # stored in it could commit after its creation failed: an acknowledged entry of a
        # namespace that does not exist, whose rows a namespace created again under this
        # name would read back after a restart.
        await self._committer.submit(batch)
        self._states[settings.name] = state
        with contextlib.suppress(OSError):
            self._index_path(namespace).unlink()  # a stale file of an older namespace of this name
        self._remove_tables(namespace, keep=None)
        return namespace, True

    def _forget_older(self, batch: Any, name: str) -> None:
        """Deletes (in ``batch``) the rows an older namespace of this name may have left.

        A deletion removes them in its own commit, and a start checks a mark
        against the namespace's creation time; this is the last safeguard.
        """
        batch.delete(MARKS, name.encode())
        for key, _ in self._scan(JOURNAL, prefix_key(name)):
            batch.delete(JOURNAL, key)

    def get_namespace(self, name: str) -> Namespace:
        """The namespace of this name (also while it is out of service, see :meth:`_resync`).

        Raises:
            NamespaceNotFoundError: There is none.
        """
        state = self._states.get(name) or self._reloading.get(name)
        if state is None:
            raise NamespaceNotFoundError(name)
        return state.namespace

    def list_namespaces(self, *, after: str = "", limit: int = 100) -> tuple[list[Namespace], str]:
        """Namespaces by name after ``after``; also the name to continue after, or "" at the end."""
        names = sorted(name for name in (*self._states, *self._reloading) if name > after)
        page = names[:limit]
        more = len(names) > limit
        namespaces = [(self._states.get(name) or self._reloading[name]).namespace for name in page]
        return namespaces, (page[-1] if more and page else "")

    # -- lookups ---------------------------------------------------------

    async def lookup(
        self,
        namespace: str,
        *,
        prompt: str = "",
        vector: np.ndarray[Any, Any] | None = None,
        threshold: float | None = None,
        max_age_ns: int | None = None,
        exact_only: bool = False,
    ) -> LookupResult:
        """Looks a prompt up: the exact tier first, then the semantic tier.

        A query vector with no direction (the embedder's for a prompt with
        no words, say) skips the semantic tier. When the nearest entries
        cannot answer (removed, expired but not yet swept, or older than
        ``max_age_ns``), the search goes deeper, four times as many
        candidates at a time, while they are still above the threshold, up
        to ``_MAX_CANDIDATES`` (512); a miss reports the best similarity of
        an entry that could have answered. In a namespace small enough that
        a brute-force search costs about a millisecond
        (:data:`~are_core.vector.EXACT_CONFIRM_COMPONENTS`), a miss of the
        graph search is confirmed by one (in a worker thread): removals
        leave the graph unable to reach some entries, which would otherwise
        miss even when looked up by their own vector. Hits never pay for it,
        and confirmations take at most a tenth of the time per namespace
        (``_CONFIRM_SHARE``): under a load of misses the graph's answer stands.

        Raises:
            NamespaceNotFoundError: The namespace does not exist.
            NamespaceUnavailableError: The namespace is out of service until it is reloaded
                from storage (a commit of it failed; see :meth:`_resync`).
            InvalidCacheArgumentError: Neither a prompt (after normalisation) nor a vector was
                given, or ``vector`` is zero or not finite.
            DimensionMismatchError: ``vector`` is not of the namespace's dimension.
            EmbedderMismatchError: Only text was given and the configured model no longer fits
                the namespace.

        Only text, in a namespace that takes caller vectors (or whose model
        did not load): the exact tier alone answers, or it is a miss.
        """
        result, draft = await self._lookup(
            namespace,
            prompt=prompt,
            vector=vector,
            threshold=threshold,
            max_age_ns=max_age_ns,
            exact_only=exact_only,
        )
        self._queue_event(draft)  # committed with the counters, by the next flush
        return result

    async def _lookup(
        self,
        namespace: str,
        *,
        prompt: str = "",
        vector: np.ndarray[Any, Any] | None = None,
        threshold: float | None = None,
        max_age_ns: int | None = None,
        exact_only: bool = False,
    ) -> tuple[LookupResult, EventDraft]:
        """:meth:`lookup`'s answer and the event that records it (CACHE_HIT or CACHE_MISS), not yet queued."""
        state = self._state(namespace)
        if vector is None and is_blank(prompt):
            raise InvalidCacheArgumentError("give a prompt, a vector or both", field="prompt")
        # A bad vector is refused whichever tier would answer (and with exact_only).
        checked = self._check_vector(state, vector, "vector") if vector is not None else None
        now = self._clock()
        oldest = now - max_age_ns if max_age_ns else None
        if prompt:
            hit = self._exact(state, prompt, now, oldest)
            if hit is not None:
                return LookupResult(hit=hit), _hit_draft(namespace, hit)
        best = 0.0
        # Text alone where nothing can embed it ("caller" namespaces, or a
        # model that did not load): the exact tier is all there is to consult.
        text_only_exact = vector is None and state.embedder is None and not state.embedder_error
        if not (exact_only or text_only_exact):
            query = (
                checked if checked is not None else await self._query_vector(state, prompt, None, "vector")
            )
            if query is not None and len(state.index):
                needed = state.namespace.similarity_threshold if threshold is None else threshold
                hit, best = await self._semantic(state, query, needed, now, oldest)
                if hit is not None:
                    return LookupResult(hit=hit), _hit_draft(namespace, hit)
        state.stats.lookups += 1
        state.stats.misses += 1
        state.stats_dirty = True
        miss = EventDraft(
            event_type="CACHE_MISS",
            name=namespace,
            attributes={"are.cache.namespace": namespace, "are.cache.best_similarity": round(best, 6)},
        )
        return LookupResult(hit=None, best_similarity=max(best, 0.0)), miss

    def _exact(self, state: _State, prompt: str, now: int, oldest: int | None) -> CacheHit | None:
        digest = prompt_hash(prompt)
        # An entry that answered this prompt lately, if still live; else the table.
        entry_id = self._hot.entry_for(state.namespace.name, digest)
        head = state.heads.get(entry_id) if entry_id is not None else None
        if head is None:
            entry_id = state.exact.get(digest)
            if entry_id is None:
                return None
            head = state.heads[entry_id]
        if not _alive(head, now, oldest):
            return None
        return self._answer(state, head, "EXACT", 1.0, now)

    async def _search(
        self, state: _State, query: np.ndarray[Any, Any], k: int, *, exact: bool = False
    ) -> list[tuple[int, float]]:
        if exact:
            # A brute-force scan (up to a millisecond) in a worker thread: usearch
            # releases the GIL meanwhile, so the loop goes on serving.
            return await asyncio.to_thread(state.index.search, query, k, exact=True)
        # Inline by default: batching concurrent lookups' searches off the loop
        # did not pay on a shared 2-core machine (benchmarks/README.md).
        if self._coalesce:
            return await state.index.search_coalesced(query, k)
        if state.backlog is not None:
            # Background indexing holds the index's lock a chunk at a time:
            # wait for it in a worker thread, not with the whole event loop.
            return await asyncio.to_thread(state.index.search, query, k)
        return state.index.search(query, k)

    async def _semantic(
        self, state: _State, query: np.ndarray[Any, Any], needed: float, now: int, oldest: int | None
    ) -> tuple[CacheHit | None, float]:
        # The top hit alone first (the common case); more candidates only
        # when it cannot answer (removed or too old).
        candidates = await self._search(state, query, 1)
        if not state.namespace.expansion_fixed:
            _remember(state, query, needed)
        if not candidates:
            return None, 0.0
        key, similarity = candidates[0]
        head = state.heads.get(key)
        if head is None or not _alive(head, now, oldest):
            hit, best = await self._semantic_deeper(state, query, needed, now, oldest)
        elif similarity >= needed - 1e-6:
            return self._answer(state, head, "SEMANTIC", min(similarity, 1.0), now), similarity
        else:
            hit, best = None, max(similarity, 0.0)
        if (
            hit is None
            and len(state.index) > EXACT_SEARCH_BELOW
            and state.index.exact_is_cheap
            and _may_confirm(state)
        ):
            # A miss costs the caller an LLM call; a graph that removals (or
            # usearch's threaded inserts) damaged can miss an entry that is
            # there, even one looked up by its own vector. Where a brute-force
            # search costs a millisecond at most, it has the last word.
            started = time.monotonic_ns()
            hit, confirmed = await self._semantic_deeper(state, query, needed, now, oldest, exact=True)
            state.confirm_budget_ns -= time.monotonic_ns() - started
            return hit, confirmed if hit is not None else max(confirmed, best)
        return hit, best

    async def _semantic_deeper(
        self,
        state: _State,
        query: np.ndarray[Any, Any],
        needed: float,
        now: int,
        oldest: int | None,
        *,
        exact: bool = False,
    ) -> tuple[CacheHit | None, float]:
        """Past nearest candidates that cannot answer: the first that can, searching deeper while it may hit.

        Candidates come best first: the first one that can answer decides
        (a hit when over the threshold, else a miss reporting its
        similarity). While every candidate so far is ineligible and the last
        is still over the threshold, an eligible entry over it may lie
        deeper: search again with four times as many, up to
        ``_MAX_CANDIDATES``. Entries removed while a coalesced search ran
        are skipped, as removed ones always are. ``exact``: brute force
        instead of the graph (a miss's confirmation).
        """
        k = _CANDIDATES
        while True:
            candidates = await self._search(state, query, k, exact=exact)
            for key, similarity in candidates:
                head = state.heads.get(key)
                if head is None or not _alive(head, now, oldest):
                    continue  # removed, expired or too old: never answers; look further
                if similarity >= needed - 1e-6:
                    return self._answer(state, head, "SEMANTIC", min(similarity, 1.0), now), similarity
                return None, max(similarity, 0.0)
            exhausted = len(candidates) < k or k >= min(_MAX_CANDIDATES, len(state.index))
            if exhausted or candidates[-1][1] < needed - 1e-6:
                return None, 0.0  # no entry that could answer was seen
            k = min(k * 4, _MAX_CANDIDATES)

    async def lookup_for_task(
        self,
        namespace: str,
        prompt: str,
        *,
        exact_only: bool = False,
        workflow_id: str = "",
        task_id: str = "",
    ) -> CacheHit | None:
        """The scheduler's short-circuit: the entry answering this prompt, or None.

        Uses the namespace's threshold and embedder, exactly as a LookupCache
        call with only the prompt would (and counts in its statistics);
        ``exact_only`` (the task cache key's) consults the exact tier only.
        A namespace out of service until it is reloaded is a miss.

        ``workflow_id`` and ``task_id`` name the task looked up for: its
        CACHE_HIT or CACHE_MISS event names them, and is recorded before
        this returns (:meth:`_record_task_event`), so that it comes before
        the TASK_CACHE_HIT or TASK_CACHE_MISS the scheduler records next.
        The lookup comes before any attempt of the task: the event names
        none (as those do not).

        Raises:
            NamespaceNotFoundError: The namespace does not exist.
        """
        try:
            state = self._state(namespace)
            if is_blank(prompt):
                return None
            result, draft = await self._lookup(
                namespace, prompt=prompt, exact_only=exact_only or state.embedder is None
            )
        except (EmbedderUnavailableError, EmbedderMismatchError, NamespaceUnavailableError):
            return None
        if workflow_id:
            self._record_task_event(msgspec.structs.replace(draft, workflow_id=workflow_id, task_id=task_id))
        else:
            self._queue_event(draft)
        return result.hit

    def _answer(
        self, state: _State, head: EntryHead, tier: str, similarity: float, now: int
    ) -> CacheHit | None:
        # A stored entry is in memory before its commit ends (the entry it
        # replaced already gone): until then its body is not in LMDB.
        body = self._hot.get(head.entry_id) or self._unsettled.get(head.entry_id)
        if body is None:
            raw = self._storage.get(BODIES, u64_key(head.entry_id))
            if raw is None:  # removed under us; never answer
                return None
            body = _body_codec.decode(raw)
            self._hot.put(head.entry_id, body, state.namespace.name, head.prompt_hash)
        state.lru.move_to_end(head.entry_id)
        head.last_access_ns = now
        state.touched.add(head.entry_id)
        stats = state.stats
        stats.lookups += 1
        if tier == "EXACT":
            stats.exact_hits += 1
        else:
            stats.semantic_hits += 1
        saved_tokens = min(body.input_tokens + body.output_tokens, _INT64_MAX)
        # Totals stop at the largest int64 (what the counters' proto fields hold).
        stats.saved_tokens = min(stats.saved_tokens + saved_tokens, _INT64_MAX)
        stats.saved_cost_micro_usd = min(stats.saved_cost_micro_usd + body.cost_micro_usd, _INT64_MAX)
        state.stats_dirty = True
        # Its CACHE_HIT event is made by the lookup (_hit_draft), which knows whose lookup it is.
        return CacheHit(
            entry_id=entry_id_text(head.entry_id),
            tier=tier,
            similarity=similarity,
            prompt=body.prompt,
            response=body.response,
            content_type=body.content_type,
            blob_sha256=body.blob_sha256,
            blob_size_bytes=body.blob_size_bytes,
            metadata=body.metadata,
            input_tokens=body.input_tokens,
            output_tokens=body.output_tokens,
            cost_micro_usd=body.cost_micro_usd,
            create_time_ns=head.create_ns,
        )

    # -- stores ----------------------------------------------------------

    async def store(
        self,
        namespace: str,
        *,
        prompt: str,
        response: bytes = b"",
        content_type: str = "",
        blob_sha256: str = "",
        blob_size_bytes: int = 0,
        vector: np.ndarray[Any, Any] | None = None,
        ttl_ns: int = 0,
        metadata: Mapping[str, str] | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_micro_usd: int = 0,
        workflow_id: str = "",
        task_id: str = "",
        attempt: int = 0,
        span_id: str = "",
    ) -> StoreResult:
        """Stores a response under a prompt (replacing an entry of the same normalised prompt).

        Acknowledged (returns) only once durable. Evicts least recently used
        entries past the namespace's bounds in the same commit (at most 5,001,
        and no more than the commit can carry within the committer's bounds:
        the flushes evict what is left, see :meth:`_room_to_store`). Everything is
        checked (and the prompt embedded) before anything changes, so a
        refused store leaves an entry it would have replaced in place. A
        prompt its embedder gives no direction (no words, for the lexical
        one) is stored for the exact tier only.

        ``workflow_id``, ``task_id``, ``attempt`` and ``span_id`` name the
        task attempt whose output this is (the scheduler's store of a
        cache-keyed task's output): its CACHE_STORED event names them. The
        removals the store makes room with (CACHE_INVALIDATED) concern other
        entries, and name no task.

        Raises:
            NamespaceNotFoundError: The namespace does not exist.
            NamespaceUnavailableError: The namespace is out of service until it is reloaded
                from storage (a commit of it failed; see :meth:`_resync`): nothing was stored.
            DimensionMismatchError: ``vector`` is not of the namespace's dimension.
            InvalidCacheArgumentError: ``vector`` is zero or not finite, or ``blob_size_bytes``
                is not the blob's size.
            CacheLimitError: The entry alone is larger than the namespace's max_bytes.
            BlobNotFoundError: ``blob_sha256`` names no stored blob.
            EmbedderMismatchError: No vector was given and the configured model no longer fits
                the namespace.
            StorageBusyError: Too many writes are waiting for the storage; retry later. Nothing
                was stored (checked before anything changes, see :meth:`_room`).
        """
        state = self._writable(namespace)
        if blob_sha256:  # its stored size counts, and its media type when the call gave none
            _, blob_size_bytes, blob_content_type = self._check_blob(blob_sha256, blob_size_bytes)
            content_type = content_type or blob_content_type
        size = _entry_size(state, prompt, blob_size_bytes if blob_sha256 else len(response))
        query = await self._store_vector(state, prompt, vector)
        # Reloaded, out of service or being deleted while the prompt was embedded: the
        # state taken before is memory no call reads any more (see _resync).
        state = self._writable(namespace)
        # From the blob check to the submit: one loop step (the blob store's rule).
        digest = self._check_blob(blob_sha256, blob_size_bytes)[0] if blob_sha256 else b""
        now = self._clock()
        ttl = ttl_ns or state.namespace.default_ttl_ns
        entry_id = self._next_id
        head = EntryHead(
            entry_id=entry_id,
            prompt_hash=prompt_hash(prompt),
            create_ns=now,
            expire_ns=now + ttl,
            size_bytes=size,
            has_vector=query is not None,
            last_access_ns=now,
        )
        body = EntryBody(
            prompt=prompt,
            response=response,
            content_type=content_type,
            blob_sha256=blob_sha256,
            blob_size_bytes=blob_size_bytes,
            metadata=dict(metadata or {}),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_micro_usd=cost_micro_usd,
        )
        name = state.namespace.name
        head_key = join_key(name, entry_id)
        head_row = _head_codec.encode(head)
        body_row = _body_codec.encode(body)
        vector_row = b"" if query is None else query.tobytes()
        replaced_id = state.exact.get(head.prompt_hash)
        # Refused for backpressure here, before memory changes, rather than by the commit
        # after it changed (which reloads the namespace; see _room).
        evicting = self._room_to_store(
            state,
            mutations=2 + (query is not None) + (_REFERENCE_MUTATIONS if digest else 0),
            nbytes=len(head_key)
            + len(head_row)
            + 8
            + len(body_row)
            + (8 + len(vector_row) if query is not None else 0)
            + (_REFERENCE_BYTES if digest else 0),
            added=1,
            added_bytes=size,
            replacing=int(replaced_id is not None),
            namespace_row=bool(digest) and not state.namespace.blob_entries,
        )
        self._next_id += 1
        batch = self._storage.batch()
        self._put_next_id(batch)
        if query is not None:
            # The native step first: if the index refuses the vector, no entry has been touched.
            self._index_new(state, [entry_id], query.reshape(1, -1))
        expired: list[EntryHead] = []
        try:
            if replaced_id is not None and not self._replace(state, batch, replaced_id, now, expired):
                replaced_id = None  # an expired entry, not yet swept: no longer there to replace
            batch.put(HEADS, head_key, head_row)
            batch.put(BODIES, u64_key(entry_id), body_row)
            if digest and self._blobs is not None:
                self._blobs.stage_reference(batch, _blob_referrer(entry_id), digest)
                self._entry_blobs[entry_id] = digest
                if not state.namespace.blob_entries:
                    state.namespace = msgspec.structs.replace(state.namespace, blob_entries=True)
                    batch.put(NAMESPACES, name.encode(), _namespace_codec.encode(state.namespace))
            if query is not None:
                batch.put(VECTORS, u64_key(entry_id), vector_row)
            state.admit(head)
            evicted = self._evict(state, batch, keep=entry_id, limit=evicting)
            self._put_stats(batch, state)
        except BaseException:
            self._resync(state)  # memory ran ahead of a write that never happened: reload
            raise
        drafts = self._removal_drafts(state, expired, "EXPIRED") + self._removal_drafts(
            state, evicted, "EVICTED"
        )
        drafts.append(
            EventDraft(
                event_type="CACHE_STORED",
                workflow_id=workflow_id,
                task_id=task_id,
                attempt=attempt,
                span_id=span_id,
                name=name,
                attributes={
                    "are.cache.namespace": name,
                    "are.cache.entry_id": entry_id_text(entry_id),
                    "are.cache.replaced": replaced_id is not None,
                    "are.cache.size_bytes": size,
                },
            )
        )
        await self._submit(batch, state, drafts, bodies={entry_id: body})
        return StoreResult(
            entry_id=entry_id_text(entry_id), replaced=replaced_id is not None, expire_time_ns=head.expire_ns
        )

    async def _store_vector(
        self, state: _State, prompt: str, vector: np.ndarray[Any, Any] | None
    ) -> np.ndarray[Any, Any] | None:
        """The vector a store indexes: the caller's (checked), the prompt's embedding, or None."""
        if vector is not None:
            return self._check_vector(state, vector, "vector")
        if state.embedder is not None and not is_blank(prompt):
            query = await self._embed(state, prompt)
            return query if _has_direction(query) else None  # no direction: the exact tier only
        if state.embedder_error:
            raise EmbedderMismatchError(state.namespace.name, state.embedder_error)
        return None

    async def store_many(
        self,
        namespace: str,
        prompts: Sequence[str],
        responses: Sequence[bytes],
        *,
        vectors: np.ndarray[Any, Any] | None = None,
        content_type: str = "",
        ttl_ns: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> list[StoreResult]:
        """Stores many entries with one index insertion and one commit per chunk (bulk loading).

        Behaves like :meth:`store` for each entry (replacement, eviction,
        savings of zero), but embeds texts in one call and inserts vectors in
        one multi-threaded index call per chunk of 5,000.

        Raises:
            NamespaceNotFoundError: The namespace does not exist.
            DimensionMismatchError: ``vectors`` is not (n, the namespace's dimension).
            InvalidCacheArgumentError: A row of ``vectors`` is zero or not finite.
            CacheLimitError: An entry alone is larger than the namespace's max_bytes
                (checked for every entry before any is stored).
            StorageBusyError: Too many writes are waiting for the storage; retry later. The
                chunks of 5,000 committed before stay stored; the refused one stored nothing.
        """
        state = self._writable(namespace)
        if len(prompts) != len(responses):
            raise InvalidCacheArgumentError("as many responses as prompts are needed", field="responses")
        limit = state.namespace.max_bytes
        for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            prompt_bytes = len(prompt.encode("utf-8"))
            if prompt_bytes + len(response) > limit:
                field = f"prompts[{row}]" if prompt_bytes > limit else f"responses[{row}]"
                raise CacheLimitError(
                    f"entry {row}: {prompt_bytes + len(response)} bytes exceed the namespace's max_bytes",
                    field=field,
                    limit=limit,
                )
        usable: np.ndarray[Any, np.dtype[np.bool_]] | None = None
        if vectors is not None:
            matrix = np.asarray(vectors, dtype=np.float32)
            if matrix.ndim != 2 or matrix.shape != (len(prompts), state.namespace.dimension):
                got = matrix.shape[-1] if matrix.ndim else 0
                raise DimensionMismatchError(field="vectors", expected=state.namespace.dimension, got=got)
            norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
            bad = np.flatnonzero(~(np.isfinite(norms) & (norms > 0.0)))
            if bad.size:
                raise InvalidCacheArgumentError(
                    f"`vectors[{bad[0]}]` is zero or has a component that is not finite: "
                    "a vector needs a direction",
                    field=f"vectors[{bad[0]}]",
                )
            matrix = (matrix / norms[:, None]).astype(np.float32)
        elif state.embedder is not None:
            matrix = await asyncio.to_thread(state.embedder.embed, list(prompts))
            usable = _directions(matrix)  # a prompt with no direction: the exact tier only
        elif state.embedder_error:
            raise EmbedderMismatchError(state.namespace.name, state.embedder_error)
        else:
            matrix = None
        results: list[StoreResult] = []
        for start in range(0, len(prompts), _INVALIDATE_CHUNK):
            stop = min(start + _INVALIDATE_CHUNK, len(prompts))
            part = None if matrix is None else np.ascontiguousarray(matrix[start:stop])
            results.extend(
                await self._store_chunk(
                    self._writable(namespace),  # the one in force after the last await (see _resync)
                    prompts[start:stop],
                    responses[start:stop],
                    part,
                    None if usable is None else usable[start:stop],
                    content_type=content_type,
                    ttl_ns=ttl_ns,
                    metadata=metadata,
                )
            )
        return results

    async def _store_chunk(
        self,
        state: _State,
        prompts: Sequence[str],
        responses: Sequence[bytes],
        matrix: np.ndarray[Any, Any] | None,
        usable: np.ndarray[Any, np.dtype[np.bool_]] | None,
        *,
        content_type: str,
        ttl_ns: int,
        metadata: Mapping[str, str] | None,
    ) -> list[StoreResult]:
        now = self._clock()
        name = state.namespace.name
        expire = now + (ttl_ns or state.namespace.default_ttl_ns)
        first = self._next_id
        keys = list(range(first, first + len(prompts)))
        with_vector = [
            matrix is not None and (usable is None or bool(usable[row])) for row in range(len(keys))
        ]
        # Every row is encoded, and counted, before anything changes (see _room).
        heads: list[EntryHead] = []
        encoded: list[tuple[bytes, bytes, bytes]] = []
        bodies: dict[int, EntryBody] = {}
        for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            head = EntryHead(
                entry_id=keys[row],
                prompt_hash=prompt_hash(prompt),
                create_ns=now,
                expire_ns=expire,
                size_bytes=len(prompt.encode("utf-8")) + len(response),
                has_vector=with_vector[row],
                last_access_ns=now,
            )
            body = EntryBody(
                prompt=prompt, response=response, content_type=content_type, metadata=dict(metadata or {})
            )
            heads.append(head)
            encoded.append(
                (join_key(name, head.entry_id), _head_codec.encode(head), _body_codec.encode(body))
            )
            bodies[head.entry_id] = body
        nbytes = sum(len(key) + len(head_row) + 8 + len(body_row) for key, head_row, body_row in encoded)
        vectors = sum(with_vector)
        if matrix is not None:
            nbytes += vectors * (8 + matrix.shape[1] * matrix.itemsize)
        digests = {head.prompt_hash for head in heads}  # a prompt twice in the chunk: its second replaces it
        evicting = self._room_to_store(
            state,
            mutations=2 * len(heads) + vectors,
            nbytes=nbytes,
            added=len(heads),
            added_bytes=sum(head.size_bytes for head in heads),
            replacing=len(heads) - len(digests) + sum(1 for digest in digests if digest in state.exact),
        )
        self._next_id += len(prompts)
        batch = self._storage.batch()
        self._put_next_id(batch)
        if matrix is not None:
            rows = [row for row, has in enumerate(with_vector) if has]
            if rows:  # the native step first: if the index refuses, no entry has been touched
                self._index_new(state, [keys[row] for row in rows], np.ascontiguousarray(matrix[rows]))
        results: list[StoreResult] = []
        expired: list[EntryHead] = []
        try:
            for row, head in enumerate(heads):
                entry_id = keys[row]
                replaced_id = state.exact.get(head.prompt_hash)
                if replaced_id is not None and not self._replace(state, batch, replaced_id, now, expired):
                    replaced_id = None
                head_key, head_row, body_row = encoded[row]
                batch.put(HEADS, head_key, head_row)
                batch.put(BODIES, u64_key(entry_id), body_row)
                if matrix is not None and with_vector[row]:
                    batch.put(VECTORS, u64_key(entry_id), matrix[row].tobytes())
                state.admit(head)
                results.append(
                    StoreResult(
                        entry_id=entry_id_text(entry_id),
                        replaced=replaced_id is not None,
                        expire_time_ns=expire,
                    )
                )
            evicted = self._evict(state, batch, keep=keys[-1] if keys else None, limit=evicting)
            self._put_stats(batch, state)
        except BaseException:
            self._resync(state)  # memory ran ahead of a write that never happened: reload
            raise
        drafts = self._removal_drafts(state, expired, "EXPIRED") + self._removal_drafts(
            state, evicted, "EVICTED"
        )
        drafts.append(
            EventDraft(
                event_type="CACHE_STORED",
                name=name,
                attributes={
                    "are.cache.namespace": name,
                    "are.cache.stored_count": len(keys),
                    "are.cache.bulk": True,
                },
            )
        )
        await self._submit(batch, state, drafts, bodies=bodies)
        return results

    # -- invalidation ----------------------------------------------------

    async def invalidate(
        self,
        namespace: str,
        *,
        entry_ids: Sequence[str] = (),
        metadata_match: Mapping[str, str] | None = None,
        everything: bool = False,
    ) -> int:
        """Removes entries by id, by metadata match, or all of them; returns how many.

        Entries are removed a chunk of at most 5,000 per commit (fewer on a
        committer of small bounds, see :meth:`_removal_room`), each checked
        against the committer's bounds before it changes anything: under
        backpressure the call is refused (InvalidationBusyError, a
        StorageBusyError) with the count of entries the chunks committed
        before removed, and those stay removed. A retry of the same call is
        safe: it finds only the entries still there, and removes them.

        Raises:
            NamespaceNotFoundError: The namespace does not exist.
            InvalidationBusyError: Too many writes are waiting for the storage; retry later.
                Its ``removed_count`` entries were removed (0: nothing changed).
        """
        state = self._state(namespace)
        if everything:
            chosen = list(state.heads)
        elif metadata_match:
            chosen = self._match_metadata(state, dict(metadata_match))
        else:
            numbers = (parse_entry_id(text) for text in entry_ids)
            # An id named twice is one entry: removed, and counted, once.
            chosen = list(dict.fromkeys(n for n in numbers if n is not None and n in state.heads))
        return await self._remove_entries(namespace, chosen, reason="INVALIDATED")

    async def _remove_entries(
        self, namespace: str, chosen: list[int], *, reason: str, before: int = 0
    ) -> int:
        """Removes these entries a chunk per commit (see :meth:`invalidate`); returns how many were there.

        ``before``: entries the same call removed already (a refusal's ``removed_count`` counts them).
        """
        count = start = 0
        deleting = reason == "NAMESPACE_DELETED"
        while start < len(chosen):
            state = self._state(namespace)  # the one in force after the last chunk's commit (see _resync)
            part = chosen[start : start + max(min(self._removal_room(state), _INVALIDATE_CHUNK), 1)]
            start += len(part)
            try:
                self._room(state, mutations=0, nbytes=0, changes=0, removals=len(part), events=1)
            except StorageBusyError as busy:
                raise InvalidationBusyError(busy, namespace=namespace, removed_count=before + count) from busy
            batch = self._storage.batch()
            removed = [head for n in part if (head := self._remove(state, batch, n, index=False))]
            keys = [head.entry_id for head in removed if head.has_vector]
            if keys:  # one call for the chunk: far cheaper than one per entry
                _index_remove(state, keys)
                state.index_dirty = True
                if not deleting:  # a namespace being deleted drops its index whole: no sweep for it
                    state.index_removals += len(keys)
            self._put_stats(batch, state)
            drafts = [
                EventDraft(
                    event_type="CACHE_INVALIDATED",
                    name=namespace,
                    attributes={
                        "are.cache.namespace": namespace,
                        "are.cache.removed_count": len(removed),
                        "are.cache.reason": reason,
                        "are.cache.entry_id": entry_id_text(removed[0].entry_id) if len(removed) == 1 else "",
                    },
                )
            ]
            try:
                await self._submit(batch, state, drafts)
            except StorageBusyError as busy:  # refused after all (see _submit): this chunk was not removed
                raise InvalidationBusyError(busy, namespace=namespace, removed_count=before + count) from busy
            count += len(removed)
        return count

    async def delete_namespace(self, name: str) -> int:
        """Deletes a namespace and everything of it; returns how many entries it held.

        Its entries go first, a chunk of at most 5,000 per commit as
        :meth:`invalidate` removes them (CACHE_INVALIDATED events, reason
        NAMESPACE_DELETED, show the progress). Meanwhile lookups still answer
        the entries not yet removed, while stores, settings changes and a
        second deletion are refused (NamespaceDeletingError). Then one commit
        removes the namespace itself: its settings, counters, journal and
        snapshot mark, with a CACHE_NAMESPACE_DELETED event; its index and
        entry table files are deleted after it, and a child still writing or
        searching its index is killed. From then on the name is free (a
        PutNamespace creates it afresh) and it no longer counts toward the
        1,000 namespaces.

        A deletion refused part way (InvalidationBusyError, with how many
        entries it removed), or cut short by a crash, leaves the namespace in
        place with the entries not yet removed; retrying finishes it.

        Raises:
            NamespaceNotFoundError: The namespace does not exist.
            NamespaceUnavailableError: It is out of service until reloaded (see :meth:`_resync`).
            NamespaceDeletingError: Another deletion of it is under way.
            InvalidationBusyError: The storage refused a chunk of its entries; retry later.
            StorageBusyError: The storage refused the last commit (its entries are gone, the
                namespace is still there, empty); retry later.
        """
        self._state(name)
        if name in self._deleting:
            raise NamespaceDeletingError(name)
        self._deleting.add(name)
        try:
            removed = 0
            for _ in range(_DELETE_ROUNDS):
                state = self._state(name)
                if state.heads:
                    removed += await self._remove_entries(
                        name, list(state.heads), reason="NAMESPACE_DELETED", before=removed
                    )
                # Every commit begun before ends: a store that was under way when the deletion
                # began has its entry in memory by then (refused if it was not yet).
                await self._settled(self._tickets)
                state = self._state(name)
                if not state.heads:
                    try:
                        await self._drop_namespace(state, removed)
                    except StorageBusyError as busy:  # the last commit refused: the entries stay removed
                        raise InvalidationBusyError(busy, namespace=name, removed_count=removed) from busy
                    return removed
            raise NamespaceDeletingError(name)  # stores under way kept adding: not seen in practice
        finally:
            self._deleting.discard(name)

    async def _drop_namespace(self, state: _State, removed: int) -> None:
        """Commits the removal of an empty namespace's rows; then deletes its files and stops its children.

        From the removal of its state to the commit's enqueue is one loop turn:
        no write of the namespace (a flush of its counters, say) can be
        admitted after the deletion's and bring a row of it back.
        """
        name = state.namespace.name
        key = name.encode()
        if (
            len(self._storage.scan(JOURNAL, prefix=prefix_key(name), limit=_INVALIDATE_CHUNK + 1))
            > _INVALIDATE_CHUNK
        ):
            await self._forget_journal(state)
        batch = self._storage.batch()
        batch.delete(NAMESPACES, key)
        batch.delete(STATS, key)
        batch.delete(MARKS, key)
        for row, _ in self._scan(JOURNAL, prefix_key(name)):
            batch.delete(JOURNAL, row)
        draft = EventDraft(
            event_type="CACHE_NAMESPACE_DELETED",
            name=name,
            attributes={"are.cache.namespace": name, "are.cache.removed_count": removed},
        )
        events = [self._events.record(batch, draft)] if self._events is not None else []
        commit = self._committer.enqueue(batch)  # refused (StorageBusyError): nothing changed
        del self._states[name]
        self._write_retries.pop(name, None)
        commit.add_done_callback(lambda done: self._namespace_dropped(state, done))
        await asyncio.shield(commit)
        if self._events is not None and events:
            self._events.publish(events)

    async def _forget_journal(self, state: _State) -> None:
        """Before a deletion's last commit: the journal of an emptied namespace goes, a page per commit.

        Its rows are many only when its entry table could not be saved for
        long (a full disk, say); in the last commit they could be over the
        committer's bounds, and no retry would ever delete the namespace. The
        mark goes first, in a commit of its own: a start that finds no mark
        reads every head from LMDB (none), where a mark with part of its
        journal gone would bring back, from the saved table, entries that
        the missing rows removed.

        Raises:
            StorageBusyError: The storage refused a commit; what was deleted stays deleted.
        """
        state.journal_cuts += 1  # a table being saved meanwhile (from before the removals) is dropped
        batch = self._storage.batch()
        batch.delete(MARKS, state.namespace.name.encode())
        await self._committer.submit(batch)
        state.mark = None
        await self._trim_journal(state.namespace.name, state.seq)

    def _namespace_dropped(self, state: _State, commit: asyncio.Future[None]) -> None:
        """After the deletion's commit: its files and children go; failed, LMDB's namespace serves again."""
        name = state.namespace.name
        if commit.cancelled() or commit.exception() is not None:
            # As after any failed write of it (see _committed): its writes wait a while, and it is
            # reloaded from LMDB, which still holds it (empty).
            self._failures += 1
            error = None if commit.cancelled() else commit.exception()
            self._write_failed(name, error or asyncio.CancelledError("commit cancelled"))
            self._reloading[name] = state
            self._reload_ready()
            return
        children = [pid for pid, owner in self._writers.items() if owner == name]
        if state.calibrating is not None:
            children.append(state.calibrating.pid)
        if state.sweeping and self._sweep is not None:
            children.append(self._sweep.pid)
        for pid in children:  # their waits reap them, and find the namespace gone
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        index_path = self._index_path(state.namespace)
        with contextlib.suppress(OSError):
            index_path.unlink()
        for pid in children:  # a checkpoint killed mid-write leaves its temporary file
            with contextlib.suppress(OSError):
                (index_path.parent / f".{index_path.name}.{pid}.tmp").unlink()
        self._remove_tables(state.namespace, keep=None)

    def _match_metadata(self, state: _State, wanted: dict[str, str]) -> list[int]:
        ids = list(state.heads)
        chosen: list[int] = []
        for start in range(0, len(ids), _SCAN_PAGE):
            part = ids[start : start + _SCAN_PAGE]
            with self._storage.read() as view:
                raws = view.get_many(BODIES, [u64_key(n) for n in part])
            for n, raw in zip(part, raws, strict=True):
                body = self._unsettled.get(n)  # stored, its commit under way: not in LMDB yet
                if body is None:
                    if raw is None:
                        continue
                    body = _body_codec.decode(raw)
                metadata = body.metadata
                if all(metadata.get(k) == v for k, v in wanted.items()):
                    chosen.append(n)
        return chosen

    # -- statistics ------------------------------------------------------

    def stats(self, namespace: str = "") -> list[CacheStats]:
        """Statistics of one namespace, or of every namespace by name when ``namespace`` is empty.

        Those of a namespace out of service until it is reloaded are not known (memory
        ran ahead of LMDB): every namespace leaves it out, and naming it raises.

        Raises:
            NamespaceNotFoundError: A named namespace does not exist.
            NamespaceUnavailableError: A named namespace is out of service until it is reloaded.
        """
        states = [self._state(namespace)] if namespace else [self._states[n] for n in sorted(self._states)]
        out = []
        for state in states:
            s = state.stats
            hits = s.exact_hits + s.semantic_hits
            out.append(
                CacheStats(
                    namespace=state.namespace.name,
                    lookups=s.lookups,
                    exact_hits=s.exact_hits,
                    semantic_hits=s.semantic_hits,
                    misses=s.misses,
                    hit_rate=hits / s.lookups if s.lookups else 0.0,
                    entries=len(state.heads),
                    size_bytes=state.size_bytes,
                    expirations=s.expirations,
                    evictions=s.evictions,
                    saved_tokens=s.saved_tokens,
                    saved_cost_micro_usd=s.saved_cost_micro_usd,
                    unindexed_entries=_unindexed(state),
                    search_expansion=state.index.expansion_search,
                    measured_recall=0.0 if s.calibration is None else s.calibration.recall,
                    recall_samples=0 if s.calibration is None else s.calibration.samples,
                    calibrate_time_ns=0 if s.calibration is None else s.calibration.time_ns,
                    calibrating=state.calibrating is not None,
                    repaired_entries=s.repaired,
                )
            )
        return out

    async def flush(self) -> None:
        """Writes counters and queued lookup events; removes expired entries.

        Events go in commits of at most ``_FLUSH_CHUNK``, each awaited before
        the next is built, and are recorded a slice per loop turn
        (:func:`~are_core.trace.record_in_slices`).
        Recording takes about 1.5 µs an event on the loop: at 1,250 lookups a
        second, 256 per turn made every lookup arriving during a flush wait
        some 0.4 ms, once a second for 10 to 20 ms. Those were the slowest
        1% of all lookups. Recency is not written here (see the class comment).
        First, namespaces out of service whose reload failed are reloaded
        again, those whose delay passed (see :meth:`_resync`).

        A write that fails (a full disk, say) is not raised: it is logged once
        per run of failures, and what it carried is written by a later flush,
        1 s after the first failure, then less and less often (at most every
        60 s) while they fail; a stop tries once more. Each namespace is flushed
        on its own (one that fails holds up no other), and the events this
        flush took that it did not commit go back in the queue (within its
        bound, counting those past it as dropped).
        """
        self._reload_ready(retry=True)
        # Only the events queued before this flush: lookups answered while its
        # commits run queue for the next one. Taking whatever was pending after
        # each commit chased them one at a time, a commit (an fsync under sync
        # durability) per lookup, for as long as lookups kept coming.
        queued, self._pending_events = self._pending_events, []
        now = self._clock()
        written = 0  # of queued: those after it go back in the queue, however this flush ends
        try:
            for state in list(self._states.values()):
                await self._flush_one(state, now)
            if self._events is None or not (self._stopping or self._events_retry.due(now)):
                return
            for start in range(0, len(queued), _FLUSH_CHUNK):
                if not await self._flush_events(queued[start : start + _FLUSH_CHUNK]):
                    return
                written = min(start + _FLUSH_CHUNK, len(queued))
        finally:
            if written < len(queued):
                self._requeue_events(queued[written:])

    async def _flush_one(self, state: _State, now: int) -> None:
        """Flushes a namespace unless a write of it failed lately (see :meth:`_write_failed`); never raises.

        Meanwhile it serves as LMDB holds it (the failure reloaded it): an
        expired entry never answers (a lookup checks expiry), the counters
        stay in memory (see :meth:`_carry_stats`), and writes are refused.
        """
        name = state.namespace.name
        retry = self._write_retries.get(name)
        if retry is not None and not (self._stopping or retry.due(now)):
            return
        try:
            await self._flush_namespace(state, now)
        except Exception as error:  # noqa: BLE001 - one namespace's failure never holds up the others'
            # Counted once: a commit that failed was counted as it ended (this is not due then).
            self._write_failed(name, error)

    async def _flush_events(self, chunk: list[EventDraft]) -> bool:
        """Commits one chunk of lookup events; False when it could not (they go back in the queue)."""
        assert self._events is not None
        try:
            # Checked before recording (sequences taken, slices of loop turns spent); the
            # submit may still be refused, the pending writes having grown meanwhile.
            self._committer.check_room(len(chunk), len(chunk) * (_EVENT_BYTES + 256))
            batch = self._storage.batch()
            recorded = await record_in_slices(self._events, batch, chunk)
            await self._submit(batch, None, [], recorded)
        except StorageBusyError:
            # Backpressure: these and the rest go first at the next flush (recorded again
            # then; the sequences of a refused batch are gaps). Nothing else changed.
            return False
        except Exception as error:  # noqa: BLE001 - not in LMDB: recorded again by a later flush
            self._flush_failed(self._events_retry, "lookup events", error)
            return False
        if self._events_retry.failures:
            self._flush_recovered(self._events_retry, "lookup events")
            self._events_retry = _WriteRetry()
        return True

    def _flush_failed(self, retry: _WriteRetry, what: str, error: Exception) -> None:
        """Counts a failed flush write of lookup events and logs it, once per run of failures."""
        if retry.failed(self._clock(), error):
            _log.warning(
                f"cache: writing {what} failed ({retry.cause}); tried again after "
                f"{_FLUSH_FIRST_DELAY_NS // 1_000_000_000} s, then less often "
                f"(at most every {_FLUSH_MAX_DELAY_NS // 1_000_000_000} s) while it fails"
            )
        else:
            _log.debug(f"cache: writing {what} failed again ({retry.cause})")

    def _flush_recovered(self, retry: _WriteRetry, what: str) -> None:
        """Logs the end of a run of failed flush writes (a write of the same kind committed)."""
        seconds = max(self._clock() - retry.since_ns, 0) / 1e9
        _log.warning(f"cache: wrote {what} after {retry.failures} failed attempt(s) over {seconds:.0f} s")

    def _write_failed(self, name: str, error: BaseException) -> None:
        """Closes the writes of namespace ``name`` for a while after one of them failed; logs a run once.

        Its memory was reloaded from LMDB (see :meth:`_resync`): at a
        million entries a read of every head and an index rebuilt. So the
        next write of it, by a call (see :meth:`_room`) or by a flush, waits
        1 s, then 2, 4, ... up to 60 s while the tries fail; lookups answer
        meanwhile. Counted only when a try was due: the writes that were
        under way together fail together, and count as one.
        """
        retry = self._write_retries.setdefault(name, _WriteRetry())
        now = self._clock()
        if retry.failures and not retry.due(now):
            return
        if retry.failed(now, error):
            _log.warning(
                f"cache: a write of namespace {name!r} failed ({retry.cause}); its writes are refused "
                f"for {_FLUSH_FIRST_DELAY_NS // 1_000_000_000} s, then longer (at most "
                f"{_FLUSH_MAX_DELAY_NS // 1_000_000_000} s) while they fail; lookups still answer"
            )
        else:
            _log.debug(f"cache: a write of namespace {name!r} failed again ({retry.cause})")

    def _write_committed(self, name: str) -> None:
        """Reopens the writes of namespace ``name``: one of them committed (logs the end of a run)."""
        retry = self._write_retries.pop(name, None)
        if retry is not None:
            seconds = max(self._clock() - retry.since_ns, 0) / 1e9
            _log.warning(
                f"cache: writes of namespace {name!r} commit again, after {retry.failures} failed "
                f"attempt(s) over {seconds:.0f} s"
            )

    async def _flush_namespace(self, state: _State, now: int) -> bool:
        """Removes a namespace's expired entries, then evicts past its bounds, a chunk per commit.

        Also writes its counters if they changed. Each commit is checked
        against the committer's bounds before it changes memory; under
        backpressure the rest waits for the next flush. Meanwhile an expired
        entry never answers (a lookup checks expiry) and nothing else changed,
        so there is nothing to reload. The chunks also keep a mass expiry's
        commits within the bound on one batch. Then the entries past the
        bounds go (:meth:`_shrink`): those a shrink left (backpressure, a
        failed commit or a SIGKILL cut it short, see :meth:`put_namespace`),
        or a store (see :meth:`_room_to_store`). Returns whether anything was
        committed.
        """
        name = state.namespace.name
        if self._states.get(name) is not state:  # reloaded meanwhile
            return False
        state.overdue.extend(state.entries.due(now))
        chunk = _INVALIDATE_CHUNK
        wrote = False
        while self._states.get(name) is state:
            due = state.overdue[:chunk]
            if not due and not state.stats_dirty:
                break
            try:
                self._room(state, mutations=0, nbytes=0, changes=0, removals=len(due), events=1)
            except BatchTooLargeError:  # a committer of small bounds: smaller commits
                if len(due) <= 1:
                    raise
                chunk = len(due) // 2
                continue
            except StorageError as error:  # busy, or closing: the next flush tries again
                _log.debug(f"cache: flushing {name!r} waits for the next flush: {error}")
                return wrote
            del state.overdue[: len(due)]
            batch = self._storage.batch()
            expired = self._expire(state, batch, due)
            drafts = self._removal_drafts(state, expired, "EXPIRED")
            if state.stats_dirty:
                self._put_stats(batch, state)
            if len(batch) or drafts:
                await self._submit(batch, state, drafts)
                wrote = True
            if not state.overdue:
                break
        return await self._shrink(state) > 0 or wrote

    async def _shrink(self, state: _State) -> int:
        """Evicts a namespace's entries past its bounds, least recently used first, a chunk per commit.

        Each chunk (at most 5,000; fewer on a committer of small bounds, see
        :meth:`_removal_room`) is checked against the committer's bounds
        before it changes memory. When the committer refuses one (busy, or
        closing), the rest waits for the next flush, which calls this again,
        and nothing changed. Returns how many entries were evicted.

        Raises:
            StorageError: A chunk's commit failed (its namespace is reloaded, see :meth:`_resync`).
        """
        name = state.namespace.name
        total = 0
        while self._states.get(name) is state and _over_bounds(state):
            evicting = self._evictions(state, state.namespace, 0, 0)
            limit = min(evicting, self._removal_room(state), _EVICT_CHUNK)
            if limit < 1:  # a committer too small for one removal a commit
                _log.debug(f"cache: the storage's bounds take no eviction from {name!r}")
                break
            try:
                self._room(state, mutations=0, nbytes=0, changes=0, removals=limit, events=1)
            except StorageError as error:
                _log.debug(f"cache: evicting past the bounds of {name!r} waits for the next flush: {error}")
                break
            batch = self._storage.batch()
            evicted = self._evict(state, batch, keep=None, limit=limit)
            self._put_stats(batch, state)
            await self._submit(batch, state, self._removal_drafts(state, evicted, "EVICTED"))
            total += len(evicted)
        return total

    def _requeue_events(self, drafts: list[EventDraft]) -> None:
        """Puts lookup events a flush could not commit back before those queued since (within the bound)."""
        pending = drafts + self._pending_events
        if len(pending) > _MAX_PENDING_EVENTS:
            self._dropped_events += len(pending) - _MAX_PENDING_EVENTS
            del pending[_MAX_PENDING_EVENTS:]
        self._pending_events = pending

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            # Shielded: stopping waits for a turn under way instead of cutting it.
            self._tick = asyncio.ensure_future(self._flush_turn())
            await asyncio.shield(self._tick)

    async def _flush_turn(self) -> None:
        try:
            await self.flush()
        except Exception as error:  # noqa: BLE001 - keep flushing; the next turn retries
            _log.warning(f"cache: flush failed: {error}")
        try:
            await self.snapshot_due()
        except Exception as error:  # noqa: BLE001 - derived data; the next turn retries
            _log.warning(f"cache: saving an entry table failed: {error}")
        self._fold_due()
        self.checkpoint_due()
        self.calibrate_due()
        self.repair_due()

    # -- internals -------------------------------------------------------

    def _state(self, name: str) -> _State:
        state = self._states.get(name)
        if state is None:
            if name in self._reloading:
                raise self._unavailable(name)
            raise NamespaceNotFoundError(name)
        return state

    def _writable(self, name: str) -> _State:
        """The namespace's state, for a call that adds to it: not while it is being deleted."""
        state = self._state(name)
        if name in self._deleting:
            raise NamespaceDeletingError(name)
        return state

    def _unavailable(self, name: str) -> NamespaceUnavailableError:
        old = self._reloading.get(name)
        if old is None or not old.reload_error:  # reloaded as soon as its commits under way end
            return NamespaceUnavailableError(name)
        due = max(old.reload_retry_ns - self._clock(), 0)
        return NamespaceUnavailableError(name, old.reload_error, retry_after_ns=due)

    def _resolve_embedder(self, spec: str, dimension: int) -> tuple[Embedder | None, str, int]:
        if spec == "caller":
            if not dimension:
                raise InvalidCacheArgumentError(
                    "a namespace with the caller embedder needs a dimension", field="namespace.dimension"
                )
            return None, "caller", dimension
        if spec == "lexical":
            size = dimension or 256
            if not 16 <= size <= _MAX_DIMENSION:
                raise InvalidCacheArgumentError(
                    f"the lexical embedder's dimension must be 16 to {_MAX_DIMENSION}, got {size}",
                    field="namespace.dimension",
                )
            embedder = LexicalEmbedder(size)
            return embedder, embedder.name, size
        model = self._model(spec)
        if dimension and dimension != model.dimension:
            raise DimensionMismatchError(field="namespace.dimension", expected=model.dimension, got=dimension)
        return model, model.name, model.dimension

    def _model(self, name: str) -> Embedder:
        loaded = self._loaded_models.get(name)
        if loaded is not None:
            return loaded
        directory = self._models.get(name)
        if directory is None:
            known = ", ".join(["lexical", "caller", *sorted(self._models)])
            raise EmbedderUnavailableError(
                f"unknown embedder {name!r}; this sidecar has {known}", field="namespace.embedder"
            )
        try:
            model = OnnxEmbedder(directory)
        except EmbedderError as error:
            raise EmbedderUnavailableError(
                f"embedder {name!r}: {error}", field="namespace.embedder"
            ) from error
        self._loaded_models[name] = model
        return model

    def _check_vector(self, state: _State, vector: np.ndarray[Any, Any], field: str) -> np.ndarray[Any, Any]:
        """A caller's vector, of the namespace's dimension, as a new L2-normalised float32 array.

        Raises:
            DimensionMismatchError: It has another dimension.
            InvalidCacheArgumentError: It is zero (no direction to compare by) or not finite.
        """
        array = np.asarray(vector, dtype=np.float32).reshape(-1)
        if array.shape[0] != state.namespace.dimension:
            raise DimensionMismatchError(field=field, expected=state.namespace.dimension, got=array.shape[0])
        wide = array.astype(np.float64)  # so that tiny components do not underflow to a zero norm
        norm = float(np.linalg.norm(wide))
        if not math.isfinite(norm):
            raise InvalidCacheArgumentError(f"`{field}` has a component that is not finite", field=field)
        if norm == 0.0:
            raise InvalidCacheArgumentError(
                f"`{field}` is all zeros: a vector needs a direction to be compared by similarity",
                field=field,
            )
        return np.ascontiguousarray(wide / norm, dtype=np.float32)

    async def _query_vector(
        self, state: _State, prompt: str, vector: np.ndarray[Any, Any] | None, field: str
    ) -> np.ndarray[Any, Any] | None:
        if vector is not None:
            return self._check_vector(state, vector, field)
        if is_blank(prompt):
            return None
        if state.embedder is None:
            if state.embedder_error:
                raise EmbedderMismatchError(state.namespace.name, state.embedder_error)
            raise EmbedderUnavailableError(
                f"namespace {state.namespace.name!r} takes caller vectors only: "
                "give `vector` or set `exact_only`",
                field="vector",
            )
        query = await self._embed(state, prompt)
        return query if _has_direction(query) else None  # no direction: no semantic tier

    async def _embed(self, state: _State, prompt: str) -> np.ndarray[Any, Any]:
        embedder = state.embedder
        assert embedder is not None
        if isinstance(embedder, LexicalEmbedder):
            vector: np.ndarray[Any, Any] = embedder.embed([prompt])[0]
            return vector
        matrix: np.ndarray[Any, Any] = await asyncio.to_thread(embedder.embed, [prompt])
        return np.ascontiguousarray(matrix[0])

    def _remove(self, state: _State, batch: Any, entry_id: int, *, index: bool = True) -> EntryHead | None:
        """Removes an entry's rows (in ``batch``) and memory; ``index=False``: not its vector from the index.

        An entry's key left in the index never answers (its head is gone); a
        namespace being deleted drops its index whole (see :meth:`delete_namespace`).
        """
        head = state.forget(entry_id)
        if head is None:
            return None
        self._hot.forget(entry_id)
        batch.delete(HEADS, join_key(state.namespace.name, entry_id))
        if self._blobs is not None and state.namespace.blob_entries:
            digest = self._entry_blobs.pop(entry_id, None) or self._stored_blob(entry_id)
            if digest:
                self._blobs.stage_release(batch, _blob_referrer(entry_id), digest)
        batch.delete(BODIES, u64_key(entry_id))
        if head.has_vector:
            batch.delete(VECTORS, u64_key(entry_id))
            if index:
                _index_remove(state, [entry_id])
                state.index_dirty = True
                state.index_removals += 1
        return head

    def _check_blob(self, sha256: str, size_bytes: int) -> tuple[bytes, int, str]:
        """(digest, size, media type) of a response's blob, once the store holds it (at that size, if any)."""
        if self._blobs is None:
            raise BlobNotFoundError("this sidecar has no blob store", field="response.blob")
        digest = bytes.fromhex(sha256)
        info = self._blobs.stat(digest)
        if info is None:
            raise BlobNotFoundError(f"no blob has digest {sha256}", field="response.blob")
        if size_bytes and size_bytes != info.size_bytes:
            raise InvalidCacheArgumentError(
                f"`response.blob.size_bytes` is {size_bytes}; the blob is {info.size_bytes} bytes",
                field="response.blob.size_bytes",
            )
        return digest, int(info.size_bytes), str(info.content_type)

    def _stored_blob(self, entry_id: int) -> bytes:
        """The blob a committed entry's response names (b"" for an inline one)."""
        raw = self._storage.get(BODIES, u64_key(entry_id))
        if raw is None:
            return b""
        sha256 = _body_codec.decode(raw).blob_sha256
        return bytes.fromhex(sha256) if sha256 else b""

    def _evict(self, state: _State, batch: Any, keep: int | None, limit: int) -> list[EntryHead]:
        """Evicts least recently used entries (never ``keep``) while over the bounds: at most ``limit``.

        What ``limit`` leaves over the bounds is evicted by the next writes
        and flushes (see :meth:`_shrink`).
        """
        evicted: list[EntryHead] = []
        while len(evicted) < limit and _over_bounds(state):
            victim = state.lru.first()
            if victim is None or victim == keep:
                if victim is None or len(state.lru) == 1:
                    break
                state.lru.move_to_end(victim)
                continue
            head = self._remove(state, batch, victim)
            if head is not None:
                evicted.append(head)
                state.stats.evictions += 1
                state.stats_dirty = True
        return evicted

    def _replace(self, state: _State, batch: Any, entry_id: int, now: int, expired: list[EntryHead]) -> bool:
        """Removes the entry a store replaces; False (and counted, in ``expired``) if it had expired."""
        head = self._remove(state, batch, entry_id)
        if head is None or head.expire_ns > now:
            return head is not None
        expired.append(head)
        state.stats.expirations += 1
        state.stats_dirty = True
        return False

    def _expire(self, state: _State, batch: Any, due: list[tuple[int, int]]) -> list[EntryHead]:
        expired: list[EntryHead] = []
        for expire_ns, entry_id in due:
            head = state.heads.get(entry_id)
            if head is None or head.expire_ns != expire_ns:
                continue
            self._remove(state, batch, entry_id)
            expired.append(head)
            state.stats.expirations += 1
            state.stats_dirty = True
        return expired

    def _removal_drafts(self, state: _State, heads: list[EntryHead], reason: str) -> list[EventDraft]:
        if not heads:
            return []
        name = state.namespace.name
        return [
            EventDraft(
                event_type="CACHE_INVALIDATED",
                name=name,
                attributes={
                    "are.cache.namespace": name,
                    "are.cache.removed_count": len(heads),
                    "are.cache.reason": reason,
                    "are.cache.entry_id": entry_id_text(heads[0].entry_id) if len(heads) == 1 else "",
                },
            )
        ]

    def _put_stats(self, batch: Any, state: _State) -> None:
        batch.put(STATS, state.namespace.name.encode(), _stats_codec.encode(state.stats))
        state.stats_dirty = False

    def _queue_event(self, draft: EventDraft) -> None:
        if self._events is None:
            return
        if len(self._pending_events) >= _MAX_PENDING_EVENTS:
            self._dropped_events += 1
            return
        self._pending_events.append(draft)

    def _record_task_event(self, draft: EventDraft) -> None:
        """Records the event of a task's lookup now, in a batch of its own, rather than at the next flush.

        The scheduler records the task's TASK_CACHE_HIT or TASK_CACHE_MISS
        as soon as the lookup returns, in its own commit. Queued for the next
        flush (up to ``flush_interval`` later), the cache's event came after
        it, often after the workflow's end: a reader of the workflow saw the
        decision after what it caused, and the OpenTelemetry export, whose
        workflow span had ended, lost it. Recorded now, it takes the lower
        sequence, and readers and listeners get events in sequence order.
        The batch is submitted at the next loop callback, after the scheduler
        has begun its transaction in this loop step, so that both usually go
        in one commit (one sync, not two). Refused (backpressure, a stop) or
        failed, the event goes to the next flush instead (a sequence it took
        is then a gap), still naming its task.
        """
        events = self._events
        if events is None:
            return
        try:
            # Checked before recording: a refusal then takes no sequence.
            self._committer.check_room(2, 2 * _EVENT_BYTES)  # its row and its workflow's index row
        except StorageError:
            self._queue_event(draft)
            return
        batch = self._storage.batch()
        event = events.record(batch, draft)
        asyncio.get_running_loop().call_soon(self._submit_task_event, batch, event, draft)

    def _submit_task_event(self, batch: Any, event: Event, draft: EventDraft) -> None:
        """Submits the batch of :meth:`_record_task_event`; publishes its event once committed."""
        try:
            commit = self._committer.enqueue(batch)
        except StorageError:
            self._queue_event(draft)
            return

        def settled(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                if self._events is not None:
                    self._events.publish([event])
            else:
                self._queue_event(draft)

        commit.add_done_callback(settled)

    def _room(
        self,
        state: _State,
        *,
        mutations: int,
        nbytes: int,
        changes: int,
        removals: int,
        events: int,
        namespace_row: bool = False,
    ) -> None:
        """Refuses a write of ``state`` that the committer would refuse, before it changes memory.

        A write changes memory first and commits after: a commit refused then
        (or one that failed) leaves memory ahead of LMDB, and the namespace is
        reloaded from it (see :meth:`_resync`), at a million entries a read of
        every one and an index rebuilt on the event loop, out of service
        meanwhile. Backpressure must not cost that: a write checks here first
        and submits (:meth:`_submit`) in the same loop step, so no other batch
        is admitted between and the check stands, unless its estimate was low.

        ``mutations`` and ``nbytes`` are the write's entry rows (exact);
        ``changes`` the heads it adds (an id each in the journal row);
        ``removals`` how many entries it may remove, at most (their rows, and
        their ids in the journal row); ``events`` the events it records. The
        rows every write carries besides (the entry-id mark, the counters, the
        journal row, the namespace's row when it changes) count at their largest.

        A write of a namespace whose last write failed is refused until the
        next try is due (see :meth:`_write_failed`).

        Raises:
            NamespaceWritesUnavailableError: A write of it failed lately; retry after the delay it
                gives. Nothing changed.
            StorageBusyError: The writes pending would pass a bound; retry later. Nothing changed.
            BatchTooLargeError: The write alone is over a bound. Nothing changed.
            StorageClosedError: The committer is closing. Nothing changed.
        """
        name = state.namespace.name
        retry = self._write_retries.get(name)
        if retry is not None and not self._stopping:
            now = self._clock()
            if not retry.due(now):
                raise NamespaceWritesUnavailableError(name, retry.cause, retry_after_ns=retry.retry_ns - now)
        self._committer.check_room(
            *self._estimate(
                state,
                mutations=mutations,
                nbytes=nbytes,
                changes=changes,
                removals=removals,
                events=events,
                namespace_row=namespace_row,
            )
        )

    def _estimate(
        self,
        state: _State,
        *,
        mutations: int,
        nbytes: int,
        changes: int,
        removals: int,
        events: int,
        namespace_row: bool,
    ) -> tuple[int, int]:
        """The mutations and bytes at most of a write of ``state`` (the arguments are :meth:`_room`'s)."""
        name = state.name_bytes
        removal_mutations, removal_bytes = _REMOVAL_MUTATIONS, name + _REMOVAL_BYTES
        if state.namespace.blob_entries:
            removal_mutations += _REFERENCE_MUTATIONS
            removal_bytes += _REFERENCE_BYTES
        mutations += _BOOKKEEPING_MUTATIONS + removals * removal_mutations
        nbytes += 2 * name + _BOOKKEEPING_BYTES + 8 * changes + removals * removal_bytes
        if namespace_row:
            mutations += 1
            nbytes += name + _NAMESPACE_BYTES
        if self._events is not None:
            mutations += events
            nbytes += events * (2 * name + _EVENT_BYTES)
        return mutations, nbytes

    def _removal_room(
        self,
        state: _State,
        *,
        mutations: int = 0,
        nbytes: int = 0,
        changes: int = 0,
        events: int = 1,
        namespace_row: bool = False,
    ) -> int:
        """How many removals a write of ``state`` of this size can carry within the committer's bounds.

        As a batch alone (what :meth:`_room` refuses as BatchTooLargeError past
        it), whatever is pending: 0 when the write alone is at a bound, or past
        it. Mass removals (invalidations, evictions past new bounds) take
        chunks of at most this many, so that a committer of small bounds
        takes them in smaller commits rather than refusing them every time.
        """
        base = self._estimate(
            state,
            mutations=mutations,
            nbytes=nbytes,
            changes=changes,
            removals=0,
            events=events,
            namespace_row=namespace_row,
        )
        one = self._estimate(
            state,
            mutations=mutations,
            nbytes=nbytes,
            changes=changes,
            removals=1,
            events=events,
            namespace_row=namespace_row,
        )
        committer = self._committer
        fits = min(
            (committer.max_pending_mutations - base[0]) // (one[0] - base[0]),
            (committer.max_pending_bytes - base[1]) // (one[1] - base[1]),
        )
        return max(fits, 0)

    def _room_to_store(
        self,
        state: _State,
        *,
        mutations: int,
        nbytes: int,
        added: int,
        added_bytes: int,
        replacing: int,
        namespace_row: bool = False,
    ) -> int:
        """Checks a store of ``added`` entries (see :meth:`_room`); returns at most how many it evicts.

        ``mutations`` and ``nbytes`` are its entry rows; ``replacing`` the
        entries it replaces. It evicts as many as it adds and a chunk more
        (:data:`_EVICT_CHUNK`), and no more than its batch can carry within
        the committer's bounds (see :meth:`_removal_room`). A namespace within
        its bounds before needs no more, unless its least recently used
        entries are far smaller than those added; one past them (a shrink that
        backpressure cut short) is brought within them by the flushes, a chunk
        at a time, not by one store evicting the lot in a batch the committer
        refuses every time.

        Raises:
            StorageBusyError: The writes pending would pass a bound; retry later. Nothing changed.
            BatchTooLargeError: The store alone is over a bound. Nothing changed.
            StorageClosedError: The committer is closing. Nothing changed.
        """
        room = self._removal_room(
            state, mutations=mutations, nbytes=nbytes, changes=added, events=2, namespace_row=namespace_row
        )
        limit = max(min(room - replacing, added + _EVICT_CHUNK), 0)
        self._room(
            state,
            mutations=mutations,
            nbytes=nbytes,
            changes=added,
            removals=replacing + min(self._evictions(state, state.namespace, added, added_bytes), limit),
            events=2,
            namespace_row=namespace_row,
        )
        return limit

    @staticmethod
    def _evictions(state: _State, namespace: Namespace, added: int, added_bytes: int) -> int:
        """At most how many entries a write adding these evicts under ``namespace``'s bounds (see _room).

        Over max_entries: exactly the excess. Over max_bytes: the least
        recently used go until the rest fits, so how many is known only as
        they are taken (scanning for them ahead would cost a store what the
        eviction does): twice as many mean-sized entries as the excess, and
        :data:`_EVICTION_MARGIN` more.
        """
        count = len(state.heads) + added  # a bulk store may evict entries it adds, but its last
        size = state.size_bytes + added_bytes
        over = count - namespace.max_entries
        excess = size - namespace.max_bytes
        if excess > 0:
            over = max(over, 2 * excess * count // max(size, 1) + _EVICTION_MARGIN)
        return min(max(over, 0), count)

    async def _submit(
        self,
        batch: Any,
        state: _State | None,
        drafts: list[EventDraft],
        recorded: Sequence[Event] = (),
        *,
        bodies: Mapping[int, EntryBody] | None = None,
    ) -> None:
        # Everything up to the committer's submit runs in the same loop turn as
        # the memory changes it carries (snapshots rely on it). ``recorded``:
        # events already in ``batch`` (published with these once committed);
        # ``bodies``: of the entries it stores, to answer from until it ends.
        if state is not None and self._states.get(state.namespace.name) is not state:
            # Reloaded, or out of service, since the caller took it: its changes are
            # to memory no call reads any more, and must not reach LMDB.
            raise self._unavailable(state.namespace.name)
        # Without a namespace (lookup events): those with changes not yet journaled, if any (none
        # should have: every write journals its own). Only they are reloaded if the commit fails:
        # a failed commit of events alone changed no namespace's memory.
        targets = [state] if state is not None else [s for s in self._states.values() if s.pending]
        for target in targets:
            if target.pending:
                self._journal(batch, target)
        removals = state.take_removals() if state is not None else (0, 0)
        events: list[Event] = list(recorded)
        if self._events is not None:
            events += [self._events.record(batch, draft) for draft in drafts]
        # Admitted (or refused) now, in the loop step of the memory changes it carries.
        # Every write of a namespace checked the committer's bounds (_room) in this step
        # before making them, with no other batch admitted since, so a refusal here is
        # rare: the estimate was low, which takes evictions over max_bytes of many more
        # entries than _evictions allows for (least recently used entries far smaller
        # than the mean) while the pending writes are within that difference of a bound.
        # Then memory is ahead of LMDB, as after a failed commit, and the namespace is
        # reloaded from it. (Lookup events alone, state None, change no namespace.)
        try:
            commit = self._committer.enqueue(batch)
        except BaseException:
            if targets:
                self._failures += 1
                self._resync(*targets)
            raise
        ticket = self._tickets
        self._tickets += 1
        # The commit runs to its end even if this caller is cancelled (the
        # committer keeps an accepted batch); its outcome is handled once, below.
        self._inflight[ticket] = commit
        self._committing[ticket] = targets
        if bodies:
            self._unsettled.update(bodies)
        commit.add_done_callback(lambda done: self._committed(ticket, targets, done, bodies, removals))
        await asyncio.shield(commit)
        if self._events is not None and events:
            self._events.publish(events)

    def _committed(
        self,
        ticket: int,
        targets: list[_State],
        commit: asyncio.Future[None],
        bodies: Mapping[int, EntryBody] | None,
        removals: tuple[int, int],
    ) -> None:
        # ``removals``: the evictions and expirations of the write (of targets[0], if it has one).
        del self._inflight[ticket]
        del self._committing[ticket]
        for entry_id in bodies or ():
            self._unsettled.pop(entry_id, None)
        if not commit.cancelled() and commit.exception() is None:
            if removals != (0, 0):
                targets[0].settle_removals(removals)
            for target in targets:
                self._write_committed(target.namespace.name)
            self._reload_ready()  # a namespace out of service may have waited for this commit
            return
        if targets:  # memory ran ahead of a commit that failed: reload from the truth
            self._failures += 1
            error = None if commit.cancelled() else commit.exception()
            for target in targets:
                self._write_failed(target.namespace.name, error or asyncio.CancelledError("commit cancelled"))
            self._resync(*targets)

    def _resync(self, *targets: _State) -> None:
        """Takes these namespaces out of service until they are reloaded from LMDB.

        Memory ran ahead of a write that failed or never ran: it holds the
        change (an entry stored, one it replaced or evicted gone, entries
        invalidated, counters), LMDB does not. Until the reload, every call
        on the namespace is refused (NamespaceUnavailableError) and nothing
        is saved of it (no table, index or mark; flushes, checkpoints and
        stop skip it), so no later write is made against memory LMDB
        contradicts, and no mark vouches for it. The reload waits for the
        namespace's other commits under way: reading LMDB before a later one
        ends would lose that one's acknowledged change from memory. When the
        reload fails (LMDB closed or failing, say), the namespace stays out
        of service and a flush tries again, after a delay doubling with each
        failure (see :meth:`_reload_ready`); the reload keeps the counters
        LMDB lacks or holds wrongly (see :meth:`_carry_stats`), and the delays
        of work that failed (see :meth:`_carry_gates`). A reload after a failed
        write does not let the next write of the namespace, by a call or a
        flush, fail and reload it again at once: its writes wait, longer with
        each failure in a row (see :meth:`_write_failed`).
        """
        self._hot.clear()
        for target in targets:
            name = target.namespace.name
            if self._states.get(name) is target:
                del self._states[name]
                self._reloading[name] = target
        self._reload_ready()

    def _reload_ready(self, *, retry: bool = False) -> None:
        """Reloads from LMDB each namespace out of service none of whose commits is still under way.

        ``retry`` (each flush): also those whose reload failed before, once
        their delay passed (1 s after the first failure, doubling with each
        one up to a minute, see :func:`_reload_delay`); a commit that ends
        tries only those that were waiting for commits.
        """
        if not self._reloading:
            return
        busy = {id(target) for targets in self._committing.values() for target in targets}
        now = self._clock()
        for old in list(self._reloading.values()):
            if id(old) in busy:
                continue
            if old.reload_error and not (retry and _reload_due(old, now)):
                continue
            self._reload(old)
        self._start_indexing()

    def _reload(self, old: _State) -> None:
        """Loads a namespace out of service from LMDB, settings included, and serves it; or logs why not.

        Logged once per run of failed reloads (when the first fails, and when
        one succeeds again), not at every attempt.
        """
        name = old.namespace.name
        try:
            raw = self._storage.get(NAMESPACES, name.encode())
            # No row: its creation failed to commit; then it does not exist.
            state = None if raw is None else self._load(_decode_namespace(raw), restore=False)
        except Exception as error:  # noqa: BLE001 - stays out of service; a later flush tries again
            cause = str(error) or type(error).__name__
            now = self._clock()
            if not old.reload_failures:
                old.reload_since_ns = now
                _log.error(
                    f"cache: namespace {name!r} is out of service: reloading it from storage after a "
                    f"failed commit failed ({cause}); tried again after 1 s, then less often (at most "
                    f"every {_RELOAD_MAX_DELAY_NS // 1_000_000_000} s) while it fails"
                )
            else:
                _log.debug(f"cache: reloading namespace {name!r} failed again ({cause})")
            old.reload_failures += 1
            old.reload_retry_ns = now + _reload_delay(old.reload_failures)
            old.reload_error = cause
            return
        del self._reloading[name]
        if state is None:
            self._write_retries.pop(name, None)
        else:
            self._carry_stats(old, state)
            self._carry_gates(old, state)
            self._states[name] = state
        if old.reload_failures:
            seconds = max(self._clock() - old.reload_since_ns, 0) / 1e9
            _log.warning(
                f"cache: namespace {name!r} was reloaded from storage after {old.reload_failures} failed "
                f"attempt(s) over {seconds:.0f} s; it serves again"
            )

    @staticmethod
    def _carry_stats(old: _State, state: _State) -> None:
        """Gives a namespace reloaded after a failed commit the counters that LMDB lacks or overstates.

        LMDB holds the counters of the last write of the namespace that
        committed, as memory had them when it was built. Lookups, hits,
        misses, savings and repairs are counted in memory, not by a write:
        those counted since are kept (the larger of the two, so none counts
        twice). Evictions and expirations are a write's own: a failed write's
        did not happen, but a later write that committed carried them in its
        counters. They are those of the writes that committed. The counters
        are written again at the next flush when they differ from LMDB's.
        """
        stats, was = state.stats, old.stats
        loaded = msgspec.structs.astuple(stats)
        for field in _MEMORY_COUNTERS:
            setattr(stats, field, max(getattr(stats, field), getattr(was, field)))
        stats.evictions, stats.expirations = old.committed_removals
        state.counted_removals = state.committed_removals = old.committed_removals
        if msgspec.structs.astuple(stats) != loaded:
            state.stats_dirty = True

    @staticmethod
    def _carry_gates(old: _State, state: _State) -> None:
        """Gives a namespace reloaded after a failed commit the retry delays and lookups memory had.

        A reload builds a fresh state from LMDB. Without these, a table save,
        checkpoint, sweep or fold that failed (a full disk, say) would be tried
        again at the next flush, not after its delay, at every reload; and the
        calibration would forget the lookups it samples and when it last
        began (one that ended without a result waits for as many new lookups).
        """
        state.snapshot_retry_ns = old.snapshot_retry_ns
        state.checkpoint_retry_ns = old.checkpoint_retry_ns
        state.repair_retry_ns = old.repair_retry_ns
        state.fold_failures, state.fold_retry_ns = old.fold_failures, old.fold_retry_ns
        state.queries, state.thresholds, state.queries_seen = old.queries, old.thresholds, old.queries_seen
        state.calibrated_at, state.calibration_unfinished = old.calibrated_at, old.calibration_unfinished

    def _index_new(self, state: _State, keys: list[int], matrix: np.ndarray[Any, Any]) -> None:
        """Adds new entries' vectors to the index; if it refuses, takes them out again and re-raises."""
        try:
            _index_add(state, keys, matrix)
        except BaseException:
            with contextlib.suppress(Exception):
                _index_remove(state, keys)
            raise
        state.index_dirty = True

    def _put_next_id(self, batch: Any) -> None:
        """Adds the entry-id high-water mark to a batch that uses ids below it (ids are never reused).

        Batches are submitted in the order their ids were taken, so the last
        one committed holds the highest mark.
        """
        batch.put(META, _NEXT_ID_KEY, u64_key(self._next_id))

    def _stored_next_id(self) -> int:
        """The first id never handed out: above the stored mark and every id any row is keyed by.

        The rows cover data folders written before the mark was kept
        (bodies and vectors are keyed by entry id alone).
        """
        raw = self._storage.get(META, _NEXT_ID_KEY)
        next_id = int.from_bytes(raw, "big") if raw is not None and len(raw) == 8 else 1
        for table in (BODIES, VECTORS):
            last = self._storage.scan(table, reverse=True, limit=1)
            if last and len(last[0][0]) == 8:
                next_id = max(next_id, int.from_bytes(last[0][0], "big") + 1)
        return next_id

    def _journal(self, batch: Any, state: _State) -> None:
        """Adds the journal row of a write that changed these heads (committed with it)."""
        ids = np.asarray(state.pending, dtype=">u8")
        state.pending = []
        state.seq += 1
        batch.put(JOURNAL, join_key(state.namespace.name, state.seq), ids.tobytes())
        state.unsaved_changes += int(ids.size)
        state.unsaved_rows += 1

    async def _settled(self, ticket: int) -> None:
        """Waits until every _submit begun before ``ticket`` has finished (committed or failed)."""
        waiting = [future for number, future in self._inflight.items() if number < ticket]
        if waiting:
            await asyncio.wait(waiting)

    # -- entry tables ----------------------------------------------------

    async def snapshot_due(self) -> None:
        """Saves the entry tables that are due.

        Due: a namespace without one, whose journal grew past a bound, or
        whose recency changed and was last saved over ``_RECENCY_SAVE_NS`` ago;
        after a save that failed, not before ``_SNAPSHOT_RETRY_NS``.
        """
        now = self._clock()
        for state in list(self._states.values()):
            if now < state.snapshot_retry_ns or state.namespace.name in self._deleting:
                continue
            if (
                state.snapshot_due
                or state.unsaved_changes >= _SNAPSHOT_CHANGES
                or state.unsaved_rows >= _SNAPSHOT_ROWS
                or (state.touched and now - state.saved_ns >= _RECENCY_SAVE_NS)
            ):
                await self._snapshot(state, index_seq=-1)

    async def _snapshot(self, state: _State, *, index_seq: int) -> None:
        """Saves a namespace's entries as a table and makes it current; drops the journal it covers.

        The export is taken in one loop turn (so it holds exactly the changes of
        journal rows up to ``state.seq``); the file is written in a worker
        thread; the mark naming it is committed only after every earlier write
        committed, so a table never holds a change LMDB lacks.
        """
        if (
            self._snapshotting
            or state.since is not None
            or self._states.get(state.namespace.name) is not state
        ):
            return
        self._snapshotting = True
        name = state.namespace.name
        ticket, failures, cuts = self._tickets, self._failures, state.journal_cuts
        seq = state.seq
        columns = state.entries.export()
        changes, rows = state.unsaved_changes, state.unsaved_rows
        exported_touched, state.touched = state.touched, set()  # their recency is in the export
        saved_ns, state.saved_ns = state.saved_ns, self._clock()
        state.since = []
        saved = False
        token = os.urandom(16)
        path = self._table_path(state.namespace, seq)
        try:
            table = await asyncio.to_thread(self._write_table, columns, path, seq, token, state.namespace)
            await self._settled(ticket)
            if (
                self._failures != failures
                or self._states.get(name) is not state
                or state.journal_cuts != cuts
            ):
                with contextlib.suppress(OSError):
                    path.unlink()
                return
            state.rebase(table)
            mark = SnapshotMark(
                seq=seq,
                token=token,
                entries=len(table),
                namespace_create_ns=state.namespace.create_time_ns,
                index_seq=index_seq if index_seq == seq else -1,
            )
            batch = self._storage.batch()
            batch.put(MARKS, name.encode(), _mark_codec.encode(mark))
            await self._committer.submit(batch)
            state.mark = mark
            state.snapshot_due = False
            state.unsaved_changes -= changes
            state.unsaved_rows -= rows
            state.snapshot_retry_ns = 0
            saved = True
        finally:
            state.since = None
            self._snapshotting = False
            if not saved:  # the recency exported is still unsaved
                state.touched |= exported_touched
                state.saved_ns = saved_ns
                state.snapshot_retry_ns = self._clock() + _SNAPSHOT_RETRY_NS
        self._remove_tables(state.namespace, keep=path)
        await self._trim_journal(name, seq)

    @staticmethod
    def _write_table(
        columns: dict[str, np.ndarray[Any, Any]], path: Path, seq: int, token: bytes, namespace: Namespace
    ) -> EntryTable:
        table = EntryTable.build(**columns)
        table.save(path, seq=seq, token=token, namespace_create_ns=namespace.create_time_ns)
        return table

    def _remove_tables(self, namespace: Namespace, *, keep: Path | None) -> None:
        """Deletes a namespace's table files other than ``keep`` (older ones, or leftovers)."""
        prefix, suffix = f"{namespace.name}.", ".entries"
        try:
            names = [entry.name for entry in self._index_dir.iterdir()]
        except OSError:
            return
        for file_name in names:
            middle = file_name[len(prefix) : -len(suffix)]
            if file_name.startswith(prefix) and file_name.endswith(suffix) and middle.isdigit():
                path = self._index_dir / file_name
                if path != keep:
                    with contextlib.suppress(OSError):
                        path.unlink()

    async def _trim_journal(self, name: str, seq: int) -> None:
        """Deletes the journal rows a saved table covers, a page per commit."""
        end = join_key(name, seq + 1)
        while True:
            rows = self._storage.scan(JOURNAL, start=prefix_key(name), end=end, limit=_INVALIDATE_CHUNK)
            if not rows:
                return
            batch = self._storage.batch()
            for key, _ in rows:
                batch.delete(JOURNAL, key)
            await self._committer.submit(batch)
            if len(rows) < _INVALIDATE_CHUNK:
                return

    def _table_path(self, namespace: Namespace, seq: int) -> Path:
        return self._index_dir / f"{namespace.name}.{seq}.entries"

    def _scan(self, table: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        start: bytes | None = None
        while True:
            if start is None:
                rows = (
                    self._storage.scan(table, prefix=prefix, limit=_SCAN_PAGE)
                    if prefix
                    else self._storage.scan(table, limit=_SCAN_PAGE)
                )
            else:
                end = _prefix_end(prefix)
                rows = self._storage.scan(table, start=start, end=end, limit=_SCAN_PAGE)
            yield from rows
            if len(rows) < _SCAN_PAGE:
                return
            start = rows[-1][0] + b"\x00"

    def _load(self, namespace: Namespace, *, restore: bool = True) -> _State:
        embedder, mismatch = self._load_embedder(namespace)
        index = None
        path = self._index_path(namespace)
        if restore:
            index = VectorIndex.restore(
                path,
                dimension=namespace.dimension,
                dtype=namespace.vector_dtype,
                view=True,
                expansion_search=namespace.search_expansion or None,
            )
        name = namespace.name
        raw_mark = self._storage.get(MARKS, name.encode())
        mark = _mark_codec.decode(raw_mark) if raw_mark is not None else None
        table = None
        if mark is not None and mark.namespace_create_ns == namespace.create_time_ns:
            table = EntryTable.load(
                self._table_path(namespace, mark.seq),
                seq=mark.seq,
                token=mark.token,
                namespace_create_ns=namespace.create_time_ns,
            )
        if table is None or mark is None:
            # No table to trust: every head from LMDB (then a table is saved soon).
            if mark is not None or self._table_files(namespace):
                _log.info(f"cache: no usable entry table for {name!r}; reading every head")
            heads = [_head_codec.decode(raw) for _, raw in self._scan(HEADS, prefix_key(name))]
            heads.sort(key=lambda h: h.last_access_ns)
            state = _State(
                namespace,
                embedder,
                index or _new_index(namespace),
                EntryTable.from_heads(heads),
                now=self._clock(),
            )
            last = self._storage.scan(JOURNAL, prefix=prefix_key(name), reverse=True, limit=1)
            state.seq = max(mark.seq if mark is not None else 0, _journal_seq(last[0][0]) if last else 0)
            state.snapshot_due = True
            replayed = None
        else:
            state = _State(namespace, embedder, index or _new_index(namespace), table, now=self._clock())
            state.mark = mark
            state.seq = mark.seq
            replayed = self._replay(state)
        state.embedder_error = mismatch
        raw_stats = self._storage.get(STATS, name.encode())
        if raw_stats is not None:
            state.use_stats(_stats_codec.decode(raw_stats))
        state.namespace = _in_force(namespace, state.stats.calibration)
        state.index.expansion_search = state.namespace.search_expansion
        self._next_id = max(self._next_id, state.entries.max_id() + 1)
        with_table = replayed is not None and mark is not None and mark.index_seq == mark.seq
        try:
            self._settle_index(state, restored=index is not None, replayed=replayed if with_table else None)
        except Exception as error:  # noqa: BLE001 - derived data: never a reason not to start
            # The saved index does not take what LMDB holds: start one afresh from LMDB.
            _log.warning(f"cache: the saved index of {name!r} is unusable ({error}); rebuilding it")
            state.index = _new_index(state.namespace)
            state.backlog, state.backlog_vectors, state.backlog_removed = None, {}, []
            self._reconcile_index(state, rebuild=True)
        return state

    def _load_embedder(self, namespace: Namespace) -> tuple[Embedder | None, str]:
        """A loaded namespace's embedder, and why text cannot be embedded when its model no longer fits."""
        if namespace.embedder == "lexical":
            return LexicalEmbedder(namespace.dimension), ""
        if namespace.embedder == "caller":
            return None, ""
        try:
            model = self._model(namespace.embedder)
        except EmbedderUnavailableError as error:
            _log.warning(f"cache: namespace {namespace.name!r} serves exact lookups only: {error}")
            return None, ""
        return _fitting(namespace, model)

    def _settle_index(
        self, state: _State, *, restored: bool, replayed: np.ndarray[Any, np.dtype[np.uint64]] | None
    ) -> None:
        """Makes the index agree with the heads: from the journal alone when it was saved with the table."""
        if restored and replayed is not None:
            self._repair_index(state, replayed)
            waiting = 0 if state.backlog is None else state.backlog.size
            if len(state.index) + waiting != state.entries.vector_ids().size:
                self._reconcile_index(state, rebuild=False)  # it disagrees anyway: check it whole
        else:
            self._reconcile_index(state, rebuild=not restored)

    def _replay(self, state: _State) -> np.ndarray[Any, np.dtype[np.uint64]]:
        """Applies the journal rows after the table (LMDB's heads win); returns the ids they name."""
        name = state.namespace.name
        chunks: list[np.ndarray[Any, Any]] = []
        start = join_key(name, state.seq + 1)
        end = _prefix_end(prefix_key(name))
        while True:
            rows = self._storage.scan(JOURNAL, start=start, end=end, limit=_SCAN_PAGE)
            for key, value in rows:
                chunks.append(np.frombuffer(value, dtype=">u8"))
                state.seq = _journal_seq(key)
                state.unsaved_rows += 1
            if len(rows) < _SCAN_PAGE:
                break
            start = rows[-1][0] + b"\x00"
        if not chunks:
            return np.zeros(0, dtype=np.uint64)
        ids = np.unique(np.concatenate(chunks).astype(np.uint64))
        state.unsaved_changes += int(ids.size)
        present: list[EntryHead] = []
        for begin in range(0, ids.size, _SCAN_PAGE):
            part = ids[begin : begin + _SCAN_PAGE].tolist()
            with self._storage.read() as view:
                raws = view.get_many(HEADS, [join_key(name, n) for n in part])
            for entry_id, raw in zip(part, raws, strict=True):
                if raw is None:
                    state.entries.forget(entry_id)
                else:
                    present.append(_head_codec.decode(raw))
        present.sort(key=lambda h: h.last_access_ns)
        for head in present:
            state.entries.admit(head)
        _log.info(f"cache: replayed {ids.size} journal entries of {name!r}")
        return ids

    def _repair_index(self, state: _State, ids: np.ndarray[Any, np.dtype[np.uint64]]) -> None:
        """Makes the index agree with the heads for these entries only."""
        if not ids.size:
            return
        keep = np.fromiter(
            ((head := state.heads.get(n)) is not None and head.has_vector for n in ids.tolist()),
            dtype=np.bool_,
            count=ids.size,
        )
        index = state.index
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        stale = ids[~keep]
        stale = stale[index.contains_many(stale)] if stale.size else stale
        self._drop_keys(state, stale)
        wanted = ids[keep]
        missing = wanted[~index.contains_many(wanted)] if wanted.size else wanted
        if missing.size:
            self._index_missing(state, missing)
            state.index_dirty = True

    def _table_files(self, namespace: Namespace) -> bool:
        prefix = f"{namespace.name}."
        try:
            names = [entry.name for entry in self._index_dir.iterdir()]
        except OSError:
            return False
        return any(n.startswith(prefix) and n.endswith(".entries") for n in names)

    def _reconcile_index(self, state: _State, *, rebuild: bool) -> None:
        """Makes the index hold exactly the entries with vectors: repair, or rebuild."""
        wanted = state.entries.vector_ids()
        index = state.index
        if not rebuild:
            present = index.contains_many(wanted)
            if len(index) == wanted.size and bool(present.all()):
                return
            extra = np.setdiff1d(index.keys(), wanted, assume_unique=True)
            missing = wanted[~present]
            _log.info(
                f"cache: repairing the index of {state.namespace.name!r}: "
                f"{extra.size} stale, {missing.size} missing"
            )
            if extra.size:
                self._next_id = max(self._next_id, int(extra.max()) + 1)
            self._drop_keys(state, extra)
        else:
            missing = wanted
            if missing.size:
                _log.info(f"cache: rebuilding the index of {state.namespace.name!r} ({missing.size} vectors)")
        self._index_missing(state, missing)
        if missing.size or rebuild:
            state.index_dirty = True

    def _drop_keys(self, state: _State, keys: np.ndarray[Any, Any]) -> None:
        """Removes keys of removed entries from the index (a memory-mapped one hides them in its overlay)."""
        if not keys.size:
            return
        state.index.remove(keys)
        state.index_dirty = True
        state.index_removals += int(keys.size)

    def _add_vectors(self, state: _State, ids: np.ndarray[Any, Any]) -> None:
        """Adds these entries' vectors (from LMDB) to the index."""
        for start in range(0, ids.size, _SCAN_PAGE):
            keys, matrix = self._read_vectors(state, ids[start : start + _SCAN_PAGE])
            if keys:
                state.index.add(keys, matrix)

    def _read_vectors(
        self, state: _State, ids: np.ndarray[Any, Any]
    ) -> tuple[list[int], np.ndarray[Any, Any]]:
        """The stored vectors of these entries (those that have one), as keys and an (n, d) matrix.

        A stored vector that cannot be indexed (of another dimension than the
        namespace's, zero, or not finite: a damaged or inconsistent data
        folder) is left out with a warning naming the entry: the entry still
        answers from the exact tier, and the start goes on.
        """
        with self._storage.read() as view:
            raws = view.get_many(VECTORS, [u64_key(int(n)) for n in ids])
        width = state.namespace.dimension * 4
        keys: list[int] = []
        rows: list[bytes] = []
        skipped: list[int] = []
        for n, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            if len(raw) == width:
                keys.append(int(n))
                rows.append(raw)
            else:
                skipped.append(int(n))
        matrix = np.frombuffer(b"".join(rows), dtype=np.float32).reshape(len(rows), state.namespace.dimension)
        if keys:
            usable = _directions(matrix)
            if not bool(usable.all()):
                skipped += [key for key, ok in zip(keys, usable.tolist(), strict=True) if not ok]
                keys = [key for key, ok in zip(keys, usable.tolist(), strict=True) if ok]
                matrix = matrix[usable]
        if skipped:
            shown = ", ".join(entry_id_text(n) for n in skipped[:10])
            more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
            _log.warning(
                f"cache: {len(skipped)} stored vector(s) of namespace {state.namespace.name!r} cannot be "
                f"indexed (not {state.namespace.dimension} finite components with a direction): entries "
                f"{shown}{more}; they answer exact lookups only"
            )
        if not keys:
            return [], np.zeros((0, 0), dtype=np.float32)
        return keys, np.ascontiguousarray(matrix)

    def _index_missing(self, state: _State, ids: np.ndarray[Any, Any]) -> None:
        """Indexes these entries' vectors now, or, past ``index_at_start`` of them, in the background."""
        if state.backlog is None and ids.size <= self._index_at_start:
            self._add_vectors(state, ids)
            state.index_changes += int(ids.size)
            return
        waiting = ids if state.backlog is None else np.union1d(state.backlog, ids)
        state.backlog = np.asarray(waiting, dtype=np.uint64)
        state.backlog_total = int(state.backlog.size)

    @staticmethod
    def _with_vectors(state: _State, ids: Sequence[int] | np.ndarray[Any, Any]) -> list[int]:
        """Those of these entries that are still held and have a vector."""
        heads = state.heads
        return [
            n
            for n in np.asarray(ids, dtype=np.uint64).tolist()
            if (h := heads.get(n)) is not None and h.has_vector
        ]

    def _start_indexing(self) -> None:
        """Starts indexing the backlog of every namespace that has one (and no task doing it)."""
        busy = {task.get_name() for task in self._indexers if not task.done()}
        for state in self._states.values():
            name = f"are-cache-index:{state.namespace.name}"
            if state.backlog is None or name in busy:
                continue
            _log.info(
                f"cache: serving {state.namespace.name!r} while indexing {state.backlog.size} vectors "
                "in the background (the semantic tier answers from those indexed so far)"
            )
            task = asyncio.create_task(self._index_backlog(state), name=name)
            self._indexers.add(task)
            task.add_done_callback(self._indexers.discard)

    @staticmethod
    def _end_backlog(state: _State) -> None:
        """After a failed background indexing: changes go to the index directly again.

        The changes queued for the indexer are applied now (as far as the
        index takes them); what the backlog still held is left to the next
        start, which checks the index whole (``index_incomplete``).
        """
        vectors, removed = state.backlog_vectors, state.backlog_removed
        state.backlog, state.backlog_vectors, state.backlog_removed = None, {}, []
        state.index_incomplete = True
        with contextlib.suppress(Exception):
            if removed:
                state.index.remove(removed)
            if vectors:
                state.index.add(list(vectors), np.stack(list(vectors.values())))

    async def _index_backlog(self, state: _State) -> None:
        """Adds a namespace's backlog of vectors to its index, chunk by chunk, while the engine serves.

        Each chunk is added in a worker thread, by every core but one (the
        event loop's). A semantic lookup meanwhile waits for the chunk in a
        worker thread of its own, so other calls go on. Stores and removals
        do not touch the index meanwhile: they queue their changes, which
        the indexer applies first (removals, then the newest vectors, then
        the backlog). Chunks are sized to take about ``_BACKLOG_CHUNK_NS``.
        An entry removed while its chunk was being added is taken out again
        (a removed entry never answers anyway: its head is gone). Progress
        is recorded as CACHE_INDEXING events at the start, at every tenth
        and at the end.
        """
        name = state.namespace.name
        total = state.backlog_total
        chunk = _BACKLOG_FIRST_CHUNK
        tenths = 0
        started = time.monotonic()
        self._queue_event(_indexing_draft(name, 0, total, done=False))
        try:
            while state.backlog is not None and _unindexed(state) + len(state.backlog_removed):
                if self._stopping or self._states.get(name) is not state:
                    return
                if name in self._folding:  # the fold catches up with the overlay only if it stops growing
                    await asyncio.sleep(0.05)
                    continue
                began = time.monotonic_ns()
                if state.backlog_removed:  # removed since the start: out of the index first
                    gone, state.backlog_removed = state.backlog_removed, []
                    await asyncio.to_thread(state.index.remove, gone)
                    continue
                if state.backlog_vectors:  # stored since the start: the newest answer soonest
                    keys = list(itertools.islice(state.backlog_vectors, chunk))
                    matrix = np.stack([state.backlog_vectors.pop(key) for key in keys])
                    part_size = 0
                else:
                    part = state.backlog[:chunk]
                    part_size = int(part.size)
                    keys, matrix = self._read_vectors(
                        state, np.asarray(self._with_vectors(state, part), dtype=np.uint64)
                    )
                if keys:
                    add = functools.partial(state.index.add, keys, matrix, threads=background_threads())
                    await asyncio.to_thread(add)
                    state.index_changes += len(keys)
                    alive = set(self._with_vectors(state, keys))
                    state.backlog_removed += [n for n in keys if n not in alive]  # removed meanwhile
                state.backlog = state.backlog[part_size:]
                spent = max(time.monotonic_ns() - began, 1)
                chunk = int(min(_BACKLOG_MAX_CHUNK, max(1, chunk * _BACKLOG_CHUNK_NS / spent)))
                indexed = total - int(state.backlog.size)
                if indexed * 10 // max(total, 1) > tenths and state.backlog.size:
                    tenths = indexed * 10 // max(total, 1)
                    self._queue_event(_indexing_draft(name, indexed, total, done=False))
        except Exception as error:  # noqa: BLE001 - derived data: the next start indexes what is left
            _log.warning(f"cache: indexing {name!r} in the background failed: {error}")
            self._end_backlog(state)
            return
        state.backlog = None
        self._queue_event(_indexing_draft(name, total, total, done=True))
        _log.info(f"cache: indexed {total} vectors of {name!r} in {time.monotonic() - started:.1f} s")

    def _index_path(self, namespace: Namespace) -> Path:
        return self._index_dir / f"{namespace.name}.{namespace.vector_dtype}.usearch"


MUTABLE_SETTINGS = frozenset(
    {
        "similarity_threshold",
        "default_ttl_ns",
        "max_entries",
        "max_bytes",
        "description",
        "search_expansion",
        "recall_target",
    }
)
"""The settings of a namespace that PutNamespace may change (see :meth:`CacheEngine.put_namespace`)."""


def _kept(settings: NamespaceSettings, namespace: Namespace, keep: frozenset[str]) -> NamespaceSettings:
    """``settings`` with these mutable settings as ``namespace`` has them (an update of the others)."""
    current = {
        "similarity_threshold": namespace.similarity_threshold,
        "default_ttl_ns": namespace.default_ttl_ns,
        "max_entries": namespace.max_entries,
        "max_bytes": namespace.max_bytes,
        "description": namespace.description,
        # A fixed expansion stays fixed; a calibrated one stays calibrated (0), not fixed at its value.
        "search_expansion": namespace.search_expansion if namespace.expansion_fixed else 0,
        "recall_target": namespace.recall_target,
    }
    return msgspec.structs.replace(settings, **{name: current[name] for name in keep})


def _decode_namespace(raw: bytes) -> Namespace:
    """A stored namespace record, with the search expansion of its dtype if stored before the setting."""
    namespace = _namespace_codec.decode(raw)
    if not namespace.search_expansion:
        namespace = msgspec.structs.replace(
            namespace, search_expansion=EXPANSION_SEARCH[namespace.vector_dtype]
        )
    return namespace


def _unindexed(state: _State) -> int:
    """Entries whose vectors a start's background indexing has yet to add."""
    if state.backlog is None:
        return 0
    return int(state.backlog.size) + len(state.backlog_vectors)


def _index_add(state: _State, keys: list[int], matrix: np.ndarray[Any, Any]) -> None:
    """Adds stored vectors to the index, or, while a start's backlog is indexed, queues them for it."""
    if state.backlog is None:
        state.index.add(keys, matrix)
        return
    for key, row in zip(keys, matrix, strict=True):
        state.backlog_vectors[key] = np.array(row, dtype=np.float32)


def _index_remove(state: _State, keys: list[int]) -> None:
    """Takes keys out of the index, or, while a start's backlog is indexed, has the indexer do it."""
    if state.backlog is None:
        state.index.remove(keys)
        return
    for key in keys:
        if state.backlog_vectors.pop(key, None) is None:  # queued, never added: nothing to take out
            state.backlog_removed.append(key)


def _fork_sweep(state: _State) -> ChildSweep | None:
    """Starts sweeping a namespace's index in a forked child; None without fork or when it failed (logged)."""
    try:
        return state.index.sweep_in_child()
    except OSError as error:
        _log.warning(f"cache: could not start sweeping the index of {state.namespace.name!r}: {error}")
        return None


def _remember(state: _State, query: np.ndarray[Any, Any], needed: float) -> None:
    """Keeps a semantic lookup's query and threshold in the namespace's ring, for calibration."""
    if state.queries is None or state.thresholds is None:
        if len(state.index) <= EXACT_SEARCH_BELOW:  # searched exactly: nothing to calibrate yet
            return
        state.queries = np.zeros((_CALIBRATION_QUERIES, state.namespace.dimension), dtype=np.float16)
        state.thresholds = np.zeros(_CALIBRATION_QUERIES, dtype=np.float32)
    slot = state.queries_seen % _CALIBRATION_QUERIES
    state.queries[slot] = query.reshape(-1)
    state.thresholds[slot] = needed
    state.queries_seen += 1


def _in_force(namespace: Namespace, calibration: Calibration | None) -> Namespace:
    """The namespace with the search expansion in force: its own if fixed, else the calibrated one."""
    if namespace.expansion_fixed or calibration is None:
        return namespace
    return msgspec.structs.replace(namespace, search_expansion=calibration.expansion)


def _hit_draft(namespace: str, hit: CacheHit) -> EventDraft:
    """The CACHE_HIT event of a lookup answered by ``hit``."""
    return EventDraft(
        event_type="CACHE_HIT",
        name=namespace,
        attributes={
            "are.cache.namespace": namespace,
            "are.cache.entry_id": hit.entry_id,
            "are.cache.tier": hit.tier,
            "are.cache.similarity": round(hit.similarity, 6),
            "are.cache.saved_tokens": min(hit.input_tokens + hit.output_tokens, _INT64_MAX),
            "are.cache.saved_cost_micro_usd": hit.cost_micro_usd,
        },
    )


def _indexing_draft(namespace: str, indexed: int, total: int, *, done: bool) -> EventDraft:
    return EventDraft(
        event_type="CACHE_INDEXING",
        name=namespace,
        attributes={
            "are.cache.namespace": namespace,
            "are.cache.indexed": indexed,
            "are.cache.total": total,
            "are.cache.done": done,
        },
    )


def _journal_seq(key: bytes) -> int:
    return int.from_bytes(key[-8:], "big")


def _has_direction(vector: np.ndarray[Any, Any]) -> bool:
    """Whether an embedder's vector can be compared by cosine: finite and not zero."""
    squared = float(np.dot(vector, vector))
    return squared > 0.0 and math.isfinite(squared)


def _directions(matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Which rows of a matrix of vectors are finite and not zero."""
    with np.errstate(all="ignore"):  # an infinite component is what this looks for
        squared = np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64)
    result: np.ndarray[Any, np.dtype[np.bool_]] = np.isfinite(squared) & (squared > 0.0)
    return result


def _fitting(namespace: Namespace, embedder: Embedder) -> tuple[Embedder | None, str]:
    """The configured model if it fits the namespace (its dimension), else None and why not.

    A model whose name differs but whose dimension fits is used, with a
    warning: its name is its directory's, which a move may change.
    """
    if embedder.dimension != namespace.dimension:
        reason = (
            f"the configured model {namespace.embedder!r} ({embedder.name}) makes {embedder.dimension}-d "
            f"vectors; the namespace's are {namespace.dimension}-d ({namespace.embedder_name}): give "
            "vectors, look up with exact_only, or configure the model the namespace was created with"
        )
        _log.warning(f"cache: namespace {namespace.name!r} cannot embed text: {reason}")
        return None, reason
    if embedder.name != namespace.embedder_name:
        _log.warning(
            f"cache: namespace {namespace.name!r} was created with embedder {namespace.embedder_name!r}; "
            f"the configured {namespace.embedder!r} is {embedder.name!r} (same dimension: used)"
        )
    return embedder, ""


def _may_confirm(state: _State) -> bool:
    """Whether the namespace's budget for exact confirmations allows one now (refilled first)."""
    now = time.monotonic_ns()
    refill = int((now - state.confirm_at_ns) * _CONFIRM_SHARE)
    state.confirm_at_ns = now
    state.confirm_budget_ns = min(_CONFIRM_BURST_NS, state.confirm_budget_ns + refill)
    return state.confirm_budget_ns > 0


def _reload_delay(failures: int) -> int:
    """How long after this many failed reloads in a row of a namespace the next is due (ns)."""
    return backoff(failures, _RELOAD_FIRST_DELAY_NS, _RELOAD_MAX_DELAY_NS)


def _reload_due(old: _State, now: int) -> bool:
    """Whether a namespace's next reload after a failed one is due (also when the clock stepped back)."""
    return now >= old.reload_retry_ns or old.reload_retry_ns - now > _RELOAD_MAX_DELAY_NS


def _over_bounds(state: _State) -> bool:
    """Whether a namespace holds more entries, or bytes, than its bounds allow."""
    namespace = state.namespace
    return len(state.heads) > namespace.max_entries or state.size_bytes > namespace.max_bytes


def _entry_size(state: _State, prompt: str, response_bytes: int) -> int:
    """An entry's bytes of prompt and response (inline or a blob's), within the namespace's max_bytes.

    Raises:
        CacheLimitError: The entry alone is over the namespace's max_bytes.
    """
    prompt_bytes = len(prompt.encode("utf-8"))
    size = prompt_bytes + response_bytes
    if size > state.namespace.max_bytes:
        raise CacheLimitError(
            f"the entry's {size} bytes of prompt and response exceed the namespace's "
            f"max_bytes of {state.namespace.max_bytes}",
            field="prompt" if prompt_bytes > state.namespace.max_bytes else "response",
            limit=state.namespace.max_bytes,
        )
    return size


def _alive(head: EntryHead, now: int, oldest: int | None) -> bool:
    return head.expire_ns > now and (oldest is None or head.create_ns >= oldest)


def _blob_referrer(entry_id: int) -> bytes:
    return _BLOB_REFERRER + entry_id_text(entry_id).encode()


def _new_index(namespace: Namespace) -> VectorIndex:
    # Tuned for 384-d embeddings at 100k-1M entries: M=16 keeps memory low;
    # ef_add 64 builds twice as fast as 128 at the same recall on embedding-like data;
    # the search expansion is the namespace's (by default the dtype's, EXPANSION_SEARCH).
    return VectorIndex(
        dimension=namespace.dimension,
        dtype=namespace.vector_dtype,
        connectivity=16,
        expansion_add=64,
        expansion_search=namespace.search_expansion or None,
    )


def _prefix_end(prefix: bytes) -> bytes | None:
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _check_settings(settings: NamespaceSettings) -> None:
    checks = (
        (0.0 <= settings.similarity_threshold <= 1.0, "namespace.similarity_threshold", "must be in (0, 1]"),
        (0 <= settings.default_ttl_ns <= _MAX_TTL_NS, "namespace.default_ttl", "must be at most 366 days"),
        (
            0 <= settings.max_entries <= _MAX_ENTRIES_BOUND,
            "namespace.max_entries",
            "must be 0 to 100,000,000",
        ),
        (0 <= settings.max_bytes <= _MAX_BYTES_BOUND, "namespace.max_bytes", "must be 0 to 1 TiB"),
        (0 <= settings.dimension <= _MAX_DIMENSION, "namespace.dimension", "must be 0 to 4,096"),
        (settings.vector_dtype in ("", *_DTYPES), "namespace.vector_dtype", "must be f32, f16 or i8"),
        (len(settings.description.encode("utf-8")) <= 1024, "namespace.description", "must be at most 1 KiB"),
        (
            settings.recall_target == 0 or 0.5 <= settings.recall_target < 1.0,
            "namespace.recall_target",
            "must be 0 (0.995) or in [0.5, 1)",
        ),
        (
            settings.search_expansion == 0 or 4 <= settings.search_expansion <= _MAX_EXPANSION,
            "namespace.search_expansion",
            "must be 0 (the dtype's default) or 4 to 1,024",
        ),
    )
    for ok, field, rule in checks:
        if not ok:
            raise InvalidCacheArgumentError(f"`{field}` {rule}", field=field)
