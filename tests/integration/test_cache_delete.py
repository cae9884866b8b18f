"""DeleteNamespace over real gRPC: what goes, what the trace says, refusals naming the field."""

from __future__ import annotations

import uuid

import grpc
import pytest

from are_sdk import Client, InvalidArgumentError, NotFoundError, RawPayload
from are_sdk._proto.are.v1 import cache_service_pb2 as cs
from tests.integration._events import retained_events


def _name(tag: str) -> str:
    return f"{tag}:{uuid.uuid4().hex[:10]}"


async def test_a_deleted_namespace_is_gone_and_its_name_is_free(client: Client) -> None:
    ns = _name("delete")
    await client.cache.put_namespace(ns, similarity_threshold=0.5, description="old")
    for i in range(30):
        await client.cache.store(ns, f"what is the capital of country {i}", f"capital {i}")
    assert await client.cache.lookup(ns, "what is the capital of country 3") is not None

    assert await client.cache.delete_namespace(ns) == 30

    with pytest.raises(NotFoundError) as missing:
        await client.cache.lookup(ns, "what is the capital of country 3")
    assert missing.value.reason == "NAMESPACE_NOT_FOUND"
    with pytest.raises(NotFoundError):
        await client.cache.stats(ns)
    with pytest.raises(NotFoundError):
        await client.cache.store(ns, "p", "r")
    with pytest.raises(NotFoundError):
        await client.cache.delete_namespace(ns)
    assert ns not in {n.name for n in await client.cache.list_namespaces()}

    [deleted] = [
        e for e in await retained_events(client, event_types=["CACHE_NAMESPACE_DELETED"]) if e.name == ns
    ]
    assert deleted.attributes["are.cache.removed_count"].int_value == 30
    removals = [
        e
        for e in await retained_events(client, event_types=["CACHE_INVALIDATED"])
        if e.name == ns and e.attributes["are.cache.reason"].string_value == "NAMESPACE_DELETED"
    ]
    assert sum(e.attributes["are.cache.removed_count"].int_value for e in removals) == 30

    # Created afresh: its own settings, no entry and no counter of the old one.
    again = await client.cache.put_namespace(ns, embedder="caller", dimension=4)
    assert again.created and again.embedder == "caller" and again.description == ""
    assert await client.cache.lookup(ns, "what is the capital of country 3") is None
    [stats] = await client.cache.stats(ns)
    assert (stats.entries, stats.lookups, stats.misses) == (0, 1, 1)
    await client.cache.store(ns, "fresh", RawPayload(b"new", "text/plain"), vector=[1.0, 0.0, 0.0, 0.0])
    hit = await client.cache.lookup(ns, vector=[1.0, 0.0, 0.0, 0.0])
    assert hit is not None and hit.data == b"new"


@pytest.mark.parametrize("name", ["", "bad name!", "x" * 129])
async def test_a_bad_namespace_name_is_refused_naming_the_field(client: Client, name: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        await client.raw.cache.DeleteNamespace(cs.DeleteNamespaceRequest(namespace=name))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in refused.value.field_violations] == ["namespace"]
