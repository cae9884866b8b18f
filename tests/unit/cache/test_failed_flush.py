"""A flush whose writes fail: tried again less and less often, logged once, and holding up nothing else.

A failed commit takes its namespace out of service and reloads it from
LMDB (see test_reload.py). After a failed flush write the reload succeeds
(reads still work), and leaves the same expired entries and counters to
write: the next flush, a second later, wrote them again, failed again and
reloaded the namespace again on the event loop, for as long as the disk
stayed full, with a warning each time. Each reload also built a fresh state,
in which a table save, checkpoint, sweep or fold that had failed was due at
once again, and the calibration forgot its lookups. And one namespace whose
flush raised stopped the flush there: the namespaces after it were neither
expired nor evicted, and the lookup events the flush had taken were lost,
uncounted. Now a namespace's flush writes wait 1 s after a failure, then 2,
4, ... up to 60 s while they fail (lookup events likewise, kept queued), the
failure is logged when the run begins and ends, the delays and calibration
progress survive the reload, and each namespace is flushed on its own.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest

from are_core.cache import CacheEngine, NamespaceSettings

from ._failing import (
    SPACES,
    CountingLoads,
    GatedCommits,
    TableWritesFail,
    fill,
    full_disk,
    stored,
    unit,
    vector,
)
from .conftest import Harness

_SECOND = 10**9


def _published(harness: Harness) -> list[str]:
    """The lookup events committed (published once their commit ended), in order."""
    kinds = ("CACHE_HIT", "CACHE_MISS")
    return [event.event_type for event in harness.sink.published if event.event_type in kinds]


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


async def _store_expiring(e: CacheEngine, name: str) -> None:
    """Two entries of ``name`` that live a second."""
    for prompt in ("delta", "epsilon"):
        await e.store(
            name,
            prompt=f"{prompt} question",
            response=prompt.encode(),
            vector=vector(name, prompt),
            ttl_ns=_SECOND,
        )


async def test_a_flush_whose_writes_fail_is_tried_less_and_less_often_and_resumes_by_itself(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    e = await fill(harness)
    await _store_expiring(e, "a")
    harness.clock.advance(2)  # expired: each flush has them to remove
    loads = CountingLoads(e)
    monkeypatch.setattr(e, "_load", loads)
    disk = full_disk(harness, monkeypatch)
    caplog.set_level(logging.INFO, logger="are.cache")
    await e.flush()  # "a"'s write fails: reloaded from LMDB ("b" has nothing to write)
    assert loads.count == 1
    for delay in (1, 2, 4, 8, 16, 32, 60, 60):
        # Served meanwhile, as LMDB holds it; the expired entries never answer.
        hit = (await e.lookup("a", prompt="alpha question")).hit
        assert hit is not None
        assert hit.response == b"alpha"
        assert (await e.lookup("a", prompt="delta question")).hit is None
        tried = loads.count
        harness.clock.now += delay * _SECOND - 1
        await e.flush()  # not due yet: no write, so no reload
        assert loads.count == tried
        harness.clock.now += 1
        await e.flush()  # tried, failing again: reloaded again
        assert loads.count == tried + 1
    assert stored(harness, "a") == 5
    # Once per run of failures, not at every try: "a"'s writes, and the lookup events'.
    assert len(_warnings(caplog, "failed")) == 2
    assert len(_warnings(caplog, "of namespace 'a' failed")) == 1
    assert len(_warnings(caplog, "lookup events failed")) == 1
    assert e._dropped_events == 0

    disk.full = False  # the disk has room again: everything resumes by itself
    harness.clock.now += 60 * _SECOND
    await e.flush()
    assert stored(harness, "a") == 3
    (stats,) = e.stats("a")
    assert (stats.entries, stats.expirations, stats.exact_hits, stats.misses) == (3, 2, 8, 8)
    assert e._pending_events == []
    assert _published(harness) == ["CACHE_HIT", "CACHE_MISS"] * 8
    assert len(_warnings(caplog, "writes of namespace 'a' commit again, after 9 failed")) == 1
    assert len(_warnings(caplog, "wrote lookup events after")) == 1
    assert loads.count == 9  # no reload since

    # A new run of failures starts from a second again.
    disk.full = True
    assert (await e.lookup("a", prompt="alpha question")).hit is not None  # counters to write
    await e.flush()
    assert loads.count == 10
    harness.clock.now += _SECOND
    await e.flush()
    assert loads.count == 11
    assert len(_warnings(caplog, "of namespace 'a' failed")) == 2


async def test_the_retry_delays_and_calibration_progress_outlive_the_reload_of_a_failed_flush(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="a", embedder="caller", dimension=8))
    await e.store("a", prompt="alpha", response=b"A", vector=unit(1), ttl_ns=_SECOND)
    await e.store("a", prompt="beta", response=b"B", vector=unit(2))
    state = e._states["a"]
    writes = TableWritesFail(monkeypatch)
    state.snapshot_due = True
    with pytest.raises(OSError, match="No space left"):
        await e.snapshot_due()  # the flush loop logs it; not again for a minute
    assert writes.tries == 1
    now = harness.clock.now
    gates: dict[str, object] = {
        "snapshot_retry_ns": state.snapshot_retry_ns,
        "checkpoint_retry_ns": now + 30 * _SECOND,
        "repair_retry_ns": now + 40 * _SECOND,
        "fold_failures": 2,
        "fold_retry_ns": now + 120 * _SECOND,
        "queries_seen": 5000,
        "calibrated_at": 4000,
        "calibration_unfinished": True,
    }
    for field, value in gates.items():
        setattr(state, field, value)
    queries = state.queries = np.ones((2048, 8), dtype=np.float16)
    thresholds = state.thresholds = np.full(2048, 0.9, dtype=np.float32)
    harness.clock.advance(2)  # alpha expired
    full_disk(harness, monkeypatch)
    await e.flush()  # its removal fails: "a" is reloaded from LMDB
    reloaded = e._states["a"]
    assert reloaded is not state
    # No table was ever saved: the reload read every head, and a table is due again ...
    assert reloaded.snapshot_due
    with contextlib.suppress(OSError):  # a try would fail again
        await e.snapshot_due()
    assert writes.tries == 1  # ... but not before a minute after the failed save
    assert {field: getattr(reloaded, field) for field in gates} == gates
    assert reloaded.queries is queries
    assert reloaded.thresholds is thresholds


async def test_a_namespace_whose_flush_fails_holds_up_neither_the_others_nor_the_lookup_events(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = await fill(harness)
    for name in SPACES:
        await _store_expiring(e, name)
    for prompt in ("alpha", "beta"):  # lookup events queued for the flush
        assert (await e.lookup("b", prompt=f"{prompt} question")).hit is not None
    harness.clock.advance(2)
    committer = harness.committer
    assert committer is not None
    commits = GatedCommits(committer)
    monkeypatch.setattr(committer, "enqueue", commits.enqueue)
    commits.next.append((None, True))  # the first commit, "a"'s, fails
    await e.flush()
    assert (stored(harness, "a"), stored(harness, "b")) == (5, 3)  # "b" expired all the same
    assert e._pending_events == []
    assert _published(harness) == ["CACHE_HIT", "CACHE_HIT"]
    harness.clock.advance(1)  # "a" is written again a second later
    await e.flush()
    assert (stored(harness, "a"), stored(harness, "b")) == (3, 3)


async def test_lookup_events_whose_commit_failed_go_back_in_the_queue(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = await fill(harness)
    for prompt in ("alpha", "beta", "zeta"):
        await e.lookup("a", prompt=f"{prompt} question")
    committer = harness.committer
    assert committer is not None
    commits = GatedCommits(committer)
    monkeypatch.setattr(committer, "enqueue", commits.enqueue)
    commits.next += [(None, False), (None, True)]  # "a"'s counters commit, then the events fail
    await e.flush()
    assert [d.event_type for d in e._pending_events] == ["CACHE_HIT", "CACHE_HIT", "CACHE_MISS"]
    assert e._dropped_events == 0
    await e.flush()  # held for a second after the failure: still queued
    assert len(e._pending_events) == 3
    harness.clock.advance(1)
    await e.flush()
    assert e._pending_events == []
    assert _published(harness) == ["CACHE_HIT", "CACHE_HIT", "CACHE_MISS"]
