"""TraceService against a real sidecar: big events' pages fit the message limit; age goes by record time.

Events are recorded through the sidecar's test hook (``ARE_TRACE_TEST_HOOK=1``),
which records drafts as producers do; a draft with a time is recorded as a
worker's report is (its time kept, the record time the sidecar's).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import msgspec
import pytest

from are_core.trace import EventDraft
from are_sdk import Client
from are_sdk._proto.are.v1 import event_pb2, trace_service_pb2
from are_sdk.testing import SidecarProcess
from sidecar._trace import TEST_HOOK_ENV, TEST_HOOK_METHOD

MESSAGE_BYTES = 32 << 20  # the smallest limit the sidecar takes
BIG_EVENTS = 40  # about 1 MiB each: 40 MiB, past the limit in one page


@pytest.fixture(scope="module")
def small_messages() -> Iterator[SidecarProcess]:
    with SidecarProcess.start(
        env={TEST_HOOK_ENV: "1"}, args=["--max-message-bytes", str(MESSAGE_BYTES)]
    ) as process:
        yield process


async def record(client: Client, *drafts: EventDraft) -> list[int]:
    call = client.channel.unary_unary(TEST_HOOK_METHOD)
    reply = await call(msgspec.msgpack.encode(list(drafts)), timeout=60)
    return msgspec.msgpack.decode(reply, type=list[int])


def big_draft(index: int) -> EventDraft:
    """A worker's LLM call at its bounds: 64 attributes of 16 KiB."""
    attributes = {f"prompt.{k}": f"{index:04d}" + "x" * (16_384 - 4) for k in range(64)}
    return EventDraft(event_type="LLM_CALL", workflow_id="wf-big", name="gpt-x", attributes=attributes)


async def test_a_page_of_big_events_is_cut_short_of_the_message_limit(small_messages: SidecarProcess) -> None:
    async with await Client.connect(small_messages.target) as client:
        sequences: list[int] = []
        for start in range(0, BIG_EVENTS, 10):  # 10 MiB a call, under the 32 MiB request limit
            sequences += await record(client, *(big_draft(i) for i in range(start, start + 10)))
        raw = client.raw.trace
        for event_filter in (event_pb2.EventFilter(), event_pb2.EventFilter(workflow_ids=["wf-big"])):
            seen: list[int] = []
            request = trace_service_pb2.ListEventsRequest(page_size=1000, filter=event_filter)
            pages = 0
            for _ in range(BIG_EVENTS + 1):  # bounded: at least one event a page
                page = await raw.ListEvents(request, timeout=60)
                pages += 1
                assert page.events, "a page always holds at least one event"
                assert page.ByteSize() <= MESSAGE_BYTES
                assert page.last_sequence == page.events[-1].sequence
                seen += [event.sequence for event in page.events]
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
            assert seen == sequences  # every event once, in order
            assert pages >= 2  # the first page was cut short of page_size
        # The SDK follows the short pages.
        listed = [event.sequence async for event in client.trace.iter_events(page_size=1000)]
        assert listed == sequences


async def test_a_future_worker_time_does_not_hold_age_retention() -> None:
    with SidecarProcess.start(env={TEST_HOOK_ENV: "1"}, args=["--event-retention-age-s", "1"]) as process:
        async with await Client.connect(process.target) as client:
            year_ahead = time.time_ns() + 365 * 86_400 * 1_000_000_000
            await record(
                client, EventDraft(event_type="WORKER_CUSTOM", name="skewed", event_time_unix_ns=year_ahead)
            )
            await record(client, *(EventDraft(event_type="WORKER_CUSTOM", name=f"e{i}") for i in range(50)))
            retained = -1
            for _ in range(300):  # a hang guard of about 30 s; pruning runs every second
                page = await client.trace.list_events(page_size=1000)
                retained = len(page.events)
                if not retained:
                    break
                await asyncio.sleep(0.1)
            assert retained == 0  # all 51 went once a second old, the skewed one too
