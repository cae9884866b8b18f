"""The capabilities this build serves, in start order (dependencies first).

Adding a capability is one line here; see :mod:`sidecar._capability`.
"""

from __future__ import annotations

from sidecar._capability import Capability

__all__ = ["CAPABILITIES"]

CAPABILITIES: tuple[type[Capability], ...] = ()
