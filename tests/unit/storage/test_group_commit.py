"""Group commit: one transaction per loop turn, bounded, all-or-nothing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import uvloop

from are_core.storage import (
    BatchTooLargeError,
    GroupCommitter,
    KeyExistsError,
    Storage,
    StorageBusyError,
    StorageClosedError,
    StorageFullError,
    u64_key,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(30)
KiB = 1024


async def test_200_concurrent_batches_share_one_transaction(storage: Storage) -> None:
    async with GroupCommitter(storage) as committer:

        async def submit(i: int) -> None:
            await committer.submit(storage.batch().put("kv", u64_key(i), f"v{i}".encode()))

        await asyncio.gather(*(submit(i) for i in range(200)))
        stats = committer.stats()
    assert stats.commits <= 2
    assert stats.batches == 200
    assert stats.mutations == 200
    assert stats.max_group_batches >= 100
    assert stats.pending_batches == stats.pending_mutations == stats.pending_bytes == 0
    assert stats.last_commit_latency_s > 0
    assert storage.count("kv") == 200
    assert all(storage.get("kv", u64_key(i)) == f"v{i}".encode() for i in range(200))


def test_group_commit_under_uvloop(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        with Storage.open(tmp_path, tables=["kv"]) as store:
            async with GroupCommitter(store) as committer:
                await asyncio.gather(
                    *(committer.submit(store.batch().put("kv", u64_key(i), b"v")) for i in range(200))
                )
                return committer.stats().commits, store.count("kv")

    commits, count = uvloop.run(main())
    assert commits <= 2
    assert count == 200


async def test_batches_arriving_during_a_commit_go_together_into_the_next(storage: Storage) -> None:
    async with GroupCommitter(storage) as committer:

        async def writer(w: int) -> None:
            for i in range(20):
                await committer.submit(storage.batch().put("kv", f"{w}:{i}".encode(), b"x"))

        await asyncio.gather(*(writer(w) for w in range(20)))
        stats = committer.stats()
    assert stats.batches == 400
    assert stats.commits < 100  # far fewer than one per batch
    assert storage.count("kv") == 400


async def test_batches_apply_in_submission_order(storage: Storage) -> None:
    async with GroupCommitter(storage) as committer:
        await asyncio.gather(
            committer.submit(storage.batch().put("kv", b"k", b"first")),
            committer.submit(storage.batch().delete("kv", b"k")),
            committer.submit(storage.batch().put("kv", b"k", b"last")),
        )
    assert storage.get("kv", b"k") == b"last"


async def test_put_if_absent_rejects_only_its_own_batch(storage: Storage) -> None:
    async with GroupCommitter(storage) as committer:
        first = storage.batch().put_if_absent("kv", b"request-1", b"wf-A").put("tasks", b"wf-A", b"a")
        second = storage.batch().put_if_absent("kv", b"request-1", b"wf-B").put("tasks", b"wf-B", b"b")
        other = storage.batch().put("events", b"e", b"1")
        results = await asyncio.gather(
            committer.submit(first),
            committer.submit(second),
            committer.submit(other),
            return_exceptions=True,
        )
        assert results[0] is None
        assert isinstance(results[1], KeyExistsError)
        assert "b'request-1'" in str(results[1])
        assert "'kv'" in str(results[1])
        assert results[2] is None
        stats = committer.stats()
    assert stats.commits == 1
    assert stats.conflicts == 1
    assert stats.batches == 2
    assert storage.get("kv", b"request-1") == b"wf-A"
    assert storage.get("tasks", b"wf-B") is None
    assert storage.get("tasks", b"wf-A") == b"a"
    assert storage.get("events", b"e") == b"1"


async def test_failed_transaction_fails_every_submitter_and_applies_nothing(tmp_path: Path) -> None:
    with Storage.open(
        tmp_path, tables=["kv"], initial_map_size_bytes=64 * KiB, max_map_size_bytes=256 * KiB
    ) as store:
        async with GroupCommitter(store) as committer:
            small = store.batch().put("kv", b"small", b"1")
            big = store.batch()
            for i in range(400):
                big.put("kv", u64_key(i), b"y" * 1000)
            results = await asyncio.gather(
                committer.submit(small), committer.submit(big), return_exceptions=True
            )
            assert all(isinstance(r, StorageFullError) for r in results)
            assert store.count("kv") == 0
            # The committer carries on with work that fits.
            await committer.submit(store.batch().put("kv", b"after", b"1"))
            stats = committer.stats()
        assert stats.failed_commits == 1
        assert stats.commits == 1
        assert store.get("kv", b"after") == b"1"


async def test_map_grows_under_group_commit(tmp_path: Path) -> None:
    with Storage.open(
        tmp_path, tables=["kv"], initial_map_size_bytes=64 * KiB, max_map_size_bytes=64 * 1024 * KiB
    ) as store:
        async with GroupCommitter(store) as committer:

            async def submit(chunk: int) -> None:
                batch = store.batch()
                for i in range(10):
                    batch.put("kv", u64_key(chunk * 10 + i), b"m" * 1000)
                await committer.submit(batch)

            for wave in range(8):
                await asyncio.gather(*(submit(wave * 50 + c) for c in range(50)))
            assert committer.stats().map_resizes >= 5
        assert store.count("kv") == 4000
        assert store.map_size_bytes >= 4 * 1024 * KiB


async def test_over_the_bound_submit_raises_busy(storage: Storage) -> None:
    async with GroupCommitter(storage, max_pending_mutations=10) as committer:
        tasks = [
            asyncio.create_task(committer.submit(storage.batch().put("kv", u64_key(i), b"v")))
            for i in range(10)
        ]
        await asyncio.sleep(0)  # every task has enqueued; none is committed yet
        assert committer.stats().pending_mutations == 10
        with pytest.raises(StorageBusyError, match="max_pending_mutations=10; retry later"):
            await committer.submit(storage.batch().put("kv", b"extra", b"v"))
        await asyncio.gather(*tasks)
        await committer.submit(storage.batch().put("kv", b"extra", b"v"))
        assert committer.stats().rejected_busy == 1
    assert storage.count("kv") == 11


async def test_byte_bound_and_oversized_batch(storage: Storage) -> None:
    async with GroupCommitter(storage, max_pending_bytes=1000) as committer:
        with pytest.raises(BatchTooLargeError, match="max_pending_bytes=1000; split it"):
            await committer.submit(storage.batch().put("kv", b"k", b"x" * 1000))
        task = asyncio.create_task(committer.submit(storage.batch().put("kv", b"a", b"x" * 600)))
        await asyncio.sleep(0)
        with pytest.raises(StorageBusyError, match="max_pending_bytes=1000"):
            await committer.submit(storage.batch().put("kv", b"b", b"x" * 600))
        await task


async def test_aclose_flushes_pending_batches_then_refuses(storage: Storage) -> None:
    committer = GroupCommitter(storage)
    tasks = [
        asyncio.create_task(committer.submit(storage.batch().put("kv", u64_key(i), b"v"))) for i in range(50)
    ]
    await asyncio.sleep(0)
    await committer.aclose()
    assert all(t.done() and t.exception() is None for t in tasks)
    assert storage.count("kv") == 50
    with pytest.raises(StorageClosedError, match="group committer is closed"):
        await committer.submit(storage.batch().put("kv", b"late", b"v"))
    await committer.aclose()


async def test_empty_batch_returns_at_once(storage: Storage) -> None:
    async with GroupCommitter(storage) as committer:
        await committer.submit(storage.batch())
        assert committer.stats().commits == 0


async def test_cancelled_submitter_does_not_withdraw_its_batch(storage: Storage) -> None:
    async with GroupCommitter(storage) as committer:
        task = asyncio.create_task(committer.submit(storage.batch().put("kv", b"k", b"v")))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert storage.get("kv", b"k") == b"v"
