"""The one-command demo: simulate (or read) a fleet, train, stream it, show alerts, sum up.

A time-split backtest, as an operator would run one: models are trained on
the first part of the period, then the rest is replayed through Kafka into a
real worker process while the alert topic is shown live. The summary counts
only what happened after the training period: failures, failures caught and
with how many days' warning, and false alarms on healthy drives. Fleet and
bundle are cached under ``.local/demo`` so a second run starts streaming at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from diskwatch.alerts import alert_table, rows_that_fit, tail_alerts
from diskwatch.core.errors import DiskwatchError
from diskwatch.core.records import Alert
from diskwatch.core.settings import Settings
from diskwatch.replay import ReplaySummary, replay


@dataclass
class DemoResult:
    drives: int = 0
    failures: int = 0
    caught: dict[str, int] = field(default_factory=dict)  # serial -> days of warning
    false_alarms: int = 0
    healthy: int = 0
    alerts: int = 0  # alerts dated in the backtest period (what the summary scores)
    alerts_published: int = 0  # every alert the worker published, history days included
    replay: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        leads = sorted(self.caught.values())
        return {
            "drives": self.drives,
            "failures": self.failures,
            "caught": len(self.caught),
            "warning_days": leads,
            "median_warning_days": leads[len(leads) // 2] if leads else None,
            "healthy_drives": self.healthy,
            "false_alarms": self.false_alarms,
            "alerts": self.alerts,
            "alerts_published": self.alerts_published,
            "replay": self.replay,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _day_range(data: Path) -> tuple[dt.date, dt.date]:
    from diskwatch.core.dumps import find_days

    days = find_days(data)
    return days[0].day, days[-1].day


def prepare_fleet(workdir: Path, drives: int, days: int, seed: int, console: Console) -> Path:
    from diskwatch.training.synth import FleetConfig, write_fleet

    out = workdir / f"fleet-{drives}x{days}-s{seed}"
    if (out / "fleet.json").exists():
        console.print(f"fleet: reusing {out}")
        return out
    console.print(f"fleet: simulating {drives:,} drives x {days} days (seeded, Backblaze layout) → {out}")
    write_fleet(FleetConfig(drives=drives, days=days, start=dt.date(2024, 1, 1), seed=seed), out, progress=True)
    return out


def prepare_bundle(data: Path, workdir: Path, train_until: dt.date, epochs: int, seed: int, console: Console) -> Path:
    from diskwatch.core.dumps import DumpFilter
    from diskwatch.models.windows import WindowConfig
    from diskwatch.training.fit import TrainConfig, train
    from diskwatch.training.windowstore import WindowStore, build_store

    key = hashlib.sha256(json.dumps([str(data.resolve()), train_until.isoformat(), epochs, seed]).encode()).hexdigest()[:10]
    bundle = workdir / f"bundle-{key}"
    if (bundle / "manifest.json").exists():
        console.print(f"model: reusing {bundle}")
        return bundle
    console.print(f"model: training on days up to {train_until} (the rest is replayed as unseen future)")
    store = build_store(
        data, workdir / f"windows-{key}", config=WindowConfig(), filters=DumpFilter(date_to=train_until),
        healthy_fraction=0.5, seed=seed,
    ).store
    config = TrainConfig(epochs=epochs, width=32, depth=1, latent=8, batch_size=256, seed=seed, patience=3)
    train(WindowStore(store), bundle, config, console=console, overwrite=True)
    return bundle


def _ground_truth(data: Path, since: dt.date) -> tuple[set[str], dict[str, dt.date]]:
    """Drives seen since ``since`` and the failure day of those that failed."""
    from diskwatch.core.dumps import DumpFilter, iter_days

    drives: set[str] = set()
    failed: dict[str, dt.date] = {}
    for day, table in iter_days(data, [], filters=DumpFilter(date_from=since)):
        serials = table["serial_number"].to_pylist()
        drives.update(serials)
        for serial, flag in zip(serials, table["failure"].to_pylist(), strict=True):
            if flag == 1:
                failed.setdefault(serial, day)
    return drives, failed


class WorkerProcess:
    """The real worker, as its own process, on this run's topics."""

    def __init__(self, bundle: Path, env: dict[str, str], log: Path) -> None:
        self.port = int(env["DISKWATCH_METRICS_PORT"])
        self.log = log
        with log.open("wb") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "diskwatch", "worker", "--model", str(bundle)],
                env=env, stdout=handle, stderr=subprocess.STDOUT,
            )

    def get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return response.read().decode()
        except OSError:
            return None

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.exited()
            body = self.get("/healthz")
            if body and json.loads(body).get("assigned"):
                return
            time.sleep(0.5)
        raise TimeoutError("the worker did not become ready")

    def exited(self) -> None:
        """Raise why the worker stopped: its own ``error:`` line (a user error) or the log's tail."""
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        said = [line for line in lines if line.startswith("error:")]
        if said:
            raise DiskwatchError(f"the demo's worker stopped: {said[-1].removeprefix('error: ')}")
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"the worker exited with status {self.proc.returncode} (log {self.log}):\n{tail}")

    def records_in(self) -> float:
        text = self.get("/metrics") or ""
        for line in text.splitlines():
            if line.startswith("diskwatch_records_in_total "):
                return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_demo(
    settings: Settings,
    *,
    data: Path | None = None,
    drives: int = 3000,
    days: int = 90,
    seed: int = 7,
    epochs: int = 6,
    speed: float | None = None,
    workdir: Path = Path(".local/demo"),
    console: Console | None = None,
) -> DemoResult:
    console = console or Console()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = data or prepare_fleet(workdir, drives, days, seed, console)
    first, last = _day_range(data)
    span = (last - first).days
    cutoff = first + dt.timedelta(days=max(span * 2 // 3, 1))
    bundle = prepare_bundle(data, workdir, cutoff - dt.timedelta(days=1), epochs, seed, console)

    from diskwatch.models.bundle import read_manifest

    window = read_manifest(bundle).window
    run = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISKWATCH_")}
    env.update(
        DISKWATCH_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        DISKWATCH_REDIS_URL=settings.redis_url.get_secret_value(),
        DISKWATCH_TOPIC_TELEMETRY=f"demo-{run}-telemetry",
        DISKWATCH_TOPIC_ALERTS=f"demo-{run}-alerts",
        DISKWATCH_TOPIC_DEAD_LETTERS=f"demo-{run}-dlq",
        DISKWATCH_CONSUMER_GROUP=f"demo-{run}",
        DISKWATCH_REDIS_KEY_PREFIX=f"demo:{run}",
        DISKWATCH_METRICS_PORT=str(_free_port()),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    run_settings = settings.model_copy(update={
        "topic_telemetry": env["DISKWATCH_TOPIC_TELEMETRY"], "topic_alerts": env["DISKWATCH_TOPIC_ALERTS"],
        "topic_dead_letters": env["DISKWATCH_TOPIC_DEAD_LETTERS"],
    })
    console.print(f"worker: starting (bundle {bundle.name}, topics demo-{run}-*, metrics :{env['DISKWATCH_METRICS_PORT']})")
    worker = WorkerProcess(bundle, env, workdir / f"worker-{run}.log")
    result = DemoResult()
    try:
        worker.wait_ready()
        replay_from = cutoff - dt.timedelta(days=window.window + window.max_gap)
        console.print(f"replay: {replay_from} .. {last} into Kafka (history from {replay_from}, scored from {cutoff})")
        alerts = asyncio.run(_stream(data, run_settings, replay_from, cutoff, speed, worker, console, result))
    finally:
        worker.stop()
        _drop_run(settings, run, console)
    _summarize(data, cutoff, alerts, window.horizon * 2, result)
    _print_summary(console, result, cutoff, last, time.monotonic() - started)
    (workdir / "last-demo.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


async def _stream(
    data: Path, settings: Settings, replay_from: dt.date, cutoff: dt.date, speed: float | None,
    worker: WorkerProcess, console: Console, result: DemoResult,
) -> list[Alert]:
    from diskwatch.core.dumps import DumpFilter

    alerts: list[Alert] = []
    status = {"text": "starting"}

    def render() -> Table:
        # Same words as the summary: all published alerts, and those in the backtest period.
        in_period = sum(a.date >= cutoff for a in alerts)
        title = f"alerts published: {len(alerts)} ({in_period} from {cutoff}) — {status['text']}"
        return alert_table(alerts, title=title, width=console.width,
                           max_rows=rows_that_fit(console.height, reserved=2))

    async def collect() -> None:
        async for alert in tail_alerts(settings, from_beginning=True):
            if isinstance(alert, Alert):
                alerts.append(alert)

    def on_day(day: dt.date, n: int, summary: ReplaySummary) -> None:
        status["text"] = f"replayed {day} ({summary.records:,} records, {summary.records_per_s:,.0f}/s)"

    with Live(render(), console=console, refresh_per_second=4, transient=False) as live:
        collector = asyncio.create_task(collect())
        refresher = asyncio.create_task(_refresh(live, render))
        summary = await replay(data, settings, filters=DumpFilter(date_from=replay_from), speed=speed, on_day=on_day)
        result.replay = summary.to_dict()
        status["text"] = "waiting for the worker to catch up"
        while worker.records_in() < summary.records:
            if worker.proc.poll() is not None:
                worker.exited()
            await asyncio.sleep(0.5)
        await asyncio.sleep(4)  # last alerts in flight
        status["text"] = "done"
        collector.cancel()
        refresher.cancel()
        live.update(render())
    return alerts


def _drop_run(settings: Settings, run: str, console: Console) -> None:
    """Delete this run's topics (ours and faust's), consumer group and Redis keys: a demo leaves nothing."""
    try:
        topics, keys = asyncio.run(_drop_run_async(settings, run))
    except Exception as exc:  # best effort: the demo's result matters more than its litter
        console.print(f"[yellow]cleanup of demo-{run}-* failed[/]: {type(exc).__name__}: {exc}")
        return
    console.print()  # the live table's last line has no newline of its own
    console.print(f"cleanup: deleted {topics} topics demo-{run}-* and {keys} Redis keys demo:{run}:*")


async def _drop_run_async(settings: Settings, run: str) -> tuple[int, int]:
    import redis.asyncio as aioredis
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(f"demo-{run}-")]
        if topics:
            await admin.delete_topics(topics)
        if any(g[0] == f"demo-{run}" for g in await admin.list_consumer_groups()):
            from aiokafka.protocol.admin import DeleteGroupsRequest  # no admin method for it in aiokafka

            node = await admin.find_coordinator(f"demo-{run}")
            await admin._send_request_to_node(node, DeleteGroupsRequest([f"demo-{run}"]))
    finally:
        await admin.close()
    client = aioredis.Redis.from_url(settings.redis_url.get_secret_value())  # the local stack: no cluster
    try:
        keys = [k async for k in client.scan_iter(match=f"demo:{run}*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.unlink(*keys[i : i + 1000])
    finally:
        await client.aclose()
    return len(topics), len(keys)


async def _refresh(live: Live, render: Any) -> None:
    while True:
        live.update(render())
        await asyncio.sleep(0.5)


def _summarize(data: Path, cutoff: dt.date, alerts: list[Alert], lead_max: int, result: DemoResult) -> None:
    drives, failed = _ground_truth(data, cutoff)
    scored = [a for a in alerts if a.date >= cutoff]
    first_alert: dict[str, list[dt.date]] = {}
    for a in scored:
        first_alert.setdefault(a.serial_number, []).append(a.date)
    result.drives = len(drives)
    result.failures = len(failed)
    result.alerts = len(scored)
    result.alerts_published = len(alerts)
    for serial, fail_day in failed.items():
        early = [d for d in first_alert.get(serial, []) if 0 <= (fail_day - d).days <= lead_max]
        if early:
            result.caught[serial] = (fail_day - min(early)).days
    healthy = drives - set(failed)
    result.healthy = len(healthy)
    result.false_alarms = len(healthy & set(first_alert))


def _print_summary(console: Console, result: DemoResult, cutoff: dt.date, last: dt.date, seconds: float) -> None:
    d = result.to_dict()
    table = Table(title=f"backtest {cutoff} .. {last} (after the training period)", show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row("drives", f"{d['drives']:,}")
    table.add_row("failures", str(d["failures"]))
    table.add_row("caught (alert ≤ 2×horizon days before)", f"{d['caught']} of {d['failures']}")
    table.add_row("days of warning (each caught drive)", ", ".join(map(str, d["warning_days"])) or "-")
    table.add_row("false alarms (healthy drives alerted)", f"{d['false_alarms']} of {d['healthy_drives']:,}")
    table.add_row(f"alerts published (from {cutoff})", f"{d['alerts']} (all replayed days: {d['alerts_published']})")
    table.add_row("replay", f"{d['replay'].get('records', 0):,} records in {d['replay'].get('seconds', 0):.1f}s")
    table.add_row("total time", f"{seconds:.0f}s")
    console.print()  # a blank line: the title would otherwise touch the alert table's border
    console.print(table)
