"""What an idle CPU between two calls costs the next one: ``Router.rank`` back to back and after a gap.

A sidecar serving one caller at a time is idle between its calls (the
round trip of the client), and the RouteTask handler took about twice its
in-process time there. This times the same rank in-process, on the 10,000
cards of ``python -m benchmarks router``, alternating runs back to back with
runs that sleep (the CPU idle) before each call; only the rank is timed.

    python -m benchmarks.idle_gap [--gap-us 400] [--calls 4000] [--rounds 2] [--pin]

``--pin`` runs on the last CPU (as the sidecar does under ``--pin``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.router import THRESHOLD, TOP_K, capability_set, engine


def _percentile(values: Sequence[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] / 1000


def _timed(rank: Any, queries: Sequence[Any], calls: int, gap_s: float) -> list[int]:
    out = []
    for i in range(calls):
        if gap_s:
            time.sleep(gap_s)
        began = time.perf_counter_ns()
        rank(queries[i % len(queries)])
        out.append(time.perf_counter_ns() - began)
    return out


async def _run(settings: argparse.Namespace) -> list[str]:
    from are_core.router import RouteMode, RouteQuery  # noqa: PLC0415

    queries = [
        RouteQuery(vector=v.tobytes(), top_k=TOP_K, mode=RouteMode.COST_BIASED, threshold=THRESHOLD)
        for v in capability_set().query_vectors
    ]
    gap_s = settings.gap_us / 1e6
    back: list[int] = []
    after: list[int] = []
    async with engine() as router:
        _timed(router.rank, queries, min(settings.calls, 1000), 0)  # warm up
        for _ in range(settings.rounds):
            back += _timed(router.rank, queries, settings.calls, 0)
            after += _timed(router.rank, queries, settings.calls, gap_s)
    lines = [f"Router.rank, 10,000 cards, {settings.rounds} alternated rounds of {settings.calls:,} calls"]
    lines.append(f"{'calls':<28} {'median µs':>10} {'p99 µs':>8}")
    for name, values in (("back to back", back), (f"after {settings.gap_us:g} µs idle", after)):
        median_us = statistics.median(values) / 1000
        lines.append(f"{name:<28} {median_us:>10.1f} {_percentile(values, 0.99):>8.1f}")
    ratio = statistics.median(after) / statistics.median(back)
    lines.append(f"after an idle gap / back to back: median {ratio:.2f}x")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle_gap", description=__doc__.split("\n")[0])
    parser.add_argument("--gap-us", type=float, default=400.0, help="idle time before each call of a gap run")
    parser.add_argument("--calls", type=int, default=4000, help="calls per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternated pairs of runs")
    parser.add_argument("--pin", action="store_true", help="run on the last CPU")
    settings = parser.parse_args(argv)
    if settings.calls < 1 or settings.rounds < 1 or settings.gap_us < 0:
        parser.error("--calls and --rounds must be at least 1, --gap-us at least 0")
    if settings.pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    print("\n".join(asyncio.run(_run(settings))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
