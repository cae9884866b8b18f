"""Suite ``cache``: LookupCache at 100k entries against bare grpc.aio, and the raw indexes.

The data behave like real embeddings: 384-d unit vectors on a 24-d latent
subspace plus a little noise (low intrinsic dimension; iid random vectors
are a poor test for graph indexes). Every process regenerates the same rows
from a seed, chunk by chunk. Entries are bulk-loaded once per (entries,
dtype) into a data folder kept under the system temp folder
(``are-bench-cache/``), reused by later runs; each sidecar contender then
restarts on it (a memory-mapped index restore).

Latency contenders, one operation each, against the echo baseline of the
same run:

* ``exact-hit``: LookupCache by prompt, answered by the exact tier;
* ``exact-hit-first``: the same, but every prompt asked for the first time
  in that sidecar's life (a cold entry: its body read from LMDB);
* ``semantic-hit``: LookupCache by vector (a stored vector plus noise),
  answered by the semantic tier;
* ``miss``: LookupCache by an unrelated vector (searched, below threshold);
* ``usearch-inproc``: the raw usearch index (the sidecar's saved file,
  loaded in memory), one query per call, in-process, at the ef the sidecar
  searches with (asked of a sidecar on the folder, calibration settled):
  what gRPC and Python add is the difference to ``semantic-hit``;
* ``hnswlib-inproc``: hnswlib (M=16) on the same vectors, in-process, at the
  same ef; needs the ``bench-cache`` extra, reported skipped without it;
* ``gptcache-exact``, ``gptcache-semantic``, ``gptcache-miss``: GPTCache
  (``bench-cache`` extra) doing the same three lookups on the same vectors,
  in-process (``gptcache.adapter.api.get``; no server, so no gRPC cost),
  with its own stores: SQLite through SQLAlchemy for the entries and its
  hnswlib vector store (M=16, ef_construction 100, search ef raised to 64 as
  for ``hnswlib-inproc``), its ``SearchDistanceEvaluation`` with the same
  cosine threshold, its hit reports disabled (a SQLite row per hit), its
  LRU bound above the entry count, and its SQLite tables indexed on
  ``question_id`` (its schema has no index there, so each hit would scan
  them; that cost it ~4x at 100k).
  GPTCache has no exact tier: its "exact" lookup embeds the stored prompt
  (here a table look-up of the stored vector) and searches. Two defects of
  GPTCache 0.1.44 are worked around and reported: its hnswlib store returns
  numpy labels that SQLAlchemy never matches (every lookup misses; we return
  ``int`` labels, as its faiss store does), and its usearch store does not
  run on usearch 2.x (so hnswlib it is). This is GPTCache *tuned in its
  favour*.
* ``gptcache-default-exact``, ``-semantic``, ``-miss``: GPTCache *as its
  README sets it up*: ``get_data_manager(CacheBase("sqlite"),
  VectorBase("faiss", dimension=384))`` (a faiss ``IDMap,Flat`` index: brute
  force) and ``SearchDistanceEvaluation()``, with only ``max_size`` raised
  above the entry count (its default of 1,000 evicts the rest at import)
  and the threshold set to the same cosine 0.9; hit reports on, SQLite
  schema as it makes it. Needs ``faiss-cpu`` (``bench-cache``). Its folder
  copies the tuned store's SQLite file and drops our indexes.

Every lookup client asks each of its lookups once, untimed, then (for
vector lookups) waits for the calibration of the search expansion they
start, and reports the ef it timed, the calibration's recall and the
lookups that did not answer as meant (as facts under the table and in the
JSON); GPTCache's clients ask theirs once too.

Concurrent lookups: the harness's ``--concurrency C`` runs C lookups in
flight from one client; with it, ``exact-hit``/``semantic-hit``/``miss``
measure the sidecar's throughput under C concurrent callers.

Settings: ``ARE_BENCH_CACHE_ENTRIES`` (default 100000),
``ARE_BENCH_CACHE_DTYPE`` (f32, f16 or i8; default f32),
``ARE_BENCH_CACHE_CONTENDERS`` (comma-separated contender names to keep,
default all; at 1M entries the peers' own builds take long),
``ARE_BENCH_CACHE_EF`` (a fixed search expansion; default calibrated) and
``ARE_BENCH_CACHE_RECALL_TARGET`` (the recall@1 the calibration must reach,
for example the issue's 0.99; default the sidecar's, 0.995).

``python -m benchmarks.cache [--entries N] [--dtypes f32,f16,i8] [--peers]``
prints the figures the harness does not: bulk store throughput (entries/s),
recall@1 of the graph search against exact search per dtype at the ef in
force, on 2,500 held-out queries (another seed, drawn over every entry;
Wilson's 95% interval), the time from starting a sidecar on the folder to
serving and to its first semantic answer (``--restarts N`` starts), whether
lookups over gRPC answer with the right entry, and with ``--peers`` the same
for hnswlib (at the ef in force and at 64) and GPTCache. ``--ratios PATH``
reads a harness ``--json`` file and prints GPTCache's latencies as ratios to
ARE's and to echo's (each row first divided by the echo timed with it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from benchmarks._echo import echo_contender
from benchmarks._harness import Contender, Operation, Suite, missing_requirements, record_fact
from benchmarks._process import sidecar_env
from benchmarks._stats import wilson_interval

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

__all__ = ["SUITE", "build_folder", "dataset_rows", "main"]

SIDECAR_REQUIRES = ("are_sdk.testing", "sidecar")
DIMENSION = 384
LATENT = 24
NOISE = 0.02
QUERY_NOISE = 0.01
CHUNK = 10_000
SEED = 20261125
NAMESPACE = "bench:vectors"
THRESHOLD = 0.9
QUERIES = 2_500  # more than a calibration takes (2,048 lookups): the first pass calibrates
# recall@1's and correctness's queries: other rows and noise than the timed (and calibrated) ones
HELD_OUT = 2_500
HELD_OUT_SEED = SEED + 11
CALIBRATION_WAIT_S = 180.0  # the longest a client waits for a calibration to settle
SETUP_SECONDS = CALIBRATION_WAIT_S + 60.0  # a lookup client's prepass and wait, beyond its loops
RPC_TIMEOUT_S = 60.0  # the deadline of every set-up RPC
PREPASS_MAX_S = 120.0  # GPTCache's untimed pass stops here (at 1M entries its README setup is slow)
_FIRST_TOUCH = 30_000  # exact-first's distinct prompts (more timed lookups than this repeat some)
CHECKS = HELD_OUT  # lookups per correctness figure
GPTCACHE_REQUIRES = ("gptcache", "sqlalchemy", "hnswlib")
GPTCACHE_DEFAULT_REQUIRES = ("gptcache", "sqlalchemy", "faiss")
FORMAT = 1  # bump when the folder layout changes


def _entries() -> int:
    return int(os.environ.get("ARE_BENCH_CACHE_ENTRIES", "100000"))


def _dtype() -> str:
    return os.environ.get("ARE_BENCH_CACHE_DTYPE", "f32")


def _expansion() -> int:
    """The namespace's search expansion to time (``ARE_BENCH_CACHE_EF``); 0: the dtype's default."""
    return int(os.environ.get("ARE_BENCH_CACHE_EF", "0"))


def _recall_target() -> float:
    """The namespace's recall@1 target (``ARE_BENCH_CACHE_RECALL_TARGET``); 0: the sidecar's default."""
    return float(os.environ.get("ARE_BENCH_CACHE_RECALL_TARGET", "0"))


def _settings(entries: int, dtype: str) -> Any:
    from are_core.cache import NamespaceSettings  # noqa: PLC0415

    return NamespaceSettings(
        name=NAMESPACE,
        embedder="caller",
        dimension=DIMENSION,
        vector_dtype=dtype,
        similarity_threshold=THRESHOLD,
        max_entries=max(entries, 1),
        max_bytes=1 << 40,
        search_expansion=_expansion(),
        recall_target=_recall_target(),
    )


def _basis() -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((LATENT, DIMENSION)).astype(np.float32)


def _chunk(index: int, basis: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng([SEED, index])
    rows: np.ndarray = rng.standard_normal((CHUNK, LATENT)).astype(np.float32) @ basis
    rows += NOISE * np.sqrt(LATENT) * rng.standard_normal((CHUNK, DIMENSION)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def dataset_rows(start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the dataset (the same in every process)."""
    basis = _basis()
    parts = []
    for c in range(start // CHUNK, (stop - 1) // CHUNK + 1):
        rows = _chunk(c, basis)
        lo, hi = max(start - c * CHUNK, 0), min(stop - c * CHUNK, CHUNK)
        parts.append(rows[lo:hi])
    out: np.ndarray = np.concatenate(parts)
    return out


def _prompt(i: int) -> str:
    return f"cached prompt number {i}: what does entry {i} say?"


def _sample(entries: int, seed: int = SEED + 1, size: int = QUERIES) -> np.ndarray:
    """Query row ids, drawn uniformly over every entry."""
    return np.random.default_rng(seed).integers(0, entries, size=size)


def rows_at(ids: np.ndarray) -> np.ndarray:
    """The dataset's rows ``ids`` (in that order), regenerating only the chunks that hold them."""
    out = np.empty((len(ids), DIMENSION), dtype=np.float32)
    basis = _basis()
    chunks = ids // CHUNK
    for c in np.unique(chunks):
        where = np.flatnonzero(chunks == c)
        out[where] = _chunk(int(c), basis)[ids[where] - c * CHUNK]
    return out


@functools.cache
def _noisy_queries(entries: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    ids = _sample(entries, seed, size)
    rows = rows_at(ids)
    rng = np.random.default_rng(seed + 1)
    queries = rows + QUERY_NOISE * rng.standard_normal(rows.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return ids, queries.astype(np.float32)


def _semantic_queries(entries: int) -> tuple[np.ndarray, np.ndarray]:
    """The timed semantic lookups: noisy copies of ``QUERIES`` stored vectors (also what calibrates)."""
    return _noisy_queries(entries, SEED + 1, QUERIES)


def held_out_queries(entries: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall's and correctness's lookups: ``HELD_OUT`` noisy copies drawn with another seed.

    Neither timed nor seen by the sidecar's calibration (which measures
    recall on the namespace's own lookups, the timed ones).
    """
    return _noisy_queries(entries, HELD_OUT_SEED, HELD_OUT)


def _miss_queries() -> np.ndarray:
    rng = np.random.default_rng(SEED + 3)
    queries: np.ndarray = rng.standard_normal((QUERIES, DIMENSION)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries


def _exact_top1(queries: np.ndarray, entries: int) -> np.ndarray:
    """The row id of each query's nearest stored vector (brute force, f32)."""
    best = np.full(queries.shape[0], -np.inf, dtype=np.float32)
    rows_of = np.zeros(queries.shape[0], dtype=np.int64)
    basis = _basis()
    for c in range((entries + CHUNK - 1) // CHUNK):
        scores = queries @ _chunk(c, basis)[: entries - c * CHUNK].T
        top = scores.argmax(axis=1)
        better = scores[np.arange(queries.shape[0]), top] > best
        best[better] = scores[np.arange(queries.shape[0]), top][better]
        rows_of[better] = c * CHUNK + top[better]
    return rows_of


def _answer(i: int) -> str:
    """The response stored with row ``i`` (GPTCache's answers name their entry)."""
    return '{"answer": "' + "x" * 48 + f'", "entry": {i}}}'


# -- the data folder (built in the runner, reused across contenders and runs) --


def _folder(entries: int, dtype: str) -> Path:
    return Path(tempfile.gettempdir()) / "are-bench-cache" / f"v{FORMAT}-{entries}-{dtype}"


def build_folder(entries: int, dtype: str) -> tuple[Path, dict[str, Any]]:
    """The data folder holding ``entries`` entries in a ``dtype`` namespace, built if needed.

    Returns the folder and its build figures (``store_per_s`` etc.).
    """
    folder = _folder(entries, dtype)
    marker = folder / "built.json"
    if marker.is_file():
        figures: dict[str, Any] = json.loads(marker.read_text())
        return folder / "data", figures
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    figures = asyncio.run(_build(folder / "data", entries, dtype))
    marker.write_text(json.dumps(figures))
    return folder / "data", figures


async def _build(data: Path, entries: int, dtype: str) -> dict[str, Any]:
    from are_core.cache import CACHE_TABLES, CacheEngine  # noqa: PLC0415
    from are_core.storage import GroupCommitter, Storage  # noqa: PLC0415

    storage = Storage.open(data, tables=CACHE_TABLES)
    committer = GroupCommitter(storage)
    engine = CacheEngine(storage, committer, index_dir=data / "indexes" / "cache")
    await engine.start()
    await engine.put_namespace(_settings(entries, dtype))
    response = b'{"answer": "' + b"x" * 48 + b'"}'
    basis = _basis()
    started = time.perf_counter()
    for c in range((entries + CHUNK - 1) // CHUNK):
        rows = _chunk(c, basis)[: entries - c * CHUNK]
        prompts = [_prompt(c * CHUNK + i) for i in range(rows.shape[0])]
        await engine.store_many(
            NAMESPACE, prompts, [response] * len(prompts), vectors=rows, content_type="application/json"
        )
        print(f"cache: stored {min((c + 1) * CHUNK, entries):,} / {entries:,}", file=sys.stderr, flush=True)
    stored_s = time.perf_counter() - started
    started = time.perf_counter()
    await engine.stop()
    save_s = time.perf_counter() - started
    await committer.aclose()
    storage.close()
    return {
        "entries": entries,
        "dtype": dtype,
        "store_s": stored_s,
        "store_per_s": entries / stored_s,
        "save_s": save_s,
    }


def _index_file(data: Path, dtype: str) -> Path:
    return data / "indexes" / "cache" / f"{NAMESPACE}.{dtype}.usearch"


@contextlib.contextmanager
def _sidecar(entries: int, dtype: str) -> Iterator[str]:
    from are_sdk.testing import SidecarProcess  # noqa: PLC0415 - an optional dependency

    data, figures = build_folder(entries, dtype)
    started = time.perf_counter()
    with SidecarProcess.start(data_dir=data, env=sidecar_env()) as sidecar:
        ready = time.perf_counter() - started
        expansion = asyncio.run(_put_settings(sidecar.target, entries, dtype))
        settled = _huge_pages_settled(sidecar.pid)
        print(
            f"cache: {entries:,} {dtype} entries (bulk store {figures['store_per_s']:,.0f}/s); "
            f"sidecar serving {ready:.2f}s after start; search expansion {expansion} at the start "
            "(a calibrated one may change: each row reports the one it timed); "
            + (f"index moved into huge pages {settled:.1f}s later" if settled else "no huge pages"),
            file=sys.stderr,
            flush=True,
        )
        yield sidecar.target


def _anon_huge_bytes(pid: int) -> int:
    """The process's memory in transparent huge pages (``AnonHugePages``), 0 if unknown."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in rollup.splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    return 0


def _huge_pages_settled(pid: int, *, quiet_s: float = 1.0, limit_s: float = 60.0) -> float:
    """Waits (at most ``limit_s``) until a start has moved its restored index into huge pages.

    A sidecar serves a restored index from its file's mapping at once, and
    moves it into huge pages in a worker thread (about a second at 1M i8
    entries), which competes with the timed loop for the sidecar's CPU: a
    loop started meanwhile measures the move. Settled: the process's huge
    pages stopped growing for ``quiet_s``. Returns the seconds waited, 0
    when the process has no huge pages after ``quiet_s`` (none available).
    """
    began = time.monotonic()
    last, since = _anon_huge_bytes(pid), began
    while time.monotonic() - began < limit_s:
        time.sleep(0.1)
        now = _anon_huge_bytes(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return time.monotonic() - began if last else 0.0


async def _put_settings(target: str, entries: int, dtype: str) -> int:
    """Puts the benchmark's namespace settings (a folder keeps the search expansion of its last run)."""
    from are_sdk import Client  # noqa: PLC0415 - an optional dependency

    settings = _settings(entries, dtype)
    async with await Client.connect(target, timeout=RPC_TIMEOUT_S) as client:
        put = client.cache.put_namespace(
            NAMESPACE,
            embedder=settings.embedder,
            dimension=settings.dimension,
            vector_dtype=dtype,
            similarity_threshold=settings.similarity_threshold,
            max_entries=settings.max_entries,
            max_bytes=settings.max_bytes,
            search_expansion=settings.search_expansion,
            recall_target=settings.recall_target,
        )
        namespace = await asyncio.wait_for(put, RPC_TIMEOUT_S)
    return namespace.search_expansion


def _inproc_target(path: Path | str, state: CacheState) -> str:
    source = "fixed" if state.fixed else ("calibrated" if state.recall_samples else "default")
    return msgspec.json.encode(
        InprocTarget(path=str(path), search_expansion=state.search_expansion, ef_source=source)
    ).decode()


@contextlib.contextmanager
def _index_path(entries: int, dtype: str) -> Iterator[str]:
    """The saved index and the ef the sidecar searches it at (see :func:`ef_in_force`)."""
    data, _ = build_folder(entries, dtype)
    state = ef_in_force(entries, dtype)
    yield _inproc_target(_index_file(data, dtype), state)


@contextlib.contextmanager
def _hnswlib_target(entries: int, dtype: str) -> Iterator[str]:
    """hnswlib's index file, and the sidecar's ef in force (hnswlib is searched at the same ef)."""
    state = ef_in_force(entries, dtype)
    with _hnswlib_path(entries) as path:
        yield _inproc_target(path, state)


@contextlib.contextmanager
def _hnswlib_path(entries: int) -> Iterator[str]:
    path = _folder(entries, "hnswlib") / "index.bin"
    if not path.is_file():
        import hnswlib  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415

        path.parent.mkdir(parents=True, exist_ok=True)
        index = hnswlib.Index(space="cosine", dim=DIMENSION)
        index.init_index(max_elements=entries, ef_construction=64, M=16)
        for c in range((entries + CHUNK - 1) // CHUNK):
            rows = dataset_rows(c * CHUNK, min((c + 1) * CHUNK, entries))
            index.add_items(rows, np.arange(c * CHUNK, c * CHUNK + rows.shape[0]), num_threads=2)
        index.save_index(str(path))
    yield str(path)


def _gptcache_open(
    folder: Path, entries: int, embed: Callable[[str], np.ndarray], *, writable: bool = False
) -> tuple[Any, Any]:
    """GPTCache on the folder's SQLite file and hnswlib index: (cache, data manager).

    ``embed`` maps a prompt to its vector (the embedder GPTCache calls).
    Unless ``writable``, the index is never saved (GPTCache saves it at exit).
    """
    from gptcache import Cache, Config  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    from gptcache.manager import CacheBase, get_data_manager  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    from gptcache.manager.vector_data.hnswlib_store import Hnswlib  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    from gptcache.processor.pre import get_prompt  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    from gptcache.similarity_evaluation import SearchDistanceEvaluation  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415

    # GPTCache is an optional peer, untyped when installed: its class is Any to mypy.
    class IntLabels(Hnswlib):  # type: ignore[misc,unused-ignore]
        """GPTCache's hnswlib store, searching with ef 64 and returning ``int`` labels.

        Its own returns ``numpy.uint64`` labels, which its SQLAlchemy store
        binds so that no row matches: every lookup would miss. Its search
        ef after a load is hnswlib's default, 10.
        """

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._index.set_ef(64)

        def search(self, data: np.ndarray, top_k: int = -1) -> list[tuple[float, int]]:
            return [(float(d), int(i)) for d, i in super().search(data, top_k)]

        def flush(self) -> None:
            if writable:
                super().flush()

    vectors = IntLabels(
        index_file_path=str(folder / "hnswlib.bin"), dimension=DIMENSION, top_k=1, max_elements=entries
    )
    data_manager = get_data_manager(
        CacheBase("sqlite", sql_url=f"sqlite:///{folder / 'sqlite.db'}"), vectors, max_size=entries + 1
    )
    cache = Cache()
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=lambda data, **_: embed(data),
        data_manager=data_manager,
        # hnswlib "l2" is the squared distance, 2 - 2 cos on unit vectors:
        # the score 2 - distance = 2 cos reaches 2 * threshold when cos does.
        similarity_evaluation=SearchDistanceEvaluation(max_distance=2.0),
        config=Config(similarity_threshold=THRESHOLD, disable_report=True),
    )
    return cache, data_manager


def _no_embedder(prompt: str) -> np.ndarray:
    raise RuntimeError(f"no vector for {prompt!r}")


def _gptcache_indexes(folder: Path) -> None:
    """Indexes GPTCache's SQLite tables on ``question_id``, in its favour.

    Its schema has none, so each hit's answer, dependency and session
    queries scan their whole table: several milliseconds at 100k entries.
    """
    import sqlite3  # noqa: PLC0415

    with contextlib.closing(sqlite3.connect(folder / "sqlite.db")) as db:
        for table in ("gptcache_answer", "gptcache_question_dep", "gptcache_session"):
            db.execute(f"CREATE INDEX IF NOT EXISTS {table}_question_id ON {table} (question_id)")
        db.commit()


def build_gptcache(entries: int) -> tuple[Path, dict[str, Any]]:
    """GPTCache's folder holding the same ``entries`` (built if needed) and its build figures."""
    folder = _folder(entries, "gptcache")
    marker = folder / "built.json"
    if marker.is_file():
        figures: dict[str, Any] = json.loads(marker.read_text())
        _gptcache_indexes(folder)
        return folder, figures
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _, data_manager = _gptcache_open(folder, entries, _no_embedder, writable=True)
    basis = _basis()
    started = time.perf_counter()
    for c in range((entries + CHUNK - 1) // CHUNK):
        rows = _chunk(c, basis)[: entries - c * CHUNK]
        ids = range(c * CHUNK, c * CHUNK + rows.shape[0])
        data_manager.import_data(
            [_prompt(i) for i in ids], [_answer(i) for i in ids], list(rows), [None] * len(ids)
        )
        print(f"gptcache: stored {ids.stop:,} / {entries:,}", file=sys.stderr, flush=True)
    data_manager.flush()
    stored_s = time.perf_counter() - started
    data_manager.close()
    _gptcache_indexes(folder)
    figures = {"entries": entries, "store_s": stored_s, "store_per_s": entries / stored_s}
    marker.write_text(json.dumps(figures))
    return folder, figures


@contextlib.contextmanager
def _gptcache_path(entries: int) -> Iterator[str]:
    folder, figures = build_gptcache(entries)
    print(f"gptcache: {entries:,} entries (bulk import {figures['store_per_s']:,.0f}/s)", file=sys.stderr)
    yield str(folder)


def _gptcache_default_open(folder: Path, entries: int, embed: Callable[[str], np.ndarray]) -> tuple[Any, Any]:
    """GPTCache set up as its README does: SQLite, ``VectorBase("faiss")``, ``SearchDistanceEvaluation()``.

    Only what a user with this many entries must change is changed:
    ``max_size`` above the entry count (its default, 1,000, evicts all but
    1,000 entries at import), and the similarity threshold, 0.95, which is
    cosine 0.9 under its default evaluation (score 4 - squared L2 = 2 + 2 cos,
    compared with 4 x threshold). Its hit reports stay on (a SQLite row per
    hit), its tables keep its schema (no index on ``question_id``).
    """
    from gptcache import Cache, Config  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    from gptcache.manager import CacheBase, VectorBase, get_data_manager  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    from gptcache.processor.pre import get_prompt  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    from gptcache.similarity_evaluation import SearchDistanceEvaluation  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415

    data_manager = get_data_manager(
        CacheBase("sqlite", sql_url=f"sqlite:///{folder / 'sqlite.db'}"),
        VectorBase("faiss", dimension=DIMENSION, index_path=str(folder / "faiss.index")),
        max_size=entries + 1,
    )
    cache = Cache()
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=lambda data, **_: embed(data),
        data_manager=data_manager,
        similarity_evaluation=SearchDistanceEvaluation(),
        config=Config(similarity_threshold=(1.0 + THRESHOLD) / 2),
    )
    return cache, data_manager


def build_gptcache_default(entries: int) -> tuple[Path, dict[str, Any]]:
    """GPTCache's default setup on the same entries: a copy of the tuned store's SQLite file
    (its own schema, without our indexes) and a faiss ``IDMap,Flat`` index, as ``VectorBase("faiss")``
    builds it, under the same ids. Built if needed."""
    folder = _folder(entries, "gptcache-faiss")
    marker = folder / "built.json"
    if marker.is_file():
        figures: dict[str, Any] = json.loads(marker.read_text())
        return folder, figures
    from gptcache.manager.vector_data.base import VectorData  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    from gptcache.manager.vector_data.faiss import Faiss  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415

    source, _ = build_gptcache(entries)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    shutil.copyfile(source / "sqlite.db", folder / "sqlite.db")
    import sqlite3  # noqa: PLC0415

    with contextlib.closing(sqlite3.connect(folder / "sqlite.db")) as db:
        for table in ("gptcache_answer", "gptcache_question_dep", "gptcache_session"):
            db.execute(f"DROP INDEX IF EXISTS {table}_question_id")
        db.execute("DELETE FROM gptcache_report")
        db.commit()
    store = Faiss(str(folder / "faiss.index"), DIMENSION, 1)
    basis = _basis()
    for c in range((entries + CHUNK - 1) // CHUNK):
        rows = _chunk(c, basis)[: entries - c * CHUNK]
        # GPTCache's question ids are SQLite's, 1-based in import order.
        store.mul_add([VectorData(id=c * CHUNK + i + 1, data=row) for i, row in enumerate(rows)])
    store.flush()
    figures = {"entries": entries, "store_s": time.perf_counter() - started}
    marker.write_text(json.dumps(figures))
    return folder, figures


@contextlib.contextmanager
def _gptcache_default_path(entries: int) -> Iterator[str]:
    folder, _ = build_gptcache_default(entries)
    print(f"gptcache (default setup, faiss flat): {entries:,} entries", file=sys.stderr)
    yield str(folder)


def _gptcache_lookups(kind: str, entries: int) -> tuple[list[str], dict[str, np.ndarray], list[str | None]]:
    """GPTCache's prompts for a kind of lookup, their vectors, and the answers expected."""
    if kind == "exact":
        ids = _sample(entries)
        rows = rows_at(ids)
        prompts = [_prompt(int(i)) for i in ids]
        return (
            prompts,
            dict(zip(prompts, rows, strict=True)),
            [_answer(int(i)) for i in ids],
        )
    if kind == "semantic":
        ids, queries = _semantic_queries(entries)
        prompts = [f"semantic query {j}" for j in range(QUERIES)]
        return prompts, dict(zip(prompts, queries, strict=True)), [_answer(int(i)) for i in ids]
    prompts = [f"unrelated query {j}" for j in range(QUERIES)]
    return prompts, dict(zip(prompts, _miss_queries(), strict=True)), [None] * QUERIES


# -- clients (in the client process) -------------------------------------


def lookup_requests(kind: str, entries: int) -> list[Any]:
    """The timed LookupCache requests of ``kind``: exact, exact-first, semantic or miss.

    ``exact`` cycles over the same 2,000 prompts; ``exact-first`` over
    ``_FIRST_TOUCH`` distinct ones, spread over every entry.
    """
    from are_sdk._proto.are.v1 import cache_service_pb2, common_pb2  # noqa: PLC0415

    if kind in ("exact", "exact-first"):
        ids = (
            _sample(entries)
            if kind == "exact"
            else np.random.default_rng(SEED + 4).permutation(entries)[:_FIRST_TOUCH]
        )
        return [
            cache_service_pb2.LookupCacheRequest(namespace=NAMESPACE, prompt=_prompt(int(i))) for i in ids
        ]
    queries = _semantic_queries(entries)[1] if kind == "semantic" else _miss_queries()
    return [
        cache_service_pb2.LookupCacheRequest(namespace=NAMESPACE, vector=common_pb2.Vector(values=q.tolist()))
        for q in queries
    ]


class CacheState(msgspec.Struct, frozen=True, kw_only=True):
    """The namespace's search expansion in force and its calibration, from GetCacheStats.

    Attributes:
        search_expansion: The ef its searches use now.
        fixed: Whether the benchmark fixed it (``ARE_BENCH_CACHE_EF``).
        measured_recall: The recall@1 its last calibration measured on the
            namespace's own lookups (in-sample: the timed queries); 0 if none.
        recall_samples: The lookups that calibration used.
        calibrating: Whether a calibration is running.
        entries: The namespace's entries.
    """

    search_expansion: int
    fixed: bool
    measured_recall: float
    recall_samples: int
    calibrating: bool
    entries: int

    def describe(self) -> str:
        """One line: the ef in force and where it comes from."""
        if self.fixed:
            return f"search expansion {self.search_expansion} (fixed by ARE_BENCH_CACHE_EF)"
        if self.recall_samples:
            return (
                f"search expansion {self.search_expansion} (calibrated: recall@1 {self.measured_recall:.4f} "
                f"on {self.recall_samples:,} of the sidecar's own lookups)"
            )
        return f"search expansion {self.search_expansion} (the dtype's default, not calibrated)"

    def record(self) -> None:
        """Records the ef in force and the calibration as facts of the row being timed."""
        record_fact("search_expansion", self.search_expansion)
        if self.fixed:
            record_fact("ef_source", "fixed (ARE_BENCH_CACHE_EF)")
        elif self.recall_samples:
            record_fact("ef_source", "calibrated")
            record_fact("calibration_recall", self.measured_recall)
            record_fact("calibration_lookups", self.recall_samples)
        else:
            record_fact("ef_source", "default (not calibrated)")


async def _cache_state(stub: Any) -> CacheState:
    from are_sdk._proto.are.v1 import cache_service_pb2  # noqa: PLC0415

    request = cache_service_pb2.GetCacheStatsRequest(namespace=NAMESPACE)
    [stats] = (await stub.GetCacheStats(request, timeout=RPC_TIMEOUT_S)).stats
    return CacheState(
        search_expansion=stats.search_expansion,
        fixed=bool(_expansion()),
        measured_recall=stats.measured_recall,
        recall_samples=stats.recall_samples,
        calibrating=stats.calibrating,
        entries=stats.entries,
    )


async def _calibrated(stub: Any) -> CacheState:
    """Waits (at most ``CALIBRATION_WAIT_S``) until the namespace's search expansion was calibrated.

    The pass over every request just made gives the sidecar the lookups it
    measures recall on; the measurement runs in a child at idle priority and
    would otherwise overlap the timed loop, and end with another ef than
    the one timed at first. A folder keeps its calibration (an hour).

    Raises:
        TimeoutError: The calibration did not settle in time (timing then
            would measure it).
    """
    from are_core.vector import EXACT_SEARCH_BELOW  # noqa: PLC0415

    state = await _cache_state(stub)
    if state.fixed or state.entries <= EXACT_SEARCH_BELOW:
        return state
    await asyncio.sleep(1.5)  # the flush loop starts a due calibration within a second
    deadline = time.monotonic() + CALIBRATION_WAIT_S
    while True:
        state = await _cache_state(stub)
        if state.recall_samples and not state.calibrating:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the search expansion's calibration did not settle within {CALIBRATION_WAIT_S:g} s "
                f"({state.describe()}, calibrating {state.calibrating})"
            )
        await asyncio.sleep(0.25)


async def settle(target: str, entries: int) -> CacheState:
    """Asks every timed semantic lookup once, then waits for the calibration they start; the state then."""
    import grpc.aio  # noqa: PLC0415

    from are_sdk._proto.are.v1 import cache_service_pb2_grpc  # noqa: PLC0415

    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), RPC_TIMEOUT_S)
        stub = cache_service_pb2_grpc.CacheServiceStub(channel)
        if not _expansion():
            for request in lookup_requests("semantic", entries):
                await stub.LookupCache(request, timeout=RPC_TIMEOUT_S)
        return await _calibrated(stub)


async def state_of(target: str) -> CacheState:
    """The namespace's state now (GetCacheStats), without waiting."""
    import grpc.aio  # noqa: PLC0415

    from are_sdk._proto.are.v1 import cache_service_pb2_grpc  # noqa: PLC0415

    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), RPC_TIMEOUT_S)
        return await _cache_state(cache_service_pb2_grpc.CacheServiceStub(channel))


@functools.cache
def ef_in_force(entries: int, dtype: str) -> CacheState:
    """The search expansion the sidecar searches ``entries`` ``dtype`` entries with, once calibrated.

    Starts a sidecar on the folder, asks the timed semantic lookups once and
    waits for the calibration they start (or takes ``ARE_BENCH_CACHE_EF``):
    what the in-process indexes and recall@1 are then measured at, so that
    they match the sidecar's rows. Cached per process.
    """
    with _sidecar(entries, dtype) as target:
        state = asyncio.run(settle(target, entries))
    print(f"cache: {state.describe()}", file=sys.stderr, flush=True)
    return state


class InprocTarget(msgspec.Struct, frozen=True, kw_only=True):
    """What an in-process contender's client gets as its target: a file and the ef to search it at."""

    path: str
    search_expansion: int
    ef_source: str


@contextlib.asynccontextmanager
async def _lookup_client(target: str | None, *, kind: str, entries: int) -> AsyncIterator[Operation]:
    import grpc.aio  # noqa: PLC0415

    from are_sdk._proto.are.v1 import cache_service_pb2_grpc  # noqa: PLC0415

    if target is None:
        raise ValueError("the lookup client needs a sidecar target")
    requests = lookup_requests(kind, entries)
    expect_hit = kind != "miss"
    # A semantic lookup may miss where the index's recall@1 falls short (at
    # most 1% with the default target); every other kind answers as meant.
    allowed = len(requests) // 100 if kind == "semantic" else 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = cache_service_pb2_grpc.CacheServiceStub(channel)
        await asyncio.wait_for(channel.channel_ready(), RPC_TIMEOUT_S)
        # Every request once, untimed (but exact-first's): a timed lookup is
        # then one the sidecar answered before, as in a cache in use, not a
        # mix of first touches and repeats that depends on --requests.
        wrong = 0
        for request in requests[:1] if kind == "exact-first" else requests:
            answer = await stub.LookupCache(request, timeout=RPC_TIMEOUT_S)
            wrong += answer.hit != expect_hit
        if wrong > allowed:
            raise ValueError(f"{kind}: {wrong} of {len(requests)} lookups did not answer as meant")
        if wrong:
            print(f"cache: {wrong} of {len(requests)} semantic lookups missed", file=sys.stderr, flush=True)
        # Vector lookups (semantic and miss) start a calibration: wait it out before timing.
        before = await (_calibrated(stub) if kind in ("semantic", "miss") else _cache_state(stub))
        before.record()
        print(f"cache: {kind}: {before.describe()}", file=sys.stderr, flush=True)
        position = 0
        timed = 0
        timed_wrong = 0

        async def operation() -> object:
            nonlocal position, timed, timed_wrong
            position = (position + 1) % len(requests)
            answer = await stub.LookupCache(requests[position])
            timed += 1
            timed_wrong += answer.hit != expect_hit
            return answer

        yield operation
        after = await _cache_state(stub)
        record_fact("not_as_meant", f"{timed_wrong} of {timed}")
        if after.search_expansion != before.search_expansion or after.calibrating:
            record_fact(
                "calibrated_during_timing",
                f"ef {before.search_expansion} -> {after.search_expansion}, calibrating {after.calibrating}",
            )
        if timed_wrong > (timed // 100 if kind == "semantic" else 0):
            raise ValueError(f"{kind}: {timed_wrong} of {timed} timed lookups did not answer as meant")


@contextlib.asynccontextmanager
async def _usearch_client(target: str | None, *, entries: int) -> AsyncIterator[Operation]:
    from usearch.index import Index  # noqa: PLC0415

    if target is None:
        raise ValueError("needs the index file")
    where = msgspec.json.decode(target, type=InprocTarget)
    index = Index.restore(where.path, view=False)  # in memory, as the sidecar searches it
    index.expansion_search = where.search_expansion  # the sidecar's, in force
    record_fact("search_expansion", where.search_expansion)
    record_fact("ef_source", f"the sidecar's ({where.ef_source})")
    queries = _semantic_queries(entries)[1]
    position = 0

    async def operation() -> object:
        nonlocal position
        position = (position + 1) % len(queries)
        return index.search(queries[position], 1)

    yield operation


@contextlib.asynccontextmanager
async def _hnswlib_client(target: str | None, *, entries: int) -> AsyncIterator[Operation]:
    import hnswlib  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415

    if target is None:
        raise ValueError("needs the index file")
    where = msgspec.json.decode(target, type=InprocTarget)
    index = hnswlib.Index(space="cosine", dim=DIMENSION)
    index.load_index(where.path, max_elements=entries)
    index.set_ef(where.search_expansion)  # the ef ARE's sidecar searches at (recall: the figures tool)
    index.set_num_threads(1)
    record_fact("search_expansion", where.search_expansion)
    record_fact("ef_source", f"the sidecar's ({where.ef_source})")
    queries = _semantic_queries(entries)[1]
    position = 0

    async def operation() -> object:
        nonlocal position
        position = (position + 1) % len(queries)
        return index.knn_query(queries[position : position + 1], k=1)

    yield operation


@contextlib.asynccontextmanager
async def _gptcache_client(
    target: str | None, *, kind: str, entries: int, default: bool = False
) -> AsyncIterator[Operation]:
    from gptcache.adapter.api import get  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415

    if target is None:
        raise ValueError("needs GPTCache's folder")
    prompts, vectors, expected = _gptcache_lookups(kind, entries)
    opener = _gptcache_default_open if default else _gptcache_open
    cache, _ = opener(Path(target), entries, vectors.__getitem__)
    # Every lookup once, untimed, as ARE's clients do (its SQLite pages and
    # index nodes then warm as in a cache in use), within PREPASS_MAX_S; its
    # answers checked.
    wrong, asked = 0, 0
    deadline = time.monotonic() + PREPASS_MAX_S
    for prompt, answer in zip(prompts, expected, strict=True):
        if time.monotonic() > deadline:
            break
        wrong += get(prompt, cache_obj=cache) != answer
        asked += 1
    if wrong > (asked // 100 if kind == "semantic" else 0):
        raise ValueError(f"gptcache {kind}: {wrong} of {asked} lookups did not answer as meant")
    record_fact("prepass", f"{asked} of {len(prompts)} lookups, {wrong} not as meant")
    position = 0

    async def operation() -> object:
        nonlocal position
        position = (position + 1) % len(prompts)
        return get(prompts[position], cache_obj=cache)

    yield operation


def _keep(*contenders: Contender) -> tuple[Contender, ...]:
    """The contenders ``ARE_BENCH_CACHE_CONTENDERS`` names (all when unset)."""
    names = os.environ.get("ARE_BENCH_CACHE_CONTENDERS", "")
    if not names:
        return contenders
    wanted = set(names.split(","))
    return tuple(c for c in contenders if c.name in wanted)


def _suite() -> Suite:
    entries, dtype = _entries(), _dtype()
    sidecar = functools.partial(_sidecar, entries, dtype)
    return Suite(
        name="cache",
        description=f"LookupCache, {entries:,} 384-d {dtype} entries, vs bare grpc.aio; raw indexes",
        baseline=echo_contender("echo", payload_bytes=16),
        contenders=_keep(
            *(
                Contender(
                    name=name,
                    client=functools.partial(_lookup_client, kind=kind, entries=entries),
                    server=sidecar,
                    description=f"LookupCache {what}",
                    requires=SIDECAR_REQUIRES,
                    setup_seconds=SETUP_SECONDS,
                )
                for name, kind, what in (
                    ("exact-hit", "exact", "by prompt, answered by the exact tier"),
                    ("exact-hit-first", "exact-first", "by a prompt not asked before since the start"),
                    ("semantic-hit", "semantic", "by vector (a stored one plus noise): the semantic tier"),
                    ("miss", "miss", "by an unrelated vector: searched, below the threshold"),
                )
            ),
            Contender(
                name="usearch-inproc",
                client=functools.partial(_usearch_client, entries=entries),
                server=functools.partial(_index_path, entries, dtype),
                description="raw usearch search (top 1) on the sidecar's saved index at its ef, in-process",
                setup_seconds=SETUP_SECONDS,
            ),
            Contender(
                name="hnswlib-inproc",
                client=functools.partial(_hnswlib_client, entries=entries),
                server=functools.partial(_hnswlib_target, entries, dtype),
                description="hnswlib knn_query (top 1, M=16, the sidecar's ef) on the same f32 vectors",
                requires=("hnswlib",),
            ),
            *(
                Contender(
                    name=f"gptcache-{kind}",
                    client=functools.partial(_gptcache_client, kind=kind, entries=entries),
                    server=functools.partial(_gptcache_path, entries),
                    description=f"GPTCache get() in-process, {what}: SQLite + its hnswlib store",
                    requires=GPTCACHE_REQUIRES,
                    setup_seconds=PREPASS_MAX_S + 60.0,
                )
                for kind, what in (
                    ("exact", "a stored prompt (no exact tier: embedded and searched)"),
                    ("semantic", "a stored vector plus noise"),
                    ("miss", "an unrelated vector"),
                )
            ),
            *(
                Contender(
                    name=f"gptcache-default-{kind}",
                    client=functools.partial(_gptcache_client, kind=kind, entries=entries, default=True),
                    server=functools.partial(_gptcache_default_path, entries),
                    description=f"GPTCache get() in-process, its README setup (SQLite + faiss flat), {kind}",
                    requires=GPTCACHE_DEFAULT_REQUIRES,
                    setup_seconds=PREPASS_MAX_S + 60.0,
                )
                for kind in ("exact", "semantic", "miss")
            ),
        ),
    )


SUITE = _suite()


# -- the figures the harness does not measure ----------------------------


def _recall(data: Path, dtype: str, entries: int, expansion: int) -> tuple[int, int]:
    """ARE's recall@1 at ``expansion`` on the held-out queries: (graph top hit = exact top hit, queries).

    Both searches run on the same saved (quantised) index, so this is what
    the graph search loses, not what quantisation does (the gRPC
    correctness figure has both).
    """
    from are_core.vector import VectorIndex  # noqa: PLC0415

    index = VectorIndex.restore(
        _index_file(data, dtype),
        dimension=DIMENSION,
        dtype=dtype,
        view=True,
        expansion_search=expansion,  # the sidecar's, in force
    )
    if index is None:
        raise RuntimeError("the saved index did not restore")
    _, queries = held_out_queries(entries)
    graph = index.search_many(queries, 1)
    agree = 0
    for query, row in zip(queries, graph, strict=True):
        exact = index.search(query, 1, exact=True)
        agree += bool(row) and bool(exact) and row[0][0] == exact[0][0]
    return agree, len(queries)


def _hnswlib_recall(entries: int, truth: np.ndarray, ef: int) -> tuple[int, int] | None:
    """hnswlib's recall@1 (M=16) at ``ef`` against exact f32 search, held-out queries; None if absent."""
    try:
        import hnswlib  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return None
    with _hnswlib_path(entries) as path:
        index = hnswlib.Index(space="cosine", dim=DIMENSION)
        index.load_index(path, max_elements=entries)
        index.set_ef(ef)
    _, queries = held_out_queries(entries)
    labels, _ = index.knn_query(queries, k=1)
    return int(np.sum(labels[:, 0].astype(np.int64) == truth)), len(queries)


class Correctness(msgspec.Struct, frozen=True, kw_only=True):
    """How many lookups answered with the right entry, of ``checks`` lookups of each kind (held out).

    Attributes:
        exact: Exact lookups (a stored prompt) answered by that prompt's entry.
        semantic: Semantic lookups (a stored vector plus noise) answered by
            the entry exact f32 search finds nearest: recall@1 end to end.
        miss: Unrelated lookups that missed.
        checks: Lookups of each kind.
    """

    exact: int
    semantic: int
    miss: int
    checks: int


async def _grpc_correctness(target: str, entries: int, truth: np.ndarray) -> Correctness:
    import grpc.aio  # noqa: PLC0415

    from are_sdk._proto.are.v1 import cache_service_pb2, cache_service_pb2_grpc, common_pb2  # noqa: PLC0415

    ids, semantic = held_out_queries(entries)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = cache_service_pb2_grpc.CacheServiceStub(channel)

        async def lookup(prompt: str = "", vector: np.ndarray | None = None) -> Any:
            request = cache_service_pb2.LookupCacheRequest(namespace=NAMESPACE, prompt=prompt)
            if vector is not None:
                request.vector.CopyFrom(common_pb2.Vector(values=vector.tolist()))
            return await stub.LookupCache(request, timeout=RPC_TIMEOUT_S)

        exact = 0
        for i in ids:
            answer = await lookup(_prompt(int(i)))
            exact += answer.hit and answer.matched_prompt == _prompt(int(i))
        right = 0
        for query, row in zip(semantic, truth, strict=True):
            answer = await lookup(vector=query)
            right += answer.hit and answer.matched_prompt == _prompt(int(row))
        missed = 0
        for query in _miss_queries()[: len(ids)]:
            missed += not (await lookup(vector=query)).hit
    return Correctness(exact=exact, semantic=right, miss=missed, checks=len(ids))


def _restart_seconds(
    data: Path, entries: int, truth: np.ndarray, restarts: int
) -> tuple[list[float], list[float], Correctness]:
    """Starts a sidecar on the folder ``restarts`` times: the seconds to SERVING, to a first semantic answer.

    The last start also checks the answers' correctness.
    """
    from are_sdk import SyncClient  # noqa: PLC0415
    from are_sdk.testing import SidecarProcess  # noqa: PLC0415

    serving, answered = [], []
    _, queries = held_out_queries(entries)
    for attempt in range(restarts):
        started = time.perf_counter()
        with SidecarProcess.start(data_dir=data, env=sidecar_env()) as sidecar:
            serving.append(time.perf_counter() - started)
            with SyncClient.connect(sidecar.target, timeout=RPC_TIMEOUT_S) as client:
                client.cache.lookup(NAMESPACE, vector=queries[0].tolist())
            answered.append(time.perf_counter() - started)
            if attempt == restarts - 1:
                correct = asyncio.run(_grpc_correctness(sidecar.target, entries, truth))
    return serving, answered, correct


def _lost_index_seconds(
    data: Path, dtype: str, entries: int, truth: np.ndarray
) -> tuple[float, float, Correctness]:
    """A start that finds no index file (as after SIGKILL long after the last clean stop), on a copy.

    Returns the seconds to SERVING, to every vector indexed again in the
    background, and the answers' correctness once indexed.
    """
    from are_sdk import SyncClient  # noqa: PLC0415
    from are_sdk.testing import SidecarProcess  # noqa: PLC0415

    with tempfile.TemporaryDirectory(dir=data.parent.parent) as scratch:
        copy = Path(scratch) / "data"
        shutil.copytree(data, copy)
        _index_file(copy, dtype).unlink()
        started = time.perf_counter()
        with SidecarProcess.start(data_dir=copy, env=sidecar_env(), timeout=3600) as sidecar:
            serving = time.perf_counter() - started
            with SyncClient.connect(sidecar.target) as client:
                deadline = started + 3600
                while time.perf_counter() < deadline:
                    [stats] = client.cache.stats(NAMESPACE)
                    if stats.unindexed_entries == 0:
                        break
                    time.sleep(0.25)
            indexed = time.perf_counter() - started
            correct = asyncio.run(_grpc_correctness(sidecar.target, entries, truth))
            sidecar.kill()
    return serving, indexed, correct


def _gptcache_figures(entries: int, truth: np.ndarray) -> tuple[dict[str, Any], Correctness] | None:
    """GPTCache's build figures and correctness on the held-out lookups; None when not installed."""
    if missing_requirements(GPTCACHE_REQUIRES):
        return None
    from gptcache.adapter.api import get  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415

    folder, figures = build_gptcache(entries)
    ids, held_out = held_out_queries(entries)
    rights = []
    for kind in ("exact", "semantic", "miss"):
        if kind == "exact":
            prompts = [_prompt(int(i)) for i in ids]
            vectors = dict(zip(prompts, rows_at(ids), strict=True))
            expected: list[str | None] = [_answer(int(i)) for i in ids]
        elif kind == "semantic":
            prompts = [f"held-out query {j}" for j in range(len(ids))]
            vectors = dict(zip(prompts, held_out, strict=True))
            expected = [_answer(int(row)) for row in truth]
        else:
            prompts, vectors, expected = _gptcache_lookups("miss", entries)
        cache, data_manager = _gptcache_open(folder, entries, vectors.__getitem__)
        rights.append(
            sum(
                get(p, cache_obj=cache) == e for p, e in zip(prompts[:CHECKS], expected[:CHECKS], strict=True)
            )
        )
        data_manager.close()
    return figures, Correctness(exact=rights[0], semantic=rights[1], miss=rights[2], checks=CHECKS)


def _ratios(path: Path) -> int:
    """Prints GPTCache's latencies as ratios to ARE's and to echo's, from a harness JSON file."""
    report = json.loads(path.read_text())
    suites = [s for s in report["suites"] if s["suite"] == "cache"]
    if not suites:
        print(f"{path}: no cache suite")
        return 1
    results = {r["name"]: r for r in suites[0]["results"]}
    pairs = (
        ("gptcache-exact", "exact-hit"),
        ("gptcache-semantic", "semantic-hit"),
        ("gptcache-miss", "miss"),
        ("gptcache-default-exact", "exact-hit"),
        ("gptcache-default-semantic", "semantic-hit"),
        ("gptcache-default-miss", "miss"),
    )
    print(f"{'lookup':<26}{'GPTCache/ARE p50':>18}{'p99':>8}{'GPTCache/echo p50':>19}{'p99':>8}")
    for peer, ours in pairs:
        mine, theirs = results.get(ours, {}), results.get(peer, {})
        if mine.get("median_ratio") is None or theirs.get("median_ratio") is None:
            print(f"{peer:<26}{'skipped or failed':>18}")
            continue
        # Each row's ratios divide by the echo timed with it (alternately, by default), so
        # dividing the two cancels the drift between their phases.
        p99 = theirs.get("p99_ratio"), mine.get("p99_ratio")
        cells = (
            f"{theirs['median_ratio'] / mine['median_ratio']:>17.1f}x",
            f"{p99[0] / p99[1]:>7.1f}x" if p99[0] and p99[1] else f"{'-':>8}",
            f"{theirs['median_ratio']:>18.1f}x",
            f"{p99[0]:>7.1f}x" if p99[0] else f"{'-':>8}",
        )
        print(f"{peer:<26}" + "".join(cells))
    return 0


def _rates(c: Correctness) -> str:
    return f"{c.exact / c.checks:>9.4f}{c.semantic / c.checks:>10.4f}{c.miss / c.checks:>8.4f}"


def _with_ci(right: int, trials: int) -> str:
    low, high = wilson_interval(right, trials)
    return f"{right / trials:.4f} (95% CI {low:.4f}-{high:.4f}; {trials - right} of {trials:,} wrong)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=_entries(), help="entries per namespace (100000)")
    parser.add_argument("--dtypes", default="f32,f16,i8", help="comma-separated dtypes (f32,f16,i8)")
    parser.add_argument("--peers", action="store_true", help="also build and check hnswlib and GPTCache")
    parser.add_argument(
        "--require-peers", action="store_true", help="with --peers: a peer not installed fails the run"
    )
    parser.add_argument("--restarts", type=int, default=3, help="sidecar starts timed per dtype (3)")
    parser.add_argument(
        "--lost-index",
        action="store_true",
        help="also time a start with the index file gone, on a copy of the data folder (to SERVING, "
        "and until every vector is indexed again in the background)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument(
        "--ratios", type=Path, metavar="PATH", help="print GPTCache/ARE ratios from a --json file"
    )
    return parser


def _peer_figures(entries: int, truth: np.ndarray, efs: list[int], out: dict[str, Any]) -> bool:
    """Prints and records hnswlib's recall at each ef used and GPTCache's correctness; False if absent."""
    present = True
    for ef in sorted({*efs, 64}):
        hnsw = _hnswlib_recall(entries, truth, ef)
        if hnsw is None:
            print(f"{'hnswlib':<11}  skipped: not installed (hnswlib)")
            present = False
            break
        out.setdefault("hnswlib", {})[str(ef)] = list(hnsw)
        print(f"{'hnswlib':<11}{'':>10}  recall@1 at ef {ef}: {_with_ci(*hnsw)}")
    gptcache = _gptcache_figures(entries, truth)
    if gptcache is None:
        print(f"{'GPTCache':<11}  skipped: not installed ({', '.join(GPTCACHE_REQUIRES)})")
        return False
    figures, correct = gptcache
    out["gptcache"] = {"store_per_s": figures["store_per_s"], "correct": msgspec.to_builtins(correct)}
    print(f"{'GPTCache':<11}{figures['store_per_s']:>10,.0f}{'':>46}{_rates(correct)}")
    print(f"{'':<11}semantic answered by the nearest entry: {_with_ci(correct.semantic, correct.checks)}")
    return present


def main(argv: list[str] | None = None) -> int:
    """Prints store throughput, recall@1, restart-to-serving time and correctness per contender."""
    args = _parser().parse_args(argv)
    if args.ratios:
        return _ratios(args.ratios)
    print(f"cache figures at {args.entries:,} entries of 384-d low-intrinsic-dimension vectors", flush=True)
    _, queries = held_out_queries(args.entries)
    truth = _exact_top1(queries, args.entries)
    print(
        f"{'contender':<11}{'store/s':>10}{'ef':>5}{'recall@1':>10}{'serving s':>12}{'answered s':>12}"
        f"{'index MiB':>11}{'exact ok':>9}{'sem. ok':>10}{'miss ok':>8}"
    )
    out: dict[str, Any] = {"entries": args.entries, "held_out": HELD_OUT, "dtypes": {}}
    efs = []
    for dtype in args.dtypes.split(","):
        data, figures = build_folder(args.entries, dtype)
        state = ef_in_force(args.entries, dtype)
        efs.append(state.search_expansion)
        agree, trials = _recall(data, dtype, args.entries, state.search_expansion)
        serving, answered, correct = _restart_seconds(data, args.entries, truth, max(args.restarts, 1))
        size = _index_file(data, dtype).stat().st_size / 2**20
        print(
            f"{'ARE ' + dtype:<11}{figures['store_per_s']:>10,.0f}{state.search_expansion:>5}"
            f"{agree / trials:>10.4f}{max(serving):>12.2f}{max(answered):>12.2f}{size:>11.0f}"
            f"{_rates(correct)}",
            flush=True,
        )
        print(f"{'':<11}{state.describe()}")
        print(f"{'':<11}recall@1 (held out) at ef {state.search_expansion}: {_with_ci(agree, trials)}")
        print(
            f"{'':<11}semantic answered by the nearest entry over gRPC: {_with_ci(correct.semantic, trials)}"
        )
        print(
            f"{'':<11}serving after each of {len(serving)} starts: "
            + ", ".join(f"{x:.2f}" for x in serving)
            + " s; first semantic answer: "
            + ", ".join(f"{x:.2f}" for x in answered)
            + " s"
        )
        out["dtypes"][dtype] = {
            "store_per_s": figures["store_per_s"],
            "search_expansion": state.search_expansion,
            "calibration": msgspec.to_builtins(state),
            "recall": [agree, trials],
            "recall_ci": list(wilson_interval(agree, trials)),
            "serving_s": serving,
            "answered_s": answered,
            "correct": msgspec.to_builtins(correct),
        }
        if args.lost_index:
            lost_serving, indexed, correct = _lost_index_seconds(data, dtype, args.entries, truth)
            print(
                f"{'  no index':<11}{'':>25}{lost_serving:>12.2f}{'':>23}{_rates(correct)}"
                f"  (every vector indexed again {indexed:.1f} s after the start)",
                flush=True,
            )
    peers_present = _peer_figures(args.entries, truth, efs, out) if args.peers else True
    print(
        f"recall@1: over {HELD_OUT:,} held-out noisy copies of stored vectors (drawn over every entry, "
        "another seed than the timed and calibrated lookups); ARE's graph search's top hit equals exact "
        "search's on the same (quantised) index, at the ef the sidecar uses; hnswlib's equals exact f32 "
        "search's, at that ef and at 64; 95% CIs are Wilson's"
    )
    print(
        "serving s: the slowest of the starts, from starting the sidecar process to SERVING; answered s: "
        "to its first semantic LookupCache answer"
    )
    print(
        f"exact ok: of {CHECKS:,} lookups of a stored prompt, those answered by its entry; sem. ok: of"
        f" {CHECKS:,} held-out noisy copies, those answered by exact f32 search's nearest entry (ARE over"
        " gRPC); miss ok: unrelated vectors that missed"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.require_peers and not peers_present:
        print("cache figures: a required peer is not installed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
