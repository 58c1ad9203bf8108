"""Model builders: shapes, one training step, dispatch, `.keras` round trip."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from diskwatch.models.architectures import (
    KIND_ROLES,
    KINDS,
    average_ensemble,
    build,
    build_classifier,
    build_cnn_lstm_classifier,
    build_conv_autoencoder,
    use_focal_loss,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

WINDOW = 6
N_FEATURES = 5
BATCH = 8

#: Tiny hyperparameters per kind so every test stays fast.
TINY: dict[str, dict] = {
    "lstm": {"width": 4, "depth": 2},
    "gru": {"width": 4, "depth": 2},
    "rnn": {"width": 4, "depth": 2},
    "cnn-lstm": {"filters": 4, "width": 4},
    "mlp": {"width": 4, "depth": 1},
    "ae-lstm": {"width": 4, "latent": 2},
    "ae-conv": {"filters": 4},
    "rul": {"width": 4},
}


def tiny(kind: str, window: int = WINDOW, n_features: int = N_FEATURES) -> keras.Model:
    return build(kind, window, n_features, **TINY[kind])


def expected_output_shape(kind: str, window: int, n_features: int) -> tuple:
    return (None, window, n_features) if KIND_ROLES[kind] == "autoencoder" else (None, 1)


def data(kind: str, window: int = WINDOW, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, window, N_FEATURES), dtype=np.float32)
    role = KIND_ROLES[kind]
    if role == "classifier":
        y = (rng.random((BATCH, 1)) < 0.5).astype(np.float32)
    elif role == "rul":
        y = rng.integers(0, 60, size=(BATCH, 1)).astype(np.float32)
    else:
        y = x
    return x, y


def test_kinds_are_the_documented_set() -> None:
    assert set(KINDS) == {"lstm", "gru", "rnn", "cnn-lstm", "mlp", "ae-lstm", "ae-conv", "rul"}
    assert set(KIND_ROLES.values()) == {"classifier", "autoencoder", "rul"}


@pytest.mark.parametrize("window", [4, 14])
@pytest.mark.parametrize("kind", KINDS)
def test_output_shapes_and_names(kind: str, window: int) -> None:
    model = tiny(kind, window)
    assert model.name == KIND_ROLES[kind]
    assert tuple(model.input_shape) == (None, window, N_FEATURES)
    assert tuple(model.output_shape) == expected_output_shape(kind, window, N_FEATURES)
    assert model.compiled


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5, 7])
def test_shape_arithmetic_survives_tiny_and_odd_windows(window: int) -> None:
    # The pooling/upsampling paths are the ones that could lose or gain a step.
    x = np.random.default_rng(window).random((2, window, N_FEATURES), dtype=np.float32)
    ae = build_conv_autoencoder(window, N_FEATURES, filters=2)
    assert ae.predict_on_batch(x).shape == (2, window, N_FEATURES)
    if window >= 4:
        clf = build_cnn_lstm_classifier(window, N_FEATURES, filters=2, width=2, pool_size=8)
        assert clf.predict_on_batch(x).shape == (2, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_trains_one_step_and_round_trips_through_keras_file(kind: str, tmp_path) -> None:
    keras.utils.set_random_seed(1)
    model = tiny(kind)
    x, y = data(kind)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]), logs
    if KIND_ROLES[kind] == "classifier":
        assert {"auc", "pr_auc", "precision", "recall"} <= set(logs)
    before = model.predict_on_batch(x)
    assert np.all(np.isfinite(before))
    if kind == "rul":
        assert np.all(before >= 0), "softplus output is never negative"
    if KIND_ROLES[kind] == "classifier":
        assert np.all((before >= 0) & (before <= 1))

    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.name == model.name
    np.testing.assert_allclose(loaded.predict_on_batch(x), before, rtol=0, atol=1e-6)


def test_build_dispatch_passes_hyperparameters() -> None:
    for cell, layer_type in (
        ("lstm", keras.layers.LSTM),
        ("gru", keras.layers.GRU),
        ("rnn", keras.layers.SimpleRNN),
    ):
        model = build(cell, WINDOW, N_FEATURES, width=3, depth=3, dropout=0.0)
        recurrent = [layer for layer in model.layers if isinstance(layer, layer_type)]
        assert len(recurrent) == 3
        assert [layer.return_sequences for layer in recurrent] == [True, True, False]
        assert all(layer.units == 3 for layer in recurrent)
        assert not any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    assert build("ae-lstm", WINDOW, N_FEATURES, width=3, latent=2).get_layer("latent").units == 2
    assert build("ae-conv", WINDOW, N_FEATURES, filters=6).get_layer("enc_conv_0").filters == 6
    assert (
        build("rul", WINDOW, N_FEATURES, width=3).get_layer("days_to_failure").activation.__name__
        == "softplus"
    )


def test_recurrent_layers_keep_cudnn_compatible_settings() -> None:
    model = build_classifier(WINDOW, N_FEATURES, cell="lstm", width=3, dropout=0.3)
    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    assert lstms
    for layer in lstms:
        assert layer.cell.recurrent_dropout == 0
        assert not layer.unroll
        assert layer.cell.activation.__name__ == "tanh"
        assert layer.cell.recurrent_activation.__name__ == "sigmoid"
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 2
    gru = build_classifier(WINDOW, N_FEATURES, cell="gru", width=3, depth=1)
    assert next(layer for layer in gru.layers if isinstance(layer, keras.layers.GRU)).cell.reset_after


def test_unknown_kind_and_bad_hyperparameters_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown model kind 'transformer'"):
        build("transformer", WINDOW, N_FEATURES)
    with pytest.raises(ValueError, match="cell"):
        build_classifier(WINDOW, N_FEATURES, cell="tcn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind 'gru' fixes cell"):
        build("gru", WINDOW, N_FEATURES, cell="lstm")
    with pytest.raises(ValueError, match="dropout"):
        build("lstm", WINDOW, N_FEATURES, dropout=1.0)
    with pytest.raises(ValueError, match="depth"):
        build("rul", WINDOW, N_FEATURES, depth=0)
    with pytest.raises(ValueError, match="window"):
        build("ae-conv", 0, N_FEATURES)
    with pytest.raises(TypeError):
        build("ae-conv", WINDOW, N_FEATURES, width=3)  # not a conv-AE hyperparameter


def test_seed_ensemble_is_the_mean_of_its_members_and_saves_as_one_file(tmp_path) -> None:
    members = []
    for seed in (1, 2, 3):
        keras.utils.set_random_seed(seed)
        members.append(tiny("lstm"))
    x, _ = data("lstm")
    expected = np.mean([m.predict_on_batch(x) for m in members], axis=0)
    assert np.ptp([m.predict_on_batch(x)[:, 0] for m in members], axis=0).max() > 0  # members differ
    ensemble = average_ensemble(members)
    np.testing.assert_allclose(ensemble.predict_on_batch(x), expected, rtol=0, atol=1e-6)
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras", safe_mode=True, compile=False)
    assert tuple(loaded.inputs[0].shape) == (None, WINDOW, N_FEATURES)
    np.testing.assert_allclose(loaded.predict_on_batch(x), expected, rtol=0, atol=1e-6)
    assert average_ensemble(members[:1]) is members[0]
    with pytest.raises(ValueError, match="input shape"):
        average_ensemble([members[0], tiny("lstm", window=WINDOW + 1)])
    with pytest.raises(ValueError, match="at least one"):
        average_ensemble([])


def test_focal_loss_recompiles_a_classifier_that_still_trains() -> None:
    keras.utils.set_random_seed(1)
    model = use_focal_loss(tiny("lstm"), 1e-3)
    assert isinstance(model.loss, keras.losses.BinaryFocalCrossentropy)
    x, y = data("lstm")
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and "pr_auc" in logs
