"""ARE's Python SDK: talk to the Agent Runtime Environment sidecar.

:class:`Client` (async) and :class:`SyncClient` (blocking, the same code) open
one channel to a sidecar; every error is an :class:`AreError` (see
:mod:`are_sdk._errors` for the tree); :mod:`are_sdk.testing` starts a real
sidecar for tests.
"""

from are_sdk._client import Client, RawServices, ServiceClient
from are_sdk._errors import (
    AbortedError,
    AlreadyExistsError,
    AreError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RpcCancelledError,
    RpcError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    VersionMismatchError,
)
from are_sdk._sync import SyncClient

__version__ = "0.1.0"

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "AreError",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "RawServices",
    "ResourceExhaustedError",
    "RpcCancelledError",
    "RpcError",
    "ServiceClient",
    "SyncClient",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "VersionMismatchError",
    "__version__",
]
