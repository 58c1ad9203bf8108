"""What aiokafka's admin client lacks, shared by the test session's cleanup and the benchmarks."""

from __future__ import annotations

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
