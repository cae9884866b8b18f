"""Hot entries: bodies of recently answered entries in memory, never a stale answer."""

from __future__ import annotations

import pytest

from are_core.cache import NamespaceSettings
from are_core.cache._hot import HotBodies
from are_core.cache._model import EntryBody

from .conftest import Harness

SECOND = 10**9


def body(prompt: str, size: int) -> EntryBody:
    return EntryBody(prompt=prompt, response=b"r" * size)


def test_hot_bodies_keep_the_most_recently_used_within_the_byte_bound() -> None:
    hot = HotBodies(max_bytes=3 * (600 + 512))
    for n in range(3):
        hot.put(n, body(f"p{n}", 600 - 2), "ns", bytes([n]))
    assert hot.get(0) is not None  # 0 is now the most recent
    hot.put(3, body("p3", 598), "ns", b"\x03")  # over the bound: 1, the least recent, goes
    assert [n for n in range(4) if hot.get(n) is not None] == [0, 2, 3]
    assert hot.size_bytes <= hot.max_bytes
    assert (hot.entry_for("ns", b"\x01"), hot.entry_for("ns", b"\x03"), hot.entry_for("other", b"\x03")) == (
        None,
        3,
        None,
    )
    hot.forget(3)
    assert hot.entry_for("ns", b"\x03") is None
    hot.put(9, body("big", 10_000), "ns", b"\x09")  # larger than the whole bound: not kept
    assert hot.get(9) is None
    hot.clear()
    assert (len(hot), hot.size_bytes) == (0, 0)
    with pytest.raises(ValueError, match="negative"):
        HotBodies(-1)


async def test_a_kept_body_never_answers_for_a_removed_or_replaced_entry(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="h", max_entries=3))

    async def answer(prompt: str) -> bytes | None:
        hit = (await e.lookup("h", prompt=prompt, exact_only=True)).hit
        return None if hit is None else hit.response

    async def warm(prompt: str, response: bytes, **kwargs: object) -> str:
        # kwargs are store()'s own keywords, passed through untyped.
        stored = await e.store("h", prompt=prompt, response=response, **kwargs)  # type: ignore[arg-type]
        assert await answer(prompt) == response  # read once from LMDB, now kept in memory
        assert await answer(prompt) == response  # answered from memory
        return stored.entry_id

    await warm("replaced", b"old")
    await e.store("h", prompt="replaced", response=b"new")
    assert await answer("replaced") == b"new"

    gone = await warm("invalidated by id", b"x")
    await e.invalidate("h", entry_ids=[gone])
    assert await answer("invalidated by id") is None

    await warm("by metadata", b"m", metadata={"model": "m1"})
    await e.invalidate("h", metadata_match={"model": "m1"})
    assert await answer("by metadata") is None

    await warm("expires", b"t", ttl_ns=5 * SECOND)
    harness.clock.advance(10)
    assert await answer("expires") is None

    await e.invalidate("h", everything=True)
    await warm("evicted 0", b"e")  # the bound is 3: this one, warmed, is evicted by the fourth
    for n in range(1, 4):
        await e.store("h", prompt=f"evicted {n}", response=b"e")
    assert await answer("evicted 0") is None
    assert await answer("evicted 3") == b"e"
    assert e._hot.hits > 0


async def test_without_hot_memory_every_hit_reads_lmdb(harness: Harness) -> None:
    await harness.close()
    e = await harness.open(hot_bytes=0)
    await e.put_namespace(NamespaceSettings(name="z"))
    await e.store("z", prompt="a prompt", response=b"answer")
    for _ in range(3):
        hit = (await e.lookup("z", prompt="a prompt")).hit
        assert hit is not None and hit.response == b"answer"
    assert (len(e._hot), e._hot.hits) == (0, 0)
