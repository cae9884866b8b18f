"""The state engine against a real LMDB: versions, layout, retention, fork, delete."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest

from are_core.state import (
    LimitExceededError,
    PatchNotApplicableError,
    PatchOp,
    Retention,
    StateEngine,
    VersionMismatchError,
    VersionNotFoundError,
    WorkflowExistsError,
    WorkflowNotFoundError,
)
from are_core.storage import Batch, GroupCommitter, Storage

Store = tuple[Storage, GroupCommitter]


def _doc(engine: StateEngine, wid: str, version: int | None = None) -> object:
    return json.loads(engine.get(wid, [], version).values[0][1])


async def test_a_patch_writes_only_the_members_it_changes(store: Store) -> None:
    storage, committer = store
    engine = StateEngine(storage, committer)
    big = {f"k{i}": "x" * 1000 for i in range(100)}
    await engine.patch("wf", merge_patch=msgspec.json.encode(big))
    rows_before = storage.count("state_members")
    assert rows_before == 100
    await engine.patch("wf", operations=[PatchOp("set", "/k7", b'"y"')])
    assert storage.count("state_members") == rows_before + 1
    assert engine.get("wf", ["/k7"]).values == [("/k7", b'"y"')]
    assert engine.get("wf", ["/k7"], 1).values == [("/k7", b'"' + b"x" * 1000 + b'"')]
    head = engine.head("wf")
    assert head is not None
    assert head.size_bytes == len(msgspec.json.encode({**big, "k7": "y"}))


async def test_root_set_replaces_the_document(store: Store) -> None:
    engine = StateEngine(*store)
    await engine.patch("wf", merge_patch=b'{"a": 1, "b": 2}')
    await engine.patch("wf", operations=[PatchOp("set", "", b'{"c": 3}')])
    assert _doc(engine, "wf") == {"c": 3}
    assert _doc(engine, "wf", 1) == {"a": 1, "b": 2}
    head = engine.head("wf")
    assert head is not None
    assert (head.member_count, head.size_bytes) == (1, len(b'{"c":3}'))


async def test_operations_apply_in_order_all_or_nothing(store: Store) -> None:
    engine = StateEngine(*store)
    await engine.patch("wf", merge_patch=b'{"list": []}')
    await engine.patch(
        "wf",
        operations=[
            PatchOp("set", "/list/-", b"1"),
            PatchOp("set", "/list/-", b"2"),
            PatchOp("set", "/list/0", b'{"x": 1}'),
            PatchOp("set", "/list/0/y", b"2"),
            PatchOp("remove", "/list/1"),
        ],
    )
    assert _doc(engine, "wf") == {"list": [{"x": 1, "y": 2}]}
    with pytest.raises(PatchNotApplicableError):
        await engine.patch("wf", operations=[PatchOp("set", "/new", b"1"), PatchOp("set", "/list/9", b"1")])
    assert engine.get("wf").version == 2
    assert _doc(engine, "wf") == {"list": [{"x": 1, "y": 2}]}


async def test_expected_version(store: Store) -> None:
    engine = StateEngine(*store)
    await engine.patch("wf", merge_patch=b"{}", expected_version=0)
    with pytest.raises(VersionMismatchError) as caught:
        await engine.patch("wf", merge_patch=b"{}", expected_version=0)
    assert (caught.value.expected, caught.value.current) == (0, 1)


async def test_retention_keeps_n_versions_and_reads_stay_exact(store: Store) -> None:
    storage, committer = store
    engine = StateEngine(storage, committer, retention=Retention(keep_versions=3, keep_seconds=0))
    await engine.patch("wf", merge_patch=b'{"stable": "s", "n": 0}')
    for n in range(1, 40):
        await engine.patch("wf", merge_patch=b'{"n": %d}' % n)
    checkpoints, head = engine.checkpoints("wf")
    assert [c.version for c in checkpoints] == [40, 39, 38]
    assert head.oldest_version == 38
    # The member written only at version 1 survives: it is still the value at 38.
    assert engine.get("wf", ["/stable", "/n"], 38).values == [("/stable", b'"s"'), ("/n", b"37")]
    with pytest.raises(VersionNotFoundError):
        engine.get("wf", ["/n"], 37)
    # Superseded rows are gone: "stable" once, "n" for the 3 kept versions.
    assert storage.count("state_members") == 4
    assert storage.count("state_versions") == 3


async def test_retention_by_age_keeps_young_versions(store: Store) -> None:
    clock = [1_000_000_000_000]

    def now() -> int:
        return clock[0]

    engine = StateEngine(*store, retention=Retention(keep_versions=2, keep_seconds=10.0), clock_ns=now)
    for n in range(5):
        await engine.patch("wf", merge_patch=b'{"n": %d}' % n)
    assert engine.checkpoints("wf")[1].oldest_version == 1  # all younger than 10 s
    clock[0] += 60 * 1_000_000_000
    await engine.patch("wf", merge_patch=b'{"n": 5}')
    assert engine.checkpoints("wf")[1].oldest_version == 5  # the newest 2 are kept


async def test_per_workflow_retention_overrides_the_default(store: Store) -> None:
    storage, committer = store
    engine = StateEngine(storage, committer, retention=Retention(keep_versions=1000, keep_seconds=0))
    await engine.patch("wf", merge_patch=b'{"n": 0}')
    batch = storage.batch()
    engine.stage_retention(batch, "wf", Retention(keep_versions=2, keep_seconds=0))
    await committer.submit(batch)
    for n in range(1, 6):
        await engine.patch("wf", merge_patch=b'{"n": %d}' % n)
    assert [c.version for c in engine.checkpoints("wf")[0]] == [6, 5]


async def test_stage_initial_and_extra_mutations_share_the_batch(store: Store) -> None:
    storage, committer = store
    engine = StateEngine(storage, committer)
    batch: Batch = storage.batch()
    engine.stage_initial(batch, "wf", b'{"goal": "x"}')
    await committer.submit(batch)
    assert _doc(engine, "wf") == {"goal": "x"}
    assert engine.checkpoints("wf")[0][0].writer == "submit"

    def extra(b: Batch) -> None:
        b.put("state_heads", b"marker", b"1")

    await engine.patch("wf", merge_patch=b'{"out": 1}', writer="task", extra=extra)
    assert storage.get("state_heads", b"marker") == b"1"


async def test_fork_and_delete(store: Store) -> None:
    storage, committer = store
    engine = StateEngine(storage, committer)
    await engine.patch("src", merge_patch=b'{"a": 1}')
    await engine.patch("src", merge_patch=b'{"b": 2}')
    assert await engine.fork("src", 1, "dst") == 1
    assert _doc(engine, "dst") == {"a": 1}
    with pytest.raises(WorkflowExistsError):
        await engine.fork("src", 0, "dst")
    assert await engine.delete("src") > 0
    with pytest.raises(WorkflowNotFoundError):
        engine.get("src")
    assert _doc(engine, "dst") == {"a": 1}
    assert await engine.delete("src") == 0
    assert storage.count("state_members") == 1


async def test_a_workflow_id_prefix_is_not_another_workflow(store: Store) -> None:
    engine = StateEngine(*store)
    await engine.patch("wf", merge_patch=b'{"a": 1}')
    await engine.patch("wf1", merge_patch=b'{"b": 2}')
    assert _doc(engine, "wf") == {"a": 1}
    await engine.delete("wf")
    assert _doc(engine, "wf1") == {"b": 2}


async def test_concurrent_patches_get_distinct_versions_and_share_commits(store: Store) -> None:
    storage, committer = store
    engine = StateEngine(storage, committer)
    results = await asyncio.gather(
        *(engine.patch(f"wf{i % 3}", merge_patch=b'{"i%d": %d}' % (i, i)) for i in range(30))
    )
    for w in range(3):
        versions = sorted(r.version for i, r in enumerate(results) if i % 3 == w)
        assert versions == list(range(1, 11))
        assert engine.get(f"wf{w}").values[0][1].count(b'"i') == 10
    assert committer.stats().max_group_batches > 1  # different workflows share one transaction


async def test_a_read_of_many_paths_is_bounded_while_it_reads(store: Store) -> None:
    # GetState built every value asked before the answer's size was checked: the whole document
    # 100 times over (a 16 MiB document: 1.6 GiB held, then refused). A path asked again now
    # shares its value, and the read stops once the values pass max_bytes.
    storage, committer = store
    engine = StateEngine(storage, committer)
    await engine.patch("wf", merge_patch=msgspec.json.encode({"a": "x" * 100_000, "b": "y" * 100_000}))
    result = engine.get("wf", [""] * 100)
    assert len(result.values) == 100
    assert len({id(value) for _, value in result.values}) == 1  # one copy of the document
    again = engine.get("wf", ["/a", "/a", "/b"])
    assert again.values[0][1] is again.values[1][1]
    with pytest.raises(LimitExceededError) as refused:
        engine.get("wf", [""] * 100, max_bytes=1_000_000)
    assert refused.value.field == "paths"
    assert len(engine.get("wf", ["/a", "/b"], max_bytes=1_000_000).values) == 2
