"""The one feature list and scaling, shared by training and streaming.

A :class:`FeatureSpec` says which SMART columns become model inputs and how:

1. **extract** — read ``smart_N_raw`` / ``smart_N_normalized`` (absent → NaN);
2. **transform** — ``log1p`` for heavy-tailed counters, identity otherwise;
3. **fill** — forward-fill within a serial's window (a missing day repeats the
   last report), then any NaN left (attribute never reported in the window)
   takes the feature's fill value: the training mean (``fill_mode="mean"``),
   or a neutral value (``"neutral"``: the lowest training value of a counter,
   i.e. "nothing counted", the mean otherwise) — a Seagate-dominated mean
   would put a fake signal on every drive of a vendor that never reports 187;
   with ``indicators`` each feature also gets a 0/1 "reported" column, so
   "not reported" stays distinct from any value;
4. **scale** — min-max to [0, 1] with bounds fitted on the *training split
   only* and stored in the bundle; values beyond the training range are kept
   (clipped to ``clip``) because extremes are exactly what we must notice.
   ``scaling="quantile"`` maps each feature through its training quantiles
   instead (piecewise linear, a mass point such as "nothing counted" at its
   lowest level; min-max slope beyond the training range): a rank transform
   robust to the heavy tails min-max squeezes into a corner.

Steps 1–2 run per drive-day (the stream stores their output in Redis); steps
3–4 run per window (:meth:`FeatureSpec.finalize`) on both sides, so training
and serving cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import pyarrow as pa

    from diskwatch.core.records import TelemetryRecord

Kind = Literal["raw", "normalized"]
Transform = Literal["log1p", "identity"]

#: Attributes Backblaze reports as failure predictors (raw > 0 is a warning).
BACKBLAZE_CRITICAL = (5, 187, 188, 197, 198)
#: Knots per feature of ``scaling="quantile"`` (levels 0, 1/(K-1), ..., 1).
QUANTILE_KNOTS = 51
#: Rows of training data sampled to fit the quantiles.
QUANTILE_SAMPLE_ROWS = 400_000


class Feature(BaseModel):
    """One model input: a SMART attribute's raw or normalized value."""

    model_config = ConfigDict(frozen=True)

    attribute: int = Field(ge=1, le=255)
    kind: Kind = "raw"
    transform: Transform = "log1p"
    why: str = ""

    @property
    def name(self) -> str:
        return f"smart_{self.attribute}_{self.kind}"


def _f(attribute: int, transform: Transform, why: str, kind: Kind = "raw") -> Feature:
    return Feature(attribute=attribute, kind=kind, transform=transform, why=why)


#: Default attribute set, from Backblaze's own analyses and the literature
#: (Pinheiro et al. FAST'07; Backblaze "What SMART stats indicate failure",
#: 2014/2016; Aussel et al. 2017; NVIDIA's predictive-maintenance lab).
DEFAULT_FEATURES: tuple[Feature, ...] = (
    _f(5, "log1p", "reallocated sectors: Backblaze's strongest single predictor"),
    _f(187, "log1p", "reported uncorrectable errors (Backblaze critical set)"),
    _f(188, "log1p", "command timeouts (Backblaze critical set)"),
    _f(197, "log1p", "current pending sectors (Backblaze critical set)"),
    _f(198, "log1p", "offline uncorrectable sectors (Backblaze critical set)"),
    _f(1, "log1p", "read error rate (vendor-scaled; rises on failing media)"),
    _f(7, "log1p", "seek error rate (mechanical wear)"),
    _f(183, "log1p", "runtime bad blocks"),
    _f(184, "log1p", "end-to-end errors (controller/cache path)"),
    _f(189, "log1p", "high fly writes (head instability)"),
    _f(199, "log1p", "UDMA CRC errors: cabling/backplane, separates non-media faults"),
    _f(9, "identity", "power-on hours: age, the bathtub curve"),
    _f(194, "identity", "temperature: heat stress and a sensor sanity channel"),
    _f(12, "log1p", "power cycle count"),
    _f(193, "log1p", "load/unload cycles (head parking wear)"),
)


class FeatureSpec(BaseModel):
    """Which columns feed the models and how they are scaled."""

    model_config = ConfigDict(frozen=True)

    features: tuple[Feature, ...] = DEFAULT_FEATURES
    clip: tuple[float, float] = (-1.0, 10.0)
    #: Append one 0/1 "reported" column per feature to the model input (after the values).
    indicators: bool = False
    #: What an attribute the window never reported becomes (see the module docstring).
    fill_mode: Literal["mean", "neutral"] = "mean"
    #: Scaling of step 4: min-max bounds, or the training quantiles (``quantiles``).
    scaling: Literal["minmax", "quantile"] = "minmax"
    #: Fitted on the training split (None until :func:`fit`): per-feature
    #: lower/upper bound of the transformed values and the fill value.
    lower: tuple[float, ...] | None = None
    upper: tuple[float, ...] | None = None
    fill: tuple[float, ...] | None = None
    #: Fitted with ``scaling="quantile"``: per feature, its training quantiles at ``QUANTILE_KNOTS`` levels.
    quantiles: tuple[tuple[float, ...], ...] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        names = [f.name for f in self.features]
        if not names:
            raise ValueError("a feature spec needs at least one feature")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate features in {names}")
        fitted = [self.lower, self.upper, self.fill]
        if any(v is not None for v in fitted) and any(v is None or len(v) != len(names) for v in fitted):
            raise ValueError("lower/upper/fill must all be set, one value per feature")
        if self.scaling == "quantile" and self.lower is not None:
            q = self.quantiles
            if q is None or len(q) != len(names) or any(len(k) < 2 or np.any(np.diff(k) < 0) for k in q):
                raise ValueError("quantile scaling needs non-decreasing quantiles (>= 2 knots) for every feature")
        return self

    # -- description --------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_inputs(self) -> int:
        """Columns of a finalized window: the features, plus their "reported" indicators."""
        return self.n_features * (2 if self.indicators else 1)

    @property
    def input_names(self) -> list[str]:
        return self.names + ([f"{n}_reported" for n in self.names] if self.indicators else [])

    @property
    def is_fitted(self) -> bool:
        return self.lower is not None

    @classmethod
    def from_names(cls, names: Iterable[str]) -> FeatureSpec:
        """Build from column names like ``smart_5_raw`` (log1p for counters)."""
        by_name = {f.name: f for f in DEFAULT_FEATURES}
        features = []
        for name in names:
            if name in by_name:
                features.append(by_name[name])
                continue
            parts = name.split("_")
            if len(parts) != 3 or parts[0] != "smart" or parts[2] not in ("raw", "normalized"):
                raise ValueError(f"feature names look like smart_5_raw, got {name!r}")
            kind: Kind = parts[2]  # type: ignore[assignment]
            transform: Transform = "log1p" if kind == "raw" else "identity"
            features.append(Feature(attribute=int(parts[1]), kind=kind, transform=transform))
        return cls(features=tuple(features))

    def columns(self) -> list[str]:
        """CSV columns the features need (projection for readers)."""
        return self.names

    # -- step 1+2: per drive-day ---------------------------------------------

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Raw feature values ``[..., F]`` (NaN = not reported) → transformed float32."""
        out = np.array(values, dtype=np.float64, copy=True)
        log_cols = [i for i, f in enumerate(self.features) if f.transform == "log1p"]
        if log_cols:
            with np.errstate(invalid="ignore"):
                # Negative raw counters are invalid input; treat them as missing.
                block = out[..., log_cols]
                block[block < 0] = np.nan
                out[..., log_cols] = np.log1p(block)
        return out.astype(np.float32)

    @property
    def wire_columns(self) -> list[tuple[int, str]]:
        """``(attribute, "raw"|"normalized")`` per feature, for :func:`diskwatch.wire.decode_batch`."""
        return [(f.attribute, f.kind) for f in self.features]

    def record_vector(self, record: TelemetryRecord) -> np.ndarray:
        """Transformed float32 ``[F]`` for one record (NaN = not reported)."""
        values = np.full(self.n_features, np.nan, dtype=np.float64)
        for i, feature in enumerate(self.features):
            value = record.smart.get(feature.attribute)
            if value is None:
                continue
            part = value.raw if feature.kind == "raw" else value.normalized
            if part is not None:
                values[i] = float(part)
        return self.transform(values)

    def table_matrix(self, table: pa.Table | Mapping[str, Any]) -> np.ndarray:
        """Transformed float32 ``[rows, F]`` from a pyarrow table of a dump.

        Absent columns are all-NaN: older dumps simply lack newer attributes.
        Columns must already be numeric (the reader coerces bad cells to null).
        """
        n_rows = table.num_rows if hasattr(table, "num_rows") else len(next(iter(table.values())))
        present = set(table.column_names if hasattr(table, "column_names") else table)
        values = np.full((n_rows, self.n_features), np.nan, dtype=np.float64)
        for i, name in enumerate(self.names):
            if name in present:
                values[:, i] = _as_float(table[name])
        return self.transform(values)

    # -- step 3+4: per window -------------------------------------------------

    def finalize(self, windows: np.ndarray) -> np.ndarray:
        """Forward-fill, fill and scale windows ``[N, S, F]`` → model input.

        Pure and vectorised; the stream and the training reader both call it.
        """
        if not self.is_fitted:
            raise RuntimeError("FeatureSpec is not fitted: call fit_scaler() on training data first")
        x = forward_fill(np.asarray(windows, dtype=np.float32))
        missing = np.isnan(x)
        lower = np.asarray(self.lower, dtype=np.float32)
        span = np.asarray(self.upper, dtype=np.float32) - lower
        span[span <= 0] = 1.0
        fill = np.asarray(self.fill, dtype=np.float32)
        x = np.where(missing, fill, x)
        x = self._quantile_scale(x, span) if self.scaling == "quantile" else (x - lower) / span
        x = np.clip(x, self.clip[0], self.clip[1]).astype(np.float32)
        if self.indicators:
            x = np.concatenate([x, (~missing).astype(np.float32)], axis=-1)
        return x

    def _quantile_scale(self, x: np.ndarray, span: np.ndarray) -> np.ndarray:
        """Each feature through its training quantiles to [0, 1]; min-max slope outside the knots."""
        assert self.quantiles is not None
        out = np.empty(x.shape, dtype=np.float32)
        for j, knots in enumerate(self.quantiles):
            xp, fp = _quantile_curve(knots)
            col = x[..., j].astype(np.float64)
            scaled = np.interp(col, xp, fp)
            scaled = np.where(col < xp[0], fp[0] + (col - xp[0]) / span[j], scaled)
            out[..., j] = np.where(col > xp[-1], fp[-1] + (col - xp[-1]) / span[j], scaled)
        return out

    def fitted(self, stats: ScalerStats) -> FeatureSpec:
        """A copy of this spec with scaling fitted from training statistics."""
        lower, upper, fill = stats.bounds()
        if self.fill_mode == "neutral":
            fill = tuple(lo if f.transform == "log1p" else m for f, lo, m in zip(self.features, lower, fill,
                                                                                   strict=True))
        update: dict[str, Any] = {"lower": lower, "upper": upper, "fill": fill}
        if self.scaling == "quantile":
            update["quantiles"] = stats.quantiles(QUANTILE_KNOTS, lower, upper)
        return self.model_copy(update=update)


def _quantile_curve(knots: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Points of the piecewise-linear quantile map: a repeated knot (a mass point such as "nothing
    counted") maps to its lowest level and anything just above it to its highest, so one counted
    sector jumps past every drive that counts none."""
    values, first, counts = np.unique(np.asarray(knots, dtype=np.float64), return_index=True, return_counts=True)
    top = len(knots) - 1
    xp: list[float] = []
    fp: list[float] = []
    for v, f, c in zip(values, first, counts, strict=True):
        xp.append(float(v))
        fp.append(f / top)
        if c > 1:
            xp.append(float(np.nextafter(v, np.inf)))
            fp.append((f + c - 1) / top)
    return np.asarray(xp), np.asarray(fp)


def forward_fill(windows: np.ndarray) -> np.ndarray:
    """Carry the last seen value forward along the time axis (axis -2)."""
    x = np.array(windows, dtype=np.float32, copy=True)
    if x.ndim < 2 or x.shape[-2] == 0:
        return x
    mask = np.isnan(x)
    if not mask.any():
        return x
    steps = x.shape[-2]
    idx = np.where(~mask, np.arange(steps).reshape((steps, 1)), 0)
    np.maximum.accumulate(idx, axis=-2, out=idx)
    filled = np.take_along_axis(x, idx, axis=-2)
    # Positions before the first observation stay NaN (take_along_axis picked
    # step 0, which is NaN there when nothing was seen yet).
    return filled


class ScalerStats:
    """Streaming min/max/mean of transformed features (fits data > memory).

    Bounds use the observed min and max; ``fill`` is the mean. All three are
    computed over the training split's rows only. With ``sample_rate`` > 0 a
    seeded random share of the rows is kept for :meth:`quantiles`.
    """

    def __init__(self, n_features: int, *, sample_rate: float = 0.0, seed: int = 0) -> None:
        self.n = np.zeros(n_features, dtype=np.int64)
        self.total = np.zeros(n_features, dtype=np.float64)
        self.low = np.full(n_features, np.inf)
        self.high = np.full(n_features, -np.inf)
        self.sample_rate = float(sample_rate)
        self._rng = np.random.default_rng(seed)
        self._sample: list[np.ndarray] = []

    def update(self, rows: np.ndarray) -> None:
        """Add transformed rows ``[n, F]`` (NaN ignored)."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, self.n.shape[0])
        if rows.size == 0:
            return
        if self.sample_rate > 0:
            self._sample.append(rows[self._rng.random(rows.shape[0]) < self.sample_rate])
        seen = ~np.isnan(rows)
        self.n += seen.sum(axis=0)
        self.total += np.where(seen, rows, 0.0).sum(axis=0)
        with np.errstate(invalid="ignore"), _quiet_nan_warnings():
            self.low = np.fmin(self.low, np.nanmin(np.where(seen, rows, np.inf), axis=0))
            self.high = np.fmax(self.high, np.nanmax(np.where(seen, rows, -np.inf), axis=0))

    def merge(self, other: ScalerStats) -> ScalerStats:
        self.n += other.n
        self.total += other.total
        self.low = np.fmin(self.low, other.low)
        self.high = np.fmax(self.high, other.high)
        self._sample.extend(other._sample)
        return self

    def quantiles(
        self, knots: int, lower: Sequence[float], upper: Sequence[float]
    ) -> tuple[tuple[float, ...], ...]:
        """Per feature, the sampled rows' quantiles at ``knots`` even levels (never-seen: lower..upper)."""
        sample = np.concatenate(self._sample) if self._sample else np.zeros((0, self.n.shape[0]))
        levels = np.linspace(0.0, 1.0, knots)
        out = []
        for j in range(self.n.shape[0]):
            col = sample[:, j][~np.isnan(sample[:, j])]
            q = np.quantile(col, levels) if col.size else np.linspace(lower[j], upper[j], knots)
            out.append(_floats(np.maximum.accumulate(q)))
        return tuple(out)

    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """(lower, upper, fill) per feature; never-seen features map to 0."""
        seen = self.n > 0
        lower = np.where(seen, self.low, 0.0)
        upper = np.where(seen & (self.high > self.low), self.high, lower + 1.0)
        fill = np.where(seen, self.total / np.maximum(self.n, 1), 0.0)
        return (_floats(lower), _floats(upper), _floats(fill))

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "n": self.n.tolist(),
            "total": self.total.tolist(),
            "low": _floats(self.low),
            "high": _floats(self.high),
        }


class _quiet_nan_warnings:
    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _floats(values: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) if math.isfinite(float(v)) else 0.0 for v in values)


def _as_float(column: Any) -> np.ndarray:
    """pyarrow/numpy column → float64 numpy with nulls as NaN."""
    if hasattr(column, "to_numpy"):
        try:
            import pyarrow as pa
            import pyarrow.compute as pc

            if isinstance(column, (pa.ChunkedArray, pa.Array)):
                return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        except ImportError:  # pragma: no cover - pyarrow is a hard dependency
            pass
        return np.asarray(column.to_numpy(), dtype=np.float64)
    return np.asarray(column, dtype=np.float64)
