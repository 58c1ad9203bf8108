"""Window-level features as Keras layers, so a saved ``.keras`` model carries them.

A SMART counter is a step function: most of a failing drive's signal is "a
counter that was 0 became > 0, or grew" inside the window, while ~7 % of
healthy drives carry old non-zero counters for months. These layers compute
what a human reads in a window from the finalized input ``[B, S, C]`` whose
first ``n_values`` columns are scaled feature values (the rest, if any, are
"reported" indicators). They use ``keras.ops`` only, so they run on every
backend, and are registered serializable, so ``load_model(safe_mode=True)``
restores them with no custom objects passed — the stream needs no change.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

#: A scaled value must rise by more than this between two days to count as an increase.
INCREASE_EPS = 1e-4


@keras.saving.register_keras_serializable(package="diskwatch")
class WindowChange(keras.layers.Layer):
    """Per step, each value's change since the window's first day: ``x[:, t] - x[:, 0]``."""

    def __init__(self, n_values: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_values = int(n_values)

    def call(self, x: Any) -> Any:
        v = x[:, :, : self.n_values]
        return v - v[:, :1, :]

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (input_shape[0], input_shape[1], self.n_values)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_values": self.n_values}


@keras.saving.register_keras_serializable(package="diskwatch")
class WindowSummary(keras.layers.Layer):
    """Per value column: last, change since start, max, share of days it rose, days since it last rose.

    Output ``[B, 5 * n_values + (C - n_values)]``: the five summaries per
    value, then the last day's remaining (indicator) columns. "Days since the
    last increase" is scaled to [0, 1] by the window length; 1 = no increase.
    """

    def __init__(self, n_values: int, eps: float = INCREASE_EPS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_values = int(n_values)
        self.eps = float(eps)

    def call(self, x: Any) -> Any:
        steps = x.shape[1]
        v = x[:, :, : self.n_values]
        last = v[:, -1, :]
        rose = ops.cast(v[:, 1:, :] - v[:, :-1, :] > self.eps, x.dtype)  # [B, S-1, n]
        span = float(max(steps - 1, 1))
        position = ops.reshape(ops.cast(ops.arange(1, steps), x.dtype), (1, steps - 1, 1))
        last_rise = ops.max(rose * position, axis=1)  # 0 when it never rose
        parts = [
            last,
            last - v[:, 0, :],
            ops.max(v, axis=1),
            ops.sum(rose, axis=1) / span,
            (span - last_rise) / span,
        ]
        if x.shape[-1] > self.n_values:
            parts.append(x[:, -1, self.n_values :])
        return ops.concatenate(parts, axis=-1)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (input_shape[0], 5 * self.n_values + (input_shape[-1] - self.n_values))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_values": self.n_values, "eps": self.eps}
