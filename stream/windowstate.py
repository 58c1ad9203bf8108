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

One Lua call writes a whole batch and answers with every touched drive's
state packed into a few flat arrays (days, one blob of vectors), so the
worker decodes a batch with a handful of numpy calls instead of per-record
Python. On a Redis Cluster the same script runs once per drive (a script may
only touch keys of one slot), all calls in one pipeline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diskwatch.models.features import FeatureSpec

# KEYS: one window hash per drive, each once. ARGV: keep, ttl, vector width in
# bytes, then per key: n, oldest day of the drive in this batch, model, and n
# (day, vector) pairs. Reply: added flags ('0'/'1' per pair, in order), days
# stored per key, those days (ascending per key), their vectors as one blob,
# scored flags per stored day, severity per key, model per key.
INGEST_LUA = """
local keep = tonumber(ARGV[1])
local ttl = ARGV[2]
local width = tonumber(ARGV[3])
local a = 4
local added, counts, days, blob, scored, sev, models = {}, {}, {}, {}, {}, {}, {}
local D, S, COLON = string.byte('d'), string.byte('s'), string.byte(':')
for k = 1, #KEYS do
  local key = KEYS[k]
  local n = tonumber(ARGV[a])
  local oldest = tonumber(ARGV[a + 1])
  local model = ARGV[a + 2]
  a = a + 3
  for i = 1, n do
    added[#added + 1] = redis.call('HSETNX', key, 'd:' .. ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  -- One pass over the hash: parse each day field once.
  local all = redis.call('HGETALL', key)
  local dday, dval, sday = {}, {}, {}
  local newest, level, name = oldest, 0, ''
  for i = 1, #all, 2 do
    local f = all[i]
    local p, c = string.byte(f, 1, 2)
    if c == COLON and p == D then
      local d = tonumber(string.sub(f, 3))
      dday[#dday + 1] = d
      dval[#dval + 1] = all[i + 1]
      if d > newest then newest = d end
    elseif c == COLON and p == S then
      sday[#sday + 1] = tonumber(string.sub(f, 3))
    elseif f == 'sev' then
      level = tonumber(all[i + 1]) or 0
    elseif f == 'model' then
      name = all[i + 1]
    end
  end
  if model ~= '' and model ~= name then
    redis.call('HSET', key, 'model', model)
    name = model
  end
  -- Trim relative to the oldest day of this drive in the batch, so every
  -- window ending on a day of the batch still has its history.
  local limit = math.min(newest, oldest) - keep
  local drop, marks, vectors, order = {}, {}, {}, {}
  for i = 1, #dday do
    local d = dday[i]
    if d <= limit then
      drop[#drop + 1] = 'd:' .. d
    elseif #dval[i] == width then
      vectors[d] = dval[i]
      order[#order + 1] = d
    end
  end
  for i = 1, #sday do
    if sday[i] <= limit then drop[#drop + 1] = 's:' .. sday[i] else marks[sday[i]] = true end
  end
  if #drop > 0 then redis.call('HDEL', key, unpack(drop)) end
  table.sort(order)
  for _, d in ipairs(order) do
    days[#days + 1] = d
    blob[#blob + 1] = vectors[d]
    scored[#scored + 1] = marks[d] and '1' or '0'
  end
  counts[#counts + 1] = #order
  sev[#sev + 1] = level
  models[#models + 1] = name
  redis.call('EXPIRE', key, ttl)
end
return {table.concat(added), counts, days, table.concat(blob), table.concat(scored), sev, models}
"""

# KEYS: window hashes. ARGV per key: severity ('' = leave), n, then n scored days.
MARK_LUA = """
local a = 1
for k = 1, #KEYS do
  local level = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for i = 1, n do
    redis.call('HSET', KEYS[k], 's:' .. ARGV[a], 1)
    a = a + 1
  end
  if level ~= '' then redis.call('HSET', KEYS[k], 'sev', level) end
end
return #KEYS
"""


def spec_fingerprint(spec: FeatureSpec) -> str:
    """Stable id of the feature list and transforms (not of the fitted scaler)."""
    text = ";".join(f"{f.name}:{f.transform}" for f in spec.features)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def window_key(prefix: str, fingerprint: str, serial: str) -> str:
    return f"{prefix}:w:{fingerprint}:{{{serial}}}"


@dataclass
class DriveState:
    """What Redis holds for one serial."""

    days: list[int] = field(default_factory=list)  # ascending day numbers
    vectors: np.ndarray | None = None  # [len(days), F] float32
    scored: set[int] = field(default_factory=set)
    severity: int = 0
    model: str = ""

    @classmethod
    def parse(cls, flat: Sequence[Any], n_features: int) -> DriveState:
        """From a raw ``HGETALL`` reply (flat field/value list)."""
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


@dataclass(frozen=True)
class BatchState:
    """Every drive a batch touched, after its writes, as flat arrays.

    Drive ``i`` (``serials[i]``, sorted) owns rows ``starts[i]:starts[i+1]``
    of ``days`` (ascending), ``vectors`` and ``scored`` (whether the window
    ending that day was scored already).
    """

    serials: list[str]
    starts: np.ndarray  # int64 [n + 1]
    days: np.ndarray  # int64 [rows]
    vectors: np.ndarray  # float32 [rows, F]
    scored: np.ndarray  # bool [rows]
    severity: np.ndarray  # int64 [n]
    models: list[str]

    @property
    def owner(self) -> np.ndarray:
        """Drive index of each row."""
        return np.repeat(np.arange(len(self.serials)), np.diff(self.starts))

    def drives(self, serials: Sequence[str]) -> np.ndarray:
        """Drive index of each of ``serials`` (each must be one this batch touched)."""
        return np.searchsorted(np.asarray(self.serials, dtype=object), np.asarray(serials, dtype=object))

    def index(self, serial: str) -> int:
        i = int(self.drives([serial])[0])
        if i == len(self.serials) or self.serials[i] != serial:
            raise KeyError(serial)
        return i

    def __iter__(self) -> Iterator[str]:
        return iter(self.serials)

    def __len__(self) -> int:
        return len(self.serials)

    def __contains__(self, serial: object) -> bool:
        try:
            self.index(str(serial))
        except KeyError:
            return False
        return True

    def __getitem__(self, serial: str) -> DriveState:
        """One drive's state (for tests and tools; the worker stays columnar)."""
        i = self.index(serial)
        rows = slice(int(self.starts[i]), int(self.starts[i + 1]))
        days = self.days[rows]
        return DriveState(
            days=days.tolist(),
            vectors=self.vectors[rows],
            scored={int(d) for d in days[self.scored[rows]]},
            severity=int(self.severity[i]),
            model=self.models[i],
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
        self._ingest = redis.register_script(INGEST_LUA)
        self._mark = redis.register_script(MARK_LUA)
        # redis-py (≤ 8.1) blocks ClusterPipeline.evalsha (redis/redis-py#2914) and a cluster
        # pipeline does not load scripts on its nodes; see _cluster_calls.
        from redis.asyncio.cluster import RedisCluster

        self._cluster = isinstance(redis, RedisCluster)
        self._cluster_loaded: set[str] = set()

    def key(self, serial: str) -> str:
        return window_key(self.prefix, self.fingerprint, serial)

    async def ingest(
        self,
        serials: Sequence[str],
        days: np.ndarray | Sequence[int],
        vectors: np.ndarray,
        models: Sequence[str],
    ) -> tuple[np.ndarray, BatchState]:
        """Insert one batch of drive-days (``vectors``: ``[n, F]`` float32) in one call.

        Returns whether each input row was new (a duplicate day is not) and
        every touched drive's state after all of the batch's writes.
        """
        n = len(serials)
        days = np.asarray(days, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return np.zeros(0, dtype=bool), BatchState(
                [], np.zeros(1, np.int64), empty, np.zeros((0, self.spec.n_features), np.float32),
                np.zeros(0, bool), empty, [],
            )
        names = np.asarray(serials, dtype=object)
        order = np.lexsort((days, names))  # by serial, then day
        sorted_names = names[order]
        first = np.flatnonzero(np.r_[True, sorted_names[1:] != sorted_names[:-1]])
        bounds = np.r_[first, n]
        width = self.spec.n_features * 4
        blobs = vectors.tobytes()
        groups: list[tuple[str, list[Any]]] = []
        for g in range(len(first)):
            lo, hi = int(bounds[g]), int(bounds[g + 1])
            rows = order[lo:hi]
            model = next((models[r] for r in reversed(rows.tolist()) if models[r]), "")
            args: list[Any] = [hi - lo, int(days[rows[0]]), model]
            for r in rows.tolist():
                args.append(int(days[r]))
                args.append(blobs[r * width:(r + 1) * width])
            groups.append((self.key(str(sorted_names[lo])), args))
        head = [self.keep_days, self.ttl_seconds, width]
        if self._cluster:
            replies = await self._cluster_calls(
                INGEST_LUA, self._ingest.sha, [([key], head + args) for key, args in groups]
            )
            reply = _merge(replies)
        else:
            reply = await self._ingest(
                keys=[key for key, _ in groups], args=head + [x for _, args in groups for x in args]
            )
        flags, counts, stored_days, blob, scored, severity, stored_models = reply
        added = np.empty(n, dtype=bool)
        added[order] = np.frombuffer(flags, dtype=np.uint8) == ord("1")
        state = BatchState(
            serials=[str(s) for s in sorted_names[first]],
            starts=np.r_[0, np.cumsum(np.asarray(counts, dtype=np.int64))],
            days=np.asarray(stored_days, dtype=np.int64),
            vectors=np.frombuffer(blob, dtype=np.float32).reshape(-1, self.spec.n_features),
            scored=np.frombuffer(scored, dtype=np.uint8) == ord("1"),
            severity=np.asarray(severity, dtype=np.int64),
            models=[_text(m) for m in stored_models],
        )
        return added, state

    async def mark(self, scored: dict[str, list[int]], severity: dict[str, int]) -> None:
        """Record scored window ends and debounce state, in one call."""
        serials = sorted(set(scored) | set(severity))
        if not serials:
            return
        calls: list[tuple[list[str], list[Any]]] = []
        for serial in serials:
            ends = scored.get(serial, [])
            calls.append(([self.key(serial)], [severity.get(serial, ""), len(ends), *ends]))
        if self._cluster:
            await self._cluster_calls(MARK_LUA, self._mark.sha, calls)
        else:
            await self._mark(keys=[k for keys, _ in calls for k in keys], args=[x for _, args in calls for x in args])

    async def _cluster_calls(self, script: str, sha: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run a script once per call on a Redis Cluster: raw EVALSHA in one pipeline.

        The script is loaded on every primary first (SCRIPT LOAD goes to all of them). A
        NOSCRIPT reply (a node restarted or a replica took over since) ran nothing, so only
        those calls are re-sent after loading the script again.
        """
        from redis.exceptions import NoScriptError

        if sha not in self._cluster_loaded:
            await self.redis.script_load(script)
            self._cluster_loaded.add(sha)
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
            await self.redis.script_load(script)
            todo = missing
        raise AssertionError("unreachable")

    async def applied_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """Last offset per partition whose batch Redis holds (none recorded yet: empty)."""
        return {}

    async def memory_per_serial(self, serials: Sequence[str]) -> float:
        """Mean ``MEMORY USAGE`` of the given serials' keys, in bytes."""
        sizes = [await self.redis.memory_usage(self.key(s)) for s in serials]
        sizes = [s for s in sizes if s]
        return float(np.mean(sizes)) if sizes else 0.0


def _merge(replies: list[Any]) -> list[Any]:
    """Concatenate per-drive ingest replies into one batch reply."""
    return [
        b"".join(_bytes(r[0]) for r in replies),
        [c for r in replies for c in r[1]],
        [d for r in replies for d in r[2]],
        b"".join(_bytes(r[3]) for r in replies),
        b"".join(_bytes(r[4]) for r in replies),
        [s for r in replies for s in r[5]],
        [m for r in replies for m in r[6]],
    ]
