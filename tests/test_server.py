"""The test server itself: ports, counting, resets, AUTH, recording."""

from __future__ import annotations

import smtplib

import pytest

from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.testing import CountingSMTPServer


def test_port_zero_binds_a_real_free_port_and_the_probe_is_not_counted():
    with CountingSMTPServer() as one, CountingSMTPServer() as two:
        assert one.port != 0 and two.port != 0 and one.port != two.port
        assert one.get_connection_count() == 0
        with smtplib.SMTP(one.hostname, one.port) as client:
            client.noop()
        assert one.get_connection_count() == 1
        assert two.get_connection_count() == 0


def test_rset_before_hello_resets_but_a_transaction_rset_does_not(mta_smtpd):
    with smtplib.SMTP(mta_smtpd.hostname, mta_smtpd.port) as client:
        client.ehlo()
        client.rset()
    assert mta_smtpd.get_connection_count() == 1
    client = smtplib.SMTP(mta_smtpd.hostname, mta_smtpd.port)
    client.docmd("RSET")
    assert mta_smtpd.get_connection_count() == 0
    client.close()


def test_auth_is_recorded_as_sent_and_checked(mta_smtpd):
    with smtplib.SMTP(mta_smtpd.hostname, mta_smtpd.port) as client:
        client.ehlo()
        assert client.has_extn("auth")
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("testuser", "wrong")
        client.login("testuser", "testpass")
    assert mta_smtpd.get_authentication_credentials() == "PLAIN AHRlc3R1c2VyAHRlc3RwYXNz"
    mta_smtpd.reset()
    assert mta_smtpd.get_authentication_credentials() is None


def test_other_credentials_and_no_auth_at_all():
    with CountingSMTPServer(credentials={"anne": "s3cret"}) as server:
        with smtplib.SMTP(server.hostname, server.port) as client:
            client.login("anne", "s3cret")
    with CountingSMTPServer(credentials=None) as server:
        with smtplib.SMTP(server.hostname, server.port) as client:
            client.ehlo()
            assert not client.has_extn("auth")
            with pytest.raises(smtplib.SMTPNotSupportedError):
                client.login("testuser", "testpass")


def test_messages_are_recorded_and_cleared(mta_smtpd):
    with smtplib.SMTP(mta_smtpd.hostname, mta_smtpd.port) as client:
        client.sendmail("anne@example.com", ["bart@example.com", "cate@example.com"], b"Subject: hi\r\n\r\nbody\r\n")
    (message,) = mta_smtpd.messages
    assert message["X-MailFrom"] == "anne@example.com"
    assert message["X-RcptTo"] == "bart@example.com, cate@example.com"
    assert message["X-Peer"].startswith("('127.0.0.1'")
    assert mta_smtpd.received[0].content == b"Subject: hi\r\n\r\nbody\r\n"
    mta_smtpd.clear()
    assert mta_smtpd.messages == [] and mta_smtpd.received == []


def test_start_twice_is_an_error_and_stop_frees_the_port():
    server = CountingSMTPServer().start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
        port = server.port
    finally:
        server.stop()
    server.stop()
    assert server.port == port
    with pytest.raises(OSError):
        smtplib.SMTP(server.hostname, port, timeout=2)


def test_a_restart_listens_on_the_same_port():
    with CountingSMTPServer() as server:
        port = server.port
        server.stop()
        server.start()
        assert server.port == port
        with smtplib.SMTP(server.hostname, port) as client:
            client.noop()
        assert server.get_connection_count() == 1


def test_refusals_by_pattern(mta_smtpd):
    mta_smtpd.refuse_matching("*@gone.example")
    mta_smtpd.refuse_matching("bounce-*", "553 5.1.3 Not here")
    with Connection(mta_smtpd.hostname, mta_smtpd.port, 0) as connection:
        refused = connection.sendmail(
            "a@example.com", ["x@GONE.example", "bounce-1@example.com", "b@example.com"], "Subject: x\n\n"
        )
    assert {address: code for address, (code, _) in refused.items()} == {
        "x@GONE.example": 550,
        "bounce-1@example.com": 553,
    }
    with pytest.raises(ValueError, match="is not an SMTP reply line"):
        mta_smtpd.refuse_matching("*", "oops")


def test_random_failures_and_drops_are_repeatable_with_a_seed(mta_smtpd):
    def run() -> tuple[int, int]:
        mta_smtpd.misbehave_at_random(fail_rate=0.3, drop_rate=0.3, seed=7)
        before = len(mta_smtpd.received)
        with Delivery(Connection(mta_smtpd.hostname, mta_smtpd.port, 0, max_connections=1)) as delivery:
            results = [
                delivery.deliver("a@example.com", [f"m{i}@example.com" for i in range(5)], "Subject: x\n\n")
                for _ in range(8)
            ]
        temporary = sum(len(result.temporary) for result in results)
        return temporary, len(mta_smtpd.received) - before

    first = run()
    assert first == run()
    temporary, kept = first
    assert 0 < temporary < 40 and 0 < kept < 8
    mta_smtpd.misbehave_at_random()
    with pytest.raises(ValueError, match="fail_rate must be from 0 to 1"):
        mta_smtpd.misbehave_at_random(fail_rate=2)


def test_after_a_421_the_server_closes_and_a_fault_waits_for_the_next_connection(mta_smtpd):
    """RFC 5321 3.8: nothing pipelined behind a 421 is answered, nor takes a fault scripted meanwhile."""
    import socket

    mta_smtpd.refuse_recipient("bart@example.com", "421 4.3.2 Shutting down")
    with socket.create_connection((mta_smtpd.hostname, mta_smtpd.port), timeout=10) as sock:
        replies = sock.makefile("rb")
        assert replies.readline().startswith(b"220")
        sock.sendall(b"EHLO test.example\r\n")
        while replies.readline()[3:4] == b"-":
            pass
        sock.sendall(
            b"MAIL FROM:<list@example.com>\r\nRCPT TO:<bart@example.com>\r\nRCPT TO:<cate@example.com>\r\nDATA\r\n"
        )
        assert replies.readline().startswith(b"250")
        assert replies.readline().startswith(b"421")
        mta_smtpd.script("RCPT", reply="550 5.1.1 Scripted for the next connection")
        assert replies.read() == b"", "the server closed after the 421 and answered nothing more"
        replies.close()
    with smtplib.SMTP(mta_smtpd.hostname, mta_smtpd.port) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("list@example.com", ["cate@example.com"], b"Subject: x\r\n\r\n")
    assert refused.value.recipients == {"cate@example.com": (550, b"5.1.1 Scripted for the next connection")}
