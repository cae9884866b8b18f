"""A model-based randomized test of the state engine against a pure-Python model.

Each seed drives a few hundred random operations on documents (merge
patches, pointer operations, expected versions, reads at versions and
paths, checkpoints, retention, forks, deletes, concurrent patches, clean
restarts), memory notes (top-k within a byte budget against brute force)
and blobs (put, references, release, TTL sweep on a fake clock), and
checks every outcome, every error (class and field) and that a refused
call changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from are_core.state import (
    BLOB_TABLES,
    MEMORY_TABLES,
    STATE_TABLES,
    BlobNotFoundError,
    BlobStore,
    InvalidJsonError,
    InvalidPointerError,
    InvalidStateArgumentError,
    MemoryStore,
    NoteContent,
    NoteInput,
    PatchNotApplicableError,
    PatchOp,
    Retention,
    StateEngine,
    StateError,
    VersionMismatchError,
    VersionNotFoundError,
    WorkflowExistsError,
    WorkflowNotFoundError,
    escape_token,
    workflow_referrer,
)
from are_core.storage import GroupCommitter, Storage

TABLES = (*STATE_TABLES, *BLOB_TABLES, *MEMORY_TABLES)
SEEDS = [int(s) for s in os.environ.get("MODEL_SEEDS", "11,22,33,44").split(",")]
OPS = 300
S = 1_000_000_000
KEYS = ["a", "b", "c", "a/b", "~x", "", "0", "1", "-", "é"]

# The reference model: RFC 7386 merge and RFC 6901 pointer edits on plain Python values.


def merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def index_of(token: str, length: int) -> int | None:
    if not token.isascii() or not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        return None
    return int(token) if int(token) < length else None


def lookup(doc: Any, tokens: list[str]) -> tuple[bool, Any]:
    node = doc
    for token in tokens:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and index_of(token, len(node)) is not None:
            node = node[int(token)]
        else:
            return False, None
    return True, node


class NotApplicableError(Exception):
    """The model says a pointer operation cannot apply."""


def apply_ops(doc: dict[str, Any], ops: list[tuple[str, list[str], Any]]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    for op, tokens, value in ops:
        if not tokens:
            doc = json.loads(json.dumps(value))
            continue
        found, parent = lookup(doc, tokens[:-1])
        last = tokens[-1]
        if op == "set":
            fresh = json.loads(json.dumps(value))
            if not found:
                raise NotApplicableError
            if isinstance(parent, dict):
                parent[last] = fresh
            elif isinstance(parent, list) and last == "-":
                parent.append(fresh)
            elif isinstance(parent, list) and index_of(last, len(parent)) is not None:
                parent[int(last)] = fresh
            else:
                raise NotApplicableError
        elif found and isinstance(parent, dict):
            parent.pop(last, None)
        elif found and isinstance(parent, list) and index_of(last, len(parent)) is not None:
            del parent[int(last)]
    return doc


def pointer(tokens: list[str]) -> str:
    return "".join("/" + escape_token(t) for t in tokens)


def all_paths(doc: Any, prefix: list[str]) -> list[list[str]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += all_paths(v, [*prefix, k])
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += all_paths(v, [*prefix, str(i)])
    return out


def rand_value(rng: random.Random, depth: int = 0, nulls: bool = False) -> Any:
    kind = rng.randrange(8 if depth < 3 else 4)
    if kind == 0:
        return rng.randrange(-5, 1000)
    if kind == 1:
        return rng.choice(["x", "", "é/~", 'q"'])
    if kind == 2:
        return rng.choice([True, False, 1.5, None if nulls else 0])
    if kind == 3:
        return None if nulls and rng.random() < 0.5 else 2**70
    if kind in (4, 5):
        return {rng.choice(KEYS): rand_value(rng, depth + 1, nulls) for _ in range(rng.randrange(4))}
    return [rand_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def rand_tokens(rng: random.Random, doc: Any) -> list[str]:
    paths = all_paths(doc, [])
    tokens = list(rng.choice(paths))
    roll = rng.random()
    if roll < 0.3:
        tokens.append(rng.choice([*KEYS, "-", "00", "7"]))
    elif roll < 0.4 and tokens:
        tokens[-1] = rng.choice(KEYS)
    return tokens


# The model of one engine.


class Doc:
    def __init__(self, first: dict[str, Any], now: int) -> None:
        self.versions: dict[int, dict[str, Any]] = {1: first}
        self.created: dict[int, int] = {1: now}
        self.latest = 1
        self.oldest = 1


class Harness:
    def __init__(self, tmp: Path, rng: random.Random) -> None:
        self.tmp = tmp
        self.rng = rng
        self.clock = [1_000 * S]
        self.retention = Retention(keep_versions=rng.choice([1, 2, 4]), keep_seconds=rng.choice([0.0, 3.0]))
        self.docs: dict[str, Doc] = {}
        self.open()

    def now(self) -> int:
        return self.clock[0]

    def open(self) -> None:
        self.storage = Storage.open(self.tmp / "data", tables=TABLES)
        self.committer = GroupCommitter(self.storage)
        self.engine = StateEngine(self.storage, self.committer, retention=self.retention, clock_ns=self.now)

    async def close(self) -> None:
        await self.committer.aclose()
        self.storage.close()

    def applied(self, wid: str, doc: dict[str, Any]) -> int:
        """Record a new version in the model, then prune as the engine documents."""
        now = self.now()
        model = self.docs.get(wid)
        if model is None:
            self.docs[wid] = Doc(doc, now)
            return 1
        model.latest += 1
        model.versions[model.latest] = doc
        model.created[model.latest] = now
        floor = model.latest - self.retention.keep_versions + 1
        pruned = 0
        while model.oldest < min(floor, model.latest) and pruned < 16:
            if model.created[model.oldest] > now - int(self.retention.keep_seconds * S):
                break
            del model.versions[model.oldest]
            model.oldest += 1
            pruned += 1
        return model.latest

    def current(self, wid: str) -> dict[str, Any]:
        model = self.docs.get(wid)
        return {} if model is None else model.versions[model.latest]

    def rows(self, table: str, wid: str) -> int:
        return len(self.storage.scan(table, prefix=wid.encode() + b"\x00"))

    def check(self, wid: str) -> None:
        """The engine agrees with the model on every retained version, and retention bounds the rows."""
        model = self.docs.get(wid)
        if model is None:
            with pytest.raises(WorkflowNotFoundError) as caught:
                self.engine.get(wid)
            assert caught.value.field == "workflow_id"
            assert self.rows("state_members", wid) == self.rows("state_versions", wid) == 0
            return
        head = self.engine.head(wid)
        assert head is not None
        assert (head.latest_version, head.oldest_version) == (model.latest, model.oldest)
        latest = model.versions[model.latest]
        assert head.size_bytes == len(msgspec.json.encode(latest))
        assert head.member_count == len(latest)
        for version, doc in model.versions.items():
            assert json.loads(self.engine.get(wid, [], version).values[0][1]) == doc, version
        checkpoints, _ = self.engine.checkpoints(wid)
        assert [c.version for c in checkpoints] == sorted(model.versions, reverse=True)
        assert self.rows("state_versions", wid) == len(model.versions)
        # Storage stays bounded: below the oldest version a member keeps at most its one live row.
        prefix = wid.encode() + b"\x00"
        below: dict[bytes, int] = {}
        for key, _ in self.storage.scan("state_members", prefix=prefix):
            if int.from_bytes(key[-8:], "big") < model.oldest:
                mhash = key[len(prefix) : len(prefix) + 16]
                below[mhash] = below.get(mhash, 0) + 1
        assert all(n <= 1 for n in below.values()), below

    # Operations

    def random_patch(self, wid: str) -> tuple[dict[str, Any], Any]:  # noqa: PLR0912, PLR0915 (one generator, read top-down)
        """Engine kwargs and the expected outcome: a document, or (error class, field)."""
        rng = self.rng
        doc = self.current(wid)
        kwargs: dict[str, Any] = {}
        expected: Any
        if rng.random() < 0.5:
            patch = rand_value(rng, 1, nulls=True)
            if rng.random() < 0.85 or not isinstance(patch, dict):
                patch = {rng.choice(KEYS): patch for _ in range(rng.randrange(1, 3))}
            text = json.dumps(patch).encode()
            roll = rng.random()
            if roll < 0.05:
                text, expected = b"{nope", (InvalidJsonError, "merge_patch_json")
            elif roll < 0.1:
                text, expected = b"[1]", (InvalidJsonError, "merge_patch_json")
            else:
                expected = merge(doc, patch)
            kwargs["merge_patch"] = text
        else:
            ops = []
            model_ops = []
            error: Any = None
            scratch: Any = doc
            for i in range(rng.randrange(1, 4)):
                tokens = rand_tokens(rng, scratch)
                field = f"operations.operations[{i}]"
                if rng.random() < 0.7 or not tokens:
                    value = rand_value(rng) if tokens else {"r": rand_value(rng)}
                    path, value_json = pointer(tokens), json.dumps(value).encode()
                    roll = rng.random()
                    if roll < 0.03:
                        value_json = b"tru"
                        error = error or (InvalidJsonError, f"{field}.value_json")
                    elif roll < 0.06 and tokens:
                        path = "x" + path
                        error = error or (InvalidPointerError, f"{field}.path")
                    elif roll < 0.09:
                        path += "/~2"
                        error = error or (InvalidPointerError, f"{field}.path")
                    elif not tokens and rng.random() < 0.3:
                        value_json = b"[]"
                        error = error or (InvalidJsonError, f"{field}.value_json")
                    ops.append(PatchOp("set", path, value_json))
                    model_ops.append(("set", tokens, value))
                else:
                    ops.append(PatchOp("remove", pointer(tokens)))
                    model_ops.append(("remove", tokens, None))
                with contextlib.suppress(NotApplicableError):
                    scratch = apply_ops(scratch, model_ops[-1:])
            kwargs["operations"] = ops
            if error is not None:
                expected = error
            else:
                try:
                    expected = apply_ops(doc, model_ops)
                except NotApplicableError:
                    # The first op that cannot apply names the error.
                    for i in range(len(model_ops)):
                        try:
                            apply_ops(doc, model_ops[: i + 1])
                        except NotApplicableError:
                            expected = (PatchNotApplicableError, f"operations.operations[{i}].path")
                            break
        return kwargs, expected

    async def op_patch(self, wid: str) -> None:
        kwargs, expected = self.random_patch(wid)
        model = self.docs.get(wid)
        current = model.latest if model else 0
        roll = self.rng.random()
        if roll < 0.2:
            kwargs["expected_version"] = current
        elif roll < 0.3:
            kwargs["expected_version"] = current + self.rng.choice([-1, 1, 2])
            if not isinstance(expected, tuple) or expected[0] is PatchNotApplicableError:
                expected = (VersionMismatchError, "expected_version")
        await self.expect_patch(wid, kwargs, expected)

    async def expect_patch(self, wid: str, kwargs: dict[str, Any], expected: Any) -> None:
        before = self.storage.count("state_members"), self.storage.count("state_versions")
        self.clock[0] += self.rng.randrange(0, 3) * S
        if isinstance(expected, tuple):
            with pytest.raises(StateError) as caught:
                await self.engine.patch(wid, **kwargs)
            assert (type(caught.value), caught.value.field) == expected, (kwargs, caught.value)
            assert (self.storage.count("state_members"), self.storage.count("state_versions")) == before
            return
        result = await self.engine.patch(wid, **kwargs)
        assert result.version == self.applied(wid, expected), kwargs

    def op_read(self, wid: str) -> None:
        rng = self.rng
        model = self.docs.get(wid)
        if model is None:
            return
        low, high = model.oldest, model.latest
        version = rng.choice([None, rng.randrange(max(0, low - 2), high + 3)])
        doc = model.versions.get(high if version is None else version)
        paths: list[str] = []
        expected: list[tuple[str, Any] | str] = []
        bad = -1
        for i in range(rng.randrange(0, 5)):
            tokens = rand_tokens(rng, doc if doc is not None else {})
            path = pointer(tokens)
            if rng.random() < 0.05:
                path, bad = (path + "/~"), (bad if bad >= 0 else i)
            paths.append(path)
            found, value = lookup(doc, tokens)
            expected.append((path, value) if found else path)
        if bad >= 0:
            with pytest.raises(InvalidPointerError) as caught:
                self.engine.get(wid, paths, version)
            assert caught.value.field == f"paths[{bad}]"
            return
        if doc is None:
            with pytest.raises(VersionNotFoundError) as not_found:
                self.engine.get(wid, paths, version)
            assert not_found.value.field == "version"
            return
        result = self.engine.get(wid, paths, version)
        assert result.version == (high if version is None else version)
        if not paths:
            assert json.loads(result.values[0][1]) == doc
            return
        assert [(p, json.loads(v)) for p, v in result.values] == [e for e in expected if isinstance(e, tuple)]
        assert result.missing_paths == [e for e in expected if isinstance(e, str)]

    async def op_fork(self, wid: str, target: str) -> None:
        model = self.docs.get(wid)
        if model is None:
            with pytest.raises(WorkflowNotFoundError):
                await self.engine.fork(wid, 0, target)
            return
        version = self.rng.choice([0, self.rng.randrange(max(1, model.oldest - 1), model.latest + 2)])
        source = model.latest if version == 0 else version
        self.clock[0] += S
        if source not in model.versions:
            with pytest.raises(VersionNotFoundError):
                await self.engine.fork(wid, version, target)
        elif target in self.docs:
            with pytest.raises(WorkflowExistsError) as exists:
                await self.engine.fork(wid, version, target)
            assert exists.value.field == "new_workflow_id"
        else:
            assert await self.engine.fork(wid, version, target) == source
            self.applied(target, model.versions[source])

    async def op_concurrent(self, wid: str) -> None:
        """Patches racing on one workflow: each outcome is explained by the order of the versions."""
        model = self.docs.get(wid)
        start = model.latest if model else 0
        start_doc = self.current(wid)
        calls = []
        for i in range(self.rng.randrange(2, 6)):
            key = self.rng.choice(KEYS)
            patch = {key: {"n": i}} if self.rng.random() < 0.5 else {key: None, f"k{i}": i}
            expected_version = self.rng.choice([None, None, start, start + 1])
            calls.append((patch, expected_version))
        self.clock[0] += S
        results = await asyncio.gather(
            *(
                self.engine.patch(wid, merge_patch=json.dumps(p).encode(), expected_version=e)
                for p, e in calls
            ),
            return_exceptions=True,
        )
        done = sorted(
            (
                (r.version, p)
                for r, (p, _) in zip(results, calls, strict=True)
                if not isinstance(r, BaseException)
            ),
            key=lambda pair: pair[0],
        )
        assert [v for v, _ in done] == list(range(start + 1, start + 1 + len(done)))
        for r, (_, e) in zip(results, calls, strict=True):
            if isinstance(r, BaseException):
                assert isinstance(r, VersionMismatchError), r
                assert e is not None and r.current != e and start <= r.current <= start + len(done)
            elif e is not None:
                assert r.version == e + 1
        doc = start_doc
        for _, patch in done:
            doc = merge(doc, patch)
            self.applied(wid, doc)

    async def run(self, ops: int) -> None:
        rng = self.rng
        wids = ["w", "w.1", "w\u00e9", "x"]
        for _ in range(ops):
            wid = rng.choice(wids)
            roll = rng.random()
            if roll < 0.45:
                await self.op_patch(wid)
            elif roll < 0.7:
                self.op_read(wid)
            elif roll < 0.77:
                await self.op_fork(wid, rng.choice(wids))
            elif roll < 0.85:
                await self.op_concurrent(wid)
            elif roll < 0.88:
                await self.engine.delete(wid)
                self.docs.pop(wid, None)
            elif roll < 0.9:
                await self.close()
                self.open()
            elif roll < 0.93:
                self.clock[0] += rng.randrange(0, 10) * S
            else:
                with pytest.raises(InvalidStateArgumentError):
                    await self.engine.patch(wid, merge_patch=b"{}", operations=[PatchOp("set", "/a", b"1")])
                with pytest.raises(InvalidStateArgumentError) as caught:
                    await self.engine.patch(wid, operations=[PatchOp("remove", "")])
                assert caught.value.field == "operations.operations[0].path"
                with pytest.raises(InvalidStateArgumentError) as caught:
                    await self.engine.patch(wid, operations=[])
                assert caught.value.field == "operations.operations"
            self.check(wid)
        for wid in wids:
            self.check(wid)


@pytest.mark.parametrize("seed", SEEDS)
async def test_documents_follow_the_model(tmp_path: Path, seed: int) -> None:
    harness = Harness(tmp_path, random.Random(seed))
    try:
        await harness.run(OPS)
    finally:
        await harness.close()


async def test_retention_drops_rows_superseded_before_the_oldest_version(tmp_path: Path) -> None:
    """Members written alternately: retention keeps one live row each, not one per version."""
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    committer = GroupCommitter(storage)
    try:
        engine = StateEngine(storage, committer, retention=Retention(keep_versions=2, keep_seconds=0))
        for n in range(40):
            await engine.patch("wf", merge_patch=b'{"%s": %d}' % (b"ab"[n % 2 : n % 2 + 1], n))
        await engine.patch("wf", merge_patch=b'{"gone": 1}')
        await engine.patch("wf", merge_patch=b'{"gone": null}')
        for n in range(40, 44):
            await engine.patch("wf", merge_patch=b'{"a": %d}' % n)
        assert engine.get("wf", ["/a", "/b"]).values == [("/a", b"43"), ("/b", b"39")]
        assert engine.get("wf", ["/a", "/b"], 45).values == [("/a", b"42"), ("/b", b"39")]
        # "a" at 45 and 46, "b" once, and no tombstone of "gone" below the oldest version.
        assert storage.count("state_members") == 3
    finally:
        await committer.aclose()
        storage.close()


# Memory: top-k within a byte budget against brute force.


def brute_force(  # noqa: PLR0917 (mirrors hydrate's arguments)
    notes: dict[int, tuple[np.ndarray[Any, Any], dict[str, str], int]],
    query: np.ndarray[Any, Any],
    top_k: int,
    max_bytes: int,
    match: dict[str, str],
    floor: float | None,
) -> tuple[list[tuple[int, float]], int, bool]:
    q = query / np.linalg.norm(query)
    ranked = sorted(
        ((float(np.dot(v, q) / np.linalg.norm(v)), i) for i, (v, _, _) in notes.items()),
        key=lambda p: (-p[0], p[1]),
    )
    hits: list[tuple[int, float]] = []
    used, truncated = 0, False
    for similarity, i in ranked:
        if floor is not None and similarity < floor:
            break
        _, metadata, size = notes[i]
        if any(metadata.get(k) != v for k, v in match.items()):
            continue
        if used + size > max_bytes:
            truncated = True
            continue
        used += size
        hits.append((i, similarity))
        if len(hits) >= top_k:
            break
    return hits, used, truncated


@pytest.mark.parametrize("seed", SEEDS[:2])
async def test_memory_hydration_matches_brute_force(tmp_path: Path, seed: int) -> None:  # noqa: PLR0912, PLR0915 (one op table)
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    dim = 8
    model: dict[str, dict[int, tuple[np.ndarray[Any, Any], dict[str, str], int]]] = {"m": {}, "n": {}}

    def open_store() -> tuple[Storage, GroupCommitter, MemoryStore]:
        storage = Storage.open(tmp_path / "data", tables=TABLES)
        committer = GroupCommitter(storage)
        memory = MemoryStore(storage, committer, embedder=None, index_dir=tmp_path / "index", save_every=25)
        return storage, committer, memory

    storage, committer, memory = open_store()
    try:
        for _ in range(OPS):
            wid = rng.choice(["m", "n"])
            roll = rng.random()
            if roll < 0.35:
                batch = []
                for _ in range(rng.randrange(1, 6)):
                    text = "t" * rng.randrange(0, 40)
                    data = b"d" * rng.randrange(0, 60)
                    vector = nprng.standard_normal(dim).astype(np.float32)
                    metadata = {"k": rng.choice("xy")}
                    batch.append((text, data, vector, metadata))
                ids = await memory.add(
                    wid,
                    [
                        NoteInput(
                            text=t or "-",
                            vector=[float(x) for x in v],
                            metadata=m,
                            content=NoteContent(data=d) if d else None,
                        )
                        for t, d, v, m in batch
                    ],
                )
                start = max(model[wid], default=0) + 1
                assert ids == list(range(start, start + len(batch)))
                for i, (t, d, v, m) in zip(ids, batch, strict=True):
                    model[wid][i] = (v.astype(np.float64), m, len((t or "-").encode()) + len(d))
            elif roll < 0.4:
                # A bad note among good ones: refused, naming it, nothing stored.
                count = storage.count("memory_notes")
                with pytest.raises(StateError) as caught:
                    await memory.add(
                        wid,
                        [
                            NoteInput(text="ok", vector=[1.0] * dim),
                            NoteInput(text="x", vector=[float("nan")] * dim),
                        ],
                    )
                assert caught.value.field == "entries[1].vector.values"
                if model[wid]:
                    with pytest.raises(StateError) as caught:
                        await memory.add(wid, [NoteInput(text="x", vector=[1.0] * (dim + 1))])
                    assert caught.value.field == "entries[0].vector.values"
                assert storage.count("memory_notes") == count
            elif roll < 0.45:
                await committer.aclose()
                if rng.random() < 0.5:
                    memory.save_all()  # a clean stop; otherwise the saved index is stale ("crash")
                storage.close()
                storage, committer, memory = open_store()
                await memory.load_all()
            elif roll < 0.48:
                await memory.delete(wid)
                model[wid] = {}
            else:
                query = nprng.standard_normal(dim).astype(np.float32)
                top_k = rng.randrange(1, 12)
                max_bytes = rng.choice([40, 100, 300, 64 * 1024])
                match = rng.choice([{}, {}, {"k": "x"}])
                floor = rng.choice([None, None, 0.0, 0.5])
                hits, used, truncated = await memory.hydrate(
                    wid,
                    vector=[float(x) for x in query],
                    top_k=top_k,
                    max_bytes=max_bytes,
                    metadata_match=match,
                    min_similarity=floor,
                )
                want, want_used, want_truncated = brute_force(
                    model[wid], query.astype(np.float64), top_k, max_bytes, match, floor
                )
                got = [(h.note.note_id, h.similarity) for h in hits]
                if [i for i, _ in got] != [i for i, _ in want]:
                    # Only a near tie may order differently.
                    assert len(got) == len(want)
                    assert all(abs(a[1] - b[1]) < 1e-4 for a, b in zip(got, want, strict=True)), (got, want)
                else:
                    assert all(abs(a[1] - b[1]) < 1e-4 for a, b in zip(got, want, strict=True))
                    assert (used, truncated) == (want_used, want_truncated)
    finally:
        await committer.aclose()
        storage.close()


# Blobs: put, references, release and the TTL sweep on a fake clock.


@pytest.mark.parametrize("seed", SEEDS[:2])
async def test_blobs_follow_the_model(tmp_path: Path, seed: int) -> None:  # noqa: PLR0912, PLR0915 (one op table)
    rng = random.Random(seed)
    clock = [1_000 * S]
    ttl = 10 * S
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    committer = GroupCommitter(storage)
    blobs = BlobStore(storage, committer, clock=lambda: clock[0])
    # digest -> (data, owned, newest of create/upload time); referrer -> digests
    alive: dict[bytes, tuple[bytes, bool, int]] = {}
    refs: dict[bytes, set[bytes]] = {}
    referrers = [workflow_referrer("w1"), workflow_referrer("w2"), b"cache:e1"]

    def referenced(digest: bytes) -> bool:
        return any(digest in held for held in refs.values())

    try:
        for _ in range(OPS):
            roll = rng.random()
            if roll < 0.3:
                data = rng.choice([b"", b"a", b"b" * 100, b"c" * 5000, bytes([rng.randrange(4)]) * 3])
                wid = rng.choice(["", "w1", "w2"])
                info, deduplicated = await blobs.put(data, workflow_id=wid)
                digest = bytes.fromhex(info.sha256)
                assert deduplicated == (digest in alive)
                # Owned while every upload named a workflow (one without was promised the TTL).
                owned = (alive[digest][1] if digest in alive else True) and bool(wid)
                alive[digest] = (data, owned, clock[0])
                if wid:
                    refs.setdefault(workflow_referrer(wid), set()).add(digest)
            elif roll < 0.5 and alive:
                digest = rng.choice(sorted(alive))
                referrer = rng.choice(referrers)
                assert blobs.stat(digest) is not None
                batch = storage.batch()
                blobs.stage_reference(batch, referrer, digest)
                await committer.submit(batch)
                refs.setdefault(referrer, set()).add(digest)
            elif roll < 0.6:
                referrer = rng.choice(referrers)
                held = refs.pop(referrer, set())
                await blobs.release_referrer(referrer)
                for digest in held:
                    if digest in alive and alive[digest][1] and not referenced(digest):
                        del alive[digest]
            elif roll < 0.7:
                clock[0] += rng.randrange(0, 8) * S
                result = await blobs.sweep(ttl)
                doomed = [d for d, (_, _, t) in alive.items() if not referenced(d) and t <= clock[0] - ttl]
                assert result.deleted == len(doomed), (result, doomed)
                for digest in doomed:
                    del alive[digest]
            elif roll < 0.75:
                with pytest.raises(BlobNotFoundError) as caught:
                    blobs.read(bytes(32))
                assert caught.value.field == "sha256"
                with pytest.raises(StateError) as bad:
                    blobs.begin(content_type="", size_bytes=-1, sha256="", workflow_id="")
                assert bad.value.field == "header.size_bytes"
                with pytest.raises(StateError) as bad:
                    blobs.begin(content_type="", size_bytes=1, sha256="AB", workflow_id="")
                assert bad.value.field == "header.sha256"
            elif roll < 0.8:
                await committer.aclose()
                storage.close()
                storage = Storage.open(tmp_path / "data", tables=TABLES)
                committer = GroupCommitter(storage)
                blobs = BlobStore(storage, committer, clock=lambda: clock[0])
                assert await blobs.recover() == 0
            else:
                clock[0] += rng.randrange(0, 3) * S
            # Every blob the model holds reads back; nothing else is stored.
            assert {key for key, _ in storage.scan("blob_meta")} == set(alive)
            for digest, (data, _, _) in alive.items():
                _, chunks = blobs.read(digest)
                assert b"".join(piece for _, piece in chunks) == data
                assert blobs.referenced(digest) == referenced(digest)
            assert len(storage.scan("blob_chunks")) == sum(
                (len(d) + 1024 * 1024 - 1) // (1024 * 1024) for d, _, _ in alive.values()
            )
            assert storage.count("blob_uploads") == 0
    finally:
        await committer.aclose()
        storage.close()


async def test_a_root_set_drops_members_set_earlier_in_the_same_patch(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path / "data", tables=TABLES)
    committer = GroupCommitter(storage)
    try:
        engine = StateEngine(storage, committer)
        for wid in ("new", "old"):
            if wid == "old":
                await engine.patch(wid, merge_patch=b'{"a": 1}')
            await engine.patch(
                wid, operations=[PatchOp("set", "/added", b"1"), PatchOp("set", "", b'{"r": {}}')]
            )
            assert engine.get(wid).values == [("", b'{"r":{}}')]
            head = engine.head(wid)
            assert head is not None
            assert (head.member_count, head.size_bytes) == (1, len(b'{"r":{}}'))
    finally:
        await committer.aclose()
        storage.close()
