"""The worker's batch decoder gives exactly the verdicts and values of the full parser."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from diskwatch.core.records import InvalidRecord, TelemetryRecord
from diskwatch.core.wire import decode_batch
from diskwatch.models.features import FeatureSpec
from diskwatch.models.windows import day_number
from tests.unit.test_records import FAST, REJECTIONS, recordish, records, wire

COLUMNS = [*FeatureSpec().wire_columns, (5, "normalized"), (231, "raw")]


def full_parse(payload: bytes | None) -> tuple[str, int, str, list[float]] | str:
    """What TelemetryRecord says: the decoded row, or the rejection code."""
    try:
        record = TelemetryRecord.from_json(payload if payload is not None else b"")
    except InvalidRecord as error:
        return error.code
    values = []
    for attr, part in COLUMNS:
        value = record.raw(attr) if part == "raw" else record.normalized(attr)
        values.append(np.nan if value is None else float(value))
    return record.serial_number, day_number(record.date), record.model, values


def assert_same_verdicts(payloads: list[bytes | None]) -> None:
    batch = decode_batch(payloads, COLUMNS)
    assert len(batch.index) + len(batch.errors) == len(payloads)
    rows = dict(zip(batch.index, range(len(batch.index)), strict=True))
    errors = dict(batch.errors)
    for i, payload in enumerate(payloads):
        expected = full_parse(payload)
        if isinstance(expected, str):
            assert i in errors and errors[i].code == expected, (payload, expected)
            continue
        r = rows[i]
        assert (batch.serials[r], int(batch.days[r]), batch.models[r]) == expected[:3], payload
        np.testing.assert_array_equal(batch.values[r], np.asarray(expected[3]))


@FAST
@given(st.lists(records, max_size=5))
def test_valid_records_decode_like_the_full_parser(batch: list[TelemetryRecord]) -> None:
    assert_same_verdicts([r.to_json() for r in batch])


@FAST
@given(st.lists(recordish.map(lambda v: json.dumps(v).encode()), max_size=5))
def test_arbitrary_objects_get_the_full_parsers_verdict(payloads: list[bytes]) -> None:
    assert_same_verdicts(payloads)


@FAST
@given(st.lists(st.one_of(st.binary(max_size=60), st.none()), max_size=4))
def test_arbitrary_bytes_get_the_full_parsers_verdict(payloads: list[bytes | None]) -> None:
    assert_same_verdicts(payloads)


def test_every_documented_rejection_keeps_its_code() -> None:
    payloads = [json.dumps(data).encode() for _, data, _ in REJECTIONS]
    batch = decode_batch(payloads, COLUMNS)
    assert batch.index == []
    assert [e.code for _, e in batch.errors] == [code for _, _, code in REJECTIONS]


def test_wire_form_takes_the_fast_path_and_odd_forms_still_decode() -> None:
    plain = json.dumps(wire()).encode()
    spaced = json.dumps({**wire(), "serial_number": "  Z1  "}).encode()  # stripped by the full parser
    floats = json.dumps({**wire(), "smart": {"5": [3.0, 100]}}).encode()  # 3.0 is the integer 3
    dup = b'{"date":"2013-04-10","serial_number":"A","serial_number":"B"}'
    tricky: list[Any] = [plain, spaced, floats, dup, b"{}", None]
    batch = decode_batch(tricky, COLUMNS)
    assert batch.fast == 2  # the plain wire form and the duplicate key (last wins, as in json)
    assert_same_verdicts(tricky)
    assert batch.serials[1] == "Z1" and batch.values[2][COLUMNS.index((5, "raw"))] == 3.0


def test_empty_batch() -> None:
    batch = decode_batch([], COLUMNS)
    assert batch.values.shape == (0, len(COLUMNS)) and batch.days.shape == (0,)
