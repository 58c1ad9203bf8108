"""Batched inference engine: parity with direct predicts, buckets, edge cases."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses

import keras
import numpy as np
import pytest

from diskwatch.models.architectures import build
from diskwatch.models.inference import Scorer, Scores, _buckets

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

WINDOW = 6
N_FEATURES = 5
N = 37
ATOL = 1e-5


@pytest.fixture(scope="module")
def models() -> dict[str, keras.Model]:
    keras.utils.set_random_seed(7)
    return {
        "classifier": build("lstm", WINDOW, N_FEATURES, width=4, depth=2),
        "autoencoder": build("ae-lstm", WINDOW, N_FEATURES, width=4, latent=2),
        "rul": build("rul", WINDOW, N_FEATURES, width=4),
    }


@pytest.fixture(scope="module")
def scorer(models: dict[str, keras.Model]) -> Scorer:
    # max_batch=16 so N=37 is cut into chunks (16, 16, 5 → padded to 8).
    return Scorer(models["classifier"], models["autoencoder"], models["rul"], max_batch=16, min_bucket=4)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    rng = np.random.default_rng(3)
    out = rng.random((N, WINDOW, N_FEATURES), dtype=np.float32)
    out[::7, :, 2] *= 4.0  # a few extreme rows, as scaled inputs may exceed 1
    return out


def test_buckets_are_powers_of_two_up_to_max_batch() -> None:
    assert _buckets(8, 1024) == (8, 16, 32, 64, 128, 256, 512, 1024)
    assert _buckets(5, 100) == (8, 16, 32, 64, 100)
    assert _buckets(1, 1) == (1,)
    with pytest.raises(ValueError):
        _buckets(0, 8)
    with pytest.raises(ValueError):
        _buckets(16, 8)


def test_scores_match_direct_predictions(scorer: Scorer, models: dict, x: np.ndarray) -> None:
    scores = scorer.score(x)
    assert scores.probability.shape == (N,) and scores.probability.dtype == np.float32
    assert scores.anomaly.shape == (N,) and scores.anomaly.dtype == np.float32
    assert scores.feature_error.shape == (N, N_FEATURES) and scores.feature_error.dtype == np.float32
    assert scores.days_to_failure is not None and scores.days_to_failure.shape == (N,)
    assert len(scores) == N

    probability = models["classifier"].predict_on_batch(x)[:, 0]
    reconstruction = models["autoencoder"].predict_on_batch(x)
    days = models["rul"].predict_on_batch(x)[:, 0]
    feature_error = ((x.astype(np.float64) - reconstruction) ** 2).mean(axis=1)

    np.testing.assert_allclose(scores.probability, probability, rtol=0, atol=ATOL)
    np.testing.assert_allclose(scores.feature_error, feature_error, rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(scores.anomaly, feature_error.mean(axis=1), rtol=1e-5, atol=ATOL)
    np.testing.assert_array_equal(scores.anomaly, scores.feature_error.mean(axis=1))
    np.testing.assert_allclose(scores.days_to_failure, days, rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_scores_do_not_depend_on_batch_size(scorer: Scorer, x: np.ndarray, chunk: int) -> None:
    whole = scorer.score(x)
    parts = [scorer.score(x[i : i + chunk]) for i in range(0, N, chunk)]
    for field in ("probability", "anomaly", "feature_error", "days_to_failure"):
        joined = np.concatenate([getattr(p, field) for p in parts], axis=0)
        np.testing.assert_allclose(joined, getattr(whole, field), rtol=0, atol=ATOL, err_msg=field)


def test_empty_batch(scorer: Scorer) -> None:
    scores = scorer.score(np.zeros((0, WINDOW, N_FEATURES), dtype=np.float32))
    assert scores.probability.shape == (0,)
    assert scores.anomaly.shape == (0,)
    assert scores.feature_error.shape == (0, N_FEATURES)
    assert scores.days_to_failure is not None and scores.days_to_failure.shape == (0,)
    assert all(a.dtype == np.float32 for a in (scores.probability, scores.anomaly, scores.feature_error))


def test_classifier_only_and_autoencoder_only(models: dict, x: np.ndarray) -> None:
    clf_only = Scorer(models["classifier"], None, max_batch=64).score(x)
    np.testing.assert_allclose(
        clf_only.probability, models["classifier"].predict_on_batch(x)[:, 0], rtol=0, atol=ATOL
    )
    assert np.isnan(clf_only.anomaly).all() and clf_only.anomaly.shape == (N,)
    assert np.isnan(clf_only.feature_error).all() and clf_only.feature_error.shape == (N, N_FEATURES)
    assert clf_only.days_to_failure is None

    ae_only = Scorer(None, models["autoencoder"], max_batch=64).score(x)
    assert np.isnan(ae_only.probability).all() and ae_only.probability.shape == (N,)
    reconstruction = models["autoencoder"].predict_on_batch(x)
    np.testing.assert_allclose(
        ae_only.feature_error, ((x - reconstruction) ** 2).mean(axis=1), rtol=1e-5, atol=ATOL
    )
    assert ae_only.days_to_failure is None
    assert np.isfinite(ae_only.anomaly).all()


def test_padded_shapes_stay_within_buckets(models: dict) -> None:
    scorer = Scorer(models["classifier"], models["autoencoder"], max_batch=64, min_bucket=8)
    assert scorer.buckets == (8, 16, 32, 64)
    scorer.warmup()
    assert scorer.shapes_seen == set(scorer.buckets)
    tracing_count = _tracing_count(scorer)
    rng = np.random.default_rng(0)
    for n in (3, 5, 7, 100, 130, 64, 1):
        scores = scorer.score(rng.random((n, WINDOW, N_FEATURES), dtype=np.float32))
        assert scores.probability.shape == (n,)
    assert scorer.shapes_seen <= set(scorer.buckets)
    if tracing_count is not None:  # TensorFlow: warmed-up buckets never retrace
        assert _tracing_count(scorer) == tracing_count


def _tracing_count(scorer: Scorer) -> int | None:
    fn = getattr(scorer.combined, "predict_function", None)
    getter = getattr(fn, "experimental_get_tracing_count", None)
    return int(getter()) if getter is not None else None


def test_input_validation(models: dict, scorer: Scorer) -> None:
    with pytest.raises(ValueError, match="at least one model"):
        Scorer(None, None)
    other = build("ae-conv", WINDOW + 1, N_FEATURES, filters=2)
    with pytest.raises(ValueError, match="disagree"):
        Scorer(models["classifier"], other)
    with pytest.raises(ValueError, match="expected windows"):
        scorer.score(np.zeros((3, WINDOW, N_FEATURES + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="expected windows"):
        scorer.score(np.zeros((WINDOW, N_FEATURES), dtype=np.float32))


def test_scores_are_frozen(scorer: Scorer, x: np.ndarray) -> None:
    scores = scorer.score(x[:2])
    assert isinstance(scores, Scores)
    with pytest.raises(dataclasses.FrozenInstanceError):
        scores.probability = np.zeros(2)  # type: ignore[misc]
