"""Django sends through mailman-mta: the EMAIL_BACKEND contract, tested with Django's own mail API."""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl

import pytest
import trustme

django = pytest.importorskip("django", reason="Django is in the test extra; install mailman-mta[test]")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(DEFAULT_CHARSET="utf-8", EMAIL_BACKEND="mailman_mta.integrations.django.EmailBackend")

from django.core import mail  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from mailman_mta.errors import TLSError  # noqa: E402
from mailman_mta.integrations.django import EmailBackend  # noqa: E402
from mailman_mta.testing import CountingSMTPServer  # noqa: E402

BACKEND = "mailman_mta.integrations.django.EmailBackend"


@pytest.fixture
def smtp_settings(mta_smtpd):
    with override_settings(EMAIL_BACKEND=BACKEND, EMAIL_HOST=mta_smtpd.hostname, EMAIL_PORT=mta_smtpd.port):
        yield mta_smtpd


def test_send_mail_goes_through_the_backend(smtp_settings):
    assert mail.send_mail("Hello", "Body text", "anne@example.com", ["bart@example.com"]) == 1
    (received,) = smtp_settings.received
    assert (received.mail_from, received.rcpt_tos) == ("anne@example.com", ("bart@example.com",))
    assert b"Subject: Hello" in received.content and received.content.endswith(b"Body text\r\n")


def test_bcc_get_the_message_and_are_never_named_in_it(smtp_settings):
    message = mail.EmailMessage(
        "Hi", "Body", "anne@example.com", to=["bart@example.com"], cc=["cate@example.com"], bcc=["hidden@example.com"]
    )
    assert message.send() == 1
    (received,) = smtp_settings.received
    assert set(received.rcpt_tos) == {"bart@example.com", "cate@example.com", "hidden@example.com"}
    assert b"hidden" not in received.content


def test_one_connection_for_many_messages_and_the_count_sent(smtp_settings):
    messages = [
        mail.EmailMessage("One", "x", "anne@example.com", ["bart@example.com"]),
        mail.EmailMessage("None", "x", "anne@example.com", []),
        mail.EmailMultiAlternatives("Two", "x", "anne@example.com", ["cate@example.com"]),
    ]
    with mail.get_connection() as connection:
        assert connection.open() is False
        assert connection.send_messages(messages) == 2
        assert connection.send_messages([]) == 0
    assert smtp_settings.get_connection_count() == 1
    assert len(smtp_settings.received) == 2
    assert "QUIT" in smtp_settings.commands
    assert (
        mail.send_mass_mail(
            [("A", "x", "anne@example.com", ["b@example.com"]), ("B", "x", "anne@example.com", ["c@example.com"])]
        )
        == 2
    )


def test_open_connects_now_and_close_says_quit(smtp_settings):
    backend = mail.get_connection()
    assert backend.open() is True
    assert smtp_settings.get_connection_count() == 1
    backend.close()
    assert "QUIT" in smtp_settings.commands
    backend.close()


def test_a_refusal_raises_unless_fail_silently(smtp_settings):
    smtp_settings.refuse_recipient("gone@example.com")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        mail.send_mail("x", "x", "anne@example.com", ["gone@example.com"])
    assert mail.send_mail("x", "x", "anne@example.com", ["gone@example.com"], fail_silently=True) == 0
    assert mail.send_mail("x", "x", "anne@example.com", ["gone@example.com", "bart@example.com"]) == 1


def test_an_unreachable_server_with_fail_silently_sends_nothing_quietly():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with override_settings(EMAIL_BACKEND=BACKEND, EMAIL_HOST="127.0.0.1", EMAIL_PORT=port):
            assert mail.send_mail("x", "x", "anne@example.com", ["bart@example.com"], fail_silently=True) == 0
            with pytest.raises(OSError, match=f"cannot connect to 127.0.0.1:{port}"):
                mail.send_mail("x", "x", "anne@example.com", ["bart@example.com"])


def test_the_login_uses_the_django_settings_and_hides_the_password(smtp_settings, caplog):
    with override_settings(EMAIL_HOST_USER="testuser", EMAIL_HOST_PASSWORD="testpass"), caplog.at_level(logging.DEBUG):
        backend = mail.get_connection()
        assert backend.send_messages([mail.EmailMessage("x", "x", "anne@example.com", ["bart@example.com"])]) == 1
        assert "testpass" not in repr(backend.config.settings.mta) and "testpass" not in caplog.text
    assert smtp_settings.received[0].authenticated_as == "testuser"


def test_settings_become_a_layer_of_the_backends_own_configuration(smtp_settings):
    with override_settings(
        EMAIL_TIMEOUT=7,
        EMAIL_USE_SSL=True,
        MAILMAN_MTA_OPTIONS={"mta.max_connections": 2, "plugin.ratelimit.enabled": True},
    ):
        backend = EmailBackend()
    mta = backend.config.settings.mta
    assert (mta.command_timeout, mta.connect_timeout, mta.secure_mode, mta.max_connections) == (7, 7, "smtps", 2)
    assert backend.config.origin("mta", "smtp_port") == "django"
    assert "ratelimit" in backend.config.active_plugins
    from mailman_mta.config import config as default_config

    assert default_config.settings.mta.smtp_port != smtp_settings.port


def test_tls_and_ssl_together_are_refused():
    with override_settings(EMAIL_USE_TLS=True, EMAIL_USE_SSL=True), pytest.raises(ValueError, match="exclusive"):
        EmailBackend()


def test_starttls_is_verified(tmp_path):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with (
        CountingSMTPServer(tls_context=context) as server,
        override_settings(EMAIL_BACKEND=BACKEND, EMAIL_HOST="127.0.0.1", EMAIL_PORT=server.port, EMAIL_USE_TLS=True),
    ):
        with pytest.raises(TLSError, match="STARTTLS with 127.0.0.1:.* failed"):
            mail.send_mail("x", "x", "anne@example.com", ["bart@example.com"])
        with override_settings(MAILMAN_MTA_OPTIONS={"mta.ca_file": str(ca_file)}):
            assert mail.send_mail("x", "x", "anne@example.com", ["bart@example.com"]) == 1
    assert len(server.received) == 1


def test_a_client_certificate_is_loaded_into_a_context_of_its_own(tmp_path):
    ca = trustme.CA()
    client = ca.issue_cert("client.example.com")
    certificate = tmp_path / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(certificate))
    with override_settings(EMAIL_SSL_CERTFILE=str(certificate), EMAIL_USE_TLS=True):
        backend = EmailBackend()
    context = backend._ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    from mailman_mta import tls

    assert context is not tls.client_context()
    with override_settings(EMAIL_SSL_CERTFILE=str(tmp_path / "missing.pem")):
        with pytest.raises(OSError):
            EmailBackend()._ssl_context()
