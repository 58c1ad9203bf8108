"""smartctl JSON in, Alertmanager out — against the real programs.

`diskwatch collect` feeds real smartctl outputs to a real Kafka broker; `diskwatch route`
delivers alerts from Kafka to a real Prometheus Alertmanager (Debian's
prometheus-alertmanager, started by deploy/local/alertmanager on loopback), including
while it is stopped for a while.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diskwatch.core.records import Alert, AlertReason, Severity, TelemetryRecord
from diskwatch.core.settings import Settings
from diskwatch.route import ALERTNAME, AlertmanagerSettings, route
from tests.integration.workers import die_with_parent

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "deploy" / "local" / "alertmanager"
SMARTCTL_DIR = Path(os.environ.get("DISKWATCH_SMARTCTL_DATA", REPO_ROOT.parent / "shared/data/smartctl"))


def _script(verb: str) -> str:
    proc = subprocess.run([str(SCRIPT), verb], capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0 and verb != "status":
        pytest.fail(f"deploy/local/alertmanager {verb} failed:\n{proc.stdout}{proc.stderr}", pytrace=False)
    return proc.stdout + proc.stderr


def ensure(*specs: str) -> None:
    """Install missing Debian packages through the project's script; skip only if that is impossible."""
    proc = subprocess.run([str(REPO_ROOT / "scripts/ensure-debian-packages"), *specs], capture_output=True,
                          text=True, timeout=900, check=False)
    if proc.returncode != 0:
        pytest.skip(f"could not install {specs}: {proc.stderr.strip()[-300:]}")


@pytest.fixture(scope="module")
def alertmanager() -> Iterator[str]:
    """Base URL of a ready local Alertmanager; stopped at the end if this module started it."""
    ensure("prometheus-alertmanager=prometheus-alertmanager")
    before = subprocess.run([str(SCRIPT), "status"], capture_output=True, check=False).returncode == 0
    _script("up")
    yield _script("url").strip()
    if not before:
        _script("down")


def am_alerts(base: str, run: str) -> list[dict[str, Any]]:
    """Active alerts of this test run, from Alertmanager's own API."""
    query = urllib.request.quote(f'run="{run}"')
    with urllib.request.urlopen(f"{base}/api/v2/alerts?filter={query}", timeout=5) as response:
        return json.loads(response.read())


def make_alert(serial: str, severity: Severity = Severity.WARNING) -> Alert:
    day = dt.date(2024, 3, 1)
    return Alert(
        idempotency_key=Alert.make_key(serial, day, "b1"), serial_number=serial, model="ST4000DM000", date=day,
        window_start=day - dt.timedelta(days=13), window_end=day, severity=severity, failure_probability=0.91,
        anomaly_score=0.25, classifier_threshold=0.5, anomaly_threshold=0.1, horizon_days=7,
        reasons=[AlertReason(attribute=5, feature="smart_5_raw", raw_value=24.0, error_share=0.6)],
        bundle_version="b1", created_at=dt.datetime.now(dt.UTC),
    )


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value=value)
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(out) < expect and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            out += [m for ms in batch.values() for m in ms]
    finally:
        await consumer.stop()
    return out


def config_for(base: str, run: str, **extra: Any) -> AlertmanagerSettings:
    return AlertmanagerSettings(url=base, consumer_group=f"route-{run}", labels={"run": run}, **extra)


async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.25)


# --------------------------------------------------------------------------------------------
# in: collect


@pytest.mark.skipif(not SMARTCTL_DIR.is_dir(), reason=f"real smartctl outputs not found at {SMARTCTL_DIR}")
def test_collect_print_writes_wire_lines_and_reports_skips(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/diskwatch"), "collect", "--smartctl-json", str(SMARTCTL_DIR), "--print",
         "--key-separator", "\t"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 1  # 5 of the 148 outputs give no record (4 redacted serials, 1 unreadable)
    lines = proc.stdout.splitlines()
    assert len(lines) == 143
    for line in lines:
        key, _, value = line.partition("\t")
        record = TelemetryRecord.from_json(value)
        assert record.serial_number == key and record.extra["device_type"] in ("ata", "nvme", "scsi")
    assert len(re.findall(r"^ok ", proc.stderr, re.M)) == 143
    assert len(re.findall(r"^error .*no_serial", proc.stderr, re.M)) == 4
    assert "5 of 148 devices gave no record" in proc.stderr


def test_collect_runs_the_real_smartctl(tmp_path: Path) -> None:
    """smartmontools itself: a device that cannot be opened is a per-device error and exit 1."""
    ensure("smartctl=smartmontools")
    proc = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/diskwatch"), "collect", "--print", "--device", str(tmp_path / "no-such-disk")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert re.search(r"error .*no-such-disk: smartctl_failed: exit status \d+", proc.stderr)


@pytest.mark.skipif(not SMARTCTL_DIR.is_dir(), reason=f"real smartctl outputs not found at {SMARTCTL_DIR}")
def test_collect_produces_keyed_records(kafka_bootstrap: str, unique_topic: str) -> None:
    env = {**os.environ, "DISKWATCH_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    files = sorted(SMARTCTL_DIR.glob("sat-Seagate_Exos*.json")) + sorted(SMARTCTL_DIR.glob("nvme-null-Micron_7300*"))
    args = [a for f in files for a in ("--smartctl-json", str(f))]
    proc = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/diskwatch"), "collect", *args, "--topic", unique_topic, "--date", "2024-05-01"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    messages = asyncio.run(consume(kafka_bootstrap, unique_topic, expect=len(files)))
    assert len(messages) == len(files)
    for message in messages:
        record = TelemetryRecord.from_json(message.value)
        assert message.key == record.serial_number.encode() and record.date == dt.date(2024, 5, 1)
    serials = {json.loads(f.read_text())["serial_number"] for f in files}
    assert {m.key.decode() for m in messages} == serials


@pytest.mark.skipif(not SMARTCTL_DIR.is_dir(), reason=f"real smartctl outputs not found at {SMARTCTL_DIR}")
def test_collect_print_pipes_into_kcat(kafka_bootstrap: str, unique_topic: str) -> None:
    """The README's pipeline: collect --print | kcat -P -K<tab> feeds the topic keyed by serial."""
    ensure("kcat=kcat")
    diskwatch = REPO_ROOT / ".venv/bin/diskwatch"
    pipeline = (f"{diskwatch} collect --smartctl-json {SMARTCTL_DIR} --print --key-separator $'\\t' 2>/dev/null"
                f" | kcat -P -b {kafka_bootstrap} -t {unique_topic} -K $'\\t'")
    proc = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    messages = asyncio.run(consume(kafka_bootstrap, unique_topic, expect=143))
    assert len(messages) == 143
    for message in messages:
        assert TelemetryRecord.from_json(message.value).serial_number.encode() == message.key


# --------------------------------------------------------------------------------------------
# out: route → Alertmanager


def test_alerts_reach_alertmanager_and_malformed_ones_are_skipped(
    alertmanager: str, kafka_bootstrap: str, unique_topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    run = uuid.uuid4().hex[:10]
    alerts = [make_alert(f"S{run}-{i}", Severity.CRITICAL if i == 0 else Severity.WARNING) for i in range(3)]
    values = [alerts[0].to_json(), b"{not json", b'{"serial_number": "x"}', alerts[1].to_json(), alerts[2].to_json()]
    asyncio.run(produce(kafka_bootstrap, unique_topic, values))
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap)
    with caplog.at_level(logging.WARNING, logger="diskwatch.route"):
        stats = asyncio.run(route(settings, config_for(alertmanager, run), topic=unique_topic, idle_timeout=3))
    assert stats.delivered == 3 and stats.malformed == 2 and stats.rejected == 0
    assert sum("not a valid Alert" in r.getMessage() for r in caplog.records) == 2
    got = {a["labels"]["serial"]: a for a in am_alerts(alertmanager, run)}
    assert set(got) == {a.serial_number for a in alerts}
    for alert in alerts:
        am = got[alert.serial_number]
        assert am["labels"] == {
            "alertname": ALERTNAME, "serial": alert.serial_number, "model": "ST4000DM000",
            "severity": alert.severity.value, "run": run,
        }
        assert am["annotations"]["failure_probability"] == "0.9100"
        assert am["annotations"]["reasons"] == "smart_5_raw=24 (60%)"
        assert am["status"]["state"] == "active"
        ends = dt.datetime.fromisoformat(am["endsAt"].replace("Z", "+00:00"))
        assert dt.timedelta(days=6) < ends - alert.created_at <= dt.timedelta(days=7, seconds=1)
    # Offsets were committed: the same group finds nothing new.
    again = asyncio.run(route(settings, config_for(alertmanager, run), topic=unique_topic, idle_timeout=2))
    assert again.delivered == 0 and again.malformed == 0


def test_route_command(alertmanager: str, kafka_bootstrap: str, unique_topic: str) -> None:
    """`diskwatch route` as an operator runs it: flags, DISKWATCH_* settings, a summary at exit."""
    run = uuid.uuid4().hex[:10]
    asyncio.run(produce(kafka_bootstrap, unique_topic, [make_alert(f"C{run}").to_json(), b"[]"]))
    env = {**os.environ, "DISKWATCH_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "DISKWATCH_ALERTMANAGER_LABELS": json.dumps({"run": run, "host": "node7"})}
    proc = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/diskwatch"), "route", "--alertmanager", alertmanager, "--topic", unique_topic,
         "--group", f"cli-{run}", "--idle-timeout", "3"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"delivered": 1' in proc.stderr and '"malformed": 1' in proc.stderr
    (got,) = am_alerts(alertmanager, run)
    assert got["labels"]["serial"] == f"C{run}" and got["labels"]["host"] == "node7"


def test_nothing_is_lost_while_alertmanager_is_down(
    alertmanager: str, kafka_bootstrap: str, unique_topic: str
) -> None:
    run = uuid.uuid4().hex[:10]
    alerts = [make_alert(f"D{run}-{i}") for i in range(4)]
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap)

    async def scenario() -> Any:
        _script("down")
        stop = asyncio.Event()
        task = asyncio.create_task(route(settings, config_for(alertmanager, run), topic=unique_topic, stop=stop))
        await produce(kafka_bootstrap, unique_topic, [a.to_json() for a in alerts[:2]])
        await asyncio.sleep(3)  # the router keeps retrying while Alertmanager is away
        await produce(kafka_bootstrap, unique_topic, [a.to_json() for a in alerts[2:]])
        assert not task.done()
        await asyncio.to_thread(_script, "up")
        await wait_for(lambda: len(am_alerts(alertmanager, run)) == len(alerts))
        stop.set()
        return await task

    stats = asyncio.run(scenario())
    assert stats.retries > 0 and stats.delivered == len(alerts)
    assert {a["labels"]["serial"] for a in am_alerts(alertmanager, run)} == {a.serial_number for a in alerts}


def test_active_alerts_are_resent_after_an_alertmanager_restart(
    alertmanager: str, kafka_bootstrap: str, unique_topic: str
) -> None:
    """Alertmanager keeps alerts in memory only; the router re-sends what is still active."""
    run = uuid.uuid4().hex[:10]
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap)
    config = config_for(alertmanager, run, resend_interval_s=1.0)

    async def scenario() -> Any:
        await produce(kafka_bootstrap, unique_topic, [make_alert(f"R{run}").to_json()])
        stop = asyncio.Event()
        task = asyncio.create_task(route(settings, config, topic=unique_topic, stop=stop))
        await wait_for(lambda: len(am_alerts(alertmanager, run)) == 1)
        await asyncio.to_thread(_script, "down")
        await asyncio.to_thread(_script, "up")
        await wait_for(lambda: len(am_alerts(alertmanager, run)) == 1, timeout=30)
        stop.set()
        return await task

    stats = asyncio.run(scenario())
    assert stats.delivered == 1 and stats.resent >= 1


@pytest.fixture
def secured_alertmanager(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A second real Alertmanager behind TLS (self-signed) and basic auth; (url, password, CA file)."""
    ensure("prometheus-alertmanager=prometheus-alertmanager", "openssl=openssl")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        hashed = crypt.crypt("s3cret-pw", crypt.mksalt(crypt.METHOD_BLOWFISH))
    except (ImportError, AttributeError, OSError):
        pytest.skip("no bcrypt implementation (crypt module) to write Alertmanager's basic-auth config")
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("this libc's crypt() has no bcrypt")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   capture_output=True, check=True, timeout=60)
    port = int(os.environ.get("DISKWATCH_ALERTMANAGER_PORT", "9193")) + 1
    (tmp_path / "web.yml").write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\nbasic_auth_users:\n  diskwatch: '{hashed}'\n")
    (tmp_path / "am.yml").write_text("route: {receiver: nobody}\nreceivers: [{name: nobody}]\n")
    log = open(tmp_path / "am.log", "w")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        ["prometheus-alertmanager", f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={tmp_path / 'web.yml'}",
         "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=log, preexec_fn=die_with_parent,
    )
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = 100
        while deadline:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1, context=context)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for credentials
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "am.log").read_text()
            deadline -= 1
            time.sleep(0.2)
        assert deadline, "Alertmanager with TLS and basic auth did not start"
        yield url, "s3cret-pw", cert
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_tls_and_basic_auth_against_a_real_alertmanager(
    secured_alertmanager: tuple[str, str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown CA or a wrong password is retried (nothing lost, never logged); the right settings deliver."""
    from diskwatch.route import AlertmanagerClient, RouteStats, to_alertmanager

    url, password, ca = secured_alertmanager
    run = uuid.uuid4().hex[:10]
    payload = to_alertmanager(make_alert(f"B{run}"), labels={"run": run})

    async def deliver(config: AlertmanagerSettings, give_up_after: float) -> tuple[bool, RouteStats]:
        stop, stats = asyncio.Event(), RouteStats()
        asyncio.get_running_loop().call_later(give_up_after, stop.set)
        async with AlertmanagerClient(config, stats, stop) as client:
            return await client.deliver([payload]), stats

    untrusted = AlertmanagerSettings(url=url, username="diskwatch", password=password)
    wrong = AlertmanagerSettings(url=url, username="diskwatch", password="wrong-pw", ca_file=ca)
    with caplog.at_level(logging.WARNING, logger="diskwatch.route"):
        done, stats = asyncio.run(deliver(untrusted, 1.5))
        assert not done and stats.retries >= 1 and stats.delivered == 0
        assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)
        caplog.clear()
        done, stats = asyncio.run(deliver(wrong, 1.5))
    assert not done and stats.retries >= 1 and stats.delivered == 0
    assert any("HTTP 401" in r.getMessage() for r in caplog.records)
    assert not any("wrong-pw" in r.getMessage() or password in r.getMessage() for r in caplog.records)
    right = AlertmanagerSettings(url=url, username="diskwatch", password=password, ca_file=ca)
    done, stats = asyncio.run(deliver(right, 30))
    assert done and stats.delivered == 1
    request = urllib.request.Request(f"{url}/api/v2/alerts?filter=" + urllib.request.quote(f'run="{run}"'))
    request.add_header("Authorization", "Basic " + base64.b64encode(f"diskwatch:{password}".encode()).decode())
    with urllib.request.urlopen(request, timeout=5, context=ssl.create_default_context(cafile=str(ca))) as response:
        (got,) = json.loads(response.read())
    assert got["labels"]["serial"] == f"B{run}"
