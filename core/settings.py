"""One settings object for every diskwatch process.

Values come from (highest first) explicit keyword arguments, ``DISKWATCH_*``
environment variables, an optional env file (``DISKWATCH_ENV_FILE`` or
``.env`` in the working directory) and the defaults below. Secrets are
``SecretStr`` so they never print in logs or ``repr``.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from diskwatch.core.errors import ConfigError

#: Window defaults (S, L, G in days): the one definition settings, the CLI and WindowConfig use.
WINDOW_DAYS, HORIZON_DAYS, MAX_GAP_DAYS = 14, 7, 2


def _env_file() -> str:
    return os.environ.get("DISKWATCH_ENV_FILE", ".env")


class Settings(BaseSettings):
    """Runtime configuration shared by the stream worker, replay and tools."""

    model_config = SettingsConfigDict(
        env_prefix="DISKWATCH_",
        env_file=_env_file(),
        env_file_encoding="utf-8",
        # DISKWATCH_MODEL_BUNDLE= (set but empty, as compose files often leave it)
        # means "not set", not Path("") == the working directory.
        env_ignore_empty=True,
        extra="ignore",
        validate_default=True,
        # A rejected redis_url would otherwise be echoed, password and all, in the
        # ValidationError that a failed start logs.
        hide_input_in_errors=True,
    )

    # --- Kafka -----------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    kafka_security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str | None = Field(None, description="e.g. PLAIN, SCRAM-SHA-512.")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Its private key (PEM); default: inside the certfile.")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Password of an encrypted keyfile.")

    topic_telemetry: str = Field("smart-telemetry", description="Input: one drive-day per message.")
    topic_alerts: str = Field("drive-alerts", description="Output: Alert JSON keyed by serial.")
    topic_dead_letters: str = Field(
        "smart-telemetry-dlq", description="Output: DeadLetter JSON for rejected input."
    )
    topic_partitions: int = Field(
        4, ge=1, le=10_000, description="Partitions of topics diskwatch creates (the most workers that help)."
    )
    topic_replication_factor: int = Field(
        1, ge=1, le=16, description="Replication factor of topics diskwatch creates (3 on a real cluster)."
    )
    consumer_group: str = Field("diskwatch-worker", description="Kafka consumer group / faust app id.")
    kafka_fetch_max_bytes: int = Field(
        16 * 1024**2, ge=64 * 1024, le=1024**3,
        description="Most bytes fetched per partition per request; small fetches stall a busy worker between them.",
    )
    kafka_session_timeout_s: float = Field(
        30.0, ge=6, le=300,
        description="A worker that stops heartbeating (crashed, SIGKILLed) loses its partitions after this long.",
    )

    # --- Redis -----------------------------------------------------------------
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="redis:// or rediss:// URL; may carry a password, so it is kept secret.",
    )
    redis_cluster: bool = Field(False, description="Talk to a Redis Cluster (keys are hash-tagged per serial).")
    redis_key_prefix: str = Field("dw", description="Namespace for every key diskwatch writes.")
    window_ttl_days: float = Field(
        30.0, gt=0, description="Windows of drives silent this long expire from Redis."
    )

    # --- Scoring -------------------------------------------------------------
    # The window (S, L, G) is not a setting: the worker takes it from the bundle, and the
    # training tools from their --window/--horizon/--max-gap options.
    batch_size: int = Field(512, ge=1, le=100_000, description="Records taken per stream batch.")
    batch_linger_s: float = Field(
        0.5, gt=0, le=60, description="Longest wait to fill a batch before scoring it anyway."
    )
    model_bundle: Path | None = Field(
        None, description="Default of `diskwatch worker --model`: directory of a trained model bundle."
    )

    # --- Input rules (see README: rejection codes) --------------------------------
    max_record_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024**2,
        description="Larger messages are dead-lettered unparsed (oversized); a real record is < 2 KB.",
    )
    min_date: dt.date = Field(dt.date(2000, 1, 1), description="Earlier dates are rejected (bad_date).")
    future_skew_days: int = Field(
        2, ge=0, le=365, description="Dates later than the worker's UTC date + this are rejected (future_date)."
    )
    dead_letter_payload_bytes: int = Field(
        8 * 1024, ge=256, le=512 * 1024,
        description="Dead letters keep this much of the message (plus its length and sha256).",
    )

    # --- Batches (stream/batches.py, stream/consumer.py) ---------------------------
    batch_attempts: int = Field(
        3, ge=1, le=100, description="Tries of a batch failing with a non-transient error before it is split."
    )
    stall_timeout_s: float = Field(
        120.0, gt=0, description="/healthz turns unhealthy when there is lag and no batch completed this long."
    )

    # --- Observability ---------------------------------------------------------
    metrics_host: str = Field(
        "127.0.0.1", description="Interface for /metrics and /healthz (0.0.0.0 in containers)."
    )
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics; 0 = off.")
    log_level: str = Field("INFO")

    @field_validator("kafka_security_protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        allowed = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
        upper = value.upper()
        if upper not in allowed:
            raise ValueError(f"must be one of {sorted(allowed)}, got {value!r}")
        return upper

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        entries = [e.strip() for e in value.split(",")]
        if not any(entries):
            raise ValueError("is empty; expected host:port[,host:port...]")
        for entry in entries:
            host, sep, port = entry.rpartition(":")
            if not entry or not sep or not host.strip("[]"):
                raise ValueError(f"expected host:port[,host:port...], got {entry!r}")
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"port of {entry!r} must be a number in 1..65535")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _client_certificate(self) -> Settings:
        if self.kafka_ssl_certfile is None and (self.kafka_ssl_keyfile or self.kafka_ssl_key_password):
            raise ValueError("kafka_ssl_keyfile/kafka_ssl_key_password need kafka_ssl_certfile")
        return self

    @property
    def kafka_url(self) -> str:
        """Broker list in faust's ``kafka://host:port;host:port`` form."""
        hosts = [h.strip() for h in self.kafka_bootstrap_servers.split(",") if h.strip()]
        return ";".join(f"kafka://{h}" for h in hosts)

    def kafka_client_options(self) -> dict[str, Any]:
        """aiokafka client keyword arguments: bootstrap servers and security."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            cafile = str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
            context = ssl.create_default_context(cafile=cafile)
            if self.kafka_ssl_certfile is not None:  # mutual TLS: the broker checks who we are
                password = self.kafka_ssl_key_password
                context.load_cert_chain(
                    str(self.kafka_ssl_certfile),
                    str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
                    password.get_secret_value() if password else None,
                )
            options["ssl_context"] = context
        if self.kafka_security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = (self.kafka_sasl_mechanism or "PLAIN").upper()
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        return options

    def redacted(self) -> dict[str, Any]:
        """Settings as a plain dict that is safe to log (secrets masked)."""
        data = self.model_dump(mode="json")
        data["redis_url"] = redact_url(self.redis_url.get_secret_value())
        for name in ("kafka_sasl_password", "kafka_ssl_key_password"):
            if getattr(self, name) is not None:
                data[name] = "**********"
        return data


def load_settings(**overrides: Any) -> Settings:
    """Settings for a command; a bad value becomes a :class:`ConfigError` naming its variable.

    pydantic's own error is a multi-line report keyed by field name; a user sets
    ``DISKWATCH_*`` variables, so that is the name the one-line message uses.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_settings_error(exc)) from None


def describe_settings_error(exc: ValidationError) -> str:
    """One line per bad value: ``DISKWATCH_NAME: reason`` (inputs never echoed: they may be secret)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error.get("loc") or ()
        reason = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        name = f"DISKWATCH_{str(loc[0]).upper()}" if loc else "settings"
        parts.append(f"{name} {reason}" if reason.startswith("is ") else f"{name}: {reason}")
    return "invalid setting " + "; ".join(parts)


_SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token")


def redact_url(url: str) -> str:
    """Hide the password of ``scheme://user:password@host`` URLs.

    redis-py also takes credentials as query parameters
    (``redis://host/0?password=...``); their values are hidden too.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host: show nothing of it
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        creds, _, host = netloc.rpartition("@")
        user = creds.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in creds else f"***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(any(k in key.lower() for k in _SECRET_QUERY_KEYS) for key, _ in pairs):
            query = urlencode(
                [
                    (key, "***" if any(k in key.lower() for k in _SECRET_QUERY_KEYS) else value)
                    for key, value in pairs
                ],
                safe="*",
            )
    if not parts.scheme:
        return urlunsplit(("", netloc, parts.path, query, parts.fragment))
    # Built by hand: urlunsplit drops the empty host of "unix:///path".
    out = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        out += f"?{query}"
    if parts.fragment:
        out += f"#{parts.fragment}"
    return out
