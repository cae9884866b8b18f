"""Codecs round-trip records; key helpers sort the way scans need."""

from __future__ import annotations

import random

import msgspec
import pytest

from are_core.storage import (
    KEY_SEPARATOR,
    Codec,
    Storage,
    join_key,
    parse_u64_key,
    prefix_end,
    prefix_key,
    u64_key,
)


class Task(msgspec.Struct, frozen=True):
    workflow_id: str
    task_id: str
    attempt: int
    inputs: dict[str, bytes] = {}
    parent: str | None = None


def test_codec_round_trip() -> None:
    codec = Codec(Task)
    task = Task("wf-1", "t-1", 3, {"prompt": b"\x00\xff"}, parent="t-0")
    data = codec.encode(task)
    assert isinstance(data, bytes)
    assert codec.decode(data) == task
    assert codec.decode(memoryview(data)) == task


def test_codec_reuses_encoder_and_decoder() -> None:
    codec = Codec(Task)
    encoder, decoder = codec._encoder, codec._decoder
    codec.decode(codec.encode(Task("a", "b", 1)))
    assert codec._encoder is encoder
    assert codec._decoder is decoder


def test_codec_rejects_wrong_shape_naming_the_field() -> None:
    codec = Codec(Task)
    bad = msgspec.msgpack.encode({"workflow_id": "w", "task_id": "t", "attempt": "x"})
    with pytest.raises(msgspec.ValidationError, match="attempt"):
        codec.decode(bad)


def test_u64_keys_sort_numerically() -> None:
    numbers = [*random.Random(7).sample(range(2**40), 500), 0, 1, 255, 256, 2**64 - 1]
    keys = [u64_key(n) for n in numbers]
    assert [parse_u64_key(k) for k in sorted(keys)] == sorted(numbers)
    assert all(len(k) == 8 for k in keys)


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_u64_key_range(bad: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        u64_key(bad)


def test_parse_u64_key_length() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        parse_u64_key(b"\x00" * 7)


def test_join_key_layout() -> None:
    assert join_key("wf", 1, b"t") == b"wf" + KEY_SEPARATOR + u64_key(1) + KEY_SEPARATOR + b"t"
    assert prefix_key("wf") == b"wf\x00"
    with pytest.raises(ValueError, match="NUL"):
        join_key("a\x00b")
    with pytest.raises(ValueError, match="at least one"):
        join_key()
    with pytest.raises(TypeError, match="bool"):
        join_key(True)  # noqa: FBT003 - the point of the test


def test_prefix_end() -> None:
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") is None
    assert prefix_end(b"") is None


def test_composite_prefix_scan_returns_exactly_its_rows(storage: Storage) -> None:
    batch = storage.batch()
    for wf in ("a", "ab", "a b", "b", "wf1", "wf10", "wf1x"):
        for seq in (0, 1, 255, 256, 70_000):
            batch.put("tasks", join_key(wf, seq), f"{wf}:{seq}".encode())
    storage.apply_batches([batch])

    rows = storage.scan("tasks", prefix=prefix_key("wf1"))
    assert [v for _, v in rows] == [f"wf1:{s}".encode() for s in (0, 1, 255, 256, 70_000)]

    rows = storage.scan("tasks", prefix=prefix_key("a"))
    assert [v for _, v in rows] == [f"a:{s}".encode() for s in (0, 1, 255, 256, 70_000)]

    # Sequence order within a workflow is numeric, both ways.
    newest = storage.scan("tasks", prefix=prefix_key("ab"), reverse=True, limit=2)
    assert [v for _, v in newest] == [b"ab:70000", b"ab:256"]
