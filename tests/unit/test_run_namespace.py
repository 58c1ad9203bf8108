"""A test run names what it creates on the shared Kafka and Redis after itself, and its cleanup
matches only those names: two runs on one machine's services (``make test`` and a developer's
single test file) must not delete each other's topics, groups or keys mid-run."""

from __future__ import annotations

import fnmatch
import os

from tests.conftest import TEST_KEY_PATTERN, TEST_RUN, TEST_TOPIC
from tests.integration.workers import Stream


def test_the_run_token_is_shared_with_xdist_workers_through_the_environment() -> None:
    assert os.environ["DISKWATCH_TEST_RUN"] == TEST_RUN and len(TEST_RUN) >= 6


def test_cleanup_matches_this_runs_names_and_not_another_runs(unique_topic: str, redis_prefix: str) -> None:
    other = "zz" + TEST_RUN[2:] if not TEST_RUN.startswith("zz") else "yy" + TEST_RUN[2:]
    stream = Stream("127.0.0.1:9", "redis://127.0.0.1:9/15")
    ours = [unique_topic, stream.telemetry, stream.alerts, stream.dlq, stream.group, f"{stream.group}-app"]
    assert all(TEST_TOPIC.match(name) for name in ours), ours
    theirs = [name.replace(TEST_RUN, other, 1) for name in ours]
    assert not any(TEST_TOPIC.match(name) for name in theirs), theirs
    for key in (f"{redis_prefix}k", f"{stream.prefix}:w2:abc:{{SERIAL}}"):
        assert fnmatch.fnmatchcase(key, TEST_KEY_PATTERN), key
        assert not fnmatch.fnmatchcase(key.replace(TEST_RUN, other, 1), TEST_KEY_PATTERN), key
