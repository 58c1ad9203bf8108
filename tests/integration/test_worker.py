"""The streaming worker against the real local Kafka and Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis

from diskwatch.core.records import TelemetryRecord
from diskwatch.models.alerting import severity
from diskwatch.models.bundle import load_bundle, read_manifest
from diskwatch.models.features import FeatureSpec
from diskwatch.models.inference import Scores
from diskwatch.stream.windowstate import DriveState, spec_fingerprint, window_key
from diskwatch.training.evaluate import score_dump
from tests.integration.workers import (
    Stream,
    WorkerProcess,
    die_with_parent,
    http_get,
    read_records,
    session_members,
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def assigned(port: int) -> list[str]:
    """The partitions a worker's /healthz says it holds (none while it does not answer 200)."""
    code, body = http_get(f"http://127.0.0.1:{port}/healthz")
    return json.loads(body)["assigned"] if code == 200 else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_failing(truth: dict, fleet_days: list[dt.date], count: int, min_history: int = 10) -> list[str]:
    """Failing drives with precursors and enough history before the failure."""
    start = fleet_days[0]
    fails = [
        s for s, f in sorted(truth["failures"].items())
        if f["precursor"] and (dt.date.fromisoformat(f["failure_date"]) - max(start, dt.date.fromisoformat(f["first_date"]))).days >= min_history
    ][:count]
    return fails


def expected_alerts(bundle_path: Path, dump: Path) -> tuple[set[tuple[str, str, str]], dict]:
    """What the offline path (same features, windows, scorer and rule) says should alert."""
    bundle = load_bundle(bundle_path)
    scored = score_dump(bundle, dump, split="all")
    names = scored["serial_names"]
    scores = Scores(scored["probability"], scored["anomaly"], np.zeros((scored["anomaly"].size, 0)), None)
    levels = severity(scores, bundle.thresholds)
    expected: set[tuple[str, str, str]] = set()
    current: dict[int, int] = {}
    order = np.lexsort((scored["end_day"], scored["serial"]))
    for i in order:
        sid = int(scored["serial"][i])
        level = int(levels[i])
        if level > current.get(sid, 0):
            day = dt.date(1970, 1, 1) + dt.timedelta(days=int(scored["end_day"][i]))
            expected.add((names[sid], day.isoformat(), "critical" if level == 2 else "warning"))
        current[sid] = level
    return expected, scored


def write_subset(src: Path, dst: Path, serials: set[str]) -> Path:
    """A smaller dump with only some drives (same CSV layout)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.csv")):
        lines = path.read_text().splitlines()
        keep = [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 2)[1] in serials]
        (dst / path.name).write_text("\n".join(keep) + "\n")
    return dst


@functools.lru_cache(maxsize=8)
def bundle_spec(bundle_path: Path) -> FeatureSpec:
    return read_manifest(bundle_path).feature_spec


def drive_state(client: redis.Redis, stream: Stream, bundle_path: Path, serial: str) -> DriveState:
    spec = bundle_spec(bundle_path)
    key = window_key(stream.prefix, spec_fingerprint(spec), serial)
    return DriveState.decode(client.get(key), spec.n_features)


def wait_for(condition, timeout: float, what: str, worker: WorkerProcess | None = None,
             interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if worker is not None and not worker.alive():
            pytest.fail(f"worker exited while waiting for {what}:\n{worker.output()[-4000:]}")
        time.sleep(interval)
    tail = worker.output()[-4000:] if worker else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{tail}")


def alerts_when_drained(stream: Stream, worker: WorkerProcess, timeout: float = 120) -> list[dict]:
    """Every alert of the stream, read once the group's lag is 0: a worker publishes a batch's alerts
    and waits for their acks before it commits the batch, so none can still be on its way (a
    condition, where an idle period to wait out was slow and, on a busy machine, could end early)."""
    wait_for(lambda: stream.total_lag() == 0, timeout, "consumer lag 0 (every offset committed)", worker)
    return asyncio.run(stream.read_to_end(stream.alerts))


def stored_days(client: redis.Redis, stream: Stream, bundle_path: Path, serials: list[str]) -> int:
    return sum(len(drive_state(client, stream, bundle_path, s).days) for s in serials)


def last_days(sim_fleet: Path, sim_bundle: Path, drives: int) -> dict[str, list[TelemetryRecord]]:
    """The first ``drives`` serials with their records of the last S + G calendar days: every one
    must stay in a window, whatever the batch boundaries.

    Calendar days, not the last S + G records: a drive with a gap in them spans more than S + G
    days, and when a batch boundary falls before its newest record the trim (keep days newer
    than newest − (S + G)) rightly drops its oldest one — the count the tests wait for was then
    never reached (the intermittent "timed out waiting for every record stored").
    """
    bundle = load_bundle(sim_bundle)
    keep = bundle.window.window + bundle.window.max_gap
    by_serial: dict[str, list[TelemetryRecord]] = {}
    for r in read_records(sim_fleet):
        by_serial.setdefault(r.serial_number, []).append(r)
    return {s: [r for r in rs if (rs[-1].date - r.date).days < keep]
            for s, rs in sorted(by_serial.items())[:drives]}


@pytest.fixture
def sync_redis(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def cleanup(client: redis.Redis, stream: Stream) -> None:
    keys = list(client.scan_iter(match=f"{stream.prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


# ---------------------------------------------------------------------------


def test_stream_alerts_match_offline_scoring_and_bad_input_goes_to_dlq(
    kafka_bootstrap: str, redis_url: str, sync_redis: redis.Redis, sim_fleet: Path, sim_truth: dict,
    sim_bundle: Path, tmp_path: Path,
) -> None:
    days = sorted(dt.date.fromisoformat(p.stem) for p in sim_fleet.glob("*.csv"))
    failing = pick_failing(sim_truth, days, 6)
    all_serials = sorted({r.serial_number for r in read_records(sim_fleet) if r.date == days[0]})
    healthy = [s for s in all_serials if s not in sim_truth["failures"] and s not in sim_truth.get("retired", {})][:40]
    dump = write_subset(sim_fleet, tmp_path / "subset", set(failing) | set(healthy))
    expected, _ = expected_alerts(sim_bundle, dump)
    caught = {s for s, d, _ in expected if s in failing and d < sim_truth["failures"][s]["failure_date"]}
    assert caught, "the bundle should flag at least one failing drive with precursors before it fails"

    records = read_records(dump)
    bad: list[tuple[bytes | None, bytes]] = [
        (b"k1", b"{not json"),
        (b"k2", json.dumps({"date": "2024-01-05", "serial_number": 123}).encode()),
        (b"k3", json.dumps({"date": "2024-01-05", "serial_number": "Z", "smart": {"5": [1, 999]}}).encode()),
        (b"k4", json.dumps({"date": "2024-01-05", "serial_number": "Z", "smart": {"5": [-1, 100]}}).encode()),
        (b"k5", json.dumps({"date": "2024-01-05", "serial_number": "Z", "capacity_bytes": 10**17}).encode()),
        (b"k6", json.dumps({"date": "2024-01-05", "serial_number": "Z", "colour": "red"}).encode()),
        (b"k7", b"\xff\xfe\x00garbage"),
        (None, b""),
    ]
    messages = [(r.serial_number.encode(), r.to_json()) for r in records]
    for i, item in enumerate(bad):  # interleave: the worker must keep going after each
        messages.insert((i + 1) * len(messages) // (len(bad) + 1), item)

    port = free_port()
    stream = Stream(kafka_bootstrap, redis_url)
    asyncio.run(stream.create_topics())
    try:
        with WorkerProcess(stream, sim_bundle, DISKWATCH_METRICS_PORT=port) as worker:
            wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 120, "worker health", worker)
            asyncio.run(stream.produce(messages))
            wait_for(lambda: stored_days(sync_redis, stream, sim_bundle, failing[:1] + healthy[:1]) > 0,
                     120, "records in Redis", worker)
            letters = asyncio.run(stream.read(stream.dlq, expect=len(bad), timeout_s=120))
            alerts = asyncio.run(stream.read(stream.alerts, expect=len(expected), timeout_s=180, idle_s=8))
            status, metrics_text = http_get(f"http://127.0.0.1:{port}/metrics")
            health = json.loads(http_get(f"http://127.0.0.1:{port}/healthz")[1])
    finally:
        cleanup(sync_redis, stream)

    assert {letter["reason_code"] for letter in letters} >= {"malformed_json", "bad_serial", "bad_normalized",
                                                       "bad_raw", "bad_capacity", "unknown_field"}
    assert len(letters) == len(bad)
    assert all(x["source_topic"] == stream.telemetry and x["source_offset"] is not None for x in letters)
    assert any(x["payload_encoding"] == "base64" for x in letters)

    got = {(a["serial_number"], a["date"], a["severity"]) for a in alerts}
    assert got == expected
    assert len(alerts) == len({a["idempotency_key"] for a in alerts})
    for alert in alerts:
        assert alert["reasons"] and alert["reasons"][0]["feature"].startswith("smart_")
        assert alert["window_end"] == alert["date"]
    false_alarms = {a["serial_number"] for a in alerts} & set(healthy)
    assert len(false_alarms) <= max(1, len(healthy) // 10)

    assert status == 200 and "diskwatch_records_in_total" in metrics_text
    malformed = sum(x["reason_code"] == "malformed_json" for x in letters)
    assert f'diskwatch_records_invalid_total{{reason="malformed_json"}} {malformed:.1f}' in metrics_text
    last_batch = re.search(r"^diskwatch_last_batch_timestamp_seconds (\S+)$", metrics_text, re.M)
    assert last_batch and 0 < time.time() - float(last_batch.group(1)) < 600  # set by the batches above
    assert health["status"] == "ok" and health["assigned"] == [f"{stream.telemetry}:0"]


def test_duplicates_and_shuffled_days_give_identical_windows_and_alerts(
    kafka_bootstrap: str, redis_url: str, sync_redis: redis.Redis, sim_fleet: Path, sim_truth: dict,
    sim_bundle: Path,
) -> None:
    days = sorted(dt.date.fromisoformat(p.stem) for p in sim_fleet.glob("*.csv"))
    failing = pick_failing(sim_truth, days, 3)
    first_day = [r for r in read_records(sim_fleet) if r.date == days[0]]
    healthy = [r.serial_number for r in first_day if r.serial_number not in sim_truth["failures"]][:7]
    chosen = failing + healthy
    records = read_records(sim_fleet, chosen)

    def renamed(prefix: str, rs: list[TelemetryRecord]) -> list[TelemetryRecord]:
        return [r.model_copy(update={"serial_number": prefix + r.serial_number}) for r in rs]

    ordered = renamed("A-", records)
    messy = renamed("B-", records) + renamed("B-", random.Random(5).sample(records, len(records) // 3))
    random.Random(7).shuffle(messy)

    stream = Stream(kafka_bootstrap, redis_url)
    asyncio.run(stream.create_topics())
    try:
        with WorkerProcess(stream, sim_bundle, DISKWATCH_BATCH_SIZE=5000, DISKWATCH_BATCH_LINGER_S=2) as worker:
            asyncio.run(stream.produce_records(ordered))
            wait_for(lambda: stored_days(sync_redis, stream, sim_bundle, ["A-" + s for s in chosen]) > 0, 120,
                     "ordered records", worker)
            asyncio.run(stream.produce_records(messy))  # one burst → one batch
            wait_for(lambda: stored_days(sync_redis, stream, sim_bundle, ["B-" + s for s in chosen])
                     == stored_days(sync_redis, stream, sim_bundle, ["A-" + s for s in chosen]), 120,
                     "shuffled records", worker)
            first = alerts_when_drained(stream, worker)
            before = {s: drive_state(sync_redis, stream, sim_bundle, "B-" + s) for s in chosen}
            asyncio.run(stream.produce_records(renamed("B-", records)))  # every record again, later
            wait_for(lambda: stream.total_lag() == 0, 120, "the re-sent records consumed (lag 0)", worker)
            second = asyncio.run(stream.read_to_end(stream.alerts))  # lag 0 waited for above
            after = {s: drive_state(sync_redis, stream, sim_bundle, "B-" + s) for s in chosen}
    finally:
        cleanup(sync_redis, stream)

    by_prefix: dict[str, set[tuple[str, str, str, float]]] = {"A-": set(), "B-": set()}
    for alert in first:
        prefix, serial = alert["serial_number"][:2], alert["serial_number"][2:]
        by_prefix[prefix].add((serial, alert["date"], alert["severity"], round(alert["failure_probability"], 5)))
    assert by_prefix["A-"] == by_prefix["B-"]
    assert any(s in failing for s, *_ in by_prefix["A-"]), "expected at least one alert on a failing drive"
    assert len(second) == len(first), "re-sent duplicates must not create alerts"
    for s in chosen:
        assert before[s].days == after[s].days
        np.testing.assert_array_equal(before[s].vectors, after[s].vectors)


def test_windows_match_between_orders(
    kafka_bootstrap: str, redis_url: str, sync_redis: redis.Redis, sim_fleet: Path, sim_bundle: Path,
) -> None:
    """Stored day vectors are identical whatever the arrival order."""
    records = read_records(sim_fleet)[:600]
    serials = sorted({r.serial_number for r in records})
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    stream_a, stream_b = Stream(kafka_bootstrap, redis_url), Stream(kafka_bootstrap, redis_url)
    try:
        # The two streams are independent (own topics, group and key prefix): their workers run side by side.
        workers = []
        for stream, rs in ((stream_a, records), (stream_b, shuffled + shuffled[:100])):
            asyncio.run(stream.create_topics())
            asyncio.run(stream.produce_records(rs))
            workers.append(WorkerProcess(stream, sim_bundle, DISKWATCH_BATCH_SIZE=2000, DISKWATCH_BATCH_LINGER_S=2)
                           .start())
        for stream, w in zip((stream_a, stream_b), workers, strict=True):
            wait_for(lambda s=stream: stored_days(sync_redis, s, sim_bundle, serials) == len(records), 120,
                     "all records stored", w)
            w.stop()
        for serial in serials:
            a = drive_state(sync_redis, stream_a, sim_bundle, serial)
            b = drive_state(sync_redis, stream_b, sim_bundle, serial)
            assert a.days == b.days
            np.testing.assert_array_equal(a.vectors, b.vectors)
    finally:
        cleanup(sync_redis, stream_a)
        cleanup(sync_redis, stream_b)


def test_sigkill_mid_stream_then_restart_loses_nothing(
    kafka_bootstrap: str, redis_url: str, sync_redis: redis.Redis, sim_fleet: Path, sim_truth: dict,
    sim_bundle: Path,
) -> None:
    chosen = last_days(sim_fleet, sim_bundle, 400)
    send = [r for rs in chosen.values() for r in rs]
    probe = list(chosen)[:5]
    stream = Stream(kafka_bootstrap, redis_url)
    asyncio.run(stream.create_topics())
    # Small batches so the kill lands mid-stream; a short session timeout so the
    # broker hands the dead worker's partition to the next one within seconds.
    small = {"DISKWATCH_BATCH_SIZE": 16, "DISKWATCH_BATCH_LINGER_S": 0.05, "DISKWATCH_KAFKA_SESSION_TIMEOUT_S": 6}
    try:
        asyncio.run(stream.produce_records(send))
        first = WorkerProcess(stream, sim_bundle, **small).start()
        wait_for(lambda: stored_days(sync_redis, stream, sim_bundle, probe) > 0, 120,
                 "some progress before the kill", first, interval=0.05)
        first.kill()
        partial = stored_days(sync_redis, stream, sim_bundle, list(chosen))
        assert partial < len(send), "the kill came too late to test anything"
        with WorkerProcess(stream, sim_bundle) as second:
            wait_for(lambda: stored_days(sync_redis, stream, sim_bundle, list(chosen)) == len(send), 180,
                     "every record in a window after restart", second)
            alerts = alerts_when_drained(stream, second)
    finally:
        cleanup(sync_redis, stream)
    keys = Counter(a["idempotency_key"] for a in alerts)
    assert not [k for k, n in keys.items() if n > 1], f"duplicate alerts: {keys.most_common(3)}"


class PrivateRedis:
    """A redis-server of this test's own (AOF, fsync always) that it may stop and start again."""

    def __init__(self, directory: Path, fsync: str = "always") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (deploy/local/stack up installs it)")
        self.binary, self.dir, self.port, self.fsync = binary, directory, free_port(), fsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", self.fsync],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), 30, "the private Redis to answer")
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no final fsync (with ``everysec`` the last second may be lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_redis_down_mid_stream_worker_retries_and_loses_nothing(
    kafka_bootstrap: str, sim_fleet: Path, sim_bundle: Path, tmp_path: Path
) -> None:
    chosen = last_days(sim_fleet, sim_bundle, 200)
    days = sorted({r.date for rs in chosen.values() for r in rs})
    cut = days[len(days) // 2]
    first = [r for rs in chosen.values() for r in rs if r.date < cut]
    second = [r for rs in chosen.values() for r in rs if r.date >= cut]
    private = PrivateRedis(tmp_path).start()
    client = redis.Redis.from_url(private.url)
    stream = Stream(kafka_bootstrap, private.url)
    asyncio.run(stream.create_topics())
    port = free_port()
    try:
        with WorkerProcess(stream, sim_bundle, DISKWATCH_METRICS_PORT=port) as worker:
            asyncio.run(stream.produce_records(first))
            wait_for(lambda: stored_days(client, stream, sim_bundle, list(chosen)) == len(first), 120,
                     "the first half stored", worker)
            private.stop()  # Redis goes away while the second half arrives
            asyncio.run(stream.produce_records(second))
            wait_for(lambda: metric(port, 'diskwatch_retries_total{target="redis"}') > 0, 60,
                     "the worker to retry Redis", worker)
            time.sleep(2)  # a few backoff rounds, not a crash loop
            assert worker.alive(), worker.output()[-3000:]
            private.start()
            wait_for(lambda: _pings(client) and stored_days(client, stream, sim_bundle, list(chosen)) == len(first) + len(second),
                     120, "every record stored after Redis came back", worker)
            assert worker.alive()
    finally:
        client.close()
        private.stop()


def metric(port: int, name: str) -> float:
    """One sample of the worker's /metrics (0 when absent or unreachable)."""
    code, body = http_get(f"http://127.0.0.1:{port}/metrics")
    if code != 200:
        return 0.0
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_two_workers_share_four_partitions_and_survive_rebalance(
    kafka_bootstrap: str, redis_url: str, sync_redis: redis.Redis, sim_fleet: Path, sim_bundle: Path,
) -> None:
    chosen = last_days(sim_fleet, sim_bundle, 300)
    records = [r for rs in chosen.values() for r in rs]
    half = len(records) // 2
    stream = Stream(kafka_bootstrap, redis_url, partitions=4)
    asyncio.run(stream.create_topics())
    port_a, port_b = free_port(), free_port()
    try:
        a = WorkerProcess(stream, sim_bundle, DISKWATCH_METRICS_PORT=port_a).start()
        wait_for(lambda: http_get(f"http://127.0.0.1:{port_a}/healthz")[0] == 200, 120, "worker A", a)
        asyncio.run(stream.produce_records(records[:half]))
        b = WorkerProcess(stream, sim_bundle, DISKWATCH_METRICS_PORT=port_b).start()

        wait_for(lambda: len(assigned(port_a)) == 2 and len(assigned(port_b)) == 2, 120,
                 "the group to split 4 partitions 2+2", b)

        def lag_partitions(port: int) -> set[str]:
            _, body = http_get(f"http://127.0.0.1:{port}/metrics")
            return set(re.findall(r'^diskwatch_consumer_lag\{partition="(\d+)"\}', body, re.M))

        # A reported lag for all 4 partitions before B joined; the 2 it gave away are B's to report now.
        assert lag_partitions(port_a) <= {p.rsplit(":", 1)[1] for p in assigned(port_a)}
        asyncio.run(stream.produce_records(records[half:]))
        a.stop()  # partitions move back to B
        wait_for(lambda: len(assigned(port_b)) == 4, 120, "B to take all 4 partitions", b)
        asyncio.run(stream.produce_records(records[:half]))  # redelivery-like duplicates
        wait_for(lambda: stored_days(sync_redis, stream, sim_bundle, list(chosen)) == len(records), 180,
                 "every record stored", b)
        alerts = alerts_when_drained(stream, b)
        b.stop()
    finally:
        cleanup(sync_redis, stream)
    keys = Counter(x["idempotency_key"] for x in alerts)
    assert not [k for k, n in keys.items() if n > 1]


def test_workers_2_starts_two_consumers_that_split_the_partitions_and_stop_on_sigterm(
    kafka_bootstrap: str, redis_url: str, sync_redis: redis.Redis, sim_fleet: Path, sim_bundle: Path,
) -> None:
    """`diskwatch worker --workers 2`: one supervisor, two children in one group (metrics on PORT and
    PORT + 1), every record stored once, and one SIGTERM stops all of them with exit status 0."""
    chosen = last_days(sim_fleet, sim_bundle, 100)
    records = [r for rs in chosen.values() for r in rs]
    stream = Stream(kafka_bootstrap, redis_url, partitions=4)
    asyncio.run(stream.create_topics())
    port = free_port()
    while not _bindable(port + 1):
        port = free_port()
    worker = WorkerProcess(stream, sim_bundle, "--workers", "2", DISKWATCH_METRICS_PORT=port).start()
    try:
        wait_for(lambda: len(assigned(port)) == 2 and len(assigned(port + 1)) == 2, 120,
                 "both children to hold 2 of the 4 partitions", worker)
        assert set(assigned(port)).isdisjoint(assigned(port + 1))
        asyncio.run(stream.produce_records(records))
        wait_for(lambda: stored_days(sync_redis, stream, sim_bundle, list(chosen)) == len(records), 120,
                 "every record stored", worker)
        wait_for(lambda: stream.total_lag() == 0, 120, "consumer lag 0", worker)
        assert worker.proc is not None
        supervisor = worker.proc.pid
        assert len(session_members(supervisor)) == 3, "the supervisor and its two children"
        os.kill(supervisor, signal.SIGTERM)  # the supervisor only (Kubernetes signals PID 1): it forwards
        assert worker.proc.wait(60) == 0, worker.output()[-3000:]
        wait_for(lambda: session_members(supervisor) == [], 30, "the children to exit with the supervisor", worker)
    finally:
        worker.kill()
        cleanup(sync_redis, stream)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.real_data
def test_real_failing_drive_alerts_before_failure(
    kafka_bootstrap: str, redis_url: str, sync_redis: redis.Redis, real_bundle: Path,
) -> None:
    """A bundle trained on the real sample flags a real failing drive's history before it dies."""
    bundle_path, small = real_bundle / "bundle", real_bundle / "subset"
    failed = json.loads((real_bundle / "drives.json").read_text())["failed"]
    expected, _ = expected_alerts(bundle_path, small)
    epoch = dt.date(1970, 1, 1)
    early = {s for s, d, _ in expected if s in failed and dt.date.fromisoformat(d) < epoch + dt.timedelta(days=failed[s])}
    if not early:
        pytest.fail("the real-data bundle flags no failing drive before failure; nothing to check in the stream")
    stream = Stream(kafka_bootstrap, redis_url)
    asyncio.run(stream.create_topics())
    try:
        with WorkerProcess(stream, bundle_path):
            asyncio.run(stream.produce_records(read_records(small)))
            alerts = asyncio.run(stream.read(stream.alerts, expect=len(expected), timeout_s=240, idle_s=10))
    finally:
        cleanup(sync_redis, stream)
    got = {(a["serial_number"], a["date"], a["severity"]) for a in alerts}
    assert got == expected
    assert {s for s, d, _ in got if s in early and dt.date.fromisoformat(d) < epoch + dt.timedelta(days=failed[s])}


def test_sigterm_mid_batch_with_redis_down_commits_nothing_and_stuck_worker_is_unhealthy(
    kafka_bootstrap: str, sim_fleet: Path, sim_bundle: Path, tmp_path: Path
) -> None:
    """Redis down, 5 records in, /healthz says stalled, SIGTERM, Redis up, restart: all 5 stored."""
    chosen = last_days(sim_fleet, sim_bundle, 5)
    five = [rs[-1] for rs in chosen.values()]
    private = PrivateRedis(tmp_path).start()
    client = redis.Redis.from_url(private.url)
    stream = Stream(kafka_bootstrap, private.url)
    asyncio.run(stream.create_topics())
    port = free_port()
    fast = {"DISKWATCH_METRICS_PORT": port, "DISKWATCH_STALL_TIMEOUT_S": 3}
    try:
        worker = WorkerProcess(stream, sim_bundle, **fast).start()
        try:
            wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 120, "worker health", worker)
            private.stop()
            asyncio.run(stream.produce_records(five))
            wait_for(lambda: metric(port, 'diskwatch_retries_total{target="redis"}') > 0, 60,
                     "the worker to retry Redis", worker)
            wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 503, 60, "health to turn", worker)
            health = json.loads(http_get(f"http://127.0.0.1:{port}/healthz")[1])
            assert health["status"] == "stalled" and health["lag"] == 5
            assert metric(port, 'diskwatch_consumer_lag{partition="0"}') == 5
            code = worker.stop()
            assert code is not None and code != -9, "SIGTERM must stop the worker without SIGKILL"
        finally:
            worker.kill()
        private.start()
        assert stored_days(client, stream, sim_bundle, list(chosen)) == 0
        with WorkerProcess(stream, sim_bundle) as again:
            wait_for(lambda: stored_days(client, stream, sim_bundle, list(chosen)) == 5, 120,
                     "all 5 records stored after the restart", again)
    finally:
        client.close()
        private.stop()


WINDOW_KEEP = 9  # S + G of the test bundle (tests/integration/conftest.py: window 7, max gap 2)


def test_rebalance_in_the_middle_of_batches_loses_no_day_and_repeats_no_alert(
    kafka_bootstrap: str, redis_url: str, sync_redis: redis.Redis, sim_fleet: Path, sim_bundle: Path,
) -> None:
    """B joins while A is scoring a stream of batches: A finishes (and commits) its batch before giving
    partitions up, so every day is stored once and no idempotency key is alerted twice."""
    keep = WINDOW_KEEP
    # Drives whose last S + G days span at most S + G days: none of them may be trimmed, whatever the order.
    chosen = {s: rs for s, rs in last_days(sim_fleet, sim_bundle, 500).items() if (rs[-1].date - rs[0].date).days < keep}
    by_day: dict[dt.date, list[TelemetryRecord]] = {}
    for rs in chosen.values():
        for r in rs:
            by_day.setdefault(r.date, []).append(r)
    waves = [by_day[d] for d in sorted(by_day)]
    stream = Stream(kafka_bootstrap, redis_url, partitions=4)
    asyncio.run(stream.create_topics())
    port_a, port_b = free_port(), free_port()
    a = WorkerProcess(stream, sim_bundle, DISKWATCH_METRICS_PORT=port_a, DISKWATCH_BATCH_SIZE=128,
                      DISKWATCH_BATCH_LINGER_S=0.2)
    b = WorkerProcess(stream, sim_bundle, DISKWATCH_METRICS_PORT=port_b, DISKWATCH_BATCH_SIZE=128,
                      DISKWATCH_BATCH_LINGER_S=0.2)
    try:
        a.start()
        wait_for(lambda: http_get(f"http://127.0.0.1:{port_a}/healthz")[0] == 200, 120, "worker A", a)
        asyncio.run(stream.produce_records(waves[0]))
        b.start()  # joins while A works through the waves below
        for wave in waves[1:]:
            asyncio.run(stream.produce_records(wave))
            time.sleep(0.7)
        wait_for(lambda: http_get(f"http://127.0.0.1:{port_b}/healthz")[0] == 200, 120, "worker B", b)
        total = sum(len(w) for w in waves)
        wait_for(lambda: stored_days(sync_redis, stream, sim_bundle, list(chosen)) == total, 180,
                 "every record stored", b)
        alerts = alerts_when_drained(stream, b)
        rebalances = metric(port_a, "diskwatch_rebalances_total")
    finally:
        a.stop()
        b.stop()
        cleanup(sync_redis, stream)
    assert rebalances >= 1, "B joining must have revoked partitions from A"
    assert alerts, "the waves complete windows of failing drives: some alerts expected"
    keys = Counter(x["idempotency_key"] for x in alerts)
    assert not [k for k, n in keys.items() if n > 1], f"duplicate alerts: {keys.most_common(3)}"


def test_redis_sigkill_mid_stream_restart_from_aof_loses_no_day_and_repeats_no_alert(
    kafka_bootstrap: str, sim_fleet: Path, sim_bundle: Path, tmp_path: Path
) -> None:
    """Issue #14.1: redis-server SIGKILLed (AOF everysec) while batches flow, restarted from its AOF."""
    chosen = {s: rs for s, rs in last_days(sim_fleet, sim_bundle, 300).items()
              if (rs[-1].date - rs[0].date).days < WINDOW_KEEP}
    by_day: dict[dt.date, list[TelemetryRecord]] = {}
    for rs in chosen.values():
        for r in rs:
            by_day.setdefault(r.date, []).append(r)
    waves = [by_day[d] for d in sorted(by_day)]
    private = PrivateRedis(tmp_path, fsync="everysec").start()
    client = redis.Redis.from_url(private.url)
    stream = Stream(kafka_bootstrap, private.url)
    asyncio.run(stream.create_topics())
    try:
        with WorkerProcess(stream, sim_bundle, DISKWATCH_BATCH_SIZE=64, DISKWATCH_BATCH_LINGER_S=0.1) as worker:
            for i, wave in enumerate(waves):
                asyncio.run(stream.produce_records(wave))
                if i == len(waves) // 2:
                    wait_for(lambda: stored_days(client, stream, sim_bundle, list(chosen)) > 0, 120,
                             "some days stored", worker, interval=0.05)
                    private.kill()  # mid-stream, no goodbye
                    time.sleep(1)
                    private.start()  # from its AOF
            total = sum(len(w) for w in waves)
            wait_for(lambda: _pings(client) and stored_days(client, stream, sim_bundle, list(chosen)) == total,
                     180, "every day in its window after the Redis crash", worker)
            alerts = alerts_when_drained(stream, worker)
            assert worker.alive()
    finally:
        client.close()
        private.stop()
    keys = Counter(a["idempotency_key"] for a in alerts)
    assert not [k for k, n in keys.items() if n > 1], f"duplicate alerts: {keys.most_common(3)}"
