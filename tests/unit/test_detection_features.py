"""Detection features: reported indicators, neutral fill, window layers, min-lead, ceiling, compare variants."""

from __future__ import annotations

import numpy as np
import pytest

from diskwatch.models.alerting import top_reasons
from diskwatch.models.features import FeatureSpec, ScalerStats
from diskwatch.training.compare import Variant
from diskwatch.training.evaluate import ScoredWindows, family_table, signal_ceiling
from diskwatch.training.metrics import detection_at_far, detection_vs_far_curve, drive_metrics, lead_times

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _fitted(**options: object) -> FeatureSpec:
    spec = FeatureSpec.from_names(["smart_5_raw", "smart_187_raw", "smart_9_raw"]).model_copy(update=options)
    stats = ScalerStats(3)
    # 187 only ever reported as large values (a Seagate-only attribute): mean far from "nothing counted"
    stats.update(spec.transform(np.array([[0, 10_000, 100], [0, 20_000, 200], [8, np.nan, 300]], dtype=float)))
    return spec.fitted(stats)


def test_indicators_add_a_reported_column_per_feature() -> None:
    spec = _fitted(indicators=True)
    assert spec.n_features == 3 and spec.n_inputs == 6
    assert spec.input_names[3:] == ["smart_5_raw_reported", "smart_187_raw_reported", "smart_9_raw_reported"]
    window = spec.transform(np.array([[0, np.nan, 150], [np.nan, np.nan, 160]], dtype=float))[None]
    x = spec.finalize(window)
    assert x.shape == (1, 2, 6)
    # 187 never reported → 0 in its indicator; 5 forward-filled on day 2 → still reported
    np.testing.assert_array_equal(x[0, :, 3:], [[1, 0, 1], [1, 0, 1]])


def test_neutral_fill_is_nothing_counted_not_the_vendor_mean() -> None:
    window = FeatureSpec.from_names(["smart_5_raw", "smart_187_raw", "smart_9_raw"]).transform(
        np.array([[0, np.nan, 150]], dtype=float))[None]
    mean_fill = _fitted().finalize(window)[0, 0, 1]
    neutral_fill = _fitted(fill_mode="neutral").finalize(window)[0, 0, 1]
    assert mean_fill > 0.5  # the mean of large 187 counts: a fake signal on a drive that never reports 187
    assert neutral_fill == pytest.approx(0.0)


def test_old_specs_finalize_as_before() -> None:
    spec = _fitted()
    assert spec.n_inputs == spec.n_features and not spec.indicators and spec.fill_mode == "mean"
    assert spec.finalize(np.zeros((2, 4, 3), np.float32)).shape == (2, 4, 3)


def test_window_summary_reads_what_a_human_reads() -> None:
    from diskwatch.models.layers import WindowChange, WindowSummary

    counter = [0.0, 0.0, 0.1, 0.1, 0.3]  # rose on steps 2 and 4 of 0..4
    flat = [0.5] * 5
    reported = [1.0] * 5
    x = np.array([np.stack([counter, flat, reported], axis=-1)], dtype=np.float32)  # [1, 5, 3], 2 values
    out = np.asarray(WindowSummary(2)(x))
    last, change, peak, rises, since = (out[0, 2 * i : 2 * i + 2] for i in range(5))
    np.testing.assert_allclose(last, [0.3, 0.5])
    np.testing.assert_allclose(change, [0.3, 0.0], atol=1e-6)
    np.testing.assert_allclose(peak, [0.3, 0.5])
    np.testing.assert_allclose(rises, [2 / 4, 0.0])
    np.testing.assert_allclose(since, [0.0, 1.0])  # rose on the last day; never rose
    np.testing.assert_allclose(out[0, 10:], [1.0])  # the indicator column of the last day
    np.testing.assert_allclose(np.asarray(WindowChange(2)(x))[0, :, 0], [0, 0, 0.1, 0.1, 0.3], atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "cnn-lstm", "mlp"])
def test_window_feature_models_round_trip_in_safe_mode(kind: str, tmp_path) -> None:
    import keras

    from diskwatch.models.architectures import build

    x = np.random.default_rng(0).random((8, 6, 4)).astype(np.float32)
    model = build(kind, 6, 4, width=4, window_features=True, n_values=2)
    assert any(layer.name == "window_summary" for layer in model.layers)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-6)


def test_top_reasons_ignore_indicator_columns() -> None:
    spec = _fitted(indicators=True)
    error = np.array([[0.1, 0.0, 0.0, 5.0, 5.0, 5.0]])  # large errors only on indicators
    [reasons] = top_reasons(error, spec, 3)
    assert [r[1] for r in reasons] == ["smart_5_raw"]


def test_min_lead_excludes_failure_day_alerts() -> None:
    serial = np.array([0, 0, 1])
    end_day = np.array([9, 10, 10])
    failure_day = np.array([10, 10, -1])
    alert = np.array([False, True, False])  # the failed drive alerts only on its failure day
    assert drive_metrics(alert, serial, end_day, failure_day, 7)["detected"] == 1
    assert drive_metrics(alert, serial, end_day, failure_day, 7, min_lead=1)["detected"] == 0
    assert lead_times(alert | (end_day == 9), serial, end_day, failure_day, 7, min_lead=1).tolist() == [1]
    curve = detection_vs_far_curve(alert.astype(float), serial, end_day, failure_day, 7, None, min_lead=1)
    assert detection_at_far(curve, 0.5) == 0.0  # only "alert on everything" (FAR 1) reaches the drive
    with pytest.raises(ValueError, match="min_lead"):
        drive_metrics(alert, serial, end_day, failure_day, 3, min_lead=4)


def _scored() -> ScoredWindows:
    # drive 0 fails on day 10 with a critical counter; 1 fails silently; 2, 3 healthy
    serial = np.array([0, 0, 1, 2, 3])
    end = np.array([8, 9, 9, 9, 9])
    fail = np.array([10, 10, 12, -1, -1])
    zeros = np.zeros(5, np.float32)
    return ScoredWindows(
        serial=serial, end_day=end, failure_day=fail, probability=np.array([0, .9, .1, .2, .95], np.float32),
        anomaly=zeros, smart_rule=zeros, critical_any=np.array([False, True, False, True, False]),
        serial_names=["a", "b", "c", "d"], serial_models=["ST4000DM000", "ST4000DM000", "HGST", "HGST"], read={},
    )


def test_signal_ceiling_counts_failed_drives_with_a_critical_counter() -> None:
    scored = _scored()
    metrics = {"classifier": {"drive": drive_metrics(scored.probability >= 0.5, scored.serial, scored.end_day,
                                                     scored.failure_day, 7, min_lead=1)}}
    ceiling = signal_ceiling(scored, 7, 1, metrics)
    assert (ceiling["failed_drives"], ceiling["with_signal"], ceiling["ceiling"]) == (2, 1, 0.5)
    assert ceiling["detection_share_of_ceiling"]["classifier"] == 1.0


def test_family_table_pools_rare_models() -> None:
    scored = _scored()
    rows = family_table(scored, {"classifier": (scored.probability, 0.5)}, 7, 1, min_failed=2)
    assert [r["family"] for r in rows] == ["ST4000DM000", "other"]
    assert rows[0]["failed"] == 2 and rows[0]["classifier"] == {"detected": 1, "false_alarms": 0}
    assert rows[1]["healthy"] == 2 and rows[1]["classifier"] == {"detected": 0, "false_alarms": 1}
    assert scored["serial"] is scored.serial and "xgboost" not in scored


def test_variant_parsing() -> None:
    v = Variant.parse("gru+ind+wf+hpp50+w32")
    assert v.kind == "gru"
    assert v.overrides == {"indicators": True, "fill_mode": "neutral", "window_features": True,
                           "healthy_per_positive": 50.0, "width": 32}
    with pytest.raises(ValueError, match="unknown variant"):
        Variant.parse("transformer")
    with pytest.raises(ValueError, match="flag"):
        Variant.parse("lstm+magic")
    assert Variant.parse("mlp+ind+s5").overrides["classifier_seeds"] == 5
    assert Variant.parse("lstm+hn50").overrides["hard_negative_share"] == 0.5
    assert Variant.parse("lstm+focal").overrides["focal"] is True
    assert Variant.parse("mlp+ml1").overrides["classifier_min_lead"] == 1
    with pytest.raises(ValueError, match="flag"):
        Variant.parse("lstm+s0")


def test_searched_budget_split_gives_the_budget_to_the_detector_that_detects() -> None:
    from diskwatch.models.inference import Scores
    from diskwatch.training.fit import split_budget

    rng = np.random.default_rng(0)
    n_healthy, n_failed = 400, 40
    serial = np.arange(n_healthy + n_failed)
    failure_day = np.where(serial >= n_healthy, 10, -1)
    end_day = np.full(serial.size, 8)
    # failures overlap the top of the healthy classifier scores (more budget, more detections);
    # the autoencoder is noise, so every bit of budget it gets is wasted
    probability = (rng.random(serial.size) ** 4 * 0.5).astype(np.float32)
    probability[n_healthy:] = 0.4 + 0.2 * rng.random(n_failed)
    anomaly = rng.random(serial.size).astype(np.float32)
    scores = Scores(probability, anomaly, np.zeros((serial.size, 0), np.float32))
    even = split_budget(scores, serial, end_day, failure_day, 0.02, 7, searched=False)
    searched = split_budget(scores, serial, end_day, failure_day, 0.02, 7, searched=True)
    assert even.classifier_share == 0.5
    assert searched.classifier_share > 0.5
    assert searched.detection >= even.detection
    assert searched.combined_far <= 0.02


def test_hard_negative_draw_takes_its_share_from_the_hard_healthy_windows() -> None:
    from types import SimpleNamespace

    from diskwatch.training.dataset import WindowDataset

    labels = np.zeros(1000, dtype=np.int8)
    labels[:10] = 1
    hard = np.zeros(1000, dtype=bool)
    hard[10:60] = True  # 50 hard healthy windows out of 990
    store = SimpleNamespace(labels=labels)
    idx = np.arange(1000)
    ds = WindowDataset(store, idx, None, healthy_per_positive=20, hard=hard, hard_share=0.5, seed=1)  # type: ignore[arg-type]
    drawn = ds.indices
    assert np.sum(labels[drawn] == 1) == 10 and drawn.size == 210 and np.unique(drawn).size == 210
    assert hard[drawn].sum() == 50  # share 0.5 of 200 = 100 wanted, only 50 exist: all of them
    ds = WindowDataset(store, idx, None, healthy_per_positive=4, hard=hard, hard_share=0.5, seed=1)  # type: ignore[arg-type]
    assert hard[ds.indices].sum() == 20 and ds.indices.size == 50
    uniform = WindowDataset(store, idx, None, healthy_per_positive=4, seed=1)  # type: ignore[arg-type]
    assert hard[uniform.indices].sum() < 20
    with pytest.raises(ValueError, match="hard_share"):
        WindowDataset(store, idx, None, hard=hard, hard_share=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aligned"):
        WindowDataset(store, idx, None, hard=hard[:5], hard_share=0.5)  # type: ignore[arg-type]


def _quantile_fitted() -> FeatureSpec:
    spec = FeatureSpec.from_names(["smart_5_raw", "smart_9_raw"]).model_copy(update={"scaling": "quantile"})
    stats = ScalerStats(2, sample_rate=1.0)
    rng = np.random.default_rng(0)
    realloc = np.where(rng.random(1000) < 0.9, 0.0, rng.integers(1, 5000, 1000))  # 90 % "nothing counted"
    hours = rng.uniform(0, 40_000, 1000)
    stats.update(spec.transform(np.stack([realloc, hours], axis=-1)))
    return spec.fitted(stats)


def test_quantile_scaling_ranks_heavy_tails_and_keeps_extremes() -> None:
    spec = _quantile_fitted()
    assert spec.quantiles is not None and len(spec.quantiles) == 2
    x = spec.finalize(spec.transform(np.array([[0, 20_000], [1, 20_000], [10**7, 10**6]], dtype=float))[:, None, :])
    # "nothing counted" (the 90 % mass point) stays at the bottom; one counted sector jumps to ~the 90th percentile
    assert x[0, 0, 0] == pytest.approx(0.0)
    assert 0.85 <= x[1, 0, 0] <= 0.95
    # min-max would put one sector at log1p(1)/log1p(5000) ~ 0.08: the rank transform spreads the tail
    assert x[1, 0, 0] > 5 * 0.08
    assert x[0, 0, 1] == pytest.approx(0.5, abs=0.06)  # a uniform feature maps to its rank
    assert x[2, 0, 0] > 1.0 and x[2, 0, 1] > 1.0  # beyond the training range: still rising, not capped at 1


def test_quantile_spec_needs_its_quantiles() -> None:
    spec = _quantile_fitted()
    with pytest.raises(ValueError, match="quantile"):
        FeatureSpec.model_validate(spec.model_dump() | {"quantiles": None})
    with pytest.raises(ValueError, match="quantile"):
        FeatureSpec.model_validate(spec.model_dump() | {"quantiles": [[1.0, 0.0], [0.0, 1.0]]})


def test_quantile_scaling_round_trips_in_the_bundle_and_scales_alike_in_the_stream(tmp_path) -> None:
    from diskwatch.models.architectures import build
    from diskwatch.models.bundle import Thresholds, load_bundle, save_bundle
    from diskwatch.models.windows import WindowConfig, windows_ending_at

    spec = _quantile_fitted()
    config = WindowConfig(window=4, horizon=2, max_gap=2)
    models = {"classifier": build("lstm", 4, 2, width=4, depth=1),
              "autoencoder": build("ae-conv", 4, 2)}
    path = save_bundle(tmp_path / "b", models=models, spec=spec, window=config,
                       thresholds=Thresholds(classifier=0.5, classifier_method="t", autoencoder=0.1,
                                             autoencoder_method="t"))
    loaded = load_bundle(path).spec
    assert loaded == spec and loaded.scaling == "quantile"
    # The stream's path: per-report transformed vectors → windows_ending_at → the bundle's spec.
    raw = np.array([[0, 100], [0, 124], [3, 148], [np.nan, 172], [40, 196]], dtype=float)
    days = np.array([0, 1, 2, 3, 4])
    _, windows = windows_ending_at(np.zeros(5, np.int64), days, spec.transform(raw), np.array([3, 4]), config)
    np.testing.assert_array_equal(loaded.finalize(windows), spec.finalize(windows))
    # ... and the training side's windows (the same days, stacked) scale identically
    training = np.stack([spec.transform(raw[0:4]), spec.transform(raw[1:5])])
    np.testing.assert_array_equal(loaded.finalize(windows), spec.finalize(training))


def test_variant_flags_of_the_third_round() -> None:
    assert Variant.parse("lstm+ind+wf+q").overrides["scaling"] == "quantile"
    v = Variant.parse("gru+d1+do30+lr0.002")
    assert (v.overrides["depth"], v.overrides["dropout"], v.overrides["learning_rate"]) == (1, 0.3, 0.002)
    with pytest.raises(ValueError, match="flag"):
        Variant.parse("lstm+lrx")


def test_tuner_trials_are_train_configs_over_the_searched_space() -> None:
    kt = pytest.importorskip("keras_tuner")
    from diskwatch.training.fit import TrainConfig
    from diskwatch.training.tune import CELLS, HEALTHY_PER_POSITIVE, trial_config

    hp = kt.HyperParameters()
    hp.values.update({"arch": "gru", "width": 128, "depth": 1, "dropout": 0.3, "learning_rate": 0.002,
                      "healthy_per_positive": 40.0})
    base = TrainConfig(focal=True)
    config = trial_config(base, hp)
    assert (config.arch, config.width, config.depth, config.dropout) == ("gru", 128, 1, 0.3)
    assert (config.learning_rate, config.healthy_per_positive) == (0.002, 40.0)
    assert config.focal and config.window_features and config.indicators  # the rest of the run's config stays
    assert set(CELLS) == {"lstm", "gru"} and 20.0 in HEALTHY_PER_POSITIVE
