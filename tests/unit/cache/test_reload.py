"""A commit that fails: its namespaces are reloaded from LMDB, and are out of service until they are.

A store or removal changes memory at once and commits later; when the
commit fails, memory is ahead of LMDB and the namespace is reloaded from
it. That reload used to swallow its own failure, leaving memory ahead: the
failed change stayed in the entry table, the index and the stats, later
writes were made against it, and stop saved a table and an index holding
it with a mark vouching for them, so that after a restart an acknowledged
entry the failed store replaced, or one a failed invalidation named, never
answered again, and an entry never stored was counted. The reload also ran
at once, while later commits of the same namespace were still under way,
so that an acknowledged store committed just after it was missing from
memory. Now the namespace is out of service (NamespaceUnavailableError)
until it is reloaded, once its commits under way ended, again at a flush
(less and less often, see test_reload_backoff.py) while the reload fails;
nothing derived from it is saved meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from are_core.cache import CacheEngine, NamespaceSettings, NamespaceUnavailableError
from are_core.cache._engine import MARKS

from ._failing import FailingLoads as _Loads
from ._failing import GatedCommits, fill, unit, vector
from .conftest import Harness

_FAILED = unit(99)  # the vector of the store whose commit fails


async def _check(harness: Harness, *, answering: tuple[str, ...], missing: tuple[str, ...]) -> None:
    """These acknowledged entries of "a" answer (by prompt and by their own vector); nothing else does."""
    e = harness.e
    for prompt in answering:
        by_prompt = (await e.lookup("a", prompt=f"{prompt} question")).hit
        assert by_prompt is not None, prompt
        assert by_prompt.response == prompt.encode()
        by_vector = (await e.lookup("a", vector=vector("a", prompt))).hit
        assert by_vector is not None, prompt
        assert (by_vector.tier, by_vector.response) == ("SEMANTIC", prompt.encode())
    for prompt in missing:
        assert (await e.lookup("a", prompt=f"{prompt} question")).hit is None, prompt
        assert (await e.lookup("a", vector=vector("a", prompt))).hit is None, prompt
    assert (await e.lookup("a", vector=_FAILED)).hit is None
    state = e._states["a"]
    assert sorted(state.index.keys().tolist()) == sorted(state.heads)
    assert e.stats("a")[0].entries == len(answering)
    bystander = (await e.lookup("b", prompt="beta question")).hit
    assert bystander is not None
    assert bystander.response == b"beta"


async def _fail_a_change(harness: Harness, monkeypatch: pytest.MonkeyPatch, change: str) -> _Loads:
    """Makes one change to "a" whose commit fails, and whose reload fails too."""
    e = harness.e
    committer = harness.committer
    assert committer is not None
    commits = GatedCommits(committer)
    monkeypatch.setattr(committer, "enqueue", commits.enqueue)
    loads = _Loads(e)
    monkeypatch.setattr(e, "_load", loads)
    beta = (await e.lookup("a", prompt="beta question")).hit
    assert beta is not None
    commits.next.append((None, True))
    failing: Awaitable[object]
    if change == "replace":  # a prompt stored again: the old entry leaves memory, a new one enters
        failing = e.store("a", prompt="alpha question", response=b"new", vector=_FAILED)
    elif change == "store":
        failing = e.store("a", prompt="delta question", response=b"delta", vector=_FAILED)
    else:
        failing = e.invalidate("a", entry_ids=[beta.entry_id])
    with pytest.raises(OSError, match="No space left"):
        await failing
    assert loads.failed == 1
    return loads


async def _assert_unavailable(e: CacheEngine) -> None:
    """Every call on "a" is refused with a clear error naming it; "b" serves as before."""
    with pytest.raises(NamespaceUnavailableError, match=r"'a'.*MDB_READERS_FULL") as refused:
        await e.lookup("a", prompt="alpha question")
    assert refused.value.name == "a"
    with pytest.raises(NamespaceUnavailableError, match="'a'"):
        await e.lookup("a", vector=_FAILED)
    with pytest.raises(NamespaceUnavailableError, match="'a'"):
        await e.store("a", prompt="epsilon question", response=b"eps", vector=vector("a", "epsilon"))
    with pytest.raises(NamespaceUnavailableError, match="'a'"):
        await e.invalidate("a", everything=True)
    with pytest.raises(NamespaceUnavailableError, match="'a'"):
        e.stats("a")
    with pytest.raises(NamespaceUnavailableError, match="'a'"):
        await e.put_namespace(NamespaceSettings(name="a", embedder="caller", dimension=8))
    assert await e.lookup_for_task("a", "alpha question") is None  # the scheduler's short-circuit: a miss
    assert e.get_namespace("a").name == "a"  # it still exists (a task's cache key may name it)
    assert [n.name for n in e.list_namespaces()[0]] == ["a", "b"]
    assert [s.namespace for s in e.stats()] == ["b"]
    hit = (await e.lookup("b", prompt="alpha question")).hit
    assert hit is not None
    assert hit.response == b"alpha"


# Whichever change failed, the acknowledged entries are these (a failed invalidation removed nothing).
_ANSWERED = ("alpha", "beta", "gamma")


@pytest.mark.parametrize("change", ["replace", "store", "invalidate"])
async def test_a_namespace_whose_reload_failed_refuses_calls_until_a_flush_reloads_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    await fill(harness)
    loads = await _fail_a_change(harness, monkeypatch, change)
    e = harness.e
    await _assert_unavailable(e)
    harness.clock.advance(1)  # a failed reload is tried again a second later (then less often)
    await e.flush()  # retried, and failing again: still out of service
    assert loads.failed == 2
    await _assert_unavailable(e)
    loads.broken = False
    harness.clock.advance(2)
    await e.flush()
    await _check(harness, answering=_ANSWERED, missing=("delta",))
    stored = await e.store("a", prompt="delta question", response=b"delta", vector=vector("a", "delta"))
    assert not stored.replaced
    await harness.reopen()
    await _check(harness, answering=(*_ANSWERED, "delta"), missing=("epsilon",))


@pytest.mark.parametrize("change", ["replace", "store", "invalidate"])
async def test_a_stop_while_a_reload_fails_saves_nothing_of_the_namespace(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Stop tries the reload again (failing) and saves no table, index or mark of "a"; a restart loads it."""
    await fill(harness)
    storage = harness.storage
    assert storage is not None
    mark = storage.get(MARKS, b"a")
    index_file = harness.root / "data" / "cache" / "a.f32.usearch"
    index_bytes = index_file.read_bytes()
    tables = sorted(p.name for p in (harness.root / "data" / "cache").glob("a.*.entries"))
    loads = await _fail_a_change(harness, monkeypatch, change)
    harness.clock.advance(1)  # the next reload is due
    await harness.close()
    assert loads.failed == 2  # the flush at stop tried once more
    assert index_file.read_bytes() == index_bytes
    assert sorted(p.name for p in (harness.root / "data" / "cache").glob("a.*.entries")) == tables
    await harness.open()
    assert harness.storage is not None
    assert harness.storage.get(MARKS, b"a") == mark  # a start writes none
    await _check(harness, answering=_ANSWERED, missing=("delta",))


async def test_a_store_committed_after_one_that_failed_is_in_the_reloaded_namespace(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stores of "a" in two commits; the first fails, the second commits after it.

    The reload waits for the second (meanwhile "a" is out of service): run
    at once, it read LMDB without the second store, which was acknowledged
    and then never answered in this run.
    """
    await fill(harness)
    e = harness.e
    committer = harness.committer
    assert committer is not None
    commits = GatedCommits(committer)
    monkeypatch.setattr(committer, "enqueue", commits.enqueue)
    first, second = asyncio.Event(), asyncio.Event()
    commits.next += [(first, True), (second, False)]
    failing = asyncio.ensure_future(e.store("a", prompt="alpha question", response=b"new", vector=_FAILED))
    await asyncio.sleep(0)
    storing = asyncio.ensure_future(
        e.store("a", prompt="delta question", response=b"delta", vector=vector("a", "delta"))
    )
    await asyncio.sleep(0)
    first.set()
    with pytest.raises(OSError, match="No space left"):
        await failing
    try:
        with pytest.raises(NamespaceUnavailableError, match=r"'a'.*being reloaded"):
            await e.lookup("a", prompt="delta question")
    finally:
        second.set()
        await storing
    await _check(harness, answering=("alpha", "beta", "gamma", "delta"), missing=("epsilon",))
    await harness.reopen()
    await _check(harness, answering=("alpha", "beta", "gamma", "delta"), missing=("epsilon",))


@pytest.mark.parametrize("reload_fails", [False, True])
async def test_a_store_embedding_while_its_namespace_is_reloaded_stores_in_the_reloaded_one(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, reload_fails: bool
) -> None:
    """A store that took the namespace before another store's commit failed, and went on after the reload.

    It used to change and commit the namespace as it was before the reload
    (memory no call reads any more): acknowledged, and never answered in
    this run. Now it stores in the reloaded namespace, or, while the reload
    fails, is refused like any call.
    """
    await fill(harness)
    e = harness.e
    gate = asyncio.Event()
    embed = e._store_vector

    async def slow_embedding(*args: Any) -> Any:
        await gate.wait()
        return await embed(*args)

    monkeypatch.setattr(e, "_store_vector", slow_embedding)
    storing = asyncio.ensure_future(
        e.store("a", prompt="delta question", response=b"delta", vector=vector("a", "delta"))
    )
    await asyncio.sleep(0)
    monkeypatch.setattr(e, "_store_vector", embed)
    committer = harness.committer
    assert committer is not None
    commits = GatedCommits(committer)
    monkeypatch.setattr(committer, "enqueue", commits.enqueue)
    commits.next.append((None, True))
    loads = _Loads(e)
    loads.broken = reload_fails
    monkeypatch.setattr(e, "_load", loads)
    with pytest.raises(OSError, match="No space left"):
        await e.store("a", prompt="alpha question", response=b"new", vector=_FAILED)
    harness.clock.advance(1)  # past the wait of the namespace's writes after the failed one
    gate.set()
    if reload_fails:
        with pytest.raises(NamespaceUnavailableError, match="'a'"):
            await storing
        loads.broken = False
        harness.clock.advance(1)
        await e.flush()
        await _check(harness, answering=("alpha", "beta", "gamma"), missing=("delta",))
    else:
        await storing
        await _check(harness, answering=("alpha", "beta", "gamma", "delta"), missing=("epsilon",))
    await harness.reopen()
    answering = ("alpha", "beta", "gamma") if reload_fails else ("alpha", "beta", "gamma", "delta")
    await _check(harness, answering=answering, missing=("epsilon",))
