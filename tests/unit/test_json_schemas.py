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
    MAX_SERIAL_LEN,
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
    normalize_serial,
)
from diskwatch.core.wire import InputLimits, decode_batch, decode_checked
from diskwatch.models.features import FeatureSpec

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
    # what the record accepts as a serial: <= MAX_SERIAL_LEN characters, not empty once normalised
    serial_number=st.text(
        st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=MAX_SERIAL_LEN
    ).filter(lambda s: normalize_serial(s) != ""),
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


# ---------------------------------------------------------------------------
# The published schema and the worker's decoder give the same verdict
# ---------------------------------------------------------------------------

TODAY = dt.date(2024, 6, 1)
LIMITS = InputLimits(max_record_bytes=1 << 20, clock=lambda: TODAY)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads would take NaN/Infinity; JSON has none


def schema_verdict(payload: bytes) -> bool:
    """Valid JSON that the published schema accepts, and inside the worker's runtime date rule."""
    try:
        data = json.loads(payload, parse_constant=_no_constants)
    except ValueError:
        return False
    if not strict_validator().is_valid(data):
        return False
    day = dt.date.fromisoformat(data["date"])  # the schema guarantees a calendar date
    return LIMITS.min_date <= day <= TODAY + dt.timedelta(days=LIMITS.future_skew_days)


def decoder_verdict(payload: bytes) -> bool:
    batch = decode_batch([payload], FeatureSpec().wire_columns, LIMITS)
    reference_ok = True
    try:
        decode_checked(payload, LIMITS)
    except InvalidRecord:
        reference_ok = False
    assert (len(batch.index) == 1) == reference_ok  # fast and reference path agree too
    return reference_ok


def strict_validator() -> Any:
    schema = json.loads((SCHEMA_DIR / "telemetry-record.schema.json").read_text())
    return Validator(schema, format_checker=Validator.FORMAT_CHECKER)


def base_record() -> dict[str, Any]:
    return {
        "date": "2013-04-10", "serial_number": "Z1F0", "model": "ST3000DM001",
        "capacity_bytes": 3_000_592_982_016, "failure": 0, "smart": {"5": [8, 100], "194": [25, None]},
    }


# What a hand-written producer (kcat, a script) gets wrong, field by field: the issue's list and neighbours.
texts = st.lists(
    st.sampled_from(["Z", "1", " ", "\t", "\n", "\x00", "\x7f", "\u200b", "\ufeff", "\u2060", "\u00a0", "\ud800", "A\u0308", "é"]),
    max_size=6,
).map("".join)
numbers = st.one_of(
    st.integers(-3, 3), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.booleans(), st.none(),
    st.sampled_from(["4000787030016", "4e12", "7", "", " 1"]),
)
dates = st.one_of(
    st.dates(dt.date(1990, 1, 1), dt.date(2100, 1, 1)).map(dt.date.isoformat),
    st.sampled_from([" 2013-04-10", "2013-04-10 ", "2013-04-10\n", "2013-13-01", "20130410", "2013-4-10", "٢٠١٣-04-10"]),
    st.none(), st.integers(),
)
smart_keys = st.one_of(st.sampled_from(["5", "05", " 5", "5\n", "5 ", "x", "٥", "0", "256"]), st.integers(-1, 300).map(str))
valid_pairs = st.tuples(st.one_of(st.none(), st.integers(0, 10**6)), st.one_of(st.none(), st.integers(0, 255)))
smart_values = st.one_of(
    valid_pairs.map(list),
    st.tuples(numbers, numbers).map(list),
    st.lists(numbers, max_size=3),
    st.dictionaries(st.sampled_from(["raw", "normalized"]), numbers, max_size=2),
    numbers,
)
MUTATIONS: dict[str, st.SearchStrategy[Any]] = {
    "date": dates,
    "serial_number": st.one_of(texts, st.text(max_size=3), st.integers(), st.none(), st.just("S" * 129)),
    "model": st.one_of(texts, st.none(), st.integers()),
    "capacity_bytes": numbers,
    "failure": numbers,
    "smart": st.one_of(
        st.dictionaries(smart_keys, smart_values, min_size=1, max_size=2),
        st.dictionaries(smart_keys, valid_pairs.map(list), min_size=1, max_size=2),
        st.one_of(st.none(), st.lists(numbers), st.just({})),
    ),
    "extra": st.one_of(st.dictionaries(texts, st.one_of(texts, numbers), max_size=2), st.none()),
    "temperature": numbers,
}


@st.composite
def producer_payloads(draw: st.DrawFn, field: str) -> bytes:
    """A valid record with ``field`` (and maybe one other) replaced or dropped, maybe a key duplicated."""
    record = base_record()
    other = draw(st.sampled_from([None] * 4 + sorted(MUTATIONS)), label="other field")
    for name in dict.fromkeys([field, other] if other else [field]):
        if draw(st.integers(0, 4), label=f"drop {name}") == 0 and name in record:
            del record[name]
        else:
            record[name] = draw(MUTATIONS[name], label=name)
    text = json.dumps(record)  # ASCII with \\u escapes: lone surrogates survive
    if draw(st.booleans(), label="duplicate a key"):  # the first copy of a duplicated key is ignored by both
        name = draw(st.sampled_from(["serial_number", "date", "capacity_bytes"]))
        text = "{" + json.dumps(name) + ":" + json.dumps(draw(MUTATIONS[name])) + "," + text[1:]
    return text.encode()


@pytest.mark.parametrize("field", sorted(MUTATIONS))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_property_schema_and_decoder_agree(field: str, data: st.DataObject) -> None:
    """The published JSON Schema (plus the documented date window) and the worker decide alike."""
    payload = data.draw(producer_payloads(field), label="payload")
    assert schema_verdict(payload) == decoder_verdict(payload), payload


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=80), st.from_regex(rb'\A\{"date":"2013-04-10","serial_number":.{0,12}\}\Z')))
def test_property_schema_and_decoder_agree_on_bytes(payload: bytes) -> None:
    assert schema_verdict(payload) == decoder_verdict(payload), payload


@pytest.mark.parametrize(
    ("change", "accepted"),
    [
        ({"capacity_bytes": "4000787030016"}, False),
        ({"capacity_bytes": "4e12"}, False),
        ({"capacity_bytes": None}, True),
        ({"model": None}, True),
        ({"smart": {"5": {"raw": 3}}}, False),
        ({"smart": {"5": ["7", None]}}, False),
        ({"smart": {" 5": [7, None]}}, False),
        ({"smart": {"5\n": [7, None]}}, False),
        ({"date": " 2013-04-10"}, False),
        ({"serial_number": "\ufeffZ1F0\u200b "}, True),
        ({"date": "2099-01-01"}, False),  # future_date: the runtime rule
        ({"date": "1999-12-31"}, False),  # bad_date: before min_date
    ],
)
def test_issue_examples_have_one_rule(change: dict[str, Any], accepted: bool) -> None:
    payload = json.dumps({**base_record(), **change}).encode()
    assert schema_verdict(payload) is accepted
    assert decoder_verdict(payload) is accepted


def test_duplicate_keys_last_one_wins_everywhere() -> None:
    payload = b'{"serial_number":"A","date":"2013-04-10","serial_number":"B"}'
    assert strict_validator().is_valid(json.loads(payload))
    batch = decode_batch([payload], [], LIMITS)
    assert batch.serials == ["B"] and decode_checked(payload, LIMITS).serial_number == "B"
