"""Each drive's recent days in Redis: one hash per serial, one round trip per batch.

Key: ``{prefix}:w:{spec}:{{serial}}`` — the ``{serial}`` hash tag keeps every
key of a drive in one Redis Cluster slot; ``spec`` is a fingerprint of the
feature list, so a bundle with the same features (a retrain) keeps the state
and one with different features starts clean instead of misreading it.

Fields of the hash:

* ``d:<day>`` — the day's transformed feature vector, float32 bytes. Written
  with HSETNX: a duplicate (serial, date) changes nothing.
* ``s:<day>`` — the window ending that day was scored (never scored twice).
* ``sev`` — debounce state: severity of the last scored window.
* ``model`` — the drive model string, for alerts.

Only days within ``keep`` of the newest (or of the oldest day of the drive
in the current batch, whichever is older) are kept; the whole key expires when
the drive stops reporting for ``ttl`` seconds, so memory stays bounded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.features import FeatureSpec

# One call per record; returns {added, flat field/value list after trimming}.
INGEST_LUA = """
local key = KEYS[1]
local day = tonumber(ARGV[1])
local keep = tonumber(ARGV[3])
local added = redis.call('HSETNX', key, 'd:' .. ARGV[1], ARGV[2])
if ARGV[5] ~= '' then redis.call('HSET', key, 'model', ARGV[5]) end
local all = redis.call('HGETALL', key)
local newest = day
for i = 1, #all, 2 do
  local f = all[i]
  if string.sub(f, 1, 2) == 'd:' then
    local d = tonumber(string.sub(f, 3))
    if d > newest then newest = d end
  end
end
-- Trim relative to the oldest day of this drive in the batch (ARGV[6]), so
-- every window ending on a day of the batch still has its history.
local limit = math.min(newest, tonumber(ARGV[6])) - keep
local out = {}
for i = 1, #all, 2 do
  local f = all[i]
  local p = string.sub(f, 1, 2)
  if (p == 'd:' or p == 's:') and tonumber(string.sub(f, 3)) <= limit then
    redis.call('HDEL', key, f)
  else
    out[#out + 1] = f
    out[#out + 1] = all[i + 1]
  end
end
redis.call('EXPIRE', key, ARGV[4])
return {added, out}
"""


def spec_fingerprint(spec: FeatureSpec) -> str:
    """Stable id of the feature list and transforms (not of the fitted scaler)."""
    text = ";".join(f"{f.name}:{f.transform}" for f in spec.features)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def window_key(prefix: str, fingerprint: str, serial: str) -> str:
    return f"{prefix}:w:{fingerprint}:{{{serial}}}"


@dataclass
class DriveState:
    """What Redis holds for one serial after this batch's writes."""

    days: list[int] = field(default_factory=list)  # ascending day numbers
    vectors: np.ndarray | None = None  # [len(days), F] float32
    scored: set[int] = field(default_factory=set)
    severity: int = 0
    model: str = ""

    @classmethod
    def parse(cls, flat: Sequence[Any], n_features: int) -> DriveState:
        fields = {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        days: list[int] = []
        rows: list[np.ndarray] = []
        scored: set[int] = set()
        for name, value in fields.items():
            if name.startswith("d:"):
                vector = np.frombuffer(_bytes(value), dtype=np.float32)
                if vector.shape[0] != n_features:
                    continue  # written by an incompatible spec; ignored
                days.append(int(name[2:]))
                rows.append(vector)
            elif name.startswith("s:"):
                scored.add(int(name[2:]))
        order = np.argsort(days) if days else np.zeros(0, dtype=np.int64)
        vectors = np.stack([rows[i] for i in order]) if rows else np.zeros((0, n_features), np.float32)
        return cls(
            days=[days[i] for i in order],
            vectors=vectors,
            scored=scored,
            severity=int(_text(fields.get("sev", b"0")) or 0),
            model=_text(fields.get("model", b"")),
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("latin-1")


class WindowState:
    """Async Redis access for the worker (works with Redis and Redis Cluster)."""

    def __init__(self, redis: Any, spec: FeatureSpec, *, prefix: str, keep_days: int, ttl_seconds: int) -> None:
        self.redis = redis
        self.spec = spec
        self.prefix = prefix
        self.fingerprint = spec_fingerprint(spec)
        self.keep_days = keep_days
        self.ttl_seconds = ttl_seconds
        self._script = redis.register_script(INGEST_LUA)
        # redis-py (≤ 8.1) blocks ClusterPipeline.evalsha (redis/redis-py#2914) and a cluster
        # pipeline does not load scripts on its nodes; see _ingest_cluster.
        from redis.asyncio.cluster import RedisCluster

        self._cluster = isinstance(redis, RedisCluster)
        self._cluster_loaded = False

    def key(self, serial: str) -> str:
        return window_key(self.prefix, self.fingerprint, serial)

    async def ingest(
        self, items: Sequence[tuple[str, int, np.ndarray, str]]
    ) -> tuple[list[bool], dict[str, DriveState]]:
        """Insert (serial, day, vector, model) items in one pipeline.

        Returns whether each item was new, and every touched drive's state
        after all of the batch's writes.
        """
        if not items:
            return [], {}
        oldest: dict[str, int] = {}
        for serial, day, _, _ in items:
            oldest[serial] = min(day, oldest.get(serial, day))
        calls = [
            (
                [self.key(serial)],
                [
                    day, np.asarray(vector, dtype=np.float32).tobytes(), self.keep_days, self.ttl_seconds, model,
                    oldest[serial],
                ],
            )
            for serial, day, vector, model in items
        ]
        if self._cluster:
            replies = await self._ingest_cluster(calls)
        else:
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                await self._script(keys=keys, args=args, client=pipe)
            replies = await pipe.execute()
        added = [bool(int(r[0])) for r in replies]
        states: dict[str, DriveState] = {}
        for (serial, *_), reply in zip(reversed(items), reversed(replies), strict=True):
            if serial not in states:  # the last reply of a drive holds the whole batch's writes
                states[serial] = DriveState.parse(reply[1], self.spec.n_features)
        return added, states

    async def _ingest_cluster(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """The ingest pipeline on a Redis Cluster: raw EVALSHA, routed by each call's one key.

        The script is loaded on every primary first (SCRIPT LOAD goes to all of them). A
        NOSCRIPT reply (a node restarted or a replica took over since) ran nothing, so only
        those calls are re-sent after loading the script again.
        """
        from redis.exceptions import NoScriptError

        sha = self._script.sha
        if not self._cluster_loaded:
            await self.redis.script_load(INGEST_LUA)
            self._cluster_loaded = True
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(3):
            pipe = self.redis.pipeline(transaction=False)
            for i in todo:
                keys, args = calls[i]
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
            missing = []
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, NoScriptError) and attempt < 2:
                    missing.append(i)
                elif isinstance(result, Exception):
                    raise result
                else:
                    replies[i] = result
            if not missing:
                return replies
            await self.redis.script_load(INGEST_LUA)
            todo = missing
        raise AssertionError("unreachable")

    async def mark(self, scored: dict[str, list[int]], severity: dict[str, int]) -> None:
        """Record scored window ends and debounce state, in one pipeline."""
        if not scored and not severity:
            return
        pipe = self.redis.pipeline(transaction=False)
        for serial in sorted(set(scored) | set(severity)):
            mapping: dict[str, Any] = {f"s:{day}": 1 for day in scored.get(serial, [])}
            if serial in severity:
                mapping["sev"] = severity[serial]
            pipe.hset(self.key(serial), mapping=mapping)
        await pipe.execute()

    async def memory_per_serial(self, serials: Sequence[str]) -> float:
        """Mean ``MEMORY USAGE`` of the given serials' keys, in bytes."""
        sizes = [await self.redis.memory_usage(self.key(s)) for s in serials]
        sizes = [s for s in sizes if s]
        return float(np.mean(sizes)) if sizes else 0.0
