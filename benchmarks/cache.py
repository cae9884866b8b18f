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
* ``semantic-hit``: LookupCache by vector (a stored vector plus noise),
  answered by the semantic tier;
* ``miss``: LookupCache by an unrelated vector (searched, below threshold);
* ``usearch-inproc``: the raw usearch index (the sidecar's saved file,
  loaded in memory), one query per call, in-process: what gRPC and Python add
  is the difference to ``semantic-hit``;
* ``hnswlib-inproc``: hnswlib (M=16, ef 64) on the same vectors, in-process;
  needs the ``bench-cache`` extra, reported skipped without it.

GPTCache is not measured yet (it would be reported skipped).

Settings: ``ARE_BENCH_CACHE_ENTRIES`` (default 100000) and
``ARE_BENCH_CACHE_DTYPE`` (f32, f16 or i8; default f32).

``python -m benchmarks.cache [--entries N] [--dtypes f32,f16,i8]`` prints
the figures the harness does not: bulk store throughput (entries/s),
recall@1 of the graph search against exact search per dtype (and hnswlib),
and the time from starting a sidecar on the folder to its first answer.
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

import numpy as np

from benchmarks._echo import echo_contender
from benchmarks._harness import Contender, Operation, Suite

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

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
QUERIES = 2_000
FORMAT = 1  # bump when the folder layout changes


def _entries() -> int:
    return int(os.environ.get("ARE_BENCH_CACHE_ENTRIES", "100000"))


def _dtype() -> str:
    return os.environ.get("ARE_BENCH_CACHE_DTYPE", "f32")


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


def _sample(entries: int) -> np.ndarray:
    """Query row ids, spread over the first chunks (cheap to regenerate)."""
    rng = np.random.default_rng(SEED + 1)
    return rng.integers(0, min(entries, 4 * CHUNK), size=QUERIES)


def _semantic_queries(entries: int) -> tuple[np.ndarray, np.ndarray]:
    ids = _sample(entries)
    rows = dataset_rows(0, min(entries, 4 * CHUNK))[ids]
    rng = np.random.default_rng(SEED + 2)
    queries = rows + QUERY_NOISE * rng.standard_normal(rows.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return ids, queries.astype(np.float32)


def _miss_queries() -> np.ndarray:
    rng = np.random.default_rng(SEED + 3)
    queries: np.ndarray = rng.standard_normal((QUERIES, DIMENSION)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries


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
    from are_core.cache import CACHE_TABLES, CacheEngine, NamespaceSettings  # noqa: PLC0415
    from are_core.storage import GroupCommitter, Storage  # noqa: PLC0415

    storage = Storage.open(data, tables=CACHE_TABLES)
    committer = GroupCommitter(storage)
    engine = CacheEngine(storage, committer, index_dir=data / "indexes" / "cache")
    await engine.start()
    await engine.put_namespace(
        NamespaceSettings(
            name=NAMESPACE,
            embedder="caller",
            dimension=DIMENSION,
            vector_dtype=dtype,
            similarity_threshold=THRESHOLD,
            max_entries=max(entries, 1),
            max_bytes=1 << 40,
        )
    )
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
    with SidecarProcess.start(data_dir=data) as sidecar:
        ready = time.perf_counter() - started
        print(
            f"cache: {entries:,} {dtype} entries (bulk store {figures['store_per_s']:,.0f}/s); "
            f"sidecar serving {ready:.2f}s after start",
            file=sys.stderr,
            flush=True,
        )
        yield sidecar.target


@contextlib.contextmanager
def _index_path(entries: int, dtype: str) -> Iterator[str]:
    data, _ = build_folder(entries, dtype)
    yield str(_index_file(data, dtype))


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


# -- clients (in the client process) -------------------------------------


@contextlib.asynccontextmanager
async def _lookup_client(target: str | None, *, kind: str, entries: int) -> AsyncIterator[Operation]:
    import grpc.aio  # noqa: PLC0415

    from are_sdk._proto.are.v1 import cache_service_pb2, cache_service_pb2_grpc, common_pb2  # noqa: PLC0415

    if target is None:
        raise ValueError("the lookup client needs a sidecar target")
    if kind == "exact":
        requests = [
            cache_service_pb2.LookupCacheRequest(namespace=NAMESPACE, prompt=_prompt(int(i)))
            for i in _sample(entries)
        ]
    else:
        queries = _semantic_queries(entries)[1] if kind == "semantic" else _miss_queries()
        requests = [
            cache_service_pb2.LookupCacheRequest(
                namespace=NAMESPACE, vector=common_pb2.Vector(values=q.tolist())
            )
            for q in queries
        ]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = cache_service_pb2_grpc.CacheServiceStub(channel)
        await channel.channel_ready()
        first = await stub.LookupCache(requests[0])
        if first.hit != (kind != "miss"):
            raise ValueError(f"{kind}: the first lookup answered hit={first.hit}")
        position = 0

        async def operation() -> object:
            nonlocal position
            position = (position + 1) % len(requests)
            return await stub.LookupCache(requests[position])

        yield operation


@contextlib.asynccontextmanager
async def _usearch_client(target: str | None, *, entries: int) -> AsyncIterator[Operation]:
    from usearch.index import Index  # noqa: PLC0415

    if target is None:
        raise ValueError("needs the index file")
    index = Index.restore(target, view=False)  # in memory, as the sidecar searches it
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
    index = hnswlib.Index(space="cosine", dim=DIMENSION)
    index.load_index(target, max_elements=entries)
    index.set_ef(64)
    index.set_num_threads(1)
    queries = _semantic_queries(entries)[1]
    position = 0

    async def operation() -> object:
        nonlocal position
        position = (position + 1) % len(queries)
        return index.knn_query(queries[position : position + 1], k=1)

    yield operation


def _suite() -> Suite:
    entries, dtype = _entries(), _dtype()
    sidecar = functools.partial(_sidecar, entries, dtype)
    return Suite(
        name="cache",
        description=f"LookupCache, {entries:,} 384-d {dtype} entries, vs bare grpc.aio; raw indexes",
        baseline=echo_contender("echo", payload_bytes=16),
        contenders=(
            Contender(
                name="exact-hit",
                client=functools.partial(_lookup_client, kind="exact", entries=entries),
                server=sidecar,
                description="LookupCache by prompt, answered by the exact tier",
                requires=SIDECAR_REQUIRES,
            ),
            Contender(
                name="semantic-hit",
                client=functools.partial(_lookup_client, kind="semantic", entries=entries),
                server=sidecar,
                description="LookupCache by vector (a stored one plus noise), answered by the semantic tier",
                requires=SIDECAR_REQUIRES,
            ),
            Contender(
                name="miss",
                client=functools.partial(_lookup_client, kind="miss", entries=entries),
                server=sidecar,
                description="LookupCache by an unrelated vector: searched, below the threshold",
                requires=SIDECAR_REQUIRES,
            ),
            Contender(
                name="usearch-inproc",
                client=functools.partial(_usearch_client, entries=entries),
                server=functools.partial(_index_path, entries, dtype),
                description="raw usearch search (top 1) on the sidecar's saved index, in-process",
            ),
            Contender(
                name="hnswlib-inproc",
                client=functools.partial(_hnswlib_client, entries=entries),
                server=functools.partial(_hnswlib_path, entries),
                description="hnswlib knn_query (top 1, M=16, ef 64) on the same vectors, in-process",
                requires=("hnswlib",),
            ),
        ),
    )


SUITE = _suite()


# -- the figures the harness does not measure ----------------------------


def _recall(data: Path, dtype: str, entries: int) -> float:
    from are_core.vector import VectorIndex  # noqa: PLC0415

    index = VectorIndex.restore(_index_file(data, dtype), dimension=DIMENSION, dtype=dtype, view=True)
    if index is None:
        raise RuntimeError("the saved index did not restore")
    _, queries = _semantic_queries(entries)
    graph = index.search_many(queries, 1)
    agree = 0
    for query, row in zip(queries[:500], graph[:500], strict=True):
        exact = index.search(query, 1, exact=True)
        agree += bool(row) and bool(exact) and row[0][0] == exact[0][0]
    return agree / 500


def _hnswlib_recall(entries: int) -> float | None:
    try:
        import hnswlib  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return None
    from are_core.vector import VectorIndex  # noqa: PLC0415

    with _hnswlib_path(entries) as path:
        index = hnswlib.Index(space="cosine", dim=DIMENSION)
        index.load_index(path, max_elements=entries)
        index.set_ef(64)
    exact = VectorIndex.restore(
        _index_file(build_folder(entries, "f32")[0], "f32"), dimension=DIMENSION, dtype="f32"
    )
    if exact is None:
        return None
    _, queries = _semantic_queries(entries)
    labels, _ = index.knn_query(queries[:500], k=1)
    agree = sum(int(labels[i][0]) + 1 == exact.search(queries[i], 1, exact=True)[0][0] for i in range(500))
    return agree / 500


def _restart_seconds(data: Path) -> tuple[float, float]:
    from are_sdk import SyncClient  # noqa: PLC0415
    from are_sdk.testing import SidecarProcess  # noqa: PLC0415

    started = time.perf_counter()
    with SidecarProcess.start(data_dir=data) as sidecar:
        serving = time.perf_counter() - started
        with SyncClient.connect(sidecar.target) as client:
            client.cache.lookup(NAMESPACE, _prompt(0))
        answered = time.perf_counter() - started
    return serving, answered


def main(argv: list[str] | None = None) -> int:
    """Prints store throughput, recall@1 per dtype and restart-to-serving time."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=_entries(), help="entries per namespace (100000)")
    parser.add_argument("--dtypes", default="f32,f16,i8", help="comma-separated dtypes (f32,f16,i8)")
    args = parser.parse_args(argv)
    print(f"cache figures at {args.entries:,} entries of 384-d low-intrinsic-dimension vectors")
    print(f"{'dtype':<8}{'store/s':>10}{'recall@1':>10}{'serving s':>11}{'answered s':>12}{'index MiB':>11}")
    for dtype in args.dtypes.split(","):
        data, figures = build_folder(args.entries, dtype)
        recall = _recall(data, dtype, args.entries)
        serving, answered = _restart_seconds(data)
        size = _index_file(data, dtype).stat().st_size / 2**20
        print(
            f"{dtype:<8}{figures['store_per_s']:>10,.0f}{recall:>10.4f}{serving:>11.2f}{answered:>12.2f}{size:>11.0f}",
            flush=True,
        )
    hnsw = _hnswlib_recall(args.entries)
    print(f"hnswlib recall@1 (M=16, ef 64): {'skipped: not installed' if hnsw is None else f'{hnsw:.4f}'}")
    print(
        "recall@1: the graph search's top hit equals exact search's, over 500 noisy copies of stored vectors"
    )
    print(
        "serving s: from starting the sidecar process to SERVING; answered s: to its first LookupCache answer"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
