"""Train the classifier, autoencoder (and RUL model) from a window store.

Thresholds are chosen on the validation split only, then everything goes
into a model bundle. Seeded: the same store, config and seed give the same
bundle on the same backend and hardware.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from diskwatch.models.architectures import average_ensemble, build, use_focal_loss
from diskwatch.models.bundle import Thresholds, save_bundle
from diskwatch.models.features import BACKBLAZE_CRITICAL, FeatureSpec
from diskwatch.models.inference import Scorer, Scores
from diskwatch.training import baseline
from diskwatch.training.dataset import WindowDataset, balanced_class_weight
from diskwatch.training.metrics import drive_metrics, threshold_for_drive_far, threshold_max_f1
from diskwatch.training.progress import RichProgress
from diskwatch.training.windowstore import WindowStore


class TrainConfig(BaseModel):
    """Hyperparameters and policies of one training run."""

    model_config = ConfigDict(frozen=True)

    arch: Literal["lstm", "gru", "rnn", "cnn-lstm", "mlp"] = "lstm"
    ae: Literal["lstm", "conv"] = "conv"
    depth: int = Field(2, ge=1, le=6)
    width: int = Field(64, ge=4, le=1024)
    latent: int = Field(16, ge=2, le=512)
    dropout: float = Field(0.2, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(256, ge=8, le=8192)
    patience: int = Field(4, ge=1, le=100)
    healthy_per_positive: float = Field(
        20.0, gt=0, description="Classifier: healthy windows drawn per positive, afresh each epoch."
    )
    ae_max_windows: int = Field(100_000, ge=100, description="Cap on healthy windows for the autoencoder.")
    target_far: float = Field(0.01, gt=0, lt=1, description="Per-drive false-alarm rate to aim at.")
    operating: Literal["far", "f1"] = "far"
    rul: bool = True
    rul_max_days: int = Field(60, ge=1, description="RUL trains on windows this close to failure.")
    xgboost: bool = True
    time_cutoff: dt.date | None = Field(None, description="Time split: train before, test from this day.")
    indicators: bool = Field(True, description="Feed a 0/1 'reported' column per feature.")
    fill_mode: Literal["mean", "neutral"] = Field("neutral", description="Fill of never-reported attributes.")
    scaling: Literal["minmax", "quantile"] = Field(
        "minmax", description="Feature scaling: min-max bounds, or per-feature training quantiles (rank transform).",
    )
    window_features: bool = Field(True, description="Classifier reads change-since-start and the window summary.")
    budget_split: Literal["even", "searched"] = Field(
        "searched", description="Share of the false-alarm budget per detector: half each, or searched on validation."
    )
    hard_negative_share: float = Field(
        0.0, ge=0, le=1,
        description="Classifier: share of each epoch's healthy windows drawn from those with a non-zero "
                    "raw 5/187/188/197/198 (the healthy drives it confuses with failing ones).",
    )
    classifier_min_lead: int = Field(
        0, ge=0, description="Classifier: leave out positive windows ending fewer than this many days before the "
                             "failure (a lead-0 alert does not count as a detection).",
    )
    focal: bool = Field(False, description="Classifier loss: focal (gamma 2) instead of binary cross-entropy.")
    classifier_seeds: int = Field(
        1, ge=1, le=16, description="Classifiers trained with different seeds and averaged into one model."
    )
    seed: int = 0


@dataclass(frozen=True)
class ValidationSummary:
    """What the thresholds were chosen on (recorded in the bundle's metrics)."""

    windows: int
    positives: int
    drives: int
    failed_drives: int
    autoencoder_window_fpr: float | None
    budget: BudgetSplit | None = None
    #: Days the validation windows span: the FAR promised is per drive over a period this long.
    days: int | None = None


@dataclass
class TrainResult:
    bundle: Path
    thresholds: Thresholds
    histories: dict[str, dict[str, list[float]]]
    validation: ValidationSummary


@dataclass
class Fitted:
    """One trained model with its history and the facts the manifest records."""

    model: keras.Model
    history: dict[str, list[float]]
    info: dict[str, Any]
    hp: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Splits:
    """Window indices of the train and validation splits, and the fitted spec."""

    train: np.ndarray
    val: np.ndarray
    spec: FeatureSpec

    def shape(self, store: WindowStore) -> tuple[int, int]:
        return (store.config.window, self.spec.n_inputs)


def train(
    store: WindowStore,
    out: Path | str,
    config: TrainConfig,
    *,
    logdir: Path | None = None,
    console: Console | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Fit every model on the store's train split and write a bundle to ``out``."""
    console = console or Console(stderr=True)
    keras.utils.set_random_seed(config.seed)
    splits = select_splits(store, config)
    logdir = logdir or Path(tempfile.mkdtemp(prefix="diskwatch-logs-"))
    fit_one = ModelFitter(store, splits, config, logdir, console)
    classifier = fit_one.classifier()
    autoencoder = fit_one.autoencoder()
    rul, rul_info = fit_one.rul()
    fitted = {"classifier": classifier, "autoencoder": autoencoder} | ({"rul": rul} if rul else {})

    val_scores = score_indices(store, splits.val, splits.spec, Scorer(classifier.model, autoencoder.model))
    thresholds, validation = choose_thresholds(store, splits.val, val_scores, config)
    console.print(
        f"thresholds: classifier {thresholds.classifier:.4g} ({thresholds.classifier_method}), "
        f"autoencoder {thresholds.autoencoder:.4g} ({thresholds.autoencoder_method})"
    )
    workdir = Path(tempfile.mkdtemp(prefix="diskwatch-train-"))
    extras, xgb_info = _fit_baseline(store, splits, config, workdir)
    extras["splits"] = _write_splits(store, workdir / "splits.json")
    info = {name: f.info for name, f in fitted.items()} | {"xgboost": xgb_info}
    if rul is None:
        info["rul"] = rul_info
    histories = {name: f.history for name, f in fitted.items()}
    bundle = save_bundle(
        out, models={name: f.model for name, f in fitted.items()}, spec=splits.spec, window=store.config,
        thresholds=thresholds,
        architectures={role: {"kind": fitted[role].info["kind"], **fitted[role].hp}
                       for role in ("classifier", "autoencoder")},
        training=_training_record(store, splits, config, info, histories, logdir),
        metrics={"validation": asdict(validation)}, extras=extras, overwrite=overwrite,
    )
    return TrainResult(bundle, thresholds, histories, validation)


def select_splits(store: WindowStore, config: TrainConfig) -> Splits:
    """Train/validation windows (serial split, optionally time-cut) and the spec fitted on train."""
    cutoff = config.time_cutoff
    train_idx = store.select("train", time_cutoff=cutoff)
    val_idx = store.select("val", time_cutoff=cutoff)
    if store.labels[train_idx].sum() == 0:
        raise ValueError(
            "no failing-drive windows in the training split: the data needs failures "
            "(more days or drives, or a longer --horizon)"
        )
    if val_idx.size == 0:
        raise ValueError("the validation split is empty: more drives are needed")
    spec = store.spec.model_copy(update={"indicators": config.indicators, "fill_mode": config.fill_mode,
                                         "scaling": config.scaling})
    return Splits(train_idx, val_idx, store.fit_scaler(train_idx, spec=spec))


class ModelFitter:
    """Fits each model of a run on the same store, splits and callbacks."""

    def __init__(
        self, store: WindowStore, splits: Splits, config: TrainConfig, logdir: Path, console: Console
    ) -> None:
        self.store, self.splits, self.config = store, splits, config
        self.logdir, self.console = logdir, console
        self.shape = splits.shape(store)
        self._hard: np.ndarray | None = None

    def _fit(self, name: str, model: keras.Model, train_ds: Any, val_ds: Any, *, monitor: str, mode: str,
             **kwargs: Any) -> dict[str, list[float]]:
        history = model.fit(
            train_ds, validation_data=val_ds, epochs=self.config.epochs, verbose=0,
            callbacks=_callbacks(name, self.config, self.logdir, self.console, monitor=monitor, mode=mode),
            **kwargs,
        )
        return _history(history)

    def classifier(self) -> Fitted:
        """The failure classifier; with ``classifier_seeds`` > 1 the mean of that many seeds' classifiers."""
        members = [self._one_classifier(self.config.seed + 1009 * k) for k in range(self.config.classifier_seeds)]
        if len(members) == 1:
            return members[0]
        first = members[0]
        history = {key: [float(np.mean(v)) for v in zip(*(m.history.get(key, []) for m in members), strict=False)]
                   for key in first.history}
        info = first.info | {"seeds": len(members),
                             "epochs_run": [m.info["epochs_run"] for m in members]}
        return Fitted(average_ensemble([m.model for m in members]), history, info, first.hp)

    def _hard_negatives(self) -> np.ndarray:
        """Mask of train windows with a non-zero critical raw (computed once per run)."""
        if self._hard is None:
            self._hard = critical_nonzero(self.store, self._classifier_train())
        return self._hard

    def _classifier_train(self) -> np.ndarray:
        """Train windows for the classifier: without positives closer than ``classifier_min_lead``."""
        idx, min_lead = self.splits.train, self.config.classifier_min_lead
        if min_lead <= 0:
            return idx
        dtf = np.nan_to_num(self.store.days_to_failure[idx], nan=np.inf)
        return idx[~((self.store.labels[idx] == 1) & (dtf < min_lead))]

    def _one_classifier(self, seed: int) -> Fitted:
        """One classifier on undersampled healthy windows with balanced class weights."""
        config, store, spec = self.config, self.store, self.splits.spec
        if seed != config.seed:  # the first member keeps the run's seeding (same as a single classifier)
            keras.utils.set_random_seed(seed)
        hp = classifier_hp(config, spec)
        model = build(config.arch, *self.shape, **hp)
        if config.focal:
            use_focal_loss(model, config.learning_rate)
        hard = self._hard_negatives() if config.hard_negative_share > 0 else None
        train_ds = WindowDataset(
            store, self._classifier_train(), spec, batch_size=config.batch_size,
            healthy_per_positive=config.healthy_per_positive, seed=seed,
            hard=hard, hard_share=config.hard_negative_share,
        )
        val_ds = WindowDataset(
            store, self.splits.val, spec, batch_size=config.batch_size,
            healthy_per_positive=config.healthy_per_positive * 5, shuffle=False, seed=config.seed + 1,
        )
        class_weight = balanced_class_weight(store.labels[train_ds.indices])
        history = self._fit("classifier", model, train_ds, val_ds, monitor="val_pr_auc", mode="max",
                            class_weight=class_weight)
        info = {
            "kind": config.arch, **hp, "class_weight": class_weight,
            "healthy_per_positive": config.healthy_per_positive,
            "hard_negative_share": config.hard_negative_share, "focal": config.focal,
            "min_lead": config.classifier_min_lead,
            "train_windows_per_epoch": int(train_ds.indices.size),
            "train_positives": int(store.labels[self.splits.train].sum()),
            "epochs_run": len(history.get("loss", [])),
        }
        return Fitted(model, history, info, hp)

    def autoencoder(self) -> Fitted:
        """The autoencoder on windows of drives that never fail (capped)."""
        config, store, spec = self.config, self.store, self.splits.spec
        kind = f"ae-{config.ae}"
        hp: dict[str, Any] = {"learning_rate": config.learning_rate}
        if config.ae == "lstm":
            hp |= {"width": config.width, "latent": config.latent}
        model = build(kind, *self.shape, **hp)
        rng = np.random.default_rng(config.seed)
        healthy_train = _healthy(store, self.splits.train, rng, config.ae_max_windows)
        healthy_val = _healthy(store, self.splits.val, rng, max(config.ae_max_windows // 5, 100))
        history = self._fit(
            "autoencoder", model,
            WindowDataset(store, healthy_train, spec, batch_size=config.batch_size, target="input", seed=config.seed),
            WindowDataset(store, healthy_val, spec, batch_size=config.batch_size, target="input", shuffle=False),
            monitor="val_loss", mode="min",
        )
        info = {"kind": kind, **hp, "train_windows": int(healthy_train.size),
                "epochs_run": len(history.get("loss", []))}
        return Fitted(model, history, info, hp)

    def rul(self) -> tuple[Fitted | None, dict[str, Any]]:
        """The optional days-to-failure regressor on windows near a failure."""
        config, store, spec = self.config, self.store, self.splits.spec
        if not config.rul:
            return None, {"skipped": "disabled"}
        dtf = store.days_to_failure
        near = lambda idx: idx[np.nan_to_num(dtf[idx], nan=np.inf) <= config.rul_max_days]  # noqa: E731
        rul_train, rul_val = near(self.splits.train), near(self.splits.val)
        if rul_train.size < 64 or rul_val.size < 8:
            return None, {"skipped": f"only {rul_train.size} training windows near a failure (need 64)"}
        model = build("rul", *self.shape, width=config.width, learning_rate=config.learning_rate)
        history = self._fit(
            "rul", model,
            WindowDataset(store, rul_train, spec, batch_size=64, target="days_to_failure", seed=config.seed),
            WindowDataset(store, rul_val, spec, batch_size=64, target="days_to_failure", shuffle=False),
            monitor="val_loss", mode="min",
        )
        info = {"kind": "rul", "train_windows": int(rul_train.size), "max_days": config.rul_max_days}
        return Fitted(model, history, info), info


def critical_nonzero(store: WindowStore, indices: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Per window: does any raw 5/187/188/197/198 exceed 0 on any of its days (the rule's signal)."""
    names = store.spec.names
    cols = [names.index(f"smart_{a}_raw") for a in BACKBLAZE_CRITICAL if f"smart_{a}_raw" in names]
    out = np.zeros(indices.size, dtype=bool)
    if not cols:
        return out
    for i in range(0, indices.size, chunk):
        x = store.load(indices[i : i + chunk])[:, :, cols]
        out[i : i + chunk] = (np.nan_to_num(x, nan=0.0) > 0).any(axis=(1, 2))
    return out


def classifier_hp(config: TrainConfig, spec: FeatureSpec) -> dict[str, Any]:
    """The classifier builder's hyperparameters for this config and (fitted) spec."""
    hp: dict[str, Any] = {"width": config.width, "dropout": config.dropout, "learning_rate": config.learning_rate}
    if config.arch != "cnn-lstm":
        hp["depth"] = config.depth
    if config.window_features or config.arch == "mlp":
        hp |= {"window_features": True, "n_values": spec.n_features}
    return hp


def _fit_baseline(
    store: WindowStore, splits: Splits, config: TrainConfig, workdir: Path
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The XGBoost per-day baseline on the same features and splits (when installed)."""
    if not (config.xgboost and baseline.available()):
        return {}, {"skipped": "xgboost not installed" if config.xgboost else "disabled"}
    model_path, info = baseline.fit(
        store, splits.train, splits.val, splits.spec, workdir / "baseline-xgboost.json",
        target_far=config.target_far, healthy_per_positive=config.healthy_per_positive, seed=config.seed,
    )
    return {"xgboost": model_path}, info


def _training_record(
    store: WindowStore, splits: Splits, config: TrainConfig, info: dict[str, Any],
    histories: dict[str, dict[str, list[float]]], logdir: Path,
) -> dict[str, Any]:
    """The manifest's ``training`` section: data, splits, config, per-model facts."""
    cutoff = config.time_cutoff
    return {
        "data": store.manifest.get("data"),
        "extra_data": store.manifest.get("extra_data") or [],
        "date_from": store.manifest.get("date_from"),
        "date_to": store.manifest.get("date_to"),
        "time_cutoff": cutoff.isoformat() if cutoff else None,
        "split": "serial+time" if cutoff else "serial",
        "split_drives": store.manifest.get("split_drives"),
        "split_failed": store.manifest.get("split_failed"),
        "windows": {"train": int(splits.train.size), "val": int(splits.val.size)},
        "store_sampling": {"healthy_fraction": store.manifest.get("healthy_fraction")},
        "config": config.model_dump(mode="json"),
        "models": info,
        "histories": histories,
        "logdir": str(logdir),
    }


def score_indices(
    store: WindowStore, indices: np.ndarray, spec: FeatureSpec, scorer: Scorer, batch: int = 4096
) -> Scores:
    """Score stored windows in order with the shared inference engine."""
    parts = [scorer.score(spec.finalize(store.load(indices[i : i + batch]))) for i in range(0, indices.size, batch)]
    return concat_scores(parts, spec.n_inputs)


def concat_scores(parts: list[Scores], n_features: int) -> Scores:
    if not parts:
        empty = np.zeros(0, np.float32)
        return Scores(empty, empty, np.zeros((0, n_features), np.float32), None)
    rul = None if parts[0].days_to_failure is None else np.concatenate([p.days_to_failure for p in parts])
    return Scores(
        np.concatenate([p.probability for p in parts]),
        np.concatenate([p.anomaly for p in parts]),
        np.concatenate([p.feature_error for p in parts]),
        rul,
    )


@dataclass(frozen=True)
class BudgetSplit:
    """How the false-alarm budget was shared between the two detectors on validation."""

    classifier_share: float
    scale: float
    classifier_far: float
    autoencoder_far: float
    combined_far: float | None
    detection: float | None


#: Classifier shares of the budget tried by ``budget_split="searched"`` (the rest goes to the autoencoder).
BUDGET_SHARES = (0.5, 0.65, 0.8, 0.9, 1.0)
#: Multipliers tried on both budgets: the union of two alarms sets is usually smaller than their sum.
BUDGET_SCALES = tuple(1.0 + 0.1 * i for i in range(11))


def split_budget(
    scores: Scores, serial: np.ndarray, end_day: np.ndarray, failure_day: np.ndarray, target_far: float,
    horizon: int, *, searched: bool,
) -> BudgetSplit:
    """Share ``target_far`` between the classifier and the autoencoder on validation.

    ``searched=False``: half each (a union bound: the combined rule stays within
    the budget). ``searched=True``: each share of :data:`BUDGET_SHARES`, scaled
    up while the *combined* per-drive FAR on validation stays within the
    budget; the split detecting most failed validation drives (>= 1 day ahead)
    wins, ties going to the more even split.
    """
    def evaluate(share: float, scale: float) -> BudgetSplit:
        far_c, far_a = min(1.0, target_far * share * scale), min(1.0, target_far * (1 - share) * scale)
        t_c = threshold_for_drive_far(scores.probability, serial, failure_day, far_c)
        t_a = threshold_for_drive_far(scores.anomaly, serial, failure_day, far_a)
        alert = (scores.probability >= t_c) | (scores.anomaly >= t_a)
        d = drive_metrics(alert, serial, end_day, failure_day, horizon, min_lead=min(1, horizon))
        return BudgetSplit(share, scale, far_c, far_a, d["false_alarm_rate"], d["detection_rate"])

    if not searched:
        return evaluate(0.5, 1.0)
    best: BudgetSplit | None = None
    for share in BUDGET_SHARES:
        fitting = [evaluate(share, 1.0)]
        for scale in BUDGET_SCALES[1:]:
            trial = evaluate(share, scale)
            if trial.combined_far is None or trial.combined_far > target_far:
                break
            fitting.append(trial)
        top = fitting[-1]
        if best is None or (top.detection or 0.0) > (best.detection or 0.0):
            best = top
    assert best is not None
    return best


def choose_thresholds(
    store: WindowStore, idx: np.ndarray, scores: Scores, config: TrainConfig
) -> tuple[Thresholds, ValidationSummary]:
    """Pick alert thresholds on validation windows (later in time and other drives than training).

    The per-drive false-alarm budget ``target_far`` is shared between the
    classifier and the autoencoder (:func:`split_budget`), so the combined
    alert rule — either detector fires — stays within it on validation.
    The classifier's max-F1 threshold is recorded too (``--operating f1``).
    """
    labels = store.labels[idx]
    serial = store.window_serial[idx]
    failure_day = store.failure_day[serial]
    end_day = store.end_day[idx].astype(np.int64)
    split = split_budget(scores, serial, end_day, failure_day, config.target_far, store.config.horizon,
                         searched=config.budget_split == "searched")
    f1_thr = threshold_max_f1(labels, scores.probability)
    far_thr = threshold_for_drive_far(scores.probability, serial, failure_day, split.classifier_far)
    ae_thr = threshold_for_drive_far(scores.anomaly, serial, failure_day, split.autoencoder_far)
    healthy_windows = failure_day < 0
    ae_window_fpr = float((scores.anomaly[healthy_windows] >= ae_thr).mean()) if healthy_windows.any() else None
    how = (f"{split.classifier_share:g} of the budget x{split.scale:.1f}, the split detecting most validation "
           "failures" if config.budget_split == "searched" else "half the budget")
    if config.operating == "f1" and np.isfinite(f1_thr):
        operating, method = f1_thr, "max window F1 on validation"
    else:
        operating, method = far_thr, f"per-drive false-alarm rate <= {split.classifier_far:g} on validation ({how})"
    thresholds = Thresholds(
        classifier=float(operating),
        classifier_method=method,
        classifier_max_f1=float(f1_thr) if np.isfinite(f1_thr) else None,
        classifier_target_far=config.target_far,
        autoencoder=float(ae_thr),
        autoencoder_method=(
            f"per-drive false-positive rate <= {split.autoencoder_far:g} read off the validation ROC of healthy "
            f"drives ({how})"
        ),
        autoencoder_target_fpr=split.autoencoder_far,
    )
    validation = ValidationSummary(
        windows=int(idx.size),
        positives=int(labels.sum()),
        drives=int(np.unique(serial).size),
        failed_drives=int(np.unique(serial[failure_day >= 0]).size),
        autoencoder_window_fpr=ae_window_fpr,
        budget=split,
        days=int(np.unique(end_day).size),
    )
    return thresholds, validation


def _healthy(store: WindowStore, idx: np.ndarray, rng: np.random.Generator, cap: int) -> np.ndarray:
    """Windows of drives that never fail in the data, at most ``cap``."""
    never_fail = store.failure_day[store.window_serial[idx]] < 0
    healthy = idx[never_fail]
    if healthy.size > cap:
        healthy = np.sort(rng.choice(healthy, size=cap, replace=False))
    return healthy


def _callbacks(
    name: str, config: TrainConfig, logdir: Path, console: Console, *, monitor: str, mode: str
) -> list[keras.callbacks.Callback]:
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=config.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2)),
        RichProgress(name, config.epochs, console),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(logdir / name), write_graph=False))
    return callbacks


def _history(history: keras.callbacks.History) -> dict[str, list[float]]:
    return {k: [float(v) for v in values] for k, values in history.history.items()}


def _write_splits(store: WindowStore, path: Path) -> Path:
    """Which serial was in which split, so evaluation can stay out-of-sample."""
    import json

    mapping = dict(zip(store.serials, store.split_of.tolist(), strict=True))
    path.write_text(json.dumps(mapping, separators=(",", ":"), sort_keys=True))
    return path
