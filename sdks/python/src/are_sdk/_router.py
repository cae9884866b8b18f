"""The router facade: agent cards, task routing and model routing (``client.router``).

Register what your agents can do and what they cost, then ask which one
should take a task::

    await client.router.register_agent(
        AgentCard("summarizer", description="summarise long documents", capabilities=("summarize",),
                  cost_per_call_micro_usd=2_000)
    )
    result = await client.router.route_task("summarise this contract")
    best = result.candidates[0]

And which model should answer a prompt, reporting how it went so the router
learns which prompts the cheap model handles::

    route = await client.router.route_model("What is 2 + 2?", quality_target=0.8)
    ...  # call route.model_id
    await client.router.report_outcome(route.route_id, success=True, cost_micro_usd=42)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from are_sdk._proto.are.v1 import agent_pb2, common_pb2, router_service_pb2

if TYPE_CHECKING:
    from are_sdk._client import ServiceClient

__all__ = [
    "AgentCard",
    "ModelCatalog",
    "ModelEstimate",
    "ModelRoute",
    "ModelSpec",
    "RouteCandidate",
    "RouteResult",
    "Router",
]

RouteModeName = Literal["cost_biased", "best_match"]
_MODES: dict[str, router_service_pb2.RouteMode] = {
    "": router_service_pb2.ROUTE_MODE_UNSPECIFIED,
    "best_match": router_service_pb2.ROUTE_MODE_BEST_MATCH,
    "cost_biased": router_service_pb2.ROUTE_MODE_COST_BIASED,
}
_MODE_NAMES = {number: name for name, number in _MODES.items()}
_SOURCES = {
    agent_pb2.AGENT_SOURCE_REGISTERED: "registered",
    agent_pb2.AGENT_SOURCE_WORKER: "worker",
}


@dataclass(frozen=True, slots=True)
class AgentCard:
    """An agent as the router sees it: what it does, costs, and how busy it is.

    The first fields are what you register; ``source`` and the fields after
    it are filled in by the sidecar (and ignored when registering).

    Attributes:
        agent_id: Unique id in the index (1 to 128 characters of [A-Za-z0-9._:-]).
        description: What the agent does, in prose; embedded by the router
            when no ``vector`` is given.
        capabilities: Capability names it serves; a routed task goes to the first.
        display_name: A human-readable name.
        vector: Your own embedding of the card, of the router's dimension.
        cost_per_call_micro_usd: Typical cost of one call (1 USD = 1,000,000).
        typical_latency: Typical latency of one call.
        capacity: Calls it can serve at once (0 means 1).
        labels: Free labels for routing filters.
        source: ``"registered"`` or ``"worker"`` (declared by a connected worker).
        available: Whether it can take work now.
        running: Calls in flight now.
        worker_ids: Connected workers backing the card.
        create_time: When it was first registered.
        update_time: When it last changed.
    """

    agent_id: str
    description: str = ""
    capabilities: Sequence[str] = ()
    display_name: str = ""
    vector: Sequence[float] | None = None
    cost_per_call_micro_usd: int = 0
    typical_latency: timedelta | None = None
    capacity: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    source: str = ""
    available: bool = True
    running: int = 0
    worker_ids: tuple[str, ...] = ()
    create_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def load(self) -> float:
        """Calls in flight divided by capacity: 0 idle, 1 or more full."""
        return self.running / self.capacity if self.capacity > 0 else 0.0

    def to_proto(self) -> agent_pb2.AgentCard:
        """The card as the ``are.v1.AgentCard`` message (input fields only)."""
        card = agent_pb2.AgentCard(
            agent_id=self.agent_id,
            display_name=self.display_name,
            description=self.description,
            capabilities=list(self.capabilities),
            cost_per_call_micro_usd=self.cost_per_call_micro_usd,
            capacity=self.capacity,
            labels=dict(self.labels),
        )
        if self.vector is not None:
            card.vector.CopyFrom(_vector(self.vector))
        if self.typical_latency is not None:
            card.typical_latency.FromTimedelta(self.typical_latency)
        return card

    @classmethod
    def from_proto(cls, card: agent_pb2.AgentCard) -> AgentCard:
        """A card from the ``are.v1.AgentCard`` message."""
        return cls(
            agent_id=card.agent_id,
            description=card.description,
            capabilities=tuple(card.capabilities),
            display_name=card.display_name,
            vector=tuple(card.vector.values) if card.HasField("vector") else None,
            cost_per_call_micro_usd=card.cost_per_call_micro_usd,
            typical_latency=card.typical_latency.ToTimedelta() if card.HasField("typical_latency") else None,
            capacity=card.capacity,
            labels=dict(card.labels),
            source=_SOURCES.get(card.source, ""),
            available=card.available,
            running=card.running,
            worker_ids=tuple(card.worker_ids),
            create_time=card.create_time.ToDatetime(tzinfo=UTC) if card.HasField("create_time") else None,
            update_time=card.update_time.ToDatetime(tzinfo=UTC) if card.HasField("update_time") else None,
        )


@dataclass(frozen=True, slots=True)
class RouteCandidate:
    """One ranked agent of a :meth:`Router.route_task` answer.

    Attributes:
        agent_id: The agent.
        capability: The capability a task would be dispatched to.
        similarity: Cosine similarity of the agent to the task.
        score: The ranking score of the mode used.
        cost_per_call_micro_usd: The agent's cost per call.
        load: Running calls divided by capacity.
        available: Whether it can take work now.
        above_threshold: Whether the similarity reaches the threshold.
        reason: Why it ranks where it does, for humans.
    """

    agent_id: str
    capability: str
    similarity: float
    score: float
    cost_per_call_micro_usd: int
    load: float
    available: bool
    above_threshold: bool
    reason: str


@dataclass(frozen=True, slots=True)
class RouteResult:
    """The ranked agents for a task, best first, with the mode and threshold used."""

    candidates: tuple[RouteCandidate, ...]
    mode: str
    threshold: float


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model of the catalog.

    Attributes:
        model_id: The id the worker calls the model by.
        tier: 1 (cheapest, weakest) to 10 (strongest); breaks ties.
        input_cost_per_million_tokens_micro_usd: Price of input tokens.
        output_cost_per_million_tokens_micro_usd: Price of output tokens.
        prior_success_rate: Success probability assumed with too little
            history, in [0, 1]; 0 means 0.5.
        context_window_tokens: Context window; 0 means unknown.
        labels: Free labels.
    """

    model_id: str
    tier: int = 1
    input_cost_per_million_tokens_micro_usd: int = 0
    output_cost_per_million_tokens_micro_usd: int = 0
    prior_success_rate: float = 0.0
    context_window_tokens: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_proto(self) -> router_service_pb2.ModelSpec:
        """The ``are.v1.ModelSpec`` message."""
        return router_service_pb2.ModelSpec(
            model_id=self.model_id,
            tier=self.tier,
            input_cost_per_million_tokens_micro_usd=self.input_cost_per_million_tokens_micro_usd,
            output_cost_per_million_tokens_micro_usd=self.output_cost_per_million_tokens_micro_usd,
            prior_success_rate=self.prior_success_rate,
            context_window_tokens=self.context_window_tokens,
            labels=dict(self.labels),
        )

    @classmethod
    def from_proto(cls, spec: router_service_pb2.ModelSpec) -> ModelSpec:
        """A spec from the ``are.v1.ModelSpec`` message."""
        return cls(
            model_id=spec.model_id,
            tier=spec.tier,
            input_cost_per_million_tokens_micro_usd=spec.input_cost_per_million_tokens_micro_usd,
            output_cost_per_million_tokens_micro_usd=spec.output_cost_per_million_tokens_micro_usd,
            prior_success_rate=spec.prior_success_rate,
            context_window_tokens=spec.context_window_tokens,
            labels=dict(spec.labels),
        )


@dataclass(frozen=True, slots=True)
class ModelCatalog:
    """The models RouteModel chooses from, and when the catalog was last replaced."""

    models: tuple[ModelSpec, ...]
    update_time: datetime | None


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    """The router's estimate for one model and one prompt.

    ``samples`` is how many similar past outcomes it rests on; 0 means the
    model's prior success rate.
    """

    model_id: str
    expected_quality: float
    expected_cost_micro_usd: int
    samples: int


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """The model chosen for a prompt; report how it went with ``route_id``.

    Attributes:
        route_id: Pass it to :meth:`Router.report_outcome` (valid 7 days).
        model_id: The chosen model.
        expected_quality: Its expected success probability (or mean score).
        expected_cost_micro_usd: Its expected cost for this call.
        target_met: Whether it is expected to reach the quality target.
        estimates: Every eligible model's estimate, cheapest first.
        reason: Why this model, for humans.
    """

    route_id: str
    model_id: str
    expected_quality: float
    expected_cost_micro_usd: int
    target_met: bool
    estimates: tuple[ModelEstimate, ...]
    reason: str


class Router:
    """Capability and model routing: ``client.router``.

    Errors are the SDK's exceptions: ``InvalidArgumentError`` for bad input
    (``field_violations`` names the field; reason ``DIMENSION_MISMATCH`` for
    a vector of the wrong size), ``NotFoundError`` (reasons
    ``AGENT_NOT_FOUND``, ``NO_ROUTE_ABOVE_THRESHOLD``, ``ROUTE_NOT_FOUND``),
    ``FailedPreconditionError`` (``EMBEDDER_UNAVAILABLE``,
    ``MODEL_CATALOG_EMPTY``, ``NO_ELIGIBLE_MODEL``, ``MODEL_NOT_IN_CATALOG``),
    ``AlreadyExistsError`` (``OUTCOME_ALREADY_REPORTED``).
    """

    def __init__(self, raw: ServiceClient) -> None:
        self._raw = raw

    async def register_agent(
        self, card: AgentCard, *, timeout: float | None = 30.0
    ) -> tuple[AgentCard, bool]:
        """Adds a card, or replaces the card with the same id; returns it as stored and whether it is new."""
        response: router_service_pb2.RegisterAgentResponse = await self._raw.RegisterAgent(
            router_service_pb2.RegisterAgentRequest(agent=card.to_proto()), timeout=timeout
        )
        return AgentCard.from_proto(response.agent), response.created

    async def deregister_agent(self, agent_id: str, *, timeout: float | None = 30.0) -> None:
        """Removes a registered card (``NotFoundError``, reason ``AGENT_NOT_FOUND``, if there is none)."""
        await self._raw.DeregisterAgent(
            router_service_pb2.DeregisterAgentRequest(agent_id=agent_id), timeout=timeout
        )

    async def list_agents(
        self,
        *,
        capability: str = "",
        labels: Mapping[str, str] | None = None,
        available_only: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = 30.0,
    ) -> tuple[list[AgentCard], str]:
        """One page of cards by agent_id, and the token of the next page ("" on the last)."""
        response: router_service_pb2.ListAgentsResponse = await self._raw.ListAgents(
            router_service_pb2.ListAgentsRequest(
                page_size=page_size,
                page_token=page_token,
                capability=capability,
                labels=dict(labels or {}),
                available_only=available_only,
            ),
            timeout=timeout,
        )
        return [AgentCard.from_proto(c) for c in response.agents], response.next_page_token

    async def iter_agents(
        self,
        *,
        capability: str = "",
        labels: Mapping[str, str] | None = None,
        available_only: bool = False,
        page_size: int = 0,
    ) -> AsyncIterator[AgentCard]:
        """Every card matching the filters, page by page."""
        token = ""
        while True:
            cards, token = await self.list_agents(
                capability=capability,
                labels=labels,
                available_only=available_only,
                page_size=page_size,
                page_token=token,
            )
            for card in cards:
                yield card
            if not token:
                return

    async def route_task(
        self,
        task: str | Sequence[float],
        *,
        top_k: int = 0,
        mode: RouteModeName | None = None,
        threshold: float | None = None,
        cost_weight: float | None = None,
        exclude_agent_ids: Iterable[str] = (),
        required_capabilities: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        include_unavailable: bool = False,
        include_below_threshold: bool = False,
        timeout: float | None = 30.0,
    ) -> RouteResult:
        """Ranks agents for a task given as text or as a vector; returns the top_k (0 means 5).

        ``mode`` is ``"cost_biased"`` (the cheapest agent above the
        threshold first, with ``cost_weight`` 1) or ``"best_match"``; None is
        the router's default, as are ``threshold`` and ``cost_weight``.

        Raises:
            NotFoundError: Reason ``NO_ROUTE_ABOVE_THRESHOLD`` when no agent
                reaches the threshold (the message lists the best below it;
                ask with ``include_below_threshold=True`` to get them as data).
        """
        request = router_service_pb2.RouteTaskRequest(
            top_k=top_k,
            mode=_MODES[mode or ""],
            exclude_agent_ids=list(exclude_agent_ids),
            required_capabilities=list(required_capabilities),
            labels=dict(labels or {}),
            include_unavailable=include_unavailable,
            include_below_threshold=include_below_threshold,
        )
        if isinstance(task, str):
            request.text = task
        else:
            request.vector.CopyFrom(_vector(task))
        if threshold is not None:
            request.threshold = threshold
        if cost_weight is not None:
            request.cost_weight = cost_weight
        response: router_service_pb2.RouteTaskResponse = await self._raw.RouteTask(request, timeout=timeout)
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
                for c in response.candidates
            ),
            mode=_MODE_NAMES.get(response.mode, ""),
            threshold=response.threshold,
        )

    async def put_model_catalog(
        self, models: Iterable[ModelSpec], *, timeout: float | None = 30.0
    ) -> ModelCatalog:
        """Replaces the model catalog; returns it with defaults filled in."""
        response: router_service_pb2.PutModelCatalogResponse = await self._raw.PutModelCatalog(
            router_service_pb2.PutModelCatalogRequest(
                catalog=router_service_pb2.ModelCatalog(models=[m.to_proto() for m in models])
            ),
            timeout=timeout,
        )
        return _catalog(response.catalog)

    async def get_model_catalog(self, *, timeout: float | None = 30.0) -> ModelCatalog:
        """The current model catalog (no models before the first put)."""
        response: router_service_pb2.GetModelCatalogResponse = await self._raw.GetModelCatalog(
            router_service_pb2.GetModelCatalogRequest(), timeout=timeout
        )
        return _catalog(response.catalog)

    async def route_model(
        self,
        prompt: str | Sequence[float],
        *,
        quality_target: float = 0.0,
        exclude_model_ids: Iterable[str] = (),
        estimated_input_tokens: int = 0,
        estimated_output_tokens: int = 0,
        timeout: float | None = 30.0,
    ) -> ModelRoute:
        """Picks the cheapest model expected to reach ``quality_target`` (0 means 0.8) for a prompt.

        Raises:
            FailedPreconditionError: Reason ``MODEL_CATALOG_EMPTY`` before
                :meth:`put_model_catalog`, ``NO_ELIGIBLE_MODEL`` when every
                model is excluded or too small.
        """
        request = router_service_pb2.RouteModelRequest(
            quality_target=quality_target,
            exclude_model_ids=list(exclude_model_ids),
            estimated_input_tokens=estimated_input_tokens,
            estimated_output_tokens=estimated_output_tokens,
        )
        if isinstance(prompt, str):
            request.prompt = prompt
        else:
            request.vector.CopyFrom(_vector(prompt))
        response: router_service_pb2.RouteModelResponse = await self._raw.RouteModel(request, timeout=timeout)
        return ModelRoute(
            route_id=response.route_id,
            model_id=response.model_id,
            expected_quality=response.expected_quality,
            expected_cost_micro_usd=response.expected_cost_micro_usd,
            target_met=response.target_met,
            estimates=tuple(
                ModelEstimate(
                    model_id=e.model_id,
                    expected_quality=e.expected_quality,
                    expected_cost_micro_usd=e.expected_cost_micro_usd,
                    samples=e.samples,
                )
                for e in response.estimates
            ),
            reason=response.reason,
        )

    async def report_outcome(
        self,
        route_id: str,
        *,
        success: bool | None = None,
        score: float | None = None,
        model_id: str = "",
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_micro_usd: int = 0,
        latency: timedelta | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        """Reports how a routed call went; give exactly one of ``success`` and ``score`` (in [0, 1]).

        ``model_id`` names the model actually called when it differs from
        the chosen one.

        Raises:
            NotFoundError: Reason ``ROUTE_NOT_FOUND``.
            AlreadyExistsError: Reason ``OUTCOME_ALREADY_REPORTED``.
            FailedPreconditionError: Reason ``MODEL_NOT_IN_CATALOG``: the
                model is not in the catalog (nothing is stored).
            ValueError: Neither or both of ``success`` and ``score``.
        """
        if (success is None) == (score is None):
            msg = "give exactly one of success and score"
            raise ValueError(msg)
        request = router_service_pb2.ReportOutcomeRequest(
            route_id=route_id,
            model_id=model_id,
            usage=common_pb2.Usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_micro_usd=cost_micro_usd,
                llm_calls=1,
            ),
        )
        if success is not None:
            request.success = success
        if score is not None:
            request.score = score
        if latency is not None:
            request.latency.FromTimedelta(latency)
        await self._raw.ReportOutcome(request, timeout=timeout)


def _vector(values: Sequence[float]) -> common_pb2.Vector:
    return common_pb2.Vector(values=[float(v) for v in values])


def _catalog(catalog: router_service_pb2.ModelCatalog) -> ModelCatalog:
    return ModelCatalog(
        models=tuple(ModelSpec.from_proto(m) for m in catalog.models),
        update_time=catalog.update_time.ToDatetime(tzinfo=UTC) if catalog.HasField("update_time") else None,
    )
