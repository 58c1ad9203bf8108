"""Serial-grouped, failure-stratified splits (never random by row).

Every serial lands in exactly one split. Healthy serials go by a seeded hash,
so adding data never moves a drive between splits; failed serials are dealt
out in proportion so each split sees failures. An optional time cut keeps
training windows strictly before the evaluation period, with a horizon-long
gap so no training label peeks at an evaluation-period failure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diskwatch.training.sequences import keep_fraction, serial_hash

SPLITS = ("train", "val", "test")


def assign_splits(
    serials: Sequence[str],
    failed: np.ndarray,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> np.ndarray:
    """Split name per serial (``train``/``val``/``test``), stratified on ``failed``."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    failed = np.asarray(failed, dtype=bool)
    if failed.shape[0] != len(serials):
        raise ValueError("failed must have one entry per serial")
    u = keep_fraction(serial_hash(serials), 0, seed)
    edges = np.cumsum(fractions)[:2]
    out = np.array(SPLITS, dtype=object)[np.searchsorted(edges, u, side="right")]

    # Deal failed drives in hash order: ~fractions of them per split, at
    # least one in each non-empty split when there are enough failures.
    failed_idx = np.flatnonzero(failed)
    if failed_idx.size:
        order = failed_idx[np.argsort(u[failed_idx], kind="stable")]
        counts = _proportional(failed_idx.size, fractions)
        names = np.repeat(np.array(SPLITS, dtype=object), counts)
        out[order] = names
    return out.astype(str)


def _proportional(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Largest-remainder counts, then move one to any empty wanted split."""
    raw = np.asarray(fractions) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    wanted = np.asarray(fractions) > 0
    for i in np.flatnonzero(wanted & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts


def time_mask(end_day: np.ndarray, split: str, cutoff_day: int, horizon: int) -> np.ndarray:
    """Windows a time-based split keeps: train ends > horizon before the cut."""
    end_day = np.asarray(end_day)
    if split == "train":
        return end_day < cutoff_day - horizon
    return end_day >= cutoff_day
