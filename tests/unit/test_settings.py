"""Unit tests of diskwatch.settings: env overrides, validation and secret hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from diskwatch.core.errors import ConfigError, DiskwatchError
from diskwatch.core.settings import Settings, load_settings, redact_url

SECRET_URL = "redis://user:s3cret@host:6379/0"
SASL_SECRET = "sasl-Pa55word"


@pytest.fixture(autouse=True)
def _isolated(isolated_settings_env: None) -> None:
    """Every test here sees no outer DISKWATCH_* and no stray .env."""


def make(**kwargs: object) -> Settings:
    return Settings(_env_file=None, **kwargs)  # type: ignore[call-arg]


def test_defaults() -> None:
    s = make()
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert s.kafka_sasl_password is None
    assert s.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert s.batch_size == 512 and s.window_ttl_days == 30
    assert s.model_bundle is None
    assert s.kafka_url == "kafka://127.0.0.1:9092"


def test_env_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISKWATCH_KAFKA_BOOTSTRAP_SERVERS", "k1:9092, k2:9093")
    monkeypatch.setenv("DISKWATCH_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("DISKWATCH_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("DISKWATCH_KAFKA_SASL_USERNAME", "dw")
    monkeypatch.setenv("DISKWATCH_KAFKA_SASL_PASSWORD", SASL_SECRET)
    monkeypatch.setenv("DISKWATCH_REDIS_URL", SECRET_URL)
    monkeypatch.setenv("DISKWATCH_TOPIC_TELEMETRY", "t-in")
    monkeypatch.setenv("DISKWATCH_BATCH_SIZE", "30")
    monkeypatch.setenv("DISKWATCH_TOPIC_PARTITIONS", "10")
    monkeypatch.setenv("DISKWATCH_BATCH_LINGER_S", "0.25")
    monkeypatch.setenv("DISKWATCH_MODEL_BUNDLE", "/models/v3")
    monkeypatch.setenv("DISKWATCH_METRICS_PORT", "0")
    s = make()
    assert s.kafka_bootstrap_servers == "k1:9092, k2:9093"
    assert s.kafka_url == "kafka://k1:9092;kafka://k2:9093"
    assert s.kafka_security_protocol == "SASL_SSL"  # normalised to upper case
    assert s.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert s.kafka_sasl_password is not None
    assert s.kafka_sasl_password.get_secret_value() == SASL_SECRET
    assert s.redis_url.get_secret_value() == SECRET_URL
    assert s.topic_telemetry == "t-in"
    assert (s.batch_size, s.topic_partitions, s.batch_linger_s, s.metrics_port) == (30, 10, 0.25, 0)
    assert s.model_bundle == Path("/models/v3")


def test_env_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("diskwatch_batch_size", "21")
    assert make().batch_size == 21


def test_keyword_arguments_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISKWATCH_BATCH_SIZE", "30")
    assert make(batch_size=20).batch_size == 20


def test_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "diskwatch.env"
    env_file.write_text("DISKWATCH_BATCH_SIZE=28\nDISKWATCH_TOPIC_ALERTS=a-out\n")
    monkeypatch.setenv("DISKWATCH_TOPIC_ALERTS", "from-env")  # env vars beat the file
    s = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert s.batch_size == 28
    assert s.topic_alerts == "from-env"


def test_empty_env_value_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. compose's DISKWATCH_MODEL_BUNDLE=${MODEL_BUNDLE} with MODEL_BUNDLE unset
    monkeypatch.setenv("DISKWATCH_MODEL_BUNDLE", "")
    monkeypatch.setenv("DISKWATCH_KAFKA_SASL_MECHANISM", "")
    monkeypatch.setenv("DISKWATCH_BATCH_SIZE", "")
    s = make()
    assert s.model_bundle is None  # not Path("") == the working directory
    assert s.kafka_sasl_mechanism is None
    assert s.batch_size == 512


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DISKWATCH_BATCH_SIZE", "100001"),
        ("DISKWATCH_BATCH_SIZE", "a few"),
        ("DISKWATCH_TOPIC_PARTITIONS", "0"),
        ("DISKWATCH_KAFKA_SECURITY_PROTOCOL", "FOO"),
        ("DISKWATCH_REDIS_URL", "http://x"),
        ("DISKWATCH_REDIS_URL", "127.0.0.1:6379"),
        ("DISKWATCH_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:abc"),
        ("DISKWATCH_BATCH_SIZE", "0"),
        ("DISKWATCH_BATCH_LINGER_S", "0"),
        ("DISKWATCH_METRICS_PORT", "70000"),
        ("DISKWATCH_WINDOW_TTL_DAYS", "-1"),
        ("DISKWATCH_KAFKA_BOOTSTRAP_SERVERS", "kafka"),  # no port
        ("DISKWATCH_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:99999"),
    ],
)
def test_bad_env_values_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        make()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"kafka_security_protocol": "FOO"},
        {"redis_url": "http://x"},
        {"kafka_bootstrap_servers": "k1:9092,,"},
    ],
)
def test_bad_keyword_values_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        make(**kwargs)


def test_bad_value_error_does_not_echo_redis_secret() -> None:
    with pytest.raises(ValidationError) as info:
        make(redis_url="http://user:s3cret@host")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h:6380/1", "unix:///run/redis.sock"])
def test_accepted_redis_schemes(url: str) -> None:
    assert make(redis_url=url).redis_url.get_secret_value() == url


def secret_settings() -> Settings:
    return make(
        redis_url=SECRET_URL,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="dw",
        kafka_sasl_password=SASL_SECRET,
    )


def test_redacted_hides_secrets() -> None:
    data = secret_settings().redacted()
    text = json.dumps(data)
    assert "s3cret" not in text
    assert SASL_SECRET not in text
    assert data["redis_url"] == "redis://user:***@host:6379/0"
    assert data["kafka_sasl_password"] == "**********"
    assert data["kafka_sasl_username"] == "dw"  # not a secret
    assert data["batch_size"] == 512
    json.dumps(data)  # plain, loggable data


def test_redacted_without_secrets() -> None:
    data = make().redacted()
    assert data["redis_url"] == "redis://127.0.0.1:6379/0"
    assert data["kafka_sasl_password"] is None


def test_repr_and_str_hide_secrets() -> None:
    s = secret_settings()
    for text in (repr(s), str(s), repr(s.redis_url), repr(s.kafka_sasl_password)):
        assert "s3cret" not in text
        assert SASL_SECRET not in text
    assert "s3cret" not in s.model_dump_json()
    assert SASL_SECRET not in s.model_dump_json()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:s3cret@host:6379", "redis://:***@host:6379"),
        ("rediss://s3cret@host:6380/2", "rediss://***@host:6380/2"),
        ("redis://user:s3cr@t@host/0", "redis://user:***@host/0"),  # "@" inside the password
        ("redis://user:s3cr%40t@host/0", "redis://user:***@host/0"),
        ("redis://host:6379/0?password=s3cret&db=1", "redis://host:6379/0?password=***&db=1"),
        ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://host/0?client_name=a@b", "redis://host/0?client_name=a@b"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    redacted = redact_url(url)
    assert redacted == expected
    assert "s3cr" not in redacted


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DISKWATCH_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:abc", "'127.0.0.1:abc' must be a number"),
        ("DISKWATCH_KAFKA_BOOTSTRAP_SERVERS", "broker", "expected host:port"),
        ("DISKWATCH_METRICS_PORT", "70000", "less than or equal to 65535"),
        ("DISKWATCH_REDIS_URL", "http://user:s3cret@host", "must start with redis://"),
    ],
)
def test_load_settings_names_the_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert isinstance(info.value, DiskwatchError) and info.value.exit_code == 2
    assert name in message and says in message
    assert "\n" not in message and "s3cret" not in message


@pytest.mark.parametrize("value", ["k1:9092", "k1:9092, k2:9093", "[::1]:9092", "broker.example.com:29092"])
def test_bootstrap_servers_accepted(value: str) -> None:
    assert make(kafka_bootstrap_servers=value).kafka_bootstrap_servers == value


def test_every_setting_is_read_somewhere() -> None:
    """A setting nobody reads misleads whoever sets it: each field is used outside its definition."""
    root = Path(__file__).resolve().parents[2]
    source = "\n".join(
        p.read_text() for folder in ("core", "models", "stream", "training", "diskwatch") for p in (root / folder).rglob("*.py")
    )
    unread = [name for name in Settings.model_fields if f".{name}" not in source]
    assert unread == []
