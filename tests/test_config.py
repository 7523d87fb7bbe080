"""Configuration layers: pushing, popping, typing, and refusing bad layers."""

from __future__ import annotations

import pytest

from mailman_mta.config import Configuration
from mailman_mta.connection import Connection
from mailman_mta.errors import ConfigurationError
from mailman_mta.schema import CORE_TYPES
from mailman_mta.secret import Secret
from mailman_mta.values import as_text


@pytest.fixture
def config() -> Configuration:
    return Configuration()


def test_every_schema_key_has_a_declared_type(config):
    """Ours and the built-in plugins': text only where a key's type says so."""
    types = config.schema.types
    undeclared = [
        f"[{section.name}] {key}"
        for section in config._config.schema
        for key in section
        if config.converter_for(section.name, key) is as_text
        and key not in types.get(section.name.split(".")[0], {})
        and key not in types.get(section.name, {})
    ]
    assert undeclared == []
    assert set(CORE_TYPES) == {"mta", "plugin"}


def test_defaults_come_from_the_schema(config):
    assert config.layers == []
    assert config.mta.smtp_port == "25"
    assert config.settings.mta.smtp_port == 25
    assert config.settings.devmode.enabled is False
    assert list(config.active_plugins) == ["smtp", "sessions", "liveness", "auth", "devmode", "verp"]


def test_push_overrides_and_pop_restores(config):
    config.push("site", "[mta]\nsmtp_host: mail.example.com\nsmtp_port: 587\n")
    config.push("test", "[mta]\nsmtp_port: 2525\n")
    assert config.layers == ["site", "test"]
    assert (config.settings.mta.smtp_host, config.settings.mta.smtp_port) == ("mail.example.com", 2525)
    config.pop("test")
    assert config.settings.mta.smtp_port == 587
    config.pop("site")
    assert (config.mta.smtp_host, config.settings.mta.smtp_port) == ("localhost", 25)


def test_pop_removes_the_layers_above_too(config):
    for name in ("a", "b", "c"):
        config.push(name, f"[mta]\nsmtp_host: {name}.example.com\n")
    config.pop("b")
    assert config.layers == ["a"]
    assert config.settings.mta.smtp_host == "a.example.com"


def test_layer_context_manager(config):
    with config.layer("temporary", "[devmode]\nenabled: yes\nrecipient: dev@example.com\n"):
        assert config.settings.devmode.enabled is True
    assert config.layers == []
    assert config.settings.devmode.enabled is False


def test_indented_layer_text_is_accepted(config):
    config.push(
        "indented",
        """
        [mta]
        smtp_port: 26
        """,
    )
    assert config.settings.mta.smtp_port == 26


def test_what_the_layers_imply_is_computed_once_per_change(config):
    first = config.settings
    assert config.settings is first
    assert config.hook is config.hook
    config.push("x", "[mta]\nsmtp_port: 26\n")
    assert config.settings is not first
    second = config.settings
    config.pop("x")
    assert config.settings is not second


@pytest.mark.parametrize(
    "text, words",
    [
        ("[mta]\nsmtp_port: abc\n", ["'bad'", "[mta] smtp_port", "'abc' is not a port number"]),
        ("[mta]\nsmtp_port: 70000\n", ["[mta] smtp_port", "'70000'"]),
        ("[mta]\nmax_sessions_per_connection: -1\n", ["[mta] max_sessions_per_connection", "0 or more"]),
        ("[mta]\nsmtp_host: mail example\n", ["[mta] smtp_host", "not a host name"]),
        ("[devmode]\nenabled: maybe\n", ["'bad'", "[devmode] enabled", "'maybe' is not yes or no"]),
        ("[devmode]\nrecipient: john doe@example.com\n", ["[devmode] recipient", "is not an envelope address"]),
        ("[mta]\nsmtp_prot: 25\n", ["'bad'", "[mta] has no key 'smtp_prot'", "did you mean 'smtp_port'"]),
        ("[mtaa]\nsmtp_port: 25\n", ["'bad'", "no section [mtaa]", "did you mean 'mta'"]),
        ("[plugin.smtp]\nclass: not a path\n", ["[plugin.smtp] class", "not a Python path"]),
        ("[plugin.smtp]\nenable: yes\n", ["[plugin.smtp] has no key 'enable'", "did you mean 'enabled'"]),
        ("smtp_port: 25\n", ["'bad' cannot be parsed"]),
        ("[devmode]\nenabled: yes\n", ["'bad'", "[devmode] recipient is empty"]),
        ("[mta]\nsmtp_user: anne\n", ["'bad'", "[mta] smtp_pass is empty"]),
        ("[plugin.nosuch]\nenabled: yes\n", ["'bad'", "[plugin.nosuch] is enabled", "no plugin called 'nosuch'"]),
        ("[plugin.broken]\nenabled: yes\nclass: no_such_module_here:Plugin\n", ["[plugin.broken] cannot load"]),
    ],
)
def test_a_bad_layer_is_refused_by_name_and_leaves_nothing_behind(config, text, words):
    config.push("good", "[mta]\nsmtp_port: 2525\n")
    before = config.settings
    with pytest.raises(ConfigurationError) as caught:
        config.push("bad", text)
    for word in words:
        assert word in str(caught.value)
    assert caught.value.layer == "bad"
    assert config.layers == ["good"]
    assert config.settings is before
    config.push("fine", "[mta]\nsmtp_port: 2526\n")
    assert config.settings.mta.smtp_port == 2526


def test_a_bad_value_error_carries_section_and_key(config):
    with pytest.raises(ConfigurationError) as caught:
        config.push("bad", "[mta]\nsmtp_port: abc\n")
    assert (caught.value.layer, caught.value.section, caught.value.key) == ("bad", "mta", "smtp_port")


def test_popping_an_unknown_layer_names_it(config):
    config.push("real", "[mta]\nsmtp_port: 26\n")
    with pytest.raises(ConfigurationError, match=r"no config layer named 'ghost'.*real"):
        config.pop("ghost")


def test_the_password_is_a_secret_in_settings(config):
    config.push("auth", "[mta]\nsmtp_user: anne\nsmtp_pass: hunter2\n")
    assert config.settings.mta.smtp_pass == Secret("hunter2")
    assert "hunter2" not in repr(config.settings.mta)


def test_configurations_are_independent(mta_smtpd):
    one, two = Configuration(), Configuration()
    one.push("here", f"[mta]\nsmtp_host: 127.0.0.1\nsmtp_port: {mta_smtpd.port}\n")
    two.push("devmode", "[devmode]\nenabled: yes\nrecipient: dev@example.com\n")
    assert two.settings.mta.smtp_port == 25
    assert one.settings.devmode.enabled is False
    two.push("here", f"[mta]\nsmtp_host: 127.0.0.1\nsmtp_port: {mta_smtpd.port}\n")
    for config in (one, two):
        connection = Connection(config=config)
        connection.sendmail("anne@example.com", ["bart@example.com"], "Subject: x\n\n")
        connection.quit()
    assert [m.rcpt_tos for m in mta_smtpd.received] == [("bart@example.com",), ("dev@example.com",)]


def test_push_file_with_extends(tmp_path, config):
    (tmp_path / "base.cfg").write_text("[mta]\nsmtp_host: base.example.com\nsmtp_port: 2500\n")
    (tmp_path / "site.cfg").write_text("[meta]\nextends: base.cfg\n[mta]\nsmtp_port: 2501\n")
    assert config.push_file(tmp_path / "site.cfg") == "site.cfg"
    assert (config.settings.mta.smtp_host, config.settings.mta.smtp_port) == ("base.example.com", 2501)
    config.pop("site.cfg")
    assert config.settings.mta.smtp_host == "base.example.com"
    config.pop("base.cfg")
    assert config.settings.mta.smtp_host == "localhost"


def test_push_file_that_cannot_be_read(tmp_path, config):
    with pytest.raises(ConfigurationError, match="cannot read config file .*missing.cfg"):
        config.push_file(tmp_path / "missing.cfg")


def test_an_extended_file_with_a_bad_key_is_refused(tmp_path, config):
    (tmp_path / "base.cfg").write_text("[mta]\nsmtp_hots: x\n")
    (tmp_path / "site.cfg").write_text("[meta]\nextends: base.cfg\n")
    with pytest.raises(ConfigurationError, match="not valid: .*smtp_hots"):
        config.push_file(tmp_path / "site.cfg")
    assert config.layers == []
