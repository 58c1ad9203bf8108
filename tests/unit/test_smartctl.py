"""smartctl --json → TelemetryRecord, checked on every real output in ../shared/data/smartctl.

The expected ATA values are read from each file here, independently of the
converter: RAW_VALUE's leading integer (what smartctl prints and Backblaze
records) and the normalized ``value``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from diskwatch.core.records import TelemetryRecord
from diskwatch.core.smartctl import SmartctlError, convert, leading_int

SMARTCTL_DIR = Path(
    os.environ.get("DISKWATCH_SMARTCTL_DATA", Path(__file__).resolve().parents[2].parent / "shared/data/smartctl")
)
FILES = sorted(SMARTCTL_DIR.glob("*.json")) if SMARTCTL_DIR.is_dir() else []
# Documented skips: the 4 files that keep the publisher's "REDACTED" serial (see the folder's
# README) and one whose smartctl exit status has bit 2 set (a SMART command failed).
NO_SERIAL = {"ST3200820AS_15", "INTEL_SSDPE2KX080T8_1", "sat-null-ST8000NM017B-2TJ103-sda", "HP_73.4G_MAS3735NC_25"}
UNREADABLE = {"sat-Phison_Driven_SSDs-KINGSTON_SA400M8120G-sda"}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def smartctl_dir() -> Path:
    if not FILES:
        pytest.skip(f"real smartctl outputs not found at {SMARTCTL_DIR} (expected ../shared next to the repo)")
    return SMARTCTL_DIR


def test_the_sample_is_complete(smartctl_dir: Path) -> None:
    assert len(FILES) == 148
    kinds = {p.stem: _load(p)["device"]["protocol"] for p in FILES}
    assert sorted(set(kinds.values())) == ["ATA", "NVMe", "SCSI"]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_real_output(path: Path, smartctl_dir: Path) -> None:
    doc = _load(path)
    if path.stem in NO_SERIAL:
        with pytest.raises(SmartctlError) as info:
            convert(doc)
        assert info.value.code == "no_serial" and "REDACTED" in info.value.reason
        return
    if path.stem in UNREADABLE:
        with pytest.raises(SmartctlError) as info:
            convert(doc)
        assert info.value.code == "smartctl_failed" and "exit status 4" in info.value.reason
        return
    record = convert(doc)
    assert record.serial_number == doc["serial_number"]
    assert record.date == dt.date(2009, 2, 13)  # local_time.time_t 1234567890, in UTC
    assert record.failure == 0
    assert record.extra["smartctl_exit_status"] == str(doc["smartctl"]["exit_status"])
    assert record.extra["smart_status_passed"] == str(doc["smart_status"]["passed"]).lower()
    # The record survives the wire (what the worker reads) unchanged.
    assert TelemetryRecord.from_json(record.to_json()) == record
    protocol = doc["device"]["protocol"]
    assert record.extra["device_type"] == protocol.lower()
    if protocol == "ATA":
        _check_ata(doc, record)
    elif protocol == "NVMe":
        log = doc["nvme_smart_health_information_log"]
        assert record.model == doc["model_name"]
        assert record.raw(194) == log["temperature"] and record.raw(9) == log["power_on_hours"]
        assert record.raw(12) == log["power_cycles"] and record.raw(187) == log["media_errors"]
        assert all(record.normalized(a) is None for a in record.smart)
        assert record.extra["nvme_critical_warning"] == str(log["critical_warning"])
    else:
        assert record.raw(194) == doc["temperature"]["current"]
        assert record.raw(9) == doc["power_on_time"]["hours"]
        assert record.raw(5) == doc["scsi_grown_defect_list"]
        assert record.model == doc["scsi_model_name"]


def _check_ata(doc: dict[str, Any], record: TelemetryRecord) -> None:
    table = doc["ata_smart_attributes"]["table"]
    expected = {}
    for row in table:
        text = row["raw"]["string"]
        expected[row["id"]] = (int(re.match(r"\s*(\d+)", text).group(1)), row["value"])  # type: ignore[union-attr]
    assert {a: (v.raw, v.normalized) for a, v in record.smart.items()} == expected
    assert record.model == doc["model_name"]
    assert record.capacity_bytes == doc["user_capacity"]["bytes"]
    for row in table:  # the packed 48-bit register is kept where it differs
        key = f"raw_value_{row['id']}"
        if row["raw"]["value"] != expected[row["id"]][0]:
            assert record.extra[key] == str(row["raw"]["value"])
        else:
            assert key not in record.extra


def test_packed_raw_values_take_the_printed_number(smartctl_dir: Path) -> None:
    """194 of "29 (Min/Max 22/34)" is 29, not the 48-bit register; 53 files differ on 194 alone."""
    differs = 0
    for path in FILES:
        doc = _load(path)
        for row in doc.get("ata_smart_attributes", {}).get("table", []):
            if row["id"] == 194 and row["raw"]["value"] != int(row["raw"]["string"].split()[0]):
                differs += 1
    assert differs == 53


@pytest.mark.parametrize(
    ("text", "value"),
    [("29 (Min/Max 22/34)", 29), ("50311h+35m+49.046s", 50311), ("2 2 2", 2), ("0x0a00", 2560), ("x", None)],
)
def test_leading_int(text: str, value: int | None) -> None:
    assert leading_int(text) == value


def _ata_doc() -> dict[str, Any]:
    return {
        "smartctl": {"exit_status": 0},
        "device": {"name": "/dev/sda", "protocol": "ATA", "type": "sat"},
        "model_name": "ST4000DM000",
        "serial_number": "Z1",
        "user_capacity": {"bytes": 4000787030016},
        "local_time": {"time_t": 1700000000},
        "smart_status": {"passed": True},
        "ata_smart_attributes": {"table": [{"id": 5, "value": 100, "raw": {"value": 8, "string": "8"}}]},
    }


@pytest.mark.parametrize("bits", [1, 2, 4, 5])
def test_unreadable_exit_bits_skip_the_device(bits: int) -> None:
    doc = _ata_doc()
    doc["smartctl"]["exit_status"] = bits
    with pytest.raises(SmartctlError, match="smartctl_failed"):
        convert(doc)


def test_disk_state_bits_keep_the_record() -> None:
    doc = _ata_doc()
    doc["smartctl"]["exit_status"] = 8 | 16
    doc["smart_status"]["passed"] = False
    record = convert(doc, host="node7")
    assert record.extra["smartctl_exit_status"] == "24"
    assert record.extra["smart_status_passed"] == "false"
    assert "disk failing" in record.extra["smartctl_disk_state"]
    assert record.extra["host"] == "node7" and record.raw(5) == 8


def test_error_message_skips_the_device() -> None:
    doc = _ata_doc()
    doc["smartctl"]["messages"] = [{"string": "/dev/sda: Unable to detect device type", "severity": "error"}]
    with pytest.raises(SmartctlError, match="Unable to detect"):
        convert(doc)


@pytest.mark.parametrize("serial", ["", "  ", "REDACTED", None])
def test_missing_serial_is_an_error(serial: str | None) -> None:
    doc = _ata_doc()
    doc["serial_number"] = serial
    with pytest.raises(SmartctlError, match="no_serial"):
        convert(doc)


def test_date_override_and_missing_date() -> None:
    doc = _ata_doc()
    assert convert(doc).date == dt.date(2023, 11, 14)
    assert convert(doc, date=dt.date(2024, 1, 2)).date == dt.date(2024, 1, 2)
    del doc["local_time"]
    with pytest.raises(SmartctlError, match="no_date"):
        convert(doc)
    assert convert(doc, date=dt.date(2024, 1, 2)).date == dt.date(2024, 1, 2)


def test_bad_values_are_clear_errors() -> None:
    doc = _ata_doc()
    bad = copy.deepcopy(doc)
    bad["ata_smart_attributes"]["table"][0]["id"] = 300
    with pytest.raises(SmartctlError, match="bad_attribute"):
        convert(bad)
    bad = copy.deepcopy(doc)
    del bad["ata_smart_attributes"]
    with pytest.raises(SmartctlError, match="no_attributes"):
        convert(bad)
    with pytest.raises(SmartctlError, match="not_an_object"):
        convert([doc])  # type: ignore[arg-type]
