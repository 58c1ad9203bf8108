"""Bayesian hyperparameter search for the classifier (KerasTuner).

Searches learning rate, width, depth and window length. Shorter windows are
the last ``s`` steps of the store's windows, so one store serves every
window length tried. The objective is validation PR-AUC (ROC-AUC flatters a
problem this imbalanced).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from diskwatch.models.architectures import build
from diskwatch.models.features import FeatureSpec
from diskwatch.training.dataset import WindowDataset, balanced_class_weight
from diskwatch.training.windowstore import WindowStore


class _LastSteps(keras.utils.PyDataset):
    """A WindowDataset seen through its last ``steps`` time steps."""

    def __init__(self, inner: WindowDataset, steps: int) -> None:
        super().__init__()
        self.inner = inner
        self.steps = steps

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.inner[i]
        return x[:, -self.steps :, :], y

    def on_epoch_end(self) -> None:
        self.inner.on_epoch_end()


class ClassifierHyperModel(kt.HyperModel):
    def __init__(self, store: WindowStore, spec: FeatureSpec, arch: str, seed: int, batch_size: int) -> None:
        super().__init__(name="classifier")
        self.store = store
        self.spec = spec
        self.arch = arch
        self.seed = seed
        self.batch_size = batch_size
        full = store.config.window
        self.windows = sorted({w for w in (7, 10, 14, 21, 30, full) if 2 <= w <= full})

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        window = hp.Choice("window", self.windows)
        kwargs: dict[str, Any] = {
            "width": hp.Int("width", 16, 128, step=16),
            "learning_rate": hp.Float("learning_rate", 1e-4, 1e-2, sampling="log"),
            "dropout": 0.2,
        }
        if self.arch != "cnn-lstm":
            kwargs["depth"] = hp.Int("depth", 1, 3)
        return build(self.arch, window, self.spec.n_features, **kwargs)

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        steps = hp.get("window")
        train = WindowDataset(
            self.store, self.store.select("train"), self.spec, batch_size=self.batch_size,
            healthy_per_positive=20.0, seed=self.seed,
        )
        val = WindowDataset(
            self.store, self.store.select("val"), self.spec, batch_size=self.batch_size,
            healthy_per_positive=100.0, shuffle=False, seed=self.seed + 1,
        )
        kwargs.pop("validation_data", None)
        return model.fit(
            _LastSteps(train, steps), validation_data=_LastSteps(val, steps),
            class_weight=balanced_class_weight(self.store.labels[train.indices]), **kwargs,
        )


def tune(
    store: WindowStore,
    out: Path,
    *,
    arch: str = "lstm",
    trials: int = 10,
    epochs: int = 5,
    batch_size: int = 256,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Run the search; write ``results.json``; return rows best-first."""
    keras.utils.set_random_seed(seed)
    spec = store.fit_scaler(store.select("train"))
    tuner = kt.BayesianOptimization(
        ClassifierHyperModel(store, spec, arch, seed, batch_size),
        objective=kt.Objective("val_pr_auc", direction="max"),
        max_trials=trials,
        seed=seed,
        directory=str(out),
        project_name="search",
        overwrite=True,
    )
    tuner.search(
        epochs=epochs, verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_pr_auc", mode="max", patience=2)],
    )
    rows = []
    for trial in tuner.oracle.get_best_trials(num_trials=trials):
        rows.append({"trial": trial.trial_id, "val_pr_auc": trial.score, **trial.hyperparameters.values})
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows
