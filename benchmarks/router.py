"""Suite ``router``: RouteTask over 10,000 agent cards, and routing accuracy.

The same synthetic capability set is generated (deterministic seed) in every
process: 200 capabilities in 50 families of 4 siblings (siblings share part
of their direction, cosine 0.49 between their centres), 50 agents per
capability (10,000 cards of 256 dimensions, costs 100 to 9,999 micro-USD),
and task vectors drawn around the capability centres. Routing accuracy is
also scored on a *hard* variant of it (``HARD``: siblings at cosine 0.90,
noisier tasks), where top-1 accuracy falls below 100% and the contenders
can differ; on the standard set both pick the right capability every time.

The sidecars run with the default durability (sync: each commit, the route
events' included, is fsynced), as a deployment does.

Latency contenders, one RouteTask (top 5) per operation, against the bare
grpc.aio echo measured in the same run:

* ``sidecar-route-10k``: ``RouterService/RouteTask`` over loopback gRPC to a
  real sidecar holding the 10,000 cards (cost-biased, threshold 0.5, vector
  query, sync durability): what a caller sees.
* ``engine-route-10k``: the same ranking in-process (``Router.rank``) over the
  sidecar's own index (half-precision, inner product): usearch search,
  filters, exact rescoring, cost-biased ranking; what the router adds beyond
  gRPC.
* ``semantic-router-10k``: semantic-router's ``LocalIndex.query`` (aurelio-labs,
  numpy brute force) on the same vectors, top 5; needs the optional
  ``bench-router`` extra and is reported skipped without it.

Accuracy is printed by ``python -m benchmarks.router`` (the harness measures
latency only): for 2,000 task vectors, the share whose top pick serves the
task's capability (with its Wilson 95% interval), and the mean cost of that
pick, for ARE best-match, ARE cost-biased (threshold 0.5, and lower
thresholds to show the trade-off: a lower threshold lets cheaper agents of
sibling capabilities win) and semantic-router's top utterance on the same
vectors, on the standard set and on the hard one. ``--require-peer`` makes a
missing semantic-router fail the run (exit 1) instead of printing "skipped".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks._echo import echo_contender
from benchmarks._harness import Contender, Operation, Suite
from benchmarks._process import sidecar_env
from benchmarks._stats import wilson_interval

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import numpy.typing as npt

__all__ = ["SUITE", "CapabilitySet", "accuracy_table", "capability_set"]

SIDECAR_REQUIRES = ("are_sdk.testing", "sidecar")
SEMANTIC_ROUTER_REQUIRES = ("semantic_router",)
DIMENSION = 256
AGENTS = 10_000
CAPABILITIES = 200
FAMILY = 4
QUERIES = 2_000
NOISE = 0.05
SEED = 20261125
#: Each capability centre's weight on its family's direction and on its own (standard set).
FAMILY_WEIGHT, OWN_WEIGHT = 0.7, 0.714
#: The hard variant: siblings at cosine 0.95**2 = 0.90 (0.49 in the standard set), tasks noisier.
HARD = {"family_weight": 0.95, "own_weight": 0.312, "query_noise": 0.06}
REGISTER_TIMEOUT_S = 60.0  # the deadline of each group of 250 registrations
THRESHOLD = 0.5
# Cost-biased routing is also scored at these lower thresholds, to show the trade-off.
LOWER_THRESHOLDS = (0.45, 0.4)
TOP_K = 5


class CapabilitySet:
    """The synthetic agents and tasks; identical in every process for one seed."""

    def __init__(
        self,
        seed: int = SEED,
        agents: int = AGENTS,
        queries: int = QUERIES,
        *,
        family_weight: float = FAMILY_WEIGHT,
        own_weight: float = OWN_WEIGHT,
        query_noise: float = NOISE,
    ) -> None:
        rng = np.random.default_rng(seed)
        families = _normalise(rng.normal(size=(CAPABILITIES // FAMILY, DIMENSION)))
        own = _normalise(rng.normal(size=(CAPABILITIES, DIMENSION)))
        centres = _normalise(family_weight * families[np.arange(CAPABILITIES) // FAMILY] + own_weight * own)
        self.agent_capability = np.arange(agents) % CAPABILITIES
        self.agent_vectors = _normalise(
            centres[self.agent_capability] + rng.normal(0, NOISE, (agents, DIMENSION))
        ).astype(np.float32)
        self.agent_costs = rng.integers(100, 10_000, agents)
        self.query_capability = rng.integers(0, CAPABILITIES, queries)
        self.query_vectors = _normalise(
            centres[self.query_capability] + rng.normal(0, query_noise, (queries, DIMENSION))
        ).astype(np.float32)

    def agent_id(self, i: int) -> str:
        """The id of agent ``i``."""
        return f"agent-{i:05d}"

    def capability(self, c: int) -> str:
        """The name of capability ``c``."""
        return f"cap-{c:03d}"


def _normalise(matrix: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / norms, dtype=np.float32)


@functools.cache
def capability_set(*, hard: bool = False) -> CapabilitySet:
    """The benchmark's capability set, or its hard variant (each built once per process)."""
    if hard:
        return CapabilitySet(
            family_weight=HARD["family_weight"],
            own_weight=HARD["own_weight"],
            query_noise=HARD["query_noise"],
        )
    return CapabilitySet()


# ------------------------------------------------------------------ sidecar


async def _register_all(target: str) -> None:
    from are_sdk import AgentCard, Client  # noqa: PLC0415 - an optional dependency

    data = capability_set()
    async with await Client.connect(target, timeout=REGISTER_TIMEOUT_S) as client:
        for start in range(0, AGENTS, 250):
            group = asyncio.gather(
                *(
                    client.router.register_agent(
                        AgentCard(
                            data.agent_id(i),
                            capabilities=(data.capability(int(data.agent_capability[i])),),
                            vector=data.agent_vectors[i].tolist(),
                            cost_per_call_micro_usd=int(data.agent_costs[i]),
                        ),
                        timeout=REGISTER_TIMEOUT_S,
                    )
                    for i in range(start, min(AGENTS, start + 250))
                )
            )
            await asyncio.wait_for(group, REGISTER_TIMEOUT_S)


@contextlib.contextmanager
def sidecar_server() -> Iterator[str]:
    """A real sidecar holding the 10,000 cards (registered before timing starts); sync durability."""
    from are_sdk.testing import SidecarProcess  # noqa: PLC0415 - an optional dependency

    with SidecarProcess.start(env=sidecar_env()) as sidecar:
        asyncio.run(_register_all(sidecar.target))
        yield sidecar.target


def route_requests() -> list[Any]:
    """The timed RouteTask requests: one per task vector, cost-biased, top 5."""
    from are_sdk._proto.are.v1 import common_pb2, router_service_pb2  # noqa: PLC0415

    return [
        router_service_pb2.RouteTaskRequest(
            vector=common_pb2.Vector(values=vector.tolist()),
            top_k=TOP_K,
            mode=router_service_pb2.ROUTE_MODE_COST_BIASED,
            threshold=THRESHOLD,
        )
        for vector in capability_set().query_vectors
    ]


@contextlib.asynccontextmanager
async def sidecar_client(target: str | None) -> AsyncIterator[Operation]:
    """One RouteTask (vector, cost-biased, top 5) per operation, cycling over the task vectors."""
    from are_sdk import Client  # noqa: PLC0415 - an optional dependency

    if target is None:
        msg = "the RouteTask client needs a sidecar target"
        raise ValueError(msg)
    requests = route_requests()
    cycle = itertools.cycle(requests)
    async with await Client.connect(target) as client:
        route = client.raw.router.RouteTask
        response = await route(requests[0])
        if not response.candidates:
            msg = "RouteTask returned no candidate"
            raise ValueError(msg)

        async def operation() -> object:
            return await route(next(cycle))

        yield operation


# ------------------------------------------------------------------- engine


@contextlib.asynccontextmanager
async def engine(data: CapabilitySet | None = None) -> AsyncIterator[Any]:
    """A loaded in-process ``Router`` holding ``data``'s 10,000 cards, in a temporary folder (sync)."""
    from are_core.router import TABLES, AgentSpec, Router  # noqa: PLC0415
    from are_core.storage import GroupCommitter, Storage  # noqa: PLC0415
    from sidecar._router import new_router_index  # noqa: PLC0415 - the sidecar's own index

    data = data or capability_set()
    with tempfile.TemporaryDirectory(prefix="are-bench-router-") as folder:
        storage = Storage.open(Path(folder), tables=TABLES)
        try:
            async with GroupCommitter(storage) as committer:
                router = Router(
                    storage,
                    committer,
                    dimension=DIMENSION,
                    embedder=None,
                    index_factory=new_router_index,
                )
                await router.load()
                for start in range(0, AGENTS, 500):
                    await asyncio.gather(
                        *(
                            router.register_agent(
                                AgentSpec(
                                    agent_id=data.agent_id(i),
                                    capabilities=(data.capability(int(data.agent_capability[i])),),
                                    vector=data.agent_vectors[i].tobytes(),
                                    cost_per_call_micro_usd=int(data.agent_costs[i]),
                                )
                            )
                            for i in range(start, min(AGENTS, start + 500))
                        )
                    )
                yield router
                await router.aclose()
        finally:
            storage.close()


@contextlib.asynccontextmanager
async def engine_client(target: str | None) -> AsyncIterator[Operation]:
    """One in-process ``Router.rank`` (vector, cost-biased, top 5) per operation."""
    del target
    from are_core.router import RouteMode, RouteQuery  # noqa: PLC0415

    data = capability_set()
    queries = [
        RouteQuery(vector=v.tobytes(), top_k=TOP_K, mode=RouteMode.COST_BIASED, threshold=THRESHOLD)
        for v in data.query_vectors
    ]
    cycle = itertools.cycle(queries)
    async with engine() as router:
        rank = router.rank

        async def operation() -> object:
            return rank(next(cycle))

        yield operation


# ---------------------------------------------------------- semantic-router


def semantic_router_index(data: CapabilitySet | None = None) -> Any:
    """semantic-router's ``LocalIndex`` holding the same 10,000 vectors (one utterance per agent)."""
    from semantic_router.index.local import LocalIndex  # noqa: PLC0415 - an optional peer

    data = data or capability_set()
    index = LocalIndex()
    index.add(
        embeddings=data.agent_vectors.tolist(),
        routes=[data.capability(int(c)) for c in data.agent_capability],
        utterances=[data.agent_id(i) for i in range(AGENTS)],
    )
    return index


@contextlib.asynccontextmanager
async def semantic_router_client(target: str | None) -> AsyncIterator[Operation]:
    """One ``LocalIndex.query`` (top 5) per operation on the same task vectors."""
    del target
    data = capability_set()
    index = semantic_router_index()
    cycle = itertools.cycle(list(data.query_vectors))

    async def operation() -> object:
        return index.query(next(cycle), top_k=TOP_K)

    yield operation


# ----------------------------------------------------------------- accuracy


async def _are_accuracy(data: CapabilitySet) -> dict[str, tuple[int, float]]:
    from are_core.router import NoRouteError, RouteMode, RouteQuery  # noqa: PLC0415

    out: dict[str, tuple[int, float]] = {}
    async with engine(data) as router:
        settings = [(RouteMode.BEST_MATCH, THRESHOLD), (RouteMode.COST_BIASED, THRESHOLD)]
        settings += [(RouteMode.COST_BIASED, t) for t in LOWER_THRESHOLDS]
        for mode, threshold in settings:
            correct, cost = 0, 0
            for vector, capability in zip(data.query_vectors, data.query_capability, strict=True):
                try:
                    top = router.rank(
                        RouteQuery(vector=vector.tobytes(), top_k=1, mode=mode, threshold=threshold)
                    ).candidates[0]
                except NoRouteError:
                    continue  # counted as a miss
                correct += top.capability == data.capability(int(capability))
                cost += top.cost_per_call_micro_usd
            name = f"are-{mode.value.lower().replace('_', '-')} @{threshold}"
            out[name] = (correct, cost / QUERIES)
    return out


def _semantic_router_accuracy(data: CapabilitySet) -> tuple[int, float] | None:
    try:
        index = semantic_router_index(data)
    except ImportError:
        return None
    correct, cost = 0, 0
    for vector, capability in zip(data.query_vectors, data.query_capability, strict=True):
        scores, routes = index.query(vector, top_k=1)
        del scores
        correct += routes[0] == data.capability(int(capability))
        # The agent behind the top utterance: semantic-router knows no costs.
        best = int(np.argmax(data.agent_vectors @ vector))
        cost += int(data.agent_costs[best])
    return correct, cost / QUERIES


def _accuracy_cell(correct: int) -> str:
    low, high = wilson_interval(correct, QUERIES)
    return f"{correct / QUERIES:>7.2%} ({low:.1%}-{high:.1%})"


def accuracy_table(*, hard: bool = False) -> tuple[str, bool]:
    """Top-1 capability accuracy and mean cost of the pick, ARE vs semantic-router, same vectors.

    Returns the table and whether semantic-router was installed.
    """
    data = capability_set(hard=hard)
    rows = asyncio.run(_are_accuracy(data))
    peer = _semantic_router_accuracy(data)
    sibling = (HARD["family_weight"] if hard else FAMILY_WEIGHT) ** 2
    noise = HARD["query_noise"] if hard else NOISE
    lines = [
        (
            f"routing accuracy, {'hard' if hard else 'standard'} set: {QUERIES:,} tasks, {AGENTS:,} agents, "
            f"{CAPABILITIES} capabilities (families of {FAMILY}, siblings at cosine {sibling:.2f}), "
            f"{DIMENSION} dimensions, task noise {noise}, seed {SEED}"
        ),
        f"{'contender':<24} {'top-1 accuracy (95% CI)':>26} {'mean cost of pick (µUSD)':>26}",
    ]
    for name, (correct, cost) in rows.items():
        lines.append(f"{name:<24} {_accuracy_cell(correct):>26} {cost:>26,.0f}")
    if peer is None:
        lines.append(f"{'semantic-router':<24} {'skipped: not installed':>26}")
    else:
        lines.append(f"{'semantic-router':<24} {_accuracy_cell(peer[0]):>26} {peer[1]:>26,.0f}")
    return "\n".join(lines), peer is not None


def main(argv: list[str] | None = None) -> int:
    """Prints the routing accuracy tables (standard and hard sets); see the module doc."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.router", description="routing accuracy")
    parser.add_argument(
        "--require-peer", action="store_true", help="fail (exit 1) when semantic-router is not installed"
    )
    args = parser.parse_args(argv)
    present = True
    for hard in (False, True):
        table, installed = accuracy_table(hard=hard)
        present = present and installed
        print(table + "\n", flush=True)
    if args.require_peer and not present:
        print("router: semantic-router is not installed (pip install -e '.[bench-router]')", file=sys.stderr)
        return 1
    return 0


SUITE = Suite(
    name="router",
    description="RouteTask over 10,000 agent cards vs the echo floor and semantic-router (sync durability)",
    baseline=echo_contender("echo", payload_bytes=16),
    contenders=(
        Contender(
            name="sidecar-route-10k",
            client=sidecar_client,
            server=sidecar_server,
            description="RouterService/RouteTask over 127.0.0.1 gRPC, 10k cards, cost-biased, top 5",
            requires=SIDECAR_REQUIRES,
        ),
        Contender(
            name="engine-route-10k",
            client=engine_client,
            description="Router.rank in-process (usearch + ranking), 10k cards, cost-biased, top 5",
            requires=("sidecar",),
            setup_seconds=300.0,  # registering 10,000 cards with fsynced commits, before the loops
        ),
        Contender(
            name="semantic-router-10k",
            client=semantic_router_client,
            description="semantic-router LocalIndex.query in-process, same 10k vectors, top 5",
            requires=SEMANTIC_ROUTER_REQUIRES,
        ),
    ),
)


if __name__ == "__main__":
    sys.exit(main())
