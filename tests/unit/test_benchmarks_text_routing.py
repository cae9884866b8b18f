"""``python -m benchmarks.text_routing``: the separation it reports for the lexical default embedder."""

from __future__ import annotations

import pytest

from benchmarks import text_routing


def test_every_task_text_has_right_cards_and_the_lexical_report_counts_them() -> None:
    assert all(good and max(good) < len(text_routing.CARDS) for good in text_routing.TASKS.values())
    right, others = text_routing.separation("lexical")
    assert len(right) == sum(len(good) for good in text_routing.TASKS.values())
    assert len(right) + len(others) == len(text_routing.TASKS) * len(text_routing.CARDS)
    # What the README says of the lexical default: no paraphrase reaches 0.5, and the
    # right and wrong cards overlap, so no threshold separates them.
    assert max(right) < 0.5
    assert min(right) < max(others)
    lines = text_routing.report("lexical", 0.5)
    assert lines[0] == "lexical"
    assert f"0 of {len(right)} at 0.5 or more" in lines[1]


def test_the_command_line_refuses_a_bad_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        text_routing.main(["--threshold", "high"])
    assert "invalid float value" in capsys.readouterr().err
