"""The ``diskwatch`` command line: one typer app, one subcommand per job.

Subcommands import their heavy dependencies (TensorFlow, faust) lazily so that
``diskwatch --help`` stays fast and the stream side never loads training code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from diskwatch.core.errors import DiskwatchError, ServiceUnavailable
from diskwatch.core.settings import HORIZON_DAYS, MAX_GAP_DAYS, WINDOW_DAYS

if TYPE_CHECKING:
    from diskwatch.models.windows import WindowConfig as WindowArgs



class _Commands(TyperGroup):
    """The command group, and the one place where a user's mistake becomes a line instead of a traceback.

    Library code raises :class:`DiskwatchError` subclasses; an unreachable Kafka or Redis surfaces
    as its client library's exception. Either way: ``error: <what to fix>`` and exit status 2.
    Catching here (not only in :func:`main`) gives ``CliRunner`` tests the same exit codes.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            error = exc if isinstance(exc, DiskwatchError) else _unreachable_service(exc)
            if error is None:
                raise
            console.print(f"[red]error[/]: {escape(str(error))}", soft_wrap=True)
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(
    name="diskwatch",
    help="Streaming anomaly detection for hard-drive SMART telemetry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    cls=_Commands,
)
console = Console(stderr=True)


@app.command()
def schemas(
    out: Path = typer.Option(Path("docs/schemas"), help="Folder to write *.schema.json into."),
) -> None:
    """Write the JSON Schemas of TelemetryRecord, Alert and DeadLetter."""
    from diskwatch.core.records import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for stem, schema in json_schemas().items():
        path = out / f"{stem}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        console.print(f"wrote {path}")


@app.command()
def config() -> None:
    """Print the effective settings (env DISKWATCH_*, env file, defaults); secrets masked."""
    from diskwatch.core.settings import load_settings

    print(json.dumps(load_settings().redacted(), indent=2, sort_keys=True))


@app.command()
def smoke(
    timeout: float = typer.Option(30.0, help="Seconds to wait for each service."),
) -> None:
    """Round-trip one telemetry record through the configured Kafka and Redis."""
    import asyncio

    from diskwatch.core.settings import load_settings
    from diskwatch.smoke import run_smoke

    report = asyncio.run(run_smoke(load_settings(), timeout=timeout))
    for line in report:
        console.print(line)


def _date(value: str | None, flag: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"expected YYYY-MM-DD, got {value!r}", param_hint=flag) from None


@app.command()
def sequences(
    data: Path = typer.Option(..., "--data", help="Daily CSV folder, quarterly zip, or folder of zips."),
    out: Path = typer.Option(..., "--out", help="Window store directory to write."),
    window: int = typer.Option(WINDOW_DAYS, help="S: days per window."),
    horizon: int = typer.Option(HORIZON_DAYS, help="L: label 1 if the drive fails within L days."),
    max_gap: int = typer.Option(MAX_GAP_DAYS, help="G: longest gap between reports inside a window."),
    stride: int = typer.Option(1, help="Days between consecutive windows of a drive."),
    date_from: str | None = typer.Option(None, "--from", help="First day to read (YYYY-MM-DD)."),
    date_to: str | None = typer.Option(None, "--to", help="Last day to read (YYYY-MM-DD)."),
    models: list[str] = typer.Option([], "--models", help="Keep drive models containing this (repeatable)."),
    limit_drives: int | None = typer.Option(None, help="Keep only the first N drives seen."),
    healthy_fraction: float = typer.Option(1.0, help="Share of healthy windows kept (positives always)."),
    seed: int = typer.Option(0, help="Seed for sampling and splits."),
) -> None:
    """Build labelled per-drive windows (a window store) from Backblaze dumps."""
    from diskwatch.core.dumps import DumpFilter
    from diskwatch.models.windows import WindowConfig
    from diskwatch.training.windowstore import build_store

    config = WindowConfig(window=window, horizon=horizon, max_gap=max_gap, stride=stride)
    filters = DumpFilter(
        date_from=_date(date_from, "--from"),
        date_to=_date(date_to, "--to"),
        models=models,
        limit_drives=limit_drives,
    )
    with _day_progress("windows") as advance:
        result = build_store(
            data, out, config=config, filters=filters, healthy_fraction=healthy_fraction, seed=seed,
            on_day=advance,
        )
    m = result.manifest
    console.print(
        f"[bold]{out}[/]: {m['builder']['windows']:,} windows from {m['read']['rows_kept']:,} rows, "
        f"{m['drives']:,} drives ({m['failed_drives']} failed), {m['date_from']}..{m['date_to']}"
    )
    console.print(f"split drives {m['split_drives']}, failed {m['split_failed']}")
    if m["read"]["invalid"]:
        console.print(f"[yellow]invalid input by reason[/]: {m['read']['invalid']}")


@contextlib.contextmanager
def _day_progress(what: str) -> Iterator[Callable[[dt.date, int], None]]:
    """A rich progress line (day, rows/s) on a terminal; periodic log lines otherwise."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    rows = 0
    started = time.monotonic()
    if not console.is_terminal:
        def log(day: dt.date, n: int) -> None:
            nonlocal rows
            rows += n
            if day.day == 1 or n == 0:
                rate = rows / max(time.monotonic() - started, 1e-9)
                console.print(f"{what}: {day} rows={rows:,} ({rate:,.0f} rows/s)")

        yield log
        return
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(what)

        def advance(day: dt.date, n: int) -> None:
            nonlocal rows
            rows += n
            rate = rows / max(time.monotonic() - started, 1e-9)
            progress.update(task, description=f"{what}: {day}  {rows:,} rows  {rate:,.0f} rows/s")

        yield advance


@app.command()
def synth(
    drives: int = typer.Option(2000, min=1, help="Drives over the whole window (incumbents + joiners)."),
    days: int = typer.Option(90, min=1, help="Days to simulate, one CSV per day."),
    start: str = typer.Option("2024-01-01", help="First day, YYYY-MM-DD."),
    out: Path = typer.Option(Path("data/synth"), help="Output folder (daily CSVs + fleet.json)."),
    seed: int = typer.Option(7, help="Seed: same seed and options give byte-identical files."),
    compress: bool = typer.Option(False, help="Write .csv.gz (deterministic gzip) instead of .csv."),
    failure_boost: float | None = typer.Option(None, min=0.0, help="Multiply every model's AFR (default 6)."),
) -> None:
    """Simulate a Backblaze-shaped fleet (SIMULATED SMART data with ground truth)."""
    from rich.table import Table

    from diskwatch.training.synth import DEFAULT_FAILURE_BOOST, FleetConfig, write_fleet

    first = _date(start, "--start")
    assert first is not None
    boost = DEFAULT_FAILURE_BOOST if failure_boost is None else failure_boost
    config = FleetConfig(drives=drives, days=days, start=first, seed=seed, failure_boost=boost)
    began = time.perf_counter()
    summary = write_fleet(config, out, compress=compress, progress=True)
    seconds = time.perf_counter() - began

    table = Table(title="diskwatch synth (simulated data)", show_header=False)
    table.add_row("drives", f"{summary.drives:,}")
    table.add_row("days", f"{summary.days} ({first} .. {config.dates[-1]})")
    table.add_row("rows", f"{summary.rows:,}")
    silent = summary.failures - summary.failures_with_precursor
    table.add_row(
        "failures", f"{summary.failures} ({summary.failures_with_precursor} with precursors, {silent} silent)"
    )
    table.add_row("failure_boost", f"{boost:g}")
    table.add_row("files", f"{len(summary.files)} daily CSVs + fleet.json in {out}")
    table.add_row("seconds", f"{seconds:.1f}")
    console.print(table)


#: ``--data`` of the commands that train (train, compare, tune).
TRAINING_DATA_HELP = ("Backblaze dump (CSV folder, zip, folder of zips) or a window store; repeat for extra dumps "
                      "(the first one is split into train/val/test, drives only in the others train).")


def _store_for(
    data: Path | list[Path], window: WindowArgs, cache: Path | None, seed: int, healthy_fraction: float
) -> Path:
    """A window store for ``data`` (one dump, or a primary dump and extra ones): reuse ``data`` if it is
    one store, else build (cached)."""
    import hashlib

    from diskwatch.core.errors import DataNotFound, UsageError
    from diskwatch.training.windowstore import build_store

    paths = [data] if isinstance(data, Path) else list(data)
    for path in paths:  # before reading the first dump for minutes
        if not path.exists():
            raise DataNotFound(f"no such file or directory: {path}")
    if any(_is_store(p) for p in paths):
        if len(paths) > 1:
            raise UsageError("a window store cannot be combined with other --data inputs: pass the dumps")
        return paths[0]
    ident: list[Any] = [str(paths[0].resolve()), window.model_dump(mode="json"), seed, healthy_fraction,
                        _tree_stamp(paths[0])]
    for extra in paths[1:]:  # one dump keeps the key it always had (existing caches stay valid)
        ident += [str(extra.resolve()), _tree_stamp(extra)]
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]
    root = cache or Path(".local/cache/windows")
    store = root / key
    if (store / "manifest.json").exists():
        console.print(f"reusing cached windows {store}")
        return store
    with _day_progress("windows") as advance:
        build_store(paths, store, config=window, healthy_fraction=healthy_fraction, seed=seed, on_day=advance)
    return store


def _is_store(path: Path) -> bool:
    return (path / "manifest.json").exists() and (path / "serials.parquet").exists()


def _tree_stamp(path: Path) -> list[tuple[str, int, int]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(f.relative_to(path) if f != path else f.name), f.stat().st_size, int(f.stat().st_mtime)) for f in files]


@app.command()
def train(
    data: list[Path] = typer.Option(..., "--data", help=TRAINING_DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Model bundle directory to write."),
    window: int = typer.Option(WINDOW_DAYS, help="S: days per window."),
    horizon: int = typer.Option(HORIZON_DAYS, help="L: predict failure within L days."),
    max_gap: int = typer.Option(MAX_GAP_DAYS, help="G: longest gap between reports inside a window."),
    arch: str = typer.Option("lstm", help="Classifier: lstm | gru | rnn | cnn-lstm | mlp."),
    ae: str = typer.Option("conv", help="Autoencoder: conv | lstm."),
    epochs: int = typer.Option(20, help="Most epochs per model (early stopping may end sooner)."),
    depth: int = typer.Option(2, help="Recurrent layers in the classifier."),
    width: int = typer.Option(64, help="Units per recurrent layer."),
    learning_rate: float = typer.Option(1e-3, help="Adam learning rate."),
    batch_size: int = typer.Option(256, help="Training batch size."),
    target_far: float = typer.Option(0.01, help="Per-drive false-alarm budget of the alert rule (validation)."),
    operating: str = typer.Option("far", help="Classifier operating threshold: far | f1."),
    healthy_fraction: float = typer.Option(1.0, help="Share of healthy windows kept when building windows."),
    healthy_per_positive: float = typer.Option(20.0, help="Healthy windows drawn per positive each epoch."),
    time_split: str | None = typer.Option(None, "--time-split", help="Also split by time: train before this day."),
    rul: bool = typer.Option(True, help="Train the optional days-to-failure model."),
    xgboost: bool = typer.Option(True, help="Train the XGBoost baseline when xgboost is installed."),
    indicators: bool = typer.Option(True, help="'Reported' columns + neutral fill of attributes a drive lacks."),
    window_features: bool = typer.Option(True, help="Classifier reads change since window start + window summary."),
    scaling: str = typer.Option("minmax", help="Feature scaling: minmax | quantile (per-feature training quantiles)."),
    budget_split: str = typer.Option("searched", help="False-alarm budget per detector: even | searched."),
    classifier_seeds: int = typer.Option(1, help="Classifiers trained with different seeds, averaged in one model."),
    hard_negative_share: float = typer.Option(0.0, help="Share of healthy training windows drawn from those with "
                                              "a non-zero raw 5/187/188/197/198."),
    focal: bool = typer.Option(False, help="Classifier loss: focal (gamma 2) instead of cross-entropy."),
    classifier_min_lead: int = typer.Option(0, help="Classifier trains without positives closer than this many "
                                            "days to the failure."),
    cache: Path | None = typer.Option(None, help="Where built windows are cached (default .local/cache/windows)."),
    seed: int = typer.Option(0, help="Seed for sampling, splits and weights."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle."),
) -> None:
    """Train the classifier and autoencoder (+ RUL, + XGBoost baseline) into a model bundle."""
    quiet_tensorflow()
    from pydantic import ValidationError

    from diskwatch.core.errors import UsageError
    from diskwatch.models.windows import WindowConfig
    from diskwatch.training.fit import TrainConfig
    from diskwatch.training.fit import train as fit
    from diskwatch.training.windowstore import WindowStore

    config = WindowConfig(window=window, horizon=horizon, max_gap=max_gap)
    try:
        train_config = TrainConfig(
            arch=arch, ae=ae, epochs=epochs, depth=depth, width=width, learning_rate=learning_rate,
            batch_size=batch_size, target_far=target_far, operating=operating,
            healthy_per_positive=healthy_per_positive, time_cutoff=_date(time_split, "--time-split"),
            rul=rul, xgboost=xgboost, seed=seed, indicators=indicators,
            fill_mode="neutral" if indicators else "mean", window_features=window_features, scaling=scaling,
            budget_split=budget_split, classifier_seeds=classifier_seeds,
            hard_negative_share=hard_negative_share, focal=focal,
            classifier_min_lead=classifier_min_lead,
        )
    except ValidationError as exc:
        raise UsageError(_option_errors(exc)) from None
    store = WindowStore(_store_for(data, config, cache, seed, healthy_fraction))
    if store.config != config and _is_store(data[0]):
        console.print(f"[yellow]using the store's window config {store.config.model_dump()}[/]")
    result = fit(store, out, train_config, console=console, overwrite=force)
    console.print(f"[bold green]bundle written[/]: {result.bundle}")


@app.command()
def evaluate(
    model: Path = typer.Option(..., "--model", help="Model bundle directory."),
    data: Path = typer.Option(..., "--data", help="Backblaze dump to score (CSV folder, zip, folder of zips)."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, plots and report.md."),
    lead_max: int | None = typer.Option(None, help="Alert counts if within this many days before failure."),
    min_lead: int = typer.Option(1, help="Alert counts only this many days or more before failure (0: the "
                                 "failure day too; lead-0 figures are reported separately anyway)."),
    split: str = typer.Option("test", help="test (drives not trained or validated on) | all | train | val."),
    date_from: str | None = typer.Option(None, "--from", help="First day to score (history before is read)."),
    date_to: str | None = typer.Option(None, "--to", help="Last day to score."),
    models: list[str] = typer.Option([], "--models", help="Keep drive models containing this (repeatable)."),
) -> None:
    """Score every window of a dump as the stream would; write metrics.json, plots, report.md."""
    quiet_tensorflow()
    from diskwatch.core.dumps import DumpFilter
    from diskwatch.training.evaluate import evaluate as run

    if split not in ("test", "all", "train", "val"):
        raise typer.BadParameter("split must be test, all, train or val", param_hint="--split")
    filters = DumpFilter(date_from=_date(date_from, "--from"), date_to=_date(date_to, "--to"), models=models)
    with _day_progress("scoring") as advance:
        metrics = run(model, data, out, lead_max=lead_max, min_lead=min_lead, split=split,  # type: ignore[arg-type]
                      filters=filters, on_day=advance)
    _print_metrics(metrics)
    console.print(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")


@app.command()
def compare(
    data: list[Path] = typer.Option(..., "--data", help=TRAINING_DATA_HELP),
    time_split: str = typer.Option(..., "--time-split", help="Train before this day, test from it."),
    variants: str = typer.Option(
        "lstm,lstm+ind,lstm+ind+wf,gru+ind+wf,rnn+ind+wf,cnn-lstm+ind+wf,mlp+ind,ae-lstm+ind,ae-conv+ind,"
        "xgboost,xgboost+ind",
        help="Comma-separated KIND[+ind][+wf][+hppN][+wN] (see training/compare.py).",
    ),
    out: Path = typer.Option(Path("runs/compare"), "--out", help="Folder for compare.md and compare.json."),
    window: int = typer.Option(WINDOW_DAYS, help="S: days per window."),
    horizon: int = typer.Option(HORIZON_DAYS, help="L: predict failure within L days."),
    lead_max: int | None = typer.Option(None, help="Count alerts up to this many days ahead (default: L)."),
    epochs: int = typer.Option(20, help="Most epochs per model."),
    cache: Path | None = typer.Option(None, help="Where built windows are cached."),
    seed: int = typer.Option(0, help="Seed."),
) -> None:
    """Train each model variant on the same time split and print detection at FAR 0.1-5 % on unseen drives."""
    from diskwatch.models.windows import WindowConfig
    from diskwatch.training.compare import Variant, table, write
    from diskwatch.training.compare import compare as run
    from diskwatch.training.fit import TrainConfig
    from diskwatch.training.windowstore import WindowStore

    try:
        parsed = [Variant.parse(v) for v in variants.split(",") if v.strip()]
        base = TrainConfig(epochs=epochs, time_cutoff=_date(time_split, "--time-split"), seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    config = WindowConfig(window=window, horizon=horizon)
    store = WindowStore(_store_for(data, config, cache, seed, 1.0))
    rows = run(store, parsed, base, lead_max=lead_max, console=console)
    write(rows, out, base.time_cutoff)
    Console().print(table(rows, cutoff=base.time_cutoff))


@app.command()
def tune(
    data: list[Path] = typer.Option(..., "--data", help=TRAINING_DATA_HELP),
    out: Path = typer.Option(Path("runs/tune"), "--out", help="Folder for the search state and results.json."),
    time_split: str | None = typer.Option(None, "--time-split", help="Train before this day, judge on the "
                                          "validation split after it."),
    trials: int = typer.Option(10, help="Bayesian optimisation trials."),
    epochs: int = typer.Option(5, help="Epochs per trial."),
    window: int = typer.Option(WINDOW_DAYS, help="S: days per window."),
    horizon: int = typer.Option(HORIZON_DAYS, help="L: predict failure within L days."),
    seed: int = typer.Option(0, help="Seed."),
) -> None:
    """Bayesian search (KerasTuner) over cell, width, depth, dropout, learning rate and healthy windows per positive."""
    quiet_tensorflow()
    from rich.table import Table

    from diskwatch.models.windows import WindowConfig
    from diskwatch.training.fit import TrainConfig
    from diskwatch.training.tune import tune as search
    from diskwatch.training.windowstore import WindowStore

    store = WindowStore(_store_for(data, WindowConfig(window=window, horizon=horizon), None, seed, 1.0))
    out.mkdir(parents=True, exist_ok=True)
    base = TrainConfig(time_cutoff=_date(time_split, "--time-split"), seed=seed)
    rows = search(store, out, base=base, trials=trials, epochs=epochs)
    table = Table(title="KerasTuner results (classifier), best first")
    for col in rows[0] if rows else []:
        table.add_column(col)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)
    console.print(f"saved {out / 'results.json'}")


@app.command()
def worker(
    model: Path | None = typer.Option(
        None, "--model", help="Model bundle directory (hot-swapped when it changes); default DISKWATCH_MODEL_BUNDLE."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes in one consumer group."),
    score: bool = typer.Option(True, help="--no-score keeps windows but skips inference (benchmarks)."),
) -> None:
    """Consume telemetry, keep windows in Redis, score them, publish alerts and dead letters."""
    import logging

    from diskwatch.core.errors import UsageError
    from diskwatch.core.settings import load_settings
    from diskwatch.models.bundle import read_manifest
    from diskwatch.stream.runner import run_worker, run_workers

    settings = load_settings()
    model = model or settings.model_bundle
    if model is None:
        raise UsageError("no model bundle: pass --model DIR or set DISKWATCH_MODEL_BUNDLE")
    read_manifest(model)  # a user's mistake is reported before TensorFlow loads (run_worker quiets and loads it)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if workers > 1:
        raise typer.Exit(run_workers(model, workers, score=score, settings=settings))
    run_worker(settings, model, index=0, score=score)


@app.command()
def replay(
    data: Path = typer.Option(..., "--data", help="Backblaze dump: CSV folder, quarterly zip, folder of zips."),
    date_from: str | None = typer.Option(None, "--from", help="First day to replay (resume: the day after the last done)."),
    date_to: str | None = typer.Option(None, "--to", help="Last day to replay."),
    speed: float | None = typer.Option(None, "--speed", help="Days per second."),
    rate: float | None = typer.Option(None, "--rate", help="Records per second."),
    max_speed: bool = typer.Option(False, "--max", help="As fast as the broker takes it (default)."),
    topic: str | None = typer.Option(None, "--topic", help="Target topic (default: settings' telemetry topic)."),
    models: list[str] = typer.Option([], "--models", help="Only drive models containing this (repeatable)."),
    dlq: bool = typer.Option(False, "--dlq", help="Send rows the reader rejects to the dead-letter topic."),
) -> None:
    """Replay historical days through Kafka in date order (TelemetryRecord JSON keyed by serial)."""
    import asyncio

    from diskwatch.core.dumps import DumpFilter
    from diskwatch.core.settings import load_settings
    from diskwatch.replay import replay as run

    if sum(x is not None and x is not False for x in (speed, rate, max_speed or None)) > 1:
        raise typer.BadParameter("choose one of --speed, --rate, --max")
    filters = DumpFilter(date_from=_date(date_from, "--from"), date_to=_date(date_to, "--to"), models=models)
    started = time.monotonic()
    progress_line = _replay_progress()
    summary = asyncio.run(run(data, load_settings(), topic=topic, filters=filters, speed=speed, rate=rate, dlq=dlq,
                              on_day=progress_line))
    console.print(
        f"replayed {summary.days} days ({summary.first_day}..{summary.last_day}), {summary.records:,} records "
        f"in {time.monotonic() - started:.1f}s ({summary.records_per_s:,.0f} records/s)"
    )
    if summary.invalid:
        console.print(f"[yellow]invalid by reason[/]: {dict(summary.invalid)}"
                      + (f"; {summary.dead_letters} sent to the dead-letter topic" if dlq else ""))


def _replay_progress() -> Callable[..., None]:
    """A rich progress line on a terminal, plain log lines otherwise."""
    def line(day: dt.date, n: int, summary: Any) -> None:
        message = f"{day}: {n:,} records ({summary.records:,} total, {summary.records_per_s:,.0f}/s)"
        if console.is_terminal:
            console.print(message, end="\r")
        else:
            console.print(message)

    return line


@app.command()
def alerts(
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the oldest alert."),
    serial: str | None = typer.Option(None, "--serial", help="Only this drive."),
    as_json: bool = typer.Option(False, "--json", help="One JSON alert per line (for scripts)."),
    topic: str | None = typer.Option(None, "--topic", help="Alert topic (default: settings)."),
    idle_timeout: float | None = typer.Option(None, help="Exit after this many seconds without an alert."),
    limit: int | None = typer.Option(None, help="Exit after this many alerts."),
) -> None:
    """Tail the alert topic: a live table, or --json lines."""
    import asyncio

    from rich.live import Live

    from diskwatch.alerts import alert_table, rows_that_fit, tail_alerts
    from diskwatch.alerts import as_json as to_json
    from diskwatch.core.records import Alert
    from diskwatch.core.settings import load_settings

    async def run() -> None:
        stream = tail_alerts(load_settings(), topic=topic, from_beginning=from_beginning, serial=serial,
                             idle_timeout=idle_timeout, limit=limit)
        if as_json:
            async for alert in stream:
                print(to_json(alert), flush=True)
            return
        seen: list[Alert] = []
        out = Console()

        def render() -> Any:  # sized to the terminal on every update (it may be resized)
            return alert_table(seen, title=f"drive alerts ({len(seen)})", width=out.width,
                               max_rows=rows_that_fit(out.height, reserved=1))

        with Live(render(), console=out, refresh_per_second=4) as live:
            async for alert in stream:
                if isinstance(alert, Alert):
                    seen.append(alert)
                    live.update(render())

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@app.command()
def demo(
    data: Path | None = typer.Option(None, "--data", help="Real Backblaze dump instead of the simulated fleet."),
    drives: int = typer.Option(3000, help="Simulated drives."),
    days: int = typer.Option(90, help="Simulated days."),
    seed: int = typer.Option(7, help="Seed of the simulation and training."),
    epochs: int = typer.Option(6, help="Training epochs (quick models)."),
    speed: float | None = typer.Option(None, "--speed", help="Replay days per second (default: as fast as possible)."),
) -> None:
    """Simulate a fleet, train, stream it through a real worker, show alerts, summarize (needs the stack)."""
    quiet_tensorflow()
    from diskwatch.core.settings import load_settings
    from diskwatch.demo import run_demo

    run_demo(load_settings(), data=data, drives=drives, days=days, seed=seed, epochs=epochs, speed=speed)


def _option_errors(exc: Any) -> str:
    """A pydantic ValidationError of an options model as one line: ``--arch: Input should be ...``."""
    parts = []
    for error in exc.errors(include_url=False):
        loc = error.get("loc") or ()
        option = f"--{str(loc[0]).replace('_', '-')}" if loc else "options"
        parts.append(f"{option}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "; ".join(parts)


@app.command()
def collect(
    smartctl_json: list[str] = typer.Option(
        [], "--smartctl-json", help="Saved smartctl --json output: file, folder of *.json, or - for stdin (repeatable)."
    ),
    print_: bool = typer.Option(False, "--print", help="Write wire JSON lines to stdout instead of producing to Kafka."),
    key_separator: str | None = typer.Option(
        None, "--key-separator", help="With --print: write SERIAL<sep>JSON lines (for kcat -K<sep>)."
    ),
    date: str | None = typer.Option(None, "--date", help="Record date (default: smartctl's local_time, UTC)."),
    host: str | None = typer.Option(None, "--host", help="Host name kept in each record's extra (default: this host)."),
    topic: str | None = typer.Option(None, "--topic", help="Target topic (default: settings' telemetry topic)."),
    devices: list[str] = typer.Option([], "--device", help="Read this device instead of scanning (repeatable)."),
    smartctl: str = typer.Option("smartctl", "--smartctl", help="smartctl binary (needs root or CAP_SYS_RAWIO)."),
) -> None:
    """Read SMART with smartmontools (or saved smartctl JSON) and feed the telemetry topic.

    Exit status 1 when any device gave no record (each is reported on stderr).
    """
    import asyncio
    import socket
    import sys

    from diskwatch import collect as run
    from diskwatch.core.settings import Settings

    outputs = run.read_saved(smartctl_json) if smartctl_json else run.scan_and_read(smartctl, devices)
    hostname = host if host is not None else (None if smartctl_json else socket.gethostname())
    result = run.convert_all(outputs, date=_date(date, "--date"), host=hostname)
    records = [record for _, record in result.records]
    if print_:
        run.print_records(records, sys.stdout, key_separator)
    elif records:
        from aiokafka.errors import KafkaError

        settings = Settings()
        try:
            sent = asyncio.run(run.produce(records, settings, topic))
        except (KafkaError, OSError) as exc:
            console.print(f"[red]error[/]: could not produce to Kafka at {settings.kafka_bootstrap_servers}: {exc}")
            raise typer.Exit(2) from None
        console.print(f"produced {sent} records")
    for line in run.summary_lines(result):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if result.failed:
        console.print(f"{len(result.failed)} of {len(result.failed) + len(records)} devices gave no record")
        raise typer.Exit(1)


@app.command()
def route(
    alertmanager: str | None = typer.Option(
        None, "--alertmanager", help="Alertmanager base URL (default: DISKWATCH_ALERTMANAGER_URL)."
    ),
    topic: str | None = typer.Option(None, "--topic", help="Alert topic (default: settings)."),
    group: str | None = typer.Option(None, "--group", help="Consumer group (default: diskwatch-alertmanager)."),
    idle_timeout: float | None = typer.Option(None, help="Exit after this many seconds without an alert."),
) -> None:
    """Deliver drive alerts from Kafka to Prometheus Alertmanager (v2 API), at least once."""
    import asyncio
    import logging
    import signal

    from pydantic import SecretStr

    from diskwatch.core.settings import Settings
    from diskwatch.route import AlertmanagerSettings, describe
    from diskwatch.route import route as run

    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = AlertmanagerSettings()
    updates: dict[str, object] = {}
    if alertmanager is not None:
        updates["url"] = SecretStr(alertmanager)
    if group is not None:
        updates["consumer_group"] = group
    try:
        config = AlertmanagerSettings.model_validate({**config.model_dump(), **updates})
        config.endpoint()
    except ValueError as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(2) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        stats = await run(settings, config, topic=topic, stop=stop, idle_timeout=idle_timeout)
        console.print(f"route: {describe(stats)}")

    asyncio.run(main())


def _print_metrics(metrics: dict) -> None:
    from rich.table import Table

    table = Table(title="per-drive results (alerts within lead_max days before failure)")
    for col in ("detector", "ROC-AUC", "PR-AUC", "detected", "false alarms", "median lead (days)"):
        table.add_column(col)
    for name in ("classifier", "autoencoder", "combined", "smart_rule", "xgboost"):
        if name not in metrics:
            continue
        w, d = metrics[name]["window"], metrics[name]["drive"]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(
            name, fmt(w["roc_auc"]), fmt(w["pr_auc"]),
            f"{d['detected']}/{d['failed']} ({fmt(d['detection_rate'])})",
            f"{d['false_alarms']}/{d['healthy']} ({fmt(d['false_alarm_rate'])})",
            "-" if d["median_lead_days"] is None else f"{d['median_lead_days']:.1f}",
        )
    Console().print(table)


def main() -> None:
    """Console-script entry point; user errors end as one line and exit 2 (see :class:`_Commands`)."""
    app()


def _unreachable_service(exc: BaseException) -> ServiceUnavailable | None:
    """Kafka/Redis connection failures from the client libraries, named by the setting that fixes them."""
    from diskwatch.core.settings import load_settings

    names = {cls.__name__ for cls in type(exc).__mro__}
    module = type(exc).__module__
    if module.startswith("aiokafka") and names & {"KafkaConnectionError", "KafkaTimeoutError"}:
        servers = load_settings().kafka_bootstrap_servers
        return ServiceUnavailable(
            f"Kafka is not reachable at {servers} (DISKWATCH_KAFKA_BOOTSTRAP_SERVERS): {exc or type(exc).__name__}"
        )
    if module.startswith("redis") and names & {"ConnectionError", "TimeoutError"}:
        url = load_settings().redacted()["redis_url"]
        return ServiceUnavailable(f"Redis is not reachable at {url} (DISKWATCH_REDIS_URL): {type(exc).__name__}")
    return None


def quiet_tensorflow() -> None:
    """Silence TensorFlow's start-up banners before a command imports it (see diskwatch.core.quiet)."""
    from diskwatch.core.quiet import quiet_tensorflow as quiet

    quiet()


if __name__ == "__main__":
    main()
