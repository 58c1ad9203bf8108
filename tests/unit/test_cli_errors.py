"""A user's mistake is one ``error:`` line naming what to fix, and exit status 2, never a traceback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from diskwatch.cli import main
from diskwatch.core.errors import DiskwatchError, PortInUse, ServiceUnavailable
from diskwatch.core.settings import Settings
from diskwatch.stream.runner import check_metrics_port, connect_and_ensure_topics

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(isolated_settings_env: None) -> None:
    """No outer DISKWATCH_* settings and no stray .env."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["diskwatch", *argv])
    with pytest.raises(SystemExit) as info:
        main()
    code = info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


def assert_one_line(err: str, *says: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in says:
        assert text in lines[0], (text, lines[0])


def test_bad_bootstrap_servers_names_the_variable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DISKWATCH_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:abc")
    code, err = run_main(monkeypatch, capsys, "config")
    assert code == 2
    assert_one_line(err, "DISKWATCH_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:abc")


def test_missing_data_path(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run_main(monkeypatch, capsys, "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "b"))
    assert code == 2
    assert_one_line(err, "no such file or directory", "nope")


def test_empty_data_folder(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run_main(monkeypatch, capsys, "sequences", "--data", str(tmp_path), "--out", str(tmp_path / "s"))
    assert code == 2
    assert_one_line(err, "no daily YYYY-MM-DD.csv files")


def test_a_window_store_is_not_combined_with_dumps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text("{}")
    (store / "serials.parquet").write_bytes(b"")
    code, err = run_main(monkeypatch, capsys, "train", "--data", str(store), "--data", str(tmp_path),
                         "--out", str(tmp_path / "b"))
    assert code == 2
    assert_one_line(err, "cannot be combined")


def test_a_missing_extra_dump_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dump = tmp_path / "d"
    dump.mkdir()
    (dump / "2024-01-01.csv").write_text("date,serial_number,model,capacity_bytes,failure,smart_5_raw\n"
                                         "2024-01-01,S1,ST4000DM000,1,0,0\n")
    code, err = run_main(monkeypatch, capsys, "train", "--data", str(dump), "--data", str(tmp_path / "extra"),
                         "--out", str(tmp_path / "b"), "--cache", str(tmp_path / "cache"))
    assert code == 2
    assert_one_line(err, "no such file or directory", "extra")


def test_unknown_architecture(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run_main(monkeypatch, capsys, "train", "--data", str(tmp_path), "--out", str(tmp_path / "b"),
                         "--arch", "transformer")
    assert code == 2
    assert_one_line(err, "--arch", "lstm")


@pytest.mark.parametrize("args", [["worker"], ["worker", "--model", "/no/such/bundle"],
                                  ["evaluate", "--model", "/no/such/bundle", "--data", ".", "--out", "o"]])
def test_missing_or_bad_bundle(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 2
    assert_one_line(err, "bundle")


def test_bad_option_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_main(monkeypatch, capsys, "synth", "--start", "yesterday")
    assert code == 2


def test_kafka_unreachable_from_a_shell_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    servers = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("DISKWATCH_KAFKA_BOOTSTRAP_SERVERS", servers)
    code, err = run_main(monkeypatch, capsys, "alerts", "--json", "--idle-timeout", "1")
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in err
    assert servers in error_lines[0] and "DISKWATCH_KAFKA_BOOTSTRAP_SERVERS" in error_lines[0]


def test_worker_preflight_kafka_unreachable() -> None:
    servers = f"127.0.0.1:{free_port()}"
    settings = Settings(_env_file=None, kafka_bootstrap_servers=servers)  # type: ignore[call-arg]
    with pytest.raises(ServiceUnavailable) as info:
        asyncio.run(connect_and_ensure_topics(settings, attempts=2, backoff_s=0))
    assert servers in str(info.value) and "DISKWATCH_KAFKA_BOOTSTRAP_SERVERS" in str(info.value)
    assert "2 attempts" in str(info.value)


def test_worker_preflight_metrics_port_taken() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        settings = Settings(_env_file=None, metrics_port=port)  # type: ignore[call-arg]
        with pytest.raises(PortInUse) as info:
            check_metrics_port(settings)
    assert isinstance(info.value, DiskwatchError) and info.value.exit_code == 2
    assert f":{port} is taken" in str(info.value) and "DISKWATCH_METRICS_PORT" in str(info.value)
    assert check_metrics_port(Settings(_env_file=None, metrics_port=0)) == 0  # type: ignore[call-arg]  # off


def test_help_touches_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--help neither reads settings (a bad one does not matter) nor connects anywhere."""
    monkeypatch.setenv("DISKWATCH_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:abc")
    for command in ("worker", "demo", "replay", "alerts", "smoke", "train"):
        monkeypatch.setattr(sys, "argv", ["diskwatch", command, "--help"])
        with pytest.raises(SystemExit) as info:
            main()
        assert info.value.code == 0, command
        assert "Usage" in capsys.readouterr().out


def test_demo_script_help_starts_no_services() -> None:
    """`scripts/demo --help` prints the options; the stack's ports stay closed."""
    kafka, redis = free_port(), free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "DISKWATCH_KAFKA_PORT": str(kafka),
           "DISKWATCH_REDIS_PORT": str(redis), "DISKWATCH_KAFKA_CONTROLLER_PORT": str(free_port())}
    proc = subprocess.run([str(REPO_ROOT / "scripts" / "demo"), "--help"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: diskwatch demo" in proc.stdout
    for port in (kafka, redis):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
