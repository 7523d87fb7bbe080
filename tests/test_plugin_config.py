"""Plugins own their configuration: sections declared with `mta_declare_config`."""

from __future__ import annotations

import pytest

from mailman_mta import hookimpl
from mailman_mta.config import Configuration
from mailman_mta.config import config as default_config
from mailman_mta.connection import Connection
from mailman_mta.errors import ConfigurationError
from mailman_mta.manager import registry
from mailman_mta.values import as_count, as_port


class Greeter:
    """A plugin with a section of its own, read typed at each send."""

    @hookimpl
    def mta_declare_config(self, schema):
        schema.add_section(
            "greeter",
            """
            # The word put in each message's X-Greeting header.
            word: hello
            # How many times.
            times: 1
            """,
            times=as_count,
        )

    @hookimpl
    def mta_prepare_message(self, config, envelope):
        settings = config.settings.greeter
        envelope.message = f"X-Greeting: {' '.join([settings.word] * settings.times)}\r\n".encode() + envelope.message


@pytest.fixture
def greeter():
    registry.add("greeter", Greeter())
    yield
    registry.remove("greeter")


def test_the_default_config_takes_the_done_when_layer_of_the_issue():
    """Issue #10's own test: on the default `config`, with nothing registered first."""
    default_config.push("x", "[plugin.ratelimit]\nenabled: yes\n[ratelimit]\nmessages_per_second: 20\n")
    try:
        assert default_config.settings.ratelimit.messages_per_second == 20.0
        assert "ratelimit" in default_config.active_plugins
    finally:
        default_config.pop("x")
    assert "ratelimit" not in default_config.active_plugins


def test_a_declared_section_is_typed_and_read_at_each_send(greeter, mta_config, mta_smtpd, mta_layers):
    mta_layers.push("greet", "[plugin.greeter]\nenabled: yes\n[greeter]\nword: hi\ntimes: 2\n")
    assert mta_config.settings.greeter.times == 2
    with Connection() as connection:
        connection.sendmail("a@example.com", ["b@example.com"], "Subject: x\n\n")
        mta_layers.push("louder", "[greeter]\nword: HEY\n")
        connection.sendmail("a@example.com", ["b@example.com"], "Subject: x\n\n")
    assert [m["X-Greeting"] for m in mta_smtpd.messages] == ["hi hi", "HEY HEY"]


def test_a_layer_may_set_a_plugins_keys_while_it_is_disabled(greeter, mta_config, mta_layers):
    mta_layers.push("ready", "[greeter]\ntimes: 3\n")
    assert "greeter" not in mta_config.active_plugins
    assert mta_config.settings.greeter.times == 3
    assert mta_config.origin("greeter", "times") == "ready"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[greeter]\ntimes: many\n", r"\[greeter\] times: 'many' is not a count"),
        ("[greeter]\ntime: 3\n", r"\[greeter\] has no key 'time' \(did you mean 'times'\?\)"),
        ("[greetr]\nword: x\n", r"there is no section \[greetr\] \(did you mean 'greeter'\?\)"),
    ],
)
def test_bad_plugin_settings_are_refused_at_push_naming_layer_section_and_key(greeter, text, named):
    config = Configuration()
    with pytest.raises(ConfigurationError, match=r"config layer 'bad'.*" + named):
        config.push("bad", text)
    assert config.layers == []


def test_every_configuration_has_the_declared_sections(greeter):
    assert Configuration().settings.greeter.word == "hello"


def test_layers_survive_a_plugin_arriving_and_leaving():
    config = Configuration()
    config.push("site", "[mta]\nsmtp_port: 2525\n")
    registry.add("greeter", Greeter())
    try:
        config.push("greet", "[greeter]\nword: hi\n")
        assert (config.settings.mta.smtp_port, config.settings.greeter.word) == (2525, "hi")
    finally:
        registry.remove("greeter")
    assert config.layers == ["site", "greet"]
    assert config.settings.mta.smtp_port == 2525
    assert not hasattr(config.settings, "greeter")
    config.pop("greet")
    assert config.origin("mta", "smtp_port") == "site"


def test_a_setting_only_a_disabled_plugin_carries_out_is_refused():
    class Archiver:
        @hookimpl
        def mta_declare_config(self, schema):
            schema.add_section("archive", "# Copy every message to the archive.\nenabled: no\n")
            schema.needs_plugin_when("archive", "enabled", "yes")

    registry.add("archiver", Archiver())
    try:
        config = Configuration()
        with pytest.raises(ConfigurationError, match=r"\[archive\] enabled is yes, which the 'archiver' plugin"):
            config.push("on", "[archive]\nenabled: yes\n")
        config.push("on", "[archive]\nenabled: yes\n[plugin.archiver]\nenabled: yes\n")
    finally:
        registry.remove("archiver")


def declaring(body: str, name: str = "thing", **types):
    class Plugin:
        @hookimpl
        def mta_declare_config(self, schema):
            schema.add_section(name, body, **types)

    return Plugin()


@pytest.mark.parametrize(
    ("plugin", "problem"),
    [
        (declaring("port: 0\n", port=as_port), "the default of 'port' is refused by its type"),
        (declaring("a: 1\n", b=as_count), "a type is given for 'b', which has no default"),
        (declaring("a: 1\n", name="mta"), r"declares \[mta\]: a plugin's section needs a name of its own"),
        (declaring("a: 1\n", name="plugin.x"), "needs a name of its own"),
        (declaring("a: 1\n", name="ab"), "three or more"),
        (declaring("a: 1\n", name="devmode"), "but plugin 'devmode' already did"),
        (declaring("[other]\na: 1\n"), "one section per call, without its"),
        (declaring("no colon here\n"), "is not 'key: default' lines"),
    ],
)
def test_a_bad_declaration_names_the_plugin(plugin, problem):
    registry.add("bad", plugin)
    try:
        with pytest.raises(ConfigurationError, match=f"plugin 'bad' .*{problem}"):
            _ = Configuration().settings
    finally:
        registry.remove("bad")


def test_a_plugin_that_cannot_load_declares_nothing_and_says_so_when_enabled(site, caplog):
    site.distribution("mta-broken", {"broken": "mta_test_missing_module"})
    config = Configuration()
    assert config.settings.mta.smtp_port == 25
    assert "plugin 'broken' declares no configuration" in caplog.text
    with pytest.raises(ConfigurationError, match=r"\[plugin.broken\] cannot load plugin 'broken'"):
        config.push("on", "[plugin.broken]\nenabled: yes\n")


def test_the_cli_sets_and_shows_plugin_keys():
    from click.testing import CliRunner

    from mailman_mta.cli import main

    result = CliRunner().invoke(
        main,
        ["-o", "plugin.ratelimit.enabled=yes", "-o", "ratelimit.messages_per_second=5", "config"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "messages_per_second" in line)
    assert [cell.strip() for cell in row.split("│")[1:5]] == ["[ratelimit]", "messages_per_second", "5", "-o"]
    refused = CliRunner().invoke(main, ["-o", "ratelimit.messages_per_second=fast", "config"])
    assert refused.exit_code != 0
    assert "[ratelimit] messages_per_second: 'fast' is not a rate per second" in refused.output
