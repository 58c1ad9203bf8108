"""train → bundle → evaluate end to end on a small simulated fleet (CLI)."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diskwatch.cli import app
from diskwatch.core.dumps import iter_days
from diskwatch.core.records import TelemetryRecord
from diskwatch.models.bundle import load_bundle
from diskwatch.models.features import FeatureSpec
from diskwatch.training.synth import FleetConfig, write_fleet

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    write_fleet(FleetConfig(drives=600, days=45, start=dt.date(2024, 1, 1), seed=3, failure_boost=25.0), out,
                progress=False)
    return out


@pytest.fixture(scope="module")
def windows_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One window-store cache for the module: stores are keyed by dump, window and seed, so a test
    that asks for the same windows reuses them instead of building them again."""
    return tmp_path_factory.mktemp("windows")


@pytest.fixture(scope="module")
def trained(fleet: Path, windows_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tmp_path_factory.mktemp("model") / "bundle"
    result = CliRunner().invoke(app, [
        "train", "--data", str(fleet), "--out", str(bundle), "--window", "7", "--horizon", "5",
        "--epochs", "2", "--width", "8", "--depth", "1", "--batch-size", "64",
        "--cache", str(windows_cache), "--seed", "1",
    ])
    assert result.exit_code == 0, result.output
    return bundle


def test_train_writes_a_complete_bundle(trained: Path) -> None:
    bundle = load_bundle(trained)
    m = bundle.manifest
    assert m.window.window == 7 and m.window.horizon == 5
    assert 0.0 <= m.thresholds.classifier <= 1.0 and m.thresholds.autoencoder > 0
    assert "validation" in m.metrics and m.training["split"] == "serial"
    assert m.training["models"]["classifier"]["class_weight"]["1"] > 1.0  # positives are up-weighted
    assert {"classifier", "autoencoder"} <= set(m.models)
    assert bundle.extra("splits") is not None


def test_evaluate_writes_metrics_and_report(trained: Path, fleet: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(trained), "--data", str(fleet), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("classifier", "autoencoder", "combined", "smart_rule"):
        assert set(metrics[name]) == {"window", "drive"}
        assert set(metrics[name]["window"]) == {"roc_auc", "pr_auc", "precision", "recall", "f1", "threshold", "confusion"}
        assert set(metrics[name]["drive"]) == {
            "failed", "detected", "detection_rate", "healthy", "false_alarms", "false_alarm_rate", "median_lead_days"
        }
    data = metrics["data"]
    assert data["drives"] > 0 and data["windows"] > 0 and data["split"] == "test"
    # Only test-split (and unseen) drives were scored: fewer than the whole fleet.
    assert data["drives"] < 600
    confusion = np.array(metrics["combined"]["window"]["confusion"])
    assert confusion.sum() == data["windows"]
    assert (out / "report.md").read_text().count("|") > 10
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_refuses_a_corrupt_bundle(trained: Path, fleet: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "autoencoder.keras").write_bytes(b"garbage")
    result = CliRunner().invoke(app, ["evaluate", "--model", str(broken), "--data", str(fleet), "--out",
                                      str(tmp_path / "e")])
    assert result.exit_code == 2
    assert "corrupt" in result.output


def test_stream_and_training_feature_vectors_agree(fleet: Path) -> None:
    """record_vector (stream) == table_matrix (training) on the same rows."""
    spec = FeatureSpec()
    day, table = next(iter(iter_days(fleet, spec.columns())))
    matrix = spec.table_matrix(table)
    with open(fleet / f"{day}.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == table.num_rows
    for i, row in enumerate(rows[:300]):
        vector = spec.record_vector(TelemetryRecord.from_backblaze_row(row))
        np.testing.assert_array_equal(vector, matrix[i])


@pytest.mark.real_data
def test_feature_vectors_agree_on_real_rows(backblaze_dir: Path) -> None:
    spec = FeatureSpec()
    path = sorted((backblaze_dir / "daily_2013").glob("*.csv.gz"))[-1]
    [(_, table)] = list(iter_days(path, spec.columns()))
    matrix = spec.table_matrix(table)
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for i in range(0, len(rows), 97):
        vector = spec.record_vector(TelemetryRecord.from_backblaze_row(rows[i]))
        np.testing.assert_array_equal(vector, matrix[i])


def test_train_with_classifier_seeds_saves_one_averaged_classifier(fleet: Path, windows_cache: Path,
                                                                  tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(app, [
        "train", "--data", str(fleet), "--out", str(bundle), "--window", "7", "--horizon", "5",
        "--epochs", "1", "--width", "8", "--depth", "1", "--batch-size", "64", "--classifier-seeds", "2",
        "--hard-negative-share", "0.5", "--classifier-min-lead", "1",
        "--no-rul", "--no-xgboost", "--cache", str(windows_cache), "--seed", "1",
    ])
    assert result.exit_code == 0, result.output
    loaded = load_bundle(bundle)
    assert loaded.manifest.training["models"]["classifier"]["seeds"] == 2
    assert loaded.manifest.training["config"]["classifier_seeds"] == 2
    assert loaded.manifest.training["models"]["classifier"]["hard_negative_share"] == 0.5
    assert loaded.manifest.training["models"]["classifier"]["min_lead"] == 1
    x = np.zeros((3, 7, loaded.spec.n_inputs), np.float32)
    probability = loaded.scorer().score(x).probability
    assert probability.shape == (3,) and np.all((probability >= 0) & (probability <= 1))


def test_compare_prints_one_row_per_variant(fleet: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    result = CliRunner().invoke(app, [
        "compare", "--data", str(fleet), "--time-split", "2024-01-25", "--variants", "mlp+ind,xgboost",
        "--window", "7", "--horizon", "5", "--epochs", "1", "--out", str(out), "--cache", str(tmp_path / "cache"),
    ])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "compare.json").read_text())
    assert [r["variant"] for r in rows] == ["mlp+ind", "xgboost"]
    for row in rows:
        assert set(row["detection_at_far"]) == {"0.001", "0.005", "0.01", "0.02", "0.05"}
        rates = [v for v in row["detection_at_far"].values() if v is not None]
        assert rates == sorted(rates) and all(0.0 <= v <= 1.0 for v in rates)
    assert "| mlp+ind |" in (out / "compare.md").read_text()


def test_evaluate_reports_ceiling_far_grid_and_lead0(trained: Path, fleet: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(trained), "--data", str(fleet), "--out", str(out),
                                      "--split", "all"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["min_lead_days"] == 1
    assert set(metrics["at_far"]["combined"]) == {"0.001", "0.005", "0.01", "0.02", "0.05"}
    for name in ("classifier", "combined", "smart_rule"):
        # counting the failure day too can only add detections
        assert metrics["lead0"][name]["detected"] >= metrics[name]["drive"]["detected"]
    per_months = metrics["false_alarms_per_1000_drive_months"]
    assert all(v >= 0 for v in per_months.values())
    assert (per_months["combined"] == 0) == (metrics["combined"]["drive"]["false_alarms"] == 0)
    ceiling = metrics["ceiling"]
    assert 0 <= ceiling["with_signal"] <= ceiling["failed_drives"] == metrics["combined"]["drive"]["failed"]
    assert metrics["families"] and sum(r["failed"] for r in metrics["families"]) == ceiling["failed_drives"]
    report = (out / "report.md").read_text()
    assert "Signal ceiling" in report and "lead 0" in report
