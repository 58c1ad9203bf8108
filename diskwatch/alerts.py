"""Read the alert topic: a live table for people, JSON lines for scripts."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from rich.table import Table
from rich.text import Text

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
    try:
        await consumer.start()
    except BaseException:  # unreachable broker: close it, no 'Unclosed' warning
        await consumer.stop()
        raise
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


#: Columns in the order shown; the first four are kept at any width (a date or a serial is
#: never folded), the others are dropped right to left of DROP_ORDER until the rest fits.
_ALWAYS = ("date", "serial", "severity", "P(fail)")
DROP_ORDER = ("anomaly", "model", "reasons")  # least useful first
_REASONS_MIN = 16  # narrower than this, a reasons column says nothing
#: Lines a table needs besides its rows: title, top border, header, rule, bottom border.
TABLE_CHROME_LINES = 5


def _value(value: float | None) -> str:
    """A reason's raw value as the record had it: exact integers, never a rounded float."""
    if value is None:
        return "?"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _reasons(alert: Alert) -> str:
    return ", ".join(f"{r.feature}={_value(r.raw_value)} ({r.error_share:.0%})" for r in alert.reasons)


def _cells(alert: Alert) -> dict[str, str]:
    colour = "red" if alert.severity.value == "critical" else "yellow"
    return {
        "date": alert.date.isoformat(),
        "serial": alert.serial_number,
        "model": alert.model,
        "severity": f"[{colour}]{alert.severity.value}[/]",
        "P(fail)": f"{alert.failure_probability:.3f}",
        "anomaly": f"{alert.anomaly_score:.4f}",
        "reasons": _reasons(alert),
    }


def _visible_width(cell: str) -> int:
    return Text.from_markup(cell).cell_len


def choose_columns(rows: list[dict[str, str]], width: int | None) -> list[str]:
    """Columns that fit ``width`` terminal cells at their natural width (reasons may be shortened)."""
    order = ["date", "serial", "model", "severity", "P(fail)", "anomaly", "reasons"]
    need = {c: max([len(c), *(_visible_width(r[c]) for r in rows)]) for c in order}
    need["reasons"] = min(need["reasons"], _REASONS_MIN)  # it takes what is left, at least this
    columns = list(order)
    if width is None:
        return columns
    for victim in DROP_ORDER:
        if _table_width([need[c] for c in columns]) <= width:
            break
        columns.remove(victim)
    return columns


def _table_width(widths: list[int]) -> int:
    """Cells a boxed rich table takes: each column plus one padding cell either side, plus borders."""
    return sum(widths) + 3 * len(widths) + 1


def alert_table(
    alerts: list[Alert], *, title: str = "drive alerts", width: int | None = None, max_rows: int = 30
) -> Table:
    """The newest ``max_rows`` alerts as a table that fits ``width`` cells (None: any width).

    Dates and serials never wrap; columns that do not fit are dropped, least useful first
    (anomaly score, then model, then reasons), and reasons are cut with an ellipsis.
    """
    shown = alerts[-max_rows:] if max_rows > 0 else []
    rows = [_cells(a) for a in shown]
    columns = choose_columns(rows, width)
    table = Table(title=title, expand=False, width=width if "reasons" in columns else None)
    for column in columns:
        fill = column == "reasons" and width is not None
        table.add_column(
            column, no_wrap=True, overflow="ellipsis" if column == "reasons" else "crop",
            ratio=1 if fill else None, justify="right" if column in ("P(fail)", "anomaly") else "left",
        )
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    if len(alerts) > len(shown):
        table.caption = f"newest {len(shown)} of {len(alerts)}"
    return table


def rows_that_fit(height: int, reserved: int = 0) -> int:
    """How many alert rows fit a terminal of ``height`` lines, besides ``reserved`` other lines."""
    return max(3, height - TABLE_CHROME_LINES - 1 - reserved)  # 1: the caption


def as_json(alert: Alert | dict[str, Any]) -> str:
    return alert.model_dump_json() if isinstance(alert, Alert) else json.dumps(alert)
