"""``diskwatch collect``: smartmontools on this host (or saved outputs) → the telemetry topic.

Runs ``smartctl --scan-open --json`` and ``smartctl --json --xall -d TYPE DEVICE``
per device (needs root or CAP_SYS_RAWIO), converts each output with
:func:`diskwatch.core.smartctl.convert`, and produces the records keyed by
serial with replay's producer settings (acks=all, idempotent) — or, with
``--print``, writes them as JSON lines to stdout for shell pipelines.
A device that gives no record is reported and skipped; the caller's exit
status says whether any did.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from diskwatch.core.records import TelemetryRecord
from diskwatch.core.settings import Settings
from diskwatch.core.smartctl import SmartctlError, convert

SMARTCTL_TIMEOUT_S = 120.0


@dataclass
class Output:
    """One smartctl output: where it came from and its JSON (or why it could not be read)."""

    source: str
    doc: Any = None
    error: SmartctlError | None = None


@dataclass
class CollectResult:
    records: list[tuple[str, TelemetryRecord]] = field(default_factory=list)  # (source, record)
    failed: list[tuple[str, SmartctlError]] = field(default_factory=list)


def scan_and_read(smartctl: str = "smartctl", devices: Iterable[str] = ()) -> Iterator[Output]:
    """Run smartctl on the given devices, or on every device its scan finds; one Output per device."""
    wanted = [{"name": name} for name in devices]
    if not wanted:
        scan = _run([smartctl, "--scan-open", "--json"], "scan")
        if scan.error is not None:
            yield scan
            return
        found = scan.doc.get("devices", []) if isinstance(scan.doc, dict) else None
        if not isinstance(found, list) or not found:
            yield Output("scan", error=SmartctlError(
                "no_devices", "smartctl --scan-open found no devices (run as root, or name them with --device)"))
            return
        wanted = [d for d in found if isinstance(d, dict) and isinstance(d.get("name"), str)]
    for device in wanted:
        kind = device.get("type")
        args = [smartctl, "--json", "--xall"] + (["-d", kind] if isinstance(kind, str) else []) + [device["name"]]
        yield _run(args, device["name"])


def _run(args: list[str], source: str) -> Output:
    """smartctl's JSON from stdout; its exit status is in the JSON (bits are judged by convert)."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=SMARTCTL_TIMEOUT_S, check=False)
    except FileNotFoundError:
        return Output(source, error=SmartctlError(
            "no_smartctl", f"{args[0]} not found: install smartmontools (apt-get install smartmontools)"))
    except subprocess.TimeoutExpired:
        return Output(source, error=SmartctlError("timeout", f"{' '.join(args)} took over {SMARTCTL_TIMEOUT_S:.0f}s"))
    try:
        return Output(source, json.loads(proc.stdout))
    except ValueError:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return Output(source, error=SmartctlError("not_json", f"{' '.join(args)}: {detail[0][:200]}"))


def read_saved(paths: Iterable[str], stdin: TextIO | None = None) -> Iterator[Output]:
    """Saved outputs: files, folders (their ``*.json``, sorted) or ``-`` (stdin; documents may follow each other)."""
    for spec in paths:
        if spec == "-":
            yield from _documents((stdin or sys.stdin).read(), "<stdin>")
            continue
        path = Path(spec)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if path.is_dir() and not files:
            yield Output(spec, error=SmartctlError("no_files", f"no *.json in {spec}"))
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                yield Output(str(file), error=SmartctlError("unreadable", f"{file}: {exc}"))
                continue
            yield from _documents(text, str(file))


def _documents(text: str, source: str) -> Iterator[Output]:
    """Every JSON document in ``text`` (one, JSON lines, or simply concatenated)."""
    decoder = json.JSONDecoder()
    position, count = 0, 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        try:
            doc, position = decoder.raw_decode(text, position)
        except ValueError as exc:
            yield Output(source, error=SmartctlError("not_json", f"{source}: not smartctl JSON ({exc})"))
            return
        count += 1
        yield Output(source if count == 1 else f"{source}#{count}", doc)
    if count == 0:
        yield Output(source, error=SmartctlError("not_json", f"{source}: empty"))


def convert_all(outputs: Iterable[Output], *, date: dt.date | None = None, host: str | None = None) -> CollectResult:
    """Convert every output; failures are collected with their reason, never raised."""
    result = CollectResult()
    for output in outputs:
        if output.error is not None:
            result.failed.append((output.source, output.error))
            continue
        try:
            result.records.append((output.source, convert(output.doc, date=date, host=host)))
        except SmartctlError as exc:
            result.failed.append((output.source, exc))
    return result


def print_records(records: Iterable[TelemetryRecord], out: TextIO, key_separator: str | None = None) -> None:
    """Wire JSON lines; with ``key_separator``, ``serial<sep>json`` for ``kcat -K<sep>``."""
    for record in records:
        line = record.to_json().decode()
        out.write(f"{record.serial_number}{key_separator}{line}\n" if key_separator else f"{line}\n")
    out.flush()


async def produce(records: list[TelemetryRecord], settings: Settings, topic: str | None = None) -> int:
    """Produce keyed by serial with replay's settings (acks=all, idempotent); returns records acked."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        **settings.kafka_client_options(), acks="all", linger_ms=20, compression_type="lz4",
        enable_idempotence=True,
    )
    try:
        await producer.start()
        futures = [
            await producer.send(topic or settings.topic_telemetry, value=r.to_json(), key=r.serial_number.encode())
            for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records)


def summary_lines(result: CollectResult) -> list[str]:
    """One line per device for stderr."""
    lines = []
    for source, record in result.records:
        kind = record.extra.get("device_type", "?")
        state = record.extra.get("smartctl_disk_state")
        passed = record.extra.get("smart_status_passed", "?")
        lines.append(
            f"ok    {source}: {record.serial_number} {record.model} ({kind}, {len(record.smart)} attributes, "
            f"SMART passed={passed}{', ' + state if state else ''})"
        )
    for source, error in result.failed:
        lines.append(f"error {source}: {error.code}: {error.reason}")
    return lines
