"""The contract's shared input shapes (see the package comment of common.proto).

One definition for every servicer, so that an id or a label key valid for one
service is valid for all of them.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import numpy as np

from are_sdk._proto.are.v1 import common_pb2

__all__ = [
    "CONTENT_TYPE_CHARS",
    "ID",
    "INT64_MAX",
    "KEY",
    "SPAN_ID",
    "USAGE_FIELDS",
    "content_type_problem",
    "duration_problem",
    "enum_problem",
    "span_id_problem",
    "timestamp_problem",
    "unix_ns",
    "usage_problem",
    "vector_values",
]

# Workflow, task, pool, namespace, agent, model and worker names, request ids.
ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Keys of labels and metadata maps.
KEY = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
# A W3C trace-context span id: 16 lowercase hex characters (all zeros is invalid; see span_id_problem).
SPAN_ID = re.compile(r"[0-9a-f]{16}")

CONTENT_TYPE_CHARS = 128
"""The longest ``Payload.content_type`` (and ``BlobRef.content_type``) common.proto allows."""

INT64_MAX = 2**63 - 1
"""The largest value LMDB records (MessagePack int64) and proto int64 fields hold."""

USAGE_FIELDS = ("input_tokens", "output_tokens", "cost_micro_usd", "llm_calls", "tool_calls")
"""The counters of ``are.v1.Usage``, in field order; each is at least 0."""

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_TIMESTAMP_MIN_S = -62_135_596_800
_TIMESTAMP_MAX_S = 253_402_300_799
# google.protobuf.Duration's valid range: about +-10,000 years.
_DURATION_MAX_S = 315_576_000_000
_NANOS_MAX = 999_999_999

_PACKED_VALUES_TAG = 0x0A  # field 1, length-delimited
_VARINT_MAX_SHIFT = 35  # a length varint of at most 5 bytes


def vector_values(message: common_pb2.Vector) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A ``Vector``'s components as a read-only float32 array, without a Python float each.

    proto3 serialises ``repeated float values = 1`` packed: the tag byte
    0x0A, the byte length as a varint, then the little-endian floats. Taking
    them as one slice of the wire form costs one copy instead of a Python
    float per component (embeddings have 256 to 1,024 of them); any other
    shape, or a big-endian host, reads ``values`` instead.
    """
    raw = message.SerializeToString()
    if raw and raw[0] == _PACKED_VALUES_TAG and sys.byteorder == "little":
        length, shift, offset = 0, 0, 1
        while offset < len(raw) and shift < _VARINT_MAX_SHIFT:
            byte = raw[offset]
            offset += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        if length % 4 == 0 and offset + length == len(raw):
            return np.frombuffer(raw, dtype=np.float32, offset=offset)
    return np.asarray(message.values, dtype=np.float32)


def timestamp_problem(value: Any) -> str | None:
    """Why a ``google.protobuf.Timestamp`` is not a valid one, or None.

    ``ToNanoseconds()`` raises on these; a caller's bad timestamp is its field's
    INVALID_ARGUMENT, never an unexpected exception.
    """
    if not _TIMESTAMP_MIN_S <= value.seconds <= _TIMESTAMP_MAX_S:
        return (
            f"seconds must be {_TIMESTAMP_MIN_S} to {_TIMESTAMP_MAX_S} (years 1 to 9999), got {value.seconds}"
        )
    if not 0 <= value.nanos <= _NANOS_MAX:
        return f"nanos must be 0 to {_NANOS_MAX}, got {value.nanos}"
    return None


def unix_ns(value: Any) -> int:
    """A valid Timestamp in nanoseconds since the epoch, clamped to 0 .. INT64_MAX.

    Nothing the sidecar records is older than the epoch or later than 2262, so
    a bound outside that range selects exactly what the clamped one does.
    """
    return min(max(int(value.seconds) * 1_000_000_000 + int(value.nanos), 0), INT64_MAX)


def content_type_problem(content_type: str) -> str | None:
    """Why a ``Payload.content_type`` is refused (over 128 characters), or None."""
    if len(content_type) > CONTENT_TYPE_CHARS:
        return f"at most {CONTENT_TYPE_CHARS} characters, got {len(content_type)}"
    return None


def span_id_problem(span_id: str) -> str | None:
    """Why a non-empty span id is not a W3C one (16 lowercase hex characters, not all zero), or None."""
    if not SPAN_ID.fullmatch(span_id):
        return f"a span id is 16 lowercase hexadecimal characters, got {span_id[:40]!r}"
    if span_id == "0" * 16:
        return "a span id must not be all zeros (W3C trace context: invalid)"
    return None


def duration_problem(value: Any) -> str | None:
    """Why a ``google.protobuf.Duration`` is not a valid one, or None."""
    if not -_DURATION_MAX_S <= value.seconds <= _DURATION_MAX_S:
        return f"seconds must be within +-{_DURATION_MAX_S}, got {value.seconds}"
    if not -_NANOS_MAX <= value.nanos <= _NANOS_MAX or (value.seconds and value.nanos * value.seconds < 0):
        return f"nanos must be -{_NANOS_MAX} to {_NANOS_MAX} with the sign of seconds, got {value.nanos}"
    return None


def usage_problem(usage: common_pb2.Usage) -> tuple[str, str] | None:
    """The first negative counter of a ``Usage`` as (its field name, why), or None.

    common.proto says every counter is at least 0. A negative one is refused
    naming its field, never clamped: a clamped report would record numbers the
    worker did not send, and budgets would count them.
    """
    for name in USAGE_FIELDS:
        value = getattr(usage, name)
        if value < 0:
            return name, f"must be at least 0, got {value}"
    return None


def enum_problem(enum: Any, value: int) -> str | None:
    """Why ``value`` is not a number of the generated ``enum`` (an EnumTypeWrapper), or None.

    proto3 enums are open: a request may carry any int32, and ``Name()`` raises
    on an unknown one.
    """
    if value in enum.values():
        return None
    return f"{value} is not a {enum.DESCRIPTOR.name} value"
