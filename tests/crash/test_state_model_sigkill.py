"""A real sidecar against the state engine's model: random calls, some concurrent, SIGKILLs, restarts.

Each seed drives about 150 steps over gRPC on a few workflows (submitted
with a count-only state retention, so the model knows exactly which
versions are kept): merge patches and pointer operations with and without
expected versions (the unit model's generator and reference logic,
``tests/unit/state/test_model_random.py``), patches racing on one
workflow, reads at versions including the edges of the retained range,
forks, cancels and deletes (and submits again of deleted ids), memory
notes (some with blob content) and queries checked against brute force,
blob uploads (owned or not), downloads and references. Now and then a
batch of calls is started together and the sidecar is SIGKILLed while
they are in flight (or stopped cleanly). Then:

* before the restart, the data folder is opened directly: every workflow
  no in-flight call touched agrees with the model row for row (the unit
  model's ``check``: retained versions, documents, bounded member rows),
  and no chunk belongs to no blob;
* after the restart, an in-flight patch is either wholly applied or wholly
  absent (the versions between the last acknowledged one and the head are
  explained by a subset of the in-flight patches, applied in some order),
  as is an in-flight memory add, upload or fork, and an in-flight delete is
  finished by a repeated DeleteWorkflow (documented); then every workflow's
  head, checkpoints and every retained version's document match the model,
  a workflow's memory holds exactly the acknowledged notes and answers
  queries as brute force does, and every blob the model must keep reads
  back byte for byte; a later patch gets the next version (none reused);
* after a clean stop (and at the end), the folder's bookkeeping is checked
  whole: references exactly those of the model, no unfinished upload, no
  chunk or note or member row left over.

``STATE_MODEL_SEEDS`` (comma-separated) and ``STATE_MODEL_STEPS`` run more
offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from google.protobuf import duration_pb2

from are_core.state import (
    BLOB_TABLES,
    MEMORY_TABLES,
    STATE_TABLES,
    InvalidJsonError,
    InvalidPointerError,
    PatchNotApplicableError,
    PatchOp,
    Retention,
    StateEngine,
    VersionMismatchError,
)
from are_core.state._blobs import BlobMeta
from are_core.storage import GroupCommitter, Storage
from are_sdk import Client, RpcError
from are_sdk._proto.are.v1 import (
    common_pb2,
    scheduler_service_pb2,
    state_pb2,
    state_service_pb2,
    task_pb2,
    workflow_pb2,
)
from are_sdk.testing import SidecarProcess
from tests.unit.state.test_model_random import (
    KEYS,
    Harness,
    NotApplicableError,
    apply_ops,
    brute_force,
    lookup,
    merge,
    pointer,
    rand_tokens,
    rand_value,
)

SEEDS = [int(s) for s in os.environ.get("STATE_MODEL_SEEDS", "1,2,3").split(",")]
STEPS = int(os.environ.get("STATE_MODEL_STEPS", "150"))
# (durability, versions kept, unreferenced blob TTL in seconds), by seed modulo 3.
SETTINGS = [("sync", 2, 3600.0), ("relaxed", 3, 3600.0), ("sync", 4, 1.0)]
DIM = 6
MAX_NOTES = 80  # a memory stays enumerable by one hydrate (top_k at most 100)
BASE_IDS = ["w0", "w1", "w.2", "w:3"]
REASONS = {
    InvalidJsonError: "INVALID_JSON",
    InvalidPointerError: "INVALID_JSON_POINTER",
    PatchNotApplicableError: "PATCH_NOT_APPLICABLE",
    VersionMismatchError: "STATE_VERSION_MISMATCH",
}
DATA_TABLES = (*STATE_TABLES, *BLOB_TABLES, *MEMORY_TABLES)
CALL_TIMEOUT_S = 30.0
MIB = 1024 * 1024
_meta_dec = msgspec.msgpack.Decoder(BlobMeta)

Patch = tuple[str, Any]
"""("merge", dict) or ("ops", [(op, tokens, value)]) as the unit model applies them, or ("raw", kwargs)."""


class Docs(Harness):
    """The unit model's documents, patch generator and row checks, without an engine of its own."""

    def __init__(self, rng: random.Random, keep_versions: int) -> None:
        self.rng = rng
        self.clock = [0]  # count-only retention: a version is never too young to drop
        self.retention = Retention(keep_versions=keep_versions, keep_seconds=0.0)
        self.docs = {}

    async def close(self) -> None:
        await self.committer.aclose()
        self.storage.close()

    def attach(self, data: Path) -> None:
        """Open the data folder of a stopped sidecar, for ``check``."""
        self.storage = Storage.open(data, tables=DATA_TABLES)
        self.committer = GroupCommitter(self.storage)
        self.engine = StateEngine(self.storage, self.committer, retention=self.retention)


def _apply(doc: dict[str, Any], patch: Patch) -> dict[str, Any]:
    """The model's document after a patch that is known to be valid (NotApplicableError otherwise)."""
    kind, body = patch
    if kind == "merge":
        out = merge(doc, body)
        assert isinstance(out, dict)
        return out
    return apply_ops(doc, body)


def _patch_proto(patch: Patch) -> state_pb2.StatePatch:
    kind, body = patch
    if kind == "merge":
        return state_pb2.StatePatch(merge_patch_json=json.dumps(body).encode())
    if kind == "raw":
        if body.get("merge_patch") is not None:
            return state_pb2.StatePatch(merge_patch_json=body["merge_patch"])
        ops: list[PatchOp] = body["operations"]
        return state_pb2.StatePatch(
            operations=state_pb2.PatchOperationList(
                operations=[
                    state_pb2.PatchOperation(
                        op=state_pb2.PATCH_OPERATION_TYPE_SET
                        if op.op == "set"
                        else state_pb2.PATCH_OPERATION_TYPE_REMOVE,
                        path=op.path,
                        value_json=op.value_json,
                    )
                    for op in ops
                ]
            )
        )
    return state_pb2.StatePatch(
        operations=state_pb2.PatchOperationList(
            operations=[
                state_pb2.PatchOperation(
                    op=state_pb2.PATCH_OPERATION_TYPE_SET
                    if op == "set"
                    else state_pb2.PATCH_OPERATION_TYPE_REMOVE,
                    path=pointer(tokens),
                    value_json=json.dumps(value).encode() if op == "set" else b"",
                )
                for op, tokens, value in body
            ]
        )
    )


@dataclass
class Attempt:
    """One PatchState call and what came of it."""

    wid: str
    patch: Patch
    expected_version: int | None
    version: int | None = None
    """Acknowledged version; None: refused (``error``) or unknown (neither)."""
    error: RpcError | None = None
    start: int = 0
    end: int = 0


@dataclass
class NoteModel:
    vector: np.ndarray[Any, Any]
    metadata: dict[str, str]
    size: int
    text: str
    blob: str
    start: int
    end: int


@dataclass
class Pending:
    """What an in-flight batch holds besides its patches (resolved after the restart)."""

    adds: list[tuple[str, list[NoteModel], Any]] = field(default_factory=list)
    puts: list[tuple[bytes, str, Any]] = field(default_factory=list)
    forks: list[tuple[str, int, str, Any]] = field(default_factory=list)
    deletes: list[tuple[str, Any]] = field(default_factory=list)


def _reason(error: BaseException) -> str:
    return error.reason if isinstance(error, RpcError) else ""


def _field(error: RpcError) -> str:
    return error.metadata.get("field", "")


class Run:
    """One seed against one data folder: the sidecar (restarted as it goes), the model, the calls."""

    def __init__(self, data: Path, seed: int) -> None:
        self.data = data
        self.seed = seed
        self.rng = random.Random(seed)
        self.nprng = np.random.default_rng(seed)
        durability, keep, ttl = SETTINGS[seed % 3]
        self.keep = keep
        self.ttl_long = ttl > 60
        self.args = [
            "--durability",
            durability,
            "--blob-unreferenced-ttl-s",
            str(ttl),
            "--state-keep-versions",
            str(keep),
        ]
        self.model = Docs(self.rng, keep)
        self.status: dict[str, str] = {}  # wid -> "open" | "closed"
        self.version_ticks: dict[str, dict[int, tuple[int, int]]] = {}
        self.notes: dict[str, dict[int, NoteModel]] = {}
        self.blobs: dict[str, bytes] = {}  # digest hex -> bytes
        self.owned: dict[str, bool] = {}
        self.refs: dict[str, set[str]] = {}  # wid -> digests its notes or uploads reference
        self.gone: set[str] = set()  # owned blobs released by their last workflow: must be absent
        self.forks = 0
        self.ever: set[str] = set(BASE_IDS)
        self.texts = 0
        self.tick = 0
        self.process: SidecarProcess | None = None
        self.client: Client | None = None
        self.log: list[str] = []
        self.kills = 0
        self.unknown_patches = 0

    # Process

    async def start(self) -> None:
        self.process = SidecarProcess.start(data_dir=self.data, args=self.args)
        self.client = await Client.connect(self.process.target)

    async def close(self, *, kill: bool) -> None:
        assert self.process is not None and self.client is not None
        if kill:
            self.process.kill()
        await self.client.close()
        if not kill:
            assert self.process.stop() == 0
        self.process.cleanup()
        self.process = self.client = None

    @property
    def c(self) -> Client:
        assert self.client is not None
        return self.client

    def next_tick(self) -> int:
        self.tick += 1
        return self.tick

    # Helpers over gRPC

    async def submit(self, wid: str) -> None:
        doc = {self.rng.choice(KEYS): rand_value(self.rng) for _ in range(self.rng.randrange(3))}
        spec = workflow_pb2.WorkflowSpec(
            workflow_id=wid,
            tasks=[task_pb2.TaskSpec(task_id="hold", capability="nobody")],
            initial_state=common_pb2.Payload(data=json.dumps(doc).encode()),
            state_retention=workflow_pb2.StateRetention(
                keep_versions=self.keep, keep_duration=duration_pb2.Duration(seconds=0)
            ),
        )
        start = self.next_tick()
        await self.c.raw.scheduler.SubmitWorkflow(scheduler_service_pb2.SubmitWorkflowRequest(spec=spec))
        self.model.applied(wid, doc)
        self.version_ticks[wid] = {1: (start, self.next_tick())}
        self.status[wid] = "open"
        self.notes[wid] = {}

    async def workflow_exists(self, wid: str) -> bool:
        try:
            await self.c.raw.scheduler.GetWorkflow(scheduler_service_pb2.GetWorkflowRequest(workflow_id=wid))
        except RpcError as error:
            refused = error
        else:
            return True
        assert refused.reason == "WORKFLOW_NOT_FOUND", refused
        return False

    async def cancel(self, wid: str) -> None:
        response = await self.c.raw.scheduler.CancelWorkflow(
            scheduler_service_pb2.CancelWorkflowRequest(workflow_id=wid)
        )
        for _ in range(2000):  # bounded (20 s): a workflow with one queued task closes at once
            if response.workflow.state == workflow_pb2.WORKFLOW_STATE_CANCELLED:
                break
            await asyncio.sleep(0.01)
            response = await self.c.raw.scheduler.GetWorkflow(
                scheduler_service_pb2.GetWorkflowRequest(workflow_id=wid)
            )
        assert response.workflow.state == workflow_pb2.WORKFLOW_STATE_CANCELLED
        self.status[wid] = "closed"

    async def delete_call(self, wid: str) -> None:
        await self.c.raw.scheduler.DeleteWorkflow(
            scheduler_service_pb2.DeleteWorkflowRequest(workflow_id=wid)
        )

    def deleted(self, wid: str) -> None:
        """The model after an acknowledged DeleteWorkflow: state, memory and references go."""
        self.model.docs.pop(wid, None)
        self.status.pop(wid, None)
        self.notes.pop(wid, None)
        self.version_ticks.pop(wid, None)
        for digest in self.refs.pop(wid, set()):
            if self.owned.get(digest) and not self.referenced(digest):
                self.blobs.pop(digest, None)
                self.owned.pop(digest, None)
                self.gone.add(digest)

    def referenced(self, digest: str) -> bool:
        return any(digest in held for held in self.refs.values())

    def must_exist(self, digest: str) -> bool:
        return self.ttl_long or self.referenced(digest)

    async def patch_call(self, attempt: Attempt) -> None:
        request = state_service_pb2.PatchStateRequest(
            workflow_id=attempt.wid, patch=_patch_proto(attempt.patch)
        )
        if attempt.expected_version is not None:
            request.expected_version = attempt.expected_version
        attempt.start = self.next_tick()
        try:
            response = await self.c.raw.state.PatchState(request)
        except RpcError as error:
            if error.reason:  # the sidecar answered: refused, nothing applied
                attempt.error = error
            return
        finally:
            attempt.end = self.next_tick()
        attempt.version = int(response.version)

    async def get_doc(self, wid: str, version: int | None = None) -> tuple[int, dict[str, Any]]:
        request = state_service_pb2.GetStateRequest(workflow_id=wid)
        if version is not None:
            request.version = version
        response = await self.c.raw.state.GetState(request)
        [value] = response.values
        assert value.path == ""
        return int(response.version), json.loads(value.value_json)

    async def checkpoints(self, wid: str) -> tuple[list[int], int, int]:
        versions: list[int] = []
        token = ""
        for _ in range(100):  # bounded pages
            response = await self.c.raw.state.ListCheckpoints(
                state_service_pb2.ListCheckpointsRequest(workflow_id=wid, page_size=2, page_token=token)
            )
            versions += [c.version for c in response.checkpoints]
            token = response.next_page_token
            if not token:
                break
        return versions, response.oldest_version, response.latest_version

    async def memory_ids(self, wid: str) -> dict[str, int]:
        """Every note of the workflow's memory, text -> id (one hydrate: at most 100 notes)."""
        query = state_service_pb2.HydrateMemoryRequest(workflow_id=wid, top_k=100, max_bytes=4 * 1024 * 1024)
        query.vector.values.extend([1.0] * DIM)
        response = await self.c.raw.state.HydrateMemory(query)
        return {hit.entry.text: int(hit.entry.memory_id.removeprefix("mem_")) for hit in response.hits}

    # Steps

    def pick(self, *statuses: str) -> str | None:
        wids = sorted(w for w, s in self.status.items() if s in statuses)
        return self.rng.choice(wids) if wids else None

    def random_patch(self, wid: str) -> tuple[Patch, int | None, Any]:
        """A patch from the unit model's generator, an expected version, and the outcome."""
        kwargs, expected = self.model.random_patch(wid)
        current = self.model.docs[wid].latest
        expected_version: int | None = None
        roll = self.rng.random()
        if roll < 0.25:
            expected_version = current
        elif roll < 0.35:
            expected_version = current + self.rng.choice([-1, 1, 2])
            if not isinstance(expected, tuple) or expected[0] is PatchNotApplicableError:
                expected = (VersionMismatchError, "expected_version")
        return ("raw", kwargs), expected_version, expected

    def simple_patch(self, i: int) -> Patch:
        """A patch that applies to any document (for races): a merge, or top-level sets and removes."""
        key = self.rng.choice(KEYS)
        if self.rng.random() < 0.5:
            return ("merge", {key: {"n": i}} if self.rng.random() < 0.5 else {key: None, f"k{i}": i})
        ops = [
            ("set", [self.rng.choice(KEYS)], rand_value(self.rng)) for _ in range(self.rng.randrange(1, 3))
        ]
        if self.rng.random() < 0.4:
            ops.append(("remove", [key], None))
        return ("ops", ops)

    async def step_patch(self) -> None:
        wid = self.rng.choice([*BASE_IDS, *self.status])
        status = self.status.get(wid)
        if status is None:
            attempt = Attempt(wid, ("merge", {"a": 1}), None)
            await self.patch_call(attempt)
            assert attempt.error is not None and attempt.error.reason == "WORKFLOW_NOT_FOUND"
            return
        patch, expected_version, expected = self.random_patch(wid)
        attempt = Attempt(wid, patch, expected_version)
        self.log.append(f"  patch {wid} {patch} expected_version={expected_version}")
        await self.patch_call(attempt)
        if status == "closed":
            assert attempt.error is not None and attempt.error.reason == "WORKFLOW_CLOSED", attempt
            return
        if isinstance(expected, tuple):
            kind, where = expected
            assert attempt.error is not None, (attempt, expected)
            assert attempt.error.reason == REASONS[kind], (attempt.error, expected)
            assert _field(attempt.error) == ("patch." + where if where != "expected_version" else where)
            return
        assert attempt.error is None and attempt.version is not None, attempt
        assert attempt.version == self.model.docs[wid].latest + 1
        self.applied(wid, expected, attempt.start, attempt.end)

    def applied(self, wid: str, doc: dict[str, Any], start: int, end: int) -> None:
        version = self.model.applied(wid, doc)
        self.version_ticks.setdefault(wid, {})[version] = (start, end)
        for old in [v for v in self.version_ticks[wid] if v not in self.model.docs[wid].versions]:
            del self.version_ticks[wid][old]

    async def step_race(self) -> None:
        """Patches racing on one workflow: every outcome is explained by the order of the versions."""
        wid = self.pick("open")
        if wid is None:
            return
        base = self.model.docs[wid].latest
        attempts = [
            Attempt(wid, self.simple_patch(i), self.rng.choice([None, None, base, base + 1]))
            for i in range(self.rng.randrange(2, 6))
        ]
        self.log.append(f"  race {wid} from {base}: {[(a.patch, a.expected_version) for a in attempts]}")
        await asyncio.gather(*(self.patch_call(a) for a in attempts))
        for a in attempts:
            assert a.version is not None or a.error is not None, a  # the sidecar answered every call
        acked = sum(a.version is not None for a in attempts)
        head, server = await self.server_docs(wid)
        assert head == base + acked, (head, base, acked)
        await self.resolve(wid, attempts, head, server)

    async def server_docs(self, wid: str) -> tuple[int, dict[int, dict[str, Any]]]:
        """The sidecar's head version and its documents at the retained versions past the model's."""
        _, oldest, head = await self.checkpoints(wid)
        server = {}
        for version in range(max(oldest, self.model.docs[wid].latest + 1), head + 1):
            server[version] = (await self.get_doc(wid, version))[1]
        return head, server

    async def resolve(
        self, wid: str, attempts: list[Attempt], head: int, server: dict[int, dict[str, Any]]
    ) -> None:
        """Explain versions base+1..head by the acknowledged patches and a subset of the unknown ones.

        ``server`` holds the documents the sidecar returned for retained
        versions in that range (a kill) or nothing (all answered). The
        model takes the first explanation (any other gives the same
        retained documents).
        """
        model = self.model.docs[wid]
        base = model.latest
        slots = list(range(base + 1, head + 1))
        acked = {a.version: a for a in attempts if a.version is not None}
        assert len(acked) == sum(a.version is not None for a in attempts), "a version acknowledged twice"
        assert set(acked) <= set(slots), (sorted(acked), base, head)
        unknown = [a for a in attempts if a.version is None and a.error is None]
        free = len(slots) - len(acked)
        assert 0 <= free <= len(unknown), (base, head, sorted(acked), len(unknown))
        chosen: list[tuple[Attempt, dict[str, Any]]] | None = None
        for order in itertools.permutations(unknown, free):
            fill = iter(order)
            doc = model.versions[base]
            path: list[tuple[Attempt, dict[str, Any]]] = []
            for version in slots:
                attempt = acked.get(version) or next(fill)
                if attempt.expected_version is not None and attempt.expected_version != version - 1:
                    break
                try:
                    doc = _apply(doc, attempt.patch)
                except NotApplicableError:
                    break
                if version in server and server[version] != doc:
                    break
                path.append((attempt, doc))
            else:
                chosen = path
                break
        assert chosen is not None, f"{wid}: no order of the patches explains versions {slots}"
        for attempt, doc in chosen:
            self.applied(wid, doc, attempt.start, attempt.end)
        applied = {id(a) for a, _ in chosen}
        self.unknown_patches += sum(id(a) in applied for a in unknown)
        for a in attempts:
            if a.error is None:
                continue
            # Refused: by its expected version (the one at its turn differs), or its pointers.
            if a.error.reason == "STATE_VERSION_MISMATCH":
                current = int(a.error.metadata["current_version"])
                assert a.expected_version is not None and current != a.expected_version, a
                assert base <= current <= head, (a, base, head)
            else:
                assert a.error.reason in {"PATCH_NOT_APPLICABLE", "WORKFLOW_CLOSED"}, a.error

    async def step_read(self) -> None:
        wid = self.rng.choice([*BASE_IDS, *self.status])
        model = self.model.docs.get(wid)
        request = state_service_pb2.GetStateRequest(workflow_id=wid)
        if model is None:
            with pytest.raises(RpcError) as caught:
                await self.c.raw.state.GetState(request)
            assert caught.value.reason == "WORKFLOW_NOT_FOUND"
            return
        low, high = model.oldest, model.latest
        version = self.rng.choice(
            [None, low - 1, low, low + 1, high, high + 1, self.rng.randrange(1, high + 1)]
        )
        if version is not None:
            request.version = version
        doc = model.versions.get(high if version is None else version)
        expected: list[tuple[str, Any] | str] = []
        for _ in range(self.rng.randrange(0, 4)):
            tokens = rand_tokens(self.rng, doc if doc is not None else {})
            path = pointer(tokens)
            request.paths.append(path)
            found, value = lookup(doc, tokens)
            expected.append((path, value) if found else path)
        self.log.append(f"  read {wid} at {version} {list(request.paths)} ({low}..{high})")
        if version is not None and version < 1:
            with pytest.raises(RpcError) as caught:
                await self.c.raw.state.GetState(request)
            assert (caught.value.reason, _field(caught.value)) == ("INVALID_ARGUMENT", "version")
            return
        if doc is None:
            with pytest.raises(RpcError) as caught:
                await self.c.raw.state.GetState(request)
            assert caught.value.reason == "STATE_VERSION_NOT_FOUND"
            assert (caught.value.metadata["oldest_version"], caught.value.metadata["latest_version"]) == (
                str(low),
                str(high),
            )
            return
        response = await self.c.raw.state.GetState(request)
        assert response.version == (high if version is None else version)
        values = [(v.path, json.loads(v.value_json)) for v in response.values]
        if not request.paths:
            assert values == [("", doc)]
            return
        assert values == [e for e in expected if isinstance(e, tuple)]
        assert list(response.missing_paths) == [e for e in expected if isinstance(e, str)]

    def fork_expectation(self, source: str, version: int, target: str) -> tuple[str, int]:
        """The reason a fork is refused for ("": it succeeds) and the source version it uses."""
        model = self.model.docs.get(source)
        if model is None:
            return "WORKFLOW_NOT_FOUND", 0
        if target in self.status:
            return "WORKFLOW_ALREADY_EXISTS", 0
        used = version or model.latest
        if used not in model.versions:
            return "STATE_VERSION_NOT_FOUND", 0
        return "", used

    async def fork_call(self, source: str, version: int, target: str) -> int:
        response = await self.c.raw.state.ForkWorkflow(
            state_service_pb2.ForkWorkflowRequest(workflow_id=source, version=version, new_workflow_id=target)
        )
        assert response.workflow_id == target
        return int(response.source_version)

    async def forked(self, source: str, used: int, target: str, start: int, end: int) -> None:
        """The model after a fork: the document at ``used``, the notes up to it (checked on the sidecar)."""
        self.model.applied(target, self.model.docs[source].versions[used])
        self.version_ticks[target] = {1: (start, end)}
        self.status[target] = "open"
        v_start, v_end = self.version_ticks[source][used]
        notes = self.notes[source]
        surely = {i for i, n in notes.items() if n.end < v_start}
        maybe = {i for i, n in notes.items() if n.end >= v_start and n.start <= v_end}
        found = await self.memory_ids(target) if notes else {}
        by_text = {n.text: i for i, n in notes.items()}
        got = {by_text.get(text, -1) for text in found}
        assert surely <= got <= surely | maybe, (
            source,
            used,
            target,
            sorted(got),
            sorted(surely),
            sorted(maybe),
        )
        assert all(found[notes[i].text] == i for i in got)
        self.notes[target] = {i: notes[i] for i in got}
        # The fork references every blob its source does (its notes' among them).
        held = {notes[i].blob for i in got if notes[i].blob} | self.refs.get(source, set())
        if held:
            self.refs[target] = held

    async def step_fork(self) -> None:
        source = self.rng.choice([*BASE_IDS, *self.status])
        model = self.model.docs.get(source)
        if self.rng.random() < 0.8 or not self.status:
            target = f"f{self.forks}"
            self.forks += 1
            self.ever.add(target)
        else:
            target = self.rng.choice(sorted(self.status))
        version = 0
        if model is not None and self.rng.random() < 0.7:
            version = self.rng.choice([model.oldest - 1, model.oldest, model.latest, model.latest + 1])
            version = max(version, 1)
        reason, used = self.fork_expectation(source, version, target)
        self.log.append(f"  fork {source}@{version} -> {target}: {reason or used}")
        start = self.next_tick()
        if reason:
            with pytest.raises(RpcError) as caught:
                await self.fork_call(source, version, target)
            assert caught.value.reason == reason, caught.value
            return
        assert await self.fork_call(source, version, target) == used
        await self.forked(source, used, target, start, self.next_tick())

    async def step_lifecycle(self) -> None:
        roll = self.rng.random()
        absent = [w for w in BASE_IDS if w not in self.status]
        if absent and roll < 0.4:
            wid = self.rng.choice(absent)
            self.log.append(f"  submit {wid}")
            await self.submit(wid)
            return
        picked = self.pick("open", "closed")
        if picked is None:
            return
        wid = picked
        if self.status[wid] == "open" and roll < 0.7:
            self.log.append(f"  cancel {wid}")
            await self.cancel(wid)
            return
        self.log.append(f"  delete {wid}")
        if self.status[wid] == "open":
            await self.cancel(wid)
        await self.delete_call(wid)
        self.deleted(wid)

    def new_notes(self, wid: str) -> list[tuple[state_service_pb2.MemoryEntry, NoteModel]]:
        out = []
        for _ in range(self.rng.randrange(1, 4)):
            self.texts += 1
            text = f"n{self.texts}"
            vector = self.nprng.standard_normal(DIM)
            metadata = {"k": self.rng.choice("xy")}
            entry = state_service_pb2.MemoryEntry(text=text, metadata=metadata)
            entry.vector.values.extend(float(np.float32(x)) for x in vector)
            blob = ""
            size = len(text)
            roll = self.rng.random()
            if roll < 0.25 and self.blobs:
                blob = self.rng.choice(sorted(self.blobs))
                entry.content.blob.sha256 = blob
            elif roll < 0.5:
                data = b"d" * self.rng.randrange(0, 50)
                entry.content.data = data
                size += len(data)
            vec = np.asarray(entry.vector.values, dtype=np.float64)
            out.append((entry, NoteModel(vec, metadata, size, text, blob, 0, 0)))
        return out

    async def add_call(
        self, wid: str, notes: list[tuple[state_service_pb2.MemoryEntry, NoteModel]]
    ) -> list[int]:
        response = await self.c.raw.state.AddMemory(
            state_service_pb2.AddMemoryRequest(workflow_id=wid, entries=[e for e, _ in notes])
        )
        return [int(m.removeprefix("mem_")) for m in response.memory_ids]

    def noted(self, wid: str, ids: list[int], notes: list[NoteModel], start: int, end: int) -> None:
        for note_id, note in zip(ids, notes, strict=True):
            note.start, note.end = start, end
            self.notes[wid][note_id] = note
            if note.blob:
                self.refs.setdefault(wid, set()).add(note.blob)

    async def step_memory_add(self) -> None:
        wid = self.rng.choice([*BASE_IDS, *self.status])
        notes = self.new_notes(wid)
        self.log.append(f"  add {wid} {[n.text for _, n in notes]}")
        start = self.next_tick()
        if wid not in self.status:
            with pytest.raises(RpcError) as caught:
                await self.add_call(wid, notes)
            assert caught.value.reason == "WORKFLOW_NOT_FOUND"
            return
        if len(self.notes[wid]) + len(notes) > MAX_NOTES:
            return
        try:
            ids = await self.add_call(wid, notes)
        except RpcError as error:
            refused = error
        else:
            first = max(self.notes[wid], default=0) + 1
            assert ids == list(range(first, first + len(notes))), (ids, first)
            self.noted(wid, ids, [n for _, n in notes], start, self.next_tick())
            return
        # Only an unreferenced blob past its TTL may have been swept.
        assert refused.reason == "BLOB_NOT_FOUND", refused
        for _, n in notes:
            if n.blob:
                await self.check_blob(n.blob)  # one of them is gone: it may be
        assert any(n.blob not in self.blobs for _, n in notes if n.blob), refused

    async def step_memory_query(self) -> None:
        wid = self.rng.choice([*BASE_IDS, *self.status])
        await self.query(wid)

    async def query(self, wid: str) -> None:
        query = self.nprng.standard_normal(DIM).astype(np.float32)
        top_k = self.rng.randrange(1, 12)
        max_bytes = self.rng.choice([10, 40, 100, 64 * 1024])
        match = self.rng.choice([{}, {}, {"k": "x"}])
        floor = self.rng.choice([None, None, 0.0, 0.5])
        request = state_service_pb2.HydrateMemoryRequest(
            workflow_id=wid, top_k=top_k, max_bytes=max_bytes, metadata_match=match
        )
        request.vector.values.extend(float(x) for x in query)
        if floor is not None:
            request.min_similarity = floor
        if wid not in self.status:
            with pytest.raises(RpcError) as caught:
                await self.c.raw.state.HydrateMemory(request)
            assert caught.value.reason == "WORKFLOW_NOT_FOUND"
            return
        response = await self.c.raw.state.HydrateMemory(request)
        notes = {i: (n.vector, n.metadata, n.size) for i, n in self.notes[wid].items()}
        want, want_used, want_truncated = brute_force(
            notes, query.astype(np.float64), top_k, max_bytes, match, floor
        )
        got = [(int(h.entry.memory_id.removeprefix("mem_")), h.similarity) for h in response.hits]
        if [i for i, _ in got] != [i for i, _ in want]:
            # Only a near tie may order differently.
            assert len(got) == len(want), (wid, got, want)
            assert all(abs(a[1] - b[1]) < 1e-4 for a, b in zip(got, want, strict=True)), (wid, got, want)
        else:
            assert all(abs(a[1] - b[1]) < 1e-4 for a, b in zip(got, want, strict=True))
            assert (response.total_bytes, response.truncated) == (want_used, want_truncated), (wid, got)
        for hit in response.hits:
            note = self.notes[wid][int(hit.entry.memory_id.removeprefix("mem_"))]
            assert hit.entry.text == note.text
            if note.blob:
                assert hit.entry.content.blob.sha256 == note.blob

    def blob_data(self, *, big: bool = False) -> bytes:
        if big:
            return self.rng.randbytes(self.rng.randrange(1024 * 1024, 2 * 1024 * 1024 + 100))
        if self.blobs and self.rng.random() < 0.3:
            return self.blobs[self.rng.choice(sorted(self.blobs))]  # the same bytes again
        return self.rng.randbytes(self.rng.choice([0, 1, 100, 5000]))

    async def step_blob_put(self) -> None:
        data = self.blob_data()
        owner = self.rng.choice(["", "", *BASE_IDS, *self.status])
        digest = hashlib.sha256(data).hexdigest()
        self.log.append(f"  put {digest[:8]} ({len(data)} bytes) for {owner!r}")
        if owner and owner not in self.status:
            with pytest.raises(RpcError) as caught:
                await self.c.state.blobs.put(data, workflow_id=owner, check_first=False)
            assert caught.value.reason == "WORKFLOW_NOT_FOUND"
            return
        ref = await self.c.state.blobs.put(data, workflow_id=owner, check_first=self.rng.random() < 0.5)
        assert (ref.sha256, ref.size_bytes) == (digest, len(data))
        self.put_done(digest, data, owner)

    def put_done(self, digest: str, data: bytes, owner: str) -> None:
        # Owned while every upload named a workflow; one without (or a check that found it and
        # skipped the upload) was promised the TTL.
        existed = digest in self.blobs and digest not in self.gone
        self.owned[digest] = bool(owner) and (self.owned.get(digest, False) if existed else True)
        self.blobs[digest] = data
        self.gone.discard(digest)
        if owner:
            self.refs.setdefault(owner, set()).add(digest)

    async def step_blob_get(self) -> None:
        if self.gone and self.rng.random() < 0.3:
            digest = self.rng.choice(sorted(self.gone))
            with pytest.raises(RpcError) as caught:
                await self.c.state.blobs.get(digest)
            assert caught.value.reason == "BLOB_NOT_FOUND"
            return
        if self.blobs:
            await self.check_blob(self.rng.choice(sorted(self.blobs)))

    async def check_blob(self, digest: str) -> None:
        found = await self.c.state.blobs.check([digest])
        if digest not in found:
            assert not self.must_exist(digest), f"blob {digest} is gone"
            self.blobs.pop(digest, None)
            self.owned.pop(digest, None)
            return
        try:
            data = await self.c.state.blobs.get(digest)
        except RpcError as error:  # swept between the two calls
            refused = error
        else:
            assert data == self.blobs[digest], digest
            return
        assert refused.reason == "BLOB_NOT_FOUND" and not self.must_exist(digest), refused
        self.blobs.pop(digest, None)
        self.owned.pop(digest, None)

    # Crashes

    async def step_kill(self) -> None:  # noqa: PLR0912, PLR0915 (one batch, read top-down)
        """Calls in flight, SIGKILL at a random moment, restart, then each call resolved and all checked."""
        rng = self.rng
        attempts: dict[str, list[Attempt]] = {}
        pending = Pending()
        jobs: list[Awaitable[object]] = []
        busy: set[str] = set()
        closed = sorted(w for w, s in self.status.items() if s == "closed")
        if closed and rng.random() < 0.4:
            wid = rng.choice(closed)
            busy.add(wid)
            deleting_task = asyncio.ensure_future(self.delete_call(wid))
            pending.deletes.append((wid, deleting_task))
            jobs.append(deleting_task)
        open_ids = sorted(w for w, s in self.status.items() if s == "open")
        for wid in rng.sample(open_ids, min(len(open_ids), rng.randrange(1, 3))):
            busy.add(wid)
            base = self.model.docs[wid].latest
            attempts[wid] = [
                Attempt(wid, self.simple_patch(i), rng.choice([None, None, base, base + 1]))
                for i in range(rng.randrange(1, 5))
            ]
            jobs += [self.patch_call(a) for a in attempts[wid]]
        deleting = {w for w, _ in pending.deletes}
        for wid in sorted(set(self.status) - deleting):
            if rng.random() < 0.3 and len(self.notes[wid]) < MAX_NOTES - 5:
                notes = self.new_notes(wid)
                if any(n.blob for _, n in notes) and not self.ttl_long:
                    continue  # keep the in-flight add all-or-nothing on its own, not on the sweep
                adding = asyncio.ensure_future(self.add_call(wid, notes))
                busy.add(wid)  # not forked meanwhile: the fork would copy its references or not
                pending.adds.append((wid, [n for _, n in notes], adding))
                jobs.append(adding)
        for _ in range(rng.randrange(0, 3)):
            data = self.blob_data(big=rng.random() < 0.3)
            if hashlib.sha256(data).hexdigest() in self.blobs:
                continue
            owner = rng.choice(["", *sorted(set(self.status) - deleting)])
            if owner:
                busy.add(owner)  # not forked meanwhile (as for adds)
            upload = self.c.state.blobs.put(data, workflow_id=owner, check_first=False)
            putting = asyncio.ensure_future(upload)
            pending.puts.append((data, owner, putting))
            jobs.append(putting)
        sources = sorted(w for w in self.status if w not in busy)
        if sources and rng.random() < 0.5:
            source = rng.choice(sources)
            model = self.model.docs[source]
            version = rng.choice([0, model.oldest, model.latest])
            target = f"f{self.forks}"
            self.forks += 1
            self.ever.add(target)
            busy.add(target)
            forking = asyncio.ensure_future(self.fork_call(source, version, target))
            pending.forks.append((source, version or model.latest, target, forking))
            jobs.append(forking)
        self.log.append(
            "  in flight: patches "
            f"{[(w, [(a.patch, a.expected_version) for a in v]) for w, v in attempts.items()]}"
            f" adds {[(w, [n.text for n in ns]) for w, ns, _ in pending.adds]}"
            f" puts {[(hashlib.sha256(d).hexdigest()[:8], len(d), o) for d, o, _ in pending.puts]}"
            f" forks {[(s, v, t) for s, v, t, _ in pending.forks]} deletes {[w for w, _ in pending.deletes]}"
        )
        start = self.next_tick()
        running = [asyncio.ensure_future(job) for job in jobs]
        if rng.random() < 0.5:
            await asyncio.sleep(rng.choice([0.0, 0.001, 0.003, 0.01, 0.03]))
        else:
            wanted = rng.randrange(0, len(running) + 1)
            waiting = set(running)
            for _ in range(wanted):
                if not waiting:
                    break
                _, waiting = await asyncio.wait(
                    waiting, timeout=CALL_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
                )
        assert self.process is not None
        self.process.kill()
        await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), CALL_TIMEOUT_S)
        await self.close(kill=True)
        self.kills += 1
        # The folder as the crash left it: whatever no in-flight call touched matches the model.
        touched = busy | {w for w, _, _ in pending.adds} | {o for _, o, _ in pending.puts if o}
        await self.offline(full=False, skip=touched)
        await self.start()
        end = self.next_tick()
        for wid, tries in attempts.items():
            head, server = await self.server_docs(wid)
            for a in tries:
                if a.version is None and a.error is None:
                    a.start, a.end = start, end
            await self.resolve(wid, tries, head, server)
        for wid, added, task in pending.adds:
            found = await self.memory_ids(wid)
            if task.done() and not task.cancelled() and task.exception() is None:
                ids = task.result()
            else:
                present = [n.text in found for n in added]
                assert all(present) or not any(present), (wid, [n.text for n in added], found)
                ids = [found[n.text] for n in added] if all(present) else []
            if ids:
                assert [found[n.text] for n in added] == ids
                self.noted(wid, ids, added, start, end)
        for data, owner, task in pending.puts:
            digest = hashlib.sha256(data).hexdigest()
            acked = task.done() and not task.cancelled() and task.exception() is None
            stored = await self.c.state.blobs.check([digest])
            assert not acked or digest in stored, f"acknowledged blob {digest} is gone"
            if digest in stored:
                assert await self.c.state.blobs.get(digest) == data
                self.put_done(digest, data, owner)
        for source, used, target, task in pending.forks:
            acked = task.done() and not task.cancelled() and task.exception() is None
            exists = await self.workflow_exists(target)
            has_state = await self.has_state(target)
            assert exists == has_state, (
                f"fork {source}@{used} -> {target}: workflow {exists}, state {has_state}"
            )
            assert not acked or exists
            if exists:
                _, doc = await self.get_doc(target)
                assert doc == self.model.docs[source].versions[used], (target, doc)
                await self.forked(source, used, target, start, end)
        for wid, _ in pending.deletes:
            if await self.workflow_exists(wid):
                await self.delete_call(wid)  # documented: a repeated DeleteWorkflow finishes the job
            self.deleted(wid)
        await self.check_all()

    async def has_state(self, wid: str) -> bool:
        try:
            await self.get_doc(wid)
        except RpcError as error:
            refused = error
        else:
            return True
        assert refused.reason == "WORKFLOW_NOT_FOUND", refused
        return False

    async def check_all(self) -> None:
        """Every workflow, memory and blob the model knows agrees with the sidecar."""
        for wid in sorted(self.ever):
            model = self.model.docs.get(wid)
            if model is None:
                assert not await self.has_state(wid), wid
                continue
            versions, oldest, latest = await self.checkpoints(wid)
            assert (oldest, latest) == (model.oldest, model.latest), wid
            assert versions == sorted(model.versions, reverse=True), wid
            for version, doc in model.versions.items():
                assert (await self.get_doc(wid, version)) == (version, doc), (wid, version)
            assert (await self.get_doc(wid)) == (model.latest, model.versions[model.latest])
            if self.notes[wid]:
                found = await self.memory_ids(wid)
                assert found == {n.text: i for i, n in self.notes[wid].items()}, wid
            await self.query(wid)
        for digest in sorted(self.blobs):
            await self.check_blob(digest)
        for digest in sorted(self.gone):
            assert not await self.c.state.blobs.check([digest]), digest

    async def offline(self, *, full: bool, skip: set[str]) -> None:
        """The data folder of the stopped sidecar against the model, row for row."""
        docs = self.model
        docs.attach(self.data)
        try:
            storage = docs.storage
            for wid in sorted(self.ever - skip):
                docs.check(wid)  # the unit model's check: head, versions, documents, member rows
                prefix = wid.encode() + b"\x00"
                notes = [
                    int.from_bytes(k[-8:], "big") for k, _ in storage.scan("memory_notes", prefix=prefix)
                ]
                assert notes == sorted(self.notes.get(wid, {})), wid
            refs = {key for key, _ in storage.scan("blob_refs")}
            by_blob = {key for key, _ in storage.scan("blob_refs_by_blob")}
            assert {k[-32:] + b"\x00" + k[:-33] for k in refs} == by_blob
            metas = dict(storage.scan("blob_meta"))
            for wid in sorted(self.ever - skip):
                referrer = b"wf:" + wid.encode() + b"\x00"
                held = {k[len(referrer) :].hex() for k in refs if k.startswith(referrer)}
                assert held == self.refs.get(wid, set()), wid
            if full:
                live = {b"wf:" + w.encode() for w in self.status}
                assert {k[:-33] for k in refs} <= live, "references of a deleted workflow"
                for digest in self.blobs:
                    if self.must_exist(digest):
                        assert bytes.fromhex(digest) in metas, digest
                for digest in self.gone:
                    assert bytes.fromhex(digest) not in metas, digest
                assert storage.count("blob_uploads") == 0
                spaces = {k.decode() for k, _ in storage.scan("memory_spaces")}
                assert spaces == {w for w, n in self.notes.items() if n}
            # No chunk belongs to nothing: each is a blob's or an upload's (dropped at the next start).
            owners = {_meta_dec.decode(raw).data_id for raw in metas.values()}
            owners |= {key for key, _ in storage.scan("blob_uploads")}
            chunk_owners = {key[:16] for key, _ in storage.scan("blob_chunks", limit=100_000)}
            assert chunk_owners <= owners, "chunks that belong to no blob"
            if full:
                chunks: dict[bytes, int] = {}
                for key, _ in storage.scan("blob_chunks", limit=100_000):
                    chunks[key[:16]] = chunks.get(key[:16], 0) + 1
                expected = {m.data_id: -(-m.size_bytes // MIB) for m in map(_meta_dec.decode, metas.values())}
                assert chunks == {d: n for d, n in expected.items() if n}, "chunks beside the blobs'"
        finally:
            await docs.close()

    async def clean_restart(self) -> None:
        await self.close(kill=False)
        await self.offline(full=True, skip=set())
        await self.start()
        await self.check_all()

    async def step(self, i: int) -> None:
        roll = self.rng.random()
        steps: list[tuple[float, str, Callable[[], Awaitable[None]]]] = [
            (0.04, "SIGKILL", self.step_kill),
            (0.01, "stop and start", self.clean_restart),
            (0.26, "patch", self.step_patch),
            (0.09, "race", self.step_race),
            (0.14, "read", self.step_read),
            (0.06, "fork", self.step_fork),
            (0.07, "lifecycle", self.step_lifecycle),
            (0.10, "memory add", self.step_memory_add),
            (0.07, "memory query", self.step_memory_query),
            (0.09, "blob put", self.step_blob_put),
            (0.07, "blob get", self.step_blob_get),
        ]
        for weight, name, action in steps:
            if roll < weight:
                self.log.append(f"{i}: {name}")
                await action()
                return
            roll -= weight
        self.log.append(f"{i}: read")
        await self.step_read()


async def _scenario(data: Path, seed: int, steps: int) -> Run:
    run = Run(data, seed)
    await run.start()
    try:
        for wid in BASE_IDS[:3]:
            await run.submit(wid)
        for i in range(steps):
            await run.step(i)
        await run.step_kill()
        await run.clean_restart()
        await run.close(kill=False)
        await run.offline(full=True, skip=set())
    except AssertionError as error:
        raise AssertionError(f"seed {seed}: {error}\nlast steps:\n" + "\n".join(run.log[-25:])) from error
    finally:
        if run.process is not None:
            await run.close(kill=True)
    return run


@pytest.mark.parametrize("seed", SEEDS)
async def test_a_sidecar_keeps_the_state_models_promises_through_sigkills(tmp_path: Path, seed: int) -> None:
    """Patches (racing too), reads at versions, forks, deletes, memory and blobs, SIGKILLs and restarts."""
    run = await _scenario(tmp_path / "data", seed, STEPS)
    assert run.kills >= 2
