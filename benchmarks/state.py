"""Suite ``state``: selective reads and durable patches of a 1 MiB state, and memory hydration.

Every ARE contender runs a real sidecar (sync durability: a patch is fsynced,
through group commit, before it is acknowledged). The state document is the
same deterministic ~1 MiB JSON object everywhere: a small ``plan``, a
``history`` of ~3,300 chat messages (~0.9 MiB) and 200 ``facts``.

* ``are-get-path-1mib``: ``GetState`` of ``/plan/steps`` (a few bytes) at
  the latest version. The document is stored split by top-level member, so
  this reads one small LMDB row and decodes nothing else.
* ``are-get-deep-1mib``: ``GetState`` of ``/history/3000/content``: the worst
  case for that layout, a path inside the largest member (its JSON is walked
  level by level with msgspec ``Raw``, without building Python objects).
* ``are-get-old-version``: ``/plan/steps`` at a version 500 patches back
  (time travel costs the same as the latest: one cursor seek).
* ``are-patch-sync``: ``PatchState`` merging ``{"plan": {"cursor": n}}`` into
  the 1 MiB document: one new durable version (writes only ``plan``).
* ``langgraph-sqlite-save`` / ``langgraph-sqlite-load``: LangGraph's
  ``SqliteSaver`` (file database, SQLite's default synchronous=FULL) putting
  a checkpoint of the same state with only ``plan`` changed, and loading the
  latest checkpoint (``get_tuple``); in-process, so no RPC is included. This
  is what LangGraph does per step and per resume: it saves and loads the
  whole state. Needs the optional ``bench`` extra; skipped without it.
* ``are-hydrate-<N>``: ``HydrateMemory`` top 10 by a 256-dimension vector
  over N notes (``ARE_BENCH_STATE_NOTES``, default 20,000; seeding is not
  timed). Run ``python -m benchmarks.state --notes 100000`` for 100k.

Ratios are against the bare grpc.aio echo (16 B) measured in the same run.

``python -m benchmarks.state --layout`` prints, in-process (no RPC), why the
document is stored split by top-level member: reading one path and patching
one member of the 1 MiB document with that layout, against what a "full
document per version" layout must do for the same operations (decode the
whole 1 MiB JSON; write and fsync 1 MiB per version).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks._echo import echo_contender
from benchmarks._harness import Contender, Operation, Suite
from benchmarks._process import sidecar_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

__all__ = ["SUITE", "layout_table", "state_document"]

SIDECAR_REQUIRES = ("are_sdk.testing", "sidecar")
LANGGRAPH_REQUIRES = ("langgraph", "langgraph.checkpoint.sqlite")
NOTES_ENV = "ARE_BENCH_STATE_NOTES"
DEFAULT_NOTES = 20_000
DIMENSION = 256
WORKFLOW = "bench-state"
OLD_VERSIONS_BACK = 500
SEED = 20261125


def state_document() -> dict[str, Any]:
    """The deterministic ~1 MiB state every contender reads and writes."""
    history = [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"message {i}: " + ("lorem ipsum dolor sit amet " * 9),
            "tokens": 60 + i % 40,
        }
        for i in range(3300)
    ]
    return {
        "plan": {"steps": ["search", "compare", "book"], "cursor": 0},
        "history": history,
        "facts": {f"fact{i}": f"the value of fact {i} is {i * 7}" for i in range(200)},
    }


def _notes() -> int:
    return int(os.environ.get(NOTES_ENV, DEFAULT_NOTES))


async def _seed(target: str, *, patches: int, notes: int) -> None:
    from are_sdk import Client, MemoryNote  # noqa: PLC0415 - the sidecar contenders only
    from are_sdk._proto.are.v1 import (  # noqa: PLC0415 - the sidecar contenders only
        scheduler_service_pb2,
        task_pb2,
        workflow_pb2,
    )

    async with await Client.connect(target) as client:
        # State writes need a workflow the scheduler knows; a task nobody serves keeps it open.
        spec = workflow_pb2.WorkflowSpec(
            workflow_id=WORKFLOW, tasks=[task_pb2.TaskSpec(task_id="hold", capability="bench-nobody")]
        )
        await client.raw.scheduler.SubmitWorkflow(scheduler_service_pb2.SubmitWorkflowRequest(spec=spec))
        state = client.state.for_workflow(WORKFLOW)
        await state.patch(state_document())
        for n in range(patches):
            await state.patch({"plan": {"cursor": n + 1}})
        rng = np.random.default_rng(SEED)
        for start in range(0, notes, 1000):
            count = min(1000, notes - start)
            vectors = rng.normal(size=(count, DIMENSION)).astype(np.float32)
            await state.memory.add(
                [
                    MemoryNote(text=f"note {start + i}: " + "x" * 80, vector=vectors[i].tolist())
                    for i in range(count)
                ]
            )


@contextlib.contextmanager
def sidecar_server(*, patches: int = 0, notes: int = 0) -> Iterator[str]:
    """A real sidecar (sync durability) seeded with the document, ``patches`` versions more and ``notes``."""
    from are_sdk.testing import SidecarProcess  # noqa: PLC0415 - an optional dependency

    with SidecarProcess.start(args=["--durability", "sync"], timeout=120, env=sidecar_env()) as sidecar:
        asyncio.run(_seed(sidecar.target, patches=patches, notes=notes))
        yield sidecar.target


@contextlib.asynccontextmanager
async def get_client(target: str | None, *, path: str, versions_back: int = 0) -> AsyncIterator[Operation]:
    """One ``GetState`` of ``path`` per operation (at a version ``versions_back`` behind the latest)."""
    if target is None:
        msg = "the state client needs a sidecar target"
        raise ValueError(msg)
    from are_sdk import Client  # noqa: PLC0415
    from are_sdk._proto.are.v1 import state_service_pb2  # noqa: PLC0415

    async with await Client.connect(target) as client:
        latest = (await client.state.get(WORKFLOW, [path])).version
        request = state_service_pb2.GetStateRequest(workflow_id=WORKFLOW, paths=[path])
        if versions_back:
            request.version = latest - versions_back
        get = client.raw.state.GetState
        response = await get(request)
        if not response.values:
            msg = f"{path} did not resolve"
            raise ValueError(msg)

        async def operation() -> object:
            return await get(request)

        yield operation


@contextlib.asynccontextmanager
async def patch_client(target: str | None) -> AsyncIterator[Operation]:
    """One ``PatchState`` (a merge into ``plan``) per operation, acknowledged after fsync."""
    if target is None:
        msg = "the state client needs a sidecar target"
        raise ValueError(msg)
    from are_sdk import Client  # noqa: PLC0415
    from are_sdk._proto.are.v1 import state_service_pb2  # noqa: PLC0415

    async with await Client.connect(target) as client:
        patch = client.raw.state.PatchState
        counter = itertools.count(1)

        async def operation() -> object:
            request = state_service_pb2.PatchStateRequest(workflow_id=WORKFLOW)
            request.patch.merge_patch_json = b'{"plan": {"cursor": %d}}' % next(counter)
            return await patch(request)

        yield operation


@contextlib.asynccontextmanager
async def hydrate_client(target: str | None) -> AsyncIterator[Operation]:
    """One ``HydrateMemory`` (top 10, vector query, 64 KiB budget) per operation."""
    if target is None:
        msg = "the state client needs a sidecar target"
        raise ValueError(msg)
    from are_sdk import Client  # noqa: PLC0415
    from are_sdk._proto.are.v1 import state_service_pb2  # noqa: PLC0415

    rng = np.random.default_rng(SEED + 1)
    queries = []
    for vector in rng.normal(size=(256, DIMENSION)).astype(np.float32):
        request = state_service_pb2.HydrateMemoryRequest(workflow_id=WORKFLOW, top_k=10)
        request.vector.values.extend(vector.tolist())
        queries.append(request)
    cycle = itertools.cycle(queries)
    async with await Client.connect(target) as client:
        hydrate = client.raw.state.HydrateMemory
        if len((await hydrate(queries[0])).hits) != 10:
            msg = "the memory was not seeded"
            raise ValueError(msg)

        async def operation() -> object:
            return await hydrate(next(cycle))

        yield operation


@contextlib.asynccontextmanager
async def langgraph_client(target: str | None, *, mode: str) -> AsyncIterator[Operation]:
    """LangGraph's SqliteSaver saving (``put``) or loading (``get_tuple``) the same state."""
    del target
    from langgraph.checkpoint.base import empty_checkpoint  # noqa: PLC0415 - an optional peer
    from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: PLC0415 - an optional peer

    document = state_document()
    with tempfile.TemporaryDirectory(prefix="are-bench-langgraph-") as folder:
        connection = sqlite3.connect(Path(folder) / "checkpoints.sqlite", check_same_thread=False)
        saver = SqliteSaver(connection)
        saver.setup()
        config: Any = {"configurable": {"thread_id": WORKFLOW, "checkpoint_ns": ""}}
        counter = itertools.count(1)

        def save() -> Any:
            n = next(counter)
            checkpoint = empty_checkpoint()
            document["plan"] = {**document["plan"], "cursor": n}
            checkpoint["channel_values"] = dict(document)
            checkpoint["channel_versions"] = {"plan": n, "history": 1, "facts": 1}
            return saver.put(config, checkpoint, {"source": "update", "step": n}, {"plan": n})

        save()

        async def operation() -> object:
            return save() if mode == "save" else saver.get_tuple(config)

        try:
            yield operation
        finally:
            connection.close()


def _langgraph(name: str, mode: str, description: str) -> Contender:
    return Contender(
        name=name,
        client=functools.partial(langgraph_client, mode=mode),
        description=description,
        requires=LANGGRAPH_REQUIRES,
    )


def _hydrate_contender() -> Contender:
    notes = _notes()
    label = f"{notes // 1000}k" if notes % 1000 == 0 else str(notes)
    return Contender(
        name=f"are-hydrate-{label}",
        client=hydrate_client,
        server=functools.partial(sidecar_server, notes=notes),
        description=f"HydrateMemory top 10 by vector over {notes:,} notes (256 dimensions)",
        requires=SIDECAR_REQUIRES,
    )


SUITE = Suite(
    name="state",
    description="selective reads and durable patches of a 1 MiB state; memory hydration",
    baseline=echo_contender("echo", payload_bytes=16),
    contenders=(
        Contender(
            name="are-get-path-1mib",
            client=functools.partial(get_client, path="/plan/steps"),
            server=sidecar_server,
            description="GetState /plan/steps of a 1 MiB document",
            requires=SIDECAR_REQUIRES,
        ),
        Contender(
            name="are-get-deep-1mib",
            client=functools.partial(get_client, path="/history/3000/content"),
            server=sidecar_server,
            description="GetState /history/3000/content (inside the 0.9 MiB member)",
            requires=SIDECAR_REQUIRES,
        ),
        Contender(
            name="are-get-old-version",
            client=functools.partial(get_client, path="/plan/steps", versions_back=OLD_VERSIONS_BACK),
            server=functools.partial(sidecar_server, patches=OLD_VERSIONS_BACK + 10),
            description=f"GetState /plan/steps {OLD_VERSIONS_BACK} versions back",
            requires=SIDECAR_REQUIRES,
        ),
        Contender(
            name="are-patch-sync",
            client=patch_client,
            server=sidecar_server,
            description="PatchState merge into the 1 MiB document, fsynced before the ack",
            requires=SIDECAR_REQUIRES,
        ),
        _langgraph("langgraph-sqlite-save", "save", "SqliteSaver.put of the same 1 MiB state"),
        _langgraph("langgraph-sqlite-load", "load", "SqliteSaver.get_tuple of the same 1 MiB state"),
        _hydrate_contender(),
    ),
)


async def _timed(operation: Any, count: int) -> tuple[float, float]:
    """Median and p99 in microseconds of ``count`` awaited calls of ``operation(i)``."""
    latencies = []
    for i in range(count):
        started = time.perf_counter_ns()
        await operation(i)
        latencies.append(time.perf_counter_ns() - started)
    latencies.sort()
    return latencies[count // 2] / 1000, latencies[min(count - 1, count * 99 // 100)] / 1000


async def layout_table(count: int = 300) -> str:
    """The member-split layout against a full-document-per-version layout, in-process, sync durability."""
    import msgspec  # noqa: PLC0415

    from are_core.state import STATE_TABLES, StateEngine  # noqa: PLC0415
    from are_core.storage import GroupCommitter, Storage  # noqa: PLC0415

    document = msgspec.json.encode(state_document())
    rows: list[tuple[str, tuple[float, float]]] = []
    with tempfile.TemporaryDirectory(prefix="are-bench-layout-") as folder:
        storage = Storage.open(folder, tables=(*STATE_TABLES, "full_docs"))
        committer = GroupCommitter(storage)
        engine = StateEngine(storage, committer)
        await engine.patch(WORKFLOW, merge_patch=document)
        await committer.submit(storage.batch().put("full_docs", b"latest", document))

        async def read_path(_: int) -> object:
            return engine.get(WORKFLOW, ["/plan/steps"])

        async def read_deep(_: int) -> object:
            return engine.get(WORKFLOW, ["/history/3000/content"])

        async def read_full(_: int) -> object:
            return msgspec.json.decode(storage.get("full_docs", b"latest") or b"{}")["plan"]["steps"]

        async def patch_member(i: int) -> object:
            return await engine.patch(WORKFLOW, merge_patch=b'{"plan": {"cursor": %d}}' % i)

        async def patch_full(i: int) -> object:
            doc = msgspec.json.decode(storage.get("full_docs", b"latest") or b"{}")
            doc["plan"]["cursor"] = i
            encoded = msgspec.json.encode(doc)
            batch = storage.batch().put("full_docs", b"v" + i.to_bytes(8, "big"), encoded)
            await committer.submit(batch.put("full_docs", b"latest", encoded))
            return None

        rows.append(("member layout: read /plan/steps", await _timed(read_path, count)))
        rows.append(("member layout: read /history/3000/content", await _timed(read_deep, count)))
        rows.append(("full document: decode 1 MiB, read /plan/steps", await _timed(read_full, count)))
        rows.append(("member layout: patch /plan (sync)", await _timed(patch_member, count)))
        rows.append(("full document: patch, write 1 MiB (sync)", await _timed(patch_full, count)))
        await committer.aclose()
        storage.close()
    lines = [f"document {len(document):,} bytes; {count} operations each, in-process, sync durability"]
    lines.append(f"{'operation':<48} {'median µs':>10} {'p99 µs':>10}")
    lines += [f"{name:<48} {median:>10.1f} {p99:>10.1f}" for name, (median, p99) in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.state [--notes N] [--layout] [harness options]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--notes", type=int, default=None, help=f"notes for are-hydrate (default {DEFAULT_NOTES})"
    )
    parser.add_argument("--layout", action="store_true", help="print the storage layout comparison and exit")
    known, rest = parser.parse_known_args(argv)
    if known.layout:
        print(asyncio.run(layout_table()))
        return 0
    if known.notes is not None:
        os.environ[NOTES_ENV] = str(known.notes)
    from benchmarks._harness import main as harness_main  # noqa: PLC0415

    return harness_main(["state", *rest])


if __name__ == "__main__":
    sys.exit(main())
