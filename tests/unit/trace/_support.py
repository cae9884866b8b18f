"""Helpers for the trace engine tests: a settable clock and a recorder harness over real storage."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from are_core.storage import GroupCommitter, Storage
from are_core.trace import Event, EventDraft, EventRecorder


class Clock:
    """A settable wall clock in Unix nanoseconds."""

    def __init__(self) -> None:
        self.now_ns = 1_700_000_000 * 1_000_000_000

    def __call__(self) -> int:
        return self.now_ns


class Harness:
    """A recorder over real storage, with a helper that records like a producer does."""

    def __init__(self, storage: Storage, committer: GroupCommitter, clock: Clock, **options: object) -> None:
        self.storage = storage
        self.committer = committer
        self.clock = clock
        # options are EventRecorder's own keywords, passed through from each test untyped.
        self.recorder = EventRecorder(storage, committer, clock_ns=clock, **options)  # type: ignore[arg-type]
        self.recorder.recover()

    async def emit(self, *drafts: EventDraft) -> list[Event]:
        """Records ``drafts`` in one batch, commits it, then publishes: the producer's protocol."""
        batch = self.storage.batch()
        events = [self.recorder.record(batch, draft) for draft in drafts]
        await self.committer.submit(batch)
        self.recorder.publish(events)
        return events

    async def emit_many(self, count: int, make: Callable[[int], EventDraft]) -> list[Event]:
        return await self.emit(*(make(i) for i in range(count)))


MakeHarness = Callable[..., Harness]


async def close(harness: Harness) -> None:
    """Stops the recorder and closes its storage (a clean shutdown)."""
    await harness.recorder.stop()
    await harness.committer.aclose()
    harness.storage.close()


def draft(
    kind: str = "TASK_SCHEDULED", workflow_id: str = "wf-1", task_id: str = "t1", **fields: object
) -> EventDraft:
    """A draft with sensible defaults."""
    # fields are EventDraft's own keywords, passed through from each test untyped.
    return EventDraft(event_type=kind, workflow_id=workflow_id, task_id=task_id, **fields)  # type: ignore[arg-type]


def sequences(events: Sequence[Event]) -> list[int]:
    """The sequences of ``events``, in order."""
    return [event.sequence for event in events]
