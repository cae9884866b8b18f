"""Payloads: Python values to ``are.v1.Payload`` and back, JSON by default.

The sidecar forwards payloads without reading them, except where a feature
needs JSON (conditions, state pointers). The SDK therefore encodes any value
as compact JSON unless it is ``bytes`` (sent as ``application/octet-stream``)
or wrapped in :class:`RawPayload` with a content type of the caller's choice;
it decodes JSON content types back to Python values and returns everything
else as a :class:`RawPayload`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from are_sdk._proto.are.v1 import common_pb2

__all__ = [
    "JSON_CONTENT_TYPE",
    "BlobReference",
    "RawPayload",
    "decode_payload",
    "encode_payload",
    "is_json_content_type",
]

JSON_CONTENT_TYPE = "application/json"
OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class RawPayload:
    """Bytes with a content type, sent and received as they are.

    Use it to send non-JSON content (``RawPayload(b"...", "text/plain")``);
    payloads whose content type is not JSON are decoded to it.
    """

    data: bytes
    content_type: str = OCTET_STREAM

    def text(self, encoding: str = "utf-8") -> str:
        """The data decoded as text."""
        return self.data.decode(encoding)


@dataclass(frozen=True, slots=True)
class BlobReference:
    """A payload stored in the sidecar's blob store, passed by reference.

    Read its bytes with ``StateService.GetBlob``; the sidecar may turn a large
    inline payload into a reference when assembling an assignment.
    """

    sha256: str
    size_bytes: int
    content_type: str


def is_json_content_type(content_type: str) -> bool:
    """True for "" (the contract's default), ``application/json`` and ``*+json`` types."""
    base = content_type.split(";", 1)[0].strip().lower()
    return base in {"", JSON_CONTENT_TYPE} or base.endswith("+json")


def encode_payload(value: Any, content_type: str | None = None) -> Any:
    """Encodes a value as an ``are.v1.Payload``.

    Args:
        value: A JSON-serialisable value; ``bytes`` (sent raw); a
            :class:`RawPayload`; a :class:`BlobReference` (sent by
            reference); or an ``are.v1.Payload`` passed through.
        content_type: Overrides the content type; with a non-JSON type, a
            ``str`` value is sent as UTF-8 text rather than as a JSON string.

    Raises:
        TypeError: The value cannot be serialised as JSON.
    """
    if isinstance(value, common_pb2.Payload):
        return value
    if isinstance(value, BlobReference):
        content_type = content_type or value.content_type
        return common_pb2.Payload(
            blob=common_pb2.BlobRef(
                sha256=value.sha256, size_bytes=value.size_bytes, content_type=content_type
            ),
            content_type=content_type,
        )
    if isinstance(value, RawPayload):
        return common_pb2.Payload(data=value.data, content_type=content_type or value.content_type)
    if isinstance(value, bytes | bytearray | memoryview):
        return common_pb2.Payload(data=bytes(value), content_type=content_type or OCTET_STREAM)
    if content_type is not None and not is_json_content_type(content_type) and isinstance(value, str):
        return common_pb2.Payload(data=value.encode(), content_type=content_type)
    try:
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"payload is not JSON-serialisable ({error}); pass bytes or RawPayload for other content"
        ) from None
    return common_pb2.Payload(data=data, content_type=content_type or JSON_CONTENT_TYPE)


def decode_payload(payload: Any) -> Any:
    """Decodes an ``are.v1.Payload``: JSON to a Python value, else a :class:`RawPayload`.

    An unset payload (no content) decodes to None; a blob reference to a
    :class:`BlobReference`. JSON that does not parse is returned as a
    :class:`RawPayload` rather than raising, since payloads are the sender's.
    """
    content = None if payload is None else payload.WhichOneof("content")
    if content == "blob":
        blob = payload.blob
        return BlobReference(blob.sha256, blob.size_bytes, blob.content_type or OCTET_STREAM)
    if content is None or (not payload.data and is_json_content_type(payload.content_type)):
        return None
    data: bytes = payload.data
    if is_json_content_type(payload.content_type):
        try:
            return json.loads(data)
        except ValueError:
            return RawPayload(data, payload.content_type or JSON_CONTENT_TYPE)
    return RawPayload(data, payload.content_type)
