"""RouterService over real gRPC: cards, RouteTask, the catalog, RouteModel and its errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2

from are_sdk import (
    AgentCard,
    AlreadyExistsError,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    ModelSpec,
    NotFoundError,
    RpcError,
)
from are_sdk._proto.are.v1 import agent_pb2, common_pb2, router_service_pb2
from are_sdk.testing import SidecarProcess
from sidecar._router import _vector
from tests.integration._events import retained_events

DIMENSION = 256  # the default lexical embedder's


def unit(*components: float, dimension: int = DIMENSION) -> list[float]:
    vector = [0.0] * dimension
    vector[: len(components)] = components
    return vector


@pytest.fixture
def run() -> str:
    """A label value unique to the test: tests sharing the session sidecar do not see each other's cards."""
    return uuid.uuid4().hex[:12]


def assert_error(error: RpcError, code: grpc.StatusCode, reason: str, field: str | None = None) -> None:
    assert error.code == code, error
    assert error.reason == reason, error
    if field is not None:
        assert [v.field for v in error.field_violations] == [field], error
    if reason == "LIMIT_EXCEEDED":  # errors.proto: ErrorInfo.metadata "limit" holds the bound
        assert error.metadata.get("limit", "").isdigit(), error


async def register_trio(client: Client, run: str) -> None:
    labels = {"run": run}
    for agent_id, vector, cost in (
        ("gold", unit(1.0), 900),
        ("silver", unit(0.9, 0.3), 300),
        ("bronze", unit(0.7, 0.7), 100),
        ("other", unit(0.0, 0.0, 1.0), 1),
    ):
        await client.router.register_agent(
            AgentCard(
                f"{run}-{agent_id}",
                capabilities=(agent_id,),
                vector=vector,
                cost_per_call_micro_usd=cost,
                labels=labels,
            )
        )


async def test_register_list_and_deregister(client: Client, run: str) -> None:
    card, created = await client.router.register_agent(
        AgentCard(
            f"{run}-legal",
            description="summarize legal contracts",
            capabilities=("legal-summary",),
            cost_per_call_micro_usd=1500,
            capacity=4,
            labels={"run": run, "team": "law"},
        )
    )
    assert created
    assert card.source == "registered"
    assert card.available
    assert card.capacity == 4
    assert card.create_time is not None
    _, created = await client.router.register_agent(AgentCard(f"{run}-legal", labels={"run": run}))
    assert not created
    for i in range(5):
        await client.router.register_agent(AgentCard(f"{run}-p{i}", description="paged", labels={"run": run}))
    seen = [card.agent_id async for card in client.router.iter_agents(labels={"run": run}, page_size=2)]
    assert seen == [f"{run}-legal", *(f"{run}-p{i}" for i in range(5))]
    page, token = await client.router.list_agents(labels={"run": run}, page_size=4)
    assert len(page) == 4
    assert token
    caught: pytest.ExceptionInfo[RpcError]  # the blocks below expect different errors
    with pytest.raises(InvalidArgumentError) as caught:
        await client.router.list_agents(labels={"run": "another"}, page_token=token)
    assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.router.list_agents(page_token="not a token!")
    assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token")
    await client.router.deregister_agent(f"{run}-legal")
    with pytest.raises(NotFoundError) as caught:
        await client.router.deregister_agent(f"{run}-legal")
    assert_error(caught.value, grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")
    assert caught.value.metadata["agent_id"] == f"{run}-legal"


async def test_route_task_modes_filters_and_no_route(client: Client, run: str) -> None:
    await register_trio(client, run)
    labels = {"run": run}
    best = await client.router.route_task(unit(1.0), mode="best_match", threshold=0.6, labels=labels)
    assert [c.agent_id for c in best.candidates] == [f"{run}-gold", f"{run}-silver", f"{run}-bronze"]
    assert best.mode == "best_match"
    cheap = await client.router.route_task(unit(1.0), threshold=0.6, labels=labels)
    assert cheap.mode == "cost_biased"
    assert cheap.candidates[0].agent_id == f"{run}-bronze"
    assert cheap.candidates[0].reason.startswith("cheapest above 0.60")
    assert cheap.candidates[0].capability == "bronze"
    excluded = await client.router.route_task(
        unit(1.0), threshold=0.6, labels=labels, exclude_agent_ids=[f"{run}-bronze"], top_k=1
    )
    assert [c.agent_id for c in excluded.candidates] == [f"{run}-silver"]
    required = await client.router.route_task(
        unit(1.0), threshold=0.6, required_capabilities=["gold"], labels=labels
    )
    assert [c.agent_id for c in required.candidates] == [f"{run}-gold"]

    with pytest.raises(NotFoundError) as caught:
        await client.router.route_task(unit(0.0, 1.0), threshold=0.95, labels=labels)
    assert_error(caught.value, grpc.StatusCode.NOT_FOUND, "NO_ROUTE_ABOVE_THRESHOLD")
    assert caught.value.metadata["best_agent_id"] == f"{run}-bronze"
    assert caught.value.metadata["threshold"] == "0.950000"
    assert f"{run}-bronze" in caught.value.message
    below = await client.router.route_task(
        unit(0.0, 1.0), threshold=0.95, labels=labels, include_below_threshold=True, top_k=2
    )
    assert [c.agent_id for c in below.candidates] == [f"{run}-bronze", f"{run}-silver"]
    assert not any(c.above_threshold for c in below.candidates)


async def test_route_task_by_text(client: Client, run: str) -> None:
    labels = {"run": run}
    await client.router.register_agent(
        AgentCard(f"{run}-legal", description="summarize legal contracts and court rulings", labels=labels)
    )
    await client.router.register_agent(
        AgentCard(f"{run}-paint", description="generate watercolor paintings of landscapes", labels=labels)
    )
    result = await client.router.route_task("summarize these legal contracts", labels=labels)
    assert result.candidates[0].agent_id == f"{run}-legal"


async def test_route_decisions_are_recorded_as_events(client: Client, run: str) -> None:
    await register_trio(client, run)
    await client.router.route_task(unit(1.0), threshold=0.6, labels={"run": run})
    found = False
    async with asyncio.timeout(30):  # the event commits with its group, within a second of the answer
        while not found:
            found = any(
                e.attributes["are.route.agent_id"].string_value == f"{run}-bronze"
                for e in await retained_events(client, event_types=["ROUTE_DECIDED"])
            )
            if not found:
                await asyncio.sleep(0.05)
    assert found


@pytest.mark.parametrize(
    ("card", "reason", "field"),
    [
        (agent_pb2.AgentCard(agent_id="bad id!"), "INVALID_ARGUMENT", "agent.agent_id"),
        (agent_pb2.AgentCard(), "INVALID_ARGUMENT", "agent.agent_id"),
        (
            agent_pb2.AgentCard(agent_id="a", capabilities=["ok", "not ok"]),
            "INVALID_ARGUMENT",
            "agent.capabilities[1]",
        ),
        (
            agent_pb2.AgentCard(agent_id="a", vector=common_pb2.Vector(values=[1.0, 2.0])),
            "DIMENSION_MISMATCH",
            "agent.vector",
        ),
        (
            agent_pb2.AgentCard(agent_id="a", vector=common_pb2.Vector(values=[float("nan")] * DIMENSION)),
            "INVALID_ARGUMENT",
            "agent.vector.values[0]",
        ),
        (
            agent_pb2.AgentCard(agent_id="a", vector=common_pb2.Vector(values=[0.0] * DIMENSION)),
            "INVALID_ARGUMENT",
            "agent.vector",
        ),
        (
            agent_pb2.AgentCard(agent_id="a", cost_per_call_micro_usd=-1),
            "INVALID_ARGUMENT",
            "agent.cost_per_call_micro_usd",
        ),
        (agent_pb2.AgentCard(agent_id="a", capacity=-1), "INVALID_ARGUMENT", "agent.capacity"),
        (agent_pb2.AgentCard(agent_id="a", capacity=100_001), "LIMIT_EXCEEDED", "agent.capacity"),
        (agent_pb2.AgentCard(agent_id="a", description="x" * 9000), "LIMIT_EXCEEDED", "agent.description"),
        (
            agent_pb2.AgentCard(agent_id="a", labels={f"k{i}": "v" for i in range(33)}),
            "LIMIT_EXCEEDED",
            "agent.labels",
        ),
        (
            agent_pb2.AgentCard(agent_id="a", labels={"bad key": "v"}),
            "INVALID_ARGUMENT",
            "agent.labels['bad key']",
        ),
        # Found by the bad-input fuzz: stored as int64 nanoseconds, it failed to encode (UNKNOWN).
        (
            agent_pb2.AgentCard(agent_id="a", typical_latency=duration_pb2.Duration(seconds=2**63 - 1)),
            "INVALID_ARGUMENT",
            "agent.typical_latency",
        ),
    ],
)
async def test_register_agent_refuses_bad_cards(
    client: Client, card: agent_pb2.AgentCard, reason: str, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.router.RegisterAgent(router_service_pb2.RegisterAgentRequest(agent=card))
    assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, reason, field)
    if reason == "DIMENSION_MISMATCH":
        assert caught.value.metadata["expected_dimension"] == str(DIMENSION)
        assert caught.value.metadata["actual_dimension"] == "2"


@pytest.mark.parametrize(
    ("request_", "reason", "field"),
    [
        (router_service_pb2.RouteTaskRequest(), "INVALID_ARGUMENT", "query"),
        (router_service_pb2.RouteTaskRequest(text=""), "INVALID_ARGUMENT", "text"),
        (router_service_pb2.RouteTaskRequest(text="x" * 9000), "LIMIT_EXCEEDED", "text"),
        (
            router_service_pb2.RouteTaskRequest(vector=common_pb2.Vector(values=[1.0])),
            "DIMENSION_MISMATCH",
            "vector",
        ),
        (
            router_service_pb2.RouteTaskRequest(
                vector=common_pb2.Vector(values=[*unit(1.0)[:5], float("inf"), *unit(1.0)[6:]])
            ),
            "INVALID_ARGUMENT",
            "vector.values[5]",
        ),
        (
            router_service_pb2.RouteTaskRequest(vector=common_pb2.Vector(values=[0.0] * DIMENSION)),
            "INVALID_ARGUMENT",
            "vector",
        ),
        (router_service_pb2.RouteTaskRequest(text="x", top_k=101), "LIMIT_EXCEEDED", "top_k"),
        (router_service_pb2.RouteTaskRequest(text="x", top_k=-1), "INVALID_ARGUMENT", "top_k"),
        (router_service_pb2.RouteTaskRequest(text="x", mode=9), "INVALID_ARGUMENT", "mode"),  # type: ignore[arg-type]  # an unknown mode on purpose
        (router_service_pb2.RouteTaskRequest(text="x", threshold=1.5), "INVALID_ARGUMENT", "threshold"),
        (router_service_pb2.RouteTaskRequest(text="x", cost_weight=-0.1), "INVALID_ARGUMENT", "cost_weight"),
        (
            router_service_pb2.RouteTaskRequest(text="x", exclude_agent_ids=["ok", ""]),
            "INVALID_ARGUMENT",
            "exclude_agent_ids[1]",
        ),
        (
            router_service_pb2.RouteTaskRequest(text="x", required_capabilities=[f"c{i}" for i in range(17)]),
            "LIMIT_EXCEEDED",
            "required_capabilities",
        ),
        (
            router_service_pb2.RouteTaskRequest(text="x", labels={f"k{i}": "v" for i in range(9)}),
            "LIMIT_EXCEEDED",
            "labels",
        ),
    ],
)
async def test_route_task_refuses_bad_requests(
    client: Client, request_: router_service_pb2.RouteTaskRequest, reason: str, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.router.RouteTask(request_)
    assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, reason, field)


@pytest.mark.parametrize(
    ("models", "reason", "field"),
    [
        ([], "INVALID_ARGUMENT", "catalog.models"),
        (
            [router_service_pb2.ModelSpec(model_id=f"m{i}") for i in range(257)],
            "LIMIT_EXCEEDED",
            "catalog.models",
        ),
        (
            [router_service_pb2.ModelSpec(model_id="a"), router_service_pb2.ModelSpec(model_id="a")],
            "INVALID_ARGUMENT",
            "catalog.models[1].model_id",
        ),
        (
            [router_service_pb2.ModelSpec(model_id="a", input_cost_per_million_tokens_micro_usd=-5)],
            "INVALID_ARGUMENT",
            "catalog.models[0].input_cost_per_million_tokens_micro_usd",
        ),
        (
            [router_service_pb2.ModelSpec(model_id="a", prior_success_rate=1.2)],
            "INVALID_ARGUMENT",
            "catalog.models[0].prior_success_rate",
        ),
        ([router_service_pb2.ModelSpec(model_id="a", tier=11)], "INVALID_ARGUMENT", "catalog.models[0].tier"),
        (
            [router_service_pb2.ModelSpec(model_id="a", output_cost_per_million_tokens_micro_usd=2**62)],
            "LIMIT_EXCEEDED",
            "catalog.models[0].output_cost_per_million_tokens_micro_usd",
        ),
    ],
)
async def test_put_model_catalog_refuses_bad_models(
    client: Client, models: list[router_service_pb2.ModelSpec], reason: str, field: str
) -> None:
    request = router_service_pb2.PutModelCatalogRequest(
        catalog=router_service_pb2.ModelCatalog(models=models)
    )
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.router.PutModelCatalog(request)
    assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, reason, field)


CHEAP = ModelSpec(
    "cheap",
    tier=1,
    input_cost_per_million_tokens_micro_usd=150_000,
    output_cost_per_million_tokens_micro_usd=600_000,
    prior_success_rate=0.9,
)
STRONG = ModelSpec(
    "strong",
    tier=8,
    input_cost_per_million_tokens_micro_usd=5_000_000,
    output_cost_per_million_tokens_micro_usd=15_000_000,
    prior_success_rate=0.9,
)


def labelled_prompts(seed: int, n: int) -> Iterator[tuple[list[float], bool]]:
    """A synthetic labelled set: easy and hard prompts in two clusters (deterministic)."""
    rng = np.random.default_rng(seed)
    centres = {False: np.eye(DIMENSION, dtype=np.float32)[0], True: np.eye(DIMENSION, dtype=np.float32)[1]}
    for i in range(n):
        hard = i % 2 == 1
        vector = centres[hard] + rng.normal(0, 0.03, DIMENSION).astype(np.float32)
        yield (vector / np.linalg.norm(vector)).tolist(), hard


async def test_model_routing_learns_from_outcomes(client: Client) -> None:
    catalog = await client.router.put_model_catalog([CHEAP, STRONG])
    assert [m.model_id for m in catalog.models] == ["cheap", "strong"]
    assert (await client.router.get_model_catalog()).models == catalog.models
    # Before any feedback both kinds of prompt go to the cheap model (prior).
    for vector, _ in labelled_prompts(seed=10, n=4):
        assert (await client.router.route_model(vector)).model_id == "cheap"
    # Feedback: the cheap model fails the hard prompts.
    for vector, hard in labelled_prompts(seed=11, n=60):
        route = await client.router.route_model(vector, quality_target=0.8)
        success = not (hard and route.model_id == "cheap")
        await client.router.report_outcome(
            route.route_id, success=success, cost_micro_usd=route.expected_cost_micro_usd
        )
    picks: dict[bool, list[str]] = {False: [], True: []}
    for vector, hard in labelled_prompts(seed=12, n=20):
        picks[hard].append((await client.router.route_model(vector, quality_target=0.8)).model_id)
    assert picks[False] == ["cheap"] * 10
    assert picks[True] == ["strong"] * 10


async def test_report_outcome_errors(client: Client) -> None:
    await client.router.put_model_catalog([CHEAP])
    route = await client.router.route_model("a short question")
    caught: pytest.ExceptionInfo[RpcError]  # the blocks below expect different errors
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.router.ReportOutcome(
            router_service_pb2.ReportOutcomeRequest(route_id=route.route_id)
        )
    assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "outcome")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.router.report_outcome(route.route_id, score=1.5)
    assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "score")
    # Found by the bad-input fuzz: a latency past int64 nanoseconds failed to encode (UNKNOWN).
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.router.ReportOutcome(
            router_service_pb2.ReportOutcomeRequest(
                route_id=route.route_id, success=True, latency=duration_pb2.Duration(seconds=10**18)
            )
        )
    assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "latency")
    # An outcome for a model outside the catalog is refused and changes nothing.
    with pytest.raises(FailedPreconditionError) as caught:
        await client.router.report_outcome(route.route_id, score=0.9, model_id="made-up")
    assert_error(caught.value, grpc.StatusCode.FAILED_PRECONDITION, "MODEL_NOT_IN_CATALOG")
    assert caught.value.metadata["model_id"] == "made-up"
    await client.router.report_outcome(route.route_id, score=0.9)
    with pytest.raises(AlreadyExistsError) as caught:
        await client.router.report_outcome(route.route_id, success=True)
    assert_error(caught.value, grpc.StatusCode.ALREADY_EXISTS, "OUTCOME_ALREADY_REPORTED")
    with pytest.raises(NotFoundError) as caught:
        await client.router.report_outcome("r0000000000000000", success=True)
    assert_error(caught.value, grpc.StatusCode.NOT_FOUND, "ROUTE_NOT_FOUND")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.router.route_model(unit(1.0, dimension=3))
    assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "DIMENSION_MISMATCH", "vector")
    # A zero vector has no direction: no similarity can be computed for it.
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.router.RouteModel(
            router_service_pb2.RouteModelRequest(vector=common_pb2.Vector(values=[0.0] * DIMENSION))
        )
    assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "vector")
    # Token estimates are bounded (price x tokens must fit the cost's int64).
    with pytest.raises(InvalidArgumentError) as caught:
        await client.raw.router.RouteModel(
            router_service_pb2.RouteModelRequest(prompt="q", estimated_input_tokens=10**10)
        )
    assert_error(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "estimated_input_tokens")
    # A catalog whose every model is excluded is not an empty catalog.
    with pytest.raises(FailedPreconditionError) as caught:
        await client.router.route_model("a short question", exclude_model_ids=["cheap"])
    assert_error(caught.value, grpc.StatusCode.FAILED_PRECONDITION, "NO_ELIGIBLE_MODEL")


@pytest.fixture(scope="module")
def vectors_only_sidecar() -> Iterator[SidecarProcess]:
    """A sidecar whose router has no embedder (callers send 8-dimensional vectors)."""
    with SidecarProcess.start(args=["--router-embedder", "off", "--router-dimension", "8"]) as process:
        yield process


@pytest.fixture
async def vectors_only(vectors_only_sidecar: SidecarProcess) -> AsyncIterator[Client]:
    async with await Client.connect(vectors_only_sidecar.target) as connected:
        yield connected


async def test_without_embedder_text_is_refused_and_catalog_starts_empty(vectors_only: Client) -> None:
    with pytest.raises(FailedPreconditionError) as caught:
        await vectors_only.router.register_agent(AgentCard("a", description="needs an embedder"))
    assert_error(caught.value, grpc.StatusCode.FAILED_PRECONDITION, "EMBEDDER_UNAVAILABLE")
    with pytest.raises(FailedPreconditionError) as caught:
        await vectors_only.router.route_task("some text")
    assert_error(caught.value, grpc.StatusCode.FAILED_PRECONDITION, "EMBEDDER_UNAVAILABLE")
    card, _ = await vectors_only.router.register_agent(AgentCard("a", vector=unit(1.0, dimension=8)))
    assert card.vector == tuple(unit(1.0, dimension=8))
    assert (await vectors_only.router.route_task(unit(1.0, dimension=8))).candidates[0].agent_id == "a"
    assert (await vectors_only.router.get_model_catalog()).models == ()
    with pytest.raises(FailedPreconditionError) as caught:
        await vectors_only.router.route_model(unit(1.0, dimension=8))
    assert_error(caught.value, grpc.StatusCode.FAILED_PRECONDITION, "MODEL_CATALOG_EMPTY")


def test_vectors_are_read_whole_from_the_packed_wire_form_or_else_one_by_one() -> None:
    values = np.random.default_rng(3).normal(size=DIMENSION).astype(np.float32)
    packed = common_pb2.Vector(values=values.tolist())
    assert _vector(packed, "vector", DIMENSION) == values.tobytes()
    # A sender may encode the repeated field unpacked (tag 0x0D per float): same components.
    unpacked = b"".join(b"\x0d" + np.float32(v).tobytes() for v in values)
    assert _vector(common_pb2.Vector.FromString(unpacked), "vector", DIMENSION) == values.tobytes()
    assert _vector(common_pb2.Vector(values=[0.5] * 3), "vector", 3) == np.full(3, 0.5, np.float32).tobytes()
