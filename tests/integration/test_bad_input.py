"""Bad input never costs data: a fuzzed stream through the real worker (Kafka + Redis).

Every message gets exactly one outcome — stored in its drive's window, or a
dead letter with a documented code — and the reference decoder
(:func:`diskwatch.core.wire.decode_checked`) predicts which. Drives that were
already stored keep every day and value, whatever arrives for them (future or
ancient dates, invisible characters in the serial, oversized copies), and the
worker stays healthy and takes the next valid record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from diskwatch.core.records import REASON_CODES, InvalidRecord, TelemetryRecord, day_number
from diskwatch.core.wire import InputLimits, decode_checked
from tests.integration.test_worker import cleanup, drive_state, free_port, last_days, wait_for
from tests.integration.workers import Stream, WorkerProcess, http_get
from tests.unit.test_records import json_values, recordish

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

BASELINE_DRIVES = 4
TODAY = dt.datetime.now(dt.UTC).date()


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the reference decoder says about one message: its stored (serial, day) or its code."""

    stored: tuple[str, int] | None = None
    code: str | None = None


def predict(value: bytes | None) -> Outcome:
    try:
        record = decode_checked(value, InputLimits())  # the worker runs with the default limits
    except InvalidRecord as error:
        return Outcome(code=error.code)
    return Outcome(stored=(record.serial_number, day_number(record.date)))


# --- message strategies ------------------------------------------------------

def _wire(serial: str, day: dt.date) -> dict[str, Any]:
    return {"date": day.isoformat(), "serial_number": serial, "model": "FUZZ", "capacity_bytes": 10**12,
            "failure": 0, "smart": {"5": [1, 100], "9": [142483906, 99], "194": [30, None]}}


fresh_serials = st.integers(0, 10**12).map(lambda n: f"FZ{n:012d}")
fresh_days = st.dates(dt.date(2024, 1, 1), dt.date(2024, 2, 9))
# One field of a valid record replaced by anything JSON can hold (new drives only).
mutated = st.builds(
    lambda serial, day, name, value: json.dumps({**_wire(serial, day), name: value}).encode(),
    fresh_serials, fresh_days,
    st.sampled_from(["date", "serial_number", "model", "capacity_bytes", "failure", "smart", "extra", "x"]),
    json_values,
)


@st.composite
def attacks_on_stored(draw: st.DrawFn, baseline: dict[str, list[int]]) -> bytes | None:
    """Messages about drives already stored that must change nothing about them."""
    serial = draw(st.sampled_from(sorted(baseline)))
    stored_day = dt.date(1970, 1, 1) + dt.timedelta(days=draw(st.sampled_from(baseline[serial])))
    kind = draw(st.sampled_from(["future", "far_future", "ancient", "invisible", "oversized", "capacity_text"]))
    if kind == "future":
        return json.dumps(_wire(serial, TODAY + dt.timedelta(days=draw(st.integers(5, 400))))).encode()
    if kind == "far_future":
        return json.dumps(_wire(serial, dt.date(2099, 1, 1))).encode()
    if kind == "ancient":
        return json.dumps(_wire(serial, draw(st.dates(dt.date(1, 1, 1), dt.date(1999, 12, 31))))).encode()
    if kind == "invisible":  # the same drive, an existing day: a duplicate, stored by HSETNX as nothing new
        spelled = draw(st.sampled_from(["\u200b", "\ufeff", " ", "\u2060"])) + serial + draw(st.sampled_from(["", " ", "\u200d"]))
        return json.dumps(_wire(spelled, stored_day)).encode()
    if kind == "oversized":
        return json.dumps({**_wire(serial, stored_day), "model": "M" * 70_000}).encode()
    return json.dumps({**_wire(serial, stored_day), "capacity_bytes": "4000787030016"}).encode()


def messages(baseline: dict[str, list[int]]) -> st.SearchStrategy[list[bytes | None]]:
    one = st.one_of(
        st.binary(max_size=120),
        json_values.map(lambda v: json.dumps(v).encode()),
        recordish.map(lambda v: json.dumps(v).encode()),
        mutated,
        st.builds(lambda s, d: json.dumps(_wire(s, d)).encode(), fresh_serials, fresh_days),  # plainly valid
        attacks_on_stored(baseline),
        st.sampled_from([None, b"", b" ", b"null", b"{}", b"\xef\xbb\xbf{}"]),
    )
    return st.lists(one, min_size=20, max_size=40)


# --- the test ----------------------------------------------------------------

async def produce(stream: Stream, items: list[tuple[bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stream.bootstrap, acks="all", linger_ms=5,
                                max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(stream.telemetry, value=v, key=k) for k, v in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def snapshot(client: redis.Redis, stream: Stream, bundle: Path, serials: list[str]) -> dict[str, Any]:
    out = {}
    for serial in serials:
        state = drive_state(client, stream, bundle, serial)
        out[serial] = (list(state.days), np.asarray(state.vectors).tobytes())
    return out


def test_fuzzed_stream_every_message_has_one_outcome_and_costs_no_data(
    kafka_bootstrap: str, redis_url: str, sim_fleet: Path, sim_bundle: Path,
) -> None:
    client = redis.Redis.from_url(redis_url)
    stream = Stream(kafka_bootstrap, redis_url)
    asyncio.run(stream.create_topics())
    port = free_port()
    round_no, letters_so_far, seen = [0], [0], Counter()
    try:
        with WorkerProcess(stream, sim_bundle, DISKWATCH_METRICS_PORT=port) as worker:
            wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 120, "worker health", worker)
            history = last_days(sim_fleet, sim_bundle, BASELINE_DRIVES)
            base = [r for rs in history.values() for r in rs]
            asyncio.run(stream.produce_records(base))
            wait_for(lambda: sum(len(drive_state(client, stream, sim_bundle, s).days) for s in history) == len(base),
                     120, "baseline days in Redis", worker)
            serials = sorted(history)
            before = snapshot(client, stream, sim_bundle, serials)
            baseline_days = {s: before[s][0] for s in serials}

            # An 800 KB binary message once stalled every partition; it goes first.
            big = bytes(range(256)) * 3200

            @settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(messages(baseline_days))
            def fuzz(values: list[bytes | None]) -> None:
                round_no[0] += 1
                if round_no[0] == 1:
                    values = [big, *values]
                tag = f"r{round_no[0]}"
                keys = [f"{tag}-{i}".encode() for i in range(len(values))]
                sentinel = TelemetryRecord(date=dt.date(2024, 2, 1), serial_number=f"SENTINEL-{stream.tag}-{tag}",
                                           smart={5: (0, 100)})
                outcomes = [predict(v) for v in values]
                asyncio.run(produce(stream, [*zip(keys, values, strict=True),
                                             (b"sentinel", sentinel.to_json())]))
                # The worker still takes the next valid record after whatever came before it.
                wait_for(lambda: drive_state(client, stream, sim_bundle, sentinel.serial_number).days,
                         120, f"the sentinel after round {tag}", worker)
                rejected = {k: o.code for k, o in zip(keys, outcomes, strict=True) if o.code is not None}
                letters_so_far[0] += len(rejected)
                everything = asyncio.run(stream.read(stream.dlq, expect=letters_so_far[0], timeout_s=60))
                letters = [x for x in everything if (x.get("key") or "").startswith(f"{tag}-")]
                by_key = {x["key"].encode(): x for x in letters}
                assert len(by_key) == len(letters), "a message was dead-lettered twice"
                assert {k: x["reason_code"] for k, x in by_key.items()} == rejected
                for key, letter in by_key.items():
                    value = values[keys.index(key)]
                    assert letter["reason_code"] in REASON_CODES
                    assert len(json.dumps(letter)) < 64 * 1024
                    if value is None:
                        assert letter["payload"] is None
                    else:
                        assert letter["payload_sha256"] == hashlib.sha256(value).hexdigest()
                        assert letter["payload_length"] == len(value)
                # Accepted messages are stored: a new drive's only day exactly; a drive that got
                # several (fuzzing repeats short serials) has a window, whatever the trim rule kept.
                seen.update(o.stored[0] for o in outcomes if o.stored)
                for key, o in zip(keys, outcomes, strict=True):
                    if o.stored:
                        days = drive_state(client, stream, sim_bundle, o.stored[0]).days
                        assert (o.stored[1] in days) if seen[o.stored[0]] == 1 else days, (key, o)
                # The stored drives lost and changed nothing.
                assert snapshot(client, stream, sim_bundle, serials) == before

            fuzz()
            status, body = http_get(f"http://127.0.0.1:{port}/healthz")
            assert status == 200, body
            assert worker.alive()
    finally:
        cleanup(client, stream)
        client.close()
