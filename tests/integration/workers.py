"""Helpers for worker tests: run `diskwatch worker` as a real subprocess, feed it, read its output."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from diskwatch.core.records import TelemetryRecord
from tests.conftest import TEST_RUN

REPO_ROOT = Path(__file__).resolve().parents[2]


def read_records(dump: Path, serials: Iterable[str] | None = None) -> list[TelemetryRecord]:
    """Every row of a daily-CSV dump (plain or .gz) as records, optionally for some serials.

    A whole dump, once parsed, is kept for the rest of the process (keyed by its files' names,
    sizes and mtimes, so a rewritten dump is parsed again): the shared simulated fleet takes
    ~10 s to parse on a busy 2-core machine and a dozen tests read it. Records are frozen.
    """
    key = _dump_key(dump)
    wanted = set(serials) if serials is not None else None
    if key not in _PARSED and wanted is not None:
        return _parse(dump, wanted)
    if key not in _PARSED:
        _PARSED[key] = tuple(_parse(dump, None))
    return [r for r in _PARSED[key] if wanted is None or r.serial_number in wanted]


_PARSED: dict[tuple, tuple[TelemetryRecord, ...]] = {}


def _dump_files(dump: Path) -> list[Path]:
    return sorted(p for p in dump.iterdir() if p.name.endswith((".csv", ".csv.gz")))


def _dump_key(dump: Path) -> tuple:
    return (str(dump.resolve()), *((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in _dump_files(dump)))


def _parse(dump: Path, wanted: set[str] | None) -> list[TelemetryRecord]:
    out: list[TelemetryRecord] = []
    for path in _dump_files(dump):
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
    replication: int = 1
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def telemetry(self) -> str:
        return f"test-{TEST_RUN}-telemetry-{self.tag}"

    @property
    def alerts(self) -> str:
        return f"test-{TEST_RUN}-alerts-{self.tag}"

    @property
    def dlq(self) -> str:
        return f"test-{TEST_RUN}-dlq-{self.tag}"

    @property
    def prefix(self) -> str:
        return f"test:{TEST_RUN}:{self.tag}"

    @property
    def group(self) -> str:
        return f"test-{TEST_RUN}-group-{self.tag}"

    def env(self, **extra: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISKWATCH_")}
        env.update(
            DISKWATCH_KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            DISKWATCH_REDIS_URL=self.redis_url,
            DISKWATCH_TOPIC_TELEMETRY=self.telemetry,
            DISKWATCH_TOPIC_ALERTS=self.alerts,
            DISKWATCH_TOPIC_DEAD_LETTERS=self.dlq,
            DISKWATCH_CONSUMER_GROUP=self.group,
            DISKWATCH_TOPIC_REPLICATION_FACTOR=str(self.replication),
            DISKWATCH_REDIS_KEY_PREFIX=self.prefix,
            DISKWATCH_METRICS_PORT="0",
            DISKWATCH_BATCH_SIZE="256",
            DISKWATCH_BATCH_LINGER_S="0.5",
            TF_CPP_MIN_LOG_LEVEL="3",
            PYTHONUNBUFFERED="1",
        )
        env.update({k: str(v) for k, v in extra.items()})
        return lean_install_env(env)

    async def create_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(t, num_partitions=p, replication_factor=self.replication)
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

    async def lag(self) -> dict[int, int]:
        """Per telemetry partition: end offset minus the group's committed offset (all if none)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        await admin.start()
        await consumer.start()
        try:
            parts = [TopicPartition(self.telemetry, p) for p in range(self.partitions)]
            ends = await consumer.end_offsets(parts)
            committed = await admin.list_consumer_group_offsets(self.group, partitions=parts)
            done = {tp.partition: max(m.offset, 0) for tp, m in committed.items() if m is not None}
            return {tp.partition: ends[tp] - done.get(tp.partition, 0) for tp in parts}
        finally:
            await consumer.stop()
            await admin.close()

    def total_lag(self) -> int | None:
        """Sum of :meth:`lag` (None while the broker cannot answer, e.g. during an election)."""
        try:
            return sum(asyncio.run(self.lag()).values())
        except Exception:  # any broker error means "not known yet"
            return None

    async def read_to_end(self, topic: str, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Every JSON message in ``topic`` up to its end offsets at the call, no idle wait.

        Call it once the worker's lag is 0: it publishes a batch's alerts and dead letters and
        waits for their acks before committing the batch, so they are all in the topic by then.
        """
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None)
        await consumer.start()
        out: list[dict[str, Any]] = []
        try:
            count = self.partitions if topic == self.telemetry else 1  # as create_topics made them
            parts = [TopicPartition(topic, p) for p in range(count)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            deadline = time.monotonic() + timeout_s
            while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic}: not read to its end offsets {ends} within {timeout_s}s")
                batch = await consumer.getmany(timeout_ms=500)
                out.extend(json.loads(m.value) for msgs in batch.values() for m in msgs)
        finally:
            await consumer.stop()
        return out

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


LEAN_SITE = REPO_ROOT / "tests" / "lean_site"


def lean_install_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a child that runs as the lean worker install: tests/lean_site/sitecustomize.py
    (first on PYTHONPATH) makes the training-only packages unimportable there."""
    path = [str(LEAN_SITE), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


class WorkerProcess:
    """`python -m diskwatch worker` in a subprocess with the stream's settings.

    Every started worker is listed in ``RUNNING`` until stopped, so the autouse fixture in
    tests/integration/conftest.py stops it (its whole process group) even when a test fails.
    """

    RUNNING: ClassVar[list[WorkerProcess]] = []
    #: Where worker logs go: pytest's basetemp (set by a session fixture), which pytest rotates,
    #: keeping the last three runs' logs for a post-mortem and deleting older ones.
    LOG_DIR: ClassVar[Path] = Path(tempfile.gettempdir())

    def __init__(self, stream: Stream, bundle: Path, *args: str, **env: Any) -> None:
        self.stream = stream
        self.bundle = bundle
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.LOG_DIR / f"diskwatch-worker-{stream.tag}-{uuid.uuid4().hex[:6]}.log"

    def start(self) -> WorkerProcess:
        with self.log.open("wb") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "diskwatch", "worker", "--model", str(self.bundle), *self.args],
                cwd=REPO_ROOT, env=self.stream.env(**self.env), stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        WorkerProcess.RUNNING.append(self)
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown, no final commit."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)  # children too (`--workers N`), even if the leader exited
            if self.proc.poll() is None:
                self.proc.wait(10)
        self._forget()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()  # whatever of the group is left (a child that ignored SIGTERM) goes now
        return self.proc.returncode

    def _forget(self) -> None:
        if self in WorkerProcess.RUNNING:
            WorkerProcess.RUNNING.remove(self)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def die_with_parent() -> None:
    """``preexec_fn`` for a test's child: SIGKILL it when the test process dies, even by SIGKILL.

    A child in its own session outlives a test process that is killed (a CI timeout, ``kill -9``
    of pytest) and keeps retrying the services; Linux's parent-death signal ends it instead.
    """
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def session_members(sid: int) -> list[int]:
    """PIDs still in the session ``sid`` (a worker started with ``start_new_session``)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":  # fields: state ppid pgrp session ...
                out.append(int(stat.parent.name))
    return out


def _signal_group(pgid: int, signum: int) -> None:
    """Signal a worker's process group, only while a member of it lives.

    A PID is not reused while a group or session still carries it, so a live member
    means the group is still ours.
    """
    if session_members(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""
