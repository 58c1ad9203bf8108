"""Score every drive-day window of a dump exactly as the stream would.

Same feature code (:class:`FeatureSpec`), same window rule (the builder and
the stream's :func:`windows_ending_at` are both property-tested against
:func:`assemble_window`), same inference
engine (:class:`Scorer`) and same alert rule (:mod:`models.alerting`). The
result is ``metrics.json`` plus plots and ``report.md`` in the output folder.

By default only drives outside the bundle's train/validation splits are
scored (``split="test"``), so a report on the training data stays honest.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diskwatch.core.dumps import DumpFilter, ReadStats, iter_days
from diskwatch.models.alerting import combined_score, fires
from diskwatch.models.bundle import Bundle, load_bundle
from diskwatch.models.features import BACKBLAZE_CRITICAL, Feature, FeatureSpec
from diskwatch.models.windows import day_number, label
from diskwatch.training import baseline
from diskwatch.training.metrics import (
    detection_at_far,
    detection_vs_far_curve,
    lead_times,
    roc_auc,
    smart_rule_scores,
    summarize_detector,
)
from diskwatch.training.sequences import SequenceBuilder

Split = Literal["test", "all", "train", "val"]


@dataclass
class _Collected:
    serial: list[np.ndarray] = field(default_factory=list)
    end_day: list[np.ndarray] = field(default_factory=list)
    probability: list[np.ndarray] = field(default_factory=list)
    anomaly: list[np.ndarray] = field(default_factory=list)
    critical: list[np.ndarray] = field(default_factory=list)
    xgboost: list[np.ndarray] = field(default_factory=list)


def _rule_spec(spec: FeatureSpec) -> tuple[FeatureSpec, list[int]]:
    """The bundle's features plus any of Backblaze's critical raws it lacks."""
    features = list(spec.features)
    names = [f.name for f in features]
    for attr in BACKBLAZE_CRITICAL:
        if f"smart_{attr}_raw" not in names:
            features.append(Feature(attribute=attr, kind="raw", transform="log1p"))
    reading = FeatureSpec(features=tuple(features))
    cols = [reading.names.index(f"smart_{a}_raw") for a in BACKBLAZE_CRITICAL]
    return reading, cols


def score_dump(
    bundle: Bundle,
    data: Path | str,
    *,
    split: Split = "test",
    filters: DumpFilter | None = None,
    batch: int = 4096,
    on_day: Callable[[dt.date, int], None] | None = None,
) -> dict[str, Any]:
    """Per-window scores of every detector over a dump (arrays + context)."""
    spec = bundle.spec
    config = bundle.window
    filters = filters or DumpFilter()
    first_scored = filters.date_from
    if first_scored is not None:
        # Read enough history before --from to fill the first windows.
        filters = DumpFilter(
            date_from=first_scored - dt.timedelta(days=config.window + config.max_gap),
            date_to=filters.date_to, models=filters.models, limit_drives=filters.limit_drives,
        )
    reading, critical_cols = _rule_spec(spec)
    builder = SequenceBuilder(reading, config.model_copy(update={"stride": 1}))
    scorer = bundle.scorer()
    xgb = None
    if baseline.available() and bundle.extra("xgboost") is not None:
        xgb, xgb_threshold = baseline.load(bundle.extra("xgboost"))  # type: ignore[arg-type]
    excluded = _excluded_serials(bundle, split)
    serial_ids: dict[str, int] = {}
    failure_day: dict[int, int] = {}
    out = _Collected()
    stats = ReadStats()
    n_features = spec.n_features
    for day, table in iter_days(data, reading.columns(), filters=filters, stats=stats):
        fails = np.flatnonzero(np.asarray(table["failure"].to_numpy(zero_copy_only=False)) == 1)
        if fails.size:
            names = table["serial_number"].to_pylist()
            for i in fails.tolist():
                sid = serial_ids.setdefault(names[i], len(serial_ids))
                failure_day.setdefault(sid, day_number(day))
        emitted = builder.add_day(day, table)
        if on_day is not None:
            on_day(day, table.num_rows)
        keep = np.array(
            [s not in excluded for s in emitted.serial], dtype=bool
        ) if excluded else np.ones(len(emitted.serial), dtype=bool)
        if first_scored is not None:
            keep &= emitted.end_day >= day_number(first_scored)
        if not keep.any():
            continue
        x_all = emitted.x[keep]
        ids = np.array([serial_ids.setdefault(s, len(serial_ids))
                        for s, k in zip(emitted.serial, keep, strict=True) if k], dtype=np.int64)
        for start in range(0, x_all.shape[0], batch):
            x = spec.finalize(x_all[start : start + batch, :, :n_features])
            scores = scorer.score(x)
            out.probability.append(scores.probability)
            out.anomaly.append(scores.anomaly)
            if xgb is not None:
                out.xgboost.append(xgb.predict_proba(x[:, -1, :])[:, 1].astype(np.float32))
        out.serial.append(ids)
        out.end_day.append(emitted.end_day[keep])
        out.critical.append(smart_rule_scores(x_all[:, -1, critical_cols]))
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    serial = cat(out.serial, np.int64)
    fd = np.array([failure_day.get(int(s), -1) for s in serial], dtype=np.int64)
    result: dict[str, Any] = {
        "serial": serial,
        "end_day": cat(out.end_day, np.int64),
        "failure_day": fd,
        "probability": cat(out.probability, np.float32),
        "anomaly": cat(out.anomaly, np.float32),
        "smart_rule": cat(out.critical, np.float32),
        "read": stats.to_dict(),
        "drives": len(serial_ids),
        "serial_names": sorted(serial_ids, key=serial_ids.__getitem__),
    }
    if xgb is not None:
        result["xgboost"] = cat(out.xgboost, np.float32)
        result["xgboost_threshold"] = xgb_threshold
    return result


def _excluded_serials(bundle: Bundle, split: Split) -> set[str]:
    path = bundle.extra("splits")
    if split == "all" or path is None:
        return set()
    mapping: dict[str, str] = json.loads(path.read_text())
    if split == "test":
        return {s for s, name in mapping.items() if name in ("train", "val")}
    return {s for s, name in mapping.items() if name != split}


def evaluate(
    bundle_path: Path | str,
    data: Path | str,
    out: Path | str,
    *,
    lead_max: int | None = None,
    split: Split = "test",
    filters: DumpFilter | None = None,
    on_day: Callable[[dt.date, int], None] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, plots and ``report.md`` to ``out``; return metrics."""
    from diskwatch.training.report import write_report

    bundle = load_bundle(bundle_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lead = bundle.window.horizon if lead_max is None else lead_max
    scored = score_dump(bundle, data, split=split, filters=filters, on_day=on_day)
    metrics, curves = summarize(bundle, scored, lead)
    metrics["data"] |= {"path": str(data), "split": split, "read": scored["read"]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    write_report(out, metrics, curves, title=f"diskwatch evaluation — bundle {bundle.version}")
    return metrics


def summarize(bundle: Bundle, scored: dict[str, Any], lead_max: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics per detector plus the arrays the report plots."""
    t = bundle.thresholds
    from diskwatch.models.inference import Scores

    scores = Scores(scored["probability"], scored["anomaly"], np.zeros((scored["anomaly"].size, 0)), None)
    serial, end_day, failure_day = scored["serial"], scored["end_day"], scored["failure_day"]
    labels = label(np.where(failure_day >= 0, failure_day - end_day, np.nan), bundle.window.horizon)
    detectors: dict[str, tuple[np.ndarray, float]] = {
        "classifier": (scored["probability"], t.classifier),
        "autoencoder": (scored["anomaly"], t.autoencoder),
        "combined": (combined_score(scores, t), 1.0),
        "smart_rule": (scored["smart_rule"], 0.5),
    }
    if "xgboost" in scored:
        detectors["xgboost"] = (scored["xgboost"], scored["xgboost_threshold"])
    metrics: dict[str, Any] = {
        "data": {
            "days": int(np.unique(end_day).size),
            "drives": int(np.unique(serial).size),
            "failed_drives": int(np.unique(serial[failure_day >= 0]).size),
            "windows": int(serial.size),
            "positives": int(labels.sum()),
            "lead_max_days": lead_max,
            "horizon_days": bundle.window.horizon,
        },
        "bundle": {"version": bundle.version, "thresholds": t.model_dump(mode="json")},
    }
    curves: dict[str, Any] = {"detectors": {}, "far_curve": {}, "lead_days": {}}
    for name, (score, threshold) in detectors.items():
        summary = summarize_detector(labels, score, threshold, serial, end_day, failure_day, lead_max)
        metrics[name] = summary
        curves["detectors"][name] = {"label": labels, "score": score}
        curves["far_curve"][name] = detection_vs_far_curve(
            score, serial, end_day, failure_day, lead_max, n_points=400
        )
        curves["lead_days"][name] = lead_times(score >= threshold, serial, end_day, failure_day, lead_max)
    # Equal-false-alarm comparison: each detector's best detection at the
    # false-alarm rate the combined detector actually runs at.
    far = metrics["combined"]["drive"]["false_alarm_rate"]
    if far is not None:
        metrics["at_equal_far"] = {
            "false_alarm_rate": far,
            "detection_rate": {n: detection_at_far(curves["far_curve"][n], far) for n in detectors},
        }
    clf, ae = fires(scores, t)
    healthy = failure_day < 0
    curves["ae_error"] = {
        "healthy": scored["anomaly"][healthy],
        "failing": scored["anomaly"][~healthy],
        "threshold": t.autoencoder,
    }
    curves["history"] = bundle.manifest.training.get("histories", {})
    metrics["data"]["window_alert_rate"] = float((clf | ae).mean()) if clf.size else None
    metrics["data"]["autoencoder_auc_failing_vs_healthy_drives"] = _nan_none(
        roc_auc((~healthy).astype(np.int8), scored["anomaly"])
    )
    return metrics, curves


def _nan_none(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
