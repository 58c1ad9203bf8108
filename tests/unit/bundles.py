"""A tiny model bundle for unit tests (helpers; the ``bundle_dir`` fixture is in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diskwatch.models.architectures import build
from diskwatch.models.bundle import Thresholds, save_bundle
from diskwatch.models.features import FeatureSpec, ScalerStats
from diskwatch.models.windows import WindowConfig

WINDOW = WindowConfig(window=5, horizon=2, max_gap=1)
SPEC = FeatureSpec.from_names(["smart_5_raw", "smart_9_raw", "smart_194_raw"])
THRESHOLDS = Thresholds(
    classifier=0.5, classifier_method="test", autoencoder=0.1, autoencoder_method="test"
)


def fitted_spec() -> FeatureSpec:
    stats = ScalerStats(SPEC.n_features)
    stats.update(np.array([[0.0, 100.0, 20.0], [3.0, 9000.0, 45.0]]))
    return SPEC.fitted(stats)


def write_tiny_bundle(out: Path) -> Path:
    """An untrained LSTM classifier + autoencoder over SPEC/WINDOW, with a splits.json extra."""
    models = {
        "classifier": build("lstm", 5, 3, width=4, depth=1),
        "autoencoder": build("ae-lstm", 5, 3, width=4, latent=2),
    }
    extra = out.parent / "splits.json"
    extra.write_text('{"A": "train"}')
    save_bundle(out, models=models, spec=fitted_spec(), window=WINDOW, thresholds=THRESHOLDS,
                extras={"splits": extra}, training={"data": "unit"})
    return out
