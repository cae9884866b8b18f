"""TraceService over real gRPC: paged reads, filters, errors, the live seam, overflow, shutdown.

Events are recorded through the sidecar's test hook (``ARE_TRACE_TEST_HOOK=1``),
which takes the path every producer takes: one batch, group commit, publish.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import grpc
import msgspec
import pytest
from google.protobuf import timestamp_pb2

from are_core.trace import EventDraft
from are_sdk import Client, InvalidArgumentError, TraceStreamItem, UnavailableError
from are_sdk._proto.are.v1 import event_pb2, trace_service_pb2
from are_sdk.testing import SidecarProcess
from sidecar._trace import TEST_HOOK_ENV, TEST_HOOK_METHOD

BUFFER = 16


@pytest.fixture(scope="module")
def traced() -> Iterator[SidecarProcess]:
    """A sidecar with the event test hook on and a small stream buffer (to overflow it)."""
    with SidecarProcess.start(
        env={TEST_HOOK_ENV: "1"}, args=["--event-stream-buffer", str(BUFFER)]
    ) as process:
        yield process


@pytest.fixture
async def trace_client(traced: SidecarProcess) -> AsyncIterator[Client]:
    async with await Client.connect(traced.target) as connected:
        yield connected


async def record(client: Client, *drafts: EventDraft) -> list[int]:
    """Records ``drafts`` in the sidecar (one transaction) and returns their sequences."""
    call = client.channel.unary_unary(TEST_HOOK_METHOD)
    reply = await call(msgspec.msgpack.encode(list(drafts)), timeout=30)
    return msgspec.msgpack.decode(reply, type=list[int])


def new_workflow() -> str:
    return f"wf-{uuid.uuid4().hex[:12]}"


def _sequence(item: TraceStreamItem) -> int:
    """The sequence of a streamed event or caught-up marker; a missed-events notice has none."""
    assert not isinstance(item, trace_service_pb2.EventsMissed), item
    return item.sequence


async def test_list_events_filters_and_pages(trace_client: Client) -> None:
    wf, other = new_workflow(), new_workflow()
    drafts = [
        EventDraft(
            event_type="TASK_DISPATCHED" if i % 2 else "TASK_COMPLETED",
            workflow_id=wf if i % 3 else other,
            task_id=f"t{i % 2}",
            attempt=1,
            worker_id="w1",
            task_state="RUNNING" if i % 2 else "COMPLETED",
            duration_ns=2_500_000_000,
            attributes={"are.pool": "default", "n": i, "ratio": 0.5, "ok": True},
        )
        for i in range(30)
    ]
    sequences = await record(trace_client, *drafts)
    mine = [s for s, d in zip(sequences, drafts, strict=True) if d.workflow_id == wf]

    seen: list[int] = []
    token = ""
    for _ in range(20):
        page = await trace_client.trace.list_events(workflow_ids=[wf], page_size=7, page_token=token)
        seen += [e.sequence for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == mine
    assert page.last_sequence >= mine[-1]

    dispatched = await trace_client.trace.list_events(
        workflow_ids=[wf], event_types=["TASK_DISPATCHED"], task_ids=["t1"], page_size=1000
    )
    assert [e.sequence for e in dispatched.events] == [
        s
        for s, d in zip(sequences, drafts, strict=True)
        if d.workflow_id == wf and d.event_type == "TASK_DISPATCHED"
    ]
    event = dispatched.events[0]
    assert event.event_type == event_pb2.EVENT_TYPE_TASK_DISPATCHED
    assert event.task_state == 4  # TASK_STATE_RUNNING
    assert event.worker_id == "w1"
    assert event.duration.seconds == 2
    assert event.duration.nanos == 500_000_000
    assert event.attributes["are.pool"].string_value == "default"
    assert event.attributes["ok"].bool_value is True
    assert event.attributes["ratio"].double_value == 0.5
    assert event.attributes["n"].WhichOneof("value") == "int_value"

    everything = [e.sequence async for e in trace_client.trace.iter_events(workflow_ids=[wf, other])]
    assert everything == sequences
    future = await trace_client.trace.list_events(
        workflow_ids=[wf], start_time=datetime(2999, 1, 1, tzinfo=UTC)
    )
    assert list(future.events) == []


@pytest.mark.parametrize(
    ("request_fields", "field", "reason"),
    [
        (
            {"filter": event_pb2.EventFilter(event_types=[event_pb2.EVENT_TYPE_UNSPECIFIED])},
            "filter.event_types[0]",
            "INVALID_ARGUMENT",
        ),
        (
            {"filter": event_pb2.EventFilter(workflow_ids=[f"w{i}" for i in range(101)])},
            "filter.workflow_ids",
            "INVALID_ARGUMENT",
        ),
        ({"filter": event_pb2.EventFilter(task_ids=["ok", ""])}, "filter.task_ids[1]", "INVALID_ARGUMENT"),
        ({"page_size": -1}, "page_size", "INVALID_ARGUMENT"),
        ({"page_token": "garbage"}, "page_token", "INVALID_PAGE_TOKEN"),
        # Found by the bad-input fuzz: not Timestamps at all; their nanoseconds overflowed the
        # page token's int64 encoding (UNKNOWN).
        (
            {"filter": event_pb2.EventFilter(start_time=timestamp_pb2.Timestamp(seconds=-(2**63)))},
            "filter.start_time",
            "INVALID_ARGUMENT",
        ),
        (
            {"filter": event_pb2.EventFilter(end_time=timestamp_pb2.Timestamp(seconds=1, nanos=-1))},
            "filter.end_time",
            "INVALID_ARGUMENT",
        ),
    ],
)
async def test_invalid_list_requests_name_the_field(
    trace_client: Client, request_fields: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        # The rows hold fields of the right types (bad values only); a dict[str, object] hides that.
        await trace_client.raw.trace.ListEvents(trace_service_pb2.ListEventsRequest(**request_fields))  # type: ignore[arg-type]
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.reason == reason
    assert field in [violation.field for violation in raised.value.field_violations]


async def test_bounds_far_from_now_are_valid_and_clamped(trace_client: Client) -> None:
    """Any valid Timestamp is a bound: year 1 and year 9999 select as well as the epoch and 2262."""
    wf = new_workflow()
    await record(trace_client, EventDraft(event_type="TASK_SCHEDULED", workflow_id=wf))
    wide = event_pb2.EventFilter(
        workflow_ids=[wf],
        start_time=timestamp_pb2.Timestamp(seconds=-62_135_596_800),
        end_time=timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999),
    )
    page = await trace_client.raw.trace.ListEvents(trace_service_pb2.ListEventsRequest(filter=wide))
    assert [e.workflow_id for e in page.events] == [wf]


async def test_a_cursor_beyond_the_log_is_refused_by_both_rpcs(trace_client: Client) -> None:
    """A cursor from another data folder would silently skip the events numbered up to it."""
    end = (await record(trace_client, EventDraft(event_type="TASK_SCHEDULED", workflow_id=new_workflow())))[0]
    page = await trace_client.trace.list_events(after_sequence=end)  # the log's end itself is fine
    assert page.last_sequence >= end
    with pytest.raises(InvalidArgumentError) as raised:
        await trace_client.trace.list_events(after_sequence=end + 1_000_000)
    assert raised.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert raised.value.reason == "SEQUENCE_BEYOND_LOG"
    assert [violation.field for violation in raised.value.field_violations] == ["after_sequence"]
    request = trace_service_pb2.StreamEventsRequest(after_sequence=end + 1_000_000)
    with pytest.raises(InvalidArgumentError) as streamed:
        async for _ in trace_client.raw.trace.StreamEvents(request):
            pass
    assert streamed.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert [v.field for v in streamed.value.field_violations] == ["after_sequence"]


async def test_a_page_says_where_the_log_ends(trace_client: Client) -> None:
    """end_sequence: the most recent events are read back from it, and nothing follows it yet."""
    workflow = new_workflow()
    sequences = await record(
        trace_client, *(EventDraft(event_type="TASK_SCHEDULED", workflow_id=workflow) for _ in range(3))
    )
    page = await trace_client.trace.list_events(workflow_ids=[workflow], after_sequence=0, page_size=1)
    assert [e.sequence for e in page.events] == sequences[:1]
    assert page.end_sequence >= sequences[-1]
    recent = await trace_client.trace.list_events(
        workflow_ids=[workflow], after_sequence=page.end_sequence - 2
    )
    assert [e.sequence for e in recent.events] == [s for s in sequences if s > page.end_sequence - 2]
    after_end = await trace_client.trace.list_events(after_sequence=page.end_sequence)
    assert all(e.sequence > page.end_sequence for e in after_end.events)


async def test_end_time_before_start_time_is_invalid_for_both_rpcs(trace_client: Client) -> None:
    bad = event_pb2.EventFilter()
    bad.start_time.FromDatetime(datetime(2030, 1, 1, tzinfo=UTC))
    bad.end_time.FromDatetime(datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(InvalidArgumentError) as listed:
        await trace_client.raw.trace.ListEvents(trace_service_pb2.ListEventsRequest(filter=bad))
    assert [v.field for v in listed.value.field_violations] == ["filter.end_time"]
    with pytest.raises(InvalidArgumentError) as streamed:
        async for _ in trace_client.raw.trace.StreamEvents(trace_service_pb2.StreamEventsRequest(filter=bad)):
            pass
    assert streamed.value.reason == "INVALID_ARGUMENT"
    assert [v.field for v in streamed.value.field_violations] == ["filter.end_time"]


async def test_a_page_token_of_another_filter_is_refused(trace_client: Client) -> None:
    wf = new_workflow()
    await record(trace_client, *(EventDraft(event_type="TASK_SCHEDULED", workflow_id=wf) for _ in range(3)))
    page = await trace_client.trace.list_events(workflow_ids=[wf], page_size=1)
    assert page.next_page_token
    with pytest.raises(InvalidArgumentError) as raised:
        await trace_client.trace.list_events(workflow_ids=[new_workflow()], page_token=page.next_page_token)
    assert raised.value.reason == "INVALID_PAGE_TOKEN"


async def test_stream_replays_then_follows_live_without_gap_or_duplicate(trace_client: Client) -> None:
    wf = new_workflow()
    before = await record(
        trace_client, *(EventDraft(event_type="TASK_SCHEDULED", workflow_id=wf) for _ in range(5))
    )
    stream = trace_client.trace.stream(workflow_ids=[wf], after_sequence=0)
    items = [await asyncio.wait_for(anext(stream), 10) for _ in range(6)]
    assert [_sequence(i) for i in items[:5]] == before
    assert isinstance(items[5], trace_service_pb2.CaughtUp)
    assert items[5].sequence >= before[-1]

    # Live, concurrent with a producer; another workflow's events are filtered out.
    async def produce() -> list[int]:
        out: list[int] = []
        for _ in range(10):
            out += await record(
                trace_client,
                EventDraft(event_type="TASK_DISPATCHED", workflow_id=wf),
                EventDraft(event_type="TASK_DISPATCHED", workflow_id=new_workflow()),
            )
        return out[::2]

    producer = asyncio.create_task(produce())
    live = [await asyncio.wait_for(anext(stream), 10) for _ in range(10)]
    assert [_sequence(e) for e in live] == await producer
    await stream.aclose()


async def test_the_sdk_stream_filters_by_time_as_list_events_does(trace_client: Client) -> None:
    """Trace.stream took no start_time / end_time, though StreamEventsRequest's filter has them."""
    wf = new_workflow()
    earlier = await record(
        trace_client, *(EventDraft(event_type="TASK_SCHEDULED", workflow_id=wf) for _ in range(3))
    )
    await asyncio.sleep(0.01)  # the events' clock moves on: the cut falls between the two groups
    cut = datetime.now(UTC)
    await asyncio.sleep(0.01)
    later = await record(
        trace_client, *(EventDraft(event_type="TASK_SCHEDULED", workflow_id=wf) for _ in range(2))
    )
    for start, end, expected in ((None, cut, earlier), (cut, None, later)):
        stream = trace_client.trace.stream(
            workflow_ids=[wf], start_time=start, end_time=end, after_sequence=0
        )
        items = [await asyncio.wait_for(anext(stream), 10) for _ in range(len(expected) + 1)]
        assert [_sequence(i) for i in items[:-1]] == expected
        assert isinstance(items[-1], trace_service_pb2.CaughtUp)
        await stream.aclose()


async def test_live_only_stream_starts_at_the_caught_up_marker(trace_client: Client) -> None:
    wf = new_workflow()
    await record(trace_client, EventDraft(event_type="TASK_SCHEDULED", workflow_id=wf))
    stream = trace_client.trace.stream(workflow_ids=[wf])
    marker = await asyncio.wait_for(anext(stream), 10)
    assert isinstance(marker, trace_service_pb2.CaughtUp)
    (sequence,) = await record(trace_client, EventDraft(event_type="TASK_COMPLETED", workflow_id=wf))
    event = await asyncio.wait_for(anext(stream), 10)
    assert isinstance(event, event_pb2.Event)
    assert event.sequence == sequence
    await stream.aclose()


async def _overflow(client: Client, wf: str, count: int) -> list[int]:
    # Big events fill the transport's flow-control window quickly, so the stream's own
    # bounded buffer overflows while the reader is not reading.
    padding = "x" * 8192
    sequences: list[int] = []
    for _ in range(count // 100):
        sequences += await record(
            client,
            *(
                EventDraft(event_type="WORKER_CUSTOM", workflow_id=wf, attributes={"pad": padding})
                for _ in range(100)
            ),
        )
    return sequences


async def test_a_slow_subscriber_is_told_what_it_missed_and_can_fetch_it(trace_client: Client) -> None:
    wf = new_workflow()
    request = trace_service_pb2.StreamEventsRequest(filter=event_pb2.EventFilter(workflow_ids=[wf]))
    stream = trace_client.raw.trace.StreamEvents(request, timeout=None)
    first = await asyncio.wait_for(anext(stream), 10)
    assert first.WhichOneof("message") == "caught_up"
    sequences = await _overflow(trace_client, wf, 3000)  # not reading meanwhile

    delivered: list[int] = []
    notices: list[trace_service_pb2.EventsMissed] = []
    while len(delivered) + sum(n.missed_count for n in notices) < len(sequences):
        message = await asyncio.wait_for(anext(stream), 10)
        if message.WhichOneof("message") == "event":
            delivered.append(message.event.sequence)
        else:
            notices.append(message.missed)
    await stream.aclose()
    assert notices, "the reader never fell behind: raise the event count"
    for notice in notices:
        assert notice.reason == trace_service_pb2.MISSED_REASON_SLOW_SUBSCRIBER
        page = await trace_client.trace.list_events(
            workflow_ids=[wf], after_sequence=notice.resume_after_sequence, page_size=1
        )
        assert page.events[0].sequence == notice.first_missed_sequence
    assert len(set(delivered)) == len(delivered)


async def test_the_sdk_stream_fills_what_it_missed(trace_client: Client) -> None:
    wf = new_workflow()
    stream = trace_client.trace.stream(workflow_ids=[wf])
    assert isinstance(await asyncio.wait_for(anext(stream), 10), trace_service_pb2.CaughtUp)
    sequences = await _overflow(trace_client, wf, 3000)
    received = [_sequence(await asyncio.wait_for(anext(stream), 10)) for _ in sequences]
    await stream.aclose()
    assert sorted(received) == sequences
    assert len(set(received)) == len(received)


async def test_shutdown_ends_streams_with_unavailable_and_events_survive_a_restart() -> None:
    with SidecarProcess.start(env={TEST_HOOK_ENV: "1"}) as process:
        async with await Client.connect(process.target) as client:
            wf = new_workflow()
            sequences = await record(
                client, *(EventDraft(event_type="TASK_SCHEDULED", workflow_id=wf) for _ in range(3))
            )
            stream = client.trace.stream(after_sequence=0)
            while not isinstance(await asyncio.wait_for(anext(stream), 10), trace_service_pb2.CaughtUp):
                pass
            waiting = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.1)
            await asyncio.to_thread(process.stop)
            with pytest.raises(UnavailableError) as raised:
                await asyncio.wait_for(waiting, 20)
            assert raised.value.reason == "SHUTTING_DOWN"
        # The same data folder (removed with the first process's workdir, so restart inside).
        with SidecarProcess.start(data_dir=process.data_dir, env={TEST_HOOK_ENV: "1"}) as again:
            async with await Client.connect(again.target) as client:
                page = await client.trace.list_events(workflow_ids=[wf])
                assert [e.sequence for e in page.events] == sequences
                (after,) = await record(client, EventDraft(event_type="TASK_SCHEDULED", workflow_id=wf))
                assert after > sequences[-1]
