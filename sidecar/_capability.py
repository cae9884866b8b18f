"""How a service implementation plugs into the sidecar.

Each capability (scheduler + worker, state, cache, router, trace) is one
:class:`Capability` subclass living in its own ``sidecar/_<noun>.py`` module,
listed once in :data:`sidecar._capabilities.CAPABILITIES`. The composition
root opens storage with the union of every capability's tables, constructs
the capabilities in list order with one shared :class:`Runtime`, starts them
(load state, rebuild derived indexes), registers their servicers, and stops
them in reverse order on shutdown. Services that no capability serves answer
UNIMPLEMENTED.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

import grpc

from are_core.storage import GroupCommitter, Storage
from are_core.trace import EventSink
from sidecar._config import Config

__all__ = ["Capability", "Runtime"]

_C = TypeVar("_C", bound="Capability")


@dataclass(slots=True)
class Runtime:
    """What every capability shares: configuration, storage, the group committer, the event sink.

    ``capabilities`` holds the capabilities constructed so far, so a later one
    can find an earlier one it depends on (the scheduler finds the trace
    recorder and the cache) with :meth:`find`.
    """

    config: Config
    storage: Storage
    committer: GroupCommitter
    capabilities: list[Capability] = field(default_factory=list)
    # Set by the trace capability (listed first) when it is constructed;
    # None means events are not recorded in this build.
    events: EventSink | None = None

    @property
    def data_dir(self) -> Path:
        """The sidecar's data folder (derived indexes live beside LMDB here)."""
        return self.config.data_dir

    def find(self, kind: type[_C]) -> _C | None:
        """The constructed capability of this class, or None if it is absent."""
        for capability in self.capabilities:
            if isinstance(capability, kind):
                return capability
        return None


class Capability(abc.ABC):
    """One or more ``are.v1`` services backed by an engine in ``are_core``.

    Attributes:
        tables: The LMDB tables (named databases) the capability uses.
        services: The full names of the services it serves completely,
            e.g. ``("are.v1.CacheService",)``.
    """

    tables: ClassVar[tuple[str, ...]] = ()
    services: ClassVar[tuple[str, ...]] = ()

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Loads durable state and rebuilds derived data before serving."""

    @abc.abstractmethod
    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers the servicers (``add_XServiceServicer_to_server``)."""

    async def drain(self) -> None:  # noqa: B027 - optional hook
        """Shutdown has begun: end long-lived streams and polls, refuse new work.

        Called before the server stops accepting calls; unary calls already
        in flight still get the grace period to finish.
        """

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """The server has stopped: hand back in-flight work, save derived data."""
