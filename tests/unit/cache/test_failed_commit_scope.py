"""A failed commit takes out of service only namespaces whose memory it changed, and only served ones.

A flush commits lookup events in writes of their own. When one failed,
every namespace was taken out of service and reloaded from LMDB, although
such a write changes no namespace: a full reload of each, and every call
refused while a reload failed. A namespace being created was served
before its creation committed: a store in it could commit after the
creation failed, acknowledged in a namespace that does not exist.
"""

from __future__ import annotations

import asyncio

import pytest

from are_core.cache import NamespaceNotFoundError, NamespaceSettings
from are_core.cache._engine import HEADS
from are_core.storage import prefix_key

from ._failing import FailingLoads, GatedCommits, fill, unit
from .conftest import Harness


def _gate(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> GatedCommits:
    committer = harness.committer
    assert committer is not None
    commits = GatedCommits(committer)
    monkeypatch.setattr(committer, "enqueue", commits.enqueue)
    return commits


async def test_a_failed_commit_of_lookup_events_takes_no_namespace_out_of_service(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fill(harness)
    e = harness.e
    loads = FailingLoads(e)  # a namespace taken out of service would stay out
    monkeypatch.setattr(e, "_load", loads)
    assert (await e.lookup("a", prompt="alpha question")).hit is not None  # a CACHE_HIT event queued
    commits = _gate(harness, monkeypatch)
    commits.next += [(None, False), (None, True)]  # "a"'s counters commit, then the events fail
    await e.flush()  # logged, not raised; the event goes back in the queue
    assert [d.event_type for d in e._pending_events] == ["CACHE_HIT"]
    assert loads.failed == 0
    for name in ("a", "b"):
        hit = (await e.lookup(name, prompt="beta question")).hit
        assert hit is not None
        assert hit.response == b"beta"
    assert e.stats("a")[0].lookups == 2


async def test_a_store_in_a_namespace_being_created_is_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its creation's commit fails after the store's would have committed: nothing is left of either."""
    e = harness.e
    commits = _gate(harness, monkeypatch)
    gate = asyncio.Event()
    commits.next.append((gate, True))
    settings = NamespaceSettings(name="c", embedder="caller", dimension=8)
    creating = asyncio.ensure_future(e.put_namespace(settings))
    await asyncio.sleep(0)
    try:
        with pytest.raises(NamespaceNotFoundError):
            await e.store("c", prompt="alpha", response=b"A", vector=unit(1))
        assert e.list_namespaces()[0] == []
    finally:
        gate.set()
    with pytest.raises(OSError, match="No space left"):
        await creating
    storage = harness.storage
    assert storage is not None
    assert storage.scan(HEADS, prefix=prefix_key("c")) == []
    with pytest.raises(NamespaceNotFoundError):
        await e.lookup("c", prompt="alpha")
    # Created again, and restarted before any table is saved: no entry of before answers.
    await e.put_namespace(settings)
    await harness.reopen(save=False)
    assert harness.e.stats("c")[0].entries == 0
    assert (await harness.e.lookup("c", prompt="alpha")).hit is None
