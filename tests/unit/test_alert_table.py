"""The alert table fits the terminal: dates and serials whole, least useful columns dropped first."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from rich.console import Console

from diskwatch.alerts import alert_table, choose_columns, rows_that_fit
from diskwatch.core.records import Alert, AlertReason, Severity


def make_alert(i: int) -> Alert:
    day = dt.date(2024, 3, 1) + dt.timedelta(days=i % 28)
    serial = f"ZA{i:06d}XYZ"
    return Alert(
        idempotency_key=Alert.make_key(serial, day, "v1"),
        serial_number=serial,
        model="HGST HMS5C4040BLE640",
        date=day,
        window_start=day - dt.timedelta(days=13),
        window_end=day,
        severity=Severity.CRITICAL if i % 3 == 0 else Severity.WARNING,
        failure_probability=0.91,
        anomaly_score=3.1415,
        classifier_threshold=0.5,
        anomaly_threshold=1.5,
        horizon_days=7,
        reasons=[
            AlertReason(attribute=5, feature="smart_5_raw", raw_value=120.0, error_share=0.41),
            AlertReason(attribute=197, feature="smart_197_raw", raw_value=8.0, error_share=0.3),
        ],
        bundle_version="v1",
        created_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    )


def render(width: int, alerts: list[Alert], max_rows: int = 30) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    console.print(alert_table(alerts, title=f"drive alerts ({len(alerts)})", width=width, max_rows=max_rows))
    return console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_table_fits_and_never_folds_dates_or_serials(width: int) -> None:
    alerts = [make_alert(i) for i in range(40)]
    out = render(width, alerts)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= width
    for alert in alerts[-30:]:
        row = next(line for line in lines if alert.serial_number in line)
        assert alert.date.isoformat() in row  # date and serial whole, on the same line
    assert "newest 30 of 40" in out


def test_80_columns_keeps_the_essentials_and_drops_the_least_useful_first() -> None:
    rows = [{"date": "2024-03-01", "serial": "ZA000001XYZ", "model": "HGST HMS5C4040BLE640", "severity": "critical",
             "P(fail)": "0.910", "anomaly": "3.1415", "reasons": "smart_5_raw=120 (41%)"}]
    assert choose_columns(rows, 100) == ["date", "serial", "model", "severity", "P(fail)", "reasons"]
    assert choose_columns(rows, 80) == ["date", "serial", "severity", "P(fail)", "reasons"]
    assert choose_columns(rows, 40) == ["date", "serial", "severity", "P(fail)"]
    assert choose_columns(rows, 160) == ["date", "serial", "model", "severity", "P(fail)", "anomaly", "reasons"]


def test_wide_terminal_shows_every_column_and_full_reasons() -> None:
    out = render(160, [make_alert(1)])
    for header in ("date", "serial", "model", "severity", "P(fail)", "anomaly", "reasons"):
        assert header in out
    assert "smart_197_raw=8 (30%)" in out


def test_rows_follow_the_terminal_height() -> None:
    alerts = [make_alert(i) for i in range(50)]
    n = rows_that_fit(24, reserved=2)
    out = render(80, alerts, max_rows=n)
    assert len(out.splitlines()) <= 24 - 2
    assert sum(a.serial_number in out for a in alerts) == n
