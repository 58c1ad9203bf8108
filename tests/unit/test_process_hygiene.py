"""The helpers that keep test processes from outliving a failed test or the session."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import _descendants
from tests.integration.workers import _signal_group, session_members


def test_descendants_lists_a_grandchild_in_its_own_group_and_signal_group_ends_it() -> None:
    # A child in its own session that starts a grandchild: like `diskwatch worker --workers 2`.
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        for _ in range(100):
            found = {pid: v for pid, v in _descendants(os.getpid()).items() if v[0] == proc.pid}
            if len(found) == 2:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert len(found) == 2, found  # the child and its grandchild, both in the child's group
        assert sorted(session_members(proc.pid)) == sorted(found)
        _signal_group(proc.pid, 9)
        proc.wait(10)
        for _ in range(100):
            if not session_members(proc.pid):
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert session_members(proc.pid) == []
        assert proc.pid not in _descendants(os.getpid())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_signal_group_of_a_finished_session_touches_nothing() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait(10)
    _signal_group(proc.pid, 9)  # no member left: must not raise nor signal anyone
    assert session_members(proc.pid) == []
