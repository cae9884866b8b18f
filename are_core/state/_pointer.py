"""JSON Pointer (RFC 6901): parsing, lazy resolution over raw JSON, edits.

Resolution works on JSON *text*: each step decodes one level as
``dict[str, msgspec.Raw]`` or ``list[msgspec.Raw]``, which scans the bytes
in C but builds no Python objects for the values it skips, and the value
found is returned as the original bytes, never re-encoded (numbers keep
their exact spelling).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._errors import InvalidPointerError, PatchNotApplicableError

__all__ = [
    "MAX_POINTER_CHARS",
    "escape_token",
    "format_pointer",
    "parse_pointer",
    "remove_at",
    "resolve_raw",
    "set_at",
]

MAX_POINTER_CHARS = 1024

_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_array_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_WHITESPACE = b" \t\r\n"
_ABSENT: Any = object()


def parse_pointer(pointer: str, *, field: str = "") -> tuple[str, ...]:
    """Split an RFC 6901 pointer into unescaped reference tokens.

    ``""`` is the whole document; ``"/a~1b/~0c"`` is ``("a/b", "~c")``.

    Raises:
        InvalidPointerError: not empty and not starting with ``/``, a ``~``
            not followed by ``0`` or ``1``, or over 1,024 characters.
    """
    if len(pointer) > MAX_POINTER_CHARS:
        raise InvalidPointerError(
            f"JSON pointer is {len(pointer)} characters; at most {MAX_POINTER_CHARS}", field=field
        )
    if not pointer:
        return ()
    if pointer[0] != "/":
        raise InvalidPointerError(f"JSON pointer {pointer!r} must be empty or start with '/'", field=field)
    tokens = pointer[1:].split("/")
    if "~" not in pointer:
        return tuple(tokens)
    out: list[str] = []
    for token in tokens:
        index = token.find("~")
        while index != -1:
            if index + 1 >= len(token) or token[index + 1] not in "01":
                raise InvalidPointerError(
                    f"JSON pointer {pointer!r}: '~' must be followed by '0' or '1' (RFC 6901)", field=field
                )
            index = token.find("~", index + 2)
        out.append(token.replace("~1", "/").replace("~0", "~"))
    return tuple(out)


def escape_token(token: str) -> str:
    """Escape one reference token (``~`` -> ``~0``, ``/`` -> ``~1``)."""
    return token.replace("~", "~0").replace("/", "~1")


def format_pointer(tokens: tuple[str, ...] | list[str]) -> str:
    """Build a pointer from unescaped tokens; the inverse of :func:`parse_pointer`."""
    return "".join("/" + escape_token(t) for t in tokens)


def _array_index(token: str, length: int) -> int | None:
    """The index a token names in an array of ``length``, or None."""
    if not token.isdigit() or not token.isascii() or (len(token) > 1 and token[0] == "0"):
        return None
    index = int(token)
    return index if index < length else None


def resolve_raw(data: bytes, tokens: tuple[str, ...]) -> bytes | None:
    """The JSON text at ``tokens`` inside the JSON text ``data``, or None if absent."""
    current: bytes | msgspec.Raw = data
    for token in tokens:
        raw = bytes(current)
        head = raw.lstrip(_WHITESPACE)[:1]
        if head == b"{":
            found = _object_decoder.decode(raw).get(token)
            if found is None:
                return None
            current = found
        elif head == b"[":
            items = _array_decoder.decode(raw)
            index = _array_index(token, len(items))
            if index is None:
                return None
            current = items[index]
        else:
            return None
    return bytes(current)


def _at(pointer: str, tokens: tuple[str, ...], depth: int) -> str:
    """The pointer, in the whole document, of ``tokens[:depth]``.

    ``tokens`` may be the tail of ``pointer`` (a member's value is edited
    apart from its name): what precedes it is taken from ``pointer``, so a
    message names the place the caller wrote, not one relative to the member.
    """
    try:
        full = parse_pointer(pointer)
    except InvalidPointerError:  # not the pointer of these tokens: name them alone
        full = tokens
    base = full[: len(full) - len(tokens)] if full[len(full) - len(tokens) :] == tokens else ()
    return format_pointer((*base, *tokens[:depth]))


def _parent(doc: Any, tokens: tuple[str, ...], pointer: str) -> Any:
    node = doc
    for depth, token in enumerate(tokens[:-1]):
        if isinstance(node, dict):
            if token not in node:
                raise PatchNotApplicableError(
                    f"cannot set {pointer!r}: {_at(pointer, tokens, depth + 1)!r} does not exist"
                )
            node = node[token]
        elif isinstance(node, list):
            index = _array_index(token, len(node))
            if index is None:
                raise PatchNotApplicableError(
                    f"cannot set {pointer!r}: index {token!r} is out of range at "
                    f"{_at(pointer, tokens, depth)!r} (length {len(node)})"
                )
            node = node[index]
        else:
            raise PatchNotApplicableError(
                f"cannot set {pointer!r}: {_at(pointer, tokens, depth)!r} is not an object or array"
            )
    return node


def set_at(doc: Any, tokens: tuple[str, ...], value: Any, pointer: str) -> Any:
    """Set ``value`` at ``tokens`` in ``doc`` (mutated in place); returns the new root.

    On an array, ``-`` appends and an index replaces. The parent must exist.
    ``pointer`` is the caller's whole pointer, of which ``tokens`` may be the
    tail (``doc`` is then the value at the rest): errors name places in it.

    Raises:
        PatchNotApplicableError: the parent is missing or not a container, or
            an array index is out of range.
    """
    if not tokens:
        return value
    parent = _parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            index = _array_index(last, len(parent))
            if index is None:
                raise PatchNotApplicableError(
                    f"cannot set {pointer!r}: index {last!r} is out of range at "
                    f"{_at(pointer, tokens, len(tokens) - 1)!r} (length {len(parent)})"
                )
            parent[index] = value
    else:
        raise PatchNotApplicableError(
            f"cannot set {pointer!r}: {_at(pointer, tokens, len(tokens) - 1)!r} is not an object or array"
        )
    return doc


def _child(node: Any, token: str) -> Any:
    """The child of a container at ``token``, or ``_ABSENT``."""
    if isinstance(node, dict):
        return node.get(token, _ABSENT)
    if isinstance(node, list):
        index = _array_index(token, len(node))
        return _ABSENT if index is None else node[index]
    return _ABSENT


def remove_at(doc: Any, tokens: tuple[str, ...]) -> bool:
    """Remove the value at ``tokens`` (non-empty) from ``doc``; False when it was absent."""
    node = doc
    for token in tokens[:-1]:
        node = _child(node, token)
        if node is _ABSENT:
            return False
    last = tokens[-1]
    if isinstance(node, dict):
        return node.pop(last, _ABSENT) is not _ABSENT
    index = _array_index(last, len(node)) if isinstance(node, list) else None
    if index is None:
        return False
    del node[index]
    return True
