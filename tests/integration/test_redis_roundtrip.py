"""redis-py against the real local Redis: set/get, pipeline, Lua, TTL (sync and asyncio clients)."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.integration

# Atomically bump a hash field and return the new value plus the hash's size.
HINCR_LUA = """
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[2]))
return {v, redis.call('HLEN', KEYS[1])}
"""


def test_set_get(redis_client, redis_prefix: str) -> None:
    key = redis_prefix + "serial"
    assert redis_client.set(key, "ZA1234XY") is True
    assert redis_client.get(key) == "ZA1234XY"
    assert redis_client.set(key, "other", nx=True) is None  # NX: not overwritten
    assert redis_client.get(key) == "ZA1234XY"
    assert redis_client.get(redis_prefix + "missing") is None


def test_pipeline(redis_client, redis_prefix: str) -> None:
    h, z, c = (redis_prefix + s for s in ("hash", "zset", "counter"))
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.hset(h, mapping={"model": "ST4000DM000", "smart_5_raw": "12"})
        pipe.zadd(z, {"disk-a": 0.91, "disk-b": 0.07, "disk-c": 0.55})
        for _ in range(5):
            pipe.incr(c)
        pipe.hgetall(h)
        pipe.zrevrange(z, 0, 1)
        results = pipe.execute()
    assert results[:2] == [2, 3]
    assert results[2:7] == [1, 2, 3, 4, 5]
    assert results[7] == {"model": "ST4000DM000", "smart_5_raw": "12"}
    assert results[8] == ["disk-a", "disk-c"]
    assert redis_client.get(c) == "5"


def test_lua_script(redis_client, redis_prefix: str) -> None:
    key = redis_prefix + "alerts"
    script = redis_client.register_script(HINCR_LUA)
    assert script(keys=[key], args=["disk-a", 2]) == [2, 1]
    assert script(keys=[key], args=["disk-a", 3]) == [5, 1]
    assert script(keys=[key], args=["disk-b", 1]) == [1, 2]
    assert redis_client.hgetall(key) == {"disk-a": "5", "disk-b": "1"}
    # EVALSHA path (script cached server-side) gives the same result as EVAL
    assert redis_client.evalsha(script.sha, 1, key, "disk-b", 1) == [2, 2]


def test_expiry_ttl(redis_client, redis_prefix: str) -> None:
    key = redis_prefix + "lease"
    assert redis_client.set(key, "1", ex=120) is True
    ttl = redis_client.ttl(key)
    assert 0 < ttl <= 120
    assert redis_client.pexpire(key, 50_000) is True
    assert 0 < redis_client.pttl(key) <= 50_000
    assert redis_client.persist(key) is True
    assert redis_client.ttl(key) == -1  # exists, no expiry
    assert redis_client.ttl(redis_prefix + "missing") == -2


def test_prefix_is_isolated(redis_client, redis_prefix: str) -> None:
    redis_client.set(redis_prefix + "a", "1")
    redis_client.set(redis_prefix + "b", "2")
    assert sorted(redis_client.scan_iter(match=redis_prefix + "*")) == [
        redis_prefix + "a",
        redis_prefix + "b",
    ]


def test_asyncio_client_roundtrip(async_redis, redis_prefix: str) -> None:
    async def scenario() -> None:
        async with async_redis() as async_redis_client:
            key = redis_prefix + "async"
            await async_redis_client.set(key, "v", px=60_000)
            assert await async_redis_client.get(key) == "v"
            async with async_redis_client.pipeline(transaction=True) as pipe:
                pipe.incrby(redis_prefix + "n", 3).incrby(redis_prefix + "n", 4)
                assert await pipe.execute() == [3, 7]
            script = async_redis_client.register_script(HINCR_LUA)
            assert await script(keys=[redis_prefix + "h"], args=["x", 1]) == [1, 1]
            assert 0 < await async_redis_client.pttl(key) <= 60_000

    asyncio.run(scenario())
