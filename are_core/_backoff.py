"""The one backoff rule of the engine's background work: double the wait after each failure in a row."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["backoff"]

_Wait = TypeVar("_Wait", int, float)


def backoff(failures: int, first: _Wait, most: _Wait) -> _Wait:
    """The wait after ``failures`` failures in a row: ``first`` after one, doubling with each, up to ``most``.

    Works in any unit (seconds as float, nanoseconds as int: the type of
    ``first`` is kept); the doubling stops growing past 2**16.
    """
    return min(first * (1 << min(max(failures, 1) - 1, 16)), most)
