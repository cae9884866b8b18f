"""The brute-force model's ties: equal in float64 is not equal in the router's float32.

Found by the crash model test (tests/crash/test_router_model_sigkill.py,
seed 108 at 300 steps): with the lexical embedder, the task "travel flight"
is exactly as similar to a card described "travel" as to one described
"flight" in float64 (the model), while the router's float32 dot products of
the two differ in the last bit (0.88560230 and 0.88560236 in the C ranking
loop). The model took its equal similarities for an exact tie, to be broken
by agent_id, and failed the router's order, which the engine documents as
free for similarities within float32 rounding of each other (only cards of
one vector must tie exactly, then load and agent_id decide).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from are_core.embed import LexicalEmbedder
from are_core.router import TABLES, AgentSpec, NoRouteError, RouteMode, RouteQuery, RouterSettings
from are_core.storage import GroupCommitter, Storage

from .conftest import open_router
from .test_model_random import Model, _Ask, _Stats, check_answer, expected

LEXICAL_DIMENSION = 32


class _Vectors:
    def __init__(self) -> None:
        self._embedder = LexicalEmbedder(LEXICAL_DIMENSION)

    def vector(self, text: str) -> np.ndarray:
        return np.asarray(self._embedder.embed([text])[0], dtype=np.float32)


async def test_cards_as_similar_in_float64_may_come_in_either_order_and_cards_of_one_vector_may_not(
    tmp_path: Path,
) -> None:
    """Different vectors whose float64 similarities tie may swap; identical vectors keep agent_id order."""
    settings = RouterSettings(threshold=0.5)
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    committer = GroupCommitter(storage)
    router = await open_router(
        storage,
        committer,
        dimension=LEXICAL_DIMENSION,
        embedder=LexicalEmbedder(LEXICAL_DIMENSION),
        settings=settings,
    )
    model = Model(_Vectors(), settings)
    try:
        for agent_id, description in (
            ("card-39", "travel"),
            ("card-56", "flight"),
            ("card-67", "flight"),
            ("card-81", "flight"),
        ):
            spec = AgentSpec(agent_id=agent_id, description=description)
            await router.register_agent(spec)
            model.register(spec)
        task = "travel flight"
        query = model.spec_vector(AgentSpec(agent_id="q", description=task))
        cards = model.cards()
        assert float(cards["card-39"].vector @ query) == float(cards["card-56"].vector @ query)
        for top_k in (1, 4):
            ask = _Ask(mode=RouteMode.BEST_MATCH, threshold=0.5, weight=1.0, top_k=top_k)
            want = expected(cards, query, ask)
            got = router.rank(RouteQuery(text=task, mode=RouteMode.BEST_MATCH, threshold=0.5, top_k=top_k))
            ids = check_answer(got, want, ask, _Stats(), f"top_k {top_k}")
            # The three "flight" cards are one vector: among them agent_id decides, wherever "travel" goes.
            flights = [i for i in ids if i != "card-39"]
            assert flights == sorted(flights), ids
        # And in a NO_ROUTE answer's best below, ordered by similarity, then agent_id.
        ask = _Ask(mode=RouteMode.BEST_MATCH, threshold=0.95, weight=1.0, top_k=4)
        try:
            router.rank(RouteQuery(text=task, mode=RouteMode.BEST_MATCH, threshold=0.95, top_k=4))
        except NoRouteError as error:
            check_answer(error, expected(cards, query, ask), ask, _Stats(), "no route")
        else:
            raise AssertionError("a route above 0.95")
    finally:
        await router.aclose()
        await committer.aclose()
        storage.close()
