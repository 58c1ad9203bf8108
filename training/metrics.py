"""Evaluation metrics for failure detectors: window-level and drive-level.

Window curves and AUCs come from scikit-learn; what no library has — the
drive-level detection/false-alarm metrics and thresholds — is plain numpy.
Inputs are per-window arrays aligned on axis 0:

* ``score``: float, higher = more likely failing;
* ``label``: 0/1 per :func:`models.windows.label` (``0 <= f - d <= L``);
* ``serial``: drive id (int or str);
* ``end_day``: day number of the window's last day;
* ``failure_day``: the drive's failure day number, or -1 if it never failed
  in the data (the same value on every window of a drive).

Two units, never to be mixed (see the shared research notes, ``../shared/notes/anchors.md``):

* **window** (drive-day) metrics: ROC/PR, precision, recall, F1 — what
  DLI-style papers report; with ~1:5000 imbalance accuracy is meaningless;
* **drive** metrics: detection rate of failed drives (an alert within
  ``lead_max`` days before the failure) vs the false-alarm rate of healthy
  drives (any alert at all) — what Li et al. report as FDR/FAR.

Alerts fire when ``score >= threshold``. Thresholds are picked on validation
data only (the caller's job); the helpers here return Python floats that give
the same alerts whether the score array is float32 or float64.

Undefined values: the AUC functions return NaN on degenerate input (empty or
one class only); the metric *dicts* use ``None`` instead, so they serialize
to JSON as ``null``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

__all__ = [
    "average_precision",
    "detection_at_far",
    "detection_vs_far_curve",
    "drive_metrics",
    "lead_times",
    "pr_curve",
    "roc_auc",
    "roc_curve",
    "smart_rule_scores",
    "summarize_detector",
    "threshold_for_drive_far",
    "threshold_for_window_fpr",
    "threshold_max_f1",
    "window_metrics",
]


# --------------------------------------------------------------------------- helpers


def _labels_scores(label: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(label).ravel()
    s = np.asarray(score).ravel()
    if y.shape != s.shape:
        raise ValueError(f"label and score must have the same length, got {y.shape[0]} and {s.shape[0]}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("label must be 0/1")
    if s.dtype.kind not in "biuf":
        raise ValueError(f"score must be numeric, got dtype {s.dtype}")
    if s.dtype.kind == "f" and np.isnan(s).any():
        raise ValueError("score contains NaN")
    return y.astype(bool), s


def _none_if_nan(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _just_above(value: Any, like: np.ndarray) -> float:
    """The smallest float above ``value`` in the score's own precision.

    Computed in float32 for float32 scores, so that ``score >= t`` (which
    NumPy 2 evaluates in float32 against a Python float) excludes ``value``.
    """
    dtype = like.dtype if like.dtype.kind == "f" else np.dtype(np.float64)
    v = dtype.type(value)
    return float(np.nextafter(v, dtype.type(np.inf)))


def _lowest_threshold_with_at_most(
    values: np.ndarray, n_total: int, target: float, like: np.ndarray
) -> float:
    """Lowest t with ``count(values >= t) / n_total <= target`` (values: one per unit)."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target rate must be in [0, 1], got {target}")
    if n_total == 0:
        return math.nan
    # k = the most alarms allowed, judged exactly as the caller will judge it: k / n <= target
    k = math.floor(target * n_total)
    while k + 1 <= n_total and (k + 1) / n_total <= target:
        k += 1
    while k > 0 and k / n_total > target:
        k -= 1
    if k >= n_total:
        # everything may alarm: any threshold at or below the lowest score
        return float(np.min(like))
    desc = np.sort(values)[::-1]
    # t must exceed the (k+1)-th highest value; ties at that value all go quiet
    return _just_above(desc[k], like)


def _drive_index(serial: Any) -> tuple[np.ndarray, int]:
    ser = np.asarray(serial).ravel()
    if ser.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    uniq, inv = np.unique(ser, return_inverse=True)
    return inv.ravel().astype(np.int64), uniq.size


def _per_drive_failure(inv: np.ndarray, n: int, failure_day: np.ndarray) -> np.ndarray:
    fmax = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    fmin = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.maximum.at(fmax, inv, failure_day)
    np.minimum.at(fmin, inv, failure_day)
    if (fmax != fmin).any():
        raise ValueError("failure_day must be the same on every window of a drive")
    return fmax


def _drive_arrays(
    serial: Any, end_day: Any, failure_day: Any, n_windows: int
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    inv, n = _drive_index(serial)
    end = np.asarray(end_day).ravel().astype(np.int64)
    fail = np.asarray(failure_day).ravel().astype(np.int64)
    if not (inv.size == end.size == fail.size == n_windows):
        raise ValueError(
            "serial, end_day, failure_day and alert/score must have the same length, got "
            f"{inv.size}, {end.size}, {fail.size}, {n_windows}"
        )
    return inv, n, end, fail


def _qualifying(
    end: np.ndarray, fail: np.ndarray, lead_max: int, min_lead: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(mask of windows in a failed drive's detection range, days before failure).

    The range is ``min_lead <= failure_day - end_day <= lead_max``: an alert on
    the failure day itself (lead 0) gives no warning, so reports count from 1.
    """
    if lead_max < 0:
        raise ValueError(f"lead_max must be >= 0, got {lead_max}")
    if not 0 <= min_lead <= lead_max:
        raise ValueError(f"min_lead must be in [0, lead_max], got {min_lead}")
    lead = fail - end
    return (fail >= 0) & (lead >= min_lead) & (lead <= lead_max), lead


# --------------------------------------------------------------------------- window curves (scikit-learn)


def roc_curve(label: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve(..., drop_intermediate=False)`` with validated input.

    With no negatives (positives) ``fpr`` (``tpr``) is NaN; empty input gives
    ``([nan], [nan], [inf])`` instead of an exception.
    """
    y, s = _labels_scores(label, score)
    if y.size == 0:
        return np.array([np.nan]), np.array([np.nan]), np.array([np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    return fpr.astype(np.float64), tpr.astype(np.float64), thr.astype(np.float64)


def pr_curve(label: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.precision_recall_curve(..., drop_intermediate=False)``.

    Without positives recall is NaN (sklearn sets 1 and warns); empty input
    gives ``([nan], [nan], [])``.
    """
    y, s = _labels_scores(label, score)
    if y.size == 0:
        return np.array([np.nan]), np.array([np.nan]), np.zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="No positive class found")
        precision, recall, thr = skm.precision_recall_curve(y, s, drop_intermediate=False)
    if not y.any():
        recall = np.r_[np.full(recall.size - 1, np.nan), 0.0]
    return precision.astype(np.float64), recall.astype(np.float64), thr.astype(np.float64)


def _two_classes(y: np.ndarray) -> bool:
    return bool(y.size and y.any() and not y.all())


def roc_auc(label: Any, score: Any) -> float:
    """``sklearn.metrics.roc_auc_score``; NaN if degenerate (empty or one class)."""
    y, s = _labels_scores(label, score)
    return float(skm.roc_auc_score(y, s)) if _two_classes(y) else math.nan


def average_precision(label: Any, score: Any) -> float:
    """``sklearn.metrics.average_precision_score``; NaN if degenerate."""
    y, s = _labels_scores(label, score)
    return float(skm.average_precision_score(y, s)) if _two_classes(y) else math.nan


# --------------------------------------------------------------------------- window / drive summaries


def window_metrics(label: Any, score: Any, threshold: float) -> dict[str, Any]:
    """Window (drive-day) metrics at ``threshold`` (alert when ``score >= threshold``).

    Keys: roc_auc, pr_auc, precision, recall, f1, threshold, confusion
    (``[[tn, fp], [fn, tp]]`` ints). Undefined values are ``None``; F1 is
    ``2 tp / (2 tp + fp + fn)`` (0 when there are positives but no hits).
    """
    y, s = _labels_scores(label, score)
    alert = s >= threshold
    tp = int(np.count_nonzero(alert & y))
    fp = int(np.count_nonzero(alert & ~y))
    fn = int(np.count_nonzero(~alert & y))
    tn = int(np.count_nonzero(~alert & ~y))
    return {
        "roc_auc": _none_if_nan(roc_auc(y, s)),
        "pr_auc": _none_if_nan(average_precision(y, s)),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "threshold": _none_if_nan(float(threshold)),
        "confusion": [[tn, fp], [fn, tp]],
    }


def _detections(
    alert: Any, serial: Any, end_day: Any, failure_day: Any, lead_max: int, min_lead: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per drive: (failed, detected, false_alarm, lead days of the first qualifying alert or -1)."""
    a = np.asarray(alert).ravel().astype(bool)
    inv, n, end, fail = _drive_arrays(serial, end_day, failure_day, a.size)
    drive_fail = _per_drive_failure(inv, n, fail)
    failed = drive_fail >= 0
    qual, lead = _qualifying(end, fail, lead_max, min_lead)
    hit = a & qual
    lead_first = np.full(n, -1, dtype=np.int64)
    np.maximum.at(lead_first, inv[hit], lead[hit])  # earliest alert = largest lead
    detected = failed & (lead_first >= 0)
    any_alert = np.zeros(n, dtype=bool)
    any_alert[inv[a]] = True
    false_alarm = ~failed & any_alert
    return failed, detected, false_alarm, lead_first


def drive_metrics(
    alert: Any, serial: Any, end_day: Any, failure_day: Any, lead_max: int, *, min_lead: int = 0
) -> dict[str, Any]:
    """Drive-level detection vs false alarms.

    A failed drive (``failure_day >= 0``) is *detected* when an alert fires on a
    window with ``min_lead <= failure_day - end_day <= lead_max``; its lead is the
    days from the earliest such alert to the failure. Alerts on a failed drive
    earlier than ``lead_max`` days are neither detections nor false alarms. A
    healthy drive is a *false alarm* when any alert fires on it. A failed drive
    with no window in range counts as failed and missed.

    Keys: failed, detected, detection_rate, healthy, false_alarms,
    false_alarm_rate, median_lead_days (``None`` when undefined).
    """
    failed, detected, false_alarm, lead_first = _detections(
        alert, serial, end_day, failure_day, lead_max, min_lead
    )
    n_failed = int(failed.sum())
    n_detected = int(detected.sum())
    n_healthy = int((~failed).sum())
    n_fa = int(false_alarm.sum())
    leads = lead_first[detected]
    return {
        "failed": n_failed,
        "detected": n_detected,
        "detection_rate": _ratio(n_detected, n_failed),
        "healthy": n_healthy,
        "false_alarms": n_fa,
        "false_alarm_rate": _ratio(n_fa, n_healthy),
        "median_lead_days": float(np.median(leads)) if leads.size else None,
    }


def lead_times(
    alert: Any, serial: Any, end_day: Any, failure_day: Any, lead_max: int, *, min_lead: int = 0
) -> np.ndarray:
    """Lead days (first qualifying alert to failure) of each detected drive, int64, by sorted serial."""
    _, detected, _, lead_first = _detections(alert, serial, end_day, failure_day, lead_max, min_lead)
    return lead_first[detected]


# --------------------------------------------------------------------------- thresholds


def threshold_max_f1(label: Any, score: Any) -> float:
    """The threshold (a score value) maximizing window F1; ties go to the higher threshold.

    NaN when there are no positives (F1 is 0 everywhere) or no windows.
    """
    y, s = _labels_scores(label, score)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    fpr, tpr, thr = roc_curve(y, s)
    n_neg = y.size - n_pos
    # Integer counts back from the rates (exact after rounding), so equal F1s tie exactly.
    tps = np.rint(tpr[1:] * n_pos).astype(np.int64)
    fps = np.rint(np.nan_to_num(fpr[1:]) * n_neg).astype(np.int64)
    f1 = 2.0 * tps / (tps + fps + n_pos)
    return float(thr[1:][int(np.argmax(f1))])  # thresholds descend: first max = highest threshold


def threshold_for_drive_far(score: Any, serial: Any, failure_day: Any, target_far: float) -> float:
    """Lowest threshold whose healthy-drive false-alarm rate is ``<= target_far``.

    A healthy drive alarms when its MAX window score is ``>= threshold``. The
    result sits just above (``np.nextafter``, in the score's precision) the
    appropriate healthy maximum, so a drive whose max equals the threshold would
    count as an alarm and is excluded. NaN without healthy drives; with
    ``target_far >= 1`` (every drive may alarm) the lowest score.
    """
    s = np.asarray(score).ravel()
    _, s = _labels_scores(np.zeros(s.size, dtype=np.int8), s)
    inv, n = _drive_index(serial)
    fail = np.asarray(failure_day).ravel().astype(np.int64)
    if not (inv.size == fail.size == s.size):
        raise ValueError("score, serial and failure_day must have the same length")
    drive_fail = _per_drive_failure(inv, n, fail)
    healthy_w = fail < 0
    smax = np.full(n, -np.inf)
    np.maximum.at(smax, inv[healthy_w], s[healthy_w].astype(np.float64))
    healthy_max = smax[drive_fail < 0]
    return _lowest_threshold_with_at_most(healthy_max, healthy_max.size, target_far, s)


def threshold_for_window_fpr(label: Any, score: Any, target_fpr: float) -> float:
    """Lowest threshold with window FPR (negatives with ``score >= t``) ``<= target_fpr``.

    The ROC read off at ``target_fpr``, taken to the lowest float that keeps
    it (just above a negative's score). NaN without negatives.
    """
    y, s = _labels_scores(label, score)
    neg = s[~y]
    return _lowest_threshold_with_at_most(neg.astype(np.float64), neg.size, target_fpr, s)


# --------------------------------------------------------------------------- detection vs FAR


def _drive_score_maxima(
    score: Any, serial: Any, end_day: Any, failure_day: Any, lead_max: int, min_lead: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per failed drive the max score in its detection range (-inf if none), per healthy drive
    the max score, and the validated score array."""
    _, s = _labels_scores(np.zeros(np.asarray(score).size, dtype=np.int8), np.asarray(score).ravel())
    inv, n, end, fail = _drive_arrays(serial, end_day, failure_day, s.size)
    drive_fail = _per_drive_failure(inv, n, fail)
    qual, _ = _qualifying(end, fail, lead_max, min_lead)
    s64 = s.astype(np.float64)
    fmax = np.full(n, -np.inf)
    np.maximum.at(fmax, inv[qual], s64[qual])
    hmax = np.full(n, -np.inf)
    healthy_w = fail < 0
    np.maximum.at(hmax, inv[healthy_w], s64[healthy_w])
    return fmax[drive_fail >= 0], hmax[drive_fail < 0], s


def detection_vs_far_curve(
    score: Any,
    serial: Any,
    end_day: Any,
    failure_day: Any,
    lead_max: int,
    n_points: int | None = 50,
    *,
    min_lead: int = 0,
) -> list[dict[str, float | None]]:
    """Drive detection rate vs false-alarm rate across thresholds, highest threshold first.

    Thresholds are ``n_points`` quantiles of the per-drive max scores (failed
    drives: max over their detection range; healthy: max overall), plus one
    just above the top so the curve starts at (0, 0). ``n_points=None`` uses
    every distinct per-drive max: the exact step curve. Each point is
    ``{"threshold", "detection_rate", "false_alarm_rate"}``; a rate is ``None``
    when there are no failed (healthy) drives.
    """
    fmax, hmax, s = _drive_score_maxima(score, serial, end_day, failure_day, lead_max, min_lead)
    values = np.r_[fmax, hmax]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return []
    if n_points is None:
        cand = np.unique(values)
    else:
        if n_points < 2:
            raise ValueError("n_points must be >= 2 (or None)")
        cand = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_points), method="inverted_cdf"))
    top = _just_above(values.max(), s)
    thresholds = np.r_[top, cand[::-1]]
    f_sorted = np.sort(fmax)
    h_sorted = np.sort(hmax)
    # count of maxima >= t
    n_det = f_sorted.size - np.searchsorted(f_sorted, thresholds, side="left")
    n_fa = h_sorted.size - np.searchsorted(h_sorted, thresholds, side="left")
    return [
        {
            "threshold": float(t),
            "detection_rate": _ratio(int(d), f_sorted.size),
            "false_alarm_rate": _ratio(int(a), h_sorted.size),
        }
        for t, d, a in zip(thresholds, n_det, n_fa, strict=True)
    ]


def detection_at_far(curve: Sequence[dict[str, Any]], far: float) -> float:
    """Best detection rate on ``curve`` with ``false_alarm_rate <= far`` (NaN if no such point)."""
    best = math.nan
    for point in curve:
        fa, det = point.get("false_alarm_rate"), point.get("detection_rate")
        if fa is None or det is None or fa > far:
            continue
        if math.isnan(best) or det > best:
            best = float(det)
    return best


# --------------------------------------------------------------------------- baselines and summary


def smart_rule_scores(raw_critical: np.ndarray) -> np.ndarray:
    """Backblaze's rule of thumb as a 0/1 score.

    ``raw_critical`` holds the raw SMART 5/187/188/197/198 values of each
    window's last day, ``[N, k]`` (a ``[N, S, k]`` window stack is accepted and
    its last step used). Score 1.0 when any value is > 0, else 0.0; NaN (not
    reported) counts as 0.
    """
    x = np.asarray(raw_critical, dtype=np.float64)
    if x.ndim == 3:
        x = x[:, -1, :]
    elif x.ndim == 1:
        x = x[:, None]
    elif x.ndim != 2:
        raise ValueError(f"raw_critical must be [N, k] or [N, S, k], got shape {x.shape}")
    with np.errstate(invalid="ignore"):
        return (np.nan_to_num(x, nan=0.0) > 0).any(axis=1).astype(np.float64)


def summarize_detector(
    label: Any,
    score: Any,
    threshold: float,
    serial: Any,
    end_day: Any,
    failure_day: Any,
    lead_max: int,
    *,
    min_lead: int = 0,
) -> dict[str, dict[str, Any]]:
    """``{"window": window_metrics(...), "drive": drive_metrics(...)}`` at ``threshold``."""
    s = np.asarray(score).ravel()
    alert = s >= threshold
    return {
        "window": window_metrics(label, s, threshold),
        "drive": drive_metrics(alert, serial, end_day, failure_day, lead_max, min_lead=min_lead),
    }
