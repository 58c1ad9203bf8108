"""CPU work while Redis runs a command (stream/overlap.py), against the real local Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import numpy as np
import pytest
import redis
from redis.exceptions import ResponseError

from diskwatch.models.features import FeatureSpec
from diskwatch.stream import windowstate
from diskwatch.stream.overlap import call_meanwhile
from diskwatch.stream.windowstate import WindowState

pytestmark = pytest.mark.integration

SPEC = FeatureSpec.from_names(["smart_5_raw", "smart_9_raw"])


def rows(serial: str, days: list[int]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    vectors = np.array([[d, 100 + d] for d in days], dtype=np.float32).reshape(-1, 2)
    return [serial] * len(days), np.asarray(days), vectors, ["ST4000DM000"] * len(days)


def test_meanwhile_runs_after_the_command_reached_redis(async_redis: Any, redis_url: str, redis_prefix: str) -> None:
    """The work sees the command's effect from another client: it ran while Redis had the command."""
    key = f"{redis_prefix}k"
    seen: list[bytes | None] = []

    def meanwhile() -> None:  # blocks the loop on purpose: only an already sent command can land
        with redis.Redis.from_url(redis_url) as other:
            deadline = time.monotonic() + 5
            while other.get(key) is None and time.monotonic() < deadline:
                time.sleep(0.005)
            seen.append(other.get(key))

    async def scenario() -> None:
        async with async_redis() as client:
            assert await call_meanwhile(client, meanwhile, "SET", key, "v") == "OK"  # the raw reply
            assert await client.get(key) == "v"

    asyncio.run(scenario())
    assert seen == [b"v"]


def test_errors_leave_no_reply_behind_for_the_next_command(async_redis: Any, redis_prefix: str) -> None:
    """An error reply is raised; work that fails closes the connection so no stale reply is read later."""
    text, other = f"{redis_prefix}text", f"{redis_prefix}other"

    def fail() -> None:
        raise RuntimeError("work failed")

    async def scenario() -> None:
        async with async_redis() as client:
            await client.set(text, "abc")
            await client.set(other, "right")
            ran: list[int] = []
            with pytest.raises(ResponseError):
                await call_meanwhile(client, lambda: ran.append(1), "INCR", text)
            assert ran == [1] and await client.get(other) == "right"
            with pytest.raises(RuntimeError, match="work failed"):
                await call_meanwhile(client, fail, "SET", text, "set-while-failing")
            # The SET's "OK" was never read: a reused connection would hand it to this GET.
            assert await client.get(other) == "right"
            assert await client.get(text) == "set-while-failing"

    asyncio.run(scenario())


def test_window_state_runs_meanwhile_once_per_call(async_redis: Any, redis_prefix: str, monkeypatch: Any) -> None:
    """Once per ingest and per mark — also when writers collide (a second compare-and-set round) and
    when Redis does not know the script yet (NOSCRIPT: it is loaded and the call made again)."""
    # A script text this Redis has never seen: its first EVALSHA is answered NOSCRIPT.
    monkeypatch.setattr(windowstate, "CAS_LUA", windowstate.CAS_LUA + f"-- {uuid.uuid4().hex}\n")
    monkeypatch.setattr(windowstate, "MARK_LUA", windowstate.MARK_LUA + f"-- {uuid.uuid4().hex}\n")

    async def scenario() -> None:
        async with async_redis(decode_responses=False) as client:
            prefix = redis_prefix.rstrip(":")
            a = WindowState(client, SPEC, prefix=prefix, keep_days=30, ttl_seconds=300)
            b = WindowState(client, SPEC, prefix=prefix, keep_days=30, ttl_seconds=300)
            calls = {"a": 0, "b": 0}

            def counter(name: str) -> Any:
                return lambda: calls.__setitem__(name, calls[name] + 1)

            async def writer(state: WindowState, name: str, days: list[int]) -> None:
                for day in days:
                    await state.ingest(*rows("Y", [day]), meanwhile=counter(name))

            await asyncio.gather(writer(a, "a", list(range(0, 20, 2))), writer(b, "b", list(range(1, 20, 2))))
            assert calls == {"a": 10, "b": 10}
            assert (await a.drive("Y")).days == list(range(20))  # collisions lost nothing

            await a.ingest(*rows("Z", [1, 2]))
            await a.mark({"Z": [2]}, {"Z": 1}, meanwhile=counter("a"))
            assert calls["a"] == 11
            drive = await b.drive("Z")
            assert drive.scored == {2} and drive.severity == 1

    asyncio.run(scenario())
