"""RouteTask against a brute-force model of the cards, under random operations (seeded).

The model keeps in plain Python what the router promises: the cards
(registered and worker-declared), their workers' load and availability,
and the ranking RouteTask documents. The eligible agents (filters,
exclusions, availability) that reach the threshold are ranked by
availability tier, score (the similarity, or when cost-biased its blend with
cheapness as ``Router._selected`` computes it), similarity, load and
agent_id; with none, a NoRouteError lists the best below by similarity, or
the best below are the answer when asked for. Random registrations (new and
replacing, the vector kept or changed), deregistrations, workers
connecting, changing load or availability and leaving, restarts on the same
LMDB folder (after a clean stop that saves the index, or as after a crash)
and queries (RouteTask and ``route_for_intent``) drive the engine and the
model together; every answer is compared, with the C ranking loop and with
numpy on the same state, and after every step the cards, what is served and
the index's size.

The index holds fewer than ``EXACT_SEARCH_BELOW`` vectors, so it scans them
exactly, and the engine deepens its search past every candidate within the
index's error of the threshold and confirms "no route" by brute force: the
answers must be exact, not approximate. Only the similarities of two
different vectors closer than float32 rounding (equal ones too, as the
model computes them in float64) may come in either order; cards of one
vector tie exactly, then load and agent_id decide. (The best below the
threshold, when asked for, rank free agents first: the search deepens until
top_k free ones are kept, see ``Router._eligible``, so they are compared
with the model's pick among all cards.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Protocol

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

import are_core.router._engine as router_engine
from are_core.router import (
    TABLES,
    AgentNotFoundError,
    AgentSpec,
    NoRouteError,
    RouteCandidate,
    RouteMode,
    RouteQuery,
    Router,
    RouteResult,
    RouterSettings,
)
from are_core.storage import GroupCommitter, Storage
from are_core.vector import EXACT_SEARCH_BELOW
from sidecar._router import _restore_index, new_router_index

from .conftest import DIMENSION, NATIVE

CAPABILITIES = ("cap-a", "cap-b", "cap-c", "cap-d")
COSTS = (0, 5, 10, 10, 50, 100, 250)
CENTRES = 5
CARD_IDS = tuple(f"card-{i:02d}" for i in range(100))
CREW_IDS = tuple(f"crew-{i}" for i in range(10))  # worker cards' names
TOLERANCE = router_engine._SIMILARITY_TOLERANCE
# Thresholds are moved this far from every similarity of the query: the
# engine's float32 similarities differ from the model's float64 ones by less
# (2.4e-7 at most over these runs).
AMBIGUOUS = 5e-7
OPERATIONS = 500
POPULATION = 75
# (seed, index_rebuild_changes): a small bound rebuilds the index in the
# background again and again, changes meanwhile replayed on the new one.
SEEDS = ((1, 4), (2, 1024), (3, 16), (4, 4))

Vector = npt.NDArray[np.float64]


def _unit(vector: npt.ArrayLike) -> Vector:
    array = np.asarray(vector, dtype=np.float64)
    return array / np.linalg.norm(array)


class TextVectors(Protocol):
    """What the model needs of an embedder: a text's vector (``TopicEmbedder``, or a sidecar's own)."""

    def vector(self, text: str) -> npt.NDArray[np.float32]: ...


class TopicEmbedder:
    """Texts "topic <k> ..." embed near centre k, others in a direction of their own (both from a hash)."""

    name = "test-topics"

    def __init__(self, centres: Vector) -> None:
        self.dimension = centres.shape[1]
        self._centres = centres
        self._cache: dict[str, npt.NDArray[np.float32]] = {}

    def vector(self, text: str) -> npt.NDArray[np.float32]:
        cached = self._cache.get(text)
        if cached is None:
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
            rng = np.random.default_rng(seed)
            words = text.split()
            if len(words) > 1 and words[0] == "topic" and words[1].isdigit():
                base = self._centres[int(words[1]) % len(self._centres)]
            else:
                base = _unit(rng.normal(size=self.dimension))
            cached = self._cache[text] = _unit(base + rng.normal(0, 0.06, self.dimension)).astype(np.float32)
        return cached

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.stack([self.vector(text) for text in texts])


# ---------------------------------------------------------------- the model


@dataclass
class _Worker:
    agent_id: str
    spec: AgentSpec
    vector: Vector
    running: int
    capacity: int
    available: bool
    declared: frozenset[str]


@dataclass(frozen=True)
class _Card:
    """An agent as the model derives it from its registration and its workers."""

    agent_id: str
    spec: AgentSpec
    registered: bool
    vector: Vector
    running: int
    capacity: int
    available: bool
    worker_ids: tuple[str, ...]

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(self.spec.capabilities)

    @property
    def load(self) -> float:
        return self.running / self.capacity

    @property
    def tier(self) -> int:
        return 2 if not self.available else (1 if self.load >= 1.0 else 0)


@dataclass
class Model:
    embedder: TextVectors
    settings: RouterSettings
    registered: dict[str, tuple[AgentSpec, Vector]] = field(default_factory=dict)
    workers: dict[str, _Worker] = field(default_factory=dict)  # in connection order
    version: int = 0
    """Registrations and removals so far: what a saved index's manifest must match."""
    saved_version: int | None = None

    def spec_vector(self, spec: AgentSpec) -> Vector:
        """The caller's vector, else the embedding of the description (or capabilities and name, or id)."""
        if spec.vector is not None:
            return _unit(np.frombuffer(spec.vector, dtype=np.float32))
        text = spec.description or " ".join((*spec.capabilities, spec.display_name)).strip() or spec.agent_id
        return _unit(self.embedder.vector(text))

    def register(self, spec: AgentSpec) -> None:
        self.registered[spec.agent_id] = (spec, self.spec_vector(spec))
        self.version += 1

    def deregister(self, agent_id: str) -> None:
        del self.registered[agent_id]
        self.version += 1

    def connect(
        self,
        worker_id: str,
        *,
        name: str,
        declared: tuple[str, ...],
        running: int,
        capacity: int,
        available: bool,
        card: AgentSpec | None,
    ) -> None:
        spec = card or AgentSpec(agent_id=name, description=" ".join(declared))
        if not spec.capabilities:  # the worker's card offers what the worker declares
            spec = msgspec.structs.replace(
                spec, capabilities=declared, description=spec.description or " ".join(declared)
            )
        self.workers[worker_id] = _Worker(
            spec.agent_id,
            spec,
            self.spec_vector(spec),
            max(0, running),
            max(1, capacity),
            available,
            frozenset(declared),
        )

    def cards(self) -> dict[str, _Card]:
        ids = set(self.registered) | {w.agent_id for w in self.workers.values()}
        cards = {}
        for agent_id in sorted(ids):
            workers = {i: w for i, w in self.workers.items() if w.agent_id == agent_id}
            if agent_id in self.registered:
                spec, vector = self.registered[agent_id]
                capacity = max(1, spec.capacity)
                available = not workers or any(w.available for w in workers.values())
                running = sum(w.running for w in workers.values())
            else:
                first = next(iter(workers.values()))  # a worker card is its first worker's card
                spec, vector = first.spec, first.vector
                taking = [w for w in workers.values() if w.available]
                counted = taking or list(workers.values())  # a draining worker's room no longer counts
                capacity = max(1, sum(w.capacity for w in counted))
                available = bool(taking)
                running = sum(w.running for w in counted)
            cards[agent_id] = _Card(
                agent_id,
                spec,
                agent_id in self.registered,
                vector,
                running,
                capacity,
                available,
                tuple(workers),
            )
        return cards

    def served(self) -> frozenset[str]:
        """The capabilities a card offers and one of its workers taking work declared."""
        cards = self.cards()
        return frozenset(
            capability
            for capability in CAPABILITIES
            if any(
                capability in card.capabilities
                and any(
                    self.workers[w].available and capability in self.workers[w].declared
                    for w in card.worker_ids
                )
                for card in cards.values()
            )
        )


@dataclass(frozen=True)
class _Entry:
    card: _Card
    similarity: float
    score: float
    key: tuple[float | str, ...]


@dataclass(frozen=True)
class _Expected:
    """What a query must answer: ``kind`` routed, below (include_below_threshold) or none (NoRouteError)."""

    kind: str
    ranked: list[_Entry]
    entries: dict[str, _Entry]
    """Every entry the answer may hold (near ties may swap), by agent_id."""
    floats: frozenset[int]
    """The positions of similarities and scores in the keys: the only ones a near tie may swap."""
    cheapest: int = 0


@dataclass(frozen=True)
class _Ask:
    """A query's parameters as the model resolves them (defaults filled in)."""

    mode: RouteMode
    threshold: float
    weight: float
    top_k: int
    exclude: frozenset[str] = frozenset()
    required: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    include_unavailable: bool = False
    include_below: bool = False
    capable_only: bool = False


def expected(cards: Mapping[str, _Card], query: Vector, ask: _Ask) -> _Expected:
    """The answer by brute force over every card."""
    eligible = [
        card
        for card in cards.values()
        if card.agent_id not in ask.exclude
        and card.capabilities.issuperset(ask.required)
        and all(card.spec.labels.get(k) == v for k, v in ask.labels.items())
        and (card.capabilities or not ask.capable_only)
        and (card.available or ask.include_unavailable)
    ]
    similarity = {card.agent_id: float(card.vector @ query) for card in eligible}
    above = [card for card in eligible if similarity[card.agent_id] >= ask.threshold - TOLERANCE]
    if above:
        highest = max(card.spec.cost_per_call_micro_usd for card in above)
        entries = []
        for card in above:
            sim = similarity[card.agent_id]
            score = sim
            if ask.mode is RouteMode.COST_BIASED:
                cheapness = 1.0 - card.spec.cost_per_call_micro_usd / highest if highest > 0 else 1.0
                score = (1.0 - ask.weight) * sim + ask.weight * cheapness
            key = (card.tier, -score, -sim, card.load, card.agent_id)
            entries.append(_Entry(card, sim, score, key))
        entries.sort(key=lambda e: e.key)
        cheapest = min(card.spec.cost_per_call_micro_usd for card in above)
        return _Expected("routed", entries[: ask.top_k], _by_id(entries), frozenset({1, 2}), cheapest)
    if ask.include_below:
        entries = [
            _Entry(c, s, s, (c.tier, -s, c.load, c.agent_id))
            for c in eligible
            for s in (similarity[c.agent_id],)
        ]
        entries.sort(key=lambda e: e.key)
        return _Expected("below", entries[: ask.top_k], _by_id(entries), frozenset({1}))
    entries = [_Entry(c, s, s, (-s, c.agent_id)) for c in eligible for s in (similarity[c.agent_id],)]
    entries.sort(key=lambda e: e.key)
    return _Expected("none", entries[:3], _by_id(entries), frozenset({0}))


def _by_id(entries: list[_Entry]) -> dict[str, _Entry]:
    return {e.card.agent_id: e for e in entries}


def _near_tie(a: _Entry, b: _Entry, floats: frozenset[int]) -> bool:
    """Whether the router may rank ``a`` and ``b`` either way: their similarities are within float32 rounding.

    So when the keys first differ on a similarity or score, by no more than
    that; or later (load, agent_id) with the similarities and scores equal
    here, in float64, but of two different vectors: the router's float32
    dot products of those may differ in the last bit (the lexical
    embedder's "travel" and "flight" against "travel flight"), and then
    they decide before load and agent_id. Cards of one vector tie exactly
    in the router too.
    """
    for position, (x, y) in enumerate(zip(a.key, b.key, strict=True)):
        if x != y:
            if position in floats:
                return abs(float(x) - float(y)) <= TOLERANCE
            return min(floats) < position and not np.array_equal(a.card.vector, b.card.vector)
    return True


def _described(query: RouteQuery) -> str:
    """The query for a failure message: its fields, the vector by a digest."""
    fields = msgspec.structs.asdict(query)
    if query.vector is not None:
        fields["vector"] = hashlib.blake2b(query.vector, digest_size=4).hexdigest()
    return repr({k: v for k, v in fields.items() if v or k == "top_k"})


def _capability(spec: AgentSpec, required: Sequence[str]) -> str:
    return next(
        (c for c in spec.capabilities if c in required), spec.capabilities[0] if spec.capabilities else ""
    )


@dataclass
class _Stats:
    answers: Counter[str] = field(default_factory=Counter)
    near_ties: int = 0
    restored: int = 0
    rebuilds: int = 0
    most_cards: int = 0


def check_answer(
    got: RouteResult | NoRouteError, want: _Expected, ask: _Ask, stats: _Stats, where: str
) -> list[str]:
    """Compares one answer with the model's; returns its agent ids."""
    stats.answers[want.kind] += 1
    if want.kind == "none":
        assert isinstance(got, NoRouteError), f"{where}: {got} where the model has no route"
        assert got.threshold == ask.threshold, where
        ids = [agent_id for agent_id, _ in got.best_below]
        _check_order(ids, want, stats, where)
        for agent_id, similarity in got.best_below:
            assert similarity == pytest.approx(want.entries[agent_id].similarity, abs=TOLERANCE), where
        return ids
    assert isinstance(got, RouteResult), f"{where}: {got!r} where the model has {want.ranked[:3]}"
    assert (got.mode, got.threshold) == (ask.mode, ask.threshold), where
    ids = [c.agent_id for c in got.candidates]
    _check_order(ids, want, stats, where)
    for candidate in got.candidates:
        _check_candidate(candidate, want, ask, where)
    return ids


def _check_order(ids: list[str], want: _Expected, stats: _Stats, where: str) -> None:
    """The answer's ids are the model's, in its order, but for near ties (``_near_tie``) either way.

    Each pair the answer holds in the other order than the model, and each
    card the model ranks in while the answer leaves it out for one it ranks
    after, must be a near tie.
    """
    wanted = [e.card.agent_id for e in want.ranked]
    assert len(ids) == len(set(ids)) == len(wanted), f"{where}: {ids} != {wanted}"
    for got_id in ids:
        assert got_id in want.entries, f"{where}: {got_id} is not eligible ({ids} != {wanted})"
    got = [want.entries[i] for i in ids]
    left_out = [e for e in want.ranked if e.card.agent_id not in ids]
    for position, entry in enumerate(got):
        for later in [*got[position + 1 :], *left_out]:
            if later.key < entry.key:
                assert _near_tie(entry, later, want.floats), f"{where}: {ids} != {wanted}"
                stats.near_ties += 1


def _check_candidate(candidate: RouteCandidate, want: _Expected, ask: _Ask, where: str) -> None:
    entry = want.entries[candidate.agent_id]
    card = entry.card
    where = f"{where}, {candidate.agent_id}"
    assert candidate.similarity == pytest.approx(entry.similarity, abs=TOLERANCE), where
    assert candidate.score == pytest.approx(entry.score, abs=TOLERANCE), where
    assert candidate.above_threshold == (want.kind == "routed"), where
    assert (candidate.cost_per_call_micro_usd, candidate.load, candidate.available) == (
        card.spec.cost_per_call_micro_usd,
        card.load,
        card.available,
    ), where
    assert candidate.capability == _capability(card.spec, ask.required), where
    if want.kind == "below":
        assert candidate.reason.startswith("below threshold"), where
    elif ask.mode is RouteMode.BEST_MATCH:
        assert candidate.reason.startswith("similarity "), where
    else:
        cheapest = card.spec.cost_per_call_micro_usd == want.cheapest
        assert candidate.reason.startswith("cheapest above") == cheapest, where
    state = "; unavailable" if not card.available else "; at capacity" if card.load >= 1.0 else "; load "
    assert state in candidate.reason, where


# --------------------------------------------------------------- the engine


@dataclass
class _Engine:
    """The router over one data folder, opened and closed as the sidecar does."""

    folder: Path
    settings: RouterSettings
    embedder: TopicEmbedder
    storage: Storage | None = None
    committer: GroupCommitter | None = None

    async def open(self) -> Router:
        self.storage = Storage.open(self.folder / "data", tables=TABLES)
        self.committer = GroupCommitter(self.storage)
        router = Router(
            self.storage,
            self.committer,
            dimension=DIMENSION,
            embedder=self.embedder,
            index_factory=new_router_index,
            settings=self.settings,
            index_dir=self.folder / "router",
            restore_index=_restore_index,
        )
        await router.load()
        return router

    async def close(self, router: Router, *, clean: bool) -> int:
        """Stops the router; a clean stop saves its indexes (returns how many), a crash does not."""
        await router.aclose()
        saved = router.save_indexes() if clean else 0
        assert self.committer is not None and self.storage is not None
        await self.committer.aclose()
        self.storage.close()
        return saved


@contextlib.contextmanager
def _ranking(native: ModuleType | None) -> Iterator[None]:
    """The C ranking loop, or numpy when None, for the calls made inside."""
    saved = router_engine._native
    router_engine._native = native
    try:
        yield
    finally:
        router_engine._native = saved


def _loops() -> list[ModuleType | None]:
    """Every ranking loop present: each query is answered by each, on the same state."""
    return [NATIVE, None] if NATIVE is not None else [None]


# ---------------------------------------------------------------- the driver


class _Run:
    def __init__(self, seed: int, rebuild_changes: int, folder: Path) -> None:
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        self.centres = np.stack([_unit(rng.normal(size=DIMENSION)) for _ in range(CENTRES)])
        self.embedder = TopicEmbedder(self.centres)
        self.settings = RouterSettings(
            threshold=float(rng.choice([0.5, 0.7])),
            cost_weight=float(rng.choice([0.5, 1.0])),
            mode=RouteMode(rng.choice(list(RouteMode))),
            index_rebuild_changes=rebuild_changes,
        )
        self.model = Model(self.embedder, self.settings)
        self.engine = _Engine(folder, self.settings, self.embedder)
        self.stats = _Stats()
        self.worker_serial = 0
        self.step = 0

    def pick(self, items: Sequence[str]) -> str:
        return str(items[int(self.rng.integers(len(items)))])

    def capabilities(self, most: int = 2) -> tuple[str, ...]:
        count = int(self.rng.integers(0, most + 1))
        return tuple(str(c) for c in self.rng.choice(CAPABILITIES, size=count, replace=False))

    def raw_vector(self, *, spread: float | None = None) -> bytes:
        """A vector near a centre (or anywhere), unnormalised: the engine normalises it."""
        rng = self.rng
        if rng.random() < 0.1:
            direction = rng.normal(size=DIMENSION)
        else:
            sigma = spread if spread is not None else float(rng.choice([0.02, 0.05, 0.08]))
            direction = self.centres[int(rng.integers(CENTRES))] + rng.normal(0, sigma, DIMENSION)
        return (direction * rng.uniform(0.5, 3.0)).astype(np.float32).tobytes()

    def existing_vector(self) -> bytes | None:
        """The very vector of a card held now (equal similarities: ties for load and agent_id)."""
        specs = [s for s, _ in self.model.registered.values()] + [w.spec for w in self.model.workers.values()]
        vectors = [s.vector for s in specs if s.vector is not None]
        return vectors[int(self.rng.integers(len(vectors)))] if vectors else None

    def spec(self, agent_id: str, previous: AgentSpec | None = None) -> AgentSpec:
        rng = self.rng
        roll = rng.random()
        if previous is not None and roll < 0.3:
            vector = previous.vector  # replaced, same vector
        elif roll < 0.45:
            vector = self.existing_vector() or self.raw_vector()
        elif roll < 0.55:
            vector = None  # embedded from the description
        else:
            vector = self.raw_vector()
        labels: dict[str, str] = {}
        if rng.random() < 0.6:
            labels["region"] = self.pick(("eu", "us"))
        if rng.random() < 0.2:
            labels["tier"] = "gold"
        topic = int(rng.integers(CENTRES))
        return AgentSpec(
            agent_id=agent_id,
            display_name=agent_id.upper() if rng.random() < 0.5 else "",
            description=f"topic {topic} {agent_id}" if rng.random() < 0.8 else "",
            capabilities=self.capabilities(),
            vector=vector,
            cost_per_call_micro_usd=int(rng.choice(COSTS)),
            capacity=int(rng.integers(0, 4)),
            labels=labels,
        )

    # -- operations -------------------------------------------------------

    async def register(self, router: Router) -> None:
        rng = self.rng
        cards = self.model.cards()
        worker_cards = [i for i, c in cards.items() if not c.registered]
        # Now and then a registration over a worker's card.
        agent_id = self.pick(worker_cards) if worker_cards and rng.random() < 0.15 else self.pick(CARD_IDS)
        previous = self.model.registered.get(agent_id)
        carded = previous is not None or agent_id in cards  # a worker's card counts (router_service.proto)
        spec = self.spec(agent_id, previous[0] if previous else None)
        _, new = await router.register_agent(spec)
        assert new == (not carded), self.where
        self.model.register(spec)

    async def deregister(self, router: Router) -> None:
        registered = sorted(self.model.registered)
        if not registered or self.rng.random() < 0.1:
            agent_id = self.pick(CREW_IDS)
            if agent_id not in self.model.registered:
                with pytest.raises(AgentNotFoundError):
                    await router.deregister_agent(agent_id)
                return
        else:
            agent_id = self.pick(registered)
        await router.deregister_agent(agent_id)
        self.model.deregister(agent_id)

    async def connect(self, router: Router) -> None:
        rng = self.rng
        registered = sorted(self.model.registered)
        name = self.pick(registered) if registered and rng.random() < 0.5 else self.pick(CREW_IDS)
        card = self.spec(name) if rng.random() < 0.6 else None
        if card is not None and rng.random() < 0.3:
            card = msgspec.structs.replace(card, capabilities=())  # then it offers what it declares
        self.worker_serial += 1
        worker_id = f"w{self.worker_serial:03d}"
        declared = self.capabilities(3)
        running, capacity = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        available = bool(rng.random() < 0.85)
        before = self.model.served()
        changed = router.update_worker(
            worker_id,
            name=name,
            capabilities=declared,
            running=running,
            capacity=capacity,
            available=available,
            card=card,
        )
        self.model.connect(
            worker_id,
            name=name,
            declared=declared,
            running=running,
            capacity=capacity,
            available=available,
            card=card,
        )
        assert changed == before ^ self.model.served(), f"{self.where}: connect {worker_id} to {name}"

    async def update(self, router: Router) -> None:
        if not self.model.workers:
            return
        rng = self.rng
        worker_id = self.pick(list(self.model.workers))
        worker = self.model.workers[worker_id]
        running, capacity = int(rng.integers(0, 5)), int(rng.integers(0, 4))
        available = bool(rng.random() < 0.75)
        before = self.model.served()
        changed = router.update_worker(
            worker_id,
            name=worker.agent_id,
            capabilities=tuple(worker.declared),
            running=running,
            capacity=capacity,
            available=available,
        )
        worker.running, worker.capacity, worker.available = max(0, running), max(1, capacity), available
        assert changed == before ^ self.model.served(), f"{self.where}: update {worker_id}"

    async def disconnect(self, router: Router) -> None:
        if not self.model.workers:
            return
        worker_id = self.pick(list(self.model.workers))
        worker = self.model.workers[worker_id]
        if worker.available and self.rng.random() < 0.5:  # drained first, as a worker should be
            before = self.model.served()
            changed = router.update_worker(
                worker_id, name=worker.agent_id, capabilities=tuple(worker.declared), available=False
            )
            worker.available = False
            assert changed == before ^ self.model.served(), f"{self.where}: drain {worker_id}"
        before = self.model.served()
        changed = router.remove_worker(worker_id)
        del self.model.workers[worker_id]
        assert changed == before ^ self.model.served(), f"{self.where}: remove {worker_id}"

    async def restart(self, router: Router, *, clean: bool | None = None) -> Router:
        if clean is None:
            clean = bool(self.rng.random() < 0.6)
        model = self.model
        saves_agents = all(card.registered for card in model.cards().values())
        self.stats.rebuilds += router.index_rebuilds
        saved = await self.engine.close(router, clean=clean)
        if clean:
            assert saved == int(saves_agents), self.where  # worker cards are live: never saved
            model.saved_version = model.version if saves_agents else None
        model.workers.clear()  # workers reconnect to a new process
        router = await self.engine.open()
        restored = int(model.saved_version == model.version)
        assert router.restored_indexes == restored, f"{self.where}: clean={clean}"
        self.stats.restored += restored
        self.check_cards(router)
        return router

    def ask(self) -> tuple[RouteQuery, _Ask, Vector]:
        rng = self.rng
        settings = self.settings
        roll = rng.random()
        text: str | None = None
        raw: bytes | None = None
        if roll < 0.1:
            text = f"topic {int(rng.integers(CENTRES))} task {self.step}"
            vector = _unit(self.embedder.vector(text))
        else:
            if roll < 0.25:
                raw = self.existing_vector()
            elif roll < 0.4:
                raw = (rng.normal(size=DIMENSION)).astype(np.float32).tobytes()  # far from every card
            raw = raw or self.raw_vector(spread=float(rng.choice([0.02, 0.05, 0.1])))
            vector = _unit(np.frombuffer(raw, dtype=np.float32))
        mode = RouteMode(rng.choice(list(RouteMode))) if rng.random() < 0.8 else None
        threshold: float | None = None
        roll = rng.random()
        if roll < 0.55:
            threshold = float(np.round(rng.uniform(0.45, 0.97), 3))
        elif roll < 0.65:
            threshold = float(rng.choice([0.0, 0.3, 1.0]))
        similarities = [float(c.vector @ vector) for c in self.model.cards().values()]
        chosen = settings.threshold if threshold is None else threshold
        while any(abs(s - (chosen - TOLERANCE)) < AMBIGUOUS for s in similarities):
            chosen = threshold = chosen + 2 * AMBIGUOUS  # an exact threshold decision, on either side
        weight = float(rng.choice([0.0, 0.25, 0.5, 1.0, rng.uniform()])) if rng.random() < 0.7 else None
        cards = sorted(self.model.cards())
        exclude = (
            frozenset(self.pick(cards) for _ in range(int(rng.integers(0, 3)))) if cards else frozenset()
        )
        required = self.capabilities(2) if rng.random() < 0.3 else ()
        labels = {"region": self.pick(("eu", "us"))} if rng.random() < 0.2 else {}
        top_k = int(rng.choice([0, 1, 1, 2, 3, 5, 8, 20]))
        query = RouteQuery(
            text=text,
            vector=raw if text is None else None,
            top_k=top_k,
            mode=mode,
            threshold=threshold,
            cost_weight=weight,
            exclude_agent_ids=exclude,
            required_capabilities=required,
            labels=labels,
            include_unavailable=bool(rng.random() < 0.3),
            include_below_threshold=bool(rng.random() < 0.3),
        )
        ask = _Ask(
            mode=mode or settings.mode,
            threshold=chosen,
            weight=settings.cost_weight if weight is None else weight,
            top_k=max(1, top_k),
            exclude=exclude,
            required=required,
            labels=labels,
            include_unavailable=query.include_unavailable,
            include_below=query.include_below_threshold,
        )
        return query, ask, vector

    async def route(self, router: Router) -> None:
        query, ask, vector = self.ask()
        want = expected(self.model.cards(), vector, ask)
        answers = []
        for native in _loops():
            where = f"{self.where}: {'C' if native else 'numpy'} {_described(query)}"
            with _ranking(native):
                try:
                    got: RouteResult | NoRouteError = (
                        await router.route_task(query) if native else router.rank(query)
                    )
                except NoRouteError as error:
                    got = error
            answers.append(check_answer(got, want, ask, self.stats, where))
        for ids in answers[1:]:  # the C loop and numpy: the same agents, in the same order
            assert all(
                a == b or _near_tie(want.entries[a], want.entries[b], want.floats)
                for a, b in zip(ids, answers[0], strict=True)
            ), f"{self.where}: {answers}"

    async def intent(self, router: Router) -> None:
        rng = self.rng
        text = f"topic {int(rng.integers(CENTRES))} intent {self.step}"
        cards = sorted(self.model.cards())
        exclude = frozenset({self.pick(cards)}) if cards and rng.random() < 0.3 else frozenset()
        required = self.capabilities(1) if rng.random() < 0.3 else ()
        settings = self.settings
        ask = _Ask(
            mode=RouteMode.COST_BIASED,
            threshold=settings.threshold,
            weight=settings.cost_weight,
            top_k=8,
            exclude=exclude,
            required=required,
            capable_only=True,
        )
        vector = _unit(self.embedder.vector(text))
        if any(
            abs(float(c.vector @ vector) - (ask.threshold - TOLERANCE)) < AMBIGUOUS
            for c in self.model.cards().values()
        ):
            return  # the router's own threshold: not moved
        want = expected(self.model.cards(), vector, ask)
        served = self.model.served()
        for native in _loops():
            where = f"{self.where}: intent {text!r}, {'C' if native else 'numpy'}"
            with _ranking(native):
                if want.kind == "none":
                    with pytest.raises(NoRouteError) as raised:
                        router.route_for_intent(
                            text, exclude_agent_ids=exclude, required_capabilities=required
                        )
                    check_answer(raised.value, want, ask, self.stats, where)
                    continue
                got = router.route_for_intent(text, exclude_agent_ids=exclude, required_capabilities=required)
            # The first of the best eight whose capability a worker serves, else the best.
            pick = next(
                (e for e in want.ranked if _capability(e.card.spec, required) in served), want.ranked[0]
            )
            if got.agent_id != pick.card.agent_id:
                assert got.agent_id in want.entries, where
                assert _near_tie(want.entries[got.agent_id], pick, want.floats), f"{where}: {got.agent_id}"
            _check_candidate(got, want, ask, where)

    def check_cards(self, router: Router) -> None:
        """The cards, their live fields, what is served and the index's size, as the model has them."""
        cards = self.model.cards()
        assert router.agent_count == len(cards), self.where
        page, _ = router.list_agents(limit=1000)
        assert [v.spec.agent_id for v in page] == sorted(cards), self.where
        for view in page:
            card = cards[view.spec.agent_id]
            assert view.spec == card.spec, self.where
            assert (view.available, view.running, view.capacity) == (
                card.available,
                card.running,
                card.capacity,
            ), f"{self.where}: {card.agent_id}"
            assert view.worker_ids == tuple(sorted(card.worker_ids)), self.where
        assert {c for c in CAPABILITIES if router.serves(c)} == self.model.served(), self.where
        # Every card has a vector (there is an embedder): the index holds exactly one per card.
        assert len(router._index) == len(cards), self.where

    @property
    def where(self) -> str:
        return f"step {self.step}"

    async def settle(self, router: Router) -> None:
        """Lets a background rebuild of the index finish meanwhile."""
        del router
        await asyncio.sleep(0.002)

    async def restarts(self, router: Router) -> Router:
        router = await self.restart(router)
        if self.rng.random() < 0.3:  # at once again: the index saved now matches LMDB
            router = await self.restart(router, clean=True)
        return router

    async def run(self, operations: int) -> _Stats:
        steps: dict[str, tuple[float, Callable[[Router], Awaitable[Router | None]]]] = {
            "register": (20, self.register),
            "deregister": (4, self.deregister),
            "connect": (7, self.connect),
            "update": (10, self.update),
            "disconnect": (5, self.disconnect),
            "restart": (1, self.restarts),
            "route": (40, self.route),
            "intent": (8, self.intent),
            "settle": (2, self.settle),
        }
        kinds = list(steps)
        weights = np.array([weight for weight, _ in steps.values()])
        router = await self.engine.open()
        try:
            for _ in range(POPULATION):  # past the first search's 64 candidates soon
                await self.register(router)
            for self.step in range(operations):
                kind = kinds[int(self.rng.choice(len(kinds), p=weights / weights.sum()))]
                self.stats.answers[f"op:{kind}"] += 1
                router = await steps[kind][1](router) or router
                self.stats.most_cards = max(self.stats.most_cards, len(self.model.cards()))
                if kind not in {"route", "intent"}:
                    self.check_cards(router)
        finally:
            self.stats.rebuilds += router.index_rebuilds
            await self.engine.close(router, clean=False)
        return self.stats


@pytest.mark.parametrize(("seed", "rebuild_changes"), SEEDS)
async def test_route_task_answers_as_a_brute_force_model(
    seed: int, rebuild_changes: int, tmp_path: Path, ranking_loop: str
) -> None:
    if ranking_loop == "numpy" and NATIVE is not None:
        pytest.skip("each query is answered by the C loop and by numpy in the 'c' run")
    stats = await _Run(seed, rebuild_changes, tmp_path).run(OPERATIONS)
    # What was probed: each kind of answer, several times.
    assert stats.answers["routed"] >= 20, stats
    assert stats.answers["none"] >= 5, stats
    assert stats.answers["below"] >= 5, stats
    # Past the first search's candidates (deepened), below the size the index scans exactly.
    assert router_engine._FIRST_SEARCH < stats.most_cards < EXACT_SEARCH_BELOW, stats
