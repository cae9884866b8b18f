"""Group commit: many small batches, one write transaction, one sync."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Self

import msgspec

from ._batch import Batch
from ._errors import (
    BatchTooLargeError,
    KeyExistsError,
    StorageBusyError,
    StorageClosedError,
)
from ._storage import MiB, Storage

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["CommitStats", "GroupCommitter"]

_Waiter = tuple[Batch, "asyncio.Future[None]"]
_WriteOutcome = tuple[list[KeyExistsError | None], float]
_log = logging.getLogger("are.storage")


class CommitStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the committer's counters, for benchmarks and metrics."""

    commits: int
    """Write transactions committed."""
    failed_commits: int
    """Write transactions that failed; all their submitters got the error."""
    batches: int
    """Batches committed (conflicting batches excluded)."""
    mutations: int
    """Mutations committed."""
    conflicts: int
    """Batches rejected by a failed ``put_if_absent``."""
    rejected_busy: int
    """Submissions (and :meth:`GroupCommitter.check_room` checks) refused with ``StorageBusyError``."""
    last_group_batches: int
    """Batches in the most recent transaction."""
    max_group_batches: int
    """Most batches ever written in one transaction."""
    last_commit_latency_s: float
    """Duration of the most recent transaction, begin to durable commit."""
    total_commit_latency_s: float
    """Sum of transaction durations; divide by ``commits`` for the mean."""
    map_resizes: int
    """Times the LMDB map has grown since the storage was opened."""
    pending_batches: int
    """Batches accepted and not yet resolved (queued or in flight)."""
    pending_mutations: int
    """Mutations accepted and not yet resolved."""
    pending_bytes: int
    """Key and value bytes accepted and not yet resolved."""


class GroupCommitter:
    """Commits batches from many tasks together, on one writer thread.

    Every batch submitted during one turn of the event loop goes into one
    LMDB write transaction, applied in submission order, and each ``submit``
    returns only once that transaction has committed (and, with
    ``Durability.SYNC``, reached the disk). While a transaction is in flight
    the loop keeps running, and new batches gather for the next one, so the
    cost of a sync is shared by everything that arrived meanwhile.

    Failure: if the transaction fails (``StorageFullError`` or an LMDB error),
    every submitter of that group gets the exception and none of the group is
    applied. A batch whose ``put_if_absent`` finds its key gets
    ``KeyExistsError`` alone; the rest of its group commits.

    Backpressure: work accepted but not yet committed is bounded by
    ``max_pending_mutations`` and ``max_pending_bytes``. Over a bound,
    ``submit`` raises ``StorageBusyError`` at once rather than waiting, so
    the caller can answer ``RESOURCE_EXHAUSTED`` with a retry hint instead of
    holding its request (and its memory) in an invisible queue.

    Admission is synchronous in :meth:`enqueue` (which ``submit`` awaits):
    a caller that changes its memory before it builds its batch checks
    :meth:`check_room` with an upper estimate first and enqueues in the same
    loop step, so that a refusal comes before anything changed. A coroutine
    of ``submit`` handed to ``asyncio.ensure_future`` is admitted only when
    it first runs, in a later step.

    Cancelling a ``submit`` (or the future of ``enqueue``) does not withdraw
    its batch: once accepted, it is committed with its group.

    The committer belongs to the event loop of its first ``submit``.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        max_pending_mutations: int = 100_000,
        max_pending_bytes: int = 64 * MiB,
    ) -> None:
        """Prepare a committer for ``storage``; the writer thread starts lazily.

        Args:
            storage: The storage to write to; close the committer first.
            max_pending_mutations: Bound on mutations queued or in flight.
            max_pending_bytes: Bound on key+value bytes queued or in flight.
        """
        if max_pending_mutations < 1 or max_pending_bytes < 1:
            raise ValueError("max_pending_mutations and max_pending_bytes must be positive")
        self._storage = storage
        self.max_pending_mutations = max_pending_mutations
        self.max_pending_bytes = max_pending_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="are-storage-writer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[_Waiter] = []
        self._inflight: asyncio.Future[_WriteOutcome] | None = None
        self._flush_scheduled = False
        self._closing = False
        self._idle: asyncio.Event | None = None
        # Counters.
        self._commits = 0
        self._failed_commits = 0
        self._batches = 0
        self._mutations = 0
        self._conflicts = 0
        self._rejected_busy = 0
        self._last_group_batches = 0
        self._max_group_batches = 0
        self._last_latency = 0.0
        self._total_latency = 0.0
        self._pending_batches = 0
        self._pending_mutations = 0
        self._pending_bytes = 0
        self._settle_listeners: list[Callable[[Batch, bool], None]] = []

    def add_settle_listener(self, listener: Callable[[Batch, bool], None]) -> None:
        """Calls ``listener(batch, committed)`` once for each batch this committer settles.

        A batch settles when its group's transaction ends (``committed`` is
        False if the transaction failed or the batch's own condition did) or
        when :meth:`enqueue` (or :meth:`submit`) refuses it, before the
        refusal is raised. It is called on the event loop before the
        submitter resumes, in commit order; it must be quick and must not
        raise (the trace recorder uses it to release events in order).
        """
        self._settle_listeners.append(listener)

    async def submit(self, batch: Batch) -> None:
        """Commit ``batch`` with the current group and wait until it is durable.

        The batch is admitted when this coroutine first runs (see :meth:`enqueue`).

        Raises:
            StorageBusyError: the pending bounds are reached; retry later.
            BatchTooLargeError: the batch alone exceeds a bound.
            KeyExistsError: a ``put_if_absent`` of this batch found its key.
            StorageFullError: the group did not fit in the maximum map.
            StorageClosedError: the committer is closing or closed.
            StorageError: the group's transaction failed.
        """
        await self.enqueue(batch)

    def enqueue(self, batch: Batch, *, bounded: bool = True) -> asyncio.Future[None]:
        """Admit ``batch`` to the current group now; the future ends when its transaction does.

        Admission (or refusal) happens in the caller's loop step, before it
        returns: a caller can change its memory, build the batch and enqueue
        it with no other coroutine running between, and learn of a refusal
        while nothing else depends on the change. The future's outcome is
        what :meth:`submit` would raise or return; cancelling it does not
        withdraw the batch. Must be called on the event loop's thread.

        ``bounded=False`` admits the batch whatever the pending bounds (it
        still counts in them, so other batches are refused sooner): for a
        caller whose memory already changed and that cannot be refused, such
        as the scheduler, whose transactions are bounded by its own limits
        and which checks :meth:`check_room` where its work enters.

        Raises:
            StorageBusyError: the pending bounds are reached; retry later.
            BatchTooLargeError: the batch alone exceeds a bound.
            StorageClosedError: the committer is closing or closed.

        Refused batches settle at once (``committed`` False) with the listeners.
        """
        future = self._enqueue(batch, bounded=bounded)
        if future is None:  # an empty batch: nothing to write
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
        return future

    def check_room(self, mutations: int, nbytes: int) -> None:
        """Raise what :meth:`enqueue` would raise now for a batch of this size; admit nothing.

        For a caller that must change its memory before its batch exists
        (and could not undo the change cheaply): it checks an estimate at
        least the batch's size first, then changes memory and enqueues in the
        same loop step. No batch is admitted between, so the enqueue cannot
        be refused for backpressure unless the estimate was too low. A
        refusal here counts in ``rejected_busy`` like one of :meth:`enqueue`.

        Raises:
            StorageBusyError: the pending bounds would be passed; retry later.
            BatchTooLargeError: a batch of this size alone exceeds a bound.
            StorageClosedError: the committer is closing or closed.
        """
        if self._closing:
            raise StorageClosedError("group committer")
        self._check_bounds(mutations, nbytes)

    def stats(self) -> CommitStats:
        """Return a snapshot of the counters."""
        return CommitStats(
            commits=self._commits,
            failed_commits=self._failed_commits,
            batches=self._batches,
            mutations=self._mutations,
            conflicts=self._conflicts,
            rejected_busy=self._rejected_busy,
            last_group_batches=self._last_group_batches,
            max_group_batches=self._max_group_batches,
            last_commit_latency_s=self._last_latency,
            total_commit_latency_s=self._total_latency,
            map_resizes=self._storage.map_resizes,
            pending_batches=self._pending_batches,
            pending_mutations=self._pending_mutations,
            pending_bytes=self._pending_bytes,
        )

    async def aclose(self) -> None:
        """Refuse new batches, commit every accepted one, stop the writer thread.

        Calling it again does nothing. It does not close the storage.
        """
        self._closing = True
        if self._pending_batches:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # Internals; all run on the event loop thread except _write.

    def _enqueue(self, batch: Batch, *, bounded: bool = True) -> asyncio.Future[None] | None:
        if self._closing:
            self._settle(batch, committed=False)
            raise StorageClosedError("group committer")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("GroupCommitter used from a second event loop")
        n, nbytes = len(batch), batch.nbytes
        if not n:
            return None
        try:
            if bounded:
                self._check_bounds(n, nbytes)
        except (BatchTooLargeError, StorageBusyError):
            self._settle(batch, committed=False)
            raise
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append((batch, future))
        self._pending_batches += 1
        self._pending_mutations += n
        self._pending_bytes += nbytes
        if not self._flush_scheduled and self._inflight is None:
            # Run after every callback already ready in this loop turn, so
            # all of this turn's submissions share one transaction.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _check_bounds(self, n: int, nbytes: int) -> None:
        if n > self.max_pending_mutations:
            raise BatchTooLargeError(
                limit_name="max_pending_mutations",
                limit=self.max_pending_mutations,
                size=n,
            )
        if nbytes > self.max_pending_bytes:
            raise BatchTooLargeError(
                limit_name="max_pending_bytes",
                limit=self.max_pending_bytes,
                size=nbytes,
            )
        if self._pending_mutations + n > self.max_pending_mutations:
            self._rejected_busy += 1
            raise StorageBusyError(
                limit_name="max_pending_mutations",
                limit=self.max_pending_mutations,
                pending=self._pending_mutations,
                incoming=n,
            )
        if self._pending_bytes + nbytes > self.max_pending_bytes:
            self._rejected_busy += 1
            raise StorageBusyError(
                limit_name="max_pending_bytes",
                limit=self.max_pending_bytes,
                pending=self._pending_bytes,
                incoming=nbytes,
            )

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._inflight is not None or not self._queue:
            return
        assert self._loop is not None
        group, self._queue = self._queue, []
        batches = [batch for batch, _ in group]
        self._inflight = self._loop.run_in_executor(self._executor, self._write, batches)
        self._inflight.add_done_callback(partial(self._on_written, group))

    def _write(self, batches: Sequence[Batch]) -> _WriteOutcome:
        """Writer thread: one transaction for the whole group."""
        started = time.perf_counter()
        results = self._storage.apply_batches(batches)
        return results, time.perf_counter() - started

    def _on_written(self, group: list[_Waiter], done: asyncio.Future[_WriteOutcome]) -> None:
        self._inflight = None
        for batch, _ in group:
            self._pending_batches -= 1
            self._pending_mutations -= len(batch)
            self._pending_bytes -= batch.nbytes
        error = done.exception() if not done.cancelled() else StorageClosedError("writer")
        if error is not None:
            for batch, _ in group:
                self._settle(batch, committed=False)
            self._fail_group(group, error)
        else:
            results, latency = done.result()
            for (batch, _), conflict in zip(group, results, strict=True):
                self._settle(batch, committed=conflict is None)
            self._resolve_group(group, results, latency)
        if self._queue:
            self._flush()  # pipelining: everything that arrived meanwhile goes next
        elif self._idle is not None and not self._pending_batches:
            self._idle.set()

    def _settle(self, batch: Batch, *, committed: bool) -> None:
        for listener in self._settle_listeners:
            try:
                listener(batch, committed)
            except Exception:  # noqa: BLE001 - a listener's bug must not fail the commit's submitters
                _log.exception("a commit settle listener failed")

    def _fail_group(self, group: list[_Waiter], error: BaseException) -> None:
        self._failed_commits += 1
        for _, future in group:
            if not future.done():
                future.set_exception(error)

    def _resolve_group(
        self, group: list[_Waiter], results: list[KeyExistsError | None], latency: float
    ) -> None:
        self._commits += 1
        self._last_latency = latency
        self._total_latency += latency
        self._last_group_batches = len(group)
        self._max_group_batches = max(self._max_group_batches, len(group))
        for (batch, future), conflict in zip(group, results, strict=True):
            if conflict is None:
                self._batches += 1
                self._mutations += len(batch)
                if not future.done():
                    future.set_result(None)
            else:
                self._conflicts += 1
                if not future.done():
                    future.set_exception(conflict)
