"""Which events a reader wants: the engine's form of ``are.v1.EventFilter``."""

from __future__ import annotations

import base64
import binascii
import hashlib

import msgspec

from are_core.trace._errors import InvalidPageTokenError
from are_core.trace._model import Event

__all__ = ["EventFilter", "decode_page_token", "encode_page_token"]


class EventFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Every set field must match (AND); set-valued fields match any member (OR).

    ``event_types`` holds EventType names without their prefix. Times are
    Unix nanoseconds: ``start_time_unix_ns`` inclusive, ``end_time_unix_ns``
    exclusive. The default filter matches every event.
    """

    workflow_ids: frozenset[str] = frozenset()
    task_ids: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()
    start_time_unix_ns: int | None = None
    end_time_unix_ns: int | None = None
    worker_id: str = ""

    def matches(self, event: Event) -> bool:
        """Whether ``event`` passes every condition of the filter."""
        if self.workflow_ids and event.workflow_id not in self.workflow_ids:
            return False
        if self.task_ids and event.task_id not in self.task_ids:
            return False
        if self.event_types and event.event_type not in self.event_types:
            return False
        if self.worker_id and event.worker_id != self.worker_id:
            return False
        if self.start_time_unix_ns is not None and event.event_time_unix_ns < self.start_time_unix_ns:
            return False
        return self.end_time_unix_ns is None or event.event_time_unix_ns < self.end_time_unix_ns

    def digest(self) -> bytes:
        """A short fingerprint of the filter, so a page token cannot change filters."""
        canonical = msgspec.msgpack.encode(
            [
                sorted(self.workflow_ids),
                sorted(self.task_ids),
                sorted(self.event_types),
                self.start_time_unix_ns,
                self.end_time_unix_ns,
                self.worker_id,
            ]
        )
        return hashlib.blake2b(canonical, digest_size=8).digest()


def encode_page_token(after_sequence: int, event_filter: EventFilter) -> str:
    """An opaque token: the cursor plus the fingerprint of the filter it belongs to."""
    raw = msgspec.msgpack.encode([1, after_sequence, event_filter.digest()])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, event_filter: EventFilter) -> int:
    """The cursor of ``token``.

    Raises:
        InvalidPageTokenError: the token is malformed or was issued for
            another filter.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, after, digest = msgspec.msgpack.decode(raw, type=tuple[int, int, bytes])
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise InvalidPageTokenError("page_token is not a token this sidecar issued") from None
    if version != 1 or after < 0:
        raise InvalidPageTokenError("page_token is not a token this sidecar issued")
    if digest != event_filter.digest():
        raise InvalidPageTokenError("page_token was issued for a different filter")
    return after
