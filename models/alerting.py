"""The alert rule, in one place for the stream and for evaluation.

A window *fires* when the classifier's probability reaches its threshold or
the autoencoder's reconstruction error reaches its threshold. Severity:

* ``warning``  — one detector fires;
* ``critical`` — both fire.

:func:`combined_score` folds both into one number (``>= 1`` exactly when the
window fires), which evaluation uses to draw the combined detector's curves.
Reasons name the SMART attributes carrying the largest share of the
reconstruction error. Life expectancy follows Ceph's classes from the RUL
model's predicted days to failure.
"""

from __future__ import annotations

import numpy as np

from diskwatch.core.records import Severity
from diskwatch.models.bundle import Thresholds
from diskwatch.models.features import FeatureSpec
from diskwatch.models.inference import Scores

# Severity ranks are defined once, by core's Severity (0 = no alert).
NONE, WARNING, CRITICAL = 0, Severity.WARNING.rank, Severity.CRITICAL.rank
SEVERITY_NAMES = {level.rank: level.value for level in Severity}


def fires(scores: Scores, thresholds: Thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(classifier fires, autoencoder fires) per window; NaN never fires."""
    with np.errstate(invalid="ignore"):
        clf = np.nan_to_num(scores.probability, nan=-np.inf) >= thresholds.classifier
        ae = np.nan_to_num(scores.anomaly, nan=-np.inf) >= thresholds.autoencoder
    return clf, ae


def severity(scores: Scores, thresholds: Thresholds) -> np.ndarray:
    """0 none, 1 warning, 2 critical, per window."""
    clf, ae = fires(scores, thresholds)
    return clf.astype(np.int8) + ae.astype(np.int8)


def combined_score(scores: Scores, thresholds: Thresholds) -> np.ndarray:
    """max(p / t_clf, err / t_ae): >= 1 exactly when the window fires."""
    p = np.nan_to_num(scores.probability, nan=0.0) / max(thresholds.classifier, 1e-12)
    e = np.nan_to_num(scores.anomaly, nan=0.0) / max(thresholds.autoencoder, 1e-12)
    return np.maximum(p, e)


def top_reasons(feature_error: np.ndarray, spec: FeatureSpec, k: int) -> list[list[tuple[int, str, float]]]:
    """Per window, the k features with the largest error share: (attribute, name, share).

    Only value columns count: "reported" indicator columns (after the values) are not attributes.
    """
    err = np.nan_to_num(np.asarray(feature_error, dtype=np.float64), nan=0.0)
    if err.ndim == 2:
        err = err[:, : spec.n_features]
    if err.ndim != 2 or err.shape[0] == 0:
        return [[] for _ in range(err.shape[0] if err.ndim else 0)]
    total = err.sum(axis=1, keepdims=True)
    share = np.divide(err, total, out=np.zeros_like(err), where=total > 0)
    order = np.argsort(-share, axis=1, kind="stable")[:, :k]
    out = []
    for row, picks in enumerate(order):
        out.append(
            [
                (spec.features[j].attribute, spec.features[j].name, float(share[row, j]))
                for j in picks
                if share[row, j] > 0
            ]
        )
    return out


def life_expectancy(days_to_failure: float | None) -> str:
    """Ceph's classes: bad < 2 weeks <= warning <= 6 weeks < good."""
    if days_to_failure is None or not np.isfinite(days_to_failure):
        return "unknown"
    if days_to_failure < 14:
        return "bad"
    if days_to_failure <= 42:
        return "warning"
    return "good"
