"""The TraceService servicer's cache of serialized events: bounded in bytes, freed when streams end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import msgspec

from are_sdk._proto.are.v1 import trace_service_pb2
from sidecar import _trace
from sidecar._trace import TraceServicer
from tests.unit.trace._support import MakeHarness, draft


async def test_the_serialized_event_cache_is_bounded_in_bytes_and_freed_with_the_last_stream(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    servicer = TraceServicer(harness.recorder)
    request = trace_service_pb2.StreamEventsRequest()
    streams: list[AsyncGenerator[bytes, None]] = [
        servicer.StreamEvents(request, None)  # type: ignore[misc]  # it is an async generator
        for _ in range(2)
    ]
    for stream in streams:
        first = trace_service_pb2.StreamEventsResponse.FromString(await asyncio.wait_for(anext(stream), 5))
        assert first.WhichOneof("message") == "caught_up"
    # 40 events of about 1 MiB (64 attributes of 16 KiB, as a worker may report), in 4 commits.
    attributes = {f"a{k}": "x" * 16_384 for k in range(64)}
    for _ in range(4):
        await harness.emit(*(draft(name="llm", attributes=attributes) for _ in range(10)))
    for stream in streams:
        for sequence in range(1, 41):
            message = trace_service_pb2.StreamEventsResponse.FromString(
                await asyncio.wait_for(anext(stream), 5)
            )
            assert message.event.sequence == sequence
            cached = sum(len(data) for data in servicer._serialized.values())
            assert cached <= _trace._CONVERTED_CACHE_BYTES, cached  # not 40 MiB
    await streams[0].aclose()
    assert servicer._serialized  # another stream is open: the encodings are still shared
    await streams[1].aclose()
    assert not servicer._serialized  # no stream left: nothing kept


async def test_a_list_page_is_cut_by_its_encoded_size_where_the_stored_size_says_it_fits(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    room = 200_000
    servicer = TraceServicer(harness.recorder, max_message_bytes=_trace._LIST_SLACK_BYTES + room)
    # Many small integer attributes: about twice as large in protobuf as stored in MessagePack.
    attributes = {f"k{k}": 1000 + k for k in range(1000)}
    recorded = await harness.emit(*(draft(name="wide", attributes=attributes) for _ in range(60)))
    request = trace_service_pb2.ListEventsRequest(page_size=1000)
    seen: list[int] = []
    sizes: list[int] = []
    for _ in range(61):  # bounded: at least one event a page
        page = await servicer.ListEvents(request, None)
        assert page.ByteSize() <= room + _trace._LIST_SLACK_BYTES
        sizes.append(len(page.events))
        seen += [event.sequence for event in page.events]
        assert page.last_sequence == page.events[-1].sequence
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == [event.sequence for event in recorded]
    stored = len(msgspec.msgpack.encode(recorded[0]))
    assert max(sizes) < room // stored  # fewer than the stored size alone would have let in
