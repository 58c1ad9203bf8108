"""Turn a day-ordered dump into per-drive windows in one bounded-memory pass.

The builder keeps, per live drive, its last ``S + L`` daily steps (the window
rule of :mod:`models.windows`) — nothing else of the dump. Healthy windows are
undersampled *as they are emitted* with a deterministic hash of (serial, day),
so the output stays small; when a drive fails, the windows of its last ``L``
days that the sampler skipped are still in the buffer and are emitted too, so
no positive is ever lost. Labels need the future, so they are not written
here: the window store derives them from each serial's failure date when read.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from diskwatch.models.features import FeatureSpec
from diskwatch.models.windows import WindowConfig, day_number


def keep_fraction(serial_hash: np.ndarray, day: int, seed: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per (serial, day, seed): splitmix64."""
    x = serial_hash.astype(np.uint64) ^ np.uint64((day * 0x9E3779B1 + seed * 0x85EBCA77) & (2**64 - 1))
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(2**64 - 1)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def serial_hash(serials: Iterable[str]) -> np.ndarray:
    return np.fromiter((zlib.crc32(s.encode()) for s in serials), dtype=np.uint64)


@dataclass
class EmittedWindows:
    """Windows emitted for one day: arrays aligned on the first axis."""

    x: np.ndarray  # [n, S, F] float32, transformed, unscaled, NaN = missing
    serial: list[str]
    end_day: np.ndarray  # [n] int32 day numbers


@dataclass
class BuilderStats:
    rows: int = 0
    windows: int = 0
    duplicates: int = 0
    after_failure: int = 0
    failures: int = 0
    runs: int = 0  # uninterrupted report runs (a drive back after a gap starts a new run)
    extra: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra


class SequenceBuilder:
    """Vectorised rolling windows over days (see module docstring)."""

    def __init__(
        self,
        spec: FeatureSpec,
        config: WindowConfig,
        *,
        healthy_fraction: float = 1.0,
        seed: int = 0,
        capacity: int = 1024,
    ) -> None:
        if not 0.0 < healthy_fraction <= 1.0:
            raise ValueError("healthy_fraction must be in (0, 1]")
        self.spec = spec
        self.config = config
        self.healthy_fraction = healthy_fraction
        self.seed = seed
        self.depth = config.window + config.horizon
        self.stats = BuilderStats()
        self._slot: dict[str, int] = {}
        self._serial: list[str | None] = []
        self._free: list[int] = []
        self._buf = np.full((0, self.depth, spec.n_features), np.nan, dtype=np.float32)
        self._last = np.zeros(0, dtype=np.int64)
        self._steps = np.zeros(0, dtype=np.int64)
        self._hash = np.zeros(0, dtype=np.uint64)
        self._dead: set[str] = set()
        self._grow(capacity)
        self._day: int | None = None

    # -- slot bookkeeping ---------------------------------------------------

    def _grow(self, capacity: int) -> None:
        old = self._buf.shape[0]
        if capacity <= old:
            return
        buf = np.full((capacity, self.depth, self.spec.n_features), np.nan, dtype=np.float32)
        buf[:old] = self._buf
        self._buf = buf
        self._last = np.concatenate([self._last, np.full(capacity - old, -(10**9), dtype=np.int64)])
        self._steps = np.concatenate([self._steps, np.zeros(capacity - old, dtype=np.int64)])
        self._hash = np.concatenate([self._hash, np.zeros(capacity - old, dtype=np.uint64)])
        self._serial.extend([None] * (capacity - old))
        self._free.extend(range(capacity - 1, old - 1, -1))

    def _slots_for(self, serials: list[str]) -> np.ndarray:
        slots = np.empty(len(serials), dtype=np.int64)
        new: list[tuple[int, str]] = []
        for i, serial in enumerate(serials):
            slot = self._slot.get(serial)
            if slot is None:
                if not self._free:
                    self._grow(max(2 * self._buf.shape[0], 1024))
                slot = self._free.pop()
                self._slot[serial] = slot
                self._serial[slot] = serial
                new.append((slot, serial))
                self.stats.runs += 1
            slots[i] = slot
        if new:
            idx = np.array([s for s, _ in new], dtype=np.int64)
            self._hash[idx] = serial_hash(s for _, s in new)
            self._steps[idx] = 0
            self._last[idx] = -(10**9)
        return slots

    def _release(self, slots: np.ndarray) -> None:
        for slot in slots.tolist():
            serial = self._serial[slot]
            if serial is not None:
                del self._slot[serial]
            self._serial[slot] = None
            self._free.append(slot)
        self._buf[slots] = np.nan
        self._steps[slots] = 0

    # -- the per-day step ---------------------------------------------------

    def add_day(self, day: dt.date, table: pa.Table) -> EmittedWindows:
        """Fold one day's rows in and return the windows that end today."""
        today = day_number(day)
        if self._day is not None and today <= self._day:
            raise ValueError(f"days must arrive in increasing order ({day} after day {self._day})")
        self._day = today
        serials_all: list[str] = table["serial_number"].to_pylist()
        failure_all = np.asarray(table["failure"].to_numpy(zero_copy_only=False), dtype=np.int8)
        x_all = self.spec.table_matrix(table)
        self.stats.rows += len(serials_all)

        # One row per serial per day; nothing after a drive's failure day.
        seen: set[str] = set()
        keep_rows: list[int] = []
        for i, serial in enumerate(serials_all):
            if serial in seen:
                self.stats.duplicates += 1
            elif serial in self._dead:
                self.stats.after_failure += 1
            else:
                seen.add(serial)
                keep_rows.append(i)
        rows = np.asarray(keep_rows, dtype=np.int64)
        serials = [serials_all[i] for i in keep_rows]
        x = x_all[rows]
        failed = failure_all[rows] == 1
        slots = self._slots_for(serials)

        # Advance each drive's buffer by its gap; a long gap restarts it.
        gap = today - self._last[slots]
        reset = gap > self.config.max_gap
        if reset.any():
            r = slots[reset]
            self._buf[r] = np.nan
            self._steps[r] = 0
        for g in range(1, self.config.max_gap + 1):
            move = slots[(~reset) & (gap == g)]
            if move.size:
                shifted = np.full_like(self._buf[move], np.nan)
                shifted[:, : self.depth - g] = self._buf[move, g:]
                self._buf[move] = shifted
        self._buf[slots[reset], -1] = x[reset]
        self._buf[slots[~reset], -1] = x[~reset]
        self._steps[slots] = np.where(reset, 1, self._steps[slots] + np.minimum(gap, self.config.max_gap))
        self._last[slots] = today

        # Emit today's windows (sampled) and, for failures, the skipped recent ones.
        parts: list[tuple[np.ndarray, int]] = []
        full = self._is_emittable(slots, 0)
        sampled = self._sampled(slots, today)
        parts.append((slots[full & (sampled | failed)], 0))
        for back in range(1, self.config.horizon + 1):
            want = failed & self._is_emittable(slots, back) & ~self._sampled(slots, today - back)
            parts.append((slots[want], back))
        out = self._collect(parts, today)

        dead = slots[failed]
        self.stats.failures += int(dead.size)
        self._dead.update(serials[i] for i in np.flatnonzero(failed))
        self._release(dead)
        # Drives silent for longer than the gap rule can never extend: free them.
        live = np.array(list(self._slot.values()), dtype=np.int64)
        stale = live[today - self._last[live] > self.config.max_gap] if live.size else live
        if stale.size:
            self._release(stale)
        self.stats.windows += len(out.serial)
        return out

    def _is_emittable(self, slots: np.ndarray, back: int) -> np.ndarray:
        steps = self._steps[slots] - back
        return (steps >= self.config.window) & ((steps - self.config.window) % self.config.stride == 0)

    def _sampled(self, slots: np.ndarray, day: int) -> np.ndarray:
        if self.healthy_fraction >= 1.0:
            return np.ones(slots.shape[0], dtype=bool)
        return keep_fraction(self._hash[slots], day, self.seed) < self.healthy_fraction

    def _collect(self, parts: list[tuple[np.ndarray, int]], today: int) -> EmittedWindows:
        s = self.config.window
        xs, serials, ends = [], [], []
        for slots, back in parts:
            if slots.size == 0:
                continue
            stop = self.depth - back
            xs.append(self._buf[slots, stop - s : stop])
            serials.extend(self._serial[i] for i in slots.tolist())  # type: ignore[misc]
            ends.append(np.full(slots.size, today - back, dtype=np.int32))
        if not xs:
            return EmittedWindows(
                np.zeros((0, s, self.spec.n_features), np.float32), [], np.zeros(0, np.int32)
            )
        return EmittedWindows(np.concatenate(xs), serials, np.concatenate(ends))
