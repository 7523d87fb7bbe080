"""Several connections at once: the same results, exactly once, in order, interruptible.

No timing is asserted here (that is for benchmarks/); what is checked is
that spreading transactions over a pool changes nothing a caller can see
but the speed.
"""

from __future__ import annotations

import _thread
import collections
import threading
import time

import pytest

from mailman_mta import hookimpl
from mailman_mta.config import Configuration
from mailman_mta.connection import Connection
from mailman_mta.delivery import NOT_ATTEMPTED, Delivery
from mailman_mta.errors import DeliveryInterrupted, EnvelopeError
from mailman_mta.testing import CountingSMTPServer

MESSAGE = "From: list@example.org\nSubject: post\n\nHello\n"
MEMBERS = [f"member{i:02d}@example{i % 3}.com" for i in range(30)]


@pytest.mark.parametrize("strategy", ["bulk", "individual", "verp"])
def test_a_pool_gives_the_same_results_in_the_same_order(mta_config, mta_smtpd, mta_layers, strategy):
    for member in MEMBERS[::7]:
        mta_smtpd.refuse_recipient(member, "550 5.1.1 No such user")
    mta_smtpd.refuse_recipient(MEMBERS[3], "452 4.2.2 Mailbox full")
    results = {}
    for connections in (1, 4):
        mta_layers.push("strategy", f"[mta]\ndelivery: {strategy}\nmax_recipients: 4\nmax_connections: {connections}\n")
        with Delivery() as delivery:
            results[connections] = delivery.deliver("list@example.org", MEMBERS, MESSAGE)
        mta_layers.pop("strategy")
    one, pooled = results[1], results[4]
    assert pooled.recipients == one.recipients
    assert list(pooled.refused.items()) == list(one.refused.items()), "same failures, in the recipients' order"
    assert list(pooled.refused) == [m for m in MEMBERS if m in pooled.refused]
    assert pooled.accepted == one.accepted
    assert pooled.transactions == one.transactions


def test_transactions_are_spread_over_the_connections(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("individual", "[mta]\ndelivery: individual\nmax_connections: 4\n")
    mta_smtpd.script("MAIL", delay=0.02, times=0)  # each transaction takes a moment
    with Delivery() as delivery:
        result = delivery.deliver("list@example.org", MEMBERS[:16], MESSAGE)
        used = [c for c in delivery.connections if c.connection_count]
        sessions = sum(c.session_count for c in used)
    assert result.ok
    assert 2 <= len(used) <= 4
    assert mta_smtpd.get_connection_count() == len(used)
    assert sessions == 16


def test_one_connection_means_no_threads(mta_config, mta_smtpd, mta_layers, enabled):
    mta_layers.push("one", "[mta]\ndelivery: individual\nmax_connections: 1\n")
    seen = set()

    class Where:
        @hookimpl
        def mta_prepare_message(self):
            seen.add(threading.current_thread())

    with enabled(where=Where()), Delivery() as delivery:
        assert delivery.deliver("list@example.org", MEMBERS[:5], MESSAGE).ok
    assert seen == {threading.current_thread()}


def test_exactly_once_with_a_connection_killed_mid_run(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("pool", "[mta]\ndelivery: individual\nmax_connections: 4\n")
    mta_smtpd.script("MAIL", delay=0.01, times=0)
    mta_smtpd.script("RCPT", close=True, times=2)
    mta_smtpd.script("MID-DATA", close=True)
    mta_smtpd.script("END-OF-DATA", close=True, accept=True)
    with Delivery() as delivery:
        result = delivery.deliver("list@example.org", MEMBERS, MESSAGE)
    copies = mta_smtpd.copies
    assert max(copies.values()) == 1, "nobody got the message twice"
    for member in MEMBERS:
        if member in result.accepted:
            assert copies[member] == 1
        elif member in result.uncertain:
            assert result.refused[member].temporary
        else:
            assert copies[member] == 0, f"{member} refused ({result.refused[member]}) but got it"
    # Cut off after the whole (short) message had gone out, twice: the
    # server kept one and not the other, and neither is sent again.
    assert len(result.uncertain) == 2
    assert sum(copies[member] for member in result.uncertain) == 1
    assert len(result.accepted) >= len(MEMBERS) - 4


def test_deliver_many_yields_results_in_the_order_given(mta_config, mta_smtpd, mta_layers, enabled):
    mta_layers.push("pool", "[mta]\nmax_connections: 4\n")

    class SlowFirst:
        @hookimpl
        def mta_prepare_message(self, envelope):
            if envelope.recipients == ["only0@example.com"]:
                time.sleep(0.3)

    posts = [("list@example.org", [f"only{number}@example.com"], f"Subject: {number}\n\n") for number in range(8)]
    with enabled(slow=SlowFirst()), Delivery() as delivery:
        results = list(delivery.deliver_many(iter(posts)))
    assert [result.recipients for result in results] == [tuple(recipients) for _, recipients, _ in posts]
    assert all(result.ok for result in results)
    arrived = [message.rcpt_tos[0] for message in mta_smtpd.received]
    assert sorted(arrived) == sorted(r for _, [r], _ in posts)
    assert arrived[-1] == "only0@example.com", "the first post finished last, and was still reported first"


def test_no_more_transactions_at_once_than_connections(mta_config, mta_smtpd, mta_layers, enabled):
    mta_layers.push("pool", "[mta]\ndelivery: individual\nmax_connections: 3\n")
    lock = threading.Lock()
    now, most = [0], [0]

    class Gauge:
        @hookimpl
        def mta_prepare_message(self):
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            time.sleep(0.01)
            with lock:
                now[0] -= 1

    with enabled(gauge=Gauge()), Delivery() as delivery:
        assert delivery.deliver("list@example.org", MEMBERS, MESSAGE).ok
    assert most[0] == 3


def test_deliver_many_reads_its_posts_only_as_fast_as_they_go(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("pool", "[mta]\nmax_connections: 2\n")
    taken = []

    def posts():
        for number in range(50):
            taken.append(number)
            yield "list@example.org", [f"m{number}@example.com"], "Subject: x\n\n"

    mta_smtpd.script("MAIL", delay=0.02, times=0)
    with Delivery() as delivery:
        stream = delivery.deliver_many(posts())
        next(stream)
        assert len(taken) < 20, f"{len(taken)} posts were taken for the first result"
        assert len(list(stream)) == 49


def test_a_layer_pushed_during_a_transaction_waits_for_the_next(mta_config, mta_smtpd, mta_layers, enabled):
    mta_layers.push("one", "[mta]\ndelivery: individual\nmax_connections: 1\n")
    pushed = []

    class Meddler:
        @hookimpl
        def mta_prepare_message(self, config, envelope):
            if not pushed:
                config.push("late-devmode", "[devmode]\nenabled: yes\nrecipient: dev@example.com\n")
                pushed.append(True)
            # Within this transaction, the layers are as they were when it began.
            assert not config.settings.devmode.enabled or envelope.recipients == ["dev@example.com"]

    try:
        with enabled(meddler=Meddler()), Delivery() as delivery:
            result = delivery.deliver("list@example.org", ["anne@example.com", "bart@example.com"], MESSAGE)
    finally:
        if "late-devmode" in mta_config.layers:
            mta_config.pop("late-devmode")
    assert result.ok
    assert [m.rcpt_tos for m in mta_smtpd.received] == [("anne@example.com",), ("dev@example.com",)]


def test_a_pinned_configuration_ignores_other_threads_pushes():
    config = Configuration()
    seen = []
    with config.pinned():
        thread = threading.Thread(target=config.push, args=("port", "[mta]\nsmtp_port: 2525\n"))
        thread.start()
        thread.join()
        seen.append(config.settings.mta.smtp_port)
    seen.append(config.settings.mta.smtp_port)
    assert seen == [25, 2525]


def test_a_layer_refused_by_its_check_is_never_seen_by_other_threads():
    config = Configuration()
    with pytest.raises(Exception, match="recipient is empty"):
        config.push("bad", "[devmode]\nenabled: yes\n")
    assert config.settings.devmode.enabled is False
    assert config.layers == []


@pytest.mark.parametrize("connections", [1, 4])
def test_ctrl_c_says_who_got_it_who_did_not_and_quits_everywhere(
    mta_config, mta_smtpd, mta_layers, enabled, connections, ctrl_c
):
    mta_layers.push("pool", f"[mta]\ndelivery: individual\nmax_connections: {connections}\n")
    mta_smtpd.script("MAIL", delay=0.01, times=0)
    done = []

    class CtrlC:
        @hookimpl
        def mta_delivery_result(self):
            done.append(1)
            if len(done) == 5:
                _thread.interrupt_main()

    with enabled(ctrlc=CtrlC()):
        delivery = Delivery()
        with pytest.raises(DeliveryInterrupted) as caught:
            delivery.deliver("list@example.org", MEMBERS, MESSAGE)
            time.sleep(1)  # the interruption is delivered to this thread any moment now
    result = caught.value.result
    assert isinstance(caught.value, KeyboardInterrupt)
    assert result.recipients == tuple(MEMBERS)
    copies = mta_smtpd.copies
    accepted, not_attempted = set(result.accepted), {r for r, f in result.refused.items() if f == NOT_ATTEMPTED}
    assert accepted == {member for member in MEMBERS if copies[member]}, "accepted means it arrived"
    assert not_attempted == set(MEMBERS) - accepted - set(result.uncertain)
    assert 5 <= len(accepted) < len(MEMBERS)
    assert all(failure.temporary for failure in result.refused.values())
    time.sleep(0.1)
    opened = mta_smtpd.get_connection_count()
    assert mta_smtpd.commands.count("QUIT") == opened, "every connection said QUIT"


def test_a_relay_that_is_down_fails_every_transaction_without_stalling(mta_config, mta_layers):
    with CountingSMTPServer() as gone:
        port = gone.port
    mta_layers.push("down", f"[mta]\nsmtp_port: {port}\ndelivery: individual\nmax_connections: 4\n")
    with Delivery() as delivery:
        result = delivery.deliver("list@example.org", MEMBERS[:12], MESSAGE)
    assert result.accepted == ()
    assert {failure.code for failure in result.refused.values()} == {444}


def test_a_sibling_is_a_new_connection_on_the_same_terms(mta_smtpd):
    first = Connection(mta_smtpd.hostname, mta_smtpd.port, 2, "testuser", "testpass", command_timeout=9)
    sibling = first.sibling()
    assert sibling is not first and sibling.transport is None
    assert (sibling.host, sibling.port, sibling.sessions_per_connection, sibling.smtp_user) == (
        mta_smtpd.hostname,
        mta_smtpd.port,
        2,
        "testuser",
    )
    assert sibling.setting("command_timeout") == 9 and sibling.smtp_pass == first.smtp_pass


@pytest.mark.parametrize("bad", [[], "not a message"])
def test_a_bad_post_in_a_batch_is_its_own_result_and_nothing_is_lost(mta_config, mta_smtpd, mta_layers, bad):
    """Posts sent before a bad one keep their results: resending the batch would send them twice."""
    mta_layers.push("pool", "[mta]\nmax_connections: 4\n")
    posts = [("list@example.org", [f"member{n}@example.com"], MESSAGE) for n in range(9)]
    if bad == []:
        posts[6] = ("list@example.org", [], MESSAGE)
    else:
        posts[6] = ("list@example.org", ["member6@example.com"], object())
    with Delivery() as delivery:
        results = list(delivery.deliver_many(posts))
    assert len(results) == 9
    assert [r.ok for r in results] == [True] * 6 + [bad == []] + [True] * 2
    assert isinstance(results[6].error, EnvelopeError)
    if bad != []:
        assert results[6].refused["member6@example.com"].code == 451
    sent = mta_smtpd.copies
    assert sent == collections.Counter({f"member{n}@example.com": 1 for n in range(9) if n != 6})
    with Delivery() as delivery, pytest.raises(EnvelopeError, match="no recipients"):
        delivery.deliver("list@example.org", [], MESSAGE)
    assert mta_smtpd.copies == sent


def test_closing_says_quit_on_every_connection_at_once(mta_config, mta_smtpd, mta_layers):
    """A relay that never answers QUIT holds closing for one timeout overall, not one per connection."""
    mta_layers.push("pool", "[mta]\ndelivery: individual\nmax_connections: 6\nconnect_timeout: 0.5\n")
    mta_smtpd.script("MAIL", delay=0.15, times=0)  # so that several connections are used
    mta_smtpd.script("QUIT", hang=True, times=0)
    delivery = Delivery()
    result = delivery.deliver("list@example.org", MEMBERS[:18], MESSAGE)
    used = [c for c in delivery.connections if c.transport is not None]
    assert result.ok and len(used) >= 4
    started = time.monotonic()
    delivery.close()
    elapsed = time.monotonic() - started
    assert mta_smtpd.commands.count("QUIT") == len(used)
    assert all(c.transport is None for c in delivery.connections)
    # One after another would take a timeout (0.5 s) per connection; at once, about one.
    assert elapsed < (len(used) - 1) * 0.5, elapsed


def test_max_connections_is_bounded(mta_config, mta_layers):
    from mailman_mta.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"\[mta\] max_connections: '1000000' is not a number of connections"):
        mta_layers.push("many", "[mta]\nmax_connections: 1000000\n")
    mta_layers.push("most", "[mta]\nmax_connections: 50\n")


def test_connections_to_a_relay_slow_to_greet_are_opened_one_at_a_time(mta_config, mta_smtpd, mta_layers):
    """Never many connections waiting for a greeting at once, however much work is queued."""
    mta_layers.push("pool", "[mta]\ndelivery: individual\nmax_connections: 8\n")
    mta_smtpd.script("CONNECT", delay=0.2, times=0)
    with Delivery() as delivery:
        result = delivery.deliver("list@example.org", MEMBERS, MESSAGE)
        opened = [c for c in delivery.connections if c.connection_count]
    assert result.ok and len(mta_smtpd.received) == len(MEMBERS)
    assert mta_smtpd.most_awaiting_greeting == 1
    assert 1 <= len(opened) <= 8
