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
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
STACK = REPO_ROOT / "deploy" / "local" / "stack"
HOST = "127.0.0.1"
# Cold start downloads ~45 MB of jars and may apt-get install redis-server.
STACK_UP_TIMEOUT_S = float(os.environ.get("DISKWATCH_TEST_STACK_TIMEOUT", "600"))
# Redis DB index reserved for tests, so test keys never mix with a dev app's DB 0.
TEST_REDIS_DB = int(os.environ.get("DISKWATCH_TEST_REDIS_DB", "15"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs the local Kafka + Redis started by deploy/local/stack "
        "(started automatically by tests/conftest.py fixtures)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    integration_dir = Path(__file__).resolve().parent / "integration"
    for item in items:
        if integration_dir in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
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
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"{len(left)} process(es) left running by the tests were killed:\n{lines}"
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


def _stack(*args: str) -> str:
    """Run deploy/local/stack; fail the session with its output if it fails."""
    try:
        proc = subprocess.run(
            [str(STACK), *args],
            cwd=REPO_ROOT,
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


def _ensure_service(name: str, answers: bool) -> bool:
    """Start `name` via the stack script unless it already answers. Returns True if we started it."""
    if answers:
        return False
    out = _stack("up", name)
    # 'already running' / 'foreign': someone else (a parallel session, the dev) owns it.
    return not re.search(r"already running|foreign", out)


# --------------------------------------------------------------------------------------------
# session fixtures


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """'127.0.0.1:PORT' of a ready single-node Kafka (KRaft) broker."""
    port = _kafka_port()
    started = _ensure_service("kafka", kafka_answers(HOST, port))
    if not kafka_answers(HOST, port):
        pytest.fail(
            f"Kafka is not answering on {HOST}:{port} after `deploy/local/stack up kafka`", pytrace=False
        )
    yield f"{HOST}:{port}"
    if started:
        _stack("down", "kafka")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """redis:// URL of a ready Redis, pointing at the DB index reserved for tests (default 15)."""
    port = _redis_port()
    started = _ensure_service("redis", redis_answers(HOST, port))
    if not redis_answers(HOST, port):
        pytest.fail(
            f"Redis is not answering on {HOST}:{port} after `deploy/local/stack up redis`", pytrace=False
        )
    yield f"redis://{HOST}:{port}/{TEST_REDIS_DB}"
    if started:
        _stack("down", "redis")


# --------------------------------------------------------------------------------------------
# per-test helpers


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:limit] or "t"


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> str:
    """A Kafka topic name no other test (or earlier run) has used: test-<testname>-<uuid>."""
    return f"test-{_slug(request.node.name)}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """Unique key prefix for this test; keys under it are deleted by the redis client fixtures."""
    return f"test:{_slug(request.node.name)}:{uuid.uuid4().hex[:12]}:"


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


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - pytest-asyncio is a dev dependency
    pytest_asyncio = None

if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def async_redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[redis.asyncio.Redis]:  # noqa: F821
        """redis.asyncio client on the test DB; deletes every key under ``redis_prefix`` afterwards."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            yield client
        finally:
            keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*", count=500)]
            if keys:
                await client.delete(*keys)
            await client.aclose()


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
