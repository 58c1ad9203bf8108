"""A quick end-to-end check that Kafka and Redis answer and records survive the trip."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from diskwatch.core.records import SmartValue, TelemetryRecord
from diskwatch.core.settings import Settings


async def _drop_topic(servers: str, topic: str) -> None:
    """The smoke topic has served its purpose: a check leaves nothing behind (best effort)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    try:
        await admin.start()
        await admin.delete_topics([topic])
    except Exception:  # a leftover topic is not worth failing the smoke check for
        pass
    finally:
        await admin.close()


async def run_smoke(settings: Settings, *, timeout: float = 30.0) -> list[str]:
    """Produce one record to a fresh topic, read it back, and echo it via Redis."""
    record = TelemetryRecord(
        date=dt.date.today(),
        serial_number=f"SMOKE-{uuid.uuid4().hex[:8]}",
        model="diskwatch smoke",
        capacity_bytes=4_000_787_030_016,
        failure=0,
        smart={5: SmartValue(raw=0, normalized=100), 194: SmartValue(raw=31, normalized=None)},
    )
    topic = f"diskwatch-smoke-{uuid.uuid4().hex[:8]}"
    servers = settings.kafka_bootstrap_servers
    producer = AIOKafkaProducer(bootstrap_servers=servers, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(producer.start(), timeout)
    except BaseException:  # unreachable broker: close it (no 'Unclosed' warning), report upstream
        await producer.stop()
        raise
    try:
        meta = await producer.send_and_wait(topic, record.to_json(), key=record.serial_number.encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await asyncio.wait_for(consumer.start(), timeout)
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout)
    finally:
        await consumer.stop()
        await _drop_topic(servers, topic)
    echoed = TelemetryRecord.from_json(message.value)
    if echoed != record:
        raise RuntimeError("Kafka returned a different record than was sent")

    client = aioredis.from_url(settings.redis_url.get_secret_value())
    try:
        key = f"{settings.redis_key_prefix}:smoke:{{{record.serial_number}}}"
        await client.set(key, record.to_json(), ex=60)
        stored = await client.get(key)
        await client.delete(key)
    finally:
        await client.aclose()
    if stored is None or TelemetryRecord.from_json(stored) != record:
        raise RuntimeError("Redis returned a different record than was stored")
    return [
        f"kafka  ok: {servers} topic={topic} partition={meta.partition} offset={meta.offset}",
        f"redis  ok: stored and read back {len(record.to_json())} bytes",
        f"record ok: {record.to_json().decode()}",
    ]
