"""The harness's per-unit figures, added for the scheduler suite's workflows of many tasks."""

from __future__ import annotations

import pytest

from benchmarks._harness import ContenderResult, SuiteReport, format_table, summarize
from benchmarks.scheduler import SUITE


def test_units_divide_latency_and_multiply_throughput() -> None:
    stats = summarize([2_000_000, 4_000_000], elapsed_ns=6_000_000, units=1_000)
    assert stats.median_us == pytest.approx(3.0)
    assert stats.requests == 2
    assert stats.throughput_rps == pytest.approx(2_000 * 1e9 / 6_000_000)


def test_table_marks_per_unit_rows() -> None:
    stats = summarize([1_000_000], elapsed_ns=1_000_000, units=100)
    report = SuiteReport(
        suite="s",
        baseline="b",
        results=[ContenderResult(name="many", status="ok", stats=stats, units=100, stopped_by="count")],
    )
    table = format_table(report)
    assert "1 x100" in table
    assert "µs are per unit" in table


def test_scheduler_suite_shape() -> None:
    names = [c.name for c in SUITE.in_run_order()]
    assert names[0] == "echo"
    assert {"are-noop", "are-fanout-10k", "are-chain-1k", "langgraph-chain-1k"} <= set(names)
    fanout = SUITE.get("are-fanout-10k")
    assert (fanout.units, fanout.max_requests) == (10_000, 3)
    assert SUITE.get("langgraph-noop").requires == ("langgraph", "langgraph.checkpoint.sqlite")
