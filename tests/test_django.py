"""Django sends through mailman-mta: the EMAIL_BACKEND contract, tested with Django's own mail API."""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

django = pytest.importorskip("django", reason="Django is in the test extra; install mailman-mta[test]")

from django.conf import settings as django_settings  # noqa: E402

if not django_settings.configured:
    django_settings.configure(DEFAULT_CHARSET="utf-8", EMAIL_BACKEND="mailman_mta.integrations.django.EmailBackend")

from django.core import mail  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from mailman_mta.addresses import mailbox_problem  # noqa: E402
from mailman_mta.errors import EnvelopeError, TLSError  # noqa: E402
from mailman_mta.integrations.django import EmailBackend, envelope_address  # noqa: E402
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
    context = backend.ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    from mailman_mta.smtp import tls

    assert context is not tls.client_context()
    with override_settings(EMAIL_SSL_CERTFILE=str(tmp_path / "missing.pem")):
        with pytest.raises(OSError):
            EmailBackend().ssl_context  # noqa: B018 (the property loads the file)


def test_a_subclass_may_change_the_tls_context_as_djangos_documentation_says(tmp_path):
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    class Trusting(EmailBackend):
        @property
        def ssl_context(self):
            trusting = ssl.create_default_context()
            ca.configure_trust(trusting)
            return trusting

    with (
        CountingSMTPServer(tls_context=context) as server,
        override_settings(EMAIL_HOST="127.0.0.1", EMAIL_PORT=server.port, EMAIL_USE_TLS=True),
    ):
        with pytest.raises(ssl.SSLError):
            EmailBackend().open()
        assert Trusting().send_messages([mail.EmailMessage("x", "x", "anne@example.com", ["bart@example.com"])]) == 1
    assert server.commands[:3] == ["EHLO", "STARTTLS", "EHLO"]


def test_the_attributes_are_djangos_and_are_read_when_opening(smtp_settings):
    with override_settings(EMAIL_HOST_USER="testuser", EMAIL_HOST_PASSWORD="testpass"):
        backend = EmailBackend()
    assert (backend.host, backend.port, backend.username, backend.password) == (
        smtp_settings.hostname,
        smtp_settings.port,
        "testuser",
        "testpass",
    )
    assert (backend.use_tls, backend.use_ssl, backend.timeout, backend.connection) == (False, False, None, None)
    backend.username = backend.password = ""
    with backend:
        assert backend.connection is not None and backend.connection.timeout == 300
        backend.send_messages([mail.EmailMessage("x", "x", "anne@example.com", ["bart@example.com"])])
    assert smtp_settings.received[0].authenticated_as is None
    backend.timeout = 9
    backend.open()
    assert backend.connection.timeout == 9 and backend.config.settings.mta.connect_timeout == 9
    backend.close()


def test_a_refused_connection_is_a_connection_error():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with override_settings(EMAIL_HOST="127.0.0.1", EMAIL_PORT=port):
            with pytest.raises(ConnectionError, match=f"cannot connect to 127.0.0.1:{port}"):
                EmailBackend().open()
            assert EmailBackend(fail_silently=True).open() is None


def test_the_message_goes_out_with_crlf_line_endings_only(smtp_settings):
    message = mail.EmailMessage("Lines", "one\ntwo\r\nthree\rfour\n", "anne@example.com", ["bart@example.com"])
    assert message.send() == 1
    content = smtp_settings.received[0].content
    assert b"\r\n" in content
    assert b"\n" not in content.replace(b"\r\n", b"") and b"\r" not in content.replace(b"\r\n", b"")


# Django's own backend is the reference: whatever address it puts on the
# wire, ours puts there too; where it refuses, ours refuses the same way.
_NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
_LOCAL_PARTS = st.one_of(
    st.from_regex(r"[A-Za-z0-9._%+=-]{1,12}", fullmatch=True),
    st.sampled_from(["jörg", "ñandú", "用户", "o'brien", '"quoted local"', "a..b", ".start"]),
)
_DOMAINS = st.sampled_from(
    [
        "example.com",
        "xn--fa-hia.example.com",
        "discussão.example.org",
        "漢字.example.com",
        "bücher.example",
        "[192.0.2.1]",
    ]
)


@st.composite
def _addresses(draw) -> str:
    mailbox = f"{draw(_LOCAL_PARTS)}@{draw(_DOMAINS)}"
    form = draw(st.sampled_from(["bare", "named", "quoted"]))
    name = draw(_NAMES)
    if form == "named":
        return f"{name} <{mailbox}>"
    if form == "quoted":
        return '"{}" <{}>'.format(name.replace("\\", "\\\\").replace('"', '\\"'), mailbox)
    return mailbox


def _outcome(backend, message):
    """(count sent, or None and the error it raised: even the email package's own AttributeError
    for some names, which both backends meet in Django's sanitize_address)."""
    try:
        return backend.send_messages([message]), None
    except Exception as error:
        return None, error


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sender=_addresses(), recipients=st.lists(_addresses(), min_size=1, max_size=3), silently=st.booleans())
def test_addresses_go_out_as_djangos_own_backend_sends_them(smtp_settings, sender, recipients, silently):
    from django.core.mail.backends.smtp import EmailBackend as DjangosBackend

    message = mail.EmailMessage("Subject", "Body", sender, recipients)
    smtp_settings.clear()
    theirs, their_error = _outcome(DjangosBackend(fail_silently=silently), message)
    their_envelopes = [(r.mail_from, r.rcpt_tos) for r in smtp_settings.received]
    smtp_settings.clear()
    ours, our_error = _outcome(EmailBackend(fail_silently=silently), message)
    our_envelopes = [(r.mail_from, r.rcpt_tos) for r in smtp_settings.received]
    if isinstance(our_error, EnvelopeError):
        # A refusal of ours is raised, fail_silently or not, and only for
        # an address that would have gone on the wire as no RFC 5321
        # mailbox (which Django's backend sends, for the server to refuse).
        on_the_wire = [envelope_address(address, "utf-8") for address in (sender, *recipients)]
        assert any(mailbox_problem(address) for address in on_the_wire), on_the_wire
        return
    assert (ours, type(our_error)) == (theirs, type(their_error))
    assert our_envelopes == their_envelopes


def test_a_non_ascii_password_and_host_from_django_settings(smtp_settings):
    smtp_settings.credentials["testuser"] = "pässwörd-日本"
    with override_settings(EMAIL_HOST_USER="testuser", EMAIL_HOST_PASSWORD="pässwörd-日本"):
        assert mail.send_mail("x", "x", "anne@example.com", ["bart@example.com"]) == 1
    assert smtp_settings.received[0].authenticated_as == "testuser"
    with override_settings(EMAIL_HOST="bücher.example"):
        assert EmailBackend().config.settings.mta.smtp_host == "xn--bcher-kva.example"


def test_a_plugins_verdicts_hold_for_djangos_mail(smtp_settings):
    from mailman_mta import hookimpl
    from mailman_mta.manager import registry

    class Suppress:
        @hookimpl
        def mta_screen_recipients(self, envelope):
            if "gone@example.com" in envelope.recipients:
                envelope.refuse("gone@example.com", 550, "5.7.1 suppressed")

    registry.add("suppress", Suppress())
    try:
        with override_settings(MAILMAN_MTA_OPTIONS={"plugin.suppress.enabled": True}):
            assert mail.send_mail("x", "x", "anne@example.com", ["gone@example.com", "bart@example.com"]) == 1
            with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
                mail.send_mail("x", "x", "anne@example.com", ["gone@example.com"])
    finally:
        registry.remove("suppress")
    assert caught.value.recipients == {"gone@example.com": (550, b"5.7.1 suppressed")}
    assert [message.rcpt_tos for message in smtp_settings.received] == [("bart@example.com",)]
