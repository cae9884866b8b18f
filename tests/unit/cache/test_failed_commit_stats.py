"""A namespace's statistics after a failed commit and its reload: what LMDB holds, and nothing lost.

Entries and bytes are the heads' (reloaded from LMDB). The counters are
kept in memory and written with the namespace's writes, as memory has them
when each is built. After a failed commit the reload used to take LMDB's
row as it was: the lookups, hits and savings counted since the last
commit that ended were lost (the failed write carried them), and when a
later write of the namespace committed after the failed one, the failed
write's evictions stayed counted (the later write carried them), although
the entries they removed were still there.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from are_core.cache import CacheStats, NamespaceSettings
from are_core.cache._engine import HEADS, _head_codec
from are_core.storage import prefix_key

from ._failing import GatedCommits, unit
from .conftest import Harness


def _stored(harness: Harness, name: str) -> tuple[int, int]:
    """The entries and bytes LMDB holds for a namespace."""
    storage = harness.storage
    assert storage is not None
    heads = [_head_codec.decode(raw) for _, raw in storage.scan(HEADS, prefix=prefix_key(name))]
    return len(heads), sum(head.size_bytes for head in heads)


def _counters(stats: CacheStats) -> dict[str, int]:
    fields = ("lookups", "exact_hits", "semantic_hits", "misses", "evictions", "expirations")
    return {field: getattr(stats, field) for field in (*fields, "saved_tokens", "saved_cost_micro_usd")}


async def _gate(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> GatedCommits:
    committer = harness.committer
    assert committer is not None
    commits = GatedCommits(committer)
    monkeypatch.setattr(committer, "enqueue", commits.enqueue)
    return commits


async def test_lookups_counted_before_a_failed_commit_are_kept_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="a", embedder="caller", dimension=8))
    await e.store(
        "a", prompt="alpha", response=b"A", vector=unit(1), input_tokens=10, output_tokens=5, cost_micro_usd=7
    )
    await e.flush()
    assert (await e.lookup("a", prompt="alpha")).hit is not None  # counted, and written by the next flush
    await e.flush()
    assert (await e.lookup("a", prompt="alpha")).hit is not None  # counted in memory only
    assert (await e.lookup("a", vector=unit(2))).hit is None
    commits = await _gate(harness, monkeypatch)
    commits.next.append((None, True))
    with pytest.raises(OSError, match="No space left"):  # its write carried the counters
        await e.store("a", prompt="beta", response=b"B", vector=unit(3))
    expected = {
        "lookups": 3,
        "exact_hits": 2,
        "semantic_hits": 0,
        "misses": 1,
        "evictions": 0,
        "expirations": 0,
        "saved_tokens": 30,
        "saved_cost_micro_usd": 14,
    }
    (stats,) = e.stats("a")
    assert _counters(stats) == expected
    assert (stats.entries, stats.size_bytes) == _stored(harness, "a") == (1, 6)
    await harness.reopen()  # written by the stop's flush
    (stats,) = harness.e.stats("a")
    assert _counters(stats) == expected


async def test_a_failed_writes_evictions_are_not_counted_by_a_later_write_that_committed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stores evict one entry each; the first one's commit fails, the second's commits after it."""
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="a", embedder="caller", dimension=8, max_entries=3))
    for n, prompt in enumerate(("alpha", "beta", "gamma")):
        await e.store("a", prompt=prompt, response=prompt.encode(), vector=unit(n))
    commits = await _gate(harness, monkeypatch)
    first, second = asyncio.Event(), asyncio.Event()
    commits.next += [(first, True), (second, False)]
    failing = asyncio.ensure_future(e.store("a", prompt="delta", response=b"delta", vector=unit(10)))
    await asyncio.sleep(0)  # evicts alpha (in memory)
    storing = asyncio.ensure_future(e.store("a", prompt="epsilon", response=b"epsilon", vector=unit(11)))
    await asyncio.sleep(0)  # evicts beta; its write counts two evictions
    first.set()
    with pytest.raises(OSError, match="No space left"):
        await failing
    second.set()
    await storing
    # LMDB: alpha (its eviction failed), gamma and epsilon; beta was evicted, once.
    for prompt, answers in (("alpha", True), ("beta", False), ("gamma", True), ("delta", False)):
        assert ((await e.lookup("a", prompt=prompt)).hit is not None) == answers, prompt
    (stats,) = e.stats("a")
    assert stats.evictions == 1
    assert (stats.entries, stats.size_bytes) == _stored(harness, "a") == (3, 34)
    assert (stats.lookups, stats.exact_hits, stats.misses) == (4, 2, 2)
    # Written again at the next flush: a restart (even without a clean stop) counts it so too.
    await e.flush()
    await harness.reopen(save=False)
    (stats,) = harness.e.stats("a")
    assert stats.evictions == 1
    assert (stats.entries, stats.size_bytes) == _stored(harness, "a") == (3, 34)


async def test_expirations_of_a_failed_flush_are_not_counted(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush removing an expired entry fails; the next flush removes it again and counts it once."""
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="a", embedder="caller", dimension=8))
    await e.store("a", prompt="alpha", response=b"A", vector=unit(1), ttl_ns=10**9)
    await e.store("a", prompt="beta", response=b"B", vector=np.asarray(unit(2)))
    harness.clock.advance(2)
    commits = await _gate(harness, monkeypatch)
    gate = asyncio.Event()
    commits.next += [(None, True), (gate, False)]
    flushing = asyncio.ensure_future(e.flush())  # alpha expires; its commit fails
    await asyncio.sleep(0)
    storing = asyncio.ensure_future(e.store("a", prompt="gamma", response=b"C", vector=unit(3)))
    await asyncio.sleep(0)
    gate.set()
    await flushing  # logged, not raised
    await storing
    (stats,) = e.stats("a")
    assert (stats.expirations, stats.entries) == (0, 3)  # alpha is still in LMDB: not expired yet
    harness.clock.advance(1)  # a flush writes "a" again a second after its write failed
    await e.flush()
    (stats,) = e.stats("a")
    assert (stats.expirations, stats.entries) == (1, 2)
    assert (stats.entries, stats.size_bytes) == _stored(harness, "a")
