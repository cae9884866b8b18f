"""MessagePack codecs for msgspec record types."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

__all__ = ["Codec"]

T = TypeVar("T")


class Codec(Generic[T]):
    """Encodes and decodes one record type as MessagePack.

    The encoder and typed decoder are built once and reused, so the hot path
    allocates nothing beyond the output. Decoding validates against the type
    and raises ``msgspec.ValidationError`` or ``msgspec.DecodeError`` naming
    the offending field.

    Example:
        >>> class Task(msgspec.Struct, frozen=True):
        ...     id: str
        >>> codec = Codec(Task)
        >>> codec.decode(codec.encode(Task("t1")))
        Task(id='t1')
    """

    __slots__ = ("_decoder", "_encoder", "record_type")

    def __init__(self, record_type: type[T]) -> None:
        """Build the codec for ``record_type`` (usually a ``msgspec.Struct`` subclass)."""
        self.record_type = record_type
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(record_type)

    def encode(self, obj: T) -> bytes:
        """Return ``obj`` encoded as MessagePack bytes."""
        return self._encoder.encode(obj)

    def decode(self, data: bytes | bytearray | memoryview) -> T:
        """Return the record decoded from ``data``, validated against the type."""
        return self._decoder.decode(data)

    def __repr__(self) -> str:
        return f"Codec({getattr(self.record_type, '__qualname__', self.record_type)})"
