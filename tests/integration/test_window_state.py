"""WindowState against the real local Redis: one MGET + one compare-and-set per batch, trimming, marks, TTL."""

from __future__ import annotations

import numpy as np
import pytest

from diskwatch.models.features import FeatureSpec
from diskwatch.stream.windowstate import WindowState

pytestmark = pytest.mark.integration

SPEC = FeatureSpec.from_names(["smart_5_raw", "smart_9_raw"])


def rows(serial: str, days: list[int], model: str = "ST4000DM000") -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    vectors = np.array([[d, 100 + d] for d in days], dtype=np.float32).reshape(-1, 2)
    return [serial] * len(days), np.asarray(days), vectors, [model] * len(days)


@pytest.mark.asyncio
async def test_batches_trim_mark_and_expire(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url, decode_responses=False)
    state = WindowState(client, SPEC, prefix=redis_prefix.rstrip(":"), keep_days=5, ttl_seconds=300)
    try:
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
    finally:
        keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.mark.asyncio
async def test_empty_batch_needs_no_redis(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url, decode_responses=False)
    state = WindowState(client, SPEC, prefix=redis_prefix.rstrip(":"), keep_days=5, ttl_seconds=300)
    added, batch = await state.ingest([], np.zeros(0), np.zeros((0, 2), np.float32), [])
    assert added.size == 0 and len(batch) == 0 and batch.vectors.shape == (0, 2)
    await client.aclose()
