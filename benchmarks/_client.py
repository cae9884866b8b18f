"""The client process of one contender: ``python -m benchmarks._client``.

The runner starts this module in a fresh interpreter for every contender. It
imports the suite, builds the contender's operation on a uvloop event loop,
runs the warmup loop, then the timed loop, and writes a
:class:`~benchmarks._harness.ClientReport` as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec
import uvloop

from benchmarks._harness import ClientReport, Operation, load_suite

if TYPE_CHECKING:
    from collections.abc import Sequence


class LoopResult(msgspec.Struct, frozen=True, kw_only=True):
    """Latencies of one bounded loop and why it stopped."""

    latencies_ns: list[int]
    elapsed_ns: int
    stopped_by: Literal["count", "time"]


async def run_loop(
    operation: Operation, *, count: int, max_seconds: float, concurrency: int = 1
) -> LoopResult:
    """Await ``operation`` up to ``count`` times, for at most ``max_seconds``.

    ``concurrency`` workers share the count; each times its own operations. The
    loop checks the deadline before starting each operation, so it overruns the
    bound by at most one operation per worker.

    Args:
        operation: The operation to time.
        count: Maximum number of operations.
        max_seconds: Time bound of the whole loop.
        concurrency: Number of operations in flight at once.
    """
    latencies: list[int] = []
    record = latencies.append
    clock = time.perf_counter_ns
    remaining = count
    start = clock()
    deadline = start + int(max_seconds * 1e9)

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            began = clock()
            if began >= deadline:
                return
            remaining -= 1
            await operation()
            record(clock() - began)

    if concurrency == 1:
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = clock() - start
    return LoopResult(
        latencies_ns=latencies,
        elapsed_ns=elapsed,
        stopped_by="count" if len(latencies) >= count else "time",
    )


class PairedResult(msgspec.Struct, frozen=True, kw_only=True):
    """Latencies of a paired loop: baseline and contender, one of each per step."""

    baseline: LoopResult
    contender: LoopResult


async def run_paired_loop(
    baseline: Operation, contender: Operation, *, count: int, max_seconds: float
) -> PairedResult:
    """Await ``baseline`` then ``contender``, ``count`` times, for at most ``max_seconds``.

    Each pair runs back to back, so whatever the machine does meanwhile (other
    tenants, frequency, caches) weighs on both alike: the ratio of the two is
    steadier than that of two loops run one after the other.
    """
    base: list[int] = []
    own: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(max_seconds * 1e9)
    while len(own) < count and clock() < deadline:
        began = clock()
        await baseline()
        middle = clock()
        await contender()
        base.append(middle - began)
        own.append(clock() - middle)
    stopped: Literal["count", "time"] = "count" if len(own) >= count else "time"
    # Each side's elapsed time is its own operations' (req/s is then one per mean latency).
    return PairedResult(
        baseline=LoopResult(latencies_ns=base, elapsed_ns=sum(base), stopped_by=stopped),
        contender=LoopResult(latencies_ns=own, elapsed_ns=sum(own), stopped_by=stopped),
    )


async def _measure_paired(args: argparse.Namespace) -> ClientReport:
    suite = load_suite(args.suite)
    async with contextlib.AsyncExitStack() as stack:
        baseline = await stack.enter_async_context(suite.get(args.paired_baseline).client(args.paired_target))
        operation = await stack.enter_async_context(suite.get(args.contender).client(args.target))
        warm = await run_paired_loop(baseline, operation, count=args.warmup, max_seconds=args.max_seconds)
        gc.collect()
        timed = await run_paired_loop(baseline, operation, count=args.requests, max_seconds=args.max_seconds)
    return ClientReport(
        latencies_ns=timed.contender.latencies_ns,
        baseline_latencies_ns=timed.baseline.latencies_ns,
        elapsed_ns=timed.contender.elapsed_ns,
        stopped_by=timed.contender.stopped_by,
        warmup_done=len(warm.contender.latencies_ns),
    )


async def _measure(args: argparse.Namespace) -> ClientReport:
    if args.paired_baseline:
        return await _measure_paired(args)
    suite = load_suite(args.suite)
    contender = suite.get(args.contender)
    async with contender.client(args.target) as operation:
        warm = await run_loop(
            operation,
            count=args.warmup,
            max_seconds=args.max_seconds,
            concurrency=args.concurrency,
        )
        gc.collect()
        timed = await run_loop(
            operation,
            count=args.requests,
            max_seconds=args.max_seconds,
            concurrency=args.concurrency,
        )
    return ClientReport(
        latencies_ns=timed.latencies_ns,
        elapsed_ns=timed.elapsed_ns,
        stopped_by=timed.stopped_by,
        warmup_done=len(warm.latencies_ns),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one contender's client loops and write the report; see module doc."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._client")
    parser.add_argument("--suite", required=True)
    parser.add_argument("--contender", required=True)
    parser.add_argument("--target", default=None)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--paired-baseline", default=None, help="a contender to time alternately with this one"
    )
    parser.add_argument("--paired-target", default=None)
    parser.add_argument("--cpus", default="", help="run on these CPUs only (comma-separated; --pin)")
    args = parser.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    try:
        report = uvloop.run(_measure(args))
    except Exception as exc:  # noqa: BLE001 - reported to the runner as a failure
        traceback.print_exc()
        report = ClientReport(error=f"{type(exc).__name__}: {exc}")
    args.out.write_bytes(msgspec.json.encode(report))
    return 0 if report.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
