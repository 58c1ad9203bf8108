"""A minimal faust-streaming app against the real local broker, run in-process.

Exercises what a diskwatch worker needs from the broker: faust creates its table changelog
topic and its ``__assignor-__leader`` topic (CreateTopics), joins a consumer group, consumes
externally produced keyed messages with ``stream.take()`` and writes a table.

Two ways the *source* topic can come to exist, both tested:

* ``declared``: ``app.topic(..., internal=True)`` -> faust sends CreateTopics for it at start,
  before it subscribes. Deterministic.
* ``auto-created``: a plain ``app.topic(...)`` (faust never creates non-internal topics); the
  broker creates it (``auto.create.topics.enable=true``) on the consumer's first metadata
  request. That first metadata answer does not list the topic yet, so the first rebalance
  assigns none of its partitions ("Ignoring missing topic"); the consumer only rejoins when
  it next refreshes metadata: ``consumer_metadata_max_age_ms`` (faust default 5 minutes).
  Production: create topics up front (or declare them) instead of relying on auto-create.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import TEST_RUN
from tests.kafka_admin import list_topics

pytestmark = pytest.mark.integration

N = 60
KEYS = [f"disk-{i}" for i in range(4)]
WAIT_S = 30.0


async def _wait(predicate, what: str, timeout: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("source_topic", ["declared", "auto-created"])
def test_faust_agent_consumes_all(
    kafka_bootstrap: str, unique_topic: str, source_topic: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        declared = source_topic == "declared"
        app_id = f"diskwatch-test-{TEST_RUN}-{uuid.uuid4().hex[:10]}"
        extra = {} if declared else {"consumer_metadata_max_age_ms": 1000}  # see module docstring
        app = faust.App(
            app_id,
            broker=f"kafka://{kafka_bootstrap}",
            store="memory://",
            datadir=str(tmp_path / "faust"),  # faust's default is ./{id}-data in the work tree
            web_enabled=False,
            topic_partitions=1,
            topic_replication_factor=1,
            consumer_auto_offset_reset="earliest",
            broker_commit_every=10,
            broker_commit_interval=0.5,
            **extra,
        )
        topic = app.topic(unique_topic, key_type=str, value_serializer="json", partitions=1, internal=declared)
        counts = app.Table("counts", default=int, partitions=1)

        batches: list[list[dict]] = []
        seen: list[dict] = []

        @app.agent(topic)
        async def collect(stream):
            async for batch in stream.take(16, within=0.5):
                batches.append(batch)
                seen.extend(batch)

        @app.agent(topic)
        async def count(stream):
            async for key, _value in stream.items():
                counts[key] += 1

        await app.start()
        try:
            # faust created its internal topics on start (CreateTopics): table changelog, assignor
            topics = await list_topics(kafka_bootstrap)
            assert f"{app_id}-counts-changelog" in topics
            assert f"{app_id}-__assignor-__leader" in topics
            if declared:
                assert unique_topic in topics

            producer = AIOKafkaProducer(
                bootstrap_servers=kafka_bootstrap,
                key_serializer=str.encode,
                value_serializer=lambda v: json.dumps(v).encode(),
            )
            await producer.start()
            try:
                for seq in range(N):
                    key = KEYS[seq % len(KEYS)]
                    await producer.send_and_wait(unique_topic, key=key, value={"key": key, "seq": seq})
            finally:
                await producer.stop()

            await _wait(lambda: len(seen) >= N, f"the take() agent to see {N} messages (saw {len(seen)})")
            await _wait(
                lambda: sum(counts[k] for k in KEYS) >= N,
                f"the table agent to count {N} messages (counted {dict(counts.items())})",
            )
        finally:
            await app.stop()

        assert unique_topic in await list_topics(kafka_bootstrap)
        assert len(seen) == N
        assert [m["seq"] for m in seen] == list(range(N))  # one partition: total order preserved
        assert all(1 <= len(b) <= 16 for b in batches)
        expected = Counter(KEYS[s % len(KEYS)] for s in range(N))
        assert {k: counts[k] for k in KEYS} == dict(expected)

    asyncio.run(scenario())
