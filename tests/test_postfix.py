"""Every feature against a real Postfix (see mailman_mta.testing.postfix).

Postfix listens on loopback with STARTTLS and SASL AUTH and relays to
``postfix_capture``, so each test checks what Postfix said to us and what it
delivered.  Run as root on Debian, the suite installs Postfix itself; in CI
a skipped test here is a failure.
"""

from __future__ import annotations

import logging
import re
import smtplib
import time

import pytest
import trustme

from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.errors import TLSError

pytestmark = pytest.mark.postfix

POST = b"From: anne@example.com\r\nTo: list@example.com\r\nSubject: via Postfix\r\n\r\nHello\r\n"


@pytest.fixture
def capture(postfix_capture):
    postfix_capture.clear()
    return postfix_capture


@pytest.fixture
def at_postfix(postfix, mta_config, mta_layers):
    """The default configuration pointed at the Postfix testbed."""
    mta_layers.push("postfix", f"[mta]\nsmtp_host: 127.0.0.1\nsmtp_port: {postfix.port}\n")
    return mta_layers


def without_trace_headers(content: bytes) -> bytes:
    """The message as sent: what Postfix delivered minus the Received: it added."""
    lines = content.split(b"\r\n")
    assert lines[0].startswith(b"Received: "), content[:200]
    index = 1
    while lines[index].startswith((b"\t", b" ")):
        index += 1
    return b"\r\n".join(lines[index:])


def wait_for_connections(postfix, expected: int, timeout: float = 10.0) -> int:
    """Postfix logs through postlogd, a moment after the fact."""
    deadline = time.monotonic() + timeout
    while postfix.smtpd_connections() < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    return postfix.smtpd_connections()


def test_plain_delivery(at_postfix, capture):
    connection = Connection()
    assert connection.sendmail("anne@example.com", ["bart@example.com"], POST) == {}
    connection.quit()
    (delivered,) = capture.wait_for_messages(1)
    assert delivered.rcpt_tos == ("bart@example.com",)
    assert without_trace_headers(delivered.content) == POST
    assert b"by testbed.localdomain (Postfix)" in delivered.content


def test_sessions_per_connection_as_postfix_counts_them(postfix, at_postfix, capture):
    before = wait_for_connections(postfix, 0)
    connection = Connection(sessions_per_connection=2)
    for _ in range(5):
        connection.sendmail("anne@example.com", ["bart@example.com"], POST)
    connection.quit()
    assert wait_for_connections(postfix, before + 3) - before == 3
    assert len(capture.wait_for_messages(5)) == 5


def test_starttls_verified_against_the_generated_ca(postfix, at_postfix, capture):
    at_postfix.push("tls", f"[mta]\nsecure_mode: starttls\nca_file: {postfix.ca_file}\n")
    connection = Connection()
    connection.sendmail("anne@example.com", ["bart@example.com"], POST)
    assert connection.transport.sock.version() in ("TLSv1.2", "TLSv1.3")
    connection.quit()
    capture.wait_for_messages(1)
    assert "TLS connection established from" in postfix.wait_for_log("TLS connection established from")


def test_starttls_with_an_untrusted_ca_is_refused(postfix, at_postfix, tmp_path, capture):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    at_postfix.push("tls", f"[mta]\nsecure_mode: starttls\nca_file: {other}\n")
    with pytest.raises(TLSError, match=f"STARTTLS with 127.0.0.1:{postfix.port} failed"):
        Connection().sendmail("anne@example.com", ["bart@example.com"], POST)
    time.sleep(0.3)
    assert capture.received == []


def test_auth_with_good_credentials(postfix, at_postfix, capture):
    at_postfix.push(
        "auth", f"[mta]\nsecure_mode: starttls\nca_file: {postfix.ca_file}\nsmtp_user: testuser\nsmtp_pass: testpass\n"
    )
    connection = Connection()
    assert connection.sendmail("anne@example.com", ["bart@example.com"], POST) == {}
    connection.quit()
    capture.wait_for_messages(1)
    assert "sasl_method=PLAIN, sasl_username=testuser@testbed.localdomain" in postfix.wait_for_log("sasl_method=PLAIN")


def test_auth_login_mechanism(postfix):
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=10) as client:
        client.starttls(context=Connection(ca_file=postfix.ca_file).tls_context())
        client.ehlo()
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        client.user, client.password = "testuser", "testpass"
        assert client.auth("LOGIN", client.auth_login)[0] == 235


def test_auth_with_bad_credentials(postfix, at_postfix, capture):
    at_postfix.push(
        "auth", f"[mta]\nsecure_mode: starttls\nca_file: {postfix.ca_file}\nsmtp_user: testuser\nsmtp_pass: wrong\n"
    )
    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        Connection().sendmail("anne@example.com", ["bart@example.com"], POST)
    assert caught.value.smtp_code == 535
    assert "wrong" not in str(caught.value)
    with Delivery() as delivery:
        result = delivery.deliver("anne@example.com", ["bart@example.com"], POST)
    assert result.refused["bart@example.com"].code == 454 and result.refused["bart@example.com"].temporary
    time.sleep(0.3)
    assert capture.received == []


def test_auth_is_not_offered_before_starttls(postfix, at_postfix):
    at_postfix.push("auth", "[mta]\nsmtp_user: testuser\nsmtp_pass: testpass\n")
    with pytest.raises(smtplib.SMTPNotSupportedError, match="AUTH extension not supported"):
        Connection().sendmail("anne@example.com", ["bart@example.com"], POST)


def test_devmode_rewriting(postfix, at_postfix, capture):
    at_postfix.push("devmode", "[devmode]\nenabled: yes\nrecipient: developer@example.com\n")
    connection = Connection()
    connection.sendmail("anne@example.com", ["bart@example.com", "cate@example.com"], POST)
    connection.quit()
    (delivered,) = capture.wait_for_messages(1)
    # mailman-mta sent RCPT TO:<developer@...> twice, once per member;
    # Postfix's cleanup folds duplicate recipients into one delivery.
    assert delivered.rcpt_tos == ("developer@example.com",)
    assert b"To: list@example.com" in delivered.content
    assert "to=<developer@example.com>" in postfix.wait_for_log("to=<developer@example.com>")


def test_an_8bit_utf8_message_arrives_byte_identical(at_postfix, capture):
    message = (
        "From: J\u00f6rg <j\u00f6rg@example.com>\r\nTo: list@example.com\r\n"
        "Subject: Gr\u00fc\u00dfe aus K\u00f6ln \u2713\r\n\r\n\u00c5ngstr\u00f6m, na\u00efve, \u65e5\u672c\r\n"
    ).encode()
    connection = Connection()
    assert connection.sendmail("j\u00f6rg@example.com", ["\u00e5sa@example.com"], message) == {}
    connection.quit()
    (delivered,) = capture.wait_for_messages(1)
    assert without_trace_headers(delivered.content) == message
    assert delivered.mail_from == "j\u00f6rg@example.com"
    assert delivered.rcpt_tos == ("\u00e5sa@example.com",)


def test_a_refused_recipient_is_reported_with_postfix_code(at_postfix, capture):
    with Delivery() as delivery:
        result = delivery.deliver("anne@example.com", ["bart@example.com", "refused@example.com"], POST)
    assert result.accepted == ("bart@example.com",)
    failure = result.permanent["refused@example.com"]
    assert failure.code == 550
    assert failure.message == "5.1.1 <refused@example.com>: Recipient address rejected: Mailbox unavailable"
    (delivered,) = capture.wait_for_messages(1)
    assert delivered.rcpt_tos == ("bart@example.com",)


def test_postfix_restarted_between_two_sends(postfix, at_postfix, capture):
    connection = Connection()
    connection.sendmail("anne@example.com", ["bart@example.com"], POST)
    postfix.restart()
    assert connection.sendmail("anne@example.com", ["cate@example.com"], POST) == {}
    connection.quit()
    assert connection.connection_count == 2
    delivered = capture.wait_for_messages(2)
    assert sorted(m.rcpt_tos for m in delivered) == [("bart@example.com",), ("cate@example.com",)]


def test_verp_through_postfix(at_postfix, capture):
    at_postfix.push("verp", "[mta]\ndelivery: verp\n")
    with Delivery() as delivery:
        assert delivery.deliver("bounces@lists.example.org", ["anne@example.com", "bart@example.com"], POST).ok
    delivered = capture.wait_for_messages(2)
    assert sorted(m.mail_from for m in delivered) == [
        "bounces+anne=example.com@lists.example.org",
        "bounces+bart=example.com@lists.example.org",
    ]


def sent_before_first_reply(records) -> list[str]:
    """The verbs our transcript shows going out before the first reply after EHLO."""
    lines = [(record.smtp_direction, record.smtp_line) for record in records]
    start = max(i for i, (direction, line) in enumerate(lines) if direction == "C" and line.startswith("ehlo"))
    start = next(i for i in range(start, len(lines)) if lines[i][0] == "S" and lines[i][1].startswith("250 ")) + 1
    sent = []
    for direction, line in lines[start:]:
        if direction == "S":
            break
        verb = re.match(r"([A-Z]+)", line)
        assert verb is not None, line
        sent.append(verb[1])
    return sent


def test_pipelining_with_postfix_reports_every_recipient(at_postfix, postfix, capture, caplog):
    caplog.set_level(logging.DEBUG, logger="mailman_mta.transcript")
    members = ["bart@example.com", "refused@example.com", "cate@example.com"]
    connection = Connection(debug=True)
    with Delivery(connection) as delivery:
        result = delivery.deliver("anne@example.com", members, POST)
        all_refused = delivery.deliver("anne@example.com", ["refused@example.com"], POST)
        again = delivery.deliver("anne@example.com", ["dave@example.com"], POST)
    assert sent_before_first_reply(caplog.records) == ["MAIL", "RCPT", "RCPT", "RCPT", "DATA"]
    assert result.accepted == ("bart@example.com", "cate@example.com")
    assert result.permanent["refused@example.com"].code == 550
    assert all_refused.permanent["refused@example.com"].code == 550
    assert again.ok and connection.connection_count == 1, "the refused transaction left the connection usable"
    delivered = capture.wait_for_messages(2)
    assert sorted(m.rcpt_tos for m in delivered) == [("bart@example.com", "cate@example.com"), ("dave@example.com",)]
    log = postfix.wait_for_log("to=<dave@example.com>")
    assert "improper command pipelining" not in log


def test_a_pool_delivers_every_post_once_through_postfix(at_postfix, postfix, capture):
    at_postfix.push("pool", "[mta]\nmax_connections: 4\ndelivery: verp\n")
    posts = [
        (
            "bounces@lists.example.org",
            [f"m{n}@example.com", f"n{n}@example.com"],
            POST.replace(b"via Postfix", f"post {n}".encode()),
        )
        for n in range(10)
    ]
    with Delivery() as delivery:
        results = list(delivery.deliver_many(posts))
        used = sum(1 for connection in delivery.connections if connection.connection_count)
    assert all(result.ok for result in results)
    assert 1 <= used <= 4
    delivered = capture.wait_for_messages(20)
    assert sorted(m.mail_from for m in delivered) == sorted(
        f"bounces+{local}{n}=example.com@lists.example.org" for n in range(10) for local in "mn"
    )
