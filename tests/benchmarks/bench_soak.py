"""Soak benchmark: hold a replay's full rate through 2 workers on 4 partitions and watch them.

Not a CI test: it runs for as long as the fleet takes (the defaults, 100 000 drives x 80 days
= ~7.5 M records, last over 10 minutes on a 2-core machine at ~12k records/s). Steps:

1. simulate the fleet into a daily-CSV dump and build a default-size bundle (untrained:
   throughput does not depend on the weights);
2. create the telemetry topic (``--partitions``) and start ``diskwatch worker --workers N``;
3. once every partition is assigned, run ``diskwatch replay --max`` (the fastest rate);
4. every ``--interval`` seconds sample: records produced (end offsets), committed by the
   group, consumed (the workers' ``diskwatch_records_in_total``), each worker's RSS, Redis
   ``used_memory``, dead letters (end offsets of the DLQ topic);
5. stop when the replay is done and the group's committed offsets reached the end.

Prints one JSON object: throughput over time, max lag, RSS at start (first sample after the
models loaded) and end, Redis memory, dead letters (expected 0), records applied (consumed
minus duplicates; expected = the dump's rows, i.e. drives x days minus the simulated missing
days) and window keys in Redis (expected = drives). ``ok`` says whether all of those held.
A smoke run: ``--drives 300 --days 20 --min-seconds 0``. Needs the stack (``deploy/local/stack up``;
``--brokers 3`` works too, the worker reads ``DISKWATCH_KAFKA_BOOTSTRAP_SERVERS``).

    python tests/benchmarks/bench_soak.py [--drives 100000] [--days 80] [--workers 2] [--partitions 4]
        [--dump DIR]  (keep the simulated fleet in DIR for the next run)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from diskwatch.stream.windowstate import window_key  # noqa: E402
from tests.benchmarks.bench_worker import free_port, make_bundle, metric  # noqa: E402
from tests.kafka_admin import drop_created  # noqa: E402

# RSS may grow this much (MiB) from the first sample to the end before the run counts as leaking.
RSS_GROWTH_BOUND_MB = 150.0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the worker processes of ``diskwatch worker --workers N``)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return sorted(out)


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Kafka:
    """End offsets of topics and the group's committed offsets (one admin + consumer, reused)."""

    def __init__(self, bootstrap: str, options: dict[str, Any]) -> None:
        self.bootstrap, self.options = bootstrap, options
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def start(self) -> None:
        self.run(self._start())

    async def _start(self) -> None:  # aiokafka clients must be created inside the loop
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self.admin = AIOKafkaAdminClient(**self.options)
        self.consumer = AIOKafkaConsumer(**self.options, group_id=None)
        await self.admin.start()
        await self.consumer.start()

    def close(self) -> None:
        self.run(self.consumer.stop())
        self.run(self.admin.close())
        self.loop.close()

    def create(self, topics: dict[str, int], replication: int) -> None:
        from aiokafka.admin import NewTopic

        self.run(self.admin.create_topics([NewTopic(t, p, replication) for t, p in topics.items()]))

    def end(self, topic: str, partitions: int) -> int:
        from aiokafka.structs import TopicPartition

        parts = [TopicPartition(topic, p) for p in range(partitions)]
        return sum(self.run(self.consumer.end_offsets(parts)).values())

    def committed(self, group: str, topic: str, partitions: int) -> int:
        from aiokafka.structs import TopicPartition

        parts = [TopicPartition(topic, p) for p in range(partitions)]
        offsets = self.run(self.admin.list_consumer_group_offsets(group, partitions=parts))
        return sum(max(m.offset, 0) for m in offsets.values() if m is not None)


def assigned(port: int) -> int:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
        return len(json.loads(body)["assigned"])
    except (OSError, ValueError, KeyError):
        return 0


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def write_dump(drives: int, days: int, root: Path, reuse: Path | None = None) -> tuple[Path, int, int]:
    """The simulated fleet as daily CSVs; returns (dir, rows, distinct serials).

    With ``reuse`` (``--dump``) the fleet is written there once and kept, and the soak replays
    its first ``days`` daily files: one large dump serves soaks of any length.
    """
    from diskwatch.training.synth import FleetConfig, write_fleet

    dump = root / "dump"
    fleet = reuse or dump
    if not (fleet / ".complete").exists():
        write_fleet(FleetConfig(drives=drives, days=days, start=dt.date(2024, 1, 1), seed=5), fleet, progress=False)
        (fleet / ".complete").touch()
    if reuse is not None:
        dump.mkdir()
        for path in sorted(reuse.glob("*.csv"))[:days]:
            (dump / path.name).symlink_to(path.resolve())
    rows, serials = 0, set()
    for path in sorted(dump.glob("*.csv")):
        with path.open() as handle:
            next(handle)
            for line in handle:
                rows += 1
                serials.add(line.split(",", 2)[1])
    return dump, rows, len(serials)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    from diskwatch.core.settings import Settings

    settings = Settings()
    redis_url = settings.redis_url.get_secret_value()
    tag = uuid.uuid4().hex[:6]
    topic, group, prefix = f"soak-telemetry-{tag}", f"soak-{tag}", f"soak:{tag}"
    base_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISKWATCH_")}
    env.update(DISKWATCH_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers, DISKWATCH_REDIS_URL=redis_url,
               DISKWATCH_TOPIC_TELEMETRY=topic, DISKWATCH_TOPIC_ALERTS=f"{topic}-alerts",
               DISKWATCH_TOPIC_DEAD_LETTERS=f"{topic}-dlq", DISKWATCH_CONSUMER_GROUP=group,
               DISKWATCH_REDIS_KEY_PREFIX=prefix, DISKWATCH_METRICS_PORT=str(base_port),
               DISKWATCH_BATCH_SIZE=str(args.batch_size), DISKWATCH_TOPIC_PARTITIONS=str(args.partitions),
               DISKWATCH_TOPIC_REPLICATION_FACTOR=str(settings.topic_replication_factor),
               TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="200")
    ports = [base_port + i for i in range(args.workers)]
    import redis

    client = redis.Redis.from_url(redis_url)
    kafka = Kafka(settings.kafka_bootstrap_servers, settings.kafka_client_options())
    kafka.start()
    with tempfile.TemporaryDirectory(prefix="dw-soak-") as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        dump, rows, drives = write_dump(args.drives, args.days, root, args.dump)
        bundle = make_bundle(root)
        prepare_s = time.monotonic() - t0
        kafka.create({topic: args.partitions, f"{topic}-alerts": 1, f"{topic}-dlq": 1},
                     settings.topic_replication_factor)
        redis_start = client.info("memory")["used_memory"]
        log = (root / "worker.log").open("wb")
        workers = subprocess.Popen([sys.executable, "-m", "diskwatch", "worker", "--model", str(bundle),
                                    "--workers", str(args.workers)], cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        replay: subprocess.Popen[bytes] | None = None
        samples: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + args.start_timeout
            while sum(assigned(p) for p in ports) < args.partitions:
                if workers.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"workers did not take the partitions:\n{(root / 'worker.log').read_text()[-3000:]}")
                time.sleep(1)
            pids = children(workers.pid) if args.workers > 1 else [workers.pid]
            replay_log = (root / "replay.log").open("wb")
            replay = subprocess.Popen([sys.executable, "-m", "diskwatch", "replay", "--data", str(dump), "--max"],
                                      cwd=REPO, env=env, stdout=replay_log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            started = time.monotonic()
            replay_s = None
            deadline = started + args.timeout
            last_consumed, last_t = 0.0, started
            while time.monotonic() < deadline:
                time.sleep(args.interval)
                now = time.monotonic()
                if replay_s is None and replay.poll() is not None:
                    replay_s = now - started
                    if replay.returncode != 0:
                        raise RuntimeError(f"replay failed:\n{(root / 'replay.log').read_text()[-3000:]}")
                consumed = sum(max(metric(p, "diskwatch_records_in_total"), 0) for p in ports)
                produced = kafka.end(topic, args.partitions)
                committed = kafka.committed(group, topic, args.partitions)
                samples.append({
                    "t": round(now - started, 1), "produced": produced, "consumed": int(consumed),
                    "committed": committed, "lag": produced - committed,
                    "records_per_s": round((consumed - last_consumed) / (now - last_t), 1),
                    "rss_mb": [round(rss_mb(p), 1) for p in pids],
                    "redis_mb": round(client.info("memory")["used_memory"] / 2**20, 1),
                })
                last_consumed, last_t = consumed, now
                if workers.poll() is not None:
                    raise RuntimeError(f"workers exited:\n{(root / 'worker.log').read_text()[-3000:]}")
                if replay_s is not None and produced >= rows and committed >= produced:
                    break
            seconds = time.monotonic() - started
            sum_metric = lambda name: sum(max(metric(p, name), 0) for p in ports)  # noqa: E731
            duplicates = sum_metric("diskwatch_records_duplicate_total")
            windows_scored = sum_metric("diskwatch_windows_scored_total")
            consumed = sum_metric("diskwatch_records_in_total")
            dead_letters = kafka.end(f"{topic}-dlq", 1)
            window_keys = sum(1 for _ in client.scan_iter(match=window_key(prefix, "*", "*"), count=5000))
            rss_end = [round(rss_mb(p), 1) for p in pids]
        finally:
            if replay is not None:
                stop(replay)
            stop(workers)
            log.close()
            keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
            for i in range(0, len(keys), 5000):
                client.delete(*keys[i:i + 5000])
            kafka.close()
            asyncio.run(drop_created(tag, **settings.kafka_client_options()))  # GBs of records otherwise
    rss_start = samples[0]["rss_mb"] if samples else []
    growth = max((e - s for s, e in zip(rss_start, rss_end, strict=False)), default=0.0)
    done = samples[-1] if samples else {}
    result = {
        "records": rows, "drives": drives, "days": args.days, "partitions": args.partitions,
        "workers": args.workers, "batch_size": args.batch_size, "prepare_s": round(prepare_s, 1),
        "seconds": round(seconds, 1), "replay_s": round(replay_s, 1) if replay_s else None,
        "records_per_s": round(rows / seconds, 1),
        "max_lag": max((s["lag"] for s in samples), default=None),
        "rss_mb": {"start": rss_start, "end": rss_end, "max": [max(s["rss_mb"][i] for s in samples)
                                                                for i in range(len(rss_start))]},
        "rss_growth_mb": round(growth, 1), "rss_growth_bound_mb": RSS_GROWTH_BOUND_MB,
        "redis_mb": {"start": round(redis_start / 2**20, 1), "end": done.get("redis_mb")},
        "dead_letters": dead_letters, "records_applied": int(consumed - duplicates), "duplicates": int(duplicates),
        "window_keys": window_keys, "windows_scored": int(windows_scored),
        "long_enough": seconds >= args.min_seconds,
        "throughput": [[s["t"], s["records_per_s"], s["lag"]] for s in samples],
    }
    result["ok"] = bool(
        done.get("committed", -1) >= rows and dead_letters == 0 and result["records_applied"] == rows
        and window_keys == drives and growth <= RSS_GROWTH_BOUND_MB
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drives", type=int, default=100000)
    parser.add_argument("--days", type=int, default=80)
    parser.add_argument("--dump", type=Path, default=None,
                        help="write the fleet here once and keep it (later runs replay its first --days files)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--min-seconds", type=float, default=600.0, help="a soak shorter than this is flagged")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="give up after this many seconds")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="for the workers to take the partitions")
    args = parser.parse_args()
    print(json.dumps(soak(args)))


if __name__ == "__main__":
    main()
