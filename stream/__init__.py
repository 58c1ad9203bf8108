"""The online path: Kafka consumers that window telemetry in Redis, score it
with a model bundle and publish alerts. Imports ``models``, never ``training``."""
