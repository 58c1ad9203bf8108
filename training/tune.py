"""Bayesian hyperparameter search for the classifier (KerasTuner).

Searches the recurrent cell (LSTM/GRU), width, depth, dropout, learning rate
and healthy windows per positive around the run's defaults (indicators,
neutral fill, window features). With a time cut, trials train on the train
split before the cut and are judged on the validation split after it (other
drives, later days) — the split thresholds are chosen on, never the test.
The objective is validation PR-AUC (ROC-AUC flatters a problem this imbalanced).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from diskwatch.models.architectures import build
from diskwatch.training.dataset import WindowDataset, balanced_class_weight
from diskwatch.training.fit import Splits, TrainConfig, classifier_hp, select_splits
from diskwatch.training.windowstore import WindowStore

#: The search space (small: a sweep must finish in ~20 min on two cores).
CELLS = ("lstm", "gru")
WIDTHS = (32, 64, 128)
DROPOUTS = (0.1, 0.2, 0.3)
HEALTHY_PER_POSITIVE = (10.0, 20.0, 40.0)


def trial_config(base: TrainConfig, hp: kt.HyperParameters) -> TrainConfig:
    """The training config one trial's hyperparameters stand for."""
    return base.model_copy(update={
        "arch": hp.Choice("arch", list(CELLS)),
        "width": hp.Choice("width", list(WIDTHS)),
        "depth": hp.Int("depth", 1, 2),
        "dropout": hp.Choice("dropout", list(DROPOUTS)),
        "learning_rate": hp.Float("learning_rate", 3e-4, 3e-3, sampling="log"),
        "healthy_per_positive": hp.Choice("healthy_per_positive", list(HEALTHY_PER_POSITIVE)),
    })


class ClassifierHyperModel(kt.HyperModel):
    def __init__(self, store: WindowStore, splits: Splits, base: TrainConfig) -> None:
        super().__init__(name="classifier")
        self.store, self.splits, self.base = store, splits, base

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        config = trial_config(self.base, hp)
        return build(config.arch, *self.splits.shape(self.store), **classifier_hp(config, self.splits.spec))

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        config = trial_config(self.base, hp)
        train = WindowDataset(
            self.store, self.splits.train, self.splits.spec, batch_size=config.batch_size,
            healthy_per_positive=config.healthy_per_positive, seed=config.seed,
        )
        val = WindowDataset(
            self.store, self.splits.val, self.splits.spec, batch_size=config.batch_size,
            healthy_per_positive=100.0, shuffle=False, seed=config.seed + 1,
        )
        kwargs.pop("validation_data", None)
        return model.fit(train, validation_data=val,
                         class_weight=balanced_class_weight(self.store.labels[train.indices]), **kwargs)


def tune(
    store: WindowStore,
    out: Path,
    *,
    base: TrainConfig | None = None,
    trials: int = 10,
    epochs: int = 5,
) -> list[dict[str, Any]]:
    """Run the search; write ``results.json``; return rows best-first."""
    base = base or TrainConfig()
    keras.utils.set_random_seed(base.seed)
    splits = select_splits(store, base)
    tuner = kt.BayesianOptimization(
        ClassifierHyperModel(store, splits, base),
        objective=kt.Objective("val_pr_auc", direction="max"),
        max_trials=trials,
        seed=base.seed,
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
