"""Recall of a churning cache: can every live entry still be found by its own vector?

A cache at its size bound evicts an entry per store, for as long as it
serves: removals are its steady state, and HNSW removals leave the graph
worse at reaching what stays. This drives one engine (in-process, real LMDB
in a temporary folder, a settable clock) through a workload of several times
its bound: single stores of low-intrinsic-dimension vectors (as
``benchmarks.cache`` makes them), a share of them replacing an entry of the
same prompt, some with a short TTL that expires, and invalidations of random
live entries; LRU eviction does the rest. Then it looks every live entry up
by its own stored vector (threshold 0.95) and counts the misses ("after
churn": no repair sweep ran during the churn), runs one repair sweep (what
the sidecar's upkeep starts once a tenth of the index, at least 1,000
entries, was removed: ``CacheEngine.repair_due``), waits for it and counts
them again ("after repair"), again after a clean restart (the index
restored as a memory-mapped view), and again after a restart without a save
(SIGKILL: the last checkpoint plus the journal).

``--ef N`` fixes the namespace's search expansion (a calibration picks one
as low as 12 at 1M entries; by default the dtype's, 64 for f32, 32 for i8).

``--no-repair`` leaves the sweep out (the restarts then serve the graph as the churn left it).

``python -m benchmarks.cache_churn [--entries 5000,20000] [--dtypes f32,i8] [--churn 6] [--ef N]
[--no-repair]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from are_core.cache import CACHE_TABLES, CacheEngine, NamespaceSettings
from are_core.cache._engine import VECTORS
from are_core.cache._normalise import entry_id_text
from are_core.storage import Durability, GroupCommitter, Storage, u64_key
from benchmarks.cache import DIMENSION, dataset_rows

__all__ = ["main", "measure"]

NAMESPACE = "churn"
THRESHOLD = 0.95
SECOND = 10**9
_MAX_INVALIDATED_PER_1000 = 400


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * SECOND

    def __call__(self) -> int:
        return self.now


class _Engine:
    """One engine over one data folder, reopened as a restart would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = _Clock()
        self.storage: Storage | None = None
        self.committer: GroupCommitter | None = None
        self.engine: CacheEngine | None = None

    async def open(self) -> CacheEngine:
        self.storage = Storage.open(self.root / "data", tables=CACHE_TABLES, durability=Durability.RELAXED)
        self.committer = GroupCommitter(self.storage)
        self.engine = CacheEngine(
            self.storage,
            self.committer,
            index_dir=self.root / "data" / "cache",
            clock=self.clock,
            flush_interval=3600,
        )
        await self.engine.start()
        return self.engine

    async def close(self, *, save: bool) -> None:
        assert self.engine is not None
        assert self.committer is not None
        assert self.storage is not None
        if save:
            await self.engine.stop()
        else:  # as after SIGKILL: nothing saved beyond what was committed (and checkpointed)
            await self.engine._stop_background()  # noqa: SLF001 - no stray child processes
            if self.engine._flusher is not None:  # noqa: SLF001
                self.engine._flusher.cancel()  # noqa: SLF001
        await self.committer.aclose()
        self.storage.close()
        self.engine = None


async def _churn(engine: CacheEngine, clock: _Clock, bound: int, churn: int, seed: int) -> dict[str, int]:
    """Stores ``churn`` times ``bound`` entries one by one, with replacements, expiry and invalidations."""
    rng = random.Random(seed)
    total = churn * bound
    rows = dataset_rows(0, total)
    prompts: list[str] = []
    counts = {"stores": 0, "replaced": 0, "invalidated": 0, "expired_ttl_stores": 0}
    for i in range(total):
        if prompts and rng.random() < 0.02:  # the same prompt again, a new answer and vector
            prompt = rng.choice(prompts[-bound:])
            counts["replaced"] += 1
        else:
            prompt = f"prompt {i}"
            prompts.append(prompt)
        ttl = 0
        if rng.random() < 0.05:
            ttl = 30 * SECOND
            counts["expired_ttl_stores"] += 1
        await engine.store(NAMESPACE, prompt=prompt, response=b"r", vector=rows[i], ttl_ns=ttl)
        counts["stores"] += 1
        clock.now += SECOND // 10
        if i % 1000 == 999:
            await engine.flush()  # sweeps expired entries
            live = list(engine._states[NAMESPACE].heads)  # noqa: SLF001
            # A share of the stores (2% of the bound per 1,000, at most 40%): past 50k, a
            # share of the bound would invalidate as many entries as are stored.
            chosen = rng.sample(live, min(len(live), bound // 50, _MAX_INVALIDATED_PER_1000))
            ids = [entry_id_text(n) for n in chosen]
            counts["invalidated"] += await engine.invalidate(NAMESPACE, entry_ids=ids)
            engine.checkpoint_due()  # as the sidecar's upkeep does
    await engine.flush()
    return counts


async def _recall(engine: CacheEngine, storage: Storage) -> tuple[int, int, float]:
    """Looks every live entry up by its own stored vector: (live, misses, seconds)."""
    state = engine._states[NAMESPACE]  # noqa: SLF001
    ids = state.entries.vector_ids().tolist()
    with storage.read() as view:
        raws = view.get_many(VECTORS, [u64_key(n) for n in ids])
    misses = 0
    began = time.perf_counter()
    for raw in raws:
        if raw is None:  # every live entry with a vector has one stored
            raise RuntimeError("a live entry's vector is missing from LMDB")
        vector = np.frombuffer(raw, dtype=np.float32)
        result = await engine.lookup(NAMESPACE, vector=vector, threshold=THRESHOLD)
        if result.hit is None:
            misses += 1
    return len(ids), misses, time.perf_counter() - began


async def _repair(engine: CacheEngine) -> tuple[int, float] | None:
    """Runs a repair sweep of the namespace and waits for it: (entries inserted again, seconds).

    None when no sweep was due (an index searched exactly has nothing to repair).
    """
    before = engine.stats(NAMESPACE)[0].repaired_entries
    began = time.perf_counter()
    task = engine.repair_due()
    if task is None:
        return None
    await task
    return engine.stats(NAMESPACE)[0].repaired_entries - before, time.perf_counter() - began


async def measure(
    bound: int, dtype: str, churn: int, ef: int = 0, seed: int = 1, *, repair: bool = True
) -> list[dict[str, Any]]:
    """Runs the workload on a fresh folder; one row of figures per phase."""
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="are-churn-") as folder:
        runner = _Engine(Path(folder))
        engine = await runner.open()
        await engine.put_namespace(
            NamespaceSettings(
                name=NAMESPACE,
                embedder="caller",
                dimension=DIMENSION,
                vector_dtype=dtype,
                similarity_threshold=THRESHOLD,
                max_entries=bound,
                max_bytes=1 << 40,
                search_expansion=ef,
            )
        )
        began = time.perf_counter()
        counts = await _churn(engine, runner.clock, bound, churn, seed)
        stored = time.perf_counter() - began
        phases = (
            ("after churn", None),
            ("after repair", None),
            ("clean restart", True),
            ("SIGKILL restart", False),
        )
        for phase, save in phases:
            extra: dict[str, Any] = {}
            if phase == "after repair":
                if not repair:
                    continue
                repaired = await _repair(engine)
                extra = {"repaired": None if repaired is None else repaired[0]}
                extra["repair_s"] = None if repaired is None else repaired[1]
            if save is not None:
                await runner.close(save=save)
                engine = await runner.open()
            assert runner.storage is not None
            live, misses, seconds = await _recall(engine, runner.storage)
            out.append(
                {
                    "entries": bound,
                    "dtype": dtype,
                    "phase": phase,
                    "live": live,
                    "misses": misses,
                    "recall": 1 - misses / max(live, 1),
                    "lookup_us": seconds / max(live, 1) * 1e6,
                    "store_s": stored,
                    **counts,
                    **extra,
                }
            )
        await runner.close(save=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_churn", description=__doc__)
    parser.add_argument("--entries", default="5000,20000", help="namespace size bounds, comma-separated")
    parser.add_argument("--dtypes", default="f32,i8", help="vector dtypes, comma-separated")
    parser.add_argument("--churn", type=int, default=6, help="stores per bound (5-10 evicts most of it)")
    parser.add_argument("--ef", type=int, default=0, help="a fixed search expansion (0: the dtype's default)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-repair", dest="repair", action="store_false", help="no repair sweep after the churn"
    )
    args = parser.parse_args(argv)
    header = ("entries", "dtype", "phase", "live", "misses", "recall", "us/lookup")
    print("{:>8} {:>5} {:<16} {:>7} {:>6} {:>8} {:>9}".format(*header))
    for bound in (int(x) for x in args.entries.split(",")):
        for dtype in args.dtypes.split(","):
            for row in asyncio.run(measure(bound, dtype, args.churn, args.ef, args.seed, repair=args.repair)):
                if "repaired" in row:
                    swept = (
                        "not due (the index is searched exactly)"
                        if row["repaired"] is None
                        else f"{row['repaired']} entries inserted again in {row['repair_s']:.1f} s"
                    )
                    print(f"{'':>8} {'':>5} repair sweep: {swept}", flush=True)
                print(
                    f"{row['entries']:>8} {row['dtype']:>5} {row['phase']:<16} {row['live']:>7} "
                    f"{row['misses']:>6} {row['recall']:>8.5f} {row['lookup_us']:>9.1f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
