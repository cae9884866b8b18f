"""VectorIndex: add, replace, remove, search, save atomically, restore by memory map."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import mmap
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from usearch.index import Index, MetricKind, ScalarKind

from ._child import child_output
from ._coalesce import SearchCoalescer
from ._errors import VectorError, VectorShapeError

_log = logging.getLogger("are.vector")

__all__ = [
    "DTYPES",
    "EXACT_CONFIRM_COMPONENTS",
    "SIMILARITY_ERROR",
    "SWEEP_MAX_UNREACHABLE",
    "ChildSweep",
    "Sweep",
    "VectorIndex",
    "background_threads",
]

DTYPES: tuple[str, ...] = ("f32", "f16", "i8")
"""The component types an index may store. usearch itself defaults to bf16;
we never take that default: f32 is exact, f16 halves memory at a negligible
recall cost for normalised embeddings, i8 quarters it and searches fastest."""

_SCALARS = {"f32": ScalarKind.F32, "f16": ScalarKind.F16, "i8": ScalarKind.I8}
_METRICS = {"cos": MetricKind.Cos, "ip": MetricKind.IP}

_Keys = Sequence[int] | np.ndarray[Any, Any]

EXPANSION_SEARCH: dict[str, int] = {"f32": 64, "f16": 32, "i8": 32}
"""Candidates considered per search (ef) when the owner does not say, by dtype.

Measured at 1M 384-d i8 entries (``python -m benchmarks.cache``): ef 16
already gives recall@1 1.0 on the benchmark's vectors (24-d latent), but on
vectors of higher intrinsic dimension (64-d latent, decaying spectrum, 100k
entries) ef 16 gives 0.98, 24 gives 0.99 and 32 gives 0.995; 32 is the
smallest with a margin, and costs 0.6x of ef 64. f32 keeps usearch's 64: its
owners (router, memory) chose exactness over speed."""


SIMILARITY_ERROR: dict[str, float] = {"f32": 1e-5, "f16": 0.001, "i8": 0.03}
"""How far a similarity the index reports may be from the exact one, by dtype.

Measured on normalised 256-d vectors (``python -m benchmarks.router``'s
capability set and iid Gaussian ones, 64 neighbours of 2,000 queries
each): f16 stays within 0.0001; i8 (each component scaled to -127..127)
within 0.022, 0.011 at the median. Each bound leaves a margin. Owners
that rescore candidates at full precision use it as the slack of decisions
made on the index's own similarities."""


# Up to this many vectors a brute-force scan (SIMD, a few microseconds per
# thousand vectors) is as fast as walking the graph and always exact: a small
# HNSW graph that has seen removals can leave a live vector unreachable.
EXACT_SEARCH_BELOW = 2048

EXACT_CONFIRM_COMPONENTS: dict[str, int] = {"f32": 1 << 22, "f16": 1 << 22, "i8": 1 << 23}
"""Vectors times dimension up to which a brute-force search costs about a millisecond, by dtype.

Measured (one query, 384-d vectors of ``benchmarks.cache``, a 2-core VM):
16,384 vectors take 1.5 ms in f32, 1.0 ms in f16 and 0.5 ms in i8 (32,000
i8: 1.0 ms); the bounds (10,922 f32 or f16 384-d vectors, 21,845 i8 ones)
keep the median under a millisecond. Owners use it to confirm a miss
exactly where that is cheap (:attr:`VectorIndex.exact_is_cheap`)."""


SWEEP_MAX_UNREACHABLE = 65_536
"""Unreachable keys a sweep reports at most (it stops there; the next sweep goes on)."""


class VectorIndex:
    """An HNSW index of float vectors under uint64 keys (usearch underneath).

    The index is derived data. Keys are the owner's ids, kept in LMDB beside
    the vectors. Re-adding a key replaces its vector. An index restored with
    ``view=True`` serves searches straight from the memory-mapped file (a
    start in milliseconds, whatever its size). Changes made to a view go to
    a small in-memory overlay (added vectors, and the keys of the file that
    were removed or replaced, which never answer), so a change never waits
    for the file to load; :meth:`materialize` (an owner calls it in a worker
    thread) loads a private copy and folds the overlay into it. Loading a
    copy holds the GIL (about 0.7 s at 1M i8 entries); the overlay is what
    keeps that off the path of a start and of the first writes after it.

    Native calls that search or change the graph are serialised by a lock:
    usearch is not safe for a search concurrent with an add or remove (nor
    for two searches from two threads, which share its per-thread search
    context 0). :meth:`search_coalesced` batches the searches of concurrent
    coroutines into one native call made in a worker thread.

    Args:
        dimension: Components per vector, 1 to 65,536.
        dtype: How components are stored: ``"f32"``, ``"f16"`` or ``"i8"``.
        metric: ``"cos"`` (cosine) or ``"ip"`` (inner product of normalised vectors).
        connectivity: HNSW edges per node (M); more is better recall, more memory.
        expansion_add: Candidates considered per insertion (efConstruction).
        expansion_search: Candidates considered per search (ef); by default
            :data:`EXPANSION_SEARCH` of the dtype.
    """

    _overlay: Index | None  # a view's added vectors (searched with it)
    _overlay_vectors: dict[int, np.ndarray[Any, np.dtype[np.float32]]]  # the same, to fold in
    _hidden: set[int]  # keys of a view's file that no longer answer (removed or replaced)

    def __init__(
        self,
        *,
        dimension: int,
        dtype: str = "f32",
        metric: str = "cos",
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int | None = None,
    ) -> None:
        if not 1 <= dimension <= 65_536:
            raise VectorError(f"dimension must be 1 to 65536, got {dimension}")
        if dtype not in _SCALARS:
            raise VectorError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if metric not in _METRICS:
            raise VectorError(f"metric must be 'cos' or 'ip', got {metric!r}")
        self._dimension = dimension
        self._dtype = dtype
        self._metric = metric
        self._index = Index(
            ndim=dimension,
            metric=_METRICS[metric],
            dtype=_SCALARS[dtype],
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search or EXPANSION_SEARCH[dtype],
        )
        self._view_path: Path | None = None
        self._view_file: tuple[int, ...] | None = None  # the viewed file: device, inode, size, mtime
        self._buffer: mmap.mmap | None = None  # what a view reads from when not the file's own mapping
        self._huge = False  # moved into huge pages: a fold's copy goes into them too
        self._lock = threading.Lock()
        self._native = threading.Lock()
        self._coalescer: SearchCoalescer | None = None
        self._reset_overlay()

    # -- properties ------------------------------------------------------

    @property
    def dimension(self) -> int:
        """Components per vector."""
        return self._dimension

    @property
    def dtype(self) -> str:
        """How components are stored (``"f32"``, ``"f16"`` or ``"i8"``)."""
        return self._dtype

    @property
    def metric(self) -> str:
        """``"cos"`` or ``"ip"``."""
        return self._metric

    @property
    def similarity_error(self) -> float:
        """How far a reported similarity may be from the exact one (:data:`SIMILARITY_ERROR`)."""
        return SIMILARITY_ERROR[self._dtype]

    @property
    def exact_is_cheap(self) -> bool:
        """Whether a brute-force search (``exact=True``) costs about a millisecond at most.

        HNSW removals leave the graph worse at reaching the vectors that
        stay, and usearch's multi-threaded insertion can leave a node no
        other links to (usearch issue #735): a graph search may miss a vector
        that an exact search finds. Up to :data:`EXACT_CONFIRM_COMPONENTS`
        an owner can afford to confirm a graph search's "nothing close"
        exactly.
        """
        overlay = self._overlay
        scanned = len(self._index) + (len(overlay) if overlay is not None else 0)
        return scanned * self._dimension <= EXACT_CONFIRM_COMPONENTS[self._dtype]

    @property
    def is_view(self) -> bool:
        """True while the index is a read-only memory map of a saved file."""
        return self._view_path is not None

    @property
    def pending_changes(self) -> int:
        """Changes a view holds in its overlay (added vectors and hidden keys); 0 once materialised."""
        return len(self._overlay_vectors) + len(self._hidden)

    @property
    def expansion_search(self) -> int:
        """Candidates considered per search (ef); settable."""
        return int(self._index.expansion_search)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        with self._native:
            self._index.expansion_search = value

    @property
    def memory_bytes(self) -> int:
        """Bytes the index holds in memory (a view's mapped file is not counted by usearch)."""
        return int(self._index.memory_usage)

    def __len__(self) -> int:
        overlay = self._overlay
        return len(self._index) - len(self._hidden) + (len(overlay) if overlay is not None else 0)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int | np.integer) or key < 0:
            return False
        return bool(self.contains_many([int(key)])[0])

    def __repr__(self) -> str:
        view = ", view" if self.is_view else ""
        return f"VectorIndex({len(self)} x {self._dimension} {self._dtype}, {self._metric}{view})"

    def contains_many(self, keys: _Keys) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """For each key, whether the index holds it."""
        array = _keys(keys)
        if array.size == 0:
            return np.zeros(0, dtype=np.bool_)
        with self._native:
            held = _contains(self._index, array)
            if self._hidden:
                held &= ~np.isin(array, np.fromiter(self._hidden, dtype=np.uint64, count=len(self._hidden)))
            if self._overlay is not None:
                held |= _contains(self._overlay, array)
        return held

    def keys(self) -> np.ndarray[Any, np.dtype[np.uint64]]:
        """Every key held, in no particular order."""
        with self._native:
            base = np.asarray(self._index.keys, dtype=np.uint64).reshape(-1)
            if self._hidden:
                hidden = np.fromiter(self._hidden, dtype=np.uint64, count=len(self._hidden))
                base = base[~np.isin(base, hidden)]
            if self._overlay is None:
                return base
            added = np.fromiter(self._overlay_vectors, dtype=np.uint64, count=len(self._overlay_vectors))
        return np.concatenate([base, added])

    # -- changes ---------------------------------------------------------

    def add(self, keys: _Keys, vectors: np.ndarray[Any, Any], *, threads: int = 0) -> None:
        """Adds vectors under keys; a key already present has its vector replaced.

        Args:
            keys: n uint64 keys; a key repeated in the batch keeps its last vector.
            vectors: An (n, dimension) array (float32 preferred), or one vector when n is 1.
            threads: Native threads inserting the batch; 0 means one per core
                (background work passes 1, leaving the other cores to serve).

        Raises:
            VectorShapeError: The vectors are not (n, dimension).
        """
        array = _keys(keys)
        matrix = self._matrix(vectors)
        if matrix.shape[0] != array.shape[0]:
            raise VectorError(f"{array.shape[0]} keys but {matrix.shape[0]} vectors")
        if array.size == 0:
            return
        if np.unique(array).size != array.size:
            # Keep each key's last occurrence.
            _, last_from_end = np.unique(array[::-1], return_index=True)
            pick = np.sort(array.size - 1 - last_from_end)
            array, matrix = array[pick], matrix[pick]
        with self._native:
            if self._view_path is not None:  # into the overlay: never wait for the file to load
                self._hide(array)
                if self._overlay is None:
                    self._overlay = self._new_overlay()
                _put(self._overlay, array, matrix, threads)
                for key, row in zip(array.tolist(), matrix, strict=True):
                    self._overlay_vectors[key] = row.copy()
                return
            _put(self._index, array, matrix, threads)

    def remove(self, keys: _Keys) -> None:
        """Removes keys; keys not present are ignored."""
        array = _keys(keys)
        if array.size == 0:
            return
        with self._native:
            if self._view_path is not None:
                self._hide(array)
                if self._overlay is not None:
                    for key in _drop(self._overlay, array).tolist():
                        self._overlay_vectors.pop(key, None)
                return
            _drop(self._index, array)

    def clear(self) -> None:
        """Removes every key."""
        self.materialize()
        with self._native:
            self._index.clear()

    # -- search ----------------------------------------------------------

    def search(self, vector: np.ndarray[Any, Any], k: int, *, exact: bool = False) -> list[tuple[int, float]]:
        """The k nearest keys to one vector with their cosine similarity, best first.

        Args:
            vector: A (dimension,) or (1, dimension) array.
            k: How many neighbours at most.
            exact: Brute force instead of the graph (for recall checks).
        """
        query = self.query(vector)
        if k <= 0:
            return []
        return self._search(query, k, exact=exact, threads=1)[0]

    def search_arrays(
        self, vector: np.ndarray[Any, Any], k: int, *, exact: bool = False
    ) -> tuple[np.ndarray[Any, np.dtype[np.uint64]], np.ndarray[Any, np.dtype[np.float32]]]:
        """As :meth:`search`, as two arrays: keys and cosine similarities, best first.

        For callers that go on in numpy: no Python object per match.
        """
        query = self.query(vector)
        with self._native:
            if k > 0 and len(self._index) and self._overlay is None and not self._hidden:
                keys, distances, counts = _compiled_search(self._index, query, k, exact=exact, threads=1)
                n = int(counts[0])
                return keys[0, :n].astype(np.uint64), (1.0 - distances[0, :n]).astype(np.float32, copy=False)
        matches = self._search(query, k, exact=exact, threads=1)[0] if k > 0 else []
        return (
            np.fromiter((m[0] for m in matches), dtype=np.uint64, count=len(matches)),
            np.fromiter((m[1] for m in matches), dtype=np.float32, count=len(matches)),
        )

    def search_many(
        self, vectors: np.ndarray[Any, Any], k: int, *, threads: int = 1
    ) -> list[list[tuple[int, float]]]:
        """The k nearest keys to each of several vectors (one native call).

        Args:
            vectors: An (n, dimension) array.
            k: How many neighbours at most per vector.
            threads: Native threads searching the batch (the GIL is released
                meanwhile); 0 uses every core.
        """
        queries = self._matrix(vectors)
        if queries.shape[0] == 0:
            return []
        if k <= 0:
            return [[] for _ in range(queries.shape[0])]
        return self._search(queries, k, exact=False, threads=threads)

    async def search_coalesced(self, vector: np.ndarray[Any, Any], k: int) -> list[tuple[int, float]]:
        """As :meth:`search`, batched with the searches of concurrent coroutines.

        A search made while no other is under way runs at once, inline, as
        :meth:`search` would; searches made meanwhile join one native call in
        a worker thread (see :class:`~are_core.vector.SearchCoalescer`). Call
        it from one event loop only.

        Raises:
            VectorShapeError: The vector is not of the index's dimension
                (raised for this search alone; a batch never fails for it).
        """
        query = self.query(vector)
        if k <= 0:
            return []
        coalescer = self._coalescer
        if coalescer is None:
            coalescer = self._coalescer = SearchCoalescer(self._search)
        return await coalescer.search(query, k)

    def query(self, vector: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """One vector as the (1, dimension) float32 array the native search takes.

        Raises:
            VectorShapeError: It is not one vector of the index's dimension.
        """
        query = self._matrix(vector)
        if query.shape[0] != 1:
            raise VectorShapeError(expected=self._dimension, got=tuple(np.shape(vector)))
        return query

    def _search(
        self, queries: np.ndarray[Any, np.dtype[np.float32]], k: int, *, exact: bool, threads: int
    ) -> list[list[tuple[int, float]]]:
        """Searches prepared (n, dimension) float32 queries, k > 0, in one native call.

        Calls the compiled index directly: usearch's ``Index.search`` wraps
        the same call in ``Matches`` objects that cost more than a small
        index's search itself.
        """
        with self._native:
            hidden = self._hidden
            found = self._search_past_hidden(queries, k, exact=exact, threads=threads)
            if self._overlay is None:
                if not hidden:
                    return found
                return [[m for m in matches if m[0] not in hidden][:k] for matches in found]
            added = _native_search(self._overlay, queries, k, exact, threads)
        merged = []
        for matches, extra in zip(found, added, strict=True):
            live = [m for m in matches if m[0] not in hidden] + extra
            live.sort(key=lambda m: -m[1])
            merged.append(live[:k])
        return merged

    def _search_past_hidden(
        self, queries: np.ndarray[Any, np.dtype[np.float32]], k: int, *, exact: bool, threads: int
    ) -> list[list[tuple[int, float]]]:
        """The view's own matches, enough of them that k remain once its hidden keys are dropped.

        Hidden (removed or replaced) keys of a view still sit in its graph
        and take places in a result: ask for a few more, and, while a query
        found fewer than k live keys in a full result, four times as many
        (at most k plus every hidden key: then k live ones are in it if the
        view has them). Lock held by the caller.
        """
        hidden = self._hidden
        if not hidden:
            return _native_search(self._index, queries, k, exact, threads)
        most = min(k + len(hidden), len(self._index))
        want = min(k + min(len(hidden), 64), most)
        while True:
            found = _native_search(self._index, queries, want, exact, threads)
            short = any(
                len(matches) == want and sum(m[0] not in hidden for m in matches) < k for matches in found
            )
            if not short or want >= most:
                return found
            want = min(want * 4, most)

    # -- persistence -----------------------------------------------------

    def save(self, path: Path) -> None:
        """Writes the index to ``path`` atomically (a temporary file, fsync, rename)."""
        path = Path(path)
        if self._overlay is not None or self._hidden:
            self.materialize()  # the file must hold the overlay's changes
        _write(self._index, path)

    def save_in_child(self, path: Path) -> int | None:
        """Starts writing the index to ``path`` in a forked child process; returns its pid.

        The child writes the index as it was at the fork (the kernel keeps
        that copy for it, page by page, as this process goes on changing
        it), atomically as :meth:`save` does, and exits 0 once the file is
        durable, 1 otherwise: await :func:`child_exit_code`. This process
        pauses only for the fork itself (about a millisecond per GB
        mapped), where :meth:`save` would hold the index for as long as
        writing it takes. The child dies with this process (it never
        renames a file after its parent is gone).

        Returns None, and forks nothing, for a memory-mapped view (its file
        is already on disk; :meth:`materialize` first) or where ``fork`` is
        not available.
        """
        path = Path(path)
        if not hasattr(os, "fork") or self._view_path is not None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        return self._fork(lambda: _write(self._index, path))

    def search_in_child(self, queries: np.ndarray[Any, Any], expansions: Sequence[int]) -> ChildSearch | None:
        """Starts searching ``queries`` at each expansion, and exactly, in a forked child.

        The child searches the index as it was at the fork (the graph of a
        view's file, without its overlay), at idle priority (Linux
        ``SCHED_IDLE``: only when the CPU has nothing else to do), and
        writes the top key and similarity of every query per expansion to a
        pipe: await :meth:`ChildSearch.result` (no thread waits for it).
        Returns None where ``fork`` is not available.
        """
        if not hasattr(os, "fork"):
            return None
        matrix = self._matrix(queries)
        ladder = [int(e) for e in expansions]

        def child() -> bytes:
            index = self._index
            out = [np.array([matrix.shape[0], len(ladder)], dtype=np.uint64).tobytes()]
            for expansion in [*ladder, 0]:  # 0: the exact reference, last
                if expansion:
                    index.expansion_search = expansion
                keys, distances, counts = _compiled_search(index, matrix, 1, exact=not expansion, threads=1)
                hit = counts > 0
                top = np.where(hit, keys[:, 0], np.uint64(_NO_KEY)).astype(np.uint64)
                similarity = np.where(hit, 1.0 - distances[:, 0].astype(np.float64), -2.0)
                out += [
                    np.array([expansion], dtype=np.uint64).tobytes(),
                    top.tobytes(),
                    similarity.astype(np.float32).tobytes(),
                ]
            return b"".join(out)

        return ChildSearch(*self._fork_reporting(child))

    def sweep_in_child(self, *, max_unreachable: int = SWEEP_MAX_UNREACHABLE) -> ChildSweep | None:
        """Starts looking, in a forked child, for the keys that a search for their own vector misses.

        Removals (and usearch's insertions) leave some nodes that no search
        reaches by their own vector, so no lookup near it finds them either;
        nothing else repairs that. The child takes every key of the index as
        it was at the fork (of a view: its file's keys that are not hidden;
        the overlay is small and built in memory), reads their stored
        vectors 1,024 at a time (its memory stays bounded: the keys, and one
        chunk of vectors and results), searches for each at the index's
        expansion, and reports those whose top match (hidden keys skipped,
        as :meth:`search` skips them) is neither the key itself nor an
        identical twin. The stored vectors are in the index's dtype, which
        is what usearch converts a float32 query to before it searches: the
        child makes the search that a lookup by the entry's own vector
        makes. One search per key, at idle priority (Linux ``SCHED_IDLE``);
        it stops once it found ``max_unreachable`` keys. Read the report
        with :meth:`ChildSweep.result` (no thread waits for it),
        and insert what is still live again with :meth:`add`
        (``threads=1``; a view puts it in its overlay). Returns None where
        ``fork`` is not available.
        """
        if not hasattr(os, "fork"):
            return None
        bound = max(1, int(max_unreachable))

        def child() -> bytes:
            checked, lost = _sweep(self._index, self._hidden, bound)
            return np.array([checked, lost.size], dtype=np.uint64).tobytes() + lost.tobytes()

        return ChildSweep(*self._fork_reporting(child))

    def _fork_reporting(self, work: Callable[[], bytes]) -> tuple[int, int]:
        """Forks an idle-priority child writing what ``work`` returns to a pipe; returns (pid, read end).

        Linux ``SCHED_IDLE``: the child runs only when the CPU has nothing
        else to do. Read the pipe to its end, then reap the child
        (``_child_output``).

        Raises:
            OSError: The pipe or the fork failed.
        """
        read_fd, write_fd = os.pipe()

        def child() -> None:
            os.close(read_fd)
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            _write_all(write_fd, work())

        try:
            pid = self._fork(child)
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the child's end
        return pid, read_fd

    def _fork(self, child: Callable[[], None]) -> int:
        """Forks a child that runs ``child`` and exits (0, or 1 on an error); returns its pid.

        No native call and no materialisation is under way in any thread
        while forking, so the child starts with the index whole and with no
        lock it would wait for; only this thread exists in the child. The
        child dies with this process.

        Raises:
            OSError: The fork failed.
        """
        parent = os.getpid()
        if sys.platform.startswith("linux"):
            _libc()  # loaded here: the child must not load a library (the loader's lock may be held)
        with self._lock, self._native:
            pid = os.fork()
            if pid == 0:  # never returns
                code = 1
                try:
                    _die_with_parent(parent)
                    child()
                    code = 0
                finally:
                    os._exit(code)
        return pid

    @classmethod
    def restore(
        cls,
        path: Path,
        *,
        dimension: int,
        dtype: str,
        view: bool = False,
        metric: str = "cos",
        expansion_search: int | None = None,
    ) -> VectorIndex | None:
        """Opens a saved index, or None when it is missing, corrupt or of another shape.

        Args:
            path: The file :meth:`save` wrote.
            dimension: The dimension the owner expects.
            dtype: The component type the owner expects.
            view: Memory-map the file instead of reading it (read-only until
                the first change, which loads a private copy).
            metric: The metric the owner expects.
            expansion_search: Candidates considered per search (ef); by
                default :data:`EXPANSION_SEARCH` of the dtype (the file does
                not keep it).
        """
        path = Path(path)
        if dtype not in _SCALARS or metric not in _METRICS or not path.is_file():
            return None
        try:
            meta = Index.metadata(str(path))
            if (
                meta is None
                or int(meta["dimensions"]) != dimension
                or meta["kind_scalar"] != _SCALARS[dtype]
                or meta["kind_metric"] != _METRICS[metric]
                or meta["kind_key"] != ScalarKind.U64
            ):
                return None
            index = Index.restore(str(path), view=view)
        except (ValueError, RuntimeError, OSError, KeyError):
            return None
        if index is None or index.ndim != dimension:
            return None
        self = cls.__new__(cls)
        self._dimension = dimension
        self._dtype = dtype
        self._metric = metric
        index.expansion_search = expansion_search or EXPANSION_SEARCH[dtype]
        self._index = index
        self._view_path = path if view else None
        self._view_file = _identity(path) if view else None
        self._buffer = None
        self._huge = False
        self._lock = threading.Lock()
        self._native = threading.Lock()
        self._coalescer = None
        self._reset_overlay()
        return self

    def prefault(self) -> int:
        """Maps every page of a view's file into this process ahead of the searches; returns bytes mapped.

        A fresh view pays a page fault for each page its first searches touch
        (at 1M i8 entries, p99 of the first 1,000 searches 1.4 ms instead of
        0.6 ms). This asks the kernel to populate the mapping at once
        (``madvise(MADV_POPULATE_READ)``, Linux 5.14+), outside the GIL: call
        it from a worker thread. Returns 0 where that is not available, or
        for an index that is not a view.
        """
        path = self._view_path
        if path is None or not sys.platform.startswith("linux"):
            return 0
        try:
            madvise = _libc().madvise
        except (OSError, AttributeError):
            return 0
        real = os.path.realpath(path)
        ranges = [(start, end) for start, end, _, name in _mappings() if name == real]
        done = 0
        for start, end in ranges:
            if madvise(start, end - start, _MADV_POPULATE_READ) != 0:
                return done  # an older kernel (EINVAL): searches fault pages in as they go
            done += end - start
        return done

    def into_huge_pages(self) -> int:
        """Moves a view from its file's mapping into anonymous memory in huge pages; returns bytes moved.

        A search reads a few hundred vectors and neighbour lists at random
        places of the index: at 1M 8-bit entries, some 560 distances, each
        on a page of its own. With 4 KiB pages (a file's mapping in the
        page cache has nothing else) nearly each of them also misses the
        TLB, which in a virtual machine costs a two-level page walk, and
        the search evicts the TLB entries of everything the process does
        next. Read into memory advised ``MADV_HUGEPAGE``, the same bytes
        sit in 2 MiB pages: measured in-process at 1M i8 entries, ef 14,
        between polluting 2 MiB, median 234 -> 181 µs and p99 342-389 ->
        280-287 µs.

        Reads the file (not the old mapping) outside the GIL: call it from
        a worker thread; the view serves meanwhile, and is swapped under
        the lock once the copy is complete. The copy costs the file's size
        in resident memory (the page cache's copy becomes reclaimable).
        Returns 0, changing nothing, for an index that is not a view, where
        transparent huge pages are off (``never``; the copy would not help),
        when the file was replaced since the view opened it, or when a
        materialisation came first.
        """
        path, identity = self._view_path, self._view_file
        if path is None or identity is None or self._buffer is not None or not _huge_pages_available():
            return 0
        try:
            with path.open("rb", buffering=0) as file:
                if _identity_of(os.fstat(file.fileno())) != identity:
                    return 0  # a checkpoint renamed another file in: not what this view serves
                size = identity[2]
                buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                buffer.madvise(mmap.MADV_HUGEPAGE)  # before the first touch: faults take 2 MiB pages
                into = memoryview(buffer)
                done = 0
                while done < size:
                    read = file.readinto(into[done : done + _READ_CHUNK])
                    if not read:
                        return 0  # shorter than at open: leave the view as it is
                    done += read
                into.release()
            index = Index(ndim=self._dimension, metric=_METRICS[self._metric], dtype=_SCALARS[self._dtype])
            index._compiled.view_index_from_buffer(buffer, None)  # noqa: SLF001 - usearch's view of a buffer
        except (OSError, ValueError, RuntimeError, MemoryError) as error:
            _log.info(f"vector index {path.name}: staying in the file's mapping: {error}")
            return 0
        with self._lock, self._native:
            if self._view_path != path or self._view_file != identity or self._buffer is not None:
                return 0  # materialised (or moved) meanwhile
            index.expansion_search = self._index.expansion_search
            self._index = index
            self._buffer = buffer
            self._huge = True
        return size

    def materialize(self) -> None:
        """Replaces a memory-mapped view by a private, writable copy; no-op otherwise.

        Safe to call from a worker thread while the owner's thread searches
        and changes: the view and its overlay keep serving until the copy,
        with the overlay folded in, is swapped in under the lock.
        """
        if self._view_path is None:
            return
        with self._lock:
            path = self._current_view()
            if path is None:  # another thread materialised it meanwhile
                return
            view = self._index
            before = _anonymous_mappings() if self._huge else None
            try:
                # Copying the mapped view holds the GIL about a third as long
                # as reading the file again (0.7 s against 1.8 s at 1M i8
                # entries): the event loop stalls for that long meanwhile.
                copy = view.copy()
            except (ValueError, RuntimeError, OSError, MemoryError) as error:
                raise VectorError(f"cannot load the index file {path.name}: {error}") from error
            copy.expansion_search = view.expansion_search
            # Fold the overlay in. The copy is this thread's alone, so rounds
            # fold what the overlay holds without the lock (adding 50k vectors
            # to a 1M-entry copy takes some 20 s, which every search and change
            # used to wait for); only a last, small round holds it, then swaps.
            hidden: set[int] = set()  # folded so far
            vectors: dict[int, np.ndarray[Any, Any]] = {}
            for last in [False] * _FOLD_ROUNDS + [True]:
                with self._native:
                    change = _overlay_change(self._hidden, self._overlay_vectors, hidden, vectors)
                    if last or change.size <= _FOLD_UNDER_LOCK:
                        change.apply(copy)
                        self._index = copy
                        self._view_path = None
                        self._view_file = None
                        retired, self._buffer = self._buffer, None
                        self._reset_overlay()
                        break
                change.apply(copy)
                hidden |= change.hidden
                vectors.update(change.added)
                for key in change.dropped:
                    vectors.pop(key, None)
        del view  # the old view first, then the buffer it read (if it had one of its own)
        del retired
        if before is not None:
            # The copy is usearch's own allocation, in small pages: ask the
            # kernel to collapse the mappings it added into huge ones (in
            # this worker thread, outside the GIL; searches go on meanwhile).
            _collapse(_anonymous_mappings() - before)

    # -- helpers ---------------------------------------------------------

    def _current_view(self) -> Path | None:
        return self._view_path

    def _reset_overlay(self) -> None:
        self._overlay = None
        self._overlay_vectors = {}
        self._hidden = set()

    def _hide(self, array: np.ndarray[Any, np.dtype[np.uint64]]) -> None:
        """Hides the view's copies of these keys (removed, or replaced in the overlay); lock held."""
        in_file = _contains(self._index, array)
        if in_file.any():
            self._hidden.update(array[in_file].tolist())

    def _new_overlay(self) -> Index:
        return Index(
            ndim=self._dimension,
            metric=_METRICS[self._metric],
            dtype=_SCALARS[self._dtype],
            connectivity=16,
            expansion_add=128,
            expansion_search=int(self._index.expansion_search),
        )

    def _matrix(self, vectors: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        if matrix.ndim != 2 or matrix.shape[1] != self._dimension:
            raise VectorShapeError(expected=self._dimension, got=tuple(np.shape(vectors)))
        return np.ascontiguousarray(matrix)


_NO_KEY = (1 << 64) - 1  # a child search's key for a query with no match


class ChildSearch:
    """A search running in a forked child (:meth:`VectorIndex.search_in_child`)."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd = fd

    async def result(self) -> dict[int, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
        """Awaits the child; per expansion (0: the exact search), each query's top key and similarity.

        No thread waits meanwhile (:func:`child_output`); cancelling kills the child.

        Raises:
            VectorError: The child failed (its output is incomplete).
        """
        data = await child_output(self.pid, self._fd, "search")
        n, settings = (int(x) for x in np.frombuffer(data[:16], dtype=np.uint64))
        out: dict[int, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = {}
        offset = 16
        for _ in range(settings + 1):
            expansion = int(np.frombuffer(data[offset : offset + 8], dtype=np.uint64)[0])
            offset += 8
            keys = np.frombuffer(data[offset : offset + 8 * n], dtype=np.uint64)
            offset += 8 * n
            sims = np.frombuffer(data[offset : offset + 4 * n], dtype=np.float32)
            offset += 4 * n
            out[expansion] = (keys, sims)
        if offset != len(data):
            raise VectorError("the search child's output has the wrong length")
        return out


class Sweep(msgspec.Struct, frozen=True, kw_only=True):
    """What a sweep found: ``unreachable`` keys (their own vector did not find them) of ``checked``."""

    checked: int
    unreachable: np.ndarray[Any, np.dtype[np.uint64]]


class ChildSweep:
    """A sweep running in a forked child (:meth:`VectorIndex.sweep_in_child`)."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd = fd

    async def result(self) -> Sweep:
        """Awaits the child; the keys it checked and those it found unreachable.

        No thread waits meanwhile (:func:`child_output`); cancelling kills the child.

        Raises:
            VectorError: The child failed (its output is incomplete).
        """
        data = await child_output(self.pid, self._fd, "sweep")
        if len(data) < 16:
            raise VectorError("the sweep child's output has the wrong length")
        checked, n = (int(x) for x in np.frombuffer(data[:16], dtype=np.uint64))
        if len(data) != 16 + 8 * n:
            raise VectorError("the sweep child's output has the wrong length")
        return Sweep(checked=checked, unreachable=np.frombuffer(data[16:], dtype=np.uint64).copy())


_SWEEP_CHUNK = 1024  # keys whose stored vectors a sweep reads and searches for at a time


def _sweep(
    index: Index, hidden_keys: set[int], bound: int
) -> tuple[int, np.ndarray[Any, np.dtype[np.uint64]]]:
    """The keys of ``index`` (but ``hidden_keys``) that a search for their stored vector misses.

    Returns how many keys were checked and the unreachable ones, at most
    ``bound`` of them (it stops there). Reads the vectors a chunk at a time.
    """
    keys = np.asarray(index.keys, dtype=np.uint64).reshape(-1)
    hidden = np.fromiter(hidden_keys, dtype=np.uint64, count=len(hidden_keys))
    if hidden.size:
        keys = keys[~np.isin(keys, hidden)]
    # As _search_past_hidden asks for a top match: a few more, for hidden ones.
    want = max(1, min(1 + min(hidden.size, 64), len(index)))
    checked = 0
    lost: list[np.ndarray[Any, np.dtype[np.uint64]]] = []
    found = 0
    for start in range(0, keys.size, _SWEEP_CHUNK):
        part = keys[start : start + _SWEEP_CHUNK]
        rows = index.get(part)
        held = [row is not None for row in rows]
        if not all(held):  # not expected: the keys are the index's own
            part = part[np.asarray(held, dtype=np.bool_)]
            rows = [row for row in rows if row is not None]
        checked += int(part.size)
        if not part.size:
            continue
        queries = np.ascontiguousarray(np.stack(rows))  # in the index's dtype
        missed = part[_unreachable(index, part, queries, want, hidden)]
        if missed.size:
            lost.append(missed)
            found += int(missed.size)
            if found >= bound:
                break
    if not lost:
        return checked, np.zeros(0, dtype=np.uint64)
    return checked, np.concatenate(lost)[:bound]


def _unreachable(
    index: Index,
    keys: np.ndarray[Any, np.dtype[np.uint64]],
    queries: np.ndarray[Any, Any],
    want: int,
    hidden: np.ndarray[Any, np.dtype[np.uint64]],
    *,
    threads: int = 1,
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Which keys a search for their own vector (``queries``, one row each) does not find (lock held).

    Found: the first of the ``want`` matches that is not ``hidden`` is the
    key itself, or lies within ``_SAME_VECTOR_DISTANCE`` (an identical twin).
    """
    found, distances, counts = _compiled_search(index, queries, want, exact=False, threads=threads)
    usable = np.arange(found.shape[1]) < counts.reshape(-1, 1)  # past a query's count: no match
    if hidden.size:
        usable &= ~np.isin(found, hidden)
    first = np.argmax(usable, axis=1)
    rows = np.arange(keys.size)
    matched = usable[rows, first]
    top, distance = found[rows, first], distances[rows, first]
    lost: np.ndarray[Any, np.dtype[np.bool_]] = ~matched | (
        (top != keys) & (distance > _SAME_VECTOR_DISTANCE)
    )
    return lost


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.close(fd)


_FOLD_ROUNDS = 8
_FOLD_UNDER_LOCK = 2048  # overlay changes a materialisation folds while holding the lock, at most


class _OverlayChange:
    """What a view's overlay holds beyond what was already folded into a copy."""

    __slots__ = ("added", "dropped", "hidden")

    def __init__(self, hidden: set[int], dropped: list[int], added: dict[int, np.ndarray[Any, Any]]) -> None:
        self.hidden = hidden  # keys of the file hidden since
        self.dropped = dropped  # keys folded in from the overlay, removed from it since
        self.added = added  # keys added to (or replaced in) the overlay since, with their vectors

    @property
    def size(self) -> int:
        return len(self.hidden) + len(self.dropped) + len(self.added)

    def apply(self, copy: Index) -> None:
        gone = [*self.hidden, *self.dropped]
        if gone:
            _drop(copy, np.asarray(gone, dtype=np.uint64))
        if self.added:
            keys = np.fromiter(self.added, dtype=np.uint64, count=len(self.added))
            _put(copy, keys, np.stack(list(self.added.values())))


def _overlay_change(
    hidden_now: set[int],
    vectors_now: dict[int, np.ndarray[Any, Any]],
    hidden: set[int],
    vectors: dict[int, np.ndarray[Any, Any]],
) -> _OverlayChange:
    """The overlay (``hidden_now``, ``vectors_now``) beyond what was folded (``hidden``, ``vectors``).

    Called with the lock held: both sides are read whole.
    """
    return _OverlayChange(
        hidden_now - hidden,
        [key for key in vectors if key not in vectors_now],
        {key: row for key, row in vectors_now.items() if vectors.get(key) is not row},
    )


_MADV_POPULATE_READ = 22
_READ_CHUNK = 64 << 20
_MADV_COLLAPSE = 25
_HUGE = 2 << 20
_MIN_COLLAPSE = 4 << 20
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _huge_pages_available() -> bool:
    """Whether ``MADV_HUGEPAGE`` memory can come in huge pages (Linux, THP not ``[never]``)."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        return "[never]" not in _THP_SETTING.read_text(encoding="ascii")
    except OSError:
        return False


def _mappings() -> list[tuple[int, int, str, str]]:
    """This process's mappings as (start, end, permissions, path or ""); none where /proc is not there."""
    found = []
    try:
        with Path("/proc/self/maps").open(encoding="utf-8", errors="replace") as maps:
            for line in maps:
                parts = line.rstrip("\n").split(maxsplit=5)
                start, end = (int(x, 16) for x in parts[0].split("-"))
                found.append((start, end, parts[1], parts[5] if len(parts) == 6 else ""))
    except OSError:
        pass
    return found


def _anonymous_mappings() -> set[tuple[int, int]]:
    """This process's private anonymous mappings of 4 MiB or more, as (start, end)."""
    return {
        (start, end)
        for start, end, permissions, name in _mappings()
        if not name and permissions.endswith("p") and end - start >= _MIN_COLLAPSE
    }


def _collapse(mappings: set[tuple[int, int]]) -> int:
    """Advises these mappings ``MADV_HUGEPAGE`` and collapses them, 2 MiB at a time; returns bytes collapsed.

    ``MADV_COLLAPSE`` (Linux 6.1+) is synchronous and best effort: a range
    it cannot collapse (EINVAL, EAGAIN) is left in small pages, and so is
    everything on an older kernel.
    """
    if not mappings or not _huge_pages_available():
        return 0
    madvise = _libc().madvise
    done = 0
    for start, end in mappings:
        low = (start + _HUGE - 1) & ~(_HUGE - 1)
        high = end & ~(_HUGE - 1)
        if high <= low or madvise(low, high - low, mmap.MADV_HUGEPAGE) != 0:
            continue
        for at in range(low, high, _HUGE):
            if madvise(at, _HUGE, _MADV_COLLAPSE) == 0:
                done += _HUGE
    return done


def _identity_of(stat: os.stat_result) -> tuple[int, ...]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _identity(path: Path) -> tuple[int, ...] | None:
    try:
        return _identity_of(path.stat())
    except OSError:
        return None


@functools.cache
def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def _contains(
    index: Index, keys: np.ndarray[Any, np.dtype[np.uint64]]
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    return np.asarray(index.contains(keys), dtype=np.bool_).reshape(-1).copy()


def _put(
    index: Index, keys: np.ndarray[Any, np.dtype[np.uint64]], matrix: np.ndarray[Any, Any], threads: int = 0
) -> None:
    """Adds vectors under keys, replacing the vectors of keys already present (lock held).

    usearch's concurrent insertion can leave a node that no search reaches,
    at any expansion (usearch issue #735; measured here: 6 to 10 of 40,000
    low-dimension 384-d vectors, none on one thread, which takes twice as
    long). So a batch inserted on several threads is searched for by its
    own vectors, and what no search returned is inserted again on one
    thread; that check costs a fraction of the insertion it follows.
    """
    _drop(index, keys)
    index.add(keys, matrix, threads=threads)
    if threads != 1 and keys.size > 1:
        _relink_unreachable(index, keys, matrix, threads)


# A vector found at this cosine distance from its query is the query's own
# (or an identical twin's): reachable.
_SAME_VECTOR_DISTANCE = 1e-5


# Rounds of re-insertion after a batch added on several threads: inserting a node again
# rewrites its neighbours' links, which can strand another node of the batch (rarely).
_RELINK_ROUNDS = 4


def _relink_unreachable(
    index: Index, keys: np.ndarray[Any, np.dtype[np.uint64]], matrix: np.ndarray[Any, Any], threads: int
) -> int:
    """Re-inserts, on one thread, the keys of a batch their own vectors do not find; returns how many.

    A round that re-inserted any is followed by another check of the whole
    batch, at most :data:`_RELINK_ROUNDS` in all: a batch whose first check
    finds none (the usual case) costs one search of it, as before.
    """
    total = 0
    for _ in range(_RELINK_ROUNDS):
        lost = _unreachable(index, keys, matrix, 1, np.zeros(0, dtype=np.uint64), threads=threads)
        if not lost.any():
            break
        again = keys[lost]
        _drop(index, again)
        index.add(again, matrix[lost], threads=1)
        total += int(again.size)
    return total


def _drop(index: Index, keys: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """Removes the keys the index holds (lock held); returns those it removed."""
    present: np.ndarray[Any, np.dtype[np.uint64]] = keys[_contains(index, keys)]
    if present.size:
        index.remove(present)
    return present


def _native_search(
    index: Index, queries: np.ndarray[Any, np.dtype[np.float32]], k: int, exact: bool, threads: int
) -> list[list[tuple[int, float]]]:
    """One native call of usearch's compiled search (lock held by the caller)."""
    if len(index) == 0:
        return [[] for _ in range(queries.shape[0])]
    keys, distances, counts = _compiled_search(index, queries, k, exact=exact, threads=threads)
    # Slots past a query's count hold no match (uninitialised memory).
    return [
        list(zip(keys[i, :n].tolist(), (1.0 - distances[i, :n].astype(np.float64)).tolist(), strict=True))
        for i, n in enumerate(counts.tolist())
    ]


def _compiled_search(
    index: Index, queries: np.ndarray[Any, Any], k: int, *, exact: bool, threads: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """One compiled usearch search: keys, distances, counts per query (lock held, index not empty).

    Queries are float32, or in the index's own dtype (its stored vectors).
    """
    keys, distances, counts, *_ = index._compiled.search_many(  # noqa: SLF001 - see VectorIndex._search
        queries,
        count=k,
        exact=exact or len(index) <= EXACT_SEARCH_BELOW,
        threads=threads,
        dtype=ScalarKind.Unknown,
    )
    return keys, distances, counts


def _keys(keys: _Keys) -> np.ndarray[Any, np.dtype[np.uint64]]:
    array = np.asarray(keys)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.size and array.dtype.kind == "i" and int(array.min()) < 0:
        raise VectorError("keys must be non-negative")
    return np.ascontiguousarray(array.astype(np.uint64, copy=False).reshape(-1))


def background_threads() -> int:
    """Native threads for background work: every core this process may use but one (the loop's)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def _write(index: Index, path: Path) -> None:
    """Writes a usearch index to ``path`` atomically: a temporary file, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        index.save(str(temporary))
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In a forked child: be killed when the parent dies (Linux), and stop if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            _libc().prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # SIGKILL
    if os.getppid() != parent:
        raise ChildProcessError("the parent is gone")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
