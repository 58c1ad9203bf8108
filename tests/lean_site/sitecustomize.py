"""Run a test's child interpreter as the lean worker install (``pip install diskwatch``, no extras).

Put this folder on ``PYTHONPATH`` and Python imports this module at start-up (``site`` does),
which makes every package of the ``[train]``, ``[jax]`` and ``[torch]`` extras unimportable. Why: a worker in
production runs without them, so integration tests should too — a stray import of one fails the
test — and when they are installed, Keras imports scikit-learn and matplotlib and TensorFlow's
lite module imports JAX at start-up (~1.9 s of CPU per worker process in the dev environment).
"""

from __future__ import annotations

import importlib.abc
import sys

#: Packages only ``diskwatch[train]`` installs (pyproject.toml); the online path must not need them.
TRAIN_ONLY = ("matplotlib", "keras_tuner", "tensorboard", "xgboost", "sklearn")
#: What the lean install lacks: the training extra and the other Keras backends (``[jax]``, ``[torch]``).
NOT_INSTALLED = (*TRAIN_ONLY, "jax", "jaxlib", "torch")


class BlockExtras(importlib.abc.MetaPathFinder):
    """Refuse the extras' packages as if they were not installed."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in NOT_INSTALLED:
            raise ImportError(f"{name} comes with an extra (not in the lean worker install)", name=name)
        return None


sys.meta_path.insert(0, BlockExtras())
