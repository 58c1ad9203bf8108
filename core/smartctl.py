"""Convert ``smartctl --json`` output (smartmontools, JSON format 1) into TelemetryRecords.

What datacenters run is smartmontools, not Backblaze CSV rows; this module is
the contract-level reader for its JSON. Pure functions: the shell
(``diskwatch collect``) runs smartctl or reads saved files and calls
:func:`convert`.

Rules (documented in README, "Wire up a fleet"):

* ATA/SATA ``ata_smart_attributes.table[]`` → ``smart[id] = [raw, value]``.
  ``raw`` is the *leading integer of* ``raw.string`` — what smartctl prints in
  its RAW_VALUE column and what Backblaze's dumps (the training data) record —
  not ``raw.value``, the 48-bit register that packs min/max temperatures,
  durations and sub-counters on many drives (``"29 (Min/Max 22/34)"`` has
  ``raw.value`` 146030329885). Where the two differ, ``raw.value`` is kept in
  ``extra["raw_value_<id>"]``.
* NVMe and SAS/SCSI have no ATA table; only quantities with the same meaning as
  an ATA attribute are mapped (:data:`NVME_MAP`, :data:`SCSI_MAP`), with no
  normalized value; the other scalar health fields go to ``extra``.
* Every record carries ``extra["device_type"]`` (``ata``, ``nvme``, ``scsi``:
  smartctl's ``device.protocol``) so the worker can leave device classes its
  bundle was not trained on unscored, plus ``smartctl_exit_status`` and
  ``smart_status_passed``.
* smartctl's exit status bits 0–2 mean it could not read the device: the
  output is refused (:class:`SmartctlError`). Bits 3–7 describe the *disk*
  (SMART status failing, attributes at or past threshold, logged errors): the
  record is kept and the bits travel in ``extra``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from diskwatch.core.records import MAX_SMART_RAW, InvalidRecord, TelemetryRecord

#: smartctl exit status bits that mean "the device could not be read" (see smartctl(8)).
UNREADABLE_BITS = {
    0: "command line did not parse",
    1: "device open failed (missing, busy, or no permission: smartctl needs root / CAP_SYS_RAWIO)",
    2: "a SMART or other command to the disk failed, or a SMART data structure had a bad checksum",
}
#: Bits 3–7: the disk's own state. Kept, and carried in ``extra``.
DISK_STATE_BITS = {
    3: "SMART status: disk failing",
    4: "prefail attributes at or below threshold",
    5: "attributes were at or below threshold in the past",
    6: "the device error log contains errors",
    7: "the self-test log contains errors",
}
#: Serials that are not serials (smartctl_exporter's testdata redacts them).
PLACEHOLDER_SERIALS = frozenset({"", "redacted", "unknown", "none", "n/a", "0"})

#: NVMe health log field → ATA attribute with the same meaning.
NVME_MAP: dict[str, int] = {
    "temperature": 194,  # Temperature_Celsius (the NVMe log reports °C in smartctl's JSON)
    "power_on_hours": 9,  # Power_On_Hours
    "power_cycles": 12,  # Power_Cycle_Count
    "media_errors": 187,  # unrecovered data integrity errors = Reported_Uncorrect
}
#: SAS/SCSI field (a path into the output) → ATA attribute with the same meaning.
SCSI_MAP: dict[tuple[str, ...], int] = {
    ("temperature", "current"): 194,
    ("power_on_time", "hours"): 9,
    ("scsi_start_stop_cycle_counter", "accumulated_start_stop_cycles"): 4,  # Start_Stop_Count
    ("scsi_start_stop_cycle_counter", "accumulated_load_unload_cycles"): 193,  # Load_Cycle_Count
    ("scsi_grown_defect_list",): 5,  # grown defects = sectors reallocated since manufacture
}

_SCSI_COUNTERS = ("total_errors_corrected", "total_uncorrected_errors", "gigabytes_processed")
_LEADING_INT = re.compile(r"\s*(0x[0-9a-fA-F]+|\d+)")


class SmartctlError(ValueError):
    """One smartctl output that gives no record; ``code`` is stable, ``reason`` for humans."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def leading_int(text: str) -> int | None:
    """The number smartctl prints first in RAW_VALUE (``"29 (Min/Max 22/34)"`` → 29); hex allowed."""
    match = _LEADING_INT.match(text)
    if match is None:
        return None
    token = match.group(1)
    return int(token, 16) if token.startswith("0x") else int(token)


def device_type(doc: Mapping[str, Any]) -> str:
    """``ata``, ``nvme`` or ``scsi`` from ``device.protocol`` (else from which log is present)."""
    protocol = str(_get(doc, "device", "protocol") or "").lower()
    if protocol in ("ata", "nvme", "scsi"):
        return protocol
    if "ata_smart_attributes" in doc:
        return "ata"
    if "nvme_smart_health_information_log" in doc:
        return "nvme"
    return protocol or "unknown"


def check_readable(doc: Mapping[str, Any]) -> int:
    """smartctl's exit status; raise :class:`SmartctlError` if it (or a message) says the read failed."""
    status = _get(doc, "smartctl", "exit_status")
    status = status if isinstance(status, int) and not isinstance(status, bool) else 0
    failed = [text for bit, text in UNREADABLE_BITS.items() if status & (1 << bit)]
    errors = [
        str(m.get("string", "")).strip()
        for m in _get(doc, "smartctl", "messages") or []
        if isinstance(m, Mapping) and m.get("severity") == "error"
    ]
    if failed or errors:
        raise SmartctlError("smartctl_failed", f"exit status {status}: " + "; ".join(failed + errors))
    return status


def convert(
    doc: Mapping[str, Any], *, date: dt.date | None = None, host: str | None = None
) -> TelemetryRecord:
    """One ``smartctl --json`` output → a TelemetryRecord (``failure`` = 0); see module docstring.

    Raises :class:`SmartctlError` for an output that must be skipped.
    """
    if not isinstance(doc, Mapping):
        raise SmartctlError("not_an_object", f"expected a JSON object, got {type(doc).__name__}")
    status = check_readable(doc)
    kind = device_type(doc)
    serial = _serial(doc)
    smart, extra = _attributes(doc, kind)
    extra["device_type"] = kind
    extra["smartctl_exit_status"] = str(status)
    passed = _get(doc, "smart_status", "passed")
    if isinstance(passed, bool):
        extra["smart_status_passed"] = "true" if passed else "false"
    disk_bits = [name for bit, name in DISK_STATE_BITS.items() if status & (1 << bit)]
    if disk_bits:
        extra["smartctl_disk_state"] = "; ".join(disk_bits)
    name = _get(doc, "device", "name")
    if isinstance(name, str) and name:
        extra["device"] = name
    if host:
        extra["host"] = host
    try:
        return TelemetryRecord.parse(
            {
                "date": date or _date(doc),
                "serial_number": serial,
                "model": _model(doc),
                "capacity_bytes": _capacity(doc),
                "failure": 0,
                "smart": smart,
                "extra": extra,
            }
        )
    except InvalidRecord as exc:
        raise SmartctlError(exc.code, exc.reason) from None


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def _serial(doc: Mapping[str, Any]) -> str:
    serial = doc.get("serial_number")
    if not isinstance(serial, str) or serial.strip().lower() in PLACEHOLDER_SERIALS:
        raise SmartctlError("no_serial", f"no usable serial number ({serial!r}); a drive needs one to be tracked")
    return serial.strip()


def _model(doc: Mapping[str, Any]) -> str:
    for key in ("model_name", "scsi_model_name"):
        if isinstance(doc.get(key), str) and doc[key].strip():
            return doc[key].strip()
    parts = [doc.get(k) for k in ("scsi_vendor", "scsi_product")]
    return " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())


def _capacity(doc: Mapping[str, Any]) -> int:
    for value in (_get(doc, "user_capacity", "bytes"), doc.get("nvme_total_capacity")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return -1


def _date(doc: Mapping[str, Any]) -> dt.date:
    stamp = _get(doc, "local_time", "time_t")
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        raise SmartctlError("no_date", "local_time.time_t is missing; pass a date (collect --date)")
    return dt.datetime.fromtimestamp(stamp, dt.UTC).date()


def _attributes(doc: Mapping[str, Any], kind: str) -> tuple[dict[str, list[int | None]], dict[str, str]]:
    if kind == "ata":
        return _ata(doc)
    if kind == "nvme":
        return _nvme(doc)
    if kind == "scsi":
        return _scsi(doc)
    raise SmartctlError("unknown_device_type", f"device type {kind!r} has no SMART mapping")


def _ata(doc: Mapping[str, Any]) -> tuple[dict[str, list[int | None]], dict[str, str]]:
    table = _get(doc, "ata_smart_attributes", "table")
    if not isinstance(table, list):
        raise SmartctlError("no_attributes", "ATA output without ata_smart_attributes.table (run smartctl --xall)")
    smart: dict[str, list[int | None]] = {}
    extra: dict[str, str] = {}
    for row in table:
        attr = row.get("id") if isinstance(row, Mapping) else None
        if not isinstance(attr, int) or not 1 <= attr <= 255:
            raise SmartctlError("bad_attribute", f"attribute without a valid id: {str(row)[:80]}")
        register = _get(row, "raw", "value")
        text = _get(row, "raw", "string")
        raw = leading_int(text) if isinstance(text, str) else None
        if raw is None and isinstance(register, int):
            raw = register
        if raw is not None and raw > MAX_SMART_RAW:
            raise SmartctlError("bad_raw", f"attribute {attr}: raw value {raw} exceeds 64 bits")
        if isinstance(register, int) and register != raw:
            extra[f"raw_value_{attr}"] = str(register)
        value = row.get("value")
        normalized = value if isinstance(value, int) and 0 <= value <= 255 else None
        smart[str(attr)] = [raw, normalized]
    return smart, extra


def _nvme(doc: Mapping[str, Any]) -> tuple[dict[str, list[int | None]], dict[str, str]]:
    log = doc.get("nvme_smart_health_information_log")
    if not isinstance(log, Mapping):
        raise SmartctlError("no_attributes", "NVMe output without nvme_smart_health_information_log")
    smart = {str(attr): [log[key], None] for key, attr in NVME_MAP.items() if _count(log.get(key))}
    extra = {f"nvme_{key}": str(value) for key, value in log.items() if key not in NVME_MAP and _scalar(value)}
    return smart, extra


def _scsi(doc: Mapping[str, Any]) -> tuple[dict[str, list[int | None]], dict[str, str]]:
    smart: dict[str, list[int | None]] = {}
    for path, attr in SCSI_MAP.items():
        value = _get(doc, *path)
        if _count(value):
            smart[str(attr)] = [value, None]
    extra: dict[str, str] = {}
    uncorrected = 0
    for op in ("read", "write", "verify"):
        counters = _get(doc, "scsi_error_counter_log", op)
        if isinstance(counters, Mapping):
            for key, value in counters.items():
                if key in _SCSI_COUNTERS and _scalar(value):
                    extra[f"scsi_{op}_{key}"] = str(value)
            if op != "verify" and _count(counters.get("total_uncorrected_errors")):
                uncorrected += counters["total_uncorrected_errors"]
                smart["187"] = [uncorrected, None]  # uncorrected read+write errors = Reported_Uncorrect
    if not smart:
        raise SmartctlError("no_attributes", "SCSI output without temperature, power-on time or error counters")
    return smart, extra


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SMART_RAW


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str))
