"""The cache engine's exceptions; the sidecar maps each to one gRPC status."""

from __future__ import annotations

from are_core.storage import StorageBusyError

__all__ = [
    "BlobNotFoundError",
    "CacheError",
    "CacheLimitError",
    "DimensionMismatchError",
    "EmbedderMismatchError",
    "EmbedderUnavailableError",
    "ImmutableFieldError",
    "InvalidCacheArgumentError",
    "InvalidationBusyError",
    "NamespaceDeletingError",
    "NamespaceLimitError",
    "NamespaceNotFoundError",
    "NamespaceUnavailableError",
    "NamespaceWritesUnavailableError",
]


class CacheError(Exception):
    """Base of every cache engine error."""


class NamespaceNotFoundError(CacheError):
    """No namespace has this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"cache namespace {name!r} does not exist")


class NamespaceDeletingError(CacheError):
    """The namespace is being deleted: no store, settings change or second deletion meanwhile.

    Its entries go a chunk per commit before the namespace itself (see
    :meth:`~are_core.cache.CacheEngine.delete_namespace`); once it is gone,
    the name is free and the call finds no namespace. A deletion refused part
    way leaves the namespace in place, and the call would then succeed.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"cache namespace {name!r} is being deleted")


class NamespaceUnavailableError(CacheError):
    """A namespace is out of service until it is reloaded from storage, after a commit of it failed.

    A failed commit leaves the namespace's memory ahead of LMDB, so it is
    reloaded from LMDB once its other commits under way have ended; until
    then, and while the reload itself fails, calls on it are refused with
    this: nothing was changed, retry later. A failed reload is tried again
    at a flush, after a delay doubling with each failure (1 s, 2 s, ... up
    to a minute). ``cause`` is why the last reload failed ("" while it waits
    for those commits); ``retry_after_ns`` is how long until the next reload
    is due (0 when it is not known: as soon as those commits end).
    """

    def __init__(self, name: str, cause: str = "", retry_after_ns: int = 0) -> None:
        self.name = name
        self.cause = cause
        self.retry_after_ns = retry_after_ns
        if cause:
            seconds = max(1, -(-retry_after_ns // 1_000_000_000))
            message = (
                f"cache namespace {name!r} is out of service: reloading it from storage after a failed "
                f"commit failed ({cause}); it is tried again in about {seconds} s: retry later"
            )
        else:
            message = f"cache namespace {name!r} is being reloaded from storage after a failed commit: retry"
        super().__init__(message)


class NamespaceWritesUnavailableError(NamespaceUnavailableError):
    """A namespace takes no writes for a while: a write of it failed to commit lately.

    Each failed commit reloads the namespace from storage (see
    :class:`NamespaceUnavailableError`), which a client retrying its writes
    against a full disk must not cause at every call. So after a failed
    write the next is tried only after a delay (1 s, doubling with each
    failed try in a row, up to a minute); writes until then are refused
    with this, before they change anything, while lookups still answer.
    ``cause`` is why the last write failed; ``retry_after_ns`` how long
    until the next is tried.
    """

    def __init__(self, name: str, cause: str, retry_after_ns: int) -> None:
        # Not NamespaceUnavailableError.__init__: the same fields, its own message.
        self.name = name
        self.cause = cause
        self.retry_after_ns = retry_after_ns
        seconds = max(1, -(-retry_after_ns // 1_000_000_000))
        CacheError.__init__(
            self,
            f"cache namespace {name!r} takes no writes for about {seconds} s: its last write failed "
            f"({cause}), and the next is tried then (lookups still answer): retry later",
        )


class DimensionMismatchError(CacheError):
    """A vector's dimension differs from its namespace's."""

    def __init__(self, *, field: str, expected: int, got: int) -> None:
        self.field = field
        self.expected = expected
        self.got = got
        super().__init__(f"`{field}` has {got} components; the namespace's dimension is {expected}")


class EmbedderUnavailableError(CacheError):
    """The text needs embedding but the namespace has no embedder, or it cannot be loaded."""

    def __init__(self, message: str, *, field: str = "") -> None:
        self.field = field
        super().__init__(message)


class ImmutableFieldError(CacheError):
    """A namespace setting fixed at creation was changed."""

    def __init__(self, *, field: str, old: object, new: object) -> None:
        self.field = field
        super().__init__(f"`{field}` is fixed at creation: it is {old!r}, the request has {new!r}")


class BlobNotFoundError(CacheError):
    """A stored response names a blob the sidecar's blob store does not hold."""

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(message)


class CacheLimitError(CacheError):
    """A value is over a bound (an entry larger than its namespace's max_bytes); ``limit`` holds it."""

    def __init__(self, message: str, *, field: str, limit: int) -> None:
        self.field = field
        self.limit = limit
        super().__init__(message)


class InvalidCacheArgumentError(CacheError):
    """A value the engine cannot use (a setting out of range)."""

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(message)


class NamespaceLimitError(CacheError):
    """Creating the namespace would pass the bound on namespaces."""


class EmbedderMismatchError(CacheError):
    """The namespace's configured embedder no longer fits it (another dimension): text cannot be embedded."""

    def __init__(self, namespace: str, reason: str) -> None:
        self.namespace = namespace
        super().__init__(f"cache namespace {namespace!r} cannot embed text: {reason}")


class InvalidationBusyError(StorageBusyError):
    """An invalidation refused for backpressure after ``removed_count`` entries were removed (0: none).

    An invalidation removes its entries a chunk per commit (see
    :meth:`~are_core.cache.CacheEngine.invalidate`); the storage refused the
    next chunk before it changed anything, so the chunks before it stay
    removed, and no others are. A ``StorageBusyError`` (retry later) that
    also says how far the call got: a retry of the same call removes the
    rest, since removed entries are no longer found.
    """

    def __init__(self, busy: StorageBusyError, *, namespace: str, removed_count: int) -> None:
        super().__init__(
            limit_name=busy.limit_name, limit=busy.limit, pending=busy.pending, incoming=busy.incoming
        )
        self.namespace = namespace
        self.removed_count = removed_count
        message = (
            f"{busy}; {removed_count} entries of cache namespace {namespace!r} were removed before "
            "(they stay removed; a retry removes the rest)"
        )
        self.args = (message,)
