"""Alert rules, the Alertmanager example and the systemd units, checked by the real tools.

promtool (Debian's prometheus), amtool (prometheus-alertmanager) and systemd-analyze are
installed through scripts/ensure-debian-packages; a test skips only if that cannot install them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTING = REPO / "deploy" / "alerting"
RULES = ALERTING / "diskwatch-rules.yml"
COMPOSE = REPO / "deploy" / "compose"
SYSTEMD = REPO / "deploy" / "systemd"


def tool(command: str, package: str) -> str:
    """Path of ``command``, apt-installing ``package`` through the project's script if missing."""
    if shutil.which(command) is None:
        proc = subprocess.run([str(REPO / "scripts/ensure-debian-packages"), f"{command}={package}"],
                              capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0 or shutil.which(command) is None:
            pytest.skip(f"{command} ({package}) is not installed and could not be: {proc.stderr.strip()[-300:]}")
    return shutil.which(command)  # type: ignore[return-value]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def test_promtool_checks_the_rules() -> None:
    proc = run(tool("promtool", "prometheus"), "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 5 rules found" in proc.stdout


def test_promtool_unit_tests_the_rules() -> None:
    proc = run(tool("promtool", "prometheus"), "test", "rules", "tests/diskwatch-rules.test.yml", cwd=ALERTING)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rules_use_metrics_the_worker_exports() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from diskwatch.stream import metrics

    exported = {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    used = {name for rule in rules for name in re.findall(r"\bdiskwatch_\w+", rule["expr"])}
    assert used
    for name in used:
        assert re.sub(r"_(total|count|sum|bucket)$", "", name) in exported, name
    assert {r["alert"] for r in rules} >= {"DiskwatchWorkerDown", "DiskwatchWorkerStalled",
                                           "DiskwatchConsumerLagGrowing", "DiskwatchDeadLetterRateHigh"}


def test_compose_prometheus_loads_the_rules_and_alertmanager() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    mounts = [v.split(":") for v in compose["services"]["prometheus"]["volumes"]]
    rule_mounts = [(src, dst) for src, dst, *_ in mounts if (COMPOSE / src).resolve() == RULES]
    assert len(rule_mounts) == 1
    target = Path(rule_mounts[0][1])
    assert any(target.match(pattern) for pattern in config["rule_files"])
    targets = [t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert targets == ["alertmanager:9093"] and "alertmanager" in compose["services"]
    router = compose["services"]["router"]
    assert router["command"][:3] == ["route", "--alertmanager", "http://alertmanager:9093"]
    proc = run(tool("promtool", "prometheus"), "check", "config", "--syntax-only", str(COMPOSE / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alertmanager_example_config_and_routes() -> None:
    amtool = tool("amtool", "prometheus-alertmanager")
    config = str(ALERTING / "alertmanager.yml")
    proc = run(amtool, "check-config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = {
        ("alertname=DriveFailurePredicted", "severity=critical", "serial=Z1"): "storage-pager,storage-tickets",
        ("alertname=DriveFailurePredicted", "severity=warning", "serial=Z1"): "storage-tickets",
        ("alertname=DiskwatchWorkerStalled", "severity=critical"): "ops-chat",
    }
    for labels, receivers in cases.items():
        proc = run(amtool, "config", "routes", "test", f"--config.file={config}", *labels)
        assert proc.stdout.strip() == receivers, (labels, proc.stdout, proc.stderr)


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    diskwatch = REPO / ".venv" / "bin" / "diskwatch"
    names = ["diskwatch-collect.service", "diskwatch-collect.timer", "diskwatch-route.service"]
    for name in names:  # the units point at /opt/diskwatch; here at this checkout's venv
        text = (SYSTEMD / name).read_text().replace("/opt/diskwatch/.venv/bin/diskwatch", str(diskwatch))
        (tmp_path / name).write_text(text)
    proc = run(analyze, "verify", *[str(tmp_path / n) for n in names], cwd=tmp_path)
    assert proc.returncode == 0 and "ignoring" not in proc.stderr, proc.stderr
    timer = (SYSTEMD / "diskwatch-collect.timer").read_text()
    assert "OnCalendar=daily" in timer and re.search(r"RandomizedDelaySec=\d+h", timer)
    assert "diskwatch collect" in (SYSTEMD / "diskwatch-collect.service").read_text()
