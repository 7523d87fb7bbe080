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


# -- any text, and nothing half-checked ------------------------------------


def test_values_may_be_any_text(config, mta_smtpd):
    """lazr.config takes only ASCII; a UTF-8 password, an IDN host and a non-ASCII address are ours to take."""
    password = "pässwörd-日本"
    config.push(
        "intl",
        f"[mta]\nsmtp_user: testuser\nsmtp_pass: {password}\nsmtp_host: bücher.example\n"
        "[devmode]\nrecipient: jörg@bücher.example\n",
    )
    mta = config.settings.mta
    assert mta.smtp_pass.reveal() == password and mta.smtp_host == "xn--bcher-kva.example"
    assert config.settings.devmode.recipient == "jörg@bücher.example"
    mta_smtpd.credentials["testuser"] = password
    config.push("here", f"[mta]\nsmtp_host: {mta_smtpd.hostname}\nsmtp_port: {mta_smtpd.port}\n")
    with Connection(config=config) as connection:
        assert connection.sendmail("anne@example.com", ["bart@example.com"], "Subject: x\n\n") == {}
    assert mta_smtpd.received[0].authenticated_as == "testuser"


@pytest.mark.parametrize(
    "text, named",
    [
        ("[mta]\nsmtp_host: bü cher.example\n", r"\[mta\] smtp_host"),
        ("[devmode]\nrecipient: jörg@@example\n", r"\[devmode\] recipient"),
        ("[mta]\nsmtp_pass: geheim\0nis\n", r"\[mta\] smtp_pass holds a NUL character"),
        ("[mta]\nca_file: /tmp/ca\0.pem\n", r"\[mta\] ca_file holds a NUL character"),
    ],
)
def test_a_bad_value_is_refused_naming_the_key_and_never_quoting_a_secret(config, text, named):
    with pytest.raises(ConfigurationError, match=named) as refused:
        config.push("bad", text)
    shown = str(refused.value)
    assert "geheim" not in shown and "ascii" not in shown and "position" not in shown
    assert config.layers == []


def test_a_layer_being_checked_is_seen_by_no_other_thread(config):
    """While a plugin's check runs, other threads see the layers as they were; after a refusal, too."""
    import threading

    from mailman_mta import hookimpl
    from mailman_mta.manager import registry

    checking, release = threading.Event(), threading.Event()

    class Slow:
        @hookimpl
        def mta_check_config(self, config):
            if config.settings.mta.smtp_port == 2525:
                checking.set()
                assert release.wait(10)
                raise ConfigurationError("port 2525 is refused by the test plugin")

    registry.add("slow", Slow())
    try:
        config.push("plugins", "[plugin.slow]\nenabled: yes\n")
        pusher = threading.Thread(
            target=lambda: pytest.raises(ConfigurationError, config.push, "bad", "[mta]\nsmtp_port: 2525\n")
        )
        pusher.start()
        assert checking.wait(10)
        seen = (config.mta.smtp_port, config.settings.mta.smtp_port, config.origin("mta", "smtp_port"), config.layers)
        release.set()
        pusher.join(10)
    finally:
        registry.remove("slow")
    assert seen == ("25", 25, "default", ["plugins"])
    assert config.layers == ["plugins"] and config.mta.smtp_port == "25"


def test_files_that_cannot_be_read_are_named(tmp_path, config):
    latin = tmp_path / "latin1.cfg"
    latin.write_bytes("[mta]\nsmtp_user: j\xf6rg\n".encode("latin-1"))
    with pytest.raises(ConfigurationError, match=r"latin1.cfg' is not UTF-8 text \(byte 18 is not\)"):
        config.push_file(latin)
    extending = tmp_path / "site.cfg"
    extending.write_text("[meta]\nextends: missing.cfg\n[mta]\nsmtp_port: 2525\n")
    with pytest.raises(ConfigurationError, match=r"\[meta\] extends names '.*missing.cfg', which cannot be read"):
        config.push_file(extending)
    extending.write_text("[meta]\nextends: latin1.cfg\n")
    with pytest.raises(ConfigurationError, match=r"\[meta\] extends names a file that is not UTF-8"):
        config.push_file(extending)
    assert config.layers == []


def test_a_section_reads_as_attributes_and_items_and_cannot_be_changed(config):
    """Plain keys are attributes (read on every message); the rest only by item; nothing is assigned."""
    from mailman_mta.config.settings import SectionSettings

    mta = config.settings.mta
    assert mta.smtp_port == mta["smtp_port"] == 25
    with pytest.raises(AttributeError, match=r"\[mta\] is read-only"):
        mta.smtp_port = 26
    assert mta.smtp_port == 25

    odd = SectionSettings("odd", {"class": 1, "items": 2, "name": 3, "plain": 4})
    assert odd["class"] == getattr(odd, "class") == 1
    assert odd["items"] == 2 and callable(odd.items)
    assert odd["name"] == 3 and odd.name == "odd"
    assert odd.plain == 4
    with pytest.raises(AttributeError, match=r"\[odd\] has no key 'missing'"):
        odd.missing  # noqa: B018
