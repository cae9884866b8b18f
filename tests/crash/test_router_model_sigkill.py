"""A real sidecar against a brute-force model of the router: random calls, some concurrent, SIGKILL, restarts.

Each seed drives one sidecar over gRPC, restarted as it goes on one data
folder: card registrations (new and replacing; with a vector, the same
vector as another card's, or embedded from the description; varied
capabilities, labels, costs and capacities), deregistrations, catalog puts,
RouteModel with ReportOutcome (success or a score, for the chosen model or
another), RouteTask with filters, modes, exclusions, top_k and
include_below_threshold, groups of calls run together, calls abandoned by
the client, clean restarts (the router saves its indexes at a clean stop
only: ``Router.save_indexes``, called by the capability's ``stop``), SIGKILL
(idle, with calls in flight, during a clean stop's save, and right after a
burst of registrations past ``index_rebuild_changes``, which rebuilds the
agents index in the background).

The reference is the brute-force model of ``tests/unit/router/test_model_random.py``
(its cards, ranking and answer checks), fed with the sidecar's lexical
embedder; RouteModel's estimates are computed here by brute force over the
acknowledged outcomes. Every answer is compared exactly (ids, order,
similarities and scores within float tolerance, the threshold flag). After
every restart: every card is listed exactly as the model has it, a card
whose call was in flight at the kill wholly as before or wholly as sent
(the model then takes what is there), each card's own vector finds it and a
removed card's vector does not, the catalog is the last acknowledged one,
and RouteModel's estimates count exactly the acknowledged outcomes (an
outcome whose report was in flight is resolved by reporting it again:
ALREADY_EXISTS means it was stored).

Stream workers (the raw WorkerService stream) connect declaring
capabilities, some with a card of their own, some sharing a card with
another worker or with a registered card; they take tasks of their
capabilities and complete them, drain and disconnect (half-closing, or
cancelling the stream), and are connected at SIGKILLs and clean stops
(they half-close when told the sidecar drains). While connected each
shows in ListAgents and RouteTask as the model derives it
(``Model.connect``: its card's fields, ``source`` worker unless
registered, availability, running of capacity, worker ids); once its
stream has ended (a half-close is answered after the sidecar let it go)
it is gone from its card at once, and a worker card with no worker left
is gone; a restart leaves the registered cards only, none of them with
workers. A stream cancelled by the client is let go when the sidecar
notices: that one is waited for (bounded), then checked the same.
Tasks are submitted only for a capability with a free worker (so none
waits in a queue), with one attempt (a lost worker fails them, none comes
back), and every workflow is cancelled after each restart.

``ARE_ROUTER_CRASH_SEEDS`` (comma-separated) and ``ARE_ROUTER_CRASH_STEPS``
run more offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf import duration_pb2

from are_core.embed import LexicalEmbedder
from are_core.router import (
    AgentSpec,
    ModelSpec,
    RouteCandidate,
    RouteMode,
    RouteResult,
    RouterSettings,
)
from are_sdk import (
    AgentCard,
    AlreadyExistsError,
    Client,
    ClientClosedError,
    FailedPreconditionError,
    NotFoundError,
    RpcError,
)
from are_sdk import ModelSpec as SdkModelSpec
from are_sdk._proto.are.v1 import agent_pb2, common_pb2, task_pb2, workflow_pb2
from are_sdk._proto.are.v1 import scheduler_service_pb2 as scheduler_pb
from are_sdk._proto.are.v1 import worker_service_pb2 as worker_pb
from are_sdk.testing import SidecarProcess
from tests.unit.router.test_model_random import (
    AMBIGUOUS,
    CAPABILITIES,
    COSTS,
    CREW_IDS,
    TOLERANCE,
    Model,
    _Ask,
    _check_order,
    _Expected,
    _Stats,
    _unit,
    check_answer,
    expected,
)

DIMENSION = 32
CENTRES = 4
CARD_IDS = tuple(f"card-{i:02d}" for i in range(90))
MODEL_IDS = ("m-tiny", "m-small", "m-mid", "m-large", "m-huge")
WORDS = (
    "invoice",
    "contract",
    "legal",
    "translate",
    "summary",
    "code",
    "review",
    "travel",
    "flight",
    "hotel",
)
PRICES = (0, 100, 1_000, 5_000, 20_000)
PRIORS = (0.0, 0.3, 0.6, 0.85, 0.95)
# Outcomes per model at most: RouteModel's index search takes twice the 16
# neighbours it weighs (32), all of them below this, so its estimates are exact.
OUTCOMES_PER_MODEL = 26
# The burst: replacements past index_rebuild_changes (1,024) start a background rebuild.
BURST = 1_100
POPULATION = 70
DEFAULT_TOP_K = 5
SEEDS = [int(s) for s in os.environ.get("ARE_ROUTER_CRASH_SEEDS", "1,2,3").split(",") if s.strip()]
STEPS = int(os.environ.get("ARE_ROUTER_CRASH_STEPS", "150"))
# A bound on a seed's steps in wall time (the run stops taking steps past it).
SECONDS_PER_STEP = 1.0
# Errors of a call whose connection died or was cancelled: its effect is unknown.
LOST_CODES = frozenset({"UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED"})
_BEST_BELOW = re.compile(r"([A-Za-z0-9._:-]+) \((-?\d+\.\d+)\)")
_RESTORED = re.compile(r"restored_indexes=(\d+)")

# Stream workers connected at once at most, and the wait for what a step awaits of them.
MOST_WORKERS = 6
WORKER_WAIT_S = 15.0
# Stream workers ping this often: the sidecar ends a stream silent for 30 seconds.
PING_S = 3.0

Vector32 = npt.NDArray[np.float32]
_Key = tuple[str, str, int]
# A heartbeat for no attempt: the sidecar refuses it on the stream, after what was sent before.
_BARRIER: _Key = ("wf-barrier", "barrier", 1)
BARRIER = AgentSpec(agent_id="zz-barrier", description="barrier", capabilities=("cap-a",))


class _Lexical:
    """The sidecar's embedder (``--router-embedder lexical:32``) in this process, for the model."""

    def __init__(self) -> None:
        self._embedder = LexicalEmbedder(DIMENSION)
        self._cache: dict[str, Vector32] = {}

    def vector(self, text: str) -> Vector32:
        cached = self._cache.get(text)
        if cached is None:
            cached = self._cache[text] = np.asarray(self._embedder.embed([text])[0], dtype=np.float32)
        return cached


def _normalised(raw: Vector32) -> Vector32:
    """A vector as the router normalises a query (``Router._check_vector``)."""
    norm = np.float32(np.sqrt(float(raw @ raw)))
    return (raw / norm).astype(np.float32)


# ---------------------------------------------------------------- writes


@dataclass(frozen=True)
class Register:
    spec: AgentSpec
    previous: AgentSpec | None


@dataclass(frozen=True)
class Deregister:
    agent_id: str
    previous: AgentSpec | None


@dataclass(frozen=True)
class PutCatalog:
    models: tuple[ModelSpec, ...]
    previous: tuple[ModelSpec, ...] | None


@dataclass(frozen=True)
class Report:
    route_id: str
    model_id: str  # "" for the chosen one
    success: bool | None
    score: float | None


Write = Register | Deregister | PutCatalog | Report


@dataclass
class _Route:
    model_id: str
    vector: Vector32  # as the router stored it: the normalised float32 query
    reported: bool = False


def _card_fields(spec: AgentSpec) -> tuple[Any, ...]:
    vector = None if spec.vector is None else tuple(np.frombuffer(spec.vector, dtype=np.float32).tolist())
    return (
        spec.display_name,
        spec.description,
        tuple(spec.capabilities),
        vector,
        spec.cost_per_call_micro_usd,
        spec.typical_latency_ns,
        spec.capacity,
        dict(spec.labels),
    )


def _listed_fields(card: AgentCard) -> tuple[Any, ...]:
    latency = card.typical_latency
    return (
        card.display_name,
        card.description,
        tuple(card.capabilities),
        None if card.vector is None else tuple(card.vector),
        card.cost_per_call_micro_usd,
        0 if latency is None else round(latency / timedelta(microseconds=1)) * 1000,
        card.capacity,
        dict(card.labels),
    )


def _catalog_fields(models: Sequence[ModelSpec | SdkModelSpec]) -> list[tuple[Any, ...]]:
    return [
        (
            m.model_id,
            m.tier,
            m.input_cost_per_million_tokens_micro_usd,
            m.output_cost_per_million_tokens_micro_usd,
            m.prior_success_rate,
            m.context_window_tokens,
            dict(m.labels),
        )
        for m in models
    ]


def _lost(error: BaseException) -> bool:
    """Whether a call's failure leaves its effect unknown (the connection died, or it was cancelled).

    A call in flight when its client closed (after a kill) raises ClientClosedError.
    """
    if isinstance(error, asyncio.CancelledError | ClientClosedError):
        return True
    return isinstance(error, RpcError) and error.code.name in LOST_CODES


@dataclass(frozen=True)
class _NoRoute:
    """A RouteTask answered NO_ROUTE_ABOVE_THRESHOLD (a value: gather keeps it apart from failures)."""

    error: NotFoundError


@dataclass(frozen=True)
class _Query:
    """A RouteTask call: its arguments, and the model's reading of them."""

    task: str | list[float]
    vector: npt.NDArray[np.float64]  # the query as the model compares it (unit)
    kwargs: dict[str, Any]
    ask: _Ask


class _WorkerStream:
    """One raw WorkerService stream: a reader feeding the run's inbox, a pinger, one write at a time."""

    def __init__(
        self, call: Any, worker_id: str, declared: tuple[str, ...], inbox: asyncio.Queue[Any]
    ) -> None:
        self.call = call
        self.worker_id = worker_id
        self.declared = declared
        self.held: dict[_Key, worker_pb.TaskAssignment] = {}
        self.acked: set[_Key] = set()
        self.ended = asyncio.Event()
        self._inbox = inbox
        self._lock = asyncio.Lock()
        self._half_closed = False
        self._leaving: asyncio.Future[None] | None = None
        self._reader = asyncio.ensure_future(self._read())
        self._pinger = asyncio.ensure_future(self._ping())

    async def write(self, request: worker_pb.ConnectRequest) -> None:
        async with self._lock:
            if not self._half_closed and not self.ended.is_set():
                await self.call.write(request)

    async def half_close(self) -> None:
        """Ends the worker's side of the stream (the sidecar then lets the worker go and ends its side)."""
        async with self._lock:
            if not self._half_closed and not self.ended.is_set():
                self._half_closed = True
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await self.call.done_writing()

    async def _read(self) -> None:
        try:
            while True:
                message = await self.call.read()
                if message is grpc.aio.EOF:
                    return
                if message.WhichOneof("message") == "drain":  # the sidecar stops: as a worker would, leave
                    self._leaving = asyncio.ensure_future(self.half_close())
                self._inbox.put_nowait((self, message))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the sidecar went away, or the stream was cancelled
        finally:
            self.ended.set()
            self._pinger.cancel()
            self._inbox.put_nowait((self, None))

    async def _ping(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                await asyncio.sleep(PING_S)
                await self.write(worker_pb.ConnectRequest(heartbeat=worker_pb.HeartbeatBatch()))

    async def close(self) -> None:
        """Cancels the stream (whatever state it is in) and waits for its tasks."""
        self.call.cancel()
        self._pinger.cancel()
        await asyncio.gather(self._reader, self._pinger, return_exceptions=True)


# ---------------------------------------------------------------- the run


class Run:
    """One seed against one data folder: the sidecar (restarted as it goes), the model, the calls."""

    def __init__(self, data: Path, seed: int) -> None:
        self.data = data
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        self.centres = np.stack([_unit(rng.normal(size=DIMENSION)) for _ in range(CENTRES)])
        self.settings = RouterSettings(
            threshold=float(rng.choice([0.5, 0.7])),
            cost_weight=float(rng.choice([0.5, 1.0])),
            mode=RouteMode(rng.choice(list(RouteMode))),
            model_exploration=0.0,
        )
        self.args = [
            "--router-embedder",
            f"lexical:{DIMENSION}",
            "--router-threshold",
            str(self.settings.threshold),
            "--router-cost-weight",
            str(self.settings.cost_weight),
            "--router-mode",
            self.settings.mode.value.lower(),
            "--router-model-exploration",
            "0",
        ]
        if seed % 3 == 0:  # a stop cancels the calls still running at once (their commits go on)
            self.args += ["--shutdown-grace-s", "0.001"]
        self.model = Model(_Lexical(), self.settings)
        self.catalog: tuple[ModelSpec, ...] | None = None
        self.outcomes: dict[str, list[tuple[Vector32, float]]] = {}
        self.routes: dict[str, _Route] = {}
        self.gone: dict[str, AgentSpec] = {}  # removed cards' last specs: their vectors must not find them
        self.stats = _Stats()
        self.counts: Counter[str] = Counter()
        self.log: list[str] = []
        self.step = 0
        self.process: SidecarProcess | None = None
        self.client: Client | None = None
        self.streams: dict[str, _WorkerStream] = {}  # the connected stream workers, by worker_id
        self.inbox: asyncio.Queue[tuple[_WorkerStream, Any]] = asyncio.Queue()
        self.workflows: list[str] = []  # submitted and not yet cancelled after a restart

    # -- process ----------------------------------------------------------

    async def start(self) -> int:
        """Starts the sidecar on the data folder; returns how many indexes it restored from files."""
        self.process = SidecarProcess.start(data_dir=self.data, args=self.args)
        self.client = await Client.connect(self.process.target)
        found = _RESTORED.findall(self.process.log_text())
        # No task of before waits for the workers to come (nor is re-dispatched to one).
        for workflow_id in self.workflows:
            with contextlib.suppress(FailedPreconditionError, NotFoundError):
                await self.client.raw.scheduler.CancelWorkflow(
                    scheduler_pb.CancelWorkflowRequest(workflow_id=workflow_id)
                )
        self.workflows.clear()
        return int(found[-1]) if found else -1

    async def close(self, how: str) -> None:
        """Stops the sidecar: "kill" (SIGKILL), "stop" (SIGTERM, waited for), "torn" (SIGKILL in a stop)."""
        assert self.process is not None and self.client is not None
        if self.streams:
            self.log.append(f"  {how} with workers {sorted(self.streams)}")
            self.counts[f"{how} with workers"] += 1
        if how == "kill":  # before the client closes: calls in flight stay in flight
            self.process.kill()
        elif how == "stop" and self.streams:  # in a thread: the workers hear the drain and leave meanwhile
            process = self.process
            assert await asyncio.to_thread(process.stop) == 0, process.log_text()[-2000:]
        elif how == "stop":
            assert self.process.stop() == 0, self.process.log_text()[-2000:]
        else:
            os.kill(self.process.pid, signal.SIGTERM)
            await asyncio.sleep(float(self.rng.choice([0.0, 0.002, 0.01, 0.03, 0.08])))
            self.process.kill()
        for stream in self.streams.values():
            await stream.close()
        self.streams.clear()
        self.model.workers.clear()  # worker cards are live state: a restart starts without them
        while not self.inbox.empty():  # what the dead streams brought last
            self.inbox.get_nowait()
        await self.client.close()
        self.process.cleanup()
        self.process = self.client = None

    def sdk(self) -> Client:
        assert self.client is not None
        return self.client

    # -- generators -------------------------------------------------------

    def pick(self, items: Sequence[str]) -> str:
        return str(items[int(self.rng.integers(len(items)))])

    def capabilities(self, most: int = 2) -> tuple[str, ...]:
        count = int(self.rng.integers(0, most + 1))
        return tuple(str(c) for c in self.rng.choice(CAPABILITIES, size=count, replace=False))

    def raw_vector(self, spread: float | None = None, centres: int = CENTRES) -> Vector32:
        rng = self.rng
        if rng.random() < 0.1:
            direction = rng.normal(size=DIMENSION)
        else:
            sigma = spread if spread is not None else float(rng.choice([0.03, 0.08, 0.15]))
            direction = self.centres[int(rng.integers(centres))] + rng.normal(0, sigma, DIMENSION)
        return (direction * rng.uniform(0.5, 3.0)).astype(np.float32)

    def existing_vector(self) -> bytes | None:
        vectors = [s.vector for s, _ in self.model.registered.values() if s.vector is not None]
        return vectors[int(self.rng.integers(len(vectors)))] if vectors else None

    def text(self) -> str:
        count = int(self.rng.integers(1, 4))
        return " ".join(str(w) for w in self.rng.choice(WORDS, size=count, replace=False))

    def spec(self, agent_id: str) -> AgentSpec:
        """A card as the sidecar stores it (capacity 0 sent as 0, stored as 1)."""
        rng = self.rng
        previous = self.model.registered.get(agent_id)
        roll = rng.random()
        vector: bytes | None
        if previous is not None and roll < 0.2:
            vector = previous[0].vector
        elif roll < 0.3:
            vector = self.existing_vector() or self.raw_vector().tobytes()
        elif roll < 0.55:
            vector = None  # embedded from the description (or the capabilities and name, or the id)
        else:
            vector = self.raw_vector().tobytes()
        labels: dict[str, str] = {}
        if rng.random() < 0.6:
            labels["region"] = self.pick(("eu", "us"))
        if rng.random() < 0.2:
            labels["tier"] = "gold"
        return AgentSpec(
            agent_id=agent_id,
            display_name=agent_id.upper() if rng.random() < 0.3 else "",
            description=self.text() if rng.random() < 0.8 else "",
            capabilities=self.capabilities(),
            vector=vector,
            cost_per_call_micro_usd=int(rng.choice(COSTS)),
            typical_latency_ns=int(rng.choice([0, 0, 5, 120])) * 1_000_000,
            capacity=int(rng.integers(1, 4)),
            labels=labels,
        )

    def register(self, agent_id: str | None = None) -> Register:
        agent_id = agent_id or self.pick(CARD_IDS)
        previous = self.model.registered.get(agent_id)
        return Register(self.spec(agent_id), previous[0] if previous else None)

    def deregister(self, agent_id: str | None = None) -> Deregister:
        registered = sorted(self.model.registered)
        if agent_id is None:
            agent_id = (
                self.pick(registered) if registered and self.rng.random() < 0.9 else self.pick(CARD_IDS)
            )
        previous = self.model.registered.get(agent_id)
        return Deregister(agent_id, previous[0] if previous else None)

    def put_catalog(self) -> PutCatalog:
        rng = self.rng
        if self.catalog is not None and rng.random() < 0.8:  # new prices for the same models
            ids = [m.model_id for m in self.catalog]
        else:  # models come and go (with their outcomes)
            count = int(rng.integers(2, 5))
            ids = sorted(str(m) for m in rng.choice(MODEL_IDS, size=count, replace=False))
        models = tuple(
            ModelSpec(
                model_id=model_id,
                tier=int(rng.integers(0, 6)) or 1,
                input_cost_per_million_tokens_micro_usd=int(rng.choice(PRICES)),
                output_cost_per_million_tokens_micro_usd=int(rng.choice(PRICES)),
                prior_success_rate=float(rng.choice(PRIORS)) or 0.5,
            )
            for model_id in ids
        )
        return PutCatalog(models, self.catalog)

    def report(self, busy: frozenset[str] | set[str] = frozenset(), route_id: str = "") -> Report | None:
        """A report of a route not reported yet (now and then one reported, or for another model)."""
        rng = self.rng
        routes = [r for r in sorted(self.routes) if r not in busy]
        fresh = [r for r in routes if not self.routes[r].reported]
        if not routes:
            return None
        if not route_id:
            route_id = self.pick(fresh) if fresh and rng.random() < 0.9 else self.pick(routes)
        model_id = self.pick(MODEL_IDS) if rng.random() < 0.2 else ""
        target = model_id or self.routes[route_id].model_id
        if len(self.outcomes.get(target, ())) >= OUTCOMES_PER_MODEL:
            return None
        if rng.random() < 0.5:
            return Report(route_id, model_id, bool(rng.random() < 0.6), None)
        return Report(route_id, model_id, None, float(np.round(rng.uniform(0, 1), 3)))

    def writes(self, count: int, *, catalog: bool = True) -> list[Write]:
        """Writes that may run together: distinct cards and routes, at most one catalog (then no reports)."""
        rng = self.rng
        out: list[Write] = []
        ids: set[str] = set()
        routes: set[str] = set()
        with_catalog = catalog and rng.random() < 0.15
        if with_catalog:
            out.append(self.put_catalog())
        for _ in range(count):
            roll = rng.random()
            if roll < 0.2 and not with_catalog and self.routes:
                report = self.report(routes)
                if report is not None:
                    routes.add(report.route_id)
                    out.append(report)
                continue
            write: Register | Deregister = self.deregister() if roll < 0.35 else self.register()
            agent_id = write.spec.agent_id if isinstance(write, Register) else write.agent_id
            if agent_id not in ids:
                ids.add(agent_id)
                out.append(write)
        return out

    # -- writes against the sidecar and the model -------------------------

    async def call(self, write: Write) -> None:
        """Makes a write's call; raises what the SDK raises."""
        router = self.sdk().router
        if isinstance(write, Register):
            spec = write.spec
            card, created = await router.register_agent(
                AgentCard(
                    spec.agent_id,
                    description=spec.description,
                    capabilities=spec.capabilities,
                    display_name=spec.display_name,
                    vector=None if spec.vector is None else np.frombuffer(spec.vector, np.float32).tolist(),
                    cost_per_call_micro_usd=spec.cost_per_call_micro_usd,
                    typical_latency=timedelta(microseconds=spec.typical_latency_ns // 1000)
                    if spec.typical_latency_ns
                    else None,
                    capacity=spec.capacity if self.rng.random() < 0.7 or spec.capacity != 1 else 0,
                    labels=spec.labels,
                )
            )
            assert _listed_fields(card) == _card_fields(spec), self.where
            assert created == (write.previous is None), f"{self.where}: created {created} for {spec.agent_id}"
        elif isinstance(write, Deregister):
            await router.deregister_agent(write.agent_id)
        elif isinstance(write, PutCatalog):
            catalog = await router.put_model_catalog(
                SdkModelSpec(
                    m.model_id,
                    tier=m.tier if self.rng.random() < 0.7 or m.tier != 1 else 0,
                    input_cost_per_million_tokens_micro_usd=m.input_cost_per_million_tokens_micro_usd,
                    output_cost_per_million_tokens_micro_usd=m.output_cost_per_million_tokens_micro_usd,
                    prior_success_rate=m.prior_success_rate if m.prior_success_rate != 0.5 else 0.0,
                )
                for m in write.models
            )
            assert _catalog_fields(catalog.models) == _catalog_fields(write.models), self.where
        else:
            await router.report_outcome(
                write.route_id, model_id=write.model_id, success=write.success, score=write.score
            )

    def refusal(self, write: Write) -> tuple[type[RpcError], str] | None:
        """The error the model expects of a write now, or None when it succeeds."""
        if isinstance(write, Deregister) and write.agent_id not in self.model.registered:
            return NotFoundError, "AGENT_NOT_FOUND"
        if isinstance(write, Report):
            route = self.routes[write.route_id]
            if route.reported:
                return AlreadyExistsError, "OUTCOME_ALREADY_REPORTED"
            if not self.in_catalog(write.model_id or route.model_id):
                return FailedPreconditionError, "MODEL_NOT_IN_CATALOG"
        return None

    def in_catalog(self, model_id: str) -> bool:
        return self.catalog is not None and any(m.model_id == model_id for m in self.catalog)

    def apply(self, write: Write) -> None:
        """The model after an acknowledged write."""
        if isinstance(write, Register):
            self.model.register(write.spec)
            self.gone.pop(write.spec.agent_id, None)
        elif isinstance(write, Deregister):
            spec, _ = self.model.registered[write.agent_id]
            self.model.deregister(write.agent_id)
            self.gone[write.agent_id] = spec
        elif isinstance(write, PutCatalog):
            self.catalog = write.models
            staying = {m.model_id for m in write.models}
            self.outcomes = {m: o for m, o in self.outcomes.items() if m in staying}
        else:
            route = self.routes[write.route_id]
            route.reported = True
            score = write.score if write.score is not None else float(bool(write.success))
            self.outcomes.setdefault(write.model_id or route.model_id, []).append((route.vector, score))

    async def attempt(self, write: Write) -> Write | None:
        """Makes a write's call and updates the model; returns the write when its effect is unknown."""
        refusal = self.refusal(write)
        failure: RpcError | None = None
        try:
            await self.call(write)
        except (asyncio.CancelledError, ClientClosedError):
            return write
        except RpcError as error:
            if _lost(error):
                return write
            failure = error
        if failure is None:
            assert refusal is None, f"{self.where}: {write} succeeded, the model expects {refusal}"
            self.apply(write)
        else:
            assert refusal is not None, f"{self.where}: {write}: {failure}"
            assert (type(failure), failure.reason) == refusal, f"{self.where}: {write}: {failure}"
        return None

    async def resolve(self, lost: Sequence[Write]) -> None:
        """Takes what the sidecar holds of writes whose effect is unknown: wholly done or wholly not."""
        router = self.sdk().router
        cards = {c.agent_id: c async for c in router.iter_agents(page_size=1000)}
        for write in lost:
            if isinstance(write, Register | Deregister):
                agent_id = write.spec.agent_id if isinstance(write, Register) else write.agent_id
                card = cards.get(agent_id)
                seen = None if card is None or card.source != "registered" else _listed_fields(card)
                old = None if write.previous is None else _card_fields(write.previous)
                new = _card_fields(write.spec) if isinstance(write, Register) else None
                assert seen in (old, new), f"{self.where}: {write} half done: {seen}"
                self.log.append(
                    f"  lost {type(write).__name__} {agent_id}: {'done' if seen != old else 'not'}"
                )
                if seen != old:
                    self.apply(write)
                    self.counts["lost write done"] += 1
            elif isinstance(write, PutCatalog):
                seen_catalog = _catalog_fields((await router.get_model_catalog()).models)
                old_catalog = _catalog_fields(write.previous or ())
                assert seen_catalog in (old_catalog, _catalog_fields(write.models)), self.where
                if seen_catalog != old_catalog:
                    self.apply(write)
                    self.counts["lost write done"] += 1
        for write in lost:  # after the catalog: a report counts only for a model in it
            if isinstance(write, Report) and not self.routes[write.route_id].reported:
                again = Report(write.route_id, write.model_id, write.success, write.score)
                refusal = self.refusal(again)
                try:
                    await self.call(again)
                except AlreadyExistsError:  # the lost one was stored
                    assert refusal is None or refusal[1] != "OUTCOME_ALREADY_REPORTED", self.where
                    route = self.routes[write.route_id]
                    if self.in_catalog(write.model_id or route.model_id):
                        self.apply(write)
                    else:
                        route.reported = True
                    self.counts["lost write done"] += 1
                except FailedPreconditionError as error:
                    reason = error.reason
                    assert refusal is not None and reason == refusal[1], f"{self.where}: {reason}"
                else:
                    assert refusal is None, f"{self.where}: {again} succeeded, the model expects {refusal}"
                    self.apply(again)

    # -- reads --------------------------------------------------------------

    def query(self, vector: Vector32 | None = None, *, probe: bool = False) -> _Query:
        """A RouteTask call; ``vector`` with ``probe``: a card's own vector, best match near 1."""
        rng = self.rng
        settings = self.settings
        task: str | list[float]
        if vector is not None:
            task = vector.tolist()
            unit = _unit(vector)
        elif rng.random() < 0.15:
            task = self.text()
            unit = _unit(self.model.embedder.vector(task))
        else:
            roll = rng.random()
            raw = self.existing_vector() if roll < 0.3 else None
            if raw is None:
                raw = (
                    rng.normal(size=DIMENSION).astype(np.float32).tobytes()
                    if roll > 0.85
                    else self.raw_vector(float(rng.choice([0.03, 0.08]))).tobytes()
                )
            array = np.frombuffer(raw, dtype=np.float32)
            task = array.tolist()
            unit = _unit(array)
        if probe:
            mode: RouteMode | None = RouteMode.BEST_MATCH
            threshold: float | None = 0.999
            weight: float | None = None
            top_k = 20
            exclude: frozenset[str] = frozenset()
            required: tuple[str, ...] = ()
            labels: dict[str, str] = {}
            below = False
        else:
            mode = RouteMode(rng.choice(list(RouteMode))) if rng.random() < 0.8 else None
            roll = rng.random()
            threshold = None
            if roll < 0.55:
                threshold = float(np.round(rng.uniform(0.2, 0.97), 3))
            elif roll < 0.65:
                threshold = float(rng.choice([0.0, 1.0]))
            weight = float(rng.choice([0.0, 0.25, 0.5, 1.0])) if rng.random() < 0.7 else None
            top_k = int(rng.choice([0, 1, 2, 3, 5, 8, 20]))
            cards = sorted(self.model.registered)
            exclude = (
                frozenset(self.pick(cards) for _ in range(int(rng.integers(0, 3)))) if cards else frozenset()
            )
            required = self.capabilities(2) if rng.random() < 0.3 else ()
            labels = {"region": self.pick(("eu", "us"))} if rng.random() < 0.2 else {}
            below = bool(rng.random() < 0.3)
        chosen = settings.threshold if threshold is None else threshold
        similarities = [float(card.vector @ unit) for card in self.model.cards().values()]
        for _ in range(100):  # an exact threshold decision, on either side
            if not any(abs(s - (chosen - TOLERANCE)) < AMBIGUOUS for s in similarities):
                break
            chosen = threshold = chosen + 2 * AMBIGUOUS
        kwargs: dict[str, Any] = {
            "top_k": top_k,
            "mode": None if mode is None else mode.value.lower(),
            "threshold": threshold,
            "cost_weight": weight,
            "exclude_agent_ids": sorted(exclude),
            "required_capabilities": required,
            "labels": labels,
            "include_unavailable": bool(rng.random() < 0.2),
            "include_below_threshold": below,
        }
        ask = _Ask(
            mode=mode or settings.mode,
            threshold=chosen,
            weight=settings.cost_weight if weight is None else weight,
            top_k=top_k or DEFAULT_TOP_K,
            exclude=exclude,
            required=required,
            labels=labels,
            include_unavailable=kwargs["include_unavailable"],
            include_below=below,
        )
        return _Query(task, unit, kwargs, ask)

    async def ask(self, query: _Query) -> RouteResult | _NoRoute:
        try:
            got = await self.sdk().router.route_task(query.task, **query.kwargs)
        except NotFoundError as error:
            answer = _NoRoute(error)
            assert answer.error.reason == "NO_ROUTE_ABOVE_THRESHOLD", f"{self.where}: {answer.error}"
            return answer
        return RouteResult(
            candidates=tuple(
                RouteCandidate(
                    agent_id=c.agent_id,
                    capability=c.capability,
                    similarity=c.similarity,
                    score=c.score,
                    cost_per_call_micro_usd=c.cost_per_call_micro_usd,
                    load=c.load,
                    available=c.available,
                    above_threshold=c.above_threshold,
                    reason=c.reason,
                )
                for c in got.candidates
            ),
            mode=RouteMode(got.mode.upper()),
            threshold=got.threshold,
        )

    def expected(self, query: _Query) -> _Expected:
        return expected(self.model.cards(), query.vector, query.ask)

    def check(self, got: RouteResult | _NoRoute, want: _Expected, query: _Query) -> None:
        where = f"{self.where}: route_task {_shown(query)}"
        if want.kind != "none":
            assert isinstance(got, RouteResult), f"{where}: {got} where the model has {want.kind}"
            check_answer(got, want, query.ask, self.stats, where)
            return
        assert isinstance(got, _NoRoute), f"{where}: {got!r} where the model has no route"
        error = got.error
        self.stats.answers["none"] += 1
        best = [(agent_id, float(similarity)) for agent_id, similarity in _BEST_BELOW.findall(error.message)]
        _check_order([agent_id for agent_id, _ in best], want, self.stats, where)
        for agent_id, similarity in best:  # the message rounds to 3 decimals, the metadata to 6
            assert similarity == pytest.approx(want.entries[agent_id].similarity, abs=6e-4), where
        if best:
            first = want.entries[best[0][0]].similarity
            assert float(error.metadata["best_similarity"]) == pytest.approx(first, abs=1e-6), where
        assert float(error.metadata["threshold"]) == pytest.approx(query.ask.threshold, abs=1e-6), where

    async def route(self, query: _Query | None = None) -> None:
        query = query or self.query()
        want = self.expected(query)
        self.check(await self.ask(query), want, query)

    def estimates(self, vector: Vector32, excluded: frozenset[str]) -> list[tuple[str, float, int, int, int]]:
        """RouteModel's estimates by brute force: (model_id, quality, cost, samples, tier), cheapest first."""
        assert self.catalog is not None
        settings = self.settings
        out = []
        for model in self.catalog:
            if model.model_id in excluded:
                continue
            quality, samples = model.prior_success_rate, 0
            outcomes = self.outcomes.get(model.model_id, [])
            if len(outcomes) >= settings.min_outcomes:
                near = sorted(((float(v @ vector), score) for v, score in outcomes), key=lambda p: -p[0])
                cut = settings.outcome_min_similarity - TOLERANCE
                near = [p for p in near[: settings.outcome_neighbours] if p[0] >= cut]
                if len(near) >= settings.min_outcomes:
                    quality = sum(s * score for s, score in near) / sum(s for s, _ in near)
                    samples = len(near)
            cost = model.expected_cost(0, 500)
            out.append((model.model_id, quality, cost, samples, model.tier))
        out.sort(key=lambda e: (e[2], e[4], e[0]))
        return out

    async def route_model(self, *, report: bool = False) -> None:
        rng = self.rng
        raw = self.raw_vector(float(rng.choice([0.05, 0.2, 0.35])), centres=1)  # prompts with neighbours
        vector = _normalised(raw)
        target = float(rng.choice([0.5, 0.8, 0.9]))
        excluded = frozenset(self.pick(MODEL_IDS) for _ in range(int(rng.integers(0, 2))))
        router = self.sdk().router
        where = f"{self.where}: route_model"
        if self.catalog is None:
            with pytest.raises(FailedPreconditionError) as raised:
                await router.route_model(raw.tolist(), quality_target=target, exclude_model_ids=excluded)
            assert raised.value.reason == "MODEL_CATALOG_EMPTY", where
            return
        want = self.estimates(vector, excluded)
        if not want:
            with pytest.raises(FailedPreconditionError) as raised:
                await router.route_model(raw.tolist(), quality_target=target, exclude_model_ids=excluded)
            assert raised.value.reason == "NO_ELIGIBLE_MODEL", where
            return
        got = await router.route_model(
            raw.tolist(), quality_target=target, exclude_model_ids=sorted(excluded)
        )
        self.counts["route_model"] += 1
        assert [(e.model_id, e.expected_cost_micro_usd, e.samples) for e in got.estimates] == [
            (m, cost, samples) for m, _, cost, samples, _ in want
        ], where
        for estimate, (_, quality, *_rest) in zip(got.estimates, want, strict=True):
            assert estimate.expected_quality == pytest.approx(quality, abs=1e-6), where
        self.counts["estimates from outcomes"] += sum(1 for e in got.estimates if e.samples)
        if all(abs(q - target) > 1e-6 for _, q, *_rest in want):
            meeting = [e for e in want if e[1] >= target]
            if meeting:
                chosen = min(meeting, key=lambda e: (e[2], -e[1], e[4]))
            else:
                chosen = max(want, key=lambda e: (e[1], -e[2], -e[4]))
            assert got.model_id == chosen[0], f"{where}: {got.model_id} != {chosen[0]} ({want})"
            assert got.target_met == bool(meeting), where
        self.routes[got.route_id] = _Route(got.model_id, vector)
        if report:  # mostly this route's outcome, as a caller would
            write = self.report(route_id=got.route_id if rng.random() < 0.8 else "")
            if write is not None:
                await self.attempt(write)

    # -- stream workers -----------------------------------------------------

    def take(self) -> None:
        """Applies what the workers' streams brought so far: assignments (load), acks, drains, ends."""
        while not self.inbox.empty():
            self._apply(*self.inbox.get_nowait())

    def _apply(self, stream: _WorkerStream, message: Any) -> None:
        kind = None if message is None else message.WhichOneof("message")
        if kind == "assignments":
            for assignment in message.assignments.assignments:
                key = (assignment.workflow_id, assignment.task_id, assignment.attempt)
                stream.held[key] = assignment
                worker = self.model.workers.get(stream.worker_id)
                assert worker is not None, f"{self.where}: {key} assigned to {stream.worker_id}, gone"
                worker.running += 1
                self.counts["tasks assigned"] += 1
        elif kind == "acks":
            for ack in message.acks.acks:
                key = (ack.workflow_id, ack.task_id, ack.attempt)
                assert ack.accepted or key == _BARRIER, f"{self.where}: {stream.worker_id}: {ack}"
                stream.acked.add(key)
        elif kind is not None and kind != "drain":
            raise AssertionError(f"{self.where}: {stream.worker_id} was sent {kind}: {message}")

    async def wait_for(self, done: Callable[[], bool], what: str) -> None:
        """Takes the streams' messages until ``done()`` (at most ``WORKER_WAIT_S``)."""
        try:
            async with asyncio.timeout(WORKER_WAIT_S):
                while True:
                    self.take()
                    if done():
                        return
                    self._apply(*await self.inbox.get())
        except TimeoutError:
            raise AssertionError(f"{self.where}: no {what} within {WORKER_WAIT_S:g} s") from None

    def worker_card(self, declared: tuple[str, ...]) -> agent_pb2.AgentCard | None:
        """The card a worker declares: none, its own, a crew's shared one, or a registered card's id."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.35:
            return None
        agent_id = self.pick(CREW_IDS[:4]) if roll < 0.8 else self.pick(CARD_IDS[:POPULATION])
        count = int(rng.integers(0, len(declared) + 1))
        offered = sorted(str(c) for c in rng.choice(declared, size=count, replace=False))
        card = agent_pb2.AgentCard(
            agent_id=agent_id,
            description=self.text() if rng.random() < 0.7 else "",
            capabilities=offered,
            cost_per_call_micro_usd=int(rng.choice(COSTS)),
            capacity=int(rng.integers(0, 4)),
        )
        if rng.random() < 0.5:
            card.vector.values.extend(self.raw_vector().tolist())
        if rng.random() < 0.5:
            card.labels["region"] = self.pick(("eu", "us"))
        return card

    async def connect_worker(self) -> None:
        """A stream worker connects: it shows at once with its capabilities, on its card."""
        if len(self.streams) >= MOST_WORKERS:
            return await self.disconnect_worker()
        rng = self.rng
        name = self.pick(CREW_IDS[:4])
        declared = tuple(
            sorted(str(c) for c in rng.choice(CAPABILITIES, size=int(rng.integers(1, 3)), replace=False))
        )
        capacity = int(rng.integers(1, 4))
        card = self.worker_card(declared)
        call = self.sdk().raw.worker.Connect()
        registration = worker_pb.WorkerRegistration(
            worker_name=name, capabilities=declared, max_concurrency=capacity, agent_card=card
        )
        await call.write(worker_pb.ConnectRequest(register=registration))
        first = await call.read()
        assert first.WhichOneof("message") == "registered", f"{self.where}: {first}"
        worker_id = first.registered.worker_id
        self.streams[worker_id] = _WorkerStream(call, worker_id, declared, self.inbox)
        spec = None if card is None else _spec_of(card)
        self.model.connect(
            worker_id, name=name, declared=declared, running=0, capacity=capacity, available=True, card=spec
        )
        self.log.append(f"  {worker_id} ({', '.join(declared)}) on {spec.agent_id if spec else name}")
        self.counts["workers connected"] += 1
        await self.check_cards()
        await self.probe(self.model.workers[worker_id].agent_id)
        return None

    async def probe(self, agent_id: str) -> None:
        """RouteTask with a card's vector (as the model has it, or had it: gone, or changed)."""
        card = self.model.cards().get(agent_id)
        if card is not None:
            await self.route(self.query(card.vector.astype(np.float32), probe=True))

    async def disconnect_worker(self) -> None:
        """A worker leaves: drained and half-closed (let go once its stream ends) or cancelled."""
        if not self.streams:
            return await self.connect_worker()
        rng = self.rng
        stream = self.streams.pop(self.pick(sorted(self.streams)))
        agent_id = self.model.workers[stream.worker_id].agent_id
        before = self.model.cards()[agent_id].vector
        how = str(rng.choice(["leave", "drain and leave", "cancel"]))
        self.log.append(f"  {how}: {stream.worker_id} holding {len(stream.held)}")
        if how == "cancel":
            await stream.close()
            self.take()
            del self.model.workers[stream.worker_id]
            # The sidecar lets it go when it notices: wait for that (bounded), then check as always.
            try:
                async with asyncio.timeout(WORKER_WAIT_S):
                    while stream.worker_id in await self.listed_workers():
                        await asyncio.sleep(0.01)
            except TimeoutError:
                raise AssertionError(f"{self.where}: {stream.worker_id} still listed") from None
        else:
            if how == "drain and leave":
                await stream.write(worker_pb.ConnectRequest(drain=worker_pb.WorkerDrain(reason="model")))
            await stream.half_close()
            await self.wait_for(stream.ended.is_set, f"end of {stream.worker_id}'s stream")
            del self.model.workers[stream.worker_id]
            await stream.close()
        self.counts[f"workers {how}"] += 1
        await self.check_cards()
        await self.route(self.query(before.astype(np.float32), probe=True))
        return None

    async def listed_workers(self) -> set[str]:
        return {w async for card in self.sdk().router.iter_agents(page_size=1000) for w in card.worker_ids}

    async def drain_worker(self) -> None:
        """A worker drains (stays connected, takes no more work): unavailable once its stream was read."""
        taking = sorted(w for w in self.streams if self.model.workers[w].available)
        if not taking:
            return await self.connect_worker()
        stream = self.streams[self.pick(taking)]
        await stream.write(worker_pb.ConnectRequest(drain=worker_pb.WorkerDrain(reason="model")))
        stream.acked.discard(_BARRIER)
        workflow_id, task_id, attempt = _BARRIER
        beat = worker_pb.TaskHeartbeat(workflow_id=workflow_id, task_id=task_id, attempt=attempt)
        await stream.write(worker_pb.ConnectRequest(heartbeat=worker_pb.HeartbeatBatch(heartbeats=[beat])))
        await self.wait_for(lambda: _BARRIER in stream.acked, f"{stream.worker_id}'s refused heartbeat")
        self.model.workers[stream.worker_id].available = False
        self.log.append(f"  drained {stream.worker_id}")
        await self.check_cards()
        return None

    async def assign_task(self) -> None:
        """A task for a capability a free worker declared: dispatched at once, its load shows."""
        free = [
            (worker_id, capability)
            for worker_id, stream in sorted(self.streams.items())
            for capability in stream.declared
            if (w := self.model.workers[worker_id]).available and w.running < w.capacity
        ]
        if not free:
            return await self.connect_worker()
        _, capability = free[int(self.rng.integers(len(free)))]
        task = task_pb2.TaskSpec(
            task_id="t",
            capability=capability,
            retry_policy=common_pb2.RetryPolicy(maximum_attempts=1),  # a lost worker fails it for good
            start_to_close_timeout=duration_pb2.Duration(seconds=3600),
        )
        response = await self.sdk().raw.scheduler.SubmitWorkflow(
            scheduler_pb.SubmitWorkflowRequest(spec=workflow_pb2.WorkflowSpec(tasks=[task]))
        )
        self.workflows.append(response.workflow_id)
        held = sum(len(s.held) for s in self.streams.values())
        await self.wait_for(lambda: sum(len(s.held) for s in self.streams.values()) > held, "assignment")
        await self.check_cards()
        return None

    async def complete_task(self) -> None:
        """A worker completes a task it holds: once acknowledged, its load is down by one."""
        holding = [(w, key) for w, stream in sorted(self.streams.items()) for key in sorted(stream.held)]
        if not holding:
            return await self.assign_task()
        worker_id, key = holding[int(self.rng.integers(len(holding)))]
        stream = self.streams[worker_id]
        completion = worker_pb.TaskCompletion(workflow_id=key[0], task_id=key[1], attempt=key[2])
        await stream.write(
            worker_pb.ConnectRequest(complete=worker_pb.CompletionBatch(completions=[completion]))
        )
        await self.wait_for(lambda: key in stream.acked, f"ack of {key}")
        del stream.held[key]
        self.model.workers[worker_id].running -= 1
        self.counts["tasks completed"] += 1
        await self.check_cards()
        return None

    # -- checks -------------------------------------------------------------

    async def check_cards(self) -> None:
        """Every card listed exactly as the model has it, and nothing else."""
        self.take()
        cards = [c async for c in self.sdk().router.iter_agents(page_size=int(self.rng.choice([7, 1000])))]
        listed = [c.agent_id for c in cards]
        model = self.model.cards()
        assert listed == sorted(model), (
            f"{self.where}: listed but not in the model {sorted(set(listed) - set(model))}, "
            f"in the model but not listed {sorted(set(model) - set(listed))}"
        )
        for card in cards:
            want = model[card.agent_id]
            where = f"{self.where}: {card.agent_id}"
            assert _listed_fields(card)[:-2] == _card_fields(want.spec)[:-2], where
            assert card.labels == want.spec.labels, where
            assert (card.source, card.available, card.running, card.capacity, sorted(card.worker_ids)) == (
                "registered" if want.registered else "worker",
                want.available,
                want.running,
                want.capacity,
                sorted(want.worker_ids),
            ), where

    async def check_all(self) -> None:
        """After a start: the cards, each found by its own vector, removed ones not, catalog, estimates."""
        await self.check_cards()
        registered = sorted(self.model.registered)
        for agent_id in [self.pick(registered) for _ in range(min(8, len(registered)))]:
            await self.route(self.query(self.model.registered[agent_id][1].astype(np.float32), probe=True))
        for agent_id in sorted(self.gone)[:4]:
            spec = self.gone[agent_id]
            await self.route(self.query(self.model.spec_vector(spec).astype(np.float32), probe=True))
        for _ in range(3):
            await self.route()
        catalog = await self.sdk().router.get_model_catalog()
        assert _catalog_fields(catalog.models) == _catalog_fields(self.catalog or ()), self.where
        for _ in range(2):
            await self.route_model()

    # -- steps --------------------------------------------------------------

    async def restart(self, how: str) -> None:
        await self.close(how)
        restored = await self.start()
        if how == "stop":  # a clean stop saved every index; the start reuses each
            with_outcomes = sum(1 for o in self.outcomes.values() if o)
            assert restored == 1 + with_outcomes, f"{self.where}: restored {restored} indexes"
        self.counts[f"restart {how}"] += 1
        self.counts["restored indexes"] += restored
        await self.check_all()

    async def together(self, writes: Sequence[Write], queries: int = 0) -> None:
        """Writes and queries at once; a query may see a write done or not (one write: checked both ways)."""
        before = [self.query() for _ in range(queries)]
        wants = [self.expected(q) for q in before]
        results = await asyncio.gather(
            *(self.attempt(w) for w in writes), *(self.ask(q) for q in before), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        assert not [r for r in results[: len(writes)] if r is not None], f"{self.where}: a call was lost"
        if not queries:
            return
        afters = [self.expected(q) for q in before]
        for query, want, after, got in zip(before, wants, afters, results[len(writes) :], strict=True):
            assert isinstance(got, RouteResult | _NoRoute)
            if len(writes) > 1:  # which of several writes a query saw is not known: only that it answered
                continue
            try:
                self.check(got, want, query)
            except AssertionError:
                self.check(got, after, query)

    async def in_flight(self, *, how: str) -> None:
        """Writes (and reads) in flight when the sidecar is killed or stopped, or the client cancels them."""
        rng = self.rng
        writes = self.writes(int(rng.integers(2, 9)))
        if how == "cancel":  # the barrier's answer (created or not) must not hang on a write cancelled
            writes = [w for w in writes if not (isinstance(w, Deregister) and w.agent_id == BARRIER.agent_id)]
        self.log.append(f"  in flight: {', '.join(_named(w) for w in writes)}")
        tasks = [asyncio.ensure_future(self.attempt(w)) for w in writes]
        reads: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self.ask(self.query())) for _ in range(int(rng.integers(0, 3)))
        ]
        if self.catalog is not None and rng.random() < 0.5:
            reads.append(asyncio.ensure_future(self.sdk().router.route_model(self.raw_vector().tolist())))
        await asyncio.sleep(float(rng.choice([0.0, 0.0005, 0.002, 0.005, 0.02])))  # 0: each call sent
        if how == "cancel":
            for task in tasks:
                task.cancel()
        else:
            await self.close(how)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*reads, return_exceptions=True)
        lost: list[Write] = []
        for write, outcome in zip(writes, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError | ClientClosedError):
                lost.append(write)
            elif isinstance(outcome, BaseException):
                raise outcome
            elif outcome is not None:
                lost.append(outcome)
        self.counts["lost writes"] += len(lost)
        if how == "cancel":
            # A barrier, not a sleep: the sidecar takes calls in the order they came, and
            # commits in the order they were submitted; once a write sent after the cancelled
            # ones is answered, whatever of theirs it started is committed and in memory.
            previous = self.model.registered.get(BARRIER.agent_id)
            assert await self.attempt(Register(BARRIER, previous[0] if previous else None)) is None
            await self.resolve(lost)
            await self.check_cards()
            return
        restored = await self.start()
        self.counts[f"restart {how} in flight"] += 1
        self.counts["restored indexes"] += restored
        await self.resolve(lost)
        await self.check_all()

    async def burst(self) -> None:
        """Over a thousand registrations (the index rebuilt in the background), then a kill, stop or check."""
        rng = self.rng
        ids = list(CARD_IDS)
        done = 0
        while done < BURST:
            wave = [str(i) for i in rng.choice(ids, size=40, replace=False)]
            writes: list[Write] = [self.register(agent_id) for agent_id in wave]
            done += len(writes)
            if done >= BURST and rng.random() < 0.6:  # the last wave in flight at the kill
                self.log.append(f"{self.step}: burst's last wave in flight at a kill")
                tasks = [asyncio.ensure_future(self.attempt(w)) for w in writes]
                await asyncio.sleep(float(rng.choice([0.0, 0.002, 0.01])))
                await self.close("kill")
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
                lost = [w for w, o in zip(writes, outcomes, strict=True) if o is not None]
                for outcome in outcomes:
                    if isinstance(outcome, BaseException) and not _lost(outcome):
                        raise outcome
                await self.start()
                await self.resolve(lost)
                await self.check_all()
                return
            await self.together(writes)
        how = str(rng.choice(["kill", "stop", "torn", "live"]))
        self.log.append(f"{self.step}: burst then {how}")
        if how == "live":
            await self.check_all()
        else:
            await self.restart(how)

    @property
    def where(self) -> str:
        return f"seed {self.seed} step {self.step}"

    async def one_step(self) -> None:
        rng = self.rng
        steps: dict[str, tuple[float, Callable[[], Awaitable[None]]]] = {
            "register": (16, lambda: self.single(self.register())),
            "deregister": (5, lambda: self.single(self.deregister())),
            "catalog": (3, lambda: self.single(self.put_catalog())),
            "route": (22, self.route),
            "route_model": (14, lambda: self.route_model(report=bool(rng.random() < 0.9))),
            "report": (6, self.report_step),
            "writes together": (7, lambda: self.together(self.writes(int(rng.integers(2, 6))))),
            "routes together": (4, lambda: self.together([], int(rng.integers(2, 5)))),
            "write and routes": (5, lambda: self.together(self.writes(1, catalog=False), 3)),
            "kill in flight": (3, lambda: self.in_flight(how="kill")),
            "stop in flight": (1.2, lambda: self.in_flight(how="stop")),
            "torn stop in flight": (1, lambda: self.in_flight(how="torn")),
            "cancel in flight": (2, lambda: self.in_flight(how="cancel")),
            "kill": (1.2, lambda: self.restart("kill")),
            "stop": (1.2, lambda: self.restart("stop")),
            "torn stop": (1.2, lambda: self.restart("torn")),
            "connect worker": (4.5, self.connect_worker),
            "disconnect worker": (2.5, self.disconnect_worker),
            "drain worker": (1, self.drain_worker),
            "assign task": (3, self.assign_task),
            "complete task": (2, self.complete_task),
        }
        kinds = list(steps)
        weights = np.array([w for w, _ in steps.values()])
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        self.log.append(f"{self.step}: {kind}")
        self.counts[kind] += 1
        await steps[kind][1]()
        if kind in {"register", "deregister", "writes together", "write and routes"}:
            await self.check_cards()

    async def single(self, write: Write) -> None:
        lost = await self.attempt(write)
        assert lost is None, f"{self.where}: {write} lost"

    async def report_step(self) -> None:
        write = self.report()
        if write is not None:
            await self.single(write)

    async def run(self, steps: int) -> None:
        await self.start()
        deadline = time.monotonic() + SECONDS_PER_STEP * steps + 30
        try:
            await self.together([self.register(agent_id) for agent_id in CARD_IDS[:POPULATION]])
            await self.single(self.put_catalog())
            burst_at = int(self.rng.integers(steps // 3, 2 * steps // 3 + 1)) if steps >= 3 else -1
            for self.step in range(steps):
                if time.monotonic() > deadline:
                    self.log.append(f"{self.step}: out of time")
                    break
                if self.step == burst_at:
                    self.log.append(f"{self.step}: burst")
                    self.counts["burst"] += 1
                    await self.burst()
                else:
                    await self.one_step()
            await self.restart("kill")
        except Exception as error:
            raise AssertionError(
                f"{self.where}: {type(error).__name__}: {error}\nlast steps:\n" + "\n".join(self.log[-40:])
            ) from error
        finally:
            if self.process is not None:
                await self.close("kill")


def _named(write: Write) -> str:
    """A write for the log: its kind and what it is about."""
    if isinstance(write, Register):
        return f"Register {write.spec.agent_id}"
    if isinstance(write, Deregister):
        return f"Deregister {write.agent_id}"
    if isinstance(write, PutCatalog):
        return "PutCatalog"
    return f"Report {write.route_id}"


def _spec_of(card: agent_pb2.AgentCard) -> AgentSpec:
    """A worker's declared card as the router keeps it (``sidecar._router.agent_spec_from_card``)."""
    return AgentSpec(
        agent_id=card.agent_id,
        description=card.description,
        capabilities=tuple(card.capabilities),
        vector=np.array(card.vector.values, dtype=np.float32).tobytes() if card.HasField("vector") else None,
        cost_per_call_micro_usd=card.cost_per_call_micro_usd,
        capacity=card.capacity or 1,
        labels=dict(card.labels),
    )


def _shown(query: _Query) -> str:
    task = query.task if isinstance(query.task, str) else f"<vector {hash(tuple(query.task)) & 0xFFFF:04x}>"
    return repr({"task": task, **{k: v for k, v in query.kwargs.items() if v}})


@pytest.mark.parametrize("seed", SEEDS)
async def test_a_sidecar_routes_as_the_brute_force_model_through_sigkills(tmp_path: Path, seed: int) -> None:
    """Random router calls (some concurrent, some abandoned), SIGKILLs and restarts, against the model."""
    run = Run(tmp_path / "data", seed)
    await run.run(STEPS)
    counts = run.counts
    print(f"seed {seed}: {sorted(counts.items())}, answers {sorted(run.stats.answers.items())}")  # with -s
    assert counts["restart kill"] + counts["restart kill in flight"] >= 2, counts
    assert run.stats.answers["routed"] >= 20, run.stats
    assert run.stats.answers["none"] >= 3, run.stats
    assert counts["estimates from outcomes"] > 0, counts
    assert counts["workers connected"] > 0, counts
