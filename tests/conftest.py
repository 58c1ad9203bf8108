"""Shared pytest fixtures: local Kafka + Redis services for integration tests.

The session fixtures ``kafka_bootstrap`` and ``redis_url`` make sure the service answers
on 127.0.0.1 (ports from ``DISKWATCH_KAFKA_PORT`` / ``DISKWATCH_REDIS_PORT``, the same
variables ``deploy/local/stack`` reads). If it does not answer yet, they run
``deploy/local/stack up <service>`` once per session and, at session end, run
``deploy/local/stack down <service>`` for what *this session* started. Services that were
already up before the session (a developer's ``deploy/local/up``, CI's shell step, a
foreign broker) are used as they are and left running.

Tests under ``tests/integration/`` are marked ``integration`` automatically; deselect them
with ``-m "not integration"``.

A run cleans up after itself: the controlling pytest process (the only one without
``-n``; the xdist controller with it) notes at start which services answer and which test
topics, consumer groups and Redis keys exist, and at the very end deletes the topics and groups
named ``test-<run>-*`` / ``diskwatch-test-<run>-*`` and the ``test:<run>:*`` keys of the test DB
that the run created (``<run>``: :data:`TEST_RUN`, so a run beside it keeps its own), then stops the services the run started. Fixtures in xdist workers may start a
service (under a file lock) but never stop one, so no worker pulls the stack from under another.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from diskwatch.core.quiet import quiet_tensorflow
from tests.kafka_admin import delete_group

REPO_ROOT = Path(__file__).resolve().parents[1]
STACK = REPO_ROOT / "deploy" / "local" / "stack"
HOST = "127.0.0.1"
# Cold start downloads ~45 MB of jars and may apt-get install redis-server.
STACK_UP_TIMEOUT_S = float(os.environ.get("DISKWATCH_TEST_STACK_TIMEOUT", "600"))
# JVM flags for the brokers a test run starts (passed as DISKWATCH_KAFKA_JVM_OPTS unless set): they live
# minutes and carry little data, so start-up JIT work dominates; C1 only and the serial GC halve a
# 3-broker cluster's start-up CPU (22 -> 12 s on the build machine).
TEST_KAFKA_JVM_OPTS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"
# Redis DB index reserved for tests, so test keys never mix with a dev app's DB 0.
TEST_REDIS_DB = int(os.environ.get("DISKWATCH_TEST_REDIS_DB", "15"))


def pytest_configure(config: pytest.Config) -> None:
    if not _is_xdist_controller(config):
        # Before any test module imports TensorFlow: no banner lines in the test output. Not in
        # the xdist controller, which runs no test: its TF import cost ~5 s before any worker started.
        quiet_tensorflow()
    config.addinivalue_line(
        "markers",
        "integration: needs the local Kafka + Redis started by deploy/local/stack "
        "(started automatically by tests/conftest.py fixtures)",
    )


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_xdist_controller(config: pytest.Config) -> bool:
    return not _is_xdist_worker(config) and bool(getattr(config.option, "numprocesses", None))


def worker_namespace() -> str:
    """``gw0``, ``gw1``… under pytest-xdist, ``main`` otherwise: part of every test topic and key prefix."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


#: One token per test run (made in the controller, inherited by the xdist workers through the
#: environment): part of the name of every topic, consumer group and Redis key a test creates, so
#: the cleanup at the end deletes this run's and never those of a run going on beside it.
TEST_RUN = os.environ.setdefault("DISKWATCH_TEST_RUN", uuid.uuid4().hex[:6])
# Names of what tests create on the shared services (see the module docstring).
TEST_TOPIC = re.compile(rf"^(test-|diskwatch-test-){TEST_RUN}-")
TEST_KEY_PATTERN = f"test:{TEST_RUN}:*"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Controller only: remember what answered and existed before the run."""
    if _is_xdist_worker(session.config):
        return
    kafka_up, redis_up = kafka_answers(HOST, _kafka_port()), redis_answers(HOST, _redis_port())
    try:
        inventory = _kafka_inventory() if kafka_up else {"topics": set(), "groups": set()}
        keys = _redis_inventory() if redis_up else set()
    except Exception as exc:  # cleanup is a courtesy: it must never fail a run
        warnings.warn(f"test cleanup disabled: cannot list test topics/keys ({exc!r})", stacklevel=1)
        return
    session.config.stash[_BEFORE] = {"kafka_up": kafka_up, "redis_up": redis_up, **inventory, "keys": keys}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every test process checks for processes its tests left behind; the controller then
    (after every xdist worker finished) deletes what the run created and stops what it started."""
    distributed = session.config.pluginmanager.hasplugin("dsession")
    if _is_xdist_worker(session.config) or not distributed:
        _fail_on_leftover_processes(session)
    if _is_xdist_worker(session.config):
        return
    _fail_on_litter(session)
    if _BEFORE not in session.config.stash:
        return
    before = session.config.stash[_BEFORE]
    removed: dict[str, int] = {}
    try:
        if kafka_answers(HOST, _kafka_port()):
            removed.update(_drop_kafka(before["topics"], before["groups"]))
        if redis_answers(HOST, _redis_port()):
            removed["redis_keys"] = _drop_redis(before["keys"])
    except Exception as exc:  # report, do not fail the run
        warnings.warn(f"test cleanup failed: {exc!r}", stacklevel=1)
    session.config.stash[_REMOVED] = removed
    for name, answers in (("kafka", kafka_answers), ("redis", redis_answers)):
        port = _kafka_port() if name == "kafka" else _redis_port()
        if not before[f"{name}_up"] and answers(HOST, port):
            _stack("down", name)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    removed = config.stash.get(_REMOVED, None)
    if removed:
        terminalreporter.write_line(
            "cleanup: deleted " + ", ".join(f"{n} {what}" for what, n in sorted(removed.items()))
        )


_BEFORE = pytest.StashKey[dict[str, Any]]()
_REMOVED = pytest.StashKey[dict[str, int]]()


def _kafka_inventory() -> dict[str, set[str]]:
    """Test topics and consumer groups on the local broker now."""
    import asyncio

    async def run() -> dict[str, set[str]]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=f"{HOST}:{_kafka_port()}")
        await admin.start()
        try:
            topics = {t for t in await admin.list_topics() if TEST_TOPIC.match(t)}
            groups = {g[0] for g in await admin.list_consumer_groups() if TEST_TOPIC.match(g[0])}
            return {"topics": topics, "groups": groups}
        finally:
            await admin.close()

    return asyncio.run(run())


def _drop_kafka(topics_before: set[str], groups_before: set[str]) -> dict[str, int]:
    """Delete the test topics and consumer groups created since the run started."""
    import asyncio

    async def run() -> dict[str, int]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=f"{HOST}:{_kafka_port()}")
        await admin.start()
        try:
            topics = sorted({t for t in await admin.list_topics() if TEST_TOPIC.match(t)} - topics_before)
            groups = sorted(
                {g[0] for g in await admin.list_consumer_groups() if TEST_TOPIC.match(g[0])} - groups_before
            )
            for chunk in range(0, len(topics), 100):
                await admin.delete_topics(topics[chunk : chunk + 100])
            for group in groups:
                await delete_group(admin, group)
        finally:
            await admin.close()
        return {"kafka_topics": len(topics), "consumer_groups": len(groups)}

    return asyncio.run(run())


def _redis_inventory() -> set[bytes]:
    import redis

    client = redis.Redis(host=HOST, port=_redis_port(), db=TEST_REDIS_DB)
    try:
        return set(client.scan_iter(match=TEST_KEY_PATTERN, count=1000))
    finally:
        client.close()


def _drop_redis(keys_before: set[bytes]) -> int:
    """Delete the ``test:*`` keys of the test DB created since the run started."""
    import redis

    new = sorted(_redis_inventory() - keys_before)
    client = redis.Redis(host=HOST, port=_redis_port(), db=TEST_REDIS_DB)
    try:
        for chunk in range(0, len(new), 1000):
            client.unlink(*new[chunk : chunk + 1000])
    finally:
        client.close()
    return len(new)


# Under pytest-xdist (scripts/test: -n 2 --dist loadgroup) each of these modules runs on one worker:
# they share a fixed resource (the Redis Cluster's ports) or an expensive module-scoped fixture
# (a trained model, a decoded fleet) that two workers would otherwise each build. Every other test
# is scheduled on its own.
ONE_WORKER_MODULES = {
    "test_redis_cluster.py", "test_train_evaluate.py", "test_processor.py",
    "test_fleet_io.py",  # its tests stop and restart the one local Alertmanager
    "test_kafka_cluster.py",  # one 3-broker cluster per module, on fixed ports
    "test_backends.py",  # one JAX interpreter scores every variant's bundle (module fixture)
    "test_lean_worker.py",  # its two tests read one fresh interpreter's start-up
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    integration_dir = Path(__file__).resolve().parent / "integration"
    for item in items:
        if integration_dir in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist must still run
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` with the groups above, decided from node ids in the controller.

    xdist 3.8's own loadgroup rewrites ``item._nodeid``, which pytest 9 no longer reads, so
    ``xdist_group`` marks are silently ignored; this scheduler does not depend on that.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if Path(path).name in ONE_WORKER_MODULES else nodeid

    return ModuleGroups(config, log)


# --------------------------------------------------------------------------------------------
# no process outlives the session

# Seconds a test's child may take to exit after its fixtures finished before it counts as leftover.
LEFTOVER_GRACE_S = 5.0
# Helpers that libraries keep for the life of the interpreter on purpose (not a test's process).
LIBRARY_HELPERS = re.compile(r"multiprocessing\.resource_tracker|multiprocessing\.forkserver|loky")


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """Live (not zombie) descendants of ``root``: pid -> (process group, command line)."""
    parent: dict[int, int] = {}
    info: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            pid = int(stat.parent.name)
            parent[pid] = int(fields[1])
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            info[pid] = (int(fields[2]), cmd.strip()[:160])
        except (OSError, ValueError, IndexError):
            continue
    out: dict[int, tuple[int, str]] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in out and child in info:
                out[child] = info[child]
                frontier.append(child)
    return {pid: v for pid, v in out.items() if not LIBRARY_HELPERS.search(v[1])}


def _fail_on_leftover_processes(session: pytest.Session) -> None:
    """Fail the run if a test left a child process behind (and kill it, its group too).

    Fixture finalizers have run by now; what is still alive (a worker a failed test never
    stopped, a private redis-server) would otherwise keep running and reconnect to the next
    session's services. Kafka and Redis from deploy/local/stack run in their own sessions
    under init, so they are never descendants of pytest.
    """
    import signal
    import time

    deadline = time.monotonic() + LEFTOVER_GRACE_S
    left = _descendants(os.getpid())
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _descendants(os.getpid())
    if not left:
        return
    own_group = os.getpgid(0)
    for pid, (pgid, _) in left.items():
        try:
            if pgid != own_group:
                os.killpg(pgid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    lines = "\n".join(f"  pid {pid} (group {pgid}): {cmd}" for pid, (pgid, cmd) in sorted(left.items()))
    _fail_run(session, f"{len(left)} process(es) left running by the tests were killed:\n{lines}")


def _fail_on_litter(session: pytest.Session) -> None:
    """Fail the run if a test wrote into the work tree (and remove what it wrote).

    Every name a test makes carries :data:`TEST_RUN`, so a file or folder with it in the
    repository root is this run's litter — e.g. a faust app without ``datadir`` makes
    ``./<app id>-data`` there. Tests write under pytest's ``tmp_path`` instead.
    """
    import shutil

    litter = sorted(p for p in REPO_ROOT.iterdir() if TEST_RUN in p.name)
    if not litter:
        return
    for path in litter:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    _fail_run(session, "the tests left files in the work tree (removed): " + ", ".join(p.name for p in litter))


def _fail_run(session: pytest.Session, message: str) -> None:
    """Say why in red at the end of the output and make the run fail, whatever the tests did."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(message, red=True)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --------------------------------------------------------------------------------------------
# service probes (stdlib only, so they work before any client library is configured)


def _kafka_port() -> int:
    return int(os.environ.get("DISKWATCH_KAFKA_PORT", "9092"))


def _redis_port() -> int:
    return int(os.environ.get("DISKWATCH_REDIS_PORT", "6379"))


def _recvn(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def kafka_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """True if a Kafka broker answers an ApiVersions request (a bare TCP accept is not enough)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            client = b"diskwatch-tests"
            msg = struct.pack(">hhih", 18, 0, 7, len(client)) + client  # ApiVersions v0
            sock.sendall(struct.pack(">i", len(msg)) + msg)
            (size,) = struct.unpack(">i", _recvn(sock, 4))
            data = _recvn(sock, size)
            corr, err = struct.unpack(">ih", data[:6])
            return corr == 7 and err == 0
    except (OSError, EOFError, struct.error):
        return False


def redis_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def stack_env() -> dict[str, str]:
    """Environment for deploy/local/stack run by the tests: the test brokers' JVM flags unless set."""
    return {"DISKWATCH_KAFKA_JVM_OPTS": TEST_KAFKA_JVM_OPTS, **os.environ}


def _stack(*args: str) -> str:
    """Run deploy/local/stack; fail the session with its output if it fails."""
    try:
        proc = subprocess.run(
            [str(STACK), *args],
            cwd=REPO_ROOT,
            env=stack_env(),
            capture_output=True,
            text=True,
            timeout=STACK_UP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`deploy/local/stack {' '.join(args)}` timed out after {exc.timeout}s", pytrace=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(
            f"`deploy/local/stack {' '.join(args)}` failed (exit {proc.returncode}):\n{out}",
            pytrace=False,
        )
    return out


def _ensure_service(name: str, answers: Any, port: int) -> None:
    """Start `name` via the stack script unless it already answers (once, even across xdist workers).

    Stopping is the controller's job (:func:`pytest_sessionfinish`), never a fixture's.
    """
    if answers(HOST, port):
        return
    from filelock import FileLock

    lock = REPO_ROOT / ".local" / f"test-stack-{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock), timeout=STACK_UP_TIMEOUT_S):
        if not answers(HOST, port):
            _stack("up", name)


# --------------------------------------------------------------------------------------------
# session fixtures


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """'127.0.0.1:PORT' of a ready single-node Kafka (KRaft) broker."""
    port = _kafka_port()
    _ensure_service("kafka", kafka_answers, port)
    if not kafka_answers(HOST, port):
        pytest.fail(
            f"Kafka is not answering on {HOST}:{port} after `deploy/local/stack up kafka`", pytrace=False
        )
    yield f"{HOST}:{port}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """redis:// URL of a ready Redis, pointing at the DB index reserved for tests (default 15)."""
    port = _redis_port()
    _ensure_service("redis", redis_answers, port)
    if not redis_answers(HOST, port):
        pytest.fail(
            f"Redis is not answering on {HOST}:{port} after `deploy/local/stack up redis`", pytrace=False
        )
    yield f"redis://{HOST}:{port}/{TEST_REDIS_DB}"


# --------------------------------------------------------------------------------------------
# per-test helpers


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:limit] or "t"


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> str:
    """A Kafka topic name no other test (or earlier run) has used: test-<testname>-<uuid>."""
    return f"test-{TEST_RUN}-{worker_namespace()}-{_slug(request.node.name)}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """Unique key prefix for this test; keys under it are deleted by the redis client fixtures."""
    return f"test:{TEST_RUN}:{worker_namespace()}:{_slug(request.node.name)}:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_client(redis_url: str, redis_prefix: str) -> Iterator[redis.Redis]:  # noqa: F821
    """Sync redis-py client on the test DB; deletes every key under ``redis_prefix`` afterwards.

    Write keys as ``redis_prefix + name``.
    """
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        keys = list(client.scan_iter(match=f"{redis_prefix}*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def async_redis(
    redis_url: str, redis_prefix: str
) -> Callable[..., AbstractAsyncContextManager[redis.asyncio.Redis]]:  # noqa: F821
    """Opens a redis.asyncio client on the test DB inside the test's own ``asyncio.run``.

    Async clients belong to one event loop, so the test opens one in its async body
    (``async with async_redis() as client:``); on exit every key under ``redis_prefix`` is
    deleted and the client closed.
    """
    import redis.asyncio as aioredis

    @asynccontextmanager
    async def open_client(*, decode_responses: bool = True) -> AsyncIterator[aioredis.Redis]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=decode_responses)
        try:
            yield client
        finally:
            keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*", count=500)]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    return open_client


# --------------------------------------------------------------------------------------------
# real data

# ../shared/data/backblaze next to the repository root.
BACKBLAZE_DIR = REPO_ROOT.parent / "shared" / "data" / "backblaze"


@pytest.fixture(scope="session")
def backblaze_dir() -> Path:
    """The real Backblaze sample (``daily_2013/*.csv.gz``); the test is skipped when it is absent."""
    if not (BACKBLAZE_DIR / "daily_2013").is_dir():
        pytest.skip(f"real Backblaze data not found at {BACKBLAZE_DIR} (expected ../shared next to the repo)")
    return BACKBLAZE_DIR


@pytest.fixture
def isolated_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DISKWATCH_* from the outer environment and no stray .env in the working directory."""
    for name in list(os.environ):
        if name.upper().startswith("DISKWATCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
