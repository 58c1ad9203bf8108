"""Model bundle round trip, refusal of bad bundles, and the shared alert rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diskwatch.models.alerting import combined_score, fires, life_expectancy, severity, top_reasons
from diskwatch.models.bundle import (
    BundleError,
    load_bundle,
    read_manifest,
    save_bundle,
    update_metrics,
)
from diskwatch.models.inference import Scores
from tests.unit.bundles import SPEC, THRESHOLDS, WINDOW, fitted_spec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def test_round_trip_gives_identical_scores(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.spec == fitted_spec() and bundle.window == WINDOW and bundle.thresholds == THRESHOLDS
    assert len(bundle.version) == 12 and bundle.rul is None
    assert bundle.extra("splits") is not None and json.loads(bundle.extra("splits").read_text()) == {"A": "train"}
    x = np.random.default_rng(0).random((9, 5, 3), dtype=np.float32)
    again = load_bundle(bundle_dir)
    a, b = bundle.scorer().score(x), again.scorer().score(x)
    np.testing.assert_allclose(a.probability, b.probability, rtol=1e-6)
    np.testing.assert_allclose(a.feature_error, b.feature_error, rtol=1e-6)


def test_refuses_to_overwrite_without_force(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="exists"):
        save_bundle(bundle_dir, models={"classifier": bundle.classifier, "autoencoder": bundle.autoencoder},
                    spec=bundle.spec, window=WINDOW, thresholds=THRESHOLDS)


def test_unfitted_spec_is_not_bundled(tmp_path: Path, bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="fitted"):
        save_bundle(tmp_path / "x", models={"classifier": bundle.classifier, "autoencoder": bundle.autoencoder},
                    spec=SPEC, window=WINDOW, thresholds=THRESHOLDS)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "classifier.keras").write_bytes(b"not a zip"), "corrupt"),
        (lambda p: (p / "autoencoder.keras").unlink(), "partial"),
        (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda p: (p / "manifest.json").write_text("{oops"), "not valid JSON"),
        (lambda p: _edit(p, lambda m: m.update(format=99)), "format 99"),
        (lambda p: _edit(p, lambda m: m["feature_spec"].update(lower=None, upper=None, fill=None)), "not fitted"),
        (lambda p: _edit(p, lambda m: m["window"].update(window=9)), "expects windows of shape"),
        (lambda p: _edit(p, lambda m: m.update(surprise=1)), "invalid"),
    ],
)
def test_bad_bundles_are_refused_with_a_reason(bundle_dir: Path, tmp_path: Path, damage, message: str) -> None:
    target = copy(bundle_dir, tmp_path)
    damage(target)
    with pytest.raises(BundleError, match=message):
        load_bundle(target)


def test_same_size_corruption_is_caught_by_checksum(bundle_dir: Path, tmp_path: Path) -> None:
    target = copy(bundle_dir, tmp_path)
    data = bytearray((target / "classifier.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (target / "classifier.keras").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        read_manifest(target)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nothing")


def test_update_metrics_keeps_the_bundle_valid(bundle_dir: Path, tmp_path: Path) -> None:
    target = copy(bundle_dir, tmp_path)
    update_metrics(target, {"test": {"auc": 0.9}})
    assert read_manifest(target).metrics["test"] == {"auc": 0.9}
    load_bundle(target)


def _edit(path: Path, change) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


# ---------------------------------------------------------------------------
# alert rule
# ---------------------------------------------------------------------------


def test_alert_rule_severity_and_combined_score() -> None:
    scores = Scores(
        probability=np.array([0.1, 0.6, 0.1, 0.9, np.nan], np.float32),
        anomaly=np.array([0.01, 0.01, 0.2, 0.3, 0.05], np.float32),
        feature_error=np.zeros((5, 3), np.float32),
        days_to_failure=None,
    )
    clf, ae = fires(scores, THRESHOLDS)
    assert clf.tolist() == [False, True, False, True, False]
    assert ae.tolist() == [False, False, True, True, False]
    assert severity(scores, THRESHOLDS).tolist() == [0, 1, 1, 2, 0]
    combined = combined_score(scores, THRESHOLDS)
    assert ((combined >= 1.0) == (clf | ae)).all()


def test_reasons_name_the_attributes_with_the_largest_error() -> None:
    spec = fitted_spec()
    reasons = top_reasons(np.array([[0.0, 0.1, 0.3], [0.0, 0.0, 0.0]]), spec, k=2)
    assert [(a, n) for a, n, _ in reasons[0]] == [(194, "smart_194_raw"), (9, "smart_9_raw")]
    assert reasons[0][0][2] == pytest.approx(0.75)
    assert reasons[1] == []


@pytest.mark.parametrize(("days", "expected"), [(3, "bad"), (14, "warning"), (42, "warning"), (43, "good"),
                                                (None, "unknown"), (float("nan"), "unknown")])
def test_life_expectancy_classes(days: float | None, expected: str) -> None:
    assert life_expectancy(days) == expected
