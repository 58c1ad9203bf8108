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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diskwatch.core.dumps import DumpFilter, ReadStats, iter_days
from diskwatch.models.alerting import combined_score, fires
from diskwatch.models.bundle import Bundle, load_bundle
from diskwatch.models.features import BACKBLAZE_CRITICAL, Feature, FeatureSpec
from diskwatch.models.inference import Scores
from diskwatch.models.windows import WindowConfig, day_number, label
from diskwatch.training import baseline
from diskwatch.training.metrics import (
    detection_at_far,
    detection_vs_far_curve,
    drive_metrics,
    lead_times,
    roc_auc,
    smart_rule_scores,
    summarize_detector,
)
from diskwatch.training.sequences import EmittedWindows, SequenceBuilder

Split = Literal["test", "all", "train", "val"]


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


@dataclass
class ScoredWindows:
    """Per-window scores of every detector over a dump, aligned on axis 0."""

    serial: np.ndarray  #: int64 drive id (index into ``serial_names``)
    end_day: np.ndarray  #: int64 day number of the window's last day
    failure_day: np.ndarray  #: int64 the drive's failure day number, -1 if it did not fail
    probability: np.ndarray  #: float32 classifier output
    anomaly: np.ndarray  #: float32 autoencoder reconstruction error
    smart_rule: np.ndarray  #: float32 1.0 when a raw 5/187/188/197/198 > 0 on the last day
    critical_any: np.ndarray  #: bool: a raw 5/187/188/197/198 > 0 on any day of the window
    serial_names: list[str]
    serial_models: list[str]  #: drive model of each serial id
    read: dict[str, Any]
    xgboost: np.ndarray | None = None
    xgboost_threshold: float | None = None

    @property
    def drives(self) -> int:
        return len(self.serial_names)

    def __getitem__(self, key: str) -> Any:
        """Read as a mapping too (``scored["serial"]``), as callers did before this was a dataclass."""
        if key == "drives" or key in {f.name for f in fields(self)}:
            return getattr(self, key)
        raise KeyError(key)

    def __contains__(self, key: str) -> bool:
        return key in {f.name for f in fields(self)} and getattr(self, key) is not None


class _DumpScorer:
    """Accumulates one day of emitted windows at a time into :class:`ScoredWindows`."""

    def __init__(self, bundle: Bundle, excluded: set[str], first_scored: dt.date | None, batch: int) -> None:
        self.spec = bundle.spec
        self.scorer = bundle.scorer()
        self.xgb, self.xgb_threshold = None, None
        if baseline.available() and bundle.extra("xgboost") is not None:
            self.xgb, self.xgb_threshold = baseline.load(bundle.extra("xgboost"))  # type: ignore[arg-type]
        self.excluded = excluded
        self.first_day = day_number(first_scored) if first_scored is not None else None
        self.batch = batch
        self.serial_ids: dict[str, int] = {}
        self.failure_day: dict[int, int] = {}
        self.model_of: dict[str, str] = {}
        self.parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("serial", "end_day", "probability", "anomaly", "smart_rule", "critical_any", "xgboost")
        }

    def _sid(self, serial: str) -> int:
        return self.serial_ids.setdefault(serial, len(self.serial_ids))

    def note_day(self, day: dt.date, table: Any) -> None:
        """Remember each drive's model and the failure day of every drive reporting ``failure = 1``."""
        if "model" in table.column_names:
            for serial, model in zip(table["serial_number"].to_pylist(), table["model"].to_pylist(), strict=True):
                self.model_of.setdefault(serial, str(model))
        fails = np.flatnonzero(np.asarray(table["failure"].to_numpy(zero_copy_only=False)) == 1)
        if fails.size:
            names = table["serial_number"].to_pylist()
            for i in fails.tolist():
                self.failure_day.setdefault(self._sid(names[i]), day_number(day))

    def _kept(self, emitted: EmittedWindows) -> np.ndarray:
        keep = np.ones(len(emitted.serial), dtype=bool)
        if self.excluded:
            keep = np.array([s not in self.excluded for s in emitted.serial], dtype=bool)
        if self.first_day is not None:
            keep &= emitted.end_day >= self.first_day
        return keep

    def add(self, emitted: EmittedWindows, critical_cols: list[int]) -> None:
        """Score the kept windows with every detector."""
        keep = self._kept(emitted)
        if not keep.any():
            return
        x_all = emitted.x[keep]
        n_features = self.spec.n_features
        for start in range(0, x_all.shape[0], self.batch):
            x = self.spec.finalize(x_all[start : start + self.batch, :, :n_features])
            scores = self.scorer.score(x)
            self.parts["probability"].append(scores.probability)
            self.parts["anomaly"].append(scores.anomaly)
            if self.xgb is not None:
                self.parts["xgboost"].append(baseline.predict(self.xgb, x))
        self.parts["serial"].append(
            np.array([self._sid(s) for s, k in zip(emitted.serial, keep, strict=True) if k], dtype=np.int64)
        )
        self.parts["end_day"].append(emitted.end_day[keep])
        critical = x_all[:, :, critical_cols]
        self.parts["smart_rule"].append(smart_rule_scores(critical[:, -1, :]).astype(np.float32))
        self.parts["critical_any"].append((np.nan_to_num(critical, nan=0.0) > 0).any(axis=(1, 2)))

    def result(self, stats: ReadStats) -> ScoredWindows:
        dtypes = {"serial": np.int64, "end_day": np.int64, "critical_any": bool}
        cat = {k: np.concatenate(v) if v else np.zeros(0, dtypes.get(k, np.float32)) for k, v in self.parts.items()}
        serial = cat["serial"]
        return ScoredWindows(
            serial=serial,
            end_day=cat["end_day"].astype(np.int64),
            failure_day=np.array([self.failure_day.get(int(s), -1) for s in serial], dtype=np.int64),
            probability=cat["probability"],
            anomaly=cat["anomaly"],
            smart_rule=cat["smart_rule"],
            critical_any=cat["critical_any"],
            serial_names=(names := sorted(self.serial_ids, key=self.serial_ids.__getitem__)),
            serial_models=[self.model_of.get(n, "unknown") for n in names],
            read=stats.to_dict(),
            xgboost=cat["xgboost"] if self.xgb is not None else None,
            xgboost_threshold=self.xgb_threshold,
        )


def _with_history(filters: DumpFilter | None, config: WindowConfig) -> DumpFilter:
    """Filters that read enough days before ``date_from`` to fill its first windows."""
    filters = filters or DumpFilter()
    if filters.date_from is None:
        return filters
    return DumpFilter(
        date_from=filters.date_from - dt.timedelta(days=config.window + config.max_gap),
        date_to=filters.date_to, models=filters.models, limit_drives=filters.limit_drives,
    )


def score_dump(
    bundle: Bundle,
    data: Path | str,
    *,
    split: Split = "test",
    filters: DumpFilter | None = None,
    batch: int = 4096,
    on_day: Callable[[dt.date, int], None] | None = None,
) -> ScoredWindows:
    """Per-window scores of every detector over a dump, as the stream would score it."""
    config = bundle.window
    first_scored = filters.date_from if filters is not None else None
    reading, critical_cols = _rule_spec(bundle.spec)
    builder = SequenceBuilder(reading, config.model_copy(update={"stride": 1}))
    scorer = _DumpScorer(bundle, _excluded_serials(bundle, split), first_scored, batch)
    stats = ReadStats()
    for day, table in iter_days(data, reading.columns(), filters=_with_history(filters, config), stats=stats):
        scorer.note_day(day, table)
        emitted = builder.add_day(day, table)
        if on_day is not None:
            on_day(day, table.num_rows)
        scorer.add(emitted, critical_cols)
    return scorer.result(stats)


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
    min_lead: int = 1,
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
    metrics, curves = summarize(bundle, scored, lead, min_lead=min_lead)
    metrics["data"] |= {"path": str(data), "split": split, "read": scored.read}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    write_report(out, metrics, curves, title=f"diskwatch evaluation — bundle {bundle.version}")
    return metrics


#: False-alarm rates at which every detector's best detection is reported.
FAR_GRID = (0.001, 0.005, 0.01, 0.02, 0.05)


def detector_scores(bundle: Bundle, scored: ScoredWindows) -> dict[str, tuple[np.ndarray, float]]:
    """(score per window, the bundle's alert threshold on it) per detector."""
    t = bundle.thresholds
    detectors: dict[str, tuple[np.ndarray, float]] = {
        "classifier": (scored.probability, t.classifier),
        "autoencoder": (scored.anomaly, t.autoencoder),
        "combined": (combined_score(_scores(scored), t), 1.0),
        "smart_rule": (scored.smart_rule, 0.5),
    }
    if scored.xgboost is not None:
        detectors["xgboost"] = (scored.xgboost, float(scored.xgboost_threshold or 0.5))
    return detectors


def _scores(scored: ScoredWindows) -> Scores:
    return Scores(scored.probability, scored.anomaly, np.zeros((scored.anomaly.size, 0)), None)


def summarize(
    bundle: Bundle, scored: ScoredWindows, lead_max: int, *, min_lead: int = 1
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics per detector plus the arrays the report plots.

    Detections count alerts ``min_lead..lead_max`` days before the failure;
    ``lead0`` repeats the drive figures counting the failure day itself too.
    """
    t = bundle.thresholds
    serial, end_day, failure_day = scored.serial, scored.end_day, scored.failure_day
    labels = label(np.where(failure_day >= 0, failure_day - end_day, np.nan), bundle.window.horizon)
    detectors = detector_scores(bundle, scored)
    metrics: dict[str, Any] = {
        "data": {
            "days": int(np.unique(end_day).size),
            "drives": int(np.unique(serial).size),
            "failed_drives": int(np.unique(serial[failure_day >= 0]).size),
            "windows": int(serial.size),
            "positives": int(labels.sum()),
            "lead_max_days": lead_max,
            "min_lead_days": min_lead,
            "horizon_days": bundle.window.horizon,
        },
        "bundle": {"version": bundle.version, "thresholds": t.model_dump(mode="json")},
    }
    curves: dict[str, Any] = {"detectors": {}, "far_curve": {}, "lead_days": {}}
    drive_args = (serial, end_day, failure_day, lead_max)
    metrics["lead0"], metrics["at_far"], metrics["lead_distribution"] = {}, {}, {}
    for name, (score, threshold) in detectors.items():
        metrics[name] = summarize_detector(labels, score, threshold, *drive_args, min_lead=min_lead)
        metrics["lead0"][name] = drive_metrics(score >= threshold, *drive_args, min_lead=0)
        curves["detectors"][name] = {"label": labels, "score": score}
        curve = detection_vs_far_curve(score, *drive_args, n_points=None, min_lead=min_lead)
        curves["far_curve"][name] = curve
        metrics["at_far"][name] = {f"{far:g}": _nan_none(detection_at_far(curve, far)) for far in FAR_GRID}
        leads = lead_times(score >= threshold, *drive_args, min_lead=min_lead)
        curves["lead_days"][name] = leads
        metrics["lead_distribution"][name] = _lead_distribution(leads)
    # Equal-false-alarm comparison: each detector's best detection at the
    # false-alarm rate the combined detector actually runs at.
    far = metrics["combined"]["drive"]["false_alarm_rate"]
    if far is not None:
        metrics["at_equal_far"] = {
            "false_alarm_rate": far,
            "detection_rate": {n: detection_at_far(curves["far_curve"][n], far) for n in detectors},
        }
    healthy_months = float((failure_day < 0).sum()) / 30.0
    metrics["false_alarms_per_1000_drive_months"] = {
        name: (1000.0 * metrics[name]["drive"]["false_alarms"] / healthy_months if healthy_months else None)
        for name in detectors
    }
    metrics["ceiling"] = signal_ceiling(scored, lead_max, min_lead, metrics)
    metrics["families"] = family_table(scored, detectors, lead_max, min_lead)
    _autoencoder_facts(bundle, scored, metrics, curves)
    return metrics, curves


def _autoencoder_facts(bundle: Bundle, scored: ScoredWindows, metrics: dict[str, Any], curves: dict[str, Any]) -> None:
    t = bundle.thresholds
    clf, ae = fires(_scores(scored), t)
    healthy = scored.failure_day < 0
    curves["ae_error"] = {"healthy": scored.anomaly[healthy], "failing": scored.anomaly[~healthy],
                          "threshold": t.autoencoder}
    curves["history"] = bundle.manifest.training.get("histories", {})
    metrics["data"]["window_alert_rate"] = float((clf | ae).mean()) if clf.size else None
    metrics["data"]["autoencoder_auc_failing_vs_healthy_drives"] = _nan_none(
        roc_auc((~healthy).astype(np.int8), scored.anomaly)
    )


def _lead_distribution(leads: np.ndarray) -> dict[str, Any]:
    """Counts of detected drives by lead days, and quartiles."""
    if leads.size == 0:
        return {"counts": {}, "quartiles": None}
    values, counts = np.unique(leads, return_counts=True)
    return {
        "counts": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
        "quartiles": [float(q) for q in np.quantile(leads, (0.25, 0.5, 0.75))],
    }


def _failed_in_range(scored: ScoredWindows, lead_max: int, min_lead: int) -> tuple[np.ndarray, np.ndarray]:
    """(failed drive ids, whether each shows a non-zero critical raw in a window of its detection range)."""
    lead = scored.failure_day - scored.end_day
    qual = (scored.failure_day >= 0) & (lead >= min_lead) & (lead <= lead_max)
    failed = np.unique(scored.serial[scored.failure_day >= 0])
    signal = np.isin(failed, scored.serial[qual & scored.critical_any])
    return failed, signal


def signal_ceiling(
    scored: ScoredWindows, lead_max: int, min_lead: int, metrics: dict[str, Any]
) -> dict[str, Any]:
    """Failed drives any reader of raw 5/187/188/197/198 could catch, and detection as a share of them.

    A failed drive is within reach when one of its windows in the detection
    range holds a non-zero critical raw on some day; the rest show nothing.
    """
    failed, signal = _failed_in_range(scored, lead_max, min_lead)
    n_failed, n_signal = int(failed.size), int(signal.sum())
    share = {}
    for name, summary in metrics.items():
        if isinstance(summary, dict) and "drive" in summary and n_signal:
            share[name] = summary["drive"]["detected"] / n_signal
    return {
        "failed_drives": n_failed,
        "with_signal": n_signal,
        "ceiling": n_signal / n_failed if n_failed else None,
        "detection_share_of_ceiling": share,
    }


def family_table(
    scored: ScoredWindows, detectors: dict[str, tuple[np.ndarray, float]], lead_max: int, min_lead: int,
    min_failed: int = 3,
) -> list[dict[str, Any]]:
    """Detection and false alarms per drive model (models with fewer failures pooled as ``other``)."""
    models = np.asarray(scored.serial_models, dtype=object)
    drive_model = models[scored.serial] if scored.serial.size else np.zeros(0, dtype=object)
    failed_ids = np.unique(scored.serial[scored.failure_day >= 0])
    names, counts = np.unique(models[failed_ids].astype(str), return_counts=True)
    named = set(names[counts >= min_failed].tolist()) if names.size else set()
    family = np.array([m if m in named else "other" for m in drive_model], dtype=object)
    rows = []
    for fam in [*sorted(named), "other"]:
        mask = family == fam
        if not mask.any():
            continue
        row: dict[str, Any] = {"family": fam, "drives": int(np.unique(scored.serial[mask]).size)}
        for name, (score, threshold) in detectors.items():
            d = drive_metrics(score[mask] >= threshold, scored.serial[mask], scored.end_day[mask],
                              scored.failure_day[mask], lead_max, min_lead=min_lead)
            row["failed"], row["healthy"] = d["failed"], d["healthy"]
            row[name] = {"detected": d["detected"], "false_alarms": d["false_alarms"]}
        rows.append(row)
    return rows


def _nan_none(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
