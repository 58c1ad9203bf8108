"""Benchmark: Backblaze dump → window store, against a plain pyarrow CSV read.

Prints one JSON object: rows/s of the whole sequence pipeline (read, clean,
features, windows, shards), rows/s of ``pyarrow.csv.read_csv`` over the same
files in the same run, their ratio (target >= 0.5) and each one's peak RSS
(target < 3 GB for the pipeline). Each side runs in its own subprocess so
peak RSS is its own.

    python tests/benchmarks/bench_sequences.py [--drives 20000] [--days 90] [--data DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = """
import json, resource, sys, time
from diskwatch.training.windowstore import build_store
t = time.perf_counter()
r = build_store(sys.argv[1], sys.argv[2], healthy_fraction=float(sys.argv[3]))
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "rows": r.manifest["read"]["rows_kept"], "windows": r.manifest["builder"]["windows"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PLAIN = """
import json, resource, sys, time
from pathlib import Path
import pyarrow.csv as pacsv
t = time.perf_counter()
rows = 0
for f in sorted(Path(sys.argv[1]).glob("*.csv*")):
    rows += pacsv.read_csv(f).num_rows
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "rows": rows, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drives", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--data", type=Path, help="Existing dump to use instead of simulating one.")
    parser.add_argument("--healthy-fraction", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dw-bench-") as tmp:
        data = args.data
        synth_s = None
        if data is None:
            from diskwatch.training.synth import FleetConfig, write_fleet

            data = Path(tmp) / "dump"
            t = time.perf_counter()
            write_fleet(FleetConfig(drives=args.drives, days=args.days, start=dt.date(2024, 1, 1), seed=1), data,
                        progress=False)
            synth_s = time.perf_counter() - t
        plain = run(PLAIN, str(data))
        pipeline = run(PIPELINE, str(data), str(Path(tmp) / "store"), str(args.healthy_fraction))
        store_mb = sum(f.stat().st_size for f in (Path(tmp) / "store").rglob("*") if f.is_file()) / 2**20
    result = {
        "benchmark": "sequences",
        "data": str(args.data) if args.data else f"simulated {args.drives} drives x {args.days} days",
        "rows": pipeline["rows"],
        "windows_written": pipeline["windows"],
        "healthy_fraction": args.healthy_fraction,
        "pipeline_rows_per_s": round(pipeline["rows"] / pipeline["seconds"]),
        "pyarrow_read_rows_per_s": round(plain["rows"] / plain["seconds"]),
        "ratio": round((pipeline["rows"] / pipeline["seconds"]) / (plain["rows"] / plain["seconds"]), 3),
        "pipeline_peak_rss_mb": round(pipeline["peak_rss_mb"]),
        "pyarrow_peak_rss_mb": round(plain["peak_rss_mb"]),
        "store_mb": round(store_mb, 1),
        "simulate_seconds": None if synth_s is None else round(synth_s, 1),
        "targets": {"ratio": 0.5, "peak_rss_mb": 3072},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
