"""The telemetry loop's offset commits (stream/consumer.py) against the real broker.

A batch's commit runs while the next batch is applied (its round trip cost the worker a fifth
of its rate), one commit at a time and in order, and never past what was applied. The batch
logic is a stand-in here (it only records what it was given): what is under test is the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from diskwatch.core.settings import Settings
from diskwatch.stream.consumer import TelemetryLoop
from diskwatch.stream.processor import InMessage

pytestmark = pytest.mark.integration

N = 400


class RecordingRunner:
    """Applies nothing, takes a few ms per batch (as Redis and the broker's acks would)."""

    def __init__(self, events: list[tuple[str, int]]) -> None:
        self.events = events

    def predecode(self, messages: list[InMessage]) -> None:
        pass

    async def apply(self, messages: list[InMessage]) -> dict[int, int]:
        self.events.append(("apply", int(messages[0].offset or 0)))
        await asyncio.sleep(0.005)
        self.events.append(("applied", int(messages[-1].offset or 0)))
        return {}


class SlowCommits(TelemetryLoop):
    """The real consumer, its commits recorded and slowed down (a broker far away)."""

    events: list[tuple[str, int]]

    def make_consumer(self) -> Any:
        consumer = super().make_consumer()
        commit = consumer.commit

        async def slow_commit(offsets: dict[TopicPartition, int]) -> None:
            (offset,) = offsets.values()
            self.events.append(("commit", offset))
            await asyncio.sleep(0.03)
            await commit(offsets)
            self.events.append(("committed", offset))

        consumer.commit = slow_commit
        return consumer


def test_commits_run_beside_the_next_batch_in_order_and_never_ahead_of_it(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    events: list[tuple[str, int]] = []

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        await producer.start()
        try:  # auto-created with one partition
            await asyncio.gather(*[await producer.send(unique_topic, b"{}") for _ in range(N)])
        finally:
            await producer.stop()
        settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_telemetry=unique_topic,
                            consumer_group=f"{unique_topic}-g", batch_size=40, batch_linger_s=0.1)
        ready = asyncio.Event()
        ready.set()
        loop = SlowCommits(settings, RecordingRunner(events), ready, lag_interval_s=60)
        loop.events = events
        await loop.start()
        try:
            async with asyncio.timeout(60):
                while sum(loop.committed.values()) < N:
                    await asyncio.sleep(0.05)
        finally:
            await loop.stop()

    asyncio.run(scenario())
    commits = [offset for kind, offset in events if kind == "commit"]
    assert commits == sorted(set(commits)) and commits[-1] == N  # in order, up to the end
    applied = -1
    open_commit = None
    overlapped = 0
    for kind, offset in events:
        if kind == "applied":
            applied = max(applied, offset)
        elif kind == "commit":
            assert open_commit is None, "a commit started before the one before it was done"
            assert offset <= applied + 1, "a commit went past what was applied"
            open_commit = offset
        elif kind == "committed":
            open_commit = None
        elif kind == "apply" and open_commit is not None:
            overlapped += 1
    # every batch but the first starts while the one before is being committed
    assert overlapped >= len(commits) - 2
