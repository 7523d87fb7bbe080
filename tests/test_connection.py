"""Edge cases of `Connection` beyond what the docs show."""

from __future__ import annotations

import email
import email.message
import enum
import logging
import pickle
import smtplib

import pytest
from zope.interface.verify import verifyClass, verifyObject

from mailman_mta.config import Configuration
from mailman_mta.connection import Connection
from mailman_mta.envelope import Envelope
from mailman_mta.errors import EnvelopeError, TLSError
from mailman_mta.interfaces import IConfiguration, IConnection, ITransport
from mailman_mta.secret import Secret
from mailman_mta.smtp.transport import SMTPTransport
from mailman_mta.testing import CountingSMTPServer

MESSAGE = "From: anne@example.com\nTo: bart@example.com\nSubject: test\n\nHello\n"


def send(connection: Connection, *recipients: str) -> dict:
    return connection.sendmail("anne@example.com", list(recipients) or ["bart@example.com"], MESSAGE)


def test_connection_provides_iconnection(mta_smtpd):
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0)
    assert verifyObject(IConnection, connection)
    send(connection)
    assert verifyObject(IConnection, connection)
    assert verifyObject(ITransport, connection.transport)
    connection.quit()


def test_other_interfaces_are_kept():
    assert verifyClass(ITransport, SMTPTransport)
    assert verifyObject(IConfiguration, Configuration())


def test_settings_left_out_follow_the_configuration_live(mta_config, mta_smtpd, mta_layers):
    connection = Connection()
    assert (connection.host, connection.port) == (mta_smtpd.hostname, mta_smtpd.port)
    mta_layers.push("two-per-connection", "[mta]\nmax_sessions_per_connection: 2\n")
    for _ in range(5):
        assert send(connection) == {}
    assert connection.connection_count == 3
    assert mta_smtpd.get_connection_count() == 3
    connection.quit()


def test_explicit_settings_win_over_the_configuration(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("limit", "[mta]\nmax_sessions_per_connection: 1\n")
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0)
    for _ in range(3):
        send(connection)
    assert connection.connection_count == 1
    connection.quit()


def test_an_error_closes_the_connection_and_the_next_send_reconnects(mta_config, mta_smtpd, mta_layers):
    connection = Connection()
    send(connection)
    mta_smtpd.stop()
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        send(connection)
    assert connection.transport is None
    with CountingSMTPServer() as other:
        mta_layers.push("moved", f"[mta]\nsmtp_port: {other.port}\n")
        assert send(connection) == {}
        assert other.get_connection_count() == 1
        assert len(other.messages) == 1
        connection.quit()


def test_partly_refused_recipients_are_returned_as_smtplib_does(mta_smtpd):
    mta_smtpd.refuse_recipient("cate@example.com", "550 5.1.1 No such user here")
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0)
    refused = send(connection, "bart@example.com", "cate@example.com")
    assert refused == {"cate@example.com": (550, b"5.1.1 No such user here")}
    assert mta_smtpd.received[0].rcpt_tos == ("bart@example.com",)
    connection.quit()


def test_all_refused_raises_and_keeps_the_connection_it_reset(mta_smtpd):
    mta_smtpd.refuse_recipient("cate@example.com", "450 4.2.1 Try again later")
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        send(connection, "cate@example.com")
    assert caught.value.recipients == {"cate@example.com": (450, b"4.2.1 Try again later")}
    assert mta_smtpd.messages == []
    assert mta_smtpd.commands[-1] == "RSET", "the open transaction was reset"
    assert connection.transport is not None
    assert send(connection, "bart@example.com") == {}
    connection.quit()
    assert mta_smtpd.get_connection_count() == 1


@pytest.mark.parametrize(
    "sender, recipients, complaint",
    [
        ("anne@example.com", ["bart@example.com\r\nRCPT TO:<evil@example.com>"], "recipient 1"),
        ("anne@example.com\n", ["bart@example.com"], "sender"),
        ("anne@example.com", ["bart@example.com", "ca\x00te@example.com"], "recipient 2"),
        ("anne@example.com", ["john doe@example.com"], "recipient 1"),
        ("anne@example.com", ["<bart@example.com>"], "recipient 1"),
        ("anne@example.com", [""], "recipient 1 is empty"),
        ("anne@example.com", ["a" * 250 + "@example.com"], "recipient 1 is 262 octets long"),
    ],
)
def test_unsafe_envelopes_are_refused_before_anything_is_sent(mta_smtpd, sender, recipients, complaint):
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0)
    with pytest.raises(EnvelopeError, match=complaint):
        connection.sendmail(sender, recipients, MESSAGE)
    assert mta_smtpd.get_connection_count() == 0


def test_no_recipients_is_refused_as_smtplib_refuses_it(mta_smtpd):
    """smtplib ends in SMTPRecipientsRefused({}), which code written for it (Mailman's) catches."""
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as raised:
        connection.sendmail("anne@example.com", [], MESSAGE)
    assert raised.value.recipients == {}
    assert mta_smtpd.get_connection_count() == 0
    with pytest.raises(EnvelopeError, match="no recipients"):
        Envelope.build("anne@example.com", [], MESSAGE)


def test_send_message_takes_the_addresses_from_the_headers_and_never_sends_bcc(mta_smtpd):
    message = email.message_from_string(
        "From: Anne <anne@example.com>\nTo: bart@example.com, Cate <cate@example.com>\n"
        "Cc: dave@example.com\nBcc: secret@example.com\nSubject: hi\n\nHello\n"
    )
    with Connection(mta_smtpd.hostname, mta_smtpd.port, 0) as connection:
        assert connection.send_message(message) == {}
        resent = email.message_from_string(
            "From: anne@example.com\nTo: bart@example.com\nResent-Date: Mon, 23 Nov 2026 20:00:00 +0000\n"
            "Resent-Sender: list@example.com\nResent-From: anne@example.com\nResent-To: erin@example.com\n"
            "Resent-Bcc: hidden@example.com\n\nForwarded\n"
        )
        connection.send_message(resent)
        connection.send_message(message, "other@example.com", ["fred@example.com"])
    first, second, third = mta_smtpd.received
    assert first.mail_from == "anne@example.com"
    assert first.rcpt_tos == ("bart@example.com", "cate@example.com", "dave@example.com", "secret@example.com")
    assert b"secret@example.com" not in first.content and message["Bcc"] == "secret@example.com"
    assert (second.mail_from, second.rcpt_tos) == ("list@example.com", ("erin@example.com", "hidden@example.com"))
    assert b"hidden@example.com" not in second.content
    assert (third.mail_from, third.rcpt_tos) == ("other@example.com", ("fred@example.com",))


def test_send_message_without_addresses_names_the_header(mta_smtpd):
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0)
    with pytest.raises(EnvelopeError, match="no address in its From: header"):
        connection.send_message(email.message_from_string("To: bart@example.com\n\n"))
    with pytest.raises(EnvelopeError, match="no address in To, Cc, Bcc"):
        connection.send_message(email.message_from_string("From: anne@example.com\n\n"))
    twice = "Resent-Date: Mon, 23 Nov 2026 20:00:00 +0000\n"
    with pytest.raises(ValueError, match="more than one Resent- block"):
        connection.send_message(email.message_from_string(f"From: a@example.com\n{twice}{twice}\n"))
    assert mta_smtpd.get_connection_count() == 0


def test_mailmans_positional_arguments_and_secure_mode_enum(mta_smtpd):
    class SecureMode(enum.Enum):
        INSECURE = "smtp"
        STARTTLS = "starttls"

    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0, None, None, SecureMode.STARTTLS, False, False)
    assert (
        connection.setting("secure_mode"),
        connection.setting("verify_cert"),
        connection.setting("verify_hostname"),
    ) == ("starttls", False, False)
    with pytest.raises(smtplib.SMTPNotSupportedError, match="does not offer STARTTLS") as raised:
        connection.sendmail("anne@example.com", ["bart@example.com"], MESSAGE)
    assert isinstance(raised.value, TLSError)
    insecure = Connection(mta_smtpd.hostname, mta_smtpd.port, 0, None, None, SecureMode.INSECURE, True, True)
    assert insecure.sendmail("anne@example.com", ["bart@example.com"], MESSAGE) == {}
    insecure.quit()


def test_a_lone_recipient_string_is_one_recipient(mta_smtpd):
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0)
    assert connection.sendmail("", "bart@example.com", MESSAGE) == {}
    assert mta_smtpd.received[0].rcpt_tos == ("bart@example.com",)
    assert mta_smtpd.received[0].mail_from == "<>"
    connection.quit()


def test_message_bytes_arrive_unchanged_whatever_the_input_type(mta_smtpd):
    raw = "From: anne@example.com\r\nSubject: caf\u00e9\r\n\r\nGr\u00fc\u00dfe, \u00e5ngstr\u00f6m\r\n".encode()
    parsed = email.message_from_bytes(raw)
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0)
    for message in (raw, raw.decode("utf-8"), parsed):
        connection.sendmail("anne@example.com", ["bart@example.com"], message)
    connection.quit()
    contents = [received.content for received in mta_smtpd.received]
    assert contents == [raw, raw, raw]


@pytest.mark.parametrize("ending", [b"\n", b"\r", b"\r\n"])
def test_every_line_ending_goes_out_as_crlf(mta_smtpd, ending):
    lines = [b"Subject: smuggle", b"", b"first", b".", b"MAIL FROM:<evil@example.com>", b"last"]
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0)
    connection.sendmail("anne@example.com", ["bart@example.com"], ending.join(lines) + ending)
    connection.quit()
    assert [r.content for r in mta_smtpd.received] == [b"\r\n".join(lines) + b"\r\n"]


def test_a_message_of_the_wrong_type_is_refused(mta_smtpd):
    with pytest.raises(EnvelopeError, match="message must be str, bytes"):
        Connection(mta_smtpd.hostname, mta_smtpd.port, 0).sendmail("a@example.com", ["b@example.com"], 42)


def test_quit_is_idempotent_and_a_context_manager_quits(mta_smtpd):
    with Connection(mta_smtpd.hostname, mta_smtpd.port, 0) as connection:
        connection.quit()
        send(connection)
        assert connection.transport is not None
    assert connection.transport is None
    connection.quit()


def test_negative_sessions_per_connection_is_refused():
    with pytest.raises(ValueError, match=r"Connection\(sessions_per_connection=...\): '-1' is not a count"):
        Connection("localhost", 25, -1)


def test_keyword_settings_are_checked_like_configuration_values():
    with pytest.raises(ValueError, match=r"Connection\(secure_mode=...\): 'tls' is not one of smtp, smtps, starttls"):
        Connection("localhost", 25, 0, secure_mode="tls")
    with pytest.raises(TypeError, match="unexpected keyword argument 'smtp_hots'"):
        Connection(smtp_hots="x")
    connection = Connection("localhost", "2525", 0, command_timeout=2, verify_cert=False)
    assert (connection.port, connection.setting("command_timeout"), connection.setting("verify_cert")) == (
        2525,
        2.0,
        False,
    )


def test_debug_transcript_is_logged_with_auth_masked(mta_smtpd, caplog):
    caplog.set_level(logging.DEBUG, logger="mailman_mta.transcript")
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0, "testuser", "testpass")
    connection.debug = True
    send(connection)
    connection.quit()
    transcript = "\n".join(record.getMessage() for record in caplog.records)
    assert "mail from:<anne@example.com>" in transcript.lower()
    assert "AUTH PLAIN ***" in transcript
    assert "testpass" not in transcript
    assert "AHRlc3R1c2VyAHRlc3RwYXNz" not in transcript


def test_debug_can_be_switched_off_again(mta_smtpd, caplog):
    caplog.set_level(logging.DEBUG, logger="mailman_mta.transcript")
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0, debug=True)
    send(connection)
    connection.debug = False
    caplog.clear()
    send(connection)
    connection.quit()
    assert caplog.records == []


def test_login_transcript_masks_the_password_too(caplog):
    caplog.set_level(logging.DEBUG, logger="mailman_mta.transcript")
    with CountingSMTPServer(auth_exclude_mechanism=["PLAIN"]) as server:
        connection = Connection(server.hostname, server.port, 0, "testuser", "testpass", debug=True)
        send(connection)
        connection.quit()
        assert server.get_authentication_credentials().startswith("LOGIN")
    transcript = "\n".join(record.getMessage() for record in caplog.records)
    assert "AUTH LOGIN ***" in transcript
    assert "dGVzdHBhc3M=" not in transcript  # base64("testpass")


def test_the_password_never_shows(mta_smtpd):
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0, "testuser", "wrong-password")
    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        send(connection)
    assert "wrong-password" not in str(caught.value)
    assert "wrong-password" not in repr(connection)
    assert "wrong-password" not in repr(connection.smtp_pass)
    assert "wrong-password" not in repr(vars(connection))
    assert connection.smtp_pass.reveal() == "wrong-password"


def test_a_secret_does_not_pickle():
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(Secret("hunter2"))
    assert str(Secret("hunter2")) == "Secret('***')"
    assert f"{Secret('hunter2')}" == "Secret('***')"


def test_bad_credentials_close_the_connection(mta_smtpd):
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0, "testuser", "nope")
    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        send(connection)
    assert caught.value.smtp_code == 535
    assert connection.transport is None
    assert mta_smtpd.messages == []


def test_credentials_from_the_configuration(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("auth", "[mta]\nsmtp_user: testuser\nsmtp_pass: testpass\n")
    connection = Connection()
    send(connection)
    connection.quit()
    assert mta_smtpd.received[0].authenticated_as == "testuser"
