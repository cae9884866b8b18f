"""A document holds at most MAX_MEMBERS top-level members, so every one accepted can be forked and replaced.

Defect (found against a real sidecar): a document is stored a row per
top-level member, and a version is one commit, which the group committer
bounds (100,000 mutations). A small patch of 100,000 members was refused
by that internal bound ("batch is too large ... max_pending_mutations",
no field named), and two accepted 60,000-member patches built a document
that could then never be forked nor have its root replaced. A patch that
would leave more than MAX_MEMBERS members is now refused up front
(LIMIT_EXCEEDED naming the patch), and a document at the bound can be
forked, replaced whole, and pruned.

Real LMDB in a temporary folder, the real group committer, no server; the
engine bounded as the sidecar builds it (``max_members=MAX_MEMBERS``).
"""

from __future__ import annotations

import json

import msgspec
import pytest

from are_core.state import MAX_MEMBERS, LimitExceededError, PatchOp, Retention, StateEngine
from are_core.storage import GroupCommitter, Storage

Store = tuple[Storage, GroupCommitter]


def _members(prefix: str, count: int, value: int = 0) -> dict[str, int]:
    return {f"{prefix}{i}": value for i in range(count)}


def _doc(engine: StateEngine, wid: str, version: int | None = None) -> object:
    return json.loads(engine.get(wid, [], version).values[0][1])


async def test_a_patch_past_the_member_bound_is_refused_naming_the_patch(store: Store) -> None:
    engine = StateEngine(*store, max_members=MAX_MEMBERS)
    with pytest.raises(LimitExceededError) as refused:
        await engine.patch("wf", merge_patch=msgspec.json.encode(_members("a", 100_000)))
    assert (refused.value.field, refused.value.limit) == ("merge_patch_json", MAX_MEMBERS)
    assert engine.head("wf") is None  # nothing changed
    # Two patches that each fit, together over the bound: the second is refused.
    half = MAX_MEMBERS // 2 + 1
    await engine.patch("wf", merge_patch=msgspec.json.encode(_members("a", half)))
    await engine.patch("wf", operations=[PatchOp("set", "/b", b"1"), PatchOp("set", "/c", b"2")])
    with pytest.raises(LimitExceededError) as refused:
        await engine.patch("wf", merge_patch=msgspec.json.encode(_members("b", half)))
    assert refused.value.field == "merge_patch_json"
    head = engine.head("wf")
    assert head is not None and head.member_count == half + 2
    # A root replace naming too many is refused too, naming the operations.
    too_many = msgspec.json.encode(_members("c", MAX_MEMBERS + 1))
    with pytest.raises(LimitExceededError) as refused:
        await engine.patch("wf", operations=[PatchOp("set", "", too_many)])
    assert refused.value.field == "operations"


async def test_an_initial_state_past_the_bound_is_refused_naming_it(store: Store) -> None:
    storage, committer = store
    engine = StateEngine(storage, committer, max_members=MAX_MEMBERS)
    batch = storage.batch()
    with pytest.raises(LimitExceededError) as refused:
        engine.stage_initial(batch, "wf", msgspec.json.encode(_members("i", MAX_MEMBERS + 1)))
    assert (refused.value.field, refused.value.limit) == ("initial_state", MAX_MEMBERS)
    assert "initial state" in refused.value.message
    assert len(batch) == 0


async def test_a_document_at_the_bound_forks_is_replaced_whole_and_pruned(store: Store) -> None:
    storage, committer = store
    engine = StateEngine(
        storage, committer, retention=Retention(keep_versions=1, keep_seconds=0), max_members=MAX_MEMBERS
    )
    first = _members("a", MAX_MEMBERS)
    await engine.patch("wf", merge_patch=msgspec.json.encode(first))
    assert await engine.fork("wf", 0, "copy") == 1
    assert _doc(engine, "copy") == first
    # Every member rewritten: a row each, and the previous version's rows pruned in the same commit.
    rewritten = _members("a", MAX_MEMBERS, 1)
    assert (await engine.patch("wf", merge_patch=msgspec.json.encode(rewritten))).version == 2
    # The root replaced by as many other members: a tombstone per old member and a row per new one.
    other = _members("b", MAX_MEMBERS, 2)
    assert (
        await engine.patch("wf", operations=[PatchOp("set", "", msgspec.json.encode(other))])
    ).version == 3
    assert _doc(engine, "wf") == other
    # Then the root replaced by a small document; small patches prune what the large ones left.
    await engine.patch("wf", operations=[PatchOp("set", "", b'{"x": 1}')])
    for i in range(3):
        await engine.patch("wf", merge_patch=msgspec.json.encode({"small": i}))
    assert _doc(engine, "wf") == {"x": 1, "small": 2}
    head = engine.head("wf")
    assert head is not None and head.oldest_version == head.latest_version == 7
    assert storage.count("state_members") == MAX_MEMBERS + 2  # the fork's rows, then x and small
    assert _doc(engine, "copy") == first
