"""The worker's side starts lean and quiet: no package of an extra (``[train]``, ``[jax]``, ``[torch]``) is
imported, and TensorFlow prints no start-up banner.

Both checks read one fresh interpreter (a module fixture): importing TensorFlow is most of
the cost, so they share it rather than start one each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.integration.workers import lean_install_env

NOISE = ("absl::InitializeLog", "oneDNN", "cuInit", "cpu_feature_guard", "cudart_stub")


@pytest.fixture(scope="module")
def worker_side_start() -> subprocess.CompletedProcess[str]:
    """A fresh interpreter as the lean install (tests/lean_site blocks the extras' packages)
    with TF's log level unset: it quiets TensorFlow, imports the worker's modules (and Keras/TF),
    runs one op, then warns."""
    script = textwrap.dedent(
        """
        import os, sys, warnings
        from sitecustomize import NOT_INSTALLED as BLOCKED  # tests/lean_site, installed at start-up
        assert type(sys.meta_path[0]).__name__ == "BlockExtras", sys.meta_path
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        from diskwatch.core.quiet import quiet_tensorflow
        quiet_tensorflow()
        import diskwatch.stream.app, diskwatch.stream.runner, diskwatch.models.bundle, diskwatch.models.inference
        import keras
        keras.ops.sum(keras.ops.ones(2))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("LOADED", loaded)
        warnings.warn("a real warning stays")
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False,
                          env=lean_install_env(os.environ))


def test_stream_side_imports_without_training_extras(worker_side_start: subprocess.CompletedProcess[str]) -> None:
    """Block the extras' packages; the worker's modules (and Keras/TF) must still import."""
    assert worker_side_start.returncode == 0, worker_side_start.stderr[-3000:]
    assert "LOADED []" in worker_side_start.stdout


def test_tensorflow_start_up_is_quiet(worker_side_start: subprocess.CompletedProcess[str]) -> None:
    """No absl/oneDNN/CUDA banner lines on stderr once quiet_tensorflow() ran; real warnings still show."""
    assert worker_side_start.returncode == 0, worker_side_start.stderr[-3000:]
    for noise in NOISE:
        assert noise not in worker_side_start.stderr
    assert "a real warning stays" in worker_side_start.stderr
