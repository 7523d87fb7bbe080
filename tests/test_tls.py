"""Real TLS against the test server, with certificates made in the test (trustme)."""

from __future__ import annotations

import ssl

import pytest
import trustme

from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.errors import TLSError
from mailman_mta.testing import CountingSMTPServer

MESSAGE = "Subject: secret\n\nFor your eyes only.\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, *names: str, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", "localhost"))).configure_cert(context)
    if maximum is not None:
        context.maximum_version = maximum
    return context


def send(connection: Connection) -> dict:
    try:
        return connection.sendmail("anne@example.com", ["bart@example.com"], MESSAGE)
    finally:
        connection.quit()


def test_starttls_with_a_verified_certificate(ca, ca_file):
    with CountingSMTPServer(tls_context=server_context(ca), require_starttls=True) as server:
        connection = Connection(
            server.hostname, server.port, 0, "testuser", "testpass", secure_mode="starttls", ca_file=ca_file
        )
        assert send(connection) == {}
        assert server.commands[:4] == ["EHLO", "STARTTLS", "EHLO", "AUTH"]
        assert server.received[0].authenticated_as == "testuser"


def test_implicit_tls(ca, ca_file):
    with CountingSMTPServer(ssl_context=server_context(ca)) as server:
        assert send(Connection(server.hostname, server.port, 0, secure_mode="smtps", ca_file=ca_file)) == {}
        assert len(server.messages) == 1
        assert server.get_connection_count() == 1


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_an_untrusted_ca_is_refused(ca, mode):
    other_ca = trustme.CA()
    context = server_context(other_ca)
    options = {"tls_context": context} if mode == "starttls" else {"ssl_context": context}
    with CountingSMTPServer(**options) as server:
        connection = Connection(server.hostname, server.port, 0, "testuser", "testpass", secure_mode=mode)
        with pytest.raises(TLSError, match=rf"with 127.0.0.1:{server.port} failed: .*certificate"):
            send(connection)
        assert server.messages == []
        assert server.get_authentication_credentials() is None


def test_a_certificate_for_another_host_is_refused(ca, ca_file):
    with CountingSMTPServer(tls_context=server_context(ca, "mail.example.org")) as server:
        connection = Connection(server.hostname, server.port, 0, secure_mode="starttls", ca_file=ca_file)
        with pytest.raises(TLSError, match="(?i)hostname|IP address mismatch"):
            send(connection)
        assert server.messages == []


def test_verification_can_be_relaxed_explicitly(ca, ca_file):
    with CountingSMTPServer(tls_context=server_context(ca, "mail.example.org")) as server:
        send(
            Connection(server.hostname, server.port, 0, secure_mode="starttls", ca_file=ca_file, verify_hostname=False)
        )
        send(Connection(server.hostname, server.port, 0, secure_mode="starttls", verify_cert=False))
        assert len(server.messages) == 2


def test_starttls_demanded_but_not_offered_never_falls_back(ca_file):
    with CountingSMTPServer() as server:
        connection = Connection(
            server.hostname, server.port, 0, "testuser", "testpass", secure_mode="starttls", ca_file=ca_file
        )
        with pytest.raises(
            TLSError, match=rf"127.0.0.1:{server.port} does not offer STARTTLS.*refusing to send in plaintext"
        ):
            send(connection)
        assert server.commands == ["EHLO"]
        assert server.messages == []
        assert server.get_authentication_credentials() is None


def test_starttls_refused_by_the_server(ca, ca_file):
    with CountingSMTPServer(tls_context=server_context(ca)) as server:
        server.script("STARTTLS", reply="454 4.7.0 TLS not available right now")
        connection = Connection(server.hostname, server.port, 0, secure_mode="starttls", ca_file=ca_file)
        with pytest.raises(TLSError, match="refused STARTTLS: 454"):
            send(connection)
        assert server.messages == []


def test_minimum_tls_version(ca, ca_file):
    with CountingSMTPServer(tls_context=server_context(ca, maximum=ssl.TLSVersion.TLSv1_2)) as server:
        old = Connection(
            server.hostname, server.port, 0, secure_mode="starttls", ca_file=ca_file, tls_min_version="TLSv1.3"
        )
        with pytest.raises(TLSError):
            send(old)
        send(Connection(server.hostname, server.port, 0, secure_mode="starttls", ca_file=ca_file))
        assert len(server.messages) == 1


def test_tls_settings_from_a_config_layer(ca, ca_file, mta_layers, mta_config):
    with CountingSMTPServer(tls_context=server_context(ca)) as server:
        mta_layers.push(
            "tls",
            f"""
            [mta]
            smtp_port: {server.port}
            secure_mode: starttls
            ca_file: {ca_file}
            """,
        )
        assert send(Connection()) == {}
        assert server.commands[:3] == ["EHLO", "STARTTLS", "EHLO"]


def test_a_tls_failure_is_a_temporary_delivery_failure(ca):
    with CountingSMTPServer(tls_context=server_context(trustme.CA())) as server:
        with Delivery(Connection(server.hostname, server.port, 0, secure_mode="starttls")) as delivery:
            result = delivery.deliver("anne@example.com", ["bart@example.com"], MESSAGE)
        assert result.refused["bart@example.com"].code == 454
        assert result.refused["bart@example.com"].temporary


def test_a_missing_ca_file_is_a_configuration_error(mta_config, tmp_path):
    with pytest.raises(ValueError, match=r"\[mta\] ca_file: .*is not a readable file"):
        mta_config.push("tls", f"[mta]\nca_file: {tmp_path / 'missing.pem'}\n")


def test_an_explicit_ssl_context_wins(ca):
    with CountingSMTPServer(ssl_context=server_context(ca)) as server:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        assert send(Connection(server.hostname, server.port, 0, secure_mode="smtps", ssl_context=context)) == {}
