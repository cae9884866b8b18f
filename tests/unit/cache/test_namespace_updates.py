"""PutNamespace with an update mask (``only``): the settings named change, the others keep their values."""

from __future__ import annotations

import msgspec
import pytest

from are_core.cache import (
    DEFAULT_TTL_NS,
    MUTABLE_SETTINGS,
    InvalidCacheArgumentError,
    NamespaceNotFoundError,
    NamespaceSettings,
)
from are_core.vector import Calibration

from .conftest import Harness


async def test_an_update_keeps_what_it_does_not_name_and_a_calibrated_expansion_stays_calibrated(
    harness: Harness,
) -> None:
    e = harness.e
    first, _ = await e.put_namespace(
        NamespaceSettings(name="n", max_entries=40, default_ttl_ns=3600 * 10**9, description="d")
    )
    assert not first.expansion_fixed
    state = e._states["n"]
    state.stats.calibration = Calibration(  # as a calibration on its own lookups would leave it
        expansion=23,
        recall=0.999,
        lower_bound=0.995,
        met=True,
        samples=2048,
        queries=2048,
        entries=5000,
        target=0.995,
        time_ns=1,
    )
    state.namespace = msgspec.structs.replace(state.namespace, search_expansion=23)
    updated, created = await e.put_namespace(
        NamespaceSettings(name="n", similarity_threshold=0.7), only=frozenset({"similarity_threshold"})
    )
    assert not created
    assert updated.similarity_threshold == pytest.approx(0.7)
    assert (updated.max_entries, updated.default_ttl_ns, updated.description) == (40, 3600 * 10**9, "d")
    assert (updated.search_expansion, updated.expansion_fixed) == (23, False)  # the calibration's, not fixed
    e = await harness.reopen()
    assert e.get_namespace("n").similarity_threshold == pytest.approx(0.7)

    # Named and zero: its default, as without a mask.
    reset, _ = await e.put_namespace(NamespaceSettings(name="n"), only=frozenset({"default_ttl_ns"}))
    assert (reset.default_ttl_ns, reset.max_entries) == (DEFAULT_TTL_NS, 40)
    # Everything named: the same as no mask.
    whole, _ = await e.put_namespace(NamespaceSettings(name="n"), only=MUTABLE_SETTINGS)
    plain, _ = await e.put_namespace(NamespaceSettings(name="n"))
    assert whole.max_entries == plain.max_entries != 40

    e = await harness.reopen()
    assert e.get_namespace("n").max_entries == plain.max_entries


async def test_an_update_needs_the_namespace_and_mutable_settings(harness: Harness) -> None:
    e = harness.e
    with pytest.raises(NamespaceNotFoundError):
        await e.put_namespace(NamespaceSettings(name="none", max_entries=3), only=frozenset({"max_entries"}))
    assert e.list_namespaces()[0] == []
    await e.put_namespace(NamespaceSettings(name="n"))
    with pytest.raises(InvalidCacheArgumentError):
        await e.put_namespace(NamespaceSettings(name="n", dimension=8), only=frozenset({"dimension"}))
