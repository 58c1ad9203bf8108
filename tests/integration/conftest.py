"""Fixtures for worker tests: a simulated fleet and a small bundle trained on it.

Both are built once per test run, even under pytest-xdist: the first worker to need one builds it
in the run's shared temporary folder under a file lock, the others wait and reuse it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from diskwatch.core.quiet import quiet_tensorflow

quiet_tensorflow()  # before the imports below load Keras (this conftest may load before tests/conftest.py's hook)

from diskwatch.models.windows import WindowConfig  # noqa: E402
from diskwatch.training.fit import TrainConfig, train  # noqa: E402
from diskwatch.training.synth import FleetConfig, write_fleet  # noqa: E402
from diskwatch.training.windowstore import WindowStore, build_store  # noqa: E402

WINDOW = WindowConfig(window=7, horizon=5, max_gap=2)


# Built fixtures are also kept between runs, in .local/cache/test-fixtures/NAME-KEY: KEY hashes
# every source file that shapes them (core, models, training, this file) and the versions of the
# libraries that write them, so any change to those builds afresh. A fresh clone builds once.
# DISKWATCH_TEST_FIXTURE_CACHE=0 turns the cache off.
FIXTURE_CACHE = Path(__file__).resolve().parents[2] / ".local" / "cache" / "test-fixtures"


def _fingerprint(inputs: Path | None = None) -> str:
    from importlib.metadata import version

    repo = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for package in ("core", "models", "training"):
        for path in sorted((repo / package).rglob("*.py")):
            digest.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes())
    digest.update(Path(__file__).read_bytes())
    for dist in ("keras", "tensorflow", "numpy", "pandas"):
        digest.update(f"{dist}={version(dist)}".encode())
    for path in sorted(inputs.rglob("*")) if inputs is not None else ():
        stat = path.stat()
        digest.update(f"{path.relative_to(inputs)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _cache_enabled() -> bool:
    return os.environ.get("DISKWATCH_TEST_FIXTURE_CACHE", "1") != "0"


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None],
               inputs: Path | None = None) -> Path:
    """``build(folder)`` once per run (shared by xdist workers); later callers get the finished folder.

    The result is copied into the fixture cache, and a later run with the same sources copies it
    back instead of building (a trained bundle takes 30-90 s on a busy 2-core machine). Files
    under ``inputs`` (names, sizes, mtimes) are part of the cache key.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's popen-gwN
    target = base / f"shared-{name}"
    with FileLock(str(target) + ".lock"):
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            cached = FIXTURE_CACHE / f"{name}-{_fingerprint(inputs)}"
            if _cache_enabled() and (cached / ".complete").exists():
                shutil.copytree(cached, target)
            else:
                target.mkdir(parents=True)
                build(target)
                (target / ".complete").touch()
                if _cache_enabled():
                    _store(target, cached)
    return target


def _store(built: Path, cached: Path) -> None:
    """Copy a finished build into the cache (atomically: a rename) and drop older builds of it."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = cached.parent / f".{cached.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(built, staging)
    name = cached.name.rsplit("-", 1)[0]
    for old in cached.parent.glob(f"{name}-*"):
        if old != cached:
            shutil.rmtree(old, ignore_errors=True)
    try:
        staging.rename(cached)
    except OSError:  # another run stored it first
        shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture(scope="session")
def sim_fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def build(out: Path) -> None:
        write_fleet(FleetConfig(drives=800, days=40, start=dt.date(2024, 1, 1), seed=11, failure_boost=30.0), out,
                    progress=False)

    return build_once(tmp_path_factory, "sim-fleet", build)


@pytest.fixture(scope="session")
def sim_truth(sim_fleet: Path) -> dict:
    return json.loads((sim_fleet / "fleet.json").read_text())


@pytest.fixture(scope="session")
def sim_bundle(sim_fleet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def build(root: Path) -> None:
        store = WindowStore(build_store(sim_fleet, root / "store", config=WINDOW, seed=2).store)
        # 8 epochs: with the window-feature layers (default) 4 epochs left this small model
        # catching 4 of 10 catchable simulated failures end to end; 8 catch >= 5 (measured).
        config = TrainConfig(epochs=8, width=16, depth=1, latent=4, batch_size=64, seed=2, xgboost=False, rul=False)
        train(store, root / "bundle", config)

    return build_once(tmp_path_factory, "sim-bundle", build) / "bundle"


@pytest.fixture(scope="session")
def real_bundle(backblaze_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bundle trained on the real 2013 sample, and a subset dump of its drives.

    The folder holds ``bundle/``, ``subset/`` (the failed drives and 30 healthy ones, one CSV a
    day) and ``drives.json`` (``failed``: serial -> failure day number, ``healthy``: serials).
    """
    source = backblaze_dir / "daily_2013"

    def build(root: Path) -> None:
        import gzip

        store = WindowStore(build_store(source, root / "store", config=WindowConfig(window=7, horizon=5),
                                        healthy_fraction=0.2, seed=3).store)
        config = TrainConfig(epochs=3, width=16, depth=1, latent=4, batch_size=128, seed=3, xgboost=False, rul=False)
        train(store, root / "bundle", config)
        failed = {s: int(d) for s, d in zip(store.serials, store.failure_day, strict=True) if d >= 0}
        healthy = [s for s in store.serials if s not in failed][:30]
        keep_serials = set(failed) | set(healthy)
        (root / "subset").mkdir()
        for path in sorted(source.glob("*.csv.gz")):
            with gzip.open(path, "rt", newline="") as handle:
                lines = handle.read().splitlines()
            keep = [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 2)[1] in keep_serials]
            (root / "subset" / path.name.removesuffix(".gz")).write_text("\n".join(keep) + "\n")
        (root / "drives.json").write_text(json.dumps({"failed": failed, "healthy": healthy}))
        del store
        shutil.rmtree(root / "store", ignore_errors=True)

    return build_once(tmp_path_factory, "real-2013-bundle", build, inputs=source)


@pytest.fixture(scope="session", autouse=True)
def worker_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Worker logs live in pytest's rotating basetemp, not loose in /tmp after every run."""
    from tests.integration.workers import WorkerProcess

    WorkerProcess.LOG_DIR = tmp_path_factory.mktemp("worker-logs")
    return WorkerProcess.LOG_DIR


@pytest.fixture(autouse=True)
def stop_workers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Stop every worker a test started, also when it failed (``b.stop()`` may never run).

    On failure it first reports each worker's consumer lag and log tail: lag 0 with records
    missing from Redis means offsets were committed for work never applied; lag > 0 with an
    idle worker means a stalled consumer.
    """
    from tests.integration.workers import WorkerProcess

    yield
    report = getattr(request.node, "rep_call", None)
    failed = report is not None and report.failed
    for worker in list(WorkerProcess.RUNNING):
        if failed:
            lag = worker.stream.total_lag()
            print(f"\n--- worker {worker.stream.tag} (lag {lag}), log {worker.log} ---\n{worker.output()[-3000:]}")
        worker.stop(timeout=20)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep the call phase's report on the item (read by the ``stop_workers`` fixture)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report
