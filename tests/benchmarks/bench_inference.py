"""Benchmark: fused ``Scorer.score`` vs separate raw ``predict_on_batch`` calls.

A script, not a pytest test. Builds the default-size models (LSTM classifier
depth 2 width 64, LSTM autoencoder width 64 latent 16; window 14, 15
features), warms everything, then for each batch size times

* ``engine``: ``Scorer(classifier, autoencoder).score(x)`` (one fused call,
  per-feature error computed in the graph), and
* ``raw``: ``classifier.predict_on_batch(x)`` + ``autoencoder.predict_on_batch(x)``,

alternating the two in rounds for about ``--seconds`` each, and prints one
JSON object with the median windows/s and the ratio engine/raw (target
>= 0.9). Honours ``KERAS_BACKEND`` (tensorflow, jax, torch)::

    python tests/benchmarks/bench_inference.py --batches 64,256,1024 --seconds 3
    KERAS_BACKEND=jax python tests/benchmarks/bench_inference.py --json-out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from diskwatch.models.architectures import build_classifier, build_lstm_autoencoder
from diskwatch.models.inference import Scorer

WINDOW = 14
N_FEATURES = 15
ROUNDS = 5


def device_description() -> str:
    """The accelerator the active backend computes on (or "cpu")."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return f"gpu:{details.get('device_name', gpus[0].name)} (x{len(gpus)})"
        elif backend == "jax":
            import jax

            dev = jax.devices()[0]
            return f"{dev.platform}:{getattr(dev, 'device_kind', dev)} (x{jax.device_count()})"
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return f"gpu:{torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    except Exception as exc:  # pragma: no cover - best effort description
        return f"unknown ({exc.__class__.__name__}: {exc})"
    return f"cpu:{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def time_calls(fn: Callable[[], object], seconds: float) -> list[float]:
    """Call ``fn`` until ``seconds`` have passed (at least 3 times); per-call seconds."""
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="64,256,1024", help="comma-separated batch sizes")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per method and batch size")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]

    keras.utils.set_random_seed(args.seed)
    classifier = build_classifier(WINDOW, N_FEATURES, cell="lstm", depth=2, width=64)
    autoencoder = build_lstm_autoencoder(WINDOW, N_FEATURES, width=64, latent=16)
    scorer = Scorer(classifier, autoencoder, max_batch=max(1024, *batches))
    rng = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    scorer.warmup()
    warmup_s = time.perf_counter() - t0

    results = []
    for batch in batches:
        x = rng.random((batch, WINDOW, N_FEATURES), dtype=np.float32)

        def engine(x: np.ndarray = x) -> object:
            return scorer.score(x)

        def raw(x: np.ndarray = x) -> object:
            return classifier.predict_on_batch(x), autoencoder.predict_on_batch(x)

        for fn in (engine, raw, engine, raw):  # warm both (raw compiles on its first call)
            fn()
        engine_t: list[float] = []
        raw_t: list[float] = []
        for _ in range(ROUNDS):  # alternate so drift (thermal, other load) hits both alike
            engine_t += time_calls(engine, args.seconds / ROUNDS)
            raw_t += time_calls(raw, args.seconds / ROUNDS)
        engine_wps = batch / statistics.median(engine_t)
        raw_wps = batch / statistics.median(raw_t)
        results.append(
            {
                "batch": batch,
                "engine_windows_per_s": round(engine_wps, 1),
                "raw_windows_per_s": round(raw_wps, 1),
                "ratio_engine_over_raw": round(engine_wps / raw_wps, 3),
                "engine_median_ms": round(1e3 * statistics.median(engine_t), 3),
                "raw_median_ms": round(1e3 * statistics.median(raw_t), 3),
                "engine_calls": len(engine_t),
                "raw_calls": len(raw_t),
            }
        )

    report = {
        "benchmark": "inference",
        "backend": keras.backend.backend(),
        "device": device_description(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "window": WINDOW,
        "n_features": N_FEATURES,
        "models": {
            "classifier": {"kind": "lstm", "depth": 2, "width": 64, "params": classifier.count_params()},
            "autoencoder": {
                "kind": "ae-lstm",
                "width": 64,
                "latent": 16,
                "params": autoencoder.count_params(),
            },
        },
        "buckets": list(scorer.buckets),
        "warmup_s": round(warmup_s, 3),
        "seconds_per_method": args.seconds,
        "results": results,
        "target_ratio": 0.9,
        "min_ratio": min(r["ratio_engine_over_raw"] for r in results) if results else None,
    }
    text = json.dumps(report)
    print(text)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
