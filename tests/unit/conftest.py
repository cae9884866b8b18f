"""Fixtures for every unit test (engines in this process, no server)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _forked_searches_at_normal_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forked index children (calibration searches, sweeps) keep this process's CPU priority.

    The product runs them at idle priority (Linux ``SCHED_IDLE``) so that they use only
    CPU nothing else wants. On a machine other processes keep busy, such a child hardly
    runs at all, and a test awaiting one waited minutes (past pytest's timeout). Without
    ``os.sched_setscheduler`` the child stays as it is, as on a platform without it; what
    it computes does not depend on its priority.
    """
    monkeypatch.delattr(os, "sched_setscheduler", raising=False)
