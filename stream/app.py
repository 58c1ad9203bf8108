"""The faust-streaming worker: consume telemetry in batches, publish alerts.

Per batch (``stream.take_events(N, within=T)``): :class:`BatchProcessor`
prepares alerts and dead letters, they are produced and *acknowledged by the
broker*, the Redis marks are written, and only then does faust ack the events
so their offsets can be committed. Redis or Kafka errors are retried with
capped exponential backoff — the batch is never dropped and the process does
not crash-loop. On SIGTERM faust stops the agent; an unfinished batch is not
acked, so it is redelivered to whoever owns the partition next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import faust
from aiohttp import web

from diskwatch.core.settings import Settings
from diskwatch.models.bundle import Bundle, load_bundle, read_manifest
from diskwatch.stream import metrics
from diskwatch.stream.processor import BatchProcessor, InMessage, PendingBatch
from diskwatch.stream.windowstate import WindowState

log = logging.getLogger("diskwatch.worker")
T = TypeVar("T")


def redis_client(settings: Settings) -> Any:
    """Async Redis (or Redis Cluster) client from settings; bytes in, bytes out."""
    import redis.asyncio as aioredis

    url = settings.redis_url.get_secret_value()
    kwargs: dict[str, Any] = {"decode_responses": False, "health_check_interval": 30}
    if settings.redis_cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **kwargs)
    return aioredis.from_url(url, **kwargs)


async def retry(what: str, action: Callable[[], Awaitable[T]], *, cap_s: float = 30.0) -> T:
    """Run ``action`` until it succeeds; back off 0.1 s doubling to ``cap_s``."""
    delay = 0.1
    while True:
        try:
            return await action()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis/Kafka errors come in many types
            metrics.RETRIES.labels(target=what).inc()
            log.warning("%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap_s)


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
        self.last_batch_at: float | None = None
        self.batches = 0

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
        processor = BatchProcessor(bundle, state, score=self.score, max_batch=max(s.batch_size, 8))
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


def create_app(
    settings: Settings,
    bundle_path: Path,
    *,
    score: bool = True,
    web_port: int | None = None,
    reload_interval_s: float = 10.0,
) -> tuple[faust.App, Worker]:
    """Build the faust app and its :class:`Worker` state."""
    worker = Worker(settings, bundle_path, score=score)
    port = settings.metrics_port if web_port is None else web_port
    app = faust.App(settings.consumer_group, **faust_options(settings, port))
    telemetry = app.topic(settings.topic_telemetry, key_type=bytes, value_type=bytes)
    alerts = settings.topic_alerts
    dead_letters = settings.topic_dead_letters

    @app.task
    async def _startup() -> None:
        # Load eagerly in a thread: TensorFlow start-up must not stall heartbeats.
        await asyncio.get_running_loop().run_in_executor(None, worker.load)

    async def publish(pending: PendingBatch) -> None:
        futures = []
        for alert in pending.alerts:
            futures.append(await app.producer.send(alerts, alert.serial_number.encode(), alert.to_json(),
                                                   None, None, None))
        for letter in pending.dead_letters:
            key = letter.key.encode() if letter.key is not None else None
            futures.append(await app.producer.send(dead_letters, key, letter.to_json(), None, None, None))
        if futures:
            await asyncio.gather(*futures)

    async def process(events: list[Any]) -> None:
        processor = worker.processor
        assert processor is not None
        messages = [
            InMessage(e.message.value, e.message.key, e.message.topic, e.message.partition, e.message.offset)
            for e in events
        ]
        pending = await retry("redis", partial(processor.prepare, messages))
        await retry("kafka", partial(publish, pending))
        await retry("redis", partial(processor.commit, pending))

    @app.agent(telemetry)
    async def score_telemetry(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_linger_s):
            while worker.processor is None:
                await asyncio.sleep(0.1)
            started = time.perf_counter()
            await process(list(events))
            metrics.BATCH_SIZE.observe(len(events))
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
            _observe_lag(app, events)
            worker.last_batch_at = time.time()
            worker.batches += 1

    @app.on_partitions_revoked.connect
    async def _forget_lag(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # A partition that moved to another worker is that worker's to report.
        for tp in revoked:
            if tp.topic == settings.topic_telemetry:
                with contextlib.suppress(KeyError):
                    metrics.CONSUMER_LAG.remove(str(tp.partition))

    @app.timer(interval=reload_interval_s)
    async def _reload() -> None:
        if worker.processor is not None:
            await asyncio.get_running_loop().run_in_executor(None, worker.maybe_reload)

    @app.page("/metrics")
    async def _metrics(web_view: Any, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def _health(web_view: Any, request: Any) -> Any:
        ready = worker.processor is not None
        body = {
            "status": "ok" if ready else "starting",
            "bundle": worker.bundle.version if worker.bundle else None,
            "batches": worker.batches,
            "last_batch_age_s": None if worker.last_batch_at is None else round(time.time() - worker.last_batch_at, 3),
            "assigned": sorted(
                f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment() if tp.topic == settings.topic_telemetry
            ) if ready else [],
        }
        return web.Response(text=json.dumps(body), status=200 if ready else 503, content_type="application/json")

    return app, worker


def _observe_lag(app: faust.App, events: list[Any]) -> None:
    last: dict[Any, int] = {}
    for event in events:
        last[event.message.tp] = event.message.offset
    for tp, offset in last.items():
        try:
            highwater = app.consumer.highwater(tp)
        except Exception:
            continue
        if highwater is not None:
            metrics.CONSUMER_LAG.labels(partition=str(tp.partition)).set(max(highwater - offset - 1, 0))


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
