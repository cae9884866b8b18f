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
from pathlib import Path

from are_core.router import TABLES, AgentSpec, NoRouteError, RouterLimitError, RouterSettings
from are_core.storage import GroupCommitter, Storage

from .conftest import open_router, unit


async def test_concurrent_new_registrations_stay_within_max_agents(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    committer = GroupCommitter(storage)
    router = await open_router(storage, committer, settings=RouterSettings(max_agents=3))
    try:
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
    finally:
        await router.aclose()
        await committer.aclose()
        storage.close()


async def test_registering_an_id_a_worker_card_has_is_not_a_creation(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    committer = GroupCommitter(storage)
    router = await open_router(storage, committer)
    try:
        router.update_worker("w1", name="x", capabilities=("cap",), running=0, capacity=1)
        _, created = await router.register_agent(AgentSpec(agent_id="x", vector=unit(1.0)))
        assert not created
        _, created = await router.register_agent(AgentSpec(agent_id="fresh", vector=unit(0.0, 1.0)))
        assert created
    finally:
        await router.aclose()
        await committer.aclose()
        storage.close()


def test_a_refusal_never_rounds_the_gap_away() -> None:
    error = NoRouteError(0.99955, [("Y", 0.99952)])
    message = str(error)
    assert "threshold 0.99955" in message
    assert "Y (0.999520)" in message
    plain = str(NoRouteError(0.6, [("Z", 0.4123)]))
    assert "threshold 0.600" in plain
    assert "Z (0.412)" in plain
