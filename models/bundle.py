"""The model bundle: everything a scorer needs, in one verifiable directory.

::

    BUNDLE/
      manifest.json        format, version id, feature spec (fitted), window
                           config, thresholds, training provenance, metrics,
                           and a sha256 + size for every other file
      classifier.keras     P(failure within the horizon)
      autoencoder.keras    reconstruction of healthy windows
      rul.keras            optional days-to-failure regressor

Bundles are written to a temporary sibling and renamed into place, so a crash
never leaves a half-written bundle under the final name. Loading verifies the
manifest and every checksum *before* Keras sees a file, loads with
``safe_mode=True`` (no pickles, no lambdas), and checks that the models'
input shapes agree with the window and feature spec.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from diskwatch.core.errors import DiskwatchError
from diskwatch.models.features import FeatureSpec
from diskwatch.models.windows import WindowConfig

if TYPE_CHECKING:
    import keras

    from diskwatch.models.inference import Scorer

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
MODEL_FILES = {"classifier": "classifier.keras", "autoencoder": "autoencoder.keras", "rul": "rul.keras"}


class BundleError(DiskwatchError):
    """A bundle is missing, partial, corrupt or does not fit this code."""


class Thresholds(BaseModel):
    """Alert thresholds and how they were chosen (on validation data only)."""

    model_config = ConfigDict(frozen=True)

    classifier: float = Field(description="Operating threshold on P(failure).")
    classifier_method: str = Field(description="How `classifier` was chosen.")
    classifier_max_f1: float | None = Field(None, description="Window max-F1 threshold (validation).")
    classifier_target_far: float | None = Field(
        None, description="Per-drive false-alarm rate the operating threshold targets."
    )
    autoencoder: float = Field(description="Threshold on reconstruction error.")
    autoencoder_method: str
    autoencoder_target_fpr: float | None = None
    top_reasons: int = Field(3, ge=1, le=20, description="Attributes named per alert.")


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    sha256: str
    bytes: int


class BundleManifest(BaseModel):
    """The JSON at the root of a bundle."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    format: Literal[1] = BUNDLE_FORMAT
    version: str = Field(description="Content id: changes whenever any model or setting changes.")
    created: dt.datetime
    code_version: str
    keras_version: str
    backend: str
    feature_spec: FeatureSpec
    window: WindowConfig
    thresholds: Thresholds
    models: dict[str, str] = Field(description="Role (classifier/autoencoder/rul) -> file name.")
    extras: dict[str, str] = Field(
        default_factory=dict, description="Non-Keras files by role, e.g. the XGBoost baseline, the splits."
    )
    architectures: dict[str, dict[str, Any]] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict, description="Data range, splits, sampling.")
    metrics: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileEntry]


@dataclass
class Bundle:
    """A loaded, verified bundle."""

    path: Path
    manifest: BundleManifest
    classifier: keras.Model | None
    autoencoder: keras.Model | None
    rul: keras.Model | None

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def spec(self) -> FeatureSpec:
        return self.manifest.feature_spec

    @property
    def window(self) -> WindowConfig:
        return self.manifest.window

    @property
    def thresholds(self) -> Thresholds:
        return self.manifest.thresholds

    def extra(self, role: str) -> Path | None:
        """Path of a verified extra file (e.g. ``xgboost``, ``splits``), if bundled."""
        name = self.manifest.extras.get(role)
        return None if name is None else self.path / name

    def scorer(self, **kwargs: Any) -> Scorer:
        from diskwatch.models.inference import Scorer

        return Scorer(self.classifier, self.autoencoder, self.rul, **kwargs)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(
    out: Path | str,
    *,
    models: dict[str, keras.Model],
    spec: FeatureSpec,
    window: WindowConfig,
    thresholds: Thresholds,
    architectures: dict[str, dict[str, Any]] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extras: dict[str, Path] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle atomically; returns its path."""
    import keras

    from diskwatch import __version__

    out = Path(out)
    if not spec.is_fitted:
        raise BundleError("the feature spec must be fitted (scaler) before it is bundled")
    unknown = set(models) - set(MODEL_FILES)
    if unknown or not {"classifier", "autoencoder"} <= set(models):
        raise BundleError(f"a bundle needs classifier and autoencoder (optional rul), got {sorted(models)}")
    if out.exists() and not overwrite:
        raise BundleError(f"{out} exists; pass overwrite=True (--force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files: dict[str, FileEntry] = {}
        names: dict[str, str] = {}
        for role, model in models.items():
            name = MODEL_FILES[role]
            model.save(staging / name)
            files[name] = FileEntry(sha256=_sha256(staging / name), bytes=(staging / name).stat().st_size)
            names[role] = name
        extra_names: dict[str, str] = {}
        for role, source in (extras or {}).items():
            name = Path(source).name
            if name in files or name == MANIFEST:
                raise BundleError(f"extra file {name} clashes with a bundle file")
            shutil.copyfile(source, staging / name)
            files[name] = FileEntry(sha256=_sha256(staging / name), bytes=(staging / name).stat().st_size)
            extra_names[role] = name
        identity = json.dumps(
            {
                "files": {k: v.sha256 for k, v in sorted(files.items())},
                "spec": spec.model_dump(mode="json"),
                "window": window.model_dump(mode="json"),
                "thresholds": thresholds.model_dump(mode="json"),
            },
            sort_keys=True,
        )
        manifest = BundleManifest(
            version=hashlib.sha256(identity.encode()).hexdigest()[:12],
            created=dt.datetime.now(dt.UTC),
            code_version=__version__,
            keras_version=keras.__version__,
            backend=keras.backend.backend(),
            feature_spec=spec,
            window=window,
            thresholds=thresholds,
            models=names,
            extras=extra_names,
            architectures=architectures or {},
            training=training or {},
            metrics=metrics or {},
            files=files,
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def update_metrics(path: Path | str, metrics: dict[str, Any]) -> None:
    """Record evaluation metrics in a bundle's manifest (models untouched)."""
    path = Path(path)
    manifest = read_manifest(path)
    updated = manifest.model_copy(update={"metrics": {**manifest.metrics, **metrics}})
    tmp = path / f".{MANIFEST}.tmp"
    tmp.write_text(updated.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path / MANIFEST)


def read_manifest(path: Path | str) -> BundleManifest:
    """Parse and verify a bundle's manifest and file checksums (no Keras)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"no model bundle at {path} (expected a directory with {MANIFEST})")
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise BundleError(f"{path} is not a complete bundle: {MANIFEST} is missing")
    try:
        data = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is corrupt: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{manifest_path} is corrupt: not a JSON object")
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"bundle format {data.get('format')!r} is not supported by this diskwatch (needs {BUNDLE_FORMAT})"
        )
    try:
        manifest = BundleManifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{manifest_path} is invalid at {where}: {first['msg']}") from None
    if not manifest.feature_spec.is_fitted:
        raise BundleError(f"{path}: the feature spec in the manifest is not fitted")
    for role, name in manifest.models.items():
        if name not in manifest.files:
            raise BundleError(f"{path}: model {role} ({name}) has no checksum in the manifest")
    for name, entry in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path} is partial: {name} is missing")
        if file.stat().st_size != entry.bytes:
            raise BundleError(f"{path} is corrupt: {name} has {file.stat().st_size} bytes, expected {entry.bytes}")
        if _sha256(file) != entry.sha256:
            raise BundleError(f"{path} is corrupt: checksum mismatch for {name}")
    return manifest


def load_bundle(path: Path | str) -> Bundle:
    """Verify then load a bundle; raises :class:`BundleError` with the reason."""
    import keras

    import diskwatch.models.layers  # noqa: F401  (registers the window layers a model may hold)

    path = Path(path)
    manifest = read_manifest(path)
    loaded: dict[str, Any] = {}
    for role, name in manifest.models.items():
        try:
            loaded[role] = keras.saving.load_model(path / name, safe_mode=True, compile=False)
        except Exception as exc:  # Keras raises many types for a bad file
            raise BundleError(f"{path}: cannot load {name}: {type(exc).__name__}: {exc}") from None
        _check_shape(path, role, loaded[role], manifest)
    if "classifier" not in loaded or "autoencoder" not in loaded:
        raise BundleError(f"{path}: a bundle needs a classifier and an autoencoder")
    return Bundle(path, manifest, loaded["classifier"], loaded["autoencoder"], loaded.get("rul"))


def _check_shape(path: Path, role: str, model: Any, manifest: BundleManifest) -> None:
    shape = tuple(model.inputs[0].shape)[1:]
    want = (manifest.window.window, manifest.feature_spec.n_inputs)
    if shape != want:
        raise BundleError(
            f"{path}: {role} expects windows of shape {shape} but the manifest says (window, features) = {want}"
        )
