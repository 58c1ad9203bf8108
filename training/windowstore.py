"""On-disk windows for training: shards of ``.npy`` arrays plus small tables.

Layout of a store directory::

    manifest.json           spec, window config, sampling, counts, read stats
    serials.parquet         serial, model, first/last day, failure day, split
    shards/NNNNN.x.npy      [n, S, F] float32 transformed, unscaled windows
    shards/NNNNN.meta.npz   serial index and end day of each window

Shards are memory-mapped on read, so a store larger than RAM trains fine.
Labels and days-to-failure are derived from ``serials.parquet`` on open.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diskwatch.core.dumps import DumpFilter, ReadStats, iter_days
from diskwatch.core.errors import DataError, DataNotFound
from diskwatch.models.features import QUANTILE_SAMPLE_ROWS, FeatureSpec, ScalerStats
from diskwatch.models.windows import WindowConfig, day_number, from_day_number, label
from diskwatch.training.sequences import EmittedWindows, SequenceBuilder
from diskwatch.training.splits import SPLITS, assign_splits, time_mask

STORE_FORMAT = 1


class StoreWriter:
    """Append emitted windows to shards; remember every serial's history."""

    def __init__(self, root: Path, shard_size: int = 65536) -> None:
        self.root = Path(root)
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self._pending: list[EmittedWindows] = []
        self._pending_n = 0
        self._shards: list[dict[str, Any]] = []
        self._serial_idx: dict[str, int] = {}
        self.serial_info: dict[str, list[Any]] = {}  # serial -> [model, first, last, failure_day]

    def observe_day(self, table: pa.Table, day: int) -> None:
        """Track first/last report and failure day of each serial."""
        serials = table["serial_number"].to_pylist()
        models = table["model"].to_pylist()
        failures = table["failure"].to_numpy(zero_copy_only=False)
        info = self.serial_info
        for serial, model, failure in zip(serials, models, failures, strict=True):
            entry = info.get(serial)
            if entry is None:
                info[serial] = [model, day, day, day if failure == 1 else -1]
            else:  # min/max: a drive may come back in a later dump read before an earlier one
                entry[1] = min(entry[1], day)
                entry[2] = max(entry[2], day)
                if failure == 1 and entry[3] < 0:
                    entry[3] = day

    def add(self, windows: EmittedWindows) -> None:
        if not windows.serial:
            return
        self._pending.append(windows)
        self._pending_n += len(windows.serial)
        if self._pending_n >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        x = np.concatenate([w.x for w in self._pending])
        ends = np.concatenate([w.end_day for w in self._pending])
        idx = np.fromiter(
            (self._serial_idx.setdefault(s, len(self._serial_idx)) for w in self._pending for s in w.serial),
            dtype=np.int32,
            count=x.shape[0],
        )
        name = f"{len(self._shards):05d}"
        np.save(self.root / "shards" / f"{name}.x.npy", x)
        np.savez(self.root / "shards" / f"{name}.meta.npz", serial=idx, end_day=ends)
        self._shards.append({"name": name, "windows": int(x.shape[0])})
        self._pending, self._pending_n = [], 0

    def close(self, *, splits: np.ndarray, serials: list[str], manifest: dict[str, Any]) -> None:
        self._flush()
        index = np.full(len(serials), -1, dtype=np.int32)
        for i, serial in enumerate(serials):
            index[i] = self._serial_idx.get(serial, -1)
        info = [self.serial_info[s] for s in serials]
        table = pa.table(
            {
                "serial_number": serials,
                "window_index": index,
                "model": [i[0] for i in info],
                "first_day": np.array([i[1] for i in info], dtype=np.int32),
                "last_day": np.array([i[2] for i in info], dtype=np.int32),
                "failure_day": np.array([i[3] for i in info], dtype=np.int32),
                "split": list(splits),
            }
        )
        pq.write_table(table, self.root / "serials.parquet")
        manifest = {**manifest, "format": STORE_FORMAT, "shards": self._shards}
        (self.root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@dataclass
class BuildResult:
    store: Path
    manifest: dict[str, Any]


def build_store(
    data: Path | str | Sequence[Path | str],
    out: Path | str,
    *,
    spec: FeatureSpec | None = None,
    config: WindowConfig | None = None,
    filters: DumpFilter | None = None,
    healthy_fraction: float = 1.0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    shard_size: int = 65536,
    on_day: Callable[[dt.date, int], None] | None = None,
) -> BuildResult:
    """Read dumps once and write a window store (see module docstring).

    ``data`` is one dump or several: the first is the *primary* one, whose
    drives are split into train/validation/test exactly as if it were read
    alone; drives seen only in the others (extra samples, e.g. another period
    or fleet) all go to the train split, so evaluation on the primary dump
    stays on the same unseen drives. Each dump is read with its own window
    builder (no window spans two dumps); a drive in several dumps keeps the
    primary dump's split.
    """
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    if not paths:
        raise DataError("no dump given")
    spec = spec or FeatureSpec()
    config = config or WindowConfig()
    stats = ReadStats()
    writer = StoreWriter(Path(out), shard_size=shard_size)
    ranges: list[tuple[dt.date, dt.date]] = []
    primary: set[str] = set()
    builders = []
    for k, path in enumerate(paths):
        builder = SequenceBuilder(spec, config, healthy_fraction=healthy_fraction, seed=seed)
        span = _read_dump(path, spec, builder, writer, filters, stats, on_day)
        if span is None:
            raise DataError(f"no rows read from {path} (check the path and the --from/--to/--models filters)")
        ranges.append(span)
        builders.append(builder)
        if k == 0:
            primary = set(writer.serial_info)
    serials = sorted(writer.serial_info)
    failed = np.array([writer.serial_info[s][3] >= 0 for s in serials], dtype=bool)
    splits = _splits(serials, failed, primary, fractions, seed)
    first, last = min(r[0] for r in ranges), max(r[1] for r in ranges)
    manifest = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "data": str(paths[0]),
        "extra_data": [{"data": str(p), "date_from": r[0].isoformat(), "date_to": r[1].isoformat()}
                       for p, r in zip(paths[1:], ranges[1:], strict=True)],
        "date_from": first.isoformat(),
        "date_to": last.isoformat(),
        "feature_spec": spec.model_dump(mode="json"),
        "window": config.model_dump(mode="json"),
        "healthy_fraction": healthy_fraction,
        "split_fractions": list(fractions),
        "seed": seed,
        "read": stats.to_dict(),
        "builder": _sum_stats([b.stats.to_dict() for b in builders]),
        "drives": len(serials),
        "failed_drives": int(failed.sum()),
        "split_drives": {s: int((splits == s).sum()) for s in SPLITS},
        "split_failed": {s: int(((splits == s) & failed).sum()) for s in SPLITS},
    }
    writer.close(splits=splits, serials=serials, manifest=manifest)
    return BuildResult(Path(out), manifest)


def _read_dump(
    path: Path | str, spec: FeatureSpec, builder: SequenceBuilder, writer: StoreWriter,
    filters: DumpFilter | None, stats: ReadStats, on_day: Callable[[dt.date, int], None] | None,
) -> tuple[dt.date, dt.date] | None:
    """Feed one dump's days through ``builder`` into ``writer``; its first and last day (None: no rows)."""
    first: dt.date | None = None
    last: dt.date | None = None
    for day, table in iter_days(path, spec.columns(), filters=filters, stats=stats):
        first = first or day
        last = day
        writer.observe_day(table, day_number(day))
        writer.add(builder.add_day(day, table))
        if on_day is not None:
            on_day(day, table.num_rows)
    return None if first is None or last is None else (first, last)


def _splits(
    serials: list[str], failed: np.ndarray, primary: set[str], fractions: tuple[float, float, float], seed: int
) -> np.ndarray:
    """The primary dump's drives split as if read alone; drives only in extra dumps train."""
    in_primary = np.array([s in primary for s in serials], dtype=bool)
    out = np.full(len(serials), "train", dtype=object)
    if in_primary.any():
        chosen = [s for s, p in zip(serials, in_primary, strict=True) if p]
        out[in_primary] = assign_splits(chosen, failed[in_primary], fractions=fractions, seed=seed)
    return out.astype(str)


def _sum_stats(parts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


class WindowStore:
    """Read side: window selection by split, labels, memory-mapped loading."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.exists():
            raise DataNotFound(f"{self.root} is not a window store (no manifest.json)")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != STORE_FORMAT:
            raise DataError(f"unsupported window store format {self.manifest.get('format')}")
        self.spec = FeatureSpec.model_validate(self.manifest["feature_spec"])
        self.config = WindowConfig.model_validate(self.manifest["window"])
        serials = pq.read_table(self.root / "serials.parquet").to_pydict()
        order = np.argsort(np.asarray(serials["window_index"]))
        has = np.asarray(serials["window_index"])[order] >= 0
        keep = order[has]
        self.serials = [serials["serial_number"][i] for i in keep]
        self.models = [serials["model"][i] for i in keep]
        self.failure_day = np.asarray(serials["failure_day"], dtype=np.int64)[keep]
        self.split_of = np.asarray(serials["split"], dtype=object)[keep]
        self._shards: list[np.ndarray] = []
        serial_parts, end_parts, shard_parts, row_parts = [], [], [], []
        for k, shard in enumerate(self.manifest["shards"]):
            meta = np.load(self.root / "shards" / f"{shard['name']}.meta.npz")
            n = meta["serial"].shape[0]
            serial_parts.append(meta["serial"])
            end_parts.append(meta["end_day"])
            shard_parts.append(np.full(n, k, dtype=np.int32))
            row_parts.append(np.arange(n, dtype=np.int64))
        cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
        self.window_serial = cat(serial_parts, np.int32)
        self.end_day = cat(end_parts, np.int32)
        self.shard = cat(shard_parts, np.int32)
        self.row = cat(row_parts, np.int64)
        fail = self.failure_day[self.window_serial] if self.window_serial.size else np.zeros(0)
        self.days_to_failure = np.where(fail >= 0, fail - self.end_day, np.nan)
        self.labels = label(self.days_to_failure, self.config.horizon)

    def __len__(self) -> int:
        return int(self.end_day.shape[0])

    def select(self, split: str | None = None, *, time_cutoff: dt.date | None = None) -> np.ndarray:
        """Indices of windows in ``split`` (all when None), optionally time-cut."""
        mask = np.ones(len(self), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}")
            mask &= self.split_of[self.window_serial] == split
            if time_cutoff is not None:
                mask &= time_mask(self.end_day, split, day_number(time_cutoff), self.config.horizon)
        return np.flatnonzero(mask)

    def load(self, indices: np.ndarray) -> np.ndarray:
        """Raw windows ``[n, S, F]`` (transformed, unscaled) for ``indices``."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((indices.size, self.config.window, self.spec.n_features), dtype=np.float32)
        if indices.size == 0:
            return out
        shards = self.shard[indices]
        for k in np.unique(shards):
            pick = np.flatnonzero(shards == k)
            out[pick] = self._shard(int(k))[self.row[indices[pick]]]
        return out

    def _shard(self, k: int) -> np.ndarray:
        while len(self._shards) <= k:
            name = self.manifest["shards"][len(self._shards)]["name"]
            self._shards.append(np.load(self.root / "shards" / f"{name}.x.npy", mmap_mode="r"))
        return self._shards[k]

    def fit_scaler(self, indices: np.ndarray, chunk: int = 65536, *, spec: FeatureSpec | None = None) -> FeatureSpec:
        """Fit min/max/fill (and quantiles) on the given (training) windows; ``spec``: the store's, with other options."""
        target = spec or self.spec
        rows = max(1, indices.size * self.config.window)
        rate = min(1.0, QUANTILE_SAMPLE_ROWS / rows) if target.scaling == "quantile" else 0.0
        stats = ScalerStats(self.spec.n_features, sample_rate=rate)
        for start in range(0, indices.size, chunk):
            windows = self.load(indices[start : start + chunk])
            stats.update(windows.reshape(-1, self.spec.n_features))
        return target.fitted(stats)

    def iter_batches(
        self, indices: np.ndarray, spec: FeatureSpec, batch_size: int = 1024
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Finalised (scaled) windows with their labels, in order."""
        for start in range(0, indices.size, batch_size):
            part = indices[start : start + batch_size]
            yield spec.finalize(self.load(part)), self.labels[part]

    def day(self, number: int) -> dt.date:
        return from_day_number(number)
