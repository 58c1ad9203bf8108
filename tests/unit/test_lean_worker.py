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
from tests.unit.test_architecture import SHELL_MODULES

NOISE = ("absl::InitializeLog", "oneDNN", "cuInit", "cpu_feature_guard", "cudart_stub")


@pytest.fixture(scope="module")
def worker_side_start() -> subprocess.CompletedProcess[str]:
    """A fresh interpreter as the lean install (tests/lean_site blocks the extras' packages)
    with TF's log level unset: it quiets TensorFlow, imports every module of the lower layers
    (core, models, stream: the worker's side, Keras/TF included), runs one op, then warns."""
    script = textwrap.dedent(
        f"""
        import importlib, os, pkgutil, sys, warnings
        from sitecustomize import NOT_INSTALLED as BLOCKED  # tests/lean_site, installed at start-up
        assert type(sys.meta_path[0]).__name__ == "BlockExtras", sys.meta_path
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        from diskwatch.core.quiet import quiet_tensorflow
        quiet_tensorflow()
        import diskwatch.core as c, diskwatch.models as m, diskwatch.stream as s
        for pkg in (c, m, s):
            [importlib.import_module(i.name) for i in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
        import keras
        keras.ops.sum(keras.ops.ones(2))
        print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
        print("UPPER", sorted(k for k in sys.modules if k.startswith(("diskwatch.training", *{SHELL_MODULES!r}))))
        warnings.warn("a real warning stays")
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False,
                          env=lean_install_env(os.environ))


def test_stream_side_imports_without_training_extras(worker_side_start: subprocess.CompletedProcess[str]) -> None:
    """Block the extras' packages; the worker's modules (and Keras/TF) must still import."""
    assert worker_side_start.returncode == 0, worker_side_start.stderr[-3000:]
    assert "LOADED []" in worker_side_start.stdout


def test_lower_layers_never_load_training_or_the_shell_at_runtime(
    worker_side_start: subprocess.CompletedProcess[str],
) -> None:
    """Importing every module of core, models and stream loads no ``diskwatch.training`` module and
    none of the shell's (the import-graph rules in test_architecture.py, checked at run time)."""
    assert worker_side_start.returncode == 0, worker_side_start.stderr[-3000:]
    assert "UPPER []" in worker_side_start.stdout, worker_side_start.stdout


def test_tensorflow_start_up_is_quiet(worker_side_start: subprocess.CompletedProcess[str]) -> None:
    """No absl/oneDNN/CUDA banner lines on stderr once quiet_tensorflow() ran; real warnings still show."""
    assert worker_side_start.returncode == 0, worker_side_start.stderr[-3000:]
    for noise in NOISE:
        assert noise not in worker_side_start.stderr
    assert "a real warning stays" in worker_side_start.stderr
