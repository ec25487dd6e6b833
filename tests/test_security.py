"""Safety and exposure settings: listeners on localhost by default, SASL/SSL reaching the Kafka clients.

The security settings are checked where they take effect: the keyword arguments the aiokafka clients
(producer/consumer/admin of the CLI tools) are built with, and the configuration Faust hands its own
aiokafka consumers and producers (``credentials_to_aiokafka_auth`` of Faust's driver), so a typo in
the plumbing between Settings and the client shows up here, not in production.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess

import pytest

from stream_rec.io.kafka import client_kwargs, faust_credentials
from stream_rec.settings import Settings


def test_listeners_default_to_localhost():
    s = Settings.from_env({})
    assert s.metrics_host == "127.0.0.1"
    assert s.http_url == "http://127.0.0.1:9108"  # what the group learns (Faust's canonical_url)
    assert s.security_protocol == "PLAINTEXT"
    assert s.pseudonymize_key == ""


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, str]:
    """A throw-away self-signed certificate (it is its own CA) and key."""
    if not shutil.which("openssl"):
        pytest.skip("openssl command not available to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return {"ssl_cafile": str(d / "cert.pem"), "ssl_certfile": str(d / "cert.pem"), "ssl_keyfile": str(d / "key.pem")}


def _settings(protocol: str, tls: dict[str, str], **more) -> Settings:
    return Settings.from_env({}, broker="kafka-1:9093,kafka-2:9093", security_protocol=protocol,
                             sasl_username="svc-rec", sasl_password="s3cret", **tls, **more)


def test_plaintext_adds_no_security_arguments():
    kw = client_kwargs(Settings.from_env({}, broker="h:1"))
    assert kw == {"bootstrap_servers": "h:1", "request_timeout_ms": 30_000}  # bounded requests (Settings.request_timeout_s)
    assert faust_credentials(Settings.from_env({})) == {}


@pytest.mark.parametrize("protocol, mechanism", [("SASL_SSL", "SCRAM-SHA-512"), ("SASL_SSL", "PLAIN"),
                                                  ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SSL", "PLAIN")])
def test_security_settings_reach_aiokafka_and_faust(tls_files, protocol, mechanism):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    settings = _settings(protocol, tls_files if "SSL" in protocol else {}, sasl_mechanism=mechanism)
    expected_sasl = protocol.startswith("SASL")
    expected_ssl = "SSL" in protocol

    # the CLI tools' aiokafka clients
    kw = client_kwargs(settings)
    assert kw["bootstrap_servers"] == "kafka-1:9093,kafka-2:9093"
    assert kw["security_protocol"] == protocol
    if expected_sasl:
        assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == \
            (mechanism, "svc-rec", "s3cret")
    if expected_ssl:
        ctx = kw["ssl_context"]
        assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert ctx.get_ca_certs(), "the CA file was not loaded"

    # ... and a real aiokafka producer accepts them (it validates protocol/mechanism combinations)
    async def build_producer():
        from aiokafka import AIOKafkaProducer
        producer = AIOKafkaProducer(**kw)
        return producer.client._security_protocol, producer.client._sasl_mechanism
    assert asyncio.run(build_producer())[0] == protocol

    # the worker: Faust's credentials, turned into its aiokafka arguments by Faust's own driver
    creds = faust_credentials(settings)["broker_credentials"]
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == protocol
    if expected_sasl:
        assert (auth["sasl_mechanism"], auth["sasl_plain_username"], auth["sasl_plain_password"]) == \
            (mechanism, "svc-rec", "s3cret")
    if expected_ssl:
        assert isinstance(auth["ssl_context"], ssl.SSLContext) and auth["ssl_context"].get_ca_certs()


def test_missing_certificate_file_is_a_clear_error(tmp_path):
    settings = Settings.from_env({}, security_protocol="SSL", ssl_cafile=str(tmp_path / "nope.pem"))
    with pytest.raises((FileNotFoundError, OSError, ssl.SSLError)):
        client_kwargs(settings)


def test_secrets_do_not_leak_through_repr():
    creds = faust_credentials(Settings.from_env({}, security_protocol="SASL_PLAINTEXT",
                                                sasl_username="svc", sasl_password="s3cret"))["broker_credentials"]
    assert "s3cret" not in repr(creds)


def test_secrets_do_not_leak_through_settings_repr():
    settings = Settings.from_env({"STREAM_REC_SASL_PASSWORD": "s3cret", "STREAM_REC_PSEUDONYMIZE_KEY": "hmac-key"})
    assert settings.sasl_password == "s3cret" and settings.pseudonymize_key == "hmac-key"
    assert "s3cret" not in repr(settings) and "hmac-key" not in repr(settings)


def test_worker_app_gets_credentials_and_keeps_its_web_server_private(tls_files, tmp_path):
    """The Faust app the worker runs: SASL_SSL settings end up in ``app.conf`` (and from there in Faust's
    aiokafka clients), and its web server neither listens publicly nor serves table contents."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from stream_rec.worker.app import build_app
    from stream_rec.worker.services import WorkerServices

    settings = _settings("SASL_SSL", tls_files, sasl_mechanism="SCRAM-SHA-256", data_dir=tmp_path / "d",
                         app_id="security-test")
    app = build_app(settings, WorkerServices(settings)).app
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-256"
    assert auth["sasl_plain_username"] == "svc-rec" and auth["sasl_plain_password"] == "s3cret"
    assert auth["ssl_context"].get_ca_certs()
    conf = app.conf
    assert not conf.web_enabled or (conf.web_bind in ("127.0.0.1", "localhost", "::1")
                                     and not conf.web_tables_enabled), "Faust's web server would expose user state"
    assert str(conf.canonical_url) == settings.http_url  # what the group learns: our listener, for lookup redirects
