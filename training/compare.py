"""Model comparison on one window store: every variant trained and scored the same way.

``diskwatch compare --data DUMP --time-split DATE --variants lstm,lstm+ind+wf,...``
trains each variant on the store's train split (windows ending before the
cut), and scores the test split's windows from the cut on (drives and days
never seen in training), reporting per-drive detection at fixed false-alarm
rates. A variant is ``KIND[+FLAG...]``:

* KIND: a classifier (``lstm``, ``gru``, ``rnn``, ``cnn-lstm``, ``mlp``), an
  autoencoder (``ae-lstm``, ``ae-conv``) or ``xgboost`` (per-day baseline);
* ``ind``: "reported" indicator columns and neutral fill of absent attributes;
* ``wf``: window-derived features inside the model (change since start,
  summary branch); ``hppN``: N healthy windows per positive per epoch;
  ``wN``: width N; ``sN``: mean of N classifiers trained with different seeds; ``hnN``: N % of
  the healthy windows drawn from those with a non-zero critical raw (hard negatives);
  ``focal``: focal loss for the classifier; ``mlN``: no positive windows closer
  than N days to the failure in the classifier's training; ``q``: per-feature
  quantile scaling; ``dN``: depth N; ``doN``: dropout N %; ``lrX``: learning rate X.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from diskwatch.training import baseline
from diskwatch.training.evaluate import FAR_GRID
from diskwatch.training.fit import ModelFitter, Splits, TrainConfig, score_indices, select_splits
from diskwatch.training.metrics import detection_at_far, detection_vs_far_curve
from diskwatch.training.windowstore import WindowStore

CLASSIFIERS = ("lstm", "gru", "rnn", "cnn-lstm", "mlp")
AUTOENCODERS = ("ae-lstm", "ae-conv")


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: what to train, parsed from ``KIND[+FLAG...]``."""

    name: str
    kind: str
    overrides: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> Variant:
        kind, *flags = text.strip().split("+")
        if kind not in (*CLASSIFIERS, *AUTOENCODERS, "xgboost"):
            raise ValueError(f"unknown variant kind {kind!r} in {text!r}")
        overrides: dict[str, Any] = {}
        for flag in flags:
            if flag == "ind":
                overrides |= {"indicators": True, "fill_mode": "neutral"}
            elif flag == "wf":
                overrides["window_features"] = True
            elif flag.startswith("hpp") and flag[3:].replace(".", "", 1).isdigit():
                overrides["healthy_per_positive"] = float(flag[3:])
            elif flag.startswith("w") and flag[1:].isdigit():
                overrides["width"] = int(flag[1:])
            elif flag.startswith("ml") and flag[2:].isdigit():
                overrides["classifier_min_lead"] = int(flag[2:])
            elif flag == "q":
                overrides["scaling"] = "quantile"
            elif flag.startswith("do") and flag[2:].isdigit() and int(flag[2:]) < 100:
                overrides["dropout"] = int(flag[2:]) / 100
            elif flag.startswith("d") and flag[1:].isdigit():
                overrides["depth"] = int(flag[1:])
            elif flag.startswith("lr") and _is_float(flag[2:]):
                overrides["learning_rate"] = float(flag[2:])
            elif flag == "focal":
                overrides["focal"] = True
            elif flag.startswith("hn") and flag[2:].isdigit() and int(flag[2:]) <= 100:
                overrides["hard_negative_share"] = int(flag[2:]) / 100
            elif flag.startswith("s") and flag[1:].isdigit() and int(flag[1:]) >= 1:
                overrides["classifier_seeds"] = int(flag[1:])
            else:
                raise ValueError(f"unknown variant flag {flag!r} in {text!r} "
                                 "(ind, wf, q, hppN, wN, dN, doN, lrX, sN, hnN, focal, mlN)")
        return cls(text.strip(), kind, overrides)


def _is_float(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


@dataclass(frozen=True)
class CompareRow:
    """Detection of one variant on the unseen test drives and days."""

    variant: str
    detection_at_far: dict[str, float | None]
    failed_drives: int
    healthy_drives: int
    train_seconds: float


def _config(base: TrainConfig, variant: Variant) -> TrainConfig:
    # A bare KIND is the plain model: flags switch the detection features on.
    update: dict[str, Any] = {"indicators": False, "fill_mode": "mean", "window_features": False}
    update |= variant.overrides
    if variant.kind in CLASSIFIERS:
        update["arch"] = variant.kind
    elif variant.kind in AUTOENCODERS:
        update["ae"] = variant.kind.removeprefix("ae-")
    return base.model_copy(update=update)


def _scores(store: WindowStore, splits: Splits, test: np.ndarray, config: TrainConfig, variant: Variant,
            console: Console) -> np.ndarray:
    """Train the variant and score the test windows (higher = more likely failing)."""
    if variant.kind == "xgboost":
        path, _ = baseline.fit(
            store, splits.train, splits.val, splits.spec, Path(tempfile.mkdtemp()) / "xgb.json",
            target_far=config.target_far, healthy_per_positive=config.healthy_per_positive, seed=config.seed,
        )
        model, _ = baseline.load(path)
        parts = [baseline.predict(model, splits.spec.finalize(store.load(test[i : i + 65536])))
                 for i in range(0, test.size, 65536)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
    from diskwatch.models.inference import Scorer

    fitter = ModelFitter(store, splits, config, Path(tempfile.mkdtemp(prefix="diskwatch-compare-")), console)
    if variant.kind in CLASSIFIERS:
        scores = score_indices(store, test, splits.spec, Scorer(fitter.classifier().model, None))
        return scores.probability
    scores = score_indices(store, test, splits.spec, Scorer(None, fitter.autoencoder().model))
    return scores.anomaly


def compare(
    store: WindowStore, variants: list[Variant], base: TrainConfig, *, min_lead: int = 1,
    lead_max: int | None = None, console: Console | None = None,
) -> list[CompareRow]:
    """Train and score every variant on the same splits; one row each (detections ``min_lead..lead_max``
    days ahead, ``lead_max`` defaulting to the store's horizon)."""
    if base.time_cutoff is None:
        raise ValueError("compare needs a time split (--time-split DATE): test on days after training")
    console = console or Console(stderr=True)
    test = store.select("test", time_cutoff=base.time_cutoff)
    serial = store.window_serial[test]
    end_day = store.end_day[test].astype(np.int64)
    failure_day = store.failure_day[serial]
    rows = []
    for variant in variants:
        config = _config(base, variant)
        started = time.perf_counter()
        splits = select_splits(store, config)
        score = _scores(store, splits, test, config, variant, console)
        seconds = time.perf_counter() - started
        curve = detection_vs_far_curve(score, serial, end_day, failure_day,
                                       store.config.horizon if lead_max is None else lead_max, None,
                                       min_lead=min_lead)
        at_far = {f"{far:g}": _none(detection_at_far(curve, far)) for far in FAR_GRID}
        failed = int(np.unique(serial[failure_day >= 0]).size)
        rows.append(CompareRow(variant.name, at_far, failed, int(np.unique(serial).size) - failed, round(seconds, 1)))
        console.print(f"{variant.name}: {at_far} ({seconds:.0f} s)")
    return rows


def _none(value: float) -> float | None:
    return None if value != value else float(value)


def table(rows: list[CompareRow], *, cutoff: dt.date | None = None) -> str:
    """The comparison as a Markdown table."""
    head = " | ".join(f"FAR ≤ {f:g}" for f in FAR_GRID)
    lines = [f"| variant | {head} | train s |", "|---" * (len(FAR_GRID) + 2) + "|"]
    for row in rows:
        cells = " | ".join("—" if v is None else f"{v:.3f}" for v in row.detection_at_far.values())
        lines.append(f"| {row.variant} | {cells} | {row.train_seconds:.0f} |")
    if rows:
        lines.append("")
        lines.append(f"Test: {rows[0].failed_drives} failed and {rows[0].healthy_drives} healthy drives of the test "
                     f"split, windows ending from {cutoff or 'the cut'} on; detection counts alerts ≥ 1 day before "
                     "the failure.")
    return "\n".join(lines)


def write(rows: list[CompareRow], out: Path, cutoff: dt.date | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    path = out / "compare.md"
    path.write_text(table(rows, cutoff=cutoff) + "\n")
    return path
