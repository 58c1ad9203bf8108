"""Read Backblaze Drive Stats dumps day by day, whatever their size or year.

Accepted paths: a directory of daily ``YYYY-MM-DD.csv[.gz]`` files, a
quarterly zip as Backblaze publishes it (``data_Q1_2024.zip``, read in place),
a directory of such zips, or one daily file. Days are yielded in date order,
one pyarrow table at a time, projected to the columns asked for — so memory
holds one day, never the dump.

Schema drift is normal: a column a year lacks comes back all-null. Bad cells
and rows are counted per reason in :class:`ReadStats` and never stop a read.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from diskwatch.core.errors import DataError, DataNotFound
from diskwatch.core.records import BASE_COLUMNS, SMART_COLUMN

_DAY_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})\.csv(\.gz)?$")


@dataclass(frozen=True)
class DaySource:
    """One day's CSV: a plain/gzipped file, or a member of a zip archive."""

    day: dt.date
    path: Path
    member: str | None = None

    def open(self) -> IO[bytes]:
        if self.member is None:
            return pa.input_stream(str(self.path), compression="detect")  # type: ignore[return-value]
        archive = zipfile.ZipFile(self.path)
        return archive.open(self.member)

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)


@dataclass
class ReadStats:
    """What a read saw; ``invalid`` counts rejected rows/cells by reason."""

    files: int = 0
    days: int = 0
    rows_read: int = 0
    rows_kept: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    missing_columns: set[str] = field(default_factory=set)
    #: When true, dropped rows are kept as (reason, original text) in
    #: ``rejected`` so a caller (replay --dlq) can forward them; drain it.
    keep_rejected: bool = False
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "days": self.days,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "invalid": dict(sorted(self.invalid.items())),
            "missing_columns": sorted(self.missing_columns),
        }


def find_days(path: Path | str) -> list[DaySource]:
    """Every daily CSV under ``path`` (files, zips, folders of either), by date."""
    root = Path(path)
    if not root.exists():
        raise DataNotFound(f"no such file or directory: {root}")
    candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    sources: dict[dt.date, DaySource] = {}
    for file in candidates:
        if file.suffix == ".zip":
            try:
                with zipfile.ZipFile(file) as archive:
                    members = archive.namelist()
            except zipfile.BadZipFile as exc:
                raise DataError(f"{file} is not a readable zip archive: {exc}") from None
            for member in members:
                if "__MACOSX" in member:
                    continue
                day = _day_of(member)
                if day is not None:
                    _add(sources, DaySource(day, file, member))
        else:
            day = _day_of(file.name)
            if day is not None:
                _add(sources, DaySource(day, file))
    if not sources:
        raise DataError(f"no daily YYYY-MM-DD.csv files (plain, .gz or in .zip) under {root}")
    return [sources[d] for d in sorted(sources)]


def _add(sources: dict[dt.date, DaySource], source: DaySource) -> None:
    if source.day in sources:
        raise DataError(f"two files for {source.day}: {sources[source.day]} and {source}")
    sources[source.day] = source


def _day_of(name: str) -> dt.date | None:
    match = _DAY_NAME.search(name)
    if not match:
        return None
    try:
        return dt.date.fromisoformat(match.group(1))
    except ValueError:
        return None


@dataclass
class DumpFilter:
    """Row filters of the CLI: dates, model substrings and a drive cap."""

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    models: Sequence[str] = ()
    limit_drives: int | None = None
    _drives: set[str] = field(default_factory=set, repr=False)

    def wants_day(self, day: dt.date) -> bool:
        return (self.date_from is None or day >= self.date_from) and (
            self.date_to is None or day <= self.date_to
        )

    def rows_mask(self, table: pa.Table) -> np.ndarray | None:
        """Boolean mask of rows to keep, or None for all."""
        mask = None
        if self.models:
            model = pc.utf8_lower(pc.fill_null(table["model"], ""))
            hits = [pc.match_substring(model, m.lower()) for m in self.models]
            keep = hits[0]
            for hit in hits[1:]:
                keep = pc.or_(keep, hit)
            mask = np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)
        if self.limit_drives is not None:
            serials = table["serial_number"].to_pylist()
            limit_mask = np.zeros(len(serials), dtype=bool)
            for i, serial in enumerate(serials):
                if mask is not None and not mask[i]:
                    continue
                if serial in self._drives:
                    limit_mask[i] = True
                elif len(self._drives) < self.limit_drives:
                    self._drives.add(serial)
                    limit_mask[i] = True
            mask = limit_mask
        return mask


def iter_days(
    path: Path | str,
    columns: Sequence[str] | None,
    *,
    filters: DumpFilter | None = None,
    stats: ReadStats | None = None,
    on_day: Callable[[DaySource], None] | None = None,
) -> Iterator[tuple[dt.date, pa.Table]]:
    """Yield ``(day, table)`` in date order with base + requested columns.

    The table has ``date`` (date32), ``serial_number``/``model`` (string),
    ``capacity_bytes`` (int64, -1 unknown), ``failure`` (int8) and each
    requested column as float64 (null = missing or invalid). Rows without a
    serial, with a date not matching the file, or a failure flag other than
    0/1 are dropped and counted.
    """
    filters = filters or DumpFilter()
    stats = stats if stats is not None else ReadStats()
    for source in find_days(path):
        if not filters.wants_day(source.day):
            continue
        if on_day is not None:
            on_day(source)
        table = read_day(source, columns, stats)
        mask = filters.rows_mask(table)
        if mask is not None:
            table = table.filter(pa.array(mask))
        stats.rows_kept += table.num_rows
        stats.days += 1
        yield source.day, table


def read_day(source: DaySource, columns: Sequence[str] | None, stats: ReadStats) -> pa.Table:
    """Read one daily CSV, projected and cleaned (see :func:`iter_days`).

    ``columns=None`` reads every ``smart_N_raw``/``smart_N_normalized``
    column the file has (replay forwards whatever a dump carries).
    """
    stats.files += 1
    with source.open() as stream:
        data = stream.read()
    header = _header(data)
    if columns is None:
        columns = [c for c in header if SMART_COLUMN.match(c)]
    else:
        stats.missing_columns.update(c for c in columns if c not in header)
    wanted = list(dict.fromkeys([*BASE_COLUMNS, *columns]))
    present = [c for c in wanted if c in header]
    types = {c: pa.string() for c in present}
    raw = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(block_size=1 << 24),
        parse_options=pacsv.ParseOptions(invalid_row_handler=_count_bad_row(stats)),
        convert_options=pacsv.ConvertOptions(
            include_columns=present,
            column_types=types,
            strings_can_be_null=True,
            null_values=[""],
            quoted_strings_can_be_null=True,
        ),
    )
    stats.rows_read += raw.num_rows
    return _clean(raw, source.day, columns, stats)


def _header(data: bytes) -> list[str]:
    first = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    return [c.strip().strip('"') for c in first.split(",")]


def _count_bad_row(stats: ReadStats) -> Callable[[object], str]:
    def handler(row: object) -> str:
        stats.invalid["wrong_field_count"] += 1
        if stats.keep_rejected:
            stats.rejected.append(("wrong_field_count", str(getattr(row, "text", row))))
        return "skip"

    return handler


def _numeric(column: pa.ChunkedArray | pa.Array, name: str, stats: ReadStats) -> pa.Array:
    """Parse a string column to float64; bad cells become null and are counted."""
    text = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    try:
        return pc.cast(text, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = []
    bad = 0
    for cell in text.to_pylist():
        if cell is None:
            values.append(None)
            continue
        try:
            values.append(float(cell))
        except ValueError:
            values.append(None)
            bad += 1
    stats.invalid[f"non_numeric:{name}"] += bad
    return pa.array(values, type=pa.float64())


def _clean(raw: pa.Table, day: dt.date, columns: Sequence[str], stats: ReadStats) -> pa.Table:
    n = raw.num_rows
    names = set(raw.column_names)

    def text(name: str) -> pa.Array:
        if name in names:
            return raw[name].combine_chunks()
        return pa.nulls(n, pa.string())

    serial = pc.utf8_trim_whitespace(text("serial_number"))
    keep = pc.and_(pc.is_valid(serial), pc.greater(pc.utf8_length(pc.fill_null(serial, "")), 0))
    stats.invalid["missing_serial"] += n - pc.sum(pc.cast(keep, pa.int64())).as_py() if n else 0

    date_text = pc.fill_null(text("date"), "")
    date_ok = pc.equal(pc.utf8_trim_whitespace(date_text), day.isoformat())
    bad_date = pc.and_(keep, pc.invert(date_ok))
    stats.invalid["bad_date"] += pc.sum(pc.cast(bad_date, pa.int64())).as_py() or 0
    keep = pc.and_(keep, date_ok)

    failure = _numeric(text("failure"), "failure", stats)
    failure_ok = pc.or_kleene(pc.is_null(failure), pc.is_in(failure, pa.array([0.0, 1.0])))
    failure_ok = pc.fill_null(failure_ok, True)
    bad_failure = pc.and_(keep, pc.invert(failure_ok))
    stats.invalid["bad_failure"] += pc.sum(pc.cast(bad_failure, pa.int64())).as_py() or 0
    keep = pc.and_(keep, failure_ok)

    capacity = _numeric(text("capacity_bytes"), "capacity_bytes", stats)
    capacity = pc.fill_null(capacity, -1.0)

    out: dict[str, pa.Array] = {
        "date": pa.array(np.full(n, np.datetime64(day, "D"))).cast(pa.date32()),
        "serial_number": serial,
        "model": pc.utf8_trim_whitespace(pc.fill_null(text("model"), "")),
        "capacity_bytes": pc.cast(capacity, pa.int64(), safe=False),
        "failure": pc.cast(pc.fill_null(failure, 0.0), pa.int8(), safe=False),
    }
    for name in columns:
        if name in out:
            continue
        values = _numeric(text(name), name, stats)
        if name.endswith("_normalized"):
            # Normalized SMART values are integers 0..255; anything else is noise.
            bad = pc.fill_null(pc.or_(pc.greater(values, 255.0), pc.not_equal(pc.floor(values), values)), False)
            values = _null_where(values, pc.or_(bad, pc.fill_null(pc.less(values, 0.0), False)), name,
                                 "bad_normalized", stats)
        else:
            values = _null_where(values, pc.fill_null(pc.less(values, 0.0), False), name, "negative", stats)
        out[name] = values
    table = pa.table(out)
    if stats.keep_rejected and n:
        _collect_rejected(raw, keep, {"missing_serial": None, "bad_date": bad_date, "bad_failure": bad_failure}, stats)
    stats.invalid = +stats.invalid  # drop zero counts
    return table.filter(keep)


def _null_where(values: pa.Array, mask: pa.Array, name: str, reason: str, stats: ReadStats) -> pa.Array:
    count = pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
    if not count:
        return values
    stats.invalid[f"{reason}:{name}"] += count
    return pc.if_else(mask, pa.scalar(None, pa.float64()), values)


def _collect_rejected(raw: pa.Table, keep: pa.Array, masks: dict[str, pa.Array | None], stats: ReadStats) -> None:
    """Remember each dropped row as CSV-ish text with the first reason that dropped it."""
    dropped = np.flatnonzero(~np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool))
    if dropped.size == 0:
        return
    flags = {r: np.asarray(m.to_numpy(zero_copy_only=False), dtype=bool) for r, m in masks.items() if m is not None}
    rows = raw.take(pa.array(dropped)).to_pylist()
    for i, row in zip(dropped.tolist(), rows, strict=True):
        reason = next((r for r, f in flags.items() if f[i]), "missing_serial")
        stats.rejected.append((reason, ",".join("" if v is None else str(v) for v in row.values())))
