"""Chained transactions: the next copy's MAIL, RCPT and DATA behind the previous message's final dot.

RFC 2920 allows it and it saves a round trip per copy, but the next
transaction then begins before the previous one has its verdict, so every
way of ending is checked here: refusals of either, a connection limit, a
caller that sends something else next, and the relay's raw bytes.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.envelope import Envelope
from mailman_mta.smtp.replies import ReplyReader
from mailman_mta.smtp.transport import SMTPTransport
from mailman_mta.testing import CountingSMTPServer
from mailman_mta.testing.scripted import ScriptedSMTPServer

MESSAGE = b"From: list@example.org\r\nSubject: chained\r\n\r\nHello.\r\n"
MEMBERS = [f"member{i}@example.com" for i in range(8)]


@pytest.fixture
def writes(monkeypatch):
    """Every write the client makes, as bytes."""
    seen: list[bytes] = []
    original = SMTPTransport._sendall

    def recording(self, data):
        seen.append(bytes(data))
        return original(self, data)

    monkeypatch.setattr(SMTPTransport, "_sendall", recording)
    return seen


@pytest.mark.parametrize("strategy", ["individual", "verp"])
def test_each_copy_goes_once_and_the_next_commands_follow_each_message(
    mta_config, mta_smtpd, mta_layers, writes, strategy
):
    mta_layers.push("one", f"[mta]\ndelivery: {strategy}\nmax_connections: 1\n")
    with Delivery() as delivery:
        result = delivery.deliver("list@example.org", MEMBERS, MESSAGE)
    assert result.ok and set(result.accepted) == set(MEMBERS)
    assert mta_smtpd.copies == Counter(MEMBERS), "every member exactly once"
    chained = [data for data in writes if b".\r\nMAIL FROM:<" in data]
    assert len(chained) == len(MEMBERS) - 1, "every copy but the first went out behind the one before"
    assert mta_smtpd.get_connection_count() == 1
    assert mta_smtpd.commands.count("QUIT") == 1


def test_refusals_on_either_side_of_a_chain_are_exact(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("one", "[mta]\ndelivery: individual\nmax_connections: 1\n")
    mta_smtpd.refuse_recipient(MEMBERS[2], "550 5.1.1 No such user")
    mta_smtpd.refuse_recipient(MEMBERS[3], "452 4.2.2 Mailbox full")
    mta_smtpd.script("END-OF-DATA", reply="554 5.7.1 Rejected for content", times=1)
    with Delivery() as delivery:
        result = delivery.deliver("list@example.org", MEMBERS, MESSAGE)
    refused = {recipient: failure.code for recipient, failure in result.refused.items()}
    assert refused == {MEMBERS[0]: 554, MEMBERS[2]: 550, MEMBERS[3]: 452}
    assert set(result.accepted) == set(MEMBERS) - set(refused)
    assert mta_smtpd.copies == Counter(result.accepted)


def test_a_session_limit_is_kept_with_chaining(mta_config, mta_smtpd, mta_layers, writes):
    mta_layers.push("two", "[mta]\ndelivery: individual\nmax_connections: 1\nmax_sessions_per_connection: 3\n")
    with Delivery() as delivery:
        result = delivery.deliver("list@example.org", MEMBERS, MESSAGE)
    assert result.ok
    assert mta_smtpd.copies == Counter(MEMBERS)
    assert mta_smtpd.get_connection_count() == 3, "8 sessions, at most 3 per connection"
    assert mta_smtpd.commands.count("QUIT") == 3


def test_a_chain_the_caller_does_not_follow_is_dropped_and_nothing_of_it_is_delivered(mta_smtpd):
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0)
    first = Envelope.build("list@example.org", [MEMBERS[0]], MESSAGE)
    offered = Envelope.build("list@example.org", [MEMBERS[1]], MESSAGE)
    other = Envelope.build("list@example.org", [MEMBERS[2]], MESSAGE)
    assert connection.transact(first, then=offered).error is None
    assert connection.pending is offered
    assert connection.transact(other).error is None, "sent on a new connection"
    connection.quit()
    assert connection.pending is None
    assert mta_smtpd.copies == Counter([MEMBERS[0], MEMBERS[2]]), "the offered one was never sent"
    assert mta_smtpd.get_connection_count() == 2
    assert mta_smtpd.commands.count("QUIT") == 1, "no QUIT where the relay was waiting for data"


def test_a_chain_broken_by_the_relay_sends_the_next_copy_from_the_start(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("one", "[mta]\ndelivery: individual\nmax_connections: 1\n")
    mta_smtpd.script("END-OF-DATA", reply="421 4.3.2 Shutting down", close=True, times=1)
    with Delivery() as delivery:
        result = delivery.deliver("list@example.org", MEMBERS[:3], MESSAGE)
    assert {r: f.code for r, f in result.refused.items()} == {MEMBERS[0]: 421}
    assert set(result.accepted) == set(MEMBERS[1:3])
    assert mta_smtpd.copies == Counter(MEMBERS[1:3]), "nothing twice, nothing lost"


@pytest.fixture(params=["aiosmtpd", "scripted"])
def nagle_relay(request):
    """(host, port) of a relay that writes each reply on its own with Nagle's algorithm on.

    Our aiosmtpd server with Nagle left on, and `ScriptedSMTPServer` (which never turned it off).
    """
    server = CountingSMTPServer(nagle=True) if request.param == "aiosmtpd" else ScriptedSMTPServer()
    with server:
        yield server.hostname, server.port


def _verp_seconds(host: str, port: int, members: list[str]) -> float:
    connection = Connection(host, port, delivery="verp", max_connections=1)
    with Delivery(connection) as delivery:
        assert delivery.deliver("list@example.org", members[:1], MESSAGE).ok
        started = time.monotonic()
        result = delivery.deliver("list@example.org", members, MESSAGE)
        seconds = time.monotonic() - started
    assert result.ok
    return seconds


def test_a_relay_writing_each_reply_with_nagle_on_does_not_hold_up_a_chain(nagle_relay):
    """Such a relay holds each reply after the first of a pipelined group until the first is acknowledged.

    A client with nothing to send delays that acknowledgement by 40 ms, and
    does not acknowledge at once while the low-water mark keeps octets
    unread, so every copy of a chain waited 40 ms.  The reader asks for
    acknowledgements at once while it awaits replies, and a connection
    whose wait outlasts `LOW_WATER_PATIENCE` (10 ms) stops using the mark:
    50 copies take a few tens of milliseconds, not 50 x 10 ms or 50 x 40 ms.
    """
    seconds = _verp_seconds(*nagle_relay, [f"member{i}@example.com" for i in range(50)])
    assert seconds < 0.35, f"{seconds:.2f} s for 50 copies: held up by delayed acknowledgements"


def test_without_quick_acknowledgements_such_a_relay_holds_each_copy(nagle_relay, monkeypatch):
    """The control: the stall is real on this kernel, so the test above can fail."""
    monkeypatch.setattr(ReplyReader, "_ack_at_once", lambda self: None)
    seconds = _verp_seconds(*nagle_relay, [f"member{i}@example.com" for i in range(10)])
    assert seconds >= 0.3, f"{seconds:.2f} s for 10 copies: the relay did not hold its replies, nothing was tested"
