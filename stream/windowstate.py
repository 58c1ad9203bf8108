"""Each drive's recent days in Redis: one binary value per serial, a few cheap calls per batch.

Key: ``{prefix}:w2:{spec}:{{serial}}`` — ``w2`` is the format version (the
hash-per-drive format of before is not migrated; its keys expire by TTL), the
``{serial}`` hash tag keeps a drive's key in one Redis Cluster slot, ``spec``
is a fingerprint of the feature list (a retrain keeps the state, a bundle with
other features starts clean instead of misreading it).

The value (little-endian, see :class:`Packed`)::

    version u64 | n days u16 | features u16 | severity i8 | model length u8 | model
    | days int32[n] | scored u8[n] | vectors float32[n, features]

Redis does one cheap thing per drive per batch: the worker reads every touched
drive with one ``MGET`` (``mget_nonatomic`` on a cluster: one pipeline per
node), merges the batch in numpy (sort by day, the stored day wins over a
duplicate, trim), and writes every value back with one compare-and-set script
call (per key: ``GETRANGE key 0 7`` equals the version read → ``SET … EX``) —
a few microseconds of server CPU per drive, no string conversion of fields. On
a cluster the script runs once per key in one pipeline.

Why compare-and-set: during a rebalance two workers can both believe they own a
partition for a moment. Each write names the version it read; a writer whose
version is stale is refused, re-reads that drive and merges its days into the
newer value — so neither overwrites the other and nothing is lost.

Trim: days at or before ``min(anchor, oldest day of the drive in this batch) −
keep`` are dropped (every window ending on a day of the batch keeps its
history). The anchor is the newest *confirmed* day — one with another stored
day within ``keep`` days of it. A lone day far in the future (a typo, a host
with a wrong clock: issue #12.1) is kept aside, unconfirmed, and erases
nothing; a second report near it confirms it and the window moves on. At most
``PARKED`` such lone days are kept per drive (the nearest ones).

Marks (window ending on a day scored, debounce severity) live in the same value.
They are written after the batch's alerts are acked, as an in-place patch of the
value's head (header, model, days, marks: ~1/10 of the value) that applies only
if the head is byte for byte the one this worker's ingest just wrote — no read,
no rewrite of the vectors; a head that changed meanwhile (another writer) falls
back to read, mark, compare-and-set. The batch's applied Kafka offsets are
written in the same script call as the marks (see :meth:`WindowState.mark`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.exceptions import NoScriptError

from diskwatch.models.features import FeatureSpec
from diskwatch.stream.overlap import call_meanwhile

# Work the caller gives a Redis call to run while the server is busy with it (see stream/overlap.py).
Meanwhile = Callable[[], None] | None

# Both scripts: KEYS: window keys, then optionally the applied-offsets hash. ARGV: ttl, number
# of window keys, one blob of per-key items (one argument, not 2 per key: redis-py packs each
# argument in Python), then (partition, offset, offset this worker last recorded there or -1)
# triples for the offsets hash. Reply: 1 written / 0 refused per key, then (partition, stored
# offset) for each partition whose stored offset went back (Redis lost acknowledged writes: not
# updated).
_OFFSETS_LUA = """
if #KEYS > n then
  for a = 4, #ARGV, 3 do
    local cur = tonumber(redis.call('HGET', KEYS[n + 1], ARGV[a]) or '-1')
    if cur < tonumber(ARGV[a + 2]) then
      out[#out + 1] = tonumber(ARGV[a])  -- Redis lost writes it had acknowledged: say from where
      out[#out + 1] = cur
    elseif tonumber(ARGV[a + 1]) > cur then
      redis.call('HSET', KEYS[n + 1], ARGV[a], ARGV[a + 1])
    end
  end
end
return out
"""

# Whole values. Item: expected version u64 (0: no value), length u32, the new value.
CAS_LUA = """
local ttl = ARGV[1]
local n = tonumber(ARGV[2])
local blob = ARGV[3]
local zero = string.rep(string.char(0), 8)
local out = {}
local pos = 1
for k = 1, n do
  local expect = string.sub(blob, pos, pos + 7)
  local len = struct.unpack('<I4', blob, pos + 8)
  local cur = redis.call('GETRANGE', KEYS[k], 0, 7)
  if cur == '' then cur = zero end
  if cur == expect then
    redis.call('SET', KEYS[k], string.sub(blob, pos + 12, pos + 11 + len), 'EX', ttl)
    out[k] = 1
  else
    out[k] = 0
  end
  pos = pos + 12 + len
end
""" + _OFFSETS_LUA

# Marks: a value's head (header, model, days, scored marks; the vectors stay) is replaced only if
# it is byte for byte the head this worker wrote. Item: head length u16, the expected head, the new
# head (same length). A whole-head compare, not only the version: a head that matches holds
# exactly the days the marks were computed for, whoever wrote it (versions restart when Redis
# loses a key). SETRANGE keeps the TTL.
MARK_LUA = """
local n = tonumber(ARGV[2])
local blob = ARGV[3]
local out = {}
local pos = 1
for k = 1, n do
  local len = struct.unpack('<I2', blob, pos)
  if redis.call('GETRANGE', KEYS[k], 0, len - 1) == string.sub(blob, pos + 2, pos + 1 + len) then
    redis.call('SETRANGE', KEYS[k], 0, string.sub(blob, pos + 2 + len, pos + 1 + 2 * len))
    out[k] = 1
  else
    out[k] = 0
  end
  pos = pos + 2 + 2 * len
end
""" + _OFFSETS_LUA

HEADER = struct.Struct("<QHHbB")
_CAS_ITEM = struct.Struct("<QI")
_CAS_HEADER = struct.Struct("<QIQHHbB")  # a CAS item's prefix and the value's header, packed at once
_MARK_ITEM = struct.Struct("<H")
PARKED = 4


def spec_fingerprint(spec: FeatureSpec) -> str:
    """Stable id of the feature list and transforms (not of the fitted scaler)."""
    text = ";".join(f"{f.name}:{f.transform}" for f in spec.features)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def window_key(prefix: str, fingerprint: str, serial: str) -> str:
    return f"{prefix}:w2:{fingerprint}:{{{serial}}}"


@dataclass
class DriveState:
    """What Redis holds for one serial."""

    days: list[int] = field(default_factory=list)  # ascending day numbers
    vectors: np.ndarray | None = None  # [len(days), F] float32
    scored: set[int] = field(default_factory=set)
    severity: int = 0
    model: str = ""

    @classmethod
    def decode(cls, value: bytes | None, n_features: int) -> DriveState:
        """From a stored window value (``GET`` of :func:`window_key`)."""
        return Packed.decode(value, n_features).state()


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


@dataclass
class Packed:
    """One drive's value, decoded (arrays are views of the bytes)."""

    version: int
    days: np.ndarray  # int32 [n], ascending
    scored: np.ndarray  # uint8 [n]
    vectors: np.ndarray  # float32 [n, F]
    severity: int = 0
    model: bytes = b""

    @classmethod
    def empty(cls, n_features: int) -> Packed:
        return cls(0, np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros((0, n_features), np.float32))

    @classmethod
    def decode(cls, blob: bytes | None, n_features: int) -> Packed:
        """From a stored value; none, or one written for other features: empty (version kept)."""
        if not blob:
            return cls.empty(n_features)
        version, n, width, level, length = HEADER.unpack_from(blob)
        if width != n_features:
            out = cls.empty(n_features)
            out.version = version
            return out
        at = HEADER.size + length
        days = np.frombuffer(blob, "<i4", n, at)
        scored = np.frombuffer(blob, np.uint8, n, at + 4 * n)
        vectors = np.frombuffer(blob, "<f4", n * width, at + 5 * n).reshape(n, width)
        return cls(version, days, scored, vectors, level, bytes(blob[HEADER.size:at]))

    def encode(self) -> bytes:
        n, width = self.vectors.shape
        model = self.model[:255]
        return b"".join((
            HEADER.pack(self.version, n, width, self.severity, len(model)), model,
            np.ascontiguousarray(self.days, "<i4").tobytes(), np.ascontiguousarray(self.scored, np.uint8).tobytes(),
            np.ascontiguousarray(self.vectors, "<f4").tobytes(),
        ))

    def state(self) -> DriveState:
        return DriveState(days=self.days.astype(np.int64).tolist(), vectors=np.array(self.vectors),
                          scored={int(d) for d in self.days[self.scored.astype(bool)]},
                          severity=int(self.severity), model=self.model.decode("utf-8", "replace"))


@dataclass
class _Rows:
    """Merged rows of some drives (global drive indices), plus per-drive scalars."""

    owner: np.ndarray
    days: np.ndarray
    vectors: np.ndarray
    scored: np.ndarray
    drives: np.ndarray
    severity: np.ndarray
    models: list[str]


class WindowState:
    """Async Redis access for the worker (works with Redis and Redis Cluster)."""

    def __init__(self, redis: Any, spec: FeatureSpec, *, prefix: str, keep_days: int, ttl_seconds: int) -> None:
        self.redis = redis
        self.spec = spec
        self.prefix = prefix
        self.fingerprint = spec_fingerprint(spec)
        self.n_features = spec.n_features  # a computed property of the spec: read once
        self.keep_days = keep_days
        self.ttl_seconds = ttl_seconds
        self._cas = redis.register_script(CAS_LUA)
        self._mark = redis.register_script(MARK_LUA)
        # Per serial, the head (see MARK_LUA) of the value this worker last wrote in ingest(): the
        # marks that follow patch it in place instead of reading and rewriting the whole value.
        self._heads: dict[str, bytes] = {}
        # redis-py (≤ 8.1) blocks ClusterPipeline.evalsha (redis/redis-py#2914) and a cluster
        # pipeline does not load scripts on its nodes; see _cluster_calls.
        from redis.asyncio.cluster import RedisCluster

        self._cluster = isinstance(redis, RedisCluster)
        self._cluster_loaded: set[str] = set()
        self.refused = 0  # compare-and-set refusals seen (a concurrent writer)
        # Offsets this process recorded per (topic, partition), and those Redis turned out to have lost.
        self.last_applied: dict[tuple[str | None, int], int] = {}
        self.lost: dict[int, int] = {}

    def key(self, serial: str) -> str:
        return window_key(self.prefix, self.fingerprint, serial)

    def _keys(self, serials: Sequence[str]) -> list[bytes]:
        """Window keys as bytes: redis-py passes bytes through without encoding them again."""
        return [self.key(s).encode() for s in serials]

    def offsets_key(self, topic: str) -> str:
        return f"{self.prefix}:applied:{{{topic}}}"

    # --- reads ---------------------------------------------------------------

    async def read_raw(self, serials: Sequence[str]) -> list[bytes | None]:
        """Every serial's value in one MGET (one pipeline per node on a cluster)."""
        if not serials:
            return []
        return await self._mget(self._keys(serials))

    async def _mget(self, keys: list[bytes]) -> list[bytes | None]:
        return list(await (self.redis.mget_nonatomic(keys) if self._cluster else self.redis.mget(keys)))

    async def read(self, serials: Sequence[str]) -> list[Packed]:
        return [Packed.decode(b, self.n_features) for b in await self.read_raw(serials)]

    async def drive(self, serial: str) -> DriveState:
        """One drive's stored state (tools and tests)."""
        return (await self.read([serial]))[0].state()

    # --- writes --------------------------------------------------------------

    async def write(self, serials: Sequence[str], values: Sequence[Packed],
                    applied: dict[int, int] | None = None, topic: str | None = None,
                    meanwhile: Meanwhile = None) -> list[bool]:
        """Compare-and-set each value against the version it was read at (bumped here)."""
        expected = [v.version for v in values]
        for value in values:
            value.version += 1
        return await self.write_raw(serials, expected, [v.encode() for v in values], applied, topic, meanwhile)

    async def write_raw(self, serials: Sequence[str], expected: Sequence[int], blobs: Sequence[bytes],
                        applied: dict[int, int] | None = None, topic: str | None = None,
                        meanwhile: Meanwhile = None) -> list[bool]:
        """One CAS script call: each encoded value is written only if the stored version is ``expected``."""
        parts = [_CAS_ITEM.pack(e, len(b)) + b for e, b in zip(expected, blobs, strict=True)]
        return await self._cas_write(self._keys(serials), parts, applied, topic, meanwhile=meanwhile)

    async def _cas_write(self, keys: list[bytes], parts: list[bytes], applied: dict[int, int] | None = None,
                         topic: str | None = None, script: Any = None, meanwhile: Meanwhile = None) -> list[bool]:
        """One call of ``script`` (default: the whole-value compare-and-set, ``parts`` its items —
        expected u64, length u32, value — per key), the applied offsets written with it;
        ``meanwhile`` runs while Redis executes it (standalone Redis; not on a cluster)."""
        script = script or self._cas
        seen = self.last_applied
        marks = [x for p, o in sorted((applied or {}).items()) for x in (p, o, seen.get((topic, p), -1))] if topic else []
        if self._cluster:
            calls = [([k], [self.ttl_seconds, 1, part]) for k, part in zip(keys, parts, strict=True)]
            if marks:
                calls.append(([self.offsets_key(str(topic))], [self.ttl_seconds, 0, b"", *marks]))
            replies = await self._cluster_calls(script.script, script.sha, calls)
            done = [bool(r[0]) for r in replies[:len(keys)]]
            tail = list(replies[-1]) if marks else []
        else:
            extra = [self.offsets_key(str(topic))] if marks else []
            reply = await self._script(script, keys + extra, [self.ttl_seconds, len(keys), b"".join(parts), *marks],
                                       meanwhile)
            done = [bool(x) for x in reply[:len(keys)]]
            tail = list(reply[len(keys):])
        self.lost = {int(tail[i]): int(tail[i + 1]) for i in range(0, len(tail), 2)}
        if topic:
            for p, o in (applied or {}).items():
                seen[(topic, p)] = self.lost.get(p, o)
        self.refused += done.count(False)
        return done

    async def _script(self, script: Any, keys: list[bytes], args: list[Any], meanwhile: Meanwhile) -> Any:
        """EVALSHA of a registered script; ``meanwhile`` runs once the call is sent."""
        if meanwhile is not None:
            try:
                return await call_meanwhile(self.redis, meanwhile, "EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:  # a restarted Redis: the Script call below loads it (meanwhile ran)
                pass
        return await script(keys=keys, args=args)

    async def ingest(
        self,
        serials: Sequence[str],
        days: np.ndarray | Sequence[int],
        vectors: np.ndarray,
        models: Sequence[str],
        meanwhile: Meanwhile = None,
    ) -> tuple[np.ndarray, BatchState]:
        """Insert one batch of drive-days (``vectors``: ``[n, F]`` float32): one read, one write.

        Returns whether each input row was new (a duplicate day is not) and
        every touched drive's state after all of the batch's writes. ``meanwhile``
        runs while Redis executes the first write (the longest wait of the batch).
        """
        n = len(serials)
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return np.zeros(0, dtype=bool), BatchState(
                [], np.zeros(1, np.int64), empty, np.zeros((0, self.n_features), np.float32),
                np.zeros(0, bool), empty, [],
            )
        days = np.asarray(days, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(n, self.n_features)
        unique, row_drive = np.unique(np.asarray(serials, dtype=object), return_inverse=True)
        drive_serials = [str(s) for s in unique]
        all_keys = self._keys(drive_serials)  # once: the read and the write use them
        latest_model = _latest_models(row_drive, models, len(drive_serials))
        added = np.zeros(n, dtype=bool)
        parts: list[_Rows] = []
        todo = np.arange(len(drive_serials))
        self._heads = {}
        while todo.size:
            keys = [all_keys[i] for i in todo.tolist()]
            stored = _unpack(await self._mget(keys), self.n_features)
            rows = np.flatnonzero(np.isin(row_drive, todo)) if parts else np.arange(n)
            merged, kept, items = self._merge(todo, stored, row_drive[rows], days[rows], vectors[rows], latest_model)
            done = np.asarray(await self._cas_write(keys, items, meanwhile=meanwhile), dtype=bool)
            meanwhile = None
            for i, ok, item in zip(todo.tolist(), done.tolist(), items, strict=True):
                if ok:
                    self._heads[drive_serials[i]] = _head(item)
            ok = np.isin(merged.owner, todo[done])
            added[rows[kept & np.isin(row_drive[rows], todo[done])]] = True
            parts.append(_select(merged, ok, done))
            todo = todo[~done]
        return added, _assemble(drive_serials, parts, self.n_features)

    def _merge(self, drives: np.ndarray, stored: _Stored, owner: np.ndarray, days: np.ndarray,
               vectors: np.ndarray, latest_model: list[bytes]) -> tuple[_Rows, np.ndarray, list[bytes]]:
        """Stored rows + batch rows → sorted, deduplicated (stored wins), trimmed, encoded as CAS items."""
        old_owner = np.repeat(drives, stored.lens)
        m = owner.size
        all_owner = np.r_[old_owner, owner]
        all_days = np.r_[stored.days, days]
        source = np.r_[np.zeros(old_owner.size, np.int64), np.arange(1, m + 1)]  # stored first, then batch order
        order = np.lexsort((source, all_days, all_owner))
        so, sd = all_owner[order], all_days[order]
        first = np.r_[True, (so[1:] != so[:-1]) | (sd[1:] != sd[:-1])]
        # a day the batch brought, even as a duplicate of a stored one (it bounds the trim)
        from_batch = np.maximum.reduceat(order >= old_owner.size, np.flatnonzero(first))
        order, so, sd = order[first], so[first], sd[first]
        keep = self._trim(so, sd, from_batch)
        order, so, sd = order[keep], so[keep], sd[keep]
        kept = np.zeros(m, dtype=bool)
        new = order >= old_owner.size
        kept[order[new] - old_owner.size] = True
        vec = np.concatenate([stored.vectors, vectors])[order]
        scored = np.r_[stored.scored, np.zeros(m, np.uint8)][order]
        lo = np.searchsorted(so, drives, side="left").tolist()
        hi = np.searchsorted(so, drives, side="right").tolist()
        day_bytes, mark_bytes = sd.astype("<i4").tobytes(), scored.tobytes()
        features = self.n_features
        vec_bytes, width = vec.astype("<f4").tobytes(), 4 * features
        row_size, pack, join = 5 + width, _CAS_HEADER.pack, b"".join
        items: list[bytes] = []
        chosen: list[bytes] = []
        versions, levels, stored_models = stored.versions, stored.severity, stored.models
        for j, drive in enumerate(drives.tolist()):
            model = latest_model[drive] or stored_models[j]
            a, b = lo[j], hi[j]
            size = HEADER.size + len(model) + row_size * (b - a)
            items.append(join((
                pack(versions[j], size, versions[j] + 1, b - a, features, levels[j], len(model)),
                model, day_bytes[4 * a:4 * b], mark_bytes[a:b], vec_bytes[width * a:width * b],
            )))
            chosen.append(model)
        severity = np.asarray(stored.severity, np.int64)
        return _Rows(so, sd, vec, scored.astype(bool), drives, severity, _model_texts(chosen)), kept, items

    def _trim(self, owner: np.ndarray, days: np.ndarray, from_batch: np.ndarray) -> np.ndarray:
        """Rows to keep (rows sorted by owner, then day): see the module docstring."""
        if owner.size == 0:
            return np.zeros(0, dtype=bool)
        keep_days = self.keep_days
        big = np.iinfo(np.int64).max
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        counts = np.diff(np.r_[starts, owner.size])
        same_prev = np.r_[False, owner[1:] == owner[:-1]]
        same_next = np.r_[same_prev[1:], False]
        gap_prev = np.where(same_prev, days - np.r_[days[0], days[:-1]], big)
        gap_next = np.where(same_next, np.r_[days[1:], days[-1]] - days, big)
        confirmed = (gap_prev <= keep_days) | (gap_next <= keep_days) | (~same_prev & ~same_next)
        anchor = np.maximum.reduceat(np.where(confirmed, days, -big), starts)
        anchor = np.where(anchor == -big, days[starts], anchor)  # nothing confirmed: the oldest day
        oldest = np.minimum.reduceat(np.where(from_batch, days, big), starts)
        limit = np.repeat(np.minimum(anchor, oldest) - keep_days, counts)
        anchor_rows = np.repeat(anchor, counts)
        keep = days > limit
        parked = keep & (days > anchor_rows + keep_days)
        if parked.any():  # at most PARKED lone future days per drive: the nearest ones
            rank = np.zeros(owner.size, np.int64)
            idx = np.flatnonzero(parked)
            run = np.r_[True, owner[idx][1:] != owner[idx][:-1]]
            begins = np.maximum.accumulate(np.where(run, np.arange(idx.size), 0))
            rank[idx] = np.arange(idx.size) - begins
            keep &= ~(parked & (rank >= PARKED))
        return keep

    async def mark(self, scored: dict[str, list[int]], severity: dict[str, int],
                   applied: dict[int, int] | None = None, topic: str | None = None,
                   meanwhile: Meanwhile = None) -> dict[int, int]:
        """Record scored window ends and debounce state (and the batch's applied offsets) in one write
        (``meanwhile`` runs while Redis executes it).

        Returns the partitions whose recorded offset went back since this process wrote it
        (Redis lost acknowledged writes in a crash), with the offset Redis still has (−1: none):
        the caller re-reads them from there instead of committing.
        """
        serials = sorted(set(scored) | set(severity))
        if not serials and not (applied and topic):
            return {}
        offsets = applied
        lost: dict[int, int] = {}
        known = [s for s in serials if s in self._heads]
        todo = [s for s in serials if s not in self._heads]
        if known:  # usually every serial: the batch's ingest() just wrote them
            done = await self._mark_heads(known, scored, severity, offsets, topic, meanwhile)
            meanwhile = None
            if offsets:
                lost = dict(self.lost)
            offsets = None
            todo = sorted(todo + [s for s, ok in zip(known, done, strict=True) if not ok])
            if not todo:
                return lost
        while True:  # a head changed since (another writer), or none known: read, modify, write
            values = await self.read(todo)
            for serial, value in zip(todo, values, strict=True):
                ends = scored.get(serial)
                if ends:
                    value.scored = value.scored | np.isin(value.days, ends).astype(np.uint8)
                if serial in severity:
                    value.severity = int(severity[serial])
            done = await self.write(todo, values, offsets, topic, meanwhile)  # also an offsets-only write
            meanwhile = None
            if offsets:
                lost = dict(self.lost)
            todo = [s for s, ok in zip(todo, done, strict=True) if not ok]
            offsets = None
            if not todo:
                return lost

    async def _mark_heads(self, serials: list[str], scored: dict[str, list[int]], severity: dict[str, int],
                          applied: dict[int, int] | None, topic: str | None, meanwhile: Meanwhile) -> list[bool]:
        """Marks as in-place head patches of the values ingest() wrote (see MARK_LUA): no read."""
        heads = [self._heads[s] for s in serials]
        stored = _unpack(heads, self.n_features)  # a head holds all but the vectors: those come out empty
        # Rows of window ends scored now: (drive, day) pairs as one int64 each.
        row_keys = np.repeat(np.arange(len(heads), dtype=np.int64), stored.lens) << 32 | (stored.days & 0xFFFFFFFF)
        ends = [j << 32 | (int(e) & 0xFFFFFFFF) for j, s in enumerate(serials) for e in scored.get(s, ())]
        mark_bytes = (stored.scored | np.isin(row_keys, np.asarray(ends, np.int64))).astype(np.uint8).tobytes()
        starts = np.r_[0, np.cumsum(stored.lens)].tolist()
        items, new_heads = [], []
        for j, (serial, head, model) in enumerate(zip(serials, heads, stored.models, strict=True)):
            n, at = starts[j + 1] - starts[j], HEADER.size + len(model)
            new = b"".join((
                HEADER.pack(stored.versions[j] + 1, n, self.n_features, severity.get(serial, stored.severity[j]),
                            len(model)),
                head[HEADER.size:at + 4 * n], mark_bytes[starts[j]:starts[j + 1]],
            ))
            items.append(_MARK_ITEM.pack(len(head)) + head + new)
            new_heads.append(new)
        done = await self._cas_write(self._keys(serials), items, applied, topic, script=self._mark,
                                     meanwhile=meanwhile)
        for serial, new, ok in zip(serials, new_heads, done, strict=True):
            if ok:
                self._heads[serial] = new
        return done

    async def applied_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """Last offset per partition whose batch Redis holds (none recorded: absent)."""
        if not partitions:
            return {}
        values = await self.redis.hmget(self.offsets_key(topic), [str(p) for p in partitions])
        found = {p: int(v) for p, v in zip(partitions, values, strict=True) if v is not None}
        for p in partitions:  # what later writes are checked against
            self.last_applied[(topic, p)] = found.get(p, -1)
        return found

    async def _cluster_calls(self, script: str, sha: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run a script once per call on a Redis Cluster: raw EVALSHA in one pipeline.

        The script is loaded on every primary first (SCRIPT LOAD goes to all of them). A
        NOSCRIPT reply (a node restarted or a replica took over since) ran nothing, so only
        those calls are re-sent after loading the script again.
        """
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

    async def memory_per_serial(self, serials: Sequence[str]) -> float:
        """Mean ``MEMORY USAGE`` of the given serials' keys, in bytes."""
        sizes = [await self.redis.memory_usage(self.key(s)) for s in serials]
        sizes = [s for s in sizes if s]
        return float(np.mean(sizes)) if sizes else 0.0


@dataclass
class _Stored:
    """Several drives' stored values, columnar (one numpy conversion for the whole batch)."""

    versions: list[int]
    severity: list[int]
    models: list[bytes]
    lens: np.ndarray
    days: np.ndarray
    scored: np.ndarray
    vectors: np.ndarray


def _unpack(blobs: Sequence[bytes | None], n_features: int) -> _Stored:
    """Decode many values with three numpy calls: slices are gathered, then joined."""
    versions, severity, models, lens = [], [], [], []
    days, marks, vectors = [], [], []
    size = HEADER.size
    for blob in blobs:
        if not blob:
            versions.append(0), severity.append(0), models.append(b""), lens.append(0)
            continue
        version, n, width, level, length = HEADER.unpack_from(blob)
        versions.append(version)
        if width != n_features:  # written for other features: start clean, keep the version
            severity.append(0), models.append(b""), lens.append(0)
            continue
        at = size + length
        severity.append(level), models.append(blob[size:at]), lens.append(n)
        days.append(blob[at:at + 4 * n])
        marks.append(blob[at + 4 * n:at + 5 * n])
        vectors.append(blob[at + 5 * n:at + 5 * n + 4 * n * width])
    return _Stored(
        versions, severity, models, np.asarray(lens, np.int64),
        np.frombuffer(b"".join(days), "<i4").astype(np.int64),
        np.frombuffer(b"".join(marks), np.uint8),
        np.frombuffer(b"".join(vectors), "<f4").reshape(-1, n_features),
    )


def _head(item: bytes) -> bytes:
    """The head (header, model, days, scored marks) of the value in a compare-and-set item."""
    n, length = _CAS_HEADER.unpack_from(item)[3::3]
    return item[_CAS_ITEM.size:_CAS_ITEM.size + HEADER.size + length + 5 * n]


def _latest_models(row_drive: np.ndarray, models: Sequence[str], drives: int) -> list[bytes]:
    """Per drive, the model string (UTF-8, at most 255 bytes) of its last row in the batch that names one."""
    latest = [""] * drives
    for d, model in zip(row_drive.tolist(), models, strict=True):
        if model:
            latest[d] = model
    encoded = {m: m.encode()[:255] for m in set(latest)}  # a fleet has few models: encode each once
    return [encoded[m] for m in latest]


def _model_texts(models: list[bytes]) -> list[str]:
    """Stored model bytes → text (a truncated multi-byte character is replaced), each distinct one once."""
    texts = {m: m.decode("utf-8", "replace") for m in set(models)}
    return [texts[m] for m in models]


def _select(rows: _Rows, ok: np.ndarray, done: np.ndarray) -> _Rows:
    return _Rows(rows.owner[ok], rows.days[ok], rows.vectors[ok], rows.scored[ok], rows.drives[done],
                 rows.severity[done], [m for m, d in zip(rows.models, done.tolist(), strict=True) if d])


def _assemble(serials: list[str], parts: list[_Rows], n_features: int) -> BatchState:
    """One BatchState from the rounds of a compare-and-set loop (usually one)."""
    if len(parts) == 1:
        rows = parts[0]
    else:
        order_d = np.argsort(np.concatenate([p.drives for p in parts]), kind="stable")
        owner = np.concatenate([p.owner for p in parts])
        order = np.argsort(owner, kind="stable")
        rows = _Rows(owner[order], np.concatenate([p.days for p in parts])[order],
                     np.concatenate([p.vectors for p in parts])[order],
                     np.concatenate([p.scored for p in parts])[order],
                     np.concatenate([p.drives for p in parts])[order_d],
                     np.concatenate([p.severity for p in parts])[order_d],
                     [m for p in parts for m in p.models])
        models = [m for p in parts for m in p.models]
        rows.models = [models[i] for i in order_d.tolist()]
    counts = np.bincount(rows.owner, minlength=len(serials)) if rows.owner.size else np.zeros(len(serials), np.int64)
    return BatchState(
        serials=serials,
        starts=np.r_[0, np.cumsum(counts)].astype(np.int64),
        days=rows.days.astype(np.int64),
        vectors=np.ascontiguousarray(rows.vectors, np.float32).reshape(-1, n_features),
        scored=rows.scored.astype(bool),
        severity=rows.severity.astype(np.int64),
        models=rows.models,
    )
