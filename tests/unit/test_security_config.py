"""Kafka SASL/SSL and Redis AUTH/TLS configuration, and that secrets stay out of logs.

Nothing connects: the client objects are built and inspected. The SSL cases use a throwaway
self-signed CA made with ``openssl`` (or the ``cryptography`` package when installed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from diskwatch.core.settings import Settings, redact_url

SASL_SECRET = "sasl-S3cret-pw"
REDIS_SECRET = "redis-S3cret-pw"
CA_NAME = "diskwatch-test-ca"


@pytest.fixture(autouse=True)
def _isolated(isolated_settings_env: None) -> None:
    """Every test here sees no outer DISKWATCH_* and no stray .env."""


def make(**kwargs: Any) -> Settings:
    return Settings(_env_file=None, **kwargs)  # type: ignore[call-arg]


def _ca_with_cryptography(path: Path) -> bool:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def _ca_with_openssl(path: Path) -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    key = path.with_suffix(".key")
    proc = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(path), "-days", "1", "-subj", f"/CN={CA_NAME}"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return proc.returncode == 0 and path.is_file()


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PEM of a throwaway self-signed CA certificate."""
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    if not (_ca_with_cryptography(path) or _ca_with_openssl(path)):
        pytest.skip("cannot make a test CA: neither the cryptography package nor an openssl binary is available")
    return path


def ca_subjects(context: ssl.SSLContext) -> list[str]:
    """Common names of the CA certificates a context trusts (those loaded from cafile)."""
    return [value for cert in context.get_ca_certs() for rdn in cert["subject"] for key, value in rdn
            if key == "commonName"]


def aiokafka_auth(settings: Settings) -> dict[str, Any]:
    """What the faust consumer/producer hand aiokafka for these settings."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from diskwatch.stream.app import kafka_credentials

    return dict(credentials_to_aiokafka_auth(kafka_credentials(settings)))


# --------------------------------------------------------------------------------------------
# Kafka


def test_plaintext() -> None:
    from diskwatch.stream.app import kafka_credentials

    settings = make(kafka_bootstrap_servers="k1:9092,k2:9092")
    assert settings.kafka_client_options() == {"bootstrap_servers": "k1:9092,k2:9092",
                                               "security_protocol": "PLAINTEXT"}
    assert kafka_credentials(settings) is None
    assert aiokafka_auth(settings) == {"security_protocol": "PLAINTEXT"}


def test_ssl_with_ca_file(ca_file: Path) -> None:
    import faust

    from diskwatch.stream.app import kafka_credentials

    settings = make(kafka_security_protocol="ssl", kafka_ssl_cafile=ca_file)
    assert settings.kafka_security_protocol == "SSL"
    options = settings.kafka_client_options()
    assert set(options) == {"bootstrap_servers", "security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    for context in (options["ssl_context"], kafka_credentials(settings).context):
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert ca_subjects(context) == [CA_NAME]  # exactly our CA, not the system store
    assert isinstance(kafka_credentials(settings), faust.SSLCredentials)
    auth = aiokafka_auth(settings)
    assert auth["security_protocol"] == "SSL" and ca_subjects(auth["ssl_context"]) == [CA_NAME]


def test_ssl_without_ca_file_uses_the_system_store() -> None:
    options = make(kafka_security_protocol="SSL").kafka_client_options()
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert CA_NAME not in ca_subjects(options["ssl_context"])


def test_ssl_with_a_missing_ca_file_fails_loudly(tmp_path: Path) -> None:
    from diskwatch.stream.app import kafka_credentials

    settings = make(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "absent.crt")
    with pytest.raises(FileNotFoundError):
        settings.kafka_client_options()
    with pytest.raises(FileNotFoundError):
        kafka_credentials(settings)


@pytest.mark.parametrize(("given", "mechanism"), [(None, "PLAIN"), ("PLAIN", "PLAIN"),
                                                   ("scram-sha-512", "SCRAM-SHA-512"),
                                                   ("SCRAM-SHA-256", "SCRAM-SHA-256")])
def test_sasl_plaintext(given: str | None, mechanism: str) -> None:
    import faust

    from diskwatch.stream.app import kafka_credentials

    settings = make(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism=given,
                    kafka_sasl_username="diskwatch", kafka_sasl_password=SASL_SECRET)
    options = settings.kafka_client_options()
    assert options == {
        "bootstrap_servers": "127.0.0.1:9092", "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism, "sasl_plain_username": "diskwatch", "sasl_plain_password": SASL_SECRET,
    }
    credentials = kafka_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == mechanism
    assert (credentials.username, credentials.password, credentials.ssl_context) == ("diskwatch", SASL_SECRET, None)
    # The consumer (faust) and the admin client (ensure_topics) authenticate the same way.
    auth = aiokafka_auth(settings)
    assert auth == {k: v for k, v in options.items() if k != "bootstrap_servers"} | {"ssl_context": None}
    assert SASL_SECRET not in repr(credentials)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_sasl_ssl(ca_file: Path, mechanism: str) -> None:
    from diskwatch.stream.app import kafka_credentials

    settings = make(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=mechanism,
                    kafka_sasl_username="diskwatch", kafka_sasl_password=SASL_SECRET, kafka_ssl_cafile=ca_file)
    options = settings.kafka_client_options()
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == mechanism
    assert options["sasl_plain_password"] == SASL_SECRET
    assert ca_subjects(options["ssl_context"]) == [CA_NAME]
    credentials = kafka_credentials(settings)
    assert credentials.protocol.value == "SASL_SSL"
    assert ca_subjects(credentials.ssl_context) == [CA_NAME]
    auth = aiokafka_auth(settings)
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["sasl_plain_password"]) == (
        "SASL_SSL", mechanism, SASL_SECRET)


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_aiokafka_accepts_the_options(protocol: str, ca_file: Path) -> None:
    """aiokafka validates security arguments in its constructor (no connection is made)."""

    async def scenario() -> None:  # the client wants a running event loop
        from aiokafka.admin import AIOKafkaAdminClient

        settings = make(kafka_bootstrap_servers="broker.invalid:9093", kafka_security_protocol=protocol,
                        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="diskwatch",
                        kafka_sasl_password=SASL_SECRET, kafka_ssl_cafile=ca_file)
        admin = AIOKafkaAdminClient(**settings.kafka_client_options())
        assert admin._client._security_protocol == protocol

    asyncio.run(scenario())


def test_unknown_protocol_is_rejected() -> None:
    with pytest.raises(ValidationError, match="PLAINTEXT"):
        make(kafka_security_protocol="SASL_TLS")


# --------------------------------------------------------------------------------------------
# Redis


def test_rediss_url_with_credentials(ca_file: Path) -> None:
    from redis.asyncio.connection import SSLConnection

    from diskwatch.stream.app import redis_client

    url = f"rediss://diskwatch:{REDIS_SECRET}@redis.invalid:6380/2?ssl_cert_reqs=required&ssl_ca_certs={ca_file}"
    settings = make(redis_url=url)
    client = redis_client(settings)
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection or issubclass(pool.connection_class, SSLConnection)
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.invalid", 6380, 2)
    assert (kwargs["username"], kwargs["password"]) == ("diskwatch", REDIS_SECRET)
    assert kwargs["ssl_cert_reqs"] == "required" and kwargs["ssl_ca_certs"] == str(ca_file)
    assert kwargs["decode_responses"] is False


def test_redis_url_with_password_only() -> None:
    from redis.asyncio.connection import SSLConnection

    from diskwatch.stream.app import redis_client

    client = redis_client(make(redis_url=f"redis://:{REDIS_SECRET}@redis.invalid:6379/0"))
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["password"] == REDIS_SECRET and kwargs.get("username") in (None, "")
    assert not issubclass(client.connection_pool.connection_class, SSLConnection)


def test_rediss_cluster_client() -> None:
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.connection import SSLConnection

    from diskwatch.stream.app import redis_client

    client = redis_client(make(redis_url=f"rediss://diskwatch:{REDIS_SECRET}@redis.invalid:6380/0",
                               redis_cluster=True))
    assert isinstance(client, RedisCluster)
    kwargs = client.get_connection_kwargs()
    assert issubclass(kwargs["connection_class"], SSLConnection)
    assert (kwargs["username"], kwargs["password"]) == ("diskwatch", REDIS_SECRET)
    assert kwargs["ssl_cert_reqs"] == "required" and kwargs["ssl_check_hostname"] is True


@pytest.mark.parametrize("url", ["http://user:pw@host:6379/0", "host:6379", ""])
def test_bad_redis_url_is_rejected_without_echoing_it(url: str) -> None:
    with pytest.raises(ValidationError) as err:
        make(redis_url=url.replace("pw", REDIS_SECRET))
    assert REDIS_SECRET not in str(err.value)


# --------------------------------------------------------------------------------------------
# secrets stay out of what is printed


def secret_settings() -> Settings:
    return make(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="diskwatch",
        kafka_sasl_password=SASL_SECRET,
        redis_url=f"rediss://diskwatch:{REDIS_SECRET}@redis.invalid:6380/0?password={REDIS_SECRET}",
    )


def test_secrets_not_in_redacted_or_repr() -> None:
    settings = secret_settings()
    redacted = settings.redacted()
    for text in (repr(settings), str(settings), repr(redacted), settings.model_dump_json()):
        assert SASL_SECRET not in text and REDIS_SECRET not in text
    assert redacted["kafka_sasl_password"] == "**********"
    assert redacted["redis_url"].startswith("rediss://diskwatch:***@redis.invalid:6380/0")
    assert redacted["kafka_sasl_username"] == "diskwatch"  # usernames are not secret
    assert redact_url(f"rediss://:{REDIS_SECRET}@h:6380/0") == "rediss://:***@h:6380/0"


def test_worker_startup_log_has_no_secrets(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                           tmp_path: Path) -> None:
    """run_worker's start-up lines (topics created, where it connects) without Kafka or faust."""
    import faust

    from diskwatch.stream import app as stream_app
    from diskwatch.stream import runner

    async def fake_ensure_topics(settings: Settings) -> list[str]:
        return [settings.topic_telemetry]

    class FakeWorker:
        def __init__(self, app: Any, **kwargs: Any) -> None:
            self.app = app

        def execute_from_commandline(self) -> None:
            logging.getLogger("diskwatch").info("fake worker ran")

    monkeypatch.setattr(runner, "ensure_topics", fake_ensure_topics)
    monkeypatch.setattr(stream_app, "create_app", lambda settings, bundle, **kw: (object(), None))
    monkeypatch.setattr(faust, "Worker", FakeWorker)
    settings = secret_settings()
    with caplog.at_level(logging.DEBUG):
        runner.run_worker(settings, tmp_path / "bundle", index=1)
    text = caplog.text
    assert "fake worker ran" in text
    assert "redis.invalid:6380" in text and "metrics :9465" in text  # the line was really logged
    assert SASL_SECRET not in text and REDIS_SECRET not in text
    for record in caplog.records:  # also the unformatted arguments handlers may ship elsewhere
        assert SASL_SECRET not in repr(record.args) and REDIS_SECRET not in repr(record.args)


# --------------------------------------------------------------------------------------------
# Kafka mutual TLS: a real TLS handshake (in memory) against a server that demands a client cert


def _self_signed(directory: Path, name: str, *, password: str | None = None) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (also its DNS name) and its key (encrypted if a password)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the mutual-TLS handshake test needs the openssl binary")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    args = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=DNS:{name}"]
    args += ["-passout", f"pass:{password}"] if password else ["-nodes"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        pytest.skip(f"openssl could not make a test certificate: {proc.stderr[-300:]}")
    return cert, key


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> dict[str, Any]:
    """Run a TLS handshake between two contexts through memory BIOs; return the client cert the server saw."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for side, obj in (("c", c), ("s", s)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return s.getpeercert()
    raise AssertionError("handshake did not finish")


def test_kafka_mutual_tls_presents_the_client_certificate(tmp_path: Path) -> None:
    from diskwatch.stream.app import kafka_credentials

    broker_cert, broker_key = _self_signed(tmp_path, "broker.test")
    client_cert, client_key = _self_signed(tmp_path, "diskwatch-client", password="k3y-pw")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(broker_cert, broker_key)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(client_cert)

    settings = make(kafka_security_protocol="SSL", kafka_ssl_cafile=broker_cert, kafka_ssl_certfile=client_cert,
                    kafka_ssl_keyfile=client_key, kafka_ssl_key_password="k3y-pw")
    for context in (settings.kafka_client_options()["ssl_context"], kafka_credentials(settings).context):
        peer = _handshake(context, server, "broker.test")
        assert ("commonName", "diskwatch-client") in [pair for rdn in peer["subject"] for pair in rdn]
    assert "k3y-pw" not in repr(settings) and "k3y-pw" not in str(settings.redacted())

    # Without the client certificate the broker refuses the handshake.
    anonymous = make(kafka_security_protocol="SSL", kafka_ssl_cafile=broker_cert).kafka_client_options()
    with pytest.raises(ssl.SSLError):
        _handshake(anonymous["ssl_context"], server, "broker.test")


def test_kafka_client_key_with_a_wrong_password_fails_loudly(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "diskwatch-client", password="right")
    settings = make(kafka_security_protocol="SSL", kafka_ssl_certfile=cert, kafka_ssl_keyfile=key,
                    kafka_ssl_key_password="wrong")
    with pytest.raises(ssl.SSLError):
        settings.kafka_client_options()


def test_kafka_keyfile_without_certfile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="need kafka_ssl_certfile"):
        make(kafka_security_protocol="SSL", kafka_ssl_keyfile=tmp_path / "client.key")
