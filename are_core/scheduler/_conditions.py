"""Conditions on upstream outputs: RFC 6901 JSON pointers and JSON comparisons."""

from __future__ import annotations

from typing import TypeGuard

import msgspec

from ._model import Condition

__all__ = ["check_pointer", "evaluate", "is_json_content_type", "resolve_pointer"]

_MISSING = object()


def check_pointer(pointer: str) -> str:
    """Returns why ``pointer`` is not a valid JSON pointer, or "" when it is."""
    if len(pointer) > 1024:
        return "a JSON pointer has at most 1,024 characters"
    if pointer and not pointer.startswith("/"):
        return f"JSON pointer {pointer!r} must be empty or start with '/'"
    for i, ch in enumerate(pointer):
        if ch == "~" and pointer[i + 1 : i + 2] not in ("0", "1"):
            return f"JSON pointer {pointer!r} has '~' not followed by 0 or 1 at {i}"
    return ""


def resolve_pointer(document: object, pointer: str) -> object:
    """The value at ``pointer`` in ``document``, or a private sentinel when absent."""
    if pointer == "":
        return document
    current = document
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict):
            if token not in current:
                return _MISSING
            current = current[token]
        elif isinstance(current, list):
            if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
                return _MISSING
            position = int(token)
            if position >= len(current):
                return _MISSING
            current = current[position]
        else:
            return _MISSING
    return current


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: object, b: object) -> bool:
    """JSON equality: numbers by value (1 equals 1.0), never a boolean and a number, at any depth.

    Python's own ``==`` holds ``True == 1``, inside lists and objects too, so
    arrays compare element by element and objects key by key with this rule.
    Iterative: a deeply nested output does not hit the recursion limit.
    """
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        if _number(x) and _number(y):
            if x != y:
                return False
        elif type(x) is not type(y):
            return False
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y, strict=True))
        elif isinstance(x, dict) and isinstance(y, dict):
            if x.keys() != y.keys():
                return False
            pending.extend((value, y[key]) for key, value in x.items())
        elif x != y:
            return False
    return True


def is_json_content_type(content_type: str) -> bool:
    """Whether a payload's media type is JSON: "" (the contract's default), application/json or ``*+json``.

    Parameters (``; charset=utf-8``) and case are ignored, as the SDKs'
    rule of the same name does (common.proto Payload: the sidecar parses a
    payload only when its content type is JSON).
    """
    base = content_type.split(";", 1)[0].strip().lower()
    return base in ("", "application/json") or base.endswith("+json")


def _order(a: object, b: object) -> int | None:
    if _number(a) and _number(b):
        # Compared as they are: Python orders an int and a float exactly, where float() of an
        # integer past a double's range (an output may hold any) raises OverflowError.
        return (a > b) - (a < b)
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    return None


def evaluate(condition: Condition, output: bytes | None) -> bool:  # noqa: C901, PLR0911, PLR0912 - one branch per operator
    """Whether ``condition`` holds for a dependency's raw ``output``.

    An output that is not JSON, or a pointer that does not resolve, makes
    every operator false except NOT_EXISTS and NOT_EQUAL.
    """
    found: object = _MISSING
    if output is not None:
        try:
            document = msgspec.json.decode(output)
        except (msgspec.DecodeError, RecursionError):  # nested too deep to decode is not JSON here either
            document = _MISSING
        if document is not _MISSING:
            found = resolve_pointer(document, condition.pointer)
    op, value = condition.operator, condition.value
    if found is _MISSING:
        return op in ("NOT_EXISTS", "NOT_EQUAL")
    if op == "EXISTS":
        return True
    if op == "NOT_EXISTS":
        return False
    if op == "EQUAL":
        return _equal(found, value)
    if op == "NOT_EQUAL":
        return not _equal(found, value)
    if op == "TRUTHY":
        return found not in (None, False, 0, "", [], {}) or (found is True)
    if op == "CONTAINS":
        if isinstance(found, str) and isinstance(value, str):
            return value in found
        if isinstance(found, list):
            return any(_equal(item, value) for item in found)
        return False
    if op == "IN":
        return isinstance(value, list) and any(_equal(found, item) for item in value)
    order = _order(found, value)
    if order is None:
        return False
    return {
        "LESS_THAN": order < 0,
        "LESS_THAN_OR_EQUAL": order <= 0,
        "GREATER_THAN": order > 0,
        "GREATER_THAN_OR_EQUAL": order >= 0,
    }.get(op, False)
