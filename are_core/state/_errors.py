"""The state engine's exceptions; ``sidecar._state`` maps each to a gRPC status."""

from __future__ import annotations

__all__ = [
    "BlobDigestMismatchError",
    "BlobNotFoundError",
    "BlobSizeMismatchError",
    "DimensionMismatchError",
    "EmbedderUnavailableError",
    "InvalidJsonError",
    "InvalidPointerError",
    "InvalidStateArgumentError",
    "LimitExceededError",
    "PatchNotApplicableError",
    "ResourceLimitError",
    "StateError",
    "TaskNotHeldError",
    "UnknownTaskError",
    "VersionMismatchError",
    "VersionNotFoundError",
    "WorkflowClosedError",
    "WorkflowExistsError",
    "WorkflowNotFoundError",
]


class StateError(Exception):
    """Base of every error of the state engine.

    ``field`` names the request field at fault (``patch.operations[2].path``)
    when the caller gave one; the engine fills it in from the ``field``
    argument its methods take, so messages name the exact path.
    ``identifiers`` (``workflow_id``, ``task_id``, ``attempt``) are what a
    caller needs to act on the error (ErrorInfo metadata).
    """

    def __init__(self, message: str, *, field: str = "", **identifiers: object) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.identifiers = {k: str(v) for k, v in identifiers.items() if v not in ("", None)}


class InvalidStateArgumentError(StateError):
    """A value is malformed or out of range (INVALID_ARGUMENT)."""


class UnknownTaskError(InvalidStateArgumentError):
    """A task id the workflow does not have (a fork's ``rerun_task_ids``)."""


class InvalidJsonError(StateError):
    """Text that must be JSON is not, or a merge patch is not an object."""


class InvalidPointerError(StateError):
    """A string that must be an RFC 6901 JSON Pointer is not one."""


class LimitExceededError(StateError):
    """A documented size or count bound is exceeded; ``limit`` holds it."""

    def __init__(self, message: str, *, field: str = "", limit: int = 0) -> None:
        super().__init__(message, field=field)
        self.limit = limit


class ResourceLimitError(StateError):
    """A sidecar-wide bound is reached for now (RESOURCE_EXHAUSTED); retry after ``retry_after_s``.

    ``identifiers`` name the limit and its figures (ErrorInfo metadata).
    """

    def __init__(self, message: str, *, retry_after_s: float, **identifiers: object) -> None:
        super().__init__(message)
        self.identifiers = {k: str(v) for k, v in identifiers.items() if v not in ("", None)}
        self.retry_after_s = retry_after_s


class PatchNotApplicableError(StateError):
    """A pointer operation cannot apply to the current document."""


class VersionMismatchError(StateError):
    """``expected_version`` is not the current version; nothing changed."""

    def __init__(self, message: str, *, expected: int, current: int) -> None:
        super().__init__(message, field="expected_version")
        self.expected = expected
        self.current = current


class VersionNotFoundError(StateError):
    """The version never existed or retention removed it."""

    def __init__(self, message: str, *, oldest: int, latest: int, field: str = "version") -> None:
        super().__init__(message, field=field)
        self.oldest = oldest
        self.latest = latest


class WorkflowNotFoundError(StateError):
    """The workflow has no state (never patched, or deleted)."""


class WorkflowExistsError(StateError):
    """A fork target id already has state."""


class BlobNotFoundError(StateError):
    """No blob has this digest."""


class BlobDigestMismatchError(StateError):
    """The streamed bytes do not hash to the declared digest."""


class BlobSizeMismatchError(StateError):
    """The streamed byte count differs from the declared size."""


class DimensionMismatchError(StateError):
    """A vector's dimension differs from the workflow memory's dimension."""

    def __init__(self, message: str, *, field: str, expected: int, actual: int) -> None:
        super().__init__(message, field=field)
        self.expected = expected
        self.actual = actual


class EmbedderUnavailableError(StateError):
    """Text must be embedded and no usable embedder is configured."""


class WorkflowClosedError(StateError):
    """The workflow is closed and the write needs a running one (raised by a scheduler gate)."""


class TaskNotHeldError(StateError):
    """The named task attempt is not held under a live lease (raised by a scheduler gate)."""
