"""A stop whose commits fail: the mark never vouches for an index file ahead of LMDB.

A clean stop saves each changed index and then a mark saying the saved
file agrees with the entry table, so the next start repairs the index from
the journal after the table alone. A stop used to save the index as memory
had it while a store was still committing (a call cancelled by the server's
shutdown grace keeps its commit running): when that commit then failed, the
new mark was not written, and the old one vouched for a file holding the
failed store's key in place of the entry it replaced. Same count, so the
start trusted the file, and the acknowledged entry never answered by its
own vector again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from are_core.cache import CacheEngine

from ._failing import SPACES, GatedCommits, fill, unit, vector
from .conftest import Harness


def _hook_settled(
    monkeypatch: pytest.MonkeyPatch, engine: CacheEngine, before: Callable[[int], Awaitable[None]]
) -> None:
    """Runs ``before(call number)`` each time the engine starts waiting for the commits in flight."""
    settled = engine._settled
    calls = 0

    async def settling(ticket: int) -> None:
        nonlocal calls
        calls += 1
        await before(calls)
        await settled(ticket)

    monkeypatch.setattr(engine, "_settled", settling)


async def _fill(harness: Harness) -> None:
    """Two namespaces saved by a clean stop (their marks vouch for their indexes), changed since."""
    e = await fill(harness)
    for name in SPACES:  # acknowledged in this run: a new entry and a removal
        await e.store(name, prompt="delta question", response=b"delta", vector=vector(name, "delta"))
        gamma = (await e.lookup(name, prompt="gamma question")).hit
        assert gamma is not None
        assert await e.invalidate(name, entry_ids=[gamma.entry_id]) == 1


async def _check(harness: Harness, failed: np.ndarray) -> None:
    """Every acknowledged entry answers by prompt and by its own vector; nothing else answers."""
    e = harness.e
    for name in SPACES:
        for prompt, response in (("alpha", b"alpha"), ("beta", b"beta"), ("delta", b"delta")):
            by_prompt = (await e.lookup(name, prompt=f"{prompt} question")).hit
            assert by_prompt is not None, (name, prompt)
            assert by_prompt.response == response
            by_vector = (await e.lookup(name, vector=vector(name, prompt))).hit
            assert by_vector is not None, (name, prompt)
            assert (by_vector.tier, by_vector.response) == ("SEMANTIC", response)
        assert (await e.lookup(name, prompt="gamma question")).hit is None
        assert (await e.lookup(name, vector=vector(name, "gamma"))).hit is None
        assert (await e.lookup(name, vector=failed)).hit is None
        state = e._states[name]
        assert sorted(state.index.keys().tolist()) == sorted(state.heads)


@pytest.mark.parametrize("failing", SPACES)
async def test_a_store_failing_while_stop_saves_the_indexes_leaves_no_mark_vouching_for_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A store of a prompt again, cut off by the shutdown, fails while stop saves the indexes.

    In the namespace saved first ("a"), the file was written ahead of the
    commit. In a later one ("b"), stop saved the namespace it had listed
    before the failure reloaded it from LMDB: the stale index, again
    ahead of LMDB. Either way the old mark vouched for the file.
    """
    await _fill(harness)
    e = harness.e
    committer = harness.committer
    assert committer is not None
    commits = GatedCommits(committer)
    monkeypatch.setattr(committer, "enqueue", commits.enqueue)
    fail = asyncio.Event()
    commits.next.append((fail, True))
    failed = unit(99)
    storing = asyncio.ensure_future(e.store(failing, prompt="alpha question", response=b"new", vector=failed))
    await asyncio.sleep(0)  # in memory: the old entry replaced; its commit under way
    assert not storing.done()

    async def fail_now(call: int) -> None:  # once stop waits for it
        fail.set()

    _hook_settled(monkeypatch, e, fail_now)
    await harness.close()
    with pytest.raises(OSError, match="No space left"):
        await storing
    await harness.open()
    await _check(harness, failed)


@pytest.mark.parametrize("failing", SPACES)
async def test_a_store_begun_while_stop_drains_and_failing_after_a_save_leaves_no_mark_vouching(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """Stop waits for the commits in flight before saving; one that began meanwhile is not waited for.

    It fails once the first namespace ("a") is saved. There, the mark no
    longer vouches before the file is written, so no start trusts it. In
    "b", reloaded from LMDB by the failure, stop saves the reloaded index,
    not the one it would have listed before.
    """
    await _fill(harness)
    e = harness.e
    committer = harness.committer
    assert committer is not None
    commits = GatedCommits(committer)
    monkeypatch.setattr(committer, "enqueue", commits.enqueue)
    first, second = asyncio.Event(), asyncio.Event()
    commits.next.append((first, False))
    storing = asyncio.ensure_future(e.store("a", prompt="epsilon question", response=b"eps", vector=unit(77)))
    await asyncio.sleep(0)
    failed = unit(99)
    later: list[asyncio.Future[object]] = []

    async def meanwhile(call: int) -> None:
        if call > 1:  # the save is done: the late store fails
            second.set()
            return
        commits.next.append((second, True))
        later.append(
            asyncio.ensure_future(e.store(failing, prompt="alpha question", response=b"new", vector=failed))
        )
        await asyncio.sleep(0)  # in memory, its commit under way
        first.set()

    _hook_settled(monkeypatch, e, meanwhile)
    await harness.close()
    await storing
    with pytest.raises(OSError, match="No space left"):
        await later[0]
    await harness.open()
    await _check(harness, failed)
    hit = (await harness.e.lookup("a", vector=unit(77))).hit
    assert hit is not None
    assert hit.response == b"eps"


async def test_a_failed_index_save_at_stop_skips_no_other_namespace(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """usearch reports a write that failed (a full disk, say) as a RuntimeError, not an OSError.

    It escaped stop, which then saved neither the other namespaces' indexes
    nor any entry table. The old file stays whole, and its namespace's new
    mark does not vouch for it: the start checks it whole.
    """
    await _fill(harness)
    e = harness.e

    def failing(path: object) -> None:
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(e._states["a"].index, "save", failing)
    await harness.close()
    e = await harness.open()
    a, b = e._states["a"].mark, e._states["b"].mark
    assert a is not None
    assert a.index_seq == -1
    assert b is not None
    assert b.index_seq == b.seq == e._states["b"].seq  # saved by the stop, with its table
    await _check(harness, unit(99))
