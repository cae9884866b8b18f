"""A namespace whose reload keeps failing is tried again less and less often, and says when.

After a failed commit a namespace is out of service until it is reloaded
from LMDB (see test_reload.py). A failed reload used to be tried again at
every flush, once a second: with storage that keeps failing (a full disk),
each try read the namespace again and indexed its vectors on the event
loop, stalling every call once a second for as long as it failed. Now the
next try is due 1 s after the first failure, then 2, 4, ... up to 60 s; a
success starts the count again; the refusal's retry delay is the time left
until the next try, and the failure is logged once, not at every try.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from are_core.cache import NamespaceUnavailableError
from sidecar._cache import _fail_cache

from ._failing import FailingLoads, GatedCommits, fill, unit
from .conftest import Harness

_SECOND = 10**9


async def _refusal(harness: Harness) -> NamespaceUnavailableError:
    with pytest.raises(NamespaceUnavailableError) as refused:
        await harness.e.lookup("a", prompt="alpha question")
    return refused.value


async def _fail_a_store(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store in "a" whose commit fails: "a" is out of service (its reload fails too, if broken)."""
    committer = harness.committer
    assert committer is not None
    commits = GatedCommits(committer)
    monkeypatch.setattr(committer, "enqueue", commits.enqueue)
    commits.next.append((None, True))
    with pytest.raises(OSError, match="No space left"):
        await harness.e.store("a", prompt="delta question", response=b"delta", vector=unit(99))


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and "'a'" in r.getMessage()]


async def test_a_reload_that_keeps_failing_is_tried_less_and_less_often_and_logged_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await fill(harness)
    e, clock = harness.e, harness.clock
    loads = FailingLoads(e)
    monkeypatch.setattr(e, "_load", loads)
    caplog.set_level(logging.INFO, logger="are.cache")
    await _fail_a_store(harness, monkeypatch)
    assert loads.failed == 1  # at once, when the commit failed
    for delay in (1, 2, 4, 8, 16, 32, 60, 60):
        refused = await _refusal(harness)
        assert refused.retry_after_ns == delay * _SECOND
        assert f"tried again in about {delay} s" in str(refused)
        tried = loads.failed
        clock.now += delay * _SECOND - 1
        await e.flush()  # not due yet: no reload, and the delay left shrinks with the clock
        assert loads.failed == tried
        assert (await _refusal(harness)).retry_after_ns == 1
        clock.now += 1
        await e.flush()
        assert loads.failed == tried + 1
    assert len(_records(caplog, logging.ERROR)) == 1  # the first failure of the run only

    clock.now -= 3600 * _SECOND  # the wall clock stepped back: the delay does not grow with it
    await e.flush()
    assert loads.failed == 10

    loads.broken = False
    clock.now += 60 * _SECOND
    await e.flush()
    assert (await e.lookup("a", prompt="alpha question")).hit is not None
    served = [r for r in _records(caplog, logging.WARNING) if "reloaded" in r]
    assert len(served) == 1
    assert "after 10 failed attempt(s)" in served[0]

    # A new run of failures starts from a second again.
    loads.broken = True
    await _fail_a_store(harness, monkeypatch)
    assert loads.failed == 11
    assert (await _refusal(harness)).retry_after_ns == _SECOND
    clock.now += _SECOND
    await e.flush()
    assert loads.failed == 12
    assert len(_records(caplog, logging.ERROR)) == 2


async def test_a_namespace_waiting_for_its_commits_has_no_delay_of_its_own(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused while its reload waits for a commit under way: reloaded as soon as it ends."""
    await fill(harness)
    e = harness.e
    committer = harness.committer
    assert committer is not None
    commits = GatedCommits(committer)
    monkeypatch.setattr(committer, "enqueue", commits.enqueue)
    gate = asyncio.Event()
    commits.next += [(gate, False), (None, True)]  # the first waits, then commits; the second fails
    storing = asyncio.ensure_future(e.store("a", prompt="delta question", response=b"delta", vector=unit(98)))
    await asyncio.sleep(0)
    try:
        with pytest.raises(OSError, match="No space left"):
            await e.store("a", prompt="alpha question", response=b"new", vector=unit(99))
        refused = await _refusal(harness)
        assert (refused.cause, refused.retry_after_ns) == ("", 0)
        assert "being reloaded" in str(refused)
    finally:
        gate.set()
        await storing
    assert (await e.lookup("a", prompt="delta question")).hit is not None


class _AbortedError(Exception):
    def __init__(self, code: grpc.StatusCode, trailers: Any) -> None:
        self.code, self.trailers = code, trailers


class _Context:
    async def abort(self, code: grpc.StatusCode, message: str, *, trailing_metadata: Any) -> None:
        raise _AbortedError(code, trailing_metadata)


@pytest.mark.parametrize(("retry_after_ns", "seconds"), [(0, 1), (_SECOND // 2, 1), (32 * _SECOND, 32)])
async def test_the_status_of_a_refusal_carries_the_delay_until_the_next_reload(
    retry_after_ns: int, seconds: int
) -> None:
    """UNAVAILABLE, NAMESPACE_UNAVAILABLE, with a RetryInfo of the delay left (at least a second)."""
    error = NamespaceUnavailableError("a", "MDB_READERS_FULL" if retry_after_ns else "", retry_after_ns)
    with pytest.raises(_AbortedError) as aborted:
        await _fail_cache(_Context(), error)
    assert aborted.value.code == grpc.StatusCode.UNAVAILABLE
    status = status_pb2.Status.FromString(dict(aborted.value.trailers)["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in status.details)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (seconds, 0)
