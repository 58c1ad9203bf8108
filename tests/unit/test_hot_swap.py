"""A worker swaps in a changed bundle between batches and keeps the old one when the new is broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from diskwatch.core.settings import Settings
from diskwatch.models.bundle import load_bundle, save_bundle
from diskwatch.stream.app import Worker, _stamp
from tests.unit.bundles import THRESHOLDS, WINDOW, fitted_spec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def retrained(tmp_path: Path) -> Path:
    """Another bundle with the same features (new weights, so a new version)."""
    from diskwatch.models.architectures import build

    out = tmp_path / "retrained"
    models = {"classifier": build("lstm", 5, 3, width=6, depth=1), "autoencoder": build("ae-lstm", 5, 3, width=6, latent=2)}
    save_bundle(out, models=models, spec=fitted_spec(), window=WINDOW, thresholds=THRESHOLDS)
    return out


def test_hot_swap_refuses_a_half_copied_bundle_then_takes_it_when_complete(
    bundle_dir: Path, tmp_path: Path, isolated_settings_env: None
) -> None:
    live = tmp_path / "live"
    shutil.copytree(bundle_dir, live)
    worker = Worker(Settings(_env_file=None), live)  # type: ignore[call-arg]
    worker.load()
    old_version, old_processor = worker.bundle.version, worker.processor
    worker.maybe_reload()
    assert worker.processor is old_processor, "an unchanged bundle must not be reloaded"

    new = retrained(tmp_path)
    new_version = load_bundle(new).version
    assert new_version != old_version
    # A non-atomic copy: the new manifest and autoencoder landed, the classifier not yet.
    shutil.copy2(new / "manifest.json", live / "manifest.json")
    shutil.copy2(new / "autoencoder.keras", live / "autoencoder.keras")
    worker.maybe_reload()
    assert worker.bundle.version == old_version and worker.processor is old_processor
    worker.maybe_reload()  # nothing changed since the refusal: not tried again
    assert worker.processor is old_processor

    shutil.copy2(new / "classifier.keras", live / "classifier.keras")  # the copy completes
    worker.maybe_reload()
    assert worker.bundle.version == new_version and worker.processor is not old_processor


def test_stamp_sees_every_file_and_needs_a_manifest(bundle_dir: Path, tmp_path: Path) -> None:
    live = tmp_path / "b"
    shutil.copytree(bundle_dir, live)
    first = _stamp(live)
    assert first is not None and any(name == "manifest.json" for name, _, _ in first)
    (live / "classifier.keras").write_bytes(b"changed")
    assert _stamp(live) != first
    (live / "manifest.json").unlink()
    assert _stamp(live) is None
