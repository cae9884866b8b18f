"""The same requests from a compiled client: how much of a round trip is Python's.

``python -m benchmarks.go_client [router] [cache] [--requests N] [--warmup N] [--pin] [--unpaired]``

Every other suite times its operations from a Python grpc.aio client, whose
own cost is part of each figure (the baseline's too). This one sends the very
requests of the ``router`` and ``cache`` suites from a Go program
(``benchmarks/goclient``, grpc-go), each alternately with an echo to the bare
grpc.aio echo server, so that both sides of every ratio are timed by a client
that adds little. With ``--unpaired`` the echo's calls are all timed first
and the contender's after, as the Python suites do by default: pinned, the
echo server and the sidecar share one CPU, and alternating calls evict each
other's data from its caches. The Go program knows no message type: this module writes
the serialised requests to a file and the program replays them, checking
only that each call returns OK.

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
import contextlib
import itertools
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from benchmarks._echo import ECHO_METHOD, echo_server
from benchmarks._harness import (
    ContenderResult,
    SuiteReport,
    apply_ratios,
    compile_bytecode,
    cpu_split,
    format_table,
    summarize,
)

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


def _build(go: str) -> Path:
    """Builds the replay client (go build caches, so a rebuild is quick)."""
    _BINARY.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([go, "build", "-o", str(_BINARY), "."], cwd=_SOURCE, check=True)
    return _BINARY


def _write_requests(path: Path, requests: Sequence[bytes]) -> Path:
    with path.open("wb") as out:
        for request in requests:
            out.write(struct.pack("<I", len(request)))
            out.write(request)
    return path


def _replay(
    binary: Path,
    folder: Path,
    *,
    echo: str,
    target: str,
    method: str,
    requests: Sequence[bytes],
    settings: argparse.Namespace,
) -> tuple[list[int], list[int], str]:
    """Runs the Go client once; the baseline's and the contender's latencies (ns)."""
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
        f"-unpaired={'true' if settings.unpaired else 'false'}",
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
    report = json.loads(done.stdout)
    return report["baseline_ns"], report["contender_ns"], report["stopped_by"]


def _router_sidecar() -> contextlib.AbstractContextManager[str]:
    from benchmarks.router import sidecar_server  # noqa: PLC0415 - loads numpy and the capability set

    return sidecar_server()


def _router_requests() -> list[bytes]:
    from benchmarks.router import route_requests  # noqa: PLC0415

    return [r.SerializeToString() for r in route_requests()]


def _health_requests() -> list[bytes]:
    from grpc_health.v1 import health_pb2  # noqa: PLC0415

    return [health_pb2.HealthCheckRequest().SerializeToString()]


def _cache_sidecar() -> contextlib.AbstractContextManager[str]:
    from benchmarks import cache  # noqa: PLC0415

    return cache._sidecar(cache._entries(), cache._dtype())  # noqa: SLF001 - the suite's own sidecar


def _cache_requests(kind: str) -> Callable[[], list[bytes]]:
    def build() -> list[bytes]:
        from benchmarks import cache  # noqa: PLC0415

        return [r.SerializeToString() for r in cache.lookup_requests(kind, cache._entries())]  # noqa: SLF001

    return build


_Server = Callable[[], contextlib.AbstractContextManager[str]]
_Requests = Callable[[], list[bytes]]

# suite -> (its sidecar, [(contender, method, its requests)])
_SUITES: dict[str, tuple[_Server, list[tuple[str, str, _Requests]]]] = {
    "router": (
        _router_sidecar,
        [
            ("sidecar-health", _HEALTH_METHOD, _health_requests),
            ("route-10k", _ROUTE_METHOD, _router_requests),
        ],
    ),
    "cache": (
        _cache_sidecar,
        [
            ("cache-exact-hit", _LOOKUP_METHOD, _cache_requests("exact")),
            ("cache-semantic-hit", _LOOKUP_METHOD, _cache_requests("semantic")),
        ],
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


def _run_suite(name: str, binary: Path, settings: argparse.Namespace) -> tuple[SuiteReport, list[str]]:
    server, contenders = _SUITES[name]
    results = []
    notes = []
    with echo_server() as echo, server() as target, _folder() as folder:
        for contender, method, requests in contenders:
            print(f"go-client {name}: {contender} ...", file=sys.stderr, flush=True)
            try:
                base, own, stopped = _replay(
                    binary,
                    folder,
                    echo=echo,
                    target=target,
                    method=method,
                    requests=requests(),
                    settings=settings,
                )
                notes.append(_slow_note(contender, own))
                results.append(
                    ContenderResult(
                        name=contender,
                        status="ok",
                        stats=summarize(own, sum(own)),
                        stopped_by="time" if stopped == "time" else "count",
                        paired_baseline=summarize(base, sum(base)),
                    )
                )
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
                results.append(ContenderResult(name=contender, status="failed", reason=str(error)))
    report = SuiteReport(suite=f"go-client {name}", baseline="echo", results=apply_ratios(results, "echo"))
    return report, notes


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
        "--unpaired", action="store_true", help="time the echo alone first, then each contender alone"
    )
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
        return 0
    failed = False
    unknown = sorted(set(args.suites) - set(_SUITES))
    if unknown:
        parser.error(f"unknown suites: {', '.join(unknown)}")
    binary = _build(go)
    for name in args.suites or list(_SUITES):
        report, notes = _run_suite(name, binary, args)
        failed = failed or any(r.status == "failed" for r in report.results)
        how = "after an echo timed alone" if args.unpaired else "each paired with an echo"
        print(f"\n{report.suite}: the suite's requests from a Go client, {how}")
        print(format_table(report))
        for note in notes:
            print(note)
    how = "timed alone before it" if args.unpaired else "timed alternately with it"
    print(f"\nratios = contender / the echo {how} (machine: {os.cpu_count()} CPUs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
