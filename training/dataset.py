"""Stream a window store into Keras without loading it: a ``PyDataset``.

Class imbalance is extreme (about one failing drive-day in 10^4–10^5), so the
dataset can undersample healthy windows afresh each epoch (every positive is
kept; a different healthy subset is drawn per epoch), and
:func:`balanced_class_weight` gives Keras class weights for what remains.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from diskwatch.models.features import FeatureSpec
from diskwatch.training.windowstore import WindowStore


def balanced_class_weight(labels: np.ndarray) -> dict[int, float]:
    """``n / (2 * n_c)`` per class (scikit-learn's "balanced"), 1.0 if absent."""
    labels = np.asarray(labels)
    n = labels.size
    weights = {}
    for c in (0, 1):
        count = int((labels == c).sum())
        weights[c] = float(n / (2 * count)) if count else 1.0
    return weights


class WindowDataset(keras.utils.PyDataset):
    """Batches of scaled windows (and targets) from a :class:`WindowStore`.

    ``target`` is ``"label"`` (classifier), ``"input"`` (autoencoder: x → x)
    or ``"days_to_failure"`` (RUL regressor).
    """

    def __init__(
        self,
        store: WindowStore,
        indices: np.ndarray,
        spec: FeatureSpec,
        *,
        batch_size: int = 256,
        target: str = "label",
        healthy_per_positive: float | None = None,
        shuffle: bool = True,
        seed: int = 0,
        hard: np.ndarray | None = None,
        hard_share: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= hard_share <= 1.0:
            raise ValueError(f"hard_share must be in [0, 1], got {hard_share}")
        if hard is not None and np.shape(hard) != np.shape(indices):
            raise ValueError("hard must be a mask aligned with indices")
        if target not in ("label", "input", "days_to_failure"):
            raise ValueError(f"unknown target {target!r}")
        self.store = store
        self.all_indices = np.asarray(indices, dtype=np.int64)
        self.spec = spec
        self.batch_size = batch_size
        self.target = target
        self.healthy_per_positive = healthy_per_positive
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self.hard = None if hard is None else np.asarray(hard, dtype=bool)
        self.hard_share = float(hard_share)
        self._epoch_indices = self._draw()

    def _draw(self) -> np.ndarray:
        idx = self.all_indices
        if self.healthy_per_positive is not None:
            labels = self.store.labels[idx]
            positives = idx[labels == 1]
            healthy = idx[labels == 0]
            n_healthy = min(healthy.size, max(1, math.ceil(positives.size * self.healthy_per_positive)))
            if self.hard is not None and self.hard_share > 0:
                healthy = self._draw_with_hard(healthy, self.hard[labels == 0], n_healthy)
            else:
                healthy = self._rng.choice(healthy, size=n_healthy, replace=False) if healthy.size else healthy
            idx = np.concatenate([positives, healthy])
        return self._rng.permutation(idx) if self.shuffle else np.sort(idx)

    def _draw_with_hard(self, healthy: np.ndarray, hard: np.ndarray, n: int) -> np.ndarray:
        """``n`` healthy windows, ``hard_share`` of them (as far as there are) from the ``hard`` ones.

        Healthy drives with old non-zero error counters are what the classifier
        confuses with failing ones; a uniform draw shows it few of them.
        """
        hard_pool, easy_pool = healthy[hard], healthy[~hard]
        n_hard = min(hard_pool.size, round(n * self.hard_share))
        n_easy = min(easy_pool.size, n - n_hard)
        return np.concatenate([
            self._rng.choice(hard_pool, size=n_hard, replace=False),
            self._rng.choice(easy_pool, size=n_easy, replace=False),
        ])

    @property
    def indices(self) -> np.ndarray:
        """Windows used this epoch (after undersampling)."""
        return self._epoch_indices

    def __len__(self) -> int:
        return max(1, math.ceil(self._epoch_indices.size / self.batch_size))

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        part = self._epoch_indices[i * self.batch_size : (i + 1) * self.batch_size]
        # Read shards in order (memory-mapped) then restore the shuffled order.
        order = np.argsort(part, kind="stable")
        x_sorted = self.store.load(part[order])
        x = np.empty_like(x_sorted)
        x[order] = x_sorted
        x = self.spec.finalize(x)
        if self.target == "input":
            return x, x
        if self.target == "days_to_failure":
            return x, self.store.days_to_failure[part].astype(np.float32)
        return x, self.store.labels[part].astype(np.float32)

    def on_epoch_end(self) -> None:
        self._epoch_indices = self._draw()
