"""The stream's vectorised window assembly agrees with the one-window rule."""

from __future__ import annotations

import datetime as dt

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from diskwatch.models.windows import WindowConfig, assemble_window, from_day_number, windows_ending_at


@settings(max_examples=150, deadline=None)
@given(
    drives=st.lists(st.lists(st.booleans(), min_size=0, max_size=25), min_size=1, max_size=4),
    window=st.integers(2, 7),
    gap=st.integers(1, 4),
    start=st.integers(-800, 20_000),
)
def test_windows_ending_at_matches_assemble_window(
    drives: list[list[bool]], window: int, gap: int, start: int
) -> None:
    gap = min(gap, window - 1)
    cfg = WindowConfig(window=window, max_gap=gap)
    owner, days, rows = [], [], []
    for o, present in enumerate(drives):
        for d, here in enumerate(present):
            if here:
                owner.append(o)
                days.append(start + d)
                rows.append([o * 100 + d, float(d) if d % 3 else np.nan])
    vectors = np.asarray(rows, dtype=np.float32).reshape(-1, 2)
    ends = np.arange(len(days))
    full, windows = windows_ending_at(np.asarray(owner), np.asarray(days), vectors, ends, cfg)
    assert full.shape == ends.shape and windows.shape == (int(full.sum()), window, 2)
    k = 0
    for i in ends:
        mine = [j for j in range(len(days)) if owner[j] == owner[i]]
        expected = assemble_window(
            [from_day_number(days[j]) for j in mine], vectors[mine], from_day_number(days[i]), cfg
        )
        assert full[i] == (expected is not None)
        if expected is not None:
            np.testing.assert_array_equal(windows[k], expected)
            k += 1


def test_windows_ending_at_bridges_short_gaps_only() -> None:
    cfg = WindowConfig(window=4, max_gap=2)
    days = np.array([10, 11, 13, 14, 20, 21, 22, 23])  # one drive: a 1-day hole, then a 6-day hole
    vectors = np.arange(days.size, dtype=np.float32)[:, None]
    full, windows = windows_ending_at(np.zeros(days.size, np.int64), days, vectors, np.arange(days.size), cfg)
    assert full.tolist() == [False, False, True, True, False, False, False, True]
    np.testing.assert_array_equal(windows[0][:, 0], [0, 1, np.nan, 2])
    np.testing.assert_array_equal(windows[1][:, 0], [1, np.nan, 2, 3])
    np.testing.assert_array_equal(windows[2][:, 0], [4, 5, 6, 7])


def test_windows_ending_at_nothing_asked() -> None:
    full, windows = windows_ending_at(np.zeros(3, np.int64), np.arange(3), np.zeros((3, 5), np.float32),
                                      np.zeros(0, np.int64), WindowConfig(window=3))
    assert full.shape == (0,) and windows.shape == (0, 3, 5)


def test_day_numbers_round_trip() -> None:
    assert from_day_number(0) == dt.date(1970, 1, 1)
