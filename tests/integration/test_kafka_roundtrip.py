"""aiokafka against the real local broker: admin create_topics, keyed produce, consume back."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.integration

PARTITIONS = 3
KEYS = [f"disk-{i:02d}" for i in range(8)]
PER_KEY = 25
N = len(KEYS) * PER_KEY
CONSUME_TIMEOUT_S = 30.0


async def _wait_for_partitions(admin: AIOKafkaAdminClient, topic: str, expected: int) -> None:
    """Topic creation is asynchronous on the controller; wait until metadata shows all partitions."""
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        desc = await admin.describe_topics([topic])
        parts = desc[0].get("partitions") or []
        if desc[0].get("error_code", 0) == 0 and len(parts) == expected:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"topic {topic} not ready after 15s: {desc}")
        await asyncio.sleep(0.2)


def test_admin_produce_consume_roundtrip(kafka_bootstrap: str, unique_topic: str) -> None:
    async def scenario() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="diskwatch-test-admin")
        await admin.start()
        try:
            await admin.create_topics([NewTopic(unique_topic, num_partitions=PARTITIONS, replication_factor=1)])
            await _wait_for_partitions(admin, unique_topic, PARTITIONS)
            assert unique_topic in await admin.list_topics()
        finally:
            await admin.close()

        # ---- produce N keyed JSON messages, seq increasing per key
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            key_serializer=str.encode,
            value_serializer=lambda v: json.dumps(v).encode(),
        )
        await producer.start()
        partition_of: dict[str, int] = {}
        try:
            futures = []
            for seq in range(PER_KEY):
                for key in KEYS:
                    futures.append(
                        (key, await producer.send(unique_topic, key=key, value={"key": key, "seq": seq}))
                    )
            for key, fut in futures:
                md = await fut
                # the default partitioner is deterministic per key
                assert partition_of.setdefault(key, md.partition) == md.partition
        finally:
            await producer.stop()
        assert len(set(partition_of.values())) > 1, "8 keys should spread over more than one of 3 partitions"

        # ---- consume everything back from the beginning (fresh group)
        consumer = AIOKafkaConsumer(
            unique_topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=f"{unique_topic}-group",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            key_deserializer=bytes.decode,
            value_deserializer=json.loads,
        )
        await consumer.start()
        received: list[tuple[str, dict, int]] = []
        try:
            deadline = asyncio.get_running_loop().time() + CONSUME_TIMEOUT_S
            while len(received) < N:
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(
                        f"consumed only {len(received)}/{N} messages within {CONSUME_TIMEOUT_S}s"
                    )
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    for rec in records:
                        received.append((rec.key, rec.value, tp.partition))
            await consumer.commit()
            committed = {p: await consumer.committed(TopicPartition(unique_topic, p)) for p in range(PARTITIONS)}
        finally:
            await consumer.stop()

        assert len(received) == N
        per_key: dict[str, list[int]] = defaultdict(list)
        for key, value, partition in received:
            assert value["key"] == key
            assert partition == partition_of[key]
            per_key[key].append(value["seq"])
        assert sorted(per_key) == sorted(KEYS)
        for key, seqs in per_key.items():
            assert seqs == list(range(PER_KEY)), f"per-key order broken for {key}: {seqs}"
        assert sum(c or 0 for c in committed.values()) == N

    asyncio.run(scenario())
