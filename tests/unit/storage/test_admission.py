"""Synchronous admission: ``enqueue`` and ``check_room`` refuse in the caller's loop step.

A caller that changes its memory before it builds its batch (the cache
engine) must learn of a refusal for backpressure before the change, not in a
later loop step when ``submit`` first runs: then it could only undo the change
by reloading from LMDB. Here the writer thread is held busy, so that accepted
work stays pending and the bounds are reached without any timing.
"""

from __future__ import annotations

import asyncio

import pytest

from are_core.storage import (
    Batch,
    BatchTooLargeError,
    GroupCommitter,
    Storage,
    StorageBusyError,
    StorageClosedError,
    u64_key,
)
from tests.unit.storage._held import writer_held

pytestmark = pytest.mark.timeout(30)


def _one(storage: Storage, i: int, nbytes: int = 1) -> Batch:
    return storage.batch().put("kv", u64_key(i), b"x" * nbytes)


async def test_enqueue_admits_at_once_and_its_future_ends_with_the_commit(storage: Storage) -> None:
    async with GroupCommitter(storage) as committer:
        futures = [committer.enqueue(_one(storage, i)) for i in range(3)]
        stats = committer.stats()  # no await since: admitted in this step
        assert (stats.pending_batches, stats.pending_mutations, stats.pending_bytes) == (3, 3, 27)
        assert not any(future.done() for future in futures)
        await asyncio.gather(*futures)
        stats = committer.stats()
        assert (stats.commits, stats.last_group_batches) == (1, 3)  # one loop turn, one transaction
        assert stats.pending_batches == 0
    assert storage.count("kv") == 3


async def test_enqueue_refuses_over_a_bound_at_once_and_settles_the_refused_batch(storage: Storage) -> None:
    settled: list[tuple[Batch, bool]] = []
    async with GroupCommitter(storage, max_pending_mutations=2) as committer:
        committer.add_settle_listener(lambda batch, committed: settled.append((batch, committed)))
        async with writer_held(committer):
            accepted = [committer.enqueue(_one(storage, i)) for i in range(2)]
            refused = _one(storage, 2)
            with pytest.raises(StorageBusyError, match="max_pending_mutations=2; retry later") as busy:
                committer.enqueue(refused)
            assert (busy.value.pending, busy.value.incoming) == (2, 1)
            assert settled == [(refused, False)]  # told before the refusal was raised
            stats = committer.stats()
            assert (stats.rejected_busy, stats.pending_mutations) == (1, 2)
        await asyncio.gather(*accepted)
        await committer.enqueue(_one(storage, 3))  # drained: room again
    assert [committed for _, committed in settled] == [False, True, True, True]
    assert storage.get("kv", u64_key(2)) is None
    assert storage.count("kv") == 3


async def test_enqueue_refuses_a_batch_alone_over_a_bound(storage: Storage) -> None:
    settled: list[bool] = []
    async with GroupCommitter(storage, max_pending_bytes=100) as committer:
        committer.add_settle_listener(lambda _batch, committed: settled.append(committed))
        with pytest.raises(BatchTooLargeError, match="max_pending_bytes=100; split it"):
            committer.enqueue(_one(storage, 1, nbytes=100))
        assert committer.stats().pending_batches == 0
    assert settled == [False]
    assert storage.count("kv") == 0


async def test_a_cancelled_future_of_enqueue_does_not_withdraw_its_batch(storage: Storage) -> None:
    async with GroupCommitter(storage) as committer:
        future = committer.enqueue(_one(storage, 1))
        future.cancel()
        await committer.submit(_one(storage, 2))  # a later group: the first has ended
    assert storage.get("kv", u64_key(1)) == b"x"


async def test_enqueue_of_an_empty_batch_is_a_done_future(storage: Storage) -> None:
    async with GroupCommitter(storage) as committer:
        future = committer.enqueue(storage.batch())
        assert future.done()
        assert future.result() is None
        assert committer.stats().pending_batches == 0


async def test_check_room_refuses_what_enqueue_would_and_admits_nothing(storage: Storage) -> None:
    async with GroupCommitter(storage, max_pending_mutations=5, max_pending_bytes=100) as committer:
        async with writer_held(committer):
            accepted = committer.enqueue(_one(storage, 1, nbytes=12))  # 1 mutation, 20 bytes
            committer.check_room(4, 80)  # exactly up to both bounds: room
            with pytest.raises(StorageBusyError, match="max_pending_mutations=5"):
                committer.check_room(5, 10)
            with pytest.raises(StorageBusyError, match="max_pending_bytes=100") as busy:
                committer.check_room(1, 81)
            assert (busy.value.pending, busy.value.incoming) == (20, 81)
            with pytest.raises(BatchTooLargeError, match="max_pending_mutations=5"):
                committer.check_room(6, 10)
            stats = committer.stats()
            assert (stats.pending_batches, stats.pending_mutations, stats.pending_bytes) == (1, 1, 20)
            assert stats.rejected_busy == 2
            # What check_room allowed, enqueue admits in the same step.
            batch = storage.batch()
            for i in range(4):
                batch.put("kv", u64_key(10 + i), b"y" * 12)
            second = committer.enqueue(batch)
        await asyncio.gather(accepted, second)
    assert storage.count("kv") == 5


async def test_check_room_refuses_once_closing(storage: Storage) -> None:
    committer = GroupCommitter(storage)
    await committer.aclose()
    with pytest.raises(StorageClosedError):
        committer.check_room(1, 1)
    with pytest.raises(StorageClosedError):
        committer.enqueue(_one(storage, 1))


async def test_submit_handed_to_ensure_future_is_admitted_only_when_it_runs(storage: Storage) -> None:
    """Why callers changing memory first use enqueue: a submit task's refusal comes a step later."""
    async with GroupCommitter(storage, max_pending_mutations=1) as committer:
        async with writer_held(committer):
            first = committer.enqueue(_one(storage, 1))
            late = asyncio.ensure_future(committer.submit(_one(storage, 2)))  # no refusal here
            assert committer.stats().rejected_busy == 0
            with pytest.raises(StorageBusyError):
                await late
        await first
