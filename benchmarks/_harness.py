"""The benchmark runner: suites, contenders, statistics, the table and the JSON.

A *suite* is a public module of the ``benchmarks`` package that defines a
module-level ``SUITE = Suite(...)``. A suite has one baseline and any number of
contenders. A :class:`Contender` is a name plus two factories:

* ``server``, called in the runner process, is a context manager that starts
  whatever processes the contender needs (an echo server, the sidecar, a peer's
  server) and yields the gRPC target the client should call. It is ``None`` for
  in-process peers (a library called directly by the client).
* ``client``, called in a fresh client process, is an async context manager
  that connects to the target and yields an :data:`Operation`: a zero-argument
  coroutine function doing exactly one operation (one RPC, one workflow, one
  cache lookup). Setup and teardown stay outside the timed loop.

The runner starts each contender's servers, then runs ``python -m
benchmarks._client`` in a new process that imports the suite module by name,
builds the operation, warms up, and times each operation with
``time.perf_counter_ns``. Both loops stop at a request count or a time limit,
whichever comes first. Contenders therefore never share an interpreter, a GIL,
an event loop or warm caches with each other or with the runner.

The baseline is timed twice. Alone first, in a process of its own (the
suite's baseline row, the *clean* baseline); and, by default, again inside
every contender's client process, in blocks alternating with the
contender's (``--pairing blocks``; ``calls`` alternates single operations,
``none`` leaves it out). A contender's ratios divide by the baseline timed
alternately with it, so drift of a shared machine between one loop and the
next cancels out; a row whose alternated baseline's p99 stands clearly above
the clean one is flagged, since the contender's background work then lands
on the baseline's calls and flatters the p99 ratio.

Adding a contender is one entry in a suite's ``contenders`` tuple; a peer that
is an optional dependency lists its import names in ``requires`` and is
reported as ``skipped: not installed (...)`` when any is missing.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as dt
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import platform
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from benchmarks._stats import (
    MIN_P99_SAMPLES,
    Histogram,
    histogram,
    percentile,
    quantile_interval,
    ratio_range,
)

__all__ = [
    "ClientFactory",
    "ClientReport",
    "Contender",
    "ContenderResult",
    "Operation",
    "Report",
    "ServerFactory",
    "Settings",
    "Stats",
    "Suite",
    "SuiteReport",
    "apply_ratios",
    "format_table",
    "main",
    "percentile",
    "record_fact",
    "summarize",
]

#: The directory that holds the ``benchmarks`` package; client and server
#: processes run from here so ``python -m benchmarks.<module>`` resolves.
ROOT = Path(__file__).resolve().parent.parent

#: One benchmarked operation: awaited once per timed request.
Operation = Callable[[], Awaitable[object]]
#: Builds an :data:`Operation` in the client process from the server's target
#: (``None`` when the contender has no server).
ClientFactory = Callable[[str | None], AbstractAsyncContextManager[Operation]]
#: Starts a contender's server processes in the runner and yields a gRPC target.
ServerFactory = Callable[[], AbstractContextManager[str]]

SCHEMA_VERSION = 2
# Seconds allowed, beyond warmup and measurement, for a client process to start,
# connect and write its report before the runner kills it.
_CLIENT_SLACK_SECONDS = 60.0
#: A contender's alternated baseline is flagged when its p99 exceeds the clean
#: baseline's by this factor and their 95% intervals do not overlap.
CONTAMINATION_MARGIN = 1.25
#: Latencies kept verbatim in the JSON per contender (beyond it: the histogram only).
MAX_SAMPLES_IN_JSON = 20_000

Pairing = Literal["blocks", "calls", "none"]


@dataclass(frozen=True, slots=True)
class Contender:
    """One thing to measure within a suite.

    Attributes:
        name: Short unique name within the suite, shown in the table.
        client: Async context manager factory run in the client process; see
            :data:`ClientFactory`. Must be reachable as an attribute of the
            suite module's ``SUITE`` so that the client process can find it.
        server: Context manager factory run in the runner; see
            :data:`ServerFactory`. ``None`` when there is nothing to start.
        description: One line saying what is measured.
        requires: Importable module names this contender needs (for optional
            peers); when one is missing the contender is skipped, not failed.
        units: Work items one operation does (the tasks of one workflow);
            latencies are then reported per unit and throughput in units/s,
            and the row is a throughput figure (no p99).
        max_requests: Caps ``--requests`` and ``--warmup`` for operations
            too heavy to repeat thousands of times (a 10,000-task workflow).
        setup_seconds: Time the client may spend before its loops (a cache
            waiting for its search expansion's calibration), added to the
            bound after which the runner kills the client process.
    """

    name: str
    client: ClientFactory
    server: ServerFactory | None = None
    description: str = ""
    requires: tuple[str, ...] = ()
    units: int = 1
    max_requests: int | None = None
    setup_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Suite:
    """A baseline and the contenders compared against it in the same run.

    Attributes:
        name: The suite's name, equal to its module name in ``benchmarks``.
        baseline: The contender every ratio is computed against.
        contenders: The others, run after the baseline in this order.
        description: One line saying what the suite compares.
    """

    name: str
    baseline: Contender
    contenders: tuple[Contender, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        """Reject duplicate contender names, which would make results ambiguous."""
        names = [c.name for c in self.in_run_order()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            msg = f"suite {self.name!r}: duplicate contender names {duplicates}"
            raise ValueError(msg)

    def in_run_order(self) -> tuple[Contender, ...]:
        """Return the baseline followed by the contenders, in run order."""
        return (self.baseline, *self.contenders)

    def get(self, name: str) -> Contender:
        """Return the contender called ``name``.

        Raises:
            KeyError: If the suite has no such contender.
        """
        for contender in self.in_run_order():
            if contender.name == name:
                return contender
        msg = f"suite {self.name!r} has no contender {name!r}"
        raise KeyError(msg)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Loop bounds and method shared by every contender of a run.

    Attributes:
        requests: Timed operations per contender (the count bound).
        warmup: Untimed operations before timing starts.
        concurrency: Operations in flight at once in the client process
            (closed loop: each caller starts its next operation when the
            last one returns).
        max_seconds: Time bound applied separately to the warmup loop and to
            the timed loop; a loop stops at whichever bound it reaches first.
        pairing: How each contender's baseline is timed in its client
            process: ``blocks`` (alternating blocks of ``block`` operations),
            ``calls`` (alternating single operations, concurrency 1 only) or
            ``none`` (ratios against the baseline timed alone, first).
        block: Timed operations per block with ``pairing="blocks"``.
        rate: Open loop: operations started at this fixed rate per second,
            each timed from its intended start (so a stall delays and
            counts against every operation due meanwhile); None: closed loop.
        server_cpus: With ``--pin``, the CPUs every server process runs on
            (empty: wherever the OS puts them).
        client_cpus: With ``--pin``, the CPUs every client process runs on.
    """

    requests: int = 10_000
    warmup: int = 1_000
    concurrency: int = 1
    max_seconds: float = 30.0
    pairing: Pairing = "blocks"
    block: int = 200
    rate: float | None = None
    server_cpus: tuple[int, ...] = ()
    client_cpus: tuple[int, ...] = ()

    def loop_description(self) -> str:
        """How operations are issued, in words (printed above the tables)."""
        if self.rate is not None:
            return f"open loop at {self.rate:,.0f} operations/s, latency from each one's intended start"
        callers = "one caller" if self.concurrency == 1 else f"{self.concurrency} concurrent callers"
        return f"closed loop, {callers}"

    def pairing_description(self) -> str:
        """Which baseline the ratios use, in words."""
        if self.pairing == "blocks":
            return (
                f"ratios against the baseline timed in blocks of {self.block} alternating with each "
                "contender's, in its client process (base 'blocks')"
            )
        if self.pairing == "calls":
            return (
                "ratios against the baseline timed call by call alternately with each contender "
                "(base 'calls')"
            )
        return "ratios against the baseline timed alone, before the contenders (base 'run')"


class ClientReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a client process writes back to the runner.

    Attributes:
        latencies_ns: One latency per completed timed operation, in order.
        elapsed_ns: Wall time of the timed loop (with pairing: of the
            contender's own blocks, or the sum of its latencies per call).
        stopped_by: ``"count"`` if all requests ran, ``"time"`` if the time
            bound stopped the loop first, ``"overload"`` if an open loop
            had too many operations in flight.
        warmup_done: Warmup operations actually run.
        error: Set, with no latencies, when the client failed.
        baseline_latencies_ns: With pairing, the baseline's latencies, timed
            alternately with the contender's.
        baseline_elapsed_ns: The wall time of those baseline operations.
        facts: What the client learnt about the thing it timed (a cache's
            search expansion in force, its answers that were not as meant),
            recorded with :func:`record_fact`.
    """

    latencies_ns: list[int] = msgspec.field(default_factory=list)
    baseline_latencies_ns: list[int] = msgspec.field(default_factory=list)
    elapsed_ns: int = 0
    baseline_elapsed_ns: int = 0
    stopped_by: Literal["count", "time", "overload"] = "count"
    warmup_done: int = 0
    error: str | None = None
    facts: dict[str, int | float | str] = msgspec.field(default_factory=dict)


_FACTS: dict[str, int | float | str] = {}


def record_fact(name: str, value: float | str) -> None:
    """Record a fact about the contender timed in this client process (shown under the table, in JSON).

    Called by a contender's client (for example ``search_expansion`` once a
    cache's calibration settled, ``wrong_answers`` counted in the timed loop).
    """
    _FACTS[name] = value


def recorded_facts() -> dict[str, int | float | str]:
    """The facts recorded in this process so far."""
    return dict(_FACTS)


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """Latency summary of one contender, in microseconds.

    Percentiles interpolate linearly between the closest ranks (the common
    "type 7" definition, as numpy's default). ``median_ci_us`` and
    ``p99_ci_us`` are distribution-free 95% intervals (order statistics;
    ``None`` when the samples are too few to bound the value).
    """

    requests: int
    min_us: float
    median_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float
    throughput_rps: float
    median_ci_us: tuple[float, float] | None = None
    p99_ci_us: tuple[float, float] | None = None


class ContenderResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one contender: measured, skipped or failed.

    Ratios are the contender's value divided by the baseline's value from the
    same run, so 1.0 is "as fast as the baseline" and 2.0 "twice as slow".
    ``base`` names the divisor: ``blocks`` or ``calls``, the baseline timed
    alternately with this contender (``paired_baseline``); ``run``, the
    baseline timed alone at the start of the run. ``run_median_ratio`` and
    ``run_p99_ratio`` always divide by the latter. The ``*_ratio_range``
    fields are conservative 95% ranges. The p99 ratio is None where the p99
    means little: fewer than 1,000 samples, or a row whose operation does
    several units of work (a throughput row).
    """

    name: str
    description: str = ""
    status: Literal["ok", "skipped", "failed"]
    reason: str | None = None
    stats: Stats | None = None
    stopped_by: Literal["count", "time", "overload"] | None = None
    median_ratio: float | None = None
    p99_ratio: float | None = None
    median_ratio_range: tuple[float, float] | None = None
    p99_ratio_range: tuple[float, float] | None = None
    run_median_ratio: float | None = None
    run_p99_ratio: float | None = None
    base: Literal["blocks", "calls", "run"] | None = None
    contaminated: bool = False
    units: int = 1
    paired_baseline: Stats | None = None
    throughput_basis: Literal["wall", "mean"] = "wall"
    warmup_requested: int = 0
    warmup_done: int = 0
    facts: dict[str, int | float | str] = msgspec.field(default_factory=dict)
    histogram: Histogram | None = None
    samples_ns: list[int] = msgspec.field(default_factory=list)

    def p99_meaningful(self) -> bool:
        """Whether the row's p99 is worth printing: one operation per unit, and 1,000 samples."""
        return self.stats is not None and self.units == 1 and self.stats.requests >= MIN_P99_SAMPLES


class SuiteReport(msgspec.Struct, frozen=True, kw_only=True):
    """All results of one suite, baseline first."""

    suite: str
    baseline: str
    results: list[ContenderResult]
    loop: str = ""
    pairing: str = ""


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """The whole run, as written by ``--json``."""

    schema_version: int = SCHEMA_VERSION
    machine: dict[str, object]
    settings: Settings
    suites: list[SuiteReport]


# --------------------------------------------------------------------------
# Statistics


def summarize(latencies_ns: Sequence[int], elapsed_ns: int, *, units: int = 1) -> Stats:
    """Summarize per-request latencies of one timed loop.

    Args:
        latencies_ns: Latency of each completed operation, in nanoseconds.
        elapsed_ns: Wall time of the whole loop, for throughput.
        units: Work items per operation: latencies are divided by it and
            throughput multiplied, so figures are per unit.

    Raises:
        ValueError: If there are no latencies or no elapsed time.
    """
    if not latencies_ns or elapsed_ns <= 0:
        msg = "no completed requests to summarize"
        raise ValueError(msg)
    values = sorted(latencies_ns)
    us = 1_000.0 * units

    def interval(q: float) -> tuple[float, float] | None:
        bounds = quantile_interval(values, q)
        return None if bounds is None else (bounds[0] / us, bounds[1] / us)

    return Stats(
        requests=len(values),
        min_us=values[0] / us,
        median_us=percentile(values, 50) / us,
        p90_us=percentile(values, 90) / us,
        p99_us=percentile(values, 99) / us,
        max_us=values[-1] / us,
        mean_us=sum(values) / len(values) / us,
        throughput_rps=len(values) * units * 1e9 / elapsed_ns,
        median_ci_us=interval(0.5),
        p99_ci_us=interval(0.99),
    )


def _contaminated(paired: Stats, clean: Stats) -> bool:
    """Whether an alternated baseline's p99 stands clearly above the clean baseline's."""
    if paired.p99_ci_us is None or clean.p99_ci_us is None:
        return False
    return paired.p99_us > CONTAMINATION_MARGIN * clean.p99_us and paired.p99_ci_us[0] > clean.p99_ci_us[1]


def apply_ratios(results: Sequence[ContenderResult], baseline: str) -> list[ContenderResult]:
    """Return ``results`` with median and p99 ratios against ``baseline``.

    A result with a ``paired_baseline`` is divided by that (its ``base``
    stays as set, ``blocks`` or ``calls``; ``calls`` when unset), and also,
    as ``run_*_ratio``, by the run's baseline row. Results that were not
    measured, or that have neither a paired baseline nor a measured
    ``baseline`` to divide by, keep ``None`` ratios.
    """
    base = next((r.stats for r in results if r.name == baseline and r.stats), None)
    out = []
    for result in results:
        divisor = result.paired_baseline or base
        if result.stats is None or divisor is None:
            out.append(result)
            continue
        stats = result.stats
        meaningful = result.p99_meaningful()
        kind = (result.base or "calls") if result.paired_baseline is not None else "run"
        out.append(
            msgspec.structs.replace(
                result,
                base=kind,
                median_ratio=stats.median_us / divisor.median_us,
                p99_ratio=stats.p99_us / divisor.p99_us if meaningful else None,
                median_ratio_range=ratio_range(stats.median_ci_us, divisor.median_ci_us),
                p99_ratio_range=ratio_range(stats.p99_ci_us, divisor.p99_ci_us) if meaningful else None,
                run_median_ratio=stats.median_us / base.median_us if base else None,
                run_p99_ratio=stats.p99_us / base.p99_us if base and meaningful else None,
                contaminated=(
                    result.paired_baseline is not None
                    and base is not None
                    and _contaminated(result.paired_baseline, base)
                ),
            )
        )
    return out


# --------------------------------------------------------------------------
# Output


def _format_ratio(value: float | None, bounds: tuple[float, float] | None = None) -> str:
    if value is None:
        return "-"
    if bounds is None:
        return f"{value:.2f}x"
    return f"{value:.2f}x ({bounds[0]:.2f}-{bounds[1]:.2f})"


def _format_us(value: float, bounds: tuple[float, float] | None) -> str:
    if bounds is None:
        return f"{value:,.1f}"
    return f"{value:,.1f} ({bounds[0]:,.0f}-{bounds[1]:,.0f})"


def _format_fact(value: float | str) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.4f}"
    return str(value)


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _row(r: ContenderResult, baseline: str, notes: list[str], row_notes: list[str]) -> tuple[str, ...]:
    """One row of :func:`format_table`; appends its table-wide and its own notes."""
    name = f"{r.name} (baseline, alone)" if r.name == baseline else r.name
    if r.stats is None:
        reason = " ".join((r.reason or "unknown").split())  # one line per row
        return (name, f"{r.status}: {_shorten(reason)}")
    requests = f"{r.stats.requests}"
    if r.units > 1:
        name += " (throughput)"
        requests += f" x{r.units:,}"
        notes.append(
            "x N: a throughput row: each request did N units (tasks); µs are per unit, req/s counts "
            "units, and no p99 is given"
        )
    elif r.stats.requests < MIN_P99_SAMPLES:
        notes.append(f"p99 - : fewer than {MIN_P99_SAMPLES:,} samples, too few to bound a p99")
    marks = {
        "*": r.stopped_by == "time",
        "^": r.stopped_by == "overload",
        "~": r.warmup_done < r.warmup_requested,
        "!": r.contaminated,
    }
    requests += "".join(mark for mark, on in marks.items() if on)
    if marks["*"]:
        notes.append("* stopped by --max-seconds before --requests")
    if marks["^"]:
        notes.append("^ open loop stopped: too many operations in flight (the rate is above capacity)")
    if marks["~"]:
        row_notes.append(
            f"~ {r.name}: warmup cut short by --max-seconds after {r.warmup_done:,} of "
            f"{r.warmup_requested:,} operations"
        )
    if r.throughput_basis == "mean":
        notes.append(
            "req/s of operations timed one by one between others' (base 'calls', the Go client) is "
            "1 / mean latency, not operations per wall second"
        )
    row_notes.extend(_paired_notes(r))
    if r.facts:
        row_notes.append(f"  {r.name}: " + ", ".join(f"{k} {_format_fact(v)}" for k, v in r.facts.items()))
    meaningful = r.p99_meaningful()
    is_base = r.name == baseline
    return (
        name,
        requests,
        _format_us(r.stats.median_us, r.stats.median_ci_us),
        _format_us(r.stats.p99_us, r.stats.p99_ci_us) if meaningful else "-",
        f"{r.stats.throughput_rps:,.0f}",
        _format_ratio(r.median_ratio, None if is_base else r.median_ratio_range),
        _format_ratio(r.p99_ratio, None if is_base else r.p99_ratio_range),
        "-" if is_base else (r.base or "run"),
    )


def _paired_notes(r: ContenderResult) -> list[str]:
    """The notes of a row with an alternated baseline: its figures, and the flag when it looks inflated."""
    p = r.paired_baseline
    if p is None:
        return []
    p99 = f"{p.p99_us:,.1f} µs" if r.p99_meaningful() else "-"
    line = f"  {r.name}: its baseline timed alternately: median {p.median_us:,.1f} µs, p99 {p99}"
    if r.run_median_ratio is not None:
        line += f"; against the baseline alone: median {r.run_median_ratio:.2f}x"
        if r.run_p99_ratio is not None:
            line += f", p99 {r.run_p99_ratio:.2f}x"
    out = [line]
    if r.contaminated:
        out.append(
            f"! {r.name}: the p99 of its alternated baseline is over {CONTAMINATION_MARGIN:g}x the clean "
            "baseline's (95% intervals apart): the contender's background work (or drift) lands on the "
            "baseline's calls and flatters its p99 ratio; read its p99 against the baseline alone"
        )
    return out


def format_table(report: SuiteReport) -> str:
    """Render one suite's results as an aligned plain-text table with its notes."""
    columns = (
        "contender",
        "requests",
        "median µs (95% CI)",
        "p99 µs (95% CI)",
        "req/s",
        "median vs base",
        "p99 vs base",
        "base",
    )
    notes: list[str] = []
    row_notes: list[str] = []
    rows = [_row(r, report.baseline, notes, row_notes) for r in report.results]
    full_rows = [r for r in rows if len(r) == len(columns)]
    widths = [max([len(columns[i])] + [len(r[i]) for r in full_rows]) for i in range(len(columns))]
    widths[0] = max([widths[0]] + [len(r[0]) for r in rows])

    def line(cells: Sequence[str]) -> str:
        if len(cells) != len(columns):  # skipped or failed: name then a message
            return f"{cells[0]:<{widths[0]}}  {cells[1]}"
        first = f"{cells[0]:<{widths[0]}}"
        rest = (f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    out = []
    if report.loop or report.pairing:
        out.append("; ".join(x for x in (report.loop, report.pairing) if x))
    out += [line(columns), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    out.extend(row_notes)
    out.extend(sorted(set(notes)))
    return "\n".join(out)


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    return platform.processor() or None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, object]:
    """Describe the machine and checkout, so JSON results can be compared."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "packages": {name: _version(name) for name in ("grpcio", "uvloop", "msgspec", "protobuf")},
    }


def _machine_line(machine: dict[str, object]) -> str:
    packages = machine.get("packages")
    versions = ", ".join(f"{k} {v}" for k, v in packages.items() if v) if isinstance(packages, dict) else ""
    commit = machine.get("git_commit")
    return (
        f"python {machine['python']} on {machine['platform']}, "
        f"{machine['cpu_count']} CPUs ({machine['cpu_model']}); {versions}; "
        f"commit {str(commit)[:12] if commit else 'none'}"
    )


# --------------------------------------------------------------------------
# Running


def compile_bytecode() -> None:
    """Writes the bytecode of the sidecar's own packages where it is missing or stale.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (as on this project's CI
    machines), Python never caches what it compiles: every sidecar start
    would compile are_core, sidecar and are_sdk from source again, some
    0.18 s of each start on a 2-core machine, which an installed package
    (whose bytecode pip writes) never pays. Benchmarks that time a start,
    and every sidecar they launch, should see what a deployment sees.
    Up-to-date files are skipped; ``make run``/``test``/``bench`` do the same.
    """
    for package in ("are_core", "sidecar", "are_sdk"):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            compileall.compile_dir(location, quiet=2)


def missing_requirements(modules: Iterable[str]) -> list[str]:
    """Return those of ``modules`` that are not installed.

    Only the top-level package of a dotted name is imported (which
    ``find_spec`` needs to locate a submodule), never the module itself.

    Raises:
        ImportError: If a module is installed but fails to import while being
            located (a broken install is a failure to report, not a skip).
    """
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError as exc:
            parts = name.split(".")
            prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
            if exc.name not in prefixes:
                raise
            found = False
        if not found:
            missing.append(name)
    return missing


# Modules of the package that are tools run on their own, not suites.
_NOT_SUITES = frozenset({"cache_churn", "go_client", "idle_gap", "targets", "text_routing"})


def discover_suites() -> list[str]:
    """Return the names of all suite modules in the ``benchmarks`` package."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not info.name.startswith("_") and info.name not in _NOT_SUITES
    )


def load_suite(name: str) -> Suite:
    """Import ``benchmarks.<name>`` and return its ``SUITE``.

    Raises:
        TypeError: If the module does not define a :class:`Suite` named ``SUITE``.
    """
    module = importlib.import_module(f"benchmarks.{name}")
    suite = getattr(module, "SUITE", None)
    if not isinstance(suite, Suite):
        msg = f"benchmarks.{name} defines no SUITE = Suite(...)"
        raise TypeError(msg)
    return suite


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _text(output: str | bytes | None) -> str:
    if output is None:
        return ""
    return output.decode(errors="replace") if isinstance(output, bytes) else output


def _relay(contender: str, stderr: str) -> None:
    """Shows what a client printed (its calibration, its search expansion), indented under its name."""
    for row in stderr.rstrip().splitlines():
        print(f"  [{contender}] {row}", file=sys.stderr, flush=True)


#: Untimed operations of each side at the start of each block (``--pairing blocks``), so that a
#: timed operation follows one of its own kind, as in a plain loop.
BLOCK_REWARM = 5
#: Idle time before each block, so that short background work of the other side settles.
BLOCK_GAP_SECONDS = 0.02


def client_timeout(settings: Settings, contender: Contender | None = None) -> float:
    """Seconds after which the runner kills a client process: both loops' bounds, slack, and setup."""
    setup = contender.setup_seconds if contender is not None else 0.0
    return 2 * settings.max_seconds + _CLIENT_SLACK_SECONDS + setup


def run_client(
    suite: str,
    contender: str,
    target: str | None,
    settings: Settings,
    *,
    paired: tuple[str, str | None] | None = None,
    timeout: float | None = None,
    heavy: bool = False,
) -> ClientReport:
    """Run one contender's client loop in a fresh ``python`` process.

    ``paired`` names the baseline contender and its target to time
    alternately with this one (in blocks or call by call, as
    ``settings.pairing`` says; ``heavy`` operations alternate one by one,
    without re-warming). The process is killed after ``timeout`` seconds
    (default :func:`client_timeout`), so a hung server cannot hang the run;
    what it printed is shown either way.
    """
    with tempfile.TemporaryDirectory(prefix="are-bench-") as tmp:
        out = Path(tmp) / "report.json"
        command = [
            sys.executable,
            "-m",
            "benchmarks._client",
            "--suite",
            suite,
            "--contender",
            contender,
            "--requests",
            str(settings.requests),
            "--warmup",
            str(settings.warmup),
            "--concurrency",
            str(settings.concurrency),
            "--max-seconds",
            str(settings.max_seconds),
            "--out",
            str(out),
        ]
        if settings.rate is not None:
            command += ["--rate", str(settings.rate)]
        if target is not None:
            command += ["--target", target]
        if paired is not None:
            command += ["--paired-baseline", paired[0], "--pairing", settings.pairing]
            command += ["--block", "1" if heavy else str(settings.block)]
            command += ["--rewarm", "0" if heavy else str(min(BLOCK_REWARM, settings.warmup))]
            command += ["--gap", str(BLOCK_GAP_SECONDS)]
            if paired[1] is not None:
                command += ["--paired-target", paired[1]]
        if settings.client_cpus:
            command += ["--cpus", ",".join(map(str, settings.client_cpus))]
        timeout = client_timeout(settings) if timeout is None else timeout
        try:
            proc = subprocess.run(
                command,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            stderr = _text(expired.stderr)
            _relay(contender, stderr)
            tail = f": {_last_line(stderr)}" if stderr.strip() else ""
            return ClientReport(error=f"client process killed after {timeout:.0f} s{tail}")
        _relay(contender, proc.stderr)
        if out.exists():
            return msgspec.json.decode(out.read_bytes(), type=ClientReport)
        return ClientReport(error=f"client exited {proc.returncode}: {_last_line(proc.stderr)}")


def _samples(latencies_ns: Sequence[int]) -> list[int]:
    """The latencies kept verbatim in the JSON: all of them, up to :data:`MAX_SAMPLES_IN_JSON`."""
    return list(latencies_ns) if len(latencies_ns) <= MAX_SAMPLES_IN_JSON else []


def run_contender(suite: Suite, contender: Contender, settings: Settings) -> ContenderResult:
    """Start a contender's servers, run its client process, and summarize."""

    result = functools.partial(
        ContenderResult, name=contender.name, description=contender.description, units=contender.units
    )
    if contender.max_requests is not None:
        settings = msgspec.structs.replace(
            settings,
            requests=min(settings.requests, contender.max_requests),
            warmup=min(settings.warmup, contender.max_requests),
        )

    try:
        missing = missing_requirements(contender.requires)
    except ImportError as exc:
        return result(status="failed", reason=f"{type(exc).__name__}: {exc}")
    if missing:
        return result(status="skipped", reason=f"not installed ({', '.join(missing)})")
    pairing = settings.pairing if contender is not suite.baseline else "none"
    try:
        with contextlib.ExitStack() as stack:
            target = stack.enter_context(contender.server()) if contender.server else None
            paired = None
            if pairing != "none":
                base = suite.baseline
                paired = (base.name, stack.enter_context(base.server()) if base.server else None)
            report = run_client(
                suite.name,
                contender.name,
                target,
                settings,
                paired=paired,
                timeout=client_timeout(settings, contender),
                heavy=contender.max_requests is not None,
            )
    except Exception as exc:  # noqa: BLE001 - one contender must not stop the run
        return result(status="failed", reason=f"{type(exc).__name__}: {exc}")
    if report.error is not None:
        return result(status="failed", reason=report.error, facts=report.facts)
    try:
        stats = summarize(report.latencies_ns, report.elapsed_ns, units=contender.units)
        paired_stats = (
            summarize(
                report.baseline_latencies_ns,
                report.baseline_elapsed_ns or sum(report.baseline_latencies_ns),
                units=suite.baseline.units,
            )
            if report.baseline_latencies_ns
            else None
        )
    except ValueError as exc:
        return result(status="failed", reason=str(exc), facts=report.facts)
    return result(
        status="ok",
        stats=stats,
        stopped_by=report.stopped_by,
        paired_baseline=paired_stats,
        base="run" if paired_stats is None else ("calls" if pairing == "calls" else "blocks"),
        throughput_basis="mean" if pairing == "calls" else "wall",
        warmup_requested=settings.warmup,
        warmup_done=report.warmup_done,
        facts=report.facts,
        histogram=histogram(report.latencies_ns),
        samples_ns=_samples(report.latencies_ns),
    )


def run_suite(suite: Suite, settings: Settings, *, log: Callable[[str], None]) -> SuiteReport:
    """Run the baseline alone and then each contender of ``suite`` (with its baseline), one at a time."""
    results = []
    for contender in suite.in_run_order():
        log(f"{suite.name}: {contender.name} ...")
        outcome = run_contender(suite, contender, settings)
        log(f"{suite.name}: {contender.name} {outcome.status}")
        results.append(outcome)
    return SuiteReport(
        suite=suite.name,
        baseline=suite.baseline.name,
        results=apply_ratios(results, suite.baseline.name),
        loop=settings.loop_description(),
        pairing=settings.pairing_description(),
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        msg = f"must be at least 0, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        msg = f"must be greater than 0, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``python -m benchmarks``."""
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Run ARE benchmark suites. Each contender runs in its own process; "
            "ratios compare it with the suite's baseline measured in the same run."
        ),
    )
    parser.add_argument("suites", nargs="*", metavar="SUITE", help="suites to run (default: all)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--requests",
        type=_positive_int,
        default=defaults.requests,
        metavar="N",
        help=f"timed requests per contender (default {defaults.requests})",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_int,
        default=defaults.warmup,
        metavar="N",
        help=f"untimed requests first (default {defaults.warmup})",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=defaults.concurrency,
        metavar="C",
        help="requests in flight at once (default 1: sequential latency)",
    )
    parser.add_argument(
        "--max-seconds",
        type=_positive_float,
        default=defaults.max_seconds,
        metavar="S",
        help=f"time bound of each warmup and timed loop (default {defaults.max_seconds:g})",
    )
    parser.add_argument(
        "--pairing",
        choices=("blocks", "calls", "none"),
        default=defaults.pairing,
        help=(
            "how each contender's baseline is timed: in blocks alternating with the contender's, in its "
            "client process (default; drift of a shared machine cancels out), call by call alternately "
            "(concurrency 1 only), or none (ratios against the baseline timed alone, first)"
        ),
    )
    parser.add_argument(
        "--paired",
        dest="pairing",
        action="store_const",
        const="calls",
        help="the same as --pairing calls",
    )
    parser.add_argument(
        "--block",
        type=_positive_int,
        default=defaults.block,
        metavar="N",
        help=f"timed operations per block with --pairing blocks (default {defaults.block})",
    )
    parser.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        metavar="R",
        help=(
            "open loop: start operations at R per second whatever the previous ones did, and time each "
            "from its intended start (default: closed loop, the next starts when the last returns)"
        ),
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help=(
            "run every server (the echo, the sidecar) on the last CPU and every client on the "
            "others, for baseline and contenders alike (needs 2 CPUs)"
        ),
    )
    parser.add_argument(
        "--require-peers",
        action="store_true",
        help="a contender skipped for want of its optional peer fails the run (exit 1)",
    )
    parser.add_argument("--list", action="store_true", help="list suites and contenders")
    return parser


def cpu_split() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``--pin``'s CPUs: the last this process may use for servers, the others for clients.

    Raises:
        ValueError: Fewer than two CPUs.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:  # one for the servers, one at least for the clients
        msg = f"--pin needs at least 2 CPUs; this process may use {len(cpus)}"
        raise ValueError(msg)
    return (cpus[-1],), tuple(cpus[:-1])


def _pin(parser: argparse.ArgumentParser) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Pins this process (and so the servers it starts) to the servers' CPUs; both CPU sets."""
    try:
        server_cpus, client_cpus = cpu_split()
    except ValueError as error:
        parser.error(str(error))
    os.sched_setaffinity(0, server_cpus)
    return server_cpus, client_cpus


def _settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    """The run's settings from the command line (pins this process with ``--pin``)."""
    if args.pairing == "calls" and (args.concurrency != 1 or args.rate is not None):
        parser.error("--pairing calls times one operation at a time: it needs --concurrency 1, no --rate")
    if args.rate is not None and args.concurrency != 1:
        parser.error("--rate runs an open loop, which sets its own concurrency: leave out --concurrency")
    server_cpus, client_cpus = _pin(parser) if args.pin else ((), ())
    return Settings(
        requests=args.requests,
        warmup=args.warmup,
        concurrency=args.concurrency,
        max_seconds=args.max_seconds,
        pairing=args.pairing,
        block=args.block,
        rate=args.rate,
        server_cpus=server_cpus,
        client_cpus=client_cpus,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suites named on the command line and print their tables.

    Returns:
        0 when every contender was measured or skipped (an optional peer that
        is not installed), 1 when any failed, 2 on a usage error (from
        argparse).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    available = discover_suites()
    unknown = [s for s in args.suites if s not in available]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; available: {available}")
    names: list[str] = args.suites or available

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    suites = [load_suite(name) for name in names]
    if args.list:
        for suite in suites:
            print(f"{suite.name}: {suite.description}")
            for c in suite.in_run_order():
                mark = " (baseline)" if c is suite.baseline else ""
                print(f"  {c.name}{mark}: {c.description}")
        return 0

    settings = _settings(parser, args)
    compile_bytecode()
    machine = machine_info()
    print(_machine_line(machine))
    print(
        f"requests {settings.requests}, warmup {settings.warmup}, "
        f"concurrency {settings.concurrency}, max {settings.max_seconds:g} s per loop; "
        f"{settings.loop_description()}"
        + (
            f", servers pinned to CPU {settings.server_cpus} and clients to {settings.client_cpus}"
            if settings.server_cpus
            else ""
        )
    )
    reports = []
    for suite in suites:
        report = run_suite(suite, settings, log=log)
        reports.append(report)
        print(f"\n{suite.name}: {suite.description}" if suite.description else f"\n{suite.name}")
        print(format_table(report))
    print(
        "\nratios = contender / baseline from this run (lower is faster; 1.00x = as fast as the baseline); "
        "(a-b): conservative 95% range from the two 95% intervals"
    )
    if args.json is not None:
        full = Report(machine=machine, settings=settings, suites=reports)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(full), indent=2) + b"\n")
        log(f"wrote {args.json}")
    counted = ("failed", "skipped") if args.require_peers else ("failed",)
    failed = [f"{rep.suite}:{r.name}" for rep in reports for r in rep.results if r.status in counted]
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0
