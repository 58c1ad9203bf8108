"""Model builders: plain functions of their hyperparameters.

Every builder takes finalized windows ``[batch, window, n_features]`` (see
:meth:`models.features.FeatureSpec.finalize`) and returns a *compiled*
:class:`keras.Model` built from stock Keras 3 layers plus the registered ``keras.ops``-only
window layers of :mod:`models.layers`, so a model saved as ``.keras`` loads
with ``keras.saving.load_model(path, safe_mode=True)`` under any backend
(tensorflow, jax, torch) with no custom objects passed.

Three roles, each with a stable model ``name``:

* ``"classifier"`` — P(failure within the horizon), one sigmoid unit
  (kinds ``lstm``, ``gru``, ``rnn``, ``cnn-lstm``, and ``mlp``: dense layers on
  the window summary alone); with ``window_features=True`` a recurrent
  classifier also reads each value's change since the window start per step
  and joins a dense branch on the window summary (:mod:`models.layers`);
* ``"autoencoder"`` — reconstruction of the window, trained on healthy
  drives; the reconstruction error is the anomaly score (``ae-lstm``,
  ``ae-conv``);
* ``"rul"`` — days to failure, softplus so it is never negative (``rul``).

Recurrent layers keep cuDNN-compatible settings (tanh/sigmoid activations,
``recurrent_dropout=0``, ``unroll=False``; GRU ``reset_after=True``), so a
GPU picks the fused kernel; regularisation is a ``Dropout`` layer between
recurrent layers instead of recurrent dropout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import keras

from diskwatch.models.layers import WindowChange, WindowSummary

Cell = Literal["lstm", "gru", "rnn"]

CLASSIFIER = "classifier"
AUTOENCODER = "autoencoder"
RUL = "rul"

#: ``build`` kind → the role (and model name) of the model it makes.
KIND_ROLES: dict[str, str] = {
    "lstm": CLASSIFIER,
    "gru": CLASSIFIER,
    "rnn": CLASSIFIER,
    "cnn-lstm": CLASSIFIER,
    "mlp": CLASSIFIER,
    "ae-lstm": AUTOENCODER,
    "ae-conv": AUTOENCODER,
    "rul": RUL,
}
KINDS: tuple[str, ...] = tuple(KIND_ROLES)

_CELLS: dict[str, Callable[..., keras.layers.Layer]] = {
    "lstm": keras.layers.LSTM,
    "gru": keras.layers.GRU,
    "rnn": keras.layers.SimpleRNN,
}


# -- helpers -----------------------------------------------------------------


def _check(window: int, n_features: int, **positive: int) -> None:
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if int(n_features) < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    for name, value in positive.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def _inputs(window: int, n_features: int) -> keras.KerasTensor:
    return keras.Input(shape=(int(window), int(n_features)), dtype="float32", name="windows")


def _recurrent(cell: str, units: int, *, return_sequences: bool, name: str) -> keras.layers.Layer:
    # Defaults are the cuDNN-compatible ones; spelled out so nobody "tunes" them away.
    kwargs: dict[str, Any] = {
        "activation": "tanh",
        "recurrent_dropout": 0.0,
        "unroll": False,
        "return_sequences": return_sequences,
        "name": name,
    }
    if cell != "rnn":
        kwargs["recurrent_activation"] = "sigmoid"
    return _CELLS[cell](units, **kwargs)


def _stack(x: Any, cell: str, depth: int, width: int, dropout: float, prefix: str) -> Any:
    """``depth`` recurrent layers, sequences on all but the last, Dropout after each."""
    for i in range(depth):
        x = _recurrent(cell, width, return_sequences=i < depth - 1, name=f"{prefix}_{cell}_{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout_{i}")(x)
    return x


def _compile_classifier(model: keras.Model, learning_rate: float, *, focal: bool = False) -> keras.Model:
    loss = keras.losses.BinaryFocalCrossentropy(gamma=2.0) if focal else keras.losses.BinaryCrossentropy()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=loss,
        metrics=[
            keras.metrics.AUC(name="auc"),
            keras.metrics.AUC(curve="PR", name="pr_auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ],
    )
    return model


def use_focal_loss(model: keras.Model, learning_rate: float) -> keras.Model:
    """Recompile a built classifier with focal loss (gamma 2): easy healthy windows weigh less."""
    return _compile_classifier(model, learning_rate, focal=True)


def _with_change(inputs: Any, n_values: int) -> Any:
    """The window plus, per step, each value's change since the first day."""
    change = WindowChange(n_values, name="change_since_start")(inputs)
    return keras.layers.Concatenate(name="with_change")([inputs, change])


def _summary_branch(inputs: Any, n_values: int, width: int) -> Any:
    """Dense layer on the window summary (last, change, max, increases, days since the last one)."""
    summary = WindowSummary(n_values, name="window_summary")(inputs)
    return keras.layers.Dense(width, activation="relu", name="summary_dense")(summary)


def _join(encoded: Any, branch: Any, width: int, dropout: float) -> Any:
    x = keras.layers.Concatenate(name="join")([encoded, branch])
    x = keras.layers.Dense(width, activation="relu", name="join_dense")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="join_dropout")(x)
    return x


def _n_values(n_features: int, n_values: int | None) -> int:
    n = int(n_features if n_values is None else n_values)
    if not 1 <= n <= int(n_features):
        raise ValueError(f"n_values must be in [1, n_features={n_features}], got {n_values}")
    return n


# -- classifiers -------------------------------------------------------------


def build_classifier(
    window: int,
    n_features: int,
    *,
    cell: Cell = "lstm",
    depth: int = 2,
    width: int = 64,
    dropout: float = 0.2,
    learning_rate: float = 1e-3,
    window_features: bool = False,
    n_values: int | None = None,
) -> keras.Model:
    """Stacked LSTM/GRU/SimpleRNN → Dense(1, sigmoid): P(failure within horizon).

    ``window_features``: the stack also reads each value's change since the
    window start, and a dense branch on the window summary joins it before the
    output. ``n_values``: how many leading input columns are values (the rest
    are "reported" indicators); default all.
    """
    if cell not in _CELLS:
        raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
    _check(window, n_features, depth=depth, width=width)
    _check_dropout(dropout)
    values = _n_values(n_features, n_values)
    inputs = _inputs(window, n_features)
    x = _stack(_with_change(inputs, values) if window_features else inputs, cell, depth, width, dropout, "encoder")
    if window_features:
        x = _join(x, _summary_branch(inputs, values, width), width, dropout)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    return _compile_classifier(keras.Model(inputs, outputs, name=CLASSIFIER), learning_rate)


def build_cnn_lstm_classifier(
    window: int,
    n_features: int,
    *,
    filters: int = 32,
    kernel_size: int = 3,
    pool_size: int = 2,
    width: int = 64,
    dropout: float = 0.2,
    learning_rate: float = 1e-3,
    window_features: bool = False,
    n_values: int | None = None,
) -> keras.Model:
    """Conv1D (local patterns) → MaxPool1D → LSTM → Dense(1, sigmoid).

    ``window_features``/``n_values`` as in :func:`build_classifier`.

    The pool is capped at ``window // 2`` (at least 1) and pads "same", so
    even a 2–4 step window keeps at least one step for the LSTM.
    """
    _check(window, n_features, filters=filters, kernel_size=kernel_size, pool_size=pool_size, width=width)
    _check_dropout(dropout)
    pool = max(1, min(int(pool_size), int(window) // 2))
    values = _n_values(n_features, n_values)
    inputs = _inputs(window, n_features)
    seq = _with_change(inputs, values) if window_features else inputs
    x = keras.layers.Conv1D(filters, kernel_size, padding="same", activation="relu", name="conv")(seq)
    x = keras.layers.MaxPooling1D(pool_size=pool, padding="same", name="pool")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="conv_dropout")(x)
    x = _recurrent("lstm", width, return_sequences=False, name="encoder_lstm_0")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="encoder_dropout_0")(x)
    if window_features:
        x = _join(x, _summary_branch(inputs, values, width), width, dropout)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    return _compile_classifier(keras.Model(inputs, outputs, name=CLASSIFIER), learning_rate)


def build_mlp_classifier(
    window: int,
    n_features: int,
    *,
    depth: int = 2,
    width: int = 64,
    dropout: float = 0.2,
    learning_rate: float = 1e-3,
    n_values: int | None = None,
    window_features: bool = True,
) -> keras.Model:
    """Dense layers on the window summary only → Dense(1, sigmoid): no recurrence at all.

    The control for the sequence models: what the summary alone is worth.
    ``window_features`` is accepted for a uniform call and must stay True.
    """
    if not window_features:
        raise ValueError("the mlp classifier reads the window summary: window_features must be True")
    _check(window, n_features, depth=depth, width=width)
    _check_dropout(dropout)
    values = _n_values(n_features, n_values)
    inputs = _inputs(window, n_features)
    x = WindowSummary(values, name="window_summary")(inputs)
    for i in range(depth):
        x = keras.layers.Dense(width, activation="relu", name=f"dense_{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    return _compile_classifier(keras.Model(inputs, outputs, name=CLASSIFIER), learning_rate)


# -- autoencoders ------------------------------------------------------------


def build_lstm_autoencoder(
    window: int,
    n_features: int,
    *,
    width: int = 64,
    latent: int = 16,
    depth: int = 1,
    learning_rate: float = 1e-3,
) -> keras.Model:
    """LSTM encoder → Dense latent → RepeatVector → LSTM decoder → per-step Dense.

    Output is the reconstruction ``[window, n_features]`` (linear: scaled
    inputs may exceed 1 up to the spec's clip), trained with MSE.
    """
    _check(window, n_features, width=width, latent=latent, depth=depth)
    inputs = _inputs(window, n_features)
    x = _stack(inputs, "lstm", depth, width, 0.0, "encoder")
    z = keras.layers.Dense(latent, name="latent")(x)
    x = keras.layers.RepeatVector(int(window), name="repeat")(z)
    for i in range(depth):
        x = _recurrent("lstm", width, return_sequences=True, name=f"decoder_lstm_{i}")(x)
    outputs = keras.layers.TimeDistributed(keras.layers.Dense(n_features), name="reconstruction")(x)
    model = keras.Model(inputs, outputs, name=AUTOENCODER)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse")
    return model


def build_conv_autoencoder(
    window: int,
    n_features: int,
    *,
    filters: int = 32,
    kernel_size: int = 3,
    learning_rate: float = 1e-3,
) -> keras.Model:
    """Conv1D encoder (halves time) → UpSampling1D decoder → exact ``[window, F]``.

    MaxPool pads "same" (``ceil(window / 2)`` steps), upsampling doubles that,
    and a Cropping1D drops the one extra step of an odd window — so any
    ``window >= 1`` reconstructs to exactly its own length.
    """
    _check(window, n_features, filters=filters, kernel_size=kernel_size)
    bottleneck = max(1, int(filters) // 2)
    inputs = _inputs(window, n_features)
    x = keras.layers.Conv1D(filters, kernel_size, padding="same", activation="relu", name="enc_conv_0")(
        inputs
    )
    x = keras.layers.MaxPooling1D(pool_size=2, padding="same", name="enc_pool")(x)
    x = keras.layers.Conv1D(bottleneck, kernel_size, padding="same", activation="relu", name="enc_conv_1")(x)
    x = keras.layers.UpSampling1D(size=2, name="dec_upsample")(x)
    extra = 2 * ((int(window) + 1) // 2) - int(window)
    if extra:
        x = keras.layers.Cropping1D(cropping=(0, extra), name="dec_crop")(x)
    x = keras.layers.Conv1D(filters, kernel_size, padding="same", activation="relu", name="dec_conv_0")(x)
    outputs = keras.layers.Conv1D(n_features, kernel_size, padding="same", name="reconstruction")(x)
    model = keras.Model(inputs, outputs, name=AUTOENCODER)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse")
    return model


# -- remaining useful life ---------------------------------------------------


def build_rul_regressor(
    window: int,
    n_features: int,
    *,
    width: int = 64,
    depth: int = 1,
    dropout: float = 0.2,
    learning_rate: float = 1e-3,
) -> keras.Model:
    """LSTM stack → Dense(1, softplus): days to failure (>= 0), Huber loss."""
    _check(window, n_features, width=width, depth=depth)
    _check_dropout(dropout)
    inputs = _inputs(window, n_features)
    x = _stack(inputs, "lstm", depth, width, dropout, "encoder")
    outputs = keras.layers.Dense(1, activation="softplus", name="days_to_failure")(x)
    model = keras.Model(inputs, outputs, name=RUL)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.Huber(),
        metrics=[keras.metrics.MeanAbsoluteError(name="mae")],
    )
    return model


# -- dispatch ----------------------------------------------------------------


def build(kind: str, window: int, n_features: int, **hp: Any) -> keras.Model:
    """Build a compiled model of ``kind`` (one of :data:`KINDS`) with hyperparameters ``hp``."""
    if kind in _CELLS:
        if "cell" in hp and hp["cell"] != kind:
            raise ValueError(f"kind {kind!r} fixes cell={kind!r}; got cell={hp['cell']!r}")
        hp = {k: v for k, v in hp.items() if k != "cell"}
        return build_classifier(window, n_features, cell=kind, **hp)  # type: ignore[arg-type]
    builders: dict[str, Callable[..., keras.Model]] = {
        "cnn-lstm": build_cnn_lstm_classifier,
        "mlp": build_mlp_classifier,
        "ae-lstm": build_lstm_autoencoder,
        "ae-conv": build_conv_autoencoder,
        "rul": build_rul_regressor,
    }
    if kind not in builders:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    return builders[kind](window, n_features, **hp)


# -- seed ensembles ------------------------------------------------------------


def average_ensemble(members: list[keras.Model], name: str = "classifier_ensemble") -> keras.Model:
    """One model whose output is the mean of ``members``' outputs (same input shape).

    With a few dozen failures a single classifier's ranking of healthy drives
    varies a lot from seed to seed; averaging seeds cuts that variance. The
    result is one functional model (members nested, weights shared), so it
    saves to one ``.keras`` file and the scorer calls it like any classifier.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    if len(members) == 1:
        return members[0]
    shape = tuple(members[0].inputs[0].shape[1:])
    if any(tuple(m.inputs[0].shape[1:]) != shape for m in members):
        raise ValueError("ensemble members disagree on the input shape")
    x = keras.Input(shape=shape, dtype="float32", name="windows")
    outputs = [
        keras.Model(m.inputs, m.outputs[0], name=f"member_{i}")(x) for i, m in enumerate(members)
    ]
    mean = keras.layers.Average(name="probability")(outputs)
    return keras.Model(x, mean, name=name)
