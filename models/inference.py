"""Batched inference: score N windows with every model in one call.

:class:`Scorer` fuses the classifier, the autoencoder and (optionally) the RUL
regressor into ONE functional :class:`keras.Model` sharing their weights::

    windows [B, S, F] ─┬─ classifier ─────────────────────────→ probability [B, 1]
                       ├─ autoencoder → mean_t (x - x̂)² ──────→ feature_error [B, F]
                       └─ rul ─────────────────────────────────→ days [B, 1]

The per-feature error is computed inside the graph with ``keras.ops``, so
one ``predict_on_batch`` per chunk replaces two or three dispatches and the
reconstruction ``[B, S, F]`` never leaves the device. Batches are padded to
power-of-two *buckets* (``min_bucket .. max_batch``) and larger inputs are
cut into ``max_batch`` chunks, so a varying N only ever shows the compiled
function a handful of shapes (no retracing / XLA recompiles after
:meth:`Scorer.warmup`). Everything is numpy in, numpy out and stock Keras
inside, so it runs unchanged on TensorFlow, JAX or PyTorch, CPU or GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np


@dataclass(frozen=True)
class Scores:
    """Scores for N windows (row i belongs to input window i)."""

    #: [N] float32: classifier P(failure within the horizon); NaN without a classifier.
    probability: np.ndarray
    #: [N] float32: autoencoder mean squared reconstruction error; NaN without an autoencoder.
    anomaly: np.ndarray
    #: [N, F] float32: squared reconstruction error per feature, averaged over the
    #: window's steps (which SMART attributes look wrong); NaN without an autoencoder.
    feature_error: np.ndarray
    #: [N] float32: predicted days to failure, or None without a RUL model.
    days_to_failure: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.probability.shape[0])


def _buckets(min_bucket: int, max_batch: int) -> tuple[int, ...]:
    if min_bucket < 1:
        raise ValueError(f"min_bucket must be >= 1, got {min_bucket}")
    if max_batch < min_bucket:
        raise ValueError(f"max_batch ({max_batch}) must be >= min_bucket ({min_bucket})")
    sizes = []
    size = 1
    while size < min_bucket:
        size *= 2
    while size < max_batch:
        sizes.append(size)
        size *= 2
    sizes.append(int(max_batch))  # max_batch itself is always the largest bucket
    return tuple(sizes)


def _window_shape(model: keras.Model, role: str) -> tuple[int, int]:
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    if shape is None or len(shape) != 3 or shape[1] is None or shape[2] is None:
        raise ValueError(f"{role} must take fixed-size windows [batch, S, F]; its input is {shape}")
    return int(shape[1]), int(shape[2])


class Scorer:
    """Score finalized windows ``[N, S, F]`` with all given models at once.

    ``buckets`` are the only batch sizes the fused model is ever called with;
    ``shapes_seen`` records the padded batch sizes actually used (always a
    subset of ``buckets``). Thread-compatible: :meth:`score` keeps no
    per-call state besides that set.
    """

    def __init__(
        self,
        classifier: keras.Model | None,
        autoencoder: keras.Model | None,
        rul: keras.Model | None = None,
        *,
        max_batch: int = 1024,
        min_bucket: int = 8,
    ) -> None:
        models = {"classifier": classifier, "autoencoder": autoencoder, "rul": rul}
        present = {role: m for role, m in models.items() if m is not None}
        if not present:
            raise ValueError("Scorer needs at least one model")
        shapes = {role: _window_shape(m, role) for role, m in present.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"models disagree on the window shape [S, F]: {shapes}")
        self.window, self.n_features = next(iter(shapes.values()))
        self.classifier = classifier
        self.autoencoder = autoencoder
        self.rul = rul
        self.buckets: tuple[int, ...] = _buckets(int(min_bucket), int(max_batch))
        self.max_batch = self.buckets[-1]
        self.shapes_seen: set[int] = set()

        x = keras.Input(shape=(self.window, self.n_features), dtype="float32", name="windows")
        outputs: list = []
        self._slots: dict[str, int] = {}
        if classifier is not None:
            self._slots["probability"] = len(outputs)
            outputs.append(keras.ops.cast(classifier(x), "float32"))
        if autoencoder is not None:
            reconstruction = keras.ops.cast(autoencoder(x), "float32")
            if tuple(reconstruction.shape[1:]) != (self.window, self.n_features):
                raise ValueError(
                    f"autoencoder output {tuple(reconstruction.shape)} is not a reconstruction of "
                    f"[batch, {self.window}, {self.n_features}]"
                )
            self._slots["feature_error"] = len(outputs)
            outputs.append(keras.ops.mean(keras.ops.square(x - reconstruction), axis=1))
        if rul is not None:
            self._slots["days"] = len(outputs)
            outputs.append(keras.ops.cast(rul(x), "float32"))
        #: The fused model (weights shared with the given models; never compiled or saved).
        self.combined = keras.Model(x, outputs, name="scorer")

    # -- public ---------------------------------------------------------------

    def bucket_for(self, n: int) -> int:
        """The smallest bucket holding ``n`` rows (``n <= max_batch``)."""
        for size in self.buckets:
            if n <= size:
                return size
        raise ValueError(f"{n} rows exceed max_batch={self.max_batch}")

    def warmup(self) -> None:
        """Call the fused model once per bucket, so no real batch pays for tracing."""
        for size in self.buckets:
            self._run(np.zeros((size, self.window, self.n_features), dtype=np.float32))

    def score(self, x: np.ndarray) -> Scores:
        """Scores for finalized windows ``x`` ``[N, S, F]`` (N may be 0)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (self.window, self.n_features):
            raise ValueError(f"expected windows [N, {self.window}, {self.n_features}], got {x.shape}")
        n = x.shape[0]
        parts: dict[str, list[np.ndarray]] = {slot: [] for slot in self._slots}
        for start in range(0, n, self.max_batch):
            chunk = x[start : start + self.max_batch]
            for slot, value in self._predict_chunk(chunk).items():
                parts[slot].append(value)
        out = {
            slot: np.concatenate(values, axis=0) if values else self._empty(slot)
            for slot, values in parts.items()
        }
        nan = np.full(n, np.nan, dtype=np.float32)
        probability = out["probability"].reshape(n) if "probability" in out else nan
        if "feature_error" in out:
            feature_error = out["feature_error"].reshape(n, self.n_features)
            anomaly = feature_error.mean(axis=1, dtype=np.float32) if n else nan
        else:
            feature_error = np.full((n, self.n_features), np.nan, dtype=np.float32)
            anomaly = nan.copy()
        days = out["days"].reshape(n) if "days" in out else None
        return Scores(
            probability=probability,
            anomaly=np.asarray(anomaly, dtype=np.float32),
            feature_error=feature_error,
            days_to_failure=days,
        )

    # -- internals -------------------------------------------------------------

    def _empty(self, slot: str) -> np.ndarray:
        width = self.n_features if slot == "feature_error" else 1
        return np.zeros((0, width), dtype=np.float32)

    def _predict_chunk(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        rows = chunk.shape[0]
        size = self.bucket_for(rows)
        if rows == size:
            padded = np.ascontiguousarray(chunk)
        else:
            padded = np.empty((size, self.window, self.n_features), dtype=np.float32)
            padded[:rows] = chunk
            padded[rows:] = 0.0
        outputs = self._run(padded)
        return {slot: np.asarray(outputs[i][:rows], dtype=np.float32) for slot, i in self._slots.items()}

    def _run(self, padded: np.ndarray) -> list[np.ndarray]:
        self.shapes_seen.add(int(padded.shape[0]))
        outputs = self.combined.predict_on_batch(padded)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return list(outputs)
