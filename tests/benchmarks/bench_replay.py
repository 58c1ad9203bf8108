"""Benchmark: `diskwatch replay` records/s vs a bare aiokafka producer of the same messages.

Both runs in one process, same broker, same settings (acks=all, lz4, linger
20 ms, keyed by serial). The bare producer gets the messages pre-built in
memory and sends them one by one (``send()``), the usual aiokafka loop: the
ratio to it is the target (>= 0.5). A second baseline sends the same pre-built
messages the way replay does (per-partition batch builders): replay's own
ceiling, so the ratio to it is what reading and encoding the dump cost.
Needs the stack: ``deploy/local/stack up``.

    python tests/benchmarks/bench_replay.py [--drives 5000] [--days 20]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from diskwatch.core.dumps import iter_days  # noqa: E402
from diskwatch.core.settings import Settings  # noqa: E402
from diskwatch.replay import PartitionBatches, replay, wire_messages  # noqa: E402
from diskwatch.training.synth import FleetConfig, write_fleet  # noqa: E402
from tests.kafka_admin import drop_created  # noqa: E402


async def bare_producer(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.kafka_client_options(), acks="all", linger_ms=20,
                                max_batch_size=1 << 20, compression_type="lz4", enable_idempotence=True)
    await producer.start()
    started = time.perf_counter()
    futures = []
    for key, value in messages:
        futures.append(await producer.send(topic, value=value, key=key))
        if len(futures) >= 5000:
            await asyncio.gather(*futures)
            futures.clear()
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    await producer.stop()
    return elapsed


async def bare_batches(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.kafka_client_options(), acks="all", linger_ms=20,
                                max_batch_size=1 << 20, compression_type="lz4", enable_idempotence=True)
    await producer.start()
    batches = PartitionBatches(producer, topic)
    started = time.perf_counter()
    for key, value in messages:
        await batches.add(key, value)
    await batches.flush()
    elapsed = time.perf_counter() - started
    await producer.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drives", type=int, default=5000)
    parser.add_argument("--days", type=int, default=20)
    args = parser.parse_args()
    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="dw-bench-replay-") as tmp:
        dump = Path(tmp) / "dump"
        write_fleet(FleetConfig(drives=args.drives, days=args.days, start=dt.date(2024, 1, 1), seed=3), dump,
                    progress=False)
        messages = [m for _, table in iter_days(dump, None) for m in wire_messages(table)]
        tag = uuid.uuid4().hex[:6]
        try:
            bare_s = asyncio.run(bare_producer(settings, f"bench-replay-{tag}-bare", messages))
            batches_s = asyncio.run(bare_batches(settings, f"bench-replay-{tag}-batches", messages))
            summary = asyncio.run(replay(dump, settings, topic=f"bench-replay-{tag}"))
        finally:
            asyncio.run(drop_created(tag, **settings.kafka_client_options()))
    bare_rate = len(messages) / bare_s
    print(json.dumps({
        "benchmark": "replay",
        "records": summary.records,
        "replay_records_per_s": round(summary.records_per_s),
        "bare_producer_records_per_s": round(bare_rate),
        "bare_batch_producer_records_per_s": round(len(messages) / batches_s),
        "ratio": round(summary.records_per_s / bare_rate, 3),
        "ratio_vs_batch_producer": round(summary.records_per_s * batches_s / len(messages), 3),
        "target_ratio": 0.5,
    }))


if __name__ == "__main__":
    main()
