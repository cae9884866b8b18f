"""Architecture rules that a test must enforce, not a reviewer remember."""

from __future__ import annotations

import subprocess
import sys
import types

import are_sdk
import are_sdk.testing

_CHECK_CORE = """
import importlib, pkgutil, sys
import are_core
for module in pkgutil.walk_packages(are_core.__path__, "are_core."):
    importlib.import_module(module.name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in {"grpc", "google", "are_sdk", "sidecar"})
print("\\n".join(bad))
"""


def test_are_core_imports_neither_grpc_nor_protobuf() -> None:
    result = subprocess.run([sys.executable, "-c", _CHECK_CORE], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"are_core pulled in: {result.stdout}"


def test_sdk_public_names_are_pinned() -> None:
    assert sorted(are_sdk.__all__) == [
        "AbortedError",
        "AgentCard",
        "AlreadyExistsError",
        "ApprovalInfo",
        "AreError",
        "BlobReference",
        "BoundMemory",
        "BoundState",
        "Budget",
        "Cache",
        "CacheHit",
        "CacheKey",
        "CacheNamespace",
        "CacheStats",
        "CacheStored",
        "CacheUsage",
        "CachedResult",
        "Client",
        "ClientClosedError",
        "ComparisonOperator",
        "Condition",
        "DeadlineExceededError",
        "DependencyResult",
        "FailedPreconditionError",
        "FailureInfo",
        "FieldViolation",
        "InternalError",
        "InvalidArgumentError",
        "MemoryHit",
        "MemoryHydration",
        "MemoryNote",
        "ModelCatalog",
        "ModelEstimate",
        "ModelRoute",
        "ModelSpec",
        "NonRetryableError",
        "NotFoundError",
        "PermissionDeniedError",
        "PoolInfo",
        "PoolStatus",
        "Pools",
        "RawPayload",
        "RawServices",
        "ResourceExhaustedError",
        "RetryPolicy",
        "RouteCandidate",
        "RouteResult",
        "Router",
        "RpcCancelledError",
        "RpcError",
        "ServiceClient",
        "SpawnedTasks",
        "StateBlobs",
        "StateCheckpoint",
        "StateClient",
        "StateFork",
        "StateMemory",
        "StateRetention",
        "StateSnapshot",
        "SyncClient",
        "TaskContext",
        "TaskCounts",
        "TaskError",
        "TaskInfo",
        "TaskResult",
        "TaskSpec",
        "TaskState",
        "Trace",
        "TraceStreamItem",
        "TriggerRule",
        "UnauthenticatedError",
        "UnavailableError",
        "UnimplementedError",
        "UsageInfo",
        "VersionMismatchError",
        "WaitTimeoutError",
        "Worker",
        "WorkflowDescription",
        "WorkflowFailedError",
        "WorkflowHandle",
        "WorkflowSpec",
        "WorkflowSpecError",
        "WorkflowState",
        "WorkflowUpdate",
        "Workflows",
        "__version__",
    ]
    assert are_sdk.testing.__all__ == ["SidecarProcess", "SidecarStartError"]


def test_every_public_name_is_defined_and_documented() -> None:
    for name in are_sdk.__all__:
        value = getattr(are_sdk, name)
        if isinstance(value, types.UnionType):  # a type alias (TraceStreamItem): a union of classes
            assert all(isinstance(member, type) for member in value.__args__), name
        elif name != "__version__":
            assert value.__doc__, name
            assert value.__module__.startswith("are_sdk."), name


def test_every_sdk_exception_derives_from_are_error() -> None:
    for name in are_sdk.__all__:
        value = getattr(are_sdk, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, are_sdk.AreError), name
