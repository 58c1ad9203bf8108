"""Unit tests of diskwatch.records: the wire formats and every rejection path."""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskwatch.core.records import (
    DEAD_LETTER_PAYLOAD_BYTES,
    EPOCH,
    MAX_CAPACITY_BYTES,
    MAX_SMART_RAW,
    REASON_CODES,
    Alert,
    AlertReason,
    DeadLetter,
    InvalidRecord,
    LifeExpectancy,
    Severity,
    SmartValue,
    TelemetryRecord,
    day_number,
    from_day_number,
    normalize_serial,
)

DAY = dt.date(2013, 4, 10)

# The 2013 header as Backblaze wrote it (85 columns).
# fmt: off
SMART_IDS_2013 = (
    1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 15, 183, 184, 187, 188, 189, 190, 191,
    192, 193, 194, 195, 196, 197, 198, 199, 200, 201, 223, 225, 240, 241, 242, 250, 251, 252, 254, 255,
)
# fmt: on
HEADER_2013 = [
    "date",
    "serial_number",
    "model",
    "capacity_bytes",
    "failure",
    *(f"smart_{n}_{kind}" for n in SMART_IDS_2013 for kind in ("normalized", "raw")),
]
LOCATION_COLUMNS = ["datacenter", "cluster_id", "vault_id", "pod_id", "pod_slot_number", "is_legacy_format"]
HEADER_2024 = (
    ["date", "serial_number", "model", "capacity_bytes", "failure"]
    + LOCATION_COLUMNS
    + [f"smart_{n}_{kind}" for n in (1, 5, 9, 187, 188, 194, 197, 198, 241) for kind in ("normalized", "raw")]
)


def csv_row(header: list[str], line: str) -> dict[str, str]:
    """One CSV data line (CRLF, like the real dumps) read through csv.DictReader."""
    text = ",".join(header) + "\r\n" + line + "\r\n"
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == 1
    return rows[0]


def row_2013(**cells: str) -> dict[str, str]:
    row = dict.fromkeys(HEADER_2013, "")
    row.update(
        date="2013-04-10",
        serial_number="S2F0BE6T",
        model="ST1500DM003",
        capacity_bytes="1500301910016",
        failure="0",
        smart_1_raw="23972424",
        smart_5_raw="0",
        smart_9_raw="4378",
        smart_194_raw="25",
        smart_197_raw="0",
    )
    row.update(cells)
    return row


def sample_record(**changes: Any) -> TelemetryRecord:
    data: dict[str, Any] = {
        "date": DAY,
        "serial_number": "W1F0LRXG",
        "model": "ST3000DM001",
        "capacity_bytes": 3_000_592_982_016,
        "failure": 0,
        "smart": {
            5: SmartValue(raw=8, normalized=100),
            9: SmartValue(raw=6297, normalized=None),
            194: [25, 25],
        },
        "extra": {"datacenter": "sac1"},
    }
    data.update(changes)
    return TelemetryRecord(**data)


def wire(**changes: Any) -> dict[str, Any]:
    """A valid wire-form dict, with top-level changes (value ``...`` deletes the key)."""
    data: dict[str, Any] = {
        "date": "2013-04-10",
        "serial_number": "W1F0LRXG",
        "model": "ST3000DM001",
        "capacity_bytes": 3_000_592_982_016,
        "failure": 0,
        "smart": {"5": [8, 100], "194": [25, None]},
    }
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def rejected(data: Any) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as info:
        TelemetryRecord.parse(data)
    return info.value


def rejected_json(payload: bytes | str) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as info:
        TelemetryRecord.from_json(payload)
    return info.value


# ---------------------------------------------------------------------------
# JSON wire form
# ---------------------------------------------------------------------------


class TestWireJson:
    def test_round_trip(self) -> None:
        record = sample_record()
        assert TelemetryRecord.from_json(record.to_json()) == record
        assert TelemetryRecord.from_json(record.to_json().decode()) == record

    def test_compact_form(self) -> None:
        payload = sample_record().to_json()
        assert isinstance(payload, bytes)
        assert b" " not in payload.replace(b"ST3000DM001", b"")
        assert b": " not in payload and b", " not in payload
        data = json.loads(payload)
        assert data["smart"] == {"5": [8, 100], "9": [6297, None], "194": [25, 25]}
        assert data["date"] == "2013-04-10"
        assert data["extra"] == {"datacenter": "sac1"}
        assert list(data["smart"]) == ["5", "9", "194"]  # ascending ids

    def test_exact_bytes(self) -> None:
        record = TelemetryRecord(date=DAY, serial_number="S1", smart={5: [0, None]})
        assert record.to_json() == (
            b'{"date":"2013-04-10","serial_number":"S1","model":"","capacity_bytes":-1,"smart":{"5":[0,null]}}'
        )

    def test_failure_optional(self) -> None:
        record = sample_record(failure=None)
        assert "failure" not in json.loads(record.to_json())
        parsed = TelemetryRecord.from_json(record.to_json())
        assert parsed.failure is None
        assert parsed == record
        assert TelemetryRecord.parse(wire(failure=...)).failure is None
        assert TelemetryRecord.parse(wire(failure=None)).failure is None

    def test_failure_one(self) -> None:
        assert TelemetryRecord.parse(wire(failure=1)).failure == 1
        assert TelemetryRecord.parse(wire(failure=1.0)).failure == 1

    def test_capacity_unknown(self) -> None:
        record = sample_record(capacity_bytes=-1)
        assert TelemetryRecord.from_json(record.to_json()).capacity_bytes == -1
        assert TelemetryRecord.parse(wire(capacity_bytes=...)).capacity_bytes == -1
        assert TelemetryRecord.parse(wire(capacity_bytes=None)).capacity_bytes == -1
        assert TelemetryRecord.parse(wire(capacity_bytes=0)).capacity_bytes == 0
        assert (
            TelemetryRecord.parse(wire(capacity_bytes=MAX_CAPACITY_BYTES)).capacity_bytes
            == MAX_CAPACITY_BYTES
        )

    def test_minimal_record(self) -> None:
        record = TelemetryRecord.parse({"date": "2013-04-10", "serial_number": "S1"})
        assert record.model == ""
        assert record.capacity_bytes == -1
        assert record.failure is None
        assert record.smart == {}
        assert record.extra == {}

    def test_smart_object_form_only_in_python(self) -> None:
        # The wire has one spelling ([raw, normalized]); Python callers may also pass objects.
        assert rejected(wire(smart={"5": {"raw": 8, "normalized": 100}})).code == "bad_smart"
        record = TelemetryRecord(date=DAY, serial_number="S", smart={5: {"raw": 8, "normalized": 100}, 9: {"raw": 1}})
        assert record.smart == {5: SmartValue(raw=8, normalized=100), 9: SmartValue(raw=1)}
        assert record.raw(5) == 8 and record.normalized(5) == 100
        assert record.raw(9) == 1 and record.normalized(9) is None
        assert record.raw(197) is None and record.normalized(197) is None

    def test_smart_both_missing_is_absent(self) -> None:
        record = TelemetryRecord.parse(wire(smart={"5": [None, None], "9": [1, None]}))
        assert list(record.smart) == [9]
        assert TelemetryRecord.from_json(record.to_json()) == record

    def test_float_raw_kept_integral_float_made_int(self) -> None:
        record = TelemetryRecord.parse(wire(smart={"1": [0.5, None], "9": [4378.0, 100.0]}))
        assert record.raw(1) == 0.5
        assert record.raw(9) == 4378 and isinstance(record.raw(9), int)
        assert record.normalized(9) == 100 and isinstance(record.normalized(9), int)
        assert TelemetryRecord.from_json(record.to_json()) == record

    def test_max_raw(self) -> None:
        record = TelemetryRecord.parse(wire(smart={"5": [MAX_SMART_RAW, 255]}))
        assert TelemetryRecord.from_json(record.to_json()).raw(5) == MAX_SMART_RAW

    def test_strings_trimmed_and_unicode_kept(self) -> None:
        record = TelemetryRecord.parse(
            wire(serial_number="  Z1F0ÄB  ", model=" WDC WD30EFRX ", extra={"n": "é"})
        )
        assert record.serial_number == "Z1F0ÄB"
        assert record.model == "WDC WD30EFRX"
        assert "Ä".encode() in record.to_json()  # UTF-8, not \\u escapes
        assert TelemetryRecord.from_json(record.to_json()) == record

    def test_records_are_frozen(self) -> None:
        record = sample_record()
        with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError
            record.failure = 1  # type: ignore[misc]

    def test_bytearray_and_memoryview_payloads(self) -> None:
        payload = sample_record().to_json()
        assert TelemetryRecord.from_json(bytearray(payload)) == sample_record()
        assert TelemetryRecord.from_json(memoryview(payload)) == sample_record()  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Backblaze CSV rows
# ---------------------------------------------------------------------------


class TestBackblazeRow:
    def test_2013_header_row(self) -> None:
        line = "2013-04-10,S2F0BE6T,ST1500DM003,1500301910016,0," + ",".join(
            {1: ",23972424", 5: ",0", 9: ",4378", 194: ",25", 197: ",0"}.get(n, ",") for n in SMART_IDS_2013
        )
        row = csv_row(HEADER_2013, line)
        assert len(row) == 85
        record = TelemetryRecord.from_backblaze_row(row, unknown_columns="error")
        assert record.date == DAY
        assert record.serial_number == "S2F0BE6T"
        assert record.model == "ST1500DM003"
        assert record.capacity_bytes == 1_500_301_910_016
        assert record.failure == 0
        assert record.smart == {
            1: SmartValue(raw=23972424),
            5: SmartValue(raw=0),
            9: SmartValue(raw=4378),
            194: SmartValue(raw=25),
            197: SmartValue(raw=0),
        }
        assert record.extra == {}

    def test_2024_header_keeps_location_columns(self) -> None:
        values = {
            "date": "2024-06-30",
            "serial_number": "ZLW18P9K",
            "model": "ST14000NM001G",
            "capacity_bytes": "14000519643136",
            "failure": "0",
            "datacenter": "phx1",
            "cluster_id": "0",
            "vault_id": "1030",
            "pod_id": "12",
            "pod_slot_number": "7",
            "is_legacy_format": "0",
            "smart_1_normalized": "83",
            "smart_1_raw": "190061800",
            "smart_5_normalized": "100",
            "smart_5_raw": "0",
            "smart_9_normalized": "67",
            "smart_9_raw": "29343",
            "smart_187_normalized": "100",
            "smart_187_raw": "0",
            "smart_188_normalized": "100",
            "smart_188_raw": "0",
            "smart_194_normalized": "30",
            "smart_194_raw": "30",
            "smart_197_normalized": "100",
            "smart_197_raw": "0",
            "smart_198_normalized": "",
            "smart_198_raw": "",
            "smart_241_normalized": "100",
            "smart_241_raw": "98721471864",
        }
        row = csv_row(HEADER_2024, ",".join(values[c] for c in HEADER_2024))
        for policy in ("ignore", "keep", "error"):
            record = TelemetryRecord.from_backblaze_row(row, unknown_columns=policy)  # type: ignore[arg-type]
            assert record.date == dt.date(2024, 6, 30)
            assert record.extra == {c: values[c] for c in LOCATION_COLUMNS}
            assert record.smart[5] == SmartValue(raw=0, normalized=100)
            assert record.smart[241] == SmartValue(raw=98721471864, normalized=100)
            assert 198 not in record.smart
            assert sorted(record.smart) == [1, 5, 9, 187, 188, 194, 197, 241]
            assert TelemetryRecord.from_json(record.to_json()) == record

    def test_reordered_columns(self) -> None:
        row = row_2013()
        reversed_row = dict(reversed(list(row.items())))
        assert next(iter(reversed_row)) == "smart_255_raw"
        assert TelemetryRecord.from_backblaze_row(reversed_row) == TelemetryRecord.from_backblaze_row(row)
        header = sorted(HEADER_2013)
        via_csv = csv_row(header, ",".join(row[c] for c in header))
        assert TelemetryRecord.from_backblaze_row(via_csv) == TelemetryRecord.from_backblaze_row(row)

    def test_empty_strings_are_missing(self) -> None:
        record = TelemetryRecord.from_backblaze_row(
            row_2013(
                model="",
                capacity_bytes="",
                failure="",
                smart_1_raw="",
                smart_5_raw="  ",
                smart_5_normalized="",
            )
        )
        assert record.model == ""
        assert record.capacity_bytes == -1
        assert record.failure is None
        assert 1 not in record.smart and 5 not in record.smart
        assert sorted(record.smart) == [9, 194, 197]

    def test_none_and_nan_cells_are_missing(self) -> None:
        # csv.DictReader fills short rows with None; pandas rows carry NaN.
        record = TelemetryRecord.from_backblaze_row(
            row_2013(
                model=None, capacity_bytes=math.nan, failure=None, smart_5_raw=math.nan, smart_9_raw=None
            )
        )
        assert record.model == "" and record.capacity_bytes == -1 and record.failure is None
        assert sorted(record.smart) == [1, 194, 197]

    def test_short_row_from_dictreader(self) -> None:
        row = csv_row(HEADER_2013, "2013-04-10,S1,ST1,100,0")
        assert row["smart_1_raw"] is None
        record = TelemetryRecord.from_backblaze_row(row)
        assert record.smart == {} and record.capacity_bytes == 100

    def test_too_long_row_from_dictreader(self) -> None:
        row = csv_row(["date", "serial_number"], "2013-04-10,S1,surplus")
        assert row[None] == ["surplus"]  # type: ignore[index]
        for policy in ("ignore", "keep", "error"):
            with pytest.raises(InvalidRecord) as info:
                TelemetryRecord.from_backblaze_row(row, unknown_columns=policy)  # type: ignore[arg-type]
            assert info.value.code == "malformed_row"

    def test_normalized_and_float_values(self) -> None:
        record = TelemetryRecord.from_backblaze_row(
            row_2013(
                smart_5_normalized="100", smart_5_raw="8.0", smart_1_raw="0.5", smart_9_normalized="98.0"
            )
        )
        assert record.smart[5] == SmartValue(raw=8, normalized=100)
        assert record.raw(1) == 0.5
        assert record.smart[9] == SmartValue(raw=4378, normalized=98)

    def test_unknown_column_policies(self) -> None:
        row = row_2013(rack_color="blue", empty_thing="")
        assert TelemetryRecord.from_backblaze_row(row).extra == {}
        assert TelemetryRecord.from_backblaze_row(row, unknown_columns="ignore").extra == {}
        kept = TelemetryRecord.from_backblaze_row(row, unknown_columns="keep")
        assert kept.extra == {"rack_color": "blue"}
        assert TelemetryRecord.from_json(kept.to_json()) == kept
        with pytest.raises(InvalidRecord) as info:
            TelemetryRecord.from_backblaze_row(row, unknown_columns="error")
        assert info.value.code == "unknown_field"
        assert "rack_color" in info.value.reason

    def test_non_string_values_kept_as_text(self) -> None:
        row = {
            "date": "2013-04-10",
            "serial_number": "S1",
            "pod_id": 12,
            "smart_5_raw": 3,
            "capacity_bytes": 10,
        }
        record = TelemetryRecord.from_backblaze_row(row)
        assert record.extra == {"pod_id": "12"}
        assert record.raw(5) == 3 and record.capacity_bytes == 10

    @pytest.mark.parametrize(
        ("cells", "code"),
        [
            ({"serial_number": ""}, "missing_serial"),
            ({"serial_number": "   "}, "missing_serial"),
            ({"date": ""}, "bad_date"),
            ({"date": "2013-13-01"}, "bad_date"),
            ({"date": "10/04/2013"}, "bad_date"),
            ({"smart_5_raw": "abc"}, "bad_raw"),
            ({"smart_5_raw": "-1"}, "bad_raw"),
            ({"smart_5_raw": "1" * 5000}, "bad_raw"),
            ({"smart_5_normalized": "256"}, "bad_normalized"),
            ({"smart_5_normalized": "3.5"}, "bad_normalized"),
            ({"failure": "2"}, "bad_failure"),
            ({"failure": "yes"}, "bad_failure"),
            ({"capacity_bytes": "-5"}, "bad_capacity"),
            ({"capacity_bytes": "1e16"}, "bad_capacity"),
            ({"smart_0_raw": "1"}, "bad_smart"),
            ({"smart_256_raw": "1"}, "bad_smart"),
        ],
    )
    def test_row_rejections(self, cells: dict[str, str], code: str) -> None:
        with pytest.raises(InvalidRecord) as info:
            TelemetryRecord.from_backblaze_row(row_2013(**cells))
        assert info.value.code == code
        assert len(str(info.value)) < 300

    @pytest.mark.parametrize("drop", ["serial_number", "date"])
    def test_row_missing_base_column(self, drop: str) -> None:
        row = row_2013()
        del row[drop]
        with pytest.raises(InvalidRecord) as info:
            TelemetryRecord.from_backblaze_row(row)
        assert info.value.code == {"serial_number": "missing_serial", "date": "bad_date"}[drop]


# ---------------------------------------------------------------------------
# Serial normalisation, day numbers, severity ranks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    ["Z1F0", " Z1F0", "Z1F0\t", "\ufeffZ1F0", "Z1\u200bF0", "\u2060Z1F0\u200d", "\u00a0Z1F0\u3000"],
)
def test_invisible_characters_do_not_make_a_new_drive(spelling: str) -> None:
    assert TelemetryRecord.parse(wire(serial_number=spelling)).serial_number == "Z1F0"


def test_serials_are_nfc() -> None:
    decomposed = "A\u0308B"  # A + combining diaeresis
    assert TelemetryRecord.parse(wire(serial_number=decomposed)).serial_number == "\u00c4B"
    assert normalize_serial(decomposed) == normalize_serial("\u00c4B")


def test_day_numbers_count_from_the_epoch() -> None:
    assert dt.date(1970, 1, 1) == EPOCH and day_number(EPOCH) == 0
    assert from_day_number(day_number(DAY)) == DAY


def test_severity_ranks() -> None:
    assert [s.rank for s in Severity] == [1, 2]
    assert Severity.from_rank(1) is Severity.WARNING and Severity.from_rank(2) is Severity.CRITICAL
    with pytest.raises(ValueError):
        Severity.from_rank(0)


# ---------------------------------------------------------------------------
# Rejections with their exact codes
# ---------------------------------------------------------------------------


REJECTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("serial absent", wire(serial_number=...), "missing_serial"),
    ("serial empty", wire(serial_number=""), "missing_serial"),
    ("serial whitespace", wire(serial_number=" \t "), "missing_serial"),
    ("serial null", wire(serial_number=None), "missing_serial"),
    ("serial only invisible", wire(serial_number="\u200b\ufeff "), "missing_serial"),
    ("serial number", wire(serial_number=12345), "bad_serial"),
    ("serial list", wire(serial_number=["S1"]), "bad_serial"),
    ("serial too long", wire(serial_number="S" * 129), "bad_serial"),
    ("serial 10,000 chars", wire(serial_number="S" * 10_000), "bad_serial"),
    ("serial control char", wire(serial_number="S1\x00"), "bad_serial"),
    ("serial inner newline", wire(serial_number="S\n1"), "bad_serial"),
    ("date absent", wire(date=...), "bad_date"),
    ("date month 13", wire(date="2013-13-01"), "bad_date"),
    ("date word", wire(date="yesterday"), "bad_date"),
    ("date int", wire(date=20130410), "bad_date"),
    ("date basic format", wire(date="20130410"), "bad_date"),
    ("date iso week", wire(date="2013-W15-3"), "bad_date"),
    ("date with time", wire(date="2013-04-10T00:00:00"), "bad_date"),
    ("date null", wire(date=None), "bad_date"),
    ("date padded", wire(date=" 2013-04-10"), "bad_date"),
    ("date trailing newline", wire(date="2013-04-10\n"), "bad_date"),
    ("date unicode digits", wire(date="٢٠١٣-04-10"), "bad_date"),
    ("raw text", wire(smart={"5": ["abc", None]}), "bad_raw"),
    ("raw negative", wire(smart={"5": [-1, None]}), "bad_raw"),
    ("raw over 64 bits", wire(smart={"5": [MAX_SMART_RAW + 1, None]}), "bad_raw"),
    ("raw bool", wire(smart={"5": [True, None]}), "bad_raw"),
    ("raw list", wire(smart={"5": [[1], None]}), "bad_raw"),
    ("raw underscore digits", wire(smart={"5": ["1_000", None]}), "bad_raw"),
    ("raw as string", wire(smart={"5": ["7", None]}), "bad_raw"),
    ("normalized as string", wire(smart={"5": [7, "100"]}), "bad_normalized"),
    ("normalized 256", wire(smart={"5": [0, 256]}), "bad_normalized"),
    ("normalized -1", wire(smart={"5": [0, -1]}), "bad_normalized"),
    ("normalized 3.5", wire(smart={"5": [0, 3.5]}), "bad_normalized"),
    ("normalized bool", wire(smart={"5": [0, False]}), "bad_normalized"),
    ("failure 2", wire(failure=2), "bad_failure"),
    ("failure yes", wire(failure="yes"), "bad_failure"),
    ("failure bool", wire(failure=True), "bad_failure"),
    ("failure -1", wire(failure=-1), "bad_failure"),
    ("capacity -5", wire(capacity_bytes=-5), "bad_capacity"),
    ("capacity 1e16", wire(capacity_bytes=10**16), "bad_capacity"),
    ("capacity bool", wire(capacity_bytes=True), "bad_capacity"),
    ("capacity fraction", wire(capacity_bytes=1.5), "bad_capacity"),
    ("capacity text", wire(capacity_bytes="big"), "bad_capacity"),
    ("capacity as string", wire(capacity_bytes="4000787030016"), "bad_capacity"),
    ("capacity as exponent string", wire(capacity_bytes="4e12"), "bad_capacity"),
    ("failure as string", wire(failure="1"), "bad_failure"),
    ("model number", wire(model=3), "bad_model"),
    ("extra list", wire(extra=["x"]), "bad_extra"),
    ("extra non-text value", wire(extra={"pod_id": 12}), "bad_extra"),
    ("unknown top-level field", wire(temperature=30), "unknown_field"),
    ("smart id 0", wire(smart={"0": [1, None]}), "bad_smart"),
    ("smart id 256", wire(smart={"256": [1, None]}), "bad_smart"),
    ("smart id x", wire(smart={"x": [1, None]}), "bad_smart"),
    ("smart id padded", wire(smart={"05": [1, None]}), "bad_smart"),
    ("smart id negative", wire(smart={"-5": [1, None]}), "bad_smart"),
    ("smart id twice", wire(smart={"5": [1, None], " 5": [2, None]}), "bad_smart"),
    ("smart not object", wire(smart=[[5, 1, None]]), "bad_smart"),
    ("smart null", wire(smart=None), "bad_smart"),
    ("smart pair of three", wire(smart={"5": [1, 2, 3]}), "bad_smart"),
    ("smart pair text", wire(smart={"5": "1"}), "bad_smart"),
    ("smart pair unknown key", wire(smart={"5": {"worst": 1}}), "bad_smart"),
    ("smart pair as object", wire(smart={"5": {"raw": 3}}), "bad_smart"),
]


@pytest.mark.parametrize(
    ("data", "code"), [(d, c) for _, d, c in REJECTIONS], ids=[n for n, _, _ in REJECTIONS]
)
def test_rejection_codes(data: dict[str, Any], code: str) -> None:
    error = rejected(data)
    assert error.code == code, error
    assert error.reason
    assert str(error).startswith(f"{code}: ")
    assert isinstance(error, ValueError)
    # the JSON path gives the same verdict
    assert rejected_json(json.dumps(data)).code == code


def test_every_code_is_documented() -> None:
    """Each code raised in core/ is in REASON_CODES, and the README's table names each one."""
    core = Path(__file__).resolve().parents[2] / "core"
    raised = set()
    for source in core.glob("*.py"):
        raised |= set(re.findall(r'(?:InvalidRecord|_CodedError)\(\s*"(\w+)"', source.read_text()))
    assert {code for _, _, code in REJECTIONS} | raised <= set(REASON_CODES)
    assert {"tombstone", "empty_message", "oversized", "future_date", "bad_serial"} <= raised
    readme = (core.parent / "README.md").read_text()
    assert [code for code in REASON_CODES if f"`{code}`" not in readme] == []


def test_reasons_are_precise() -> None:
    assert "smart[5]" in rejected(wire(smart={"5": [0, 256]})).reason
    assert "256" in rejected(wire(smart={"5": [0, 256]})).reason
    assert "temperature" in rejected(wire(temperature=30)).reason
    assert "2013-13-01" in rejected(wire(date="2013-13-01")).reason
    assert "boolean" in rejected(wire(capacity_bytes=True)).reason


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"date":"2013-04-10","serial_number":', "malformed_json"),
        (b"", "empty_message"),
        (b"not json", "malformed_json"),
        (b"{'date': '2013-04-10'}", "malformed_json"),
        (b'{"date":"2013-04-10","serial_number":"S\xff\xfe"}', "malformed_json"),  # not UTF-8
        (b"\xff\xfe{\x00}\x00", "malformed_json"),  # UTF-16 with BOM is not the wire format
        (b"\x80\x81\x82", "malformed_json"),
        (b"1" * 5000, "malformed_json"),  # over Python's int digit limit
        (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),  # deeper than the recursion limit
        (b"[]", "not_an_object"),
        (b'[{"date":"2013-04-10","serial_number":"S1"}]', "not_an_object"),
        (b'"a string"', "not_an_object"),
        (b"null", "not_an_object"),
        (b"42", "not_an_object"),
        (b'{"date":"2013-04-10","serial_number":"S\\ud800"}', "bad_serial"),  # lone surrogate
        (b'{"date":"2013-04-10","serial_number":"S1","model":"\\udfff"}', "bad_model"),
        (b'{"date":"2013-04-10","serial_number":"S1","smart":{"5":[NaN,null]}}', "bad_raw"),
        (b'{"date":"2013-04-10","serial_number":"S1","smart":{"5":[Infinity,null]}}', "bad_raw"),
    ],
)
def test_payload_rejections(payload: bytes, code: str) -> None:
    assert rejected_json(payload).code == code


def test_non_bytes_payload_rejected() -> None:
    assert rejected_json(None).code == "tombstone"  # type: ignore[arg-type]
    assert rejected_json(12).code == "malformed_json"  # type: ignore[arg-type]
    assert rejected(["date"]).code == "not_an_object"  # type: ignore[arg-type]


def test_smart_value_model_rejects_directly() -> None:
    with pytest.raises(ValueError):
        SmartValue(raw=-1)
    with pytest.raises(ValueError):
        SmartValue(normalized=300)


# ---------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------

serials = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=40
).filter(lambda s: normalize_serial(s) != "")
raws = st.one_of(
    st.none(),
    st.integers(0, MAX_SMART_RAW),
    st.floats(0, 1e19, allow_nan=False, allow_infinity=False),
)
normals = st.one_of(st.none(), st.integers(0, 255))
records = st.builds(
    TelemetryRecord,
    date=st.dates(),
    serial_number=serials,
    model=st.text(max_size=40),
    capacity_bytes=st.one_of(st.just(-1), st.integers(0, MAX_CAPACITY_BYTES)),
    failure=st.sampled_from([None, 0, 1]),
    smart=st.dictionaries(st.integers(1, 255), st.tuples(raws, normals), max_size=12),
    extra=st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=4),
)

wire_forms = records.map(lambda record: json.loads(record.to_json()))

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    # lone surrogates arrive as "\\ud800" escapes in valid UTF-8 JSON
    st.text(st.characters(categories=("Cs", "Lu", "Nd")), min_size=1, max_size=3),
    st.sampled_from(["2013-04-10", "5", "", " ", "1e400", "-0", "255", "NaN"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["date", "serial_number", "model", "capacity_bytes", "failure", "smart", "extra", "other"]
)
smart_keys = st.one_of(st.integers(-2, 300).map(str), st.text(max_size=4))
smartish = st.dictionaries(
    smart_keys,
    st.one_of(
        st.lists(json_scalars, max_size=3),
        st.dictionaries(st.sampled_from(["raw", "normalized", "x"]), json_scalars, max_size=3),
        json_scalars,
    ),
    max_size=4,
)
recordish = st.one_of(
    st.dictionaries(field_names, json_values, max_size=8),
    # a valid record with one field replaced by anything
    st.builds(
        lambda wire_form, name, value: {**wire_form, name: value}, wire_forms, field_names, json_values
    ),
    st.fixed_dictionaries(
        {"date": st.sampled_from(["2013-04-10", "2013-4-10", "x"]), "serial_number": json_scalars},
        optional={
            "smart": st.one_of(smartish, json_values),
            "capacity_bytes": json_scalars,
            "failure": json_scalars,
            "model": json_scalars,
            "extra": json_values,
        },
    ),
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _accepted_is_stable(record: TelemetryRecord) -> None:
    """Anything accepted must serialise and read back as itself."""
    assert TelemetryRecord.from_json(record.to_json()) == record


@FAST
@given(records)
def test_property_valid_records_round_trip(record: TelemetryRecord) -> None:
    payload = record.to_json()
    again = TelemetryRecord.from_json(payload)
    assert again == record
    assert again.to_json() == payload


@FAST
@given(st.one_of(json_values, recordish))
def test_property_any_json_value_parses_or_invalid(value: Any) -> None:
    payload = json.dumps(value)  # may contain NaN/Infinity, which json.loads accepts
    try:
        record = TelemetryRecord.from_json(payload)
    except InvalidRecord as error:
        assert error.code and error.reason
    else:
        _accepted_is_stable(record)


@FAST
@given(st.one_of(st.binary(max_size=200), recordish.map(lambda v: json.dumps(v).encode()[:-1])))
def test_property_any_bytes_parse_or_invalid(payload: bytes) -> None:
    try:
        record = TelemetryRecord.from_json(payload)
    except InvalidRecord as error:
        assert error.code and error.reason
    else:
        _accepted_is_stable(record)


# Surrogates (from "\\ud800" escapes), control characters and blanks are rare in plain st.text().
any_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=20),
    st.text(st.characters(categories=("Cs", "Cc", "Zs", "Lu", "Nd")), max_size=6),
)


@FAST
@given(
    wire_forms,
    st.sampled_from(["serial_number", "model", "extra_key", "extra_value", "date"]),
    any_text,
)
def test_property_any_text_field_parses_or_invalid(wire_form: dict[str, Any], target: str, text: str) -> None:
    if target == "extra_key":
        wire_form["extra"] = {text: "v"}
    elif target == "extra_value":
        wire_form["extra"] = {"k": text}
    else:
        wire_form[target] = text
    payload = json.dumps(wire_form)  # ASCII with \\u escapes, so lone surrogates survive the trip
    try:
        record = TelemetryRecord.from_json(payload.encode())
    except InvalidRecord as error:
        assert error.code
    else:
        _accepted_is_stable(record)


@FAST
@given(st.text(max_size=200))
def test_property_any_text_parse_or_invalid(payload: str) -> None:
    with contextlib.suppress(InvalidRecord):
        TelemetryRecord.from_json(payload)


not_text = st.one_of(
    st.booleans(), st.integers(), st.floats(), st.lists(json_scalars, max_size=2), st.just({})
)
not_number = st.one_of(
    st.booleans(),
    st.lists(json_scalars, max_size=2),
    st.dictionaries(st.text(max_size=3), json_scalars, max_size=2),
    st.text(alphabet="abcxyz_-:/ ", min_size=1, max_size=10).filter(lambda s: s.strip() != ""),
)
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "date": st.one_of(st.none(), not_text),
    "serial_number": st.one_of(st.none(), not_text),
    "model": not_text,
    "capacity_bytes": not_number,
    "failure": not_number,
    "smart": st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.lists(st.integers())),
    "extra": st.one_of(
        st.booleans(),
        st.integers(),
        st.text(max_size=5),
        st.lists(st.text(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.one_of(st.none(), st.integers(), st.booleans()), min_size=1),
    ),
    "smart_raw": not_number,
    "smart_normalized": st.one_of(not_number, st.floats().filter(lambda f: not f.is_integer())),
}


@FAST
@given(records, st.data())
def test_property_wrong_typed_field_rejected(record: TelemetryRecord, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(sorted(WRONG)), label="field")
    bad = data.draw(WRONG[target], label="value")
    payload = json.loads(record.to_json())
    if target in ("smart_raw", "smart_normalized"):
        attr = data.draw(st.integers(1, 255).map(str), label="attr")
        pair = payload["smart"].get(attr, [1, 1])
        pair[0 if target == "smart_raw" else 1] = bad
        payload["smart"][attr] = pair
    else:
        payload[target] = bad
    with pytest.raises(InvalidRecord):
        TelemetryRecord.parse(payload)
    with pytest.raises(InvalidRecord):
        TelemetryRecord.from_json(json.dumps(payload))


# ---------------------------------------------------------------------------
# Real Backblaze data
# ---------------------------------------------------------------------------

REAL_FILES = {"2013-04-10": (11_825, 1), "2013-04-16": (11_765, 3)}  # rows, failure=1 rows


@pytest.mark.real_data
@pytest.mark.parametrize("day", sorted(REAL_FILES))
def test_real_daily_file_parses(backblaze_dir: Path, day: str) -> None:
    path = backblaze_dir / "daily_2013" / f"{day}.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == HEADER_2013
        rows = list(reader)
    records: list[TelemetryRecord] = []
    rejections: list[tuple[int, InvalidRecord]] = []
    for number, row in enumerate(rows):
        try:
            records.append(TelemetryRecord.from_backblaze_row(row, unknown_columns="error"))
        except InvalidRecord as error:
            rejections.append((number, error))
    assert rejections == []
    expected_rows, expected_failures = REAL_FILES[day]
    assert len(records) == expected_rows
    assert len({r.serial_number for r in records}) == expected_rows
    assert {r.date for r in records} == {dt.date.fromisoformat(day)}
    for record in records:
        # 2013 rows carry exactly these five raw attributes and no normalized values.
        assert sorted(record.smart) == [1, 5, 9, 194, 197]
        assert all(v.raw is not None and v.normalized is None for v in record.smart.values())
        assert record.capacity_bytes > 0
        assert record.model
        assert record.failure in (0, 1)
        assert record.extra == {}
    failed = [r for r in records if r.failure == 1]
    assert len(failed) == expected_failures
    assert all(r.raw(9) is not None and r.raw(9) > 0 for r in failed)
    assert max(r.raw(194) for r in records) < 100  # temperatures in °C
    # the wire form carries them unchanged
    for record in records[:500] + failed:
        assert TelemetryRecord.from_json(record.to_json()) == record


# ---------------------------------------------------------------------------
# DeadLetter
# ---------------------------------------------------------------------------


class TestDeadLetter:
    error = InvalidRecord("malformed_json", "not valid JSON: Expecting value")

    def test_non_utf8_kept_as_base64(self) -> None:
        payload = b'{"serial_number":"\xff\xfe\x00 bad"}'
        letter = DeadLetter.from_payload(payload, self.error, key=b"S1", topic="t", partition=2, offset=41)
        assert letter.payload_encoding == "base64"
        assert base64.b64decode(letter.payload) == payload
        assert letter.original_payload() == payload
        assert letter.reason_code == "malformed_json"
        assert letter.reason == "not valid JSON: Expecting value"
        assert (letter.key, letter.source_topic) == ("S1", "t")
        assert (letter.source_partition, letter.source_offset) == (2, 41)
        assert letter.failed_at.tzinfo is not None

    def test_utf8_kept_as_text(self) -> None:
        payload = '{"serial_number":"Ä1", broken'.encode()
        letter = DeadLetter.from_payload(payload, self.error)
        assert letter.payload_encoding == "utf-8"
        assert letter.payload == '{"serial_number":"Ä1", broken'
        assert letter.original_payload() == payload

    def test_str_and_none_payloads(self) -> None:
        assert DeadLetter.from_payload("abc", self.error).original_payload() == b"abc"
        tombstone = DeadLetter.from_payload(None, self.error)
        assert tombstone.payload is None and tombstone.original_payload() is None
        assert tombstone.payload_length == 0 and tombstone.payload_sha256 is None
        empty = DeadLetter.from_payload(b"", self.error)
        assert empty.payload == "" and empty.original_payload() == b""
        assert empty.payload_sha256 == hashlib.sha256(b"").hexdigest()
        assert json.loads(tombstone.to_json())["payload"] is None and json.loads(empty.to_json())["payload"] == ""

    def test_surrogate_str_payload_stays_serialisable(self) -> None:
        original = b"a\xff"
        text = original.decode("utf-8", "surrogateescape")
        letter = DeadLetter.from_payload(text, self.error, key="k\ud800")
        assert letter.payload_encoding == "base64"
        assert letter.original_payload() == original
        again = DeadLetter.model_validate_json(letter.to_json())
        assert again.original_payload() == original

    def test_json_round_trip(self) -> None:
        letter = DeadLetter.from_payload(b"\x00\x01\xfe", self.error, key=b"\xff", topic="smart-telemetry")
        again = DeadLetter.model_validate_json(letter.to_json())
        assert again == letter
        assert again.original_payload() == b"\x00\x01\xfe"
        assert json.loads(letter.to_json())["schema_version"] == 1

    def test_large_payload_is_cut_and_identified(self) -> None:
        payload = bytes(range(256)) * 3200  # ~800 KB of binary: the message that stalled the worker
        letter = DeadLetter.from_payload(payload, InvalidRecord("oversized", "x"), key=b"K" * 5000)
        assert len(letter.to_json()) < 20_000  # far under Kafka's 1 MB default
        assert letter.payload_truncated and letter.payload_length == len(payload)
        assert letter.payload_sha256 == hashlib.sha256(payload).hexdigest()
        assert letter.original_payload() == payload[:DEAD_LETTER_PAYLOAD_BYTES]
        assert letter.key is not None and len(letter.key) == 1024

    def test_cut_inside_a_character_stays_text(self) -> None:
        payload = "é".encode() * 10  # 2 bytes per character; a cut at 5 bytes splits one
        letter = DeadLetter.from_payload(payload, self.error, max_payload_bytes=5)
        assert (letter.payload, letter.payload_encoding, letter.payload_truncated) == ("éé", "utf-8", True)

    def test_long_reason_is_cut(self) -> None:
        letter = DeadLetter.from_payload(b"x", InvalidRecord("unknown_field", "f" * 100_000))
        assert len(letter.reason) == 1024 and not letter.payload_truncated

    @FAST
    @given(st.binary(max_size=300))
    def test_property_any_bytes_lossless(self, payload: bytes) -> None:
        letter = DeadLetter.from_payload(payload, self.error)
        assert DeadLetter.model_validate_json(letter.to_json()).original_payload() == payload


# ---------------------------------------------------------------------------
# Alert
# ---------------------------------------------------------------------------


def make_alert(**changes: Any) -> Alert:
    data: dict[str, Any] = {
        "idempotency_key": Alert.make_key("S1F0R1HJ", dt.date(2013, 4, 16), "2024.06.1"),
        "serial_number": "S1F0R1HJ",
        "model": "ST3000DM001",
        "date": dt.date(2013, 4, 16),
        "window_start": dt.date(2013, 4, 3),
        "window_end": dt.date(2013, 4, 16),
        "severity": Severity.CRITICAL,
        "failure_probability": 0.93,
        "anomaly_score": 4.25,
        "classifier_threshold": 0.5,
        "anomaly_threshold": 1.75,
        "horizon_days": 7,
        "reasons": [AlertReason(attribute=5, feature="smart_5_raw", raw_value=1432.0, error_share=0.61)],
        "life_expectancy": LifeExpectancy.BAD,
        "predicted_days_to_failure": 3.5,
        "bundle_version": "2024.06.1",
        "created_at": dt.datetime(2024, 6, 30, 12, 0, tzinfo=dt.UTC),
    }
    data.update(changes)
    return Alert(**data)


class TestAlert:
    def test_make_key_format(self) -> None:
        assert Alert.make_key("S1F0R1HJ", dt.date(2013, 4, 16), "v3") == "S1F0R1HJ|2013-04-16|v3"
        assert Alert.make_key("Z", dt.date(999, 1, 2), "") == "Z|0999-01-02|"

    def test_severity_rank_order(self) -> None:
        assert Severity.WARNING.rank < Severity.CRITICAL.rank
        assert sorted(Severity, key=lambda s: s.rank) == [Severity.WARNING, Severity.CRITICAL]
        assert max(Severity, key=lambda s: s.rank) is Severity.CRITICAL
        assert Severity("critical") is Severity.CRITICAL

    def test_json_round_trip(self) -> None:
        alert = make_alert()
        payload = alert.to_json()
        again = Alert.model_validate_json(payload)
        assert again == alert
        data = json.loads(payload)
        assert data["severity"] == "critical"
        assert data["schema_version"] == 1
        assert data["date"] == "2013-04-16"
        assert data["life_expectancy"] == "bad"
        assert data["reasons"][0]["attribute"] == 5
        assert Alert.model_validate(data) == alert

    def test_minimal_alert_round_trip(self) -> None:
        alert = make_alert(reasons=[], life_expectancy=None, predicted_days_to_failure=None)
        assert Alert.model_validate_json(alert.to_json()) == alert

    @pytest.mark.parametrize(
        "changes",
        [
            {"failure_probability": 1.5},
            {"failure_probability": -0.1},
            {"anomaly_score": -1.0},
            {"severity": "info"},
            {"schema_version": 2},
            {"unexpected": 1},
            # JSON has no NaN/Infinity; such an alert would be written with nulls nobody can read back.
            {"anomaly_score": math.inf},
            {"classifier_threshold": math.nan},
            {"predicted_days_to_failure": math.inf},
        ],
    )
    def test_invalid_alerts(self, changes: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            make_alert(**changes)

    def test_reason_nan_raw_value_means_missing(self) -> None:
        reason = AlertReason(attribute=197, feature="smart_197_raw", raw_value=math.nan, error_share=0.2)
        assert reason.raw_value is None
        alert = make_alert(reasons=[reason])
        assert Alert.model_validate_json(alert.to_json()) == alert
        with pytest.raises(ValueError):
            AlertReason(attribute=0, feature="x", raw_value=None, error_share=0.1)
        with pytest.raises(ValueError):
            AlertReason(attribute=5, feature="x", raw_value=None, error_share=1.5)
