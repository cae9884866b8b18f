"""SearchCoalescer: the searches of concurrent coroutines in one native call."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["SearchCoalescer"]

_Matches = list[tuple[int, float]]
SearchMany = Callable[..., list[_Matches]]
"""``search_many(queries, k, *, exact, threads)``: one native call over an (n, d) float32 batch."""

_Pending = tuple[np.ndarray[Any, Any], int, "asyncio.Future[_Matches]"]


class SearchCoalescer:
    """Coalesces the searches of concurrent coroutines into one native call per batch.

    The first search of an event-loop turn, when no batch is under way, runs
    at once and inline: a lone lookup waits for nothing and pays no thread
    hand-off. Searches made later in the same turn, or while a batch is
    searching, queue; at the end of the turn, or as soon as the running
    batch returns, the queue (at most ``max_batch`` of it) goes to a worker
    thread as one native call, whose native threads release the GIL, so
    the event loop decodes and answers other calls meanwhile.

    A batch that fails is searched again one query at a time, so an error
    fails only the search that caused it. Past ``max_pending`` queued
    searches, a search runs inline (the queue never grows without bound).

    Args:
        search_many: The native batch search (``VectorIndex._search``).
        max_batch: Queries per native call at most.
        threads: Native threads per batch call (2 uses both cores of a small
            machine); a batch of one uses one.
        max_pending: Queued searches at most before searches run inline.
    """

    def __init__(
        self, search_many: SearchMany, *, max_batch: int = 32, threads: int = 2, max_pending: int = 4096
    ) -> None:
        if max_batch < 1 or threads < 1 or max_pending < 1:
            raise ValueError("max_batch, threads and max_pending must be at least 1")
        self._search_many = search_many
        self._max_batch = max_batch
        self._threads = threads
        self._max_pending = max_pending
        self._pending: list[_Pending] = []
        self._running: asyncio.Future[Any] | None = None
        self._turn_used = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        """Native batch calls made in a worker thread (for tests and benchmarks)."""
        self.batched = 0
        """Searches those calls answered."""

    @property
    def pending(self) -> int:
        """Searches queued for the next batch."""
        return len(self._pending)

    async def search(self, query: np.ndarray[Any, Any], k: int) -> _Matches:
        """The k nearest keys to one prepared (1, d) float32 query, best first."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or an owner moved to another loop: start afresh
            self._loop, self._pending, self._running, self._turn_used = loop, [], None, False
        if self._running is None and not self._turn_used:
            self._turn_used = True
            loop.call_soon(self._end_turn)
            return self._search_many(query, k, exact=False, threads=1)[0]
        if len(self._pending) >= self._max_pending:
            return self._search_many(query, k, exact=False, threads=1)[0]
        future: asyncio.Future[_Matches] = loop.create_future()
        self._pending.append((query, k, future))
        return await future

    def _end_turn(self) -> None:
        self._turn_used = False
        if self._running is None and self._pending:
            self._dispatch()

    def _dispatch(self) -> None:
        batch = [item for item in self._pending[: self._max_batch] if not item[2].done()]
        del self._pending[: self._max_batch]
        if not batch:
            if self._pending:
                self._dispatch()
            return
        loop = asyncio.get_running_loop()
        self._running = loop.run_in_executor(None, self._run, batch)
        self._running.add_done_callback(functools.partial(self._finished, batch))

    def _run(self, batch: list[_Pending]) -> list[_Matches | BaseException]:
        """In the worker thread: one native call for the batch, or one per query if it fails."""
        k = max(item[1] for item in batch)
        try:
            queries = np.concatenate([item[0] for item in batch]) if len(batch) > 1 else batch[0][0]
            found = self._search_many(queries, k, exact=False, threads=min(self._threads, len(batch)))
            return [matches[: item[1]] for matches, item in zip(found, batch, strict=True)]
        except Exception:  # noqa: BLE001 - searched again alone, each query gets its own outcome
            outcomes: list[_Matches | BaseException] = []
            for query, wanted, _ in batch:
                try:
                    outcomes.append(self._search_many(query, wanted, exact=False, threads=1)[0])
                except Exception as error:  # noqa: BLE001 - handed to that query's caller
                    outcomes.append(error)
            return outcomes

    def _finished(
        self, batch: list[_Pending], running: asyncio.Future[list[_Matches | BaseException]]
    ) -> None:
        self._running = None
        self.batches += 1
        error: BaseException | None = asyncio.CancelledError() if running.cancelled() else running.exception()
        outcomes: list[_Matches | BaseException] = [error] * len(batch) if error else running.result()
        for (_, _, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
                self.batched += 1
        if self._pending:
            self._dispatch()
