"""The capabilities this build serves, in start order (dependencies first).

Adding a capability is one line here; see :mod:`sidecar._capability`.
"""

from __future__ import annotations

from sidecar._cache import CacheCapability
from sidecar._capability import Capability
from sidecar._router import RouterCapability
from sidecar._scheduler import SchedulerCapability
from sidecar._state import StateCapability
from sidecar._trace import TraceCapability

__all__ = ["CAPABILITIES"]

CAPABILITIES: tuple[type[Capability], ...] = (
    # First: it sets runtime.events, the sink every later capability records to.
    TraceCapability,
    # Before the scheduler, which routes intents and reports worker load through it.
    RouterCapability,
    StateCapability,
    # Before the scheduler, whose task short-circuit asks it (lookup_for_task).
    CacheCapability,
    # Serves SchedulerService and WorkerService.
    SchedulerCapability,
)
