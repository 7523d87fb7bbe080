"""Per-recipient verdicts (mta_screen_recipients): one verdict on every path."""

from __future__ import annotations

import smtplib
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailman_mta import hookimpl
from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.envelope import DROPPED, Envelope
from mailman_mta.errors import ConfigurationError
from mailman_mta.manager import registry

MESSAGE = "Subject: post\n\nHello\n"
MEMBERS = ["anne@example.com", "bart@example.org", "gone@example.com", "left@example.net"]


class Screen:
    """Refuses gone@ with 550 5.7.1, drops left@; records what it saw and on which thread."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []
        self.copies: list[tuple[str, str]] = []

    @hookimpl
    def mta_screen_recipients(self, envelope):
        self.seen.append(list(envelope.recipients))
        for recipient in list(envelope.recipients):
            if recipient.startswith("gone@"):
                envelope.refuse(recipient, 550, "5.7.1 suppressed")
            elif recipient.startswith("left@"):
                envelope.drop(recipient, "unsubscribed elsewhere")

    @hookimpl
    def mta_prepare_copy(self, connection, recipient):
        self.copies.append((recipient, f"{threading.get_ident()}:{connection.number}"))


@pytest.fixture
def screen(enabled):
    plugin = Screen()
    with enabled(screen=plugin):
        yield plugin


def sent_to(server) -> list[str]:
    return sorted(r for message in server.received for r in message.rcpt_tos)


def test_sendmail_reports_the_verdicts_in_its_refused_dict(screen, mta_smtpd):
    with Connection() as connection:
        refused = connection.sendmail("list@example.com", MEMBERS, MESSAGE)
    assert refused == {
        "gone@example.com": (550, b"5.7.1 suppressed"),
        "left@example.net": (DROPPED, b"unsubscribed elsewhere"),
    }
    assert sent_to(mta_smtpd) == ["anne@example.com", "bart@example.org"]


def test_sendmail_to_nobody_left_raises_as_smtplib_does_and_opens_no_connection(screen, mta_smtpd):
    with Connection() as connection, pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        connection.sendmail("list@example.com", ["gone@example.com", "left@example.net"], MESSAGE)
    assert caught.value.recipients == {
        "gone@example.com": (550, b"5.7.1 suppressed"),
        "left@example.net": (0, b"unsubscribed elsewhere"),
    }
    assert mta_smtpd.get_connection_count() == 0


def test_everyone_else_refused_still_names_the_judged(screen, mta_smtpd):
    mta_smtpd.refuse_recipient("anne@example.com")
    mta_smtpd.refuse_recipient("bart@example.org")
    with Connection() as connection, pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        connection.sendmail("list@example.com", MEMBERS, MESSAGE)
    assert set(caught.value.recipients) == set(MEMBERS)


@pytest.mark.parametrize("delivery", ["bulk", "individual", "verp"])
@pytest.mark.parametrize("connections", [1, 3])
def test_delivery_reports_each_verdict_on_every_strategy(screen, mta_smtpd, mta_layers, delivery, connections):
    mta_layers.push("strategy", f"[mta]\ndelivery: {delivery}\nmax_connections: {connections}\n")
    with Delivery() as sender:
        result = sender.deliver("list@example.com", MEMBERS, MESSAGE)
    assert result.accepted == ("anne@example.com", "bart@example.org")
    assert {r: (f.code, f.message) for r, f in result.refused.items()} == {
        "gone@example.com": (550, "5.7.1 suppressed")
    }
    assert result.permanent and not result.temporary
    assert result.dropped == {"left@example.net": "unsubscribed elsewhere"}
    assert not result.ok
    assert sent_to(mta_smtpd) == ["anne@example.com", "bart@example.org"]
    assert set(result.relays) == {"anne@example.com", "bart@example.org"}
    if delivery != "bulk":
        assert sorted(r for r, _ in screen.copies) == ["anne@example.com", "bart@example.org"], (
            "a judged recipient's copy is never prepared"
        )
        assert result.transactions == 2, "a copy with nobody left is no transaction"


def test_prepare_copy_runs_on_the_thread_that_sends_the_copy(screen, mta_smtpd, mta_layers):
    mta_layers.push("many", "[mta]\ndelivery: individual\nmax_connections: 4\n")
    busy: dict[int, str] = {}
    clashes = []

    class Watch:
        @hookimpl
        def mta_prepare_copy(self, connection):
            holder = busy.setdefault(connection.number, threading.current_thread().name)
            if holder != threading.current_thread().name:
                clashes.append(connection.number)

        @hookimpl
        def mta_delivery_result(self, connection):
            busy.pop(connection.number, None)

    registry.add("watch", Watch())
    mta_layers.push("watch", "[plugin.watch]\nenabled: yes\n")
    try:
        members = [f"m{n}@example.com" for n in range(40)]
        with Delivery() as sender:
            result = sender.deliver("list@example.com", members, MESSAGE)
    finally:
        mta_layers.pop("watch")
        registry.remove("watch")
    assert result.ok
    assert clashes == [], "mta_prepare_copy ran on a connection another thread was using"


def test_a_later_failure_never_overrides_a_verdict(screen, mta_smtpd):
    mta_smtpd.script("END-OF-DATA", close=True, accept=True)
    with Delivery() as sender:
        result = sender.deliver("list@example.com", MEMBERS, MESSAGE)
    assert result.refused["gone@example.com"].code == 550
    assert "gone@example.com" not in result.uncertain and "left@example.net" not in result.uncertain
    assert result.uncertain == {"anne@example.com", "bart@example.org"}
    assert result.dropped == {"left@example.net": "unsubscribed elsewhere"}


def test_deliver_many_keeps_verdicts_per_post(screen, mta_smtpd, mta_layers):
    mta_layers.push("pool", "[mta]\nmax_connections: 2\n")
    posts = [("list@example.com", MEMBERS, MESSAGE), ("list@example.com", ["gone@example.com"], MESSAGE)]
    with Delivery() as sender:
        first, second = sender.deliver_many(posts)
    assert first.accepted == ("anne@example.com", "bart@example.org")
    assert second.accepted == () and second.refused["gone@example.com"].code == 550
    assert second.error is None and second.transactions == 0


def test_verdicts_reach_the_delivery_result_hook(screen, enabled, mta_smtpd):
    seen = []

    class Journal:
        @hookimpl
        def mta_delivery_result(self, result, refused):
            seen.append((result.recipients, dict(result.verdicts), dict(refused)))

    with enabled(journal=Journal()), Connection() as connection:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            connection.sendmail("list@example.com", ["gone@example.com"], MESSAGE)
    ((recipients, verdicts, refused),) = seen
    assert recipients == () and verdicts["gone@example.com"].code == 550
    assert refused == {"gone@example.com": (550, b"5.7.1 suppressed")}


@pytest.mark.parametrize(
    ("code", "problem"), [(250, "4xx or 5xx"), (600, "4xx or 5xx"), ("550", "4xx or 5xx"), (True, "4xx or 5xx")]
)
def test_refuse_checks_its_code(code, problem):
    envelope = Envelope("a@example.com", ["b@example.com"], b"x\r\n")
    with pytest.raises(ValueError, match=problem):
        envelope.refuse("b@example.com", code, "no")
    assert envelope.recipients == ["b@example.com"] and not envelope.verdicts


def test_a_verdict_on_someone_not_a_recipient_is_an_error():
    envelope = Envelope("a@example.com", ["b@example.com"], b"x\r\n")
    with pytest.raises(ValueError, match="'c@example.com' is not a recipient"):
        envelope.drop("c@example.com", "no")


def test_reply_text_is_one_line():
    envelope = Envelope("a@example.com", ["b@example.com"], b"x\r\n")
    envelope.refuse("b@example.com", 550, "5.7.1 bad\r\nRCPT TO:<evil@example.com>")
    assert envelope.verdicts["b@example.com"].text == "5.7.1 bad RCPT TO:<evil@example.com>"


def test_a_wrapper_on_a_hook_called_one_by_one_is_refused(mta_layers):
    class Wrapping:
        @hookimpl(wrapper=True)
        def mta_delivery_result(self):
            return (yield)

    registry.add("wrapping", Wrapping())
    try:
        with pytest.raises(ConfigurationError, match="mta_delivery_result as a wrapper, which would never run"):
            mta_layers.push("w", "[plugin.wrapping]\nenabled: yes\n")
    finally:
        registry.remove("wrapping")


verdicts = st.sampled_from(["accept", "refuse4", "refuse5", "drop"])
server_replies = st.sampled_from(["ok", "550", "451"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(verdicts, server_replies), min_size=1, max_size=8),
    st.sampled_from(["bulk", "individual"]),
    st.sampled_from(["ok", "eod-lost", "data-451"]),
)
def test_property_nothing_judged_is_sent_and_every_verdict_stands(mta_smtpd, mta_layers, plan, delivery, ending):
    """Whatever the plugin decides and the relay replies, a judged recipient
    is never sent, keeps its verdict, and nobody else is accepted unless the
    server has a copy for them."""
    mta_smtpd.clear()
    mta_smtpd.clear_faults()
    mta_smtpd.clear_refusals()
    members = [f"m{n}@example.com" for n in range(len(plan))]
    decided = dict(zip(members, (verdict for verdict, _ in plan)))
    for member, (_, reply) in zip(members, plan):
        if reply != "ok":
            mta_smtpd.refuse_recipient(member, f"{reply} {reply[0]}.1.1 no")
    if ending == "eod-lost":
        mta_smtpd.script("END-OF-DATA", close=True, accept=True, times=0)
    elif ending == "data-451":
        mta_smtpd.script("END-OF-DATA", reply="451 4.3.0 try later", times=0)

    class Decide:
        @hookimpl
        def mta_screen_recipients(self, envelope):
            for recipient in list(envelope.recipients):
                verdict = decided[recipient]
                if verdict == "refuse4":
                    envelope.refuse(recipient, 450, "4.7.1 later")
                elif verdict == "refuse5":
                    envelope.refuse(recipient, 554, "5.7.1 never")
                elif verdict == "drop":
                    envelope.drop(recipient, "dropped")

    registry.add("decide", Decide())
    mta_layers.push("decide", f"[plugin.decide]\nenabled: yes\n[mta]\ndelivery: {delivery}\nmax_connections: 1\n")
    try:
        with Delivery() as sender:
            result = sender.deliver("list@example.com", members, MESSAGE)
    finally:
        mta_layers.pop("decide")
        registry.remove("decide")
        mta_smtpd.clear_faults()
        mta_smtpd.reset()
    received = [r for message in mta_smtpd.received for r in message.rcpt_tos]
    for member in members:
        verdict = decided[member]
        if verdict != "accept":
            assert member not in received
        if verdict == "drop":
            assert result.dropped[member] == "dropped" and member not in result.refused
        elif verdict == "refuse4":
            assert result.refused[member].code == 450 and member not in result.uncertain
        elif verdict == "refuse5":
            assert result.refused[member].code == 554 and member not in result.uncertain
        if member in result.accepted:
            assert received.count(member) == 1, "accepted means the server has exactly one copy"
        if member in result.permanent:
            assert verdict == "refuse5" or plan[members.index(member)][1] == "550"
