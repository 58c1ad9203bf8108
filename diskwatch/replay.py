"""Replay historical Backblaze days through Kafka, in date order, as TelemetryRecord JSON.

Operators backtest a bundle by replaying days into the telemetry topic while a
worker runs. Rows are read with the training reader (directory, zips; bad
rows counted per reason) and turned into the compact wire JSON column-wise by
:func:`diskwatch.core.wire.encode_table` — byte-for-byte what
:func:`diskwatch.core.wire.encode` writes, which a test checks — because
per-row model validation would cost more than Kafka does. Each day is
produced keyed by serial, batched and lz4-compressed, and reported done only
after the broker acknowledged every message of it. ``--from`` the day after
an interruption reproduces the rest exactly.

Records go into aiokafka batch builders, one per partition (:class:`PartitionBatches`),
not through ``send()`` one by one: a future, a partitioner call and an accumulator
lookup per record made the producer 3x slower than the batches (measured), and a
date-ordered replay is one process, so its rate bounds every backtest. Partitions
are chosen by aiokafka's default partitioner (murmur2 of the serial, as Java
clients do), so a drive lands where ``send()`` — and ``diskwatch collect`` — put it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diskwatch.core.dumps import DumpFilter, ReadStats, iter_days
from diskwatch.core.records import DeadLetter, InvalidRecord
from diskwatch.core.settings import Settings
from diskwatch.core.wire import encode_table


@dataclass
class ReplaySummary:
    days: int = 0
    records: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    seconds: float = 0.0
    first_day: dt.date | None = None
    last_day: dt.date | None = None

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "records": self.records,
            "from": self.first_day.isoformat() if self.first_day else None,
            "to": self.last_day.isoformat() if self.last_day else None,
            "invalid": dict(sorted(self.invalid.items())),
            "dead_letters": self.dead_letters,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records_per_s, 1),
        }


#: Kept for callers of the old name; the encoder lives with the rest of the codec.
wire_messages = encode_table


class Pacer:
    """Sleep to honour --speed (days/s) or --rate (records/s); --max never sleeps."""

    def __init__(self, speed: float | None = None, rate: float | None = None) -> None:
        self.speed, self.rate = speed, rate
        self.started = time.monotonic()
        self.days = 0
        self.records = 0

    async def after_day(self, records: int) -> None:
        self.days += 1
        self.records += records
        target = None
        if self.speed:
            target = self.days / self.speed
        elif self.rate:
            target = self.records / self.rate
        if target is not None:
            delay = target - (time.monotonic() - self.started)
            if delay > 0:
                await asyncio.sleep(delay)


class PartitionBatches:
    """Keyed messages of one topic gathered per partition and sent as whole batches.

    ``add`` fills the partition's open batch and sends it when full; ``flush`` sends what is
    open and waits until the broker acknowledged everything sent. aiokafka keeps one batch per
    partition in flight (``send_batch`` waits for the one before): that is the backpressure.
    """

    def __init__(self, producer: Any, topic: str) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        self.producer, self.topic = producer, topic
        self.partitions: list[int] = []  # asked on the first message: nothing to send, no metadata
        self._partitioner = DefaultPartitioner()
        self._of_key: dict[bytes, int] = {}  # a fleet repeats its serials every day
        self._open: dict[int, Any] = {}
        self._sent: list[asyncio.Future[Any]] = []

    def partition(self, key: bytes) -> int:
        partition = self._of_key.get(key)
        if partition is None:
            if len(self._of_key) >= 1_000_000:
                self._of_key.clear()
            partition = self._of_key[key] = self._partitioner(key, self.partitions, self.partitions)
        return partition

    async def add(self, key: bytes, value: bytes) -> None:
        if not self.partitions:
            self.partitions = sorted(await self.producer.partitions_for(self.topic))
        partition = self.partition(key)
        batch = self._open.get(partition)
        if batch is None:
            batch = self._open[partition] = self.producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
            await self._send(partition)
            batch = self._open[partition] = self.producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any one message

    async def _send(self, partition: int) -> None:
        batch = self._open.pop(partition)
        self._sent.append(await self.producer.send_batch(batch, self.topic, partition=partition))

    async def flush(self) -> None:
        for partition in list(self._open):
            await self._send(partition)
        sent, self._sent = self._sent, []
        await asyncio.gather(*sent)


async def replay(
    data: Path | str,
    settings: Settings,
    *,
    topic: str | None = None,
    filters: DumpFilter | None = None,
    speed: float | None = None,
    rate: float | None = None,
    dlq: bool = False,
    on_day: Callable[[dt.date, int, ReplaySummary], None] | None = None,
) -> ReplaySummary:
    """Produce every valid row of ``data`` to ``topic`` in date order; see module docstring."""
    from aiokafka import AIOKafkaProducer

    topic = topic or settings.topic_telemetry
    summary = ReplaySummary()
    stats = ReadStats(keep_rejected=dlq)
    producer = AIOKafkaProducer(
        **settings.kafka_client_options(), acks="all", linger_ms=20, max_batch_size=1 << 20,
        compression_type="lz4", enable_idempotence=True,
    )
    try:
        await producer.start()
    except BaseException:  # unreachable broker: close it, no 'Unclosed' warning
        await producer.stop()
        raise
    pacer = Pacer(speed, rate)
    started = time.monotonic()
    # Read and encode the next day in a thread (Arrow releases the GIL) while
    # this one is being produced.
    days = iter(iter_days(data, None, filters=filters, stats=stats))

    def next_day() -> tuple[dt.date, list[tuple[bytes, bytes]], list[tuple[str, str]], Counter[str]] | None:
        try:
            day, table = next(days)
        except StopIteration:
            return None
        rejected = list(stats.rejected)
        stats.rejected.clear()
        return day, encode_table(table), rejected, Counter(stats.invalid)

    loop = asyncio.get_running_loop()
    try:
        batches = PartitionBatches(producer, topic)
        upcoming = loop.run_in_executor(None, next_day)
        while (item := await upcoming) is not None:
            upcoming = loop.run_in_executor(None, next_day)
            day, messages, rejected, invalid = item
            summary.first_day = summary.first_day or day
            for key, value in messages:
                await batches.add(key, value)
            futures: list[asyncio.Future[Any]] = []
            for reason, text in rejected if dlq else []:
                letter = DeadLetter.from_payload(text, InvalidRecord(reason, f"rejected by the reader: {reason}"),
                                                 topic=str(data))
                futures.append(await producer.send(settings.topic_dead_letters, value=letter.to_json()))
                summary.dead_letters += 1
            await batches.flush()  # the day is done only when the broker has all of it
            await asyncio.gather(*futures)
            summary.days += 1
            summary.records += len(messages)
            summary.last_day = day
            summary.invalid = invalid
            summary.seconds = time.monotonic() - started
            if on_day is not None:
                on_day(day, len(messages), summary)
            await pacer.after_day(len(messages))
    finally:
        await producer.stop()
    summary.seconds = time.monotonic() - started
    return summary
