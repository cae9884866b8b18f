"""The router engine's exceptions; ``sidecar._router`` maps them to statuses."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AgentNotFoundError",
    "DimensionMismatchError",
    "EmbedderUnavailableError",
    "ModelCatalogEmptyError",
    "ModelNotInCatalogError",
    "NoEligibleModelError",
    "NoRouteError",
    "OutcomeAlreadyReportedError",
    "RouteNotFoundError",
    "RouterError",
    "RouterLimitError",
]


class RouterError(Exception):
    """Base of every error the router engine raises."""


class AgentNotFoundError(RouterError):
    """No registered card has this agent_id."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"no registered agent card has agent_id {agent_id!r}")
        self.agent_id = agent_id


class DimensionMismatchError(RouterError):
    """A vector's dimension differs from the router index's."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"the vector has dimension {actual}, the router index has dimension {expected}")
        self.expected = expected
        self.actual = actual


class EmbedderUnavailableError(RouterError):
    """Text was given where a vector is needed, and the router has no embedder."""


class RouterLimitError(RouterError):
    """A sidecar-wide bound of the router is reached (for example 100,000 cards)."""

    def __init__(self, limit: str, bound: int) -> None:
        super().__init__(f"the router holds its maximum of {bound:,} {limit}")
        self.limit = limit
        self.bound = bound


class NoRouteError(RouterError):
    """No eligible agent reaches the similarity threshold.

    Attributes:
        threshold: The threshold that was used.
        best_below: The best eligible agents below it, as ``(agent_id,
            similarity)``, best first (possibly empty).
    """

    def __init__(self, threshold: float, best_below: Sequence[tuple[str, float]], *, hint: str = "") -> None:
        self.threshold = threshold
        self.best_below = tuple(best_below)
        if self.best_below:
            listed = ", ".join(
                f"{agent_id} ({_below(similarity, threshold)})" for agent_id, similarity in self.best_below
            )
            detail = f"; best below it: {listed}"
        else:
            detail = "; no eligible agent at all (check the filters and exclusions)"
        if hint:
            detail += f" ({hint})"
        shown = f"{threshold:.3f}" if float(f"{threshold:.3f}") == threshold else f"{threshold:g}"
        super().__init__(f"no eligible agent reaches the similarity threshold {shown}{detail}")


def _below(similarity: float, threshold: float) -> str:
    """A similarity below the threshold, in 3 decimals unless rounding would hide the gap (then 6).

    "threshold 1.000; best below it: Y (1.000)" said nothing for 0.99952 under 0.99955.
    """
    text = f"{similarity:.3f}"
    return text if float(text) < threshold else f"{similarity:.6f}"


class ModelCatalogEmptyError(RouterError):
    """RouteModel was called before any PutModelCatalog."""

    def __init__(self) -> None:
        super().__init__("the model catalog is empty; call PutModelCatalog first")


class ModelNotInCatalogError(RouterError):
    """An outcome names a model that is not in the catalog (never was, or left it)."""

    def __init__(self, model_id: str) -> None:
        super().__init__(
            f"model {model_id!r} is not in the model catalog; outcomes are kept only for catalog models"
        )
        self.model_id = model_id


class NoEligibleModelError(RouterError):
    """Every model of the catalog is excluded or too small for the prompt."""


class RouteNotFoundError(RouterError):
    """No model route has this route_id (unknown, or older than the outcome window)."""

    def __init__(self, route_id: str) -> None:
        super().__init__(f"no model route has route_id {route_id!r} (unknown or older than 7 days)")
        self.route_id = route_id


class OutcomeAlreadyReportedError(RouterError):
    """An outcome was already reported for this route_id."""

    def __init__(self, route_id: str) -> None:
        super().__init__(f"an outcome was already reported for route_id {route_id!r}")
        self.route_id = route_id
