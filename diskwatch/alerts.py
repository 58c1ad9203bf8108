"""Read the alert topic: a live table for people, JSON lines for scripts."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from rich.table import Table

from diskwatch.core.records import Alert
from diskwatch.core.settings import Settings


async def tail_alerts(
    settings: Settings,
    *,
    topic: str | None = None,
    from_beginning: bool = False,
    serial: str | None = None,
    idle_timeout: float | None = None,
    limit: int | None = None,
) -> AsyncIterator[Alert | dict[str, Any]]:
    """Yield alerts as they arrive (a message that is not a valid Alert is yielded raw).

    Stops after ``limit`` alerts, or after ``idle_timeout`` seconds without one.
    Uses no consumer group: tailing never moves anyone's offsets.
    """
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic or settings.topic_alerts,
        **settings.kafka_client_options(),
        group_id=None,
        client_id=f"diskwatch-alerts-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen = 0
    last = time.monotonic()
    try:
        while limit is None or seen < limit:
            batch = await consumer.getmany(timeout_ms=500)
            messages = [m for ms in batch.values() for m in ms]
            if not messages:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    return
                await asyncio.sleep(0)
                continue
            last = time.monotonic()
            for message in messages:
                try:
                    alert: Alert | dict[str, Any] = Alert.model_validate_json(message.value)
                except ValueError:
                    alert = {"invalid_alert": (message.value or b"").decode("utf-8", "replace")}
                if serial is not None and (not isinstance(alert, Alert) or alert.serial_number != serial):
                    continue
                seen += 1
                yield alert
                if limit is not None and seen >= limit:
                    return
    finally:
        await consumer.stop()


def alert_table(alerts: list[Alert], *, title: str = "drive alerts") -> Table:
    table = Table(title=title, expand=False)
    for column in ("date", "serial", "model", "severity", "P(fail)", "anomaly", "reasons"):
        table.add_column(column, overflow="fold")
    for a in alerts[-30:]:
        reasons = ", ".join(
            f"{r.feature}={'?' if r.raw_value is None else r.raw_value} ({r.error_share:.0%})" for r in a.reasons
        )
        colour = "red" if a.severity.value == "critical" else "yellow"
        table.add_row(
            a.date.isoformat(), a.serial_number, a.model, f"[{colour}]{a.severity.value}[/]",
            f"{a.failure_probability:.3f}", f"{a.anomaly_score:.4f}", reasons,
        )
    return table


def as_json(alert: Alert | dict[str, Any]) -> str:
    return alert.model_dump_json() if isinstance(alert, Alert) else json.dumps(alert)
