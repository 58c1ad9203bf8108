"""The wire codec: telemetry records to and from the bytes on the Kafka topic.

One module owns the format, in both directions and at both speeds:

* :func:`encode` / :func:`decode` — one :class:`TelemetryRecord` to compact
  JSON and back (the *reference path*: the model's validators decide).
* :func:`encode_table` — a whole day of a Backblaze table at once, column-wise
  with Arrow (replay), byte-for-byte what :func:`encode` writes.
* :func:`decode_batch` — the worker's *fast path*: payloads in the exact shape
  :func:`encode` writes are checked with straight-line code and only the model
  columns are read; anything else goes through :func:`decode`, which accepts
  it (its values are then used) or rejects it with the precise reason. So the
  fast path never rejects anything itself, and a property test checks that it
  accepts nothing the reference path would reject or decode differently.
  The fast path has two tiers: a typed msgspec decoder (:class:`_Wire`: JSON
  parsing, types, ranges and SMART ids checked in C, ≈ 4× the speed of
  orjson + Python checks) and, for any payload it refuses, the orjson checks
  of :func:`_fast`; its refusals are never verdicts either.

Both paths then apply the same :class:`InputLimits` (record size, date floor,
future skew): rules that depend on the worker's settings and clock, so they
are not part of the record model or its published schema.
"""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from diskwatch.core.records import (
    DEAD_LETTER_PAYLOAD_BYTES,
    EPOCH,
    MAX_CAPACITY_BYTES,
    MAX_SERIAL_LEN,
    MAX_SMART_RAW,
    SMART_COLUMN,
    InvalidRecord,
    TelemetryRecord,
    day_number,
    from_day_number,
)
from diskwatch.core.settings import Settings

_FIELDS = frozenset(TelemetryRecord.model_fields)
_RAW, _NORMALIZED = 0, 1


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


@dataclass(frozen=True)
class InputLimits:
    """What the worker accepts beyond the record model: size and plausible dates."""

    max_record_bytes: int = 64 * 1024
    min_date: dt.date = dt.date(2000, 1, 1)
    future_skew_days: int = 2
    dead_letter_payload_bytes: int = DEAD_LETTER_PAYLOAD_BYTES
    clock: Callable[[], dt.date] = field(default=_utc_today, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        return cls(
            max_record_bytes=settings.max_record_bytes,
            min_date=settings.min_date,
            future_skew_days=settings.future_skew_days,
            dead_letter_payload_bytes=settings.dead_letter_payload_bytes,
        )

    def day_bounds(self) -> tuple[int, int]:
        """First and last acceptable day numbers, by the clock now."""
        latest = self.clock() + dt.timedelta(days=self.future_skew_days)
        return day_number(self.min_date), day_number(latest)


# ---------------------------------------------------------------------------
# One record: the reference path
# ---------------------------------------------------------------------------


def encode(record: TelemetryRecord) -> bytes:
    """Compact UTF-8 JSON: smart as ``{"5": [raw, norm]}`` in ascending ids; empty parts omitted."""
    return json.dumps(record.to_wire(), separators=(",", ":"), ensure_ascii=False).encode()


def decode(payload: bytes | str | None) -> TelemetryRecord:
    """Parse one wire message; raise :class:`InvalidRecord` with the precise reason.

    Bytes must be UTF-8 (RFC 8259); any failure to decode, including
    over-long integers and too-deep nesting, is ``malformed_json``. Duplicate
    keys: the last one wins (as in every JSON parser the worker uses).
    """
    if isinstance(payload, (bytearray, memoryview)):
        payload = bytes(payload)
    if payload is None:
        raise InvalidRecord("tombstone", "the message value is null (a Kafka tombstone)")
    if not isinstance(payload, (bytes, str)):
        raise InvalidRecord("malformed_json", f"payload must be bytes or str, got {type(payload).__name__}")
    if len(payload) == 0:
        raise InvalidRecord("empty_message", "the message value is empty (0 bytes)")
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    except UnicodeDecodeError as exc:
        raise InvalidRecord("malformed_json", f"not UTF-8: {exc}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, nesting
        raise InvalidRecord("malformed_json", f"not valid JSON: {str(exc)[:200]}") from None
    return TelemetryRecord.parse(data)


def check_size(payload: bytes | str | None, limits: InputLimits) -> None:
    """Reject a message over ``max_record_bytes`` before anything parses it."""
    if payload is not None and len(payload) > limits.max_record_bytes:
        raise InvalidRecord(
            "oversized", f"message is {len(payload)} bytes, over max_record_bytes={limits.max_record_bytes}"
        )


def check_day(day: int, bounds: tuple[int, int], limits: InputLimits) -> None:
    """Reject a day before ``min_date`` or later than the clock allows."""
    first, last = bounds
    if day < first:
        raise InvalidRecord("bad_date", f"date {from_day_number(day)} is before min_date {limits.min_date}")
    if day > last:
        raise InvalidRecord(
            "future_date",
            f"date {from_day_number(day)} is after the worker's clock + {limits.future_skew_days} days "
            f"({from_day_number(last)})",
        )


def decode_checked(payload: bytes | str | None, limits: InputLimits | None = None) -> TelemetryRecord:
    """:func:`decode` plus the worker's :class:`InputLimits`: the reference of :func:`decode_batch`."""
    limits = limits or InputLimits()
    check_size(payload, limits)
    record = decode(payload)
    check_day(day_number(record.date), limits.day_bounds(), limits)
    return record


# ---------------------------------------------------------------------------
# A batch: the fast path
# ---------------------------------------------------------------------------


@dataclass
class WireBatch:
    """Decoded rows (in message order) and the messages that were rejected."""

    index: list[int] = field(default_factory=list)  # message index of each row
    serials: list[str] = field(default_factory=list)
    days: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # days since EPOCH
    models: list[str] = field(default_factory=list)
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # float64 [rows, columns], NaN = absent
    errors: list[tuple[int, InvalidRecord]] = field(default_factory=list)  # (message index, why)
    fast: int = 0  # rows that took the fast path


class _DayCache:
    """Validated ISO date text → day number; a batch holds only a few distinct dates."""

    def __init__(self, limit: int = 4096) -> None:
        self.days: dict[str, int] = {}
        self.limit = limit

    def get(self, text: str) -> int | None:
        day = self.days.get(text)
        if day is not None or len(text) != 10:
            return day
        try:
            parsed = dt.date.fromisoformat(text)
        except ValueError:
            return None
        if parsed.isoformat() != text:  # only the canonical YYYY-MM-DD spelling
            return None
        if len(self.days) >= self.limit:
            self.days.clear()
        day = (parsed - EPOCH).days
        self.days[text] = day
        return day


_DAYS = _DayCache()


def decode_batch(
    payloads: Sequence[bytes | None],
    columns: Sequence[tuple[int, str]],
    limits: InputLimits | None = None,
) -> WireBatch:
    """Decode ``payloads``; ``columns`` are the ``(attribute, "raw"|"normalized")`` values to keep.

    Returns the valid rows with ``values[:, j]`` holding ``columns[j]`` (NaN
    when the record lacks it) and, for every rejected payload, the
    :class:`InvalidRecord` that :func:`decode_checked` raises for it.
    """
    limits = limits or InputLimits()
    bounds = limits.day_bounds()
    wanted = [(str(attr), _RAW if part == "raw" else _NORMALIZED) for attr, part in columns]
    ids = [(int(attr), part) for attr, part in wanted]
    out = WireBatch()
    days: list[int] = []
    rows: list[list[int | float | None]] = []
    for i, payload in enumerate(payloads):
        try:
            check_size(payload, limits)
            fast = _quick(payload, wanted, ids)
            if fast is not None:
                serial, day, model, row = fast
            else:
                record = decode(payload)
                serial, day, model = record.serial_number, day_number(record.date), record.model
                row = [_part(record, attr, part) for attr, part in wanted]
            check_day(day, bounds, limits)
        except InvalidRecord as error:
            out.errors.append((i, error))
            continue
        out.fast += fast is not None
        out.index.append(i)
        out.serials.append(serial)
        out.models.append(model)
        days.append(day)
        rows.append(row)
    out.days = np.asarray(days, dtype=np.int64)
    out.values = np.array(rows, dtype=np.float64).reshape(len(days), len(wanted))
    return out


# Typed wire form for msgspec: exactly the records :func:`_fast` accepts, minus what C cannot
# check (serial text rules, the date's canonical spelling: checked in :func:`_quick`). Raw values
# are bounded at int64 (msgspec's limit for bounds); larger valid ones take the orjson tier.
# SMART ids as int keys: msgspec takes only canonical decimal text for them ("5", not "05",
# "+5", " 5" or "5.0"), exactly the ids _fast accepts; a regex pattern per key would cost more.
_Attr = Annotated[int, msgspec.Meta(ge=1, le=255)]
_RawValue = Annotated[int, msgspec.Meta(ge=0, le=min(MAX_SMART_RAW, 2**63 - 1))]
_NormValue = Annotated[int, msgspec.Meta(ge=0, le=255)]


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    """One wire record as msgspec decodes it (duplicate keys: the last wins, as in ``json``)."""

    date: str
    serial_number: str
    model: str | None = ""
    capacity_bytes: Annotated[int, msgspec.Meta(ge=-1, le=MAX_CAPACITY_BYTES)] | None = None
    failure: Annotated[int, msgspec.Meta(ge=0, le=1)] | None = None
    smart: dict[_Attr, tuple[_RawValue | None, _NormValue | None]] = msgspec.field(default_factory=dict)
    extra: dict[str, str] = msgspec.field(default_factory=dict)


_WIRE = msgspec.json.Decoder(_Wire)


def _quick(
    payload: bytes | None, wanted: list[tuple[str, int]], ids: list[tuple[int, int]]
) -> tuple[str, int, str, list[int | float | None]] | None:
    """:func:`_fast` with msgspec's typed decoder first (``ids``: ``wanted`` with int ids); None = ask the reference path."""
    if not payload:
        return None
    try:
        data = _WIRE.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _fast(payload, wanted)
    serial = data.serial_number
    day = _DAYS.get(data.date)
    model = data.model
    if model is None:
        model = ""
    if day is None or not _plain_serial(serial) or model != model.strip():
        return None
    smart = data.smart
    return serial, day, model, [None if (pair := smart.get(attr)) is None else pair[part] for attr, part in ids]


def _part(record: TelemetryRecord, attr: str, part: int) -> int | float | None:
    value = record.smart.get(int(attr))
    return None if value is None else value[part]


def _plain_serial(serial: str) -> bool:
    """A serial both fast tiers take as is: what normalising would leave unchanged, within the limit."""
    return (
        0 < len(serial) <= MAX_SERIAL_LEN
        and serial.isprintable()  # also rules out zero-width characters and the BOM
        and serial == serial.strip()
        and (serial.isascii() or unicodedata.is_normalized("NFC", serial))
    )


def _fast(
    payload: bytes | None, wanted: list[tuple[str, int]]
) -> tuple[str, int, str, list[int | float | None]] | None:
    """The decoded row when the payload is plainly valid; None = ask the reference path."""
    if not payload:
        return None
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or not data.keys() <= _FIELDS:
        return None
    serial = data.get("serial_number")
    if type(serial) is not str or not _plain_serial(serial):
        return None
    date = data.get("date")
    day = _DAYS.get(date) if type(date) is str else None
    if day is None:
        return None
    model = data.get("model", "")
    if model is None:
        model = ""
    elif type(model) is not str or model != model.strip():
        return None
    capacity = data.get("capacity_bytes")
    if capacity is not None and (type(capacity) is not int or not (capacity == -1 or 0 <= capacity <= MAX_CAPACITY_BYTES)):
        return None
    failure = data.get("failure")
    if failure is not None and (type(failure) is not int or failure not in (0, 1)):
        return None
    extra = data.get("extra", {})
    if type(extra) is not dict or not all(type(v) is str for v in extra.values()):
        return None
    smart = data.get("smart", {})
    if type(smart) is not dict:
        return None
    for key, pair in smart.items():
        if not (type(pair) is list and len(pair) == 2 and key.isascii() and key.isdigit() and key[0] != "0"):
            return None
        raw, norm = pair
        if not (
            1 <= int(key) <= 255
            and (raw is None or (type(raw) is int and 0 <= raw <= MAX_SMART_RAW))
            and (norm is None or (type(norm) is int and 0 <= norm <= 255))
        ):
            return None
    row: list[int | float | None] = []
    for attr, part in wanted:
        pair = smart.get(attr)
        row.append(None if pair is None else pair[part])
    return serial, day, model, row


# ---------------------------------------------------------------------------
# A table: column-wise encoding for replay
# ---------------------------------------------------------------------------


def _json_string(values: pa.Array) -> pa.Array:
    """Quote strings for JSON (backslash and quote escaped; control chars become spaces)."""
    text = pc.replace_substring(values, "\\", "\\\\")
    text = pc.replace_substring(text, '"', '\\"')
    text = pc.replace_substring_regex(text, "[\\x00-\\x1f]", " ")
    return pc.binary_join_element_wise('"', text, '"', "")


def _json_number(values: pa.Array) -> pa.Array:
    """Numbers as JSON text: integral values without a fraction, null as ``null``."""
    integral = pc.equal(pc.floor(values), values)
    as_int = pc.cast(pc.cast(values, pa.int64(), safe=False), pa.string())
    as_float = pc.cast(values, pa.string())
    text = pc.if_else(pc.fill_null(integral, False), as_int, as_float)
    return pc.fill_null(text, "null")


def encode_table(table: pa.Table) -> list[tuple[bytes, bytes]]:
    """(key, wire JSON) per row of a cleaned Backblaze reader table.

    Built column-wise with Arrow compute (no Python work per cell): the same
    bytes :func:`encode` writes, which a test checks.
    """
    n = table.num_rows
    if n == 0:
        return []
    pairs: dict[int, list[str | None]] = {}
    for name in table.column_names:
        match = SMART_COLUMN.match(name)
        if match and table[name].null_count < n:
            pair = pairs.setdefault(int(match.group(1)), [None, None])
            pair[0 if match.group(2) == "raw" else 1] = name
    null_text = pa.array(["null"] * n, pa.string())
    parts = []
    for attr in sorted(pairs):
        raw_col, norm_col = pairs[attr]
        raw = table[raw_col].combine_chunks() if raw_col else pa.nulls(n, pa.float64())
        norm = table[norm_col].combine_chunks() if norm_col else pa.nulls(n, pa.float64())
        present = pc.or_(pc.is_valid(raw), pc.is_valid(norm))
        raw_text = _json_number(raw) if raw_col else null_text
        norm_text = _json_number(norm) if norm_col else null_text
        item = pc.binary_join_element_wise(f',"{attr}":[', raw_text, ",", norm_text, "]", "")
        parts.append(pc.if_else(present, item, ""))
    # Every present pair starts with a comma; drop the first one. (Arrow's
    # null_handling="skip" join loses all-null rows, so it is not used.)
    joined = pc.binary_join_element_wise(*parts, "") if parts else pa.array([""] * n, pa.string())
    smart = pc.utf8_slice_codeunits(joined, 1)
    serial = table["serial_number"].combine_chunks()
    text = pc.binary_join_element_wise(
        '{"date":"', pc.cast(table["date"].combine_chunks(), pa.string()),
        '","serial_number":', _json_string(serial),
        ',"model":', _json_string(table["model"].combine_chunks()),
        ',"capacity_bytes":', pc.cast(table["capacity_bytes"].combine_chunks(), pa.string()),
        ',"failure":', pc.cast(table["failure"].combine_chunks(), pa.string()),
        ',"smart":{', smart, "}}",
        "",
    )
    keys = pc.cast(serial, pa.binary()).to_pylist()
    values = pc.cast(text, pa.binary()).to_pylist()
    return list(zip(keys, values, strict=True))
