"""ARE engine: scheduling, state, cache, routing, tracing and storage.

The engine is importable and testable without a server: nothing under
``are_core`` imports gRPC or protobuf. Each subpackage exposes its public names
through its own ``__init__`` and ``__all__``; import from there, for example
``from are_core.storage import Storage``.
"""

__all__: list[str] = []
