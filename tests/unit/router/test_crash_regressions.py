"""Defects the crash model test (tests/crash/test_router_model_sigkill.py) found, each pinned alone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import numpy as np

from are_core.router import AGENTS_TABLE, TABLES, AgentSpec, ModelSpec, RouteMode, RouteQuery, Router
from are_core.storage import GroupCommitter, Storage
from sidecar._router import _restore_index, new_router_index

from .conftest import DIMENSION, open_router, unit


async def _cancelled_while_committing(call: Awaitable[Any]) -> None:
    """Starts a call, cancels it once it waits for its commit (as a client gone does), waits for it to end."""
    task = asyncio.ensure_future(call)
    await asyncio.sleep(0)  # one step: its batch is submitted, it awaits the commit
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _open(folder: Path) -> tuple[Storage, GroupCommitter, Router]:
    storage = Storage.open(folder / "data", tables=TABLES)
    committer = GroupCommitter(storage)
    router = await open_router(
        storage,
        committer,
        index_factory=new_router_index,
        index_dir=folder / "router",
        restore_index=_restore_index,
    )
    return storage, committer, router


async def _close(storage: Storage, committer: GroupCommitter, router: Router) -> None:
    """A clean stop, as the sidecar's: wait for the router, save its indexes, flush, close."""
    await router.aclose()
    router.save_indexes()
    await committer.aclose()
    storage.close()


def _far(seed: int) -> bytes:
    return np.random.default_rng(seed).normal(size=DIMENSION).astype(np.float32).tobytes()


async def test_changes_cancelled_while_they_commit_still_reach_memory_and_the_saved_index(
    tmp_path: Path,
) -> None:
    """A change whose caller is cancelled while it waits for its commit is committed anyway: memory follows.

    It used to stop at the cancelled await: LMDB changed, memory not. The
    card was listed (and routed to) only after a restart, the catalog and
    the estimator went on without the change, and a clean stop saved the
    agents index as memory had it under a manifest computed from LMDB, so
    the next start restored an index holding the removed card and missing
    the new one (one in, one out: same size), which searches never found.
    """
    storage, committer, router = await _open(tmp_path)
    for i in range(80):  # more than one search's first candidates (64)
        await router.register_agent(AgentSpec(agent_id=f"filler-{i:02d}", vector=_far(i)))
    await router.register_agent(AgentSpec(agent_id="old", vector=unit(1.0)))
    await router.put_catalog([ModelSpec(model_id="m", prior_success_rate=0.5)])
    route = await router.route_model(vector=unit(0.0, 0.0, 1.0))

    await _cancelled_while_committing(router.register_agent(AgentSpec(agent_id="new", vector=unit(0.0, 1.0))))
    await _cancelled_while_committing(router.deregister_agent("old"))
    await _cancelled_while_committing(
        router.put_catalog([ModelSpec(model_id="m", prior_success_rate=0.5), ModelSpec(model_id="n")])
    )
    await _cancelled_while_committing(router.report_outcome(route.route_id, success=True))
    await router.aclose()

    assert router.get_agent("new") is not None
    assert router.get_agent("old") is None
    assert router.catalog is not None and [m.model_id for m in router.catalog.models] == ["m", "n"]
    assert router.outcome_count("m") == 1
    await _close(storage, committer, router)

    storage, committer, router = await _open(tmp_path)
    try:
        assert router.restored_indexes == 2  # the agents index and m's outcomes, as saved
        query = RouteQuery(vector=unit(0.0, 1.0), top_k=1, mode=RouteMode.BEST_MATCH, threshold=0.99)
        assert [c.agent_id for c in router.rank(query).candidates] == ["new"]
        assert router.get_agent("old") is None
    finally:
        await router.aclose()
        await committer.aclose()
        storage.close()


async def test_a_saved_index_vouches_for_what_memory_held_not_for_lmdb(tmp_path: Path) -> None:
    """Should memory ever fall behind LMDB (as it did for a cancelled change), the index a clean
    stop saves is named with the digest of memory, so the next start rebuilds it from LMDB
    instead of restoring the stale file."""
    storage, committer, router = await _open(tmp_path)
    for i in range(80):
        await router.register_agent(AgentSpec(agent_id=f"filler-{i:02d}", vector=_far(i)))
    await router.register_agent(AgentSpec(agent_id="card", vector=unit(1.0)))
    await _close(storage, committer, router)
    storage, committer, router = await _open(tmp_path)
    assert router.restored_indexes == 1  # the clean stop's file matched LMDB
    # Memory falls behind LMDB by one card in and one out (the same size, as after the
    # cancelled changes): LMDB gains "lost", which memory never heard of, and loses "card".
    await router.register_agent(AgentSpec(agent_id="lost", vector=unit(0.0, 1.0)))
    router._remove_vector(router._agents.pop("lost"))  # memory made to fall behind
    await committer.submit(storage.batch().delete(AGENTS_TABLE, b"card"))
    await _close(storage, committer, router)
    storage, committer, router = await _open(tmp_path)
    assert router.restored_indexes == 0  # rebuilt from LMDB
    result = router.rank(RouteQuery(vector=unit(0.0, 1.0), top_k=1, mode=RouteMode.BEST_MATCH))
    assert [c.agent_id for c in result.candidates] == ["lost"]
    assert router.get_agent("card") is None
    await _close(storage, committer, router)
