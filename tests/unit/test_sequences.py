"""Dump reading, window building, labels, gaps, drift and splits."""

from __future__ import annotations

import datetime as dt
import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskwatch.core.dumps import DumpFilter, ReadStats, find_days, iter_days
from diskwatch.models.features import FeatureSpec
from diskwatch.models.windows import WindowConfig, assemble_window, day_number, label
from diskwatch.training.sequences import SequenceBuilder
from diskwatch.training.splits import assign_splits, time_mask
from diskwatch.training.windowstore import WindowStore, build_store

D0 = dt.date(2024, 1, 1)
SPEC = FeatureSpec.from_names(["smart_5_raw", "smart_9_raw", "smart_187_raw"])
HEADER_2024 = (
    "date,serial_number,model,capacity_bytes,failure,datacenter,smart_9_raw,smart_5_raw,smart_187_raw"
)


def write_days(root: Path, rows_by_day: dict[dt.date, list[str]], header: str = HEADER_2024) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for day, rows in rows_by_day.items():
        (root / f"{day.isoformat()}.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def drive_rows(serial: str, days: list[int], fail_on: int | None = None, realloc: int = 0) -> dict:
    out: dict[dt.date, list[str]] = {}
    for d in days:
        day = D0 + dt.timedelta(days=d)
        failure = 1 if fail_on == d else 0
        out.setdefault(day, []).append(
            f"{day},{serial},ST4000DM000,4000787030016,{failure},phx1,{1000 + 24 * d},{realloc * d},0"
        )
    return out


def merge(*parts: dict) -> dict:
    out: dict[dt.date, list[str]] = {}
    for part in parts:
        for day, rows in part.items():
            out.setdefault(day, []).extend(rows)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------
# labels and gaps
# ---------------------------------------------------------------------------


def test_label_rule_counts_the_failure_day() -> None:
    assert label(np.array([-1, 0, 1, 7, 8, np.nan]), 7).tolist() == [0, 1, 1, 1, 0, 0]


def test_labels_at_the_failure_boundary(tmp_path: Path) -> None:
    cfg = WindowConfig(window=3, horizon=2, max_gap=1)
    data = write_days(tmp_path / "d", merge(drive_rows("FAIL", list(range(10)), fail_on=9),
                                            drive_rows("OK", list(range(10)))))
    store = WindowStore(build_store(data, tmp_path / "s", spec=SPEC, config=cfg).store)
    fail = store.serials.index("FAIL")
    mine = np.flatnonzero(store.window_serial == fail)
    ends = store.end_day[mine] - day_number(D0)
    # Windows end on days 2..9; failure on day 9 → dtf 0..2 are positive.
    assert sorted(ends.tolist()) == list(range(2, 10))
    by_end = dict(zip(ends.tolist(), store.labels[mine].tolist(), strict=True))
    assert [by_end[d] for d in range(2, 10)] == [0, 0, 0, 0, 0, 1, 1, 1]
    ok = np.flatnonzero(store.window_serial == store.serials.index("OK"))
    assert store.labels[ok].sum() == 0 and np.isnan(store.days_to_failure[ok]).all()


def test_rows_after_failure_are_dropped(tmp_path: Path) -> None:
    cfg = WindowConfig(window=2, horizon=1, max_gap=1)
    data = write_days(tmp_path / "d", drive_rows("Z", list(range(6)), fail_on=3))
    result = build_store(data, tmp_path / "s", spec=SPEC, config=cfg)
    assert result.manifest["builder"]["after_failure"] == 2
    store = WindowStore(result.store)
    assert store.end_day.max() == day_number(D0) + 3


def test_a_short_gap_is_bridged_and_a_long_gap_restarts(tmp_path: Path) -> None:
    cfg = WindowConfig(window=4, horizon=1, max_gap=2)
    # Day 4 missing (gap 2: bridged); days 8 and 9 missing (gap 3: restart).
    days = [0, 1, 2, 3, 5, 6, 7, 10, 11, 12, 13, 14]
    data = write_days(tmp_path / "d", drive_rows("G", days, realloc=1))
    store = WindowStore(build_store(data, tmp_path / "s", spec=SPEC, config=cfg).store)
    ends = sorted((store.end_day - day_number(D0)).tolist())
    assert ends == [3, 5, 6, 7, 13, 14]
    # The bridged day is a NaN step, forward-filled by finalize.
    i = int(np.flatnonzero(store.end_day - day_number(D0) == 5)[0])
    raw = store.load(np.array([i]))[0]
    assert np.isnan(raw[2]).all() and not np.isnan(raw[3]).any()
    fitted = store.fit_scaler(store.select())
    x = fitted.finalize(raw[None])[0]
    assert np.allclose(x[2], x[1])


@settings(max_examples=60, deadline=None)
@given(
    present=st.lists(st.booleans(), min_size=1, max_size=30),
    window=st.integers(2, 6),
    gap=st.integers(1, 3),
)
def test_builder_matches_the_streams_assemble_window(present: list[bool], window: int, gap: int) -> None:
    """The vectorised training builder and the stream's per-serial rule agree."""
    if gap >= window:
        gap = window - 1
    cfg = WindowConfig(window=window, horizon=2, max_gap=gap)
    builder = SequenceBuilder(SPEC, cfg)
    import pyarrow as pa

    days: list[dt.date] = []
    vectors: list[np.ndarray] = []
    for d, here in enumerate(present):
        day = D0 + dt.timedelta(days=d)
        rows = {"serial_number": [], "failure": [], "smart_5_raw": [], "smart_9_raw": [], "smart_187_raw": []}
        if here:
            rows["serial_number"].append("S")
            rows["failure"].append(0)
            rows["smart_5_raw"].append(float(d))
            rows["smart_9_raw"].append(24.0 * d)
            rows["smart_187_raw"].append(None)
            days.append(day)
        table = pa.table(
            {k: pa.array(v, type=pa.string() if k == "serial_number" else
                         (pa.int8() if k == "failure" else pa.float64())) for k, v in rows.items()}
        )
        emitted = builder.add_day(day, table)
        if here:
            vectors.append(SPEC.table_matrix(table)[0])
        expected = assemble_window(days, np.array(vectors), day, cfg) if here else None
        if expected is None:
            assert len(emitted.serial) == 0
        else:
            assert len(emitted.serial) == 1
            np.testing.assert_array_equal(emitted.x[0], expected)


# ---------------------------------------------------------------------------
# reading: drift, bad rows, containers
# ---------------------------------------------------------------------------


def test_schema_drift_across_days(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "2024-01-01.csv").write_text(
        "date,serial_number,model,capacity_bytes,failure,smart_5_raw,smart_9_raw\n"
        "2024-01-01,A,M,100,0,1,10\n"
    )
    # Columns reordered, one added, smart_5 gone, empty strings.
    (root / "2024-01-02.csv").write_text(
        "serial_number,date,failure,smart_9_raw,model,capacity_bytes,smart_187_raw,vault_id\n"
        "A,2024-01-02,0,34,M,100,,v1\n"
    )
    stats = ReadStats()
    days = list(iter_days(root, SPEC.columns(), stats=stats))
    assert [d for d, _ in days] == [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]
    m1, m2 = SPEC.table_matrix(days[0][1]), SPEC.table_matrix(days[1][1])
    assert m1[0, 0] == pytest.approx(np.log1p(1)) and np.isnan(m1[0, 2])
    assert np.isnan(m2[0, 0]) and m2[0, 1] == 34 and np.isnan(m2[0, 2])
    assert stats.missing_columns == {"smart_187_raw", "smart_5_raw"}


def test_malformed_rows_are_counted_not_fatal(tmp_path: Path) -> None:
    root = write_days(
        tmp_path / "d",
        {
            D0: [
                f"{D0},A,M,1,0,x,1,2,0",
                f"{D0},,M,1,0,x,1,2,0",  # missing serial
                f"{D0},B,M,1,7,x,1,2,0",  # failure not 0/1
                "2023-12-31,C,M,1,0,x,1,2,0",  # date does not match the file
                f"{D0},D,M,1,0,x,oops,2,0",  # non-numeric cell → null
                f"{D0},E,M,1,0,x,5,-3,0",  # negative counter → null
                f"{D0},F,M,1,0",  # wrong field count
            ]
        },
    )
    stats = ReadStats()
    [(_, table)] = list(iter_days(root, SPEC.columns(), stats=stats))
    assert table["serial_number"].to_pylist() == ["A", "D", "E"]
    assert stats.invalid == {
        "missing_serial": 1,
        "bad_failure": 1,
        "bad_date": 1,
        "non_numeric:smart_9_raw": 1,
        "negative:smart_5_raw": 1,
        "wrong_field_count": 1,
    }
    m = SPEC.table_matrix(table)
    assert np.isnan(m[1, 1]) and np.isnan(m[2, 0])


def test_zip_gz_and_folders_read_the_same(tmp_path: Path) -> None:
    rows = merge(drive_rows("A", [0, 1, 2]), drive_rows("B", [1, 2]))
    plain = write_days(tmp_path / "plain", rows)
    gz = tmp_path / "gz"
    gz.mkdir()
    for f in plain.iterdir():
        (gz / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    zipped = tmp_path / "zips"
    zipped.mkdir()
    with zipfile.ZipFile(zipped / "data_Q1_2024.zip", "w") as z:
        for f in sorted(plain.iterdir()):
            z.write(f, f"data_Q1_2024/{f.name}")
            z.writestr(f"__MACOSX/data_Q1_2024/._{f.name}", b"junk")

    def read(path: Path) -> list:
        return [(d, t["serial_number"].to_pylist()) for d, t in iter_days(path, SPEC.columns())]

    assert read(plain) == read(gz) == read(zipped) == read(zipped / "data_Q1_2024.zip")
    assert len(find_days(zipped)) == 3


def test_filters_dates_models_and_drive_limit(tmp_path: Path) -> None:
    rows = merge(drive_rows("A", [0, 1, 2]), drive_rows("B", [0, 1, 2]), drive_rows("C", [0, 1, 2]))
    root = write_days(tmp_path / "d", rows)
    f = DumpFilter(date_from=D0 + dt.timedelta(days=1), limit_drives=2)
    got = [(d, t["serial_number"].to_pylist()) for d, t in iter_days(root, SPEC.columns(), filters=f)]
    assert [d for d, _ in got] == [D0 + dt.timedelta(days=1), D0 + dt.timedelta(days=2)]
    assert all(s == ["A", "B"] for _, s in got)
    f = DumpFilter(models=["dm000"])
    assert sum(t.num_rows for _, t in iter_days(root, SPEC.columns(), filters=f)) == 9
    f = DumpFilter(models=["HGST"])
    assert sum(t.num_rows for _, t in iter_days(root, SPEC.columns(), filters=f)) == 0


def test_missing_path_and_empty_folder_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        find_days(tmp_path / "nope")
    with pytest.raises(ValueError, match="no daily"):
        find_days(tmp_path)


# ---------------------------------------------------------------------------
# splits and sampling
# ---------------------------------------------------------------------------


def test_splits_are_serial_disjoint_and_stratified() -> None:
    serials = [f"S{i:05d}" for i in range(5000)]
    failed = np.zeros(5000, dtype=bool)
    failed[::500] = True  # 10 failures
    splits = assign_splits(serials, failed, seed=3)
    assert len(splits) == len(serials)  # one split per serial: disjoint by construction
    for name in ("train", "val", "test"):
        assert failed[splits == name].sum() >= 1
    share = (splits == "train").mean()
    assert 0.65 < share < 0.75
    assert (assign_splits(serials, failed, seed=3) == splits).all()
    assert (assign_splits(serials, failed, seed=4) != splits).any()


def test_store_windows_never_cross_splits(tmp_path: Path) -> None:
    parts = [drive_rows(f"D{i}", list(range(12)), fail_on=11 if i % 4 == 0 else None) for i in range(40)]
    data = write_days(tmp_path / "d", merge(*parts))
    store = WindowStore(build_store(data, tmp_path / "s", spec=SPEC, config=WindowConfig(window=3)).store)
    seen: dict[int, set[str]] = {}
    for name in ("train", "val", "test"):
        for serial in store.window_serial[store.select(name)]:
            seen.setdefault(int(serial), set()).add(name)
    assert all(len(s) == 1 for s in seen.values())
    assert sum(len(store.select(n)) for n in ("train", "val", "test")) == len(store)


def test_undersampling_keeps_every_positive(tmp_path: Path) -> None:
    parts = [drive_rows(f"D{i}", list(range(20)), fail_on=19 if i % 5 == 0 else None) for i in range(50)]
    data = write_days(tmp_path / "d", merge(*parts))
    cfg = WindowConfig(window=4, horizon=3)
    full = WindowStore(build_store(data, tmp_path / "full", spec=SPEC, config=cfg).store)
    some = WindowStore(build_store(data, tmp_path / "some", spec=SPEC, config=cfg, healthy_fraction=0.1).store)
    assert some.labels.sum() == full.labels.sum() == 10 * 4
    assert len(some) < 0.3 * len(full)


def test_extra_dumps_train_and_leave_the_primary_split_alone(tmp_path: Path) -> None:
    cfg = WindowConfig(window=3, horizon=2)
    # primary: 40 drives over days 400..411 (one in four fails); extra: an earlier period, 20 other drives
    # and D1 (also in the primary), read *after* the primary
    primary = write_days(tmp_path / "p", merge(*(
        drive_rows(f"D{i}", list(range(400, 412)), fail_on=411 if i % 4 == 0 else None) for i in range(40))))
    extra = write_days(tmp_path / "e", merge(*(
        drive_rows(f"X{i}", list(range(10)), fail_on=9 if i % 5 == 0 else None) for i in range(20)),
        drive_rows("D1", list(range(10)))))
    alone = WindowStore(build_store(primary, tmp_path / "s1", spec=SPEC, config=cfg).store)
    both_result = build_store([primary, extra], tmp_path / "s2", spec=SPEC, config=cfg)
    both = WindowStore(both_result.store)
    split_alone = dict(zip(alone.serials, alone.split_of, strict=True))
    split_both = dict(zip(both.serials, both.split_of, strict=True))
    assert {s: split_both[s] for s in split_alone} == split_alone  # same test drives as the primary alone
    assert {split_both[f"X{i}"] for i in range(20)} == {"train"}
    per_failure = alone.labels.sum() // 10  # the primary has 10 failures
    assert both.labels.sum() == alone.labels.sum() + 4 * per_failure  # and the extra dump 4 more
    # no window spans the two dumps: D1 has 8 windows in the extra period and 10 in the primary, none across
    d1 = both.serials.index("D1")
    ends = np.sort(both.end_day[both.window_serial == d1])
    assert ends.size == 8 + 10 and np.diff(ends).max() > 300
    first_day = day_number(D0)
    assert both_result.manifest["date_from"] == D0.isoformat()
    assert both_result.manifest["extra_data"][0]["date_to"] == (D0 + dt.timedelta(days=9)).isoformat()
    assert not alone.manifest["extra_data"]
    import pyarrow.parquet as pq

    info = pq.read_table(both.root / "serials.parquet").to_pandas().set_index("serial_number")
    assert info.loc["D1", "first_day"] == first_day and info.loc["D1", "last_day"] == first_day + 411


def test_time_split_leaves_a_horizon_gap() -> None:
    ends = np.arange(100, 120)
    train = time_mask(ends, "train", cutoff_day=110, horizon=3)
    test = time_mask(ends, "test", cutoff_day=110, horizon=3)
    assert ends[train].max() == 106 and ends[test].min() == 110


# ---------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------


@pytest.mark.real_data
def test_real_backblaze_sample_builds(backblaze_dir: Path, tmp_path: Path) -> None:
    result = build_store(backblaze_dir / "daily_2013", tmp_path / "s", healthy_fraction=0.05, seed=1)
    m = result.manifest
    assert m["read"]["rows_kept"] == 472_785 and m["read"]["invalid"] == {}
    assert m["failed_drives"] == 57
    assert all(m["split_failed"][s] >= 1 for s in ("train", "val", "test"))
    store = WindowStore(result.store)
    assert store.labels.sum() > 100
    spec = store.fit_scaler(store.select("train"))
    x = spec.finalize(store.load(store.select("test")[:64]))
    assert x.shape == (64, 14, spec.n_features) and np.isfinite(x).all()
