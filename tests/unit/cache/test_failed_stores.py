"""Writes by calls whose commits fail: the namespace is reloaded once per try, not once per call.

A failed commit takes its namespace out of service and reloads it from
LMDB (see test_reload.py): at a million entries a read of every head and an
index rebuilt on the event loop. With a full disk, every StoreCache a client
retried failed its commit and reloaded the namespace again: as often as the
clients stored, the lookups of every namespace lost their hot bodies and the
namespace flapped out of service. Now a failed write of a namespace, by a call
or by a flush, closes its writes for 1 s, then 2, 4, ... up to 60 s while the
tries fail: meanwhile writes are refused before they change anything
(NamespaceWritesUnavailableError with the delay, UNAVAILABLE over gRPC), lookups
answer as LMDB holds it, and the first write that commits reopens them.
"""

from __future__ import annotations

import logging

import pytest

from are_core.cache import CacheEngine, NamespaceWritesUnavailableError

from ._failing import CountingLoads, fill, full_disk, stored, vector
from .conftest import Harness

_SECOND = 10**9


async def _store(e: CacheEngine, prompt: str) -> None:
    await e.store("a", prompt=f"{prompt} question", response=prompt.encode(), vector=vector("a", prompt))


async def test_stores_whose_commits_fail_are_refused_for_a_growing_delay_not_reloaded_each_time(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    e = await fill(harness)
    loads = CountingLoads(e)
    monkeypatch.setattr(e, "_load", loads)
    disk = full_disk(harness, monkeypatch)
    caplog.set_level(logging.INFO, logger="are.cache")
    with pytest.raises(OSError, match="No space left"):
        await _store(e, "delta")
    assert loads.count == 1
    for delay in (1, 2, 4, 8, 16, 32, 60, 60):
        tried = loads.count
        for _ in range(3):  # a client retrying at once: refused, nothing changed, no reload
            with pytest.raises(NamespaceWritesUnavailableError, match="No space left") as refused:
                await _store(e, "delta")
            assert 0 < refused.value.retry_after_ns <= delay * _SECOND
            await e.flush()  # nor does a flush write it meanwhile
        assert loads.count == tried
        # Lookups answer meanwhile, as LMDB holds it; the stores refused left nothing.
        hit = (await e.lookup("a", prompt="alpha question")).hit
        assert hit is not None
        assert hit.response == b"alpha"
        assert (await e.lookup("a", prompt="delta question")).hit is None
        assert stored(harness, "a") == 3
        harness.clock.now += delay * _SECOND
        with pytest.raises(OSError, match="No space left"):  # due: tried, failing again
            await _store(e, "delta")
        assert loads.count == tried + 1
    # Other namespaces are not held up (their writes fail on their own).
    with pytest.raises(OSError, match="No space left"):
        await e.store("b", prompt="delta question", response=b"delta", vector=vector("b", "delta"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "'a'" in w and "failed" in w]) == 1  # once per run of failures

    disk.full = False  # room again: the first store after the delay commits, and stores resume
    harness.clock.now += 60 * _SECOND
    await _store(e, "delta")
    await _store(e, "epsilon")
    assert stored(harness, "a") == 5
    assert any("'a'" in w and "after 9 failed" in w for w in (r.getMessage() for r in caplog.records))


async def test_a_failed_flush_write_also_holds_the_stores_of_its_namespace(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = await fill(harness)
    await e.store(
        "a", prompt="delta question", response=b"delta", vector=vector("a", "delta"), ttl_ns=_SECOND
    )
    harness.clock.advance(2)  # expired: the flush has it to remove
    loads = CountingLoads(e)
    monkeypatch.setattr(e, "_load", loads)
    full_disk(harness, monkeypatch)
    await e.flush()
    assert loads.count == 1
    with pytest.raises(NamespaceWritesUnavailableError):
        await _store(e, "epsilon")
    assert loads.count == 1
