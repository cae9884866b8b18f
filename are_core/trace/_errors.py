"""The trace engine's exceptions.

::

    TraceError
    ├── InvalidPageTokenError      a page token that is malformed or of another filter
    ├── TooManySubscribersError    the live-stream bound is reached
    └── SubscriptionClosedError    the recorder shut down under a live stream
"""

from __future__ import annotations

__all__ = ["InvalidPageTokenError", "SubscriptionClosedError", "TooManySubscribersError", "TraceError"]


class TraceError(Exception):
    """Base of the trace engine's exceptions."""


class InvalidPageTokenError(TraceError):
    """A page token is malformed or was issued for a different filter."""


class TooManySubscribersError(TraceError):
    """The recorder already serves its maximum number of live streams."""


class SubscriptionClosedError(TraceError):
    """The recorder is shutting down; resume from the last sequence received."""
