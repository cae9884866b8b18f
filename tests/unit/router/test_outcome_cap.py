"""``max_outcomes_per_model`` holds in memory, in the index and in LMDB, however reports interleave.

Concurrent ReportOutcome calls share a group commit. Each used to pick the
model's oldest outcome as its victim before awaiting the commit, so all of
them picked the same one: the first deleted it, the others deleted nothing
and still added their own. A model grew by c - 1 outcomes per round of c
concurrent reports, past the cap, for good (at or over the cap each report
evicts one and adds one), in memory, in its index and in LMDB.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from are_core.router import (
    META_TABLE,
    OUTCOMES_TABLE,
    TABLES,
    ModelSpec,
    OutcomeRecord,
    Router,
    RouterSettings,
)
from are_core.storage import Codec, GroupCommitter, Storage, StorageBusyError, parse_u64_key, u64_key
from are_core.vector import VectorIndex

from .conftest import DIMENSION, open_router
from .test_models import CHEAP, STRONG

MODEL = ModelSpec(model_id="m", tier=1, prior_success_rate=0.9)
_codec = Codec(OutcomeRecord)


def _vectors(seed: int, n: int, *, centre: int | None = None) -> list[bytes]:
    """Unit vectors: random, or near the axis ``centre`` (similar prompts)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if centre is None:
            vector = rng.normal(size=DIMENSION).astype(np.float32)
        else:
            vector = rng.normal(0, 0.05, DIMENSION).astype(np.float32)
            vector[centre] += 1.0
        out.append((vector / np.linalg.norm(vector)).astype(np.float32).tobytes())
    return out


def _rows(storage: Storage, model_id: str) -> list[int]:
    """The sequences of the model's outcome rows in LMDB, ascending."""
    rows = []
    start: bytes | None = None
    while page := storage.scan(OUTCOMES_TABLE, start=start, limit=1000):
        rows += [parse_u64_key(key) for key, value in page if _codec.decode(value).model_id == model_id]
        start = page[-1][0] + b"\x00"
    return rows


def _held(router: Router, storage: Storage, model_id: str) -> list[int]:
    """What the estimator holds for the model, checked to agree everywhere (memory, index, LMDB)."""
    keys = list(router._outcome_keys.get(model_id, ()))
    index = router._outcome_index.get(model_id)
    if index is not None:
        assert isinstance(index, VectorIndex)
        assert sorted(index.keys().tolist()) == sorted(keys)
        assert len(index) == len(keys)
    else:
        assert not keys
    assert {k for k in router._outcome_scores if k in set(keys)} == set(keys)
    assert sorted(keys) == _rows(storage, model_id)
    assert router.outcome_count(model_id) == len(keys)
    return keys


async def _report_all(
    router: Router, vectors: list[bytes], *, model_id: str = "", success: bool = True
) -> None:
    routes = await asyncio.gather(*(router.route_model(vector=v) for v in vectors))
    await asyncio.gather(
        *(router.report_outcome(r.route_id, model_id=model_id, success=success) for r in routes)
    )


async def _report_one_by_one(router: Router, vectors: list[bytes]) -> None:
    for vector in vectors:
        route = await router.route_model(vector=vector)
        await router.report_outcome(route.route_id, success=True)


async def test_concurrent_reports_never_take_a_model_past_its_cap(tmp_path: Path) -> None:
    """Rounds of concurrent reports, fewer and more than the cap: at most the cap, at every commit."""
    cap = 8
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    committer = GroupCommitter(storage)
    peak: list[int] = []
    # After every commit (before its submitters resume): the model's rows in LMDB.
    committer.add_settle_listener(lambda _batch, _committed: peak.append(len(_rows(storage, "m"))))
    router = await open_router(storage, committer, settings=RouterSettings(max_outcomes_per_model=cap))
    await router.put_catalog([MODEL])
    for seed, size in enumerate((3, 10, 5, 8, 13, 1, 30, 2, 9)):  # 81 reports
        await _report_all(router, _vectors(seed, size))
        held = _held(router, storage, "m")
        assert len(held) <= cap, f"{len(held)} outcomes held after a round of {size} concurrent reports"
    # No report failed: the cap's newest sequences are kept, oldest first.
    newest = list(range(router._next_outcome - cap, router._next_outcome))
    assert _held(router, storage, "m") == newest
    assert max(peak) <= cap
    await router.aclose()
    await committer.aclose()
    storage.close()

    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            again = await open_router(storage, committer, settings=RouterSettings(max_outcomes_per_model=cap))
            assert _held(again, storage, "m") == newest
            await again.aclose()
    finally:
        storage.close()


async def test_the_estimator_forgets_evicted_outcomes(tmp_path: Path) -> None:
    """Old failures evicted by newer successes, reported concurrently, no longer weigh on the estimate."""
    cap = 10
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            router = await open_router(
                storage, committer, settings=RouterSettings(max_outcomes_per_model=cap)
            )
            await router.put_catalog([CHEAP, STRONG])
            await _report_all(router, _vectors(1, 30, centre=0), model_id="cheap", success=False)
            choice = await router.route_model(vector=_vectors(2, 1, centre=0)[0])
            assert choice.model_id == "strong"  # cheap failed on such prompts
            await _report_all(router, _vectors(3, 30, centre=0), model_id="cheap", success=True)

            assert len(_held(router, storage, "cheap")) == cap
            choice = await router.route_model(vector=_vectors(4, 1, centre=0)[0])
            cheap = next(e for e in choice.estimates if e.model_id == "cheap")
            assert (cheap.samples, cheap.expected_quality) == (cap, 1.0)  # only the successes are left
            assert choice.model_id == "cheap"
            assert choice.target_met
            await router.aclose()
    finally:
        storage.close()


async def test_reports_refused_by_backpressure_hand_their_victims_back(tmp_path: Path) -> None:
    """A report whose commit fails gives back the outcomes it would have deleted, to the next report.

    At the cap a report's batch holds 4 mutations (its route marked, its
    outcome, the next sequence, the victim's delete), 3 without a victim.
    With 11 pending mutations allowed, two reports are admitted and the
    third is refused; the fourth must claim the victim the third gave back
    (and be refused as well): had it been lost, the fourth would find no
    victim to claim, go in with 3 mutations, and leave the model over its cap.
    """
    cap = 4
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage, max_pending_mutations=11) as committer:
            router = await open_router(
                storage, committer, settings=RouterSettings(max_outcomes_per_model=cap)
            )
            await router.put_catalog([MODEL])
            await _report_one_by_one(router, _vectors(1, cap))
            routes = [await router.route_model(vector=v) for v in _vectors(2, 4)]

            results = await asyncio.gather(
                *(router.report_outcome(r.route_id, success=True) for r in routes), return_exceptions=True
            )
            refused = [r for r, result in zip(routes, results, strict=True) if isinstance(result, Exception)]
            assert [type(result) for result in results] == [
                OutcomeRecord,
                OutcomeRecord,
                *[StorageBusyError] * 2,
            ]
            assert len(_held(router, storage, "m")) == cap

            await asyncio.gather(*(router.report_outcome(r.route_id, success=True) for r in refused))
            assert len(_held(router, storage, "m")) == cap
            await router.aclose()
    finally:
        storage.close()


async def test_a_store_far_over_the_cap_comes_back_within_it_at_restart(tmp_path: Path) -> None:
    """A store left over the cap (by the old reports, or a higher cap) is trimmed at load, a page a commit.

    The trim used to go in the load's one batch: 2,590 deletes, more than
    the committer admits in one batch here, so the router could not start.
    """
    cap = 10
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            router = await open_router(storage, committer)
            await router.put_catalog([MODEL])
            vectors = _vectors(1, 2_600)
            for start in range(0, len(vectors), 1_000):  # as an uncapped sidecar left it
                batch = storage.batch()
                for sequence, vector in enumerate(vectors[start : start + 1_000], start=start + 1):
                    record = OutcomeRecord(
                        route_id=f"r{sequence}", model_id="m", score=1.0, vector=vector, report_time_ns=1
                    )
                    batch.put(OUTCOMES_TABLE, u64_key(sequence), _codec.encode(record))
                await committer.submit(batch)
            await router.aclose()

        settings = RouterSettings(max_outcomes_per_model=cap)
        async with GroupCommitter(storage, max_pending_mutations=2_000) as committer:
            router = await open_router(storage, committer, settings=settings)
            newest = list(range(2_601 - cap, 2_601))
            assert _held(router, storage, "m") == newest
            await router.aclose()

        async with GroupCommitter(storage) as committer:
            router = await open_router(storage, committer, settings=settings)
            assert _held(router, storage, "m") == newest
            route = await router.route_model(vector=vectors[-1])
            await router.report_outcome(route.route_id, success=True)
            assert _held(router, storage, "m") == [*newest[1:], 2_601]
            await router.aclose()
    finally:
        storage.close()


async def test_reports_racing_a_catalog_change_keep_memory_and_lmdb_equal(tmp_path: Path) -> None:
    """Reports claim outcomes that their model's removal drops before they commit; the model returns.

    With a cap of 2, of 12 concurrent reports 2 commit at a time and the
    others wait for room. The first two commit in a group made slow by a
    large batch, and the model's removal is submitted meanwhile: it commits
    in the next group, alone, while the next two reports (woken when the
    first two end) claim outcomes that the removal drops before they land.
    """
    cap = 2
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            router = await open_router(
                storage, committer, settings=RouterSettings(max_outcomes_per_model=cap)
            )
            other = ModelSpec(model_id="other")
            await router.put_catalog([MODEL, other])
            await _report_one_by_one(router, _vectors(1, cap))
            routes = [await router.route_model(vector=v) for v in _vectors(2, 12)]
            slow = storage.batch()
            for i in range(20_000):
                slow.put(META_TABLE, b"filler-%d" % i, bytes(1_000))
            under_way = asyncio.gather(*(router.report_outcome(r.route_id, success=True) for r in routes))
            while committer.stats().pending_batches < cap:  # the first two are submitted, the rest wait
                await asyncio.sleep(0)
            slow_commit = committer.enqueue(slow)  # in their group
            while committer._inflight is None:  # the group is committing
                await asyncio.sleep(0)
            await router.put_catalog([other])
            await router.put_catalog([MODEL, other])
            await asyncio.gather(under_way, slow_commit)
            assert len(_held(router, storage, "m")) <= cap
            await _report_one_by_one(router, _vectors(3, 2 * cap))
            assert len(_held(router, storage, "m")) == cap
            await router.aclose()
    finally:
        storage.close()
