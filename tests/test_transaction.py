"""The mail transaction against a relay that misbehaves at the byte level.

`ScriptedSMTPServer` speaks raw SMTP and replaces any answer with any
bytes.  Each test says what the relay did and checks three things: what
the caller of `Delivery.deliver` (or `Connection.sendmail`) was told, for
every recipient; that nobody is reported accepted who has no copy at the
server; and that nothing is permanent unless the server said 5xx for it.
"""

from __future__ import annotations

import smtplib
import time

import pytest

from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.errors import SMTPProtocolError, SMTPTimeoutError
from mailman_mta.testing import Action, ScriptedSMTPServer
from mailman_mta.testing.scripted import DEFAULT_EXTENSIONS

MESSAGE = b"From: list@example.org\r\nSubject: post\r\n\r\nHello, members.\r\n"
THREE = ["anne@example.com", "bart@example.com", "cate@example.com"]
LOCK_STEP = tuple(e for e in DEFAULT_EXTENSIONS if e != "PIPELINING")


@pytest.fixture(params=["pipelined", "lock-step"])
def relay(request):
    """The raw relay, offering PIPELINING or not (so both paths run)."""
    extensions = DEFAULT_EXTENSIONS if request.param == "pipelined" else LOCK_STEP
    with ScriptedSMTPServer(extensions) as server:
        yield server


@pytest.fixture
def pipelining_relay():
    with ScriptedSMTPServer() as server:
        yield server


def plan(recipients: int = 3, **steps: Action) -> list[Action]:
    """A script for one fresh connection: normal, except the steps named.

    Steps: greeting, ehlo, mail, rcpt1..rcptN, data, end (of data).
    """
    names = ["greeting", "ehlo", "mail", *(f"rcpt{i}" for i in range(1, recipients + 1)), "data", "end"]
    unknown = set(steps) - set(names)
    assert not unknown, unknown
    return [steps.get(name, Action()) for name in names]


def deliver(server: ScriptedSMTPServer, recipients=THREE, message=MESSAGE, **settings):
    settings.setdefault("command_timeout", 2)
    with Delivery(Connection(server.hostname, server.port, 0, **settings)) as delivery:
        return delivery.deliver("list@example.org", recipients, message)


def copies_of(server: ScriptedSMTPServer, address: str) -> int:
    return sum(address in transaction.accepted for transaction in server.kept)


def assert_truthful(server: ScriptedSMTPServer, result) -> None:
    """Accepted means a copy is at the server; nothing else is claimed."""
    for address in result.accepted:
        assert copies_of(server, address) >= 1, f"{address} reported accepted without a copy"
    for address in result.refused:
        assert copies_of(server, address) == 0 or result.refused[address].temporary


# -- 1. a recipient is accepted only with a 250 at the end of DATA ---------


def test_a_421_at_the_second_of_three_rcpts_fails_all_three(relay):
    relay.script(*plan(rcpt2=Action(reply=b"421 4.3.2 Shutting down\r\n", close=True)))
    result = deliver(relay)
    assert result.accepted == ()
    assert {address: failure.code for address, failure in result.refused.items()} == dict.fromkeys(THREE, 421)
    assert all(failure.temporary for failure in result.refused.values())
    assert relay.kept == []


def test_sendmail_raises_for_everyone_when_the_transaction_is_cut_short(relay):
    relay.script(*plan(rcpt2=Action(reply=b"421 4.3.2 Shutting down\r\n", close=True)))
    connection = Connection(relay.hostname, relay.port, 0, command_timeout=2)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        connection.sendmail("list@example.org", THREE, MESSAGE)
    assert caught.value.recipients == dict.fromkeys(THREE, (421, b"4.3.2 Shutting down"))
    assert connection.transport is None, "a 421 closes the connection"


def test_a_drop_at_the_second_rcpt_fails_all_three(relay):
    relay.script(*plan(rcpt2=Action(reply=b"", close=True)))
    result = deliver(relay)
    assert result.accepted == ()
    assert {failure.code for failure in result.refused.values()} == {444}
    assert relay.kept == []


def test_a_refusal_before_a_drop(relay):
    relay.script(*plan(rcpt1=Action(reply=b"550 5.1.1 No such user\r\n"), rcpt3=Action(reply=b"", close=True)))
    result = deliver(relay)
    assert result.refused["bart@example.com"].code == 444
    assert result.refused["cate@example.com"].code == 444
    if "PIPELINING" in relay.extensions:
        # The drop came part-way through a pipelined group's replies: a
        # reply lost on the way would have shifted the others, so none of
        # them is a verdict.
        assert result.refused["anne@example.com"].code == 444
    else:
        # One command at a time, that reply was in step: it stands.
        assert result.refused["anne@example.com"] == (550, "5.1.1 No such user")


def test_a_reply_missing_from_a_pipelined_group_shifts_no_verdict_onto_anyone(pipelining_relay):
    # No reply to the third RCPT: DATA's "554 no valid recipients" arrives
    # where the third RCPT's reply should be.
    pipelining_relay.script(*plan(rcpt3=Action(reply=b""), data=Action(reply=b"554 5.5.1 No valid recipients\r\n")))
    result = deliver(pipelining_relay, command_timeout=0.3)
    assert result.accepted == () and result.permanent == {}
    assert isinstance(result.error, SMTPTimeoutError)


@pytest.mark.parametrize("code", [b"220", b"235", b"221", b"354"])
def test_a_success_code_meant_for_another_command_is_not_acceptance(relay, code):
    relay.script(*plan(rcpt1=Action(reply=code + b" 2.0.0 Ok\r\n")))
    result = deliver(relay)
    assert result.accepted == () and result.permanent == {}
    assert relay.kept == []


@pytest.mark.parametrize(
    "step, action, code",
    [
        ("data", Action(reply=b"421 4.3.2 Bye\r\n", close=True), 421),
        ("data", Action(reply=b"451 4.3.0 Not now\r\n"), 451),
        ("data", Action(reply=b"", close=True), 444),
        ("end", Action(reply=b"451 4.3.0 Queue trouble\r\n"), 451),
        ("end", Action(reply=b"", close=True), 444),
    ],
)
def test_a_transaction_that_fails_late_fails_every_accepted_recipient(relay, step, action, code):
    relay.script(*plan(rcpt2=Action(reply=b"550 5.1.1 No such user\r\n"), **{step: action}))
    result = deliver(relay)
    assert result.accepted == ()
    assert result.refused["anne@example.com"].code == result.refused["cate@example.com"].code == code
    if code == 444 and step == "data" and "PIPELINING" in relay.extensions:
        assert result.refused["bart@example.com"].code == 444, "no verdict from a group cut short"
    else:
        assert result.refused["bart@example.com"] == (550, "5.1.1 No such user")
    assert relay.kept == []


def test_a_message_kept_without_a_reply_may_have_arrived_and_is_not_sent_again(relay):
    relay.script(*plan(end=Action(reply=b"", close=True, keep=True)))
    result = deliver(relay)
    assert {failure.code for failure in result.refused.values()} == {444}
    assert "may have arrived" in result.refused["anne@example.com"].message
    assert len(relay.kept) == 1 and relay.connections == 1


def test_a_partly_accepted_transaction_reports_each_recipient(relay):
    relay.script(
        *plan(rcpt1=Action(reply=b"452 4.2.2 Mailbox full\r\n"), rcpt3=Action(reply=b"550 5.1.1 No such user\r\n"))
    )
    result = deliver(relay)
    assert result.accepted == ("bart@example.com",)
    assert result.temporary == {"anne@example.com": (452, "4.2.2 Mailbox full")}
    assert result.permanent == {"cate@example.com": (550, "5.1.1 No such user")}
    assert relay.kept[0].accepted == ["bart@example.com"]
    assert_truthful(relay, result)


def test_duplicate_recipients_are_counted_by_position_not_address(relay):
    """Devmode sends one RCPT per member to the same address."""
    relay.script(*plan(rcpt1=Action(reply=b"452 4.2.2 Over quota\r\n")))
    connection = Connection(relay.hostname, relay.port, 0)
    refused = connection.sendmail("list@example.org", ["dev@example.com"] * 3, MESSAGE)
    connection.quit()
    assert refused == {"dev@example.com": (452, b"4.2.2 Over quota")}
    assert relay.kept[0].accepted == ["dev@example.com", "dev@example.com"]


# -- 2. a reply we cannot read is never permanent ---------------------------

UNREADABLE = {
    "garbage": b"ok fine whatever\r\n",
    "non-numeric code": b"2x0 OK\r\n",
    "negative code": b"-550 no\r\n",
    "over-long line": b"550 " + b"x" * 10_000 + b"\r\n",
    "codes disagree": b"550-5.1.1 no such user\r\n250 but fine\r\n",
    "wrong class": b"354 go ahead\r\n",
}


@pytest.mark.parametrize(
    "step, kind",
    [
        (step, kind)
        for step in ("mail", "rcpt1", "rcpt2", "data")
        for kind in UNREADABLE
        if (step, kind) != ("data", "wrong class")  # 354 is the right class for DATA
    ],
)
def test_an_unreadable_reply_is_temporary(relay, step, kind):
    relay.script(*plan(**{step: Action(reply=UNREADABLE[kind])}))
    result = deliver(relay)
    assert result.accepted == ()
    assert result.permanent == {}, result.refused
    assert {failure.code for failure in result.refused.values()} == {444}
    assert isinstance(result.error, SMTPProtocolError)
    assert relay.kept == []


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_an_unreadable_reply_after_the_data_may_mean_delivered(relay, kind):
    relay.script(*plan(end=Action(reply=UNREADABLE[kind], keep=True)))
    result = deliver(relay)
    assert result.permanent == {}
    assert all("may have arrived" in failure.message for failure in result.refused.values())
    assert relay.connections == 1 and len(relay.kept) == 1, "never sent twice"


@pytest.mark.parametrize("extra", [b"250 2.1.5 Ok\r\n", b"550 5.1.1 Extra\r\n", b"354 go\r\n"])
@pytest.mark.parametrize("step", ["mail", "rcpt1", "rcpt2"])
def test_more_replies_than_commands_are_not_trusted(relay, step, extra):
    # An unsolicited extra reply would shift every later reply by one, and
    # give one recipient's verdict to another.
    steps = {"rcpt2": Action(reply=b"550 5.1.1 No such user\r\n")}
    steps[step] = Action(reply=(steps[step].reply if step in steps else b"250 2.0.0 Ok\r\n") + extra)
    relay.script(*plan(**steps))
    result = deliver(relay)
    assert result.accepted == () and result.permanent == {}, result.refused
    assert isinstance(result.error, SMTPProtocolError)
    assert relay.kept == []


@pytest.mark.parametrize("step", ["greeting", "ehlo"])
def test_garbage_before_the_transaction(relay, step):
    relay.script(*plan(**{step: Action(reply=b"HTTP/1.1 400 Bad Request\r\n")}))
    result = deliver(relay)
    assert {failure.code for failure in result.refused.values()} == {444}
    assert "is not SMTP" in result.refused["anne@example.com"].message


# -- 3. replies are bounded in time and size -------------------------------


@pytest.mark.parametrize("step", ["greeting", "ehlo", "mail", "rcpt2", "data", "end"])
def test_a_trickling_relay_fails_the_command_after_command_timeout(relay, step):
    slow = Action(reply=b"250-" + b"s" * 40 + b"\r\n250 done\r\n", trickle=0.05)
    if step == "data":
        slow.reply = b"354-" + b"s" * 40 + b"\r\n354 go\r\n"
    relay.script(*plan(**{step: slow}))
    started = time.monotonic()
    result = deliver(relay, command_timeout=0.3)
    elapsed = time.monotonic() - started
    assert isinstance(result.error, SMTPTimeoutError)
    assert "within 0.3 s" in str(result.error)
    assert result.accepted == () and result.permanent == {}
    assert elapsed < 1.5, f"took {elapsed:.2f} s"


def test_a_huge_ehlo_reply_fails_temporarily():
    huge = b"".join(b"250-X-FEATURE-%d %s\r\n" % (i, b"p" * 200) for i in range(2000)) + b"250 END\r\n"
    with ScriptedSMTPServer() as server:
        server.script(Action(), Action(reply=huge))
        result = deliver(server)
    assert {failure.code for failure in result.refused.values()} == {444}
    assert "larger than 65536 octets" in str(result.error)


def test_a_slow_relay_within_the_timeout_is_fine(relay):
    relay.script(*plan(**{step: Action(delay=0.1) for step in ("mail", "rcpt2", "end")}))
    result = deliver(relay, command_timeout=1)
    assert result.ok


# -- 4. our side's problems, and the relay's, never bounce members ---------


@pytest.mark.parametrize("reply", [b"554 5.3.2 No SMTP service here\r\n", b"421 4.3.2 Try later\r\n"])
def test_a_refusing_greeting_is_temporary(relay, reply):
    relay.script(*plan(greeting=Action(reply=reply, close=True)))
    result = deliver(relay)
    assert {failure.code for failure in result.refused.values()} == {421}
    assert reply.decode().strip() in result.refused["anne@example.com"].message


@pytest.mark.parametrize("step", ["mail", "rcpt1"])
def test_authentication_required_is_temporary(relay, step):
    relay.script(*plan(**{step: Action(reply=b"530 5.7.0 Authentication required\r\n")}))
    result = deliver(relay)
    assert result.refused["anne@example.com"].code == 454
    assert result.permanent == {}


@pytest.mark.parametrize("step", ["mail", "rcpt2", "data", "end"])
def test_552_is_temporary(relay, step):
    relay.script(*plan(**{step: Action(reply=b"552 5.3.4 Too much\r\n")}))
    result = deliver(relay)
    assert result.permanent == {}
    assert result.refused["bart@example.com"].code == 452
    assert "552 5.3.4 Too much" in result.refused["bart@example.com"].message


@pytest.mark.parametrize("reply", [b"550 5.7.1 Sender rejected\r\n", b"553 5.1.8 Bad sender\r\n"])
def test_a_refused_sender_is_not_the_members_fault(relay, reply):
    relay.script(*plan(mail=Action(reply=reply)))
    result = deliver(relay)
    assert result.permanent == {}
    assert {failure.code for failure in result.refused.values()} == {451}


@pytest.mark.parametrize("code", [500, 502, 503, 504, 555])
def test_a_relay_that_does_not_understand_us_is_temporary(relay, code):
    relay.script(*plan(rcpt2=Action(reply=b"%d 5.5.1 What?\r\n" % code)))
    result = deliver(relay)
    assert result.refused["bart@example.com"].code == 451
    assert result.accepted == ("anne@example.com", "cate@example.com")


@pytest.mark.parametrize("code", [550, 551, 553, 554])
def test_a_5xx_at_rcpt_is_permanent(relay, code):
    relay.script(*plan(rcpt2=Action(reply=b"%d 5.1.1 Refused\r\n" % code)))
    result = deliver(relay)
    assert result.permanent == {"bart@example.com": (code, "5.1.1 Refused")}


@pytest.mark.parametrize("size", ["SIZE 0", "SIZE -5", "SIZE abc", "SIZE 12 34", "SIZE 99999999999999999999999"])
def test_a_nonsensical_size_is_ignored(size):
    extensions = tuple(e for e in DEFAULT_EXTENSIONS if not e.startswith("SIZE")) + (size,)
    with ScriptedSMTPServer(extensions) as server:
        result = deliver(server)
    assert result.ok
    assert server.kept[0].data == MESSAGE


# -- PIPELINING -------------------------------------------------------------


def transaction_reads(server: ScriptedSMTPServer) -> list[list[bytes]]:
    """The MAIL, RCPT and DATA lines grouped by the read they arrived in."""
    groups: dict[int, list[bytes]] = {}
    for read, line in server.commands:
        if line.split(b":")[0].split(b" ")[0].upper() in (b"MAIL", b"RCPT", b"DATA"):
            groups.setdefault(read, []).append(line)
    return list(groups.values())


def test_pipelining_sends_mail_every_rcpt_and_data_in_one_write(pipelining_relay):
    recipients = [f"member{i}@example.com" for i in range(50)]
    result = deliver(pipelining_relay, recipients)
    assert result.ok
    (batch,) = transaction_reads(pipelining_relay)
    assert len(batch) == 52 and batch[0].startswith(b"MAIL FROM:") and batch[-1] == b"DATA"


def test_without_pipelining_one_command_per_write():
    with ScriptedSMTPServer(LOCK_STEP) as server:
        assert deliver(server).ok
    assert [len(batch) for batch in transaction_reads(server)] == [1] * 5


def test_pipelining_can_be_switched_off(pipelining_relay):
    assert deliver(pipelining_relay, pipelining=False).ok
    assert [len(batch) for batch in transaction_reads(pipelining_relay)] == [1] * 5


def test_many_recipients_go_in_bounded_groups(pipelining_relay):
    recipients = [f"member{i:04d}-with-a-long-local-part@lists.example.com" for i in range(1000)]
    result = deliver(pipelining_relay, recipients, max_recipients=0)
    assert result.ok
    groups = transaction_reads(pipelining_relay)
    assert sum(len(group) for group in groups) == 1002
    assert 1 < len(groups) < 10
    assert pipelining_relay.kept[0].accepted == recipients


def test_pipelined_and_every_recipient_refused_sends_no_message(pipelining_relay):
    refusal = Action(reply=b"550 5.1.1 No such user\r\n")
    pipelining_relay.script(*plan(rcpt1=refusal, rcpt2=refusal, rcpt3=refusal))
    result = deliver(pipelining_relay)
    assert {failure.code for failure in result.refused.values()} == {550}
    (transaction,) = pipelining_relay.transactions
    assert transaction.data_code == 503 and transaction.data is None


def test_a_server_inviting_data_for_a_refused_transaction_is_disconnected(pipelining_relay):
    refusal = Action(reply=b"550 5.1.1 No such user\r\n")
    pipelining_relay.script(
        *plan(rcpt1=refusal, rcpt2=refusal, rcpt3=refusal, data=Action(reply=b"354 go on then\r\n"))
    )
    result = deliver(pipelining_relay)
    assert {failure.code for failure in result.refused.values()} == {550}
    assert pipelining_relay.kept == []
    assert pipelining_relay.transactions[0].data is None, "not even an empty message"


def test_a_refused_transaction_is_reset_and_the_connection_reused(relay):
    relay.script(
        *plan(
            rcpt1=Action(reply=b"550 5.1.1 No\r\n"),
            rcpt2=Action(reply=b"550 5.1.1 No\r\n"),
            rcpt3=Action(reply=b"550 5.1.1 No\r\n"),
        )
    )
    connection = Connection(relay.hostname, relay.port, 0)
    with Delivery(connection) as delivery:
        assert not delivery.deliver("list@example.org", THREE, MESSAGE).accepted
        assert delivery.deliver("list@example.org", THREE, MESSAGE).ok
    assert relay.connections == 1
    assert b"RSET" in [line for _, line in relay.commands]


def test_a_relay_answering_each_rcpt_just_in_time_cannot_stretch_a_transaction():
    """Raw: ten RCPTs each answered within the command timeout; the transaction still ends at its deadline."""
    from mailman_mta.connection import Connection
    from mailman_mta.envelope import Envelope
    from mailman_mta.errors import SMTPTimeoutError
    from mailman_mta.testing.scripted import DEFAULT_EXTENSIONS, Action, ScriptedSMTPServer

    lockstep = tuple(e for e in DEFAULT_EXTENSIONS if e != "PIPELINING")
    recipients = [f"member{n}@example.com" for n in range(10)]
    with ScriptedSMTPServer(lockstep) as server:
        server.script(Action(), Action(), Action(), *(Action(delay=0.15) for _ in recipients))
        connection = Connection(
            server.hostname, server.port, 0, command_timeout=0.25, transaction_timeout=0.5, connect_timeout=1
        )
        connection.connect()
        started = time.monotonic()
        result = connection.transact(Envelope.build("list@example.org", recipients, "Subject: x\n\nHello\n"))
        elapsed = time.monotonic() - started
        connection.close()
    assert isinstance(result.error, SMTPTimeoutError)
    assert "did not end within its 0.5" in str(result.error) and "transaction_timeout" in str(result.error)
    assert elapsed < 0.5 + 0.2, elapsed  # ten replies at 0.15 s would have taken 1.5 s
    assert server.kept == []
