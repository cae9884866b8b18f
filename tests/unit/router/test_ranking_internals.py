"""What the fast RouteTask path must keep: exact similarities over a quantised index, live
load and availability, agent_id breaking ties at the top_k boundary, reused rows, and
ROUTE_DECIDED events committed in groups."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import are_core.router._engine as router_engine
from are_core.router import (
    TABLES,
    AgentSpec,
    IndexFactory,
    NoRouteError,
    RouteMode,
    RouteQuery,
    Router,
    RouterSettings,
)
from are_core.storage import Batch, GroupCommitter, Storage
from are_core.trace import EVENT_TABLES, EventFilter, EventRecorder
from are_core.vector import VectorIndex

from .conftest import DIMENSION, NATIVE, make_index, unit


def quantised_index(dimension: int) -> VectorIndex:
    """8-bit vectors compared by cosine, as the sidecar's router index."""
    return VectorIndex(dimension=dimension, dtype="i8", metric="cos")


def cards(count: int, seed: int) -> list[AgentSpec]:
    """Cards around two directions, with costs that repeat (cost ties) and duplicated vectors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, DIMENSION))
    specs = []
    previous = np.zeros(DIMENSION, dtype=np.float32)
    for i in range(count):
        vector = (
            previous if i % 7 == 6 else (centres[i % 2] + rng.normal(0, 0.7, DIMENSION)).astype(np.float32)
        )
        previous = vector
        specs.append(
            AgentSpec(
                agent_id=f"a{i:04d}",
                capabilities=("even",) if i % 2 == 0 else ("odd",),
                vector=vector.tobytes(),
                cost_per_call_micro_usd=(0, 10, 10, 250)[i % 4],
                capacity=2,
            )
        )
    return specs


async def open_router(folder: Path, index_factory: IndexFactory = make_index) -> Router:
    storage = Storage.open(folder, tables=TABLES)
    router = Router(
        storage,
        GroupCommitter(storage),
        dimension=DIMENSION,
        embedder=None,
        index_factory=index_factory,
    )
    await router.load()
    return router


async def close_router(router: Router) -> None:
    await router.aclose()
    await router._committer.aclose()
    router._storage.close()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Router, Router]]:
    """The same 400 cards behind a full-precision index and a quantised one."""
    exact = await open_router(tmp_path / "f32")
    quantised = await open_router(tmp_path / "f16", quantised_index)
    for spec in cards(400, seed=3):
        await exact.register_agent(spec)
        await quantised.register_agent(spec)
    try:
        yield exact, quantised
    finally:
        await close_router(exact)
        await close_router(quantised)


async def test_a_quantised_index_ranks_and_reports_as_a_full_precision_one(
    pair: tuple[Router, Router],
) -> None:
    exact, quantised = pair
    rng = np.random.default_rng(11)
    specs = cards(400, seed=3)
    matrix = np.stack([np.frombuffer(s.vector or b"", dtype=np.float32) for s in specs])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    for i in range(40):
        task = matrix[(7 * i) % 400] + rng.normal(0, 0.3, DIMENSION).astype(np.float32)
        task /= np.linalg.norm(task)
        for mode in RouteMode:
            for threshold in (0.3, 0.6):
                query = RouteQuery(
                    vector=task.astype(np.float32).tobytes(),
                    mode=mode,
                    threshold=threshold,
                    top_k=10,
                    include_below_threshold=True,
                )
                expected = exact.rank(query).candidates
                got = quantised.rank(query).candidates
                assert [c.agent_id for c in got] == [c.agent_id for c in expected]
                for candidate in got:
                    row = int(candidate.agent_id[1:])
                    assert candidate.similarity == pytest.approx(float(matrix[row] @ task), abs=1e-5)
                    assert candidate.above_threshold == (candidate.similarity >= threshold)


async def test_the_top_k_boundary_splits_ties_by_agent_id(router: Router) -> None:
    for name in ("d", "b", "e", "a", "c"):
        await router.register_agent(AgentSpec(agent_id=name, vector=unit(1.0), cost_per_call_micro_usd=7))
    await router.register_agent(AgentSpec(agent_id="best", vector=unit(1.0), cost_per_call_micro_usd=1))
    for mode in RouteMode:
        result = router.rank(RouteQuery(vector=unit(1.0), mode=mode, threshold=0.5, top_k=3))
        expected = ["best", "a", "b"] if mode is RouteMode.COST_BIASED else ["a", "b", "best"]
        assert [c.agent_id for c in result.candidates] == expected


async def test_cards_of_one_vector_tie_wherever_their_rows_are_scored(router: Router) -> None:
    """Identical vectors score identically, whatever rows are scored with them.

    BLAS's matrix-vector product sums some rows of a block in another order
    than the rest: cards of one vector differed in the last bit, and their tie
    went to that noise instead of load and agent_id (with numpy, and with the
    C loop too through a filter, which scores the rows it keeps in numpy).
    """
    rng = np.random.default_rng(5)
    vector = rng.normal(size=DIMENSION).astype(np.float32)
    for i in range(3):
        await router.register_agent(AgentSpec(agent_id=f"a{i}", vector=vector.tobytes(), labels={"k": "v"}))
    for _ in range(20):
        task = (vector + rng.normal(0, 0.3, DIMENSION)).astype(np.float32).tobytes()
        for labels in ({}, {"k": "v"}):
            query = RouteQuery(vector=task, mode=RouteMode.BEST_MATCH, threshold=-1.0, top_k=3, labels=labels)
            ranked = router.rank(query).candidates
            assert [c.agent_id for c in ranked] == ["a0", "a1", "a2"]
            assert len({c.similarity for c in ranked}) == 1


async def test_live_load_and_availability_follow_the_workers(router: Router) -> None:
    await router.register_agent(AgentSpec(agent_id="near", vector=unit(1.0), capacity=2))
    await router.register_agent(AgentSpec(agent_id="far", vector=unit(0.8, 0.6), capacity=2))
    query = RouteQuery(vector=unit(1.0), mode=RouteMode.BEST_MATCH, threshold=0.5)
    assert [c.agent_id for c in router.rank(query).candidates] == ["near", "far"]
    router.update_worker("w1", name="near", capabilities=(), running=2, capacity=2)
    ranked = router.rank(query).candidates
    assert [c.agent_id for c in ranked] == ["far", "near"]
    assert ranked[1].load == pytest.approx(1.0)
    router.update_worker("w1", name="near", capabilities=(), running=0, available=False)
    assert [c.agent_id for c in router.rank(query).candidates] == ["far"]
    router.update_worker("w1", name="near", capabilities=(), running=1)
    assert [(c.agent_id, c.load) for c in router.rank(query).candidates] == [("near", 0.5), ("far", 0.0)]
    router.remove_worker("w1")  # a registered card without workers is available and idle again
    assert [(c.agent_id, c.load) for c in router.rank(query).candidates] == [("near", 0.0), ("far", 0.0)]


async def test_rows_are_reused_and_grow(tmp_path: Path) -> None:
    router = await open_router(tmp_path / "data", quantised_index)
    try:
        specs = cards(150, seed=5)
        for spec in specs:
            await router.register_agent(spec)
        for spec in specs[:100]:
            await router.deregister_agent(spec.agent_id)
        for i in range(60):  # into rows the deregistered cards left
            vector = np.zeros(DIMENSION, dtype=np.float32)
            vector[i] = 1.0
            await router.register_agent(AgentSpec(agent_id=f"new-{i:03d}", vector=vector.tobytes()))
        for i in (0, 37, 59):
            vector = np.zeros(DIMENSION, dtype=np.float32)
            vector[i] = 1.0
            top = router.rank(RouteQuery(vector=vector.tobytes(), threshold=0.99, top_k=1)).candidates[0]
            assert top.agent_id == f"new-{i:03d}"
            assert top.similarity == pytest.approx(1.0, abs=1e-5)
        assert router.agent_count == 110
        with pytest.raises(NoRouteError):
            router.rank(RouteQuery(vector=unit(1.0), threshold=0.5, exclude_agent_ids=frozenset({"new-000"})))
    finally:
        await close_router(router)


async def test_the_c_loop_and_numpy_give_the_same_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ranking_loop: str
) -> None:
    # Registered and worker-declared cards (keys from both ranges), some busy
    # or unavailable, cost and vector ties, filters, every mode; over 2,048
    # cards so the graph is searched (and deepened at low thresholds).
    if ranking_loop != "c":
        pytest.skip("compares the C loop with numpy once")
    router = await open_router(tmp_path / "data", quantised_index)
    try:
        for spec in cards(2100, seed=9):
            await router.register_agent(spec)
        rng = np.random.default_rng(13)
        for w in range(60):
            vector = rng.normal(size=DIMENSION).astype(np.float32)
            card = AgentSpec(agent_id=f"worker-{w:02d}", vector=vector.tobytes(), cost_per_call_micro_usd=10)
            router.update_worker(
                f"w{w}",
                name=f"worker-{w:02d}",
                capabilities=("odd",),
                running=w % 3,
                capacity=2,
                available=w % 5 != 0,
                card=card,
            )
        for i in range(0, 2100, 9):  # busy and unavailable registered cards
            router.update_worker(
                f"r{i}", name=f"a{i:04d}", capabilities=(), running=i % 3, available=i % 4 != 0
            )
        queries = []
        for i in range(120):
            task = rng.normal(size=DIMENSION).astype(np.float32)
            queries.append(
                RouteQuery(
                    vector=task.tobytes(),
                    mode=list(RouteMode)[i % 2],
                    threshold=(-0.2, 0.0, 0.1, 0.3)[i % 4],
                    cost_weight=(0.0, 0.5, 1.0)[i % 3],
                    top_k=(1, 5, 30)[i % 3],
                    include_unavailable=i % 5 == 0,
                    include_below_threshold=True,
                    exclude_agent_ids=frozenset({"a0002"}) if i % 7 == 0 else frozenset(),
                )
            )
        native = [router.rank(q) for q in queries]
        monkeypatch.setattr(router_engine, "_native", None)
        for query, got in zip(queries, native, strict=True):
            expected = router.rank(query)
            assert [c.agent_id for c in got.candidates] == [c.agent_id for c in expected.candidates]
            for a, b in zip(got.candidates, expected.candidates, strict=True):
                assert a.similarity == pytest.approx(b.similarity, abs=1e-6)
                assert a.score == pytest.approx(b.score, abs=1e-6)
                assert (a.load, a.available, a.above_threshold, a.capability) == (
                    b.load,
                    b.available,
                    b.above_threshold,
                    b.capability,
                )
        assert NATIVE is not None
    finally:
        await close_router(router)


def test_the_c_loop_refuses_buffers_that_do_not_fit() -> None:
    if NATIVE is None:
        pytest.skip("the C ranking loop is not built")
    keys = np.array([0, 1], dtype=np.uint64)
    table = np.array([0, 1, -1], dtype=np.intp)
    tiers = np.zeros(2, dtype=np.float64)
    matrix = np.ones((2, 4), dtype=np.float32)
    query = np.ones(4, dtype=np.float32)
    rows, sims = np.empty(2, dtype=np.intp), np.empty(2, dtype=np.float64)
    everyone = cost_biased = False  # include_unavailable, and the ranking mode
    assert NATIVE.eligible(keys, table, table, 1 << 62, tiers, 2.0, matrix, query, everyone, rows, sims) == 2
    assert sims.tolist() == [4.0, 4.0]
    with pytest.raises(ValueError, match="one item per key"):
        NATIVE.eligible(keys, table, table, 1 << 62, tiers, 2.0, matrix, query, everyone, rows[:1], sims)
    with pytest.raises(ValueError, match="past the matrix"):
        NATIVE.eligible(keys, table, table, 1 << 62, tiers, 2.0, matrix[:1], query, everyone, rows, sims)
    with pytest.raises(ValueError, match="whole rows"):
        NATIVE.eligible(keys, table, table, 1 << 62, tiers, 2.0, matrix, query[:3], everyone, rows, sims)
    with pytest.raises(ValueError, match="whole number"):
        NATIVE.eligible(
            keys.view(np.uint8)[:3], table, table, 1 << 62, tiers, 2.0, matrix, query, everyone, rows, sims
        )
    with pytest.raises(ValueError, match="top_k"):
        NATIVE.rank(rows, sims, 2, 0.0, tiers, tiers, tiers, cost_biased, 1.0, 0, rows, sims)
    with pytest.raises(ValueError, match="count"):
        NATIVE.rank(rows, sims, 3, 0.0, tiers, tiers, tiers, cost_biased, 1.0, 1, rows, sims)


@contextlib.asynccontextmanager
async def _traced_router(
    tmp_path: Path, settings: RouterSettings
) -> AsyncIterator[tuple[Router, EventRecorder]]:
    """A router with one agent card, recording its events in a real flight recorder."""
    storage = Storage.open(tmp_path / "data", tables=(*TABLES, *EVENT_TABLES))
    committer = GroupCommitter(storage)
    recorder = EventRecorder(storage, committer)
    recorder.recover()
    router = Router(
        storage,
        committer,
        dimension=DIMENSION,
        embedder=None,
        index_factory=make_index,
        events=recorder,
        settings=settings,
    )
    try:
        await router.load()
        await router.register_agent(AgentSpec(agent_id="only", vector=unit(1.0)))
        yield router, recorder
    finally:
        await router.aclose()
        await recorder.stop()
        await committer.aclose()
        storage.close()


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[Router, EventRecorder]]:
    settings = RouterSettings(route_event_flush_interval_ns=20_000_000, max_pending_route_events=300)
    async with _traced_router(tmp_path, settings) as pair:
        yield pair


def route_events(recorder: EventRecorder) -> list[str]:
    page = recorder.list_events(EventFilter(event_types=frozenset({"ROUTE_DECIDED"})), limit=1000)
    return [str(e.attributes["are.route.agent_id"]) for e in page.events]


async def test_route_events_commit_in_groups_after_the_answer(traced: tuple[Router, EventRecorder]) -> None:
    router, recorder = traced
    await router.route_task(RouteQuery(vector=unit(1.0)))
    with pytest.raises(NoRouteError):
        await router.route_task(RouteQuery(vector=unit(0.0, 1.0)))
    assert route_events(recorder) == []  # queued: the answer waited for no commit
    async with asyncio.timeout(10):  # the flush interval (20 ms), then the commit
        while len(route_events(recorder)) < 2:
            await asyncio.sleep(0.02)
    assert route_events(recorder) == ["only", "only"]
    page = recorder.list_events(EventFilter(event_types=frozenset({"ROUTE_DECIDED"})))
    assert [e.attributes["are.route.routed"] for e in page.events] == [True, False]


async def test_route_events_are_bounded_and_flushed_at_close(traced: tuple[Router, EventRecorder]) -> None:
    router, recorder = traced
    # Many routes: groups commit as they fill, one commit at a time taking
    # what queued meanwhile, so while commits can run (routes come as RPCs,
    # each a few hundred µs) the queue drains and never reaches
    # max_pending_route_events (300).
    for _ in range(700):
        await router.route_task(RouteQuery(vector=unit(1.0)))
        for _ in range(5000):  # bounded: at most about 5 s for the commit under way
            if len(router._route_events) < 100:
                break
            await asyncio.sleep(0.001)
    assert router.dropped_route_events == 0
    await router.aclose()  # commits what is queued
    assert len(route_events(recorder)) == 700


async def test_route_events_over_the_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    async with _traced_router(tmp_path, RouterSettings(max_pending_route_events=10)) as (router, recorder):
        # No await yields to the loop between these routes: the first 10 go to a commit that has not
        # run yet, the next 10 queue behind it, and the last 5 find the queue full.
        for _ in range(25):
            await router.route_task(RouteQuery(vector=unit(1.0)))
        assert router.dropped_route_events == 5
        await router.aclose()
        assert len(route_events(recorder)) == 20


async def test_route_events_whose_commits_fail_are_counted_logged_once_and_tried_less_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="are.router")
    async with _traced_router(tmp_path, RouterSettings()) as (router, recorder):  # a 1 s interval
        storage = router._storage
        real = storage.apply_batches
        full = True

        def apply_batches(batches: Sequence[Batch]) -> Any:  # the writer thread's write, on a full disk
            if full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(batches)

        async def commit_now() -> None:  # as the timer would, without waiting for it
            router.flush_route_events()
            async with asyncio.timeout(10):
                while router._route_committing:
                    await asyncio.sleep(0.001)

        monkeypatch.setattr(storage, "apply_batches", apply_batches)
        for failures in (1, 2, 3):
            for _ in range(3):
                await router.route_task(RouteQuery(vector=unit(1.0)))
            await commit_now()
            assert router._route_commit_failures == failures
            assert router.dropped_route_events == 3 * failures
            assert router._route_flush_delay() == 2.0**failures  # 2, 4, 8 intervals, up to a minute
        await router.route_task(RouteQuery(vector=unit(1.0)))  # queued: its commit waits 8 s, not 1
        assert router._route_flush is not None
        assert router._route_flush.when() - asyncio.get_running_loop().time() > 7
        assert caplog.text.count("could not commit") == 1  # once per run of failures
        full = False
        await commit_now()
        assert router._route_commit_failures == 0
        assert "route events commit again, after 3 failed commits (9 route events dropped" in caplog.text
        assert len(route_events(recorder)) == 1  # the dropped ones are gone; this one is in
        assert router._route_flush_delay() == 1.0


def test_the_records_made_per_route_and_per_card_are_not_tracked_by_the_cyclic_gc() -> None:
    spec = AgentSpec(agent_id="a", capabilities=("x",), labels={"k": "v"}, vector=unit(1.0))
    query = RouteQuery(vector=unit(1.0), labels={"k": "v"}, exclude_agent_ids=frozenset({"b"}))
    assert not any(gc.is_tracked(record) for record in (spec, query))


async def test_a_group_of_route_events_is_recorded_a_slice_per_loop_turn(
    traced: tuple[Router, EventRecorder],
) -> None:
    # Recording a group of 256 in one loop turn held the loop some 0.4 ms.
    router, recorder = traced
    for _ in range(200):  # under a group: queued until the flush
        await router.route_task(RouteQuery(vector=unit(1.0)))
    before = recorder.recorded
    router.flush_route_events()
    seen = [recorder.recorded - before]
    for _ in range(1000):  # bounded: a slice per loop turn
        await asyncio.sleep(0)
        seen.append(recorder.recorded - before)
        if seen[-1] == 200:
            break
    assert seen[-1] == 200
    assert max(b - a for a, b in itertools.pairwise(seen)) <= 32
    assert len(set(seen)) >= 200 // 32
    async with asyncio.timeout(10):  # the commit follows the last slice, in the writer thread
        while len(route_events(recorder)) < 200:
            await asyncio.sleep(0.005)
    assert route_events(recorder) == ["only"] * 200


async def test_a_queue_bound_below_the_group_size_commits_at_the_bound(tmp_path: Path) -> None:
    """Groups commit at 1,024 events or after the interval; a smaller ``max_pending_route_events``
    commits when it is reached instead of dropping routes until the interval passes."""
    settings = RouterSettings(route_event_flush_interval_ns=3_600 * 10**9, max_pending_route_events=50)
    async with _traced_router(tmp_path, settings) as (router, recorder):
        for _ in range(120):
            await router.route_task(RouteQuery(vector=unit(1.0)))
            for _ in range(5000):  # bounded: at most about 5 s for the commit under way
                if len(router._route_events) < 50:
                    break
                await asyncio.sleep(0.001)
        assert router.dropped_route_events == 0
        async with asyncio.timeout(5):
            while len(route_events(recorder)) < 100:  # two groups of 50, long before the hour
                await asyncio.sleep(0.005)
