"""Telemetry off faust's per-message path: an aiokafka ``getmany()`` loop as a faust service.

Why not a faust agent: faust hands every message to a stream through its
per-message machinery (``Consumer._drain_messages`` creates four asyncio tasks
per message in ``wait_first(...)``; the Conductor, flow control and a
``sleep(0)`` per event add the rest) — ~110 µs of CPU per record, a ceiling of
~10k records/s whatever the agent does, and ``take_events`` acks buffered
events in a ``finally`` when the agent is cancelled (SIGTERM mid-batch lost the
batch, issue #14.0). A plain aiokafka consumer hands us whole fetches as lists,
and with ``enable_auto_commit=False`` nothing is committed unless we say so.

faust stays the application: settings, the web views (/metrics, /healthz),
timers, the alert/dead-letter producer and SIGTERM handling; this loop is a
:class:`mode.Service` the app starts and stops. The consumer joins its own
group (``settings.consumer_group``; the faust app uses ``<group>-app``):
faust advertises its own partition assignor, and the two must not share a
group.

Guarantees, and where they come from:

* offsets move past a record only after its batch is fully applied (Redis
  writes + alert/dead-letter produces acked): :meth:`TelemetryLoop._apply`
  commits explicit offsets after :class:`BatchRunner` returns — while the
  next batch is applied, one commit at a time, in order; a batch cancelled by
  SIGTERM is never committed (one already applied is, before the consumer
  closes);
* on revocation the batch in flight is finished (and committed) before the
  partitions are given up — the rebalance listener waits for it, at most
  ``revoke_wait_s``, then abandons it (redelivered to the next owner; Redis
  writes are idempotent) — and no new batch starts until the new assignment;
* on assignment each partition starts at the earlier of Kafka's committed
  offset and the offset Redis says it applied + 1 (Redis lost writes in a
  crash → they are consumed again);
* heartbeats run in aiokafka's own task and inference runs off the loop, so
  it never starves them (decoding, ~2 ms per 512 records, runs on the loop
  while Redis works: see :mod:`diskwatch.stream.overlap`);
  ``max_poll_interval`` (default 300 s) bounds one batch — a batch stuck
  longer (Redis down) loses the group membership, its commit is refused and
  the batch is redelivered;
* lag per partition (``end offset − committed``, asked from the broker every
  ``lag_interval_s``, so it is right even while the worker is stuck) in
  /metrics, and ``/healthz`` unhealthy when there is lag and no batch has
  completed for ``stall_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError
from mode import Service

from diskwatch.core.settings import Settings
from diskwatch.stream import metrics
from diskwatch.stream.batches import BatchRunner, is_transient, retry_transient
from diskwatch.stream.processor import InMessage

log = logging.getLogger("diskwatch.worker")

Applied = Callable[[str, list[int]], Awaitable[dict[int, int]]]


class _Listener(ConsumerRebalanceListener):
    """Finish the batch in flight before partitions go; seek on assignment."""

    def __init__(self, loop: TelemetryLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.loop.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.loop.on_assigned(set(assigned))


class TelemetryLoop(Service):
    """Consume telemetry in batches, apply each, commit its offsets."""

    def __init__(
        self,
        settings: Settings,
        runner: BatchRunner,
        ready: asyncio.Event,
        *,
        applied: Applied | None = None,
        revoke_wait_s: float = 60.0,
        lag_interval_s: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.runner = runner
        self.ready = ready
        self.applied = applied
        self.revoke_wait_s = revoke_wait_s
        self.lag_interval_s = lag_interval_s
        self.consumer: AIOKafkaConsumer | None = None
        self.committed: dict[TopicPartition, int] = {}
        self.lag: dict[TopicPartition, int] = {}
        self.batches = 0
        self.last_batch_at: float | None = None
        self.progress_at = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()
        self._assigned = asyncio.Event()
        self._inflight: asyncio.Task[None] | None = None
        self._committing: asyncio.Future[None] | None = None  # the last applied batch's commit
        self._revocations = 0  # bumped by each revocation: a batch taken before one is dropped
        self._lost: dict[int, int] = {}  # partitions the last batch re-reads (Redis lost writes)

    # --- lifecycle -----------------------------------------------------------

    def make_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            group_id=s.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.batch_size,
            max_partition_fetch_bytes=s.kafka_fetch_max_bytes,
            fetch_max_bytes=max(s.kafka_fetch_max_bytes, 52428800),
            session_timeout_ms=int(s.kafka_session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, s.kafka_session_timeout_s / 3) * 1000),
            **s.kafka_client_options(),
        )

    @Service.task
    async def _run(self) -> None:
        await self.ready.wait()
        self.consumer = self.make_consumer()
        self.consumer.subscribe([self.settings.topic_telemetry], listener=_Listener(self))
        await self.consumer.start()
        self.progress_at = time.monotonic()
        log.info("consuming %s in group %s", self.settings.topic_telemetry, self.settings.consumer_group)
        messages: list[InMessage] = []
        while not self.should_stop:
            if not messages:
                try:
                    messages = await self._take()
                except ConsumerStoppedError:
                    return  # stopping (SIGTERM): on_stop closed the consumer under us
                if not messages:
                    continue
            # Busy from here until no taken message is left unapplied: a revocation waits for that.
            self._idle.clear()
            revocations = self._revocations
            self._inflight = asyncio.ensure_future(self._apply(messages))
            # Overlap: take the next batch and start decoding it while this one waits on Redis and
            # the broker. It is applied only after this one is committed, and given back if that
            # failed, if a revocation is waiting, or (its partitions) if they are to be re-read.
            ahead = asyncio.ensure_future(self._take_ahead())
            try:
                await asyncio.shield(self._inflight)
                messages = self._next(await ahead, revocations)
            except asyncio.CancelledError:
                self._inflight.cancel()  # SIGTERM: abandon, never commit
                ahead.cancel()
                self._idle.set()
                raise
            except ConsumerStoppedError:
                self._idle.set()
                return  # stopping (SIGTERM) while the next batch was taken
            except Exception:  # not committed: read again from its first offsets
                log.exception("batch of %d failed unexpectedly; reading it again", len(messages))
                with contextlib.suppress(Exception):  # partitions only in the next batch: from its start
                    self._unread(await ahead)
                self._unread(messages)
                messages = []
                await self._committed()
                self._idle.set()
                await self.sleep(1.0)
                continue
            if not messages:
                await self._committed()
                self._idle.set()

    async def _take_ahead(self) -> list[InMessage]:
        messages = await self._take()
        if messages:
            self.runner.predecode(messages)
        return messages

    def _next(self, ahead: list[InMessage], revocations: int) -> list[InMessage]:
        """The batch taken while the last one was applied, as far as it may be applied now.

        A revocation waiting (it waits for ``_idle``, so the old assignment still stands): give the
        batch back (its next owner, or this worker after the rebalance, reads it from the commit).
        A rebalance that went through anyway (the revocation gave up waiting): positions restarted
        at the committed offsets, so the batch is simply dropped. Messages of partitions the last
        batch sent back to re-read (Redis lost writes) are dropped: those partitions were sought
        back before them.
        """
        if self._revocations != revocations:
            return []
        if not self._assigned.is_set():
            self._unread(ahead)
            return []
        if self._lost:
            return [m for m in ahead if m.partition not in self._lost]
        return ahead

    async def on_stop(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
        if self._committing is not None:  # an applied batch: commit it before leaving (briefly: the
            with contextlib.suppress(Exception):  # broker may be away, and its next owner re-reads it)
                await asyncio.wait_for(asyncio.shield(self._committing), min(2.0, self.revoke_wait_s))
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()  # auto-commit is off: nothing unfinished is committed

    @Service.task
    async def _watch_lag(self) -> None:
        while not self.should_stop:
            await self.sleep(self.lag_interval_s)
            with contextlib.suppress(Exception):
                await self.refresh_lag()

    # --- batches -------------------------------------------------------------

    async def _take(self) -> list[InMessage]:
        """Up to ``batch_size`` messages, waiting at most ``batch_linger_s`` to fill the batch."""
        assert self.consumer is not None
        s = self.settings
        if not self._assigned.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._assigned.wait(), s.batch_linger_s)
        out: list[InMessage] = []
        deadline = time.monotonic() + s.batch_linger_s
        while len(out) < s.batch_size:
            left = deadline - time.monotonic()
            fetched = await self.consumer.getmany(timeout_ms=max(int(left * 1000), 0),
                                                  max_records=s.batch_size - len(out))
            for tp, records in fetched.items():
                out.extend(InMessage(r.value, r.key, tp.topic, tp.partition, r.offset) for r in records)
            if not self._assigned.is_set():
                self._unread(out)  # a rebalance is under way: no batch starts before it ends
                return []
            if left <= 0 or (not fetched and out):
                break
        return out

    def _unread(self, messages: list[InMessage]) -> None:
        """Put the consumer back at the first of ``messages`` per partition it still owns."""
        assert self.consumer is not None
        first: dict[TopicPartition, int] = {}
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            first[tp] = min(first.get(tp, int(m.offset or 0)), int(m.offset or 0))
        for tp, offset in first.items():
            with contextlib.suppress(Exception):  # not ours any more: its next owner starts at the commit
                self.consumer.seek(tp, offset)

    async def _apply(self, messages: list[InMessage]) -> None:
        """Apply one batch and start its commit (the loop holds ``_idle`` clear meanwhile).

        The commit runs while the next batch is applied (its round trip to the broker cost a
        fifth of the worker's rate); commits stay in order: a batch's commit starts only once
        the one before it is done.
        """
        started = time.perf_counter()
        lost = await self.runner.apply(messages)
        self._lost = lost
        self._reread(lost)
        await self._committed()
        self._committing = asyncio.ensure_future(self._finish(messages, lost, started))

    async def _committed(self) -> None:
        """Wait for the commit in flight, if any (it never raises: see _commit)."""
        if self._committing is not None:
            await asyncio.shield(self._committing)  # a cancelled waiter leaves the commit running
            self._committing = None

    async def _finish(self, messages: list[InMessage], lost: dict[int, int], started: float) -> None:
        """Commit an applied batch, then count it as done."""
        await self._commit([m for m in messages if m.partition not in lost])
        metrics.BATCH_SIZE.observe(len(messages))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        self.batches += 1
        self.last_batch_at = time.time()
        metrics.LAST_BATCH.set(self.last_batch_at)
        self.progress_at = time.monotonic()

    def _reread(self, lost: dict[int, int]) -> None:
        """Redis lost acknowledged days (a crash, AOF ``everysec``): consume them again."""
        assert self.consumer is not None
        for partition, offset in lost.items():
            tp = TopicPartition(self.settings.topic_telemetry, partition)
            log.warning("%s: Redis holds days only up to offset %d; re-reading from %d", tp, offset, offset + 1)
            metrics.SEEKS.inc()
            with contextlib.suppress(Exception):  # not ours any more: the next owner seeks on assignment
                self.consumer.seek(tp, offset + 1)

    async def _commit(self, messages: list[InMessage]) -> None:
        assert self.consumer is not None
        if not messages:
            return
        offsets: dict[TopicPartition, int] = {}
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            offsets[tp] = max(offsets.get(tp, 0), int(m.offset or 0) + 1)
        try:
            await retry_transient("kafka", lambda: self.consumer.commit(offsets))  # type: ignore[union-attr]
        except Exception as exc:  # rebalanced meanwhile: the next owner gets the batch again
            log.warning("commit refused (%s: %s); the batch will be redelivered", type(exc).__name__, exc)
            return
        self.committed.update(offsets)
        for tp, offset in offsets.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                self._set_lag(tp, max(highwater - offset, 0))

    # --- rebalance -----------------------------------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Let the batch in flight finish (and commit) before giving its partitions up."""
        self._assigned.clear()
        self._revocations += 1
        metrics.REBALANCES.inc()
        if not self._idle.is_set():
            log.info("revocation of %d partitions: finishing the batch in flight first", len(revoked))
        try:
            await asyncio.wait_for(self._idle.wait(), self.revoke_wait_s)
        except TimeoutError:
            log.warning("batch still running after %.0fs at revocation; abandoning it", self.revoke_wait_s)
            if self._inflight is not None:
                self._inflight.cancel()
        for tp in revoked:
            self.committed.pop(tp, None)
            self.lag.pop(tp, None)
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(str(tp.partition))

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start each partition at min(Kafka committed, Redis applied + 1)."""
        assert self.consumer is not None
        for tp in assigned:
            committed = await self.consumer.committed(tp)
            if committed is not None:
                self.committed[tp] = committed
        if self.applied is not None and assigned:
            await self._rewind(assigned)
        self.progress_at = time.monotonic()
        self._assigned.set()
        log.info("assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))

    async def _rewind(self, assigned: set[TopicPartition]) -> None:
        assert self.consumer is not None and self.applied is not None
        topic = self.settings.topic_telemetry
        try:
            applied = await retry_transient("redis", lambda: self.applied(topic, sorted(tp.partition for tp in assigned)))  # type: ignore[misc]
        except Exception as exc:
            log.error("applied offsets unreadable (%s); starting at Kafka's committed offsets", exc)
            return
        for tp in assigned:
            done = applied.get(tp.partition)
            committed = self.committed.get(tp)
            if done is not None and committed is not None and done + 1 < committed:
                log.warning("%s: Redis applied up to %d, Kafka committed %d; re-reading from %d",
                            tp, done, committed, done + 1)
                metrics.SEEKS.inc()
                self.consumer.seek(tp, done + 1)

    # --- lag and health ------------------------------------------------------

    async def refresh_lag(self) -> None:
        """Lag = end offset − committed, from the broker (right even while stuck)."""
        if self.consumer is None:
            return
        assigned = [tp for tp in self.consumer.assignment() if tp.topic == self.settings.topic_telemetry]
        if not assigned:
            return
        ends = await self.consumer.end_offsets(assigned)
        starts: dict[TopicPartition, int] = {}
        missing = [tp for tp in assigned if tp not in self.committed]
        if missing:
            starts = await self.consumer.beginning_offsets(missing)
        for tp in assigned:
            base = self.committed.get(tp, starts.get(tp, 0))
            self._set_lag(tp, max(int(ends[tp]) - base, 0))
        if self._idle.is_set() and sum(self.lag.values()) == 0:
            self.progress_at = time.monotonic()

    def _set_lag(self, tp: TopicPartition, lag: int) -> None:
        self.lag[tp] = lag
        metrics.CONSUMER_LAG.labels(partition=str(tp.partition)).set(lag)

    def stalled(self, timeout_s: float) -> bool:
        """Lag waiting and no batch completed for ``timeout_s``."""
        return sum(self.lag.values()) > 0 and time.monotonic() - self.progress_at > timeout_s

    def assigned(self) -> list[str]:
        if self.consumer is None:
            return []
        return sorted(f"{tp.topic}:{tp.partition}" for tp in self.consumer.assignment()
                      if tp.topic == self.settings.topic_telemetry)


__all__ = ["TelemetryLoop", "is_transient"]
