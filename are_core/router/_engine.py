"""The router engine: agent cards, RouteTask ranking and model routing.

State lives in four LMDB tables (``TABLES``): registered cards
(``router_agents``, by agent_id), the model catalog (``router_meta``), model
routes awaiting an outcome (``router_routes``, by time-ordered route_id) and
reported outcomes (``router_outcomes``, by sequence). The vector indexes are
derived: a clean stop saves them (:meth:`Router.save_indexes`, the only time
their files are written), and :meth:`Router.load` reuses a file only while
its manifest matches LMDB, else rebuilds it from LMDB, so a crash can never
leave them disagreeing with the truth. A change's memory follows its commit
even when its caller is cancelled meanwhile (``Router._to_the_end``).

Worker cards are live state, not durable: a worker that connects through the
worker service declares them (:meth:`Router.update_worker`) and they go away
with it (:meth:`Router.remove_worker`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Concatenate, ParamSpec, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from are_core._backoff import backoff
from are_core.storage import Batch, Codec, GroupCommitter, KeyedLocks, Storage, u64_key
from are_core.storage import parse_u64_key as _parse_u64
from are_core.trace import AttributeValue, Event, EventDraft, EventSink, record_in_slices

from ._errors import (
    AgentNotFoundError,
    DimensionMismatchError,
    EmbedderUnavailableError,
    ModelCatalogEmptyError,
    ModelNotInCatalogError,
    NoEligibleModelError,
    NoRouteError,
    OutcomeAlreadyReportedError,
    RouteNotFoundError,
    RouterLimitError,
)
from ._model import (
    AgentSource,
    AgentSpec,
    AgentView,
    ModelChoice,
    ModelEstimate,
    ModelSpec,
    OutcomeRecord,
    RouteCandidate,
    RouteMode,
    RouteQuery,
    RouteRecord,
    RouteResult,
    RouterSettings,
    StoredAgent,
    StoredCatalog,
)
from ._protocols import EmbedderLike, IndexFactory, VectorIndexLike

_native: ModuleType | None  # the ranking loop in C (_ranking.c, typed in _ranking.pyi)
try:  # built at install when a C compiler is there
    from . import _ranking as _native
except ImportError:  # pragma: no cover - numpy gives the same answers, slower
    _native = None

__all__ = ["AGENTS_TABLE", "META_TABLE", "OUTCOMES_TABLE", "ROUTES_TABLE", "TABLES", "Router"]

AGENTS_TABLE = "router_agents"
META_TABLE = "router_meta"
ROUTES_TABLE = "router_routes"
OUTCOMES_TABLE = "router_outcomes"
TABLES = (AGENTS_TABLE, META_TABLE, ROUTES_TABLE, OUTCOMES_TABLE)

_CATALOG_KEY = b"catalog"
# The next outcome sequence, kept so that a sequence is never reused, even
# once every outcome was deleted (a saved index names its outcomes by them).
_NEXT_OUTCOME_KEY = b"next_outcome"
_PAGE = 1000
# A capability filter leaving at most this many agents is scored exactly
# (a dot product each) instead of searching the whole index.
_EXACT_FILTER_LIMIT = 1024
_FIRST_SEARCH = 64
_ROUTE_COMMIT_MAX_BACKOFF_S = 60.0  # the longest wait between commits of route events that keep failing
# Said with a no-route answer to a text the built-in lexical embedder embedded.
# It matches by shared words: on 14 task texts against 16 one-line cards, the
# right card scored -0.03 to 0.37 and the others up to 0.24, so a paraphrase
# rarely reaches the default threshold of 0.5 (all-MiniLM-L6-v2 on the same
# texts: 0.33 to 0.83 against at most 0.40; python -m benchmarks.text_routing).
_LEXICAL_HINT = (
    "the router's embedder is lexical: texts match by shared words, not by meaning; for paraphrases "
    "configure a model (--router-embedder model:DIR), or send vectors, or lower the threshold"
)
_NONE: frozenset[str] = frozenset()
# Similarities come from float32 dot products of unit vectors: one this close
# below the threshold reaches it (an identical vector gives 0.99999994).
_SIMILARITY_TOLERANCE = 1e-6
# How many agents a NO_ROUTE_ABOVE_THRESHOLD message lists.
_BEST_BELOW_LISTED = 3
# Candidates an intent looks through for one a connected worker serves.
_INTENT_CANDIDATES = 8
_QUALITY_TOLERANCE = 1e-9
# Queued ROUTE_DECIDED events commit at once when this many wait (else when
# RouterSettings.route_event_flush_interval_ns has passed). What a commit
# costs RouteTask's tail is mostly per commit, not per event: in the sidecar
# a commit of 32 events took the writer thread 115 µs of CPU (27 µs alone in
# a process), on the CPU the loop serves from, and about one route in 32 was
# then 0.4-0.9 ms slower than its neighbours. Timed from the Go client
# (10,000 routes, eight alternated pairs, benchmarks/README.md), routes over
# median + 0.4 ms fell from 206-608 to 58-337 a run and p99 from 1.12-2.28 ms
# to 0.97-1.88 ms with groups of 1,024 and a 1 s interval, against groups of
# 32 every 100 ms (a build recording no route event: 40 such routes, p99
# 0.95 ms). A group of 1,024 holds the writer about 0.6 ms.
_ROUTE_EVENT_GROUP = 1024
_DEFAULT_OUTPUT_TOKENS = 500
_CHARS_PER_TOKEN = 4
# The availability tier of an unavailable agent (see _Agent.tier).
_UNAVAILABLE_TIER = 2
# Keys of worker-declared cards (live only) come from a range of their own.
_WORKER_KEYS = 1 << 62
_MANIFEST = "manifest.json"

_agent_codec = Codec(StoredAgent)
_catalog_codec = Codec(StoredCatalog)
_route_codec = Codec(RouteRecord)
_outcome_codec = Codec(OutcomeRecord)

_log = logging.getLogger("are.router")

Vector = npt.NDArray[np.float32]
_T = TypeVar("_T")
_P = ParamSpec("_P")


@dataclass(slots=True)
class _Worker:
    worker_id: str
    agent_id: str
    spec: AgentSpec
    running: int
    capacity: int
    available: bool
    capabilities: frozenset[str]  # what it declared: the capabilities whose tasks it takes


_NO_SPEC = AgentSpec(agent_id="")


@dataclass(slots=True)
class _Agent:
    """A card in the index: registered, worker-declared, or both.

    The live fields (``spec`` to ``tier``) are derived from the card and its
    workers by :meth:`refresh`, called whenever either changes, so that
    ranking reads plain attributes instead of summing over workers per call.
    """

    agent_id: str
    key: int
    stored: StoredAgent | None = None
    workers: dict[str, _Worker] = field(default_factory=dict)
    row: int = -1
    """The card's row in the router's matrix of vectors; -1 when it has no vector."""
    capabilities: frozenset[str] = frozenset()
    first_seen_ns: int = 0
    spec: AgentSpec = _NO_SPEC
    cost: int = 0
    running: int = 0
    capacity: int = 1
    available: bool = False
    load: float = 0.0
    tier: int = 2
    """Availability tier, the first sort key: 0 free, 1 at capacity, 2 unavailable."""

    @property
    def source(self) -> AgentSource:
        return AgentSource.REGISTERED if self.stored is not None else AgentSource.WORKER

    def refresh(self) -> None:
        """Recomputes the live fields from the card and the workers."""
        workers = self.workers.values()
        running: Iterable[_Worker] = workers
        if self.stored is not None:
            self.spec = self.stored.spec
            self.capacity = max(1, self.spec.capacity)
            self.available = not workers or any(w.available for w in workers)
        elif workers:
            self.spec = next(iter(workers)).spec
            # A worker card's room is that of the workers taking work: a
            # draining (or stalled) worker's slots, and its tasks, no longer count.
            taking = [w for w in workers if w.available]
            running = taking or workers
            self.capacity = max(1, sum(w.capacity for w in running))
            self.available = bool(taking)
        else:
            self.available = False  # being dropped
        self.cost = self.spec.cost_per_call_micro_usd
        self.running = sum(w.running for w in running)
        self.load = self.running / self.capacity
        self.tier = 2 if not self.available else (1 if self.load >= 1.0 else 0)


@dataclass(slots=True)
class _Upkeep:
    """The agents index's graph upkeep (see ``Router._index_changed``)."""

    changes: int = 0
    """Vectors removed or replaced since the index was built."""
    log: list[tuple[int, Vector | None]] | None = None
    """While a rebuild runs: the changes made meanwhile (key, vector or None), replayed on it."""
    rebuilds: int = 0


@dataclass(slots=True)
class _OutcomeReports:
    """A model's outcome reports whose commits are under way (see ``Router._claim_room``).

    The outcomes those commits delete are always the model's oldest: the
    first ``front`` of ``Router._outcome_keys[model]``. A report claims the
    next ones after them; a report whose commit fails hands its own back
    (``released``) to be claimed again, so that no outcome is claimed by two
    reports at once and none is left out.
    """

    adding: int = 0
    """Reports under way that add an outcome to the estimator once committed."""
    front: int = 0
    """The model's first outcomes claimed or released (deleted, or to be, by a report under way)."""
    released: list[int] = field(default_factory=list)
    """Of those, the ones a failed report handed back, oldest first: still stored, free to claim."""
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    """Reports waiting for room (as many as the cap are under way): one is woken as each report settles."""


@dataclass(slots=True)
class _Scored:
    """Eligible agents as matrix rows with their exact similarities, in the index's order."""

    rows: npt.NDArray[np.intp]
    similarities: npt.NDArray[np.float64]


class _KeyRows:
    """Index key -> matrix row, looked up for a whole search result at once.

    Card keys count up from 1 and worker keys from ``_WORKER_KEYS``, so two
    dense arrays (grown by doubling, -1 where no row) map them without a
    Python-level lookup per hit. The router reuses the keys of dropped
    cards, so the arrays are as long as the most cards and worker cards
    held at once (plus the keys stored before the start), 8 bytes a key,
    however many workers connect and leave.
    """

    def __init__(self) -> None:
        self._cards: npt.NDArray[np.intp] = np.full(64, -1, dtype=np.intp)
        self._workers: npt.NDArray[np.intp] = np.full(64, -1, dtype=np.intp)

    @property
    def tables(self) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """The two arrays, cards' and workers' (for the C ranking loop)."""
        return self._cards, self._workers

    def set(self, key: int, row: int) -> None:
        if key >= _WORKER_KEYS:
            self._workers = _set_grown(self._workers, key - _WORKER_KEYS, row)
        else:
            self._cards = _set_grown(self._cards, key, row)

    def rows(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
        """The rows of ``keys`` (-1 for a key without one)."""
        if not keys.size or int(keys.max()) < _WORKER_KEYS:
            return _looked_up(self._cards, keys.astype(np.intp))
        workers = keys >= _WORKER_KEYS
        out = np.empty(keys.shape, dtype=np.intp)
        out[~workers] = _looked_up(self._cards, keys[~workers].astype(np.intp))
        out[workers] = _looked_up(self._workers, (keys[workers] - np.uint64(_WORKER_KEYS)).astype(np.intp))
        return out


def _runs_to_the_end(
    method: Callable[Concatenate[Router, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[Router, _P], Coroutine[Any, Any, _T]]:
    """Makes a change run to its end even if its caller is cancelled (see ``Router._to_the_end``)."""

    @functools.wraps(method)
    async def run(self: Router, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self._to_the_end(method(self, *args, **kwargs))

    return run


class Router:
    """Capability and model routing over durable cards, catalog and outcomes.

    Args:
        storage: The sidecar's storage, opened with :data:`TABLES`.
        committer: The group committer every write goes through.
        dimension: The dimension of every vector (cards, tasks, prompts).
        embedder: Embeds text (descriptions, task texts, prompts); None means
            callers must send vectors (text then raises
            :class:`EmbedderUnavailableError`).
        index_factory: Makes an empty vector index of a dimension
            (``are_core.vector.VectorIndex`` in the sidecar).
        events: Where events go; None records none.
        settings: Defaults and bounds.
        clock: Wall-clock nanoseconds (tests may pin it).
        index_dir: Where :meth:`save_indexes` writes the indexes at a clean
            stop, for a fast next start; None rebuilds them on every start.
        restore_index: Opens a saved index file of a dimension, or None when
            missing or unreadable (``VectorIndex.restore``).
    """

    def __init__(  # noqa: PLR0915 - one statement per field of state
        self,
        storage: Storage,
        committer: GroupCommitter,
        *,
        dimension: int,
        embedder: EmbedderLike | None,
        index_factory: IndexFactory,
        events: EventSink | None = None,
        settings: RouterSettings | None = None,
        clock: Callable[[], int] = time.time_ns,
        index_dir: Path | None = None,
        restore_index: Callable[[Path, int], VectorIndexLike | None] | None = None,
    ) -> None:
        if embedder is not None and embedder.dimension != dimension:
            raise ValueError(
                f"the embedder makes {embedder.dimension}-d vectors, the router needs {dimension}"
            )
        self._storage = storage
        self._committer = committer
        self.dimension = dimension
        self.embedder = embedder
        self._index_factory = index_factory
        self._events = events
        self.settings = settings or RouterSettings()
        self._clock = clock
        self._index_dir = index_dir
        self._restore_index = restore_index
        self.restored_indexes = 0
        """How many indexes the last :meth:`load` reused from files instead of rebuilding."""
        # Background tasks and the changes run to their end (``_to_the_end``), awaited by aclose.
        self._background: set[asyncio.Future[Any]] = set()
        self._route_events: list[EventDraft] = []
        self._route_flush: asyncio.TimerHandle | None = None
        self._route_committing = False  # a commit of route events is under way (one at a time)
        self.dropped_route_events = 0
        self._route_commit_failures = 0  # commits of route events failed in a row
        """ROUTE_DECIDED events dropped because ``max_pending_route_events`` were queued."""
        # Agents.
        self._agents: dict[str, _Agent] = {}
        self._sorted_ids: list[str] = []
        self._by_key: dict[int, _Agent] = {}
        self._by_capability: dict[str, set[int]] = {}
        self._workers: dict[str, _Worker] = {}
        self._next_key = 1
        self._next_worker_key = _WORKER_KEYS
        # Keys of dropped cards, handed out again (their index entry,
        # row and capability sets are gone with them).
        self._free_keys: list[int] = []
        self._free_worker_keys: list[int] = []
        self._index: VectorIndexLike = index_factory(dimension)
        # Every card vector at full precision, one row per card (rows are
        # reused): exact similarities for the index's candidates.
        self._matrix: Vector = np.zeros((0, dimension), dtype=np.float32)
        # The live fields ranking sorts on, per row (kept by _refresh).
        self._row_cost: npt.NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        self._row_tier: npt.NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        self._row_load: npt.NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        # The agent of each row (a released row keeps its last agent until reused).
        self._row_agents: list[_Agent] = []
        self._key_rows = _KeyRows()
        self._rows_used = 0
        self._free_rows: list[int] = []
        # Models.
        self._catalog: StoredCatalog | None = None
        self._outcome_index: dict[str, VectorIndexLike] = {}
        self._outcome_keys: dict[str, deque[int]] = {}
        self._outcome_scores: dict[int, float] = {}
        self._next_outcome = 1
        self._outcome_reports: dict[str, _OutcomeReports] = {}  # models with reports under way
        self._reporting: set[str] = set()
        # Model routes stored (approximate between starts: a route the TTL
        # sweep and the bound both delete counts twice), and the newest key
        # the bound deleted, so that calls in one turn delete different ones.
        self._route_count = 0
        self._evicted_through = b""
        self.evicted_routes = 0
        """Model routes deleted, unreported or not, to keep ``max_routes``."""
        # One registration or removal of a card id at a time (each awaits a
        # commit); entries go when their last holder leaves.
        self._card_locks = KeyedLocks()
        self._registering_new = 0  # registrations of ids without a card, their commit under way
        self._upkeep = _Upkeep()
        self._exploration_credit = 0.0

    # ------------------------------------------------------------------ load

    async def load(self) -> None:
        """Reads cards, catalog and outcomes from LMDB and rebuilds every index.

        An index saved by :meth:`save_indexes` is reused only when its
        manifest matches LMDB exactly (every card's key and update time, the
        embedder and dimension); otherwise it is rebuilt from LMDB. Cards
        whose description was embedded by a different embedder than the
        current one are re-embedded (and rewritten); cards carrying a caller
        vector of another dimension are kept in LMDB but left out of the
        index, with a warning.
        """
        now = self._clock()
        self.restored_indexes = 0
        manifest = self._read_manifest()
        rewrite = self._storage.batch()
        records = self._load_records(rewrite)
        restored = None if len(rewrite) else self._restore("agents", self._agents_digest(records), manifest)
        keys: list[int] = []
        vectors: list[Vector] = []
        for record in records:
            stored = record
            vector = self._stored_vector(stored)
            if vector is None and self.embedder is not None and stored.spec.vector is None:
                vector = self._embed_card(stored.spec)
                stored = msgspec.structs.replace(
                    stored, embedded_vector=vector.tobytes(), embedder=self.embedder.name
                )
                rewrite.put(AGENTS_TABLE, stored.spec.agent_id.encode(), _agent_codec.encode(stored))
                restored = None
            agent = self._new_agent(stored.spec.agent_id, stored.create_time_ns, stored.key)
            agent.stored = stored
            self._refresh(agent)
            agent.capabilities = frozenset(stored.spec.capabilities)
            if vector is None:
                _log.warning(
                    "agent card left out of the router index: its vector does not fit the index",
                    extra={"fields": {"agent_id": stored.spec.agent_id, "dimension": self.dimension}},
                )
            else:
                self._store_row(agent, vector)
                keys.append(agent.key)
                vectors.append(vector)
            self._index_capabilities(agent)
        if restored is not None and len(restored) == len(keys):
            self._index = restored
            self.restored_indexes += 1
        elif keys:
            self._index.add(keys, np.stack(vectors))
        raw_catalog = self._storage.get(META_TABLE, _CATALOG_KEY)
        if raw_catalog is not None:
            self._catalog = _catalog_codec.decode(raw_catalog)
        stale_outcomes = self._load_outcomes(manifest)
        self._route_count = self._storage.count(ROUTES_TABLE) - self._sweep_routes(rewrite, now)
        if len(rewrite):
            await self._committer.submit(rewrite)
        # Apart, a page a commit: a store far over the cap (as concurrent reports
        # left it before they kept the cap) must not make one batch too large to admit.
        for start in range(0, len(stale_outcomes), _PAGE):
            chunk = self._storage.batch()
            for key in stale_outcomes[start : start + _PAGE]:
                chunk.delete(OUTCOMES_TABLE, key)
            await self._committer.submit(chunk)

    def _load_records(self, rewrite: Batch) -> list[StoredAgent]:
        """Every registered card, each with a unique index key (old records get one)."""
        records = [_agent_codec.decode(value) for _, value in self._scan_all(AGENTS_TABLE)]
        used: set[int] = set()
        fresh: list[int] = []
        for position, record in enumerate(records):
            if record.key > 0 and record.key not in used:
                used.add(record.key)
            else:
                fresh.append(position)
        self._next_key = max((k for k in used if k < _WORKER_KEYS), default=0) + 1
        self._next_worker_key = max((k + 1 for k in used if k >= _WORKER_KEYS), default=_WORKER_KEYS)
        for position in fresh:
            record = msgspec.structs.replace(records[position], key=self._allocate_key())
            records[position] = record
            rewrite.put(AGENTS_TABLE, record.spec.agent_id.encode(), _agent_codec.encode(record))
        return records

    def _agents_digest(self, records: Iterable[StoredAgent]) -> str:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{self.dimension}|{self.embedder.name if self.embedder else ''}".encode())
        for record in records:
            digest.update(
                f"|{record.spec.agent_id}:{record.key}:{record.update_time_ns}:{record.embedder}".encode()
            )
        return digest.hexdigest()

    def _read_manifest(self) -> dict[str, Any]:
        if self._index_dir is None or self._restore_index is None:
            return {}
        try:
            manifest = json.loads((self._index_dir / _MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return manifest if isinstance(manifest, dict) else {}

    def _restore(self, name: str, digest: str, manifest: Mapping[str, Any]) -> VectorIndexLike | None:
        if self._index_dir is None or self._restore_index is None or manifest.get(name) != digest:
            return None
        return self._restore_index(self._index_dir / f"{name}.usearch", self.dimension)

    def save_indexes(self) -> int:
        """Saves the vector indexes for a fast next start (call at a clean stop); returns how many.

        The agents index is saved only while no worker card is in it (worker
        cards are live state, absent at the next start). Each saved index is
        named in a manifest with a digest of the LMDB state it reflects; the
        manifest is removed first and written last, so a crash meanwhile
        leaves no manifest and the next start rebuilds.
        """
        if self._index_dir is None:
            return 0
        folder = self._index_dir
        folder.mkdir(parents=True, exist_ok=True)
        manifest_path = folder / _MANIFEST
        with contextlib.suppress(FileNotFoundError):
            manifest_path.unlink()
        manifest: dict[str, str] = {}
        if not any(a.stored is None for a in self._agents.values()):
            self._index.save(folder / "agents.usearch")
            # The digest of what the index holds (memory), in LMDB's key order: a
            # start compares it with LMDB's, so a memory that ever fell behind
            # LMDB has its index rebuilt, never restored.
            records = sorted(
                (a.stored for a in self._agents.values() if a.stored is not None),
                key=lambda record: record.spec.agent_id.encode(),
            )
            manifest["agents"] = self._agents_digest(records)
        for model_id, index in self._outcome_index.items():
            sequences = self._outcome_keys.get(model_id)
            if not sequences:
                continue
            index.save(folder / f"outcomes-{model_id}.usearch")
            manifest[f"outcomes-{model_id}"] = _outcomes_digest(sequences)
        temporary = folder / f".{_MANIFEST}.tmp"
        temporary.write_text(json.dumps(manifest, sort_keys=True))
        with open(temporary, "rb") as handle:  # noqa: PTH123 - an fsync needs the descriptor
            os.fsync(handle.fileno())
        temporary.replace(manifest_path)
        return len(manifest)

    def _load_outcomes(self, manifest: Mapping[str, Any]) -> list[bytes]:
        """Rebuilds the per-model outcome indexes; returns the keys of the outcomes to delete.

        Outcomes of models no longer in the catalog are deleted (what
        :meth:`put_catalog` does, here also after a crash part-way through
        it), and so are a model's oldest beyond ``max_outcomes_per_model``
        (a store written with a higher cap). Outcomes whose prompt vector
        has another dimension than the router (recorded under another
        ``--router-dimension`` or embedder) stay in LMDB, left out of the
        estimator, and count again if the router returns to their dimension.
        """
        stale: list[bytes] = []
        stored_next = self._storage.get(META_TABLE, _NEXT_OUTCOME_KEY)
        if stored_next is not None:
            self._next_outcome = max(self._next_outcome, _parse_u64(stored_next))
        models = {m.model_id for m in self._catalog.models} if self._catalog is not None else None
        per_model: dict[str, list[tuple[int, Vector]]] = {}
        other_dimension = 0
        for key, value in self._scan_all(OUTCOMES_TABLE):
            sequence = _parse_u64(key)
            self._next_outcome = max(self._next_outcome, sequence + 1)
            record = _outcome_codec.decode(value)
            if models is not None and record.model_id not in models:
                stale.append(key)
                continue
            vector = np.frombuffer(record.vector, dtype=np.float32)
            if vector.shape[0] != self.dimension:
                other_dimension += 1
                continue
            per_model.setdefault(record.model_id, []).append((sequence, vector))
            self._outcome_scores[sequence] = record.score
        if other_dimension:
            _log.warning(
                "model outcomes of another dimension kept in storage but left out of the estimator",
                extra={"fields": {"outcomes": other_dimension, "dimension": self.dimension}},
            )
        bound = self._outcome_cap
        for model_id, rows in per_model.items():
            for sequence, _ in rows[:-bound]:
                stale.append(u64_key(sequence))
                del self._outcome_scores[sequence]
            kept = rows[-bound:]
            sequences = deque(s for s, _ in kept)
            index = self._restore(f"outcomes-{model_id}", _outcomes_digest(sequences), manifest)
            if index is not None and len(index) == len(kept):
                self.restored_indexes += 1
            else:
                index = self._index_factory(self.dimension)
                index.add([s for s, _ in kept], np.stack([v for _, v in kept]))
            self._outcome_index[model_id] = index
            self._outcome_keys[model_id] = sequences
        return stale

    def _sweep_routes(self, batch: Batch, now_ns: int) -> int:
        """Deletes routes past the outcome window (route ids start with their time)."""
        oldest_ms = (now_ns - self.settings.route_ttl_ns) // 1_000_000
        removed = 0
        for key, _ in self._storage.scan(ROUTES_TABLE, limit=_PAGE):
            created_ms = _route_time_ms(key.decode())
            if created_ms is None or created_ms >= oldest_ms:
                break
            batch.delete(ROUTES_TABLE, key)
            removed += 1
        return removed

    async def sweep_routes(self) -> int:
        """Deletes up to 1,000 expired routes; returns how many (call it periodically)."""
        batch = self._storage.batch()
        removed = self._sweep_routes(batch, self._clock())
        if removed:
            await self._committer.submit(batch)
            self._route_count -= removed
        return removed

    def _evict_routes(self, batch: Batch) -> int:
        """Deletes the oldest routes in ``batch`` so that one more fits ``max_routes``; returns how many."""
        over = self._route_count + 1 - self.settings.max_routes
        if over <= 0:
            return 0
        start = self._evicted_through + b"\x00" if self._evicted_through else None
        rows = self._storage.scan(ROUTES_TABLE, start=start, limit=min(over, _PAGE))
        for key, _ in rows:
            batch.delete(ROUTES_TABLE, key)
        if rows:
            self._evicted_through = rows[-1][0]
        return len(rows)

    async def aclose(self) -> None:
        """Commits the queued RouteTask events and waits for the background commits and changes."""
        self.flush_route_events()
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _to_the_end(self, change: Coroutine[Any, Any, _T]) -> _T:
        """Runs a change (its commit, then memory) to its end, even if the caller is cancelled meanwhile.

        The committer commits an accepted batch whatever becomes of its
        submitter: a caller cancelled while it waits (a client gone, the
        shutdown grace over) must not leave LMDB changed and memory not
        (a card listed and routed to only after a restart, and a clean
        stop saving an index that LMDB's digest vouches for).
        """
        task = asyncio.ensure_future(change)
        self._background.add(task)
        task.add_done_callback(_settled)
        task.add_done_callback(self._background.discard)
        return await asyncio.shield(task)

    # ---------------------------------------------------------------- agents

    @property
    def index_rebuilds(self) -> int:
        """Times the agents index was rebuilt in the background after churn."""
        return self._upkeep.rebuilds

    @property
    def agent_count(self) -> int:
        """Cards in the index, registered and worker-declared."""
        return len(self._agents)

    @_runs_to_the_end
    async def register_agent(self, spec: AgentSpec) -> tuple[AgentView, bool]:
        """Adds or replaces a registered card; returns it and whether it is new.

        Calls for one agent_id take turns, so concurrent registrations of a
        new id report it new once and share its index key.

        Raises:
            DimensionMismatchError: ``spec.vector`` is not of the index's dimension.
            EmbedderUnavailableError: No vector and no embedder.
            RouterLimitError: The index holds ``max_agents`` cards already.
        """
        vector = self._card_vector(spec)
        async with self._card_locks.hold(spec.agent_id):
            return await self._register(spec, vector)

    async def _register(self, spec: AgentSpec, vector: Vector) -> tuple[AgentView, bool]:
        existing = self._agents.get(spec.agent_id)
        if existing is not None:
            return await self._register_card(spec, vector, existing)
        # New ids registering meanwhile count: the card joins _agents only after its commit, and
        # the locks are per id, so 10 concurrent new ids under a bound of 3 were all accepted.
        if len(self._agents) + self._registering_new >= self.settings.max_agents:
            raise RouterLimitError("agent cards", self.settings.max_agents)
        self._registering_new += 1
        try:
            return await self._register_card(spec, vector, None)
        finally:
            self._registering_new -= 1

    async def _register_card(
        self, spec: AgentSpec, vector: Vector, existing: _Agent | None
    ) -> tuple[AgentView, bool]:
        now = self._clock()
        previous = existing.stored if existing is not None else None
        stored = StoredAgent(
            spec=spec,
            create_time_ns=previous.create_time_ns if previous is not None else now,
            update_time_ns=now,
            embedded_vector=vector.tobytes() if spec.vector is None else None,
            embedder=self.embedder.name if spec.vector is None and self.embedder is not None else "",
            # A registered card always has a card key of its own: it never takes a worker card's,
            # which that card's worker may free (or a new worker card take) during the commit.
            key=existing.key
            if existing is not None and existing.key < _WORKER_KEYS
            else self._allocate_key(),
        )
        batch = self._storage.batch().put(AGENTS_TABLE, spec.agent_id.encode(), _agent_codec.encode(stored))
        draft = EventDraft(event_type="AGENT_REGISTERED", attributes={"are.agent.id": spec.agent_id})
        await self._commit(batch, [draft])
        agent = self._agents.get(spec.agent_id)  # a worker may have come or gone during the commit
        if agent is None:
            agent = self._new_agent(spec.agent_id, now, stored.key)
        elif agent.key != stored.key:
            self._rekey(agent, stored.key)
        agent.stored = stored
        self._refresh(agent)
        self._set_vector(agent, vector)
        return self._view(agent), existing is None  # no card had the id: not even a worker's

    @_runs_to_the_end
    async def deregister_agent(self, agent_id: str) -> None:
        """Removes a registered card (a worker's card stays while its workers do).

        Raises:
            AgentNotFoundError: No registered card has this id.
        """
        async with self._card_locks.hold(agent_id):
            await self._deregister(agent_id)

    async def _deregister(self, agent_id: str) -> None:
        agent = self._agents.get(agent_id)
        if agent is None or agent.stored is None:
            raise AgentNotFoundError(agent_id)
        batch = self._storage.batch().delete(AGENTS_TABLE, agent_id.encode())
        draft = EventDraft(event_type="AGENT_DEREGISTERED", attributes={"are.agent.id": agent_id})
        await self._commit(batch, [draft])
        agent = self._agents.get(agent_id)
        if agent is None or agent.stored is None:
            return
        agent.stored = None
        self._refresh(agent)
        if agent.workers:
            self._set_vector(agent, self._worker_vector(agent.spec))
        else:
            self._drop_agent(agent)

    def get_agent(self, agent_id: str) -> AgentView | None:
        """The card with this id and its live fields, or None."""
        agent = self._agents.get(agent_id)
        return self._view(agent) if agent is not None else None

    def list_agents(
        self,
        *,
        after: str = "",
        limit: int = 100,
        capability: str = "",
        labels: Mapping[str, str] | None = None,
        available_only: bool = False,
    ) -> tuple[list[AgentView], str]:
        """One page of cards by agent_id, after ``after``; returns it and the last id ("" at the end)."""
        start = bisect.bisect_right(self._sorted_ids, after) if after else 0
        page: list[AgentView] = []
        for position in range(start, len(self._sorted_ids)):
            agent = self._agents[self._sorted_ids[position]]
            if capability and capability not in agent.capabilities:
                continue
            if labels and not _has_labels(agent.spec.labels, labels):
                continue
            if available_only and not agent.available:
                continue
            if len(page) == limit:
                return page, page[-1].spec.agent_id
            page.append(self._view(agent))
        return page, ""

    # --------------------------------------------------------------- workers

    def update_worker(
        self,
        worker_id: str,
        *,
        name: str,
        capabilities: Sequence[str],
        running: int = 0,
        capacity: int = 1,
        available: bool = True,
        card: AgentSpec | None = None,
    ) -> frozenset[str]:
        """Declares or refreshes a connected worker (the scheduler calls this).

        The first call for a ``worker_id`` adds the worker to the card named
        ``card.agent_id`` (or ``name`` when no card is given), creating a
        worker card when no such card exists; later calls update only its
        live load (``running`` of ``capacity``) and availability. Call it
        with ``available=False`` the moment a worker drains or disconnects,
        and :meth:`remove_worker` once it is gone.

        Returns:
            The capabilities whose :meth:`serves` answer this call changed
            (one gained its first worker taking work, or lost its last):
            the scheduler re-routes queued intent tasks on them. Empty when
            only the load changed, so the per-dispatch calls stay cheap.

        Raises:
            DimensionMismatchError: ``card.vector`` is not of the index's dimension.
        """
        worker = self._workers.get(worker_id)
        if worker is not None:
            agent = self._agents.get(worker.agent_id)
            # Only a flip of availability can change what is served: the load updates
            # of every dispatch and completion look at nothing more.
            toggled = agent is not None and worker.available != available
            before = self._served_among(agent.capabilities) if agent is not None and toggled else _NONE
            worker.running = max(0, running)
            worker.capacity = max(1, capacity)
            worker.available = available
            if agent is None:
                return _NONE
            self._refresh(agent)
            return before ^ self._served_among(agent.capabilities) if toggled else _NONE
        spec = card or AgentSpec(agent_id=name, description=" ".join(capabilities))
        if not spec.capabilities:
            spec = _replace_capabilities(spec, tuple(capabilities))
        vector = self._worker_vector(spec)
        agent = self._agents.get(spec.agent_id)
        watched = frozenset(spec.capabilities) | (agent.capabilities if agent is not None else frozenset())
        before = self._served_among(watched) if available else frozenset()
        load = (max(0, running), max(1, capacity))
        worker = _Worker(worker_id, spec.agent_id, spec, *load, available, frozenset(capabilities))
        self._workers[worker_id] = worker
        if agent is None:
            agent = self._new_agent(spec.agent_id, self._clock(), self._allocate_worker_key())
            agent.workers[worker_id] = worker
            self._refresh(agent)
            self._set_vector(agent, vector)
        else:
            agent.workers[worker_id] = worker
            self._refresh(agent)
        return before ^ self._served_among(watched) if available else frozenset()

    def remove_worker(self, worker_id: str) -> frozenset[str]:
        """Forgets a disconnected worker; a worker card with no worker left goes away.

        Returns the capabilities whose :meth:`serves` answer changed (empty
        when the worker was marked unavailable first, as it should be).
        """
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return frozenset()
        agent = self._agents.get(worker.agent_id)
        if agent is None:
            return frozenset()
        # A worker card's capabilities are those of its first worker's card: when that one goes,
        # they become the next one's (a rolling upgrade to other capabilities), served or not.
        watched = agent.capabilities if worker.available else frozenset()
        if agent.stored is None:
            watched = watched.union(*(w.spec.capabilities for w in agent.workers.values()))
        before = self._served_among(watched)
        agent.workers.pop(worker_id, None)
        self._refresh(agent)
        if agent.stored is None:
            if agent.workers:
                self._set_vector(agent, self._worker_vector(agent.spec))
            else:
                self._drop_agent(agent)
        return before ^ self._served_among(watched)

    # ------------------------------------------------------------ RouteTask

    async def route_task(self, query: RouteQuery) -> RouteResult:
        """Ranks agents for a task and records a ROUTE_DECIDED event.

        The event is queued and commits in the background with others (a
        route changes no state, so the answer waits for no commit; see
        :meth:`flush_route_events`); :meth:`aclose` commits what is queued.

        Raises:
            NoRouteError: No eligible agent reaches the threshold and
                ``include_below_threshold`` is false.
            DimensionMismatchError, EmbedderUnavailableError: A bad query.
        """
        mode = query.mode or self.settings.mode
        try:
            result = self.rank(query)
        except NoRouteError as error:
            best = error.best_below[0] if error.best_below else ("", 0.0)
            self._record_route(mode, best[0], best[1], 0, error.threshold, routed=False)
            raise
        top = result.candidates[0] if result.candidates else None
        self._record_route(
            result.mode,
            top.agent_id if top else "",
            top.similarity if top else 0.0,
            len(result.candidates),
            result.threshold,
            routed=bool(top and top.above_threshold),
        )
        return result

    def route_for_intent(
        self,
        text: str,
        *,
        exclude_agent_ids: Iterable[str] = (),
        required_capabilities: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        served: Callable[[str], bool] | None = None,
    ) -> RouteCandidate:
        """The agent a task's ``intent`` goes to: cost-biased, router defaults.

        For the scheduler, when a task with an intent is scheduled and again
        while it waits in a queue, each time a capability gains its first or
        loses its last worker taking work (what :meth:`update_worker` and
        :meth:`remove_worker` return): it records the decision itself (a
        TASK_ROUTED event) and queues the task for ``candidate.capability``.
        Unavailable agents, and cards declaring no capability (no worker
        class to dispatch to), are never chosen; agents at capacity only
        when nothing else clears the threshold. Among the best
        ``_INTENT_CANDIDATES`` above it, the first whose capability is
        served now wins over a card nobody serves yet (a registered card
        with no workers): a task queued for a capability no worker serves
        would wait for one. ``served(capability)`` says what is served
        (default :meth:`serves`, the connected stream workers; the
        scheduler passes its own, which adds workers taking work by unary
        polls, which the router does not know).

        Raises:
            NoRouteError: Nothing clears the threshold (fail the task with
                FAILURE_KIND_ROUTING; the message lists the best below).
            EmbedderUnavailableError: The router has no embedder.
        """
        result = self.rank(
            RouteQuery(
                text=text,
                top_k=_INTENT_CANDIDATES,
                mode=RouteMode.COST_BIASED,
                exclude_agent_ids=frozenset(exclude_agent_ids),
                required_capabilities=tuple(required_capabilities),
                labels=dict(labels or {}),
                capable_only=True,
            )
        )
        above = [c for c in result.candidates if c.above_threshold]
        serves = served or self.serves
        first_served = next((c for c in above if serves(c.capability)), None)
        return first_served or result.candidates[0]

    def serves(self, capability: str) -> bool:
        """Whether a connected worker taking work (not draining) declares ``capability`` now.

        On a card that offers it: a worker of that card that declared it
        (only such a worker takes its tasks). Another worker sharing the
        card does not count: in a rolling upgrade, the new workers of a card
        whose capabilities are still the old worker's do not serve the old
        capability while that worker drains. Stream workers only: the
        scheduler does not declare unary polls here.
        """
        for key in self._by_capability.get(capability, ()):
            agent = self._by_key.get(key)
            if agent is not None and any(
                w.available and capability in w.capabilities for w in agent.workers.values()
            ):
                return True
        return False

    def _served_among(self, capabilities: Iterable[str]) -> frozenset[str]:
        """Those of ``capabilities`` that :meth:`serves`."""
        return frozenset(c for c in capabilities if self.serves(c))

    def rank(self, query: RouteQuery) -> RouteResult:
        """Ranks agents for a query without recording anything (see :meth:`route_task`)."""
        vector = self._query_vector(query.text, query.vector)
        settings = self.settings
        mode = query.mode or settings.mode
        threshold = settings.threshold if query.threshold is None else query.threshold
        weight = settings.cost_weight if query.cost_weight is None else query.cost_weight
        top_k = max(1, query.top_k)
        eligible = self._eligible(vector, query, threshold, top_k)
        candidates = self._ranked(eligible, query, mode=mode, threshold=threshold, weight=weight, top_k=top_k)
        if candidates is None:
            # Nothing cleared the threshold among the graph's candidates. The
            # graph can miss agents (more so once cards were replaced), so an
            # exact search confirms before the answer is "no route", and
            # finds the true best below the threshold.
            eligible = self._eligible(vector, query, threshold, top_k, exact=True)
            candidates = self._ranked(
                eligible, query, mode=mode, threshold=threshold, weight=weight, top_k=top_k
            )
        if candidates is None:
            candidates = self._best_below(eligible, query, threshold, top_k)
        return RouteResult(candidates=tuple(candidates), mode=mode, threshold=threshold)

    def _ranked(
        self,
        eligible: _Scored,
        query: RouteQuery,
        *,
        mode: RouteMode,
        threshold: float,
        weight: float,
        top_k: int,
    ) -> list[RouteCandidate] | None:
        """The top_k of the eligible agents above the threshold, best first; None when there is none.

        Sorted on the per-row live arrays (in C, or in numpy without it):
        availability tier, then score (similarity, or its blend with
        cheapness), then similarity (among equal scores, as when cost alone
        decides and costs tie, the better match first), then load; agent_id
        breaks the ties that remain, in Python, among the few rows kept.
        """
        reach = threshold - _SIMILARITY_TOLERANCE
        if _native is not None:
            size = eligible.rows.size
            kept_at, kept_scores = np.empty(size, dtype=np.intp), np.empty(size, dtype=np.float64)
            kept, above, cheapest = _native.rank(
                eligible.rows,
                eligible.similarities,
                size,
                reach,
                self._row_cost,
                self._row_tier,
                self._row_load,
                mode is RouteMode.COST_BIASED,
                weight,
                top_k,
                kept_at,
                kept_scores,
            )
            if not above:
                return None
            positions, score_list = kept_at[:kept], kept_scores[:kept].tolist()
        else:
            selected = self._selected(eligible, reach, mode=mode, weight=weight, top_k=top_k)
            if selected is None:
                return None
            positions, score_list, cheapest = selected
        rows = eligible.rows[positions]
        row_agents = self._row_agents
        agents = [row_agents[r] for r in rows.tolist()]
        tier_list, load_list = self._row_tier[rows].tolist(), self._row_load[rows].tolist()
        similarity_list = eligible.similarities[positions].tolist()

        def order(i: int) -> tuple[float, float, float, float, str]:
            return (tier_list[i], -score_list[i], -similarity_list[i], load_list[i], agents[i].agent_id)

        ranked = sorted(range(len(agents)), key=order)
        candidates = []
        for i in ranked[:top_k]:
            agent, similarity = agents[i], similarity_list[i]
            if mode is RouteMode.BEST_MATCH:
                why = f"similarity {_shown(similarity, threshold)} above {_threshold_text(threshold)}"
            elif agent.cost == cheapest:
                why = f"cheapest above {_threshold_text(threshold)}"
            else:
                why = f"similarity {similarity:.3f}, cost {agent.cost} µUSD"
            candidates.append(self._candidate(agent, similarity, score_list[i], query, above=True, why=why))
        return candidates

    def _selected(
        self, eligible: _Scored, threshold: float, *, mode: RouteMode, weight: float, top_k: int
    ) -> tuple[npt.NDArray[np.intp], list[float], float] | None:
        """What ``_ranking.rank`` computes, in numpy; None when nothing reaches the threshold.

        Returns the positions (into the eligible rows) of the top_k above the
        threshold and of those tying with the last of them, their scores, and
        the lowest cost among those above.
        """
        above = np.flatnonzero(eligible.similarities >= threshold)
        if not above.size:
            return None
        rows = eligible.rows[above]
        similarities = eligible.similarities[above]
        costs = self._row_cost[rows]
        if mode is RouteMode.COST_BIASED:
            highest = float(costs.max())
            cost_term = 1.0 - costs / highest if highest > 0 else 1.0
            scores = (1.0 - weight) * similarities + weight * cost_term
        else:
            scores = similarities
        tiers = self._row_tier[rows]
        loads = self._row_load[rows]
        order = np.lexsort((loads, -similarities, -scores, tiers))
        kept = order[: min(top_k, order.size)].tolist()
        last = kept[-1]
        for position in order[len(kept) :].tolist():  # the k-th's ties, for agent_id to decide
            if (
                tiers[position] != tiers[last]
                or scores[position] != scores[last]
                or similarities[position] != similarities[last]
                or loads[position] != loads[last]
            ):
                break
            kept.append(position)
        return above[kept], scores[kept].tolist(), float(costs.min())

    def _text_hint(self, query: RouteQuery) -> str:
        """For a text embedded lexically that reached no agent: why, and what would (else "")."""
        if query.text is None or self.embedder is None or not self.embedder.name.startswith("lexical"):
            return ""
        return _LEXICAL_HINT

    def _best_below(
        self, eligible: _Scored, query: RouteQuery, threshold: float, top_k: int
    ) -> list[RouteCandidate]:
        """Nothing clears the threshold: the best below it when asked for, else NoRouteError."""
        row_agents = self._row_agents
        rows, similarities = eligible.rows.tolist(), eligible.similarities.tolist()
        pairs = [(row_agents[r], s) for r, s in zip(rows, similarities, strict=True)]
        if not query.include_below_threshold:
            best_below = sorted(pairs, key=lambda pair: (-pair[1], pair[0].agent_id))
            listed = [(a.agent_id, s) for a, s in best_below[:_BEST_BELOW_LISTED]]
            raise NoRouteError(threshold, listed, hint=self._text_hint(query))
        # As above the threshold: availability tier first, then similarity, then load.
        pairs.sort(key=lambda pair: (pair[0].tier, -pair[1], pair[0].load, pair[0].agent_id))
        why = f"below threshold {_threshold_text(threshold)}"
        return [self._candidate(a, s, s, query, above=False, why=why) for a, s in pairs[:top_k]]

    def _eligible(
        self, vector: Vector, query: RouteQuery, threshold: float, top_k: int, *, exact: bool = False
    ) -> _Scored:
        """The agents the query may route to among the nearest, as rows with exact similarities.

        ``exact`` searches the index by brute force instead of the graph, and
        deepens until enough rows for a best-below list are kept (with
        ``include_below_threshold``, enough free ones: that list ranks
        availability first).

        The search result stays in numpy (keys to rows, availability from
        the per-row tiers) unless the query filters by id, capability or
        label, which looks at the agents themselves.
        """
        total = len(self._index)
        if total == 0:
            return self._scored(np.empty(0, dtype=np.intp), vector)
        required = query.required_capabilities
        if required:
            sets = sorted((self._by_capability.get(c, set()) for c in required), key=len)
            restricted = set(sets[0]).intersection(*sets[1:]) if sets[0] else set()
            if len(restricted) <= _EXACT_FILTER_LIMIT:
                agents = [self._by_key[k] for k in restricted]
                kept = [a.row for a in agents if a.row >= 0 and self._passes(a, query)]
                return self._scored(np.array(kept, dtype=np.intp), vector)
        filtered = bool(query.exclude_agent_ids or required or query.labels or query.capable_only)
        k = min(total, max(_FIRST_SEARCH, 4 * top_k + len(query.exclude_agent_ids)))
        while True:
            keys, similarities = self._index.search_arrays(vector, k, exact=exact)
            if filtered or _native is None:
                rows = self._key_rows.rows(keys)
                rows = rows[rows >= 0]
                if filtered:
                    row_agents, passes = self._row_agents, self._passes
                    rows = np.array([r for r in rows.tolist() if passes(row_agents[r], query)], dtype=np.intp)
                elif not query.include_unavailable:
                    rows = rows[self._row_tier[rows] < _UNAVAILABLE_TIER]
                eligible = self._scored(rows, vector)
            else:
                eligible = self._scored_keys(keys, vector, include_unavailable=query.include_unavailable)
                rows = eligible.rows
            if k >= total or keys.size < k:
                return eligible
            if not self._deeper(query, rows, similarities, threshold, top_k, exact=exact):
                return eligible
            k = min(total, k * 4)

    def _deeper(
        self,
        query: RouteQuery,
        rows: npt.NDArray[np.intp],
        similarities: npt.NDArray[np.float32],
        threshold: float,
        top_k: int,
        *,
        exact: bool,
    ) -> bool:
        """Whether a search that kept ``rows`` (its similarities, best first) must look further.

        While the tail still clears the threshold (a cheaper agent may lie
        further down) or the filters left too few. The index's similarities
        are quantised: a tail within its error below the threshold deepens
        too. The best below, when asked for (only once nothing cleared the
        threshold, by exact search), rank free agents first (see
        :meth:`_best_below`): one further down beats busy ones nearer, so
        the search goes on until top_k free ones are kept, at worst scoring
        every card.
        """
        wanted = max(top_k, _BEST_BELOW_LISTED) if exact else top_k
        if similarities[-1] >= threshold - self._index.similarity_error or rows.size < wanted:
            return True
        if exact and query.include_below_threshold:
            return int(np.count_nonzero(self._row_tier[rows] == 0)) < top_k
        return False

    def _scored(self, rows: npt.NDArray[np.intp], vector: Vector) -> _Scored:
        """The rows with their exact cosine similarity to ``vector`` (a dot product per row).

        The index only finds the candidates: it may hold its vectors
        quantised (f16), so the similarities compared with the threshold and
        reported come from the full-precision matrix of card vectors.

        Each row's sum is made alone (einsum), not by a matrix product: BLAS
        sums a row in an order that depends on its place among the rows taken,
        so two cards of one vector could differ in the last bit, and their tie
        go to that noise instead of load and agent_id.
        """
        similarities = np.einsum("ij,j->i", self._matrix.take(rows, axis=0), vector).astype(np.float64)
        return _Scored(rows, similarities)

    def _scored_keys(
        self, keys: npt.NDArray[np.uint64], vector: Vector, *, include_unavailable: bool
    ) -> _Scored:
        """As ``_scored`` of the rows of ``keys`` (available ones unless told), in one C call."""
        assert _native is not None
        # The C loop reads raw buffers: a query of another type or size must never reach it.
        if vector.shape != (self._matrix.shape[1],):
            raise DimensionMismatchError(self._matrix.shape[1], int(vector.size))
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        rows, similarities = np.empty(keys.size, dtype=np.intp), np.empty(keys.size, dtype=np.float64)
        cards, workers = self._key_rows.tables
        count = _native.eligible(
            keys,
            cards,
            workers,
            _WORKER_KEYS,
            self._row_tier,
            float(_UNAVAILABLE_TIER),
            self._matrix,
            vector,
            include_unavailable,
            rows,
            similarities,
        )
        return _Scored(rows[:count], similarities[:count])

    def _passes(self, agent: _Agent, query: RouteQuery) -> bool:
        if agent.agent_id in query.exclude_agent_ids:
            return False
        if query.required_capabilities and not agent.capabilities.issuperset(query.required_capabilities):
            return False
        if query.labels and not _has_labels(agent.spec.labels, query.labels):
            return False
        if query.capable_only and not agent.capabilities:
            return False
        return query.include_unavailable or agent.available

    def _candidate(
        self, agent: _Agent, similarity: float, score: float, query: RouteQuery, *, above: bool, why: str
    ) -> RouteCandidate:
        spec = agent.spec
        capability = next((c for c in spec.capabilities if c in query.required_capabilities), "")
        if not capability and spec.capabilities:
            capability = spec.capabilities[0]
        load = agent.load
        available = agent.available
        if not available:
            why += "; unavailable"
        elif load >= 1.0:
            why += f"; at capacity (load {load:.2f})"
        else:
            why += f"; load {load:.2f}"
        return RouteCandidate(
            agent_id=agent.agent_id,
            capability=capability,
            similarity=similarity,
            score=score,
            cost_per_call_micro_usd=agent.cost,
            load=load,
            available=available,
            above_threshold=above,
            reason=why,
        )

    def _record_route(
        self, mode: RouteMode, agent_id: str, similarity: float, count: int, threshold: float, *, routed: bool
    ) -> None:
        """Queues a ROUTE_DECIDED event; queued events commit together (see :meth:`flush_route_events`)."""
        if self._events is None:
            return
        pending = self._route_events
        if len(pending) >= self.settings.max_pending_route_events:
            self.dropped_route_events += 1
            return
        attributes: dict[str, AttributeValue] = {
            "are.route.mode": mode.value,
            "are.route.agent_id": agent_id,
            "are.route.similarity": round(similarity, 6),
            "are.route.candidate_count": count,
            "are.route.threshold": threshold,
            "are.route.routed": routed,
        }
        pending.append(
            EventDraft(event_type="ROUTE_DECIDED", attributes=attributes, event_time_unix_ns=self._clock())
        )
        if len(pending) >= min(_ROUTE_EVENT_GROUP, self.settings.max_pending_route_events):
            self.flush_route_events()
        elif self._route_flush is None:
            delay = self._route_flush_delay()
            self._route_flush = asyncio.get_running_loop().call_later(delay, self.flush_route_events)

    def flush_route_events(self) -> None:
        """Commits the queued ROUTE_DECIDED events in one batch, in the background.

        A route changes no state, so its event need not cost a commit of its
        own before (or just after) the answer: events queue for at most
        ``route_event_flush_interval_ns`` (or until ``_ROUTE_EVENT_GROUP``
        of them wait) and commit together, each with the time of its
        decision. One commit runs at a time: events queued meanwhile go with
        the next, which it starts as it ends, so that a burst of routes is
        recorded a slice per loop turn rather than a group per waiting task
        in the same turn. A SIGKILL loses at most the queued ones; over
        ``max_pending_route_events`` queued, new ones are dropped and
        counted in ``dropped_route_events``.
        """
        if self._route_flush is not None:
            self._route_flush.cancel()
            self._route_flush = None
        if self._route_committing:
            return  # the commit under way takes the queued events when it ends
        drafts, self._route_events = self._route_events, []
        if drafts:
            self._route_committing = True
            self._spawn(self._commit_route_events(drafts))

    async def _commit_route_events(self, drafts: list[EventDraft]) -> None:
        """Records queued events a slice per loop turn (``record_in_slices``), commits them, and goes on.

        After each commit, the events queued meanwhile are taken in turn,
        until none wait. A failed commit drops its events (counted in
        ``dropped_route_events``; logged once per run of failures) and leaves
        those not yet taken queued, with their flush timer set, later while
        commits keep failing (:meth:`_route_flush_delay`).
        """
        try:
            while drafts and self._events is not None:
                batch = self._storage.batch()
                events = await record_in_slices(self._events, batch, drafts)
                await self._committer.submit(batch)
                self._events.publish(events)
                if self._route_commit_failures:
                    _log.info(
                        f"route events commit again, after {self._route_commit_failures} failed commits "
                        f"({self.dropped_route_events} route events dropped in all)"
                    )
                    self._route_commit_failures = 0
                drafts, self._route_events = self._route_events, []
        except Exception:  # noqa: BLE001 - a route changes nothing: its lost event is counted, not raised
            self._route_commit_failures += 1
            self.dropped_route_events += len(drafts)
            if self._route_commit_failures == 1:
                _log.exception(
                    f"could not commit {len(drafts)} route events (dropped, and counted); "
                    "the next commits are tried less often while they fail"
                )
        finally:
            self._route_committing = False
            if self._route_events and self._route_flush is None:
                delay = self._route_flush_delay()
                self._route_flush = asyncio.get_running_loop().call_later(delay, self.flush_route_events)

    def _route_flush_delay(self) -> float:
        """Seconds a queued route event waits for its commit: the interval; longer while commits fail.

        After k failed commits in a row, 2**k intervals, up to a minute: a
        failure that persists (a full disk) costs a recording and a failed
        commit a minute, not a second (a full group still commits at once).
        """
        interval = self.settings.route_event_flush_interval_ns / 1e9
        if not self._route_commit_failures:
            return interval
        return backoff(self._route_commit_failures, 2 * interval, max(_ROUTE_COMMIT_MAX_BACKOFF_S, interval))

    # ---------------------------------------------------------- model routing

    @property
    def catalog(self) -> StoredCatalog | None:
        """The model catalog, or None before the first :meth:`put_catalog`."""
        return self._catalog

    @_runs_to_the_end
    async def put_catalog(self, models: Sequence[ModelSpec]) -> StoredCatalog:
        """Replaces the catalog; outcomes of models that leave it are deleted."""
        catalog = StoredCatalog(models=tuple(models), update_time_ns=self._clock())
        batch = self._storage.batch().put(META_TABLE, _CATALOG_KEY, _catalog_codec.encode(catalog))
        await self._commit(batch, [])
        self._catalog = catalog
        staying = {m.model_id for m in models}
        for model_id in [m for m in self._outcome_keys if m not in staying]:
            sequences = self._outcome_keys.pop(model_id)
            self._outcome_index.pop(model_id, None)
            for sequence in sequences:
                self._outcome_scores.pop(sequence, None)
            reports = self._outcome_reports.get(model_id)
            if reports is not None:  # the outcomes its reports under way claimed are gone with the rest
                reports.front = 0
                reports.released.clear()
            ordered = list(sequences)
            for start in range(0, len(ordered), _PAGE):
                chunk = self._storage.batch()
                for sequence in ordered[start : start + _PAGE]:
                    chunk.delete(OUTCOMES_TABLE, u64_key(sequence))
                await self._committer.submit(chunk)
        return catalog

    def estimate(
        self,
        vector: Vector,
        *,
        exclude_model_ids: Iterable[str] = (),
        input_tokens: int = 0,
        output_tokens: int = _DEFAULT_OUTPUT_TOKENS,
    ) -> list[ModelEstimate]:
        """Expected quality and cost of every eligible model for a prompt vector, cheapest first.

        Expected quality is the similarity-weighted mean score of the model's
        ``outcome_neighbours`` nearest past outcomes whose prompt similarity
        is at least ``outcome_min_similarity``; with fewer than
        ``min_outcomes`` of them, the model's prior success rate (samples 0).

        Raises:
            ModelCatalogEmptyError: No catalog yet.
        """
        if self._catalog is None or not self._catalog.models:
            raise ModelCatalogEmptyError
        excluded = set(exclude_model_ids)
        settings = self.settings
        estimates = []
        for model in self._catalog.models:
            if model.model_id in excluded:
                continue
            if model.context_window_tokens and input_tokens > model.context_window_tokens:
                continue
            quality, samples = model.prior_success_rate, 0
            index = self._outcome_index.get(model.model_id)
            if index is not None and len(index) >= settings.min_outcomes:
                near = self._nearest_outcomes(index, vector)
                if len(near) >= settings.min_outcomes:
                    weights = sum(s for _, s in near)
                    quality = sum(s * self._outcome_scores.get(k, 0.0) for k, s in near) / weights
                    samples = len(near)
            estimates.append(
                ModelEstimate(
                    model_id=model.model_id,
                    expected_quality=quality,
                    expected_cost_micro_usd=model.expected_cost(input_tokens, output_tokens),
                    samples=samples,
                    tier=model.tier,
                )
            )
        estimates.sort(key=lambda e: (e.expected_cost_micro_usd, e.tier, e.model_id))
        return estimates

    def _explored(self, estimates: Sequence[ModelEstimate], chosen: ModelEstimate) -> ModelEstimate | None:
        """The model to try instead of ``chosen`` on this call, or None (``model_exploration``).

        Candidates are the models cheaper than the choice with fewer than
        ``min_outcomes`` similar outcomes: a prior below the target would
        otherwise keep such a model from ever being chosen, so it would
        never get the outcomes to be estimated by. A share of the calls
        that have a candidate (a running credit, not a coin: exactly that
        share) goes to the cheapest one.
        """
        rate = self.settings.model_exploration
        if rate <= 0.0:
            return None
        cheaper = [
            e
            for e in estimates
            if e.samples < self.settings.min_outcomes
            and e.expected_cost_micro_usd < chosen.expected_cost_micro_usd
        ]
        if not cheaper:
            return None
        self._exploration_credit += rate
        if self._exploration_credit < 1.0:
            return None
        self._exploration_credit -= 1.0
        return cheaper[0]  # estimates are cheapest first

    def _nearest_outcomes(self, index: VectorIndexLike, vector: Vector) -> list[tuple[int, float]]:
        """A model's ``outcome_neighbours`` nearest outcomes at ``outcome_min_similarity`` or more, exactly.

        The index holds its vectors quantised (8-bit), so it only finds
        candidates (twice as many): their similarities, compared with the
        cut-off and used as weights, are recomputed from the outcomes'
        stored float32 prompt vectors.
        """
        settings = self.settings
        hits = index.search(vector, 2 * settings.outcome_neighbours)
        if not hits:
            return []
        with self._storage.read() as view:
            raws = view.get_many(OUTCOMES_TABLE, [u64_key(key) for key, _ in hits])
        exact = []
        for (key, _), raw in zip(hits, raws, strict=True):
            if raw is None:
                continue
            stored = np.frombuffer(_outcome_codec.decode(raw).vector, dtype=np.float32)
            if stored.shape == vector.shape:
                exact.append((key, float(stored @ vector)))
        exact.sort(key=lambda pair: -pair[1])
        cut = settings.outcome_min_similarity - _SIMILARITY_TOLERANCE
        return [pair for pair in exact[: settings.outcome_neighbours] if pair[1] >= cut]

    async def route_model(
        self,
        *,
        prompt: str | None = None,
        vector: bytes | None = None,
        quality_target: float = 0.8,
        exclude_model_ids: Iterable[str] = (),
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> ModelChoice:
        """Picks the cheapest model expected to reach ``quality_target``, durably.

        When none is expected to, the one with the highest expected quality
        is chosen (``target_met`` false). The route is stored so that its
        outcome can be reported for 7 days, while the newest ``max_routes``
        are kept (beyond it the oldest go).

        Raises:
            ModelCatalogEmptyError: No catalog yet.
            NoEligibleModelError: Every model is excluded or too small.
            DimensionMismatchError, EmbedderUnavailableError: A bad query.
        """
        if self._catalog is None or not self._catalog.models:
            raise ModelCatalogEmptyError
        query = self._query_vector(prompt, vector)
        if not input_tokens and prompt is not None:
            input_tokens = -(-len(prompt) // _CHARS_PER_TOKEN)
        estimates = self.estimate(
            query,
            exclude_model_ids=exclude_model_ids,
            input_tokens=input_tokens,
            output_tokens=output_tokens or _DEFAULT_OUTPUT_TOKENS,
        )
        if not estimates:
            raise NoEligibleModelError(
                "no model of the catalog is eligible: every one is excluded or its context window "
                f"is below the prompt's {input_tokens} estimated tokens"
            )
        # A weighted mean of scores equal to the target can round a hair below it.
        meeting = [e for e in estimates if e.expected_quality >= quality_target - _QUALITY_TOLERANCE]
        if meeting:
            chosen = min(meeting, key=lambda e: (e.expected_cost_micro_usd, -e.expected_quality, e.tier))
            reason = f"cheapest model expected to reach {quality_target:.2f}"
        else:
            chosen = max(estimates, key=lambda e: (e.expected_quality, -e.expected_cost_micro_usd, -e.tier))
            reason = f"no model is expected to reach {quality_target:.2f}; highest expected quality"
        basis = (
            f"{chosen.samples} similar past outcomes" if chosen.samples else "its prior (too little history)"
        )
        reason += f" ({chosen.expected_quality:.2f} from {basis}, {chosen.expected_cost_micro_usd} µUSD)"
        explored = self._explored(estimates, chosen)
        if explored is not None:
            reason = (
                f"exploring {explored.model_id}, cheaper than {chosen.model_id} but with too little "
                f"history here to estimate ({explored.samples} similar past outcomes of "
                f"{self.settings.min_outcomes}): {explored.expected_quality:.2f} from its prior, "
                f"{explored.expected_cost_micro_usd} µUSD; otherwise: {reason}"
            )
            chosen = explored
        now = self._clock()
        route_id = f"r{now // 1_000_000:012x}{secrets.token_hex(6)}"
        record = RouteRecord(
            model_id=chosen.model_id,
            create_time_ns=now,
            vector=query.tobytes(),
            quality_target=quality_target,
        )
        batch = self._storage.batch()
        evicted = self._evict_routes(batch)
        batch.put(ROUTES_TABLE, route_id.encode(), _route_codec.encode(record))
        draft = EventDraft(
            event_type="MODEL_ROUTED",
            attributes={
                "are.route.route_id": route_id,
                "gen_ai.request.model": chosen.model_id,
                "are.route.expected_quality": round(chosen.expected_quality, 6),
            },
        )
        self._route_count += 1 - evicted
        self.evicted_routes += evicted
        await self._commit(batch, [draft])
        return ModelChoice(
            route_id=route_id,
            model_id=chosen.model_id,
            expected_quality=chosen.expected_quality,
            expected_cost_micro_usd=chosen.expected_cost_micro_usd,
            target_met=chosen.expected_quality >= quality_target - _QUALITY_TOLERANCE,
            estimates=tuple(estimates),
            reason=reason,
        )

    @_runs_to_the_end
    async def report_outcome(
        self,
        route_id: str,
        *,
        model_id: str = "",
        success: bool | None = None,
        score: float | None = None,
        cost_micro_usd: int = 0,
        input_tokens: int = 0,
        output_tokens: int = 0,
        latency_ns: int = 0,
    ) -> OutcomeRecord:
        """Records how a routed call went; it feeds the estimator at once.

        Exactly one of ``success`` (counted as score 1 or 0) and ``score``
        (in [0, 1]) must be given.

        An outcome whose route was made at another dimension than the
        router's now (``--router-dimension`` or the embedder changed since)
        is stored but does not feed the estimator (see :meth:`load`).

        Raises:
            RouteNotFoundError: Unknown or expired route_id.
            OutcomeAlreadyReportedError: Reported before.
            ModelNotInCatalogError: The model is not in the catalog (only
                catalog models are estimated; nothing is stored).
            ValueError: Neither or both outcomes, or a score outside [0, 1].
        """
        if (success is None) == (score is None):
            raise ValueError("exactly one of success and score must be given")
        value = float(score) if score is not None else (1.0 if success else 0.0)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"score {value} is outside [0, 1]")
        now = self._clock()
        route = self._reportable_route(route_id, now)
        model = model_id or route.model_id
        if not self._in_catalog(model):
            raise ModelNotInCatalogError(model)
        vector = np.frombuffer(route.vector, dtype=np.float32)
        fits = vector.shape[0] == self.dimension
        outcome = OutcomeRecord(
            route_id=route_id,
            model_id=model,
            score=value,
            vector=route.vector,
            report_time_ns=now,
            success=success,
            cost_micro_usd=cost_micro_usd,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ns=latency_ns,
        )
        done = RouteRecord(
            model_id=route.model_id,
            create_time_ns=route.create_time_ns,
            vector=b"",
            quality_target=route.quality_target,
            reported=True,
        )
        attributes: dict[str, AttributeValue] = {
            "are.route.route_id": route_id,
            "are.route.score": value,
            "gen_ai.request.model": model,
        }
        if success is not None:
            attributes["are.route.success"] = success
        draft = EventDraft(event_type="ROUTE_OUTCOME_REPORTED", attributes=attributes)
        self._reporting.add(route_id)
        try:
            sequence = await self._commit_outcome(done, outcome, draft, counted=fits)
        finally:
            self._reporting.discard(route_id)
        if not self._in_catalog(model):
            # The model left the catalog while this report committed: its
            # outcomes go with it (put_catalog deleted those it knew of).
            await self._committer.submit(self._storage.batch().delete(OUTCOMES_TABLE, u64_key(sequence)))
        elif fits:
            self._add_outcome(model, sequence, vector, value)
        return outcome

    async def _commit_outcome(
        self, done: RouteRecord, outcome: OutcomeRecord, draft: EventDraft, *, counted: bool
    ) -> int:
        """Commits a report (its route marked reported, its outcome stored); returns the outcome's sequence.

        A ``counted`` outcome (of the router's dimension) counts against its
        model's cap: the same commit deletes the oldest outcomes that make
        room for it (:meth:`_claim_room`), and memory drops them once it
        has landed (:meth:`_settle_report`).
        """
        model = outcome.model_id
        evicted = await self._claim_room(model) if counted else []
        try:
            sequence = self._next_outcome
            self._next_outcome += 1
            batch = self._storage.batch()
            batch.put(ROUTES_TABLE, outcome.route_id.encode(), _route_codec.encode(done))
            batch.put(OUTCOMES_TABLE, u64_key(sequence), _outcome_codec.encode(outcome))
            batch.put(META_TABLE, _NEXT_OUTCOME_KEY, u64_key(sequence + 1))
            for oldest in evicted:
                batch.delete(OUTCOMES_TABLE, u64_key(oldest))
            await self._commit(batch, [draft])
        except BaseException:
            if counted:
                self._settle_report(model, evicted, committed=False)
            raise
        if counted:
            self._settle_report(model, evicted, committed=True)
        return sequence

    def _in_catalog(self, model_id: str) -> bool:
        return self._catalog is not None and any(m.model_id == model_id for m in self._catalog.models)

    def _reportable_route(self, route_id: str, now: int) -> RouteRecord:
        """The stored route of ``route_id`` if its outcome may be reported now."""
        raw = self._storage.get(ROUTES_TABLE, route_id.encode())
        if raw is None:
            raise RouteNotFoundError(route_id)
        route = _route_codec.decode(raw)
        if now - route.create_time_ns > self.settings.route_ttl_ns:
            raise RouteNotFoundError(route_id)
        if route.reported or route_id in self._reporting:
            raise OutcomeAlreadyReportedError(route_id)
        return route

    @property
    def _outcome_cap(self) -> int:
        """``max_outcomes_per_model``, at least 1 (a report's own outcome always fits)."""
        return max(1, self.settings.max_outcomes_per_model)

    async def _claim_room(self, model_id: str) -> list[int]:
        """Claims the outcomes a new report of ``model_id`` deletes in its commit, to keep the cap.

        The count that must fit is what the model will hold once every
        commit under way has landed, in whatever order: its outcomes in
        memory, less those the reports under way delete, plus those they add.
        The oldest unclaimed outcomes go. Claiming is synchronous, so it
        happens in the same loop step as the report's commit is submitted;
        reports of the model share their group commits as before. Only when
        as many reports as the cap are under way (nothing left to claim)
        does one wait for another to settle (never with the default cap of
        10,000 unless that many reports of one model are committing at once).
        """
        while True:
            reports = self._outcome_reports.get(model_id)
            if reports is None:
                reports = self._outcome_reports[model_id] = _OutcomeReports()
            keys: Sequence[int] = self._outcome_keys.get(model_id, ())
            free = len(keys) - reports.front + len(reports.released)  # stored and unclaimed
            over = free + reports.adding + 1 - self._outcome_cap
            if over <= free:
                break
            waiter = asyncio.get_running_loop().create_future()
            reports.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # woken, then cancelled: pass the room on
                    self._wake_one(model_id)
                raise
        reports.adding += 1
        if over <= 0:
            return []
        handed_back = min(over, len(reports.released))
        claimed = reports.released[:handed_back]
        del reports.released[:handed_back]
        for _ in range(over - handed_back):
            claimed.append(keys[reports.front])
            reports.front += 1
        return claimed

    def _settle_report(self, model_id: str, evicted: list[int], *, committed: bool) -> None:
        """Ends a report's claim (from :meth:`_claim_room`) once its commit did or did not land.

        Committed, the outcomes it deleted leave memory; otherwise they are
        handed back to the next report. Either way only those still held:
        :meth:`put_catalog` may have dropped the model's outcomes meanwhile.
        """
        reports = self._outcome_reports[model_id]
        reports.adding -= 1
        held = [sequence for sequence in evicted if sequence in self._outcome_scores]
        if held and committed:
            keys = self._outcome_keys[model_id]
            for sequence in held:
                del self._outcome_scores[sequence]
                if keys[0] == sequence:
                    keys.popleft()
                else:
                    keys.remove(sequence)
            reports.front -= len(held)
            self._outcome_index[model_id].remove(held)
        elif held:
            reports.released = sorted(reports.released + held)
        self._wake_one(model_id)  # this report's room goes to the first waiting

    def _wake_one(self, model_id: str) -> None:
        """Wakes the first report waiting for room (not cancelled); forgets a model with none under way."""
        reports = self._outcome_reports.get(model_id)
        if reports is None:
            return
        while reports.waiters:
            waiter = reports.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        if not reports.adding and not reports.waiters:
            # No claim left (what was handed back is plainly stored again), no one waiting.
            del self._outcome_reports[model_id]

    def _add_outcome(self, model_id: str, sequence: int, vector: Vector, score: float) -> None:
        index = self._outcome_index.get(model_id)
        if index is None:
            index = self._outcome_index[model_id] = self._index_factory(self.dimension)
            self._outcome_keys[model_id] = deque()
        index.add([sequence], vector.reshape(1, -1))
        self._outcome_keys[model_id].append(sequence)
        self._outcome_scores[sequence] = score

    def outcome_count(self, model_id: str) -> int:
        """How many outcomes the estimator holds for a model."""
        keys = self._outcome_keys.get(model_id)
        return len(keys) if keys is not None else 0

    # --------------------------------------------------------------- helpers

    def embed(self, text: str) -> Vector:
        """The embedding of ``text`` (its first ``max_text_chars_embedded`` characters).

        Raises:
            EmbedderUnavailableError: The router has no embedder.
        """
        if self.embedder is None:
            raise EmbedderUnavailableError(
                "text was given but the router has no embedder (configured for caller vectors only); "
                "send a vector instead"
            )
        vector = self.embedder.embed([text[: self.settings.max_text_chars_embedded]])[0]
        return np.ascontiguousarray(vector, dtype=np.float32)

    def _query_vector(self, text: str | None, vector: bytes | None) -> Vector:
        if vector is not None:
            return self._check_vector(vector)
        return self.embed(text or "")

    def _check_vector(self, raw: bytes) -> Vector:
        vector = np.frombuffer(raw, dtype=np.float32)
        if vector.shape[0] != self.dimension:
            raise DimensionMismatchError(self.dimension, vector.shape[0])
        norm = math.sqrt(float(vector @ vector))
        return vector / np.float32(norm) if norm > 0 else vector

    def _card_vector(self, spec: AgentSpec) -> Vector:
        if spec.vector is not None:
            return self._check_vector(spec.vector)
        return self._embed_card(spec)

    def _embed_card(self, spec: AgentSpec) -> Vector:
        text = spec.description or " ".join((*spec.capabilities, spec.display_name)).strip() or spec.agent_id
        return self.embed(text)

    def _worker_vector(self, spec: AgentSpec) -> Vector | None:
        try:
            return self._card_vector(spec)
        except EmbedderUnavailableError:
            return None  # listed but not routable by similarity

    def _stored_vector(self, stored: StoredAgent) -> Vector | None:
        if stored.spec.vector is not None:
            vector = np.frombuffer(stored.spec.vector, dtype=np.float32)
            return self._check_vector(stored.spec.vector) if vector.shape[0] == self.dimension else None
        if stored.embedded_vector is None or self.embedder is None or stored.embedder != self.embedder.name:
            return None
        vector = np.frombuffer(stored.embedded_vector, dtype=np.float32)
        return vector if vector.shape[0] == self.dimension else None

    def _allocate_key(self) -> int:
        if self._free_keys:
            return self._free_keys.pop()
        key = self._next_key
        self._next_key += 1
        return key

    def _allocate_worker_key(self) -> int:
        if self._free_worker_keys:
            return self._free_worker_keys.pop()
        key = self._next_worker_key
        self._next_worker_key += 1
        return key

    def _new_agent(self, agent_id: str, now_ns: int, key: int) -> _Agent:
        agent = _Agent(agent_id=agent_id, key=key, first_seen_ns=now_ns)
        self._agents[agent_id] = agent
        self._by_key[agent.key] = agent
        bisect.insort(self._sorted_ids, agent_id)
        return agent

    def _rekey(self, agent: _Agent, key: int) -> None:
        """Moves a card to ``key`` (its vector and capabilities out until set again), freeing its old key."""
        self._unindex_capabilities(agent)
        if agent.row >= 0:
            self._remove_vector(agent)
        del self._by_key[agent.key]
        (self._free_worker_keys if agent.key >= _WORKER_KEYS else self._free_keys).append(agent.key)
        agent.key = key
        self._by_key[key] = agent

    def _drop_agent(self, agent: _Agent) -> None:
        self._unindex_capabilities(agent)
        if agent.row >= 0:
            self._remove_vector(agent)
        del self._agents[agent.agent_id]
        del self._by_key[agent.key]
        position = bisect.bisect_left(self._sorted_ids, agent.agent_id)
        del self._sorted_ids[position]
        (self._free_worker_keys if agent.key >= _WORKER_KEYS else self._free_keys).append(agent.key)

    def _set_vector(self, agent: _Agent, vector: Vector | None) -> None:
        self._unindex_capabilities(agent)
        agent.capabilities = frozenset(agent.spec.capabilities)
        self._index_capabilities(agent)
        if vector is None:
            if agent.row >= 0:
                self._remove_vector(agent)
            return
        replaced = agent.row >= 0
        self._store_row(agent, vector)
        self._index.add([agent.key], vector.reshape(1, -1))
        if self._upkeep.log is not None:
            self._upkeep.log.append((agent.key, vector))
        if replaced:
            self._index_changed()

    def _remove_vector(self, agent: _Agent) -> None:
        """Takes the card's vector out of its row, then out of the index.

        In that order: a removal can start a rebuild of the index, which
        takes every card that has a row, and must not take this one back.
        """
        self._release_row(agent)
        self._index_remove(agent.key)

    def _index_remove(self, key: int) -> None:
        self._index.remove([key])
        if self._upkeep.log is not None:
            self._upkeep.log.append((key, None))
        self._index_changed()

    def _index_changed(self) -> None:
        """Counts a removal or replacement; past a share of the index, rebuilds it in the background.

        HNSW removal leaves the graph worse at reaching the vectors that
        stay (after 600 of 3,000 cards were replaced, some could no longer
        be found by their own vector). A no-route answer is confirmed
        exactly anyway, but a cost-biased pick could miss a cheaper card.
        """
        self._upkeep.changes += 1
        bound = max(self.settings.index_rebuild_changes, len(self._index) // 8)
        if self._upkeep.changes >= bound and self._upkeep.log is None:
            self._start_rebuild()

    def _start_rebuild(self) -> None:
        agents = [a for a in self._agents.values() if a.row >= 0]
        keys = [a.key for a in agents]
        vectors = self._matrix[[a.row for a in agents]] if agents else None
        self._upkeep.log = []
        self._upkeep.changes = 0
        self._spawn(self._rebuild_index(keys, vectors))

    async def _rebuild_index(self, keys: list[int], vectors: npt.NDArray[np.float32] | None) -> None:
        """Builds a fresh agents index off the loop, replays what changed meanwhile, swaps it in."""
        try:
            index = await asyncio.to_thread(self._built_index, keys, vectors)
            log = self._upkeep.log or []
            for key, vector in log:
                if vector is None:
                    index.remove([key])
                else:
                    index.add([key], vector.reshape(1, -1))
            self._index = index
            self._upkeep.rebuilds += 1
        finally:
            self._upkeep.log = None

    def _built_index(self, keys: list[int], vectors: npt.NDArray[np.float32] | None) -> VectorIndexLike:
        index = self._index_factory(self.dimension)
        if keys and vectors is not None:
            index.add(keys, vectors)
        return index

    def _refresh(self, agent: _Agent) -> None:
        """Recomputes the card's live fields (and its row's copy of them) after a change."""
        agent.refresh()
        row = agent.row
        if row >= 0:
            self._row_cost[row] = agent.cost
            self._row_tier[row] = agent.tier
            self._row_load[row] = agent.load

    def _store_row(self, agent: _Agent, vector: Vector) -> None:
        """Writes the card's vector and live fields into its row (a new row if it has none)."""
        if agent.row < 0:
            if self._free_rows:
                agent.row = self._free_rows.pop()
            else:
                used = self._rows_used
                if used == self._matrix.shape[0]:
                    # Doubling, but not far past the bound on cards.
                    size = min(max(64, 2 * used), max(self.settings.max_agents, used + 64))
                    self._matrix = _grown(self._matrix, (size, self.dimension))
                    self._row_cost = _grown(self._row_cost, (size,))
                    self._row_tier = _grown(self._row_tier, (size,))
                    self._row_load = _grown(self._row_load, (size,))
                agent.row = used
                self._rows_used = used + 1
            if agent.row == len(self._row_agents):
                self._row_agents.append(agent)
            else:
                self._row_agents[agent.row] = agent
            self._key_rows.set(agent.key, agent.row)
        self._matrix[agent.row] = vector
        self._refresh(agent)

    def _release_row(self, agent: _Agent) -> None:
        self._free_rows.append(agent.row)
        self._key_rows.set(agent.key, -1)
        agent.row = -1

    def _index_capabilities(self, agent: _Agent) -> None:
        for capability in agent.capabilities:
            self._by_capability.setdefault(capability, set()).add(agent.key)

    def _unindex_capabilities(self, agent: _Agent) -> None:
        for capability in agent.capabilities:
            keys = self._by_capability.get(capability)
            if keys is not None:
                keys.discard(agent.key)
                if not keys:
                    del self._by_capability[capability]

    def _view(self, agent: _Agent) -> AgentView:
        stored = agent.stored
        return AgentView(
            spec=agent.spec,
            source=agent.source,
            available=agent.available,
            running=agent.running,
            capacity=agent.capacity,
            worker_ids=tuple(sorted(agent.workers)),
            create_time_ns=stored.create_time_ns if stored else agent.first_seen_ns,
            update_time_ns=stored.update_time_ns if stored else agent.first_seen_ns,
        )

    def _scan_all(self, table: str) -> Iterable[tuple[bytes, bytes]]:
        start: bytes | None = None
        while True:
            rows = self._storage.scan(table, start=start, limit=_PAGE)
            yield from rows
            if len(rows) < _PAGE:
                return
            start = rows[-1][0] + b"\x00"

    async def _commit(self, batch: Batch, drafts: Sequence[EventDraft]) -> None:
        sink = self._events
        events: list[Event] = [sink.record(batch, d) for d in drafts] if sink is not None else []
        await self._committer.submit(batch)
        if sink is not None and events:
            sink.publish(events)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(_logged(coroutine))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _logged(coroutine: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await coroutine
        except Exception:  # noqa: BLE001 - a lost route event must not crash the loop
            _log.exception("could not record a routing event")


def _settled(task: asyncio.Future[Any]) -> None:
    """Retrieves a change's failure (a cancelled caller no longer will; memory stayed as LMDB)."""
    if not task.cancelled():
        task.exception()


def _threshold_text(threshold: float) -> str:
    """A threshold for a reason string: 2 decimals ("0.60"), or all it has ("0.957")."""
    text = f"{threshold:.2f}"
    return text if float(text) == threshold else f"{threshold:g}"


def _shown(similarity: float, threshold: float) -> str:
    """A similarity for a reason string: 3 decimals, more when rounding would put it below the threshold."""
    text = f"{similarity:.3f}"
    return text if float(text) >= threshold else f"{similarity:.6f}"


def _outcomes_digest(sequences: Sequence[int]) -> str:
    """Outcomes are appended and evicted from the front: count and ends identify the set."""
    return f"{len(sequences)}:{sequences[0]}:{sequences[-1]}" if sequences else "0"


def _set_grown(array: npt.NDArray[np.intp], position: int, value: int) -> npt.NDArray[np.intp]:
    """``array`` with ``array[position] = value``, doubled (-1 filled) until it has that position."""
    if position >= array.shape[0]:
        grown = np.full(max(position + 1, 2 * array.shape[0]), -1, dtype=np.intp)
        grown[: array.shape[0]] = array
        array = grown
    array[position] = value
    return array


def _looked_up(table: npt.NDArray[np.intp], positions: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """``table[positions]``, -1 for positions past its end."""
    inside = positions < table.shape[0]
    if inside.all():
        return table[positions]
    return np.where(inside, table[np.minimum(positions, table.shape[0] - 1)], -1)


def _grown(array: npt.NDArray[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """A zeroed array of ``shape`` starting with the rows of ``array``."""
    grown = np.zeros(shape, dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


def _has_labels(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in wanted.items())


def _replace_capabilities(spec: AgentSpec, capabilities: tuple[str, ...]) -> AgentSpec:
    description = spec.description or " ".join(capabilities)
    return AgentSpec(
        agent_id=spec.agent_id,
        display_name=spec.display_name,
        description=description,
        capabilities=capabilities,
        vector=spec.vector,
        cost_per_call_micro_usd=spec.cost_per_call_micro_usd,
        typical_latency_ns=spec.typical_latency_ns,
        capacity=spec.capacity,
        labels=spec.labels,
    )


def _route_time_ms(route_id: str) -> int | None:
    if len(route_id) < 13 or not route_id.startswith("r"):
        return None
    try:
        return int(route_id[1:13], 16)
    except ValueError:
        return None
