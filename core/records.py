"""Record schemas for everything that crosses a process boundary.

* ``TelemetryRecord`` — one drive-day in the Backblaze Drive Stats layout.
* ``Alert`` — what subscribers of the alert topic receive.
* ``DeadLetter`` — rejected input, kept with the reason and where it came from.

Every rejection raises :class:`InvalidRecord` carrying a short machine-readable
``code`` (to count by reason) and a precise human ``reason``; :data:`REASON_CODES`
lists them all. The bytes of the wire form are read and written by
:mod:`diskwatch.core.wire`; this module holds the models and their value rules.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import re
import unicodedata
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

SCHEMA_VERSION = 1
MAX_SMART_RAW = 2**64 - 1  # SMART raw values are at most 48 bits; leave headroom.
MAX_CAPACITY_BYTES = 10**15  # 1 PB: far above any drive that exists.
MAX_SERIAL_LEN = 128
#: Day numbers (what Redis stores and windows compare) count days since this date.
EPOCH = dt.date(1970, 1, 1)
#: Dead letters keep at most this much of the original message (plus its length and sha256),
#: so one always fits under Kafka's default 1 MB max.message.bytes.
DEAD_LETTER_PAYLOAD_BYTES = 8 * 1024
_DEAD_LETTER_TEXT_CHARS = 1024  # reason and key: cut, so a letter's size stays bounded

#: Every rejection code, with what it means (README and docs/schemas repeat this table).
REASON_CODES: dict[str, str] = {
    "tombstone": "the Kafka message value is null (a tombstone)",
    "empty_message": "the message value is zero bytes",
    "oversized": "the message is larger than max_record_bytes",
    "malformed_json": "not UTF-8, or not valid JSON",
    "not_an_object": "valid JSON, but not an object",
    "unknown_field": "a field (or CSV column) the record does not have",
    "missing_serial": "serial_number is absent, null, or empty once normalised",
    "bad_serial": "serial_number is not a string, too long, has control characters or lone surrogates",
    "bad_date": "date absent, not a YYYY-MM-DD string, not a calendar date, or before min_date",
    "future_date": "date later than the worker's clock plus future_skew_days",
    "bad_model": "model is not a string (or null) or is not valid Unicode",
    "bad_capacity": "capacity_bytes is not an integer (or null) in -1, 0..1e15",
    "bad_failure": "failure is not 0, 1 or null",
    "bad_smart": "smart is not an object of id (1..255) -> [raw, normalized]",
    "bad_raw": "a raw value is not a number (or null) in 0..2^64-1",
    "bad_normalized": "a normalized value is not an integer (or null) in 0..255",
    "bad_extra": "extra is not an object of string -> string",
    "malformed_row": "a CSV row with more cells than the header",
    "wrong_field_count": "a CSV line whose cell count differs from the header (the dump reader, replay)",
}

# Removed from serials before anything else: they are invisible, so a serial
# with one is the same drive without it (zero-width space/joiners, word joiner, BOM).
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))

# Backblaze's non-SMART columns. Newer dumps (Q4-2023 on) add the location ones.
BASE_COLUMNS = ("date", "serial_number", "model", "capacity_bytes", "failure")
KNOWN_EXTRA_COLUMNS = (
    "datacenter",
    "cluster_id",
    "vault_id",
    "pod_id",
    "pod_slot_number",
    "is_legacy_format",
)
#: A Backblaze SMART column name: ``smart_<id>_raw`` or ``smart_<id>_normalized``.
SMART_COLUMN = re.compile(r"^smart_(\d{1,3})_(raw|normalized)$")
_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_NUMERIC = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$", re.ASCII)


class InvalidRecord(ValueError):
    """A record was rejected; ``code`` is stable, ``reason`` is for humans."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def day_number(day: dt.date) -> int:
    """Days since :data:`EPOCH`: the integer day the stream stores and compares."""
    return (day - EPOCH).days


def from_day_number(number: int) -> dt.date:
    return EPOCH + dt.timedelta(days=int(number))


class _CodedError(ValueError):
    """A validator's ValueError that names its own reason code (see ``_invalid``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _is_missing(value: Any) -> bool:
    """CSV/pandas spellings of a missing cell: None, "" (or blanks) and NaN."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    return isinstance(value, float) and math.isnan(value)


def _check_text(value: str, what: str) -> str:
    """Reject strings that cannot be encoded as UTF-8 (lone surrogates, e.g. from a "\\ud800" escape)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (lone surrogate)") from None
    return value


# ---------------------------------------------------------------------------
# Value checks shared by the CSV and JSON paths
# ---------------------------------------------------------------------------


def _number(value: Any, what: str) -> int | float | None:
    """Coerce a CSV/JSON scalar to a number; ``None``/"" mean missing."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got a boolean")
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if text == "":
            return None
        # Plain ASCII decimals only: int()/float() would also take "1_000", "nan" and non-ASCII digits.
        if not _NUMERIC.match(text):
            raise ValueError(f"{what} must be numeric, got {value[:40]!r}")
        try:
            number = int(text)
        except ValueError:  # a fraction or exponent, or more digits than int() takes
            number = float(text)
    else:
        raise ValueError(f"{what} must be a number, got {type(value).__name__}")
    if isinstance(number, float):
        if not math.isfinite(number):
            raise ValueError(f"{what} must be finite, got {number!r}")
        if number.is_integer():
            number = int(number)
    return number


def _show(number: float) -> str:
    """A number for an error message, cut short (a CSV cell can hold 4,000 digits)."""
    text = repr(number)
    return text if len(text) <= 24 else f"{text[:20]}...({len(text)} chars)"


def _raw(value: Any) -> int | float | None:
    try:
        number = _number(value, "raw value")
    except ValueError as exc:
        raise _CodedError("bad_raw", str(exc)) from None
    if number is None:
        return None
    if number < 0:
        raise _CodedError("bad_raw", f"raw counter must be >= 0, got {number}")
    if number > MAX_SMART_RAW:
        raise _CodedError("bad_raw", f"raw value {_show(number)} exceeds 64 bits")
    return number


def _normalized(value: Any) -> int | None:
    try:
        number = _number(value, "normalized value")
    except ValueError as exc:
        raise _CodedError("bad_normalized", str(exc)) from None
    if number is None:
        return None
    if not isinstance(number, int) or not 0 <= number <= 255:
        raise _CodedError(
            "bad_normalized", f"normalized value must be an integer in 0..255, got {_show(number)}"
        )
    return number


def _smart_id(key: Any) -> int:
    if isinstance(key, bool):
        raise _CodedError("bad_smart", f"SMART id must be an integer, got {key!r}")
    try:
        attr = int(key)
    except (TypeError, ValueError):
        raise _CodedError("bad_smart", f"SMART id must be an integer 1..255, got {key!r:.40}") from None
    # Only the canonical spelling: "5", never "05", " 5" or "5\n" (the schema's pattern says so too).
    if not 1 <= attr <= 255 or str(key) != str(attr):
        raise _CodedError("bad_smart", f"SMART id must be an integer 1..255, got {key!r:.40}")
    return attr


class _SmartPair(NamedTuple):
    raw: int | float | None
    normalized: int | None


class SmartValue(_SmartPair):
    """One attribute's ``(raw, normalized)`` pair; either part may be missing.

    A validated named tuple rather than a model: a record carries ~20 of
    these and the stream parses every record, so they must be cheap.
    """

    __slots__ = ()

    def __new__(cls, raw: Any = None, normalized: Any = None) -> SmartValue:
        return _SmartPair.__new__(cls, _raw(raw), _normalized(normalized))

    @classmethod
    def _trusted(cls, raw: int | float | None, normalized: int | None) -> SmartValue:
        return _SmartPair.__new__(cls, raw, normalized)


def _smart_map(value: Any) -> dict[int, SmartValue]:
    """Accept ``{"5": [raw, norm]}`` (compact wire form) or ``{"5": {"raw":..}}``.

    An attribute whose raw and normalized parts are both missing is dropped, so
    "absent" has one spelling and records survive ``to_json``/``from_json``.
    """
    if not isinstance(value, Mapping):
        raise _CodedError(
            "bad_smart", f"smart must be an object of id -> [raw, normalized], got {type(value).__name__}"
        )
    out: dict[int, SmartValue] = {}
    for key, pair in value.items():
        attr = _smart_id(key)
        if attr in out:
            raise _CodedError("bad_smart", f"smart[{attr}] is given twice")
        if isinstance(pair, SmartValue):
            smart_value = pair
        elif isinstance(pair, (list, tuple)):
            if len(pair) != 2:
                raise _CodedError(
                    "bad_smart", f"smart[{attr}] must be [raw, normalized], got {len(pair)} items"
                )
            smart_value = _smart_value(attr, pair[0], pair[1])
        elif isinstance(pair, Mapping):
            unknown = set(pair) - {"raw", "normalized"}
            if unknown:
                names = sorted(map(str, unknown))
                raise _CodedError("bad_smart", f"smart[{attr}] has unknown keys {names}")
            smart_value = _smart_value(attr, pair.get("raw"), pair.get("normalized"))
        else:
            raise _CodedError(
                "bad_smart", f"smart[{attr}] must be [raw, normalized], got {type(pair).__name__}"
            )
        out[attr] = smart_value
    return {
        attr: out[attr]
        for attr in sorted(out)
        if out[attr].raw is not None or out[attr].normalized is not None
    }


def _smart_value(attr: int, raw: Any, normalized: Any) -> SmartValue:
    # The same validators SmartValue runs, called directly: this is the hot
    # path of the stream worker (~20 attributes per record), and building a
    # validated model per attribute cost more than the rest of parsing.
    try:
        return SmartValue._trusted(_raw(raw), _normalized(normalized))
    except _CodedError as exc:
        raise _CodedError(exc.code, f"smart[{attr}]: {exc}") from None
    except ValueError as exc:
        raise _CodedError("bad_smart", f"smart[{attr}]: {exc}") from None


def _date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if value is None:
        raise ValueError("date is missing")
    if isinstance(value, str):
        # Exactly YYYY-MM-DD, unpadded: fromisoformat alone would also take
        # "20130410" and "2013-W15-3", and the published schema takes no blanks.
        if _ISO_DATE.match(value) and len(value) == 10:
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise ValueError(f"date must be YYYY-MM-DD, got {value[:40]!r}")
    raise ValueError(f"date must be a YYYY-MM-DD string, got {type(value).__name__}")


def normalize_serial(value: str) -> str:
    """The drive's identity: invisible characters removed, blanks stripped, NFC.

    ``"\ufeffZ1 "`` and ``"Z1"`` are the same drive, so they must share one
    window; the original spelling stays in the message for anyone who needs it.
    """
    return unicodedata.normalize("NFC", value.translate(_INVISIBLE).strip())


def _serial(value: Any) -> str:
    if value is None:
        raise _CodedError("missing_serial", "serial_number is missing")
    if not isinstance(value, str):
        raise _CodedError("bad_serial", f"serial_number must be a string, got {type(value).__name__}")
    if len(value) > MAX_SERIAL_LEN:
        raise _CodedError("bad_serial", f"serial_number is {len(value)} characters, over {MAX_SERIAL_LEN}")
    try:
        _check_text(value, "serial_number")
    except ValueError as exc:
        raise _CodedError("bad_serial", str(exc)) from None
    text = normalize_serial(value)
    if not text:
        raise _CodedError("missing_serial", "serial_number is empty (or only blanks and invisible characters)")
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise _CodedError("bad_serial", f"serial_number has the control character {bad!r}")
    return text


def _extra_map(value: Any) -> Any:
    """Keys and values must be strings that are valid Unicode (type checks follow in pydantic)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                _check_text(key, "extra key")
            if isinstance(item, str):
                _check_text(item, f"extra[{key!r:.40}]")
    return value


def _capacity(value: Any) -> int:
    number = _number(value, "capacity_bytes")
    if number is None:
        return -1
    if not isinstance(number, int):
        raise ValueError(f"capacity_bytes must be an integer, got {_show(number)}")
    if number != -1 and not 0 <= number <= MAX_CAPACITY_BYTES:
        raise ValueError(f"capacity_bytes must be -1 (unknown) or 0..1e15, got {_show(number)}")
    return number


def _failure(value: Any) -> int | None:
    number = _number(value, "failure")
    if number is None:
        return None
    if number not in (0, 1):
        raise ValueError(f"failure must be 0 or 1, got {_show(number)}")
    return int(number)


# Map pydantic field names to the stable reason codes counted by the stream.
_FIELD_CODES = {
    "date": "bad_date",
    "serial_number": "bad_serial",
    "model": "bad_model",
    "capacity_bytes": "bad_capacity",
    "failure": "bad_failure",
    "smart": "bad_smart",
    "extra": "bad_extra",
}


# JSON Schema fragments that state the parser's rules exactly (regexes are
# Python ``re``/ECMA-262 compatible; ``(?![\s\S])`` is a true end of string).
_NO_SURROGATE = r"^[^\ud800-\udfff]*(?![\s\S])"
_EDGE = r"[\s\u200b-\u200d\u2060\ufeff]"  # stripped: blanks and invisible characters
_VISIBLE = r"[^\s\u200b-\u200d\u2060\ufeff\x00-\x1f\x7f\ud800-\udfff]"
_INNER = r"[^\x00-\x1f\x7f\ud800-\udfff]"
_SERIAL_SCHEMA: dict[str, Any] = {
    "type": "string",
    "maxLength": MAX_SERIAL_LEN,
    "pattern": rf"^{_EDGE}*{_VISIBLE}(?:{_INNER}*{_VISIBLE})?{_EDGE}*(?![\s\S])",
    "description": (
        "Normalised before use: zero-width characters and the BOM are removed, blanks stripped, "
        "then NFC. Must keep a visible character; no control characters inside; valid Unicode."
    ),
}
_DATE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "date",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(?![\s\S])",
    "description": (
        "YYYY-MM-DD, unpadded. The worker also rejects dates before its min_date (bad_date) "
        "and after its clock + future_skew_days (future_date): runtime settings, not schema."
    ),
}
_MODEL_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string", "pattern": _NO_SURROGATE}, {"type": "null"}],
    "description": "Drive model; null means unknown and reads as \"\". Blanks are stripped.",
}
_CAPACITY_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer", "minimum": -1, "maximum": MAX_CAPACITY_BYTES}, {"type": "null"}],
    "description": "Bytes as a JSON number (a string is rejected); -1 or null = unknown.",
}
_EXTRA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": _NO_SURROGATE},
    "additionalProperties": {"type": "string", "pattern": _NO_SURROGATE},
    "description": "Non-SMART columns kept from the source (e.g. datacenter).",
}

_SMART_WIRE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "SMART attributes: id (1..255) -> [raw, normalized]; either may be null. Values are JSON "
        "numbers (a string or an {\"raw\": ..} object is rejected)."
    ),
    "patternProperties": {
        r"^([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])(?![\s\S])": {
            "type": "array",
            "minItems": 2,
            "maxItems": 2,
            "prefixItems": [
                {"anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_SMART_RAW}, {"type": "null"}]},
                {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 255}, {"type": "null"}]},
            ],
        }
    },
    "additionalProperties": False,
}


class TelemetryRecord(BaseModel):
    """One drive-day: identity, the failure flag and its SMART attributes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Each WithJsonSchema states the validator's rule for the published schema
    # (tests/unit/test_json_schemas.py checks they agree on generated input).
    date: Annotated[dt.date, BeforeValidator(_date), WithJsonSchema(_DATE_SCHEMA)]
    serial_number: Annotated[str, BeforeValidator(_serial), WithJsonSchema(_SERIAL_SCHEMA)]
    model: Annotated[str, WithJsonSchema(_MODEL_SCHEMA)] = ""
    capacity_bytes: Annotated[int, BeforeValidator(_capacity), WithJsonSchema(_CAPACITY_SCHEMA)] = Field(
        -1, ge=-1, le=MAX_CAPACITY_BYTES
    )
    failure: Annotated[int | None, BeforeValidator(_failure)] = Field(None, ge=0, le=1)
    smart: Annotated[
        dict[int, SmartValue], PlainValidator(_smart_map), WithJsonSchema(_SMART_WIRE_SCHEMA)
    ] = Field(default_factory=dict)
    extra: Annotated[dict[str, str], BeforeValidator(_extra_map), WithJsonSchema(_EXTRA_SCHEMA)] = Field(
        default_factory=dict
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_text(cls, value: Any) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ValueError(f"model must be a string, got {type(value).__name__}")
        return _check_text(value.strip(), "model")

    # -- constructors -------------------------------------------------------

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> TelemetryRecord:
        """Validate decoded wire JSON; raise :class:`InvalidRecord`.

        Stricter than the constructor, exactly as the published schema: JSON
        types only (numbers as numbers, SMART pairs as 2-item arrays).
        """
        if not isinstance(data, Mapping):
            raise InvalidRecord("not_an_object", f"expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            shown = ", ".join(repr(_printable(str(name))[:40]) for name in unknown[:5])
            raise InvalidRecord("unknown_field", f"{len(unknown)} unknown field(s): {shown}")
        if data.get("serial_number") is None:
            raise InvalidRecord("missing_serial", "serial_number is missing")
        if "date" not in data:
            raise InvalidRecord("bad_date", "date is missing")
        _check_wire_types(data)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _invalid(exc) from None

    @classmethod
    def from_json(cls, payload: bytes | str) -> TelemetryRecord:
        """Parse wire JSON (see :func:`diskwatch.core.wire.decode`, which this calls)."""
        from diskwatch.core import wire  # wire builds on this module

        return wire.decode(payload)

    @classmethod
    def from_backblaze_row(
        cls, row: Mapping[str, Any], *, unknown_columns: Literal["keep", "ignore", "error"] = "ignore"
    ) -> TelemetryRecord:
        """Build from a Backblaze CSV row of any year's column set.

        ``smart_N_raw``/``smart_N_normalized`` become ``smart[N]``; empty
        strings are missing values. Backblaze's location columns are kept in
        ``extra``; other unknown columns follow ``unknown_columns``.
        """
        smart: dict[int, list[Any]] = {}
        extra: dict[str, str] = {}
        base: dict[str, Any] = {}
        for column, value in row.items():
            if not isinstance(column, str):
                # csv.DictReader files surplus cells of a too-long row under the key None.
                raise InvalidRecord("malformed_row", f"row has cells without a column name: {value!r:.80}")
            if column in BASE_COLUMNS:
                base[column] = None if _is_missing(value) else value
                continue
            match = SMART_COLUMN.match(column)
            if match:
                if _is_missing(value):
                    continue
                pair = smart.setdefault(int(match.group(1)), [None, None])
                pair[0 if match.group(2) == "raw" else 1] = value
            elif column in KNOWN_EXTRA_COLUMNS or unknown_columns == "keep":
                if not _is_missing(value):
                    extra[column] = str(value)
            elif unknown_columns == "error":
                raise InvalidRecord("unknown_field", f"unknown column {column!r}")
        base.setdefault("serial_number", None)
        base.setdefault("date", None)
        if base["serial_number"] is None:
            raise InvalidRecord("missing_serial", "serial_number is missing")
        try:
            return cls.model_validate({**base, "smart": smart, "extra": extra})
        except ValidationError as exc:
            raise _invalid(exc) from None

    # -- serialisation ------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """Compact JSON-ready dict: smart as ``{"5": [raw, norm]}``; empty parts omitted."""
        out: dict[str, Any] = {
            "date": self.date.isoformat(),
            "serial_number": self.serial_number,
            "model": self.model,
            "capacity_bytes": self.capacity_bytes,
        }
        if self.failure is not None:
            out["failure"] = self.failure
        out["smart"] = {
            str(attr): [value.raw, value.normalized]
            for attr, value in self.smart.items()
            if value.raw is not None or value.normalized is not None
        }
        if self.extra:
            out["extra"] = self.extra
        return out

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON for Kafka (see :func:`diskwatch.core.wire.encode`, which this calls)."""
        from diskwatch.core import wire  # wire builds on this module

        return wire.encode(self)

    def raw(self, attr: int) -> int | float | None:
        value = self.smart.get(attr)
        return None if value is None else value.raw

    def normalized(self, attr: int) -> int | None:
        value = self.smart.get(attr)
        return None if value is None else value.normalized


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return "a boolean" if isinstance(value, bool) else type(value).__name__


def _check_wire_types(data: Mapping[str, Any]) -> None:
    """JSON types the schema demands and the CSV path does not (CSV cells are all text)."""
    for name, code in (("capacity_bytes", "bad_capacity"), ("failure", "bad_failure")):
        value = data.get(name)
        if value is not None and not _is_number(value):
            raise InvalidRecord(code, f"{name} must be a JSON number or null, got {_kind(value)}")
    smart = data.get("smart")
    if not isinstance(smart, Mapping):
        return  # absent or not an object: the model's own check names it
    for key, pair in smart.items():
        if not isinstance(pair, list):
            raise InvalidRecord(
                "bad_smart", f"smart[{key!r:.20}] must be an array [raw, normalized], got {type(pair).__name__}"
            )
        for part, code in zip(pair[:2], ("bad_raw", "bad_normalized"), strict=False):
            if part is not None and not _is_number(part):
                raise InvalidRecord(code, f"smart[{key!r:.20}]: a value must be a number or null, got {_kind(part)}")


def _invalid(exc: ValidationError) -> InvalidRecord:
    """Turn pydantic's error list into one precise InvalidRecord."""
    error = exc.errors()[0]
    loc = error.get("loc") or ("record",)
    field = str(loc[0])
    code = _FIELD_CODES.get(field, "invalid")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _CodedError):
        code = cause.code
    if error.get("type") == "extra_forbidden":
        code = "unknown_field"
        message = f"unknown field {'.'.join(map(str, loc))!r}"
    elif error.get("type") in {"string_type", "int_type", "dict_type"}:
        message = f"{'.'.join(map(str, loc))}: {message}"
    return InvalidRecord(code, message)


# ---------------------------------------------------------------------------
# Output records
# ---------------------------------------------------------------------------


class Severity(StrEnum):
    """Alert severity, ordered: a rise re-alerts, a repeat does not."""

    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """1 = one detector fires, 2 = both (0, no alert, has no member)."""
        return _SEVERITY_RANKS[self]

    @classmethod
    def from_rank(cls, rank: int) -> Severity:
        """The severity of ``rank`` (>= 1; anything above 2 is critical)."""
        if rank < 1:
            raise ValueError(f"severity rank must be >= 1, got {rank}")
        return cls.CRITICAL if rank >= _SEVERITY_RANKS[cls.CRITICAL] else cls.WARNING


_SEVERITY_RANKS = {Severity.WARNING: 1, Severity.CRITICAL: 2}


class LifeExpectancy(StrEnum):
    """Ceph-style life expectancy classes from the RUL model."""

    GOOD = "good"  # more than 6 weeks
    WARNING = "warning"  # 2 to 6 weeks
    BAD = "bad"  # under 2 weeks
    UNKNOWN = "unknown"


def _nan_is_missing(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


# JSON has no NaN/Infinity: pydantic would write them as null, which the model
# itself then refuses to read back. So alerts reject non-finite numbers.


class AlertReason(BaseModel):
    """One SMART attribute that looks wrong, and by how much."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    attribute: int = Field(ge=1, le=255, description="SMART attribute id.")
    feature: str = Field(description="Model feature name, e.g. smart_5_raw.")
    raw_value: Annotated[int | float | None, BeforeValidator(_nan_is_missing)] = Field(
        description=(
            "Latest raw value in the window, exactly as the record gave it when the window's last "
            "day came in this batch (else read back from the stored features, rounded); None if missing."
        )
    )
    error_share: float = Field(ge=0, le=1, description="Share of the reconstruction error.")


class Alert(BaseModel):
    """A drive entered a warning state or its severity rose."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: Literal[1] = SCHEMA_VERSION
    idempotency_key: str = Field(description="serial|date|bundle_version: same key = same alert.")
    serial_number: str
    model: str
    date: dt.date = Field(description="Day of the telemetry that triggered the alert.")
    window_start: dt.date
    window_end: dt.date
    severity: Severity
    failure_probability: float = Field(ge=0, le=1, description="Classifier P(failure within horizon).")
    anomaly_score: float = Field(ge=0, description="Autoencoder reconstruction error of the window.")
    classifier_threshold: float
    anomaly_threshold: float
    horizon_days: int
    reasons: list[AlertReason] = Field(default_factory=list)
    life_expectancy: LifeExpectancy | None = None
    predicted_days_to_failure: float | None = None
    bundle_version: str
    created_at: dt.datetime

    @staticmethod
    def make_key(serial_number: str, date: dt.date, bundle_version: str) -> str:
        return f"{serial_number}|{date.isoformat()}|{bundle_version}"

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class DeadLetter(BaseModel):
    """Input the worker could not use, with why and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    reason_code: str = Field(description="Stable code for counting, e.g. malformed_json (see README).")
    reason: str = Field(description="Precise human-readable reason (at most 1024 characters).")
    payload: str | None = Field(
        description=(
            "The original message value, or its first bytes when payload_truncated (see "
            "payload_encoding); null for a Kafka tombstone, \"\" for an empty message."
        )
    )
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    payload_length: int = Field(0, ge=0, description="Bytes in the original message value.")
    payload_sha256: str | None = Field(None, description="Hex sha256 of the whole original value.")
    payload_truncated: bool = Field(False, description="payload holds only the first bytes of the value.")
    key: str | None = Field(None, description="The message key as text (at most 1024 characters).")
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    failed_at: dt.datetime

    @classmethod
    def from_payload(
        cls,
        payload: bytes | str | None,
        error: InvalidRecord,
        *,
        key: bytes | str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        max_payload_bytes: int = DEAD_LETTER_PAYLOAD_BYTES,
    ) -> DeadLetter:
        """Keep the original bytes (base64 when not UTF-8), cut to ``max_payload_bytes``.

        The cut keeps every letter publishable: a letter that Kafka refuses
        would stall the worker, and the sha256 still identifies the original.
        """
        raw = _as_bytes(payload)
        kept = raw if raw is None else raw[:max_payload_bytes]
        text, encoding = _as_text(kept, cut=raw is not None and len(raw) > max_payload_bytes)
        return cls(
            reason_code=_printable(error.code)[:64],
            reason=_printable(error.reason)[:_DEAD_LETTER_TEXT_CHARS],
            payload=text,
            payload_encoding=encoding,
            payload_length=0 if raw is None else len(raw),
            payload_sha256=None if raw is None else hashlib.sha256(raw).hexdigest(),
            payload_truncated=raw is not None and len(raw) > max_payload_bytes,
            key=None if key is None else _printable(key)[:_DEAD_LETTER_TEXT_CHARS],
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            failed_at=dt.datetime.now(dt.UTC),
        )

    def original_payload(self) -> bytes | None:
        """The stored value as bytes (only its first bytes when ``payload_truncated``)."""
        if self.payload is None:
            return None
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload)
        return self.payload.encode("utf-8")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def _printable(value: bytes | str) -> str:
    """Text that serialises as JSON: bad UTF-8 and lone surrogates become U+FFFD."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    return bytes(value).decode("utf-8", "replace")


def _as_bytes(payload: bytes | str | None) -> bytes | None:
    """The message value as bytes; text is UTF-8 (lone surrogates kept as their bytes)."""
    if payload is None:
        return None
    if isinstance(payload, str):
        try:
            return payload.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: JSON output would fail; keep them as bytes
            try:
                return payload.encode("utf-8", "surrogateescape")  # undoes a surrogateescape decode
            except UnicodeEncodeError:
                return payload.encode("utf-8", "surrogatepass")
    return bytes(payload)


def _as_text(payload: bytes | None, *, cut: bool = False) -> tuple[str | None, Literal["utf-8", "base64"]]:
    """UTF-8 text when the bytes are UTF-8, else base64; a ``cut`` may end inside a character."""
    if payload is None:
        return None, "utf-8"
    for drop in range(4 if cut else 1):  # a UTF-8 character is at most 4 bytes
        try:
            return payload[: len(payload) - drop].decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            continue
    return base64.b64encode(payload).decode("ascii"), "base64"


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of every published record, keyed by file stem."""
    return {
        "telemetry-record": TelemetryRecord.model_json_schema(mode="validation"),
        "alert": Alert.model_json_schema(mode="serialization"),
        "dead-letter": DeadLetter.model_json_schema(mode="serialization"),
    }
