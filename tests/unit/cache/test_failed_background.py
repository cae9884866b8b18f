"""Background work that fails to start or to finish waits before it is tried again.

A calibration whose child could not be forked (EMFILE, ENOMEM, EAGAIN at a
pids limit) left its namespace due at the next flush: a pipe and a fork
tried once a second, each taking the index's locks, with a warning each
time. A fold of a view's overlay into a private copy that failed (memory
refused under RLIMIT_AS or strict overcommit) killed its task ("Task
exception was never retrieved") and the next flush began another, each
holding the GIL for its copy (about 0.7 s at 1M entries). Now a calibration
that could not start waits for as many new lookups as one that ended
without a result, and a failed fold is tried again a minute later, then
less and less often (at most every ten minutes), logged once per run.
"""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

import are_core.cache._engine as cache_engine
from are_core.cache import NamespaceSettings
from are_core.vector import VectorError, VectorIndex

from .conftest import Harness, is_view, low_dimension_rows

_SECOND = 10**9


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


async def test_a_calibration_that_could_not_fork_waits_for_as_many_new_lookups(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A small namespace stands for a large one: searched by its graph past 16 vectors, due after 64 lookups.
    monkeypatch.setattr(cache_engine, "EXACT_SEARCH_BELOW", 16)
    monkeypatch.setattr(cache_engine, "_CALIBRATION_QUERIES", 64)
    e = harness.e
    vectors = low_dimension_rows(100, 8, seed=1)
    await e.put_namespace(NamespaceSettings(name="cal", embedder="caller", dimension=8))
    await e.store_many("cal", [f"p{i}" for i in range(100)], [b"r"] * 100, vectors=vectors)

    async def look_up(count: int) -> None:
        for i in range(count):
            await e.lookup("cal", vector=vectors[i % 100])

    await look_up(64)
    forks = 0

    def no_fork(*args: object, **kwargs: object) -> None:
        nonlocal forks
        forks += 1
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(VectorIndex, "search_in_child", no_fork)
    assert e.calibrate_due() is None
    assert forks == 1
    for _ in range(3):  # not at the next flushes
        harness.clock.advance(1)
        assert e.calibrate_due() is None
    assert forks == 1
    await look_up(63)
    assert e.calibrate_due() is None
    assert forks == 1
    await look_up(1)  # as many new lookups: tried again
    assert e.calibrate_due() is None
    assert forks == 2
    assert len(_warnings(caplog, "could not start calibrating 'cal'")) == 2


async def test_a_fold_that_failed_is_tried_again_later_and_less_often(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache_engine, "_FOLD_AT", 8)
    e = harness.e
    vectors = low_dimension_rows(30, 16, seed=2)
    await e.put_namespace(NamespaceSettings(name="o", embedder="caller", dimension=16))
    for i in range(10):
        await e.store("o", prompt=f"p{i}", vector=vectors[i], response=str(i).encode())
    e = await harness.reopen()  # memory-mapped back
    await asyncio.gather(*e._warmers)  # the view settled
    for i in range(10, 30):  # past the bound: the next flush turn folds the overlay in
        await e.store("o", prompt=f"p{i}", vector=vectors[i], response=str(i).encode())
    index = e._states["o"].index
    materialize = VectorIndex.materialize
    folds = 0

    def no_memory(self: VectorIndex) -> None:
        nonlocal folds
        folds += 1
        raise VectorError("cannot load the index file o.f32.usearch: std::bad_alloc")

    monkeypatch.setattr(VectorIndex, "materialize", no_memory)

    async def fold_turn() -> None:
        e._fold_due()
        await asyncio.gather(*e._warmers)  # a fold that failed raises nothing here

    await fold_turn()
    assert folds == 1
    for delay in (60, 120, 240, 480, 600, 600):
        tried = folds
        await fold_turn()  # not at the next flush turn
        harness.clock.now += delay * _SECOND - 1
        await fold_turn()
        assert folds == tried
        harness.clock.now += 1
        await fold_turn()
        assert folds == tried + 1
    assert is_view(index)  # the view served on meanwhile, its overlay too
    for i in (0, 29):
        hit = (await e.lookup("o", vector=vectors[i], threshold=0.999)).hit
        assert hit is not None
        assert hit.response == str(i).encode()
    assert len(_warnings(caplog, "folding the overlay of 'o'")) == 1

    monkeypatch.setattr(VectorIndex, "materialize", materialize)
    harness.clock.now += 600 * _SECOND
    await fold_turn()
    assert not is_view(index)
    assert len(index) == 30
    assert len(_warnings(caplog, "folded the overlay of 'o'")) == 1
    assert e._states["o"].fold_failures == 0
