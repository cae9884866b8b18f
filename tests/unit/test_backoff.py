"""``are_core._backoff.backoff``: the doubling wait every background retry of the engine uses."""

from __future__ import annotations

from are_core._backoff import backoff


def test_the_wait_doubles_from_the_first_up_to_the_most_and_keeps_its_unit() -> None:
    assert [backoff(n, 1.0, 60.0) for n in range(1, 9)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff(0, 1.0, 60.0) == 1.0  # no failure yet counts as the first
    seconds = 1_000_000_000
    ns = backoff(3, seconds, 60 * seconds)
    assert ns == 4 * seconds
    assert isinstance(ns, int)  # nanoseconds stay integers
    assert backoff(10_000, seconds, 60 * seconds) == 60 * seconds  # a long run stays bounded
