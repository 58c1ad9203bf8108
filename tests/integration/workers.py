"""Helpers for worker tests: run `diskwatch worker` as a real subprocess, feed it, read its output."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from diskwatch.core.records import TelemetryRecord

REPO_ROOT = Path(__file__).resolve().parents[2]


def read_records(dump: Path, serials: Iterable[str] | None = None) -> list[TelemetryRecord]:
    """Every row of a daily-CSV dump (plain or .gz) as records, optionally for some serials."""
    wanted = set(serials) if serials is not None else None
    out: list[TelemetryRecord] = []
    for path in sorted(p for p in dump.iterdir() if p.name.endswith((".csv", ".csv.gz"))):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", newline="") as handle:
            for row in csv.DictReader(handle):
                if wanted is None or row["serial_number"] in wanted:
                    out.append(TelemetryRecord.from_backblaze_row(row))
    return out


@dataclass
class Stream:
    """Unique topics, group and Redis prefix for one worker test."""

    bootstrap: str
    redis_url: str
    partitions: int = 1
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def telemetry(self) -> str:
        return f"test-telemetry-{self.tag}"

    @property
    def alerts(self) -> str:
        return f"test-alerts-{self.tag}"

    @property
    def dlq(self) -> str:
        return f"test-dlq-{self.tag}"

    @property
    def prefix(self) -> str:
        return f"test:{self.tag}"

    def env(self, **extra: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISKWATCH_")}
        env.update(
            DISKWATCH_KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            DISKWATCH_REDIS_URL=self.redis_url,
            DISKWATCH_TOPIC_TELEMETRY=self.telemetry,
            DISKWATCH_TOPIC_ALERTS=self.alerts,
            DISKWATCH_TOPIC_DEAD_LETTERS=self.dlq,
            DISKWATCH_CONSUMER_GROUP=f"test-group-{self.tag}",
            DISKWATCH_REDIS_KEY_PREFIX=self.prefix,
            DISKWATCH_METRICS_PORT="0",
            DISKWATCH_BATCH_SIZE="256",
            DISKWATCH_BATCH_LINGER_S="0.5",
            TF_CPP_MIN_LOG_LEVEL="3",
            PYTHONUNBUFFERED="1",
        )
        env.update({k: str(v) for k, v in extra.items()})
        return env

    async def create_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(t, num_partitions=p, replication_factor=1)
                 for t, p in ((self.telemetry, self.partitions), (self.alerts, 1), (self.dlq, 1))]
            )
        finally:
            await admin.close()

    async def produce(self, values: Iterable[tuple[bytes | None, bytes]]) -> int:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
        await producer.start()
        n = 0
        try:
            futures = [await producer.send(self.telemetry, value=v, key=k) for k, v in values]
            await asyncio.gather(*futures)
            n = len(futures)
        finally:
            await producer.stop()
        return n

    async def produce_records(self, records: Iterable[TelemetryRecord]) -> int:
        return await self.produce((r.serial_number.encode(), r.to_json()) for r in records)

    async def read(self, topic: str, *, expect: int | None = None, idle_s: float = 3.0,
                   timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """All JSON messages of a topic: until ``expect`` arrive, or none for ``idle_s``."""
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        out: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + timeout_s
            quiet_since = time.monotonic()
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                got = [json.loads(m.value) for msgs in batch.values() for m in msgs]
                out.extend(got)
                if got:
                    quiet_since = time.monotonic()
                if expect is not None and len(out) >= expect:
                    break
                if expect is None and time.monotonic() - quiet_since > idle_s:
                    break
        finally:
            await consumer.stop()
        return out


class WorkerProcess:
    """`python -m diskwatch worker` in a subprocess with the stream's settings."""

    def __init__(self, stream: Stream, bundle: Path, *args: str, **env: Any) -> None:
        self.stream = stream
        self.bundle = bundle
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(f"/tmp/diskwatch-worker-{stream.tag}-{uuid.uuid4().hex[:6]}.log")

    def start(self) -> WorkerProcess:
        with self.log.open("wb") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "diskwatch", "worker", "--model", str(self.bundle), *self.args],
                cwd=REPO_ROOT, env=self.stream.env(**self.env), stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown, no final commit."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""
