"""Failures, injected with the test server's scripted faults.

For every fault: what the caller of `Connection.sendmail` gets, what
`Delivery.deliver` reports, and how many copies of the message the server
ended up with.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import time

import pytest

from mailman_mta import hookimpl
from mailman_mta.connection import Connection
from mailman_mta.delivery import CONNECTION_LOST, Delivery
from mailman_mta.errors import ConfigurationError, MTAConnectionError, SMTPTimeoutError
from mailman_mta.testing import CountingSMTPServer

MESSAGE = "From: anne@example.com\nSubject: test\n\nHello\n"
RECIPIENTS = ["bart@example.com", "cate@example.com"]


def connect(server: CountingSMTPServer, **settings) -> Connection:
    settings.setdefault("command_timeout", 5)
    return Connection(server.hostname, server.port, 0, **settings)


# -- what each fault does to one message on a fresh connection ------------

FRESH_CONNECTION_FAULTS: list[tuple[str, dict[str, object], int, int]] = [
    # point, script arguments, expected code for Delivery, copies delivered
    ("CONNECT", dict(reply="554 5.3.2 No service for you"), 421, 0),
    ("CONNECT", dict(reply="421 4.3.2 Busy, try later"), 421, 0),
    ("CONNECT", dict(close=True), CONNECTION_LOST, 0),
    ("EHLO", dict(close=True), CONNECTION_LOST, 0),
    ("MAIL", dict(reply="451 4.3.0 Try again"), 451, 0),
    ("MAIL", dict(reply="550 5.7.1 Sender rejected"), 451, 0),
    ("MAIL", dict(close=True), CONNECTION_LOST, 0),
    ("RCPT", dict(close=True), CONNECTION_LOST, 0),
    ("DATA", dict(reply="554 5.5.1 No valid recipients"), 554, 0),
    ("DATA", dict(close=True), CONNECTION_LOST, 0),
    ("MID-DATA", dict(close=True), CONNECTION_LOST, 0),
    ("END-OF-DATA", dict(reply="452 4.3.1 Out of storage"), 452, 0),
    ("END-OF-DATA", dict(reply="554 5.6.0 Content rejected"), 554, 0),
    ("END-OF-DATA", dict(close=True), CONNECTION_LOST, 0),
    ("END-OF-DATA", dict(close=True, accept=True), CONNECTION_LOST, 1),
]


@pytest.mark.parametrize(
    "point, fault, code, copies",
    FRESH_CONNECTION_FAULTS,
    ids=[f"{p}-{'-'.join(map(str, f.items()))}" for p, f, _, _ in FRESH_CONNECTION_FAULTS],
)
def test_each_fault_on_a_fresh_connection(mta_smtpd, point, fault, code, copies):
    mta_smtpd.script(point, **fault)
    with Delivery(connect(mta_smtpd)) as delivery:
        result = delivery.deliver("anne@example.com", RECIPIENTS, MESSAGE)
    assert set(result.refused) == set(RECIPIENTS)
    assert {failure.code for failure in result.refused.values()} == {code}
    assert all(failure.permanent == (code >= 500) for failure in result.refused.values())
    assert len(mta_smtpd.received) == copies
    assert result.error is not None


@pytest.mark.parametrize("point, fault, code, copies", FRESH_CONNECTION_FAULTS[:3] + FRESH_CONNECTION_FAULTS[4:6])
def test_sendmail_raises_what_smtplib_raises(mta_smtpd, point, fault, code, copies):
    mta_smtpd.script(point, **fault)
    connection = connect(mta_smtpd)
    with pytest.raises(smtplib.SMTPException) as caught:
        connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    if point == "MAIL":
        assert isinstance(caught.value, smtplib.SMTPSenderRefused)
        assert caught.value.smtp_code == int(fault["reply"][:3]), "the server's own code, as smtplib gives it"
        assert connection.transport is not None, "a refused MAIL leaves the connection usable"
    else:
        assert connection.transport is None
    assert connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE) == {}
    connection.quit()
    assert len(mta_smtpd.received) == copies + 1


def test_one_refused_recipient_is_reported_alone(mta_smtpd):
    mta_smtpd.refuse_recipient("cate@example.com", "450 4.2.2 Mailbox full")
    mta_smtpd.refuse_recipient("dave@example.com", "550 5.1.1 No such user")
    with Delivery(connect(mta_smtpd)) as delivery:
        result = delivery.deliver("anne@example.com", RECIPIENTS + ["dave@example.com"], MESSAGE)
    assert result.accepted == ("bart@example.com",)
    assert result.temporary == {"cate@example.com": (450, "4.2.2 Mailbox full")}
    assert result.permanent == {"dave@example.com": (550, "5.1.1 No such user")}
    assert mta_smtpd.received[0].rcpt_tos == ("bart@example.com",)


def test_bad_addresses_are_refused_alone_and_the_rest_delivered(mta_smtpd):
    with Delivery(connect(mta_smtpd)) as delivery:
        result = delivery.deliver("anne@example.com", ["bart@example.com", "evil@example.com>\r\nDATA"], MESSAGE)
    assert result.accepted == ("bart@example.com",)
    assert result.permanent["evil@example.com>\r\nDATA"].code == 553
    assert mta_smtpd.received[0].rcpt_tos == ("bart@example.com",)
    with Delivery(connect(mta_smtpd)) as delivery:
        result = delivery.deliver("anne@example.com\n", ["bart@example.com"], MESSAGE)
    assert result.refused["bart@example.com"].code == 451, "a bad sender is ours, not the member's, fault"
    assert "4.1.7" in result.refused["bart@example.com"].message


def test_wrong_credentials_are_temporary_so_nobody_is_bounced(mta_smtpd):
    with Delivery(connect(mta_smtpd, smtp_user="testuser", smtp_pass="wrong")) as delivery:
        result = delivery.deliver("anne@example.com", RECIPIENTS, MESSAGE)
    assert {f.code for f in result.refused.values()} == {454}
    assert result.permanent == {}
    assert "wrong" not in repr(result)


def test_an_unreachable_server_is_temporary_and_named():
    with CountingSMTPServer() as server:
        port = server.port
    with Delivery(Connection("127.0.0.1", port, 0)) as delivery:
        result = delivery.deliver("anne@example.com", RECIPIENTS, MESSAGE)
    failure = result.refused["bart@example.com"]
    assert failure.code == CONNECTION_LOST and failure.temporary
    assert f"cannot connect to 127.0.0.1:{port}" in failure.message
    assert isinstance(result.error, MTAConnectionError) and isinstance(result.error, OSError)


def test_devmode_refusals_are_reported_for_the_original_recipients(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("devmode", "[devmode]\nenabled: yes\nrecipient: dev@example.com\n")
    mta_smtpd.refuse_recipient("dev@example.com", "452 4.2.2 Over quota")
    with Delivery() as delivery:
        result = delivery.deliver("anne@example.com", RECIPIENTS, MESSAGE)
    assert set(result.temporary) == set(RECIPIENTS)


# -- timeouts -----------------------------------------------------------


@pytest.mark.parametrize("point", ["CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "END-OF-DATA"])
def test_a_server_that_never_answers_fails_within_the_timeout(mta_smtpd, point):
    mta_smtpd.script(point, hang=True)
    connection = connect(mta_smtpd, command_timeout=0.3)
    expected = {"CONNECT": "the greeting", "END-OF-DATA": "the end of DATA"}.get(point, point)
    with pytest.raises(SMTPTimeoutError) as caught:
        connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    assert str(caught.value) == f"127.0.0.1:{mta_smtpd.port} did not answer {expected} within 0.3 s"
    assert isinstance(caught.value, smtplib.SMTPServerDisconnected)
    assert connection.transport is None


def test_a_slow_server_within_the_timeout_is_fine(mta_smtpd):
    mta_smtpd.script("MAIL", delay=0.2)
    connection = connect(mta_smtpd, command_timeout=5)
    assert connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE) == {}
    connection.quit()


def test_a_connect_timeout_names_host_and_port():
    # A listener that never accepts, with its backlog full: the kernel
    # stops answering SYNs, so the next connect() can only time out.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)
        connection = Connection("127.0.0.1", port, 0, connect_timeout=0.3)
        with pytest.raises(MTAConnectionError, match=rf"connecting to 127.0.0.1:{port} timed out after 0.3 s"):
            connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_timeouts_from_a_layer(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("impatient", "[mta]\ncommand_timeout: 0.25\n")
    mta_smtpd.script("RCPT", hang=True)
    with pytest.raises(SMTPTimeoutError, match="did not answer RCPT within 0.25 s"):
        Connection().sendmail("anne@example.com", RECIPIENTS, MESSAGE)


# -- stale connections ----------------------------------------------------


def test_a_connection_the_server_dropped_is_replaced_transparently(mta_smtpd, caplog):
    caplog.set_level(logging.INFO, logger="mailman_mta")
    connection = connect(mta_smtpd)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    assert mta_smtpd.drop_connections(reply="421 4.4.2 Idle timeout") == 1
    time.sleep(0.05)
    assert connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE) == {}
    connection.quit()
    assert connection.connection_count == 2
    assert len(mta_smtpd.received) == 2
    assert "dropped a reused connection" not in caplog.text, "liveness should have caught it, not the retry"


def test_a_drop_right_after_a_transaction_is_sent_once_on_a_new_connection(mta_smtpd):
    # Within liveness.RECENT_SECONDS of a transaction the socket is not
    # polled; whichever of the check and the retry meets the drop, the
    # message goes out once, on a new connection.
    connection = connect(mta_smtpd)
    for _ in range(5):
        connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
        mta_smtpd.drop_connections()
    assert connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE) == {}
    connection.quit()
    assert len(mta_smtpd.received) == 6
    assert connection.connection_count == 6


def test_a_drop_after_the_check_is_retried_once_before_any_data(mta_config, mta_smtpd, mta_layers, caplog):
    caplog.set_level(logging.INFO, logger="mailman_mta")
    # With the liveness plugin off, nothing notices the drop until MAIL FROM.
    mta_layers.push("no-liveness", "[plugin.liveness]\nenabled: no\n")
    connection = Connection()
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    mta_smtpd.drop_connections()
    time.sleep(0.05)
    assert connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE) == {}
    connection.quit()
    assert connection.connection_count == 2
    assert len(mta_smtpd.received) == 2
    assert f"127.0.0.1:{mta_smtpd.port} dropped a reused connection before the message was sent" in caplog.text


def test_a_421_to_mail_on_a_reused_connection_is_retried(mta_smtpd):
    connection = connect(mta_smtpd)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    mta_smtpd.script("MAIL", reply="421 4.4.2 Timeout, closing", close=True)
    assert connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE) == {}
    connection.quit()
    assert connection.connection_count == 2
    assert len(mta_smtpd.received) == 2


def test_a_loss_after_the_end_of_data_is_never_retried(mta_smtpd):
    connection = connect(mta_smtpd)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    mta_smtpd.script("END-OF-DATA", close=True, accept=True)
    with pytest.raises(smtplib.SMTPServerDisconnected, match="while waiting for the reply to the end of DATA"):
        connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    assert len(mta_smtpd.received) == 2
    assert connection.connection_count == 1


def test_a_loss_mid_data_on_a_reused_connection_is_not_retried(mta_smtpd):
    connection = connect(mta_smtpd)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    mta_smtpd.script("MID-DATA", close=True)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE + "x" * 100_000)
    assert len(mta_smtpd.received) == 1
    assert connection.connection_count == 1


def test_a_failure_on_a_fresh_connection_is_not_retried(mta_smtpd):
    mta_smtpd.script("MAIL", reply="421 4.3.2 Going down", close=True)
    connection = connect(mta_smtpd)
    with pytest.raises(smtplib.SMTPSenderRefused):
        connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    assert mta_smtpd.get_connection_count() == 1


def test_an_idle_connection_is_checked_with_noop(mta_smtpd):
    connection = connect(mta_smtpd, noop_after_idle=0.05)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    time.sleep(0.1)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    assert mta_smtpd.commands.count("NOOP") == 1
    assert connection.connection_count == 1
    mta_smtpd.script("NOOP", reply="421 4.4.2 Idle too long", close=True)
    time.sleep(0.1)
    assert connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE) == {}
    connection.quit()
    assert connection.connection_count == 2
    assert len(mta_smtpd.received) == 3


def test_pending_input_on_transports_we_cannot_or_can_see_into(mta_smtpd):
    from mailman_mta.plugins.liveness import has_pending_input

    assert has_pending_input(object()) is False, "a foreign transport is trusted"
    connection = connect(mta_smtpd)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    transport = connection.transport
    assert has_pending_input(transport) is False
    transport.close()
    assert has_pending_input(transport) is True, "a closed socket is stale"


def test_a_busy_connection_is_not_checked(mta_smtpd):
    connection = connect(mta_smtpd, noop_after_idle=60)
    for _ in range(3):
        connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    connection.quit()
    assert "NOOP" not in mta_smtpd.commands


def test_max_idle_time_replaces_without_asking(mta_smtpd):
    connection = connect(mta_smtpd, max_idle_time=0.05)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    time.sleep(0.1)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    connection.quit()
    assert connection.connection_count == 2
    assert "NOOP" not in mta_smtpd.commands


def test_max_connection_age(mta_smtpd):
    connection = connect(mta_smtpd, max_connection_age=0.1)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    assert connection.connection_count == 1
    time.sleep(0.15)
    connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
    connection.quit()
    assert connection.connection_count == 2
    assert mta_smtpd.commands.count("QUIT") == 2


# -- the fault script itself ---------------------------------------------


def test_scripting_mistakes_are_named(mta_smtpd):
    with pytest.raises(ValueError, match="cannot script a fault at 'MAIL FROM'"):
        mta_smtpd.script("MAIL FROM", close=True)
    with pytest.raises(ValueError, match="not an SMTP reply line"):
        mta_smtpd.script("MAIL", reply="oops")
    with pytest.raises(ValueError, match="cannot also reply"):
        mta_smtpd.script("MAIL", hang=True, close=True)


def test_faults_fire_the_given_number_of_times(mta_smtpd):
    mta_smtpd.script("MAIL", reply="451 4.3.0 Later", times=2)
    results = []
    for _ in range(3):
        with Delivery(connect(mta_smtpd)) as delivery:
            results.append(delivery.deliver("anne@example.com", ["bart@example.com"], MESSAGE).ok)
    assert results == [False, False, True]


# -- nothing escapes Delivery.deliver ----------------------------------------

ODD_ERRORS = [
    UnicodeError("encoding with 'idna' codec failed (UnicodeError: label empty or too long)"),
    OverflowError("timestamp out of range for platform time_t"),
    ValueError("embedded null byte"),
    RuntimeError("a bug in a plugin"),
    KeyError("surprise"),
]


@pytest.mark.parametrize("error", ODD_ERRORS, ids=lambda e: type(e).__name__)
def test_whatever_escapes_the_transport_is_a_temporary_result(mta_config, mta_layers, error, caplog, enabled):
    class Broken:
        @hookimpl(tryfirst=True)
        def mta_create_transport(self):
            raise error

    with enabled(broken=Broken()), Delivery() as delivery:
        result = delivery.deliver("anne@example.com", RECIPIENTS, MESSAGE)
    assert set(result.refused) == set(RECIPIENTS)
    assert {failure.code for failure in result.refused.values()} == {451}
    assert result.error is error


def test_a_plugin_that_raises_while_preparing_fails_only_its_transaction(mta_config, mta_smtpd, mta_layers, enabled):
    class Picky:
        @hookimpl
        def mta_prepare_message(self, envelope):
            if "cate@example.com" in envelope.recipients:
                raise ZeroDivisionError("oops")

    mta_layers.push("individual", "[mta]\ndelivery: individual\n")
    with enabled(picky=Picky()), Delivery() as delivery:
        result = delivery.deliver("anne@example.com", RECIPIENTS, MESSAGE)
    assert result.accepted == ("bart@example.com",)
    assert result.refused["cate@example.com"].code == 451


def test_a_host_the_resolver_cannot_take_is_a_connection_error():
    from mailman_mta.smtp.transport import SMTPTransport

    for host in ("x" * 64 + ".example.com", "bad\0host"):
        with pytest.raises(MTAConnectionError, match="cannot connect to"):
            SMTPTransport(connect_timeout=1).connect(host, 25)


@pytest.mark.parametrize(
    "text, key",
    [
        ("[mta]\nsmtp_host: " + "x" * 64 + ".example.com\n", "smtp_host"),
        ("[mta]\nsmtp_host: a..b\n", "smtp_host"),
        ("[mta]\nsmtp_host: -bad.example.com\n", "smtp_host"),
        ("[mta]\ncommand_timeout: 1e12\n", "command_timeout"),
        ("[mta]\nconnect_timeout: 9999999999\n", "connect_timeout"),
        ("[mta]\nmax_connection_age: 1e300\n", "max_connection_age"),
    ],
)
def test_values_that_can_never_work_are_refused_at_push(mta_config, text, key):
    with pytest.raises(ConfigurationError, match=rf"\[mta\] {key}: ") as caught:
        mta_config.push("impossible", text)
    assert caught.value.key == key
    assert "impossible" not in mta_config.layers


def test_impossible_arguments_are_refused_by_connection():
    with pytest.raises(ValueError, match=r"Connection\(host=...\): 'a..b' is not a host name"):
        Connection("a..b", 25)
    with pytest.raises(ValueError, match=r"Connection\(command_timeout=...\)"):
        Connection(command_timeout=10**12)


# -- observers cannot change a result ----------------------------------------


def test_a_result_observer_that_raises_changes_nothing(mta_config, mta_smtpd, mta_layers, caplog, enabled):
    seen = []

    class Crashing:
        @hookimpl(tryfirst=True)
        def mta_delivery_result(self, refused):
            raise RuntimeError("the metrics server is down")

    class Counting:
        @hookimpl
        def mta_delivery_result(self, envelope, error, result):
            seen.append((tuple(envelope.recipients), error, result.delivered))

    with enabled(crashing=Crashing(), counting=Counting()):
        connection = Connection()
        assert connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE) == {}
        with Delivery(connection) as delivery:
            assert delivery.deliver("anne@example.com", RECIPIENTS, MESSAGE).ok
    assert len(mta_smtpd.received) == 2
    assert seen == [(tuple(RECIPIENTS), None, True)] * 2, "the other observer still saw every send"
    assert "plugin 'crashing' raised in mta_delivery_result; the result stands" in caplog.text
    assert "the metrics server is down" in caplog.text


# -- liveness checks work with any file descriptor ---------------------------


def test_liveness_works_above_fd_1024(mta_smtpd):
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    held = [os.open(os.devnull, os.O_RDONLY)]
    try:
        while held[-1] < 1100:
            held.append(os.dup(held[0]))
        connection = connect(mta_smtpd, noop_after_idle=0.01)
        connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
        assert connection.transport.sock.fileno() > 1024
        time.sleep(0.05)
        connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE)
        mta_smtpd.drop_connections()
        time.sleep(0.05)
        assert connection.sendmail("anne@example.com", RECIPIENTS, MESSAGE) == {}
        connection.quit()
    finally:
        for fd in held:
            os.close(fd)
    assert connection.connection_count == 2
    assert "NOOP" in mta_smtpd.commands
    assert len(mta_smtpd.received) == 3
