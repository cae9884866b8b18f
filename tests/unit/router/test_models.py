"""Model routing: the catalog, the estimator learning from outcomes, durability."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import numpy as np
import pytest

import are_core.router._engine as router_engine
from are_core.embed import LexicalEmbedder
from are_core.router import (
    OUTCOMES_TABLE,
    ROUTES_TABLE,
    TABLES,
    AgentSpec,
    ModelCatalogEmptyError,
    ModelNotInCatalogError,
    ModelSpec,
    NoEligibleModelError,
    OutcomeAlreadyReportedError,
    RouteNotFoundError,
    RouteQuery,
    Router,
    RouterSettings,
)
from are_core.storage import GroupCommitter, Storage
from are_core.vector import VectorIndex

from .conftest import DIMENSION, make_index, open_router, unit

CHEAP = ModelSpec(
    model_id="cheap",
    tier=1,
    input_cost_per_million_tokens_micro_usd=150_000,
    output_cost_per_million_tokens_micro_usd=600_000,
    prior_success_rate=0.9,
)
STRONG = ModelSpec(
    model_id="strong",
    tier=8,
    input_cost_per_million_tokens_micro_usd=5_000_000,
    output_cost_per_million_tokens_micro_usd=15_000_000,
    prior_success_rate=0.9,
)


def synthetic_prompts(seed: int, n: int) -> list[tuple[bytes, bool]]:
    """Prompt vectors in two clusters, easy and hard, labelled; deterministic."""
    rng = np.random.default_rng(seed)
    easy_centre = np.zeros(DIMENSION, dtype=np.float32)
    easy_centre[0] = 1.0
    hard_centre = np.zeros(DIMENSION, dtype=np.float32)
    hard_centre[1] = 1.0
    prompts = []
    for i in range(n):
        hard = i % 2 == 1
        centre = hard_centre if hard else easy_centre
        vector = centre + rng.normal(0, 0.05, DIMENSION).astype(np.float32)
        prompts.append(((vector / np.linalg.norm(vector)).astype(np.float32).tobytes(), hard))
    return prompts


async def test_route_model_needs_a_catalog(router: Router) -> None:
    with pytest.raises(ModelCatalogEmptyError):
        await router.route_model(vector=unit(1.0))


async def test_prior_picks_the_cheapest_expected_to_succeed(router: Router) -> None:
    await router.put_catalog([STRONG, CHEAP])
    choice = await router.route_model(vector=unit(1.0), quality_target=0.8)
    assert choice.model_id == "cheap"
    assert choice.target_met
    assert [e.model_id for e in choice.estimates] == ["cheap", "strong"]
    assert all(e.samples == 0 for e in choice.estimates)
    # A target no prior reaches: the highest expected quality, target not met.
    choice = await router.route_model(vector=unit(1.0), quality_target=0.95)
    assert not choice.target_met
    assert choice.model_id == "cheap"  # equal quality: the cheaper one
    choice = await router.route_model(vector=unit(1.0), exclude_model_ids=["cheap"])
    assert choice.model_id == "strong"
    with pytest.raises(NoEligibleModelError):
        await router.route_model(vector=unit(1.0), exclude_model_ids=["cheap", "strong"])


async def test_expected_cost_and_context_window(router: Router) -> None:
    small = ModelSpec(model_id="small", input_cost_per_million_tokens_micro_usd=1, context_window_tokens=100)
    await router.put_catalog([small, CHEAP])
    choice = await router.route_model(prompt="x" * 4000, quality_target=0.1)  # about 1,000 tokens
    assert choice.model_id == "cheap"
    assert choice.expected_cost_micro_usd == CHEAP.expected_cost(1000, 500)


async def test_feedback_moves_hard_prompts_to_the_strong_model(router: Router) -> None:
    await router.put_catalog([CHEAP, STRONG])
    # Training: route each prompt, report the truth (cheap fails hard prompts).
    for vector, hard in synthetic_prompts(seed=1, n=80):
        choice = await router.route_model(vector=vector, quality_target=0.8)
        success = not (hard and choice.model_id == "cheap")
        await router.report_outcome(choice.route_id, success=success, cost_micro_usd=10)
    # Evaluation on fresh prompts of the same distribution.
    picks: dict[bool, list[str]] = {True: [], False: []}
    for vector, hard in synthetic_prompts(seed=2, n=40):
        choice = await router.route_model(vector=vector, quality_target=0.8)
        picks[hard].append(choice.model_id)
        if hard:
            assert next(e for e in choice.estimates if e.model_id == "cheap").samples >= 5
    assert picks[False].count("cheap") == len(picks[False])
    assert picks[True].count("strong") == len(picks[True])


async def test_report_outcome_rules(router: Router) -> None:
    await router.put_catalog([CHEAP, STRONG])
    choice = await router.route_model(vector=unit(1.0))
    with pytest.raises(ValueError, match="exactly one"):
        await router.report_outcome(choice.route_id)
    with pytest.raises(ValueError, match="outside"):
        await router.report_outcome(choice.route_id, score=1.5)
    # Only catalog models are estimated: another model's outcome stores nothing.
    with pytest.raises(ModelNotInCatalogError, match="made-up"):
        await router.report_outcome(choice.route_id, score=0.7, model_id="made-up")
    assert router.outcome_count("made-up") == 0
    await router.report_outcome(choice.route_id, score=0.7, model_id="strong")
    with pytest.raises(OutcomeAlreadyReportedError):
        await router.report_outcome(choice.route_id, success=True)
    with pytest.raises(RouteNotFoundError):
        await router.report_outcome("r000000000000nothere", success=True)
    assert router.outcome_count("strong") == 1


async def test_expired_routes_are_not_found_and_swept(tmp_path: Path) -> None:
    now = [10**18]
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            engine = Router(
                storage,
                committer,
                dimension=DIMENSION,
                embedder=None,
                index_factory=make_index,
                clock=lambda: now[0],
            )
            await engine.load()
            await engine.put_catalog([CHEAP])
            choice = await engine.route_model(vector=unit(1.0))
            now[0] += engine.settings.route_ttl_ns + 1_000_000
            with pytest.raises(RouteNotFoundError):
                await engine.report_outcome(choice.route_id, success=True)
            assert await engine.sweep_routes() == 1
    finally:
        storage.close()


async def test_cards_catalog_and_outcomes_survive_a_restart(tmp_path: Path) -> None:
    async def open_router(storage: Storage, committer: GroupCommitter) -> Router:
        engine = Router(
            storage,
            committer,
            dimension=DIMENSION,
            embedder=LexicalEmbedder(DIMENSION),
            index_factory=make_index,
            settings=RouterSettings(max_outcomes_per_model=30),
        )
        await engine.load()
        return engine

    storage = Storage.open(tmp_path / "data", tables=TABLES)
    async with GroupCommitter(storage) as committer:
        engine = await open_router(storage, committer)
        await engine.register_agent(
            AgentSpec(agent_id="legal", description="summarize legal contracts", capabilities=("legal",))
        )
        await engine.register_agent(AgentSpec(agent_id="vec", vector=unit(1.0), cost_per_call_micro_usd=5))
        await engine.put_catalog([CHEAP, STRONG])
        for vector, hard in synthetic_prompts(seed=3, n=40):
            choice = await engine.route_model(vector=vector)
            await engine.report_outcome(choice.route_id, success=not hard)
        pending = await engine.route_model(vector=unit(1.0))
        before = [
            (e.model_id, e.samples) for e in (await engine.route_model(vector=unit(0.0, 1.0))).estimates
        ]
        counts = engine.outcome_count("cheap"), engine.outcome_count("strong")
        await engine.aclose()
    storage.close()

    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            engine = await open_router(storage, committer)
            assert engine.agent_count == 2
            assert engine.route_for_intent("summarize a legal contract").agent_id == "legal"
            assert engine.catalog is not None
            assert [m.model_id for m in engine.catalog.models] == ["cheap", "strong"]
            assert (engine.outcome_count("cheap"), engine.outcome_count("strong")) == counts
            assert counts[0] <= 30
            after = [
                (e.model_id, e.samples) for e in (await engine.route_model(vector=unit(0.0, 1.0))).estimates
            ]
            assert after == before
            await engine.report_outcome(pending.route_id, success=True)  # still reportable
            # Replacing the catalog drops the outcomes of models that leave it.
            await engine.put_catalog([CHEAP])
            assert engine.outcome_count("strong") == 0
            assert engine.outcome_count("cheap") > 0
    finally:
        storage.close()


async def test_saved_indexes_are_reused_only_while_they_match_lmdb(tmp_path: Path) -> None:
    def restore(path: Path, dimension: int) -> VectorIndex | None:
        return VectorIndex.restore(path, dimension=dimension, dtype="f32")

    def open_router(storage: Storage, committer: GroupCommitter) -> Router:
        return Router(
            storage,
            committer,
            dimension=DIMENSION,
            embedder=LexicalEmbedder(DIMENSION),
            index_factory=make_index,
            index_dir=tmp_path / "indexes",
            restore_index=restore,
        )

    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            engine = open_router(storage, committer)
            await engine.load()
            await engine.register_agent(
                AgentSpec(agent_id="legal", description="summarize legal contracts", capabilities=("legal",))
            )
            await engine.register_agent(AgentSpec(agent_id="vec", vector=unit(1.0)))
            await engine.put_catalog([CHEAP])
            for vector, _ in synthetic_prompts(seed=4, n=6):
                choice = await engine.route_model(vector=vector)
                await engine.report_outcome(choice.route_id, success=True)
            assert engine.save_indexes() == 2  # agents, outcomes of "cheap"

            again = open_router(storage, committer)
            await again.load()
            assert again.restored_indexes == 2
            assert again.route_for_intent("summarize a legal contract").agent_id == "legal"
            assert again.rank(RouteQuery(vector=unit(1.0))).candidates[0].agent_id == "vec"
            # A change after the save (then a crash: no new save) makes the saved agents index stale.
            await again.register_agent(AgentSpec(agent_id="vec", vector=unit(0.0, 1.0)))

            third = open_router(storage, committer)
            await third.load()
            assert third.restored_indexes == 1  # the outcomes index still matches
            assert third.rank(RouteQuery(vector=unit(0.0, 1.0))).candidates[0].agent_id == "vec"
    finally:
        storage.close()


async def test_outcome_sequences_are_never_reused_so_a_stale_index_never_matches(tmp_path: Path) -> None:
    """Outcomes deleted with their model, new ones reported, a crash: the old saved index must not return."""

    def restore(path: Path, dimension: int) -> VectorIndex | None:
        return VectorIndex.restore(path, dimension=dimension, dtype="f32")

    async def reopen(storage: Storage, committer: GroupCommitter) -> Router:
        return await open_router(storage, committer, index_dir=tmp_path / "indexes", restore_index=restore)

    first, second = unit(1.0), unit(0.0, 1.0)
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            engine = await reopen(storage, committer)
            await engine.put_catalog([CHEAP])
            for _ in range(10):
                choice = await engine.route_model(vector=first)
                await engine.report_outcome(choice.route_id, score=1.0)
            assert engine.save_indexes() == 2  # a clean stop: the (empty) agents and "cheap"'s outcomes

            engine = await reopen(storage, committer)
            await engine.put_catalog([STRONG])  # "cheap" leaves: its outcomes are deleted
            await engine.put_catalog([CHEAP])
            for _ in range(10):
                choice = await engine.route_model(vector=second)
                await engine.report_outcome(choice.route_id, score=0.0)
            # No save (a SIGKILL): the manifest of the first stop is still there.

            engine = await reopen(storage, committer)
            assert engine.restored_indexes == 1  # the agents index; "cheap"'s outcomes are rebuilt
            near_second = engine.estimate(np.frombuffer(second, dtype=np.float32))[0]
            near_first = engine.estimate(np.frombuffer(first, dtype=np.float32))[0]
            assert (near_second.expected_quality, near_second.samples) == (0.0, 10)
            assert near_first.samples == 0  # the deleted outcomes stay deleted
    finally:
        storage.close()


async def test_outcomes_of_another_dimension_are_kept_aside_not_deleted(tmp_path: Path) -> None:
    def vector(dimension: int) -> bytes:
        values = np.zeros(dimension, dtype=np.float32)
        values[0] = 1.0
        return values.tobytes()

    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            engine = await open_router(storage, committer)
            await engine.put_catalog([CHEAP])
            for _ in range(6):
                choice = await engine.route_model(vector=vector(DIMENSION))
                await engine.report_outcome(choice.route_id, score=0.25)
            pending = await engine.route_model(vector=vector(DIMENSION))

            # The router restarts at another dimension: the history is set aside, and
            # an outcome of a route made before is stored (not an error, not half-applied).
            other = await open_router(storage, committer, dimension=2 * DIMENSION)
            assert other.outcome_count("cheap") == 0
            await other.report_outcome(pending.route_id, score=0.25)
            assert other.outcome_count("cheap") == 0
            with pytest.raises(OutcomeAlreadyReportedError):
                await other.report_outcome(pending.route_id, score=0.25)

            # Back at the first dimension, all seven outcomes count again.
            back = await open_router(storage, committer)
            assert back.outcome_count("cheap") == 7
            estimate = back.estimate(np.frombuffer(vector(DIMENSION), dtype=np.float32))[0]
            assert estimate.samples == 7
            assert estimate.expected_quality == pytest.approx(0.25)
    finally:
        storage.close()


async def test_model_routes_are_bounded_the_oldest_go_first(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            engine = await open_router(storage, committer, settings=RouterSettings(max_routes=5))
            await engine.put_catalog([CHEAP])
            routes = [await engine.route_model(vector=unit(1.0)) for _ in range(3)]
            routes += await asyncio.gather(*(engine.route_model(vector=unit(1.0)) for _ in range(5)))
            assert storage.count(ROUTES_TABLE) == 5
            assert engine.evicted_routes == 3
            for gone in routes[:3]:
                with pytest.raises(RouteNotFoundError):
                    await engine.report_outcome(gone.route_id, success=True)
            for kept in routes[3:]:
                await engine.report_outcome(kept.route_id, success=True)

            again = await open_router(storage, committer, settings=RouterSettings(max_routes=5))
            await again.route_model(vector=unit(1.0))
            assert storage.count(ROUTES_TABLE) == 5
    finally:
        storage.close()


async def test_neighbour_similarities_are_exact_not_the_quantised_index_s(tmp_path: Path) -> None:
    """Five failures at cosine 0.302 to the query count (cut-off 0.3), though an 8-bit index rounds them."""

    def index_i8(dimension: int) -> VectorIndex:
        return VectorIndex(dimension=dimension, dtype="i8")

    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            engine = await open_router(storage, committer, index_factory=index_i8)
            await engine.put_catalog([CHEAP])
            side = float(np.sqrt(1 - 0.302**2))
            for i in range(5):
                values = np.zeros(DIMENSION, dtype=np.float32)
                values[0], values[1 + i] = 0.302, side
                choice = await engine.route_model(vector=values.tobytes())
                await engine.report_outcome(choice.route_id, success=False)
            [estimate] = engine.estimate(np.frombuffer(unit(1.0), dtype=np.float32))
            assert (estimate.samples, estimate.expected_quality) == (5, 0.0)
    finally:
        storage.close()


async def test_a_weighted_mean_equal_to_the_target_meets_it(router: Router) -> None:
    # Six outcomes scored 0.7 at these cosines to the query: their weighted
    # mean in floating point is 0.6999999999999998, which must still meet 0.7.
    await router.put_catalog([CHEAP])
    for j, cosine in enumerate((0.812, 0.632, 0.52, 0.508, 0.899, 0.947)):
        values = np.zeros(DIMENSION, dtype=np.float32)
        values[0], values[1 + j] = cosine, np.sqrt(1 - cosine**2)
        choice = await router.route_model(vector=values.tobytes())
        await router.report_outcome(choice.route_id, score=0.7)
    choice = await router.route_model(vector=unit(1.0), quality_target=0.7)
    assert choice.estimates[0].samples == 6
    assert choice.target_met, choice.reason


async def test_an_outcome_committed_as_its_model_leaves_the_catalog_goes_with_it(router: Router) -> None:
    await router.put_catalog([CHEAP, STRONG])
    route = await router.route_model(vector=unit(1.0))
    # The catalog change commits first; the report, checked before it, commits right after.
    await asyncio.gather(
        router.put_catalog([CHEAP]),
        router.report_outcome(route.route_id, success=False, model_id="strong"),
    )
    assert router.outcome_count("strong") == 0
    await router.put_catalog([CHEAP, STRONG])
    assert router.outcome_count("strong") == 0
    assert all(
        router_engine._outcome_codec.decode(value).model_id != "strong"
        for _, value in router._storage.scan(OUTCOMES_TABLE)
    )


async def test_a_cheap_model_below_the_target_is_explored_and_then_learned(tmp_path: Path) -> None:
    """Cheap model at the default prior (0.5), strong at 0.9, target 0.8: without
    exploration every prompt goes to the strong model and the cheap one never
    gets outcomes. A share of the calls explores it; then easy prompts go cheap."""
    cheap = msgspec.structs.replace(CHEAP, prior_success_rate=0.5)
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            engine = await open_router(storage, committer, settings=RouterSettings(model_exploration=0.25))
            await engine.put_catalog([cheap, STRONG])
            explored = 0
            for vector, hard in synthetic_prompts(seed=21, n=200):
                choice = await engine.route_model(vector=vector, quality_target=0.8)
                explored += choice.reason.startswith("exploring")
                success = not (hard and choice.model_id == "cheap")
                await engine.report_outcome(choice.route_id, success=success)
            assert 0 < explored <= 50  # a quarter of the calls that had a candidate, at most
            picks: dict[bool, list[str]] = {False: [], True: []}
            for vector, hard in synthetic_prompts(seed=22, n=20):
                choice = await engine.route_model(vector=vector, quality_target=0.8)
                picks[hard].append(choice.model_id)
            assert picks[False] == ["cheap"] * 10
            assert picks[True] == ["strong"] * 10

            never = await open_router(storage, committer, settings=RouterSettings(model_exploration=0.0))
            await never.put_catalog([cheap, STRONG])  # the cheap model's outcomes stay
            assert never.outcome_count("cheap") > 0
    finally:
        storage.close()
