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
import math
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

SCHEMA_VERSION = 1
# Seconds allowed, beyond warmup and measurement, for a client process to start,
# connect and write its report before the runner kills it.
_CLIENT_SLACK_SECONDS = 60.0


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
            latencies are then reported per unit and throughput in units/s.
        max_requests: Caps ``--requests`` and ``--warmup`` for operations
            too heavy to repeat thousands of times (a 10,000-task workflow).
    """

    name: str
    client: ClientFactory
    server: ServerFactory | None = None
    description: str = ""
    requires: tuple[str, ...] = ()
    units: int = 1
    max_requests: int | None = None


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
    """Loop bounds shared by every contender of a run.

    Attributes:
        requests: Timed operations per contender (the count bound).
        warmup: Untimed operations before timing starts.
        concurrency: Operations in flight at once in the client process.
        max_seconds: Time bound applied separately to the warmup loop and to
            the timed loop; a loop stops at whichever bound it reaches first.
        paired: Time each contender alternately with the baseline, one
            operation each, in the contender's client process, and take its
            ratios against that paired baseline (concurrency 1 only).
        server_cpus: With ``--pin``, the CPUs every server process runs on
            (empty: wherever the OS puts them).
        client_cpus: With ``--pin``, the CPUs every client process runs on.
    """

    requests: int = 10_000
    warmup: int = 1_000
    concurrency: int = 1
    max_seconds: float = 30.0
    paired: bool = False
    server_cpus: tuple[int, ...] = ()
    client_cpus: tuple[int, ...] = ()


class ClientReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a client process writes back to the runner.

    Attributes:
        latencies_ns: One latency per completed timed operation, in order.
        elapsed_ns: Wall time of the timed loop.
        stopped_by: ``"count"`` if all requests ran, ``"time"`` if the time
            bound stopped the loop first.
        warmup_done: Warmup operations actually run.
        error: Set, with no latencies, when the client failed.
        baseline_latencies_ns: In a paired run, the baseline's latencies,
            each timed just before the contender's operation of the same index.
    """

    latencies_ns: list[int] = msgspec.field(default_factory=list)
    baseline_latencies_ns: list[int] = msgspec.field(default_factory=list)
    elapsed_ns: int = 0
    stopped_by: Literal["count", "time"] = "count"
    warmup_done: int = 0
    error: str | None = None


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """Latency summary of one contender, in microseconds.

    Percentiles interpolate linearly between the closest ranks (the common
    "type 7" definition, as numpy's default).
    """

    requests: int
    min_us: float
    median_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float
    throughput_rps: float


class ContenderResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one contender: measured, skipped or failed.

    Ratios are the contender's value divided by the baseline's value from the
    same run, so 1.0 is "as fast as the baseline" and 2.0 "twice as slow". In
    a paired run (``--paired``) the divisor is ``paired_baseline``: the
    baseline timed alternately with this contender.
    """

    name: str
    description: str = ""
    status: Literal["ok", "skipped", "failed"]
    reason: str | None = None
    stats: Stats | None = None
    stopped_by: Literal["count", "time"] | None = None
    median_ratio: float | None = None
    p99_ratio: float | None = None
    units: int = 1
    paired_baseline: Stats | None = None


class SuiteReport(msgspec.Struct, frozen=True, kw_only=True):
    """All results of one suite, baseline first."""

    suite: str
    baseline: str
    results: list[ContenderResult]


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """The whole run, as written by ``--json``."""

    schema_version: int = SCHEMA_VERSION
    machine: dict[str, object]
    settings: Settings
    suites: list[SuiteReport]


# --------------------------------------------------------------------------
# Statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile of already sorted values.

    Args:
        sorted_values: Non-empty values in ascending order.
        q: Percentile in ``[0, 100]``.

    Raises:
        ValueError: If ``sorted_values`` is empty or ``q`` is out of range.
    """
    if not sorted_values:
        msg = "percentile of no values"
        raise ValueError(msg)
    if not 0.0 <= q <= 100.0:
        msg = f"percentile must be within [0, 100], got {q}"
        raise ValueError(msg)
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


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
    return Stats(
        requests=len(values),
        min_us=values[0] / us,
        median_us=percentile(values, 50) / us,
        p90_us=percentile(values, 90) / us,
        p99_us=percentile(values, 99) / us,
        max_us=values[-1] / us,
        mean_us=sum(values) / len(values) / us,
        throughput_rps=len(values) * units * 1e9 / elapsed_ns,
    )


def apply_ratios(results: Sequence[ContenderResult], baseline: str) -> list[ContenderResult]:
    """Return ``results`` with median and p99 ratios against ``baseline``.

    A result with a ``paired_baseline`` is divided by that instead. Results
    that were not measured, or that have neither a paired baseline nor a
    measured ``baseline`` to divide by, keep ``None`` ratios.
    """
    base = next((r.stats for r in results if r.name == baseline and r.stats), None)
    out = []
    for result in results:
        divisor = result.paired_baseline or base
        if result.stats is None or divisor is None:
            out.append(result)
            continue
        out.append(
            msgspec.structs.replace(
                result,
                median_ratio=result.stats.median_us / divisor.median_us,
                p99_ratio=result.stats.p99_us / divisor.p99_us,
            )
        )
    return out


# --------------------------------------------------------------------------
# Output


def _format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_table(report: SuiteReport) -> str:
    """Render one suite's results as an aligned plain-text table."""
    columns = (
        "contender",
        "requests",
        "median µs",
        "p99 µs",
        "req/s",
        "median vs base",
        "p99 vs base",
    )
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for r in report.results:
        name = f"{r.name} (baseline)" if r.name == report.baseline else r.name
        if r.stats is None:
            reason = " ".join((r.reason or "unknown").split())  # one line per row
            rows.append((name, f"{r.status}: {_shorten(reason)}"))
            continue
        requests = f"{r.stats.requests}"
        if r.units > 1:
            requests += f" x{r.units:,}"
            notes.append("x N: each request did N units (tasks); µs are per unit and req/s counts units")
        if r.stopped_by == "time":
            requests += "*"
            notes.append("* stopped by --max-seconds before --requests")
        if r.paired_baseline is not None:
            requests += "+"
            notes.append(
                "+ paired: ratios against the baseline timed alternately with this contender "
                "(its median / p99 in µs: "
                + ", ".join(
                    f"{p.name} {p.paired_baseline.median_us:.1f} / {p.paired_baseline.p99_us:.1f}"
                    for p in report.results
                    if p.paired_baseline is not None
                )
                + ")"
            )
        rows.append(
            (
                name,
                requests,
                f"{r.stats.median_us:.1f}",
                f"{r.stats.p99_us:.1f}",
                f"{r.stats.throughput_rps:,.0f}",
                _format_ratio(r.median_ratio),
                _format_ratio(r.p99_ratio),
            )
        )
    full_rows = [r for r in rows if len(r) == len(columns)]
    widths = [max([len(columns[i])] + [len(r[i]) for r in full_rows]) for i in range(len(columns))]
    widths[0] = max([widths[0]] + [len(r[0]) for r in rows])

    def line(cells: Sequence[str]) -> str:
        if len(cells) != len(columns):  # skipped or failed: name then a message
            return f"{cells[0]:<{widths[0]}}  {cells[1]}"
        first = f"{cells[0]:<{widths[0]}}"
        rest = (f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
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
_NOT_SUITES = frozenset({"cache_churn", "go_client", "idle_gap", "text_routing"})


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


def run_client(
    suite: str,
    contender: str,
    target: str | None,
    settings: Settings,
    *,
    paired: tuple[str, str | None] | None = None,
) -> ClientReport:
    """Run one contender's client loop in a fresh ``python`` process.

    ``paired`` names the baseline contender and its target to time
    alternately with this one. The process is killed if it outlives both
    loop time bounds plus a slack for start-up, so a hung server cannot hang
    the run.
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
        if target is not None:
            command += ["--target", target]
        if paired is not None:
            command += ["--paired-baseline", paired[0]]
            if paired[1] is not None:
                command += ["--paired-target", paired[1]]
        if settings.client_cpus:
            command += ["--cpus", ",".join(map(str, settings.client_cpus))]
        timeout = 2 * settings.max_seconds + _CLIENT_SLACK_SECONDS
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
        except subprocess.TimeoutExpired:
            return ClientReport(error=f"client process killed after {timeout:.0f} s")
        if proc.returncode != 0 and proc.stderr.strip():
            print(proc.stderr.rstrip(), file=sys.stderr, flush=True)  # the traceback
        if out.exists():
            return msgspec.json.decode(out.read_bytes(), type=ClientReport)
        return ClientReport(error=f"client exited {proc.returncode}: {_last_line(proc.stderr)}")


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
    try:
        with contextlib.ExitStack() as stack:
            target = stack.enter_context(contender.server()) if contender.server else None
            paired = None
            if settings.paired and contender is not suite.baseline:
                base = suite.baseline
                paired = (base.name, stack.enter_context(base.server()) if base.server else None)
            report = run_client(suite.name, contender.name, target, settings, paired=paired)
    except Exception as exc:  # noqa: BLE001 - one contender must not stop the run
        return result(status="failed", reason=f"{type(exc).__name__}: {exc}")
    if report.error is not None:
        return result(status="failed", reason=report.error)
    try:
        stats = summarize(report.latencies_ns, report.elapsed_ns, units=contender.units)
        paired_stats = (
            summarize(
                report.baseline_latencies_ns, sum(report.baseline_latencies_ns), units=suite.baseline.units
            )
            if report.baseline_latencies_ns
            else None
        )
    except ValueError as exc:
        return result(status="failed", reason=str(exc))
    return result(status="ok", stats=stats, stopped_by=report.stopped_by, paired_baseline=paired_stats)


def run_suite(suite: Suite, settings: Settings, *, log: Callable[[str], None]) -> SuiteReport:
    """Run the baseline and then each contender of ``suite``, one at a time."""
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
        "--paired",
        action="store_true",
        help=(
            "time each contender alternately with the baseline in one client process and take "
            "its ratios against that paired baseline (drift of a shared machine cancels out; "
            "concurrency 1 only)"
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

    if args.paired and args.concurrency != 1:
        parser.error("--paired times one operation at a time: it needs --concurrency 1")
    server_cpus, client_cpus = _pin(parser) if args.pin else ((), ())
    settings = Settings(
        requests=args.requests,
        warmup=args.warmup,
        concurrency=args.concurrency,
        max_seconds=args.max_seconds,
        paired=args.paired,
        server_cpus=server_cpus,
        client_cpus=client_cpus,
    )
    compile_bytecode()
    machine = machine_info()
    print(_machine_line(machine))
    print(
        f"requests {settings.requests}, warmup {settings.warmup}, "
        f"concurrency {settings.concurrency}, max {settings.max_seconds:g} s per loop"
        + (", paired with the baseline" if settings.paired else "")
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
    print("\nratios = contender / baseline from this run (lower is faster; 1.00x = as fast as the baseline)")
    if args.json is not None:
        full = Report(machine=machine, settings=settings, suites=reports)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(full), indent=2) + b"\n")
        log(f"wrote {args.json}")
    failed = [f"{rep.suite}:{r.name}" for rep in reports for r in rep.results if r.status == "failed"]
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0
