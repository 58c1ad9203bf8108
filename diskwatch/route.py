"""``diskwatch route``: drive alerts from Kafka → Prometheus Alertmanager (v2 API).

Operators already route alerts with Alertmanager (e-mail, PagerDuty, Slack),
so the alert topic is consumed in its own consumer group and POSTed to
``/api/v2/alerts`` in batches. Offsets are committed only after Alertmanager
accepted a batch (at-least-once; Alertmanager dedupes on labels). Connection
errors, 5xx, 429 and auth errors are retried with capped exponential backoff —
nothing is dropped while Alertmanager is away. A message that is not a valid
Alert is logged and skipped; an alert Alertmanager itself refuses (400) is
logged and skipped so one bad alert cannot block the topic.

Alertmanager keeps alerts in memory only, so (like Prometheus) the router
re-sends its still-active alerts every ``resend_interval_s``: an Alertmanager
restart is healed within one interval while the router runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from diskwatch.core.records import Alert
from diskwatch.core.settings import Settings, redact_url

log = logging.getLogger("diskwatch.route")
ALERTNAME = "DriveFailurePredicted"
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class AlertmanagerSettings(BaseSettings):
    """``DISKWATCH_ALERTMANAGER_*``: where and how to reach Alertmanager; credentials are secrets."""

    model_config = SettingsConfigDict(
        env_prefix="DISKWATCH_ALERTMANAGER_", env_file=os.environ.get("DISKWATCH_ENV_FILE", ".env"), env_file_encoding="utf-8",
        env_ignore_empty=True, extra="ignore", hide_input_in_errors=True,
    )

    url: SecretStr | None = Field(None, description="Base URL, e.g. http://alertmanager:9093 (may hold credentials).")
    username: str | None = Field(None, description="Basic auth user.")
    password: SecretStr | None = Field(None, description="Basic auth password.")
    bearer_token: SecretStr | None = Field(None, description="Authorization: Bearer token (instead of basic auth).")
    ca_file: Path | None = Field(None, description="CA bundle (PEM) that signed Alertmanager's certificate.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Its private key (PEM).")
    tls_insecure_skip_verify: bool = Field(False, description="Do not verify the server certificate (testing only).")
    consumer_group: str = Field("diskwatch-alertmanager", description="Kafka consumer group of the router.")
    batch_size: int = Field(64, ge=1, le=10_000, description="Alerts per POST.")
    timeout_s: float = Field(10.0, gt=0, description="Per request.")
    resolve_after_hours: float | None = Field(
        None, gt=0, description="endsAt = startsAt + this; default: the alert's horizon_days."
    )
    resend_interval_s: float = Field(60.0, gt=0, description="Re-send active alerts this often.")
    generator_url: str | None = Field(None, description="Link shown in Alertmanager (e.g. a dashboard).")
    labels: dict[str, str] = Field(default_factory=dict, description='Static labels (JSON), e.g. {"host":"dc1"}.')

    @field_validator("url")
    @classmethod
    def _http(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not _LABEL_NAME.match(name)]
        if bad:  # Alertmanager would refuse every alert
            raise ValueError(f"invalid label name(s) {bad}: use [a-zA-Z_][a-zA-Z0-9_]*")
        return value

    def endpoint(self) -> str:
        if self.url is None:
            raise ValueError("no Alertmanager URL: pass --alertmanager or set DISKWATCH_ALERTMANAGER_URL")
        return self.url.get_secret_value().rstrip("/") + "/api/v2/alerts"

    def safe_url(self) -> str:
        return redact_url(self.url.get_secret_value()) if self.url else "(unset)"

    def headers(self) -> dict[str, str]:
        """Authorization: the bearer token, else basic auth, else none."""
        if self.bearer_token is not None:
            return {"Authorization": f"Bearer {self.bearer_token.get_secret_value()}"}
        if self.username is not None:
            password = self.password.get_secret_value() if self.password else ""
            token = base64.b64encode(f"{self.username}:{password}".encode()).decode("ascii")
            return {"Authorization": f"Basic {token}"}
        return {}

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.tls_insecure_skip_verify:
            return False
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return context


def _rfc3339(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_alertmanager(
    alert: Alert,
    *,
    labels: Mapping[str, str] | None = None,
    resolve_after: dt.timedelta | None = None,
    generator_url: str | None = None,
) -> dict[str, Any]:
    """One Alertmanager v2 ``postableAlert``; ``endsAt`` lets an alert that is not repeated resolve."""
    starts = alert.created_at
    ends = starts + (resolve_after or dt.timedelta(days=alert.horizon_days))
    reasons = ", ".join(
        f"{r.feature}={'?' if r.raw_value is None else f'{r.raw_value:g}'} ({r.error_share:.0%})" for r in alert.reasons
    )
    annotations = {
        "summary": f"{alert.model} {alert.serial_number}: P(failure within {alert.horizon_days} d) "
        f"= {alert.failure_probability:.2f}",
        "description": f"diskwatch predicts drive {alert.serial_number} ({alert.model}) may fail within "
        f"{alert.horizon_days} days (telemetry of {alert.date}; window {alert.window_start}..{alert.window_end}).",
        "failure_probability": f"{alert.failure_probability:.4f}",
        "anomaly_score": f"{alert.anomaly_score:.6g}",
        "reasons": reasons or "-",
        "life_expectancy": alert.life_expectancy.value if alert.life_expectancy else "unknown",
        "date": alert.date.isoformat(),
        "bundle_version": alert.bundle_version,
        "idempotency_key": alert.idempotency_key,
    }
    if alert.predicted_days_to_failure is not None:
        annotations["predicted_days_to_failure"] = f"{alert.predicted_days_to_failure:.1f}"
    payload: dict[str, Any] = {
        "labels": {
            **dict(labels or {}),
            "alertname": ALERTNAME,
            "serial": alert.serial_number,
            "model": alert.model,
            "severity": alert.severity.value,
        },
        "annotations": annotations,
        "startsAt": _rfc3339(starts),
        "endsAt": _rfc3339(ends),
    }
    if generator_url:
        payload["generatorURL"] = generator_url
    return payload


@dataclass
class RouteStats:
    delivered: int = 0  # alerts Alertmanager accepted
    malformed: int = 0  # messages that were not valid Alerts (logged, skipped)
    rejected: int = 0  # alerts Alertmanager refused with 400 (logged, skipped)
    retries: int = 0
    resent: int = 0


class AlertmanagerClient:
    """POSTs batches to ``/api/v2/alerts``; retries until accepted (see module docstring)."""

    def __init__(self, config: AlertmanagerSettings, stats: RouteStats, stop: asyncio.Event) -> None:
        self.config = config
        self.stats = stats
        self.stop = stop
        self.session: aiohttp.ClientSession | None = None
        self.ssl = config.ssl_context()

    async def __aenter__(self) -> AlertmanagerClient:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            headers=self.config.headers(),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def _post(self, payloads: list[dict[str, Any]]) -> tuple[int, str]:
        assert self.session is not None
        async with self.session.post(
            self.config.endpoint(), json=payloads, ssl=self.ssl
        ) as response:
            return response.status, (await response.text())[:300]

    async def deliver(self, payloads: list[dict[str, Any]]) -> bool:
        """True once Alertmanager accepted (or refused as invalid) every alert; False if stopped first."""
        delay = 0.2
        while not self.stop.is_set():
            try:
                status, body = await self._post(payloads)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, body = 0, f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300:
                self.stats.delivered += len(payloads)
                return True
            if status == 400 and len(payloads) > 1:  # find the bad one(s); deliver the rest
                for one in payloads:
                    if not await self.deliver([one]):
                        return False
                return True
            if status == 400:
                self.stats.rejected += 1
                log.error("Alertmanager refused alert %s (skipped): %s", payloads[0]["labels"], body)
                return True
            self.stats.retries += 1
            log.warning("Alertmanager %s: %s; retrying in %.1fs", self.config.safe_url(),
                        f"HTTP {status} {body}" if status else body, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
            delay = min(delay * 2, 30.0)
        return False


def parse_alert(value: bytes | None, where: str) -> Alert | None:
    """The Alert in a message, or None (logged) when it is not one."""
    try:
        return Alert.model_validate_json(value or b"")
    except ValidationError as exc:
        first = exc.errors()[0]
        log.warning("skipping a message that is not a valid Alert at %s: %s (%s)", where,
                    first.get("msg"), ".".join(map(str, first.get("loc", ()))) or "payload")
        return None


async def route(
    settings: Settings,
    config: AlertmanagerSettings,
    *,
    topic: str | None = None,
    stop: asyncio.Event | None = None,
    idle_timeout: float | None = None,
) -> RouteStats:
    """Consume the alert topic and deliver to Alertmanager until ``stop`` is set (or idle for ``idle_timeout``)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import CommitFailedError, IllegalStateError

    config.endpoint()  # fail fast without a URL
    stop = stop or asyncio.Event()
    stats = RouteStats()
    consumer = AIOKafkaConsumer(
        topic or settings.topic_alerts, **settings.kafka_client_options(), group_id=config.consumer_group,
        enable_auto_commit=False, auto_offset_reset="earliest", client_id="diskwatch-route",
    )
    resolve_after = dt.timedelta(hours=config.resolve_after_hours) if config.resolve_after_hours else None
    active: dict[tuple[str, ...], dict[str, Any]] = {}
    await consumer.start()
    log.info("routing %s → %s (group %s)", topic or settings.topic_alerts, config.safe_url(), config.consumer_group)
    last_message = last_resend = time.monotonic()
    try:
        async with AlertmanagerClient(config, stats, stop) as client:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=config.batch_size)
                messages = [m for ms in batch.values() for m in ms]
                now = time.monotonic()
                if now - last_resend >= config.resend_interval_s and active:
                    await _resend(client, active, stats)
                    last_resend = now
                if not messages:
                    if idle_timeout is not None and now - last_message > idle_timeout:
                        break
                    continue
                last_message = now
                payloads = []
                for m in messages:
                    alert = parse_alert(m.value, f"{m.topic}[{m.partition}]@{m.offset}")
                    if alert is None:
                        stats.malformed += 1
                        continue
                    payloads.append(to_alertmanager(alert, labels=config.labels, resolve_after=resolve_after,
                                                    generator_url=config.generator_url))
                if payloads and not await client.deliver(payloads):
                    break  # stopped before Alertmanager took the batch: leave the offsets uncommitted
                for payload in payloads:
                    active[tuple(sorted(payload["labels"].items()))] = payload
                try:
                    await consumer.commit()
                except (CommitFailedError, IllegalStateError) as exc:  # a rebalance took the partitions
                    log.warning("offset commit failed (%s); the new owner re-delivers (Alertmanager dedupes)", exc)
    finally:
        await consumer.stop()
    return stats


async def _resend(client: AlertmanagerClient, active: dict[tuple[str, ...], dict[str, Any]], stats: RouteStats) -> None:
    """Re-post alerts whose endsAt is still ahead (Alertmanager forgets alerts when it restarts)."""
    now = _rfc3339(dt.datetime.now(dt.UTC))
    for key in [k for k, p in active.items() if p["endsAt"] <= now]:
        del active[key]
    payloads = list(active.values())
    before = stats.delivered
    for i in range(0, len(payloads), client.config.batch_size):
        chunk = payloads[i : i + client.config.batch_size]
        if not await client.deliver(chunk):
            break
        stats.resent += len(chunk)
    stats.delivered = before  # a re-send is not a new delivery


def describe(stats: RouteStats) -> str:
    return json.dumps(stats.__dict__)
