"""Decode a batch of wire-JSON telemetry into columns, fast.

The worker parses every message, and building a validated
:class:`TelemetryRecord` per message used to cost more than everything else it
does. :func:`decode_batch` checks payloads in the exact shape that
:meth:`TelemetryRecord.to_json` writes (integer SMART values) with
straight-line code and reads only the columns the models need. Anything else —
a float raw value, a padded serial, a value out of range, broken JSON — goes
through :meth:`TelemetryRecord.from_json`, which accepts it (its values are
then used) or rejects it with the precise reason. So the fast path never
rejects anything itself, and a test checks that it accepts nothing the full
parser would reject or decode differently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from diskwatch.core.records import (
    MAX_CAPACITY_BYTES,
    MAX_SERIAL_LEN,
    MAX_SMART_RAW,
    InvalidRecord,
    TelemetryRecord,
)

_EPOCH = dt.date(1970, 1, 1)
_FIELDS = frozenset(TelemetryRecord.model_fields)
_RAW, _NORMALIZED = 0, 1


@dataclass
class WireBatch:
    """Decoded rows (in message order) and the messages that were rejected."""

    index: list[int] = field(default_factory=list)  # message index of each row
    serials: list[str] = field(default_factory=list)
    days: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # days since 1970-01-01
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
        day = (parsed - _EPOCH).days
        self.days[text] = day
        return day


_DAYS = _DayCache()


def decode_batch(payloads: Sequence[bytes | None], columns: Sequence[tuple[int, str]]) -> WireBatch:
    """Decode ``payloads``; ``columns`` are the ``(attribute, "raw"|"normalized")`` values to keep.

    Returns the valid rows with ``values[:, j]`` holding ``columns[j]`` (NaN
    when the record lacks it) and, for every rejected payload, the
    :class:`InvalidRecord` that :meth:`TelemetryRecord.from_json` raised.
    """
    wanted = [(str(attr), _RAW if part == "raw" else _NORMALIZED) for attr, part in columns]
    out = WireBatch()
    days: list[int] = []
    rows: list[list[int | float | None]] = []
    for i, payload in enumerate(payloads):
        fast = _fast(payload, wanted)
        if fast is not None:
            serial, day, model, row = fast
            out.fast += 1
        else:
            try:
                record = TelemetryRecord.from_json(payload if payload is not None else b"")
            except InvalidRecord as error:
                out.errors.append((i, error))
                continue
            serial, day, model = record.serial_number, (record.date - _EPOCH).days, record.model
            row = []
            for attr, part in wanted:
                value = record.smart.get(int(attr))
                row.append(None if value is None else value[part])
        out.index.append(i)
        out.serials.append(serial)
        out.models.append(model)
        days.append(day)
        rows.append(row)
    out.days = np.asarray(days, dtype=np.int64)
    out.values = np.array(rows, dtype=np.float64).reshape(len(days), len(wanted))
    return out


def _fast(
    payload: bytes | None, wanted: list[tuple[str, int]]
) -> tuple[str, int, str, list[int | float | None]] | None:
    """The decoded row when the payload is plainly valid; None = ask the full parser."""
    if payload is None:
        return None
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or not data.keys() <= _FIELDS:
        return None
    serial = data.get("serial_number")
    if (
        type(serial) is not str
        or not 0 < len(serial) <= MAX_SERIAL_LEN
        or not serial.isprintable()
        or serial != serial.strip()
    ):
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
