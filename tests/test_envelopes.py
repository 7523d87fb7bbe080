"""What goes on the wire: addresses exactly as given or not at all, and the
message exactly as given, dot-stuffed, without copies.
"""

from __future__ import annotations

import email.message
import email.policy
import re
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailman_mta import envelope as envelope_module
from mailman_mta.addresses import mailbox_problem
from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.envelope import crlf, message_bytes
from mailman_mta.errors import EnvelopeError
from mailman_mta.smtp.transaction import data_segments
from mailman_mta.testing import ScriptedSMTPServer

MESSAGE = b"Subject: hi\r\n\r\nHello\r\n"


@pytest.fixture
def relay():
    with ScriptedSMTPServer() as server:
        yield server


# -- 5. addresses go out exactly as given, or not at all -------------------

REWRITTEN_BY_SMTPLIB = [
    "evil@z.example(@good.example",
    "a@y,b@z",
    "@relay:a@y",
    "grp:a@y;",
    "Anne <anne@example.com>",
    "anne@example.com (Anne)",
    "anne@example.com.",
    "anne..b@example.com",
    ".anne@example.com",
    "anne@-example.com",
    "anne@exa_mple..com",
    'an"ne@example.com',
    "anne@[300.1.2.3]",
    "anne@[IPv6:fe80::zz]",
    "an ne",
    "an\x85ne@example.com",
    "an\u2028ne@example.com",
    "an\u00a0ne@example.com",
    "\u3000",
    "anne.",
    "@example.com",
    "anne@",
    "a\udc80@example.com",
]


@pytest.mark.parametrize("address", REWRITTEN_BY_SMTPLIB)
def test_an_address_that_is_not_a_mailbox_is_refused_before_anything_is_sent(relay, address):
    with pytest.raises(EnvelopeError, match="is not an envelope address"):
        Connection(relay.hostname, relay.port, 0).sendmail("list@example.org", [address], MESSAGE)
    with pytest.raises(EnvelopeError, match="sender .* is not an envelope address"):
        Connection(relay.hostname, relay.port, 0).sendmail(address, ["anne@example.com"], MESSAGE)
    assert relay.connections == 0


@pytest.mark.parametrize("address", REWRITTEN_BY_SMTPLIB)
def test_delivery_refuses_such_a_recipient_alone_and_permanently(relay, address):
    with Delivery(Connection(relay.hostname, relay.port, 0)) as delivery:
        result = delivery.deliver("list@example.org", [address, "bart@example.com"], MESSAGE)
    assert result.accepted == ("bart@example.com",)
    assert result.refused[address].code == 553 and result.refused[address].permanent
    assert [t.accepted for t in relay.kept] == [["bart@example.com"]]


UNUSUAL_BUT_VALID = [
    '"john doe"@example.com',
    '"quoted\\"inside"@example.com',
    "anne+tag=x@sub.example.co.uk",
    "o'brien@example.ie",
    "anne@[192.0.2.1]",
    "anne@[IPv6:2001:db8::1]",
    "postmaster@localhost",
    "a!#$%&'*+-/=?^_`{|}~@example.com",
    "x@" + ".".join(["a" * 63] * 3),
    "person_00",
]


@pytest.mark.parametrize("address", UNUSUAL_BUT_VALID)
def test_an_unusual_mailbox_goes_out_byte_for_byte(relay, address):
    connection = Connection(relay.hostname, relay.port, 0)
    assert connection.sendmail(address, [address], MESSAGE) == {}
    connection.quit()
    lines = [line for _, line in relay.commands]
    assert f"RCPT TO:<{address}>".encode() in lines
    assert any(line.startswith(f"MAIL FROM:<{address}>".encode()) for line in lines)
    assert relay.kept[0].accepted == [address]


def test_utf8_addresses_go_out_as_utf8_with_smtputf8(relay):
    address = "j\u00f6rg@m\u00fcnchen.example"
    connection = Connection(relay.hostname, relay.port, 0)
    assert connection.sendmail(address, [address], MESSAGE) == {}
    connection.quit()
    lines = [line for _, line in relay.commands]
    assert f"RCPT TO:<{address}>".encode() in lines
    assert f"MAIL FROM:<{address}> SIZE={len(MESSAGE)} SMTPUTF8".encode() in lines


local_atoms = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}", fullmatch=True)
labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
mailboxes = st.builds(
    lambda atoms, domain: ".".join(atoms) + "@" + ".".join(domain),
    st.lists(local_atoms, min_size=1, max_size=3),
    st.lists(labels, min_size=1, max_size=4),
)


@given(mailboxes)
def test_every_dot_atom_mailbox_is_accepted(address):
    assert mailbox_problem(address) is None


@given(st.text(max_size=40))
def test_whatever_is_accepted_cannot_break_out_of_its_brackets(text):
    """An accepted address never holds what would end the path or the line."""
    if mailbox_problem(text) is None:
        assert "@" in text or re.fullmatch(r"[^\s@<>()\[\]\\,;:\"]+", text), "a bare name is a dot-atom"
        assert not any(character.isspace() for character in text.replace(" ", "")), "no line breaks of any kind"
        for character in "\r\n\x00<>":
            assert character not in text
        if " " in text:
            assert text.startswith('"'), "only a quoted local part holds a space"


def test_options_from_plugins_are_checked_too(relay):
    from mailman_mta.envelope import Envelope

    envelope = Envelope.build("list@example.org", ["anne@example.com"], MESSAGE)
    envelope.mail_options.append("NOTIFY=NEVER\r\nRCPT TO:<evil@example.com>")
    with pytest.raises(EnvelopeError, match="is not an ESMTP parameter for MAIL"):
        Connection(relay.hostname, relay.port, 0).send(envelope)
    assert relay.connections == 0, "refused before connecting"


def test_an_unchanged_envelope_is_checked_once(relay, monkeypatch):
    calls = []
    original = envelope_module.check_address
    monkeypatch.setattr(envelope_module, "check_address", lambda a, r: calls.append(a) or original(a, r))
    connection = Connection(relay.hostname, relay.port, 0)
    connection.sendmail("list@example.org", ["a@example.com", "b@example.com"], MESSAGE)
    connection.quit()
    assert sorted(calls) == ["a@example.com", "b@example.com", "list@example.org"]


# -- 6. message input --------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: email.message.Message(),
        lambda: email.message.EmailMessage(policy=email.policy.SMTP),
    ],
)
def test_bcc_headers_never_reach_anyone(relay, make):
    message = make()
    message["From"] = "list@example.org"
    message["To"] = "members@example.org"
    message["Bcc"] = "secret-archive@example.org"
    message["Resent-Bcc"] = "another-secret@example.org"
    message["Subject"] = "hi"
    message.set_payload("Hello\n")
    connection = Connection(relay.hostname, relay.port, 0)
    connection.sendmail("list@example.org", ["anne@example.com", "secret-archive@example.org"], message)
    connection.quit()
    sent = relay.kept[0].data
    assert b"secret" not in sent and b"Bcc" not in sent
    assert b"To: members@example.org\r\n" in sent
    assert message["Bcc"] == "secret-archive@example.org", "the caller's message is left alone"


def test_text_with_a_lone_surrogate_is_an_envelope_error():
    with pytest.raises(EnvelopeError, match=r"'\\ud800' at position 9: a lone surrogate"):
        message_bytes("Subject: \ud800\n\n")


def test_text_decoded_with_surrogateescape_gets_its_bytes_back():
    raw = b"Subject: \xff\xfe\r\n\r\nbody\r\n"
    assert message_bytes(raw.decode("utf-8", "surrogateescape")) == raw


def test_crlf_input_is_not_copied():
    data = b"Subject: x\r\n\r\n" + b"line\r\n" * 1000
    assert crlf(data) is data


@pytest.mark.parametrize("ending", [b"\n", b"\r", b"\r\n"])
def test_every_line_ending_becomes_crlf(ending):
    assert crlf(ending.join([b"a", b"", b"b", b""])) == b"a\r\n\r\nb\r\n"


def test_mixed_line_endings_become_crlf():
    assert crlf(b"a\nb\r\nc\rd\r\r\ne") == b"a\r\nb\r\nc\r\nd\r\n\r\ne"


def unstuff(payload: bytes) -> bytes:
    """What a server makes of the DATA payload (RFC 5321 4.5.2)."""
    assert payload.endswith(b"\r\n.\r\n") or payload == b".\r\n"
    body = payload[: -len(b".\r\n")]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@given(st.lists(st.sampled_from([b"", b".", b"..", b".x", b"x.", b"text", b"\xc3\xa9", b". ."]), max_size=12))
def test_dot_stuffing_round_trips(lines):
    data = b"".join(line + b"\r\n" for line in lines)
    payload = b"".join(bytes(segment) for segment in data_segments(data))
    assert unstuff(payload) == data
    assert b"\r\n.\r\n" not in payload[:-3] and not payload[:-3].startswith(b".\r\n")


@pytest.fixture
def sink():
    """A relay that keeps no message data, so memory measured is the client's."""
    with ScriptedSMTPServer(max_data_octets=0) as server:
        yield server


@pytest.mark.parametrize(
    "message, most",
    [
        # Messages run to tens of megabytes; a copy per step adds up.
        (b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 25_000, 0.1),  # CRLF already: no copy
        (b"Subject: big\n\n" + (b"y" * 998 + b"\n") * 10_000, 1.5),  # LF only: one copy
    ],
    ids=["25 MB CRLF", "10 MB LF"],
)
def test_peak_extra_memory_for_one_message(sink, message, most):
    connection = Connection(sink.hostname, sink.port, 0, command_timeout=60)
    connection.sendmail("list@example.org", ["anne@example.com"], b"Subject: warm-up\r\n\r\n")
    tracemalloc.start()
    try:
        connection.sendmail("list@example.org", ["anne@example.com"], message)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        connection.quit()
    assert peak < most * len(message), f"peak extra memory {peak / len(message):.2f}x the message"
