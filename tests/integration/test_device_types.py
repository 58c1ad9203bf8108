"""The worker leaves device classes its bundle was not trained on unscored (counted, not dead-lettered)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from diskwatch.core.records import TelemetryRecord
from diskwatch.models.bundle import load_bundle
from diskwatch.stream.processor import BatchProcessor, InMessage
from diskwatch.stream.windowstate import WindowState
from tests.conftest import TEST_RUN
from tests.integration.workers import read_records

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def unscored(reason: str) -> float:
    return REGISTRY.get_sample_value("diskwatch_records_unscored_total", {"reason": reason}) or 0.0


async def process(bundle_path: Path, redis_url: str, messages: list[InMessage]) -> tuple[dict[str, int], int, int]:
    """(windows scored per serial, dead letters, unscored) after one batch."""
    bundle = load_bundle(bundle_path)
    client = aioredis.from_url(redis_url)
    prefix = f"test:{TEST_RUN}:devtype:{uuid.uuid4().hex[:8]}"
    state = WindowState(client, bundle.spec, prefix=prefix, keep_days=bundle.window.window + bundle.window.max_gap,
                        ttl_seconds=600)
    try:
        pending = await BatchProcessor(bundle, state).prepare(messages)
        await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}:*")] or [f"{prefix}:none"])
    finally:
        await client.aclose()
    return {s: len(days) for s, days in pending.scored.items()}, len(pending.dead_letters), sum(
        pending.unscored.values())


def test_nvme_and_scsi_records_are_not_scored(sim_fleet: Path, sim_bundle: Path, redis_url: str) -> None:
    records = read_records(sim_fleet)
    serials = sorted({r.serial_number for r in records})[:12]
    kinds = {s: ("ata", "nvme", "scsi", None)[i % 4] for i, s in enumerate(serials)}
    messages = []
    for r in records:
        if r.serial_number in kinds:
            kind = kinds[r.serial_number]
            tagged = r if kind is None else TelemetryRecord.parse({**r.to_wire(), "extra": {"device_type": kind}})
            messages.append(InMessage(tagged.to_json(), r.serial_number.encode()))
    before = unscored("device_type_nvme"), unscored("device_type_scsi")
    scored, letters, skipped = asyncio.run(process(sim_bundle, redis_url, messages))
    assert letters == 0
    trained = {s for s, k in kinds.items() if k in ("ata", None)}
    assert scored and set(scored) <= trained  # ATA and untagged (Backblaze) drives only
    per_kind = {k: sum(1 for r in records if kinds.get(r.serial_number, "-") == k) for k in ("nvme", "scsi")}
    assert skipped == per_kind["nvme"] + per_kind["scsi"] > 0
    # Counted in the worker's metric by reason once the batch is through.
    assert (unscored("device_type_nvme"), unscored("device_type_scsi")) == (
        before[0] + per_kind["nvme"], before[1] + per_kind["scsi"])
