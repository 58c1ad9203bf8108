"""The worker's batch logic in-process against the real Redis (no Kafka): fast and exact."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from diskwatch.core.records import TelemetryRecord
from diskwatch.models.bundle import load_bundle
from diskwatch.stream.processor import BatchProcessor, InMessage
from diskwatch.stream.windowstate import WindowState
from tests.conftest import TEST_RUN
from tests.integration.workers import read_records

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def run(bundle_path: Path, redis_url: str, records: list[TelemetryRecord], batch: int,
              messages: list[InMessage] | None = None, ahead: str = "") -> tuple[list, list, dict]:
    """Every batch through prepare + commit. ``ahead``: name the next batch for an early decode
    ``"before"`` the current one's Redis writes (as the consumer loop does when its fetch is
    quick) or ``"after"`` them (before the marks); counts say how many batches used it."""
    bundle = load_bundle(bundle_path)
    client = aioredis.from_url(redis_url)
    prefix = f"test:{TEST_RUN}:proc:{uuid.uuid4().hex[:8]}"
    state = WindowState(client, bundle.spec, prefix=prefix, keep_days=bundle.window.window + bundle.window.max_gap,
                        ttl_seconds=600)
    processor = BatchProcessor(bundle, state)
    msgs = messages if messages is not None else [InMessage(r.to_json(), r.serial_number.encode()) for r in records]
    alerts, letters = [], []
    counts = {"scored": 0, "duplicates": 0, "decoded_early": 0}
    decode, events = processor._decode_fresh, []
    processor._decode_fresh = lambda m: events.append(("decode", id(m))) or decode(m)  # type: ignore[method-assign]
    try:
        batches = [msgs[i : i + batch] for i in range(0, len(msgs), batch)]
        for i, messages_i in enumerate(batches):
            events.append(("prepare", id(messages_i)))
            prepared = asyncio.ensure_future(processor.prepare(messages_i))
            await asyncio.sleep(0)  # prepare has taken its own decode and waits on Redis
            if ahead == "before" and i + 1 < len(batches):
                processor.predecode(batches[i + 1])
            pending = await prepared
            if ahead == "after" and i + 1 < len(batches):
                processor.predecode(batches[i + 1])
            await processor.commit(pending)
            alerts.extend(pending.alerts)
            letters.extend(pending.dead_letters)
            counts["scored"] += pending.windows_scored
            counts["duplicates"] += pending.duplicates
        for m in batches:  # decoded once each, and before its prepare() when it was named early
            decoded = events.index(("decode", id(m)))
            assert events.count(("decode", id(m))) == 1
            counts["decoded_early"] += decoded < events.index(("prepare", id(m)))
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    return alerts, letters, counts


def summary(alerts: list) -> set[tuple[str, str, str, float]]:
    return {(a.serial_number, a.date.isoformat(), a.severity.value, round(a.failure_probability, 5)) for a in alerts}


@pytest.fixture(scope="module")
def records(sim_fleet: Path) -> list[TelemetryRecord]:
    everything = read_records(sim_fleet)
    serials = sorted({r.serial_number for r in everything})[:120]
    wanted = set(serials)
    return [r for r in everything if r.serial_number in wanted]


def test_batch_size_does_not_change_alerts(records: list[TelemetryRecord], sim_bundle: Path, redis_url: str) -> None:
    small, _, c1 = asyncio.run(run(sim_bundle, redis_url, records, 7))
    large, _, c2 = asyncio.run(run(sim_bundle, redis_url, records, 1000))
    assert c1["scored"] == c2["scored"] > 0
    assert summary(small) == summary(large)
    assert small, "the simulated fleet should raise some alerts"


def test_decoding_the_next_batch_early_changes_nothing(
    records: list[TelemetryRecord], sim_bundle: Path, redis_url: str
) -> None:
    bad = [InMessage(b"{not json", b"k", "t", 0, 10_000), InMessage(None, b"k", "t", 0, 10_001)]
    msgs = [InMessage(r.to_json(), r.serial_number.encode(), "t", 0, i) for i, r in enumerate(records)]
    msgs = msgs[:300] + bad + msgs[300:]
    plain, plain_letters, c1 = asyncio.run(run(sim_bundle, redis_url, records, 97, messages=msgs))
    batches = -(-len(msgs) // 97)
    assert c1["decoded_early"] == 0 and c1["scored"] > 0
    for ahead in ("before", "after"):  # decoded during the ingest's write / during the marks
        early, early_letters, c2 = asyncio.run(run(sim_bundle, redis_url, records, 97, messages=msgs, ahead=ahead))
        assert c2 == {**c1, "decoded_early": batches - 1}, ahead
        assert summary(plain) == summary(early) and plain
        assert [(d.reason_code, d.source_offset) for d in plain_letters] == [
            (d.reason_code, d.source_offset) for d in early_letters]
        assert [d.source_offset for d in early_letters] == [10_000, 10_001]


def test_shuffled_within_batches_and_duplicates_change_nothing(
    records: list[TelemetryRecord], sim_bundle: Path, redis_url: str
) -> None:
    base, _, counts = asyncio.run(run(sim_bundle, redis_url, records, 10_000))
    messy = records + random.Random(1).sample(records, 200)
    random.Random(2).shuffle(messy)
    again, _, messy_counts = asyncio.run(run(sim_bundle, redis_url, messy, 10_000))
    assert summary(again) == summary(base)
    assert counts["duplicates"] == 0 and messy_counts["duplicates"] == 200


def test_replayed_batch_after_crash_rescores_without_losing_alerts(
    records: list[TelemetryRecord], sim_bundle: Path, redis_url: str
) -> None:
    """prepare() done, publish never happened (crash), batch redelivered: alerts still come."""

    async def scenario() -> tuple[list, list]:
        bundle = load_bundle(sim_bundle)
        client = aioredis.from_url(redis_url)
        prefix = f"test:{TEST_RUN}:proc:{uuid.uuid4().hex[:8]}"
        state = WindowState(client, bundle.spec, prefix=prefix, keep_days=9, ttl_seconds=600)
        msgs = [InMessage(r.to_json()) for r in records]
        try:
            crashed = await BatchProcessor(bundle, state).prepare(msgs)  # no publish, no commit
            replay = BatchProcessor(bundle, state)
            redelivered = await replay.prepare(msgs)
            await replay.commit(redelivered)
            third = await replay.prepare(msgs)  # after commit: nothing new
        finally:
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
        assert third.alerts == [] and third.windows_scored == 0
        return crashed.alerts, redelivered.alerts

    crashed, redelivered = asyncio.run(scenario())
    assert summary(crashed) == summary(redelivered) and redelivered


def test_bad_messages_become_dead_letters_with_positions(sim_bundle: Path, redis_url: str) -> None:
    good = TelemetryRecord(date="2024-01-01", serial_number="OK1", smart={5: [0, 100]})
    msgs = [
        InMessage(b"{oops", b"k", "t", 3, 17),
        InMessage(good.to_json(), b"OK1", "t", 3, 18),
        InMessage(b'{"date":"2024-01-01","serial_number":"X","failure":7}', None, "t", 3, 19),
        InMessage(None, None, "t", 3, 20),
    ]
    _, letters, _ = asyncio.run(run(sim_bundle, redis_url, [], 10, messages=msgs))
    assert [(x.reason_code, x.source_offset, x.source_partition) for x in letters] == [
        ("malformed_json", 17, 3), ("bad_failure", 19, 3), ("tombstone", 20, 3),
    ]
    assert letters[2].payload is None and letters[0].payload == "{oops"


def test_alert_reasons_carry_the_records_exact_raw_values(
    sim_bundle: Path, redis_url: str, records: list[TelemetryRecord]
) -> None:
    by_day = {(r.serial_number, r.date): r for r in records}
    alerts, _, _ = asyncio.run(run(sim_bundle, redis_url, records, 4096))
    checked = 0
    for alert in alerts:
        record = by_day[(alert.serial_number, alert.date)]
        for reason in alert.reasons:
            kind = reason.feature.rsplit("_", 1)[1]
            expected = record.raw(reason.attribute) if kind == "raw" else record.normalized(reason.attribute)
            if expected is not None:  # else the value came from an earlier day of the window
                assert reason.raw_value == expected and type(reason.raw_value) is type(expected), reason
                checked += 1
    assert checked > 0, "no alert reason to check; the fixture bundle should alert on the simulated fleet"


def test_oversized_and_misdated_messages_become_small_dead_letters(sim_bundle: Path, redis_url: str) -> None:
    big = b'{"date":"2024-01-01","serial_number":"S1","model":"' + b"M" * 100_000 + b'"}'
    future = TelemetryRecord(date=dt.date(2099, 1, 1), serial_number="S2").to_json()
    ancient = TelemetryRecord(date=dt.date(1999, 12, 31), serial_number="S3").to_json()
    msgs = [InMessage(big, b"S1", "t", 0, 1), InMessage(future, b"S2", "t", 0, 2), InMessage(ancient, b"S3", "t", 0, 3),
            InMessage(b"", None, "t", 0, 4)]
    _, letters, _ = asyncio.run(run(sim_bundle, redis_url, [], 10, messages=msgs))
    assert [x.reason_code for x in letters] == ["oversized", "future_date", "bad_date", "empty_message"]
    first = letters[0]
    assert first.payload_truncated and first.payload_length == len(big) and len(first.to_json()) < 16_384
    assert first.payload_sha256 == hashlib.sha256(big).hexdigest()
    assert not letters[1].payload_truncated and letters[1].original_payload() == future


class PoisonProcessor(BatchProcessor):
    """Scoring raises whenever the batch holds a drive named POISON-* (a crafted record)."""

    def _score(self, pending, batch, state) -> None:  # type: ignore[no-untyped-def]
        if any(s.startswith("POISON") for s in batch.serials):
            raise RuntimeError("crafted record makes scoring raise")
        super()._score(pending, batch, state)


def test_poison_record_is_split_out_to_dlq_and_the_rest_is_stored(
    records: list[TelemetryRecord], sim_bundle: Path, redis_url: str, kafka_bootstrap: str
) -> None:
    """A batch failing for a non-transient reason: bounded attempts, split, one processing_error."""
    import json

    from aiokafka import AIOKafkaProducer

    from diskwatch.stream.batches import BatchRunner
    from tests.integration.workers import Stream

    good = records[:63]
    poison = TelemetryRecord(date="2024-01-05", serial_number="POISON-1", smart={5: [0, 100]})
    msgs = [InMessage(r.to_json(), r.serial_number.encode(), "telemetry", 0, i) for i, r in enumerate(good)]
    msgs.insert(40, InMessage(poison.to_json(), b"POISON-1", "telemetry", 0, 999))
    stream = Stream(kafka_bootstrap, redis_url)
    asyncio.run(stream.create_topics())

    async def scenario() -> tuple[int, int]:
        bundle = load_bundle(sim_bundle)
        client = aioredis.from_url(redis_url)
        state = WindowState(client, bundle.spec, prefix=stream.prefix, keep_days=60, ttl_seconds=600)
        processor = PoisonProcessor(bundle, state, score=False)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()

        async def publish(pending) -> None:  # type: ignore[no-untyped-def]
            futures = [await producer.send(stream.dlq, x.to_json()) for x in pending.dead_letters]
            await asyncio.gather(*futures)

        try:
            await BatchRunner(lambda: processor, publish, attempts=2, backoff_s=0.01).apply(msgs)
            _, stored = await state.ingest([r.serial_number for r in good], [0] * len(good),
                                           np.zeros((len(good), bundle.spec.n_features), np.float32),
                                           [""] * len(good))
            days = sum(len(stored[s].days) for s in stored)
        finally:
            await producer.stop()
            keys = [k async for k in client.scan_iter(match=f"{stream.prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
        return days, len({r.serial_number for r in good})

    days, drives = asyncio.run(scenario())
    letters = asyncio.run(stream.read(stream.dlq, expect=1, idle_s=3, timeout_s=60))
    # every good record stored (+ the probe day 0 of each drive); one dead letter, the crafted one
    assert days == len(good) + drives
    assert len(letters) == 1
    letter = letters[0]
    assert letter["reason_code"] == "processing_error" and letter["source_offset"] == 999
    assert "crafted record makes scoring raise" in letter["reason"]
    assert json.loads(letter["payload"])["serial_number"] == "POISON-1"


def test_an_early_decode_that_fails_fails_its_own_batch_only(
    records: list[TelemetryRecord], sim_bundle: Path, redis_url: str
) -> None:
    async def scenario() -> None:
        bundle = load_bundle(sim_bundle)
        client = aioredis.from_url(redis_url)
        prefix = f"test:{TEST_RUN}:proc:{uuid.uuid4().hex[:8]}"
        state = WindowState(client, bundle.spec, prefix=prefix, keep_days=9, ttl_seconds=600)
        processor = BatchProcessor(bundle, state)
        first = [InMessage(r.to_json()) for r in records[:50]]
        second = [InMessage(r.to_json()) for r in records[50:100]]
        decode = processor._decode

        def broken(messages: list[InMessage], pending: Any) -> Any:
            if messages == second:
                raise RuntimeError("decode bug")
            return decode(messages, pending)

        processor._decode = broken  # type: ignore[method-assign]
        try:
            prepared = asyncio.ensure_future(processor.prepare(first))
            await asyncio.sleep(0)
            processor.predecode(second)  # decoded (and failing) while the first batch waits on Redis
            pending = await prepared
            await processor.commit(pending)
            assert pending.records == 50
            with pytest.raises(RuntimeError, match="decode bug"):
                await processor.prepare(second)
            processor._decode = decode  # type: ignore[method-assign]
            assert (await processor.prepare(second)).records == 50  # a retry decodes afresh
        finally:
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    asyncio.run(scenario())
