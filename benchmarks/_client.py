"""The client process of one contender: ``python -m benchmarks._client``.

The runner starts this module in a fresh interpreter for every contender. It
imports the suite, builds the contender's operation on a uvloop event loop,
runs the warmup loop, then the timed loop, and writes a
:class:`~benchmarks._harness.ClientReport` as JSON to ``--out``.

Loops are closed by default (each caller starts its next operation when its
last returns: the latency of one caller, which a stall delays but does not
multiply) or open with ``--rate R`` (operations start at R per second
whatever the previous ones did, each timed from its intended start, so a
stall counts against every operation due during it: no coordinated
omission). With ``--paired-baseline`` the baseline's operation is timed in
the same process, in blocks alternating with the contender's (``--pairing
blocks``) or call by call (``--pairing calls``).
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

from benchmarks._harness import ClientReport, Operation, load_suite, record_fact, recorded_facts
from benchmarks._stats import percentile

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

#: An open loop stops (``"overload"``) with more operations than this in flight at once.
MAX_IN_FLIGHT = 1_000
#: How late each open-loop operation of this process started after it was due (the loop's own
#: lateness, which its latencies include), reported as facts of the row.
_START_LATENESS_NS: list[int] = []


StoppedBy = Literal["count", "time", "overload"]


class LoopResult(msgspec.Struct, frozen=True, kw_only=True):
    """Latencies of one bounded loop and why it stopped."""

    latencies_ns: list[int]
    elapsed_ns: int
    stopped_by: StoppedBy


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


async def run_open_loop(
    operation: Operation,
    *,
    rate: float,
    count: int,
    max_seconds: float,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> LoopResult:
    """Start ``operation`` at ``rate`` per second, up to ``count`` times, for at most ``max_seconds``.

    Operation ``i`` is due at ``start + i / rate``; its latency runs from
    then to its completion, so time spent waiting behind a slow operation
    (or behind this loop itself, late to start it) counts. The loop stops
    starting operations at the count, at the time bound, or when
    ``max_in_flight`` are unfinished (``"overload"``: the rate is above
    what the contender sustains), then waits for those in flight.
    """
    latencies: list[int] = []
    record = latencies.append
    clock = time.perf_counter_ns
    period = 1e9 / rate
    start = clock()
    deadline = start + int(max_seconds * 1e9)
    in_flight: set[asyncio.Task[None]] = set()
    stopped: StoppedBy = "count"

    async def one(due: int) -> None:
        _START_LATENESS_NS.append(clock() - due)
        await operation()
        record(clock() - due)

    for i in range(count):
        due = start + int(i * period)
        if due >= deadline:
            stopped = "time"
            break
        wait = due - clock()
        if wait > 0:
            await asyncio.sleep(wait / 1e9)
        if len(in_flight) >= max_in_flight:
            stopped = "overload"
            break
        task = asyncio.create_task(one(due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    return LoopResult(latencies_ns=latencies, elapsed_ns=clock() - start, stopped_by=stopped)


async def run_block_loop(
    baseline: Operation,
    contender: Operation,
    *,
    count: int,
    max_seconds: float,
    block: int,
    rewarm: int = 0,
    gap_seconds: float = 0.0,
    loop: Callable[[Operation, int, float], Awaitable[LoopResult]] | None = None,
) -> PairedResult:
    """Time ``baseline`` and ``contender`` in alternating blocks of ``block`` operations each.

    Each block starts after ``gap_seconds`` of idle time (so that short
    background work of the other side settles) and ``rewarm`` untimed
    operations (so that a timed operation follows one of its own kind, as
    in a plain loop); ``loop(operation, n, seconds)`` then times ``n``
    operations (default: a closed loop, one caller). Both sides get the
    same count; the whole stops at ``count`` contender operations or
    ``max_seconds``. Each side's elapsed time is the wall time of its own
    blocks.
    """
    run = loop or (lambda op, n, seconds: run_loop(op, count=n, max_seconds=seconds))
    sides: tuple[tuple[Operation, list[int], list[int]], ...] = ((baseline, [], [0]), (contender, [], [0]))
    clock = time.perf_counter_ns
    deadline = clock() + int(max_seconds * 1e9)
    stopped: StoppedBy = "count"
    own: list[int] = sides[1][1]
    while len(own) < count and stopped == "count":
        for operation, latencies, elapsed in sides:
            if gap_seconds:
                await asyncio.sleep(gap_seconds)
            for _ in range(rewarm):
                await operation()
            remaining = (deadline - clock()) / 1e9
            if remaining <= 0:
                stopped = "time"
                break
            timed = await run(operation, min(block, count - len(latencies)), remaining)
            latencies.extend(timed.latencies_ns)
            elapsed[0] += timed.elapsed_ns
            if timed.stopped_by != "count":
                stopped = timed.stopped_by
                break
    (_, base, base_elapsed), (_, _, own_elapsed) = sides
    stopped = "count" if len(own) >= count else stopped
    return PairedResult(
        baseline=LoopResult(latencies_ns=base, elapsed_ns=max(base_elapsed[0], 1), stopped_by=stopped),
        contender=LoopResult(latencies_ns=own, elapsed_ns=max(own_elapsed[0], 1), stopped_by=stopped),
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
    stopped: StoppedBy = "count" if len(own) >= count else "time"
    # Each side's elapsed time is its own operations' (req/s is then one per mean latency).
    return PairedResult(
        baseline=LoopResult(latencies_ns=base, elapsed_ns=sum(base), stopped_by=stopped),
        contender=LoopResult(latencies_ns=own, elapsed_ns=sum(own), stopped_by=stopped),
    )


def _lateness_facts() -> None:
    """Records how late the open loop started its operations (included in their latencies)."""
    if _START_LATENESS_NS:
        late = sorted(_START_LATENESS_NS)
        record_fact("open_loop_start_lateness_p50_us", round(percentile(late, 50) / 1_000, 1))
        record_fact("open_loop_start_lateness_p99_us", round(percentile(late, 99) / 1_000, 1))


def _timed_loop(args: argparse.Namespace) -> Callable[[Operation, int, float], Awaitable[LoopResult]]:
    """The loop that times ``n`` operations: open at ``--rate``, else closed with ``--concurrency``."""
    if args.rate is not None:
        return lambda op, n, seconds: run_open_loop(op, rate=args.rate, count=n, max_seconds=seconds)
    return lambda op, n, seconds: run_loop(op, count=n, max_seconds=seconds, concurrency=args.concurrency)


async def _measure_paired(args: argparse.Namespace) -> ClientReport:
    suite = load_suite(args.suite)
    async with contextlib.AsyncExitStack() as stack:
        baseline = await stack.enter_async_context(suite.get(args.paired_baseline).client(args.paired_target))
        operation = await stack.enter_async_context(suite.get(args.contender).client(args.target))
        if args.pairing == "calls":
            warm = await run_paired_loop(baseline, operation, count=args.warmup, max_seconds=args.max_seconds)
            gc.collect()
            timed = await run_paired_loop(
                baseline, operation, count=args.requests, max_seconds=args.max_seconds
            )
        else:
            closed = _timed_loop(argparse.Namespace(rate=None, concurrency=args.concurrency))
            warm = await run_block_loop(
                baseline,
                operation,
                count=args.warmup,
                max_seconds=args.max_seconds,
                block=args.block,
                loop=closed,
            )
            gc.collect()
            timed = await run_block_loop(
                baseline,
                operation,
                count=args.requests,
                max_seconds=args.max_seconds,
                block=args.block,
                rewarm=args.rewarm,
                gap_seconds=args.gap,
                loop=_timed_loop(args),
            )
    _lateness_facts()
    return ClientReport(
        latencies_ns=timed.contender.latencies_ns,
        baseline_latencies_ns=timed.baseline.latencies_ns,
        elapsed_ns=timed.contender.elapsed_ns,
        baseline_elapsed_ns=timed.baseline.elapsed_ns,
        stopped_by=timed.contender.stopped_by,
        warmup_done=len(warm.contender.latencies_ns),
        facts=recorded_facts(),
    )


async def _measure(args: argparse.Namespace) -> ClientReport:
    if args.paired_baseline:
        return await _measure_paired(args)
    suite = load_suite(args.suite)
    contender = suite.get(args.contender)
    timed_loop = _timed_loop(args)
    async with contender.client(args.target) as operation:
        warm = await run_loop(
            operation,
            count=args.warmup,
            max_seconds=args.max_seconds,
            concurrency=args.concurrency if args.rate is None else 1,
        )
        gc.collect()
        timed = await timed_loop(operation, args.requests, args.max_seconds)
    _lateness_facts()
    return ClientReport(
        latencies_ns=timed.latencies_ns,
        elapsed_ns=timed.elapsed_ns,
        stopped_by=timed.stopped_by,
        warmup_done=len(warm.latencies_ns),
        facts=recorded_facts(),
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
    parser.add_argument("--pairing", choices=("blocks", "calls"), default="blocks")
    parser.add_argument("--block", type=int, default=200, help="operations per block (--pairing blocks)")
    parser.add_argument("--rewarm", type=int, default=0, help="untimed operations at each block's start")
    parser.add_argument("--gap", type=float, default=0.0, help="idle seconds before each block")
    parser.add_argument("--rate", type=float, default=None, help="open loop at this many operations/s")
    parser.add_argument("--cpus", default="", help="run on these CPUs only (comma-separated; --pin)")
    args = parser.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    try:
        report = uvloop.run(_measure(args))
    except Exception as exc:  # noqa: BLE001 - reported to the runner as a failure
        traceback.print_exc()
        report = ClientReport(error=f"{type(exc).__name__}: {exc}", facts=recorded_facts())
    args.out.write_bytes(msgspec.json.encode(report))
    return 0 if report.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
