"""The router's records (stored in LMDB as MessagePack) and its answers.

The records are ``gc=False``: they hold only scalars, strings, bytes, tuples,
string maps and other such records, so they can never be part of a reference
cycle; leaving them out of the cyclic collector's accounting keeps 10,000
cards and the records made per RouteTask from triggering collections.
"""

from __future__ import annotations

import enum

import msgspec

__all__ = [
    "AgentSource",
    "AgentSpec",
    "AgentView",
    "ModelChoice",
    "ModelEstimate",
    "ModelSpec",
    "OutcomeRecord",
    "RouteCandidate",
    "RouteMode",
    "RouteQuery",
    "RouteRecord",
    "RouteResult",
    "RouterSettings",
    "StoredAgent",
    "StoredCatalog",
]


class RouteMode(enum.StrEnum):
    """How RouteTask ranks the agents that reach the threshold (proto ``RouteMode``)."""

    BEST_MATCH = "BEST_MATCH"
    COST_BIASED = "COST_BIASED"


class AgentSource(enum.StrEnum):
    """How a card came to be in the index (proto ``AgentSource``)."""

    REGISTERED = "REGISTERED"
    WORKER = "WORKER"


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A card as a caller (RegisterAgent) or a worker (Connect) declares it.

    ``vector`` is the caller's embedding as float32 bytes, or None to embed
    ``description`` (or, when empty, the capability names and display name).
    """

    agent_id: str
    display_name: str = ""
    description: str = ""
    capabilities: tuple[str, ...] = ()
    vector: bytes | None = None
    cost_per_call_micro_usd: int = 0
    typical_latency_ns: int = 0
    capacity: int = 1
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class StoredAgent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A registered card as kept in table ``router_agents`` (key: agent_id)."""

    spec: AgentSpec
    create_time_ns: int
    update_time_ns: int
    embedded_vector: bytes | None = None
    """The embedding of the description when no vector was given, and the embedder that made it."""
    embedder: str = ""
    key: int = 0
    """The card's key in the vector index (stable, so a saved index can be reused)."""


class AgentView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A card with its live fields, as ListAgents and RegisterAgent return it."""

    spec: AgentSpec
    source: AgentSource
    available: bool
    running: int
    capacity: int
    worker_ids: tuple[str, ...]
    create_time_ns: int
    update_time_ns: int

    @property
    def load(self) -> float:
        """Calls in flight divided by capacity: 0 idle, 1 or more full."""
        return self.running / self.capacity if self.capacity > 0 else 0.0


class RouterSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The router's defaults and bounds.

    Attributes:
        threshold: The default similarity a RouteTask candidate needs.
        cost_weight: The default weight of cost in COST_BIASED mode.
        mode: The mode used when a request leaves it unspecified.
        max_agents: The most cards (registered and worker) in the index.
        outcome_neighbours: k, the past outcomes per model consulted by
            RouteModel's estimator.
        min_outcomes: Fewer neighbouring outcomes than this and the model's
            prior success rate is used instead.
        outcome_min_similarity: Past outcomes less similar than this to the
            prompt are not neighbours (they say nothing about it).
        max_outcomes_per_model: Outcomes kept per model; the oldest go first.
        route_ttl_ns: How long a route_id accepts its outcome (7 days).
        index_rebuild_changes: The agents index is rebuilt in the background
            once this many card vectors (or an eighth of the index, if more)
            were removed or replaced since it was built.
        model_exploration: The share of RouteModel calls, where a model
            cheaper than the choice has fewer than ``min_outcomes`` similar
            outcomes, that go to that model instead (the cheapest such), so
            that a model whose prior keeps it from being chosen still gets
            the history to be estimated by; 0 never explores.
        max_routes: Model routes kept at most (about 1 KiB each at 256
            dimensions, reported or not); RouteModel deletes the oldest
            beyond it, whose outcome can then no longer be reported.
        max_text_chars_embedded: Long prompts are embedded from their start.
        route_event_flush_interval_ns: How long a ROUTE_DECIDED event may
            wait to commit with the next ones (a route changes no state; a
            SIGKILL loses at most this much of them, and a live trace stream
            sees them up to this late). Each commit costs RouteTask's tail
            more than each event does, so they go in few large groups.
        max_pending_route_events: ROUTE_DECIDED events queued at most; more
            are dropped (and counted) until the queue commits.
    """

    threshold: float = 0.5
    cost_weight: float = 1.0
    mode: RouteMode = RouteMode.COST_BIASED
    max_agents: int = 100_000
    outcome_neighbours: int = 16
    min_outcomes: int = 5
    outcome_min_similarity: float = 0.3
    max_outcomes_per_model: int = 10_000
    route_ttl_ns: int = 7 * 24 * 3600 * 1_000_000_000
    max_routes: int = 250_000
    model_exploration: float = 0.05
    index_rebuild_changes: int = 1_024
    max_text_chars_embedded: int = 32 * 1024
    route_event_flush_interval_ns: int = 1_000_000_000
    max_pending_route_events: int = 10_000


class RouteQuery(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A RouteTask request: text or vector (float32 bytes), filters and ranking."""

    text: str | None = None
    vector: bytes | None = None
    top_k: int = 5
    mode: RouteMode | None = None
    threshold: float | None = None
    cost_weight: float | None = None
    exclude_agent_ids: frozenset[str] = frozenset()
    required_capabilities: tuple[str, ...] = ()
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    include_unavailable: bool = False
    include_below_threshold: bool = False
    capable_only: bool = False
    """Only agents declaring at least one capability (a worker class a task can be dispatched to)."""


class RouteCandidate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One ranked agent."""

    agent_id: str
    capability: str
    similarity: float
    score: float
    cost_per_call_micro_usd: int
    load: float
    available: bool
    above_threshold: bool
    reason: str


class RouteResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The ranked candidates, best first, with the mode and threshold used."""

    candidates: tuple[RouteCandidate, ...]
    mode: RouteMode
    threshold: float


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One model of the catalog (proto ``ModelSpec``, defaults filled in)."""

    model_id: str
    tier: int = 1
    input_cost_per_million_tokens_micro_usd: int = 0
    output_cost_per_million_tokens_micro_usd: int = 0
    prior_success_rate: float = 0.5
    context_window_tokens: int = 0
    labels: dict[str, str] = msgspec.field(default_factory=dict)

    def expected_cost(self, input_tokens: int, output_tokens: int) -> int:
        """The cost of one call in micro-USD, rounded up."""
        total = (
            input_tokens * self.input_cost_per_million_tokens_micro_usd
            + output_tokens * self.output_cost_per_million_tokens_micro_usd
        )
        return -(-total // 1_000_000)


class StoredCatalog(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The model catalog as kept under ``router_meta/catalog``."""

    models: tuple[ModelSpec, ...]
    update_time_ns: int


class RouteRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A model route awaiting its outcome (table ``router_routes``, key: route_id)."""

    model_id: str
    create_time_ns: int
    vector: bytes
    quality_target: float
    reported: bool = False


class OutcomeRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A reported outcome (table ``router_outcomes``, key: big-endian sequence)."""

    route_id: str
    model_id: str
    score: float
    vector: bytes
    report_time_ns: int
    success: bool | None = None
    cost_micro_usd: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ns: int = 0


class ModelEstimate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The estimator's view of one model for one prompt."""

    model_id: str
    expected_quality: float
    expected_cost_micro_usd: int
    samples: int
    tier: int


class ModelChoice(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """RouteModel's answer."""

    route_id: str
    model_id: str
    expected_quality: float
    expected_cost_micro_usd: int
    target_met: bool
    estimates: tuple[ModelEstimate, ...]
    reason: str
