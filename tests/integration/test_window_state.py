"""WindowState against the real local Redis: one MGET + one compare-and-set per batch, trimming, marks, TTL."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from diskwatch.models.features import FeatureSpec
from diskwatch.stream.windowstate import WindowState

pytestmark = pytest.mark.integration

SPEC = FeatureSpec.from_names(["smart_5_raw", "smart_9_raw"])


def rows(serial: str, days: list[int], model: str = "ST4000DM000") -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    vectors = np.array([[d, 100 + d] for d in days], dtype=np.float32).reshape(-1, 2)
    return [serial] * len(days), np.asarray(days), vectors, [model] * len(days)


def test_batches_trim_mark_and_expire(async_redis: Any, redis_prefix: str) -> None:
    async def scenario() -> None:
        async with async_redis(decode_responses=False) as client:
            state = WindowState(client, SPEC, prefix=redis_prefix.rstrip(":"), keep_days=5, ttl_seconds=300)
            # Days 0..9 of drive A arrive shuffled in one batch with B's day 3 and a duplicate of A's day 4.
            a = rows("A", [7, 2, 9, 0, 4, 1, 8, 3, 6, 5, 4])
            b = rows("B", [3], model="")
            added, batch = await state.ingest(a[0] + b[0], np.r_[a[1], b[1]], np.r_[a[2], b[2]], a[3] + b[3])
            assert added.tolist() == [True] * 10 + [False] + [True]  # the second day 4 changed nothing
            assert batch.serials == ["A", "B"] and batch.starts.tolist() == [0, 10, 11]
            assert batch["A"].days == list(range(10))  # trimmed relative to the batch's oldest day: all kept
            np.testing.assert_array_equal(batch["A"].vectors[:, 0], np.arange(10, dtype=np.float32))
            assert batch["A"].model == "ST4000DM000" and batch["B"].model == ""

            # Mark the window ending day 9 scored; the next batch trims days <= 12 - 5.
            await state.mark({"A": [8, 9]}, {"A": 2, "B": 1})
            added, batch = await state.ingest(*rows("A", [12], model="ST8000DM002"))
            drive = batch["A"]
            assert added.tolist() == [True]
            assert drive.days == [8, 9, 12] and drive.scored == {8, 9}
            assert drive.severity == 2 and drive.model == "ST8000DM002"
            stored = await state.drive("A")  # what Redis holds, read back on its own
            assert stored.days == [8, 9, 12] and stored.scored == {8, 9} and stored.severity == 2
            assert stored.model == "ST8000DM002"
            assert 0 < await client.ttl(state.key("A")) <= 300

            # A day older than what is kept still lands (the batch's oldest day bounds the trim).
            added, batch = await state.ingest(*rows("A", [6]))
            assert added.tolist() == [True] and batch["A"].days == [6, 8, 9, 12]
            assert "C" not in batch and len(batch) == 1

    asyncio.run(scenario())


def test_empty_batch_needs_no_redis(async_redis: Any, redis_prefix: str) -> None:
    async def scenario() -> None:
        async with async_redis(decode_responses=False) as client:
            state = WindowState(client, SPEC, prefix=redis_prefix.rstrip(":"), keep_days=5, ttl_seconds=300)
            added, batch = await state.ingest([], np.zeros(0), np.zeros((0, 2), np.float32), [])
            assert added.size == 0 and len(batch) == 0 and batch.vectors.shape == (0, 2)

    asyncio.run(scenario())


def test_stale_writer_is_refused_and_nothing_is_lost(async_redis: Any, redis_prefix: str) -> None:
    """Two workers that both believe they own a drive: the older version loses, then merges."""

    async def scenario() -> None:
        async with async_redis(decode_responses=False) as client:
            prefix = redis_prefix.rstrip(":")
            a = WindowState(client, SPEC, prefix=prefix, keep_days=30, ttl_seconds=300)
            b = WindowState(client, SPEC, prefix=prefix, keep_days=30, ttl_seconds=300)
            await a.ingest(*rows("X", [1]))
            stale = (await a.read(["X"]))[0]  # A reads version 1 ...
            await b.ingest(*rows("X", [2]))  # ... B writes version 2 meanwhile
            stale.days, stale.scored = np.array([1, 3], np.int32), np.zeros(2, np.uint8)
            stale.vectors = np.array([[1, 101], [3, 103]], np.float32)
            assert await a.write(["X"], [stale]) == [False]  # A's write at version 1 is refused
            assert (await a.drive("X")).days == [1, 2]  # B's day survived

            added, batch = await a.ingest(*rows("X", [3]))  # the real path re-reads and merges
            assert added.tolist() == [True] and batch["X"].days == [1, 2, 3]

            # Many interleaved writers on the same drives: every day of every writer is kept.
            async def writer(state: WindowState, days: list[int]) -> None:
                for day in days:
                    await state.ingest(*rows("Y", [day]))
                    await state.ingest(*rows("Z", [day]))

            await asyncio.gather(writer(a, list(range(0, 20, 2))), writer(b, list(range(1, 20, 2))))
            assert (await a.drive("Y")).days == list(range(20))
            assert (await b.drive("Z")).days == list(range(20))
            for serial in ("Y", "Z"):
                drive = await a.drive(serial)
                np.testing.assert_array_equal(drive.vectors[:, 0], np.arange(20, dtype=np.float32))

    asyncio.run(scenario())


def test_marks_patch_what_ingest_wrote_and_fall_back_when_it_changed(async_redis: Any, redis_prefix: str) -> None:
    """Marks after ingest: no read; a head changed by another writer (or a key Redis lost and
    someone rewrote) is refused, then read, marked and written whole — nothing of theirs lost."""

    async def scenario() -> None:
        async with async_redis(decode_responses=False) as client:
            prefix = redis_prefix.rstrip(":")
            a = WindowState(client, SPEC, prefix=prefix, keep_days=30, ttl_seconds=300)
            b = WindowState(client, SPEC, prefix=prefix, keep_days=30, ttl_seconds=300)
            reads: list[int] = []
            mget = a._mget

            async def counted(keys: list[bytes]) -> list[bytes | None]:
                reads.append(len(keys))
                return await mget(keys)

            a._mget = counted  # type: ignore[method-assign]
            x, y, z = rows("X", [1, 2]), rows("Y", [1]), rows("Z", [4])
            await a.ingest(x[0] + y[0] + z[0], np.r_[x[1], y[1], z[1]], np.r_[x[2], y[2], z[2]], x[3] + y[3] + z[3])
            await b.ingest(*rows("X", [3]))  # B writes X after A's ingest: A's head of X is stale
            await client.delete(a.key("Z"))  # Redis lost Z; B rewrites it: same version, other days
            await b.ingest(*rows("Z", [7]))
            reads.clear()
            await a.mark({"X": [2], "Y": [1], "Z": [4]}, {"X": 1, "Y": 2, "Z": 3}, {0: 10}, "t")
            assert reads == [2]  # Y was patched in place; only X and Z were read back
            drive = await a.drive("X")
            assert drive.days == [1, 2, 3] and drive.scored == {2} and drive.severity == 1
            np.testing.assert_array_equal(drive.vectors[:, 0], [1, 2, 3])
            drive = await a.drive("Y")
            assert drive.days == [1] and drive.scored == {1} and drive.severity == 2
            np.testing.assert_array_equal(drive.vectors, [[1, 101]])
            drive = await a.drive("Z")  # B's day kept, A's mark of a day it no longer holds dropped
            assert drive.days == [7] and drive.scored == set() and drive.severity == 3
            np.testing.assert_array_equal(drive.vectors, [[7, 107]])
            assert await a.applied_offsets("t", [0]) == {0: 10}  # written once, with the first call

            reads.clear()  # marks again (a retried commit): heads now match the patched values
            await a.mark({"Y": [1]}, {"Y": 1})
            assert reads == [] and (await a.drive("Y")).severity == 1
            assert 0 < await client.ttl(a.key("Y")) <= 300  # patching kept the TTL

    asyncio.run(scenario())


def test_marks_in_place_write_the_same_bytes_as_read_mark_write(async_redis: Any, redis_prefix: str) -> None:
    """The head patch is only a shortcut: byte for byte the value the full path writes."""

    async def scenario() -> None:
        rng = np.random.default_rng(7)
        async with async_redis(decode_responses=False) as client:
            fast = WindowState(client, SPEC, prefix=redis_prefix + "fast", keep_days=6, ttl_seconds=300)
            full = WindowState(client, SPEC, prefix=redis_prefix + "full", keep_days=6, ttl_seconds=300)
            models = ["ST4000DM000", "", "HGST HMS5C4040BLE640", "WDC WD30EFRX-68EUZN0 ünï"]
            for _ in range(6):  # batches: random drives, days (duplicates, late days), marks
                serials, days = [], []
                for d in range(int(rng.integers(1, 12))):
                    n = int(rng.integers(1, 5))
                    serials += [f"D{d}"] * n
                    days += rng.integers(0, 20, n).tolist()
                batch = (serials, np.asarray(days), np.asarray([[x, 100 + x] for x in days], np.float32),
                         [models[int(rng.integers(0, 4))] for _ in days])
                for state in (fast, full):
                    await state.ingest(*batch)
                marked = sorted(set(serials))[: int(rng.integers(0, len(set(serials)) + 1))]
                scored = {s: rng.integers(0, 22, int(rng.integers(0, 4))).tolist() for s in marked}
                severity = {s: int(rng.integers(0, 3)) for s in marked if rng.random() < 0.7}
                full._heads.clear()  # no head known: read, mark, compare-and-set the whole value
                await full.mark(scored, severity)
                await fast.mark(scored, severity)
                for serial in sorted(set(serials)):
                    assert await client.get(fast.key(serial)) == await client.get(full.key(serial)), serial

    asyncio.run(scenario())


def test_one_far_future_day_erases_nothing(async_redis: Any, redis_prefix: str) -> None:
    """Issue #12.1: a lone day years ahead is parked; only a second report near it moves the window."""

    async def scenario() -> None:
        async with async_redis(decode_responses=False) as client:
            state = WindowState(client, SPEC, prefix=redis_prefix.rstrip(":"), keep_days=5, ttl_seconds=300)
            await state.ingest(*rows("A", list(range(100, 110))))
            far = 100_000
            added, batch = await state.ingest(*rows("A", [far]))
            assert added.tolist() == [True]
            # trimmed as any batch would be (relative to day 109), not relative to the outlier
            assert batch["A"].days == [*range(105, 110), far]
            _, batch = await state.ingest(*rows("A", [110]))  # normal days keep flowing and trimming
            assert batch["A"].days == [*range(106, 111), far]
            for k in range(1, 7):  # more lone outliers: at most PARKED kept, the nearest ones
                await state.ingest(*rows("A", [far + 1000 * k]))
            days = (await state.drive("A")).days
            assert days[:5] == list(range(106, 111)) and len(days) == 5 + 4 and days[5] == far
            _, batch = await state.ingest(*rows("A", [far + 1]))  # confirmed: the window moves on
            assert batch["A"].days[:2] == [far, far + 1] and 110 not in batch["A"].days

    asyncio.run(scenario())


def test_applied_offsets_never_move_past_writes_redis_lost(async_redis: Any, redis_prefix: str) -> None:
    """Issue #14.1: the offset recorded with the marks goes back only when Redis lost writes; then it says so."""

    async def scenario() -> None:
        async with async_redis(decode_responses=False) as client:
            state = WindowState(client, SPEC, prefix=redis_prefix.rstrip(":"), keep_days=5, ttl_seconds=300)
            assert await state.applied_offsets("t", [0, 1]) == {}
            assert await state.mark({}, {}, {0: 100, 1: 7}, "t") == {}
            assert await state.applied_offsets("t", [0, 1]) == {0: 100, 1: 7}
            await client.hset(state.offsets_key("t"), "0", 50)  # Redis came back from an older AOF
            assert await state.mark({}, {}, {0: 120, 1: 9}, "t") == {0: 50}  # lost: re-read from 51
            assert await state.applied_offsets("t", [0, 1]) == {0: 50, 1: 9}  # not moved past the lost days
            assert await state.mark({}, {}, {0: 60}, "t") == {}  # the re-read batches count again
            assert await state.applied_offsets("t", [0]) == {0: 60}

    asyncio.run(scenario())
