"""Benchmark: smartctl JSON → records/s, and alerts/s from Kafka into a real Alertmanager.

* convert: every file of ../shared/data/smartctl converted ``--rounds`` times (pure functions,
  JSON parsing included), against plain ``json.loads`` of the same texts;
* route: ``--alerts`` alerts produced to a fresh topic, then timed from the router's start
  until it is idle (batches of ``DISKWATCH_ALERTMANAGER_BATCH_SIZE``, commit after each).

Needs the stack and the local Alertmanager (``deploy/local/stack up``,
``deploy/local/alertmanager up``). Prints one JSON object.

    python tests/benchmarks/bench_fleet_io.py [--rounds 20] [--alerts 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from diskwatch.core.records import Alert, Severity  # noqa: E402
from diskwatch.core.settings import Settings  # noqa: E402
from diskwatch.core.smartctl import SmartctlError, convert  # noqa: E402
from diskwatch.route import AlertmanagerSettings, route  # noqa: E402
from tests.kafka_admin import drop_created  # noqa: E402

SMARTCTL_DIR = Path(os.environ.get("DISKWATCH_SMARTCTL_DATA", REPO.parent / "shared/data/smartctl"))


def bench_convert(rounds: int) -> dict[str, float]:
    texts = [p.read_text() for p in sorted(SMARTCTL_DIR.glob("*.json"))]
    started = time.perf_counter()
    for _ in range(rounds):
        for text in texts:
            json.loads(text)
    parse_s = time.perf_counter() - started
    started = time.perf_counter()
    converted = 0
    for _ in range(rounds):
        for text in texts:
            try:
                convert(json.loads(text))
                converted += 1
            except SmartctlError:
                pass
    convert_s = time.perf_counter() - started
    outputs = rounds * len(texts)
    return {"outputs": outputs, "records": converted, "outputs_per_s": round(outputs / convert_s),
            "json_loads_only_per_s": round(outputs / parse_s), "ratio_to_json_loads": round(parse_s / convert_s, 3)}


async def bench_route(n: int) -> dict[str, float]:

    settings = Settings()
    run = uuid.uuid4().hex[:8]
    topic = f"bench-route-{run}"
    try:
        return await _route(settings, topic, run, n)
    finally:
        await drop_created(run, **settings.kafka_client_options())


async def _route(settings: Settings, topic: str, run: str, n: int) -> dict[str, float]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.kafka_client_options(), acks="all", linger_ms=20)
    await producer.start()
    now = dt.datetime.now(dt.UTC)
    day = now.date()
    futures = []
    for i in range(n):
        alert = Alert(idempotency_key=f"P{run}{i}|{day}|b", serial_number=f"P{run}{i}", model="ST4000DM000",
                      date=day, window_start=day, window_end=day, severity=Severity.WARNING,
                      failure_probability=0.9, anomaly_score=0.2, classifier_threshold=0.5, anomaly_threshold=0.1,
                      horizon_days=1, bundle_version="b", created_at=now)
        futures.append(await producer.send(topic, value=alert.to_json(), key=alert.serial_number.encode()))
    await asyncio.gather(*futures)
    await producer.stop()
    url = subprocess.run([str(REPO / "deploy/local/alertmanager"), "url"], capture_output=True, text=True,
                         check=True).stdout.strip()
    config = AlertmanagerSettings(url=url, consumer_group=f"bench-{run}", labels={"bench": run},
                                  resolve_after_hours=0.05)
    started = time.perf_counter()
    stats = await route(settings, config, topic=topic, idle_timeout=2.0)
    seconds = time.perf_counter() - started - 2.0  # minus the idle wait that ends it
    return {"alerts": n, "delivered": stats.delivered, "batch_size": config.batch_size,
            "seconds": round(seconds, 2), "alerts_per_s": round(stats.delivered / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--alerts", type=int, default=2000)
    args = parser.parse_args()
    out = {"convert": bench_convert(args.rounds), "route": asyncio.run(bench_route(args.alerts))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
