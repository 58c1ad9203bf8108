"""A 3-broker KRaft cluster (``deploy/local/stack up --brokers 3``) losing a partition leader.

The cluster is this module's own: its ports are ``DISKWATCH_TEST_CLUSTER_PORT`` (default:
``DISKWATCH_KAFKA_PORT`` + 200) and the next five, so it never touches the single broker the
other tests use. Topics have replication factor 3 with ``min.insync.replicas=2`` (the
cluster's default), and every producer here and in diskwatch uses ``acks=all``: one broker
may die without an acknowledged record being lost or the stream stopping.

Select with ``-m kafka_cluster``; it needs ~1.5 GB of memory for the three brokers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import REPO_ROOT, STACK, STACK_UP_TIMEOUT_S, kafka_answers, stack_env
from tests.integration.test_worker import assigned, free_port, stored_days, wait_for
from tests.integration.workers import Stream, WorkerProcess, die_with_parent, read_records

pytestmark = [pytest.mark.slow, pytest.mark.kafka_cluster, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

BROKERS = 3


@dataclass
class Cluster:
    """The module's cluster: node pids from the stack's pid files, SIGKILL and restart."""

    base_port: int
    env: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.base_port + 2 * i}" for i in range(BROKERS))

    @property
    def run_dir(self) -> Path:
        return Path(self.env.get("DISKWATCH_LOCAL_DIR", REPO_ROOT / ".local")) / "kafka" / f"cluster-p{self.base_port}"

    def stack(self, *args: str) -> str:
        proc = subprocess.run([str(STACK), *args], cwd=REPO_ROOT, env=self.env, capture_output=True, text=True,
                              timeout=STACK_UP_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            pytest.fail(f"`stack {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def up(self) -> str:
        """Start the cluster, or just its dead nodes (idempotent); returns once all 3 are registered."""
        return self.stack("up", "--brokers", str(BROKERS), "kafka")

    def pid(self, node: int) -> int:
        pid = int((self.run_dir / f"node-{node}" / "kafka.pid").read_text().strip())
        conf = str(self.run_dir / f"node-{node}" / "server.properties")
        assert conf in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"), "not our broker"
        return pid

    def kill(self, node: int) -> None:
        """SIGKILL one broker (no controlled shutdown: its partitions need a leader election)."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), 30, f"broker {node} to die")

    async def describe(self, topic: str) -> list[dict]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            (info,) = await admin.describe_topics([topic])
            return sorted(info["partitions"], key=lambda p: p["partition"])
        finally:
            await admin.close()

    async def _brokers(self) -> list[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            return sorted(b["node_id"] for b in (await admin.describe_cluster())["brokers"])
        finally:
            await admin.close()

    def brokers(self) -> list[int]:
        """The brokers the cluster names in its metadata (a dead one until its session expires)."""
        try:
            return asyncio.run(self._brokers())
        except Exception:  # the node asked may be the dead one
            return []

    def leader(self, topic: str, partition: int = 0) -> int:
        return asyncio.run(self.describe(topic))[partition]["leader"]

    def fully_in_sync(self, topic: str) -> bool:
        """Every partition has a leader and all 3 replicas in its ISR: a restarted broker caught up."""
        try:
            parts = asyncio.run(self.describe(topic))
        except Exception:  # the cluster may still be electing
            return False
        return bool(parts) and all(p["leader"] >= 0 and sorted(p["isr"]) == [1, 2, 3] for p in parts)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[Cluster]:
    base = int(os.environ.get("DISKWATCH_TEST_CLUSTER_PORT", int(os.environ.get("DISKWATCH_KAFKA_PORT", "9092")) + 200))
    env = {k: v for k, v in stack_env().items() if k != "DISKWATCH_KAFKA_BROKERS"}
    env.update(DISKWATCH_KAFKA_PORT=str(base), DISKWATCH_KAFKA_CONTROLLER_PORT=str(base + 1),
               DISKWATCH_KAFKA_HEAP_OPTS=os.environ.get("DISKWATCH_TEST_CLUSTER_HEAP", "-Xms128m -Xmx384m"))
    cluster = Cluster(base, env)
    already = kafka_answers("127.0.0.1", base)
    try:
        cluster.up()
        yield cluster
    finally:
        if not already:
            cluster.stack("down", "kafka")


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def last_days_dump(sim_fleet: Path, dst: Path, days: int) -> Path:
    """The fleet's last ``days`` daily files: every record of them stays in its drive's window."""
    dst.mkdir()
    for path in sorted(sim_fleet.glob("*.csv"))[-days:]:
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def cleanup(client: redis.Redis, stream: Stream) -> None:
    keys = list(client.scan_iter(match=f"{stream.prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def cluster_stream(cluster: Cluster, redis_url: str, dump: Path) -> tuple[list, list[str], Stream]:
    """Every node of the cluster up, ``dump``'s records and serials, and a new 4-partition stream (RF 3)."""
    cluster.up()
    records = read_records(dump)
    serials = sorted({r.serial_number for r in records})
    stream = Stream(cluster.bootstrap, redis_url, partitions=4, replication=BROKERS)
    asyncio.run(stream.create_topics())
    return records, serials, stream


def start_consuming_worker(stream: Stream, bundle: Path, **env: object) -> WorkerProcess:
    """A worker that holds every telemetry partition (it is consuming, not starting up)."""
    port = free_port()
    worker = WorkerProcess(stream, bundle, DISKWATCH_METRICS_PORT=port, DISKWATCH_KAFKA_SESSION_TIMEOUT_S=10,
                           **env).start()
    wait_for(lambda: len(assigned(port)) == stream.partitions, 180, "the worker to hold every partition", worker)
    return worker


def check_stream_result(stream: Stream, client: redis.Redis, bundle: Path, serials: list[str], expected: int,
                        worker: WorkerProcess) -> list[dict]:
    """Every record's day in its window, the group's lag 0; returns the alerts (checked unique)."""
    wait_for(lambda: stored_days(client, stream, bundle, serials) == expected, 240,
             f"all {expected} records in Redis", worker)
    wait_for(lambda: stream.total_lag() == 0, 120, "consumer lag 0 (every offset committed)", worker)
    alerts = asyncio.run(stream.read_to_end(stream.alerts))  # acked before their batch was committed
    keys = Counter(a["idempotency_key"] for a in alerts)
    assert not [k for k, n in keys.items() if n > 1], f"duplicate alerts: {keys.most_common(3)}"
    return alerts


def test_replay_finishes_and_nothing_is_lost_when_the_partition_leader_is_killed(
    kafka_cluster: Cluster, redis_url: str, sync_redis: redis.Redis, sim_fleet: Path, sim_bundle: Path,
    tmp_path: Path,
) -> None:
    dump = last_days_dump(sim_fleet, tmp_path / "dump", 8)
    records, serials, stream = cluster_stream(kafka_cluster, redis_url, dump)
    log = tmp_path / "replay.log"
    try:
        worker = start_consuming_worker(stream, sim_bundle)
        with log.open("wb") as out:
            replay = subprocess.Popen(
                [sys.executable, "-m", "diskwatch", "replay", "--data", str(dump), "--speed", "0.5"],
                cwd=REPO_ROOT, env=stream.env(COLUMNS=200), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent,
            )
        try:
            # Kill partition 0's leader once a few days are in: the replay is mid-stream.
            wait_for(lambda: log.read_text().count(" total, ") >= 2 or replay.poll() is not None, 180,
                     "the replay to finish its first days")
            assert replay.poll() is None, f"the replay ended before the kill:\n{log.read_text()}"
            victim = kafka_cluster.leader(stream.telemetry)
            kafka_cluster.kill(victim)
            replay.wait(300)
        finally:
            if replay.poll() is None:
                os.killpg(replay.pid, signal.SIGKILL)
                replay.wait(10)
        output = log.read_text()
        assert replay.returncode == 0, output
        assert f"{len(records):,} records" in output, output
        assert kafka_cluster.leader(stream.telemetry) != victim  # a new leader took over

        messages = asyncio.run(stream.read(stream.telemetry, expect=len(records), timeout_s=120))
        pairs = Counter((m["serial_number"], m["date"]) for m in messages)
        assert len(messages) == len(records) and len(pairs) == len(records), "idempotent producer: no duplicates"

        check_stream_result(stream, sync_redis, sim_bundle, serials, len(records), worker)

        kafka_cluster.up()  # the killed broker comes back, rejoins and catches up
        wait_for(lambda: kafka_cluster.fully_in_sync(stream.telemetry), 180,
                 f"broker {victim} back in every telemetry partition's ISR")
        worker.stop()
    finally:
        cleanup(sync_redis, stream)


def test_worker_keeps_consuming_when_the_partition_leader_is_killed(
    kafka_cluster: Cluster, redis_url: str, sync_redis: redis.Redis, sim_fleet: Path, sim_bundle: Path,
    tmp_path: Path,
) -> None:
    records, serials, stream = cluster_stream(kafka_cluster, redis_url,
                                              last_days_dump(sim_fleet, tmp_path / "dump", 8))
    try:
        # The first half is being consumed (small batches) when the leader dies; the second half
        # is produced after the kill, so the worker must fetch it from the newly elected leaders.
        half = len(records) // 2
        worker = start_consuming_worker(stream, sim_bundle, DISKWATCH_BATCH_SIZE=32, DISKWATCH_BATCH_LINGER_S=0.05)
        asyncio.run(stream.produce_records(records[:half]))
        wait_for(lambda: stored_days(sync_redis, stream, sim_bundle, serials) > 0, 180,
                 "the worker to store its first records", worker, interval=0.05)
        victim = kafka_cluster.leader(stream.telemetry)
        kafka_cluster.kill(victim)
        asyncio.run(stream.produce_records(records[half:]))  # acks=all: 2 in-sync replicas suffice
        assert kafka_cluster.leader(stream.telemetry) != victim

        check_stream_result(stream, sync_redis, sim_bundle, serials, len(records), worker)
        assert worker.alive(), "the worker must ride out the election, not exit"

        kafka_cluster.up()
        wait_for(lambda: kafka_cluster.fully_in_sync(stream.telemetry), 180,
                 f"broker {victim} back in every telemetry partition's ISR")
        # After the restart the group still works: more records are consumed.
        extra = [r.model_copy(update={"serial_number": "X-" + r.serial_number}) for r in records[:200]]
        asyncio.run(stream.produce_records(extra))
        wait_for(lambda: stored_days(sync_redis, stream, sim_bundle, sorted({r.serial_number for r in extra}))
                 == len(extra), 120, "records sent after the broker rejoined", worker)
        worker.stop()
    finally:
        cleanup(sync_redis, stream)


def test_a_worker_started_while_a_broker_is_down_consumes(
    kafka_cluster: Cluster, redis_url: str, sync_redis: redis.Redis, sim_fleet: Path, sim_bundle: Path,
    tmp_path: Path,
) -> None:
    """A restart during a broker outage (a deploy, a crash loop) must not need all three brokers.

    faust creates its own internal topics at start-up with the configured replication factor:
    with one of three brokers down that creation is refused, which once made a starting worker
    exit while running ones rode the outage out.
    """
    records, serials, stream = cluster_stream(kafka_cluster, redis_url,
                                              last_days_dump(sim_fleet, tmp_path / "dump", 3))
    victim = kafka_cluster.leader(stream.telemetry)
    try:
        kafka_cluster.kill(victim)
        # A real outage: the cluster has fenced the dead broker and names only the other two.
        wait_for(lambda: len(kafka_cluster.brokers()) == BROKERS - 1, 60, f"broker {victim} to be fenced")
        worker = start_consuming_worker(stream, sim_bundle)
        asyncio.run(stream.produce_records(records))
        check_stream_result(stream, sync_redis, sim_bundle, serials, len(records), worker)
        assert worker.alive(), "the worker started during the outage must keep running"
        worker.stop()
    finally:
        kafka_cluster.up()
        cleanup(sync_redis, stream)


def test_sigterm_with_every_broker_down_stops_the_worker_within_a_grace_period(
    kafka_cluster: Cluster, redis_url: str, sync_redis: redis.Redis, sim_fleet: Path, sim_bundle: Path,
    tmp_path: Path,
) -> None:
    """Kafka gone, then SIGTERM (a node drained during an outage): the worker exits on its own
    well inside Kubernetes' default 30 s grace period instead of waiting out faust's 60 s for its
    own consumer; what it had not committed is read again later (at-least-once)."""
    records, serials, stream = cluster_stream(kafka_cluster, redis_url,
                                              last_days_dump(sim_fleet, tmp_path / "dump", 2))
    try:
        worker = start_consuming_worker(stream, sim_bundle)
        asyncio.run(stream.produce_records(records))
        wait_for(lambda: stored_days(sync_redis, stream, sim_bundle, serials) == len(records), 240,
                 "the records in Redis", worker)
        for node in range(1, BROKERS + 1):
            kafka_cluster.kill(node)
        started = time.monotonic()
        code = worker.stop(timeout=30)
        took = time.monotonic() - started
        assert code == 0, f"exit status {code} after {took:.0f} s (-9: still running after 30 s)\n{worker.output()[-3000:]}"
        assert took < 25, f"{took:.0f} s"
    finally:
        kafka_cluster.up()
        cleanup(sync_redis, stream)
