"""Unit tests of the benchmark harness: statistics, ratios, table, JSON, loops.

These run no server and no subprocess; the harness's process handling is
exercised by ``python -m benchmarks`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import msgspec
import pytest

from benchmarks._client import run_block_loop, run_loop, run_open_loop, run_paired_loop
from benchmarks._harness import (
    Contender,
    ContenderResult,
    Report,
    Settings,
    Stats,
    Suite,
    SuiteReport,
    apply_ratios,
    discover_suites,
    format_table,
    load_suite,
    missing_requirements,
    percentile,
    run_contender,
    summarize,
)
from benchmarks._stats import histogram, quantile_interval, ratio_range, wilson_interval

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from benchmarks._harness import Operation


@contextlib.asynccontextmanager
async def _noop_client(target: str | None) -> AsyncIterator[Operation]:
    del target

    async def operation() -> None:
        return None

    yield operation


def _stats(median_us: float, p99_us: float, requests: int = 100) -> Stats:
    return Stats(
        requests=requests,
        min_us=1.0,
        median_us=median_us,
        p90_us=median_us,
        p99_us=p99_us,
        max_us=p99_us,
        mean_us=median_us,
        throughput_rps=1e6 / median_us,
    )


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 100.5)])
def test_percentile_rejects_bad_input(values: list[float], q: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile(values, q)


def test_summarize_reports_microseconds_and_throughput() -> None:
    latencies_ns = [(i + 1) * 1_000 for i in range(100)]  # 1..100 µs, shuffled below
    latencies_ns.reverse()
    stats = summarize(latencies_ns, elapsed_ns=50_000_000)  # 100 requests in 50 ms
    assert stats.requests == 100
    assert stats.min_us == 1.0
    assert stats.max_us == 100.0
    assert stats.median_us == pytest.approx(50.5)
    assert stats.p99_us == pytest.approx(99.01)
    assert stats.mean_us == pytest.approx(50.5)
    assert stats.throughput_rps == pytest.approx(2_000.0)


def test_summarize_rejects_an_empty_loop() -> None:
    with pytest.raises(ValueError, match="no completed requests"):
        summarize([], elapsed_ns=1)


def test_apply_ratios_divides_by_the_baseline_of_the_same_run() -> None:
    results = [
        ContenderResult(name="echo", status="ok", stats=_stats(100.0, 400.0, 1_000)),
        ContenderResult(name="sidecar", status="ok", stats=_stats(150.0, 200.0, 1_000)),
        ContenderResult(name="peer", status="skipped", reason="not installed (x)"),
    ]
    base, sidecar, peer = apply_ratios(results, "echo")
    assert (base.median_ratio, base.p99_ratio) == (1.0, 1.0)
    assert sidecar.median_ratio == pytest.approx(1.5)
    assert sidecar.p99_ratio == pytest.approx(0.5)
    assert sidecar.base == "run"
    assert (peer.median_ratio, peer.p99_ratio) == (None, None)


def test_no_p99_ratio_below_a_thousand_samples_or_for_a_throughput_row() -> None:
    results = [
        ContenderResult(name="echo", status="ok", stats=_stats(100.0, 400.0, 999)),
        ContenderResult(name="few", status="ok", stats=_stats(150.0, 200.0, 999)),
        ContenderResult(name="fanout", status="ok", stats=_stats(15.0, 20.0, 5_000), units=10_000),
    ]
    _, few, fanout = apply_ratios(results, "echo")
    assert few.median_ratio == pytest.approx(1.5)
    assert few.p99_ratio is None
    assert fanout.p99_ratio is None
    table = format_table(SuiteReport(suite="s", baseline="echo", results=[few, fanout]))
    few_row, fanout_row = table.splitlines()[2:4]
    assert few_row.split()[3] == "-"  # p99 column
    assert "fanout (throughput)" in fanout_row
    assert "fewer than 1,000 samples" in table


def test_apply_ratios_without_a_measured_baseline_leaves_none() -> None:
    results = [
        ContenderResult(name="echo", status="failed", reason="boom"),
        ContenderResult(name="sidecar", status="ok", stats=_stats(150.0, 200.0)),
    ]
    assert all(r.median_ratio is None for r in apply_ratios(results, "echo"))


def test_format_table_shows_ratios_skips_failures_and_time_stops() -> None:
    results = apply_ratios(
        [
            ContenderResult(name="echo", status="ok", stats=_stats(100.0, 400.0)),
            ContenderResult(name="sidecar", status="ok", stats=_stats(150.0, 200.0), stopped_by="time"),
            ContenderResult(name="peer", status="skipped", reason="not installed (langgraph)"),
            ContenderResult(name="broken", status="failed", reason="RuntimeError: a\nb"),
        ],
        "echo",
    )
    table = format_table(SuiteReport(suite="rpc", baseline="echo", results=results))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["contender", "requests", "median"]
    assert "echo (baseline, alone)" in lines[2]
    assert lines[2].split()[-3:] == ["1.00x", "-", "-"]  # 100 samples: no p99 ratio
    assert lines[3].split()[1] == "100*"
    assert lines[3].split()[-3:] == ["1.50x", "-", "run"]
    assert lines[4].endswith("skipped: not installed (langgraph)")
    assert lines[5].endswith("failed: RuntimeError: a b")
    assert any(line.startswith("* stopped by --max-seconds") for line in lines[6:])


def test_report_json_round_trips() -> None:
    report = Report(
        machine={"cpu_count": 2, "git_commit": None},
        settings=Settings(requests=10, warmup=0),
        suites=[
            SuiteReport(
                suite="rpc",
                baseline="echo",
                results=apply_ratios(
                    [ContenderResult(name="echo", status="ok", stats=_stats(1.0, 2.0))], "echo"
                ),
            )
        ],
    )
    data = msgspec.json.encode(report)
    assert msgspec.json.decode(data, type=Report) == report
    plain = msgspec.json.decode(data)
    result = plain["suites"][0]["results"][0]
    assert result["stats"]["median_us"] == 1.0
    assert result["median_ratio"] == 1.0


def test_run_loop_stops_at_the_count() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1

    loop = asyncio.run(run_loop(operation, count=50, max_seconds=10.0, concurrency=4))
    assert calls == 50
    assert len(loop.latencies_ns) == 50
    assert loop.stopped_by == "count"
    assert all(latency >= 0 for latency in loop.latencies_ns)


def test_run_loop_stops_at_the_time_bound() -> None:
    async def operation() -> None:
        await asyncio.sleep(0.01)

    loop = asyncio.run(run_loop(operation, count=1_000_000, max_seconds=0.1))
    assert 1 <= len(loop.latencies_ns) <= 11
    assert loop.stopped_by == "time"  # each sleep lasts at least 10 ms, so the count is bounded too


def test_run_open_loop_times_from_the_intended_start() -> None:
    """A stall delays every operation due meanwhile, and each counts it (no coordinated omission)."""
    calls = 0

    async def stalls_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.05)  # 50 ms, while operations are due every 10 ms

    async def run() -> list[int]:
        lock = asyncio.Lock()  # one at a time, as a single-threaded server would serve them

        async def serialised() -> None:
            async with lock:
                await stalls_once()

        loop = await run_open_loop(serialised, rate=100.0, count=5, max_seconds=10.0)
        assert loop.stopped_by == "count"
        return loop.latencies_ns

    latencies = asyncio.run(run())
    assert len(latencies) == 5
    # The first stalls 50 ms; the next four, due at 10-40 ms, wait for it: each counts its wait.
    assert sum(ns >= 5_000_000 for ns in latencies) >= 4


def test_run_open_loop_stops_when_too_many_are_in_flight() -> None:
    async def never_done() -> None:
        await asyncio.sleep(0.2)

    loop = asyncio.run(run_open_loop(never_done, rate=1_000.0, count=100, max_seconds=10.0, max_in_flight=3))
    assert loop.stopped_by == "overload"
    assert len(loop.latencies_ns) == 3  # those in flight finish and are counted


def test_run_block_loop_alternates_blocks_with_rewarming() -> None:
    order: list[str] = []

    async def baseline() -> None:
        order.append("b")

    async def contender() -> None:
        order.append("c")

    paired = asyncio.run(run_block_loop(baseline, contender, count=5, max_seconds=10.0, block=2, rewarm=1))
    # Per block: one untimed call, then up to two timed ones; both sides get five.
    assert "".join(order) == "bbb" + "ccc" + "bbb" + "ccc" + "bb" + "cc"
    assert len(paired.baseline.latencies_ns) == len(paired.contender.latencies_ns) == 5
    assert paired.contender.stopped_by == "count"
    assert paired.contender.elapsed_ns > 0


def test_quantile_interval_uses_order_statistics() -> None:
    values = list(range(1, 1_001))  # n = 1,000
    low, high = quantile_interval(values, 0.99) or (0, 0)
    # ranks 990 -/+ 1.96 * sqrt(9.9) = 983.8 .. 996.2 -> 983 and 997
    assert (low, high) == (983, 997)
    assert quantile_interval(values[:500], 0.99) is not None  # 495 +/- 4.4 fits within 500
    assert quantile_interval(values[:100], 0.99) is None  # rank 101 > 100: unbounded above
    median = quantile_interval(values, 0.5)
    assert median is not None
    assert median[0] < 500 < median[1]


def test_wilson_interval_and_ratio_range() -> None:
    low, high = wilson_interval(2_490, 2_500)
    assert low < 0.996 < high
    assert low > 0.99
    assert high < 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert ratio_range((2.0, 4.0), (1.0, 2.0)) == (1.0, 4.0)
    assert ratio_range((2.0, 4.0), None) is None


def test_histogram_counts_in_log_buckets() -> None:
    hist = histogram([1_000, 1_010, 10_000, 10_000])
    assert sum(count for _, count in hist.buckets) == 4
    assert [k for k, _ in hist.buckets] == sorted(k for k, _ in hist.buckets)
    assert hist.lower_bound_us(hist.buckets[0][0]) == pytest.approx(1.0, rel=0.06)


def test_suite_rejects_duplicate_names_and_unknown_lookups() -> None:
    echo = Contender(name="echo", client=_noop_client)
    with pytest.raises(ValueError, match="duplicate"):
        Suite(name="s", baseline=echo, contenders=(echo,))
    suite = Suite(name="s", baseline=echo)
    assert suite.get("echo") is echo
    with pytest.raises(KeyError, match="nope"):
        suite.get("nope")


def test_missing_requirements_finds_absent_modules_without_importing() -> None:
    assert missing_requirements(["json", "no_such_module_x", "no_such_pkg_x.sub"]) == [
        "no_such_module_x",
        "no_such_pkg_x.sub",
    ]


def test_rpc_suite_is_discovered() -> None:
    assert "rpc" in discover_suites()


def test_every_discovered_module_is_a_suite() -> None:
    """``python -m benchmarks`` (all suites) and ``--list`` load each one."""
    names = discover_suites()
    assert "go_client" not in names  # tools run on their own
    assert "cache_churn" not in names
    assert "idle_gap" not in names
    assert "targets" not in names
    assert [load_suite(name).name for name in names] == names


def test_missing_requirements_raises_for_a_broken_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "broken_pkg_x"
    package.mkdir()
    (package / "__init__.py").write_text("import broken_pkg_x._absent_generated_code\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="_absent_generated_code"):
        missing_requirements(["broken_pkg_x.testing"])


def test_apply_ratios_divides_a_paired_result_by_its_own_baseline() -> None:
    n = 1_000
    results = [
        ContenderResult(name="echo", status="ok", stats=_stats(100.0, 400.0, n)),
        ContenderResult(
            name="sidecar",
            status="ok",
            stats=_stats(150.0, 200.0, n),
            paired_baseline=_stats(120.0, 250.0, n),
            base="blocks",
        ),
        ContenderResult(name="alone", status="ok", stats=_stats(150.0, 200.0, n)),
    ]
    _, sidecar, alone = apply_ratios(results, "echo")
    assert sidecar.median_ratio == pytest.approx(1.25)
    assert sidecar.p99_ratio == pytest.approx(0.8)
    assert sidecar.run_median_ratio == pytest.approx(1.5)  # and against the baseline alone
    assert sidecar.run_p99_ratio == pytest.approx(0.5)
    assert sidecar.base == "blocks"
    assert alone.median_ratio == pytest.approx(1.5)  # no pair: the run's baseline
    assert alone.base == "run"
    table = format_table(SuiteReport(suite="rpc", baseline="echo", results=[results[0], sidecar]))
    assert table.splitlines()[3].split()[-1] == "blocks"
    assert "sidecar: its baseline timed alternately: median 120.0 µs, p99 250.0 µs" in table


def test_a_paired_baseline_well_above_the_clean_one_is_flagged() -> None:
    def stats(p99: float, ci: tuple[float, float]) -> Stats:
        return msgspec.structs.replace(_stats(100.0, p99, 5_000), p99_ci_us=ci)

    clean = ContenderResult(name="echo", status="ok", stats=stats(400.0, (380.0, 420.0)))
    inflated = ContenderResult(
        name="busy",
        status="ok",
        stats=stats(500.0, (480.0, 520.0)),
        paired_baseline=stats(900.0, (800.0, 1e3)),
    )
    close = ContenderResult(
        name="quiet",
        status="ok",
        stats=stats(500.0, (480.0, 520.0)),
        paired_baseline=stats(410.0, (390.0, 430.0)),
    )
    _, busy, quiet = apply_ratios([clean, inflated, close], "echo")
    assert busy.contaminated
    assert not quiet.contaminated
    table = format_table(SuiteReport(suite="s", baseline="echo", results=[busy, quiet]))
    assert table.splitlines()[2].split()[1] == "5000!"
    assert "! busy: the p99 of its alternated baseline" in table


def test_run_paired_loop_alternates_and_stops_at_the_count_or_the_time() -> None:
    order: list[str] = []

    async def baseline() -> None:
        order.append("b")

    async def contender() -> None:
        order.append("c")

    paired = asyncio.run(run_paired_loop(baseline, contender, count=5, max_seconds=10.0))
    assert order == ["b", "c"] * 5
    assert len(paired.baseline.latencies_ns) == len(paired.contender.latencies_ns) == 5
    assert paired.contender.stopped_by == "count"

    async def slow() -> None:
        await asyncio.sleep(0.01)

    bounded = asyncio.run(run_paired_loop(baseline, slow, count=1_000_000, max_seconds=0.1))
    assert 1 <= len(bounded.contender.latencies_ns) <= 11
    assert bounded.contender.stopped_by == "time"


def test_a_paired_contender_runs_against_its_own_baseline_servers() -> None:
    suite = load_suite("rpc")  # echo-4k against echo: two real echo servers, one client process
    for pairing in ("calls", "blocks"):
        settings = Settings(requests=20, warmup=5, max_seconds=10.0, pairing=pairing, block=8)
        result = run_contender(suite, suite.get("echo-4k"), settings)
        assert result.status == "ok", result.reason
        assert result.stats is not None and result.paired_baseline is not None
        assert result.stats.requests == result.paired_baseline.requests == 20
        assert result.base == pairing
        assert result.histogram is not None
        assert len(result.samples_ns) == 20
