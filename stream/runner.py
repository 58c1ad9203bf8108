"""Run one worker in this process, or N worker processes in one consumer group.

Each process is a full faust worker; Kafka's group protocol spreads the
telemetry topic's partitions over them (so more partitions than workers is
what lets a fleet scale out). Worker ``i`` serves /metrics and /healthz on
``metrics_port + i``. The parent forwards SIGINT/SIGTERM to its children and
exits with the first non-zero status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from diskwatch.core.settings import Settings


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the telemetry, alert and dead-letter topics if they are missing.

    faust creates only its internal topics; a consumer subscribed to a topic
    that does not exist yet would not see it until its next metadata refresh
    (minutes), so the worker creates them up front. Returns those it created.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [settings.topic_telemetry, settings.topic_alerts, settings.topic_dead_letters]
        missing = [t for t in wanted if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(
                    [NewTopic(t, num_partitions=settings.topic_partitions, replication_factor=settings.topic_replication_factor) for t in missing]
                )
        return missing
    finally:
        await admin.close()


def run_worker(settings: Settings, bundle: Path, *, index: int = 0, score: bool = True) -> None:
    """Run one faust worker until stopped (blocks)."""
    import asyncio

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    created = asyncio.run(ensure_topics(settings))
    if created:
        logging.getLogger("diskwatch").info("created topics %s", created)
    from diskwatch.stream.app import create_app

    port = settings.metrics_port + index if settings.metrics_port else 0
    app, _ = create_app(settings, bundle, score=score, web_port=port)
    logging.getLogger("diskwatch").info(
        "worker %d: kafka %s topic %s → %s (dlq %s), redis %s, metrics :%s",
        index, settings.kafka_bootstrap_servers, settings.topic_telemetry, settings.topic_alerts,
        settings.topic_dead_letters, settings.redacted()["redis_url"], port or "off",
    )
    import faust

    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def run_workers(bundle: Path, workers: int, *, score: bool = True) -> int:
    """Start ``workers`` child processes and supervise them; returns an exit code.

    Each child runs this module (``python -m diskwatch.stream.runner``), not the CLI: the
    online path starts without the shell, and children read the same environment settings.
    """
    children: list[subprocess.Popen[bytes]] = []
    for index in range(workers):
        cmd = [sys.executable, "-m", __spec__.name if __spec__ else "diskwatch.stream.runner",
               "--bundle", str(bundle), "--index", str(index)]
        if not score:
            cmd.append("--no-score")
        children.append(subprocess.Popen(cmd))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while any(child.poll() is None for child in children):
        for child in children:
            code = child.poll()
            if code not in (None, 0) and status == 0:
                status = code
                forward(signal.SIGTERM, None)
        time.sleep(0.2)
    return status or max((c.returncode or 0) for c in children)


def main(argv: list[str] | None = None) -> None:
    """Entry point of one child started by :func:`run_workers`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m diskwatch.stream.runner", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--index", type=int, default=0, help="worker index (metrics port offset)")
    parser.add_argument("--no-score", dest="score", action="store_false", help="keep windows, skip inference")
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(settings, args.bundle, index=args.index, score=args.score)


if __name__ == "__main__":
    main()
