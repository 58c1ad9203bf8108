"""WindowState on a real 3-node Redis Cluster (deploy/local/redis-cluster).

Every key of one drive carries the ``{serial}`` hash tag, so the ingest script's one key is
always in one slot; a batch of many drives is still one pipeline, split by redis-py per node.
The session fixture starts the cluster when it is not up and stops it afterwards only if it
started it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from diskwatch.core.records import TelemetryRecord
from diskwatch.core.settings import Settings
from diskwatch.models.features import FeatureSpec
from diskwatch.models.windows import day_number
from diskwatch.stream.app import redis_client
from diskwatch.stream.windowstate import WindowState, window_key

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "deploy" / "local" / "redis-cluster"
HOST = "127.0.0.1"
BASE_PORT = int(os.environ.get("DISKWATCH_REDIS_CLUSTER_PORT", "7000"))
NODES = int(os.environ.get("DISKWATCH_REDIS_CLUSTER_NODES", "3"))
TIMEOUT_S = float(os.environ.get("DISKWATCH_TEST_STACK_TIMEOUT", "300"))
START = dt.date(2024, 3, 1)


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)


@pytest.fixture(scope="session")
def cluster_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """redis:// URL of a node of a ready local Redis Cluster (cluster_state:ok)."""
    if shutil.which("redis-server") is None:
        request.getfixturevalue("redis_url")  # deploy/local/stack installs redis-server
    started = False
    if _script("status", "--quiet").returncode != 0:
        up = _script("up")
        if up.returncode != 0:
            pytest.fail(f"`deploy/local/redis-cluster up` failed (exit {up.returncode}):\n{up.stdout}{up.stderr}",
                        pytrace=False)
        started = "started" in up.stdout
    yield f"redis://{HOST}:{BASE_PORT}/0"
    if started:
        _script("down")


@asynccontextmanager
async def open_cluster(url: str) -> AsyncIterator[RedisCluster]:
    """A cluster client bound to the running loop (each test opens one inside its ``asyncio.run``)."""
    client = RedisCluster.from_url(url, decode_responses=False)
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test:cluster:{uuid.uuid4().hex[:10]}"


def record(serial: str, day: int, *, model: str = "ST4000DM000") -> TelemetryRecord:
    # Distinct, serial- and day-dependent values, a missing attribute (198) and a null part.
    n = int(serial.rsplit("-", 1)[1])
    return TelemetryRecord(
        date=START + dt.timedelta(days=day), serial_number=serial, model=model, capacity_bytes=4_000_787_030_016,
        failure=0,
        smart={5: [n + day, 100], 187: [day, None], 9: [1000 + 24 * day, 90], 194: [30 + (n % 7), None],
               197: [0, 100], 199: [n % 3, 200]},
    )


def item(spec: FeatureSpec, rec: TelemetryRecord) -> tuple[str, int, np.ndarray, str]:
    return rec.serial_number, day_number(rec.date), spec.record_vector(rec), rec.model


async def ingest(state: WindowState, items: list[tuple[str, int, np.ndarray, str]]):
    """WindowState.ingest from (serial, day, vector, model) rows; added as a list."""
    serials, days, vectors, models = zip(*items, strict=True)
    added, states = await state.ingest(list(serials), np.asarray(days), np.stack(vectors), list(models))
    return added.tolist(), states


async def _delete(client: RedisCluster, keys: list[str]) -> None:
    for key in keys:  # one slot per key
        await client.delete(key)


def test_ingest_many_serials_in_one_pipeline(cluster_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with open_cluster(cluster_url) as cluster:
            spec = FeatureSpec()
            state = WindowState(cluster, spec, prefix=prefix, keep_days=16, ttl_seconds=600)
            serials = [f"CL-{i}" for i in range(150)]
            try:
                # One call: 3 days for each of 150 drives (450 scripts over all three nodes), days shuffled.
                rng = np.random.default_rng(7)
                batch = [item(spec, record(s, d)) for s in serials for d in (0, 1, 2)]
                order = rng.permutation(len(batch))
                batch = [batch[i] for i in order]
                added, states = await ingest(state, batch)
                assert added == [True] * len(batch)
                assert set(states) == set(serials)
                for serial in serials:
                    drive = states[serial]
                    days = [day_number(START + dt.timedelta(days=d)) for d in (0, 1, 2)]
                    assert drive.days == days
                    expected = np.stack([spec.record_vector(record(serial, d)) for d in (0, 1, 2)])
                    assert drive.vectors is not None and drive.vectors.dtype == np.float32
                    np.testing.assert_array_equal(drive.vectors, expected)  # NaN == NaN here
                    assert np.isnan(drive.vectors[:, spec.names.index("smart_198_raw")]).all()
                    assert drive.model == "ST4000DM000"

                # Second call: duplicates are not re-added, new days are; marks land on every node.
                again = [item(spec, record(s, 2)) for s in serials[:50]] + [item(spec, record(s, 3)) for s in serials]
                added, states = await ingest(state, again)
                assert added == [False] * 50 + [True] * len(serials)
                assert all(len(states[s].days) == 4 for s in serials)
                last = day_number(START + dt.timedelta(days=3))
                await state.mark({s: [last] for s in serials}, {s: 1 for s in serials[::2]})
                _, states = await ingest(state, [item(spec, record(s, 3)) for s in serials])
                assert all(states[s].scored == {last} for s in serials)
                assert [states[s].severity for s in serials[:4]] == [1, 0, 1, 0]

                # A fresh script cache (node restart, failover) is reloaded and only the unrun calls resent.
                await cluster.script_flush()
                added, states = await ingest(state, [item(spec, record(s, 4)) for s in serials])
                assert added == [True] * len(serials)
                assert all(len(states[s].days) == 5 for s in serials)
            finally:
                await _delete(cluster, [state.key(s) for s in serials])

    asyncio.run(scenario())


def test_keys_of_a_serial_share_a_slot_and_serials_spread(cluster_url: str, prefix: str) -> None:
    async def scenario() -> None:
        async with open_cluster(cluster_url) as cluster:
            serials = [f"SPREAD-{i}" for i in range(60)]
            for serial in serials[:10]:
                slots = {
                    await cluster.cluster_keyslot(key)
                    for key in (window_key(prefix, "aaaaaaaa", serial), window_key(prefix, "bbbbbbbb", serial),
                                window_key("other", "aaaaaaaa", serial), serial)
                }
                assert len(slots) == 1, f"keys of {serial} span slots {slots}"

            spec = FeatureSpec()
            state = WindowState(cluster, spec, prefix=prefix, keep_days=16, ttl_seconds=600)
            try:
                await ingest(state, [item(spec, record(s, 0)) for s in serials])
                # Which node actually holds each key (per-node SCAN, not the client's slot map).
                holders: dict[int, set[str]] = {}
                for node in cluster.get_primaries():
                    keys = [k async for k in node_scan(cluster, node, f"{prefix}:*")]
                    holders[node.port] = {k.decode() for k in keys}
                assert len(holders) == NODES
                assert all(holders[p] for p in holders), f"a node holds no keys: { {p: len(k) for p, k in holders.items()} }"
                assert sorted(k for keys in holders.values() for k in keys) == sorted(state.key(s) for s in serials)
                for serial in serials:
                    node = cluster.get_node_from_key(state.key(serial))
                    assert state.key(serial) in holders[node.port]
            finally:
                await _delete(cluster, [state.key(s) for s in serials])

    asyncio.run(scenario())


async def node_scan(cluster: RedisCluster, node: ClusterNode, match: str) -> AsyncIterator[bytes]:
    """SCAN one node directly (a plain client on its port: no cluster routing)."""
    import redis.asyncio as aioredis

    direct = aioredis.Redis(host=node.host, port=node.port)
    try:
        async for key in direct.scan_iter(match=match, count=1000):
            yield key
    finally:
        await direct.aclose()


def test_redis_client_from_settings_is_a_working_cluster_client(cluster_url: str, prefix: str) -> None:
    async def scenario() -> None:
        settings = Settings(redis_url=cluster_url, redis_cluster=True)
        client = redis_client(settings)
        assert isinstance(client, RedisCluster)
        try:
            assert await client.ping()
            nodes = await client.cluster_nodes()
            assert len([n for n in nodes.values() if "master" in n["flags"]]) == NODES
            spec = FeatureSpec()
            state = WindowState(client, spec, prefix=prefix, keep_days=16, ttl_seconds=600)
            serials = [f"APP-{i}" for i in range(30)]
            added, states = await ingest(state, [item(spec, record(s, 0, model="")) for s in serials])
            assert added == [True] * 30
            assert all(states[s].model == "" and len(states[s].days) == 1 for s in serials)
            ttl = await client.ttl(state.key(serials[0]))
            assert 0 < ttl <= 600
            await _delete(client, [state.key(s) for s in serials])
        finally:
            await client.aclose()

    asyncio.run(scenario())
