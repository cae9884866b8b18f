"""StreamEvents with max_batch over real gRPC: ready events share a message, in order, bounded.

A client that does not set the field gets one event per message, as before.
Events are recorded through the sidecar's test hook (``ARE_TRACE_TEST_HOOK=1``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator

import grpc
import pytest

from are_core.trace import EventDraft
from are_sdk import Client, InvalidArgumentError
from are_sdk._proto.are.v1 import event_pb2, trace_service_pb2
from tests.integration.test_trace import record, trace_client, traced

BATCH_BYTES = 4 << 20  # the sidecar's bound on one batch message (below its message limit)

Message = trace_service_pb2.StreamEventsResponse
Stream = AsyncGenerator[Message, None]

__all__ = ["trace_client", "traced"]  # the fixtures (test_trace's sidecar: test hook, small buffer), by name


async def record_many(client: Client, wf: str, count: int, pad: int = 0) -> list[int]:
    """Records ``count`` events of ``wf`` in transactions of at most 100 (``pad`` bytes each)."""
    attributes: dict[str, str | int | float | bool] = {"pad": "x" * pad} if pad else {}
    sequences: list[int] = []
    while len(sequences) < count:
        size = min(100, count - len(sequences))
        drafts = (
            EventDraft(event_type="WORKER_CUSTOM", workflow_id=wf, attributes=attributes) for _ in range(size)
        )
        sequences += await record(client, *drafts)
    return sequences


def new_workflow() -> str:
    return f"wf-{uuid.uuid4().hex[:12]}"


def open_stream(client: Client, wf: str, *, after_sequence: int | None, max_batch: int | None) -> Stream:
    request = trace_service_pb2.StreamEventsRequest(filter=event_pb2.EventFilter(workflow_ids=[wf]))
    if after_sequence is not None:
        request.after_sequence = after_sequence
    if max_batch is not None:
        request.max_batch = max_batch
    call: Stream = client.raw.trace.StreamEvents(request, timeout=None)
    return call


class Reader:
    """Reads a raw stream and checks each message against the batching rules as it goes."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.events: list[int] = []  # every event's sequence, in arrival order
        self.kinds: list[str] = []  # every message's kind
        self.batch_sizes: list[int] = []
        self.notices: list[trace_service_pb2.EventsMissed | trace_service_pb2.CaughtUp] = []

    async def read(self, stream: Stream) -> str:
        message = await asyncio.wait_for(anext(stream), 10)
        kind: str | None = message.WhichOneof("message")
        assert kind is not None
        self.kinds.append(kind)
        if kind == "event":
            self.events.append(message.event.sequence)
        elif kind == "batch":
            sequences = [event.sequence for event in message.batch.events]
            assert 2 <= len(sequences) <= self.max_batch, len(sequences)
            assert message.ByteSize() <= BATCH_BYTES
            self.batch_sizes.append(len(sequences))
            self.events += sequences
        elif kind == "caught_up":
            # The marker is the seam: every event before it is at or below it, none after.
            assert all(sequence <= message.caught_up.sequence for sequence in self.events)
            self.notices.append(message.caught_up)
        else:
            notice = message.missed
            assert notice.reason == trace_service_pb2.MISSED_REASON_SLOW_SUBSCRIBER
            assert not self.events or self.events[-1] < notice.first_missed_sequence
            self.notices.append(notice)
        return kind

    async def read_until(
        self,
        stream: Stream,
        last: int,
    ) -> None:
        """Reads until event ``last`` (or a notice past it) has come; bounded by the wait per message."""
        while not (self.events and self.events[-1] >= last) and not any(
            isinstance(n, trace_service_pb2.EventsMissed) and n.last_missed_sequence >= last
            for n in self.notices
        ):
            await self.read(stream)


async def test_a_batched_stream_replays_and_follows_in_ordered_bounded_batches(trace_client: Client) -> None:
    wf = new_workflow()
    replayed = await record_many(trace_client, wf, 600)
    stream = open_stream(trace_client, wf, after_sequence=0, max_batch=50)
    reader = Reader(max_batch=50)
    while await reader.read(stream) != "caught_up":
        pass
    assert reader.events == replayed
    assert reader.batch_sizes, "a replay of 600 ready events came without one batch"

    # Live: ten events published at once (under the buffer of 16) are ready together.
    live: list[int] = []
    replay_batches = len(reader.batch_sizes)
    for _ in range(10):
        published = await record(
            trace_client, *(EventDraft(event_type="WORKER_CUSTOM", workflow_id=wf) for _ in range(10))
        )
        await reader.read_until(stream, published[-1])
        live += published
    await stream.aclose()
    assert reader.events == replayed + live  # ascending, no gap, no duplicate
    assert len(reader.batch_sizes) > replay_batches, "events published at once came one by one"
    assert [kind for kind in reader.kinds if kind not in ("event", "batch")] == ["caught_up"]


@pytest.mark.parametrize("max_batch", [None, 0, 1])
async def test_without_max_batch_every_event_comes_alone(trace_client: Client, max_batch: int | None) -> None:
    wf = new_workflow()
    replayed = await record_many(trace_client, wf, 300)
    stream = open_stream(trace_client, wf, after_sequence=0, max_batch=max_batch)
    reader = Reader(max_batch=1)
    while await reader.read(stream) != "caught_up":
        pass
    live: list[int] = []
    for _ in range(5):
        published = await record(
            trace_client, *(EventDraft(event_type="WORKER_CUSTOM", workflow_id=wf) for _ in range(10))
        )
        await reader.read_until(stream, published[-1])
        live += published
    await stream.aclose()
    assert reader.events == replayed + live
    assert set(reader.kinds) == {"event", "caught_up"}
    assert reader.kinds.index("caught_up") == len(replayed)


async def test_max_batch_is_at_most_1000(trace_client: Client) -> None:
    wf = new_workflow()
    with pytest.raises(InvalidArgumentError) as raised:
        await anext(open_stream(trace_client, wf, after_sequence=None, max_batch=1001))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.reason == "INVALID_ARGUMENT"
    assert [violation.field for violation in raised.value.field_violations] == ["max_batch"]
    assert "1000" in str(raised.value)

    replayed = await record_many(trace_client, wf, 1200)
    stream = open_stream(trace_client, wf, after_sequence=0, max_batch=1000)
    reader = Reader(max_batch=1000)
    while await reader.read(stream) != "caught_up":
        pass
    await stream.aclose()
    assert reader.events == replayed


async def test_a_batch_stays_under_its_byte_bound(trace_client: Client) -> None:
    """Events of 100 KB: a thousand would pass 4 MiB, so batches are cut short by bytes."""
    wf = new_workflow()
    replayed = await record_many(trace_client, wf, 120, pad=100_000)
    stream = open_stream(trace_client, wf, after_sequence=0, max_batch=1000)
    reader = Reader(max_batch=1000)
    while await reader.read(stream) != "caught_up":
        pass
    await stream.aclose()
    assert reader.events == replayed
    assert reader.batch_sizes
    assert max(reader.batch_sizes) < 42  # 42 such events pass 4 MiB


async def test_a_slow_batched_subscriber_is_told_what_it_missed(trace_client: Client) -> None:
    wf = new_workflow()
    stream = open_stream(trace_client, wf, after_sequence=None, max_batch=100)
    reader = Reader(max_batch=100)
    assert await reader.read(stream) == "caught_up"
    # Big events fill the transport's flow-control window, so the stream's bounded buffer
    # overflows while the reader is not reading.
    sequences = await record_many(trace_client, wf, 3000, pad=8192)
    await reader.read_until(stream, sequences[-1])
    await stream.aclose()
    missed = [n for n in reader.notices if isinstance(n, trace_service_pb2.EventsMissed)]
    assert missed, "the reader never fell behind: raise the event count"
    assert len(set(reader.events)) == len(reader.events)
    assert reader.events == sorted(reader.events)
    # Every event was either delivered or inside a notice's range, which ListEvents still has.
    covered = set(reader.events)
    for notice in missed:
        in_range = [s for s in sequences if notice.first_missed_sequence <= s <= notice.last_missed_sequence]
        assert len(in_range) == notice.missed_count
        covered.update(in_range)
        page = await trace_client.trace.list_events(
            workflow_ids=[wf], after_sequence=notice.resume_after_sequence, page_size=1
        )
        assert page.events[0].sequence == notice.first_missed_sequence
    assert covered == set(sequences)


async def test_the_sdk_stream_yields_every_event_once(trace_client: Client) -> None:
    wf = new_workflow()
    replayed = await record_many(trace_client, wf, 700)
    stream = trace_client.trace.stream(workflow_ids=[wf], after_sequence=0)
    items = [await asyncio.wait_for(anext(stream), 10) for _ in range(len(replayed) + 1)]
    assert isinstance(items[-1], trace_service_pb2.CaughtUp)
    assert all(isinstance(item, event_pb2.Event) for item in items[:-1])
    assert [item.sequence for item in items[:-1] if isinstance(item, event_pb2.Event)] == replayed
    # Live, past the buffer: batches and the filled-in missed events, each once.
    live = await record_many(trace_client, wf, 3000, pad=8192)
    received = []
    for _ in live:
        item = await asyncio.wait_for(anext(stream), 10)
        assert isinstance(item, event_pb2.Event)
        received.append(item.sequence)
    await stream.aclose()
    assert sorted(received) == live
    assert len(set(received)) == len(received)
