"""A model of what the cache promises, for randomized tests against the real engine and sidecar.

The model holds, per namespace, the entries that must be there (their
expiry, size, vector and metadata), the least-recently-used order, the
counters GetCacheStats reports, and which of them a restart may have rolled
back. A test drives the real cache and the model side by side: each call's
outcome is checked against the model, which then takes that outcome in
(entry ids, for instance, are the cache's).

Concurrent calls are checked as a linearizability checker would: a batch of
calls run together must match some order of them; every order that matches
is kept as a candidate (:class:`Checker`), and later outcomes prune them.

Two modes:

* exact (the engine with a settable clock, ``t0 == t1``): expired entries
  stay until a flush sweeps them (they occupy their place and count, but never
  answer); after a restart without a stop the recency is the saved table's
  followed by the entries stored since, and the lookup counters are those
  last written.
* loose (a real sidecar, its own clock and its own flush every second): a
  call is known to take effect between ``t0`` and ``t1``, so an entry that
  expires meanwhile may answer or not; one that expired may have been swept
  or not (counts that include it are ranges, and the expirations counter
  must make the books balance); after SIGKILL the recency is unknown until
  every entry has been looked up again, and the counters may be any that were
  true since the last write that carried them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from are_core.cache import normalise_prompt
from are_core.embed import LexicalEmbedder
from are_core.vector import SIMILARITY_ERROR

__all__ = [
    "Call",
    "Checker",
    "Counters",
    "Entry",
    "GetStats",
    "Hit",
    "Invalidate",
    "Lookup",
    "MismatchError",
    "Model",
    "Refused",
    "Resize",
    "Snapshot",
    "Space",
    "StatsSeen",
    "Store",
    "StoreMany",
    "Stored",
    "UnpredictableError",
    "Upkeep",
]

ALIVE, MAYBE, DEAD = 0, 1, 2


class MismatchError(AssertionError):
    """The cache did something the model does not allow."""


class UnpredictableError(Exception):
    """The test asked for a step whose outcome the model cannot tell (a mistake of the generator)."""


# -- calls and outcomes -----------------------------------------------------


@dataclass(frozen=True, eq=False)
class Store:
    """StoreCache (``ttl_ns`` 0: the namespace's; ``tag`` goes in the metadata)."""

    ns: str
    prompt: str
    response: bytes
    vector: np.ndarray[Any, Any] | None = None
    ttl_ns: int = 0
    tag: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: int = 0


@dataclass(frozen=True, eq=False)
class StoreMany:
    """The engine's bulk store: one TTL, one tag, no usage; evicts once, after every row."""

    ns: str
    prompts: tuple[str, ...]
    responses: tuple[bytes, ...]
    vectors: np.ndarray[Any, Any] | None = None
    ttl_ns: int = 0
    tag: str = ""


@dataclass(frozen=True, eq=False)
class Lookup:
    """LookupCache by prompt, vector or both."""

    ns: str
    prompt: str = ""
    vector: np.ndarray[Any, Any] | None = None
    exact_only: bool = False


@dataclass(frozen=True, eq=False)
class Invalidate:
    """InvalidateCache by ids, by a metadata tag, or everything."""

    ns: str
    entry_ids: tuple[str, ...] = ()
    tag: str = ""
    everything: bool = False


@dataclass(frozen=True, eq=False)
class Resize:
    """PutNamespace changing the bounds (every other setting as it was)."""

    ns: str
    max_entries: int
    max_bytes: int


@dataclass(frozen=True, eq=False)
class GetStats:
    """GetCacheStats of one namespace."""

    ns: str


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The engine saving a namespace's entry table: its recency is what a start after SIGKILL finds."""

    ns: str


@dataclass(frozen=True, eq=False)
class Upkeep:
    """Engine upkeep that changes nothing a caller sees (``what``: "checkpoint" or "fold" of the index)."""

    ns: str
    what: str


@dataclass(frozen=True)
class Stored:
    entry_id: str
    replaced: bool
    expire_ns: int


@dataclass(frozen=True)
class Refused:
    reason: str  # "LIMIT": an entry over the namespace's max_bytes


@dataclass(frozen=True)
class Hit:
    entry_id: str
    tier: str  # "EXACT" or "SEMANTIC"
    similarity: float
    response: bytes
    prompt: str
    tag: str
    tokens: int
    cost: int


@dataclass(frozen=True)
class StatsSeen:
    lookups: int
    exact_hits: int
    semantic_hits: int
    misses: int
    entries: int
    size_bytes: int
    expirations: int
    evictions: int
    saved_tokens: int
    saved_cost: int


Op = Store | StoreMany | Lookup | Invalidate | Resize | GetStats | Snapshot | Upkeep


@dataclass(frozen=True, eq=False)
class Call:
    """A call and what came of it, made between ``t0`` and ``t1`` (ns since the epoch)."""

    op: Op
    outcome: Any
    t0: int
    t1: int


# -- the model ---------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    ns: str
    entry_id: str
    prompt: str
    key: str  # the normalised prompt
    vector: np.ndarray[Any, Any] | None = field(compare=False)
    expire_ns: int
    size: int
    tag: str
    response: bytes
    tokens: int
    cost: int


@dataclass(frozen=True)
class Counters:
    lookups: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    saved_tokens: int = 0
    saved_cost: int = 0


@dataclass
class Space:
    """One namespace as the model sees it."""

    name: str
    embedder: str  # "caller" or "lexical"
    dimension: int
    dtype: str
    threshold: float
    default_ttl_ns: int
    max_entries: int
    max_bytes: int
    entries: dict[str, Entry] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # least recently used first
    durable_order: list[str] = field(default_factory=list)  # the order a start after SIGKILL finds
    unknown_order: set[str] = field(default_factory=set)  # entries not used since a SIGKILL (loose)
    counters: Counters = field(default_factory=Counters)
    durable: list[Counters] = field(default_factory=list)  # what a start after SIGKILL may find
    counters_unknown: bool = False
    partial_index: bool = False  # a start's background indexing is under way: the semantic tier may miss
    size: int = 0
    evictions: int = 0
    expirations: int = 0  # exact mode only
    stored: int = 0
    replaced: int = 0
    invalidated: int = 0

    def clone(self) -> Space:
        return replace(
            self,
            entries=dict(self.entries),
            by_key=dict(self.by_key),
            order=list(self.order),
            durable_order=list(self.durable_order),
            unknown_order=set(self.unknown_order),
            durable=list(self.durable),
        )

    def signature(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.max_entries,
            self.max_bytes,
            tuple(self.order),
            tuple(self.durable_order),
            tuple(sorted(self.unknown_order)),
            self.counters,
            tuple(self.durable),
            self.counters_unknown,
            self.partial_index,
            self.evictions,
            self.expirations,
            self.stored,
            self.replaced,
            self.invalidated,
        )


_EMBEDDERS: dict[int, LexicalEmbedder] = {}


def embed(dimension: int, prompt: str) -> np.ndarray[Any, Any] | None:
    """The lexical embedder's vector for a prompt (as the engine computes it), None without direction."""
    embedder = _EMBEDDERS.setdefault(dimension, LexicalEmbedder(dimension))
    vector: np.ndarray[Any, np.dtype[np.float64]] = embedder.embed([prompt])[0].astype(np.float64)
    if not float(np.dot(vector, vector)) > 0.0:
        return None
    return vector


def unit(vector: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    wide = np.asarray(vector, dtype=np.float64).reshape(-1)
    return wide / float(np.linalg.norm(wide))


def margin(dtype: str) -> float:
    """How far the model's cosine may be from the index's (quantisation, float32 sums)."""
    return max(SIMILARITY_ERROR[dtype] * 1.5, 1e-4)


@dataclass
class Model:
    """Every namespace, and the last entry id handed out (ids only grow).

    ``waits``: a lookup may wait between its exact tier and its semantic
    search, and between its search and its answer (searches coalesced, or
    made in a worker thread while a start indexes in the background; a bulk
    store embeds in one too), and other calls take effect meanwhile: its
    exact tier is checked at one moment, its search finds at a later one, and
    its answer moves the entry found to most recently used later still (see
    :meth:`Checker.apply`). An entry of its prompt stored meanwhile, say,
    answers from the semantic tier.
    """

    exact: bool
    waits: bool = False
    spaces: dict[str, Space] = field(default_factory=dict)
    last_id: str = ""

    def clone(self) -> Model:
        return Model(
            exact=self.exact,
            waits=self.waits,
            spaces={n: s.clone() for n, s in self.spaces.items()},
            last_id=self.last_id,
        )

    def signature(self) -> tuple[Any, ...]:
        return (self.last_id, *(s.signature() for _, s in sorted(self.spaces.items())))

    def add_space(self, space: Space) -> None:
        space.durable = [space.counters]
        self.spaces[space.name] = space

    # -- what an entry is at a moment ------------------------------------

    def status(self, entry: Entry, t0: int, t1: int) -> int:
        """ALIVE (answers), DEAD (never answers) or MAYBE (expires within the call)."""
        if entry.expire_ns > t1:
            return ALIVE
        if entry.expire_ns <= t0:
            return DEAD
        return MAYBE

    def surely_held(self, entry: Entry, t1: int) -> bool:
        """Whether the cache certainly still holds the entry (loose: an expired one may be swept)."""
        return self.exact or entry.expire_ns > t1

    # -- calls -------------------------------------------------------------

    def apply(self, call: Call, part: str = "") -> None:
        """Checks a call's outcome and takes it in; raises MismatchError when the cache may not do that.

        ``part``: of a lookup, "exact" (its exact tier), "semantic" (what its
        search may find) or "answer" (its entry moved to most recently used,
        the counters); "" for all of it.
        """
        op = call.op
        space = self.spaces[op.ns]
        if isinstance(op, Lookup):
            self._lookup(space, op, call, part)
        elif isinstance(op, Store):
            self._store(space, op, call)
        elif isinstance(op, StoreMany):
            self._store_many(space, op, call)
        elif isinstance(op, Invalidate):
            self._invalidate(space, op, call)
        elif isinstance(op, Resize):
            space.max_entries, space.max_bytes = op.max_entries, op.max_bytes
            if call.outcome is not None:
                raise MismatchError(f"{op_text(op)}: expected success, got {call.outcome}")
            self._evict(space, keep=None, t1=call.t1)
            space.durable = [space.counters]
        elif isinstance(op, GetStats):
            self._stats(space, call)
        elif isinstance(op, Snapshot):
            space.durable_order = list(space.order)
        elif isinstance(op, Upkeep):
            pass
        else:  # pragma: no cover - every op is handled above
            raise TypeError(op)

    def _vector_of(self, space: Space, prompt: str, vector: np.ndarray[Any, Any] | None) -> Any:
        if vector is not None:
            return unit(vector)
        if space.embedder == "lexical":
            return embed(space.dimension, prompt)
        return None

    def _admit(self, space: Space, stored: Stored, entry: Entry, call: Call) -> None:
        if not stored.entry_id > self.last_id:
            raise MismatchError(
                f"entry id {stored.entry_id} is not above the last one handed out, {self.last_id}"
            )
        self.last_id = stored.entry_id
        old = space.by_key.get(entry.key)
        if old is not None:
            if space.entries[old].expire_ns <= call.t0:  # expired: nothing live to replace
                if stored.replaced:
                    raise MismatchError(
                        f"{space.name}: storing {entry.prompt!r} says it replaced expired entry {old}"
                    )
                if self.exact:  # the store removed it (no flush did yet): an expiry
                    space.expirations += 1
            elif stored.replaced is False and self.surely_held(space.entries[old], call.t1):
                raise MismatchError(
                    f"{space.name}: storing {entry.prompt!r} did not replace live entry {old}"
                )
            self._drop(space, old)
        elif stored.replaced:
            raise MismatchError(
                f"{space.name}: storing {entry.prompt!r} says it replaced an entry; none was held"
            )
        space.replaced += stored.replaced
        space.entries[entry.entry_id] = entry
        space.by_key[entry.key] = entry.entry_id
        space.order.append(entry.entry_id)
        space.durable_order.append(entry.entry_id)
        space.size += entry.size
        space.stored += 1

    def _store(self, space: Space, op: Store, call: Call) -> None:
        size = len(op.prompt.encode()) + len(op.response)
        outcome = call.outcome
        if size > space.max_bytes:
            if outcome != Refused("LIMIT"):
                raise MismatchError(
                    f"{space.name}: a {size}-byte entry over max_bytes was not refused: {outcome}"
                )
            return
        if not isinstance(outcome, Stored):
            raise MismatchError(f"{space.name}: store of {op.prompt!r} failed: {outcome}")
        ttl = op.ttl_ns or space.default_ttl_ns
        if not call.t0 + ttl <= outcome.expire_ns <= call.t1 + ttl:
            raise MismatchError(
                f"{space.name}: expire time {outcome.expire_ns} is not the store's time + {ttl}"
            )
        entry = Entry(
            ns=op.ns,
            entry_id=outcome.entry_id,
            prompt=op.prompt,
            key=normalise_prompt(op.prompt),
            vector=self._vector_of(space, op.prompt, op.vector),
            expire_ns=outcome.expire_ns,
            size=size,
            tag=op.tag,
            response=op.response,
            tokens=op.input_tokens + op.output_tokens,
            cost=op.cost,
        )
        self._admit(space, outcome, entry, call)
        self._evict(space, keep=entry.entry_id, t1=call.t1)
        space.durable = [space.counters]

    def _store_many(self, space: Space, op: StoreMany, call: Call) -> None:
        sizes = [len(p.encode()) + len(r) for p, r in zip(op.prompts, op.responses, strict=True)]
        outcome = call.outcome
        if any(size > space.max_bytes for size in sizes):
            if outcome != Refused("LIMIT"):
                raise MismatchError(f"{space.name}: a bulk store with a row over max_bytes was not refused")
            return
        if not isinstance(outcome, list) or len(outcome) != len(op.prompts):
            raise MismatchError(f"{space.name}: bulk store failed or answered {outcome}")
        last = ""
        for row, (prompt, stored) in enumerate(zip(op.prompts, outcome, strict=True)):
            ttl = op.ttl_ns or space.default_ttl_ns
            if not call.t0 + ttl <= stored.expire_ns <= call.t1 + ttl:
                raise MismatchError(
                    f"{space.name}: row {row} expires at {stored.expire_ns}, not the store's + {ttl}"
                )
            vector = None if op.vectors is None else op.vectors[row]
            entry = Entry(
                ns=op.ns,
                entry_id=stored.entry_id,
                prompt=prompt,
                key=normalise_prompt(prompt),
                vector=self._vector_of(space, prompt, vector),
                expire_ns=stored.expire_ns,
                size=sizes[row],
                tag=op.tag,
                response=op.responses[row],
                tokens=0,
                cost=0,
            )
            self._admit(space, stored, entry, call)
            last = entry.entry_id
        self._evict(space, keep=last or None, t1=call.t1)
        space.durable = [space.counters]

    def _drop(self, space: Space, entry_id: str) -> Entry:
        entry = space.entries.pop(entry_id)
        if space.by_key.get(entry.key) == entry_id:
            del space.by_key[entry.key]
        space.order.remove(entry_id)
        if entry_id in space.durable_order:
            space.durable_order.remove(entry_id)
        space.unknown_order.discard(entry_id)
        space.size -= entry.size
        return entry

    def _evict(self, space: Space, *, keep: str | None, t1: int) -> None:
        """Least recently used first, past either bound; never the entry just stored."""
        while len(space.entries) > space.max_entries or space.size > space.max_bytes:
            if not self.exact and any(not self.surely_held(e, t1) for e in space.entries.values()):
                raise UnpredictableError(
                    f"{space.name}: eviction while expired entries may or may not be swept"
                )
            if space.unknown_order:
                raise UnpredictableError(f"{space.name}: eviction before the recency is known again")
            victim = space.order[0] if space.order else None
            if victim is None:
                break
            if victim == keep:
                if len(space.order) == 1:
                    break
                space.order.append(space.order.pop(0))
                continue
            self._drop(space, victim)
            space.evictions += 1

    def _touch(self, space: Space, entry: Entry, tier: str) -> None:
        space.order.remove(entry.entry_id)
        space.order.append(entry.entry_id)
        space.unknown_order.discard(entry.entry_id)
        c = space.counters
        space.counters = replace(
            c,
            lookups=c.lookups + 1,
            exact_hits=c.exact_hits + (tier == "EXACT"),
            semantic_hits=c.semantic_hits + (tier == "SEMANTIC"),
            saved_tokens=c.saved_tokens + entry.tokens,
            saved_cost=c.saved_cost + entry.cost,
        )

    def _miss(self, space: Space) -> None:
        c = space.counters
        space.counters = replace(c, lookups=c.lookups + 1, misses=c.misses + 1)

    def _check_hit(self, space: Space, hit: Hit, entry: Entry, similarity: float) -> None:
        got = (hit.response, hit.prompt, hit.tag, hit.tokens, hit.cost)
        want = (entry.response, entry.prompt, entry.tag, entry.tokens, entry.cost)
        if got != want:
            raise MismatchError(f"{space.name}: hit {hit.entry_id} answered {got}, its entry holds {want}")
        if abs(hit.similarity - similarity) > margin(space.dtype):
            raise MismatchError(
                f"{space.name}: hit {hit.entry_id} similarity {hit.similarity}, expected {similarity}"
            )

    def _lookup(self, space: Space, op: Lookup, call: Call, part: str) -> None:
        if part in {"", "exact"} and self._lookup_exact(space, op, call):
            return
        if part in {"", "semantic"}:
            self._lookup_semantic(space, op, call)
        if part in {"", "answer"}:
            self._lookup_answer(space, op, call)

    def _lookup_exact(self, space: Space, op: Lookup, call: Call) -> bool:
        """A lookup's exact tier; True when it answered (an exact hit)."""
        if space.counters_unknown:
            raise UnpredictableError(f"{space.name}: a lookup before the counters are known again")
        hit: Hit | None = call.outcome
        t0, t1 = call.t0, call.t1
        exact_must: Entry | None = None
        exact_may: Entry | None = None
        key = normalise_prompt(op.prompt) if op.prompt else ""
        if key and key in space.by_key:
            entry = space.entries[space.by_key[key]]
            status = self.status(entry, t0, t1)
            if status == ALIVE:
                exact_must = entry
            elif status == MAYBE:
                exact_may = entry
        if exact_must is None and (hit is None or hit.tier != "EXACT"):
            return False
        answer = exact_must or exact_may
        if hit is None or hit.tier != "EXACT" or answer is None or hit.entry_id != answer.entry_id:
            want = "a miss" if answer is None else f"an exact hit of {answer.entry_id}"
            raise MismatchError(f"{op_text(op)} answered {hit_text(hit)}, expected {want}")
        self._check_hit(space, hit, answer, 1.0)
        self._touch(space, answer, "EXACT")
        space.durable += [] if self.exact else [space.counters]
        return True

    def _lookup_semantic(self, space: Space, op: Lookup, call: Call) -> None:
        """A lookup's semantic search: what it may find now (its exact tier did not answer)."""
        hit: Hit | None = call.outcome
        if hit is not None and hit.tier == "EXACT":
            return  # answered by the exact tier (checked there)
        t0, t1 = call.t0, call.t1
        query = None
        if not op.exact_only:
            if op.vector is not None:
                query = unit(op.vector)
            elif space.embedder == "lexical" and op.prompt:
                query = embed(space.dimension, op.prompt)
        possible: dict[str, float] = {}
        must = False
        if query is not None:
            m = margin(space.dtype)
            scored = [
                (e, min(float(np.dot(query, e.vector)), 1.0), self.status(e, t0, t1))
                for e in space.entries.values()
                if e.vector is not None
            ]
            scored = [(e, s, status) for e, s, status in scored if status != DEAD]
            best_sure = max((s for _, s, status in scored if status == ALIVE), default=-math.inf)
            must = best_sure - m >= space.threshold and not space.partial_index
            # While a start indexes in the background, the best entry may not be indexed yet.
            possible = {
                e.entry_id: s
                for e, s, _ in scored
                if s + m >= space.threshold and (space.partial_index or s + 2 * m >= best_sure)
            }
        if hit is None:
            if must:
                raise MismatchError(
                    f"{op_text(op)} missed; expected a semantic hit of one of {sorted(possible)}"
                )
        elif hit.tier != "SEMANTIC" or hit.entry_id not in possible:
            raise MismatchError(
                f"{op_text(op)} answered {hit_text(hit)}; "
                f"only a semantic hit of {sorted(possible)} or {'nothing' if not must else 'no miss'} may"
            )
        else:
            self._check_hit(space, hit, space.entries[hit.entry_id], possible[hit.entry_id])

    def _lookup_answer(self, space: Space, op: Lookup, call: Call) -> None:
        """A lookup that the semantic tier answered (or missed): recency and counters.

        After a search that waited, the engine answers the entry it found if
        it is still there, and moves it to most recently used then.
        """
        hit: Hit | None = call.outcome
        if hit is not None and hit.tier == "EXACT":
            return
        if hit is None:
            self._miss(space)
        else:
            entry = space.entries.get(hit.entry_id)
            if entry is None or self.status(entry, call.t0, call.t1) == DEAD:
                raise MismatchError(f"{op_text(op)} answered {hit_text(hit)}, an entry no longer held")
            self._touch(space, entry, "SEMANTIC")
        if not self.exact:
            space.durable.append(space.counters)

    def _invalidate(self, space: Space, op: Invalidate, call: Call) -> None:
        if op.entry_ids:
            targets = list(dict.fromkeys(i for i in op.entry_ids if i in space.entries))
        elif op.tag:
            targets = [i for i, e in space.entries.items() if e.tag == op.tag]
        elif op.everything:
            targets = list(space.entries)
        else:
            raise UnpredictableError("an invalidation with no selector")
        sure = sum(self.surely_held(space.entries[i], call.t1) for i in targets)
        count = call.outcome
        if not isinstance(count, int) or not sure <= count <= len(targets):
            want = sure if sure == len(targets) else f"{sure} to {len(targets)}"
            raise MismatchError(f"{op_text(op)} removed {count}, expected {want}")
        for entry_id in targets:
            self._drop(space, entry_id)
        space.invalidated += count
        if count:
            space.durable = [space.counters]

    def _stats(self, space: Space, call: Call) -> None:
        seen: StatsSeen = call.outcome
        counters = Counters(
            lookups=seen.lookups,
            exact_hits=seen.exact_hits,
            semantic_hits=seen.semantic_hits,
            misses=seen.misses,
            saved_tokens=seen.saved_tokens,
            saved_cost=seen.saved_cost,
        )
        if space.counters_unknown:
            if counters not in space.durable:
                raise MismatchError(
                    f"{space.name}: after a restart the counters are {counters}; only one of those true "
                    f"since they were last written may be: {space.durable}"
                )
            space.counters, space.durable, space.counters_unknown = counters, [counters], False
        elif counters != space.counters:
            raise MismatchError(f"{space.name}: counters {counters}, expected {space.counters}")
        held = [e for e in space.entries.values() if self.surely_held(e, call.t1)]
        low, high = len(held), len(space.entries)
        if not low <= seen.entries <= high:
            raise MismatchError(f"{space.name}: {seen.entries} entries, expected {low} to {high}")
        low_bytes = sum(e.size for e in held)
        if not low_bytes <= seen.size_bytes <= space.size:
            raise MismatchError(
                f"{space.name}: {seen.size_bytes} bytes, expected {low_bytes} to {space.size}"
            )
        if seen.evictions != space.evictions:
            raise MismatchError(f"{space.name}: {seen.evictions} evictions, expected {space.evictions}")
        # Every entry stored is held, replaced, invalidated, evicted or expired: the books balance.
        expired = space.stored - space.replaced - space.invalidated - space.evictions - seen.entries
        if seen.expirations != expired:
            raise MismatchError(
                f"{space.name}: {seen.expirations} expirations; stored {space.stored}, replaced "
                f"{space.replaced}, invalidated {space.invalidated}, evicted {space.evictions}, "
                f"held {seen.entries} leave {expired}"
            )
        if self.exact and (seen.entries, seen.size_bytes, seen.expirations) != (
            len(space.entries),
            space.size,
            space.expirations,
        ):
            raise MismatchError(f"{space.name}: {seen} against the model's {len(space.entries)} entries")

    # -- time and restarts -------------------------------------------------

    def sweep(self, now: int) -> None:
        """A flush (exact mode): entries expired by ``now`` are removed and counted."""
        assert self.exact
        for space in self.spaces.values():
            for entry_id in [i for i, e in space.entries.items() if e.expire_ns <= now]:
                self._drop(space, entry_id)
                space.expirations += 1
            space.durable = [space.counters]

    def recreate(self, name: str) -> None:
        """DeleteNamespace, then PutNamespace of its settings: empty, counters from zero (ids still grow)."""
        old = self.spaces[name]
        self.add_space(
            Space(
                name=old.name,
                embedder=old.embedder,
                dimension=old.dimension,
                dtype=old.dtype,
                threshold=old.threshold,
                default_ttl_ns=old.default_ttl_ns,
                max_entries=old.max_entries,
                max_bytes=old.max_bytes,
            )
        )

    def restart(self, *, clean: bool, now: int = 0) -> None:
        """A stop and start (``clean``), or a start after SIGKILL."""
        for space in self.spaces.values():
            if clean:
                space.durable_order = list(space.order)
                space.durable = [space.counters]
            elif self.exact:
                # The saved table's recency, then every entry stored since, in the order stored.
                space.order = [i for i in space.durable_order if i in space.entries]
                [space.counters] = space.durable[-1:]
                space.durable = [space.counters]
            else:
                space.unknown_order = set(space.entries)
                space.counters_unknown = True
        if clean and self.exact:
            self.sweep(now)  # a stop flushes


def op_text(op: Op) -> str:  # noqa: PLR0911 - one return per kind of call
    """A call in a few words (for failure messages)."""
    if isinstance(op, Store):
        ttl = f", ttl {op.ttl_ns / 1e9:g} s" if op.ttl_ns else ""
        return f"{op.ns}: store({op.prompt!r}, {len(op.response)} bytes, {op.tag}{ttl})"
    if isinstance(op, StoreMany):
        return f"{op.ns}: store_many({list(op.prompts)!r})"
    if isinstance(op, Resize):
        return f"{op.ns}: resize(max_entries={op.max_entries}, max_bytes={op.max_bytes})"
    if isinstance(op, GetStats):
        return f"{op.ns}: stats"
    if isinstance(op, Snapshot):
        return f"{op.ns}: snapshot"
    if isinstance(op, Upkeep):
        return f"{op.ns}: {op.what}"
    return f"{op.ns}: {_call_text(op)}"


def _call_text(op: Lookup | Invalidate) -> str:
    if isinstance(op, Lookup):
        parts = [f"prompt={op.prompt!r}"] if op.prompt else []
        parts += ["vector"] if op.vector is not None else []
        parts += ["exact_only"] if op.exact_only else []
        return f"lookup({', '.join(parts)})"
    what = list(op.entry_ids) or (f"tag={op.tag}" if op.tag else "all")
    return f"invalidate({what})"


def hit_text(hit: Hit | None) -> str:
    return "a miss" if hit is None else f"a {hit.tier.lower()} hit of {hit.entry_id}"


# -- candidates -----------------------------------------------------------------


class Checker:
    """The model states the outcomes so far allow (more than one after concurrent calls)."""

    def __init__(self, model: Model, *, most: int = 256) -> None:
        self.candidates = [model]
        self.most = most

    @property
    def model(self) -> Model:
        """One of the candidates (to choose the next calls from)."""
        return self.candidates[0]

    def apply(self, calls: Sequence[Call]) -> None:
        """Checks calls that ran together: some order of them must match some candidate.

        In a model that ``waits``, a lookup is three steps, its exact tier,
        its search, and its answer, with other calls perhaps between them.
        Orders are searched depth first; a step that does not match ends its
        branch.
        """
        steps: list[tuple[int, Call, str]] = []
        for n, call in enumerate(calls):
            if isinstance(call.op, Lookup) and self.model.waits:
                steps += [(n, call, part) for part in ("exact", "semantic", "answer")]
            else:
                steps.append((n, call, ""))
        survivors: dict[tuple[Any, ...], Model] = {}
        seen: set[tuple[Any, ...]] = set()
        errors: list[MismatchError] = []

        def search(model: Model, left: tuple[int, ...]) -> None:
            if not left:
                survivors.setdefault(model.signature(), model)
                return
            key = (model.signature(), left)
            if key in seen:
                return
            seen.add(key)
            for i in left:
                n, call, part = steps[i]
                if any(j < i and steps[j][0] == n for j in left):
                    continue  # an earlier step of the same lookup first
                after = model.clone()
                try:
                    after.apply(call, part)
                except MismatchError as error:
                    errors.append(error)
                    continue
                search(after, tuple(j for j in left if j != i))

        for candidate in self.candidates:
            search(candidate, tuple(range(len(steps))))
        if not survivors:
            assert errors
            detail = "; ".join(f"{op_text(c.op)} -> {c.outcome}" for c in calls)
            raise MismatchError(f"{errors[0]} (calls: {detail})") from errors[0]
        if len(survivors) > self.most:
            raise UnpredictableError(f"{len(survivors)} candidate states: probe to tell them apart")
        self.candidates = list(survivors.values())

    def each(self, change: Any) -> None:
        """Applies a change (a sweep, a restart) to every candidate."""
        for model in self.candidates:
            change(model)


# -- making calls ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How a test calls one namespace: the prompts it stores, TTLs (0: the namespace's), response sizes."""

    prompts: tuple[str, ...]
    ttls_ns: tuple[int, ...] = (0,)
    response_bytes: tuple[int, int] = (0, 40)
    tags: tuple[str, ...] = ("red", "green", "blue")


class Generator:
    """Random calls, chosen with an eye on a model (live entries, removed ones, the prompts in use).

    ``ever`` keeps every entry ever stored (by id), so that removed ones are
    looked up and invalidated again.
    """

    def __init__(self, rng: Any, plans: dict[str, Plan], spaces: dict[str, Space]) -> None:
        self.rng = rng
        self.plans = plans
        self.spaces = spaces
        self.ever: dict[str, Entry] = {}

    def remember(self, model: Model) -> None:
        """Notes the entries a model holds (after each step)."""
        for space in model.spaces.values():
            for entry_id, entry in space.entries.items():
                self.ever.setdefault(entry_id, entry)

    def _gone(self, model: Model, ns: str) -> list[Entry]:
        held = model.spaces[ns].entries
        return [e for i, e in self.ever.items() if i not in held and e.ns == ns]

    def vector(self, ns: str) -> np.ndarray[Any, Any]:
        space = self.spaces[ns]
        return np.asarray(self.rng.standard_normal(space.dimension), dtype=np.float32)

    def prompt(self, ns: str) -> str:
        prompt = str(self.rng.choice(self.plans[ns].prompts))
        if self.rng.random() < 0.2:  # the same prompt once normalised
            prompt = f"  {prompt.replace(' ', '   ', 1)} \n"
        return prompt

    def store(self, ns: str, *, oversize: bool = False) -> Store:
        plan, space, rng = self.plans[ns], self.spaces[ns], self.rng
        low, high = plan.response_bytes
        size = int(rng.integers(low, high + 1))
        if oversize:
            size = space.max_bytes + 1
        return Store(
            ns=ns,
            prompt=self.prompt(ns),
            response=rng.bytes(size),
            vector=self.vector(ns) if space.embedder == "caller" else None,
            ttl_ns=int(rng.choice(plan.ttls_ns)),
            tag=str(rng.choice(plan.tags)),
            input_tokens=int(rng.integers(0, 50)),
            output_tokens=int(rng.integers(0, 50)),
            cost=int(rng.integers(0, 1000)),
        )

    def store_many(self, ns: str) -> StoreMany:
        plan, space, rng = self.plans[ns], self.spaces[ns], self.rng
        n = int(rng.integers(1, 5))
        low, high = plan.response_bytes
        return StoreMany(
            ns=ns,
            prompts=tuple(self.prompt(ns) for _ in range(n)),
            responses=tuple(rng.bytes(int(rng.integers(low, high + 1))) for _ in range(n)),
            vectors=(np.stack([self.vector(ns) for _ in range(n)]) if space.embedder == "caller" else None),
            ttl_ns=int(rng.choice(plan.ttls_ns)),
            tag=str(rng.choice(plan.tags)),
        )

    def _some_entry(self, model: Model, ns: str) -> Entry | None:
        """A live entry mostly, else a removed one, else none."""
        held = list(model.spaces[ns].entries.values())
        gone = self._gone(model, ns)
        roll = self.rng.random()
        if held and (roll < 0.7 or not gone):
            return held[int(self.rng.integers(len(held)))]
        if gone:
            return gone[int(self.rng.integers(len(gone)))]
        return None

    def lookup(self, model: Model, ns: str) -> Lookup:
        space, rng = self.spaces[ns], self.rng
        entry = self._some_entry(model, ns)
        kind = rng.random()
        if entry is None or kind < 0.1:
            return Lookup(ns=ns, prompt=self.prompt(ns), exact_only=bool(rng.random() < 0.3))
        if kind < 0.5:  # its prompt (perhaps written otherwise)
            prompt = entry.prompt
            if rng.random() < 0.3:
                prompt = f" {prompt}  "
            if space.embedder == "lexical" and rng.random() < 0.4:
                prompt = prompt.upper()  # not the exact tier's; the same words for the semantic one
            return Lookup(ns=ns, prompt=prompt, exact_only=bool(rng.random() < 0.3))
        if entry.vector is None or kind < 0.6:  # a vector nothing was stored with
            return Lookup(ns=ns, vector=self.vector(ns))
        vector = np.asarray(entry.vector, dtype=np.float32)
        if kind < 0.9:
            return Lookup(ns=ns, vector=vector)
        # Both: the exact tier decides for the prompt, else the vector.
        other = self._some_entry(model, ns)
        return Lookup(ns=ns, prompt=other.prompt if other else self.prompt(ns), vector=vector)

    def invalidate(self, model: Model, ns: str) -> Invalidate:
        rng = self.rng
        roll = rng.random()
        if roll < 0.75:
            ids = []
            for _ in range(int(rng.integers(1, 4))):
                entry = self._some_entry(model, ns)
                if entry is not None:
                    ids.append(entry.entry_id)
            if ids and rng.random() < 0.3:
                ids.append(ids[0])  # the same id twice: removed (and counted) once
            if not ids or rng.random() < 0.1:
                ids.append("e00000000ffffffff")  # never handed out
            return Invalidate(ns=ns, entry_ids=tuple(ids))
        if roll < 0.97:
            return Invalidate(ns=ns, tag=str(rng.choice(self.plans[ns].tags)))
        return Invalidate(ns=ns, everything=True)

    def probe(self, model: Model, *, gone: int = 6) -> list[Lookup]:
        """Every live entry by its prompt (exact tier) and by its own vector; some removed ones too."""
        calls: list[Lookup] = []
        for ns, space in model.spaces.items():
            held = sorted(space.entries.values(), key=lambda e: e.entry_id)
            removed = self._gone(model, ns)
            self.rng.shuffle(removed)
            for entry in [*held, *removed[:gone]]:
                calls.append(Lookup(ns=ns, prompt=entry.prompt, exact_only=True))
                if entry.vector is not None:
                    calls.append(Lookup(ns=ns, vector=np.asarray(entry.vector, dtype=np.float32)))
        return calls
