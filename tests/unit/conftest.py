"""Fixtures shared by unit test modules (helpers they import live in tests/unit/bundles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskwatch.core.quiet import quiet_tensorflow

quiet_tensorflow()  # before the Keras import below (this conftest may load before tests/conftest.py's hook)

from tests.unit.bundles import write_tiny_bundle  # noqa: E402


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny bundle per session; tests that change it work on a copy."""
    return write_tiny_bundle(tmp_path_factory.mktemp("b") / "bundle")
