"""Fixtures for worker tests: a simulated fleet and a small bundle trained on it.

Both are built once per test run, even under pytest-xdist: the first worker to need one builds it
in the run's shared temporary folder under a file lock, the others wait and reuse it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from diskwatch.models.windows import WindowConfig
from diskwatch.training.fit import TrainConfig, train
from diskwatch.training.synth import FleetConfig, write_fleet
from diskwatch.training.windowstore import WindowStore, build_store

WINDOW = WindowConfig(window=7, horizon=5, max_gap=2)


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per run (shared by xdist workers); later callers get the finished folder."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's popen-gwN
    target = base / f"shared-{name}"
    with FileLock(str(target) + ".lock"):
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            build(target)
            (target / ".complete").touch()
    return target


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
