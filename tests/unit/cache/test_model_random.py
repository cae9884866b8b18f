"""The cache engine against a model of its promises: random calls, some concurrent, restarts and crashes.

Each seed makes a few hundred calls on three small namespaces (one bounded
by entries, one by bytes with i8 vectors, one embedding text lexically),
with short TTLs on a settable clock, flushes, bound changes, namespaces
deleted and created again, clean restarts
and restarts without a stop (as after SIGKILL: nothing saved). Every call's
outcome is checked against the model (see ``_model.py``), and after every
step the engine's own state too: the entries it holds, their recency, the
index's keys and the heads in LMDB. Now and then every live entry is looked
up by its prompt and by its own vector, and some removed ones.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from are_core.cache import CacheEngine, CacheLimitError, NamespaceSettings
from are_core.cache._engine import HEADS
from are_core.storage import prefix_key

from ._model import (
    Call,
    Checker,
    Generator,
    GetStats,
    Hit,
    Invalidate,
    Lookup,
    MismatchError,
    Model,
    Op,
    Plan,
    Refused,
    Resize,
    Snapshot,
    Space,
    StatsSeen,
    Store,
    Stored,
    StoreMany,
    Upkeep,
    op_text,
)
from .conftest import Harness

S = 1_000_000_000


def _spaces() -> dict[str, Space]:
    spaces = [
        Space(
            name="m:count",
            embedder="caller",
            dimension=16,
            dtype="f32",
            threshold=0.95,
            default_ttl_ns=60 * S,
            max_entries=6,
            max_bytes=1 << 20,
        ),
        Space(
            name="m:bytes",
            embedder="caller",
            dimension=16,
            dtype="i8",
            threshold=0.95,
            default_ttl_ns=60 * S,
            max_entries=1000,
            max_bytes=360,
        ),
        Space(
            name="m:text",
            embedder="lexical",
            dimension=64,
            dtype="f16",
            threshold=0.8,
            default_ttl_ns=60 * S,
            max_entries=8,
            max_bytes=1 << 20,
        ),
    ]
    return {s.name: s for s in spaces}


_WORDS = ("book", "cheap", "flight", "paris", "rome", "hotel", "train", "tomorrow")
PLANS = {
    "m:count": Plan(
        prompts=tuple(f"question {i}" for i in range(12)), ttls_ns=(0, 0, 0, 2 * S, 5 * S, 20 * S)
    ),
    "m:bytes": Plan(
        prompts=tuple(f"p{i} " + "x" * (i * 7) for i in range(10)),
        ttls_ns=(0, 0, 3 * S, 10 * S),
        response_bytes=(0, 150),
    ),
    "m:text": Plan(
        prompts=tuple(
            f"{a} a {b} to {c}"
            for a, b, c in [(a, b, c) for a in _WORDS[:3] for b in _WORDS[2:6] for c in _WORDS[3:5]]
        ),
        ttls_ns=(0, 0, 4 * S),
    ),
}


def _settings(space: Space) -> NamespaceSettings:
    return NamespaceSettings(
        name=space.name,
        embedder=space.embedder,
        dimension=space.dimension,
        similarity_threshold=space.threshold,
        default_ttl_ns=space.default_ttl_ns,
        max_entries=space.max_entries,
        max_bytes=space.max_bytes,
        vector_dtype=space.dtype,
    )


async def _run(  # noqa: PLR0911, PLR0912 - one branch per kind of call
    engine: CacheEngine, op: Op, spaces: dict[str, Space]
) -> Any:
    """Makes one call on the engine; returns its outcome as the model writes it."""
    if isinstance(op, Store):
        try:
            result = await engine.store(
                op.ns,
                prompt=op.prompt,
                response=op.response,
                vector=op.vector,
                ttl_ns=op.ttl_ns,
                metadata={"tag": op.tag},
                input_tokens=op.input_tokens,
                output_tokens=op.output_tokens,
                cost_micro_usd=op.cost,
            )
        except CacheLimitError:
            return Refused("LIMIT")
        return Stored(result.entry_id, result.replaced, result.expire_time_ns)
    if isinstance(op, StoreMany):
        try:
            results = await engine.store_many(
                op.ns,
                list(op.prompts),
                list(op.responses),
                vectors=op.vectors,
                ttl_ns=op.ttl_ns,
                metadata={"tag": op.tag},
            )
        except CacheLimitError:
            return Refused("LIMIT")
        return [Stored(r.entry_id, r.replaced, r.expire_time_ns) for r in results]
    if isinstance(op, Lookup):
        found = await engine.lookup(op.ns, prompt=op.prompt, vector=op.vector, exact_only=op.exact_only)
        hit = found.hit
        if hit is None:
            return None
        return Hit(
            entry_id=hit.entry_id,
            tier=hit.tier,
            similarity=hit.similarity,
            response=hit.response,
            prompt=hit.prompt,
            tag=hit.metadata.get("tag", ""),
            tokens=hit.input_tokens + hit.output_tokens,
            cost=hit.cost_micro_usd,
        )
    if isinstance(op, Invalidate):
        return await engine.invalidate(
            op.ns,
            entry_ids=op.entry_ids,
            metadata_match={"tag": op.tag} if op.tag else None,
            everything=op.everything,
        )
    if isinstance(op, Resize):
        settings = _settings(spaces[op.ns])
        await engine.put_namespace(
            NamespaceSettings(
                **{
                    **{f: getattr(settings, f) for f in settings.__struct_fields__},
                    "max_entries": op.max_entries,
                    "max_bytes": op.max_bytes,
                }
            )
        )
        return None
    if isinstance(op, Snapshot):
        await engine._snapshot(engine._states[op.ns], index_seq=-1)
        return None
    if isinstance(op, Upkeep):
        state = engine._states[op.ns]
        if op.what == "checkpoint":
            task = engine.checkpoint_due()
            if task is not None:
                await task
        elif state.index.is_view:
            await engine._warm(state)  # a private copy of the saved index, its overlay folded in
        return None
    [s] = engine.stats(op.ns)
    return StatsSeen(
        lookups=s.lookups,
        exact_hits=s.exact_hits,
        semantic_hits=s.semantic_hits,
        misses=s.misses,
        entries=s.entries,
        size_bytes=s.size_bytes,
        expirations=s.expirations,
        evictions=s.evictions,
        saved_tokens=s.saved_tokens,
        saved_cost=s.saved_cost_micro_usd,
    )


def _number(entry_id: str) -> int:
    return int(entry_id[1:], 16)


def _internal_mismatch(harness: Harness, model: Model) -> str:
    """How the engine's own state differs from a candidate's, or ""."""
    engine, storage = harness.e, harness.storage
    assert storage is not None
    for name, space in model.spaces.items():
        state = engine._states[name]
        held = sorted(_number(i) for i in space.entries)
        if sorted(state.heads) != held:
            return f"{name}: the engine holds {sorted(state.heads)}, the model {held}"
        order = [_number(i) for i in space.order]
        if list(state.lru) != order:
            return f"{name}: the engine's recency is {list(state.lru)}, the model's {order}"
        in_lmdb = sorted(
            int.from_bytes(k[-8:], "big") for k, _ in storage.scan(HEADS, prefix=prefix_key(name))
        )
        if in_lmdb != held:
            return f"{name}: LMDB holds the heads of {in_lmdb}, the model {held}"
        if state.backlog is None:
            indexed = sorted(int(k) for k in state.index.keys().tolist())
            with_vectors = sorted(_number(i) for i, e in space.entries.items() if e.vector is not None)
            if indexed != with_vectors:
                return f"{name}: the index holds {indexed}, the entries with vectors are {with_vectors}"
    return ""


class Run:
    """One seed's calls: the engine, the model's candidates, the generator."""

    def __init__(self, harness: Harness, seed: int, options: dict[str, Any]) -> None:
        self.h = harness
        self.options = options
        self.rng = np.random.default_rng(seed)
        self.spaces = _spaces()
        model = Model(exact=True, waits=bool(options.get("coalesce") or "index_at_start" in options))
        for space in _spaces().values():
            model.add_space(space)
        self.checker = Checker(model)
        self.gen = Generator(self.rng, PLANS, self.spaces)
        self.log: list[str] = []

    async def calls(self, ops: list[Op]) -> None:
        """Runs calls together (one: alone) and checks them."""
        now = self.h.clock.now
        outcomes = await asyncio.gather(*(_run(self.h.e, op, self.spaces) for op in ops))
        self.checker.apply([Call(op, out, now, now) for op, out in zip(ops, outcomes, strict=True)])
        self.gen.remember(self.checker.model)

    async def reopen(self, *, save: bool) -> None:
        await self.h.close(save=save)
        await self.h.open(**self.options)
        self.note_indexing()

    def note_indexing(self) -> None:
        """Marks the namespaces whose index a start is still completing (their semantic tier may miss)."""
        for model in self.checker.candidates:
            for name, space in model.spaces.items():
                state = self.h.e._states.get(name)
                space.partial_index = state is not None and state.backlog is not None

    async def recreate(self, ns: str) -> None:
        """Deletes a namespace and creates it again with the settings in force (those of the model)."""
        space = self.checker.model.spaces[ns]
        held = {i for model in self.checker.candidates for i in model.spaces[ns].entries}
        removed = await self.h.e.delete_namespace(ns)
        certain = set.intersection(*(set(m.spaces[ns].entries) for m in self.checker.candidates))
        assert len(certain) <= removed <= len(held), f"{ns}: deleted {removed}, the model held {len(held)}"
        await self.h.e.put_namespace(_settings(space))  # the bounds in force, not the first ones
        self.checker.each(lambda m: m.recreate(ns))

    async def check(self) -> None:
        """The engine's counters and its own state against the candidates (pruning them)."""
        for name in self.spaces:
            await self.calls([GetStats(ns=name)])
        kept = [m for m in self.checker.candidates if not _internal_mismatch(self.h, m)]
        if not kept:
            raise MismatchError(_internal_mismatch(self.h, self.checker.candidates[0]))
        self.checker.candidates = kept

    async def probe(self) -> None:
        for op in self.gen.probe(self.checker.model):
            await self.calls([op])

    def one(self) -> Op:
        rng, model = self.rng, self.checker.model
        ns = str(rng.choice(list(self.spaces)))
        roll = rng.random()
        if roll < 0.48:
            return self.gen.store(ns, oversize=bool(rng.random() < 0.03))
        if roll < 0.52:
            return self.gen.store_many(ns)
        if roll < 0.88:
            return self.gen.lookup(model, ns)
        if roll < 0.95:
            return self.gen.invalidate(model, ns)
        space = model.spaces[ns]
        if ns == "m:bytes":
            return Resize(
                ns=ns, max_entries=space.max_entries, max_bytes=int(rng.choice([200, 300, 360, 500]))
            )
        return Resize(ns=ns, max_entries=int(rng.integers(3, 10)), max_bytes=space.max_bytes)

    async def step(self, i: int) -> None:
        self.note_indexing()
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            seconds = float(rng.choice([0.5, 1.0, 2.5, 7.0]))
            self.log.append(f"{i}: advance {seconds} s")
            self.h.clock.advance(seconds)
        elif roll < 0.08:
            self.log.append(f"{i}: flush")
            await self.h.e.flush()
            self.checker.each(lambda m: m.sweep(self.h.clock.now))
        elif roll < 0.09:
            self.log.append(f"{i}: clean restart")
            now = self.h.clock.now
            self.checker.each(lambda m: m.restart(clean=True, now=now))
            await self.reopen(save=True)
        elif roll < 0.11:
            self.log.append(f"{i}: restart without a stop")
            self.checker.each(lambda m: m.restart(clean=False))
            await self.reopen(save=False)
        elif roll < 0.13:
            self.log.append(f"{i}: probe")
            await self.probe()
        elif roll < 0.15:
            ns = str(rng.choice(list(self.spaces)))
            self.log.append(f"{i}: delete and create again {ns}")
            await self.recreate(ns)
        elif roll < 0.25:
            ops = [self.one() for _ in range(int(rng.integers(2, 5)))]
            upkeep = rng.random()
            ns = str(rng.choice(list(self.spaces)))
            # At most one per batch (a second snapshot would wait for nothing and save nothing),
            # anywhere in it: the calls after it change entries while it writes.
            at = int(rng.integers(0, len(ops) + 1))
            if upkeep < 0.3:
                ops.insert(at, Snapshot(ns=ns))
            elif upkeep < 0.45:
                ops.insert(at, Upkeep(ns=ns, what="checkpoint"))
            elif upkeep < 0.6:
                ops.insert(at, Upkeep(ns=ns, what="fold"))
            self.log.append(f"{i}: together " + " | ".join(op_text(op) for op in ops))
            await self.calls(ops)
        else:
            op = self.one()
            self.log.append(f"{i}: {op_text(op)}")
            await self.calls([op])
        await self.check()


async def _scenario(harness: Harness, seed: int, steps: int, **options: Any) -> Run:
    run = Run(harness, seed, options)
    await run.reopen(save=True)
    for space in run.spaces.values():
        await harness.e.put_namespace(_settings(space))
    try:
        for i in range(steps):
            await run.step(i)
        await run.probe()
        await run.check()
    except AssertionError as error:
        raise AssertionError(f"seed {seed}: {error}\nlast steps:\n" + "\n".join(run.log[-12:])) from error
    return run


@pytest.mark.parametrize(
    ("seed", "options"),
    [
        (1, {}),
        (2, {"coalesce": True, "hot_bytes": 0}),
        (3, {"index_at_start": 1, "hot_bytes": 2048}),
        (4, {"coalesce": True, "index_at_start": 0, "checkpoint_changes": 1}),
    ],
)
async def test_the_engine_keeps_the_models_promises(
    harness: Harness, seed: int, options: dict[str, Any]
) -> None:
    """Random calls (some concurrent), TTLs, LRU bounds, invalidations, restarts and crashes.

    Seeds differ in the engine's options too: searches coalesced (lookups
    then wait for each other's searches), no memory for hot bodies, and starts
    that index missing vectors in the background while serving.
    """
    run = await _scenario(harness, seed, 300, **options)
    assert len(run.gen.ever) > 100  # the run did store and remove entries
    assert any("delete and create again" in line for line in run.log)
