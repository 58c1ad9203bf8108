"""One batch of telemetry → window updates, scores, alerts and dead letters.

Transport-free: the faust agent (and the benchmark's plain consumer) feed it
raw Kafka messages and publish what it returns. The order that makes
at-least-once delivery safe is the caller's:

1. :meth:`BatchProcessor.prepare` — validate, merge the days into Redis (the
   stored day wins: duplicates change nothing), score every window that became full and was
   never scored, decide alerts with the per-drive debounce state;
2. publish alerts and dead letters and wait for the broker's acks;
3. :meth:`BatchProcessor.commit` — mark those windows scored, store the
   debounce state and the batch's last offset per partition (one write), then
   let the consumer commit offsets.

A crash before step 3 replays the batch: Redis already has the days, the
windows are scored again with the same result, and alerts carry the same
idempotency key (serial, date, bundle version) — so subscribers can dedupe
the rare repeat of a crash between steps 2 and 3.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson

from diskwatch.core.records import Alert, AlertReason, DeadLetter, LifeExpectancy, Severity
from diskwatch.core.settings import Settings
from diskwatch.core.wire import InputLimits, WireBatch, decode_batch
from diskwatch.models.alerting import life_expectancy, severity, top_reasons
from diskwatch.models.bundle import Bundle
from diskwatch.models.inference import Scores
from diskwatch.models.windows import WindowConfig, from_day_number, windows_ending_at
from diskwatch.stream import metrics
from diskwatch.stream.windowstate import BatchState, WindowState

Decoded = tuple["PendingBatch", WireBatch, np.ndarray]  # a batch's outputs so far, its rows, their vectors
# Bundles are trained on Backblaze dumps: ATA/SATA drives only. Records that carry another
# extra["device_type"] (smartctl's NVMe, SCSI: see core/smartctl.py) are counted and not scored.
TRAINED_DEVICE_TYPES = frozenset({"ata"})


class InMessage(NamedTuple):
    """A consumed Kafka message, whatever the client library (a tuple: the worker makes one per
    record, and a frozen dataclass costs 3x as much to build)."""

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
    unscored: dict[str, int] = field(default_factory=dict)  # by reason
    # (serial, day) -> the batch's exact values of the model columns, for alert reasons
    reported: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    topic: str | None = None
    applied: dict[int, int] = field(default_factory=dict)  # partition → last offset of this batch
    lost: dict[int, int] = field(default_factory=dict)  # partition → offset Redis still has (it lost writes)


class BatchProcessor:
    """The worker's logic for one batch (see module docstring).

    Window assembly and inference run on one helper thread so the event loop
    keeps fetching from Kafka and heartbeating while a batch is scored; Redis
    calls stay on the loop, and the next batch (:meth:`predecode`) is decoded
    on the loop while Redis or inference is busy (see stream/overlap.py).
    """

    def __init__(
        self,
        bundle: Bundle,
        state: WindowState,
        *,
        score: bool = True,
        max_batch: int = 1024,
        limits: InputLimits | None = None,
    ) -> None:
        self.bundle = bundle
        # Size and date rules for input; by default from the DISKWATCH_* environment.
        self.limits = limits or InputLimits.from_settings(Settings())
        self.state = state
        self.spec = bundle.spec
        self.config: WindowConfig = bundle.window
        self.score_enabled = score
        self.scorer = bundle.scorer(max_batch=max_batch) if score else None
        # Inference runs here, so heartbeats and fetches go on meanwhile. Dropped with the processor
        # (a hot-swapped bundle's batch in flight keeps it alive).
        self._cpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diskwatch-batch")
        # The next batch (see predecode) and, once decoded, its decode or the error it raised.
        self._next: list[InMessage] | None = None
        self._next_decoded: Decoded | Exception | None = None

    def warmup(self) -> None:
        if self.scorer is not None:
            self.scorer.warmup()

    def predecode(self, messages: list[InMessage]) -> None:
        """Name the next batch: it is decoded while this one waits on Redis or inference, on the
        event loop's thread (see stream/overlap.py for why not on a thread); :meth:`prepare` of this
        very list uses that decode (any other list decodes afresh)."""
        self._next, self._next_decoded = messages, None

    def _decode_next(self) -> None:
        """Decode the batch named by :meth:`predecode`, if not done yet; never raises (an error is
        kept for prepare() to raise)."""
        if self._next is None or self._next_decoded is not None:
            return
        try:
            self._next_decoded = self._decode_fresh(self._next)
        except Exception as exc:
            self._next_decoded = exc

    def _decoded(self, messages: list[InMessage]) -> Decoded:
        """``messages`` decoded: early if they were the named next batch, else now."""
        named, decoded = self._next, self._next_decoded
        self._next = self._next_decoded = None  # a batch named but not prepared next was dropped
        if named is not messages or decoded is None:
            return self._decode_fresh(messages)
        if isinstance(decoded, Exception):
            raise decoded
        return decoded

    async def prepare(self, messages: list[InMessage]) -> PendingBatch:
        pending, batch, vectors = self._decoded(messages)
        pending.records = len(batch.serials)
        if not batch.serials:
            _count_in(messages, pending)
            return pending
        started = time.perf_counter()
        added, state = await self.state.ingest(batch.serials, batch.days, vectors, batch.models,
                                               meanwhile=self._decode_next)
        metrics.REDIS_SECONDS.observe(time.perf_counter() - started)
        pending.duplicates = int(added.size - added.sum())
        if self.score_enabled:
            scoring = asyncio.get_running_loop().run_in_executor(self._cpu, self._score, pending, batch, state)
            self._decode_next()  # inference releases the GIL: the next batch decodes beside it
            await scoring
        else:
            self._score(pending, batch, state)  # returns at once: no thread hop for nothing
        _count_in(messages, pending)
        return pending

    def _decode_fresh(self, messages: list[InMessage]) -> tuple[PendingBatch, WireBatch, np.ndarray]:
        """A new PendingBatch for ``messages``, their offsets noted and decoded."""
        pending = PendingBatch()
        _note_offsets(messages, pending)
        batch, vectors = self._decode(messages, pending)
        return pending, batch, vectors

    def _decode(self, messages: list[InMessage], pending: PendingBatch) -> tuple[WireBatch, np.ndarray]:
        """Validate and transform; invalid messages become dead letters."""
        kept = []
        for m in messages:  # mask: device classes the bundle was not trained on are counted, not scored
            reason = _untrained_device(m.value)
            if reason is None:
                kept.append(m)
            else:
                pending.unscored[reason] = pending.unscored.get(reason, 0) + 1
        messages = kept
        batch = decode_batch([m.value for m in messages], self.spec.wire_columns, self.limits)
        for i, error in batch.errors:
            message = messages[i]
            pending.dead_letters.append(
                DeadLetter.from_payload(
                    message.value, error, key=message.key, topic=message.topic,
                    partition=message.partition, offset=message.offset,
                    max_payload_bytes=self.limits.dead_letter_payload_bytes,
                )
            )
        return batch, self.spec.transform(batch.values)

    def _score(self, pending: PendingBatch, batch: WireBatch, state: BatchState) -> None:
        """Assemble the windows this batch completed, score them, decide alerts."""
        # Windows that may have become full: those ending on a stored day within
        # reach of a day of this batch and never scored. Duplicates count on
        # purpose: a batch replayed after a crash before commit() must score again.
        if not self.score_enabled:
            return  # --no-score: windows are kept, nothing is assembled
        owner = state.owner
        reach = self.config.window + self.config.max_gap
        ends = np.flatnonzero(~state.scored & _within_reach(state, batch, owner, reach))
        full, windows = windows_ending_at(owner, state.days, state.vectors, ends, self.config)
        ends = ends[full]
        if ends.size == 0:
            return
        x = self.spec.finalize(windows)
        started = time.perf_counter()
        scores = self.scorer.score(x)  # type: ignore[union-attr]
        metrics.INFERENCE_SECONDS.observe(time.perf_counter() - started)
        metrics.WINDOWS_SCORED.inc(int(ends.size))
        pending.windows_scored = int(ends.size)
        pending.reported = _reported(batch)
        self._decide(pending, state, owner[ends], state.days[ends], windows, scores)

    def _decide(
        self,
        pending: PendingBatch,
        state: BatchState,
        drives: np.ndarray,
        end_days: np.ndarray,
        windows: np.ndarray,
        scores: Scores,
    ) -> None:
        """Debounce per drive (windows come ordered by drive, then day): alert on a rise."""
        levels = severity(scores, self.bundle.thresholds).tolist()
        now = dt.datetime.now(dt.UTC)
        current = state.severity.tolist()
        touched: set[int] = set()
        for i, (drive, end) in enumerate(zip(drives.tolist(), end_days.tolist(), strict=True)):
            serial = state.serials[drive]
            pending.scored.setdefault(serial, []).append(end)
            touched.add(drive)
            level = levels[i]
            if level > current[drive]:
                reported = pending.reported.get((serial, end))
                pending.alerts.append(
                    self._alert(serial, state.models[drive], end, level, i, scores, windows[i], now, reported)
                )
            current[drive] = level
        pending.severity = {state.serials[d]: current[d] for d in touched}
        metrics.ALERTS_OUT.inc(len(pending.alerts))

    def _alert(
        self,
        serial: str,
        model: str,
        end: int,
        level: int,
        i: int,
        scores: Scores,
        window: np.ndarray,
        now: dt.datetime,
        reported: np.ndarray | None = None,
    ) -> Alert:
        t = self.bundle.thresholds
        # Rank every feature; the alert names the top ones the drive actually reports.
        reasons = top_reasons(scores.feature_error[i:i + 1], self.spec, self.spec.n_features)[0]
        end_date = from_day_number(end)
        rul = None
        life = None
        if scores.days_to_failure is not None:
            rul = float(scores.days_to_failure[i])
            life = LifeExpectancy(life_expectancy(rul))
        return Alert(
            idempotency_key=Alert.make_key(serial, end_date, self.bundle.version),
            serial_number=serial,
            model=model,
            date=end_date,
            window_start=end_date - dt.timedelta(days=self.config.window - 1),
            window_end=end_date,
            severity=Severity.from_rank(level),
            failure_probability=_unit(scores.probability[i]),
            anomaly_score=_finite(scores.anomaly[i]),
            classifier_threshold=t.classifier,
            anomaly_threshold=t.autoencoder,
            horizon_days=self.config.horizon,
            reasons=self._reasons(reasons, window, t.top_reasons, reported),
            life_expectancy=life,
            predicted_days_to_failure=rul if rul is None or np.isfinite(rul) else None,
            bundle_version=self.bundle.version,
            created_at=now,
        )

    def _reasons(
        self, ranked: list[tuple[int, str, float]], window: np.ndarray, k: int, reported: np.ndarray | None
    ) -> list[AlertReason]:
        out = []
        for attr, name, share in ranked:
            value = self._raw_value(window, name, reported)
            if value is not None:
                out.append(AlertReason(attribute=attr, feature=name, raw_value=value, error_share=share))
            if len(out) == k:
                break
        return out

    def _raw_value(self, window: np.ndarray, name: str, reported: np.ndarray | None) -> int | float | None:
        """Latest raw value of a feature: the record's own when its last day came in this batch,
        else read back from the stored (float32, transformed) window."""
        j = self.spec.names.index(name)
        if reported is not None and not np.isnan(reported[j]):
            exact = float(reported[j])  # float64 holds every integer below 2**53 exactly
            return int(exact) if exact.is_integer() else exact
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
        pending.lost = await self.state.mark(pending.scored, pending.severity, pending.applied, pending.topic,
                                             meanwhile=self._decode_next)
        metrics.REDIS_SECONDS.observe(time.perf_counter() - started)


def _unit(value: Any) -> float:
    v = float(value)
    return min(max(v, 0.0), 1.0) if np.isfinite(v) else 0.0


def _finite(value: Any) -> float:
    v = float(value)
    return max(v, 0.0) if np.isfinite(v) else 0.0


def _note_offsets(messages: list[InMessage], pending: PendingBatch) -> None:
    """The last offset per partition: recorded in Redis with the marks (Kafka is the source of truth)."""
    for m in messages:
        if m.topic is not None and m.partition is not None and m.offset is not None:
            pending.topic = m.topic
            pending.applied[m.partition] = max(pending.applied.get(m.partition, -1), m.offset)


def _count_in(messages: list[InMessage], pending: PendingBatch) -> None:
    """Input counters, once the batch is through (a retried batch is not counted twice)."""
    metrics.RECORDS_IN.inc(len(messages))
    metrics.DUPLICATES.inc(pending.duplicates)
    for letter in pending.dead_letters:
        metrics.INVALID.labels(reason=letter.reason_code).inc()
    for reason, n in pending.unscored.items():
        metrics.UNSCORED.labels(reason=reason).inc(n)


def _untrained_device(payload: bytes | None) -> str | None:
    """The unscored reason of a record of a device class the bundle was not trained on, else None."""
    if not payload or b'"device_type"' not in payload:
        return None
    try:
        extra = orjson.loads(payload).get("extra")
    except (orjson.JSONDecodeError, AttributeError):
        return None  # the decoder dead-letters it
    kind = extra.get("device_type") if isinstance(extra, dict) else None
    if not isinstance(kind, str) or kind in TRAINED_DEVICE_TYPES:
        return None
    return f"device_type_{kind}" if kind in ("nvme", "scsi") else "device_type_other"


def _reported(batch: WireBatch) -> dict[tuple[str, int], np.ndarray]:
    """(serial, day) -> the batch's decoded model columns; the first copy wins, as in Redis (HSETNX)."""
    out: dict[tuple[str, int], np.ndarray] = {}
    for row, key in enumerate(zip(batch.serials, batch.days.tolist(), strict=True)):
        out.setdefault(key, batch.values[row])
    return out


def _within_reach(state: BatchState, batch: WireBatch, owner: np.ndarray, reach: int) -> np.ndarray:
    """Per stored row: its day is 0..reach days after some day this batch brought for the drive."""
    base = min(int(state.days.min()), int(batch.days.min()))
    span = max(int(state.days.max()), int(batch.days.max())) - base + 1
    came = np.unique(state.drives(batch.serials) * span + (batch.days - base))
    stored = owner * span + (state.days - base)
    # The latest batch day of the same drive on or before each stored day.
    pos = np.searchsorted(came, stored, side="right") - 1
    prior = came[np.maximum(pos, 0)]
    return (pos >= 0) & (prior // span == owner) & (stored - prior <= reach)
