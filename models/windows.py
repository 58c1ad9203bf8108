"""Window and label rules, shared by the sequence builder and the stream.

A *window* is S daily steps ending on the scored day ``d``: steps
``d-S+1 .. d``. Each step holds that day's transformed feature vector; a day
without a report is an all-NaN step, which :meth:`FeatureSpec.finalize`
forward-fills from the last report. Gap rule: reports may be at most ``G``
days apart inside the window (with G = 2 one missing day is bridged, two are
not); a longer gap restarts the drive's window, so the first full window after
it ends S days later. The oldest step must be covered by a report on or
before it under the same rule.

Label rule: a window ending on day ``d`` of a drive that fails on day ``f`` is
positive when ``0 <= f - d <= L``: the failure day itself counts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Day numbers are defined in core (one epoch); re-exported here for the window code's callers.
from diskwatch.core.records import day_number as day_number
from diskwatch.core.records import from_day_number as from_day_number
from diskwatch.core.settings import HORIZON_DAYS, MAX_GAP_DAYS, WINDOW_DAYS


class WindowConfig(BaseModel):
    """S (window), L (horizon), G (max gap) and stride, in days."""

    model_config = ConfigDict(frozen=True)

    window: int = Field(WINDOW_DAYS, ge=2, le=365)
    horizon: int = Field(HORIZON_DAYS, ge=0, le=365)
    max_gap: int = Field(MAX_GAP_DAYS, ge=1, le=60)
    stride: int = Field(1, ge=1, le=365)

    @model_validator(mode="after")
    def _gap_below_window(self) -> WindowConfig:
        if self.max_gap >= self.window:
            raise ValueError("max_gap must be smaller than window")
        return self


def label(days_to_failure: np.ndarray | float, horizon: int) -> np.ndarray:
    """1 where the failure is 0..horizon days after the window's last day."""
    dtf = np.asarray(days_to_failure, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ((dtf >= 0) & (dtf <= horizon)).astype(np.int8)


def assemble_window(
    days: Sequence[dt.date],
    vectors: np.ndarray,
    end: dt.date,
    config: WindowConfig,
) -> np.ndarray | None:
    """The window ending on ``end`` from one drive's reports, or None.

    ``days`` are the drive's report dates in ascending order with matching
    rows of ``vectors`` (``[n, F]``); only reports on or before ``end`` count.
    Returns ``[S, F]`` float32 with NaN steps for bridged missing days, or
    None when ``end`` has no report or a gap breaks the window.
    """
    reports = [i for i, day in enumerate(days) if day <= end]
    if not reports or days[reports[-1]] != end:
        return None
    start = end - dt.timedelta(days=config.window - 1)
    chosen: list[int] = []
    newer = end
    for i in reversed(reports):
        if (newer - days[i]).days > config.max_gap:
            return None
        chosen.append(i)
        newer = days[i]
        if days[i] <= start:
            break
    else:
        return None  # no report on or before the first step: window not full yet
    out = np.full((config.window, vectors.shape[1]), np.nan, dtype=np.float32)
    for i in chosen:
        step = config.window - 1 - (end - days[i]).days
        if step >= 0:
            out[step] = vectors[i]
    return out


def windows_ending_at(
    owner: np.ndarray,
    days: np.ndarray,
    vectors: np.ndarray,
    ends: np.ndarray,
    config: WindowConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`assemble_window` for many drives and window ends at once.

    ``owner``/``days``/``vectors`` are report rows grouped by drive (``owner``
    non-decreasing) with ascending, distinct days inside each drive; ``ends``
    are row indices whose day ends a candidate window. Returns a bool mask over
    ``ends`` (the window is full under the gap rule) and the ``[k, S, F]``
    float32 windows of the full ones, identical to :func:`assemble_window`.
    """
    owner = np.asarray(owner, dtype=np.int64)
    days = np.asarray(days, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    s = config.window
    n_features = vectors.shape[1]
    if ends.size == 0:
        return np.zeros(0, dtype=bool), np.zeros((0, s, n_features), dtype=np.float32)
    # A run is a stretch of one drive's reports with gaps <= G; a window is full
    # when the run holding its last day began on or before its first step.
    breaks = np.ones(days.size, dtype=bool)
    breaks[1:] = (owner[1:] != owner[:-1]) | (np.diff(days) > config.max_gap)
    run_first = days[np.flatnonzero(breaks)][np.cumsum(breaks) - 1]
    full = run_first[ends] <= days[ends] - (s - 1)
    chosen = ends[full]
    # Look every step's day up among the drive's rows: key = (owner, day).
    base = days.min()
    span = int(days.max() - base) + s + 1
    keys = owner * span + (days - base + s)
    wanted = (keys[chosen][:, None] - np.arange(s - 1, -1, -1)[None, :])  # [k, S], oldest step first
    pos = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    hit = keys[pos] == wanted
    windows = np.where(hit[..., None], vectors[pos], np.float32(np.nan)).astype(np.float32, copy=False)
    return full, windows
