"""The published JSON Schemas: committed docs match the code, and real JSON validates."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from diskwatch.cli import app
from diskwatch.core.records import (
    MAX_SMART_RAW,
    Alert,
    AlertReason,
    DeadLetter,
    InvalidRecord,
    LifeExpectancy,
    Severity,
    SmartValue,
    TelemetryRecord,
    json_schemas,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO / "docs" / "schemas"
REGENERATE = ".venv/bin/diskwatch schemas --out docs/schemas"


def committed() -> dict[str, Path]:
    return {p.name.removesuffix(".schema.json"): p for p in sorted(SCHEMA_DIR.glob("*.schema.json"))}


def test_committed_schemas_are_current() -> None:
    generated = json_schemas()
    files = committed()
    assert sorted(files) == sorted(generated), f"docs/schemas is stale; run {REGENERATE}"
    for stem, schema in generated.items():
        text = files[stem].read_text()
        assert json.loads(text) == schema, f"{files[stem]} is stale; run {REGENERATE}"
        # byte-for-byte what the CLI writes, so regenerating leaves no diff
        assert text == json.dumps(schema, indent=2, sort_keys=True) + "\n", f"run {REGENERATE}"


def test_cli_writes_the_same_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["schemas", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    written = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert written == {p.name: p.read_text() for p in committed().values()}


def test_schemas_describe_the_records() -> None:
    schemas = json_schemas()
    record = schemas["telemetry-record"]
    assert record["additionalProperties"] is False
    assert set(record["required"]) == {"date", "serial_number"}
    assert "smart" in record["properties"]
    assert schemas["alert"]["properties"]["severity"]  # enum via $defs/$ref
    assert set(schemas["dead-letter"]["properties"]["payload_encoding"]["enum"]) == {"utf-8", "base64"}


# ---------------------------------------------------------------------------
# Validation with the jsonschema package (in the dev venv; skipped elsewhere)
# ---------------------------------------------------------------------------

jsonschema = pytest.importorskip("jsonschema")
Validator = jsonschema.Draft202012Validator  # pydantic emits draft 2020-12 (prefixItems)


def validator(stem: str) -> Any:
    schema = json.loads((SCHEMA_DIR / f"{stem}.schema.json").read_text())
    Validator.check_schema(schema)
    return Validator(schema)


def record_json() -> dict[str, Any]:
    record = TelemetryRecord(
        date=dt.date(2013, 4, 10),
        serial_number="S2F0BE6T",
        model="ST1500DM003",
        capacity_bytes=1_500_301_910_016,
        failure=1,
        smart={1: SmartValue(raw=23972424), 5: SmartValue(raw=0, normalized=100), 194: SmartValue(raw=25.5)},
        extra={"datacenter": "sac1"},
    )
    return json.loads(record.to_json())


def alert_json() -> dict[str, Any]:
    alert = Alert(
        idempotency_key=Alert.make_key("S1", dt.date(2013, 4, 16), "v1"),
        serial_number="S1",
        model="ST3000DM001",
        date=dt.date(2013, 4, 16),
        window_start=dt.date(2013, 4, 3),
        window_end=dt.date(2013, 4, 16),
        severity=Severity.WARNING,
        failure_probability=0.7,
        anomaly_score=2.0,
        classifier_threshold=0.5,
        anomaly_threshold=1.5,
        horizon_days=7,
        reasons=[AlertReason(attribute=197, feature="smart_197_raw", raw_value=None, error_share=0.4)],
        life_expectancy=LifeExpectancy.WARNING,
        predicted_days_to_failure=20.0,
        bundle_version="v1",
        created_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    )
    return json.loads(alert.to_json())


def test_alert_json_validates() -> None:
    validator("alert").validate(alert_json())


def test_alert_schema_rejects_bad_alerts() -> None:
    v = validator("alert")
    for change in ({"severity": "info"}, {"failure_probability": 2}, {"surprise": 1}):
        assert not v.is_valid({**alert_json(), **change}), change
    missing = alert_json()
    del missing["serial_number"]
    assert not v.is_valid(missing)


def test_dead_letter_json_validates() -> None:
    letter = DeadLetter.from_payload(b"\xff", InvalidRecord("malformed_json", "x"), key=b"k", offset=3)
    validator("dead-letter").validate(json.loads(letter.to_json()))


def test_telemetry_wire_json_validates() -> None:
    v = validator("telemetry-record")
    v.validate(record_json())
    v.validate({"date": "2013-04-10", "serial_number": "S1"})


@pytest.mark.parametrize(
    "change",
    [
        {"smart": {"5": [0, 300]}},  # normalized 300
        {"smart": {"5": [-1, None]}},
        {"smart": {"5": [0, 1, 2]}},
        {"smart": {"0": [0, None]}},
        {"smart": {"256": [0, None]}},
        {"smart": {"x": [0, None]}},
        {"smart": {"5": [MAX_SMART_RAW + 1, None]}},
        {"failure": 2},
        {"capacity_bytes": -5},
        {"capacity_bytes": 10**16},
        {"serial_number": ""},
        {"date": "20130410"},
        {"temperature": 30},
        {"extra": {"pod_id": 12}},
    ],
)
def test_invalid_record_fails_schema_and_parser(change: dict[str, Any]) -> None:
    data = {**record_json(), **change}
    assert not validator("telemetry-record").is_valid(data)
    with pytest.raises(InvalidRecord):
        TelemetryRecord.parse(data)


raws = st.one_of(st.none(), st.integers(0, MAX_SMART_RAW), st.floats(0, 1e19, allow_nan=False))
records = st.builds(
    TelemetryRecord,
    date=st.dates(),
    serial_number=st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1).filter(
        lambda s: s.strip() != ""
    ),
    model=st.text(max_size=10),
    capacity_bytes=st.one_of(st.just(-1), st.integers(0, 10**15)),
    failure=st.sampled_from([None, 0, 1]),
    smart=st.dictionaries(st.integers(1, 255), st.tuples(raws, st.one_of(st.none(), st.integers(0, 255)))),
    extra=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(records)
def test_property_every_valid_record_satisfies_schema(record: TelemetryRecord) -> None:
    """The schema is never stricter than the parser for records the parser accepts."""
    validator("telemetry-record").validate(json.loads(record.to_json()))
