"""Prometheus metrics of a worker process (served on its web port at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS_IN = Counter("diskwatch_records_in_total", "Telemetry messages consumed.")
INVALID = Counter("diskwatch_records_invalid_total", "Messages sent to the dead-letter topic.", ["reason"])
UNSCORED = Counter(
    "diskwatch_records_unscored_total", "Records left unscored on purpose (e.g. a device type the bundle lacks).",
    ["reason"],
)
DUPLICATES = Counter("diskwatch_records_duplicate_total", "Records whose (serial, date) was already stored.")
WINDOWS_SCORED = Counter("diskwatch_windows_scored_total", "Full windows scored by the models.")
ALERTS_OUT = Counter("diskwatch_alerts_total", "Alerts published.")
BATCH_SIZE = Histogram(
    "diskwatch_batch_size", "Messages per processed batch.", buckets=(1, 8, 32, 128, 512, 1024, 2048, 4096, 8192)
)
INFERENCE_SECONDS = Histogram(
    "diskwatch_inference_seconds", "Model inference time per batch.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REDIS_SECONDS = Histogram(
    "diskwatch_redis_seconds", "Redis round-trip time per pipeline.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
BATCH_SECONDS = Histogram(
    "diskwatch_batch_seconds", "End-to-end time per batch (validate → publish → mark).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAST_BATCH = Gauge(
    "diskwatch_last_batch_timestamp_seconds", "When the last batch was fully applied and committed (Unix time)."
)
CONSUMER_LAG = Gauge("diskwatch_consumer_lag", "Messages behind the partition's high watermark.", ["partition"])
RETRIES = Counter("diskwatch_retries_total", "Retried operations after a Redis or Kafka error.", ["target"])
BUNDLE_INFO = Gauge("diskwatch_bundle_info", "The model bundle in use (value 1).", ["version"])
BATCH_ERRORS = Counter(
    "diskwatch_batch_errors_total", "Batch attempts that failed with a non-transient error (then split)."
)
DEAD_LETTER_FAILURES = Counter(
    "diskwatch_dead_letter_failures_total", "Dead letters the broker refused for good (record skipped, logged)."
)
REBALANCES = Counter("diskwatch_rebalances_total", "Partition revocations this process went through.")
SEEKS = Counter(
    "diskwatch_redis_rewinds_total", "Partitions re-read because Redis had applied less than Kafka committed."
)
