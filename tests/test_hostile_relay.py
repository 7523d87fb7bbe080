"""Property tests: whatever a relay does, the results tell the truth.

Hypothesis writes the relay's script: at each step of the conversation
(greeting, EHLO, MAIL, each RCPT, DATA, the end of the data, RSET, QUIT,
and again on further connections, one at a time or four at once, in bulk
or one transaction per recipient) the `ScriptedSMTPServer` replies with any
code, garbage, arbitrary bytes, extra replies, hangs up (keeping the
message or not), stalls past the timeout, or trickles.  Whatever it did,
these must hold for `Delivery.deliver`:

1. it returns, and says something about every recipient;
2. a recipient reported accepted has a copy at the server;
3. a recipient is permanent only if the server gave it a 5xx that is a
   verdict (at its RCPT, or at DATA or the end of DATA after accepting it);
4. nobody's copy is kept twice;
5. it finishes within the timeouts it was given.

A server that breaks SMTP's one reply per command (no reply at all, or two)
makes it impossible to say which reply was meant for which recipient, even
for the server; then 2 and 3 weaken to: an accepted recipient was named in
a transaction the server kept, and a permanent one got a 5xx verdict code
the server sent somewhere.

Run more examples with MAILMAN_MTA_HYPOTHESIS_EXAMPLES=2000; under CI the
examples are derandomized so a run is repeatable.
"""

from __future__ import annotations

import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailman_mta import hookimpl
from mailman_mta.config import config as default_config
from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.envelope import Envelope
from mailman_mta.errors import EnvelopeError, SMTPTimeoutError
from mailman_mta.manager import registry
from mailman_mta.results import PROTOCOL_CODES, failures_of
from mailman_mta.smtp.replies import KEPT_OCTETS
from mailman_mta.testing import Action, ScriptedSMTPServer
from mailman_mta.testing.scripted import DEFAULT_EXTENSIONS

TIMEOUT = 0.2
MESSAGE = b"From: list@example.org\r\nSubject: property\r\n\r\n.leading dot\r\nbody\r\n"
EXAMPLES = int(os.environ.get("MAILMAN_MTA_HYPOTHESIS_EXAMPLES", "60"))

CODES = [
    220,
    221,
    235,
    250,
    251,
    252,
    334,
    354,
    421,
    450,
    451,
    452,
    454,
    500,
    501,
    502,
    503,
    504,
    530,
    535,
    550,
    551,
    552,
    553,
    554,
    555,
]
#: 5xx replies that are no verdict on a recipient (see mailman_mta.results).
NOT_VERDICTS = PROTOCOL_CODES | {530, 552}

GARBAGE = [
    b"garbage\r\n",
    b"25\r\n",
    b"-550 minus\r\n",
    b"2x0 ok\r\n",
    b"550" + b"x" * 5000 + b"\r\n",
    b"550-part\r\n250 disagree\r\n",
    b"\r\n",
    b"250",
    b"HTTP/1.1 200 OK\r\n",
    b"\x00\xff\r\n",
]

#: A refusal of about 60 KB, each line under the line limit: what is kept of it must be small.
HUGE_REFUSAL = b"".join(b"550-5.1.1 " + b"z" * 990 + b"\r\n" for _ in range(59)) + b"550 5.1.1 gone\r\n"


class _HugeRefusal(Action):
    """That refusal, shown short when hypothesis reports an example."""

    def __repr__(self) -> str:
        return "Action(reply=<a 60 KB 550 refusal>)"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis's printer
        printer.text(repr(self))


actions = st.one_of(
    st.just(Action()),
    st.just(Action()),
    st.sampled_from(CODES).map(lambda code: Action(reply=b"%d 0.0.0 scripted\r\n" % code)),
    st.sampled_from(CODES).map(lambda code: Action(reply=b"%d-first\r\n%d last\r\n" % (code, code))),
    st.sampled_from(CODES).map(lambda code: Action(reply=b"%d bye\r\n" % code, close=True)),
    st.tuples(st.sampled_from(CODES), st.sampled_from(CODES)).map(
        lambda codes: Action(reply=b"%d one\r\n%d extra\r\n" % codes)
    ),
    st.sampled_from(GARBAGE).map(lambda garbage: Action(reply=garbage)),
    st.binary(max_size=24).map(lambda data: Action(reply=data)),
    st.booleans().map(lambda keep: Action(reply=b"", close=True, keep=keep)),
    st.just(Action(hang=True)),
    st.sampled_from([0.01, 0.05, TIMEOUT * 2]).map(lambda seconds: Action(delay=seconds)),
    st.just(Action(reply=b"250 2.0.0 slow\r\n", trickle=0.004)),
    st.just(_HugeRefusal(reply=HUGE_REFUSAL)),
)


def one_reply(action: Action) -> bool:
    """Does *action* answer its command with one reply (or none, hanging up)?"""
    reply = action.reply
    if reply is None or action.hang or (action.close and not reply):
        return True
    lines = reply.split(b"\n")
    if lines[-1] != b"":
        return False  # an unfinished line: the next reply would run into it
    lines = lines[:-1]
    return bool(lines) and all(line[3:4] == b"-" for line in lines[:-1]) and lines[-1][3:4] != b"-"


def verdict(code: int | None) -> bool:
    return code is not None and 500 <= code < 600 and code not in NOT_VERDICTS


def refused_permanently_by_server(server: ScriptedSMTPServer, address: str) -> bool:
    for transaction in server.transactions:
        for recipient in transaction.recipients:
            if recipient.address == address and verdict(recipient.code):
                return True
        if address in transaction.accepted and (verdict(transaction.data_code) or verdict(transaction.final_code)):
            return True
    return False


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    script=st.lists(actions, max_size=14),
    count=st.integers(min_value=1, max_value=4),
    pipelining=st.booleans(),
    strategy=st.sampled_from(["bulk", "individual"]),
    connections=st.sampled_from([1, 4]),
)
def test_results_tell_the_truth_whatever_the_relay_does(script, count, pipelining, strategy, connections):
    recipients = [f"member{i}@example.com" for i in range(count)]
    extensions = DEFAULT_EXTENSIONS if pipelining else tuple(e for e in DEFAULT_EXTENSIONS if e != "PIPELINING")
    with ScriptedSMTPServer(extensions) as server:
        server.script(*script)
        connection = Connection(
            server.hostname,
            server.port,
            0,
            command_timeout=TIMEOUT,
            connect_timeout=1,
            delivery=strategy,
            max_connections=connections,
        )
        started = time.monotonic()
        with Delivery(connection) as delivery:
            result = delivery.deliver("list@example.org", recipients, MESSAGE)
        elapsed = time.monotonic() - started
    kept = server.kept

    assert set(result.refused) <= set(recipients)
    aligned = all(one_reply(action) for action in script)
    for address in result.accepted:
        if aligned:
            assert any(address in transaction.accepted for transaction in kept), (
                f"{address} reported accepted, but the server kept no copy for it: {server.transactions}"
            )
        else:
            assert any(address in [r.address for r in transaction.recipients] for transaction in kept), (
                f"{address} reported accepted, but the server kept no message for it: {server.transactions}"
            )
    sent = {
        int(line[:3]) for action in script if action.reply for line in action.reply.split(b"\n") if line[:3].isdigit()
    }
    for address, failure in result.permanent.items():
        if aligned:
            assert refused_permanently_by_server(server, address), (
                f"{address} reported permanent ({failure}) without a 5xx verdict: {server.transactions}"
            )
        else:
            assert failure.code in sent and verdict(failure.code), (
                f"{address} reported permanent ({failure}), a code the server never sent"
            )
    copies = [address for transaction in kept for address in transaction.accepted]
    assert len(copies) == len(set(copies)), "someone's message was kept twice"
    # Bounded: what was kept of a reply, and a sentence of ours around it.
    assert all(len(failure.message.encode()) <= KEPT_OCTETS + 200 for failure in result.refused.values())
    assert all(transaction.data == MESSAGE for transaction in kept)
    # Per transaction, two attempts at most, each waiting at most TIMEOUT
    # for the greeting, EHLO, MAIL, every RCPT, DATA, the end of DATA and
    # RSET; then QUIT on every connection.  Transactions on one connection
    # follow each other; in bulk there is one.
    transactions = 1 if strategy == "bulk" else count
    waits = transactions * 2 * (count + 7) + connections
    assert elapsed < waits * TIMEOUT + 1.0, f"{elapsed:.2f} s"


# -- batches with bad posts in them ---------------------------------------

_POSTS = st.lists(
    st.one_of(
        st.integers(min_value=1, max_value=3).map(lambda n: ("members", n)),
        st.just(("no recipients", 0)),
        st.just(("no message", 1)),
    ),
    min_size=1,
    max_size=7,
)


@settings(
    max_examples=max(EXAMPLES // 2, 10),
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(posts=_POSTS, script=st.lists(actions, max_size=10), connections=st.sampled_from([1, 4]))
def test_every_post_of_a_batch_gets_its_result_and_nobody_a_second_copy(posts, script, connections):
    """deliver_many with bad posts among good ones, whatever the relay does."""
    batch, numbered = [], 0
    for kind, size in posts:
        recipients = [f"member{numbered + n}@example.com" for n in range(size)]
        numbered += size
        batch.append(("list@example.org", recipients, object() if kind == "no message" else MESSAGE))
    with ScriptedSMTPServer() as server:
        server.script(*script)
        connection = Connection(
            server.hostname, server.port, 0, command_timeout=TIMEOUT, connect_timeout=1, max_connections=connections
        )
        started = time.monotonic()
        with Delivery(connection) as delivery:
            results = list(delivery.deliver_many(batch))
        elapsed = time.monotonic() - started
    assert [result.recipients for result in results] == [tuple(recipients) for _, recipients, _ in batch]
    for (kind, _), result in zip(posts, results, strict=True):
        if kind != "members":
            assert isinstance(result.error, EnvelopeError) and result.accepted == ()
    copies = [address for transaction in server.kept for address in transaction.accepted]
    assert len(copies) == len(set(copies)), "someone's message was kept twice"
    bad = {
        r for (kind, _), (_, recipients, _) in zip(posts, batch, strict=True) if kind != "members" for r in recipients
    }
    assert not bad & set(copies), "a post that was refused before sending reached the server"
    if all(one_reply(action) for action in script):
        for result in results:
            for address in result.accepted:
                assert address in copies, f"{address} reported accepted, but the server kept no copy for it"
    transactions = sum(1 for kind, _ in posts if kind == "members")
    assert elapsed < (transactions * 2 * 10 + 2) * TIMEOUT + 1.0, f"{elapsed:.2f} s"


# -- a relay that answers everything just in time --------------------------


@settings(max_examples=max(EXAMPLES // 4, 8), deadline=None, derandomize=bool(os.environ.get("CI")))
@given(
    rcpts=st.integers(min_value=1, max_value=12),
    delays=st.lists(st.floats(min_value=0.0, max_value=0.15), min_size=1, max_size=16),
    pipelining=st.booleans(),
)
def test_no_transaction_outlives_its_deadline(rcpts, delays, pipelining):
    """Each reply comes within the command timeout, yet the transaction as a whole is bounded."""
    recipients = [f"member{i}@example.com" for i in range(rcpts)]
    extensions = DEFAULT_EXTENSIONS if pipelining else tuple(e for e in DEFAULT_EXTENSIONS if e != "PIPELINING")
    with ScriptedSMTPServer(extensions) as server:
        server.script(Action(), Action(), *(Action(delay=delay) for delay in delays))
        connection = Connection(
            server.hostname, server.port, 0, command_timeout=0.2, transaction_timeout=0.3, connect_timeout=1
        )
        envelope = Envelope.build("list@example.org", recipients, MESSAGE)
        connection.connect()
        started = time.monotonic()
        result = connection.transact(envelope)
        elapsed = time.monotonic() - started
        connection.close()
    deadline = connection.transaction_deadline(envelope)
    assert elapsed < deadline + 0.2, f"{elapsed:.2f} s for a deadline of {deadline:.2f} s"
    if result.error is not None and "transaction_timeout" in str(result.error):
        # Running out of time is never a verdict on anybody.
        assert isinstance(result.error, SMTPTimeoutError)
        assert not any(failure.permanent for failure in failures_of(result).values())


# -- a plugin's verdicts, whatever the relay says -------------------------


@settings(
    max_examples=max(EXAMPLES // 2, 10),
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    script=st.lists(actions, max_size=10),
    judged=st.lists(st.sampled_from(["send", "refuse", "drop"]), min_size=1, max_size=4),
    strategy=st.sampled_from(["bulk", "individual"]),
)
def test_verdicts_stand_whatever_the_relay_does(script, judged, strategy):
    """A recipient a plugin refused or dropped is never named to the relay,
    keeps its verdict, and is never reported uncertain; nobody gets two copies."""
    recipients = [f"member{i}@example.com" for i in range(len(judged))]
    decided = dict(zip(recipients, judged))

    class Screen:
        @hookimpl
        def mta_screen_recipients(self, envelope):
            for recipient in list(envelope.recipients):
                if decided[recipient] == "refuse":
                    envelope.refuse(recipient, 550, "5.7.1 suppressed")
                elif decided[recipient] == "drop":
                    envelope.drop(recipient, "held")

    registry.add("hostile-screen", Screen())
    default_config.push("hostile-screen", "[plugin.hostile-screen]\nenabled: yes\n")
    try:
        with ScriptedSMTPServer() as server:
            server.script(*script)
            connection = Connection(
                server.hostname, server.port, 0, command_timeout=TIMEOUT, connect_timeout=1, delivery=strategy
            )
            with Delivery(connection) as delivery:
                result = delivery.deliver("list@example.org", recipients, MESSAGE)
    finally:
        default_config.pop("hostile-screen")
        registry.remove("hostile-screen")
    named = {r.address for transaction in server.transactions for r in transaction.recipients}
    for address, verdict_given in decided.items():
        if verdict_given == "send":
            continue
        assert address not in named, f"{address} was judged, yet named to the relay"
        assert address not in result.uncertain and address not in result.accepted
        if verdict_given == "refuse":
            assert result.refused[address] == (550, "5.7.1 suppressed")
        else:
            assert result.dropped[address] == "held" and address not in result.refused
    copies = [address for transaction in server.kept for address in transaction.accepted]
    assert len(copies) == len(set(copies)), "someone's message was kept twice"
