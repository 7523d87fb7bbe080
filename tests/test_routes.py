"""Routes: a relay per destination, a pool per route, and destination feedback."""

from __future__ import annotations

import json
import smtplib
import socket

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailman_mta import hookimpl
from mailman_mta.cli import main
from mailman_mta.delivery import Delivery
from mailman_mta.errors import ConfigurationError
from mailman_mta.manager import registry
from mailman_mta.plugins import relays, routes
from mailman_mta.routes import Route
from mailman_mta.testing import CountingSMTPServer

MESSAGE = "Subject: post\n\nHello\n"


@pytest.fixture
def other():
    with CountingSMTPServer() as server:
        yield server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def recipients_at(server) -> list[str]:
    return sorted(r for message in server.received for r in message.rcpt_tos)


# -- the map -----------------------------------------------------------------


def test_the_map_chooses_as_postfix_transport_does():
    table = routes.as_route_map(
        """
        example.org      a.example:25
        .example.org     b.example:26
        .eu.example.org  c.example:27 max_connections=2
        *                d.example
        """
    )
    chosen = {d: table.route(d).name for d in ["example.org", "x.example.org", "y.eu.example.org", "eu.example.org"]}
    assert chosen == {
        "example.org": "a.example:25",
        "x.example.org": "b.example:26",
        "y.eu.example.org": "c.example:27",
        "eu.example.org": "b.example:26",
    }
    assert table.route("example.net").name == "d.example:25"
    assert routes.as_route_map("example.org a.example:25").route("example.net") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("example.org", "needs a relay"),
        ("example.org a:25\nexample.org b:25", "has a route already"),
        ("exa_mple..org a:25", "is not a domain"),
        ("example.org a:25 max_connections=2 b:25", "hosts come before"),
        ("example.org a:25 smtp_host=b", "smtp_host cannot be set here"),
        ("example.org a:99999", "port"),
    ],
)
def test_a_bad_map_is_refused_naming_the_destination(text, problem):
    with pytest.raises(ValueError, match=problem):
        routes.as_route_map(text)


def test_a_secret_in_the_map_is_refused_without_being_shown(mta_layers):
    with pytest.raises(ConfigurationError) as caught:
        mta_layers.push("x", "[plugin.routes]\nenabled: yes\n[routes]\nmap: example.org a:25 smtp_pass=hunter2\n")
    assert "hunter2" not in str(caught.value)


def test_fallback_hosts_need_the_relays_plugin(mta_layers):
    with pytest.raises(ConfigurationError, match="enable \\[plugin.relays\\]"):
        mta_layers.push("x", "[plugin.routes]\nenabled: yes\n[routes]\nmap: example.org a:25 b:25\n")


def test_a_route_hides_its_settings_values():
    route = Route(("relay.example", 587), {"smtp_user": "list", "smtp_pass": "hunter2"})
    assert "hunter2" not in repr(route) and "smtp_pass" in repr(route)
    with pytest.raises(ConfigurationError, match="not with smtp_host"):
        Route(("relay.example", 25), {"smtp_host": "other"})


# -- delivery over routes ----------------------------------------------------


@pytest.mark.parametrize("strategy", ["bulk", "individual"])
def test_four_domains_over_two_relays_with_exact_results(mta_smtpd, other, mta_layers, strategy):
    mta_layers.push(
        "routes",
        f"""
[mta]
delivery: {strategy}
max_recipients: 2
[plugin.routes]
enabled: yes
[routes]
map: example.net  127.0.0.1:{other.port}
     .example.net 127.0.0.1:{other.port}
""",
    )
    mta_smtpd.refuse_recipient("gone@example.org", "550 5.1.1 no such user")
    other.refuse_recipient("busy@lists.example.net", "451 4.2.0 try later")
    members = [
        "anne@example.com",
        "bart@example.com",
        "cleo@example.org",
        "gone@example.org",
        "dave@example.net",
        "eve@example.net",
        "fred@lists.example.net",
        "busy@lists.example.net",
    ]
    with Delivery() as delivery:
        result = delivery.deliver("list@example.com", members, MESSAGE)
        pools = delivery.pools
    assert {r: f.code for r, f in result.refused.items()} == {"gone@example.org": 550, "busy@lists.example.net": 451}
    assert recipients_at(mta_smtpd) == ["anne@example.com", "bart@example.com", "cleo@example.org"]
    assert recipients_at(other) == ["dave@example.net", "eve@example.net", "fred@lists.example.net"]
    for message in [*mta_smtpd.received, *other.received]:
        domains = {r.rpartition("@")[2].endswith("example.net") for r in message.rcpt_tos}
        assert len(domains) == 1, "a transaction never mixes routes"
    assert {r: port for r, (_, port) in result.relays.items()} == {
        r: (other.port if r.endswith("example.net") else mta_smtpd.port) for r in members
    }
    route = next(route for route in pools if route is not None)
    assert route.port == other.port and len(pools) in (1, 2)


def test_a_route_that_cannot_be_had_refuses_only_its_domain(mta_smtpd, enabled):
    class Broken:
        @hookimpl
        def mta_choose_route(self, domain):
            if domain == "example.net":
                return Route(("127.0.0.1", 25), {"command_timeout": "soon"})
            if domain == "example.org":
                raise RuntimeError("the routing database is down")
            return None

    with enabled(broken=Broken()), Delivery() as delivery:
        result = delivery.deliver("list@example.com", ["a@example.com", "b@example.net", "c@example.org"], MESSAGE)
    assert result.accepted == ("a@example.com",)
    assert result.refused["b@example.net"].code == 451 and "command_timeout" in result.refused["b@example.net"].message
    assert "routing database is down" in result.refused["c@example.org"].message
    assert result.temporary.keys() == {"b@example.net", "c@example.org"}


def test_relays_fail_over_within_a_route(mta_smtpd, other, mta_layers, monkeypatch):
    monkeypatch.setattr(relays, "clock", lambda: 1000.0)
    relays.forget()
    closed = free_port()
    mta_layers.push(
        "routes",
        f"""
[plugin.relays]
enabled: yes
[relays]
hosts: 127.0.0.1:{mta_smtpd.port}
[plugin.routes]
enabled: yes
[routes]
map: example.net 127.0.0.1:{closed} 127.0.0.1:{other.port}
""",
    )
    try:
        with Delivery() as delivery:
            result = delivery.deliver("list@example.com", ["a@example.com", "b@example.net"], MESSAGE)
        assert result.ok
        assert result.relays["b@example.net"] == ("127.0.0.1", other.port)
        assert recipients_at(other) == ["b@example.net"] and recipients_at(mta_smtpd) == ["a@example.com"]
        assert ("127.0.0.1", closed) in relays.down_relays()
    finally:
        relays.forget()


def test_deliverylog_names_the_relay_of_each_route(mta_smtpd, other, mta_layers, tmp_path):
    log = tmp_path / "delivery.log"
    mta_layers.push(
        "routes",
        f"""
[plugin.deliverylog]
enabled: yes
[deliverylog]
path: {log}
[plugin.routes]
enabled: yes
[routes]
map: example.net 127.0.0.1:{other.port}
""",
    )
    with Delivery() as delivery:
        delivery.deliver("list@example.com", ["a@example.com", "b@example.net"], MESSAGE)
    registry.load("deliverylog").flush()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(str(line["relay"]) for line in lines) == sorted(
        str(relay) for relay in ([f"127.0.0.1:{mta_smtpd.port}", f"127.0.0.1:{other.port}"])
    )


# -- destination feedback ----------------------------------------------------


def test_a_relay_limiting_connections_gets_fewer_and_no_mail_fails(mta_layers):
    with CountingSMTPServer(connection_limit=2) as limited:
        mta_layers.push("limited", f"[mta]\nsmtp_port: {limited.port}\nmax_connections: 8\nmax_recipients: 1\n")
        members = [f"m{n}@example.com" for n in range(60)]
        with Delivery() as delivery:
            result = delivery.deliver("list@example.com", members, MESSAGE)
            concurrency = delivery.pools[None].concurrency
        assert result.ok, result.refused
        assert recipients_at(limited) == sorted(members), "every member exactly once"
        assert limited.most_connections == 2 and limited.connections_refused >= 1
        assert concurrency == 2


def test_concurrency_rises_again_after_successes(mta_layers, monkeypatch):
    from mailman_mta import pool

    now = [0.0]
    monkeypatch.setattr(pool, "clock", lambda: now[0])
    with CountingSMTPServer(connection_limit=1) as limited:
        mta_layers.push("limited", f"[mta]\nsmtp_port: {limited.port}\nmax_connections: 3\nmax_recipients: 1\n")
        with Delivery() as delivery:
            assert delivery.deliver("list@example.com", [f"m{n}@example.com" for n in range(12)], MESSAGE).ok
            lowered = delivery.pools[None]
            assert lowered.concurrency == 1
            limited.connection_limit = None
            now[0] += pool.FEEDBACK_SECONDS + 1
            assert delivery.deliver("list@example.com", [f"n{n}@example.com" for n in range(12)], MESSAGE).ok
            assert lowered.concurrency > 1


def test_a_relay_refusing_even_one_connection_is_reported(mta_layers):
    with CountingSMTPServer(connection_limit=0) as closed:
        mta_layers.push("closed", f"[mta]\nsmtp_port: {closed.port}\nmax_connections: 3\n")
        with Delivery() as delivery:
            result = delivery.deliver("list@example.com", ["a@example.com"], MESSAGE)
    assert result.refused["a@example.com"].code == 421


# -- the CLI and configuration ----------------------------------------------


def cli(*args: str):
    return CliRunner(env={"COLUMNS": "250"}).invoke(main, list(args))


def test_config_shows_a_third_party_plugins_switch():
    registry.add("signature", object())
    try:
        shown = cli("config", "plugin.signature.enabled", "--origin")
        assert shown.exit_code == 0, shown.output
        assert shown.output.strip() == "no (from default)"
        changed = cli("-o", "plugin.signature.enabled=yes", "config", "--changed", "--json")
        rows = {(row["section"], row["key"]) for row in json.loads(changed.output)}
        assert ("plugin.signature", "enabled") in rows
        assert ("plugin.signature", "class") not in rows, "nobody set class"
    finally:
        registry.remove("signature")


def test_check_probes_the_relay_a_domains_mail_is_routed_through(mta_smtpd, other):
    layer = [
        *("-o", "mta.smtp_host=127.0.0.1", "-o", f"mta.smtp_port={mta_smtpd.port}"),
        *("-o", "plugin.routes.enabled=yes", "-o", f"routes.map=example.net 127.0.0.1:{other.port}"),
    ]
    routed = cli(*layer, "check", "--domain", "Example.NET")
    assert routed.exit_code == 0, routed.output
    assert f"route       Example.NET: 127.0.0.1:{other.port}" in routed.output
    assert f"server      127.0.0.1:{other.port}" in routed.output
    unrouted = cli(*layer, "check", "--domain", "example.com")
    assert "route       example.com: [mta] smtp_host" in unrouted.output
    assert f"server      127.0.0.1:{mta_smtpd.port}" in unrouted.output


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(min_value=1, max_value=4),
    allowed=st.integers(min_value=1, max_value=6),
    members=st.integers(min_value=1, max_value=30),
    strategy=st.sampled_from(["bulk", "individual"]),
)
def test_property_a_limiting_relay_gets_every_member_once_and_nothing_fails(
    mta_layers, limit, allowed, members, strategy
):
    """Whatever the relay's limit and ours: nothing fails for it, every
    member gets exactly one copy, and a pool that was refused keeps to it."""
    with CountingSMTPServer(connection_limit=limit) as limited:
        mta_layers.push(
            "limited",
            f"[mta]\nsmtp_port: {limited.port}\nmax_connections: {allowed}\nmax_recipients: 2\ndelivery: {strategy}\n",
        )
        try:
            addresses = [f"m{n}@example.com" for n in range(members)]
            with Delivery() as delivery:
                result = delivery.deliver("list@example.com", addresses, MESSAGE)
                pool = delivery.pools.get(None)
        finally:
            mta_layers.pop("limited")
        assert result.ok, result.refused
        assert recipients_at(limited) == sorted(addresses)
        if limited.connections_refused:
            assert pool is not None and pool.concurrency <= limit, "the pool learnt the relay's limit"


def test_a_route_never_inherits_another_routes_settings():
    from mailman_mta.connection import Connection

    base = Connection(command_timeout=9)
    first = base.sibling(Route(("a.example", 25), {"secure_mode": "starttls", "max_connections": 2}))
    second = first.sibling(Route(("b.example", 26)))
    assert (first.setting("secure_mode"), first.setting("max_connections")) == ("starttls", 2)
    assert (second.host, second.port, second.setting("command_timeout")) == ("b.example", 26, 9)
    assert second.setting("secure_mode") == base.setting("secure_mode")
    assert second.setting("max_connections") == base.setting("max_connections")
    assert first.sibling().setting("secure_mode") == "starttls", "a pool's sibling keeps its route"


greeting_codes = st.sampled_from([421, 450, 451, 454, 554])
status_codes = st.sampled_from(["4.7.0 ", "4.7.1 ", "4.3.2 ", "5.7.1 ", ""])


@pytest.mark.slow  # seconds of waiting: outside the inner loop
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    code=greeting_codes,
    status=status_codes,
    multiline=st.booleans(),
    allowed=st.integers(min_value=2, max_value=5),
    members=st.integers(min_value=2, max_value=16),
)
def test_property_whatever_a_relay_greets_extra_connections_with(mta_layers, code, status, multiline, allowed, members):
    """Raw bytes at the greeting of every connection over the relay's limit of 1:
    nobody gets two copies, nothing is permanent (the relay refused no
    recipient), and when the greeting says "too many connections" nothing
    fails at all."""
    from mailman_mta.pool import pushed_back
    from mailman_mta.testing import ScriptedSMTPServer

    text = f"{status}Too many connections from 127.0.0.1"
    greeting = (f"{code}-relay.example busy\r\n" if multiline else "") + f"{code} {text}\r\n"
    with ScriptedSMTPServer(connection_limit=1, over_limit=greeting.encode()) as relay:
        mta_layers.push("raw", f"[mta]\nsmtp_port: {relay.port}\nmax_connections: {allowed}\nmax_recipients: 1\n")
        try:
            addresses = [f"m{n}@example.com" for n in range(members)]
            with Delivery() as delivery:
                result = delivery.deliver("list@example.com", addresses, MESSAGE)
        finally:
            mta_layers.pop("raw")
        received = [r for transaction in relay.kept for r in transaction.accepted]
    assert sorted(received) == sorted(result.accepted), "accepted means the relay kept exactly one copy"
    assert not result.permanent
    assert set(result.refused) <= set(addresses) - set(received)
    if pushed_back(smtplib.SMTPConnectError(code, text.encode())):
        assert result.ok, result.refused
