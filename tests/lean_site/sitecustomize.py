"""Run a test's child interpreter as the lean worker install (``pip install diskwatch``, no ``[train]``).

Put this folder on ``PYTHONPATH`` and Python imports this module at start-up (``site`` does),
which makes every training-only package unimportable. Why: a worker in production runs
without them, so integration tests should too — a stray import of one fails the test — and
Keras would otherwise import scikit-learn and matplotlib on start-up when they are installed
(~1.5 s of CPU per worker process in the dev environment).
"""

from __future__ import annotations

import importlib.abc
import sys

#: Packages only ``diskwatch[train]`` installs (pyproject.toml); the online path must not need them.
TRAIN_ONLY = ("matplotlib", "keras_tuner", "tensorboard", "xgboost", "sklearn")


class BlockTrainingExtras(importlib.abc.MetaPathFinder):
    """Refuse the training-only packages as if they were not installed."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in TRAIN_ONLY:
            raise ImportError(f"{name} is training-only (not in the lean worker install)", name=name)
        return None


sys.meta_path.insert(0, BlockTrainingExtras())
