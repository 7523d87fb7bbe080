"""The ``relays`` plugin: relays tried in order, the down ones skipped, TLS never skipped past."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import smtplib
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.envelope import Envelope
from mailman_mta.errors import ConfigurationError, MTAConnectionError, TLSError
from mailman_mta.plugins import relays
from mailman_mta.testing import CountingSMTPServer, ScriptedSMTPServer
from mailman_mta.testing.scripted import Action
from mailman_mta.values import as_host_port_list


@pytest.fixture
def clock(monkeypatch):
    now = [500.0]
    monkeypatch.setattr(relays, "clock", lambda: now[0])
    relays.forget()
    yield now
    relays.forget()


@pytest.fixture
def second():
    with CountingSMTPServer() as server:
        yield server


@pytest.fixture
def closed_port():
    """A loopback port nobody listens on (bound, never listening: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def use(mta_layers, *servers, down_time=60):
    hosts = " ".join(f"127.0.0.1:{port}" for port in servers)
    mta_layers.push("relays", f"[plugin.relays]\nenabled: yes\n[relays]\nhosts: {hosts}\ndown_time: {down_time}\n")


def _envelope():
    return Envelope.build("a@example.com", ["b@example.com"], "Subject: x\n\n")


def send(connection):
    return connection.sendmail("a@example.com", ["b@example.com"], "Subject: x\n\n")


def test_the_first_relay_takes_the_mail_when_it_is_up(clock, mta_config, mta_smtpd, second, mta_layers):
    use(mta_layers, mta_smtpd.port, second.port)
    with Connection() as connection:
        send(connection)
        assert (connection.host, connection.port) == ("127.0.0.1", mta_smtpd.port)
    assert (len(mta_smtpd.received), len(second.received)) == (1, 0)


def test_a_relay_that_refuses_connections_is_skipped_and_marked_down(
    clock, mta_config, second, closed_port, mta_layers
):
    use(mta_layers, closed_port, second.port, down_time=30)
    with Connection() as connection:
        result = connection.transact(_envelope())
        assert result.relay == ("127.0.0.1", second.port)
        assert (connection.host, connection.port) == ("127.0.0.1", second.port)
    assert relays.down_relays() == [("127.0.0.1", closed_port)]
    clock[0] += 31
    assert relays.down_relays() == []


def test_a_relay_marked_down_is_not_tried_until_its_time_is_up(clock, mta_config, mta_smtpd, second, mta_layers):
    use(mta_layers, mta_smtpd.port, second.port, down_time=30)
    mta_smtpd.script("CONNECT", reply="421 4.3.2 Going down")
    with Connection(sessions_per_connection=1) as connection:
        send(connection)
        send(connection)
        clock[0] += 31
        send(connection)
    assert mta_smtpd.get_connection_count() == 2
    assert (len(mta_smtpd.received), len(second.received)) == (1, 2)


def test_a_554_greeting_skips_the_relay_too(clock, mta_config, mta_smtpd, second, mta_layers):
    use(mta_layers, mta_smtpd.port, second.port)
    mta_smtpd.script("CONNECT", reply="554 5.3.2 Not accepting mail from you")
    with Connection() as connection:
        send(connection)
    assert (len(mta_smtpd.received), len(second.received)) == (0, 1)


def test_when_every_relay_is_down_each_is_tried_again(clock, mta_config, mta_smtpd, closed_port, mta_layers):
    use(mta_layers, closed_port, mta_smtpd.port)
    mta_smtpd.script("CONNECT", reply="421 4.3.2 Busy")
    with Connection() as connection:
        with pytest.raises(MTAConnectionError, match=rf"no relay in \[relays\] hosts.*127.0.0.1:{closed_port}.*421"):
            send(connection)
        send(connection)
    assert len(mta_smtpd.received) == 1


def test_all_relays_down_is_a_temporary_failure_per_recipient(clock, mta_config, closed_port, mta_layers):
    use(mta_layers, closed_port)
    with Delivery() as delivery:
        result = delivery.deliver("a@example.com", ["b@example.com", "c@example.com"], "Subject: x\n\n")
    assert sorted(result.temporary) == ["b@example.com", "c@example.com"] and not result.permanent


def test_a_tls_failure_is_never_skipped_past(clock, mta_config, mta_smtpd, second, mta_layers):
    """The first relay does not offer STARTTLS: that is an error, not a reason to try the next."""
    use(mta_layers, mta_smtpd.port, second.port)
    mta_layers.push("tls", "[mta]\nsecure_mode: starttls\n")
    with Connection() as connection:
        with pytest.raises(TLSError, match="does not offer STARTTLS"):
            send(connection)
    assert second.get_connection_count() == 0
    assert relays.down_relays() == []


def test_popping_the_layer_goes_back_to_the_configured_relay(clock, mta_config, mta_smtpd, second, mta_layers):
    use(mta_layers, second.port)
    with Connection() as connection:
        send(connection)
        mta_layers.pop("relays")
        send(connection)
        assert connection.port == mta_smtpd.port
    assert (len(mta_smtpd.received), len(second.received)) == (1, 1)


@pytest.mark.parametrize(
    ("hosts", "problem"),
    [
        ("", r"\[relays\] hosts is empty"),
        ("mx.example.com", r"\[relays\] hosts: 'mx.example.com' is not host:port"),
        ("mx.example.com:99999", r"\[relays\] hosts: 'mx.example.com:99999': '99999' is not a port number"),
    ],
)
def test_bad_relay_lists_are_refused_at_push(mta_config, mta_layers, hosts, problem):
    with pytest.raises(ConfigurationError, match=problem):
        mta_layers.push("bad", f"[plugin.relays]\nenabled: yes\n[relays]\nhosts: {hosts}\n")


def test_ipv6_relays_are_written_in_brackets():
    assert as_host_port_list("[::1]:25 mx.example.com:587") == (("::1", 25), ("mx.example.com", 587))


def test_check_names_the_relay_it_reached(clock, second, closed_port):
    from click.testing import CliRunner

    from mailman_mta.cli import main

    result = CliRunner().invoke(
        main,
        [
            "-o",
            "plugin.relays.enabled=yes",
            "-o",
            f"relays.hosts=127.0.0.1:{closed_port} 127.0.0.1:{second.port}",
            "check",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"server      127.0.0.1:{second.port} (smtp)" in result.output


# -- relays that misbehave in ways nobody scripted by hand -------------------

#: What each relay does when connected to: None refuses the connection,
#: bytes replace its greeting (and it hangs up), WORKS behaves.
WORKS = b"(behaves)"
BEHAVIOURS: dict[str, bytes | None] = {
    "refuses connections": None,
    "greets 421": b"421 4.3.2 Not now\r\n",
    "greets 554": b"554 5.3.2 Go away\r\n",
    "greets with garbage": b"hello there\r\n",
    "hangs up at once": b"",
    "works": WORKS,
}


@pytest.mark.slow  # seconds of waiting: outside the inner loop
@settings(
    max_examples=25,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.sampled_from(sorted(BEHAVIOURS)), min_size=1, max_size=4))
def test_the_first_working_relay_takes_the_mail_and_the_others_are_marked(clock, mta_config, behaviours) -> None:
    """Raw-socket relays, each greeting as drawn: mail goes to the first that works, in order."""
    relays.forget()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        servers: list[ScriptedSMTPServer | None] = []
        for behaviour in behaviours:
            greeting = BEHAVIOURS[behaviour]
            if greeting is None:
                sock = stack.enter_context(socket.socket())
                sock.bind(("127.0.0.1", 0))
                ports.append(sock.getsockname()[1])
                servers.append(None)
                continue
            server = stack.enter_context(ScriptedSMTPServer())
            if greeting != WORKS:
                server.script(*[Action(reply=greeting, close=True)] * 3)
            ports.append(server.port)
            servers.append(server)
        hosts = " ".join(f"127.0.0.1:{port}" for port in ports)
        layer = f"[plugin.relays]\nenabled: yes\n[relays]\nhosts: {hosts}\ndown_time: 60\n"
        stack.enter_context(mta_config.layer("drawn", layer))
        connection = stack.enter_context(Connection(sessions_per_connection=1))
        working = behaviours.index("works") if "works" in behaviours else None
        if working is None:
            with pytest.raises(MTAConnectionError, match=r"no relay in \[relays\] hosts"):
                send(connection)
            assert sorted(relays.down_relays()) == sorted(("127.0.0.1", port) for port in ports)
            return
        send(connection)
        assert result_relay(connection) == ("127.0.0.1", ports[working])
        assert sorted(relays.down_relays()) == sorted(("127.0.0.1", port) for port in ports[:working])
        before = [server.connections if server is not None else 0 for server in servers]
        send(connection)
        after = [server.connections if server is not None else 0 for server in servers]
    # Read once every connection has said QUIT, so the servers have recorded all.
    assert after[:working] == before[:working], "a relay marked down is not tried while another works"
    taker = servers[working]
    assert taker is not None and [t.accepted for t in taker.kept] == [["b@example.com"]] * 2


def result_relay(connection: Connection) -> tuple[str, int]:
    return connection.host, connection.port


def token(user: str) -> str:
    return "ya29.raw-relay-token"


def test_xoauth2_error_exchange_against_a_raw_relay(mta_config, mta_layers):
    """The relay's bytes, not aiosmtpd's: a 334 with a JSON error, our empty answer, then 535."""
    error = base64.b64encode(json.dumps({"status": "400", "schemes": "Bearer"}).encode())
    with ScriptedSMTPServer(extensions=("AUTH XOAUTH2", "PIPELINING")) as relay:
        relay.script(
            Action(),
            Action(),
            Action(reply=b"334 " + error + b"\r\n"),
            Action(reply=b"535 5.7.8 Username and Password not accepted\r\n"),
        )
        mta_layers.push(
            "raw",
            f"[mta]\nsmtp_port: {relay.port}\nsmtp_user: anne@example.com\n"
            f"[plugin.xoauth2]\nenabled: yes\n[xoauth2]\ntoken_callable: {__name__}:token\n",
        )
        with Connection() as connection, pytest.raises(smtplib.SMTPAuthenticationError) as raised:
            send(connection)
        lines = [line for _, line in relay.commands]
    assert lines[1].startswith(b"AUTH XOAUTH2 ") and lines[2] == b"", "the error challenge got an empty line"
    assert base64.b64decode(lines[1].split()[2]) == b"user=anne@example.com\x01auth=Bearer ya29.raw-relay-token\x01\x01"
    assert raised.value.smtp_code == 535 and b"status 400" in raised.value.smtp_error
    assert b"ya29" not in raised.value.smtp_error and relay.transactions == []
