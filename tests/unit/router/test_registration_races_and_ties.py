"""Defects a review of the router found (engine in process over real LMDB and usearch, no server).

- Concurrent registrations of new ids all passed the max_agents check (the
  card joins the engine only after its commit, and the locks are per id).
- RegisterAgent answered created=True for an id a worker's card already had
  (router_service.proto: "True when no card had this agent_id before").
- NO_ROUTE_ABOVE_THRESHOLD said "threshold 1.000; best below it: Y (1.000)"
  for 0.99952 under 0.99955.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from are_core.router import (
    TABLES,
    AgentSpec,
    NoRouteError,
    RouteQuery,
    Router,
    RouterLimitError,
    RouterSettings,
)
from are_core.storage import GroupCommitter, Storage

from .conftest import open_router, unit


@contextlib.asynccontextmanager
async def _router(tmp_path: Path, *, settings: RouterSettings | None = None) -> AsyncIterator[Router]:
    """A router on a fresh store in ``tmp_path``, closed (with its store) after the block."""
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    committer = GroupCommitter(storage)
    router = await open_router(storage, committer, **({} if settings is None else {"settings": settings}))
    try:
        yield router
    finally:
        await router.aclose()
        await committer.aclose()
        storage.close()


async def test_concurrent_new_registrations_stay_within_max_agents(tmp_path: Path) -> None:
    async with _router(tmp_path, settings=RouterSettings(max_agents=3)) as router:
        results = await asyncio.gather(
            *(router.register_agent(AgentSpec(agent_id=f"a{i}", vector=unit(1.0, i))) for i in range(10)),
            return_exceptions=True,
        )
        accepted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, RouterLimitError)]
        assert (len(accepted), len(refused)) == (3, 7)
        assert router.agent_count == 3
        # An id already carded may still be updated at the bound.
        _, created = await router.register_agent(AgentSpec(agent_id="a0", vector=unit(0.5, 1.0)))
        assert not created


async def test_registering_an_id_a_worker_card_has_is_not_a_creation(tmp_path: Path) -> None:
    async with _router(tmp_path) as router:
        router.update_worker("w1", name="x", capabilities=("cap",), running=0, capacity=1)
        _, created = await router.register_agent(AgentSpec(agent_id="x", vector=unit(1.0)))
        assert not created
        _, created = await router.register_agent(AgentSpec(agent_id="fresh", vector=unit(0.0, 1.0)))
        assert created


def test_a_refusal_never_rounds_the_gap_away() -> None:
    error = NoRouteError(0.99955, [("Y", 0.99952)])
    message = str(error)
    assert "threshold 0.99955" in message
    assert "Y (0.999520)" in message
    plain = str(NoRouteError(0.6, [("Z", 0.4123)]))
    assert "threshold 0.600" in plain
    assert "Z (0.412)" in plain


class _Held:
    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.go = asyncio.Event()


def _hold_next_commit(router: Router) -> _Held:
    """Holds the router's next commit (the real one, made once released) to act in its window.

    Fault injection at the commit's seam: the race needs a worker to come or go exactly
    while a registration's commit is in flight, which no loop turn count reaches reliably.
    """
    held = _Held()
    committer = router._committer
    submit = committer.submit

    async def submit_when_released(*args: Any, **kwargs: Any) -> Any:
        committer.submit = submit  # type: ignore[method-assign]
        held.entered.set()
        await held.go.wait()
        return await submit(*args, **kwargs)

    committer.submit = submit_when_released  # type: ignore[method-assign]
    return held


async def test_a_worker_leaving_while_its_id_registers_leaves_the_card_its_own_key(tmp_path: Path) -> None:
    # The registration took the worker card's key; the worker left during the commit and freed
    # it, the next worker card took it too: the registered card was unroutable, and once that
    # worker left, a deregister half-failed and ListAgents raised KeyError until a restart.
    async with _router(tmp_path) as router:
        card = AgentSpec(agent_id="X", capabilities=("cx",), vector=unit(1.0))
        router.update_worker("wx", name="X", capabilities=("cx",), card=card)
        release = _hold_next_commit(router)
        registering = asyncio.ensure_future(router.register_agent(card))
        await release.entered.wait()  # the registration awaits its commit now
        router.update_worker("wx", name="X", capabilities=("cx",), available=False)
        router.remove_worker("wx")
        release.go.set()
        await registering
        other = AgentSpec(agent_id="Y", capabilities=("cy",), vector=unit(0.0, 1.0))
        router.update_worker("wy", name="Y", capabilities=("cy",), card=other)
        result = await router.route_task(RouteQuery(vector=unit(1.0), threshold=0.9))
        assert [c.agent_id for c in result.candidates] == ["X"]
        router.update_worker("wy", name="Y", capabilities=("cy",), available=False)
        router.remove_worker("wy")
        await router.deregister_agent("X")
        assert [view.spec.agent_id for view in router.list_agents()[0]] == []


async def test_a_worker_arriving_while_its_id_registers_is_rekeyed_to_the_card(tmp_path: Path) -> None:
    async with _router(tmp_path) as router:
        card = AgentSpec(agent_id="X", capabilities=("cx",), vector=unit(1.0))
        release = _hold_next_commit(router)
        registering = asyncio.ensure_future(router.register_agent(card))
        await release.entered.wait()
        router.update_worker("wx", name="X", capabilities=("cx",), card=card)  # a worker card, a worker key
        release.go.set()
        await registering
        agent = router._agents["X"]
        assert agent.stored is not None
        assert agent.key == agent.stored.key  # memory and LMDB agree (a saved index is trusted by them)
        result = await router.route_task(RouteQuery(vector=unit(1.0), threshold=0.9))
        assert [c.agent_id for c in result.candidates] == ["X"]
