"""Seeded fleet simulator: Backblaze-shaped daily SMART dumps, with ground truth.

This is **simulated data, not real Backblaze data**. It is the project's
embedded default data source (demo, tests that must run anywhere), so it
imitates what the reader and the models see in real Drive Stats dumps:

* **Layout** — one ``YYYY-MM-DD.csv`` per day in the exact column order of the
  Q1-2024 dumps (:data:`COLUMNS`): ``date, serial_number, model,
  capacity_bytes, failure, datacenter, cluster_id, vault_id, pod_id,
  pod_slot_number, is_legacy_format`` then ``smart_N_normalized, smart_N_raw``
  for every N in :data:`SMART_IDS`. Attributes a model does not report are
  empty, as in the real files. LF line endings, integers without ``.0``.
* **Fleet** — a mix of real model strings with exact capacities, fleet shares
  and annualized failure rates (AFR) close to Backblaze's published ones
  (:data:`DEFAULT_MODELS`). Each model reports its own attribute set
  (Seagate: 1,3,4,5,7,9,10,12,187,188,190,...; HGST/WDC: no 187/188, helium
  level 22 on helium drives; Toshiba: its own 2xx attributes).
* **Healthy drives** — power-on hours (9) +24 per day from a per-drive age;
  temperature (194) per-drive base + pod-slot effect + daily noise + a slight
  seasonal drift; rare power cycles (12, 4, 192); growing load cycles (193),
  seek counts (7), LBAs written/read (241/242); Seagate's read error rate (1)
  is a big noisy number, 0 on other vendors. Error counters (5, 187, 188,
  197, 198, 199, 183, 184, 189) are zero — except a few percent of healthy
  drives that carry a small *constant* reallocated count (or CRC count): the
  false alarms of Backblaze's "raw > 0" rule.
* **Failures** — a constant hazard ``AFR * failure_boost / 365`` per drive-day
  (AFR is failures per drive-year, as Backblaze defines it). The failure day's
  row has ``failure=1`` and is the drive's last row. About 70 % of failures
  have **precursors**: during the last 3–30 days, 5/197 (always one of them)
  and, depending on model and drive, 187, 198 and 188 climb as
  Poisson random walks that accelerate towards the failure, each starting on
  its own day. The remaining share (``silent_failure_share``) just dies, as a
  sizeable share of real failures do with no SMART warning.
* **Churn and noise** — a few drives of the still-deployed models join during
  the window (young, low hours); some drives of the older models retire
  (stop reporting, never ``failure=1``); a drive skips a day now and then
  (``missing_day_prob``); a SMART value is occasionally empty
  (``empty_field_prob``).
* **Determinism** — drive ``i`` draws from its own substreams
  ``SeedSequence(seed, spawn_key=(i, k))`` (k = 0 statics, 1 precursors,
  2 daily noise), so a drive's life does not depend on iteration order; the
  days are then computed vectorized across drives. Same config → byte-identical
  files (gzip with mtime 0).

``fleet.json`` next to the CSVs holds the ground truth (failures with their
precursor start, retirements, per-model counts, the config). See
``docs/simulator.md`` for the parameters and the real-data facts behind them.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from diskwatch.core.records import BASE_COLUMNS, KNOWN_EXTRA_COLUMNS

# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------

#: SMART attribute ids of the Q1-2024 Backblaze layout, in column order.
SMART_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 22, 23, 24,
    160, 161, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 173, 174, 175, 176, 177, 178, 179,
    180, 181, 182, 183, 184, 187, 188, 189, 190, 191, 192, 193, 194, 195, 196, 197, 198, 199,
    200, 201, 202, 206, 210, 218, 220, 222, 223, 224, 225, 226, 230, 231, 232, 233, 234, 235,
    240, 241, 242, 244, 245, 246, 247, 248, 250, 251, 252, 254, 255,
)  # fmt: skip

#: Non-SMART columns of the Q1-2024 layout (location columns came with Q4-2023).
META_COLUMNS: tuple[str, ...] = BASE_COLUMNS + KNOWN_EXTRA_COLUMNS

#: The full header, exactly as written.
COLUMNS: tuple[str, ...] = META_COLUMNS + tuple(
    f"smart_{n}_{kind}" for n in SMART_IDS for kind in ("normalized", "raw")
)

_POS = {attr: p for p, attr in enumerate(SMART_IDS)}
Vendor = Literal["seagate", "hgst", "toshiba", "wdc"]
_VENDORS: tuple[str, ...] = ("seagate", "hgst", "toshiba", "wdc")

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

_SEAGATE = (1, 3, 4, 5, 7, 9, 10, 12, 187, 188, 190, 192, 193, 194, 197, 198, 199, 240, 241, 242)
_HGST = (1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 192, 193, 194, 196, 197, 198, 199)
_TOSHIBA = (1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 23, 24, 191, 192, 193, 194, 196, 197, 198, 199,
            220, 222, 223, 224, 226)  # fmt: skip


@dataclass(frozen=True)
class DriveModelProfile:
    """One drive model: identity, share of the fleet, reliability and SMART dialect."""

    name: str
    capacity_bytes: int
    share: float  # relative weight in the fleet (normalized over all models)
    afr: float  # annualized failure rate: failures per drive-year
    attributes: tuple[int, ...]  # SMART ids this model reports (others are empty)
    vendor: Vendor
    temperature_c: float  # typical drive temperature in a pod
    age_hours: tuple[int, int]  # power-on hours on day 0 for drives already in service
    load_cycles_per_hour: tuple[float, float]  # head load/unload rate range (193)
    serial_prefix: str
    deployed: bool = False  # still being bought: new drives joining the fleet are of these models

    def __post_init__(self) -> None:
        unknown = sorted(set(self.attributes) - set(SMART_IDS))
        if unknown:
            raise ValueError(f"{self.name}: attributes {unknown} are not in the Backblaze layout")
        if self.share <= 0 or not 0 <= self.afr < 1 or self.capacity_bytes <= 0:
            raise ValueError(f"{self.name}: share must be > 0, afr in [0, 1), capacity > 0")
        if self.vendor not in _VENDORS:
            raise ValueError(f"{self.name}: vendor must be one of {_VENDORS}")
        if not {5, 9, 194, 197} <= set(self.attributes):
            raise ValueError(f"{self.name}: every model must report 5, 9, 194 and 197")


#: A Q1-2024-like fleet. AFRs are close to Backblaze's quarterly reports (old
#: 4 TB Seagates ~2.5 %, HGST/WDC helium drives ~0.5 %); shares are rounded.
DEFAULT_MODELS: tuple[DriveModelProfile, ...] = (
    DriveModelProfile("ST4000DM000", 4000787030016, 0.10, 0.025, (*_SEAGATE, 183, 184, 189, 191),
                      "seagate", 26.0, (60000, 78000), (0.3, 3.0), "Z30"),
    DriveModelProfile("ST8000NM0055", 8001563222016, 0.10, 0.016, _SEAGATE,
                      "seagate", 29.0, (50000, 62000), (0.05, 0.5), "ZA1"),
    DriveModelProfile("ST12000NM0008", 12000138625024, 0.16, 0.019, (*_SEAGATE, 195),
                      "seagate", 30.0, (30000, 40000), (0.05, 0.5), "ZJV"),
    DriveModelProfile("ST16000NM001G", 16000900661248, 0.16, 0.009, (*_SEAGATE, 18, 200),
                      "seagate", 31.0, (18000, 30000), (0.05, 0.5), "ZL2", deployed=True),
    DriveModelProfile("HGST HMS5C4040BLE640", 4000787030016, 0.10, 0.005, _HGST,
                      "hgst", 28.0, (62000, 80000), (0.005, 0.02), "PL1331LAH"),
    DriveModelProfile("HGST HUH721212ALN604", 12000138625024, 0.10, 0.008, (*_HGST, 22),
                      "hgst", 30.0, (40000, 50000), (0.005, 0.02), "8HG"),
    DriveModelProfile("TOSHIBA MG07ACA14TA", 14000519643136, 0.16, 0.012, _TOSHIBA,
                      "toshiba", 32.0, (25000, 38000), (0.01, 0.05), "", deployed=True),
    DriveModelProfile("WDC WUH721414ALE6L4", 14000519643136, 0.12, 0.005, (*_HGST, 22),
                      "wdc", 31.0, (20000, 30000), (0.005, 0.02), "9JH", deployed=True),
)  # fmt: skip

#: Counters that climb before a failure (Backblaze's critical set).
PRECURSOR_ATTRIBUTES: tuple[int, ...] = (5, 187, 188, 197, 198)

#: Default ``failure_boost``: the default fleet's AFR is ~1.2 %, so 2000 drives x 90 days
#: (~480 drive-years) would see ~6 failures; x6 gives some tens (~34 on average), enough for a demo.
DEFAULT_FAILURE_BOOST = 6.0


@dataclass(frozen=True)
class FleetConfig:
    """Everything that determines a simulated fleet; same config → same bytes."""

    drives: int = 2000  # drives over the whole window (incumbents + joiners)
    days: int = 90
    start: dt.date = dt.date(2024, 1, 1)
    seed: int = 7
    models: tuple[DriveModelProfile, ...] = DEFAULT_MODELS
    failure_boost: float = DEFAULT_FAILURE_BOOST  # multiplies every AFR (small demo fleets)
    silent_failure_share: float = 0.3  # failures with no SMART precursor at all
    precursor_days: tuple[int, int] = (3, 30)  # precursor length range, uniform, inclusive
    missing_day_prob: float = 0.002  # a drive-day has no row (never the failure day)
    empty_field_prob: float = 0.0005  # a reported SMART value is empty (<= 1 per row)
    join_fraction: float = 0.08  # drives (of deployed models) that join after day 0
    retire_fraction: float = 0.02  # drives (of older models) that stop reporting, healthy
    benign_realloc_fraction: float = 0.03  # healthy drives with a small constant smart_5_raw
    benign_crc_fraction: float = 0.01  # drives with a small constant smart_199_raw (cabling)

    def __post_init__(self) -> None:
        if self.drives < 1 or self.days < 1:
            raise ValueError("drives and days must be >= 1")
        if self.drives > 36**5:
            raise ValueError(f"at most {36**5} drives (serial numbers would repeat)")
        if not self.models:
            raise ValueError("at least one drive model is needed")
        if len({m.name for m in self.models}) != len(self.models):
            raise ValueError("model names must be unique")
        if self.failure_boost < 0:
            raise ValueError("failure_boost must be >= 0")
        lo, hi = self.precursor_days
        if not 1 <= lo <= hi:
            raise ValueError("precursor_days must be (lo, hi) with 1 <= lo <= hi")
        for name in (
            "silent_failure_share",
            "missing_day_prob",
            "empty_field_prob",
            "join_fraction",
            "retire_fraction",
            "benign_realloc_fraction",
            "benign_crc_fraction",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")

    @property
    def dates(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=d) for d in range(self.days)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (dates as ISO strings)."""
        out = asdict(self)
        out["start"] = self.start.isoformat()
        return out


# ---------------------------------------------------------------------------
# The plan: every per-drive constant, drawn once from the drive's own stream
# ---------------------------------------------------------------------------

# Column indices into the per-drive statics (uniforms drawn from substream (i, 0)).
(U_MODEL, U_JOINER, U_JOIN_DAY, U_RETIRE, U_RETIRE_DAY, U_FAIL, U_SILENT, U_PREC_LEN, U_AGE,
 U_TEMP, U_TEMP_SD, U_NORM1, U_SEEK_RATE, U_NORM7, U_LOAD_RATE, U_WRITE, U_READ, U_PC,
 U_BENIGN5, U_BENIGN5_N, U_BENIGN199, U_BENIGN199_N, U_189, U_191, U_SPIN_RAW, U_SPIN_NORM,
 U_PERF2, U_PERF8, U_240, U_220, U_226, U_222, U_LBA_FRAC, U_189_N, U_191_N) = range(35)  # fmt: skip
N_STATIC = 40  # reserved width: adding a static later does not shift the daily noise

# Daily noise channels (float32 uniforms from substream (i, 2)).
(C_N1A, C_N1B, C_N2A, C_N2B, C_MISSING, C_BLANK, C_BLANK_POS, C_RAW1, C_POWER, C_JITTER) = range(10)
N_CHANNELS = 10
_BLOCK_DAYS = 16  # daily noise is drawn in blocks; the stream is sequential, so this is free
_POWER_CYCLE_PROB = 0.004  # per drive-day: a few power cycles a year in a data center

# Precursor behaviour per attribute: (participation prob. when not primary,
# median final count, lognormal sigma). Counts are in "events"; Seagate
# reallocates/pends 8 sectors at a time, so its 5/197/198 step by 8.
_PRECURSOR_SHAPE: dict[int, tuple[float, float, float]] = {
    5: (0.6, 20.0, 1.2),
    197: (0.6, 6.0, 1.1),
    187: (0.55, 12.0, 1.2),
    198: (0.45, 4.0, 1.0),
    188: (0.3, 3.0, 0.9),
}
_DATACENTERS = ("sac0", "sac2", "phx1", "iad1", "ams5")
_CLUSTERS = {"sac0": 1, "sac2": 2, "phx1": 3, "iad1": 4, "ams5": 5}


@dataclass
class Precursor:
    """Ground truth of one failing drive's warning signs."""

    start_day: int  # day index (may be < 0: it began before the window)
    attributes: tuple[int, ...]
    values: dict[int, np.ndarray]  # attr -> raw contribution per window day, shape (days,)


@dataclass
class FleetPlan:
    """Per-drive constants of a fleet (arrays indexed by drive), drawn once."""

    config: FleetConfig
    model_idx: np.ndarray
    serials: np.ndarray  # str
    join_day: np.ndarray  # first day index with a row
    end_day: np.ndarray  # exclusive: first day index without a row
    fail_day: np.ndarray  # day index of failure=1, or -1
    retire_day: np.ndarray  # day index it stops reporting while healthy, or -1
    statics: np.ndarray  # (drives, N_STATIC) uniforms
    age_h: np.ndarray  # power-on hours on its first day
    slot: np.ndarray
    pod: np.ndarray
    vault_seq: np.ndarray
    benign5: np.ndarray
    benign199: np.ndarray
    precursors: dict[int, Precursor] = field(default_factory=dict)
    # precursor raw contributions as dense (n_precursor_drives, days) per attribute
    prec_row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prec_values: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def drives(self) -> int:
        return len(self.model_idx)


def _drive_rng(seed: int, drive: int, stream: int) -> np.random.Generator:
    """The substream ``stream`` of drive ``drive``: independent of every other drive."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(drive, stream)))


def _serial_codes(n: int, seed: int) -> list[str]:
    """Unique, random-looking 5-char base-36 codes: a bijection of the drive index."""
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    modulus = 36**5
    offset = int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0] % modulus)
    codes = []
    for i in range(n):
        x = (i * 7_368_787 + offset) % modulus  # 7368787 is coprime with 36: a bijection
        chars = []
        for _ in range(5):
            x, r = divmod(x, 36)
            chars.append(digits[r])
        codes.append("".join(chars))
    return codes


def _serial(profile: DriveModelProfile, code: str) -> str:
    """A serial in the vendor's usual shape (8 chars Seagate/WDC, 14 HGST, 12 Toshiba)."""
    if profile.vendor == "toshiba":
        return f"{code[:4]}0A0{code[4]}F97G"
    return f"{profile.serial_prefix}{code}"


def plan_fleet(config: FleetConfig) -> FleetPlan:
    """Draw every per-drive constant: model, life span, age, workload, precursors."""
    n, days = config.drives, config.days
    models = config.models
    statics = np.empty((n, N_STATIC))
    for i in range(n):
        statics[i] = _drive_rng(config.seed, i, 0).random(N_STATIC)
    u = statics.T

    shares = np.array([m.share for m in models])
    deployed = np.array([m.deployed for m in models])
    if not deployed.any():
        deployed[:] = True
    joiner = (u[U_JOINER] < config.join_fraction) & (days > 1)
    cum_all = np.cumsum(shares) / shares.sum()
    cum_new = np.cumsum(np.where(deployed, shares, 0.0)) / shares[deployed].sum()
    model_idx = np.where(
        joiner,
        np.searchsorted(cum_new, u[U_MODEL], side="right"),
        np.searchsorted(cum_all, u[U_MODEL], side="right"),
    ).clip(0, len(models) - 1)
    join_day = np.where(joiner, 1 + np.floor(u[U_JOIN_DAY] * max(days - 1, 1)), 0).astype(np.int64)

    # Retirements: older (non-deployed) models are migrated away; fall back to all.
    old = ~deployed[model_idx] if (~deployed).any() else np.ones(n, bool)
    old_share = max(old.mean(), 1e-9)
    retire_p = min(1.0, config.retire_fraction / old_share)
    can_retire = old & ~joiner & (u[U_RETIRE] < retire_p) & (days > 1)
    retire_day = np.where(can_retire, 1 + np.floor(u[U_RETIRE_DAY] * max(days - 1, 1)), -1)
    retire_day = retire_day.astype(np.int64)

    # Failures: constant hazard AFR * boost per drive-year from the drive's first day.
    afr = np.array([m.afr for m in models])[model_idx] * config.failure_boost
    rate = afr / 365.0
    with np.errstate(divide="ignore"):
        offset = np.where(rate > 0, -np.log1p(-u[U_FAIL]) / np.maximum(rate, 1e-300), np.inf)
    fail_at = join_day + np.floor(np.minimum(offset, 10 * days + 10)).astype(np.int64)
    horizon = np.where(retire_day >= 0, retire_day, days)
    fails = fail_at < horizon
    fail_day = np.where(fails, fail_at, -1)
    retire_day = np.where(fails, -1, retire_day)
    end_day = np.where(fails, fail_day + 1, np.where(retire_day >= 0, retire_day, days))

    # Age, location.
    age_lo = np.array([m.age_hours[0] for m in models])[model_idx]
    age_hi = np.array([m.age_hours[1] for m in models])[model_idx]
    age_h = np.where(joiner, np.floor(u[U_AGE] * 300), age_lo + np.floor(u[U_AGE] * (age_hi - age_lo)))
    idx = np.arange(n)
    slot, pod_seq = idx % 60, idx // 60
    vault_seq = pod_seq // 20

    # Benign constant counters: false-alarm fodder for the "raw > 0" rule.
    seagate = np.array([m.vendor == "seagate" for m in models])[model_idx]
    unit = np.where(seagate, 8, 1)
    benign5 = np.where(
        u[U_BENIGN5] < config.benign_realloc_fraction,
        unit * (1 + np.floor(u[U_BENIGN5_N] * np.where(seagate, 3, 6))),
        0,
    ).astype(np.int64)
    benign199 = np.where(
        u[U_BENIGN199] < config.benign_crc_fraction, 1 + np.floor(u[U_BENIGN199_N] * 20), 0
    ).astype(np.int64)

    codes = _serial_codes(n, config.seed)
    serials = np.array([_serial(models[m], c) for m, c in zip(model_idx, codes, strict=True)])

    plan = FleetPlan(
        config=config,
        model_idx=model_idx.astype(np.int64),
        serials=serials,
        join_day=join_day,
        end_day=end_day.astype(np.int64),
        fail_day=fail_day.astype(np.int64),
        retire_day=retire_day,
        statics=statics,
        age_h=age_h.astype(np.int64),
        slot=slot,
        pod=pod_seq % 20,
        vault_seq=vault_seq,
        benign5=benign5,
        benign199=benign199,
    )
    _plan_precursors(plan, u)
    return plan


def _plan_precursors(plan: FleetPlan, u: np.ndarray) -> None:
    """Give failing, non-silent drives accelerating counter walks before the failure day."""
    config, days = plan.config, plan.config.days
    lo, hi = config.precursor_days
    failing = np.flatnonzero(plan.fail_day >= 0)
    for i in failing:
        if u[U_SILENT, i] < config.silent_failure_share:
            continue
        profile = config.models[plan.model_idx[i]]
        f = int(plan.fail_day[i])
        length = lo + int(u[U_PREC_LEN, i] * (hi - lo + 1))
        if plan.join_day[i] > 0:  # a new drive cannot warn before it exists
            length = min(length, f - int(plan.join_day[i]))
        if length < 1:
            continue
        start = f - length
        rng = _drive_rng(config.seed, int(i), 1)
        primary = 5 if rng.random() < 0.6 else 197
        attrs = [primary]
        for attr in (197 if primary == 5 else 5, 187, 198, 188):
            take = rng.random() < _PRECURSOR_SHAPE[attr][0]
            if take and attr in profile.attributes:
                attrs.append(attr)
        values: dict[int, np.ndarray] = {}
        for attr in attrs:
            onset = 0 if attr == primary else int(rng.random() * length * 0.8)
            steps = length - onset + 1  # through the failure day
            _, median, sigma = _PRECURSOR_SHAPE[attr]
            total = max(1.0, math.exp(math.log(median) + sigma * rng.standard_normal()))
            accel = rng.uniform(1.5, 4.5)
            weight = np.exp(accel * np.arange(steps) / steps)
            inc = rng.poisson(total * weight / weight.sum())
            inc[0] = max(int(inc[0]), 1)  # the walk is visible from its first day
            step = 8 if profile.vendor == "seagate" and attr in (5, 197, 198) else 1
            walk = np.cumsum(inc) * step
            series = np.zeros(days, np.int64)
            first = start + onset
            window_days = np.arange(first, first + steps)
            inside = (window_days >= 0) & (window_days < days)
            series[window_days[inside]] = walk[inside]
            values[attr] = series
        plan.precursors[int(i)] = Precursor(start_day=start, attributes=tuple(sorted(attrs)), values=values)

    rows = sorted(plan.precursors)
    plan.prec_row = np.full(plan.drives, -1, np.int64)
    plan.prec_row[rows] = np.arange(len(rows))
    for attr in PRECURSOR_ATTRIBUTES:
        dense = np.zeros((len(rows), days), np.int64)
        for r, i in enumerate(rows):
            series = plan.precursors[i].values.get(attr)
            if series is not None:
                dense[r] = series
        plan.prec_values[attr] = dense


# ---------------------------------------------------------------------------
# Daily state and noise
# ---------------------------------------------------------------------------


@dataclass
class DayNoise:
    """One day's random inputs for every drive (derived from the daily uniforms)."""

    z_temp: np.ndarray
    z_work: np.ndarray
    z_load: np.ndarray
    z_seek: np.ndarray
    missing: np.ndarray  # uniforms
    blank: np.ndarray
    blank_pos: np.ndarray
    raw1: np.ndarray
    power: np.ndarray
    jitter: np.ndarray

    @classmethod
    def from_uniforms(cls, block: np.ndarray) -> DayNoise:
        """``block`` is (drives, N_CHANNELS) float32 uniforms; Box-Muller gives the normals."""
        u = block.astype(np.float64).T
        r1 = np.sqrt(-2.0 * np.log1p(-u[C_N1A]))
        r2 = np.sqrt(-2.0 * np.log1p(-u[C_N2A]))
        return cls(
            z_temp=r1 * np.cos(2 * np.pi * u[C_N1B]),
            z_work=r1 * np.sin(2 * np.pi * u[C_N1B]),
            z_load=r2 * np.cos(2 * np.pi * u[C_N2B]),
            z_seek=r2 * np.sin(2 * np.pi * u[C_N2B]),
            missing=u[C_MISSING],
            blank=u[C_BLANK],
            blank_pos=u[C_BLANK_POS],
            raw1=u[C_RAW1],
            power=u[C_POWER],
            jitter=u[C_JITTER],
        )


@dataclass
class Counters:
    """Cumulative per-drive counters, advanced day by day."""

    power_cycles: np.ndarray
    load_cycles: np.ndarray
    seeks: np.ndarray
    lba_written: np.ndarray
    lba_read: np.ndarray


def _rates(plan: FleetPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-hour load-cycle, seek, write and read rates (log-uniform workloads)."""
    u = plan.statics.T
    models = plan.config.models
    lc_lo = np.array([m.load_cycles_per_hour[0] for m in models])[plan.model_idx]
    lc_hi = np.array([m.load_cycles_per_hour[1] for m in models])[plan.model_idx]
    load = lc_lo * (lc_hi / lc_lo) ** u[U_LOAD_RATE]
    seek = 2e4 * 5.0 ** u[U_SEEK_RATE]
    write = 5e5 * 20.0 ** u[U_WRITE]  # LBAs/hour: ~6 GB to ~120 GB a day
    read = 8e5 * 20.0 ** u[U_READ]
    return load, seek, write, read


def initial_counters(plan: FleetPlan) -> Counters:
    """Counters on each drive's first day, consistent with its age."""
    u = plan.statics.T
    load, seek, write, read = _rates(plan)
    hours = plan.age_h.astype(np.float64)
    frac = 0.6 + 0.4 * u[U_LBA_FRAC]
    return Counters(
        power_cycles=(2 + np.floor(u[U_PC] * (2 + hours / 8760 * 3))).astype(np.int64),
        load_cycles=np.floor(hours * load),
        seeks=np.floor(hours * seek),
        lba_written=np.floor(hours * write * frac),
        lba_read=np.floor(hours * read * frac),
    )


def advance_counters(plan: FleetPlan, counters: Counters, day: int, noise: DayNoise) -> Counters:
    """Counters of ``day`` from those of ``day - 1``; a drive runs even when it skips a report."""
    load, seek, write, read = _rates(plan)
    running = (plan.join_day < day).astype(np.float64)
    return Counters(
        power_cycles=counters.power_cycles + ((noise.power < _POWER_CYCLE_PROB) & (running > 0)),
        load_cycles=counters.load_cycles
        + running * np.floor(24 * load * np.maximum(0, 1 + 0.3 * noise.z_load)),
        seeks=counters.seeks + running * np.floor(24 * seek * np.maximum(0, 1 + 0.2 * noise.z_seek)),
        lba_written=counters.lba_written
        + running * np.floor(24 * write * np.maximum(0, 1 + 0.3 * noise.z_work)),
        lba_read=counters.lba_read + running * np.floor(24 * read * np.maximum(0, 1 + 0.3 * noise.z_work)),
    )


def _seasonal(day: dt.date) -> float:
    """Slight yearly drift of intake air: warmest in late summer (+/-1.5 degC)."""
    return 1.5 * math.sin(2 * math.pi * (day.timetuple().tm_yday - 130) / 365.0)


# ---------------------------------------------------------------------------
# One day: the pure core
# ---------------------------------------------------------------------------


def _report_matrix(models: tuple[DriveModelProfile, ...]) -> np.ndarray:
    out = np.zeros((len(models), len(SMART_IDS)), bool)
    for m, profile in enumerate(models):
        out[m, [_POS[a] for a in profile.attributes]] = True
    return out


def _clip_norm(values: np.ndarray, lo: int = 1, hi: int = 253) -> np.ndarray:
    return np.clip(np.rint(values), lo, hi).astype(np.int64)


@dataclass
class _DayDrives:
    """The drives that report on one day and what every attribute derives from."""

    idx: np.ndarray  # drive indices present today
    m: np.ndarray  # their model indices
    u: np.ndarray  # their static uniforms, (U_*, k)
    seagate: np.ndarray
    hgst_like: np.ndarray
    hours: np.ndarray
    temp: np.ndarray
    power_cycles: np.ndarray
    load_cycles: np.ndarray
    zeros: np.ndarray
    hundred: np.ndarray

    @property
    def k(self) -> int:
        return int(self.idx.size)


_Attributes = tuple[dict[int, np.ndarray], dict[int, np.ndarray]]  # raw, normalized by SMART id


def _present_drives(plan: FleetPlan, day: int, noise: DayNoise) -> np.ndarray:
    """Indices of drives in service today that do not skip the report (a failing drive always reports)."""
    config = plan.config
    skip = (noise.missing < config.missing_day_prob) & (plan.fail_day != day)
    present = (plan.join_day <= day) & (day < plan.end_day) & ~skip
    return np.flatnonzero(present)


def _day_drives(plan: FleetPlan, day: int, counters: Counters, noise: DayNoise) -> _DayDrives:
    """Per-drive inputs of the day: vendor family, power-on hours, temperature, cycle counters."""
    models = plan.config.models
    date = plan.config.start + dt.timedelta(days=day)
    idx = _present_drives(plan, day, noise)
    k = idx.size
    m = plan.model_idx[idx]
    u = plan.statics[idx].T
    vendor = np.array([_VENDORS.index(p.vendor) for p in models])[m]
    seagate, hgst_like = vendor == 0, (vendor == 1) | (vendor == 3)

    hours = plan.age_h[idx] + 24 * (day - plan.join_day[idx])
    temp_base = np.array([p.temperature_c for p in models])[m] + (u[U_TEMP] - 0.5) * 6
    temp_base += (plan.slot[idx] % 15) / 14.0 * 2.0 - 1.0  # back of the pod runs warmer
    temp = np.rint(temp_base + _seasonal(date) + (0.6 + 0.9 * u[U_TEMP_SD]) * noise.z_temp[idx])
    temp = np.clip(temp, 14, 60).astype(np.int64)
    return _DayDrives(
        idx=idx, m=m, u=u, seagate=seagate, hgst_like=hgst_like, hours=hours, temp=temp,
        power_cycles=counters.power_cycles[idx], load_cycles=counters.load_cycles[idx].astype(np.int64),
        zeros=np.zeros(k, np.int64), hundred=np.full(k, 100, np.int64),
    )


def _error_counters(plan: FleetPlan, day: int, d: _DayDrives) -> dict[int, np.ndarray]:
    """Error counters: benign constants + the precursor walks of drives heading for failure."""
    prec = plan.prec_row[d.idx]
    has_prec = np.flatnonzero(prec >= 0)
    err: dict[int, np.ndarray] = {}
    for attr in PRECURSOR_ATTRIBUTES:
        values = d.zeros.copy()
        if has_prec.size:
            values[has_prec] = plan.prec_values[attr][prec[has_prec], day]
        err[attr] = values
    err[5] = err[5] + plan.benign5[d.idx]
    return err


def _vendor_attributes(d: _DayDrives, counters: Counters, noise: DayNoise, raw1: np.ndarray) -> _Attributes:
    """Attributes whose raw/normalized encoding depends on the vendor (1, 2, 3, 7, 8)."""
    u, seagate, hgst_like = d.u, d.seagate, d.hgst_like
    raw: dict[int, np.ndarray] = {}
    norm: dict[int, np.ndarray] = {}
    norm1_base = 70 + np.floor(u[U_NORM1] * 15)
    raw[1] = np.where(seagate, raw1, 0)
    norm[1] = np.where(seagate, norm1_base + (noise.jitter[d.idx] < 0.3), 100).astype(np.int64)
    raw[2] = np.where(hgst_like, 96 + np.floor(u[U_PERF2] * 16), 0).astype(np.int64)
    norm[2] = np.where(hgst_like, 128 + np.floor(u[U_PERF2] * 12), 100).astype(np.int64)
    raw[3] = np.select(
        [seagate, hgst_like], [0, 250 + np.floor(u[U_SPIN_RAW] * 200)], 7000 + np.floor(u[U_SPIN_RAW] * 2000)
    ).astype(np.int64)
    norm[3] = np.select(
        [seagate, hgst_like], [90 + np.floor(u[U_SPIN_NORM] * 10), 130 + np.floor(u[U_SPIN_NORM] * 30)], 100
    ).astype(np.int64)
    raw[7] = np.where(seagate, counters.seeks[d.idx], 0).astype(np.int64)
    norm[7] = np.where(seagate, 60 + np.floor(u[U_NORM7] * 30), 100).astype(np.int64)
    raw[8] = np.where(hgst_like, 18 + np.floor(u[U_PERF8] * 26), 0).astype(np.int64)
    norm[8] = np.where(hgst_like, 118 + np.floor(u[U_PERF8] * 20), 100).astype(np.int64)
    return raw, norm


def _error_attributes(d: _DayDrives, err: dict[int, np.ndarray], crc: np.ndarray) -> _Attributes:
    """Reallocation, pending, uncorrectable and CRC counters (5, 187, 188, 196-199)."""
    raw: dict[int, np.ndarray] = {}
    norm: dict[int, np.ndarray] = {}
    raw[5] = err[5]
    norm[5] = _clip_norm(100 - err[5] / np.where(d.seagate, 64, 24))
    raw[187] = err[187]
    norm[187] = _clip_norm(100 - err[187], 1, 100)
    raw[188] = err[188]
    norm[188] = _clip_norm(100 - err[188], 1, 100)
    raw[196] = np.where(err[5] > 0, (err[5] + 1) // 2, 0)
    norm[196] = norm[5]
    raw[197] = err[197]
    norm[197] = _clip_norm(100 - err[197] / 16, 1, 100)
    raw[198] = err[198]
    norm[198] = _clip_norm(100 - err[198] / 16, 1, 100)
    raw[199], norm[199] = crc, np.full(d.k, 200, np.int64)
    return raw, norm


def _usage_attributes(d: _DayDrives, counters: Counters) -> _Attributes:
    """Hours, cycles, temperature and workload counters (4, 9, 12, 190-194, 220-242)."""
    u, hours, power_cycles, load_cycles, temp, hundred = (
        d.u, d.hours, d.power_cycles, d.load_cycles, d.temp, d.hundred
    )
    raw: dict[int, np.ndarray] = {}
    norm: dict[int, np.ndarray] = {}
    raw[4] = power_cycles + np.where(d.seagate, 0, 1)
    norm[4] = hundred
    raw[9] = hours
    norm[9] = _clip_norm(100 - hours / np.where(d.hgst_like, 8000, 876), 1, 100)
    raw[12], norm[12] = power_cycles, hundred
    raw189 = np.where(u[U_189] < 0.15, 1 + np.floor(u[U_189_N] * 60), 0).astype(np.int64)
    raw[189], norm[189] = raw189, _clip_norm(100 - raw189, 1, 100)
    raw[190] = temp
    norm[190] = 100 - temp
    raw[191] = np.floor(u[U_191] * u[U_191_N] * 120).astype(np.int64)
    norm[191] = hundred
    raw[192] = power_cycles + np.floor(u[U_PC] * 40).astype(np.int64) + np.where(d.seagate, 0, 200)
    norm[192] = hundred
    raw[193] = load_cycles
    norm[193] = _clip_norm(100 - load_cycles / 6000, 1, 100)
    raw[194] = temp
    norm[194] = np.select([d.seagate, d.hgst_like], [temp, _clip_norm(6000 / temp)], 100).astype(np.int64)
    raw[220] = np.floor(u[U_220] * 3e5).astype(np.int64)
    norm[220] = hundred
    raw[222] = np.maximum(hours - np.floor(u[U_222] * 500).astype(np.int64), 0)
    norm[222] = _clip_norm(100 - hours / 1000, 1, 100)
    raw[226] = (500 + np.floor(u[U_226] * 150)).astype(np.int64)
    norm[226] = hundred
    raw[240] = np.floor(hours * (0.93 + 0.06 * u[U_240])).astype(np.int64)
    norm[240] = hundred
    raw[241] = counters.lba_written[d.idx].astype(np.int64)
    norm[241] = hundred
    raw[242] = counters.lba_read[d.idx].astype(np.int64)
    norm[242] = hundred
    return raw, norm


def _constant_attributes(d: _DayDrives) -> _Attributes:
    """Attributes that stay at their factory values on a simulated drive."""
    raw = {a: d.zeros for a in (10, 18, 23, 24, 183, 184, 200, 223, 224)}
    norm = {a: d.hundred for a in raw}
    raw[22], norm[22] = d.hundred, d.hundred
    return raw, norm


def _smart_attributes(plan: FleetPlan, day: int, d: _DayDrives, counters: Counters, noise: DayNoise) -> _Attributes:
    """Raw and normalized values of every simulated SMART attribute, by id."""
    err = _error_counters(plan, day, d)
    crc = plan.benign199[d.idx]
    raw1 = np.floor(noise.raw1[d.idx] * 2.4e8).astype(np.int64)
    raw: dict[int, np.ndarray] = {}
    norm: dict[int, np.ndarray] = {}
    for part_raw, part_norm in (
        _vendor_attributes(d, counters, noise, raw1),
        _error_attributes(d, err, crc),
        _usage_attributes(d, counters),
        _constant_attributes(d),
    ):
        raw.update(part_raw)
        norm.update(part_norm)
    raw[195], norm[195] = raw1, norm[1]
    return raw, norm


def _reported_cells(
    config: FleetConfig, d: _DayDrives, noise: DayNoise, raw: dict[int, np.ndarray], norm: dict[int, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid), both (2 * SMART columns, k): what each model reports, minus the odd empty field."""
    models = config.models
    m, idx, k = d.m, d.idx, d.k
    n_smart = 2 * len(SMART_IDS)
    report = _report_matrix(models)
    values = np.zeros((n_smart, k), np.int64)
    valid = np.zeros((n_smart, k), bool)
    for attr in raw:
        p = _POS[attr]
        values[2 * p], values[2 * p + 1] = norm[attr], raw[attr]
        valid[2 * p] = valid[2 * p + 1] = report[m, p]
    reported_cols = [np.flatnonzero(np.repeat(report[j], 2)) for j in range(len(models))]
    n_reported = np.array([c.size for c in reported_cols])[m]
    p_blank = 1.0 - (1.0 - config.empty_field_prob) ** n_reported
    blank_rows = np.flatnonzero(noise.blank[idx] < p_blank)
    if blank_rows.size:
        picks = np.floor(noise.blank_pos[idx][blank_rows] * n_reported[blank_rows]).astype(np.int64)
        padded = np.full((len(models), max(c.size for c in reported_cols)), 0, np.int64)
        for j, cols in enumerate(reported_cols):
            padded[j, : cols.size] = cols
        valid[padded[m[blank_rows], picks], blank_rows] = False
    return values, valid


def _day_table(plan: FleetPlan, day: int, d: _DayDrives, values: np.ndarray, valid: np.ndarray) -> pa.Table:
    """Assemble the Backblaze-layout table: base and location columns, then the SMART pairs."""
    config = plan.config
    models = config.models
    idx, m, k = d.idx, d.m, d.k
    date = config.start + dt.timedelta(days=day)
    loc_dc = (plan.vault_seq[idx] * 3 + config.seed) % len(_DATACENTERS)
    dc_names = np.array(_DATACENTERS)[loc_dc]
    arrays: list[pa.Array] = [
        pa.array(np.full(k, np.datetime64(date, "D"))),
        pa.array(plan.serials[idx]),
        pa.array(np.array([p.name for p in models])[m]),
        pa.array(np.array([p.capacity_bytes for p in models], np.int64)[m]),
        pa.array((plan.fail_day[idx] == day).astype(np.int64)),
        pa.array(dc_names),
        pa.array(np.array([_CLUSTERS[name] for name in _DATACENTERS], np.int64)[loc_dc]),
        pa.array(1000 + plan.vault_seq[idx]),
        pa.array(plan.pod[idx]),
        pa.array(plan.slot[idx]),
        pa.array(d.zeros),
    ]
    any_valid = valid.any(axis=1)
    for j in range(values.shape[0]):
        if any_valid[j]:
            arrays.append(pa.array(values[j], mask=~valid[j]))
        else:
            arrays.append(pa.nulls(k, pa.int64()))
    return pa.Table.from_arrays(arrays, names=list(COLUMNS))


def simulate_day(plan: FleetPlan, day: int, counters: Counters, noise: DayNoise) -> pa.Table:
    """Rows of day index ``day`` in the Backblaze layout (drive index order)."""
    drives = _day_drives(plan, day, counters, noise)
    raw, norm = _smart_attributes(plan, day, drives, counters, noise)
    values, valid = _reported_cells(plan.config, drives, noise, raw, norm)
    return _day_table(plan, day, drives, values, valid)


# ---------------------------------------------------------------------------
# The generator and the I/O edge
# ---------------------------------------------------------------------------


def simulate_plan(plan: FleetPlan) -> Iterator[tuple[dt.date, pa.Table]]:
    """Yield ``(date, table)`` for each day of a planned fleet, in order."""
    config = plan.config
    gens = [_drive_rng(config.seed, i, 2) for i in range(plan.drives)]
    counters = initial_counters(plan)
    block = np.zeros((0, plan.drives, N_CHANNELS), np.float32)
    for day in range(config.days):
        if day % _BLOCK_DAYS == 0:
            length = min(_BLOCK_DAYS, config.days - day)
            block = np.stack([g.random((length, N_CHANNELS), dtype=np.float32) for g in gens], axis=1)
        noise = DayNoise.from_uniforms(block[day % _BLOCK_DAYS])
        if day > 0:
            counters = advance_counters(plan, counters, day, noise)
        yield config.start + dt.timedelta(days=day), simulate_day(plan, day, counters, noise)


def simulate(config: FleetConfig) -> Iterator[tuple[dt.date, pa.Table]]:
    """Yield ``(date, pyarrow.Table)`` per simulated day in the Q1-2024 layout."""
    yield from simulate_plan(plan_fleet(config))


def ground_truth(plan: FleetPlan) -> dict[str, Any]:
    """What really happened: failures (and their precursors), retirements, per-model counts."""
    config = plan.config
    models = config.models

    def iso(day: int) -> str:
        return (config.start + dt.timedelta(days=int(day))).isoformat()

    failures: dict[str, Any] = {}
    for i in np.flatnonzero(plan.fail_day >= 0):
        prec = plan.precursors.get(int(i))
        failures[str(plan.serials[i])] = {
            "model": models[plan.model_idx[i]].name,
            "first_date": iso(plan.join_day[i]),
            "failure_date": iso(plan.fail_day[i]),
            "precursor": prec is not None,
            "precursor_start": iso(prec.start_day) if prec else None,
            "precursor_days": int(plan.fail_day[i] - prec.start_day) if prec else None,
            "precursor_attributes": list(prec.attributes) if prec else [],
        }
    retired = {
        str(plan.serials[i]): iso(plan.retire_day[i] - 1) for i in np.flatnonzero(plan.retire_day >= 0)
    }
    per_model: dict[str, Any] = {}
    for j, profile in enumerate(models):
        mine = plan.model_idx == j
        per_model[profile.name] = {
            "capacity_bytes": profile.capacity_bytes,
            "drives": int(mine.sum()),
            "joined": int((mine & (plan.join_day > 0)).sum()),
            "failures": int((mine & (plan.fail_day >= 0)).sum()),
            "retired": int((mine & (plan.retire_day >= 0)).sum()),
        }
    with_prec = sum(1 for f in failures.values() if f["precursor"])
    return {
        "generator": "diskwatch training/synth.py — SIMULATED data, not real Backblaze data",
        "start": config.start.isoformat(),
        "end": iso(config.days - 1),
        "counts": {
            "drives": plan.drives,
            "joined": int((plan.join_day > 0).sum()),
            "retired": len(retired),
            "failures": len(failures),
            "failures_with_precursor": with_prec,
            "failures_silent": len(failures) - with_prec,
        },
        "models": per_model,
        "failures": dict(sorted(failures.items())),
        "retired": dict(sorted(retired.items())),
        "config": config.to_dict(),
    }


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_fleet` wrote."""

    drives: int
    days: int
    rows: int
    failures: int
    failures_with_precursor: int
    files: tuple[Path, ...]  # the daily CSVs, in date order (fleet.json not included)


_DAY_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}\.csv(\.gz)?$")


def _prepare_out_dir(out_dir: Path, keep: set[str]) -> None:
    """Create ``out_dir``; clear stale day files of an earlier simulation, refuse foreign ones."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out_dir.iterdir() if _DAY_FILE.match(p.name) and p.name not in keep]
    if not stale:
        return
    if not (out_dir / "fleet.json").exists():
        raise FileExistsError(
            f"{out_dir} holds daily CSVs not written by the simulator (e.g. {stale[0].name}); "
            "choose an empty folder"
        )
    for path in stale:
        path.unlink()


def _csv_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    sink.write((",".join(COLUMNS) + "\n").encode())
    options = pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=8192, eol="\n")
    pacsv.write_csv(table, sink, write_options=options)
    return sink.getvalue().to_pybytes()


def write_fleet(
    config: FleetConfig, out_dir: Path | str, *, compress: bool = False, progress: bool = True
) -> SynthSummary:
    """Write one CSV per day plus ``fleet.json`` (ground truth); deterministic bytes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = Path(out_dir)
    suffix = ".csv.gz" if compress else ".csv"
    names = {f"{d.isoformat()}{suffix}" for d in config.dates}
    _prepare_out_dir(out, names)
    plan = plan_fleet(config)
    files: list[Path] = []
    rows = 0

    def emit(date: dt.date, table: pa.Table) -> Path:
        data = _csv_bytes(table)
        if compress:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        path = out / f"{date.isoformat()}{suffix}"
        path.write_bytes(data)
        return path

    # CSV formatting and gzip release the GIL: overlap them with the next day's simulation.
    workers = max(1, min(4, (os.cpu_count() or 1)))
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        Progress(
            TextColumn("[bold]simulating[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
            disable=not progress,
        ) as bar,
    ):
        task = bar.add_task(f"{config.drives} drives", total=config.days)
        pending: deque[Future[Path]] = deque()
        for date, table in simulate_plan(plan):
            rows += table.num_rows
            pending.append(pool.submit(emit, date, table))
            while len(pending) > workers:
                files.append(pending.popleft().result())
                bar.advance(task)
        while pending:
            files.append(pending.popleft().result())
            bar.advance(task)
    truth = ground_truth(plan)
    truth["counts"]["rows"] = rows
    (out / "fleet.json").write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
    counts = truth["counts"]
    return SynthSummary(
        drives=config.drives,
        days=config.days,
        rows=rows,
        failures=counts["failures"],
        failures_with_precursor=counts["failures_with_precursor"],
        files=tuple(files),
    )
