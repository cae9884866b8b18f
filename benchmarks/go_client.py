"""The same requests from a compiled client: how much of a round trip is Python's.

``python -m benchmarks.go_client [router] [cache] [--requests N] [--warmup N] [--pin]
[--pairing blocks|calls|none] [--block N]``

Every other suite times its operations from a Python grpc.aio client, whose
own cost is part of each figure (the baseline's too). This one sends the very
requests of the ``router`` and ``cache`` suites from a Go program
(``benchmarks/goclient``, grpc-go), alternately with an echo to the bare
grpc.aio echo server, so that both sides of every ratio are timed by a client
that adds little: in blocks of ``--block`` calls each (the default, as the
Python suites), call by call (``--pairing calls``: pinned, the echo server
and the sidecar share one CPU, and alternating calls evict each other's data
from its caches), or not at all (``--pairing none``, ``--unpaired``: the
echo's calls all timed first, the contender's after). Before the contenders,
the echo is also timed alone (the clean baseline: a row whose alternated
echo's p99 stands clearly above it is flagged ``!``). The Go program knows no
message type: this module writes the serialised requests to a file and the
program replays them, checking that each call returns OK and, for the cache's
lookups, that each answered a hit (``LookupCacheResponse.hit``; a row with
more misses than the Python client allows fails).

The cache's sidecar is started as the ``cache`` suite starts it; its timed
semantic lookups are then asked once and the calibration they start is
waited out before any timing (with ``ARE_BENCH_CACHE_EF`` set, the ef is
fixed and nothing waits); each row reports the search expansion in force
and whether it changed while timed.

Contenders (ratios against the echo timed alternately with each):

* ``sidecar-health``: the standard health check of the router's sidecar, the
  sidecar's own per-RPC floor;
* ``route-10k``: the ``router`` suite's RouteTask over 10,000 cards;
* ``cache-exact-hit``, ``cache-semantic-hit``: the ``cache`` suite's lookups
  (``ARE_BENCH_CACHE_ENTRIES``, ``ARE_BENCH_CACHE_DTYPE`` as there).

Under each table, a line per contender counts its slow calls (over its
median + 0.4 ms) and the median number of calls between two of them: a
background job that stalls the sidecar every N calls shows as a gap of N (the
route events' commits did, one slow call per commit of 32).

Needs Go (``go`` on PATH or /usr/local/go/bin/go); the binary is built into
``benchmarks/goclient/.bin`` (git-ignored). Without Go the run is reported
skipped, exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec

from benchmarks._echo import ECHO_METHOD, echo_server
from benchmarks._harness import (
    BLOCK_GAP_SECONDS,
    BLOCK_REWARM,
    ContenderResult,
    SuiteReport,
    apply_ratios,
    compile_bytecode,
    cpu_split,
    format_table,
    summarize,
)
from benchmarks._stats import histogram

__all__ = ["main"]

_SOURCE = Path(__file__).parent / "goclient"
_BINARY = _SOURCE / ".bin" / "goclient"
_ECHO_PAYLOAD = bytes(16)  # the echo baseline's 16-byte request, as in every suite
_HEALTH_METHOD = "/grpc.health.v1.Health/Check"
_ROUTE_METHOD = "/are.v1.RouterService/RouteTask"
_LOOKUP_METHOD = "/are.v1.CacheService/LookupCache"


def _go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")
    return str(fallback) if fallback.is_file() else None


_BUILD_TIMEOUT_S = 600.0  # a first build may download grpc-go's modules


def _build(go: str) -> Path:
    """Builds the replay client (go build caches, so a rebuild is quick); bounded in time."""
    _BINARY.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([go, "build", "-o", str(_BINARY), "."], cwd=_SOURCE, check=True, timeout=_BUILD_TIMEOUT_S)
    return _BINARY


def _write_requests(path: Path, requests: Sequence[bytes]) -> Path:
    with path.open("wb") as out:
        for request in requests:
            out.write(struct.pack("<I", len(request)))
            out.write(request)
    return path


class Replay(msgspec.Struct, frozen=True, kw_only=True):
    """One run of the Go client: both sides' latencies (ns), why it stopped, and the checked answers."""

    baseline_ns: list[int]
    contender_ns: list[int]
    stopped_by: str
    checked: int = 0
    mismatches: int = 0


def _replay(
    binary: Path,
    folder: Path,
    *,
    echo: str,
    target: str,
    method: str,
    requests: Sequence[bytes],
    settings: argparse.Namespace,
    expect_field: int = 0,
) -> Replay:
    """Runs the Go client once: the baseline's and the contender's latencies.

    ``expect_field``: a top-level varint field of the contender's responses
    that must be 1 (``LookupCacheResponse.hit``); those that are not are
    counted in ``mismatches``.
    """
    base_file = _write_requests(folder / "echo.bin", [_ECHO_PAYLOAD])
    own_file = _write_requests(folder / "requests.bin", requests)
    command = [
        str(binary),
        f"-baseline-target={echo}",
        f"-baseline-method={ECHO_METHOD}",
        f"-baseline-requests={base_file}",
        f"-target={target}",
        f"-method={method}",
        f"-requests={own_file}",
        f"-n={settings.requests}",
        # Every request at least once untimed, as the Python suites do: a timed
        # call is then one the sidecar answered before (a cache entry's body
        # in memory, not a first read from disk), whatever --requests is.
        f"-warmup={max(settings.warmup, len(requests))}",
        f"-max-seconds={settings.max_seconds}",
        f"-unpaired={'true' if settings.pairing == 'none' else 'false'}",
        f"-block={settings.block if settings.pairing == 'blocks' else 1}",
        f"-rewarm={min(BLOCK_REWARM, settings.warmup)}",
        f"-gap={int(BLOCK_GAP_SECONDS * 1000)}ms",
        f"-expect-field={expect_field}",
    ]
    client_cpus: tuple[int, ...] = settings.client_cpus
    # Bounded: two loops of at most max_seconds each, plus a minute of slack.
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=2 * settings.max_seconds + 60,
        check=False,
        preexec_fn=(lambda: os.sched_setaffinity(0, client_cpus)) if client_cpus else None,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"goclient exited {done.returncode}")
    return msgspec.json.decode(done.stdout, type=Replay)


def _router_sidecar() -> contextlib.AbstractContextManager[str]:
    from benchmarks.router import sidecar_server  # noqa: PLC0415 - loads numpy and the capability set

    return sidecar_server()


def _router_requests() -> list[bytes]:
    from benchmarks.router import route_requests  # noqa: PLC0415

    return [r.SerializeToString() for r in route_requests()]


def _health_requests() -> list[bytes]:
    from grpc_health.v1 import health_pb2  # noqa: PLC0415

    return [health_pb2.HealthCheckRequest().SerializeToString()]


@contextlib.contextmanager
def _cache_sidecar() -> Iterator[str]:
    """The cache suite's sidecar, its calibration settled before any timing."""
    from benchmarks import cache  # noqa: PLC0415

    entries = cache._entries()  # noqa: SLF001 - the suite's own settings
    with cache._sidecar(entries, cache._dtype()) as target:  # noqa: SLF001 - the suite's own sidecar
        state = asyncio.run(cache.settle(target, entries))
        print(f"go-client cache: {state.describe()}", file=sys.stderr, flush=True)
        yield target


def _cache_facts(target: str, before: dict[str, int | float | str] | None) -> dict[str, int | float | str]:
    """The namespace's ef in force as row facts; with ``before``, whether it changed since."""
    from benchmarks import cache  # noqa: PLC0415

    state = asyncio.run(cache.state_of(target))
    facts: dict[str, int | float | str] = {"search_expansion": state.search_expansion}
    if state.fixed:
        facts["ef_source"] = "fixed (ARE_BENCH_CACHE_EF)"
    elif state.recall_samples:
        facts["ef_source"] = "calibrated"
        facts["calibration_recall"] = state.measured_recall
    else:
        facts["ef_source"] = "default (not calibrated)"
    if before is not None and (before["search_expansion"] != state.search_expansion or state.calibrating):
        facts["calibrated_during_timing"] = (
            f"ef {before['search_expansion']} -> {state.search_expansion}, calibrating {state.calibrating}"
        )
    return facts


def _cache_requests(kind: str) -> Callable[[], list[bytes]]:
    def build() -> list[bytes]:
        from benchmarks import cache  # noqa: PLC0415

        return [r.SerializeToString() for r in cache.lookup_requests(kind, cache._entries())]  # noqa: SLF001

    return build


_Server = Callable[[], contextlib.AbstractContextManager[str]]
_Requests = Callable[[], list[bytes]]
_Facts = Callable[[str, dict[str, int | float | str] | None], dict[str, int | float | str]]


class _GoContender(msgspec.Struct, frozen=True):
    """One contender of the Go client: its method, its requests, and what its answers must say.

    Attributes:
        name: Shown in the table.
        method: The full gRPC method.
        requests: Builds the serialised requests.
        expect_hit_field: The response's ``hit`` field number (1 in
            LookupCacheResponse), checked on every answer; 0: not checked.
        allowed_misses: The share of answers that may miss (a semantic
            lookup where recall@1 falls short), as the Python client allows.
    """

    name: str
    method: str
    requests: _Requests
    expect_hit_field: int = 0
    allowed_misses: float = 0.0


_LOOKUP_HIT_FIELD = 1  # LookupCacheResponse.hit

# suite -> (its sidecar, its contenders, the facts of a row (the cache's ef) or None)
_SUITES: dict[str, tuple[_Server, list[_GoContender], _Facts | None]] = {
    "router": (
        _router_sidecar,
        [
            _GoContender("sidecar-health", _HEALTH_METHOD, _health_requests),
            _GoContender("route-10k", _ROUTE_METHOD, _router_requests),
        ],
        None,
    ),
    "cache": (
        _cache_sidecar,
        [
            _GoContender(
                "cache-exact-hit",
                _LOOKUP_METHOD,
                _cache_requests("exact"),
                expect_hit_field=_LOOKUP_HIT_FIELD,
            ),
            _GoContender(
                "cache-semantic-hit",
                _LOOKUP_METHOD,
                _cache_requests("semantic"),
                expect_hit_field=_LOOKUP_HIT_FIELD,
                allowed_misses=0.01,
            ),
        ],
        _cache_facts,
    ),
}


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="are-bench-go-") as name:
        yield Path(name)


SLOW_MARGIN_NS = 400_000
"""A call is slow when it took longer than its contender's median by this much."""


def slow_calls(latencies_ns: Sequence[int], margin_ns: int = SLOW_MARGIN_NS) -> tuple[int, float | None]:
    """How many calls took over the median + ``margin_ns``, and the median gap (in calls) between two.

    The gap is None with fewer than two slow calls.
    """
    if not latencies_ns:
        return 0, None
    median = statistics.median(latencies_ns)
    slow = [i for i, ns in enumerate(latencies_ns) if ns > median + margin_ns]
    if len(slow) < 2:
        return len(slow), None
    return len(slow), float(statistics.median(b - a for a, b in itertools.pairwise(slow)))


def _slow_note(contender: str, latencies_ns: Sequence[int]) -> str:
    count, gap = slow_calls(latencies_ns)
    spacing = f", {gap:g} calls apart at the median" if gap is not None else ""
    return (
        f"{contender}: {count:,} of {len(latencies_ns):,} calls over the median + "
        f"{SLOW_MARGIN_NS // 1000} µs{spacing}"
    )


def _run_one(
    contender: _GoContender,
    binary: Path,
    folder: Path,
    *,
    echo: str,
    target: str,
    settings: argparse.Namespace,
    facts: _Facts | None,
) -> tuple[ContenderResult, str | None]:
    """Times one contender from the Go client: its row and its slow-call note."""
    print(f"go-client: {contender.name} ...", file=sys.stderr, flush=True)
    try:
        before = facts(target, None) if facts else {}
        replay = _replay(
            binary,
            folder,
            echo=echo,
            target=target,
            method=contender.method,
            requests=contender.requests(),
            settings=settings,
            expect_field=contender.expect_hit_field,
        )
        after = facts(target, before) if facts else {}
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
        return ContenderResult(name=contender.name, status="failed", reason=str(error)), None
    if contender.expect_hit_field:
        after["not_as_meant"] = f"{replay.mismatches} of {replay.checked}"
        if replay.mismatches > contender.allowed_misses * replay.checked:
            reason = f"{replay.mismatches} of {replay.checked} answers were not hits"
            return ContenderResult(name=contender.name, status="failed", reason=reason, facts=after), None
    own, base = replay.contender_ns, replay.baseline_ns
    pairing = settings.pairing
    return (
        ContenderResult(
            name=contender.name,
            status="ok",
            stats=summarize(own, sum(own)),
            stopped_by="time" if replay.stopped_by == "time" else "count",
            paired_baseline=summarize(base, sum(base)) if pairing != "none" else None,
            base="calls" if pairing == "calls" else "blocks",
            throughput_basis="mean",
            facts=after,
            histogram=histogram(own),
        ),
        _slow_note(contender.name, own),
    )


def _run_suite(name: str, binary: Path, settings: argparse.Namespace) -> tuple[SuiteReport, list[str]]:
    server, contenders, facts = _SUITES[name]
    results = []
    notes = []
    with echo_server() as echo, server() as target, _folder() as folder:
        # The clean baseline: the echo timed alone (the first of two echo phases, unpaired).
        print(f"go-client {name}: echo alone ...", file=sys.stderr, flush=True)
        alone = _replay(
            binary,
            folder,
            echo=echo,
            target=echo,
            method=ECHO_METHOD,
            requests=[_ECHO_PAYLOAD],
            settings=argparse.Namespace(**{**vars(settings), "pairing": "none"}),
        )
        base = alone.baseline_ns
        results.append(
            ContenderResult(
                name="echo",
                status="ok",
                stats=summarize(base, sum(base)),
                throughput_basis="mean",
                histogram=histogram(base),
            )
        )
        for contender in contenders:
            result, note = _run_one(
                contender, binary, folder, echo=echo, target=target, settings=settings, facts=facts
            )
            results.append(result)
            if note:
                notes.append(note)
    report = SuiteReport(
        suite=f"go-client {name}",
        baseline="echo",
        results=apply_ratios(results, "echo"),
        loop="closed loop, one caller (Go)",
        pairing=_pairing_words(settings),
    )
    return report, notes


def _pairing_words(settings: argparse.Namespace) -> str:
    if settings.pairing == "blocks":
        return (
            f"ratios against the echo timed in blocks of {settings.block} alternating with each contender's"
        )
    if settings.pairing == "calls":
        return "ratios against the echo timed call by call alternately with each contender"
    return "ratios against the echo timed alone before them (base 'run')"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the chosen suites' requests from the Go client; prints one table per suite."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.go_client", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"of {', '.join(_SUITES)} (default: all)")
    parser.add_argument("--requests", type=int, default=5_000, help="timed pairs per contender")
    parser.add_argument(
        "--warmup", type=int, default=500, help="untimed calls first (at least one per distinct request)"
    )
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time bound of each loop")
    parser.add_argument(
        "--pin", action="store_true", help="servers on the last CPU, the Go client on the others"
    )
    parser.add_argument(
        "--pairing",
        choices=("blocks", "calls", "none"),
        default="blocks",
        help="how the echo is timed with each contender: in alternating blocks (default), call by call, "
        "or not (alone, before it)",
    )
    parser.add_argument(
        "--unpaired", dest="pairing", action="store_const", const="none", help="the same as --pairing none"
    )
    parser.add_argument("--block", type=int, default=200, help="calls per block with --pairing blocks (200)")
    parser.add_argument("--require-go", action="store_true", help="fail (exit 1), not skip, without Go")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the tables' results here")
    args = parser.parse_args(argv)
    compile_bytecode()
    args.client_cpus = ()
    if args.pin:
        try:
            server_cpus, args.client_cpus = cpu_split()
        except ValueError as error:
            parser.error(str(error))
        os.sched_setaffinity(0, server_cpus)  # the servers started from here inherit it
    go = _go()
    if go is None:
        print("go-client: skipped (no go toolchain found)", file=sys.stderr)
        return 1 if args.require_go else 0
    failed = False
    unknown = sorted(set(args.suites) - set(_SUITES))
    if unknown:
        parser.error(f"unknown suites: {', '.join(unknown)}")
    binary = _build(go)
    reports = []
    for name in args.suites or list(_SUITES):
        report, notes = _run_suite(name, binary, args)
        reports.append(report)
        failed = failed or any(r.status == "failed" for r in report.results)
        print(f"\n{report.suite}: the suite's requests from a Go client")
        print(format_table(report))
        for note in notes:
            print(note)
    print(
        f"\nratios = contender / the echo (machine: {os.cpu_count()} CPUs); req/s = 1 / mean latency; "
        "(a-b): conservative 95% range from the two 95% intervals"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(reports), indent=2) + b"\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
