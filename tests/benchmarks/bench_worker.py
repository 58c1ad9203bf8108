"""Benchmark: records/s through the real worker on the local Kafka + Redis stack.

Measured in one run, on the same topic of simulated telemetry:

* ``plain``: a bare aiokafka consume loop (the ceiling for any consumer);
* ``faust_noop``: a faust agent with the worker's settings and batching that
  does nothing (the ceiling for any faust-streaming consumer);
* ``no_score``: ``diskwatch worker --no-score`` (validation, Redis windows,
  DLQ, commits — everything but inference);
* ``score``: ``diskwatch worker`` with default-size models (an LSTM
  classifier depth 2 x 64 and an LSTM autoencoder, window 14); windows/s over
  the whole run and in steady state (from the first scored batch, when every
  record completes a window);
* ``engine``: the inference engine alone on windows of the worker's batch
  size, and raw ``predict_on_batch`` on the same batches;
* ``processor_alone``: the worker's batch processor fed the same messages
  in-process (real Redis, no Kafka, no faust): what the pipeline itself
  sustains, with and without scoring;
* Redis bytes per tracked serial (``MEMORY USAGE`` of window keys);
* one vs two worker processes (``--workers 2``) on a 4-partition topic of 3x the records, timed
  from when both have applied a batch, with the cores the workers, Redis and Kafka kept busy and
  the machine's idle share over that span.

Worker rates come from the worker's own ``diskwatch_last_batch_timestamp_seconds`` and stop
before its last, partial batch (which waits the 0.5 s linger).

Targets (issue #13): no_score >= 0.25 x plain; processor alone >= 100k records/s;
score steady windows/s >= 0.6 x engine; Redis bytes per serial <= 1.3 KB; engine >=
0.9 x raw predict. Also: Redis CPU per record, 1 vs 2 worker processes on 4 partitions. Needs the stack: ``deploy/local/stack up``.

    python tests/benchmarks/bench_worker.py [--drives 5000] [--days 21]

The default (~100k records) keeps a worker run several seconds long: at 20k records the first
batches (group join, first fetches, the batch linger) weigh so much that the same worker measured
13.9k records/s where 100k records give ~30k.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script: tests.kafka_admin

from tests.kafka_admin import drop_created  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_bundle(root: Path) -> Path:
    """Default-size, untrained models: throughput does not depend on the weights."""
    import numpy as np

    from diskwatch.models.architectures import build
    from diskwatch.models.bundle import Thresholds, save_bundle
    from diskwatch.models.features import FeatureSpec, ScalerStats
    from diskwatch.models.windows import WindowConfig

    spec = FeatureSpec()
    stats = ScalerStats(spec.n_features)
    stats.update(np.random.default_rng(0).random((100, spec.n_features)) * 10)
    window = WindowConfig()
    models = {"classifier": build("lstm", window.window, spec.n_features),
              "autoencoder": build("ae-lstm", window.window, spec.n_features)}
    thresholds = Thresholds(classifier=0.99, classifier_method="benchmark", autoencoder=1e9,
                            autoencoder_method="benchmark")
    return save_bundle(root / "bundle", models=models, spec=spec.fitted(stats), window=window,
                       thresholds=thresholds)


def records(drives: int, days: int, root: Path) -> list[tuple[bytes, bytes]]:
    import csv

    from diskwatch.core.records import TelemetryRecord
    from diskwatch.training.synth import FleetConfig, write_fleet

    write_fleet(FleetConfig(drives=drives, days=days, start=dt.date(2024, 1, 1), seed=5), root / "dump", progress=False)
    out = []
    for path in sorted((root / "dump").glob("*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                r = TelemetryRecord.from_backblaze_row(row)
                out.append((r.serial_number.encode(), r.to_json()))
    return out


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], partitions: int) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20,
                                compression_type="lz4" if _has_lz4() else None)
    await producer.start()
    futures = [await producer.send(topic, value=v, key=k) for k, v in messages]
    await asyncio.gather(*futures)
    await producer.stop()


def _has_lz4() -> bool:
    try:
        import lz4  # noqa: F401
    except ImportError:
        return False
    return True


async def plain_consume(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"{topic}-plain",
                                auto_offset_reset="earliest", enable_auto_commit=True, max_poll_records=5000)
    await consumer.start()
    got = 0
    start = None
    while got < n:
        batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
        count = sum(len(v) for v in batch.values())
        if count and start is None:
            start = time.perf_counter()
        got += count
    elapsed = time.perf_counter() - (start or time.perf_counter())
    await consumer.stop()
    return elapsed


FAUST_NOOP = """
import asyncio, os, sys, time
import faust
from faust.worker import Worker
from diskwatch.core.settings import Settings
from diskwatch.stream.app import faust_options

settings = Settings()
n = int(sys.argv[1])
app = faust.App(settings.consumer_group, **faust_options(settings, 0))
topic = app.topic(settings.topic_telemetry, key_type=bytes, value_type=bytes)
seen = {"n": 0, "t0": None}

@app.agent(topic)
async def noop(stream):
    async for events in stream.take_events(settings.batch_size, within=settings.batch_linger_s):
        if seen["t0"] is None:
            seen["t0"], first = time.perf_counter(), len(events)
            seen["first"] = first
        seen["n"] += len(events)
        if seen["n"] >= n:
            print("NOOP", seen["n"] - seen["first"], time.perf_counter() - seen["t0"], flush=True)
            os._exit(0)

Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()
"""


def faust_noop(env: dict[str, str], n: int, timeout: float = 600) -> dict[str, float]:
    """The same faust app settings and batching with an agent that does nothing: the framework's ceiling."""
    env = {**env, "DISKWATCH_CONSUMER_GROUP": f"{env['DISKWATCH_TOPIC_TELEMETRY']}-noop",
           "DISKWATCH_METRICS_PORT": "0"}
    out = subprocess.run([sys.executable, "-c", FAUST_NOOP, str(n)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout, check=False)
    match = re.search(r"NOOP (\d+) ([0-9.e+-]+)$", out.stdout, re.M)  # after faust's terminal codes
    if not match:
        raise RuntimeError(f"faust no-op consumer failed ({out.returncode}): {out.stdout[-1000:]} {out.stderr[-2000:]}")
    return {"records": float(match.group(1)), "seconds": float(match.group(2))}


def metric(port: int, name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except (OSError, http.client.HTTPException):  # not up yet, or (a busy machine) the port is someone else's
        return -1.0
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def redis_cpu_s(url: str) -> float:
    """redis-server's CPU seconds so far (user + sys): this stack's own instance."""
    import redis

    client = redis.Redis.from_url(url)
    info = client.info("cpu")
    client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def cpu_ticks(root: int, redis_url: str) -> dict[str, int]:
    """CPU clock ticks so far (user + sys) of the worker process tree under ``root``, redis-server,
    the Kafka broker(s), and the machine's idle time: where the cores went during a run."""
    import redis

    def ticks(pid: int) -> int:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0
        return int(fields[11]) + int(fields[12])

    parents: dict[int, int] = {}
    brokers = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if b"kafka.Kafka" in (d / "cmdline").read_bytes():
                    brokers.append(int(d.name))
            except OSError:
                continue
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [c for c, parent in parents.items() if parent == pid and c not in tree]
    with redis.Redis.from_url(redis_url) as client:
        redis_pid = int(client.info("server")["process_id"])
    idle = sum(int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[4:6])
    return {"workers": sum(map(ticks, tree)), "redis": ticks(redis_pid), "kafka": sum(map(ticks, brokers)),
            "idle": idle}


def run_worker(bundle: Path, env: dict[str, str], n: int, score: bool, timeout: float = 900,
               workers: int = 1) -> dict[str, float]:
    port = free_port()
    group = f"{env['DISKWATCH_TOPIC_TELEMETRY']}-w{uuid.uuid4().hex[:6]}"  # named after the run: see drop_created
    env = {**env, "DISKWATCH_METRICS_PORT": str(port), "DISKWATCH_CONSUMER_GROUP": group,
           "DISKWATCH_REDIS_KEY_PREFIX": f"bench:{uuid.uuid4().hex[:6]}"}
    cmd = [sys.executable, "-m", "diskwatch", "worker", "--model", str(bundle), "--workers", str(workers)]
    cmd += [] if score else ["--no-score"]
    cpu0 = redis_cpu_s(env["DISKWATCH_REDIS_URL"])
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def total(name: str) -> float:
        return sum(max(metric(port + i, name), 0.0) for i in range(workers))

    def last_batch() -> float:  # the worker's own clock: when its latest batch was committed
        return max(metric(port + i, "diskwatch_last_batch_timestamp_seconds") for i in range(workers))

    # Rates come from the workers' own batch timestamps, so once records flow this loop polls slowly:
    # scraping /metrics every 20 ms took a noticeable share of the worker's CPU (and GIL). The run
    # ends before each worker's last, partial batch, which waits batch_linger_s (0.5 s) to fill:
    # a poll (every 0.25 s) lands in that wait.
    tail = int(env["DISKWATCH_BATCH_SIZE"]) * workers
    try:
        deadline = time.monotonic() + timeout
        start = scoring = None
        while time.monotonic() < deadline:
            done = total("diskwatch_records_in_total")
            at = last_batch()
            # The clock starts once every worker has applied a batch: a group's first member takes all
            # partitions, and the hand-over to the second costs seconds (a heartbeat interval).
            if start is None and at > 0 and all(metric(port + i, "diskwatch_records_in_total") > 0
                                                for i in range(workers)):
                start, first = at, done
                ticks0, wall0 = cpu_ticks(proc.pid, env["DISKWATCH_REDIS_URL"]), time.monotonic()
            windows = total("diskwatch_windows_scored_total")
            if windows > 0 and scoring is None and at > 0:
                scoring, first_windows = at, windows
            if done >= n - tail and start is not None:
                out = {"seconds": max(at - start, 1e-9), "records": done - first, "windows": windows,
                       "prefix": env["DISKWATCH_REDIS_KEY_PREFIX"],
                       "redis_cpu_us_per_record": (redis_cpu_s(env["DISKWATCH_REDIS_URL"]) - cpu0) * 1e6 / n}
                # Cores each part kept busy (and left idle) while records flowed.
                ticks1, wall = cpu_ticks(proc.pid, env["DISKWATCH_REDIS_URL"]), time.monotonic() - wall0
                hz = os.sysconf("SC_CLK_TCK")
                out["cores"] = {k: round((ticks1[k] - ticks0[k]) / hz / wall, 2) for k in ticks0}
                if scoring is not None and at > scoring:
                    # Steady state: from the first scored batch on, every record completes a window.
                    out["steady_windows_per_s"] = (windows - first_windows) / (at - scoring)
                return out
            time.sleep(0.02 if start is None else 0.25)
        raise TimeoutError("worker did not finish")
    finally:
        proc.terminate()
        proc.wait(30)


def processor_alone(bundle_path: Path, messages: list[tuple[bytes, bytes]], redis_url: str, batch: int,
                    score: bool) -> dict[str, float]:
    """The worker's batch processor fed in-process (real Redis, no Kafka, no faust): the pipeline's own rate.

    Batches are fed as the worker's consumer loop feeds them: the next one is named for its early
    decode while the current one is prepared (see ``BatchProcessor.predecode``)."""
    import redis.asyncio as aioredis

    from diskwatch.models.bundle import load_bundle
    from diskwatch.stream.processor import BatchProcessor, InMessage
    from diskwatch.stream.windowstate import WindowState

    bundle = load_bundle(bundle_path)
    prefix = f"bench:{uuid.uuid4().hex[:6]}"

    async def run() -> dict[str, float]:
        client = aioredis.from_url(redis_url, decode_responses=False)
        state = WindowState(client, bundle.spec, prefix=prefix, ttl_seconds=3600,
                            keep_days=bundle.window.window + bundle.window.max_gap)
        processor = BatchProcessor(bundle, state, score=score, max_batch=batch)
        processor.warmup()
        inbox = [InMessage(v, k, "bench", 0, i) for i, (k, v) in enumerate(messages)]
        await client.config_resetstat()
        cpu0 = redis_cpu_s(redis_url)
        started = time.perf_counter()
        windows, scoring_from, windows_before = 0, None, 0
        batches = [inbox[i:i + batch] for i in range(0, len(inbox), batch)]
        for i, current in enumerate(batches):
            # As the worker's loop drives it: the next batch is named (decoded while Redis works)
            # once this one's prepare() has taken its own decode.
            prepared = asyncio.ensure_future(processor.prepare(current))
            await asyncio.sleep(0)
            if i + 1 < len(batches):
                processor.predecode(batches[i + 1])
            pending = await prepared
            await processor.commit(pending)
            if pending.windows_scored and scoring_from is None:
                scoring_from, windows_before = time.perf_counter(), windows
            windows += pending.windows_scored
        elapsed = time.perf_counter() - started
        out = {"records_per_s": len(inbox) / elapsed}
        # Server CPU (user + sys) per record; commandstats would count commands inside scripts twice.
        out["redis_cpu_us_per_record"] = (redis_cpu_s(redis_url) - cpu0) * 1e6 / len(inbox)
        stats = await client.info("commandstats")
        out["redis_commands_per_batch"] = sum(int(v["calls"]) for v in stats.values()) / -(-len(inbox) // batch)
        if scoring_from is not None:
            out["steady_windows_per_s"] = (windows - windows_before) / (time.perf_counter() - scoring_from)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=5000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        return out

    return asyncio.run(run())


def engine_vs_raw(bundle_path: Path, batch: int, seconds: float = 3.0) -> dict[str, float]:
    import numpy as np

    from diskwatch.models.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    scorer = bundle.scorer(max_batch=batch)
    scorer.warmup()
    x = np.random.default_rng(0).random((batch, bundle.window.window, bundle.spec.n_features), dtype=np.float32)
    bundle.classifier.predict_on_batch(x)
    bundle.autoencoder.predict_on_batch(x)

    def rate(fn) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += batch
        return n / (time.perf_counter() - t0)

    engine = rate(lambda: scorer.score(x))
    raw = rate(lambda: (bundle.classifier.predict_on_batch(x), bundle.autoencoder.predict_on_batch(x)))
    return {"engine_windows_per_s": engine, "raw_predict_windows_per_s": raw}


def redis_bytes_per_serial(url: str, prefix: str) -> float:
    import redis

    client = redis.Redis.from_url(url)
    keys = [k for _, k in zip(range(200), client.scan_iter(match=f"{prefix}:w2:*", count=1000), strict=False)]
    sizes = [client.memory_usage(k) or 0 for k in keys]
    all_keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
    if all_keys:
        client.delete(*all_keys)
    return sum(sizes) / len(sizes) if sizes else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drives", type=int, default=5000)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()

    from diskwatch.core.settings import Settings

    settings = Settings()
    bootstrap = settings.kafka_bootstrap_servers
    redis_url = settings.redis_url.get_secret_value()
    with tempfile.TemporaryDirectory(prefix="dw-bench-worker-") as tmp:
        root = Path(tmp)
        bundle = make_bundle(root)
        messages = records(args.drives, args.days, root)
        tag = uuid.uuid4().hex[:6]
        topic = f"bench-telemetry-{tag}"
        try:
            figures = measure(args, bootstrap, redis_url, topic, bundle, messages)
        finally:
            asyncio.run(drop_created(tag, **settings.kafka_client_options()))
    print(json.dumps(figures))


def measure(args: argparse.Namespace, bootstrap: str, redis_url: str, topic: str, bundle: Path,
            messages: list[tuple[bytes, bytes]]) -> dict[str, object]:
    """Every figure of the benchmark, on ``topic`` and topics named after it."""
    asyncio.run(produce(bootstrap, topic, messages, args.partitions))
    n = len(messages)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISKWATCH_")}
    env.update(DISKWATCH_KAFKA_BOOTSTRAP_SERVERS=bootstrap, DISKWATCH_REDIS_URL=redis_url,
               DISKWATCH_TOPIC_TELEMETRY=topic, DISKWATCH_TOPIC_ALERTS=f"{topic}-alerts",
               DISKWATCH_TOPIC_DEAD_LETTERS=f"{topic}-dlq", DISKWATCH_BATCH_SIZE=str(args.batch_size),
               TF_CPP_MIN_LOG_LEVEL="3")
    plain_s = asyncio.run(plain_consume(bootstrap, topic, n))
    noop = faust_noop(env, n)
    no_score = run_worker(bundle, env, n, score=False)
    redis_bytes = redis_bytes_per_serial(redis_url, no_score["prefix"])
    scored = run_worker(bundle, env, n, score=True)
    redis_bytes_per_serial(redis_url, scored["prefix"])
    engine = engine_vs_raw(bundle, args.batch_size)
    alone_no_score = processor_alone(bundle, messages, redis_url, args.batch_size, score=False)
    alone_score = processor_alone(bundle, messages, redis_url, args.batch_size, score=True)
    # One vs two worker processes on a 4-partition topic (no scoring), on 3x the records under other
    # serials: ~10 s per run, so the group's start-up (one worker takes all 4 partitions, then hands
    # two over) weighs little.
    wide = f"{topic}-p4"
    copies = [(k + b"-%d" % c, v.replace(b'"serial_number":"' + k + b'"', b'"serial_number":"' + k + b'-%d"' % c))
              for c in range(3) for k, v in messages]
    asyncio.run(produce(bootstrap, wide, copies, 4))
    wide_env = {**env, "DISKWATCH_TOPIC_TELEMETRY": wide}
    one = run_worker(bundle, wide_env, len(copies), score=False)
    redis_bytes_per_serial(redis_url, one["prefix"])
    two = run_worker(bundle, wide_env, len(copies), score=False, workers=2)
    redis_bytes_per_serial(redis_url, two["prefix"])
    plain_rate = n / plain_s
    no_score_rate = no_score["records"] / no_score["seconds"]
    score_rate = scored["records"] / scored["seconds"]
    score_windows_rate = scored["windows"] / scored["seconds"]
    steady_windows_rate = scored.get("steady_windows_per_s", 0.0)
    noop_rate = noop["records"] / noop["seconds"]
    return {
        "benchmark": "worker",
        "records": n,
        "drives": args.drives,
        "days": args.days,
        "batch_size": args.batch_size,
        "partitions": args.partitions,
        "plain_consume_records_per_s": round(plain_rate),
        "faust_noop_records_per_s": round(noop_rate),
        "worker_no_score_records_per_s": round(no_score_rate),
        "worker_score_records_per_s": round(score_rate),
        "worker_score_windows_per_s": round(score_windows_rate),
        "worker_score_steady_windows_per_s": round(steady_windows_rate),
        "windows_scored": int(scored["windows"]),
        "engine_windows_per_s": round(engine["engine_windows_per_s"]),
        "processor_alone_no_score_records_per_s": round(alone_no_score["records_per_s"]),
        "processor_alone_score_steady_windows_per_s": round(alone_score.get("steady_windows_per_s", 0.0)),
        "ratio_processor_alone_score_vs_engine": round(alone_score.get("steady_windows_per_s", 0.0) / engine["engine_windows_per_s"], 3),
        "raw_predict_windows_per_s": round(engine["raw_predict_windows_per_s"]),
        "ratio_no_score_vs_plain": round(no_score_rate / plain_rate, 3),
        "ratio_no_score_vs_faust_noop": round(no_score_rate / noop_rate, 3),
        "ratio_faust_noop_vs_plain": round(noop_rate / plain_rate, 3),
        "ratio_score_windows_vs_engine": round(score_windows_rate / engine["engine_windows_per_s"], 3),
        "ratio_score_steady_windows_vs_engine": round(steady_windows_rate / engine["engine_windows_per_s"], 3),
        "ratio_score_records_vs_plain": round(score_rate / plain_rate, 3),
        "ratio_engine_vs_raw_predict": round(engine["engine_windows_per_s"] / engine["raw_predict_windows_per_s"], 3),
        "redis_bytes_per_serial": round(redis_bytes),
        "redis_cpu_us_per_record_worker_no_score": round(no_score["redis_cpu_us_per_record"], 2),
        "redis_cpu_us_per_record_processor_alone": round(alone_no_score["redis_cpu_us_per_record"], 2),
        # includes the GETRANGE + SET per drive run inside the one compare-and-set script call
        "redis_commands_per_batch_processor_alone": round(alone_no_score["redis_commands_per_batch"], 2),
        "p4_one_worker_no_score_records_per_s": round(one["records"] / one["seconds"]),
        "p4_two_workers_no_score_records_per_s": round(two["records"] / two["seconds"]),
        "ratio_two_vs_one_worker": round((two["records"] / two["seconds"]) / (one["records"] / one["seconds"]), 3),
        # cores busy per part (of the machine's 2 here) and idle, while each p4 run consumed
        "p4_one_worker_cores": one["cores"],
        "p4_two_workers_cores": two["cores"],
        "targets": {"no_score_vs_plain": 0.25, "processor_alone_no_score_records_per_s": 100_000,
                    "score_steady_vs_engine": 0.6, "engine_vs_raw": 0.9, "redis_bytes_per_serial_max": 1313},
    }


if __name__ == "__main__":
    main()
