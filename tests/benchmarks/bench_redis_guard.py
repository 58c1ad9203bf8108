"""Benchmark: what the window state's compare-and-set guard costs Redis, against unguarded writes.

One batch = ``--keys`` drives with a ``--value-bytes`` window value each (the worker's
shape: 512 records touch 512 drives, ~1.3 KB each). Measured on the same Redis, in one
run, per batch: client wall time, and server CPU per key (``INFO cpu``, user + sys, so
AOF and reply writing count):

* ``mget``: the batch read (one ``MGET``);
* ``cas_script``: the worker's write (:data:`CAS_LUA`, one call per batch);
* ``set_ex``: pipelined ``SET … EX`` without any guard — the floor for writing whole values;
* ``watch_multi``: ``WATCH`` every key, then ``MULTI`` / ``SET … EX`` / ``EXEC`` — the guard
  Redis offers without Lua (it aborts the whole batch on any conflict);
* ``splice_script``: a Lua compare-and-set that receives only a drive's new rows and splices
  them into the stored value (old slices + literals) — what "send only the new rows" would
  cost with Redis 7 (the value is rebuilt and stored whole either way).

Figures and what they decided: docs/scaling.md ("Where the time goes").

    python tests/benchmarks/bench_redis_guard.py [--keys 512] [--value-bytes 1300] [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import time
import uuid

from diskwatch.stream.windowstate import _CAS_ITEM, CAS_LUA

# Per key: expected version (8 bytes), segment count u16, then segments: (0, a, b) = stored
# bytes a..b (1-based, inclusive), or (1, length, 0) followed by that many literal bytes.
SPLICE_LUA = """
local ttl, n, blob = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local sub, unpack = string.sub, struct.unpack
local out, pos = {}, 1
for k = 1, n do
  local expect = sub(blob, pos, pos + 7)
  local segments = unpack('<I2', blob, pos + 8)
  pos = pos + 10
  local cur = redis.call('GET', KEYS[k])
  local ok = cur and sub(cur, 1, 8) == expect
  local parts = {}
  for s = 1, segments do
    local kind, a, b = unpack('<BI4I4', blob, pos)
    pos = pos + 9
    if kind == 1 then
      if ok then parts[s] = sub(blob, pos, pos + a - 1) end
      pos = pos + a
    elseif ok then
      parts[s] = sub(cur, a, b)
    end
  end
  if ok then redis.call('SET', KEYS[k], table.concat(parts), 'EX', ttl) end
  out[k] = ok and 1 or 0
end
return out
"""


def _splice_item(version: bytes, size: int) -> bytes:
    """A one-day append in the stored layout: new header, then per column old rows + the new row."""
    rows = (size - 20) // 65
    segments = [
        struct.pack("<BII", 1, 20, 0) + version + bytes(12),
        struct.pack("<BII", 0, 21, 20 + 4 * rows), struct.pack("<BII", 1, 4, 0) + bytes(4),
        struct.pack("<BII", 0, 21 + 4 * rows, 20 + 5 * rows), struct.pack("<BII", 1, 1, 0) + bytes(1),
        struct.pack("<BII", 0, 21 + 5 * rows, size), struct.pack("<BII", 1, 60, 0) + bytes(60),
    ]
    return version + struct.pack("<H", len(segments)) + b"".join(segments)


async def _server_cpu(client) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(url: str, n_keys: int, value_bytes: int, rounds: int) -> dict[str, dict[str, float]]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, decode_responses=False)
    prefix = f"bench:guard:{uuid.uuid4().hex[:6]}"
    keys = [f"{prefix}:{{d{i}}}".encode() for i in range(n_keys)]
    version = (1).to_bytes(8, "little")
    value = version + os.urandom(value_bytes - 8)
    cas, splice = client.register_script(CAS_LUA), client.register_script(SPLICE_LUA)
    cas_blob = b"".join(_CAS_ITEM.pack(1, len(value)) + value for _ in keys)
    splice_blob = b"".join(_splice_item(version, len(value)) for _ in keys)

    async def mget() -> None:
        await client.mget(keys)

    def all_written(reply: list[int], what: str) -> None:
        if sum(reply) != n_keys:  # a refused write would measure nothing
            raise RuntimeError(f"{what}: {n_keys - sum(reply)} of {n_keys} writes refused")

    async def cas_script() -> None:
        all_written(await cas(keys=keys, args=[3600, n_keys, cas_blob]), "cas_script")

    async def set_ex() -> None:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, value, ex=3600)
        await pipe.execute()

    async def watch_multi() -> None:
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(*keys)
            pipe.multi()
            for key in keys:
                pipe.set(key, value, ex=3600)
            await pipe.execute()

    async def splice_script() -> None:
        all_written(await splice(keys=keys, args=[3600, n_keys, splice_blob]), "splice_script")

    out: dict[str, dict[str, float]] = {}
    try:
        for name, action in (("mget", mget), ("cas_script", cas_script), ("set_ex", set_ex),
                             ("watch_multi", watch_multi), ("splice_script", splice_script)):
            await client.mset({k: value for k in keys})  # every write below expects version 1
            for _ in range(3):
                await action()
            cpu0, t0 = await _server_cpu(client), time.perf_counter()
            for _ in range(rounds):
                await action()
            wall, cpu = time.perf_counter() - t0, await _server_cpu(client) - cpu0
            out[name] = {"ms_per_batch": round(wall / rounds * 1e3, 3),
                         "server_us_per_key": round(cpu / rounds / n_keys * 1e6, 2)}
    finally:
        await client.delete(*keys)
        await client.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=512)
    parser.add_argument("--value-bytes", type=int, default=1300)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    from diskwatch.core.settings import Settings

    url = Settings().redis_url.get_secret_value()
    figures = asyncio.run(run(url, args.keys, args.value_bytes, args.rounds))
    floor = figures["set_ex"]["server_us_per_key"]
    print(json.dumps({
        "benchmark": "redis_guard", "keys": args.keys, "value_bytes": args.value_bytes, "rounds": args.rounds,
        **figures,
        "ratio_server_cpu_vs_set_ex": {k: round(v["server_us_per_key"] / floor, 2) for k, v in figures.items()},
    }))


if __name__ == "__main__":
    main()
