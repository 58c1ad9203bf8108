"""What aiokafka's admin client lacks, shared by the test session's cleanup and the benchmarks."""

from __future__ import annotations

import re
from typing import Any


async def delete_group(admin: Any, group: str) -> None:
    """DeleteGroups (API 42) at the group's coordinator; a group that still has members is left alone.

    aiokafka's ``AIOKafkaAdminClient`` has no ``delete_consumer_groups``: this sends the raw request.
    """
    from aiokafka.protocol.admin import DeleteGroupsRequest

    node = await admin.find_coordinator(group)
    await admin._send_request_to_node(node, DeleteGroupsRequest([group]))


async def list_topics(bootstrap: str) -> set[str]:
    """Every topic the broker has now."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def drop_created(tag: str, **client: Any) -> None:
    """Delete the topics and consumer groups a benchmark run created: every name with its ``tag``.

    A benchmark produces millions of records; left on a developer's broker they pile up (gigabytes
    after a few soak runs). Names carry the run's random tag between dashes, so nothing else matches.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    ours = re.compile(rf"(^|-){re.escape(tag)}(-|$)").search
    admin = AIOKafkaAdminClient(**client)  # bootstrap_servers and security, as the other clients
    await admin.start()
    try:
        for group in [g[0] for g in await admin.list_consumer_groups() if ours(g[0])]:
            await delete_group(admin, group)
        topics = [t for t in await admin.list_topics() if ours(t)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
