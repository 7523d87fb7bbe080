"""The configuration schema: mailman-mta's own sections and those plugins declare.

``schema.cfg`` (package data) holds ``[mta]`` and the ``[plugin.NAME]``
switches.  Every other section belongs to a plugin, which declares it in
its `mta_declare_config` hook, as pytest plugins declare their options in
``pytest_addoption``:

    @hookimpl
    def mta_declare_config(schema):
        schema.add_section("ratelimit", '''
            # The most messages per second to one relay; 0 means no limit.
            messages_per_second: 0
            ''', messages_per_second=as_rate)

The body is lazr.config schema text (comments, then ``key: default``);
each key may be given a converter from `mailman_mta.values` (or any
callable that raises ValueError), and is text otherwise.  Every known
plugin is asked, enabled or not, so a layer may set a plugin's keys
before (or without) enabling it, and a typo in them is refused at push
like one in ``[mta]``.
"""

from __future__ import annotations

import configparser
import importlib.resources
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mailman_mta.errors import ConfigurationError
from mailman_mta.tls import SECURE_MODES, TLS_VERSIONS
from mailman_mta.values import (
    as_connection_count,
    as_count,
    as_existing_directory,
    as_existing_file,
    as_flag,
    as_host,
    as_port,
    as_positive_seconds,
    as_python_path,
    as_seconds,
    as_secret,
    as_text,
    one_of,
)

#: The schema file shipped with mailman-mta: ``[mta]`` and ``[plugin.NAME]``.
SCHEMA_FILE = importlib.resources.files(__name__).joinpath("schema.cfg")

PLUGIN_CATEGORY = "plugin"

#: Names no plugin may declare: ours, and lazr.config's.
RESERVED = ("mta", "meta", PLUGIN_CATEGORY)

#: What lazr.config accepts as a section name.
_SECTION_NAME = re.compile(r"\w[\w-]+\w\Z", re.ASCII)

Converter = Callable[[str], Any]

#: The type of every key of ``schema.cfg``, by section (or, for sections
#: made from a ``.master`` template, by category).  tests/test_config.py
#: checks that no key is missing.
CORE_TYPES: dict[str, dict[str, Converter]] = {
    "mta": {
        "smtp_host": as_host,
        "smtp_port": as_port,
        "smtp_user": as_text,
        "smtp_pass": as_secret,
        "max_sessions_per_connection": as_count,
        "max_connection_age": as_seconds,
        "noop_after_idle": as_seconds,
        "max_idle_time": as_seconds,
        "connect_timeout": as_positive_seconds,
        "command_timeout": as_positive_seconds,
        "transaction_timeout": as_positive_seconds,
        "secure_mode": one_of(*SECURE_MODES),
        "verify_cert": as_flag,
        "verify_hostname": as_flag,
        "ca_file": as_existing_file,
        "ca_path": as_existing_directory,
        "tls_min_version": one_of(*TLS_VERSIONS),
        "delivery": one_of("bulk", "individual", "verp"),
        "max_recipients": as_count,
        "pipelining": as_flag,
        "max_connections": as_connection_count,
    },
    PLUGIN_CATEGORY: {
        "class": as_python_path,
        "enabled": as_flag,
    },
}


class _NotDefault:
    def __repr__(self) -> str:
        return "NOT_DEFAULT"


#: For `PluginSchema.needs_plugin_when`: any value but the key's default
#: (a file of addresses, a map: a setting that does something once set).
NOT_DEFAULT: Any = _NotDefault()


@dataclass(frozen=True)
class Requirement:
    """``[section] key`` set to *value* only means something with *plugin* enabled.

    *value* may be `NOT_DEFAULT`: then any value but *default* does.
    """

    plugin: str
    section: str
    key: str
    value: Any
    default: Any = None

    def met_by(self, value: Any) -> bool:
        """Does *value* switch on what the plugin carries out?"""
        if self.value is NOT_DEFAULT:
            return bool(value != self.default)
        return bool(value == self.value)

    def describe(self, shown_value: str) -> str:
        said = "is set" if self.value is NOT_DEFAULT else f"is {shown_value}"
        return (
            f"[{self.section}] {self.key} {said}, which the {self.plugin!r} plugin "
            f"carries out, but [plugin.{self.plugin}] is not enabled; enable it, "
            f"or change [{self.section}] {self.key}"
        )


class Schema:
    """Every section and key one configuration knows, with each key's type.

    Built from ``schema.cfg`` and then from each known plugin's
    `mta_declare_config`; `text` is the whole schema for lazr.config.
    """

    def __init__(self, core_text: str) -> None:
        self._texts = [core_text]
        self.types: dict[str, dict[str, Converter]] = {name: dict(t) for name, t in CORE_TYPES.items()}
        #: Section name -> the plugin that declared it.
        self.owners: dict[str, str] = {}
        self.requirements: list[Requirement] = []
        #: Section name -> its keys' default texts (plugin sections only).
        self.defaults: dict[str, dict[str, str]] = {}

    @property
    def text(self) -> str:
        return "\n\n".join(self._texts)

    def converter(self, section: str, key: str) -> Converter:
        """The converter of ``[section] key`` (text when none was given)."""
        table = self.types.get(section)
        if table is None:
            table = self.types.get(section.split(".", 1)[0], {})
        return table.get(key, as_text)

    def for_plugin(self, plugin: str) -> PluginSchema:
        """What plugin *plugin*'s `mta_declare_config` is given."""
        return PluginSchema(self, plugin)

    def _add(self, plugin: str, name: str, body: str, types: Mapping[str, Converter]) -> None:
        where = f"plugin {plugin!r} declares [{name}]"
        if name in RESERVED or name.split(".", 1)[0] in RESERVED or not _SECTION_NAME.match(name):
            raise ConfigurationError(
                f"{where}: a plugin's section needs a name of its own, three or more letters, "
                f"digits, '_' or '-' (not {', '.join(RESERVED)})",
                section=name,
            )
        if name in self.owners:
            raise ConfigurationError(f"{where}, but plugin {self.owners[name]!r} already did", section=name)
        body = textwrap.dedent(body).strip("\n")
        parser = configparser.RawConfigParser(interpolation=None)
        try:
            parser.read_string(f"[{name}]\n{body}\n", source=f"plugin {plugin!r}")
        except configparser.Error as error:
            raise ConfigurationError(f"{where}: its text is not 'key: default' lines: {error}", section=name) from None
        if parser.sections() != [name]:
            raise ConfigurationError(f"{where}: add one section per call, without its [header]", section=name)
        defaults = dict(parser.items(name))
        for key, convert in types.items():
            if key not in defaults:
                raise ConfigurationError(
                    f"{where}: a type is given for {key!r}, which has no default", section=name, key=key
                )
            if not callable(convert):
                raise ConfigurationError(f"{where}: the type of {key!r} is not callable", section=name, key=key)
        for key, default in defaults.items():
            try:
                types.get(key, as_text)(default)
            except ValueError as error:
                raise ConfigurationError(
                    f"{where}: the default of {key!r} is refused by its type: {error}", section=name, key=key
                ) from None
        self.owners[name] = plugin
        self.defaults[name] = defaults
        self.types[name] = dict(types)
        self._texts.append(f"[{name}]\n{body}\n")

    def _require(self, plugin: str, section: str, key: str, value: Any) -> None:
        if section != "mta" and self.owners.get(section) != plugin:
            raise ConfigurationError(
                f"plugin {plugin!r} makes [{section}] {key} depend on it, but only [mta] and "
                "the plugin's own sections can be",
                section=section,
                key=key,
            )
        default = None
        if value is NOT_DEFAULT:
            if section not in self.defaults or key not in self.defaults[section]:
                raise ConfigurationError(
                    f"plugin {plugin!r} makes [{section}] {key} depend on it when it is not its default, "
                    "but only a key of the plugin's own sections has a default to compare with",
                    section=section,
                    key=key,
                )
            default = self.converter(section, key)(self.defaults[section][key])
        self.requirements.append(Requirement(plugin, section, key, value, default))


class PluginSchema:
    """The part of the `Schema` one plugin may add to (what `mta_declare_config` gets)."""

    __slots__ = ("_schema", "plugin")

    def __init__(self, schema: Schema, plugin: str) -> None:
        self._schema = schema
        self.plugin = plugin

    def add_section(
        self, name: str, body: str, /, types: Mapping[str, Converter] | None = None, **more_types: Converter
    ) -> None:
        """Declare the section ``[name]``: *body* is its keys with their defaults.

        *body* is lazr.config schema text without the ``[name]`` header:
        ``# comment`` lines, then ``key: default``.  Give each key's
        converter as a keyword (``port=as_port``), or in *types* for keys
        that are not Python names; keys without one are text.  Each
        default must pass its converter.  Raises `ConfigurationError` for
        a name that is taken or reserved, or text that is not schema text.
        """
        self._schema._add(self.plugin, name, body, {**(types or {}), **more_types})

    def needs_plugin_when(self, section: str, key: str, value: Any) -> None:
        """Refuse a layer that sets ``[section] key`` to *value* while this plugin is off.

        For a setting whose only effect comes from this plugin: with the
        plugin disabled it would silently do nothing (``[devmode] enabled:
        yes`` would let mail reach real people).  *value* is compared with
        the converted value; `NOT_DEFAULT` means any value but the key's
        default (a suppression file, a routing map), for one of this
        plugin's own keys.  *section* is ``mta`` or one of this plugin's.
        """
        self._schema._require(self.plugin, section, key, value)
