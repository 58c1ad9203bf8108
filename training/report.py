"""One-page evaluation report: PNG plots plus ``report.md`` tying them together.

Inputs
------
``metrics`` (what :func:`training.metrics.summarize_detector` returns, per detector)::

    {
        "detectors": {name: {"window": window_metrics(...), "drive": drive_metrics(...)}},
        "data": {key: value, ...},          # optional, free-form; rendered as the data block
    }

A top-level entry shaped like a detector summary (a dict with ``"window"``
and/or ``"drive"``) is accepted as a detector too.

``curves`` (every piece optional; a missing or empty piece skips its plot)::

    {
        "detectors": {                      # ROC and PR curves
            name: {"label": array[N] 0/1, "score": array[N] float},
        },
        "ae_error": {"healthy": array, "failing": array, "threshold": float (optional)},
        "far_curve": {name: detection_vs_far_curve(...)},   # list of point dicts
        "lead_days": {name: lead_times(...)},               # int array per detector
        "history": {model: {"loss": [...], "val_loss": [...], ...}},  # Keras History.history
    }

As with ``metrics``, a top-level ``name: {"label", "score"}`` entry also
counts as a detector. Detector names ``classifier``, ``autoencoder``,
``combined``, ``smart_rule`` and ``xgboost`` come first, in that order, then
any others alphabetically. Confusion matrices come from
``metrics[...]["window"]["confusion"]``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diskwatch.training.metrics import detection_at_far, pr_curve, roc_curve

__all__ = ["DETECTOR_ORDER", "write_report"]

DETECTOR_ORDER = ("classifier", "autoencoder", "combined", "smart_rule", "xgboost")
_RESERVED_CURVES = {"detectors", "ae_error", "far_curve", "lead_days", "history"}
_EQUAL_FAR = (0.001, 0.005, 0.01, 0.02, 0.05)
_DPI = 100
_MAX_PLOT_POINTS = 2000


# --------------------------------------------------------------------------- input plumbing


def _ordered(names: list[str]) -> list[str]:
    known = [n for n in DETECTOR_ORDER if n in names]
    return known + sorted(n for n in names if n not in DETECTOR_ORDER)


def _detector_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, m in metrics.items():
        if name != "detectors" and isinstance(m, Mapping) and ("window" in m or "drive" in m):
            out[name] = dict(m)
    nested = metrics.get("detectors")
    if isinstance(nested, Mapping):
        out.update({k: dict(v) for k, v in nested.items() if isinstance(v, Mapping)})
    return out


def _detector_curves(curves: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw: dict[str, Any] = {}
    for name, c in curves.items():
        if name not in _RESERVED_CURVES and isinstance(c, Mapping):
            raw[name] = c
    nested = curves.get("detectors")
    if isinstance(nested, Mapping):
        raw.update(nested)
    out = {}
    for name, c in raw.items():
        if not isinstance(c, Mapping) or c.get("label") is None or c.get("score") is None:
            continue
        y = np.asarray(c["label"]).ravel()
        s = np.asarray(c["score"], dtype=np.float64).ravel()
        if y.size and y.size == s.size:
            out[name] = (y, s)
    return out


def _mapping(curves: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = curves.get(key)
    return value if isinstance(value, Mapping) else {}


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= _MAX_PLOT_POINTS:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, _MAX_PLOT_POINTS).astype(np.int64))
    return x[idx], y[idx]


def _finite(a: Any) -> np.ndarray:
    arr = np.asarray(a if a is not None else [], dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


# --------------------------------------------------------------------------- plots


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _plot_roc_pr(out: Path, dets: dict[str, tuple[np.ndarray, np.ndarray]], plt: Any) -> dict[str, Path]:
    if not dets:
        return {}
    paths = {}
    fig, ax = plt.subplots(figsize=(5, 4.5))
    drawn = False
    for name in _ordered(list(dets)):
        y, s = dets[name]
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        auc = float(np.trapezoid(tpr, fpr))
        fx, ty = _thin(fpr, tpr)
        ax.plot(fx, ty, label=f"{name} (AUC {auc:.3f})", lw=1.5)
        drawn = True
    if drawn:
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
        ax.set(xlabel="false-positive rate (windows)", ylabel="true-positive rate (windows)", title="ROC")
        ax.legend(fontsize=8, loc="lower right")
        paths["roc"] = _save(fig, out / "roc.png", plt)
    else:
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4.5))
    drawn = False
    prevalence = math.nan
    for name in _ordered(list(dets)):
        y, s = dets[name]
        if y.all() or not y.any():
            continue
        precision, recall, _ = pr_curve(y, s)
        ap = float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))
        rx, py = _thin(recall, precision)
        ax.step(rx, py, where="post", label=f"{name} (AP {ap:.3f})", lw=1.5)
        prevalence = float(np.mean(y.astype(bool)))
        drawn = True
    if drawn:
        ax.axhline(prevalence, ls=":", c="grey", lw=1, label=f"prevalence {prevalence:.2g}")
        ax.set(xlabel="recall (windows)", ylabel="precision (windows)", title="Precision-recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8, loc="upper right")
        paths["pr"] = _save(fig, out / "pr.png", plt)
    else:
        plt.close(fig)
    return paths


def _plot_confusion(out: Path, dets: dict[str, dict[str, Any]], plt: Any) -> Path | None:
    mats = {}
    for name in _ordered(list(dets)):
        conf = (dets[name].get("window") or {}).get("confusion")
        if conf is not None and np.asarray(conf).shape == (2, 2):
            mats[name] = np.asarray(conf, dtype=np.int64)
    if not mats:
        return None
    fig, axes = plt.subplots(1, len(mats), figsize=(2.8 * len(mats), 2.9), squeeze=False)
    for ax, (name, m) in zip(axes[0], mats.items(), strict=True):
        # colour by row share: the classes differ by orders of magnitude
        rows = m.sum(axis=1, keepdims=True)
        share = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:,}", ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks([0, 1], ["no alert", "alert"])
        ax.set_yticks([0, 1], ["healthy", "failing"])
        ax.set_title(name, fontsize=9)
    fig.suptitle("Window confusion at the chosen threshold", fontsize=10)
    return _save(fig, out / "confusion.png", plt)


def _plot_ae_error(out: Path, ae: Mapping[str, Any], plt: Any) -> Path | None:
    healthy, failing = _finite(ae.get("healthy")), _finite(ae.get("failing"))
    if healthy.size == 0 and failing.size == 0:
        return None
    both = np.r_[healthy, failing]
    positive = both[both > 0]
    log_x = bool(positive.size == both.size and positive.size and positive.max() / positive.min() > 100)
    if log_x:
        bins = np.logspace(np.log10(positive.min()), np.log10(positive.max()), 50)
    else:
        lo, hi = float(both.min()), float(both.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 50)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for arr, name, colour in ((healthy, "healthy", "tab:blue"), (failing, "failing", "tab:red")):
        if arr.size:
            ax.hist(
                arr,
                bins=bins,
                density=True,
                histtype="step",
                lw=1.5,
                color=colour,
                label=f"{name} (n={arr.size:,})",
            )
    threshold = ae.get("threshold")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(float(threshold), ls="--", c="k", lw=1, label="threshold")
    if log_x:
        ax.set_xscale("log")
    ax.set(
        xlabel="reconstruction error", ylabel="density", title="Autoencoder error: healthy vs failing windows"
    )
    ax.legend(fontsize=8)
    return _save(fig, out / "ae_error.png", plt)


def _plot_far_curve(out: Path, far_curves: Mapping[str, Any], plt: Any) -> Path | None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    drawn = False
    for name in _ordered(list(far_curves)):
        pts = [
            (p["false_alarm_rate"], p["detection_rate"])
            for p in far_curves[name] or []
            if p.get("false_alarm_rate") is not None and p.get("detection_rate") is not None
        ]
        if not pts:
            continue
        pts.sort()
        x, y = np.array(pts, dtype=np.float64).T
        ax.step(x, y, where="post", marker=".", ms=3, lw=1.5, label=name)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set(
        xlabel="false-alarm rate (share of healthy drives alerted)",
        ylabel="detection rate (failed drives)",
        title="Drive detection vs false alarms",
    )
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out / "detection_vs_far.png", plt)


def _plot_lead_days(out: Path, leads: Mapping[str, Any], plt: Any) -> Path | None:
    arrays = {n: _finite(leads[n]) for n in _ordered(list(leads))}
    arrays = {n: a for n, a in arrays.items() if a.size}
    if not arrays:
        return None
    top = max(float(a.max()) for a in arrays.values())
    bins = np.arange(-0.5, top + 1.5, 1.0)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, a in arrays.items():
        ax.hist(
            a, bins=bins, histtype="step", lw=1.5, label=f"{name} (n={a.size}, median {np.median(a):g} d)"
        )
    ax.set(xlabel="days from first alert to failure", ylabel="detected drives", title="Lead time")
    ax.legend(fontsize=8)
    return _save(fig, out / "lead_time.png", plt)


def _plot_history(out: Path, history: Mapping[str, Any], plt: Any) -> Path | None:
    models = {
        m: {k: _finite(v) for k, v in h.items() if np.size(v)}
        for m, h in history.items()
        if isinstance(h, Mapping)
    }
    models = {m: h for m, h in models.items() if any(v.size for v in h.values())}
    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.5), squeeze=False)
    for ax, (model, h) in zip(axes[0], models.items(), strict=True):
        for key in sorted(h, key=lambda k: (k.removeprefix("val_"), k.startswith("val_"))):
            v = h[key]
            if v.size:
                ax.plot(np.arange(1, v.size + 1), v, ls="--" if key.startswith("val_") else "-", label=key)
        ax.set(xlabel="epoch", title=model)
        ax.legend(fontsize=7)
    fig.suptitle("Training curves", fontsize=10)
    return _save(fig, out / "training.png", plt)


# --------------------------------------------------------------------------- markdown


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def _count_rate(rate: Any, num: Any, den: Any, digits: int = 3) -> str:
    text = _fmt(rate, digits)
    if num is not None and den is not None and rate is not None:
        text += f" ({num}/{den})"
    return text


def _detector_table(dets: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| detector | ROC-AUC | PR-AUC | precision | recall | F1 | threshold "
        "| drive detection | drive false alarms | median lead (d) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in _ordered(list(dets)):
        w = dets[name].get("window") or {}
        d = dets[name].get("drive") or {}
        lines.append(
            f"| {name} | {_fmt(w.get('roc_auc'))} | {_fmt(w.get('pr_auc'))} | {_fmt(w.get('precision'))} "
            f"| {_fmt(w.get('recall'))} | {_fmt(w.get('f1'))} | {_fmt(w.get('threshold'), 4)} "
            f"| {_count_rate(d.get('detection_rate'), d.get('detected'), d.get('failed'))} "
            f"| {_count_rate(d.get('false_alarm_rate'), d.get('false_alarms'), d.get('healthy'), 4)} "
            f"| {_fmt(d.get('median_lead_days'), 1)} |"
        )
    return lines


def _equal_far_table(far_curves: Mapping[str, Any]) -> list[str]:
    names = [n for n in _ordered(list(far_curves)) if far_curves[n]]
    if not names:
        return []
    head = " | ".join(f"FAR ≤ {f:g}" for f in _EQUAL_FAR)
    lines = [f"| detector | {head} |", "|---" * (len(_EQUAL_FAR) + 1) + "|"]
    for name in names:
        cells = " | ".join(_fmt(detection_at_far(far_curves[name], f)) for f in _EQUAL_FAR)
        lines.append(f"| {name} | {cells} |")
    return lines


def _ceiling_block(ceiling: Any) -> list[str]:
    if not isinstance(ceiling, Mapping) or not ceiling.get("failed_drives"):
        return []
    lines = [
        f"{ceiling['with_signal']} of {ceiling['failed_drives']} failed drives "
        f"({_fmt(ceiling.get('ceiling'))}) show a non-zero raw SMART 5/187/188/197/198 in a window of their "
        "detection range: the ceiling for any detector reading these attributes.",
        "",
        "| detector | detected / ceiling drives |",
        "|---|---|",
    ]
    share = ceiling.get("detection_share_of_ceiling") or {}
    lines += [f"| {name} | {_fmt(share[name])} |" for name in _ordered(list(share))]
    return lines


def _lead0_table(lead0: Any, dets: dict[str, dict[str, Any]]) -> list[str]:
    if not isinstance(lead0, Mapping) or not lead0:
        return []
    lines = ["| detector | detected (lead ≥ min) | detected (lead ≥ 0) |", "|---|---|---|"]
    for name in _ordered(list(lead0)):
        d, d0 = (dets.get(name) or {}).get("drive") or {}, lead0[name]
        lines.append(
            f"| {name} | {_count_rate(d.get('detection_rate'), d.get('detected'), d.get('failed'))} "
            f"| {_count_rate(d0.get('detection_rate'), d0.get('detected'), d0.get('failed'))} |"
        )
    return lines


def _lead_table(dist: Any) -> list[str]:
    if not isinstance(dist, Mapping) or not dist:
        return []
    lines = ["| detector | detected drives by lead days (days: drives) | quartiles |", "|---|---|---|"]
    for name in _ordered(list(dist)):
        counts = dist[name].get("counts") or {}
        text = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: int(kv[0])))
        quart = dist[name].get("quartiles")
        lines.append(f"| {name} | {text or '—'} | {'/'.join(_fmt(q, 0) for q in quart) if quart else '—'} |")
    return lines


def _family_table(rows: Any) -> list[str]:
    if not isinstance(rows, list) or not rows:
        return []
    names = _ordered([k for k, v in rows[0].items() if isinstance(v, Mapping)])
    head = " | ".join(f"{n} det / FA" for n in names)
    lines = [f"| model | drives | failed | healthy | {head} |", "|---" * (4 + len(names)) + "|"]
    for row in rows:
        cells = " | ".join(f"{row[n]['detected']} / {row[n]['false_alarms']}" for n in names)
        lines.append(f"| {row['family']} | {row['drives']} | {row['failed']} | {row['healthy']} | {cells} |")
    return lines


def _data_block(data: Any) -> list[str]:
    if not isinstance(data, Mapping) or not data:
        return ["_No data description given._"]
    lines = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            inner = ", ".join(f"{k}: {_fmt(v) if isinstance(v, float) else v}" for k, v in value.items())
            lines.append(f"- **{key}**: {inner}")
        else:
            lines.append(f"- **{key}**: {_fmt(value) if isinstance(value, float) else value}")
    return lines


_HOW_TO_READ = (
    "Failing windows are rare (well under 1% of drive-days), so accuracy says nothing: a detector that never "
    "alerts scores above 99.9%. Read the **drive-level** columns first: *drive detection* is the share of failed "
    "drives with an alert in the last L days before they failed (alerts earlier than that count for "
    "neither side), *drive false alarms* the share of healthy drives that alerted at least once; "
    "median lead is the days from a drive's first alert in that range to its failure. Window columns "
    "(drive-day precision/recall) are a different unit and not comparable to published drive-level "
    "FDR/FAR figures. All thresholds were chosen on the validation split only, never on the test data "
    "shown here. Compare detectors at *equal* false-alarm rate (the detection-vs-false-alarm table and "
    "plot), not at their own thresholds."
)


def write_report(out_dir: Path, metrics: dict, curves: dict, *, title: str) -> Path:
    """Write the PNG plots and ``report.md`` into ``out_dir``; return the report path.

    See the module docstring for the ``metrics`` and ``curves`` layouts. Any
    missing piece skips its plot (and its section) instead of failing.
    Files: ``roc.png``, ``pr.png``, ``confusion.png``, ``ae_error.png``,
    ``detection_vs_far.png``, ``lead_time.png``, ``training.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = metrics or {}
    curves = curves or {}
    det_metrics = _detector_metrics(metrics)
    far_curves = _mapping(curves, "far_curve")

    plots: dict[str, Path | None] = {}

    def attempt(key: str, make: Callable[[], Any]) -> None:
        # a malformed piece costs its plot, never the report
        try:
            made = make()
        except Exception as exc:
            warnings.warn(f"report: skipped the {key} plot: {exc!r}", RuntimeWarning, stacklevel=3)
            plt.close("all")
            return
        if isinstance(made, dict):
            plots.update(made)
        else:
            plots[key] = made

    with matplotlib.rc_context({"font.size": 9}):
        attempt("roc/pr", lambda: _plot_roc_pr(out, _detector_curves(curves), plt))
        attempt("confusion", lambda: _plot_confusion(out, det_metrics, plt))
        attempt("ae_error", lambda: _plot_ae_error(out, _mapping(curves, "ae_error"), plt))
        attempt("far", lambda: _plot_far_curve(out, far_curves, plt))
        attempt("lead", lambda: _plot_lead_days(out, _mapping(curves, "lead_days"), plt))
        attempt("history", lambda: _plot_history(out, _mapping(curves, "history"), plt))

    def fig(key: str, caption: str) -> list[str]:
        path = plots.get(key)
        return [f"![{caption}]({path.name})", ""] if path is not None else []

    lines = [f"# {title}", "", "## How to read this", "", _HOW_TO_READ, ""]
    lines += ["## Detectors", ""]
    if det_metrics:
        lines += [*_detector_table(det_metrics), ""]
    else:
        lines += ["_No detector metrics given._", ""]
    equal_far = _equal_far_table(far_curves)
    if equal_far:
        lines += ["### Drive detection rate at equal false-alarm rate", "", *equal_far, ""]
    lines += fig("far", "drive detection vs false-alarm rate")
    for heading, block in (
        ("### Signal ceiling", _ceiling_block(metrics.get("ceiling"))),
        ("### False alarms per 1,000 healthy drive-months (a unit that does not depend on the period length)",
         [f"- {n}: {_fmt(v, 2)}" for n, v in (metrics.get("false_alarms_per_1000_drive_months") or {}).items()]),
        ("### Detections counting the failure day (lead 0)", _lead0_table(metrics.get("lead0"), det_metrics)),
        ("### Lead times (at each detector's own threshold)", _lead_table(metrics.get("lead_distribution"))),
        ("### Per drive model (own thresholds; detected / false alarms)", _family_table(metrics.get("families"))),
    ):
        if block:
            lines += [heading, "", *block, ""]
    lines += fig("lead", "lead time histogram")
    window_figs = fig("roc", "ROC") + fig("pr", "precision-recall") + fig("confusion", "confusion matrices")
    if window_figs:
        lines += ["## Window-level curves", "", *window_figs]
    if plots.get("ae_error") is not None:
        lines += ["## Autoencoder reconstruction error", "", *fig("ae_error", "reconstruction error")]
    if plots.get("history") is not None:
        lines += ["## Training", "", *fig("history", "training curves")]
    lines += ["## Data", "", *_data_block(metrics.get("data")), ""]

    report = out / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report
