"""The ``ratelimit`` plugin: token buckets per relay, paced through `mta_pace_transaction`."""

from __future__ import annotations

import pytest

from mailman_mta import connection as connection_module
from mailman_mta import hookimpl
from mailman_mta.connection import Connection
from mailman_mta.plugins import ratelimit


class FakeClock:
    """A clock that only moves when `Connection` pauses."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.pauses.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(ratelimit, "clock", fake)
    monkeypatch.setattr(connection_module, "pause", fake.pause)
    ratelimit.forget()
    yield fake
    ratelimit.forget()


def limited(mta_layers, **settings):
    lines = "".join(f"{key}: {value}\n" for key, value in settings.items())
    mta_layers.push("ratelimit", f"[plugin.ratelimit]\nenabled: yes\n[ratelimit]\n{lines}")


def send(connection, recipients=("b@example.com",)):
    return connection.sendmail("a@example.com", list(recipients), "Subject: x\n\n")


def test_a_bucket_without_burst_spaces_transactions_evenly(clock):
    waits = [ratelimit.reserve(("mx", 25), 20, 0, 0, 1) for _ in range(4)]
    assert [round(w, 6) for w in waits] == [0, 0.05, 0.1, 0.15]


def test_a_burst_lets_a_quiet_relay_send_at_once_then_paces(clock):
    waits = [ratelimit.reserve(("mx", 25), 10, 0, 0.5, 1) for _ in range(8)]
    assert [round(w, 6) for w in waits] == [0, 0, 0, 0, 0, 0, 0.1, 0.2]
    clock.now += 60
    assert ratelimit.reserve(("mx", 25), 10, 0, 0.5, 1) == 0


def test_recipients_are_counted_and_the_slower_limit_wins(clock):
    first = ratelimit.reserve(("mx", 25), 100, 10, 0, 5)
    second = ratelimit.reserve(("mx", 25), 100, 10, 0, 5)
    assert (first, round(second, 6)) == (0, 0.5)


def test_relays_have_buckets_of_their_own(clock):
    assert ratelimit.reserve(("one", 25), 1, 0, 0, 1) == 0
    assert ratelimit.reserve(("two", 25), 1, 0, 0, 1) == 0
    assert ratelimit.reserve(("one", 25), 1, 0, 0, 1) == 1


def test_sends_are_paced_from_the_first_on_a_connection(clock, mta_config, mta_smtpd, mta_layers):
    limited(mta_layers, messages_per_second=10, burst=0)
    with Connection(sessions_per_connection=2) as connection:
        for _ in range(5):
            send(connection)
    assert clock.pauses == [0.1, 0.1, 0.1, 0.1]
    assert len(mta_smtpd.received) == 5 and mta_smtpd.get_connection_count() == 3


def test_without_the_plugin_nothing_waits(clock, mta_config, mta_smtpd, mta_layers):
    mta_layers.push("ready", "[ratelimit]\nmessages_per_second: 10\nburst: 0\n")
    with Connection() as connection:
        for _ in range(3):
            send(connection)
    assert clock.pauses == []


def test_recipients_per_second_paces_by_recipients(clock, mta_config, mta_smtpd, mta_layers):
    limited(mta_layers, recipients_per_second=4, burst=0)
    with Connection() as connection:
        send(connection, ["b@example.com", "c@example.com"])
        send(connection, ["d@example.com"])
        send(connection, ["e@example.com"])
    assert clock.pauses == [0.5, 0.25]


def test_no_wait_is_spent_on_a_connection_about_to_be_replaced(clock, mta_config, mta_smtpd, mta_layers, enabled):
    """The pace is asked after the old connection is replaced, on the new one."""
    seen = []

    class Refuse:
        @hookimpl
        def mta_session_allowed(self, connection):
            seen.append(("allowed?", connection.connection_count))
            return connection.session_count == 0

        @hookimpl
        def mta_pace_transaction(self, connection):
            seen.append(("pace", connection.connection_count))
            return None

    limited(mta_layers, messages_per_second=10, burst=0)
    with enabled(refuse=Refuse()), Connection() as connection:
        send(connection)
        send(connection)
    # Connection 1 is refused before the pace; connection 2 waits, and is
    # asked again after the wait (it has carried nothing, so it may).
    assert seen == [("pace", 1), ("allowed?", 1), ("pace", 2), ("allowed?", 2)]
    assert clock.pauses == [0.1]
    assert mta_smtpd.get_connection_count() == 2


def test_after_a_wait_the_connection_is_asked_again(clock, mta_config, mta_smtpd, mta_layers, enabled):
    asked = []

    class Count:
        @hookimpl
        def mta_session_allowed(self, connection):
            asked.append(connection.session_count)

    limited(mta_layers, messages_per_second=10, burst=0)
    with enabled(count=Count()), Connection() as connection:
        send(connection)
        send(connection)
    assert asked == [1, 1]
