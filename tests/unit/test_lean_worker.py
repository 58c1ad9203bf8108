"""The worker runs without the training-only extra (``diskwatch[train]``): none of it is imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

TRAIN_ONLY = ("matplotlib", "keras_tuner", "tensorboard", "xgboost", "sklearn")


def test_stream_side_imports_without_training_extras() -> None:
    """Block the training-only packages; the worker's modules (and Keras/TF) must still import."""
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = {TRAIN_ONLY!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is training-only")
                return None

        sys.meta_path.insert(0, Block())
        from diskwatch.core.quiet import quiet_tensorflow
        quiet_tensorflow()
        import diskwatch.stream.app, diskwatch.stream.runner, diskwatch.models.bundle, diskwatch.models.inference
        import keras
        keras.ops.sum(keras.ops.ones(2))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("LOADED", loaded)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout


def test_tensorflow_start_up_is_quiet() -> None:
    """No absl/oneDNN/CUDA banner lines on stderr once quiet_tensorflow() ran; real warnings still show."""
    script = textwrap.dedent(
        """
        import os, warnings
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        from diskwatch.core.quiet import quiet_tensorflow
        quiet_tensorflow()
        import keras
        keras.ops.sum(keras.ops.ones(2))
        warnings.warn("a real warning stays")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in ("absl::InitializeLog", "oneDNN", "cuInit", "cpu_feature_guard", "cudart_stub"):
        assert noise not in proc.stderr
    assert "a real warning stays" in proc.stderr
