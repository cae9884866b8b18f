"""The compiled replay client of ``benchmarks.go_client``, end to end against the echo server.

Skipped where no Go toolchain is installed (the benchmark itself then
reports itself skipped).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import pytest

from benchmarks import go_client
from benchmarks._echo import ECHO_METHOD, echo_server

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize("pairing", ["calls", "blocks", "none"])
def test_go_client_replays_recorded_requests_with_the_echo(tmp_path: Path, pairing: str) -> None:
    go = go_client._go()
    if go is None:
        pytest.skip("no Go toolchain")
    binary = go_client._build(go)
    settings = argparse.Namespace(
        requests=25, warmup=5, max_seconds=20.0, client_cpus=(), pairing=pairing, block=10
    )
    with echo_server() as echo:
        replay = go_client._replay(
            binary,
            tmp_path,
            echo=echo,
            target=echo,
            method=ECHO_METHOD,
            requests=[b"first", b"", bytes(range(256)) * 64],  # an empty and a 16 KiB record too
            settings=settings,
        )
        assert (len(replay.baseline_ns), len(replay.contender_ns), replay.stopped_by) == (25, 25, "count")
        assert all(ns > 0 for ns in replay.baseline_ns + replay.contender_ns)
        assert (replay.checked, replay.mismatches) == (0, 0)  # no field to check

        # Field 1 as a varint: b"\x08\x01" is hit=true, b"\x08\x00" and b"" are not (a proto3 zero).
        checked = go_client._replay(
            binary,
            tmp_path,
            echo=echo,
            target=echo,
            method=ECHO_METHOD,
            requests=[b"\x08\x01", b"\x08\x00", b""],
            settings=settings,
            expect_field=1,
        )
        # Warmup (5), block re-warming (blocks only) and timed calls (25) are all checked; the
        # requests cycle, so one answer in three is a hit.
        assert checked.checked == (45 if pairing == "blocks" else 30)
        assert checked.mismatches == checked.checked - -(-checked.checked // 3)

        # A failing call fails the run, naming the method (no silent latencies).
        with pytest.raises(RuntimeError, match="NoSuchMethod"):
            go_client._replay(
                binary,
                tmp_path,
                echo=echo,
                target=echo,
                method="/are.bench.v1.EchoService/NoSuchMethod",
                requests=[b"x"],
                settings=settings,
            )


def test_slow_calls_counts_those_over_the_median_and_their_spacing() -> None:
    fast, slow = 500_000, 1_500_000
    every_fourth = [slow if i % 4 == 3 else fast for i in range(40)]
    assert go_client.slow_calls(every_fourth) == (10, 4.0)
    assert go_client.slow_calls([fast] * 9 + [slow]) == (1, None)
    assert go_client.slow_calls([]) == (0, None)
    # Within the margin of the median: not slow.
    assert go_client.slow_calls([fast, fast + 399_999, fast]) == (0, None)
