"""deploy/local/stack's argument handling for the cluster mode (no services started)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO_ROOT, STACK


def stack(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DISKWATCH_")}
    base.update(DISKWATCH_KAFKA_PORT="19192", DISKWATCH_KAFKA_CONTROLLER_PORT="19193", DISKWATCH_REDIS_PORT="19379",
                DISKWATCH_LOCAL_DIR=env.pop("local_dir"))
    base.update(env)
    return subprocess.run([str(STACK), *args], cwd=REPO_ROOT, env=base, capture_output=True, text=True, timeout=60,
                          check=False)


def test_env_lists_every_broker_of_a_cluster_and_its_replication_factor(tmp_path) -> None:
    out = stack("env", "--brokers", "3", local_dir=str(tmp_path)).stdout
    assert "DISKWATCH_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19192,127.0.0.1:19194,127.0.0.1:19196" in out
    assert "DISKWATCH_TOPIC_REPLICATION_FACTOR=3" in out
    single = stack("env", local_dir=str(tmp_path)).stdout  # the default stays the single node
    assert "DISKWATCH_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19192\n" in single
    assert "REPLICATION_FACTOR" not in single
    assert "127.0.0.1:19194" in stack("env", local_dir=str(tmp_path), DISKWATCH_KAFKA_BROKERS="2").stdout


@pytest.mark.parametrize("value", ["abc", "10", ""])
def test_a_bad_broker_count_is_refused_clearly(tmp_path, value: str) -> None:
    proc = stack("status", "--brokers", value, local_dir=str(tmp_path))
    assert proc.returncode != 0
    assert "--brokers must be 1..9" in proc.stderr


def test_cluster_ports_that_collide_are_refused_before_anything_starts(tmp_path) -> None:
    # Controller port = client port + 2 puts node 2's client port on node 1's controller port.
    proc = stack("up", "--brokers", "3", "kafka", local_dir=str(tmp_path), DISKWATCH_KAFKA_CONTROLLER_PORT="19194")
    assert proc.returncode != 0
    assert "collide" in proc.stderr
    assert not (tmp_path / "kafka" / "cluster-p19192" / "node-1" / "kafka.pid").exists()
