"""Run one worker in this process, or N worker processes in one consumer group.

Each process is a full faust worker; Kafka's group protocol spreads the
telemetry topic's partitions over them (so more partitions than workers is
what lets a fleet scale out). Worker ``i`` serves /metrics and /healthz on
``metrics_port + i``. The parent forwards SIGINT/SIGTERM to its children and
exits with the first non-zero status.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from diskwatch.core.errors import ConfigError, DiskwatchError, PortInUse, ServiceUnavailable
from diskwatch.core.settings import Settings, load_settings

log = logging.getLogger("diskwatch")

#: Tries to reach Kafka before a worker gives up (orchestrators restart it; a person sees why).
CONNECT_ATTEMPTS = 3
CONNECT_BACKOFF_S = 2.0
#: ... and when one broker of a cluster is down: until the cluster stops naming it (~10 s).
PARTIAL_CLUSTER_ATTEMPTS = 15
#: Kafka error codes of CreateTopics that a user fixes with a setting.
_TOPIC_ERROR_SETTING = {
    36: None,  # TOPIC_ALREADY_EXISTS: another worker won the race
    37: "DISKWATCH_TOPIC_PARTITIONS",  # INVALID_PARTITIONS
    38: "DISKWATCH_TOPIC_REPLICATION_FACTOR",  # INVALID_REPLICATION_FACTOR (more than the brokers)
    29: "DISKWATCH_KAFKA_SASL_USERNAME",  # TOPIC_AUTHORIZATION_FAILED
    17: "DISKWATCH_TOPIC_TELEMETRY / _ALERTS / _DEAD_LETTERS",  # INVALID_TOPIC_EXCEPTION
}


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
                response = await admin.create_topics(
                    [NewTopic(t, num_partitions=settings.topic_partitions, replication_factor=settings.topic_replication_factor) for t in missing]
                )
                _raise_topic_errors(settings, response)
        return missing
    finally:
        await admin.close()


def _raise_topic_errors(settings: Settings, response: object) -> None:
    """CreateTopics answers errors per topic instead of raising: turn the first into a ConfigError."""
    for entry in getattr(response, "topic_errors", ()):
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 and entry[2] else f"error code {code}"
        if code in (0, 36):
            continue
        setting = _TOPIC_ERROR_SETTING.get(code) or "the topic settings (DISKWATCH_TOPIC_*)"
        raise ConfigError(
            f"Kafka at {settings.kafka_bootstrap_servers} refused to create topic {topic!r} "
            f"(partitions={settings.topic_partitions}, replication factor={settings.topic_replication_factor}): "
            f"{message}; check {setting}"
        )


async def connect_and_ensure_topics(
    settings: Settings, *, attempts: int = CONNECT_ATTEMPTS, backoff_s: float = CONNECT_BACKOFF_S
) -> list[str]:
    """:func:`ensure_topics`, retried a few times with one log line per failed attempt.

    Raises :class:`ServiceUnavailable` naming the setting and the address when Kafka never answers.
    A cluster that answered but sent the request to a broker that is down (it stays in the
    metadata until its session expires, ~10 s) is retried longer: a worker restarted during a
    broker outage must come up on the brokers that are left.
    """
    import asyncio

    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError

    servers = settings.kafka_bootstrap_servers
    failures = {False: 0, True: 0}  # by "the cluster answered but one broker did not"
    while True:
        try:
            with _quiet_logger("aiokafka"):  # its own 'Unable connect' line would double ours
                return await ensure_topics(settings)
        except (NodeNotReadyError, KafkaConnectionError, KafkaTimeoutError, OSError) as exc:
            partial = isinstance(exc, NodeNotReadyError)
            failures[partial] += 1
            limit = PARTIAL_CLUSTER_ATTEMPTS if partial else attempts
            what = f"a Kafka broker of {servers} is not ready" if partial else f"Kafka is not reachable at {servers}"
            reason = str(exc) or type(exc).__name__
            if failures[partial] >= limit:
                raise ServiceUnavailable(
                    f"{what} (DISKWATCH_KAFKA_BOOTSTRAP_SERVERS) after {limit} attempts: {reason}"
                ) from None
            log.warning("%s (attempt %d/%d, retrying in %.0fs): %s", what, failures[partial], limit, backoff_s, reason)
        await asyncio.sleep(backoff_s)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_metrics_port(settings: Settings, index: int = 0) -> int:
    """The /metrics port of worker ``index`` (0: off); :class:`PortInUse` if another process holds it.

    Checked before anything starts so that a second worker on the same machine fails with the
    setting that moves it, not with an ``OSError`` traceback from deep inside the web server.
    """
    if not settings.metrics_port:
        return 0
    port = settings.metrics_port + index
    with socket.socket(socket.AF_INET6 if ":" in settings.metrics_host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server binds
        try:
            probe.bind((settings.metrics_host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError(
                    f"cannot listen on {settings.metrics_host}:{port} for /metrics: {exc.strerror} "
                    "(DISKWATCH_METRICS_HOST)"
                ) from None
            raise PortInUse(
                f"metrics port {settings.metrics_host}:{port} is taken (another worker?); "
                "set DISKWATCH_METRICS_PORT to a free port, or 0 to turn /metrics off"
                + (f" (worker {index} uses DISKWATCH_METRICS_PORT + {index})" if index else "")
            ) from None
    return port


def run_worker(settings: Settings, bundle: Path, *, index: int = 0, score: bool = True) -> None:
    """Run one faust worker until stopped (blocks)."""
    import asyncio

    from diskwatch.core.quiet import quiet_tensorflow

    quiet_tensorflow()
    port = check_metrics_port(settings, index)
    created = asyncio.run(connect_and_ensure_topics(settings))
    if created:
        log.info("created topics %s", created)
    from diskwatch.stream.app import create_app

    app, _ = create_app(settings, bundle, score=score, web_port=port)
    log.info(
        "worker %d: kafka %s topic %s → %s (dlq %s), redis %s, metrics :%s",
        index, settings.kafka_bootstrap_servers, settings.topic_telemetry, settings.topic_alerts,
        settings.topic_dead_letters, settings.redacted()["redis_url"], port or "off",
    )
    import faust

    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def run_workers(bundle: Path, workers: int, *, score: bool = True, settings: Settings | None = None) -> int:
    """Start ``workers`` child processes and supervise them; returns an exit code.

    Each child runs this module (``python -m diskwatch.stream.runner``), not the CLI: the
    online path starts without the shell, and children read the same environment settings.
    Kafka and every metrics port are checked first, so a user error stops all before any starts.
    """
    import asyncio

    settings = settings or load_settings()
    for index in range(workers):
        check_metrics_port(settings, index)
    asyncio.run(connect_and_ensure_topics(settings))
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
    try:
        settings = load_settings()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        run_worker(settings, args.bundle, index=args.index, score=args.score)
    except DiskwatchError as exc:
        print(f"error: worker {args.index}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    main()
