"""The engine's one timer: a handler that raises is skipped, and every other timer still fires."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from are_core.scheduler import Scheduler


async def test_a_timer_whose_handler_raises_holds_back_no_other_timer(
    engine: Scheduler, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fired: list[tuple[str, int]] = []

    def on_timer(kind: str, subject: Any, token: int, now: int) -> None:
        del subject, now
        fired.append((kind, token))
        if kind == "boom":
            raise RuntimeError("a bug in a timer")

    monkeypatch.setattr(engine, "_on_timer", on_timer)  # these kinds are the test's own
    now = engine._clock()
    engine._at(now, "boom", None, 1)
    engine._at(now, "mark", None, 2)  # due with it: not skipped
    engine._at(now + 50_000_000, "mark", None, 3)  # 50 ms later: still armed after the failure
    for _ in range(1000):  # 10 s at most
        if len(fired) == 3:
            break
        await asyncio.sleep(0.01)
    assert fired == [("boom", 1), ("mark", 2), ("mark", 3)]
    assert "a boom timer failed; the other timers go on" in caplog.text
