"""Saved entry tables: a fast start that trusts only a table LMDB names, and replays the journal."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from are_core.cache import NamespaceSettings
from are_core.cache._model import EntryHead
from are_core.cache._table import Entries, EntryTable

from ._failing import TableWritesFail
from .conftest import Harness

SECOND = 10**9
NS = "t"


def _unit(d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
    return v / np.linalg.norm(v)


def _head(n: int, *, access: int = 0, expire: int = 10**18) -> EntryHead:
    return EntryHead(
        entry_id=n,
        prompt_hash=n.to_bytes(16, "little"),
        create_ns=n,
        expire_ns=expire,
        size_bytes=n % 7 + 1,
        has_vector=n % 2 == 0,
        last_access_ns=access,
    )


def _tables(harness: Harness) -> list[Path]:
    return sorted((harness.root / "data" / "cache").glob("*.entries"))


async def _fill(harness: Harness, n: int) -> dict[int, str]:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name=NS, embedder="caller", dimension=16))
    ids = {}
    for i in range(n):
        ids[i] = (await e.store(NS, prompt=f"p{i}", vector=_unit(16, i), response=str(i).encode())).entry_id
    return ids


async def _check(harness: Harness, alive: set[int], removed: set[int]) -> None:
    e = harness.e
    for i in sorted(alive | removed):
        exact = (await e.lookup(NS, prompt=f"p{i}", exact_only=True)).hit
        semantic = (await e.lookup(NS, vector=_unit(16, i), threshold=0.999)).hit
        if i in removed:
            assert exact is None, i
            assert semantic is None, i
        else:
            assert exact is not None, i
            assert exact.response == str(i).encode(), i
            assert semantic is not None, i
            assert semantic.response == str(i).encode(), i
    assert e.stats(NS)[0].entries == len(alive)


def test_table_file_round_trip_and_refusals(tmp_path: Path) -> None:
    heads = [_head(n, access=1000 - n) for n in range(1, 200)]
    table = EntryTable.from_heads(sorted(heads, key=lambda h: h.last_access_ns))
    path = tmp_path / "x.5.entries"
    table.save(path, seq=5, token=b"a" * 16, namespace_create_ns=42)
    loaded = EntryTable.load(path, seq=5, token=b"a" * 16, namespace_create_ns=42)
    assert loaded is not None
    assert loaded.ids.tolist() == table.ids.tolist()
    assert loaded.access_order.tolist() == table.access_order.tolist()
    entries = Entries(loaded)
    assert len(entries) == len(heads)
    assert entries.get(7) == _head(7, access=993)
    assert entries.oldest() == 199  # least recent access first
    assert entries.find((7).to_bytes(16, "little")) == 7
    # Another sequence, token or namespace: refused.
    assert EntryTable.load(path, seq=6, token=b"a" * 16, namespace_create_ns=42) is None
    assert EntryTable.load(path, seq=5, token=b"b" * 16, namespace_create_ns=42) is None
    assert EntryTable.load(path, seq=5, token=b"a" * 16, namespace_create_ns=43) is None
    missing = tmp_path / "missing.entries"
    assert EntryTable.load(missing, seq=5, token=b"a" * 16, namespace_create_ns=42) is None
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a flipped bit in the payload: the checksum refuses it
    path.write_bytes(bytes(raw))
    assert EntryTable.load(path, seq=5, token=b"a" * 16, namespace_create_ns=42) is None
    path.write_bytes(bytes(raw[:-10]))  # truncated
    assert EntryTable.load(path, seq=5, token=b"a" * 16, namespace_create_ns=42) is None
    path.write_bytes(b"")
    assert EntryTable.load(path, seq=5, token=b"a" * 16, namespace_create_ns=42) is None


def test_entries_match_a_plain_model_through_changes_exports_and_rebases() -> None:
    rng = random.Random(3)
    model: dict[int, EntryHead] = {}
    order: list[int] = []  # least recently used first
    for n in range(1, 300):
        model[n] = _head(n, access=n, expire=1000 + rng.randrange(2000))
        order.append(n)
    entries = Entries(EntryTable.from_heads([model[n] for n in order]))
    next_id = 300
    for step in range(3000):
        op = rng.random()
        if op < 0.3 and model:
            n = rng.choice(order)
            assert entries.forget(n) == model.pop(n)
            order.remove(n)
        elif op < 0.6:
            head = _head(next_id, access=10_000 + step, expire=1000 + rng.randrange(2000))
            next_id += 1
            entries.admit(head)
            model[head.entry_id] = head
            order.append(head.entry_id)
        elif op < 0.85 and model:
            n = rng.choice(order)
            assert entries.get(n) == model[n]
            entries.touch(n)
            order.remove(n)
            order.append(n)
        elif op < 0.95:
            entries = entries.rebase(EntryTable.build(**entries.export()), ())
        else:
            n = rng.randrange(1, next_id + 5)
            assert entries.find(n.to_bytes(16, "little")) == (n if n in model else None)
        assert len(entries) == len(model)
        assert entries.oldest() == (order[0] if order else None)
    assert list(entries.recency()) == order
    assert sorted(entries.ids().tolist()) == sorted(model)
    assert sorted(entries.vector_ids().tolist()) == sorted(n for n, h in model.items() if h.has_vector)
    assert entries.size_bytes == sum(h.size_bytes for h in model.values())
    due = {n for _, n in entries.due(2000)}
    assert {n for n, h in model.items() if h.expire_ns <= 2000} <= due


def test_rebase_carries_changes_made_after_the_export() -> None:
    entries = Entries(EntryTable.from_heads([_head(n, access=n) for n in range(1, 50)]))
    columns = entries.export()
    entries.forget(3)
    entries.admit(_head(60, access=100))
    entries.touch(5)
    rebased = entries.rebase(EntryTable.build(**columns), [3, 60, 5])
    assert rebased.get(3) is None
    assert rebased.get(60) == _head(60, access=100)
    assert list(rebased.recency())[-2:] == [60, 5]
    assert len(rebased) == 49
    assert rebased.find((3).to_bytes(16, "little")) is None


async def test_clean_restart_loads_the_saved_table(harness: Harness) -> None:
    ids = await _fill(harness, 30)
    await harness.e.invalidate(NS, entry_ids=[ids[3]])
    e = await harness.reopen()
    assert len(_tables(harness)) == 1
    state = e._states[NS]
    assert state.mark is not None
    assert not state.snapshot_due
    assert state.mark.index_seq == state.mark.seq  # saved with the index: no full check
    await _check(harness, set(range(30)) - {3}, {3})
    new = await e.store(NS, prompt="fresh", response=b"f")
    assert new.entry_id not in ids.values()


async def test_sigkill_after_a_table_replays_the_journal(harness: Harness) -> None:
    ids = await _fill(harness, 40)
    e = await harness.reopen()  # a table at this point
    removed = {1, 2, 3}
    await e.invalidate(NS, entry_ids=[ids[i] for i in removed])
    for i in range(40, 50):
        await e.store(NS, prompt=f"p{i}", vector=_unit(16, i), response=str(i).encode())
    await e.store(NS, prompt="p7", vector=_unit(16, 7), response=b"7")  # replaces entry 7
    assert (await e.lookup(NS, prompt="p9")).hit is not None
    await e.flush()
    e = await harness.reopen(save=False)  # "SIGKILL": no table, no index saved since
    state = e._states[NS]
    assert state.mark is not None
    assert state.unsaved_rows > 0  # served from the old table plus the journal
    await _check(harness, set(range(50)) - removed, removed)
    assert e.stats(NS)[0].entries == 47
    for warmer in list(e._warmers):
        await warmer
    # The index holds exactly the live vectors: removed keys were dropped, not only hidden.
    assert sorted(state.index.keys().tolist()) == sorted(state.entries.vector_ids().tolist())


async def test_periodic_table_then_sigkill_checks_the_whole_index(harness: Harness) -> None:
    ids = await _fill(harness, 20)
    e = await harness.reopen()
    await e.invalidate(NS, entry_ids=[ids[0]])
    state = e._states[NS]
    state.snapshot_due = True
    await e.snapshot_due()  # as the flush loop does past its bound
    assert state.mark is not None
    assert state.mark.index_seq == -1  # the index was not saved with it
    assert state.unsaved_rows == 0
    await e.store(NS, prompt="p20", vector=_unit(16, 20), response=b"20")
    await e.invalidate(NS, entry_ids=[ids[5]])
    e = await harness.reopen(save=False)
    await _check(harness, set(range(21)) - {0, 5}, {0, 5})


@pytest.mark.parametrize("damage", ["missing", "corrupt", "stale", "foreign"])
async def test_a_missing_corrupt_or_stale_table_is_rebuilt_from_lmdb(harness: Harness, damage: str) -> None:
    ids = await _fill(harness, 25)
    e = await harness.reopen()
    [first] = _tables(harness)
    old = first.read_bytes()
    await e.invalidate(NS, entry_ids=[ids[4]])
    await e.store(NS, prompt="p25", vector=_unit(16, 25), response=b"25")
    e = await harness.reopen()  # a newer table
    [path] = _tables(harness)
    if damage == "missing":
        path.unlink()
    elif damage == "corrupt":
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
    elif damage == "stale":
        path.write_bytes(old)  # the older table under the newer name
    else:
        path.unlink()
        first.write_bytes(old)  # an older file that the mark no longer names
    e = await harness.reopen(save=False)
    state = e._states[NS]
    assert state.snapshot_due  # read every head from LMDB; a table is saved soon
    await _check(harness, set(range(26)) - {4}, {4})
    await harness.close()
    e = await harness.open()
    assert not e._states[NS].snapshot_due
    assert len(_tables(harness)) == 1
    await _check(harness, set(range(26)) - {4}, {4})


async def test_lru_and_expiry_survive_a_restart_from_the_table(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name=NS, max_entries=5, default_ttl_ns=100 * SECOND))
    for i in range(5):
        await e.store(NS, prompt=f"p{i}", response=str(i).encode())
        harness.clock.advance(1)
    assert (await e.lookup(NS, prompt="p0", exact_only=True)).hit is not None  # p0 most recent now
    e = await harness.reopen()
    await e.store(NS, prompt="p5", response=b"5")  # evicts the least recent: p1
    assert (await e.lookup(NS, prompt="p1", exact_only=True)).hit is None
    assert (await e.lookup(NS, prompt="p0", exact_only=True)).hit is not None
    harness.clock.advance(200)
    await e.flush()
    assert e.stats(NS)[0].entries == 0
    assert e.stats(NS)[0].expirations == 5


async def _touch_p0_then_store(harness: Harness, *, saved: bool) -> set[str]:
    """Five entries (p0 oldest), a lookup of p0, a restart without a clean stop, one more store:
    which prompts remain. ``saved``: the recency save came due before the crash."""
    e = harness.e
    await e.put_namespace(NamespaceSettings(name=NS, max_entries=5))
    for i in range(5):
        await e.store(NS, prompt=f"p{i}", response=str(i).encode())
        harness.clock.advance(1)
    e = await harness.reopen()  # a clean stop: a table holds the five, p0 least recent
    assert (await e.lookup(NS, prompt="p0", exact_only=True)).hit is not None
    await e.flush()  # counters and events only: the touch is not written to LMDB
    if saved:
        await e.snapshot_due()
        assert e._states[NS].touched  # not due yet: saved at most every five minutes
        harness.clock.advance(301)
        await e.snapshot_due()
        assert not e._states[NS].touched
    e = await harness.reopen(save=False)  # as after SIGKILL
    await e.store(NS, prompt="p5", response=b"5")  # evicts the least recently used one
    return {f"p{i}" for i in range(6) if (await e.lookup(NS, prompt=f"p{i}", exact_only=True)).hit}


async def test_recency_is_saved_with_the_table_not_per_lookup(harness: Harness) -> None:
    # A crash before the save loses the touch: p0 is evicted as the oldest.
    assert await _touch_p0_then_store(harness, saved=False) == {"p1", "p2", "p3", "p4", "p5"}


async def test_recency_saved_when_due_survives_a_crash(harness: Harness) -> None:
    assert await _touch_p0_then_store(harness, saved=True) == {"p0", "p2", "p3", "p4", "p5"}


async def test_a_table_that_cannot_be_written_is_tried_again_a_minute_later_not_at_every_flush(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _fill(harness, 20)
    e = harness.e
    state = e._states[NS]
    writes = TableWritesFail(monkeypatch)
    state.snapshot_due = True
    with pytest.raises(OSError, match="No space left"):
        await e.snapshot_due()  # the flush loop logs it
    assert writes.tries == 1
    # Each try exports every entry on the event loop: not again at the next flushes.
    for _ in range(3):
        await e.snapshot_due()
    harness.clock.advance(59)
    await e.snapshot_due()
    assert writes.tries == 1
    assert e._states[NS].snapshot_due  # still due (read so, mypy keeps no narrowing of state's flag)
    monkeypatch.undo()
    harness.clock.advance(2)
    await e.snapshot_due()  # a minute later: tried again, and saved
    assert not state.snapshot_due
    assert state.mark is not None
    assert state.snapshot_retry_ns == 0
    await _check(harness, set(range(20)), set())
