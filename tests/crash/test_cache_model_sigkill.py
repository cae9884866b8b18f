"""A real sidecar against a model of the cache's promises: random calls, some concurrent, SIGKILL, restarts.

Each seed makes a couple of hundred calls over gRPC on three small
namespaces (one bounded by entries, one by bytes with i8 vectors, one
embedding text lexically whose entries live a fraction of a second to an
hour), runs some of them together, and now and then SIGKILLs the sidecar
or stops it cleanly and starts it again on the same data folder. Every
outcome is checked against the model (``tests/unit/cache/_model.py``, in
its loose mode: the sidecar has its own clock and flushes on its own),
every namespace's GetCacheStats after every step, and after each SIGKILL
every acknowledged entry is looked up by its prompt and by its own vector,
with some removed ones, which must miss.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from are_sdk import CacheUsage, Client, InvalidArgumentError
from are_sdk.testing import SidecarProcess
from tests.unit.cache._model import (
    Call,
    Checker,
    Generator,
    GetStats,
    Hit,
    Invalidate,
    Lookup,
    Model,
    Op,
    Plan,
    Refused,
    Resize,
    Space,
    StatsSeen,
    Store,
    Stored,
    op_text,
)

S = 1_000_000_000
HOUR = 3600 * S
# The sidecar stamps a call somewhere between the client's clock readings
# around it; the SDK's times are to the microsecond.
SLACK_NS = 2_000_000


def _spaces() -> dict[str, Space]:
    spaces = [
        Space(
            name="r:count",
            embedder="caller",
            dimension=16,
            dtype="f32",
            threshold=0.95,
            default_ttl_ns=HOUR,
            max_entries=5,
            max_bytes=4096,
        ),
        Space(
            name="r:bytes",
            embedder="caller",
            dimension=16,
            dtype="i8",
            threshold=0.95,
            default_ttl_ns=HOUR,
            max_entries=1000,
            max_bytes=300,
        ),
        # Short TTLs where nothing is evicted: which expired entries the
        # sidecar has swept is not known, so the model may not pick victims.
        Space(
            name="r:ttl",
            embedder="lexical",
            dimension=64,
            dtype="f32",
            threshold=0.8,
            default_ttl_ns=HOUR,
            max_entries=1000,
            max_bytes=4096,
        ),
    ]
    return {s.name: s for s in spaces}


_WORDS = ("book", "cheap", "flight", "paris", "rome", "hotel", "train")
PLANS = {
    "r:count": Plan(prompts=tuple(f"question {i}" for i in range(10))),
    "r:bytes": Plan(prompts=tuple(f"p{i} " + "x" * (i * 7) for i in range(10)), response_bytes=(0, 120)),
    "r:ttl": Plan(
        prompts=tuple(f"{a} a {b} to {c}" for a in _WORDS[:3] for b in _WORDS[2:6] for c in _WORDS[3:5]),
        ttls_ns=(0, S // 4, 3 * S // 5, 3 * S // 2),
    ),
}


def _ns(stamp: datetime) -> int:
    """A datetime from the SDK as nanoseconds since the epoch (to the microsecond)."""
    return round(stamp.timestamp() * 1e6) * 1000


async def _run(client: Client, op: Op, spaces: dict[str, Space]) -> Any:  # noqa: PLR0911 - one per kind
    """Makes one call over gRPC; returns its outcome as the model writes it (stats: with unindexed)."""
    cache = client.cache
    if isinstance(op, Store):
        try:
            stored = await cache.store(
                op.ns,
                op.prompt,
                op.response,
                vector=None if op.vector is None else op.vector.tolist(),
                ttl=op.ttl_ns / S if op.ttl_ns else None,
                metadata={"tag": op.tag},
                usage=CacheUsage(
                    input_tokens=op.input_tokens, output_tokens=op.output_tokens, cost_micro_usd=op.cost
                ),
            )
        except InvalidArgumentError as error:
            if error.reason == "LIMIT_EXCEEDED":
                return Refused("LIMIT")
            raise
        return Stored(stored.entry_id, stored.replaced, _ns(stored.expire_time))
    if isinstance(op, Lookup):
        hit = await cache.lookup(
            op.ns,
            op.prompt,
            vector=None if op.vector is None else op.vector.tolist(),
            exact_only=op.exact_only,
        )
        if hit is None:
            return None
        return Hit(
            entry_id=hit.entry_id,
            tier=hit.tier.upper(),
            similarity=hit.similarity,
            response=hit.data,
            prompt=hit.matched_prompt,
            tag=hit.metadata.get("tag", ""),
            tokens=hit.usage.input_tokens + hit.usage.output_tokens,
            cost=hit.usage.cost_micro_usd,
        )
    if isinstance(op, Invalidate):
        return await cache.invalidate(
            op.ns, entry_ids=op.entry_ids, metadata={"tag": op.tag} if op.tag else None, all=op.everything
        )
    if isinstance(op, Resize):
        space = spaces[op.ns]
        await cache.put_namespace(
            op.ns,
            embedder=space.embedder,
            dimension=space.dimension,
            similarity_threshold=space.threshold,
            default_ttl=space.default_ttl_ns / S,
            max_entries=op.max_entries,
            max_bytes=op.max_bytes,
            vector_dtype=space.dtype,
        )
        return None
    assert isinstance(op, GetStats)
    [s] = await cache.stats(op.ns)
    seen = StatsSeen(
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
    return seen, s.unindexed_entries


class Run:
    """One seed against one data folder: the sidecar (restarted as it goes), the model, the calls."""

    def __init__(self, data: Path, seed: int, args: list[str]) -> None:
        self.data = data
        self.args = args
        self.rng = np.random.default_rng(seed)
        self.spaces = _spaces()
        model = Model(exact=False, waits=True)  # its lookups' internals are not the test's to know
        for space in _spaces().values():
            model.add_space(space)
        self.checker = Checker(model)
        self.gen = Generator(self.rng, PLANS, self.spaces)
        self.process: SidecarProcess | None = None
        self.client: Client | None = None
        self.log: list[str] = []
        self.kills = 0

    async def start(self) -> None:
        self.process = SidecarProcess.start(data_dir=self.data, args=self.args)
        self.client = await Client.connect(self.process.target)

    async def close(self, *, kill: bool) -> None:
        assert self.process is not None and self.client is not None
        await self.client.close()
        if kill:
            self.process.kill()
        else:
            assert self.process.stop() == 0
        self.process.cleanup()
        self.process = self.client = None

    async def calls(self, ops: list[Op]) -> None:
        """Runs calls together (one: alone) and checks them."""
        assert self.client is not None
        client = self.client

        async def timed(op: Op) -> Call:
            t0 = time.time_ns() - SLACK_NS
            outcome = await _run(client, op, self.spaces)
            return Call(op, outcome, t0, time.time_ns() + SLACK_NS)

        calls = await asyncio.gather(*(timed(op) for op in ops))
        unindexed = {c.op.ns: c.outcome[1] for c in calls if isinstance(c.op, GetStats)}
        calls = [Call(c.op, c.outcome[0], c.t0, c.t1) if c.op.ns in unindexed else c for c in calls]
        self.checker.apply(calls)
        for model in self.checker.candidates:  # a start's background indexing: the semantic tier may miss
            for name, count in unindexed.items():
                model.spaces[name].partial_index = count > 0
        self.gen.remember(self.checker.model)

    async def check(self) -> None:
        for name in self.spaces:
            await self.calls([GetStats(ns=name)])

    async def probe(self) -> None:
        for op in self.gen.probe(self.checker.model):
            await self.calls([op])

    def one(self) -> Op:
        rng, model = self.rng, self.checker.model
        ns = str(rng.choice(list(self.spaces)))
        roll = rng.random()
        if roll < 0.45:
            return self.gen.store(ns, oversize=bool(rng.random() < 0.02))
        if roll < 0.85:
            return self.gen.lookup(model, ns)
        if roll < 0.95 or ns == "r:ttl":
            return self.gen.invalidate(model, ns)
        space = model.spaces[ns]
        if ns == "r:bytes":
            return Resize(ns=ns, max_entries=space.max_entries, max_bytes=int(rng.choice([200, 300, 400])))
        return Resize(ns=ns, max_entries=int(rng.integers(3, 8)), max_bytes=space.max_bytes)

    async def restart(self, *, kill: bool) -> None:
        await self.close(kill=kill)
        self.checker.each(lambda m: m.restart(clean=not kill))
        await self.start()
        await self.check()  # the counters as the start found them
        if kill:
            self.kills += 1
            await self.probe()  # every acknowledged entry answers; the recency is known again

    async def step(self, i: int) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.025:
            self.log.append(f"{i}: SIGKILL and start")
            await self.restart(kill=True)
        elif roll < 0.035:
            self.log.append(f"{i}: stop and start")
            await self.restart(kill=False)
        elif roll < 0.06:
            self.log.append(f"{i}: probe")
            await self.probe()
        elif roll < 0.08:
            seconds = float(rng.choice([0.2, 0.4, 0.7]))
            self.log.append(f"{i}: sleep {seconds} s")
            await asyncio.sleep(seconds)
        elif roll < 0.28:
            ops = [self.one() for _ in range(int(rng.integers(2, 5)))]
            self.log.append(f"{i}: together " + " | ".join(op_text(op) for op in ops))
            await self.calls(ops)
        else:
            op = self.one()
            self.log.append(f"{i}: {op_text(op)}")
            await self.calls([op])
        await self.check()


async def _scenario(data: Path, seed: int, steps: int, args: list[str]) -> Run:
    run = Run(data, seed, args)
    await run.start()
    try:
        assert run.client is not None
        for space in run.spaces.values():
            await run.client.cache.put_namespace(
                space.name,
                embedder=space.embedder,
                dimension=space.dimension,
                similarity_threshold=space.threshold,
                default_ttl=space.default_ttl_ns / S,
                max_entries=space.max_entries,
                max_bytes=space.max_bytes,
                vector_dtype=space.dtype,
            )
        for i in range(steps):
            await run.step(i)
        await run.restart(kill=True)
    except AssertionError as error:
        raise AssertionError(f"seed {seed}: {error}\nlast steps:\n" + "\n".join(run.log[-12:])) from error
    finally:
        if run.process is not None:
            await run.close(kill=True)
    return run


@pytest.mark.parametrize(
    ("seed", "args"),
    [
        (1, ["--cache-checkpoint-changes", "4"]),
        (2, ["--cache-search", "coalesced", "--cache-hot-bytes", "0"]),
        (3, ["--cache-index-at-start", "0", "--cache-checkpoint-changes", "8"]),
    ],
)
async def test_a_sidecar_keeps_the_models_promises_through_sigkills(
    tmp_path: Path, seed: int, args: list[str]
) -> None:
    """Random calls (some concurrent), short TTLs, LRU bounds, invalidations, SIGKILLs and restarts."""
    run = await _scenario(tmp_path / "data", seed, 200, args)
    assert run.kills >= 2
    assert len(run.gen.ever) > 60  # the run did store and remove entries
