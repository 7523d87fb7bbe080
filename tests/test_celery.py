"""Posts delivered by real Celery workers through a real Redis, exactly once per recipient.

Marker ``celery``: starts Debian's redis-server (installed by the run when
missing, as Postfix is) and two ``celery worker`` processes.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailman_mta.config import config as default_config
from mailman_mta.testing import CountingSMTPServer
from mailman_mta.testing.workers import CeleryWorker, RedisServer

celery_integration = pytest.importorskip("mailman_mta.integrations.celery", reason="needs mailman-mta[celery]")

pytestmark = pytest.mark.celery

MESSAGE = "Subject: post\n\nHello members\n"
DOMAINS = ["example.com", "example.org", "example.net", "lists.example.net", "example.edu", "example.info"]


def members(count: int, prefix: str = "m") -> list[str]:
    return [f"{prefix}{n}@{DOMAINS[n % len(DOMAINS)]}" for n in range(count)]


@pytest.fixture(scope="module")
def relay():
    with CountingSMTPServer(credentials=None) as server:
        yield server


@pytest.fixture(scope="module")
def redis_server(redis_installed, tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def store(redis_server):
    celery_integration.app.conf.broker_url = redis_server.url
    return celery_integration.PostStore.from_url(redis_server.url, patience=60)


#: The environment the workers run in: Celery and our wheel, as a site installs them.
CELERY_ENVIRONMENT = ("celery-5.7", ["celery[redis]==5.7.0"])


@pytest.fixture(scope="module")
def workers(redis_server, relay, tmp_path_factory, host_environment):
    python = host_environment(*CELERY_ENVIRONMENT)
    folder = tmp_path_factory.mktemp("workers")
    config_file = folder / "worker.cfg"
    config_file.write_text(
        f"""
[mta]
smtp_host: 127.0.0.1
smtp_port: {relay.port}
max_recipients: 3
max_connections: 2
[celery]
retry_delay: 0.3
max_retries: 2
stale_after: 2
"""
    )
    pool = {
        name: CeleryWorker(name, redis_server.url, config_file, folder / f"{name}.log", python=python).start()
        for name in ("w1", "w2")
    }
    yield pool
    for worker in pool.values():
        worker.stop()


@pytest.fixture
def both_running(workers):
    for worker in workers.values():
        if worker.process is None or worker.process.poll() is not None:
            worker.start()
    return workers


@pytest.fixture
def submitting():
    default_config.push("celery-submit", "[celery]\nchunk_size: 4\n")
    yield
    default_config.pop("celery-submit")


@pytest.fixture
def fresh_relay(relay):
    relay.clear()
    relay.clear_faults()
    relay.clear_refusals()
    yield relay
    relay.clear_faults()
    relay.clear_refusals()


def assert_exactly_once_or_reported(result, relay, addresses):
    """Accepted: exactly one copy.  Uncertain: at most one.  Anything else: none."""
    received = relay.copies
    assert set(result.states) == set(addresses)
    for address in addresses:
        state = result.states[address].state
        if state == "accepted":
            assert received[address] == 1, (address, state, received[address])
        elif state == "uncertain":
            assert received[address] <= 1, (address, state, received[address])
        else:
            assert received[address] == 0, (address, state, received[address])


def test_two_workers_share_a_post_and_every_member_gets_one_copy(both_running, store, submitting, fresh_relay):
    addresses = members(60)
    handle = celery_integration.submit("list@example.com", addresses, MESSAGE, store=store)
    result = handle.result(timeout=90)
    assert result.ok, {r: s for r, s in result.states.items() if s.state != "accepted"}
    assert fresh_relay.copies == Counter(addresses)
    assert handle.chunks >= 15
    assert {state.worker for state in result.states.values()} == {"w1", "w2"}, "both workers took chunks"
    for message in fresh_relay.received:
        assert message.content.endswith(b"Hello members\r\n")


def test_a_worker_killed_mid_post_loses_nothing_and_sends_nothing_twice(both_running, store, submitting, fresh_relay):
    fresh_relay.script("END-OF-DATA", delay=0.4, times=0)
    for attempt in range(3):
        addresses = members(40, f"k{attempt}-")
        handle = celery_integration.submit("list@example.com", addresses, MESSAGE, store=store)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = handle.states()
            if any(s.worker == "w1" and s.state == "sending" for s in states.values()) and any(
                s.state == "accepted" for s in states.values()
            ):
                break
            time.sleep(0.02)
        else:
            pytest.fail("w1 never had a transaction under way")
        both_running["w1"].kill()
        in_flight = {r for r, s in handle.states().items() if s.worker == "w1" and s.state == "sending"}
        if in_flight:
            break
        # w1 finished its transaction between the look and the kill: let
        # this post end, and kill it again on another.
        handle.result(timeout=120)
        fresh_relay.clear()
        both_running["w1"].start()
    else:
        pytest.fail("w1 was never killed with a transaction under way in 3 tries")
    result = handle.result(timeout=120)
    fresh_relay.clear_faults()
    assert_exactly_once_or_reported(result, fresh_relay, addresses)
    assert not result.permanent and not result.temporary
    uncertain = set(result.uncertain)
    assert uncertain == in_flight, "exactly what was under way when w1 died is uncertain"
    assert all("w1 stopped" in result.states[r].message for r in uncertain)
    assert len(result.accepted) + len(uncertain) == len(addresses)


def test_only_recipients_refused_with_4xx_are_retried_then_failed(both_running, store, submitting, fresh_relay):
    fresh_relay.refuse_recipient("later@example.net", "451 4.2.0 mailbox busy, try later")
    fresh_relay.refuse_recipient("never@example.net", "452 4.2.2 mailbox full")
    fresh_relay.refuse_recipient("gone@example.net", "550 5.1.1 no such user")
    addresses = ["a@example.net", "b@example.net", "later@example.net", "never@example.net", "gone@example.net"]
    handle = celery_integration.submit("list@example.com", addresses, MESSAGE, store=store)
    deadline = time.monotonic() + 30
    while handle.states()["later@example.net"].state != "retrying":
        assert time.monotonic() < deadline, handle.states()
        time.sleep(0.02)
    fresh_relay.accept_recipient("later@example.net")
    result = handle.result(timeout=60)
    assert set(result.accepted) == {"a@example.net", "b@example.net", "later@example.net"}, result.states
    assert set(result.temporary) == {"never@example.net"} and result.temporary["never@example.net"].code == 452
    assert set(result.permanent) == {"gone@example.net"} and result.permanent["gone@example.net"].code == 550
    received = fresh_relay.copies
    assert received == Counter(["a@example.net", "b@example.net", "later@example.net"])
    retried = [m.rcpt_tos for m in fresh_relay.received if "later@example.net" in m.rcpt_tos]
    assert retried == [("later@example.net",)], "the retry carried only the refused recipient"
    assert result.states["never@example.net"].state == "failed", "retried max_retries times, then failed"


def test_redis_stopped_and_restarted_mid_post_loses_nothing(both_running, store, submitting, fresh_relay, redis_server):
    fresh_relay.script("END-OF-DATA", delay=0.1, times=0)
    addresses = members(60, "r")
    handle = celery_integration.submit("list@example.com", addresses, MESSAGE, store=store)
    deadline = time.monotonic() + 60
    while not any(s.state == "accepted" for s in handle.states().values()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    redis_server.stop(hard=True)
    time.sleep(2)
    redis_server.start()
    # A task the broker lost in the restart (taken from the queue, not yet
    # noted as unacknowledged) is found by the sweeper.
    result = handle.result(timeout=180, stalled_after=10)
    fresh_relay.clear_faults()
    assert_exactly_once_or_reported(result, fresh_relay, addresses)
    assert not result.permanent and not result.temporary
    assert len(result.accepted) >= len(addresses) - 10, "only transactions under way at the stop may be uncertain"


def test_a_lost_task_is_queued_again_and_sent_once(both_running, store, submitting, fresh_relay):
    addresses = members(12, "lost")
    post_id = "lost-" + os.urandom(6).hex()
    store.create(post_id, "list@example.com", b"Subject: lost\r\n\r\nHello\r\n", addresses)  # never queued
    handle = celery_integration.PostHandle(post_id, 0, store)
    result = handle.result(timeout=60, stalled_after=1)
    assert result.ok and fresh_relay.copies == Counter(addresses)


def test_the_same_work_queued_twice_is_sent_once(both_running, store, submitting, fresh_relay):
    fresh_relay.script("END-OF-DATA", delay=0.05, times=0)
    addresses = members(30, "twice")
    handle = celery_integration.submit("list@example.com", addresses, MESSAGE, store=store)
    queued_again = celery_integration.resubmit_stalled(handle.post_id, older_than=0, store=store)
    queued_again += celery_integration.resubmit_stalled(handle.post_id, older_than=0, store=store)
    result = handle.result(timeout=60)
    fresh_relay.clear_faults()
    assert queued_again > 0, "some work was queued again while the first tasks ran"
    assert_exactly_once_or_reported(result, fresh_relay, addresses)
    assert max(fresh_relay.copies.values()) == 1, "claims keep two tasks from sending to one recipient"


def test_djangos_queued_backend_returns_once_queued(both_running, store, fresh_relay, monkeypatch):
    django = pytest.importorskip("django", reason="Django is in the test extra")
    from django.conf import settings as django_settings

    if not django_settings.configured:
        django_settings.configure(DEFAULT_CHARSET="utf-8")
    from django.core import mail

    from mailman_mta.integrations.django_celery import QueuedEmailBackend

    monkeypatch.setenv("MAILMAN_MTA_REDIS_URL", store_url(store))
    backend = QueuedEmailBackend()
    message = mail.EmailMessage("Hi", "Body", "Anne Person <anne@example.com>", ["Bart <bart@example.org>"])
    assert backend.send_messages([message]) == 1
    (handle,) = backend.handles
    result = handle.result(timeout=60)
    assert result.accepted == ("bart@example.org",)
    (received,) = fresh_relay.received
    assert received.mail_from == "anne@example.com" and b"Subject: Hi" in received.content
    assert django.VERSION >= (4, 2)


def store_url(store) -> str:
    kwargs = store.client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


@pytest.mark.postfix
def test_workers_deliver_through_a_real_postfix(
    workers, redis_server, store, submitting, postfix, postfix_capture, tmp_path, host_environment
):
    for worker in workers.values():
        worker.stop()  # only the Postfix worker takes this post
    config_file = tmp_path / "postfix-worker.cfg"
    config_file.write_text(
        f"""
[mta]
smtp_host: 127.0.0.1
smtp_port: {postfix.port}
secure_mode: starttls
ca_file: {postfix.ca_file}
smtp_user: testuser
smtp_pass: testpass
max_recipients: 5
"""
    )
    worker = CeleryWorker(
        "wp", redis_server.url, config_file, tmp_path / "wp.log", python=host_environment(*CELERY_ENVIRONMENT)
    ).start()
    try:
        postfix_capture.clear()
        addresses = [*members(18, "pf"), "refused@example.com"]
        handle = celery_integration.submit("list@example.com", addresses, MESSAGE, store=store)
        result = handle.result(timeout=120)
    finally:
        worker.stop()
    assert set(result.permanent) == {"refused@example.com"} and result.permanent["refused@example.com"].code == 550
    assert len(result.accepted) == 18 and not result.temporary and not result.uncertain
    arrived = postfix_capture.wait_for_messages(1, timeout=30)
    deadline = time.monotonic() + 60
    while sorted(postfix_capture.copies) != sorted(result.accepted) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert postfix_capture.copies == Counter(result.accepted), arrived


# -- the ledger's rules, whatever the relay says (tasks run in this process) --

behaviours = st.sampled_from(["ok", "ok", "451", "550", "552", "dead-worker"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(behaviours, min_size=1, max_size=8), ending=st.sampled_from(["ok", "lost-after-data", "421"]))
def test_property_the_ledger_tells_the_truth(store, fresh_relay, monkeypatch, plan, ending):
    """Accepted: the relay has exactly one copy.  Permanent: the relay said
    5xx (552 is temporary, RFC 5321 4.5.3.1.10).  A recipient a dead worker
    left "sending" is uncertain and never sent.  Nobody gets two copies."""
    monkeypatch.setenv("MAILMAN_MTA_REDIS_URL", store_url(store))
    fresh_relay.clear()
    fresh_relay.clear_faults()
    fresh_relay.clear_refusals()
    addresses = [f"p{n}@example.com" for n in range(len(plan))]
    for address, behaviour in zip(addresses, plan):
        if behaviour in ("451", "550", "552"):
            fresh_relay.refuse_recipient(address, f"{behaviour} {behaviour[0]}.0.0 scripted")
    if ending == "lost-after-data":
        fresh_relay.script("END-OF-DATA", close=True, accept=True, times=1)
    elif ending == "421":
        fresh_relay.script("MAIL", reply="421 4.3.2 going down", close=True, times=1)
    post_id = "prop-" + os.urandom(6).hex()
    store.create(post_id, "list@example.com", b"Subject: p\r\n\r\nHello\r\n", addresses)
    dead = [a for a, b in zip(addresses, plan) if b == "dead-worker"]
    store.record(post_id, dict.fromkeys(dead, celery_integration.State("sending", worker="w-dead", at=1.0)))
    layer = f"[mta]\nsmtp_host: 127.0.0.1\nsmtp_port: {fresh_relay.port}\nmax_connections: 1\n"
    default_config.push("in-process-worker", layer + "[celery]\nmax_retries: 1\nretry_delay: 0.01\nstale_after: 1\n")
    try:
        celery_integration.deliver_chunk.apply(args=(post_id, addresses))
        # Retries ran in place (eager); nothing is left for a sweeper.
        assert celery_integration.resubmit_stalled(post_id, older_than=0, store=store) == 0
    finally:
        default_config.pop("in-process-worker")
        celery_integration._close_delivery()
    states = store.states(post_id)
    received = fresh_relay.copies
    for address, behaviour in zip(addresses, plan):
        state = states[address]
        assert state.final, (address, state)
        assert received[address] <= 1
        if state.state == "accepted":
            assert received[address] == 1
        if state.state == "permanent":
            assert behaviour == "550"
        if behaviour == "dead-worker":
            assert state.state == "uncertain" and received[address] == 0
        if state.state == "failed":
            assert received[address] == 0


def test_chunks_never_mix_routes(mta_layers, enabled):
    from mailman_mta import hookimpl
    from mailman_mta.routes import Route

    class Partner:
        @hookimpl
        def mta_choose_route(self, domain):
            return Route(("partner.example", 25)) if domain.endswith("example.net") else None

    mta_layers.push("chunks", "[celery]\nchunk_size: 3\n")
    addresses = [f"u{n}@{domain}" for n in range(4) for domain in ("example.com", "example.net", "a.example.net")]
    with enabled(partner=Partner()):
        chunks = celery_integration._chunks(addresses, default_config)
    assert sorted(a for chunk in chunks for a in chunk) == sorted(addresses)
    assert all(len(chunk) <= 3 for chunk in chunks)
    for chunk in chunks:
        assert len({address.endswith("example.net") for address in chunk}) == 1, chunk
