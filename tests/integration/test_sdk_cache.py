"""The SDK's get_or_call and cached helpers against a real sidecar: who shares a call, who is
cancelled, what a blank prompt does, and that a miss returns what a hit returns."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from are_sdk import Client, RawPayload, UnavailableError
from are_sdk.testing import SidecarProcess


def _name(tag: str) -> str:
    return f"{tag}:{uuid.uuid4().hex[:10]}"


def _axis(d: int, i: int) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(d)]


async def _until(predicate: Any, what: str) -> None:
    """Yields to the loop until ``predicate()`` holds (bounded: 10 s, then fails naming ``what``)."""
    try:
        async with asyncio.timeout(10):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"not reached in 10 s: {what}")


@pytest.mark.parametrize("yields", [0, 1, 2])
async def test_a_caller_arriving_as_the_last_one_gives_up_gets_a_call_of_its_own(
    client: Client, yields: int
) -> None:
    ns = _name("cancel")
    await client.cache.put_namespace(ns)
    calls = 0
    release = asyncio.Event()

    async def slow() -> str:
        nonlocal calls
        calls += 1
        mine = calls
        await release.wait()
        return f"answer {mine}"

    first = asyncio.create_task(client.cache.get_or_call(ns, "a slow question", slow))
    await _until(lambda: calls == 1, "the first call started")
    first.cancel()
    for _ in range(yields):  # B arrives in the same tick, or a turn or two of the loop later
        await asyncio.sleep(0)
    second = asyncio.create_task(client.cache.get_or_call(ns, "a  slow question ", slow))
    await _until(lambda: calls == 2, "the second caller started its own call")
    release.set()
    result = await second  # never CancelledError: nobody cancelled this caller
    assert (result.value, result.from_cache) == ("answer 2", False)
    with pytest.raises(asyncio.CancelledError):
        await first
    await _until(lambda: not client.cache._flights, "every call landed")
    hit = await client.cache.lookup(ns, "a slow question")
    assert hit is not None
    assert hit.value == "answer 2"


async def test_cancelling_one_caller_leaves_the_shared_call_to_the_others(client: Client) -> None:
    ns = _name("share")
    await client.cache.put_namespace(ns)
    calls = 0
    release = asyncio.Event()

    async def slow() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "shared"

    first = asyncio.create_task(client.cache.get_or_call(ns, "q", slow))
    second = asyncio.create_task(client.cache.get_or_call(ns, "q", slow))
    await _until(lambda: calls == 1, "the shared call started")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    result = await second
    assert (result.value, calls) == ("shared", 1)
    assert result.stored is not None


@pytest.mark.parametrize("prompt", ["", " \t\n "])
async def test_a_blank_prompt_is_refused_before_anything_is_called(client: Client, prompt: str) -> None:
    ns = _name("vec")
    await client.cache.put_namespace(ns, embedder="caller", dimension=8)
    calls = 0

    async def llm() -> str:
        nonlocal calls
        calls += 1
        return "never"

    with pytest.raises(ValueError, match="needs a prompt"):
        await client.cache.get_or_call(ns, prompt, llm, vector=_axis(8, 0))

    @client.cache.cached(ns, prompt=lambda text: text)
    async def ask(text: str) -> str:
        return await llm()

    with pytest.raises(ValueError, match="needs a prompt"):
        await ask(prompt)
    assert calls == 0
    assert not client.cache._flights
    [stats] = await client.cache.stats(ns)
    assert (stats.lookups, stats.entries) == (0, 0)


async def test_callers_with_different_vectors_do_not_share_an_answer(client: Client) -> None:
    ns = _name("vectors")
    await client.cache.put_namespace(ns, embedder="caller", dimension=8, similarity_threshold=0.9)
    stored = await client.cache.store(ns, "an older question", "the stored answer", vector=_axis(8, 0))
    calls: list[int] = []

    def llm(i: int) -> Any:
        async def call() -> str:
            calls.append(i)
            return f"fresh answer {i}"

        return call

    # Started in the same tick: before the fix the last two joined the first one's flight.
    waiting = [
        asyncio.create_task(client.cache.get_or_call(ns, "q", llm(i), vector=_axis(8, i))) for i in range(3)
    ]
    results = await asyncio.gather(*waiting)
    # The first vector is the stored entry's: a semantic hit. The others are misses, each its own call.
    assert results[0].hit is not None
    assert (results[0].hit.entry_id, results[0].value) == (stored.entry_id, "the stored answer")
    assert [r.value for r in results[1:]] == ["fresh answer 1", "fresh answer 2"]
    assert sorted(calls) == [1, 2]
    assert all(r.stored is not None for r in results[1:])


async def test_callers_with_different_thresholds_do_not_share_an_answer(client: Client) -> None:
    ns = _name("thresholds")
    await client.cache.put_namespace(ns, embedder="caller", dimension=8, similarity_threshold=0.5)
    await client.cache.store(ns, "an older question", "the stored answer", vector=_axis(8, 0))
    near = [0.9, math.sqrt(1 - 0.81), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # cosine 0.9 with the entry

    async def llm() -> str:
        return "fresh answer"

    loose, strict = await asyncio.gather(
        client.cache.get_or_call(ns, "q", llm, vector=near, threshold=0.8),
        client.cache.get_or_call(ns, "q", llm, vector=near, threshold=0.99),
    )
    assert loose.hit is not None
    assert loose.value == "the stored answer"
    assert (strict.hit, strict.value) == (None, "fresh answer")


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (b"\x00raw", RawPayload(b"\x00raw", "application/octet-stream")),
        ((1, 2), [1, 2]),
        ({"k": (1, "x")}, {"k": [1, "x"]}),
        (RawPayload(b"plain", "text/plain"), RawPayload(b"plain", "text/plain")),
        (None, None),
    ],
)
async def test_a_decorated_function_returns_the_same_on_a_miss_as_on_a_hit(
    client: Client, returned: Any, expected: Any
) -> None:
    ns = _name("types")
    await client.cache.put_namespace(ns)
    calls = 0

    @client.cache.cached(ns, prompt=lambda question: question)
    async def ask(question: str) -> Any:
        nonlocal calls
        calls += 1
        return returned

    miss = await ask("what do you return?")
    hit = await ask("what do you return?")
    assert calls == 1  # the second answer came from the cache
    assert miss == hit == expected
    assert type(miss) is type(hit)
    # get_or_call's value is the same too.
    direct = await client.cache.get_or_call(ns, "another question", _same(returned))
    assert direct.value == expected
    assert not direct.from_cache


def _same(value: Any) -> Any:
    async def call() -> Any:
        return value

    return call


async def test_a_result_that_cannot_be_encoded_is_returned_as_it_is_and_not_stored(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    ns = _name("opaque")
    await client.cache.put_namespace(ns)
    marker = object()

    async def llm() -> object:
        return marker

    with caplog.at_level(logging.WARNING, logger="are_sdk.cache"):
        result = await client.cache.get_or_call(ns, "an opaque answer", llm)
    assert result.value is marker
    assert result.stored is None
    assert any("was not stored" in r.getMessage() for r in caplog.records)
    assert await client.cache.lookup(ns, "an opaque answer") is None


async def test_a_cache_that_cannot_be_reached_lets_the_call_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lookup that failed (the sidecar gone) used to raise out of get_or_call before the call:
    a cache outage became an outage of the LLM calls it stands in front of."""
    sidecar = SidecarProcess.start(data_dir=tmp_path / "data")
    try:
        async with await Client.connect(sidecar.target) as client:
            ns = _name("down")
            await client.cache.put_namespace(ns)
            sidecar.stop()
            calls: list[str] = []

            async def llm() -> dict[str, str]:
                calls.append("called")
                return {"answer": "fresh"}

            with caplog.at_level(logging.WARNING, logger="are_sdk.cache"):
                result = await client.cache.get_or_call(ns, "a prompt while the cache is down", llm)
            assert calls == ["called"]
            assert (result.value, result.hit, result.stored) == ({"answer": "fresh"}, None, None)
            assert any(
                "could not be looked up, so the call is made" in r.getMessage() for r in caplog.records
            )
            with pytest.raises(UnavailableError):  # lookup() itself still says what happened
                await client.cache.lookup(ns, "a prompt while the cache is down")
    finally:
        sidecar.cleanup()
