"""The helpers that keep test processes from outliving a failed test or the session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_a_child_started_with_die_with_parent_ends_when_its_test_process_is_sigkilled() -> None:
    """``kill -9`` of pytest (a CI timeout) must not leave a worker it started retrying the services."""
    # The middle process plays the test process: it starts a worker-like child in its own session.
    script = (
        "import subprocess, sys, time\n"
        "from tests.integration.workers import die_with_parent\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True,\n"
        "                     preexec_fn=die_with_parent)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    middle = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        child = int(middle.stdout.readline())
        assert session_members(child) == [child]  # alive, in its own session
        middle.kill()
        middle.wait(10)
        for _ in range(100):
            if not session_members(child):
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert session_members(child) == [], "the child outlived its SIGKILLed parent"
    finally:
        if middle.poll() is None:
            middle.kill()
            middle.wait(10)
