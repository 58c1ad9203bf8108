"""Replay historical Backblaze days through Kafka, in date order, as TelemetryRecord JSON.

Operators backtest a bundle by replaying days into the telemetry topic while a
worker runs. Rows are read with the training reader (directory, zips; bad
rows counted per reason) and turned into the compact wire JSON column-wise —
byte-for-byte what ``TelemetryRecord.to_json`` writes, which a test checks —
because per-row model validation would cost more than Kafka does. Each day is
produced keyed by serial, batched and lz4-compressed, and reported done only
after the broker acknowledged every message of it. ``--from`` the day after
an interruption reproduces the rest exactly.
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

import pyarrow as pa
import pyarrow.compute as pc

from diskwatch.core.dumps import SMART_COLUMN, DumpFilter, ReadStats, iter_days
from diskwatch.core.records import DeadLetter, InvalidRecord
from diskwatch.core.settings import Settings


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


def _json_string(values: pa.Array) -> pa.Array:
    """Quote strings for JSON (backslash and quote escaped; control chars become spaces)."""
    text = pc.replace_substring(values, "\\", "\\\\")
    text = pc.replace_substring(text, '"', '\\"')
    text = pc.replace_substring_regex(text, "[\\x00-\\x1f]", " ")
    return pc.binary_join_element_wise('"', text, '"', "")


def _json_number(values: pa.Array) -> pa.Array:
    """Numbers as JSON text: integral values without a fraction, null as ``null``."""
    integral = pc.equal(pc.floor(values), values)
    as_int = pc.cast(pc.cast(values, pa.int64(), safe=False), pa.string())
    as_float = pc.cast(values, pa.string())
    text = pc.if_else(pc.fill_null(integral, False), as_int, as_float)
    return pc.fill_null(text, "null")


def wire_messages(table: pa.Table) -> list[tuple[bytes, bytes]]:
    """(key, TelemetryRecord wire JSON) per row of a cleaned reader table.

    Built column-wise with Arrow compute (no Python work per cell): the same
    JSON ``TelemetryRecord.to_json`` writes, up to number formatting, which a
    test checks by parsing both.
    """
    n = table.num_rows
    if n == 0:
        return []
    pairs: dict[int, list[str | None]] = {}
    for name in table.column_names:
        match = SMART_COLUMN.match(name)
        if match and table[name].null_count < n:
            pair = pairs.setdefault(int(match.group(1)), [None, None])
            pair[0 if match.group(2) == "raw" else 1] = name
    null_text = pa.array(["null"] * n, pa.string())
    parts = []
    for attr in sorted(pairs):
        raw_col, norm_col = pairs[attr]
        raw = table[raw_col].combine_chunks() if raw_col else pa.nulls(n, pa.float64())
        norm = table[norm_col].combine_chunks() if norm_col else pa.nulls(n, pa.float64())
        present = pc.or_(pc.is_valid(raw), pc.is_valid(norm))
        raw_text = _json_number(raw) if raw_col else null_text
        norm_text = _json_number(norm) if norm_col else null_text
        item = pc.binary_join_element_wise(f',"{attr}":[', raw_text, ",", norm_text, "]", "")
        parts.append(pc.if_else(present, item, ""))
    # Every present pair starts with a comma; drop the first one. (Arrow's
    # null_handling="skip" join loses all-null rows, so it is not used.)
    joined = pc.binary_join_element_wise(*parts, "") if parts else pa.array([""] * n, pa.string())
    smart = pc.utf8_slice_codeunits(joined, 1)
    serial = table["serial_number"].combine_chunks()
    text = pc.binary_join_element_wise(
        '{"date":"', pc.cast(table["date"].combine_chunks(), pa.string()),
        '","serial_number":', _json_string(serial),
        ',"model":', _json_string(table["model"].combine_chunks()),
        ',"capacity_bytes":', pc.cast(table["capacity_bytes"].combine_chunks(), pa.string()),
        ',"failure":', pc.cast(table["failure"].combine_chunks(), pa.string()),
        ',"smart":{', smart, "}}",
        "",
    )
    keys = pc.cast(serial, pa.binary()).to_pylist()
    values = pc.cast(text, pa.binary()).to_pylist()
    return list(zip(keys, values, strict=True))


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


async def replay(
    data: Path | str,
    settings: Settings,
    *,
    topic: str | None = None,
    filters: DumpFilter | None = None,
    speed: float | None = None,
    rate: float | None = None,
    dlq: bool = False,
    chunk: int = 5000,
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
        return day, wire_messages(table), rejected, Counter(stats.invalid)

    loop = asyncio.get_running_loop()
    try:
        upcoming = loop.run_in_executor(None, next_day)
        while (item := await upcoming) is not None:
            upcoming = loop.run_in_executor(None, next_day)
            day, messages, rejected, invalid = item
            summary.first_day = summary.first_day or day
            futures: list[asyncio.Future[Any]] = []
            for key, value in messages:
                futures.append(await producer.send(topic, value=value, key=key))
                if len(futures) >= chunk:
                    await asyncio.gather(*futures)
                    futures.clear()
            for reason, text in rejected if dlq else []:
                letter = DeadLetter.from_payload(text, InvalidRecord(reason, f"rejected by the reader: {reason}"),
                                                 topic=str(data))
                futures.append(await producer.send(settings.topic_dead_letters, value=letter.to_json()))
                summary.dead_letters += 1
            await asyncio.gather(*futures)  # the day is done only when the broker has all of it
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
