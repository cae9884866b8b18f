"""Trace and span ids of workflows and attempts, and the trace context an event carries.

Deterministic ids, derived from the workflow, task and attempt ids, so that
the W3C trace context handed to a worker (:func:`task_traceparent`) names the
span :class:`~are_core.trace.SpanBuilder` exports for the attempt. Kept apart
from the span builder so that the scheduler, which hands them out on every
dispatch, never loads the OpenTelemetry SDK: only OTLP export does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

__all__ = [
    "TraceContextResolver",
    "attempt_span_id",
    "parse_hex_id",
    "task_traceparent",
    "trace_context_of",
    "workflow_span_id",
    "workflow_trace_id",
]


def _hash(kind: str, *parts: str | int, size: int) -> int:
    text = kind + "\x00" + "\x00".join(str(p) for p in parts)
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=size).digest(), "big")
    return value or 1  # the all-zero id is invalid in OpenTelemetry


def workflow_trace_id(workflow_id: str) -> int:
    """The 128-bit trace id of a workflow's trace."""
    return _hash("are-trace", workflow_id, size=16)


def workflow_span_id(workflow_id: str) -> int:
    """The 64-bit span id of a workflow's root span."""
    return _hash("are-workflow", workflow_id, size=8)


def attempt_span_id(workflow_id: str, task_id: str, attempt: int) -> int:
    """The 64-bit span id of one task attempt's span."""
    return _hash("are-attempt", workflow_id, task_id, attempt, size=8)


def task_traceparent(workflow_id: str, task_id: str, attempt: int) -> str:
    """The W3C ``traceparent`` to hand the worker of an attempt: its spans nest under the attempt's."""
    trace_id = workflow_trace_id(workflow_id)
    span_id = attempt_span_id(workflow_id, task_id, attempt)
    return f"00-{trace_id:032x}-{span_id:016x}-01"


TraceContextResolver = Callable[[str], "tuple[int, int | None] | None"]
"""Given a workflow id, its (trace id, parent span id or None), or None if unknown."""


def parse_hex_id(text: object, digits: int) -> int | None:
    """``text`` as an id of ``digits`` hex digits; None when it is not one (or is all zeros)."""
    if not isinstance(text, str) or len(text) != digits:
        return None
    try:
        value = int(text, 16)
    except ValueError:
        return None
    return value or None


def trace_context_of(attributes: Mapping[str, object]) -> tuple[int, int | None] | None:
    """The (trace id, parent span id) a workflow's submission event carries, if any."""
    trace_id = parse_hex_id(attributes.get("are.trace_id"), 32)
    if trace_id is None:
        return None
    return trace_id, parse_hex_id(attributes.get("are.parent_span_id"), 16)
