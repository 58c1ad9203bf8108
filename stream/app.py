"""The faust-streaming worker: faust is the application, telemetry comes in batches.

The parts, each named: :class:`Worker` (the model bundle and its hot swap),
:class:`Publisher` (alerts and dead letters, acked by the broker),
:class:`~diskwatch.stream.consumer.TelemetryLoop` (an aiokafka ``getmany()``
loop run as a faust service — why, and which guarantees it keeps, in its
module docstring), :class:`~diskwatch.stream.batches.BatchRunner` (which
errors are retried and how a poison record is found) and the web views.
:func:`create_app` only wires them together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from diskwatch.core.settings import Settings
from diskwatch.core.wire import InputLimits
from diskwatch.models.bundle import Bundle, load_bundle, read_manifest
from diskwatch.stream import metrics
from diskwatch.stream.batches import BatchRunner
from diskwatch.stream.consumer import TelemetryLoop
from diskwatch.stream.processor import BatchProcessor, PendingBatch
from diskwatch.stream.windowstate import WindowState

log = logging.getLogger("diskwatch.worker")


def redis_client(settings: Settings) -> Any:
    """Async Redis (or Redis Cluster) client from settings; bytes in, bytes out."""
    import redis.asyncio as aioredis

    url = settings.redis_url.get_secret_value()
    kwargs: dict[str, Any] = {"decode_responses": False, "health_check_interval": 30}
    if settings.redis_cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **kwargs)
    return aioredis.from_url(url, **kwargs)


class Worker:
    """State shared by the agent, the timers and the web pages of one process."""

    def __init__(self, settings: Settings, bundle_path: Path, *, score: bool = True) -> None:
        self.settings = settings
        self.bundle_path = Path(bundle_path)
        self.score = score
        self.redis: Any = None
        self.processor: BatchProcessor | None = None
        self.bundle: Bundle | None = None
        self._bundle_stamp: tuple[tuple[str, int, int], ...] | None = None
        self.ready = asyncio.Event()
        self.loop: TelemetryLoop | None = None

    def load(self) -> None:
        """Load (or reload) the bundle; the window state in Redis is kept."""
        bundle = load_bundle(self.bundle_path)
        if self.redis is None:
            self.redis = redis_client(self.settings)
        s = self.settings
        state = WindowState(
            self.redis, bundle.spec, prefix=s.redis_key_prefix,
            keep_days=bundle.window.window + bundle.window.max_gap,
            ttl_seconds=int(s.window_ttl_days * 86400),
        )
        if self.processor is not None:  # a hot swap keeps what this process recorded as applied
            state.last_applied = self.processor.state.last_applied
        processor = BatchProcessor(bundle, state, score=self.score, max_batch=max(s.batch_size, 8),
                                   limits=InputLimits.from_settings(s))
        processor.warmup()
        if self.bundle is not None:
            metrics.BUNDLE_INFO.remove(self.bundle.version)
        self.bundle, self.processor = bundle, processor
        self._bundle_stamp = _stamp(self.bundle_path)
        metrics.BUNDLE_INFO.labels(version=bundle.version).set(1)
        log.info("model bundle %s loaded from %s", bundle.version, self.bundle_path)

    def maybe_reload(self) -> None:
        """Hot swap: pick up a changed bundle between batches; keep the old on error."""
        stamp = _stamp(self.bundle_path)
        if stamp is None or stamp == self._bundle_stamp:
            return
        try:
            read_manifest(self.bundle_path)
            self.load()
        except Exception as exc:
            self._bundle_stamp = stamp
            log.error("new bundle at %s refused, keeping %s: %s", self.bundle_path,
                      self.bundle.version if self.bundle else None, exc)


def _stamp(path: Path) -> tuple[tuple[str, int, int], ...] | None:
    """Name, mtime and size of every file of the bundle: any change counts.

    Watching every file (not just the manifest) means a bundle refused while
    it was half copied is tried again when the rest of it lands.
    """
    try:
        if not (path / "manifest.json").is_file():
            return None
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return tuple((str(p.relative_to(path)), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    except OSError:
        return None


FAUST_CONSUMER_STOP_S = 10.0


def faust_options(settings: Settings, web_port: int) -> dict[str, Any]:
    """faust.App keyword arguments for a diskwatch worker (the benchmark reuses them)."""
    # faust wants a data directory even with in-memory tables; keep it out of the work tree.
    datadir = Path(tempfile.gettempdir()) / "diskwatch-faust"
    datadir.mkdir(parents=True, exist_ok=True)
    return dict(
        broker=settings.kafka_url,
        broker_credentials=kafka_credentials(settings),
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_replication_factor=settings.topic_replication_factor,
        datadir=str(datadir / "{conf.id}-data"),
        topic_partitions=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=web_port > 0,
        web_port=max(web_port, 1),
        web_bind=settings.metrics_host,
        web_in_thread=False,
        stream_wait_empty=False,
        broker_commit_every=max(settings.batch_size, 1),
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout_s / 3),
        # faust pauses a partition when this buffer fills and refetches on resume;
        # room for several batches keeps fetching running while one is scored.
        stream_buffer_maxsize=max(8 * settings.batch_size, 16384),
        consumer_max_fetch_size=settings.kafka_fetch_max_bytes,
    )


class Publisher:
    """Alerts and dead letters through faust's producer; returns once the broker acked all."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.alerts = settings.topic_alerts
        self.dead_letters = settings.topic_dead_letters

    async def __call__(self, pending: PendingBatch) -> None:
        send = self.app.producer.send
        futures = [await send(self.alerts, a.serial_number.encode(), a.to_json(), None, None, None)
                   for a in pending.alerts]
        for letter in pending.dead_letters:
            key = letter.key.encode() if letter.key is not None else None
            futures.append(await send(self.dead_letters, key, letter.to_json(), None, None, None))
        if futures:
            await asyncio.gather(*futures)


def create_app(
    settings: Settings,
    bundle_path: Path,
    *,
    score: bool = True,
    web_port: int | None = None,
    reload_interval_s: float = 10.0,
) -> tuple[faust.App, Worker]:
    """Build the faust app, its :class:`Worker` state and the telemetry loop, wired together."""
    # faust's own consumer (the app's group: nothing of ours to commit there) waits up to mode's
    # 60 s to stop, which with every broker gone outlasts an orchestrator's grace period
    # (Kubernetes: 30 s) and ends in SIGKILL. Give it less.
    AIOKafkaConsumerThread.shutdown_timeout = FAUST_CONSUMER_STOP_S
    worker = Worker(settings, bundle_path, score=score)
    port = settings.metrics_port if web_port is None else web_port
    # The app's own group is not the telemetry group: faust's assignor must not share it.
    app = faust.App(f"{settings.consumer_group}-app", **faust_options(settings, port))
    runner = BatchRunner(lambda: _processor(worker), Publisher(app, settings), attempts=settings.batch_attempts)
    loop = TelemetryLoop(settings, runner, worker.ready, applied=partial(_applied, worker),
                         loop=app.loop, beacon=app.beacon)
    app._extra_services.append(loop)  # an instance: faust's @app.service takes only classes
    app.task(partial(_startup, worker))
    app.timer(interval=reload_interval_s)(partial(_reload, worker))
    add_views(app, worker, loop, settings)
    worker.loop = loop
    return app, worker


def _processor(worker: Worker) -> BatchProcessor:
    assert worker.processor is not None, "the telemetry loop starts after the bundle is loaded"
    return worker.processor


async def _applied(worker: Worker, topic: str, partitions: list[int]) -> dict[int, int]:
    return await _processor(worker).state.applied_offsets(topic, partitions)


async def _startup(worker: Worker) -> None:
    """Load the bundle in a thread (TensorFlow start-up must not stall the loop), then consume."""
    await asyncio.get_running_loop().run_in_executor(None, worker.load)
    worker.ready.set()


async def _reload(worker: Worker) -> None:
    if worker.processor is not None:
        await asyncio.get_running_loop().run_in_executor(None, worker.maybe_reload)


def add_views(app: faust.App, worker: Worker, loop: TelemetryLoop, settings: Settings) -> None:
    """/metrics (Prometheus) and /healthz (ready, not stalled)."""

    @app.page("/metrics")
    async def _metrics(web_view: Any, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def _health(web_view: Any, request: Any) -> Any:
        body = health(worker, loop, settings)
        return web.Response(text=json.dumps(body), status=200 if body["status"] == "ok" else 503,
                            content_type="application/json")


def health(worker: Worker, loop: TelemetryLoop, settings: Settings) -> dict[str, Any]:
    """ok, starting (bundle not loaded) or stalled (lag and no batch done for stall_timeout_s)."""
    ready = worker.processor is not None
    stalled = ready and loop.stalled(settings.stall_timeout_s)
    return {
        "status": "starting" if not ready else "stalled" if stalled else "ok",
        "bundle": worker.bundle.version if worker.bundle else None,
        "batches": loop.batches,
        "last_batch_age_s": None if loop.last_batch_at is None else round(time.time() - loop.last_batch_at, 3),
        "lag": sum(loop.lag.values()),
        "assigned": loop.assigned() if ready else [],
    }


def kafka_credentials(settings: Settings) -> Any:
    """faust credentials (None for PLAINTEXT), derived from the aiokafka options
    so the SSL context and SASL mechanism are decided in one place (Settings)."""
    options = settings.kafka_client_options()
    protocol = options["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    context = options.get("ssl_context")
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = options["sasl_mechanism"]
    kwargs: dict[str, Any] = {
        "username": options["sasl_plain_username"],
        "password": options["sasl_plain_password"],
        "ssl_context": context,
    }
    if mechanism.startswith("SCRAM"):
        kwargs["mechanism"] = mechanism
    return faust.SASLCredentials(**kwargs)
