"""A bundle trained and saved with TensorFlow scores the same on the JAX backend."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diskwatch.models.architectures import build
from diskwatch.models.bundle import Thresholds, save_bundle
from diskwatch.models.features import FeatureSpec, ScalerStats
from diskwatch.models.windows import WindowConfig

SCORE = "import json, sys; from tests.unit.test_backends import score_bundles; print(json.dumps(score_bundles(sys.argv[1:])))"


def score_bundles(paths: list[str]) -> dict[str, dict]:
    """Each bundle's scores on 37 fixed random windows, on this process's Keras backend."""
    import keras

    from diskwatch.models.bundle import load_bundle

    out = {}
    for path in paths:
        b = load_bundle(path)
        x = np.random.default_rng(0).random((37, b.window.window, b.spec.n_inputs), dtype=np.float32)
        s = b.scorer().score(x)
        out[path] = {"backend": keras.backend.backend(), "p": s.probability.tolist(), "e": s.feature_error.tolist()}
    return out


VARIANTS = {"plain": False, "window-features+indicators": True}


def score_on(backend: str, bundles: list[Path]) -> subprocess.Popen[str]:
    """Score every bundle from one fresh interpreter on ``backend`` (one start-up for all of them)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-c", SCORE, *map(str, bundles)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])


def scores_of(proc: subprocess.Popen[str]) -> dict[str, dict]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def write_bundle(out: Path, window_features: bool) -> Path:
    spec = FeatureSpec(indicators=window_features)
    stats = ScalerStats(spec.n_features)
    stats.update(np.random.default_rng(1).random((50, spec.n_features)))
    window = WindowConfig(window=6, horizon=3, max_gap=2)
    extra = {"window_features": True, "n_values": spec.n_features} if window_features else {}
    models = {"classifier": build("lstm", 6, spec.n_inputs, width=8, depth=2, **extra),
              "autoencoder": build("ae-lstm", 6, spec.n_inputs, width=8, latent=4)}
    return save_bundle(out, models=models, spec=spec.fitted(stats), window=window,
                       thresholds=Thresholds(classifier=0.5, classifier_method="t", autoencoder=0.1,
                                             autoencoder_method="t"))


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, dict]]:
    """Each variant's bundle scored on TensorFlow and on JAX: two interpreters for all variants, not two each."""
    root = tmp_path_factory.mktemp("backends")
    bundles = {name: write_bundle(root / name, wf) for name, wf in VARIANTS.items()}
    # JAX in its own interpreter while this (TensorFlow) process loads and scores the same files.
    jax_run = score_on("jax", list(bundles.values()))
    tf = score_bundles(list(map(str, bundles.values())))
    jx = scores_of(jax_run)
    return {name: (tf[str(path)], jx[str(path)]) for name, path in bundles.items()}


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install .[jax])")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tensorflow_bundle_scores_identically_on_jax(scored: dict[str, tuple[dict, dict]], variant: str) -> None:
    tf, jx = scored[variant]
    assert (tf["backend"], jx["backend"]) == ("tensorflow", "jax")
    np.testing.assert_allclose(tf["p"], jx["p"], atol=1e-5)
    np.testing.assert_allclose(tf["e"], jx["e"], atol=1e-5)
