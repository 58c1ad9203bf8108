"""Apply one batch: prepare → publish (acked) → mark, with the right retries.

Errors fall in two kinds, and only one of them is worth waiting for:

* **transient** — Redis or Kafka unreachable, timing out, loading, a retriable
  broker error: retried with capped exponential backoff for as long as it
  takes (the batch is never dropped; the partition simply waits);
* **anything else** — a bug or a poison record (scoring raises, a produce the
  broker refuses for good such as ``MessageSizeTooLargeError``): tried a
  bounded number of times, then the batch is split in halves to find the
  records that fail on their own. Those go to the dead-letter topic with reason
  ``processing_error`` (payload, topic/partition/offset, exception text), the
  rest are processed normally. Each one is counted and logged.

So a batch can stall its partition only while Redis or Kafka is down — and
then ``/healthz`` says so (see :mod:`diskwatch.stream.consumer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from diskwatch.core.records import DeadLetter, InvalidRecord
from diskwatch.stream import metrics
from diskwatch.stream.processor import BatchProcessor, InMessage, PendingBatch

log = logging.getLogger("diskwatch.worker")
T = TypeVar("T")

Publish = Callable[[PendingBatch], Awaitable[None]]


def is_transient(exc: BaseException) -> bool:
    """Worth retrying forever: the service is away, not the data wrong."""
    from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
    from redis.exceptions import BusyLoadingError, ClusterDownError, TryAgainError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ClusterDownError, TryAgainError)):
        return True
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError)):
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    return isinstance(exc, (ConnectionError, TimeoutError))


async def retry_transient(what: str, action: Callable[[], Awaitable[T]], *, cap_s: float = 30.0) -> T:
    """Run ``action`` until it succeeds or fails with a non-transient error (raised)."""
    delay = 0.1
    while True:
        try:
            return await action()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            metrics.RETRIES.labels(target=what).inc()
            log.warning("%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap_s)


class BatchRunner:
    """Runs :class:`BatchProcessor` stages for a batch until it is fully applied."""

    def __init__(self, processor: Callable[[], BatchProcessor], publish: Publish, *, attempts: int = 3,
                 backoff_s: float = 0.2) -> None:
        self._processor = processor
        self._publish = publish
        self.attempts = max(attempts, 1)
        self.backoff_s = backoff_s

    def predecode(self, messages: list[InMessage]) -> None:
        """Let the current processor decode ``messages`` ahead of :meth:`apply` (an optimisation only)."""
        try:
            self._processor().predecode(messages)
        except Exception as exc:  # apply() decodes them anyway
            log.debug("early decode not started (%s: %s)", type(exc).__name__, exc)

    async def apply(self, messages: list[InMessage]) -> dict[int, int]:
        """Apply every message: stored, dead-lettered, or (after splitting) ``processing_error``.

        Returns the partitions Redis turned out to have lost writes of (see ``WindowState.mark``).
        """
        lost: dict[int, int] = {}
        error = await self._attempts(messages, lost)
        if error is None:
            return lost
        if len(messages) == 1:
            await self._poison(messages[0], error)
            return lost
        mid = len(messages) // 2
        log.warning("batch of %d failed %d times (%s: %s); splitting it to find the record",
                    len(messages), self.attempts, type(error).__name__, error)
        for half in (messages[:mid], messages[mid:]):
            for p, o in (await self.apply(half)).items():
                lost[p] = min(o, lost.get(p, o))
        return lost

    async def _attempts(self, messages: list[InMessage], lost: dict[int, int]) -> Exception | None:
        """None when applied; the last error after ``attempts`` non-transient failures."""
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                lost.update(await self._once(messages))
                return None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # non-transient by now: retry_transient re-raised it
                last = exc
                metrics.BATCH_ERRORS.inc()
                if attempt + 1 < self.attempts:
                    await asyncio.sleep(self.backoff_s * (2 ** attempt))
        return last

    async def _once(self, messages: list[InMessage]) -> dict[int, int]:
        processor = self._processor()
        pending = await retry_transient("redis", lambda: processor.prepare(messages))
        await retry_transient("kafka", lambda: self._publish(pending))
        await retry_transient("redis", lambda: processor.commit(pending))
        return pending.lost

    async def _poison(self, message: InMessage, error: Exception) -> None:
        """One record fails on its own: dead-letter it so the partition moves on."""
        reason = f"{type(error).__name__}: {error}"[:2000]
        letter = DeadLetter.from_payload(
            message.value, InvalidRecord("processing_error", reason), key=message.key, topic=message.topic,
            partition=message.partition, offset=message.offset,
        )
        log.error("processing_error at %s[%s]@%s: %s", message.topic, message.partition, message.offset, reason)
        metrics.INVALID.labels(reason="processing_error").inc()
        try:
            await retry_transient("kafka", lambda: self._publish(PendingBatch(dead_letters=[letter])))
        except Exception as exc:  # the dead letter itself is refused for good: say so, move on
            metrics.DEAD_LETTER_FAILURES.inc()
            log.error("dead letter for %s[%s]@%s refused (%s: %s); record skipped", message.topic,
                      message.partition, message.offset, type(exc).__name__, exc)

