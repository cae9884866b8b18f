"""DeleteNamespace and PutNamespace update masks over real gRPC: what changes, refusals naming the field."""

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


async def test_update_namespace_changes_only_the_settings_it_names(client: Client) -> None:
    ns = _name("update")
    await client.cache.put_namespace(
        ns, max_entries=50, default_ttl=3600, description="kept", search_expansion=48, recall_target=0.99
    )
    await client.cache.store(ns, "a question", "an answer")
    updated = await client.cache.update_namespace(ns, similarity_threshold=0.8, max_bytes=1 << 20)
    assert not updated.created
    assert updated.similarity_threshold == pytest.approx(0.8)
    assert updated.max_bytes == 1 << 20
    assert (updated.max_entries, updated.description) == (50, "kept")
    assert updated.default_ttl.total_seconds() == 3600
    assert (updated.search_expansion, updated.search_expansion_fixed) == (48, True)
    assert updated.recall_target == pytest.approx(0.99)
    assert await client.cache.lookup(ns, "a question") is not None  # its entries stay

    # A named setting sent as zero returns to its default, as with put_namespace.
    again = await client.cache.update_namespace(ns, search_expansion=0, description="")
    assert (again.search_expansion_fixed, again.description, again.max_entries) == (False, "", 50)
    # put_namespace sets every setting: those left out return to their defaults.
    reset = await client.cache.put_namespace(ns)
    assert (reset.max_entries, reset.max_bytes) == (1_000_000, 1 << 30)

    with pytest.raises(NotFoundError) as missing:
        await client.cache.update_namespace(_name("nothing"), similarity_threshold=0.9)
    assert missing.value.reason == "NAMESPACE_NOT_FOUND"
    with pytest.raises(InvalidArgumentError) as refused:
        await client.cache.update_namespace(ns, similarity_threshold=1.5)
    assert [v.field for v in refused.value.field_violations] == ["namespace.similarity_threshold"]


@pytest.mark.parametrize("path", ["embedder", "dimension", "name", "namespace.max_entries", ""])
async def test_an_update_mask_naming_no_mutable_setting_is_refused(client: Client, path: str) -> None:
    ns = _name("mask")
    await client.cache.put_namespace(ns, max_entries=7)
    request = cs.PutNamespaceRequest(namespace=cs.CacheNamespace(name=ns, max_entries=9))
    request.update_mask.paths.extend(["max_entries", path])
    with pytest.raises(InvalidArgumentError) as refused:
        await client.raw.cache.PutNamespace(request)
    assert [v.field for v in refused.value.field_violations] == ["update_mask"]
    [kept] = [n for n in await client.cache.list_namespaces() if n.name == ns]
    assert kept.max_entries == 7  # nothing changed
