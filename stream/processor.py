"""One batch of telemetry → window updates, scores, alerts and dead letters.

Transport-free: the faust agent (and the benchmark's plain consumer) feed it
raw Kafka messages and publish what it returns. The order that makes
at-least-once delivery safe is the caller's:

1. :meth:`BatchProcessor.prepare` — validate, write days to Redis (HSETNX:
   duplicates change nothing), score every window that became full and was
   never scored, decide alerts with the per-drive debounce state;
2. publish alerts and dead letters and wait for the broker's acks;
3. :meth:`BatchProcessor.commit` — mark those windows scored and store the
   debounce state, then let the consumer commit offsets.

A crash before step 3 replays the batch: Redis already has the days, the
windows are scored again with the same result, and alerts carry the same
idempotency key (serial, date, bundle version) — so subscribers can dedupe
the rare repeat of a crash between steps 2 and 3.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diskwatch.records import (
    Alert,
    AlertReason,
    DeadLetter,
    InvalidRecord,
    LifeExpectancy,
    Severity,
    TelemetryRecord,
)
from models.alerting import life_expectancy, severity, top_reasons
from models.bundle import Bundle
from models.inference import Scores
from models.windows import WindowConfig, assemble_window, day_number, from_day_number
from stream import metrics
from stream.windowstate import DriveState, WindowState


@dataclass(frozen=True)
class InMessage:
    """A consumed Kafka message, whatever the client library."""

    value: bytes | None
    key: bytes | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


@dataclass
class PendingBatch:
    """Outputs to publish, then the Redis marks to write once they are acked."""

    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    scored: dict[str, list[int]] = field(default_factory=dict)
    severity: dict[str, int] = field(default_factory=dict)
    records: int = 0
    windows_scored: int = 0
    duplicates: int = 0


class BatchProcessor:
    """The worker's logic for one batch (see module docstring)."""

    def __init__(self, bundle: Bundle, state: WindowState, *, score: bool = True, max_batch: int = 1024) -> None:
        self.bundle = bundle
        self.state = state
        self.spec = bundle.spec
        self.config: WindowConfig = bundle.window
        self.score_enabled = score
        self.scorer = bundle.scorer(max_batch=max_batch) if score else None

    def warmup(self) -> None:
        if self.scorer is not None:
            self.scorer.warmup()

    async def prepare(self, messages: list[InMessage]) -> PendingBatch:
        pending = PendingBatch()
        records: list[TelemetryRecord] = []
        for message in messages:
            try:
                records.append(TelemetryRecord.from_json(message.value or b""))
            except InvalidRecord as error:
                pending.dead_letters.append(
                    DeadLetter.from_payload(
                        message.value, error, key=message.key, topic=message.topic,
                        partition=message.partition, offset=message.offset,
                    )
                )
                metrics.INVALID.labels(reason=error.code).inc()
        metrics.RECORDS_IN.inc(len(messages))
        pending.records = len(records)
        if not records:
            return pending
        # Apply in (serial, date) order so a shuffled batch acts like an ordered one.
        records.sort(key=lambda r: (r.serial_number, r.date))
        items = [(r.serial_number, day_number(r.date), self.spec.record_vector(r), r.model) for r in records]
        started = time.perf_counter()
        added, states = await self.state.ingest(items)
        metrics.REDIS_SECONDS.observe(time.perf_counter() - started)
        pending.duplicates = added.count(False)
        metrics.DUPLICATES.inc(pending.duplicates)

        # Windows that may have become full: those ending on or after a day of
        # this batch and never scored. Duplicates are included on purpose: a
        # batch replayed after a crash before commit() must score again.
        reach = self.config.window + self.config.max_gap
        candidates: dict[str, set[int]] = defaultdict(set)
        for serial, day, _, _ in items:
            drive = states[serial]
            candidates[serial].update(d for d in drive.days if day <= d <= day + reach and d not in drive.scored)
        windows, owners = self._assemble(candidates, states)
        if not windows or not self.score_enabled:
            return pending
        x = self.spec.finalize(np.stack(windows))
        started = time.perf_counter()
        scores = self.scorer.score(x)  # type: ignore[union-attr]
        metrics.INFERENCE_SECONDS.observe(time.perf_counter() - started)
        metrics.WINDOWS_SCORED.inc(len(windows))
        pending.windows_scored = len(windows)
        self._decide(pending, owners, windows, scores, states)
        return pending

    def _assemble(
        self, candidates: dict[str, set[int]], states: dict[str, DriveState]
    ) -> tuple[list[np.ndarray], list[tuple[str, int]]]:
        windows: list[np.ndarray] = []
        owners: list[tuple[str, int]] = []
        for serial in sorted(candidates):
            drive = states[serial]
            dates = [from_day_number(d) for d in drive.days]
            for end in sorted(candidates[serial]):
                window = assemble_window(dates, drive.vectors, from_day_number(end), self.config)
                if window is not None:
                    windows.append(window)
                    owners.append((serial, end))
        return windows, owners

    def _decide(
        self,
        pending: PendingBatch,
        owners: list[tuple[str, int]],
        windows: list[np.ndarray],
        scores: Scores,
        states: dict[str, DriveState],
    ) -> None:
        thresholds = self.bundle.thresholds
        levels = severity(scores, thresholds)
        # Rank every feature; the alert names the top ones the drive actually reports.
        reasons = top_reasons(scores.feature_error, self.spec, self.spec.n_features)
        now = dt.datetime.now(dt.UTC)
        current = {serial: states[serial].severity for serial, _ in owners}
        for i, (serial, end) in enumerate(owners):
            pending.scored.setdefault(serial, []).append(end)
            level = int(levels[i])
            if level > current[serial]:
                pending.alerts.append(self._alert(serial, end, level, i, scores, reasons[i], windows[i], states, now))
            current[serial] = level
        pending.severity = current
        metrics.ALERTS_OUT.inc(len(pending.alerts))

    def _alert(
        self,
        serial: str,
        end: int,
        level: int,
        i: int,
        scores: Scores,
        reasons: list[tuple[int, str, float]],
        window: np.ndarray,
        states: dict[str, DriveState],
        now: dt.datetime,
    ) -> Alert:
        t = self.bundle.thresholds
        end_date = from_day_number(end)
        rul = None
        life = None
        if scores.days_to_failure is not None:
            rul = float(scores.days_to_failure[i])
            life = LifeExpectancy(life_expectancy(rul))
        return Alert(
            idempotency_key=Alert.make_key(serial, end_date, self.bundle.version),
            serial_number=serial,
            model=states[serial].model,
            date=end_date,
            window_start=end_date - dt.timedelta(days=self.config.window - 1),
            window_end=end_date,
            severity=Severity.CRITICAL if level >= 2 else Severity.WARNING,
            failure_probability=_unit(scores.probability[i]),
            anomaly_score=_finite(scores.anomaly[i]),
            classifier_threshold=t.classifier,
            anomaly_threshold=t.autoencoder,
            horizon_days=self.config.horizon,
            reasons=self._reasons(reasons, window, t.top_reasons),
            life_expectancy=life,
            predicted_days_to_failure=rul if rul is None or np.isfinite(rul) else None,
            bundle_version=self.bundle.version,
            created_at=now,
        )

    def _reasons(self, ranked: list[tuple[int, str, float]], window: np.ndarray, k: int) -> list[AlertReason]:
        out = []
        for attr, name, share in ranked:
            value = self._raw_value(window, name)
            if value is not None:
                out.append(AlertReason(attribute=attr, feature=name, raw_value=value, error_share=share))
            if len(out) == k:
                break
        return out

    def _raw_value(self, window: np.ndarray, name: str) -> float | None:
        """Latest reported raw value of a feature in the window (inverse transform)."""
        j = self.spec.names.index(name)
        column = window[:, j]
        seen = column[~np.isnan(column)]
        if seen.size == 0:
            return None
        value = float(seen[-1])
        if self.spec.features[j].transform == "log1p":
            value = float(np.round(np.expm1(value), 3))
        return value

    async def commit(self, pending: PendingBatch) -> None:
        started = time.perf_counter()
        await self.state.mark(pending.scored, pending.severity)
        metrics.REDIS_SECONDS.observe(time.perf_counter() - started)


def _unit(value: Any) -> float:
    v = float(value)
    return min(max(v, 0.0), 1.0) if np.isfinite(v) else 0.0


def _finite(value: Any) -> float:
    v = float(value)
    return max(v, 0.0) if np.isfinite(v) else 0.0
