"""Quiet TensorFlow start-up: no absl/oneDNN/CUDA banner lines, real warnings kept.

TensorFlow's C++ side writes its start-up chatter straight to file descriptor 2, some of it
before absl logging is initialised (so ``TF_CPP_MIN_LOG_LEVEL`` does not reach it), and a
CPU-only machine gets ``E0000 … failed call to cuInit`` as an *error*. Every entry point that
will load a model calls :func:`quiet_tensorflow` before anything imports TensorFlow: it sets the
log levels, imports TensorFlow and probes its devices with fd 2 captured, and writes back every
captured line that is not one of the known banners. Python warnings are untouched.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

#: Start-up lines that say nothing a user can act on (they differ by TF build and machine).
NOISE = re.compile(
    r"All log messages before absl::InitializeLog"
    r"|oneDNN custom operations are on"
    r"|cudart_stub\.cc|Could not find cuda drivers"
    r"|cpu_feature_guard\.cc|This TensorFlow binary is optimized"
    r"|To enable the following instructions"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation_placer\.cc"
    r"|TF-TRT Warning"
)

_done = False


def quiet_tensorflow() -> None:
    """Set TF's log levels and import it with its banners filtered out (idempotent, cheap after once)."""
    global _done
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING off; errors stay
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if _done or "tensorflow" in sys.modules or os.environ["KERAS_BACKEND"] != "tensorflow":
        _done = True
        return
    _done = True
    with filtered_stderr(NOISE):
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe (cuInit) happens here, once
        except ImportError:  # a pure-streaming install without TensorFlow: nothing to quiet
            pass


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern[str]) -> Iterator[None]:
    """Capture fd 2 (C++ writes too) while the block runs; replay the lines ``noise`` does not match."""
    with contextlib.suppress(AttributeError, ValueError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all (a daemon): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not noise.search(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
