"""Router: capability routing over agent cards and model routing learned from outcomes.

:class:`Router` keeps agent cards (registered ones durable in LMDB, worker
ones live), ranks them for a task by semantic match over a vector index
(best match or cost-biased, load-aware, with filters and exclusions, never
silently below the threshold), and picks the cheapest model of a catalog
expected to reach a quality target, estimating each model's quality from the
k nearest past outcomes reported for it.

Scheduler integration (the sidecar's ``RouterCapability.engine``):

* ``route_for_intent(text, exclude_agent_ids=..., required_capabilities=...,
  labels=..., served=...)`` returns the :class:`RouteCandidate` a task's
  ``intent`` goes to (cost-biased, the router's default threshold and cost
  weight, never an unavailable agent, a served class before an unserved
  card; ``served`` defaults to ``serves``, the scheduler passes its own,
  which counts unary pollers too) or raises :class:`NoRouteError`, whose
  message lists the best agents below the threshold (fail the task with
  FAILURE_KIND_ROUTING). Dispatch to ``candidate.capability``; record
  TASK_ROUTED yourself.
* ``update_worker(worker_id, name=..., capabilities=..., running=...,
  capacity=..., available=..., card=...)`` on connect (the first call adds
  the worker to the card ``card.agent_id`` or ``name``) and whenever its
  load or availability changes; ``available=False`` the moment it drains or
  its stream breaks; ``remove_worker(worker_id)`` once it is gone (a worker
  card with no worker left disappears). Both return the capabilities whose
  ``serves(capability)`` answer they changed (first worker taking work
  came, last one went), on which the scheduler re-routes the intent tasks
  still queued. ``sidecar._router.agent_spec_from_card`` converts a
  ``WorkerRegistration.agent_card``.

Exceptions::

    RouterError
    ├── AgentNotFoundError           no registered card with this id
    ├── DimensionMismatchError       a vector of the wrong dimension
    ├── EmbedderUnavailableError     text given, no embedder
    ├── RouterLimitError             a sidecar-wide bound is reached
    ├── NoRouteError                 nothing clears the threshold (.best_below)
    ├── ModelCatalogEmptyError       RouteModel before PutModelCatalog
    ├── ModelNotInCatalogError       an outcome for a model outside the catalog
    ├── NoEligibleModelError         every model excluded or too small
    ├── RouteNotFoundError           unknown or expired route_id
    └── OutcomeAlreadyReportedError  a second outcome for one route
"""

from ._engine import AGENTS_TABLE, META_TABLE, OUTCOMES_TABLE, ROUTES_TABLE, TABLES, Router
from ._errors import (
    AgentNotFoundError,
    DimensionMismatchError,
    EmbedderUnavailableError,
    ModelCatalogEmptyError,
    ModelNotInCatalogError,
    NoEligibleModelError,
    NoRouteError,
    OutcomeAlreadyReportedError,
    RouteNotFoundError,
    RouterError,
    RouterLimitError,
)
from ._model import (
    AgentSource,
    AgentSpec,
    AgentView,
    ModelChoice,
    ModelEstimate,
    ModelSpec,
    OutcomeRecord,
    RouteCandidate,
    RouteMode,
    RouteQuery,
    RouteRecord,
    RouteResult,
    RouterSettings,
    StoredAgent,
    StoredCatalog,
)
from ._protocols import EmbedderLike, IndexFactory, VectorIndexLike

__all__ = [
    "AGENTS_TABLE",
    "META_TABLE",
    "OUTCOMES_TABLE",
    "ROUTES_TABLE",
    "TABLES",
    "AgentNotFoundError",
    "AgentSource",
    "AgentSpec",
    "AgentView",
    "DimensionMismatchError",
    "EmbedderLike",
    "EmbedderUnavailableError",
    "IndexFactory",
    "ModelCatalogEmptyError",
    "ModelChoice",
    "ModelEstimate",
    "ModelNotInCatalogError",
    "ModelSpec",
    "NoEligibleModelError",
    "NoRouteError",
    "OutcomeAlreadyReportedError",
    "OutcomeRecord",
    "RouteCandidate",
    "RouteMode",
    "RouteNotFoundError",
    "RouteQuery",
    "RouteRecord",
    "RouteResult",
    "Router",
    "RouterError",
    "RouterLimitError",
    "RouterSettings",
    "StoredAgent",
    "StoredCatalog",
    "VectorIndexLike",
]
