"""Reading the shared sidecar's event log in tests."""

from __future__ import annotations

from collections.abc import Iterable

from are_sdk import Client
from are_sdk._proto.are.v1 import event_pb2


async def retained_events(
    client: Client, *, event_types: Iterable[str], worker_id: str = ""
) -> list[event_pb2.Event]:
    """Every retained event of these types, all pages.

    The session's sidecar is shared by every test, so its log grows long: one
    ListEvents page examines at most 10,000 stored events, and a filter by
    type alone can come back empty with more to read. Following the pages
    finds the events however much came before.
    """
    return [
        event
        async for event in client.trace.iter_events(
            event_types=list(event_types), worker_id=worker_id, page_size=1000
        )
    ]
