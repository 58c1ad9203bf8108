"""`diskwatch replay` against the real broker, and replay → worker → alerts end to end."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import math
from pathlib import Path

import pytest

from diskwatch.core.dumps import DumpFilter
from diskwatch.core.records import TelemetryRecord
from diskwatch.core.settings import Settings
from diskwatch.models.bundle import load_bundle
from diskwatch.replay import PartitionBatches, replay
from tests.integration.test_worker import alerts_when_drained
from tests.integration.workers import Stream, WorkerProcess, read_records
from tests.kafka_admin import list_topics

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def settings_for(stream: Stream) -> Settings:
    return Settings(
        kafka_bootstrap_servers=stream.bootstrap, topic_telemetry=stream.telemetry, topic_alerts=stream.alerts,
        topic_dead_letters=stream.dlq,
    )


def first_days(src: Path, dst: Path, n: int) -> Path:
    dst.mkdir()
    for path in sorted(src.glob("*.csv"))[:n]:
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_replay_delivers_every_row_as_the_record_it_is(kafka_bootstrap: str, redis_url: str, sim_fleet: Path,
                                                      tmp_path: Path) -> None:
    dump = first_days(sim_fleet, tmp_path / "d", 3)
    stream = Stream(kafka_bootstrap, redis_url, partitions=3)
    asyncio.run(stream.create_topics())
    summary = asyncio.run(replay(dump, settings_for(stream)))
    messages = asyncio.run(stream.read(stream.telemetry, expect=summary.records))
    expected = read_records(dump)
    assert summary.days == 3 and summary.records == len(expected) == len(messages)
    got = sorted((TelemetryRecord.parse(m) for m in messages), key=lambda r: (r.date, r.serial_number))
    want = sorted((r.model_copy(update={"extra": {}}) for r in expected), key=lambda r: (r.date, r.serial_number))
    assert got == want


async def _placed(bootstrap: str, topic: str, n: int) -> dict[int, list[tuple[bytes, bytes]]]:
    """Every message of ``topic`` as (key, value) per partition, in offset order."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: dict[int, list[tuple[bytes, bytes]]] = {}
    try:
        while sum(map(len, out.values())) < n:
            for tp, records in (await asyncio.wait_for(consumer.getmany(timeout_ms=500), 60)).items():
                out.setdefault(tp.partition, []).extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return out


def test_batches_put_each_serial_where_send_would_in_order(kafka_bootstrap: str, redis_url: str) -> None:
    """Replay's per-partition batches: the partition aiokafka's send() picks (murmur2 of the key),
    in the order added, across many batches per partition."""
    from aiokafka import AIOKafkaProducer

    by_batches, by_send = (Stream(kafka_bootstrap, redis_url, partitions=3) for _ in range(2))
    messages = [(f"SER{i % 40:03d}".encode(), f"{i:06d}".encode() * 20) for i in range(3000)]

    async def scenario() -> tuple[dict[int, list[tuple[bytes, bytes]]], dict[int, list[tuple[bytes, bytes]]]]:
        for stream in (by_batches, by_send):
            await stream.create_topics()
        # 16 KB batches: ~120 of them for these 360 KB, so batches roll over on every partition.
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_batch_size=16384, linger_ms=5,
                                    acks="all", enable_idempotence=True)
        await producer.start()
        try:
            batches = PartitionBatches(producer, by_batches.telemetry)
            for key, value in messages:
                await batches.add(key, value)
            await batches.flush()
            await asyncio.gather(*[await producer.send(by_send.telemetry, value=v, key=k) for k, v in messages])
        finally:
            await producer.stop()
        return (await _placed(kafka_bootstrap, by_batches.telemetry, len(messages)),
                await _placed(kafka_bootstrap, by_send.telemetry, len(messages)))

    got, want = asyncio.run(scenario())
    assert sorted(got) == [0, 1, 2] and sum(map(len, got.values())) == len(messages)
    assert got == want


def test_replay_resumes_from_a_day(kafka_bootstrap: str, redis_url: str, sim_fleet: Path, tmp_path: Path) -> None:
    dump = first_days(sim_fleet, tmp_path / "d", 4)
    days = sorted(dt.date.fromisoformat(p.stem) for p in dump.glob("*.csv"))
    whole, parts = Stream(kafka_bootstrap, redis_url), Stream(kafka_bootstrap, redis_url)
    for s in (whole, parts):
        asyncio.run(s.create_topics())
    asyncio.run(replay(dump, settings_for(whole)))
    first = asyncio.run(replay(dump, settings_for(parts), filters=DumpFilter(date_to=days[1])))
    rest = asyncio.run(replay(dump, settings_for(parts), filters=DumpFilter(date_from=days[2])))
    a = asyncio.run(whole.read(whole.telemetry, expect=first.records + rest.records))
    b = asyncio.run(parts.read(parts.telemetry, expect=first.records + rest.records))
    assert a == b and first.days == rest.days == 2

    # Resuming after the last day: nothing to send, so not even the topic's metadata is asked
    # (with broker auto-creation on, asking would create a topic that nobody wants).
    absent = Stream(kafka_bootstrap, redis_url)
    none = asyncio.run(replay(dump, settings_for(absent), filters=DumpFilter(date_from=days[-1] + dt.timedelta(1))))
    assert none.days == none.records == 0
    assert absent.telemetry not in asyncio.run(list_topics(kafka_bootstrap))


def test_replay_counts_bad_rows_and_sends_them_to_the_dlq(kafka_bootstrap: str, redis_url: str,
                                                         tmp_path: Path) -> None:
    dump = tmp_path / "d"
    dump.mkdir()
    (dump / "2024-01-01.csv").write_text(
        "date,serial_number,model,capacity_bytes,failure,smart_5_raw,smart_5_normalized\n"
        "2024-01-01,A,M,100,0,3,100\n"
        "2024-01-01,,M,100,0,3,100\n"          # missing serial
        "2024-01-01,B,M,100,5,3,100\n"         # failure not 0/1
        "2024-01-01,C,M,100,0,oops,300\n"      # bad cells: dropped to null, row kept
        "2024-01-01,D,M\n"                     # wrong field count
    )
    stream = Stream(kafka_bootstrap, redis_url)
    asyncio.run(stream.create_topics())
    summary = asyncio.run(replay(dump, settings_for(stream), dlq=True))
    assert summary.records == 2
    assert summary.invalid == {"missing_serial": 1, "bad_failure": 1, "wrong_field_count": 1,
                               "non_numeric:smart_5_raw": 1, "bad_normalized:smart_5_normalized": 1}
    letters = asyncio.run(stream.read(stream.dlq, expect=3))
    assert sorted(x["reason_code"] for x in letters) == ["bad_failure", "missing_serial", "wrong_field_count"]
    records = [TelemetryRecord.parse(m) for m in asyncio.run(stream.read(stream.telemetry, expect=2))]
    assert {r.serial_number: r.raw(5) for r in records} == {"A": 3, "C": None}


@pytest.mark.slow
def test_replayed_fleet_through_a_worker_catches_failures(
    kafka_bootstrap: str, redis_url: str, sim_fleet: Path, sim_truth: dict, sim_bundle: Path,
) -> None:
    """End to end: replay → worker → alerts; precursor failures caught, false alarms within target."""
    stream = Stream(kafka_bootstrap, redis_url, partitions=2)
    asyncio.run(stream.create_topics())
    with WorkerProcess(stream, sim_bundle) as worker:
        summary = asyncio.run(replay(sim_fleet, settings_for(stream)))
        assert summary.records > 20_000
        alerts = alerts_when_drained(stream, worker, timeout=600)
    bundle = load_bundle(sim_bundle)
    horizon = bundle.window.horizon
    first_day = dt.date.fromisoformat(sim_truth["start"])
    alerted: dict[str, list[dt.date]] = {}
    for a in alerts:
        alerted.setdefault(a["serial_number"], []).append(dt.date.fromisoformat(a["date"]))

    def history(f: dict) -> int:
        return (dt.date.fromisoformat(f["failure_date"]) - max(first_day, dt.date.fromisoformat(f["first_date"]))).days

    catchable = {s: f for s, f in sim_truth["failures"].items()
                 if f["precursor"] and history(f) >= bundle.window.window + horizon}
    caught = [s for s, f in catchable.items()
              if any(0 <= (dt.date.fromisoformat(f["failure_date"]) - d).days <= horizon for d in alerted.get(s, []))]
    assert len(catchable) >= 5
    assert len(caught) >= 0.5 * len(catchable), f"caught {len(caught)} of {len(catchable)}"

    with (sim_fleet / sorted(p.name for p in sim_fleet.glob("*.csv"))[0]).open(newline="") as handle:
        drives = {row["serial_number"] for row in csv.DictReader(handle)}
    healthy = drives - set(sim_truth["failures"])
    false_alarms = len(healthy & set(alerted))
    target = bundle.thresholds.classifier_target_far or 0.01
    allowed = target * len(healthy) + 3 * math.sqrt(target * len(healthy)) + 1
    assert false_alarms <= allowed, f"{false_alarms} false alarms on {len(healthy)} healthy drives"
