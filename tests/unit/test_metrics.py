"""Window and drive metrics, threshold selection and the report (sklearn only as a cross-check)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskwatch.models.windows import label as window_label
from diskwatch.training.metrics import (
    average_precision,
    detection_at_far,
    detection_vs_far_curve,
    drive_metrics,
    lead_times,
    pr_curve,
    roc_auc,
    roc_curve,
    smart_rule_scores,
    summarize_detector,
    threshold_for_drive_far,
    threshold_for_window_fpr,
    threshold_max_f1,
    window_metrics,
)
from diskwatch.training.report import write_report

skm = pytest.importorskip("sklearn.metrics")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WINDOW_KEYS = {"roc_auc", "pr_auc", "precision", "recall", "f1", "threshold", "confusion"}
DRIVE_KEYS = {
    "failed",
    "detected",
    "detection_rate",
    "healthy",
    "false_alarms",
    "false_alarm_rate",
    "median_lead_days",
}


# --------------------------------------------------------------------------- hand-worked example
#
# lead_max = L = 3, threshold 0.5 (alert when score >= 0.5).
# A fails on day 10: alert on day 5 (5 days ahead: too early, ignored), day 7 (3 ahead: first
#   qualifying alert, lead 3) and day 9.                                   -> detected, lead 3
# B fails on day 20: its only alert is on day 15 (5 days ahead).           -> missed
# C healthy: one alert on day 2.                                            -> false alarm
# D healthy: no alert.
# E fails on day 30: alert on the failure day itself (lead 0).             -> detected, lead 0
HAND = [
    # serial, end_day, failure_day, score
    ("A", 5, 10, 0.90),  # FP (label 0: 5 days ahead)
    ("A", 6, 10, 0.10),  # TN
    ("A", 7, 10, 0.80),  # TP
    ("A", 8, 10, 0.20),  # FN
    ("A", 9, 10, 0.70),  # TP
    ("A", 10, 10, 0.30),  # FN
    ("B", 14, 20, 0.10),  # TN
    ("B", 15, 20, 0.95),  # FP
    ("B", 16, 20, 0.20),  # TN
    ("B", 17, 20, 0.30),  # FN
    ("B", 18, 20, 0.40),  # FN
    ("B", 19, 20, 0.10),  # FN
    ("B", 20, 20, 0.45),  # FN
    ("C", 1, -1, 0.10),  # TN
    ("C", 2, -1, 0.60),  # FP
    ("C", 3, -1, 0.20),  # TN
    ("C", 4, -1, 0.10),  # TN
    ("C", 5, -1, 0.00),  # TN
    ("D", 1, -1, 0.30),  # TN
    ("D", 2, -1, 0.20),  # TN
    ("D", 3, -1, 0.40),  # TN
    ("E", 29, 30, 0.20),  # FN
    ("E", 30, 30, 0.55),  # TP
]
L = 3
THR = 0.5


@pytest.fixture
def hand():
    serial = np.array([r[0] for r in HAND])
    end_day = np.array([r[1] for r in HAND])
    failure_day = np.array([r[2] for r in HAND])
    score = np.array([r[3] for r in HAND])
    dtf = np.where(failure_day >= 0, failure_day - end_day, np.nan)
    label = window_label(dtf, L)
    return serial, end_day, failure_day, score, label


def test_hand_window_metrics(hand):
    _, _, _, score, label = hand
    m = window_metrics(label, score, THR)
    assert set(m) == WINDOW_KEYS
    assert m["confusion"] == [[10, 3], [7, 3]]
    assert all(type(v) is int for row in m["confusion"] for v in row)
    assert m["precision"] == pytest.approx(3 / 6)
    assert m["recall"] == pytest.approx(3 / 10)
    assert m["f1"] == pytest.approx(2 * 0.5 * 0.3 / (0.5 + 0.3))
    assert m["threshold"] == THR
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(label, score))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(label, score))
    json.dumps(m)


def test_hand_drive_metrics(hand):
    serial, end_day, failure_day, score, _ = hand
    alert = score >= THR
    d = drive_metrics(alert, serial, end_day, failure_day, L)
    assert set(d) == DRIVE_KEYS
    assert d == {
        "failed": 3,
        "detected": 2,
        "detection_rate": pytest.approx(2 / 3),
        "healthy": 2,
        "false_alarms": 1,
        "false_alarm_rate": 0.5,
        "median_lead_days": 1.5,
    }
    # sorted by serial: A (lead 3, not 5: the day-5 alert is too early), E (lead 0)
    np.testing.assert_array_equal(lead_times(alert, serial, end_day, failure_day, L), [3, 0])
    # a wider lead window makes A's day-5 alert the first one and catches B's day-15 alert
    wide = drive_metrics(alert, serial, end_day, failure_day, 5)
    assert (wide["detected"], wide["median_lead_days"]) == (3, 5.0)
    np.testing.assert_array_equal(lead_times(alert, serial, end_day, failure_day, 5), [5, 5, 0])
    json.dumps(d)


def test_hand_summary_and_int_serials(hand):
    serial, end_day, failure_day, score, label = hand
    ids = np.unique(serial, return_inverse=True)[1] + 1000
    s = summarize_detector(label, score, THR, ids, end_day, failure_day, L)
    assert set(s) == {"window", "drive"}
    assert s["window"] == window_metrics(label, score, THR)
    assert s["drive"] == drive_metrics(score >= THR, serial, end_day, failure_day, L)


def test_alerts_after_failure_and_no_windows_in_range():
    # F fails on day 10 but alerts only on day 11 (a window after the failure should not exist,
    # but if one does it must not count); G fails on day 50 with windows only long before it.
    serial = np.array(["F", "F", "G", "G"])
    end_day = np.array([9, 11, 1, 2])
    failure_day = np.array([10, 10, 50, 50])
    alert = np.array([False, True, True, True])
    d = drive_metrics(alert, serial, end_day, failure_day, 3)
    assert (d["failed"], d["detected"], d["detection_rate"]) == (2, 0, 0.0)
    # no healthy drives: the rate is undefined, not 0
    assert (d["healthy"], d["false_alarms"]) == (0, 0)
    assert d["false_alarm_rate"] is None and d["median_lead_days"] is None
    assert lead_times(alert, serial, end_day, failure_day, 3).size == 0


def test_drive_metrics_rejects_inconsistent_failure_day():
    with pytest.raises(ValueError, match="same on every window"):
        drive_metrics(np.array([True, False]), np.array([1, 1]), np.array([1, 2]), np.array([5, -1]), 3)


def test_empty_drive_metrics():
    d = drive_metrics(np.zeros(0, bool), np.zeros(0, int), np.zeros(0, int), np.zeros(0, int), 3)
    assert d == {
        "failed": 0,
        "detected": 0,
        "detection_rate": None,
        "healthy": 0,
        "false_alarms": 0,
        "false_alarm_rate": None,
        "median_lead_days": None,
    }


# --------------------------------------------------------------------------- ROC / PR vs sklearn


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    y = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(int)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    decimals = int(rng.integers(0, 3))  # heavy ties with 0-1 decimals
    s = np.round(rng.random(n) + 0.4 * y, decimals)
    return y, s


def _check_against_sklearn(y: np.ndarray, s: np.ndarray) -> None:
    fpr, tpr, thr = roc_curve(y, s)
    sfpr, stpr, sthr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sfpr)
    np.testing.assert_allclose(tpr, stpr)
    np.testing.assert_array_equal(thr, sthr)
    p, r, t = pr_curve(y, s)
    sp, sr, st_ = skm.precision_recall_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(p, sp)
    np.testing.assert_allclose(r, sr)
    np.testing.assert_array_equal(t, st_)
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(25))
def test_curves_match_sklearn_seeded(seed):
    _check_against_sklearn(*_random_case(seed))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(-3, 3)),  # few distinct scores: ties everywhere
        min_size=2,
        max_size=40,
    ).filter(lambda rows: len({r[0] for r in rows}) == 2)
)
def test_curves_match_sklearn_hypothesis(rows):
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=np.float64) / 2
    _check_against_sklearn(y, s)


def test_float32_and_int_scores():
    y, s = _random_case(7)
    assert roc_auc(y, s.astype(np.float32)) == pytest.approx(skm.roc_auc_score(y, s.astype(np.float32)))
    si = (s * 10).astype(int)
    assert average_precision(y, si) == pytest.approx(skm.average_precision_score(y, si))


@pytest.mark.parametrize(
    ("y", "s"),
    [
        (np.zeros(0, int), np.zeros(0)),
        (np.zeros(5, int), np.linspace(0, 1, 5)),
        (np.ones(5, int), np.linspace(0, 1, 5)),
    ],
    ids=["empty", "all-negative", "all-positive"],
)
def test_degenerate_inputs_give_nan(y, s):
    assert math.isnan(roc_auc(y, s))
    assert math.isnan(average_precision(y, s))
    fpr, tpr, thr = roc_curve(y, s)
    assert fpr.shape == tpr.shape == thr.shape
    p, r, t = pr_curve(y, s)
    assert p.shape == r.shape == (t.size + 1,)
    m = window_metrics(y, s, 0.5)
    assert m["roc_auc"] is None and m["pr_auc"] is None
    json.dumps(m)
    if y.sum() == 0:
        assert math.isnan(threshold_max_f1(y, s))
    if y.size == 0 or y.all():
        assert math.isnan(threshold_for_window_fpr(y, s, 0.1))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same length"):
        roc_curve([0, 1], [0.1])
    with pytest.raises(ValueError, match="0/1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, np.nan])


# --------------------------------------------------------------------------- thresholds


def test_threshold_max_f1_known_best():
    y = np.array([1, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # F1 by threshold: .9 .5, .8 .8, .7 .667, .6 .857, .5 .75, .4 .667
    assert threshold_max_f1(y, s) == 0.6


def test_threshold_max_f1_tie_goes_to_higher_threshold():
    y = np.array([1, 0, 0, 1])
    s = np.array([0.9, 0.5, 0.4, 0.3])
    # F1 at .9 = 2/3 and at .3 = 4/6: a tie
    assert threshold_max_f1(y, s) == 0.9


@pytest.mark.parametrize("seed", range(10))
def test_threshold_max_f1_brute_force(seed):
    y, s = _random_case(seed)
    cands = np.unique(s)[::-1]
    f1s = [skm.f1_score(y, s >= t, zero_division=0.0) for t in cands]
    best = max(f1s)
    expected = next(t for t, f in zip(cands, f1s, strict=True) if math.isclose(f, best, rel_tol=1e-12))
    assert threshold_max_f1(y, s) == expected


def _fleet(seed: int, dtype=np.float64):
    rng = np.random.default_rng(seed)
    n_drives = int(rng.integers(5, 120))
    per = rng.integers(1, 8, n_drives)
    serial = np.repeat(np.arange(n_drives), per)
    failed = rng.random(n_drives) < 0.3
    fday = np.where(failed, 100, -1)[serial]
    end_day = 100 - np.concatenate([rng.permutation(np.arange(k)) for k in per])
    decimals = int(rng.integers(1, 4))
    score = np.round(rng.random(serial.size) + 0.3 * (fday >= 0), decimals).astype(dtype)
    return score, serial, end_day, fday


def _drive_far(score, serial, fday, t):
    healthy = np.unique(serial[fday < 0])
    alarmed = np.unique(serial[(fday < 0) & (score >= t)])
    return alarmed.size / healthy.size


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(15))
def test_threshold_for_drive_far_is_minimal(seed, dtype):
    score, serial, end_day, fday = _fleet(seed, dtype)
    if not (fday < 0).any():
        pytest.skip("no healthy drives in this draw")
    for target in (0.0, 0.01, 0.05, 0.1, 0.29, 0.5, 0.99):
        t = threshold_for_drive_far(score, serial, fday, target)
        assert isinstance(t, float)
        assert _drive_far(score, serial, fday, t) <= target
        # the real call path: alerts on the native-dtype score, drive_metrics' FAR
        far = drive_metrics(score >= t, serial, end_day, fday, 7)["false_alarm_rate"]
        assert far <= target
        if t > score.min():
            lower = np.nextafter(dtype(t), dtype(-np.inf))
            assert _drive_far(score, serial, fday, lower) > target


def test_threshold_for_drive_far_ties_and_edges():
    # healthy maxima 0.5, 0.5, 0.2, 0.1; the failed drive's score is ignored
    score = np.array([0.5, 0.1, 0.5, 0.2, 0.1, 0.9])
    serial = np.array([1, 1, 2, 3, 4, 5])
    fday = np.array([-1, -1, -1, -1, -1, 8])
    # 1 alarm of 4 allowed (0.25) but the top two tie at 0.5: both must go quiet
    t = threshold_for_drive_far(score, serial, fday, 0.25)
    assert t == np.nextafter(0.5, 1.0)
    assert threshold_for_drive_far(score, serial, fday, 0.5) == np.nextafter(0.2, 1.0)
    assert threshold_for_drive_far(score, serial, fday, 0.0) == np.nextafter(0.5, 1.0)
    assert threshold_for_drive_far(score, serial, fday, 1.0) == 0.1
    assert math.isnan(threshold_for_drive_far(score[5:], serial[5:], fday[5:], 0.1))
    with pytest.raises(ValueError):
        threshold_for_drive_far(score, serial, fday, 1.5)


@pytest.mark.parametrize("seed", range(15))
def test_threshold_for_window_fpr_is_minimal(seed):
    y, s = _random_case(seed)
    n_neg = int((y == 0).sum())
    for target in (0.0, 0.01, 0.1, 0.33, 0.5, 1.0):
        t = threshold_for_window_fpr(y, s, target)
        assert ((s >= t) & (y == 0)).sum() / n_neg <= target
        if t > s.min():
            lower = np.nextafter(t, -np.inf)
            assert ((s >= lower) & (y == 0)).sum() / n_neg > target
        # consistent with the ROC: the best TPR reachable at FPR <= target
        fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
        assert ((s >= t) & (y == 1)).sum() / (y == 1).sum() == pytest.approx(tpr[fpr <= target].max())


# --------------------------------------------------------------------------- detection vs FAR


@pytest.mark.parametrize("seed", range(8))
def test_detection_vs_far_curve_matches_drive_metrics(seed):
    score, serial, end_day, fday = _fleet(seed)
    for n_points in (None, 50, 5):
        curve = detection_vs_far_curve(score, serial, end_day, fday, 3, n_points=n_points)
        assert curve[0]["detection_rate"] in (0.0, None) and curve[0]["false_alarm_rate"] in (0.0, None)
        thresholds = [p["threshold"] for p in curve]
        assert thresholds == sorted(thresholds, reverse=True)
        for p in curve:
            assert set(p) == {"threshold", "detection_rate", "false_alarm_rate"}
            d = drive_metrics(score >= p["threshold"], serial, end_day, fday, 3)
            assert p["detection_rate"] == d["detection_rate"]
            assert p["false_alarm_rate"] == d["false_alarm_rate"]
        if n_points is not None:
            assert len(curve) <= n_points + 1


def test_detection_at_far():
    curve = [
        {"threshold": 0.9, "detection_rate": 0.0, "false_alarm_rate": 0.0},
        {"threshold": 0.7, "detection_rate": 0.4, "false_alarm_rate": 0.0},
        {"threshold": 0.5, "detection_rate": 0.6, "false_alarm_rate": 0.02},
        {"threshold": 0.3, "detection_rate": 0.9, "false_alarm_rate": 0.2},
        {"threshold": 0.1, "detection_rate": None, "false_alarm_rate": 0.5},
    ]
    assert detection_at_far(curve, 0.0) == 0.4
    assert detection_at_far(curve, 0.01) == 0.4
    assert detection_at_far(curve, 0.02) == 0.6
    assert detection_at_far(curve, 1.0) == 0.9
    assert math.isnan(detection_at_far(curve[2:3], 0.01))
    assert math.isnan(detection_at_far([], 0.1))


def test_detection_vs_far_hand(hand):
    serial, end_day, failure_day, score, _ = hand
    curve = detection_vs_far_curve(score, serial, end_day, failure_day, L, n_points=None)
    # failed drives' in-range maxima: A .8, B .45, E .55; healthy maxima: C .6, D .4
    assert detection_at_far(curve, 0.0) == pytest.approx(1 / 3)  # above .6: only A
    assert detection_at_far(curve, 0.5) == 1.0  # threshold .45 alarms C only and catches all three


# --------------------------------------------------------------------------- SMART rule


def test_smart_rule_scores():
    raw = np.array(
        [
            [0, np.nan, 0, 0, 0],
            [np.nan] * 5,
            [0, 0, 0, 3, np.nan],
            [-1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0.5],
        ]
    )
    out = smart_rule_scores(raw)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [0, 0, 1, 0, 1])
    # a [N, S, k] stack uses the last step only
    stack = np.zeros((2, 3, 5))
    stack[0, 0, 1] = 8  # earlier day: ignored
    stack[1, -1, 4] = 1
    np.testing.assert_array_equal(smart_rule_scores(stack), [0, 1])
    assert smart_rule_scores(np.zeros((0, 5))).shape == (0,)


# --------------------------------------------------------------------------- report


def _is_png(path: Path) -> bool:
    data = path.read_bytes() if path.is_file() else b""
    return len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE)


def _synthetic_report_inputs():
    score, serial, end_day, fday = _fleet(3)
    dtf = np.where(fday >= 0, fday - end_day, np.nan)
    label = window_label(dtf, 3)
    rng = np.random.default_rng(0)
    scores = {
        "classifier": score,
        "autoencoder": score + rng.normal(0, 0.3, score.size),
        "smart_rule": (rng.random(score.size) < 0.1).astype(float),
        "other": rng.random(score.size),
    }
    metrics = {"detectors": {}, "data": {"windows": int(score.size), "split": {"test": "2024-Q1"}}}
    curves = {"detectors": {}, "far_curve": {}, "lead_days": {}}
    for name, s in scores.items():
        t = threshold_max_f1(label, s)
        metrics["detectors"][name] = summarize_detector(label, s, t, serial, end_day, fday, 3)
        curves["detectors"][name] = {"label": label, "score": s}
        curves["far_curve"][name] = detection_vs_far_curve(s, serial, end_day, fday, 3)
        curves["lead_days"][name] = lead_times(s >= t, serial, end_day, fday, 3)
    err = np.exp(rng.normal(0, 2, 500))
    curves["ae_error"] = {"healthy": err, "failing": err[:50] * 10, "threshold": 5.0}
    curves["history"] = {
        "classifier": {"loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.7], "auc": [0.6, 0.7, 0.8]},
        "autoencoder": {"loss": [0.3, 0.2]},
    }
    return metrics, curves


def test_write_report_full(tmp_path):
    metrics, curves = _synthetic_report_inputs()
    path = write_report(tmp_path / "rep", metrics, curves, title="Test report")
    assert path == tmp_path / "rep" / "report.md"
    text = path.read_text()
    for png in ("roc", "pr", "confusion", "ae_error", "detection_vs_far", "lead_time", "training"):
        assert _is_png(tmp_path / "rep" / f"{png}.png"), png
        assert f"({png}.png)" in text
    assert text.startswith("# Test report")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    names = [r.split("|")[1].strip() for r in rows]
    # fixed order first, then the rest; both tables
    assert names[:5] == ["detector", "classifier", "autoencoder", "smart_rule", "other"]
    assert "accuracy" in text.lower() and "validation" in text
    assert "**windows**" in text and "2024-Q1" in text


def test_write_report_missing_pieces(tmp_path):
    path = write_report(tmp_path / "empty", {}, {}, title="Nothing")
    assert path.is_file()
    assert not list((tmp_path / "empty").glob("*.png"))

    metrics, curves = _synthetic_report_inputs()
    partial = {
        # top-level detector entries, one-class labels, a detector without scores
        "classifier": curves["detectors"]["classifier"],
        "one_class": {"label": np.zeros(10), "score": np.arange(10.0)},
        "no_scores": {"label": np.zeros(3)},
        "ae_error": {"healthy": np.array([0.0, 0.1, 0.2])},  # no failing, no threshold, zeros
        "far_curve": {"x": [], "y": [{"threshold": 1.0, "detection_rate": None, "false_alarm_rate": None}]},
        "lead_days": {"classifier": np.array([])},
        "history": {"m": {"loss": []}, "n": "not a dict"},
    }
    only_window = {"classifier": {"window": metrics["detectors"]["classifier"]["window"]}}
    out = tmp_path / "partial"
    path = write_report(out, only_window, partial, title="Partial")
    text = path.read_text()
    assert _is_png(out / "roc.png") and _is_png(out / "confusion.png") and _is_png(out / "ae_error.png")
    for skipped in ("detection_vs_far", "lead_time", "training"):
        assert not (out / f"{skipped}.png").exists()
    assert "| classifier |" in text


def test_write_report_malformed_piece_warns_not_crashes(tmp_path):
    with pytest.warns(RuntimeWarning, match="history"):
        path = write_report(tmp_path, {}, {"history": {"m": {"loss": ["a", "b"]}}}, title="Bad")
    assert path.is_file()
