"""Storage: tables, reads, scans, persistence and map growth."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import threading
import time
from typing import TYPE_CHECKING

import pytest
import uvloop

from are_core.storage import (
    MAX_TABLES,
    DataDirLockedError,
    Durability,
    GroupCommitter,
    ScanTooLargeError,
    Storage,
    StorageClosedError,
    StorageError,
    StorageFullError,
    StorageOpenError,
    UnknownTableError,
    u64_key,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(30)
KiB = 1024
MiB = 1024 * KiB


def _fill(storage: Storage, table: str, n: int) -> None:
    batch = storage.batch()
    for i in range(n):
        batch.put(table, u64_key(i), f"v{i}".encode())
    storage.apply_batches([batch])


def test_open_creates_lmdb_under_data_dir(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "d", tables=["kv"]) as store:
        assert store.path == (tmp_path / "d" / "lmdb").absolute()
        assert (tmp_path / "d" / "lmdb" / "data.mdb").exists()
        assert (tmp_path / "d" / "LOCK").exists()
        assert store.tables == frozenset({"kv"})
        assert store.durability is Durability.SYNC
        assert store.map_size_bytes == 256 * MiB
    assert store.closed


def test_get_put_delete_and_persistence(tmp_path: Path) -> None:
    with Storage.open(tmp_path, tables=["kv", "events"]) as store:
        store.apply_batches([store.batch().put("kv", b"a", b"1").put("kv", b"b", b"2")])
        store.apply_batches([store.batch().delete("kv", b"a").delete("kv", b"missing")])
        assert store.get("kv", b"a") is None
        assert store.get("kv", b"b") == b"2"
        assert store.get("events", b"b") is None
    with Storage.open(tmp_path, tables=["kv", "events"]) as store:
        assert store.get("kv", b"b") == b"2"
        assert store.count("kv") == 1


def test_one_transaction_applies_puts_and_deletes_in_order_per_table(tmp_path: Path) -> None:
    # The writer gathers puts per table; a delete, or a conditional batch's
    # check, must still see every put made before it.
    with Storage.open(tmp_path, tables=["kv", "events"]) as store:
        first = store.batch().put("kv", b"a", b"1").put("events", b"e", b"x").put("kv", b"a", b"2")
        first.delete("kv", b"a").put("kv", b"a", b"3").put("kv", b"b", b"4").delete("events", b"e")
        second = store.batch().put("kv", b"c", b"5").delete("kv", b"b")
        conflicting = store.batch().put_if_absent("kv", b"c", b"6").put("kv", b"d", b"7")
        conditional = store.batch().put_if_absent("kv", b"e", b"8").put("events", b"f", b"9")
        results = store.apply_batches([first, second, conflicting, conditional])
        assert [r is None for r in results] == [True, True, False, True]
        assert store.scan("kv") == [(b"a", b"3"), (b"c", b"5"), (b"e", b"8")]
        assert store.scan("events") == [(b"f", b"9")]


def test_a_large_transaction_matches_a_model_of_its_mutations(tmp_path: Path) -> None:
    rng = random.Random(7)
    model: dict[str, dict[bytes, bytes]] = {"kv": {}, "events": {}}
    with Storage.open(tmp_path, tables=["kv", "events"]) as store:
        batches = []
        for b in range(40):
            batch = store.batch()
            for i in range(250):
                table = rng.choice(("kv", "events"))
                key = u64_key(rng.randrange(500))
                if rng.random() < 0.2:
                    batch.delete(table, key)
                    model[table].pop(key, None)
                else:
                    value = f"{b}:{i}".encode()
                    batch.put(table, key, value)
                    model[table][key] = value
            batches.append(batch)
        assert store.apply_batches(batches) == [None] * 40
        for table, rows in model.items():
            assert store.scan(table, limit=1000) == sorted(rows.items())


def test_unknown_table_is_rejected_when_building_the_batch(storage: Storage) -> None:
    with pytest.raises(UnknownTableError, match=r"unknown table 'nope'.*\['events', 'kv', 'tasks'\]"):
        storage.batch().put("nope", b"k", b"v")
    with pytest.raises(UnknownTableError, match="nope"):
        storage.get("nope", b"k")


def test_bad_keys_and_values_are_rejected_when_building(storage: Storage) -> None:
    batch = storage.batch()
    with pytest.raises(ValueError, match="key length 0"):
        batch.put("kv", b"", b"v")
    with pytest.raises(ValueError, match="key length 512"):
        batch.put("kv", b"k" * (storage.max_key_size + 1), b"v")
    with pytest.raises(TypeError, match="key must be bytes"):
        batch.put("kv", "k", b"v")  # type: ignore[arg-type]  # a str key on purpose: the check under test
    with pytest.raises(TypeError, match="value must be bytes"):
        batch.put("kv", b"k", "v")  # type: ignore[arg-type]  # a str value on purpose: the check under test
    buf = bytearray(b"abc")
    batch.put("kv", b"k", buf)
    buf[0] = ord("X")
    assert batch.mutations[0].value == b"abc"
    assert len(batch) == 1
    assert batch.nbytes == 4


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ([], "at least one"),
        (["Bad"], "bad table name"),
        (["a-b"], "bad table name"),
        ([f"t{i}" for i in range(MAX_TABLES + 1)], "at most"),
    ],
)
def test_table_declarations_are_validated(tmp_path: Path, tables: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Storage.open(tmp_path, tables=tables)
    # A failed open leaves the folder unlocked.
    Storage.open(tmp_path, tables=["kv"]).close()


def test_second_open_of_same_folder_is_refused(storage: Storage) -> None:
    with pytest.raises(DataDirLockedError, match=str(storage.data_dir)):
        Storage.open(storage.data_dir, tables=["kv"])


@pytest.mark.parametrize("damage", ["not an LMDB file", "a folder"])
def test_a_damaged_environment_is_a_storage_error_naming_the_folder(tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data"
    Storage.open(data, tables=["kv"]).close()
    mdb = data / "lmdb" / "data.mdb"
    mdb.unlink()
    if damage == "a folder":
        mdb.mkdir()
    else:
        mdb.write_bytes(b"not an LMDB file\n" * 256)
    with pytest.raises(StorageOpenError, match=re.escape(repr(str(data.absolute())))) as caught:
        Storage.open(data, tables=["kv"])
    assert isinstance(caught.value, StorageError)
    assert caught.value.data_dir == data.absolute()
    # A failed open leaves the folder unlocked.
    shutil.rmtree(data / "lmdb")
    Storage.open(data, tables=["kv"]).close()


def test_scan_prefix_range_reverse_limit(storage: Storage) -> None:
    _fill(storage, "events", 100)
    keys = [u64_key(i) for i in range(100)]
    rows = storage.scan("events")
    assert [k for k, _ in rows] == keys
    assert storage.scan("events", start=keys[10], end=keys[13]) == [
        (keys[i], f"v{i}".encode()) for i in (10, 11, 12)
    ]
    assert [k for k, _ in storage.scan("events", start=keys[97])] == keys[97:]
    assert [k for k, _ in storage.scan("events", end=keys[2])] == keys[:2]
    assert [k for k, _ in storage.scan("events", end=keys[2], reverse=True)] == keys[1::-1]
    assert [k for k, _ in storage.scan("events", reverse=True, limit=3)] == keys[:96:-1]
    assert [k for k, _ in storage.scan("events", start=keys[5], end=keys[8], reverse=True)] == [
        keys[7],
        keys[6],
        keys[5],
    ]
    assert [k for k, _ in storage.scan("events", limit=2)] == keys[:2]
    # Paging ascending continues after the last key.
    page = storage.scan("events", limit=40)
    page2 = storage.scan("events", start=page[-1][0] + b"\x00", limit=40)
    assert page2[0][0] == keys[40]
    assert storage.scan("events", prefix=b"\xff") == []
    assert storage.scan("kv") == []
    with pytest.raises(ValueError, match="not both"):
        storage.scan("events", prefix=b"\x00", start=b"\x00")
    with pytest.raises(ValueError, match="positive"):
        storage.scan("events", limit=0)


def test_unlimited_scan_is_bounded(tmp_path: Path) -> None:
    with Storage.open(tmp_path, tables=["kv"], max_scan_rows=10) as store:
        _fill(store, "kv", 10)
        assert len(store.scan("kv")) == 10
        _fill(store, "kv", 11)
        with pytest.raises(ScanTooLargeError, match="max_scan_rows=10"):
            store.scan("kv")
        assert len(store.scan("kv", limit=11)) == 11


def test_read_view_is_a_consistent_snapshot(storage: Storage) -> None:
    storage.apply_batches([storage.batch().put("kv", b"a", b"1").put("kv", b"b", b"2")])
    with storage.read() as view:
        storage.apply_batches([storage.batch().put("kv", b"a", b"changed")])
        assert view.get_many("kv", [b"a", b"b", b"c"]) == [b"1", b"2", None]
        assert view.count("kv") == 2
        assert view.scan("kv", prefix=b"a") == [(b"a", b"1")]
    assert storage.get("kv", b"a") == b"changed"


def test_a_read_ended_by_an_exception_frees_its_reader_slot(storage: Storage) -> None:
    """Kept tracebacks (a refused call's, until a rare cyclic collection) must not hold reader slots.

    LMDB has 126 of them; before the fix, the 127th refused read kept alive this way raised
    MDB_READERS_FULL, and every read of the sidecar failed after it.
    """
    storage.apply_batches([storage.batch().put("kv", b"a", b"1")])

    def refuse() -> None:
        with storage.read() as view:
            view.get("kv", b"a")
            raise LookupError("refused")

    def refusal() -> BaseException:
        try:
            refuse()
        except LookupError as error:
            return error
        raise AssertionError("unreachable")

    kept = [refusal() for _ in range(300)]  # each traceback keeps refuse()'s frame and its view
    assert len(kept) == 300
    assert storage._env.readers().count("\n") <= 2  # the header, at most one cached slot
    assert storage.get("kv", b"a") == b"1"


def test_keys_lmdb_cannot_hold_are_absent(storage: Storage) -> None:
    """An empty or over-long key (an id nobody checked) reads as absent, not as an LMDB error."""
    with storage.read() as view:
        assert view.get("kv", b"") is None
        assert view.get("kv", b"k" * (storage.max_key_size + 1)) is None
        assert view.get_many("kv", [b"", b"x" * 100_000]) == [None, None]
    assert storage.get("kv", b"") is None


def test_closed_storage_refuses_use(tmp_path: Path) -> None:
    store = Storage.open(tmp_path, tables=["kv"])
    store.close()
    store.close()
    with pytest.raises(StorageClosedError, match="storage is closed"):
        store.get("kv", b"a")
    with pytest.raises(StorageClosedError):
        store.apply_batches([store.batch().put("kv", b"a", b"1")])


def test_map_grows_from_64_kib_to_several_mib(tmp_path: Path) -> None:
    with Storage.open(
        tmp_path, tables=["kv"], initial_map_size_bytes=64 * KiB, max_map_size_bytes=64 * MiB
    ) as store:
        value = b"x" * 1000
        for chunk in range(40):
            batch = store.batch()
            for i in range(100):
                batch.put("kv", u64_key(chunk * 100 + i), value)
            store.apply_batches([batch])
        assert store.count("kv") == 4000
        assert store.map_size_bytes >= 4 * MiB
        assert store.map_resizes >= 6
        assert store.get("kv", u64_key(3999)) == value


def test_full_map_raises_and_applies_nothing(tmp_path: Path) -> None:
    with Storage.open(
        tmp_path, tables=["kv"], initial_map_size_bytes=64 * KiB, max_map_size_bytes=256 * KiB
    ) as store:
        big = store.batch()
        for i in range(1000):
            big.put("kv", u64_key(i), b"y" * 1000)
        with pytest.raises(StorageFullError, match="max_map_size_bytes=262144"):
            store.apply_batches([store.batch().put("kv", b"small", b"1"), big])
        assert store.count("kv") == 0
        assert store.map_size_bytes == 256 * KiB
        store.apply_batches([store.batch().put("kv", b"small", b"1")])
        assert store.get("kv", b"small") == b"1"


def test_growth_waits_for_open_read_views(tmp_path: Path) -> None:
    """A remap must not invalidate a read view another thread is using."""
    with Storage.open(
        tmp_path, tables=["kv"], initial_map_size_bytes=64 * KiB, max_map_size_bytes=64 * MiB
    ) as store:
        store.apply_batches([store.batch().put("kv", b"a", b"1")])
        big = store.batch()
        for i in range(500):
            big.put("kv", u64_key(i), b"z" * 1000)
        writer = threading.Thread(target=store.apply_batches, args=([big],))
        with store.read() as view:
            writer.start()
            time.sleep(0.2)
            assert writer.is_alive()  # waiting for this view before remapping
            assert view.get("kv", b"a") == b"1"
            assert store.map_resizes == 0
        writer.join(10)
        assert not writer.is_alive()
        assert store.count("kv") == 501
        assert store.map_resizes >= 1


def test_reads_stay_valid_while_the_writer_grows_the_map(tmp_path: Path) -> None:
    """Event-loop reads race writer-thread growth; none may see an invalid txn."""

    async def main() -> None:
        with Storage.open(
            tmp_path, tables=["kv"], initial_map_size_bytes=64 * KiB, max_map_size_bytes=64 * MiB
        ) as store:
            store.apply_batches([store.batch().put("kv", b"anchor", b"1")])
            async with GroupCommitter(store) as committer:
                stop = False

                async def reader() -> int:
                    reads = 0
                    while not stop:
                        assert store.get("kv", b"anchor") == b"1"
                        store.scan("kv", limit=50)
                        reads += 1
                        await asyncio.sleep(0)
                    return reads

                task = asyncio.create_task(reader())
                for chunk in range(30):
                    batch = store.batch()
                    for i in range(100):
                        batch.put("kv", u64_key(chunk * 100 + i), b"w" * 1000)
                    await committer.submit(batch)
                stop = True
                assert await task > 0
                assert store.map_resizes >= 5
                assert store.count("kv") == 30 * 100 + 1

    uvloop.run(main())
