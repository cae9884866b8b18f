"""Agent cards and RouteTask ranking, on the engine alone (no server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import are_core.router._engine as router_engine
from are_core.router import (
    AGENTS_TABLE,
    TABLES,
    AgentNotFoundError,
    AgentSource,
    AgentSpec,
    DimensionMismatchError,
    EmbedderUnavailableError,
    NoRouteError,
    RouteMode,
    RouteQuery,
    Router,
    RouteResult,
    RouterLimitError,
    RouterSettings,
)
from are_core.storage import GroupCommitter, Storage
from are_core.vector import VectorIndex

from .conftest import DIMENSION, make_index, open_router, unit


async def _register_trio(router: Router) -> None:
    # Three agents that all match the task direction (1, 0, ...), at
    # decreasing similarity and decreasing cost; one that does not match.
    await router.register_agent(
        AgentSpec(agent_id="gold", capabilities=("summarize",), vector=unit(1.0), cost_per_call_micro_usd=900)
    )
    await router.register_agent(
        AgentSpec(
            agent_id="silver", capabilities=("summarize",), vector=unit(0.9, 0.3), cost_per_call_micro_usd=300
        )
    )
    await router.register_agent(
        AgentSpec(
            agent_id="bronze",
            capabilities=("summarize", "translate"),
            vector=unit(0.7, 0.7),
            cost_per_call_micro_usd=100,
            labels={"region": "eu"},
        )
    )
    await router.register_agent(
        AgentSpec(
            agent_id="other", capabilities=("draw",), vector=unit(0.0, 0.0, 1.0), cost_per_call_micro_usd=1
        )
    )


async def test_register_replace_and_deregister(router: Router) -> None:
    view, created = await router.register_agent(AgentSpec(agent_id="a", description="summarise legal text"))
    assert created
    assert view.source is AgentSource.REGISTERED
    assert view.available
    first_create = view.create_time_ns
    view, created = await router.register_agent(AgentSpec(agent_id="a", description="translate", capacity=4))
    assert not created
    assert view.create_time_ns == first_create
    assert view.capacity == 4
    await router.deregister_agent("a")
    assert router.get_agent("a") is None
    with pytest.raises(AgentNotFoundError):
        await router.deregister_agent("a")


async def test_list_pages_in_id_order_with_filters(router: Router) -> None:
    await _register_trio(router)
    page, last = router.list_agents(limit=2)
    assert [v.spec.agent_id for v in page] == ["bronze", "gold"]
    assert last == "gold"
    page, last = router.list_agents(after=last, limit=2)
    assert [v.spec.agent_id for v in page] == ["other", "silver"]
    assert last == ""
    page, _ = router.list_agents(capability="translate")
    assert [v.spec.agent_id for v in page] == ["bronze"]
    page, _ = router.list_agents(labels={"region": "eu"})
    assert [v.spec.agent_id for v in page] == ["bronze"]


async def test_best_match_ranks_by_similarity(router: Router) -> None:
    await _register_trio(router)
    result = router.rank(RouteQuery(vector=unit(1.0), mode=RouteMode.BEST_MATCH, threshold=0.6, top_k=5))
    assert [c.agent_id for c in result.candidates] == ["gold", "silver", "bronze"]
    assert all(c.above_threshold for c in result.candidates)
    assert result.candidates[0].similarity == pytest.approx(1.0, abs=1e-5)


async def test_cost_biased_picks_the_cheapest_above_threshold(router: Router) -> None:
    await _register_trio(router)
    result = router.rank(RouteQuery(vector=unit(1.0), mode=RouteMode.COST_BIASED, threshold=0.6))
    assert [c.agent_id for c in result.candidates] == ["bronze", "silver", "gold"]
    assert result.candidates[0].reason.startswith("cheapest above 0.60")
    # A higher threshold leaves bronze (similarity ~0.71) out.
    result = router.rank(RouteQuery(vector=unit(1.0), mode=RouteMode.COST_BIASED, threshold=0.9))
    assert [c.agent_id for c in result.candidates] == ["silver", "gold"]
    # Cost weight 0 is best match again.
    result = router.rank(
        RouteQuery(vector=unit(1.0), mode=RouteMode.COST_BIASED, threshold=0.6, cost_weight=0.0)
    )
    assert [c.agent_id for c in result.candidates] == ["gold", "silver", "bronze"]


async def test_nothing_above_threshold_is_an_error_listing_the_best_below(router: Router) -> None:
    await _register_trio(router)
    with pytest.raises(NoRouteError) as caught:
        router.rank(RouteQuery(vector=unit(0.0, 1.0), threshold=0.95))
    assert caught.value.best_below[0][0] == "bronze"
    assert "bronze" in str(caught.value)
    result = router.rank(
        RouteQuery(vector=unit(0.0, 1.0), threshold=0.95, include_below_threshold=True, top_k=2)
    )
    assert [c.agent_id for c in result.candidates] == ["bronze", "silver"]
    assert not any(c.above_threshold for c in result.candidates)


async def test_a_text_embedded_lexically_that_routes_nowhere_says_why_and_what_would(router: Router) -> None:
    description = "reviews and summarises legal contracts"
    await router.register_agent(AgentSpec(agent_id="legal", capabilities=("legal",), description=description))
    with pytest.raises(NoRouteError) as caught:  # a paraphrase: words shared, not enough of them
        router.rank(RouteQuery(text="summarise a legal contract", threshold=0.5))
    assert caught.value.best_below[0][0] == "legal"
    assert "lexical: texts match by shared words" in str(caught.value)
    assert "--router-embedder model:DIR" in str(caught.value)
    with pytest.raises(NoRouteError) as caught:  # a vector: the embedder had no part in it
        router.rank(RouteQuery(vector=unit(0.0, 1.0), threshold=0.99))
    assert "lexical" not in str(caught.value)


async def test_filters_and_exclusions(router: Router) -> None:
    await _register_trio(router)
    query = RouteQuery(vector=unit(1.0), threshold=0.6, exclude_agent_ids=frozenset({"bronze"}))
    assert router.rank(query).candidates[0].agent_id == "silver"
    query = RouteQuery(vector=unit(1.0), threshold=0.6, required_capabilities=("translate",))
    result = router.rank(query)
    assert [c.agent_id for c in result.candidates] == ["bronze"]
    assert result.candidates[0].capability == "translate"
    query = RouteQuery(vector=unit(1.0), threshold=0.6, labels={"region": "eu"})
    assert [c.agent_id for c in router.rank(query).candidates] == ["bronze"]
    with pytest.raises(NoRouteError):
        router.rank(RouteQuery(vector=unit(1.0), required_capabilities=("nobody-has-this",)))


async def test_load_breaks_ties_and_full_agents_rank_last(router: Router) -> None:
    for name in ("a", "b", "c"):
        await router.register_agent(
            AgentSpec(
                agent_id=name, capabilities=("x",), vector=unit(1.0), cost_per_call_micro_usd=10, capacity=4
            )
        )
    router.update_worker("w-a", name="a", capabilities=("x",), running=3, capacity=4)
    router.update_worker("w-b", name="b", capabilities=("x",), running=1, capacity=4)
    router.update_worker("w-c", name="c", capabilities=("x",), running=4, capacity=4)
    result = router.rank(RouteQuery(vector=unit(1.0), top_k=3))
    assert [c.agent_id for c in result.candidates] == ["b", "a", "c"]
    assert result.candidates[2].load == pytest.approx(1.0)
    assert "at capacity" in result.candidates[2].reason


async def test_worker_cards_follow_their_workers(router: Router) -> None:
    router.update_worker("w1", name="writer", capabilities=("write",), running=0, capacity=2)
    view = router.get_agent("writer")
    assert view is not None
    assert view.source is AgentSource.WORKER
    assert view.worker_ids == ("w1",)
    assert router.route_for_intent("write").agent_id == "writer"
    # Disconnected: unavailable at once, then gone.
    router.update_worker("w1", name="writer", capabilities=("write",), available=False)
    view = router.get_agent("writer")
    assert view is not None
    assert not view.available
    with pytest.raises(NoRouteError):
        router.route_for_intent("write")
    result = router.rank(RouteQuery(text="write", include_unavailable=True))
    assert result.candidates[0].agent_id == "writer"
    assert not result.candidates[0].available
    router.remove_worker("w1")
    assert router.get_agent("writer") is None
    with pytest.raises(AgentNotFoundError):
        await router.deregister_agent("writer")


async def test_text_routing_with_the_lexical_embedder(router: Router) -> None:
    await router.register_agent(
        AgentSpec(agent_id="legal", description="summarize legal contracts", capabilities=("legal-summary",))
    )
    await router.register_agent(
        AgentSpec(agent_id="images", description="generate images from prompts", capabilities=("image-gen",))
    )
    candidate = router.route_for_intent("summarize this legal contract", labels={})
    assert candidate.agent_id == "legal"
    assert candidate.capability == "legal-summary"


async def test_bad_vectors_and_missing_embedder(router: Router, tmp_path: Path) -> None:
    with pytest.raises(DimensionMismatchError) as caught:
        await router.register_agent(AgentSpec(agent_id="x", vector=np.zeros(3, dtype=np.float32).tobytes()))
    assert (caught.value.expected, caught.value.actual) == (DIMENSION, 3)
    with pytest.raises(DimensionMismatchError):
        router.rank(RouteQuery(vector=np.zeros(5, dtype=np.float32).tobytes()))
    storage = Storage.open(tmp_path / "other", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            bare = Router(storage, committer, dimension=DIMENSION, embedder=None, index_factory=make_index)
            await bare.load()
            with pytest.raises(EmbedderUnavailableError):
                await bare.register_agent(AgentSpec(agent_id="x", description="no vector"))
            await bare.register_agent(AgentSpec(agent_id="x", vector=unit(1.0)))
            with pytest.raises(EmbedderUnavailableError):
                bare.rank(RouteQuery(text="hello"))
    finally:
        storage.close()


async def test_card_limit(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            small = Router(
                storage,
                committer,
                dimension=DIMENSION,
                embedder=None,
                index_factory=make_index,
                settings=RouterSettings(max_agents=2),
            )
            await small.load()
            await small.register_agent(AgentSpec(agent_id="a", vector=unit(1.0)))
            await small.register_agent(AgentSpec(agent_id="b", vector=unit(1.0)))
            await small.register_agent(
                AgentSpec(agent_id="a", vector=unit(0.5, 0.5))
            )  # a replacement is fine
            with pytest.raises(RouterLimitError):
                await small.register_agent(AgentSpec(agent_id="c", vector=unit(1.0)))
    finally:
        storage.close()


async def test_many_agents_cost_biased_finds_the_cheapest_deep_in_the_index(router: Router) -> None:
    rng = np.random.default_rng(7)
    target = np.zeros(DIMENSION, dtype=np.float32)
    target[0] = 1.0
    # 300 agents near the target (similarity > 0.8), costs 1000..1299; the
    # cheapest is the least similar of them.
    for i in range(300):
        noise = rng.normal(0, 1, DIMENSION).astype(np.float32)
        noise[0] = 0
        noise /= np.linalg.norm(noise)
        weight = 0.05 + 0.45 * i / 299
        vector = (target + weight * noise).astype(np.float32)
        await router.register_agent(
            AgentSpec(agent_id=f"near-{i:03d}", vector=vector.tobytes(), cost_per_call_micro_usd=1299 - i)
        )
    result = router.rank(RouteQuery(vector=target.tobytes(), threshold=0.8, top_k=3))
    assert result.candidates[0].agent_id == "near-299"
    assert result.candidates[0].similarity >= 0.8


async def test_one_search_mixes_registered_and_worker_cards(router: Router) -> None:
    """Registered and worker-declared cards draw index keys from two ranges; one ranking sees both."""
    await router.register_agent(
        AgentSpec(agent_id="summarizer", description="write a summary", cost_per_call_micro_usd=50)
    )
    router.update_worker(
        "w1", name="summary-writer", capabilities=("write", "summary"), running=0, capacity=1
    )
    result = router.rank(RouteQuery(text="write summary", top_k=5, threshold=0.1))
    assert {c.agent_id for c in result.candidates} == {"summarizer", "summary-writer"}
    router.remove_worker("w1")
    result = router.rank(RouteQuery(text="write summary", top_k=5, threshold=0.1))
    assert [c.agent_id for c in result.candidates] == ["summarizer"]


async def test_keys_of_dropped_cards_are_reused_so_churn_stays_bounded(router: Router) -> None:
    """Workers connecting and leaving (and cards registered and removed) reuse index keys:
    the key-to-row map stays as large as the most cards held at once, and every
    reused key routes to its new card, never to the one that held it before."""
    await router.register_agent(
        AgentSpec(agent_id="steady", description="translate french", capabilities=("fr",))
    )
    for round_ in range(300):
        router.update_worker(
            f"w{round_}", name=f"writer-{round_}", capabilities=("write", "summary"), running=0
        )
        await router.register_agent(AgentSpec(agent_id=f"card-{round_}", description="review code"))
        top = router.rank(RouteQuery(text="write summary", top_k=1, threshold=0.1)).candidates[0]
        assert top.agent_id == f"writer-{round_}"
        top = router.rank(RouteQuery(text="review code", top_k=1, threshold=0.1)).candidates[0]
        assert top.agent_id == f"card-{round_}"
        router.remove_worker(f"w{round_}")
        await router.deregister_agent(f"card-{round_}")
    assert router._key_rows._workers.shape[0] == 64
    assert router._key_rows._cards.shape[0] == 64
    assert [
        c.agent_id for c in router.rank(RouteQuery(text="translate french", threshold=0.1)).candidates
    ] == ["steady"]


async def test_equal_scores_go_to_the_better_match_before_load_and_id(router: Router) -> None:
    """Cost-biased at weight 1 with equal costs (every card's default is 0): similarity decides."""
    await router.register_agent(AgentSpec(agent_id="a-weak", capabilities=("x",), vector=unit(1.0, 1.0)))
    await router.register_agent(AgentSpec(agent_id="z-strong", capabilities=("x",), vector=unit(1.0)))
    result = router.rank(RouteQuery(vector=unit(1.0), top_k=2))
    assert [c.agent_id for c in result.candidates] == ["z-strong", "a-weak"]
    assert result.candidates[0].score == result.candidates[1].score


async def test_an_intent_never_goes_to_a_card_without_capabilities(router: Router) -> None:
    """The scheduler dispatches to the candidate's capability: a card declaring none has no worker class."""
    await router.register_agent(AgentSpec(agent_id="translator", description="translate french documents"))
    with pytest.raises(NoRouteError):
        router.route_for_intent("translate french documents")
    # RouteTask still lists it: the caller decides what to do with a card.
    assert router.rank(RouteQuery(text="translate french documents")).candidates[0].agent_id == "translator"
    await router.register_agent(
        AgentSpec(agent_id="fr", description="translate french documents", capabilities=("translate",))
    )
    candidate = router.route_for_intent("translate french documents")
    assert (candidate.agent_id, candidate.capability) == ("fr", "translate")


async def test_an_identical_vector_reaches_a_threshold_of_one(router: Router) -> None:
    vector = unit(1.0, 1.0, 1.0)
    await router.register_agent(AgentSpec(agent_id="tri", capabilities=("x",), vector=vector))
    result = router.rank(RouteQuery(vector=vector, threshold=1.0, mode=RouteMode.BEST_MATCH))
    assert [c.agent_id for c in result.candidates] == ["tri"]
    assert result.candidates[0].above_threshold
    with pytest.raises(NoRouteError):
        router.rank(RouteQuery(vector=unit(1.0, 1.0, 0.9), threshold=1.0))


async def test_concurrent_registrations_of_one_new_id_report_it_new_once(router: Router) -> None:
    specs = [AgentSpec(agent_id="dup", capabilities=("x",), vector=unit(1.0, float(i))) for i in range(5)]
    results = await asyncio.gather(*(router.register_agent(spec) for spec in specs))
    assert [created for _, created in results] == [True, False, False, False, False]
    assert router.agent_count == 1
    # The card in memory and the one stored share their index key (a restart finds it).
    stored = router._storage.get(AGENTS_TABLE, b"dup")
    assert stored is not None
    assert router_engine._agent_codec.decode(stored).key == router._agents["dup"].key
    assert router.rank(RouteQuery(vector=unit(1.0, 4.0))).candidates[0].agent_id == "dup"


async def test_a_draining_worker_no_longer_counts_toward_its_card_s_room(router: Router) -> None:
    """w1 drains, w2 is full: the card has no free slot, so it ranks after one that has."""
    vector = unit(1.0)
    spec = AgentSpec(agent_id="cls-a", capabilities=("x",), vector=vector)
    router.update_worker("w1", name="cls-a", capabilities=("x",), running=1, capacity=2, card=spec)
    router.update_worker("w2", name="cls-a", capabilities=("x",), running=3, capacity=3, card=spec)
    other = AgentSpec(agent_id="cls-b", capabilities=("x",), vector=vector)
    router.update_worker("w3", name="cls-b", capabilities=("x",), running=9, capacity=10, card=other)
    router.update_worker("w1", name="cls-a", capabilities=("x",), running=1, capacity=2, available=False)
    view = router.get_agent("cls-a")
    assert view is not None
    assert view.available
    assert (view.running, view.capacity) == (3, 3)
    result = router.rank(RouteQuery(vector=vector, top_k=2, mode=RouteMode.BEST_MATCH))
    assert [c.agent_id for c in result.candidates] == ["cls-b", "cls-a"]
    assert "at capacity" in result.candidates[1].reason


async def test_reasons_never_contradict_the_numbers(router: Router) -> None:
    await router.register_agent(AgentSpec(agent_id="fmt", capabilities=("f",), vector=unit(1.0)))
    query = unit(0.9575, float(np.sqrt(1 - 0.9575**2)))
    best = router.rank(RouteQuery(vector=query, threshold=0.957, mode=RouteMode.BEST_MATCH)).candidates[0]
    assert best.reason.startswith("similarity 0.958 above 0.957"), best.reason
    cheap = router.rank(RouteQuery(vector=query, threshold=0.957)).candidates[0]
    assert cheap.reason.startswith("cheapest above 0.957"), cheap.reason
    near = unit(0.9574, float(np.sqrt(1 - 0.9574**2)))
    close = router.rank(RouteQuery(vector=near, threshold=0.9574, mode=RouteMode.BEST_MATCH)).candidates[0]
    assert close.reason.startswith("similarity 0.9574"), close.reason  # not "0.957 above 0.9574"
    assert "above 0.9574" in close.reason
    assert (
        router.rank(RouteQuery(vector=query, threshold=0.6))
        .candidates[0]
        .reason.startswith("cheapest above 0.60")
    )


async def test_no_route_lists_the_true_best_below_even_through_filters(router: Router) -> None:
    # 200 cards at falling similarity to (1, 0, ...); three carry the label, one
    # among the 64 nearest and two far below: the message lists all three.
    for i in range(200):
        labels = {"gpu": "yes"} if i in (5, 150, 190) else {}
        await router.register_agent(
            AgentSpec(agent_id=f"a{i:03d}", capabilities=("x",), vector=unit(1.0, 0.05 * i), labels=labels)
        )
    with pytest.raises(NoRouteError) as caught:
        router.rank(RouteQuery(vector=unit(1.0), threshold=0.99999, top_k=1, labels={"gpu": "yes"}))
    assert [agent_id for agent_id, _ in caught.value.best_below] == ["a005", "a150", "a190"]


async def test_below_the_threshold_free_agents_rank_before_busy_ones(router: Router) -> None:
    busy = AgentSpec(agent_id="busy", capabilities=("x",), vector=unit(1.0, 0.1))
    router.update_worker("wb", name="busy", capabilities=("x",), running=1, capacity=1, card=busy)
    await router.register_agent(AgentSpec(agent_id="free", capabilities=("x",), vector=unit(1.0, 0.3)))
    result = router.rank(RouteQuery(vector=unit(1.0), threshold=0.999, top_k=1, include_below_threshold=True))
    assert [c.agent_id for c in result.candidates] == ["free"]
    assert not result.candidates[0].above_threshold


async def test_below_the_threshold_a_free_agent_beyond_the_first_search_ranks_before_busy_ones(
    router: Router,
) -> None:
    # 70 busy cards nearer the task than the one free card: more than the first search keeps (64).
    for i in range(70):
        card = AgentSpec(agent_id=f"busy{i:02d}", capabilities=("x",), vector=unit(1.0, 0.001 * i))
        router.update_worker(
            f"w{i}", name=card.agent_id, capabilities=("x",), running=1, capacity=1, card=card
        )
    await router.register_agent(AgentSpec(agent_id="free", capabilities=("x",), vector=unit(1.0, 0.5)))
    # Similarity about 0.71 to the busy cards, 0.63 to the free one: none clears 0.9.
    query = RouteQuery(vector=unit(1.0, 0.0, 1.0), threshold=0.9, top_k=2, include_below_threshold=True)
    result = router.rank(query)
    assert [c.agent_id for c in result.candidates] == ["free", "busy00"]
    assert not any(c.above_threshold for c in result.candidates)


async def test_no_route_is_confirmed_exactly_after_cards_were_replaced(tmp_path: Path) -> None:
    """Replacing vectors damages an HNSW graph: a card it can no longer reach must still be found."""
    dimension, count = 32, 3_000
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(30, dimension))

    def draw(n: int) -> np.ndarray:
        rows = centres[rng.integers(0, 30, n)] + rng.normal(0, 0.35, (n, dimension))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return rows.astype(np.float32)

    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            engine = await open_router(storage, committer, dimension=dimension)
            vectors = draw(count)

            async def register(i: int) -> None:
                await engine.register_agent(
                    AgentSpec(agent_id=f"a{i:05d}", capabilities=("x",), vector=vectors[i].tobytes())
                )

            for start in range(0, count, 500):
                await asyncio.gather(*(register(i) for i in range(start, start + 500)))
            replaced = rng.choice(count, 600, replace=False)
            vectors[replaced] = draw(600)
            for start in range(0, 600, 200):
                await asyncio.gather(*(register(int(i)) for i in replaced[start : start + 200]))
            for i in range(count):
                query = RouteQuery(
                    vector=vectors[i].tobytes(), top_k=1, threshold=0.99, mode=RouteMode.BEST_MATCH
                )
                assert router_similarity(engine.rank(query)) >= 0.99, i
    finally:
        storage.close()


def router_similarity(result: RouteResult) -> float:
    return result.candidates[0].similarity


async def test_the_index_is_rebuilt_after_churn_keeping_changes_made_meanwhile(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            engine = await open_router(storage, committer, settings=RouterSettings(index_rebuild_changes=8))
            for i in range(40):
                await engine.register_agent(
                    AgentSpec(agent_id=f"a{i:02d}", capabilities=("x",), vector=unit(1.0, 0.1 * i))
                )
            engine.update_worker(
                "w-old",
                name="old",
                capabilities=("x",),
                card=AgentSpec(agent_id="old", capabilities=("x",), vector=unit(0.0, 0.0, 1.0)),
            )
            for i in range(8):  # the eighth replacement starts a rebuild
                await engine.register_agent(
                    AgentSpec(agent_id=f"a{i:02d}", capabilities=("x",), vector=unit(0.0, 1.0, 0.1 * i))
                )
            assert engine.index_rebuilds == 0
            # Changes while the rebuild runs are replayed on the new index.
            engine.update_worker(
                "w-new",
                name="new",
                capabilities=("x",),
                card=AgentSpec(agent_id="new", capabilities=("x",), vector=unit(0.0, 0.0, 0.0, 1.0)),
            )
            engine.remove_worker("w-old")
            async with asyncio.timeout(10):
                while engine.index_rebuilds == 0:
                    await asyncio.sleep(0.01)
            best = RouteMode.BEST_MATCH
            assert (
                engine.rank(RouteQuery(vector=unit(0.0, 0.0, 0.0, 1.0), mode=best)).candidates[0].agent_id
                == "new"
            )
            with pytest.raises(NoRouteError):
                engine.rank(RouteQuery(vector=unit(0.0, 0.0, 1.0), mode=best, threshold=0.9))
            for i in range(8):
                top = engine.rank(RouteQuery(vector=unit(0.0, 1.0, 0.1 * i), mode=best, top_k=1)).candidates[
                    0
                ]
                assert (top.agent_id, round(top.similarity, 5)) == (f"a{i:02d}", 1.0)
            assert len(engine._index) == engine.agent_count == 41
    finally:
        storage.close()


async def test_a_removal_that_starts_a_rebuild_stays_out_of_the_rebuilt_index(tmp_path: Path) -> None:
    """The rebuild a removal starts takes every card holding a row: the card being removed still
    held its own, and came back in the new index. That index then held one vector more than LMDB
    cards, so a saved copy never matched at the next start and was rebuilt instead."""

    def restore(path: Path, dimension: int) -> VectorIndex | None:
        return VectorIndex.restore(path, dimension=dimension, dtype="f32")

    storage = Storage.open(tmp_path / "data", tables=TABLES)
    try:
        async with GroupCommitter(storage) as committer:
            saved = {"index_dir": tmp_path / "indexes", "restore_index": restore}
            settings = RouterSettings(index_rebuild_changes=4)
            engine = await open_router(storage, committer, settings=settings, **saved)
            for i in range(10):
                await engine.register_agent(AgentSpec(agent_id=f"a{i}", vector=unit(*[0.0] * i, 1.0)))
            for i in range(4):  # the fourth removal starts a rebuild
                await engine.deregister_agent(f"a{i}")
            await engine.aclose()  # waits for it
            assert engine.index_rebuilds == 1
            assert len(engine._index) == engine.agent_count == 6
            assert engine.save_indexes() == 1
            again = await open_router(storage, committer, settings=settings, **saved)
            assert again.restored_indexes == 1
            assert again.rank(RouteQuery(vector=unit(*[0.0] * 9, 1.0))).candidates[0].agent_id == "a9"
    finally:
        storage.close()


async def test_an_intent_goes_to_a_capability_a_worker_serves_before_a_cheaper_unserved_card(
    router: Router,
) -> None:
    text = "translate french documents"
    await router.register_agent(
        AgentSpec(agent_id="ghost", description=text, capabilities=("cap-ghost",), cost_per_call_micro_usd=1)
    )
    # Nobody serves anything yet: the best card it is (its workers may come).
    assert router.route_for_intent(text).capability == "cap-ghost"
    live = AgentSpec(
        agent_id="live", description=text, capabilities=("cap-live",), cost_per_call_micro_usd=100
    )
    router.update_worker("w1", name="live", capabilities=("cap-live",), card=live)
    chosen = router.route_for_intent(text)
    assert (chosen.agent_id, chosen.capability) == ("live", "cap-live")
    # A worker serving the ghost's capability makes it the (cheaper) choice again.
    router.update_worker("w2", name="ghost-worker", capabilities=("cap-ghost",))
    assert router.route_for_intent(text).capability == "cap-ghost"


async def test_worker_updates_return_the_capabilities_whose_served_state_changed(router: Router) -> None:
    """What the scheduler re-routes queued intent tasks on: a first worker came, a last one went."""
    await router.register_agent(AgentSpec(agent_id="card", description="write", capabilities=("cap-a",)))
    assert not router.serves("cap-a")  # a card nobody serves
    assert router.update_worker("w1", name="card", capabilities=("cap-a",)) == {"cap-a"}
    assert router.serves("cap-a")
    assert router.update_worker("w2", name="card", capabilities=("cap-a",)) == set()  # not the first
    assert router.update_worker("w1", name="card", capabilities=("cap-a",), running=1) == set()  # load only
    assert router.update_worker("w1", name="card", capabilities=("cap-a",), available=False) == set()
    assert router.update_worker("w2", name="card", capabilities=("cap-a",), available=False) == {"cap-a"}
    assert not router.serves("cap-a")
    assert router.remove_worker("w2") == set()  # already unavailable
    assert router.update_worker("w1", name="card", capabilities=("cap-a",)) == {"cap-a"}  # back
    assert router.remove_worker("w1") == {"cap-a"}  # gone without being marked unavailable first
    # A worker card (no registered card) goes with its last worker.
    spec = AgentSpec(agent_id="live", description="write", capabilities=("cap-b", "cap-c"))
    assert router.update_worker("w3", name="live", capabilities=("cap-b", "cap-c"), card=spec) == {
        "cap-b",
        "cap-c",
    }
    assert router.update_worker("w3", name="live", capabilities=("cap-b",), available=False) == {
        "cap-b",
        "cap-c",
    }
    assert router.remove_worker("w3") == set()
    assert router.update_worker("w4", name="idle", capabilities=("cap-d",), available=False) == set()


async def test_a_worker_card_taken_over_by_a_worker_of_other_capabilities_reports_both_changes(
    router: Router,
) -> None:
    """A rolling upgrade: two workers share a card id, the old one declaring ``v1``, the new one
    ``v2``. The card's capabilities are its first worker's; when that worker goes, they become the
    new one's. ``v1`` stops being served when the old worker drains (the new one never takes its
    tasks), and ``v2`` is served once the card offers it: each change must be reported, or the
    intent tasks queued on ``v1`` are never routed again."""
    old = AgentSpec(agent_id="writer", description="write", capabilities=("cap-v1",))
    new = AgentSpec(agent_id="writer", description="write", capabilities=("cap-v2",))
    assert router.update_worker("old", name="writer", capabilities=("cap-v1",), card=old) == {"cap-v1"}
    assert router.update_worker("new", name="writer", capabilities=("cap-v2",), card=new) == set()
    assert router.serves("cap-v1")
    assert not router.serves("cap-v2")  # the card offers cap-v1 until its first worker goes
    # Draining, the old worker no longer serves cap-v1, and the new one never took its tasks.
    assert router.update_worker("old", name="writer", capabilities=("cap-v1",), available=False) == {"cap-v1"}
    assert not router.serves("cap-v1")
    assert router.remove_worker("old") == {"cap-v2"}
    assert (router.serves("cap-v1"), router.serves("cap-v2")) == (False, True)
    # The same without marking it unavailable first.
    assert router.update_worker("old", name="writer", capabilities=("cap-v1",), card=old) == set()
    assert router.update_worker("newer", name="writer", capabilities=("cap-v1",), card=old) == set()
    assert router.remove_worker("new") == {"cap-v1", "cap-v2"}
    assert (router.serves("cap-v1"), router.serves("cap-v2")) == (True, False)
