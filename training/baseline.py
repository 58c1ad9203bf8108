"""The gradient-boosted baseline every report compares against.

As in NVIDIA's predictive-maintenance lab: XGBoost on one drive-day's
features (the last step of each window, same feature spec and scaling, same
splits). Its threshold targets the same per-drive false-alarm rate as the
deep classifier, so the comparison is at equal false alarms. xgboost is an
optional extra (``pip install diskwatch[train]``); without it the
baseline is skipped and reports say so. Saved in XGBoost's own JSON format —
no pickles.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diskwatch.models.features import FeatureSpec
from diskwatch.training.metrics import threshold_for_drive_far

if TYPE_CHECKING:
    from diskwatch.training.windowstore import WindowStore


def available() -> bool:
    return importlib.util.find_spec("xgboost") is not None


def day_features(spec: FeatureSpec, windows: np.ndarray) -> np.ndarray:
    """The per-day input: the finalised last step of each window."""
    return spec.finalize(windows)[:, -1, :]


def _features(store: WindowStore, idx: np.ndarray, spec: FeatureSpec, batch: int = 65536) -> np.ndarray:
    parts = [day_features(spec, store.load(idx[i : i + batch])) for i in range(0, idx.size, batch)]
    return np.concatenate(parts) if parts else np.zeros((0, spec.n_inputs), np.float32)


def fit(
    store: WindowStore,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    spec: FeatureSpec,
    out: Path,
    *,
    target_far: float,
    healthy_per_positive: float,
    seed: int,
) -> tuple[Path, dict[str, Any]]:
    """Train, pick the threshold on validation, save JSON; returns (path, info)."""
    import xgboost as xgb

    rng = np.random.default_rng(seed)
    labels = store.labels[train_idx]
    pos = train_idx[labels == 1]
    neg = train_idx[labels == 0]
    n_neg = min(neg.size, max(1, int(pos.size * healthy_per_positive)))
    neg = rng.choice(neg, size=n_neg, replace=False) if neg.size else neg
    idx = np.sort(np.concatenate([pos, neg]))
    y = store.labels[idx]
    model = xgb.XGBClassifier(
        n_estimators=300,
        max_depth=6,
        learning_rate=0.05,
        subsample=0.8,
        colsample_bytree=0.8,
        scale_pos_weight=float((y == 0).sum()) / max(float((y == 1).sum()), 1.0),
        eval_metric="aucpr",
        tree_method="hist",
        random_state=seed,
        n_jobs=2,
    )
    model.fit(_features(store, idx, spec), y, verbose=False)
    val_scores = model.predict_proba(_features(store, val_idx, spec))[:, 1]
    serial = store.window_serial[val_idx]
    threshold = threshold_for_drive_far(val_scores, serial, store.failure_day[serial], target_far)
    model.get_booster().set_attr(diskwatch_threshold=repr(float(threshold)))
    model.save_model(out)
    return out, {"threshold": float(threshold), "train_rows": int(idx.size), "train_positives": int(y.sum())}


def load(path: Path) -> tuple[Any, float]:
    """(model, threshold) from a saved baseline."""
    import xgboost as xgb

    model = xgb.XGBClassifier()
    model.load_model(path)
    threshold = float(model.get_booster().attr("diskwatch_threshold") or 0.5)
    return model, threshold


def predict(model: Any, windows: np.ndarray) -> np.ndarray:
    """Failure probability of each finalised window's last day, float32."""
    return model.predict_proba(windows[:, -1, :])[:, 1].astype(np.float32)
