"""Fixtures shared by unit test modules (helpers they import live in tests/unit/bundles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.bundles import write_tiny_bundle


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny bundle per session; tests that change it work on a copy."""
    return write_tiny_bundle(tmp_path_factory.mktemp("b") / "bundle")
