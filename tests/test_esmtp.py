"""8-bit and international mail, and sizes: sent unchanged, or refused clearly."""

from __future__ import annotations

import email.message
import email.policy
import smtplib

import pytest

from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.errors import UnsendableMessageError
from mailman_mta.testing import CountingSMTPServer

EIGHT_BIT = "From: anne@example.com\r\nSubject: caf\u00e9\r\n\r\nGr\u00fc\u00dfe aus K\u00f6ln\r\n".encode()
ASCII = b"From: anne@example.com\r\nSubject: plain\r\n\r\nHello\r\n"


def send(server, sender, recipients, message, **settings):
    connection = Connection(server.hostname, server.port, 0, **settings)
    try:
        return connection.sendmail(sender, recipients, message)
    finally:
        connection.quit()


def test_ascii_mail_declares_nothing(mta_smtpd):
    send(mta_smtpd, "anne@example.com", ["bart@example.com"], ASCII)
    assert mta_smtpd.received[0].mail_options == (f"SIZE={len(ASCII)}",)


def test_8bit_mail_is_declared_and_arrives_byte_identical(mta_smtpd):
    send(mta_smtpd, "anne@example.com", ["bart@example.com"], EIGHT_BIT)
    received = mta_smtpd.received[0]
    assert received.content == EIGHT_BIT
    assert "BODY=8BITMIME" in received.mail_options
    assert "SMTPUTF8" in received.mail_options  # the Subject header is UTF-8


def test_8bit_body_with_ascii_headers_needs_only_8bitmime(mta_smtpd):
    message = b"Subject: plain\r\n\r\nna\xc3\xafve\r\n"
    send(mta_smtpd, "anne@example.com", ["bart@example.com"], message)
    assert set(mta_smtpd.received[0].mail_options) == {f"SIZE={len(message)}", "BODY=8BITMIME"}


def test_an_email_message_with_utf8_headers(mta_smtpd):
    message = email.message.EmailMessage(policy=email.policy.SMTPUTF8)
    message["From"] = "j\u00f6rg@example.com"
    message["Subject"] = "\u00fcber"
    message.set_content("\u00e5 b\u00f8dy\n", cte="8bit")
    send(mta_smtpd, "j\u00f6rg@example.com", ["\u00e5sa@example.com"], message)
    received = mta_smtpd.received[0]
    assert received.mail_from == "j\u00f6rg@example.com"
    assert received.rcpt_tos == ("\u00e5sa@example.com",)
    assert "SMTPUTF8" in received.mail_options
    assert received.content == message.as_bytes()
    assert b"\r\n" in received.content and b"\r\r" not in received.content


def test_8bit_mail_to_a_server_without_8bitmime_is_refused_not_mangled():
    with CountingSMTPServer(hidden_extensions=["8BITMIME"]) as server:
        connection = Connection(server.hostname, server.port, 0)
        with pytest.raises(UnsendableMessageError, match="451 4.6.3 the message has 8-bit content") as caught:
            connection.sendmail("anne@example.com", ["bart@example.com"], EIGHT_BIT)
        assert caught.value.smtp_code == 451
        assert "MAIL" not in server.commands
        assert connection.transport is not None, "the connection is still good"
        assert connection.sendmail("anne@example.com", ["bart@example.com"], ASCII) == {}
        connection.quit()
        assert [r.content for r in server.received] == [ASCII]


def test_a_non_ascii_address_without_smtputf8_is_refused():
    with CountingSMTPServer(hidden_extensions=["SMTPUTF8"]) as server:
        with Delivery(Connection(server.hostname, server.port, 0)) as delivery:
            result = delivery.deliver("anne@example.com", ["\u00e5sa@example.com"], ASCII)
        failure = result.refused["\u00e5sa@example.com"]
        assert (failure.code, failure.temporary) == (451, True), "the relay's lack is not the member's fault"
        assert "SMTPUTF8" in failure.message
        assert server.received == []
        with Connection(server.hostname, server.port, 0) as connection:
            with pytest.raises(smtplib.SMTPNotSupportedError) as raised:
                connection.sendmail("anne@example.com", ["\u00e5sa@example.com"], ASCII)
        assert raised.value.smtp_code == 451, "code written for smtplib (Mailman's) sees a temporary reply"


def test_8bit_headers_without_smtputf8_still_go_with_8bitmime():
    with CountingSMTPServer(hidden_extensions=["SMTPUTF8"]) as server:
        send(server, "anne@example.com", ["bart@example.com"], EIGHT_BIT)
        assert server.received[0].content == EIGHT_BIT
        assert "SMTPUTF8" not in server.received[0].mail_options


def test_a_message_over_the_server_size_is_refused_before_sending():
    with CountingSMTPServer(data_size_limit=1000) as server:
        with Delivery(Connection(server.hostname, server.port, 0)) as delivery:
            result = delivery.deliver("anne@example.com", ["bart@example.com"], b"Subject: big\r\n\r\n" + b"x" * 2000)
            assert delivery.deliver("anne@example.com", ["bart@example.com"], ASCII).ok
        failure = result.refused["bart@example.com"]
        assert (failure.code, failure.temporary) == (452, True), "the relay's limit is not the member's fault"
        assert "is 2016 bytes; 127.0.0.1 accepts at most 1000" in failure.message
        assert server.commands.count("MAIL") == 1


@pytest.mark.parametrize("pipelining", [True, False])
def test_duplicate_recipients_all_refused_is_reported_as_such(mta_config, mta_smtpd, mta_layers, pipelining):
    mta_layers.push(
        "devmode",
        f"[devmode]\nenabled: yes\nrecipient: dev@example.com\n[mta]\npipelining: {'yes' if pipelining else 'no'}\n",
    )
    mta_smtpd.refuse_recipient("dev@example.com", "550 5.1.1 No such user")
    with Delivery() as delivery:
        result = delivery.deliver("anne@example.com", ["bart@example.com", "cate@example.com"], ASCII)
    assert result.permanent == {
        "bart@example.com": (550, "5.1.1 No such user"),
        "cate@example.com": (550, "5.1.1 No such user"),
    }
    assert mta_smtpd.received == [], "no message data went out"
    # Pipelined, DATA went out with the RCPTs and was refused (503); one
    # command at a time, it is never sent.
    assert ("DATA" in mta_smtpd.commands) == pipelining
