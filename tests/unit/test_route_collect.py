"""The pure parts of `diskwatch collect` and `diskwatch route` (no Kafka, no Alertmanager)."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
from pathlib import Path

import pytest

from diskwatch.collect import convert_all, print_records, read_saved, summary_lines
from diskwatch.core.records import Alert, AlertReason, LifeExpectancy, Severity, TelemetryRecord
from diskwatch.route import ALERTNAME, AlertmanagerSettings, parse_alert, to_alertmanager


def smartctl_doc(serial: str, exit_status: int = 0) -> dict:
    return {
        "smartctl": {"exit_status": exit_status},
        "device": {"name": "/dev/sda", "protocol": "ATA"},
        "model_name": "ST4000DM000", "serial_number": serial, "user_capacity": {"bytes": 4000787030016},
        "local_time": {"time_t": 1700000000}, "smart_status": {"passed": True},
        "ata_smart_attributes": {"table": [{"id": 194, "value": 30, "raw": {"value": 146030329885,
                                                                            "string": "29 (Min/Max 22/34)"}}]},
    }


def test_read_saved_takes_files_folders_and_concatenated_stdin(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(smartctl_doc("A")))
    (tmp_path / "b.json").write_text("{broken")
    stdin = io.StringIO(json.dumps(smartctl_doc("C")) + "\n" + json.dumps(smartctl_doc("D", exit_status=2)))
    result = convert_all(read_saved([str(tmp_path), "-"], stdin=stdin), host="h1")
    assert [(s.rsplit("/", 1)[-1], r.serial_number) for s, r in result.records] == [("a.json", "A"), ("<stdin>", "C")]
    assert [(s.rsplit("/", 1)[-1], e.code) for s, e in result.failed] == [
        ("b.json", "not_json"), ("<stdin>#2", "smartctl_failed")]
    assert result.records[0][1].extra["host"] == "h1" and result.records[0][1].raw(194) == 29
    lines = summary_lines(result)
    assert lines[0].startswith("ok ") and lines[-1].startswith("error ") and "device open failed" in lines[-1]


def test_read_saved_reports_an_empty_folder(tmp_path: Path) -> None:
    result = convert_all(read_saved([str(tmp_path)]))
    assert not result.records and result.failed[0][1].code == "no_files"


def test_print_records_with_and_without_keys() -> None:
    record = TelemetryRecord.parse({"date": "2024-01-01", "serial_number": "Z1", "smart": {"5": [1, 100]}})
    plain, keyed = io.StringIO(), io.StringIO()
    print_records([record], plain)
    print_records([record], keyed, "\t")
    assert TelemetryRecord.from_json(plain.getvalue().strip()) == record
    key, value = keyed.getvalue().rstrip("\n").split("\t")
    assert key == "Z1" and TelemetryRecord.from_json(value) == record


def make_alert(**changes: object) -> Alert:
    day = dt.date(2024, 3, 1)
    fields = dict(
        idempotency_key="Z1|2024-03-01|b1", serial_number="Z1", model="ST4000DM000", date=day,
        window_start=day - dt.timedelta(days=13), window_end=day, severity=Severity.CRITICAL,
        failure_probability=0.875, anomaly_score=0.5, classifier_threshold=0.5, anomaly_threshold=0.1,
        horizon_days=7, reasons=[AlertReason(attribute=5, feature="smart_5_raw", raw_value=8.0, error_share=0.5)],
        life_expectancy=LifeExpectancy.BAD, predicted_days_to_failure=3.25, bundle_version="b1",
        created_at=dt.datetime(2024, 3, 2, 6, 0, tzinfo=dt.UTC),
    )
    fields.update(changes)
    return Alert(**fields)  # type: ignore[arg-type]


def test_alertmanager_payload() -> None:
    payload = to_alertmanager(make_alert(), labels={"host": "node7", "alertname": "spoofed"},
                              generator_url="http://grafana/d/diskwatch")
    assert payload["labels"] == {"alertname": ALERTNAME, "serial": "Z1", "model": "ST4000DM000",
                                 "severity": "critical", "host": "node7"}
    assert payload["startsAt"] == "2024-03-02T06:00:00.000000Z"
    assert payload["endsAt"] == "2024-03-09T06:00:00.000000Z"  # + horizon: resolves unless repeated
    notes = payload["annotations"]
    assert notes["failure_probability"] == "0.8750" and notes["life_expectancy"] == "bad"
    assert notes["predicted_days_to_failure"] == "3.2" and notes["reasons"] == "smart_5_raw=8 (50%)"
    assert payload["generatorURL"] == "http://grafana/d/diskwatch"
    short = to_alertmanager(make_alert(), resolve_after=dt.timedelta(hours=2))
    assert short["endsAt"] == "2024-03-02T08:00:00.000000Z" and "generatorURL" not in short


def test_malformed_alert_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="diskwatch.route"):
        assert parse_alert(b"{nope", "t[0]@5") is None
        assert parse_alert(None, "t[0]@6") is None
        assert parse_alert(make_alert().to_json(), "t[0]@7") == make_alert()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "skipping a message that is not a valid Alert at t[0]@5",
        "skipping a message that is not a valid Alert at t[0]@6",
    ]


def test_alertmanager_settings_keep_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISKWATCH_ALERTMANAGER_URL", "https://am:s3cret-url@am.example:9093/")
    monkeypatch.setenv("DISKWATCH_ALERTMANAGER_PASSWORD", "s3cret-pw")
    monkeypatch.setenv("DISKWATCH_ALERTMANAGER_USERNAME", "diskwatch")
    monkeypatch.setenv("DISKWATCH_ALERTMANAGER_LABELS", '{"host": "dc1"}')
    config = AlertmanagerSettings()
    assert config.endpoint() == "https://am:s3cret-url@am.example:9093/api/v2/alerts"
    assert "s3cret" not in config.safe_url() and "s3cret" not in repr(config) and "s3cret" not in str(config)
    assert config.headers() == {"Authorization": "Basic " + base64.b64encode(b"diskwatch:s3cret-pw").decode()}
    assert config.labels == {"host": "dc1"}
    monkeypatch.setenv("DISKWATCH_ALERTMANAGER_BEARER_TOKEN", "tok")
    bearer = AlertmanagerSettings()
    assert bearer.headers() == {"Authorization": "Bearer tok"}


@pytest.mark.parametrize("env", [{"DISKWATCH_ALERTMANAGER_URL": "ftp://x"},
                                 {"DISKWATCH_ALERTMANAGER_LABELS": '{"bad-name": "x"}'}])
def test_alertmanager_settings_refuse_bad_values(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError):
        AlertmanagerSettings()
