"""Plugins: discovery through entry points, switching by layers, and each hook."""

from __future__ import annotations

import textwrap

import pytest

from mailman_mta import hookimpl
from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.errors import ConfigurationError
from mailman_mta.manager import registry
from mailman_mta.smtp.transport import SMTPTransport, connect
from mailman_mta.testing import CountingSMTPServer

MESSAGE = "From: anne@example.com\nTo: bart@example.com\nSubject: test\n\nHello\n"

COUNTER_PLUGIN = """
from mailman_mta import hookimpl

class Counter:
    instances = 0

    def __init__(self):
        Counter.instances += 1
        self.sent = 0

    @hookimpl
    def mta_delivery_result(self, error):
        self.sent += error is None
"""


@pytest.fixture
def added():
    """Add plugin objects to the registry for one test."""
    names = []

    def add(name, plugin):
        registry.add(name, plugin)
        names.append(name)
        return plugin

    yield add
    for name in names:
        registry.remove(name)


def send(connection, recipients=("bart@example.com",)):
    return connection.sendmail("anne@example.com", list(recipients), MESSAGE)


def test_an_installed_entry_point_is_discovered_but_off(mta_config, mta_smtpd, shout_distribution):
    assert "shout" in registry.names()
    assert registry.describe("shout") == "entry point mta_test_shout from mta-shout 1.0"
    assert "shout" not in mta_config.active_plugins
    connection = Connection()
    send(connection)
    connection.quit()
    assert "X-Shout" not in mta_smtpd.messages[0]


def test_push_enables_an_entry_point_plugin_and_pop_disables_it(mta_config, mta_smtpd, shout_distribution):
    connection = Connection()
    send(connection)
    mta_config.push("shouting", "[plugin.shout]\nenabled: yes\n")
    assert "shout" in mta_config.active_plugins
    send(connection)
    mta_config.pop("shouting")
    send(connection)
    connection.quit()
    assert [m["X-Shout"] for m in mta_smtpd.messages] == [None, "yes", None]
    assert mta_smtpd.get_connection_count() == 1


def test_a_plugin_named_by_class_path_is_made_once(mta_config, mta_smtpd, site):
    site.module("mta_test_counter", COUNTER_PLUGIN)
    layer = "[plugin.counter]\nenabled: yes\nclass: mta_test_counter:Counter\n"
    connection = Connection()
    for _ in range(3):
        with mta_config.layer("counting", layer):
            send(connection)
    connection.quit()
    counter = registry.load("counter", "mta_test_counter:Counter")
    assert type(counter).instances == 1
    assert counter.sent == 3


def test_delivery_results_are_observed_for_every_send(mta_config, mta_smtpd, added, mta_layers):
    class Recorder:
        def __init__(self):
            self.results = []

        @hookimpl
        def mta_delivery_result(self, envelope, refused, error):
            self.results.append((tuple(envelope.recipients), dict(refused), type(error).__name__))

    recorder = added("recorder", Recorder())
    mta_layers.push("observe", "[plugin.recorder]\nenabled: yes\n")
    mta_smtpd.refuse_recipient("nobody@example.com", "550 5.1.1 No such user")
    connection = Connection()
    send(connection)
    send(connection, ["bart@example.com", "nobody@example.com"])
    with pytest.raises(Exception):
        send(connection, ["nobody@example.com"])
    connection.quit()
    assert recorder.results == [
        (("bart@example.com",), {}, "NoneType"),
        (("bart@example.com", "nobody@example.com"), {"nobody@example.com": (550, b"5.1.1 No such user")}, "NoneType"),
        (("nobody@example.com",), {"nobody@example.com": (550, b"5.1.1 No such user")}, "SMTPRecipientsRefused"),
    ]


def test_a_misspelt_hook_is_an_error_when_the_plugin_is_enabled(mta_config, added):
    class Typo:
        @hookimpl
        def mta_prepare_mesage(self, envelope):
            pass

    added("typo", Typo())
    with pytest.raises(
        ConfigurationError, match=r"\[plugin.typo\] implements a hook that does not exist.*mta_prepare_mesage"
    ):
        mta_config.push("typo", "[plugin.typo]\nenabled: yes\n")
    assert "typo" not in mta_config.active_plugins


def test_a_hook_with_a_wrong_argument_is_an_error(mta_config, added):
    class WrongArgument:
        @hookimpl
        def mta_prepare_message(self, envelop):
            pass

    added("wrong", WrongArgument())
    with pytest.raises(ConfigurationError, match=r"(?s)\[plugin.wrong\].*envelop"):
        mta_config.push("wrong", "[plugin.wrong]\nenabled: yes\n")


def test_one_object_cannot_be_enabled_under_two_names(mta_config, site):
    site.module("mta_test_twice", "from mailman_mta import hookimpl\n")
    with pytest.raises(ConfigurationError, match=r"\[plugin.b\] cannot be enabled together"):
        mta_config.push(
            "twice",
            textwrap.dedent("""
            [plugin.a]
            enabled: yes
            class: mta_test_twice
            [plugin.b]
            enabled: yes
            class: mta_test_twice
            """),
        )


def test_a_built_in_plugin_can_be_switched_off(mta_config, mta_smtpd, mta_layers):
    mta_layers.push("one-session", "[mta]\nmax_sessions_per_connection: 1\n")
    mta_layers.push("no-sessions-plugin", "[plugin.sessions]\nenabled: no\n")
    connection = Connection()
    send(connection)
    send(connection)
    assert mta_smtpd.get_connection_count() == 1
    mta_layers.pop("no-sessions-plugin")
    send(connection)
    connection.quit()
    assert mta_smtpd.get_connection_count() == 2


def test_devmode_on_with_its_plugin_off_is_refused_at_push(mta_config, mta_layers):
    mta_layers.push("devmode", "[devmode]\nenabled: yes\nrecipient: dev@example.com\n")
    with pytest.raises(ConfigurationError, match=r"\[devmode\] enabled is yes.*\[plugin.devmode\] is not enabled"):
        mta_layers.push("no-devmode-plugin", "[plugin.devmode]\nenabled: no\n")
    assert mta_config.settings.plugins["devmode"].enabled is True


def test_a_pop_that_leaves_devmode_without_its_plugin_stops_sending(mta_config, mta_smtpd, mta_layers, tmp_path):
    """Every stack a pop leaves was checked at push, except half of a file that extends another."""
    (tmp_path / "base.cfg").write_text(
        "[devmode]\nenabled: yes\nrecipient: dev@example.com\n[plugin.devmode]\nenabled: no\n"
    )
    (tmp_path / "site.cfg").write_text("[meta]\nextends: base.cfg\n[plugin.devmode]\nenabled: yes\n")
    mta_config.push_file(tmp_path / "site.cfg")
    mta_layers._pushed.append("base.cfg")
    mta_config.pop("site.cfg")
    assert "[plugin.devmode] is not enabled" in mta_config.problem
    connection = Connection()
    with pytest.raises(ConfigurationError, match="nothing is sent while the configuration is inconsistent"):
        send(connection)
    with Delivery() as delivery:
        result = delivery.deliver("anne@example.com", ["bart@example.com"], "Subject: x\n\n")
    assert result.temporary and not result.permanent
    assert mta_smtpd.received == [] and mta_smtpd.get_connection_count() == 0


def test_verp_delivery_with_its_plugin_off_is_refused_at_push(mta_config, mta_layers):
    with pytest.raises(ConfigurationError, match=r"\[mta\] delivery is verp.*'verp' plugin"):
        mta_layers.push("verp-off", "[mta]\ndelivery: verp\n[plugin.verp]\nenabled: no\n")


def test_devmode_rewrites_after_every_other_plugin(mta_config, mta_smtpd, added, mta_layers):
    class Forward:
        @hookimpl
        def mta_rewrite_recipients(self, envelope):
            envelope.recipients.append("archive@example.com")

    added("forward", Forward())
    mta_layers.push("forward", "[plugin.forward]\nenabled: yes\n")
    mta_layers.push("devmode", "[devmode]\nenabled: yes\nrecipient: dev@example.com\n")
    connection = Connection()
    send(connection)
    connection.quit()
    assert mta_smtpd.received[0].rcpt_tos == ("dev@example.com", "dev@example.com")


def test_a_rewrite_to_an_unsafe_address_is_refused(mta_config, mta_smtpd, added, mta_layers):
    class Inject:
        @hookimpl
        def mta_rewrite_recipients(self, envelope):
            envelope.recipients = ["x@example.com>\r\nDATA"]

    added("inject", Inject())
    mta_layers.push("inject", "[plugin.inject]\nenabled: yes\n")
    with pytest.raises(ValueError, match="recipient 1"):
        send(Connection())
    assert mta_smtpd.get_connection_count() == 0


def test_a_transport_plugin_chooses_the_relay(mta_config, mta_smtpd, added, mta_layers):
    with CountingSMTPServer() as relay:

        class Relay:
            @hookimpl(tryfirst=True)
            def mta_create_transport(self, connection):
                transport = SMTPTransport()
                transport.connect(relay.hostname, relay.port)
                return transport

        added("relay", Relay())
        mta_layers.push("relay", "[plugin.relay]\nenabled: yes\n")
        connection = Connection()
        send(connection)
        connection.quit()
        assert len(relay.messages) == 1
    assert mta_smtpd.messages == []


def test_no_transport_is_a_clear_error_and_still_a_result(mta_config, mta_layers, added):
    class Recorder:
        errors = []

        @hookimpl
        def mta_delivery_result(self, error):
            Recorder.errors.append(type(error).__name__)

    added("recorder", Recorder())
    mta_layers.push("no-smtp", "[plugin.smtp]\nenabled: no\n[plugin.recorder]\nenabled: yes\n")
    with pytest.raises(Exception, match=r"no enabled plugin opened a connection.*\[plugin.smtp\]"):
        send(Connection())
    assert Recorder.errors == ["NoTransportError"]


def test_an_authentication_plugin_replaces_the_built_in_one(mta_config, mta_smtpd, added, mta_layers):
    class Token:
        calls = 0

        @hookimpl
        def mta_authenticate(self, transport):
            Token.calls += 1
            return True

    added("token", Token())
    mta_layers.push("auth", "[mta]\nsmtp_user: testuser\nsmtp_pass: testpass\n")
    mta_layers.push("token", "[plugin.token]\nenabled: yes\n")
    connection = Connection()
    send(connection)
    connection.quit()
    assert Token.calls == 1
    assert mta_smtpd.get_authentication_credentials() is None
    assert mta_smtpd.received[0].authenticated_as is None


def test_any_session_policy_can_close_the_connection(mta_config, mta_smtpd, added, mta_layers):
    class OneShot:
        @hookimpl
        def mta_session_allowed(self, connection):
            return connection.session_count < 1

    added("oneshot", OneShot())
    mta_layers.push("oneshot", "[plugin.oneshot]\nenabled: yes\n")
    connection = Connection()
    for _ in range(3):
        send(connection)
    connection.quit()
    assert connection.connection_count == 3
    assert mta_smtpd.get_connection_count() == 3


def test_plugin_check_config_refuses_a_layer(mta_config, added):
    class Strict:
        @hookimpl
        def mta_check_config(self, config):
            if config.settings.mta.smtp_port == 26:
                raise ConfigurationError("[mta] smtp_port 26 is not allowed here", section="mta", key="smtp_port")

    added("strict", Strict())
    mta_config.push("strict", "[plugin.strict]\nenabled: yes\n")
    try:
        with pytest.raises(ConfigurationError, match="config layer 'port': .*26 is not allowed"):
            mta_config.push("port", "[mta]\nsmtp_port: 26\n")
        assert mta_config.layers[-1] == "strict"
    finally:
        mta_config.pop("strict")


def test_removing_an_added_plugin_takes_effect(mta_config, added):
    added("gone", object())
    mta_config.push("gone", "[plugin.gone]\nenabled: yes\n")
    try:
        assert "gone" in mta_config.active_plugins
        registry.remove("gone")
        with pytest.raises(ConfigurationError, match="no plugin called 'gone'"):
            _ = mta_config.active_plugins
    finally:
        registry.add("gone", object())
        mta_config.pop("gone")


def test_the_list_of_built_ins_is_the_package_and_the_registry():
    """plugins/__init__.py's list cannot drift from what is there (verp once went missing)."""
    import pkgutil

    import mailman_mta.plugins as package
    from mailman_mta.manager import BUILTIN_PLUGINS
    from mailman_mta.plugins import BUILTIN_PLUGINS as described

    modules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    assert set(described) == modules
    assert BUILTIN_PLUGINS == tuple(described)
    assert registry.names()[: len(described)] == list(described)
    for name in described:
        assert registry.load(name) is not None


def test_popping_a_transport_plugin_replaces_the_open_connection(mta_config, mta_smtpd, added, mta_layers):
    other = CountingSMTPServer().start()
    try:

        class Elsewhere:
            @hookimpl
            def mta_create_transport(self, connection):
                return connect(connection, other.hostname, other.port)

        added("elsewhere", Elsewhere())
        mta_layers.push("elsewhere", "[plugin.elsewhere]\nenabled: yes\n")
        connection = Connection()
        send(connection)
        assert (connection.host, connection.port) == (other.hostname, other.port)
        mta_layers.pop("elsewhere")
        send(connection)
        assert (connection.host, connection.port) == (mta_smtpd.hostname, mta_smtpd.port)
        connection.quit()
        assert (len(other.received), len(mta_smtpd.received)) == (1, 1)
        assert "QUIT" in other.commands
    finally:
        other.stop()


def test_a_layer_that_moves_the_relay_replaces_the_open_connection(mta_config, mta_smtpd, mta_layers):
    with CountingSMTPServer() as other:
        connection = Connection()
        send(connection)
        mta_layers.push("moved", f"[mta]\nsmtp_port: {other.port}\n")
        send(connection)
        mta_layers.pop("moved")
        send(connection)
        connection.quit()
        assert (len(mta_smtpd.received), len(other.received)) == (2, 1)
        assert mta_smtpd.get_connection_count() == 2


def test_a_layer_that_changes_nothing_about_the_connection_keeps_it(mta_config, mta_smtpd, mta_layers):
    connection = Connection()
    send(connection)
    mta_layers.push("unrelated", "[mta]\nmax_recipients: 10\n")
    send(connection)
    connection.quit()
    assert mta_smtpd.get_connection_count() == 1


def test_plugin_state_is_per_connection(mta_config, mta_smtpd, added, mta_layers):
    class Numbering:
        @hookimpl
        def mta_prepare_message(self, connection, envelope):
            state = connection.plugin_state("numbering")
            state["n"] = state.get("n", 0) + 1
            envelope.message = f"X-N: {state['n']}\r\n".encode() + envelope.message

    added("numbering", Numbering())
    mta_layers.push("numbering", "[plugin.numbering]\nenabled: yes\n")
    one, two = Connection(), Connection()
    for connection in (one, two, one):
        send(connection)
    one.quit()
    two.quit()
    assert [m["X-N"] for m in mta_smtpd.messages] == ["1", "1", "2"]
    assert one.plugin_state("numbering") is one.plugin_state("numbering") is not two.plugin_state("numbering")
    assert one.number != two.number


def test_per_message_hooks_keep_pluggy_order_wrappers_and_monitors(mta_config, mta_smtpd, added, mta_layers):
    """`Hooks` calls the per-message hooks itself; what pluggy promises must still hold."""
    calls = []

    class First:
        @hookimpl(tryfirst=True)
        def mta_session_allowed(self, connection):
            calls.append("first")

    class Last:
        @hookimpl(trylast=True)
        def mta_session_allowed(self, connection):
            calls.append("last")

    class Wrapper:
        @hookimpl(wrapper=True)
        def mta_rewrite_recipients(self, envelope):
            calls.append("wrapper in")
            yield
            calls.append("wrapper out")

    added("first", First())
    added("last", Last())
    added("wrapper", Wrapper())
    mta_layers.push(
        "all", "[plugin.first]\nenabled: yes\n[plugin.last]\nenabled: yes\n[plugin.wrapper]\nenabled: yes\n"
    )
    connection = Connection()
    send(connection)
    send(connection)
    assert calls == ["wrapper in", "wrapper out", "wrapper in", "wrapper out", "first", "last"], (
        "a wrapper still wraps; tryfirst and trylast keep their places"
    )
    seen = []
    undo = mta_config.plugin_manager.add_hookcall_monitoring(
        lambda name, implementations, kwargs: seen.append(name), lambda outcome, name, implementations, kwargs: None
    )
    try:
        send(connection)
    finally:
        undo()
    connection.quit()
    assert "mta_session_allowed" in seen and "mta_rewrite_recipients" in seen, seen


def test_an_idle_implementation_is_left_out_while_its_setting_is_off(mta_config, mta_smtpd, added, mta_layers):
    """`idle_unless`: asked once per configuration state; pluggy's own calls still reach the function."""
    from mailman_mta.hooks import idle_unless

    asked = []
    rewrote = []

    class Shouting:
        @hookimpl
        @idle_unless(lambda settings: asked.append(settings) or settings.mta.smtp_host == "shout.example")
        def mta_rewrite_recipients(self, config, envelope):
            if config.settings.mta.smtp_host == "shout.example":
                rewrote.append(envelope.recipients[0])

    added("shouting", Shouting())
    mta_layers.push("on", "[plugin.shouting]\nenabled: yes\n")
    connection = Connection()
    send(connection)
    send(connection)
    assert len(asked) == 1, "asked once for the state, not per message"
    assert not mta_config.hooks.implemented("mta_rewrite_recipients"), "devmode (off) and this one are idle"
    mta_layers.push("loud", "[mta]\nsmtp_host: shout.example\n")
    assert mta_config.hooks.implemented("mta_rewrite_recipients")
    assert len(asked) == 2, "a new state is asked again"
    mta_layers.pop("loud")
    connection.quit()
    assert rewrote == [] and len(mta_smtpd.messages) == 2

    seen = []
    undo = mta_config.plugin_manager.add_hookcall_monitoring(
        lambda name, implementations, kwargs: seen.append([i.plugin_name for i in implementations]),
        lambda outcome, name, implementations, kwargs: None,
    )
    try:
        mta_config.hook.mta_rewrite_recipients(config=mta_config, connection=connection, envelope=None)
    finally:
        undo()
    assert "shouting" in seen[0], "pluggy's relay still holds it: the function itself must check"
