"""The worker's batch decoder gives exactly the verdicts and values of the full parser."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from diskwatch.core.records import InvalidRecord, TelemetryRecord, day_number
from diskwatch.core.wire import _WIRE, InputLimits, _fast, _quick, decode_batch, decode_checked, encode
from diskwatch.models.features import FeatureSpec
from tests.unit.test_records import FAST, REJECTIONS, recordish, records, wire

COLUMNS = [*FeatureSpec().wire_columns, (5, "normalized"), (231, "raw")]
TODAY = dt.date(2024, 6, 1)
LIMITS = InputLimits(max_record_bytes=2048, clock=lambda: TODAY)  # a fixed clock: verdicts repeat

# Records dated where the worker takes them (2000-01-01 .. clock + 2 days), and around both edges.
plausible = st.builds(
    lambda record, day: record.model_copy(update={"date": day}),
    records,
    st.dates(dt.date(1999, 12, 25), TODAY + dt.timedelta(days=5)),
)
# Serials as a producer might send them: blanks, zero-width characters, BOM, decomposed letters.
odd_serials = st.lists(st.sampled_from(["Z", "1", " ", "\t", "\u200b", "\ufeff", "\u2060", "A\u0308", "\x00"])).map("".join)


def full_parse(payload: bytes | None) -> tuple[str, int, str, list[float]] | str:
    """What the reference path says: the decoded row, or the rejection code."""
    try:
        record = decode_checked(payload, LIMITS)
    except InvalidRecord as error:
        return error.code
    values = []
    for attr, part in COLUMNS:
        value = record.raw(attr) if part == "raw" else record.normalized(attr)
        values.append(np.nan if value is None else float(value))
    return record.serial_number, day_number(record.date), record.model, values


def assert_same_verdicts(payloads: list[bytes | None]) -> None:
    batch = decode_batch(payloads, COLUMNS, LIMITS)
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
@given(st.lists(plausible, max_size=5))
def test_valid_records_decode_like_the_full_parser(batch: list[TelemetryRecord]) -> None:
    assert_same_verdicts([encode(r) for r in batch])


@FAST
@given(st.lists(odd_serials.map(lambda s: json.dumps(wire(serial_number=s)).encode()), max_size=5))
def test_odd_serials_get_the_full_parsers_verdict(payloads: list[bytes]) -> None:
    assert_same_verdicts(payloads)


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
    batch = decode_batch(payloads, COLUMNS, InputLimits(max_record_bytes=1 << 20))
    assert batch.index == []
    assert [e.code for _, e in batch.errors] == [code for _, _, code in REJECTIONS]


def test_wire_form_takes_the_fast_path_and_odd_forms_still_decode() -> None:
    plain = json.dumps(wire()).encode()
    spaced = json.dumps({**wire(), "serial_number": "  Z1  "}).encode()  # stripped by the full parser
    floats = json.dumps({**wire(), "smart": {"5": [3.0, 100]}}).encode()  # 3.0 is the integer 3
    dup = b'{"date":"2013-04-10","serial_number":"A","serial_number":"B"}'
    tricky: list[Any] = [plain, spaced, floats, dup, b"{}", None]
    batch = decode_batch(tricky, COLUMNS, LIMITS)
    assert batch.fast == 2  # the plain wire form and the duplicate key (last wins, as in json)
    assert_same_verdicts(tricky)
    assert batch.serials[1] == "Z1" and batch.values[2][COLUMNS.index((5, "raw"))] == 3.0


def test_size_and_date_rules() -> None:
    def dated(day: dt.date) -> bytes:
        return json.dumps(wire(date=day.isoformat())).encode()

    padded = json.dumps(wire(model="M" * 3000)).encode()
    payloads: list[bytes | None] = [
        None, b"", padded, dated(dt.date(1999, 12, 31)), dated(dt.date(2000, 1, 1)),
        dated(TODAY + dt.timedelta(days=2)), dated(TODAY + dt.timedelta(days=3)), dated(dt.date(2099, 1, 1)),
    ]
    batch = decode_batch(payloads, COLUMNS, LIMITS)
    codes = {i: e.code for i, e in batch.errors}
    assert codes == {0: "tombstone", 1: "empty_message", 2: "oversized", 3: "bad_date", 6: "future_date", 7: "future_date"}
    assert batch.index == [4, 5]
    assert "2099-01-01" in dict(batch.errors)[7].reason
    assert_same_verdicts(payloads)


def test_limits_from_settings() -> None:
    from diskwatch.core.settings import Settings

    limits = InputLimits.from_settings(Settings(max_record_bytes=4096, future_skew_days=0, min_date="2010-01-01"))
    assert (limits.max_record_bytes, limits.future_skew_days, limits.min_date) == (4096, 0, dt.date(2010, 1, 1))
    first, last = limits.day_bounds()
    assert first == day_number(dt.date(2010, 1, 1)) and last == day_number(dt.datetime.now(dt.UTC).date())


def test_empty_batch() -> None:
    batch = decode_batch([], COLUMNS)
    assert batch.values.shape == (0, len(COLUMNS)) and batch.days.shape == (0,)


# The fast path's two tiers (msgspec's typed decoder, then orjson + Python checks) agree on
# every payload: the typed tier accepts nothing the orjson tier would refuse or read differently.
def assert_tiers_agree(payloads: list[bytes | None]) -> None:
    wanted = [(str(a), 0 if p == "raw" else 1) for a, p in COLUMNS]
    ids = [(int(a), p) for a, p in wanted]
    for payload in payloads:
        quick, fast = _quick(payload, wanted, ids), _fast(payload, wanted)
        assert quick == fast, payload


@FAST
@given(st.lists(plausible, max_size=5))
def test_typed_tier_agrees_on_valid_records(batch: list[TelemetryRecord]) -> None:
    assert_tiers_agree([encode(r) for r in batch])


@FAST
@given(st.lists(st.one_of(recordish.map(lambda v: json.dumps(v).encode()),
                          odd_serials.map(lambda s: json.dumps(wire(serial_number=s)).encode()),
                          st.binary(max_size=60)), max_size=5))
def test_typed_tier_agrees_on_odd_input(payloads: list[bytes]) -> None:
    assert_tiers_agree(payloads)


def test_typed_tier_hands_what_it_cannot_bound_to_the_orjson_tier() -> None:
    huge = json.dumps({**wire(), "smart": {"5": [2**63, 100], "9": [1, 2]}}).encode()  # above int64, valid
    over = json.dumps({**wire(), "smart": {"5": [2**64, 100]}}).encode()  # above the model's limit
    keys = [json.dumps({**wire(), "smart": {k: [1, 2]}}).encode() for k in ("05", "+5", " 5", "5.0", "256", "0")]
    controls = [json.dumps(wire()).encode().replace(b'"date"', b'\x0c"date"'), b'{"date":"2013-04-10","serial_number":"A\\u0000"}']
    payloads = [huge, over, *keys, *controls]
    assert_tiers_agree(payloads)
    assert_same_verdicts(payloads)
    batch = decode_batch(payloads, COLUMNS, LIMITS)
    assert batch.index == [0] and batch.values[0][COLUMNS.index((5, "raw"))] == float(2**63)
    typed = _WIRE.decode(json.dumps(wire()).encode())  # the plain wire form takes the typed tier
    assert typed.smart and all(type(k) is int for k in typed.smart)
