r"""Key layout helpers: big-endian integers and composite keys.

LMDB orders keys by plain byte comparison, so keys are built to make that
order meaningful:

* Integers are fixed-width 8-byte big-endian, which sorts numerically.
* Composite keys join their parts with ``KEY_SEPARATOR`` (``b"\x00"``).
  Because NUL is the smallest byte, every key whose first part is ``"a"``
  sorts before any key whose first part merely starts with ``"a"`` (such as
  ``"ab"``), so a prefix scan of ``prefix_key("a")`` returns exactly the rows
  of ``"a"`` and none of ``"ab"``. Text and bytes parts therefore must not
  contain NUL; integer parts are fixed-width, so their NUL bytes are harmless.
"""

from __future__ import annotations

__all__ = [
    "KEY_SEPARATOR",
    "join_key",
    "parse_u64_key",
    "prefix_end",
    "prefix_key",
    "u64_key",
]

KEY_SEPARATOR = b"\x00"
_U64_MAX = (1 << 64) - 1


def u64_key(n: int) -> bytes:
    """Return ``n`` as 8 big-endian bytes, which sort in numeric order.

    Raises:
        ValueError: ``n`` is outside ``0 .. 2**64 - 1``.
    """
    if not 0 <= n <= _U64_MAX:
        raise ValueError(f"u64 key out of range: {n} is not in 0..2**64-1")
    return n.to_bytes(8, "big")


def parse_u64_key(key: bytes | bytearray | memoryview) -> int:
    """Return the integer encoded by ``u64_key``.

    Raises:
        ValueError: ``key`` is not exactly 8 bytes.
    """
    if len(key) != 8:
        raise ValueError(f"u64 key must be 8 bytes, got {len(key)}")
    return int.from_bytes(key, "big")


def _encode_part(index: int, part: str | bytes | int) -> bytes:
    if isinstance(part, bool):
        raise TypeError(f"key part {index} is a bool; use an int or bytes")
    if isinstance(part, int):
        return u64_key(part)
    raw = part.encode() if isinstance(part, str) else bytes(part)
    if KEY_SEPARATOR in raw:
        raise ValueError(f"key part {index} contains the separator byte NUL: {raw!r}")
    return raw


def join_key(*parts: str | bytes | int) -> bytes:
    """Build a composite key from ``parts``, in order.

    Text is UTF-8 encoded, bytes are used as given, ints become ``u64_key``.
    Parts are separated by ``KEY_SEPARATOR``.

    Raises:
        ValueError: no parts, a text/bytes part contains NUL, or an int is
            out of the u64 range.
    """
    if not parts:
        raise ValueError("join_key needs at least one part")
    return KEY_SEPARATOR.join(_encode_part(i, p) for i, p in enumerate(parts))


def prefix_key(*parts: str | bytes | int) -> bytes:
    """Return the scan prefix matching every key that starts with ``parts``.

    ``scan(table, prefix=prefix_key("wf1"))`` returns the keys
    ``join_key("wf1", ...)`` and nothing of ``"wf10"``.
    """
    return join_key(*parts) + KEY_SEPARATOR


def prefix_end(prefix: bytes) -> bytes | None:
    """Return the smallest key greater than every key starting with ``prefix``.

    Returns ``None`` when no such key exists (empty or all-``0xFF`` prefix),
    meaning "scan to the end of the table".
    """
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes((trimmed[-1] + 1,))
