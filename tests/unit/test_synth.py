"""The seeded fleet simulator: layout, determinism and the behaviour the models rely on."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diskwatch.training.synth import (
    COLUMNS,
    META_COLUMNS,
    SMART_IDS,
    FleetConfig,
    simulate,
    write_fleet,
)

# Small but failure-rich: 300 drives x 40 days, AFRs boosted so ~15 drives fail.
SMALL = FleetConfig(drives=300, days=40, start=dt.date(2024, 1, 1), seed=11, failure_boost=40.0)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_fleet(SMALL, out, progress=False)
    return out


@pytest.fixture(scope="module")
def truth(fleet_dir: Path) -> dict:
    return json.loads((fleet_dir / "fleet.json").read_text())


@pytest.fixture(scope="module")
def rows(fleet_dir: Path) -> pd.DataFrame:
    frames = [
        pd.read_csv(p, dtype={"serial_number": str, "model": str, "datacenter": str})
        for p in sorted(fleet_dir.glob("*.csv"))
    ]
    df = pd.concat(frames, ignore_index=True)
    df["date"] = pd.to_datetime(df["date"]).dt.date
    return df.sort_values(["serial_number", "date"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- determinism


def test_same_seed_is_byte_identical(fleet_dir: Path, tmp_path: Path) -> None:
    write_fleet(SMALL, tmp_path, progress=False)
    assert _digests(tmp_path) == _digests(fleet_dir)


def test_different_seed_differs(fleet_dir: Path, tmp_path: Path) -> None:
    config = FleetConfig(drives=SMALL.drives, days=5, seed=SMALL.seed + 1, failure_boost=40.0)
    write_fleet(config, tmp_path, progress=False)
    first = (tmp_path / "2024-01-01.csv").read_bytes()
    assert first != (fleet_dir / "2024-01-01.csv").read_bytes()


def test_gzip_output_is_deterministic_and_matches_plain(tmp_path: Path) -> None:
    config = FleetConfig(drives=50, days=3, seed=3)
    write_fleet(config, tmp_path / "a", compress=True, progress=False)
    write_fleet(config, tmp_path / "b", compress=True, progress=False)
    write_fleet(config, tmp_path / "plain", progress=False)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    for gz in sorted((tmp_path / "a").glob("*.csv.gz")):
        plain = tmp_path / "plain" / gz.name.removesuffix(".gz")
        assert gzip.decompress(gz.read_bytes()) == plain.read_bytes()


def test_simulate_yields_the_written_rows(fleet_dir: Path) -> None:
    for date, table in itertools.islice(simulate(SMALL), 3):
        assert table.column_names == list(COLUMNS)
        text = (fleet_dir / f"{date.isoformat()}.csv").read_text()
        assert table.num_rows == text.count("\n") - 1


def test_rerun_into_a_previous_output_replaces_stale_days(tmp_path: Path) -> None:
    write_fleet(FleetConfig(drives=20, days=5), tmp_path, progress=False)
    summary = write_fleet(FleetConfig(drives=20, days=3), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == [p.name for p in summary.files]


def test_refuses_a_folder_with_foreign_daily_files(tmp_path: Path) -> None:
    (tmp_path / "2013-04-10.csv").write_text("date\n")
    with pytest.raises(FileExistsError):
        write_fleet(FleetConfig(drives=5, days=2), tmp_path, progress=False)


# --------------------------------------------------------------------------- layout


def test_header_is_the_q1_2024_layout(fleet_dir: Path) -> None:
    assert COLUMNS[: len(META_COLUMNS)] == META_COLUMNS
    assert len(COLUMNS) == len(META_COLUMNS) + 2 * len(SMART_IDS)
    assert COLUMNS[11:13] == ("smart_1_normalized", "smart_1_raw")
    assert COLUMNS[-1] == "smart_255_raw"
    for path in sorted(fleet_dir.glob("*.csv")):
        data = path.read_bytes()
        assert b"\r" not in data and b'"' not in data
        lines = data.decode().splitlines()
        assert lines[0] == ",".join(COLUMNS)
        assert {line.count(",") for line in lines} == {len(COLUMNS) - 1}
        assert all(line.startswith(path.name[:10] + ",") for line in lines[1:])
        assert ".0," not in data.decode()  # integers are written as integers


def test_one_file_per_day_in_order(fleet_dir: Path) -> None:
    names = sorted(p.name for p in fleet_dir.glob("*.csv"))
    expected = [f"{SMALL.start + dt.timedelta(days=d)}.csv" for d in range(SMALL.days)]
    assert names == expected
    assert (fleet_dir / "fleet.json").exists()


def test_serials_unique_per_day(rows: pd.DataFrame) -> None:
    assert not rows.duplicated(["date", "serial_number"]).any()
    assert rows.groupby("serial_number")["model"].nunique().max() == 1


def test_several_models_and_capacities(rows: pd.DataFrame) -> None:
    per_model = rows.groupby("model")["capacity_bytes"].unique()
    assert len(per_model) >= 5
    assert all(len(caps) == 1 for caps in per_model)
    assert rows["capacity_bytes"].nunique() >= 4
    seagate = rows[rows["model"].str.startswith("ST")]
    hgst = rows[rows["model"].str.startswith("HGST")]
    assert seagate["smart_187_raw"].notna().mean() > 0.99
    assert hgst["smart_187_raw"].isna().all() and hgst["smart_188_raw"].isna().all()
    assert (seagate["smart_1_raw"] > 1_000_000).mean() > 0.9  # Seagate's big noisy read error rate
    assert (hgst["smart_1_raw"].dropna() == 0).all()
    assert set(rows["datacenter"]) <= {"sac0", "sac2", "phx1", "iad1", "ams5"}


def test_normalized_values_are_plausible(rows: pd.DataFrame) -> None:
    norm = rows[[c for c in rows.columns if c.endswith("_normalized")]]
    assert ((norm.fillna(100) >= 1) & (norm.fillna(100) <= 253)).all().all()
    seagate = rows[rows["model"].str.startswith("ST")].dropna(
        subset=["smart_194_raw", "smart_194_normalized"]
    )
    assert (seagate["smart_194_normalized"] == seagate["smart_194_raw"]).all()
    temps = rows["smart_194_raw"].dropna()
    assert 20 <= temps.median() <= 40 and temps.min() >= 14 and temps.max() <= 60


# --------------------------------------------------------------------------- behaviour


def test_power_on_hours_rise_24_per_day(rows: pd.DataFrame) -> None:
    df = rows.dropna(subset=["smart_9_raw"])
    same = df["serial_number"].eq(df["serial_number"].shift())
    gap = (pd.to_datetime(df["date"]) - pd.to_datetime(df["date"].shift())).dt.days
    step = df["smart_9_raw"] - df["smart_9_raw"].shift()
    consecutive = same & gap.eq(1)
    assert consecutive.sum() > 5000
    assert (step[consecutive] == 24).all()
    assert (step[same & gap.gt(1)] == 24 * gap[same & gap.gt(1)]).all()


def test_failure_row_is_the_last_row(rows: pd.DataFrame, truth: dict) -> None:
    failed = rows[rows["failure"] == 1]
    assert set(failed["serial_number"]) == set(truth["failures"])
    assert failed["serial_number"].is_unique
    last = rows.groupby("serial_number").tail(1).set_index("serial_number")
    for serial, info in truth["failures"].items():
        assert last.loc[serial, "failure"] == 1
        assert last.loc[serial, "date"].isoformat() == info["failure_date"]


def test_failures_with_and_without_precursors(truth: dict) -> None:
    counts = truth["counts"]
    assert counts["failures"] >= 8
    assert counts["failures_with_precursor"] >= 3
    assert counts["failures_silent"] >= 1
    for info in truth["failures"].values():
        if info["precursor"]:
            assert 5 in info["precursor_attributes"] or 197 in info["precursor_attributes"]
            assert 1 <= info["precursor_days"] <= SMALL.precursor_days[1]
        else:
            assert info["precursor_start"] is None


def test_precursor_counters_rise_before_failure(rows: pd.DataFrame, truth: dict) -> None:
    by_serial = dict(tuple(rows.groupby("serial_number")))
    for serial, info in truth["failures"].items():
        drive = by_serial[serial]
        errors = drive["smart_5_raw"].fillna(0) + drive["smart_197_raw"].fillna(0)
        start = dt.date.fromisoformat(info["precursor_start"]) if info["precursor"] else None
        if start is None:  # silent: whatever it had, it does not climb
            assert errors.max() == errors.min() or errors.iloc[-1] <= errors.iloc[0]
            continue
        before = errors[drive["date"] < start]
        assert errors.iloc[-1] > (before.max() if len(before) else 0)
        if len(before):
            assert before.nunique() == 1  # flat (benign constant or zero) until the precursor
        assert errors.is_monotonic_increasing


def test_healthy_drives_mostly_zero(rows: pd.DataFrame, truth: dict) -> None:
    healthy = rows[~rows["serial_number"].isin(truth["failures"])]
    last = healthy.groupby("serial_number").tail(1)
    flagged = (last["smart_5_raw"].fillna(0) > 0) | (last["smart_197_raw"].fillna(0) > 0)
    assert 0 < flagged.mean() < 0.08  # a few benign non-zero counters, no more
    assert (last[["smart_187_raw", "smart_188_raw", "smart_198_raw"]].fillna(0) == 0).all().all()
    # benign counts are constant: no healthy drive's counter moves
    assert (healthy.groupby("serial_number")["smart_5_raw"].nunique() <= 1).all()


def test_missing_days_and_empty_fields(rows: pd.DataFrame) -> None:
    span = rows.groupby("serial_number")["date"].agg(["min", "max", "count"])
    expected = (pd.to_datetime(span["max"]) - pd.to_datetime(span["min"])).dt.days + 1
    assert (expected > span["count"]).sum() >= 3  # some drives skipped a day
    hgst_power_on = rows.loc[rows["model"].str.startswith("HGST"), "smart_9_raw"]
    seagate_temps = rows.loc[rows["model"].str.startswith("ST"), "smart_194_raw"]
    reported = rows[[c for c in rows.columns if c.startswith("smart_")]]
    blanks = sum(int(reported[c].isna().sum()) for c in reported.columns if reported[c].notna().mean() > 0.5)
    assert blanks > 0
    assert hgst_power_on.notna().mean() > 0.99 and seagate_temps.notna().mean() > 0.99


def test_churn_joins_and_retirements(rows: pd.DataFrame, truth: dict) -> None:
    first = rows.groupby("serial_number")["date"].min()
    last = rows.groupby("serial_number").tail(1).set_index("serial_number")
    assert (first > SMALL.start).sum() >= 5  # joiners
    assert truth["counts"]["joined"] >= 5
    joiners = rows[rows["serial_number"].isin(first[first > SMALL.start].index)]
    assert joiners.groupby("serial_number")["smart_9_raw"].min().max() < 1000  # new drives
    retired = truth["retired"]
    assert retired
    for serial, last_date in retired.items():
        if serial in last.index:
            assert last.loc[serial, "failure"] == 0
            assert last.loc[serial, "date"] <= dt.date.fromisoformat(last_date)
    assert sum(truth["models"][m]["drives"] for m in truth["models"]) == SMALL.drives


def test_fleet_json_counts_match_files(fleet_dir: Path, rows: pd.DataFrame, truth: dict) -> None:
    assert truth["counts"]["rows"] == len(rows)
    assert truth["config"]["seed"] == SMALL.seed
    assert "SIMULATED" in truth["generator"]


def test_reader_accepts_the_output(fleet_dir: Path) -> None:
    dumps = pytest.importorskip("diskwatch.core.dumps")
    stats = dumps.ReadStats()
    days = list(dumps.iter_days(fleet_dir, ["smart_5_raw", "smart_9_raw"], stats=stats))
    assert len(days) == SMALL.days
    assert stats.rows_read == stats.rows_kept and not stats.invalid


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        FleetConfig(drives=0)
    with pytest.raises(ValueError):
        FleetConfig(missing_day_prob=1.5)
    with pytest.raises(ValueError):
        FleetConfig(precursor_days=(10, 3))


def test_default_boost_gives_tens_of_failures() -> None:
    """Document the default: 2000 drives x 90 days, default seed → some tens of failures."""
    from diskwatch.training.synth import plan_fleet

    plan = plan_fleet(FleetConfig(drives=2000, days=90))
    failures = int((plan.fail_day >= 0).sum())
    assert 15 <= failures <= 60
    assert np.all(plan.fail_day[plan.fail_day >= 0] < 90)
