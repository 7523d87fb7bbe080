"""Layered configuration, and the plugins the layers make active.

`Configuration` wraps a lazr.config stack.  The schema (``schema.cfg`` in
`mailman_mta.schema`) is the bottom layer; `push` lays a named layer on top
and `pop` takes it off again, exactly as in Mailman's test suite:

    config.push('devmode', '''
    [devmode]
    enabled: yes
    recipient: zperson@example.com
    ''')
    ...
    config.pop('devmode')

Attribute access gives lazr's raw text sections (``config.mta.smtp_port`` is
the string ``'25'``).  `settings` gives the same values converted to their
types, and `hook` calls the enabled plugins.  Both are worked out once per
change of the layer stack, never per message, so the cost of a send does not
grow with the number of layers.

A layer is checked before it is accepted: unknown sections and keys, values
of the wrong type, plugins that cannot be found and rules checked by plugins
(`mta_check_config`) raise `ConfigurationError` naming the layer, section
and key, and the stack is left as it was.
"""

from __future__ import annotations

import configparser
import difflib
import importlib.resources
import ipaddress
import re
import textwrap
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import pluggy
from lazr.config import Config, ConfigSchema, as_boolean
from lazr.config.interfaces import ConfigErrors, NoConfigError
from zope.interface import implementer

from . import verp
from .envelope import check_address
from .errors import ConfigurationError, EnvelopeError
from .interfaces import IConfiguration
from .manager import PluginRegistry, build_plugin_manager, registration_order
from .manager import registry as default_registry
from .secret import Secret
from .tls import SECURE_MODES, TLS_VERSIONS

#: The schema shipped with mailman-mta.
SCHEMA_FILE = importlib.resources.files("mailman_mta.schema").joinpath("schema.cfg")

PLUGIN_CATEGORY = "plugin"


# -- Value types ---------------------------------------------------------
#
# Each converter takes the raw text of a key and returns its typed value, or
# raises ValueError with a message that completes "[section] key: ...".


def as_text(value: str) -> str:
    return value


_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?")


def as_host(value: str) -> str:
    """A host name (internationalised names too) or an IPv4 or IPv6 address.

    Checked as the resolver will need it, so that a name that can never be
    looked up is refused when the layer is pushed, not at the first send.
    """
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    try:
        ascii_name = value.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    labels = ascii_name[:-1].split(".") if ascii_name.endswith(".") else ascii_name.split(".")
    if not ascii_name or len(ascii_name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{value!r} is not a host name or IP address")
    return value


def as_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r} is not a port number (a whole number from 1 to 65535)")
    return port


def as_positive_count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{value!r} is not a whole number, 1 or more")
    return count


def as_count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(f"{value!r} is not a count (a whole number, 0 or more)")
    return count


def as_flag(value: str) -> bool:
    try:
        return as_boolean(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not yes or no (use yes/no, true/false, on/off, 1/0)"
        ) from None


#: The longest time any setting may name: sockets cannot wait much longer
#: on some platforms (a 32-bit time_t ends at about 2.1e9 seconds).
MAX_SECONDS = 10**9


def as_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{value!r} is not a number of seconds (0 or more)")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{value!r} is longer than any timeout can be ({MAX_SECONDS} seconds at most)")
    return seconds


def as_positive_seconds(value: str) -> float:
    seconds = as_seconds(value)
    if seconds == 0:
        raise ValueError(f"{value!r} must be more than 0 seconds")
    return seconds


def one_of(*choices: str) -> Callable[[str], str]:
    def as_choice(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return as_choice


def as_existing_file(value: str) -> str:
    if value and not Path(value).is_file():
        raise ValueError(f"{value!r} is not a readable file")
    return value


def as_existing_directory(value: str) -> str:
    if value and not Path(value).is_dir():
        raise ValueError(f"{value!r} is not a directory")
    return value


def as_secret(value: str) -> Secret:
    return Secret(value)


def as_optional_address(value: str) -> str:
    if value:
        try:
            check_address(value, "address")
        except EnvelopeError as error:
            raise ValueError(str(error)) from None
    return value


_PYTHON_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?$")


def as_python_path(value: str) -> str:
    if value and not _PYTHON_PATH.match(value):
        raise ValueError(f"{value!r} is not a Python path like package.module or package.module:Name")
    return value


#: The type of every key in the schema, by section (or, for sections made
#: from a ``.master`` template, by category).  tests/test_config.py checks
#: that no schema key is missing here.
CONVERTERS: dict[str, dict[str, Callable[[str], Any]]] = {
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
        "secure_mode": one_of(*SECURE_MODES),
        "verify_cert": as_flag,
        "verify_hostname": as_flag,
        "ca_file": as_existing_file,
        "ca_path": as_existing_directory,
        "tls_min_version": one_of(*TLS_VERSIONS),
        "delivery": one_of("bulk", "individual", "verp"),
        "max_recipients": as_count,
        "pipelining": as_flag,
        "max_connections": as_positive_count,
    },
    "verp": {
        "format": verp.check_format,
    },
    "devmode": {
        "enabled": as_flag,
        "recipient": as_optional_address,
    },
    PLUGIN_CATEGORY: {
        "class": as_python_path,
        "enabled": as_flag,
    },
}


def converter_for(section: str, key: str) -> Callable[[str], Any]:
    category = section.split(".", 1)[0]
    table = CONVERTERS.get(section) or CONVERTERS.get(category, {})
    return table.get(key, as_text)


# -- Typed views ---------------------------------------------------------


class SectionSettings(Mapping[str, Any]):
    """The typed, read-only values of one section: ``section.smtp_port``.

    Keys that are Python keywords (``class``) are read with ``section['class']``.
    """

    __slots__ = ("name", "_values")

    def __init__(self, name: str, values: dict[str, Any]) -> None:
        self.name = name
        self._values = values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"[{self.name}] has no key {key!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        # Secrets mask themselves, so this is safe to log.
        return f"<[{self.name}] {self._values!r}>"


class Settings:
    """Every section of one configuration state, typed: ``settings.mta.smtp_port``.

    `plugins` maps each plugin name to its ``[plugin.NAME]`` section.
    """

    def __init__(self, sections: dict[str, SectionSettings]) -> None:
        self._sections = sections
        self.plugins: dict[str, SectionSettings] = {
            name.split(".", 1)[1]: section
            for name, section in sections.items()
            if name.startswith(PLUGIN_CATEGORY + ".")
        }
        # Plain attributes for the plain names, read on every send.
        for name, section in sections.items():
            if name.isidentifier() and name not in ("plugins", "_sections"):
                setattr(self, name, section)

    def __getattr__(self, name: str) -> SectionSettings:
        try:
            return self._sections[name]
        except KeyError:
            raise AttributeError(f"no section [{name}]") from None

    def __getitem__(self, name: str) -> SectionSettings:
        return self._sections[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sections)


@dataclass(frozen=True)
class _State:
    """What one layer stack implies; replaced, never changed."""

    settings: Settings
    manager: pluggy.PluginManager
    active_plugins: dict[str, object]
    registry_generation: int


# -- The configuration ---------------------------------------------------


@implementer(IConfiguration)
class Configuration:
    """A stack of configuration layers over the schema's defaults.

    Independent `Configuration` objects do not share layers, so one process
    can drive connections with different settings; `mailman_mta.config.config`
    is the default that `Connection` uses when it is given none.  Sections
    are looked up on every access (``config.mta.smtp_host``), so never keep
    a section object across a push or pop: it would be stale.
    """

    def __init__(
        self,
        schema_file: str | PathLike[str] | None = None,
        *,
        registry: PluginRegistry | None = None,
    ) -> None:
        if schema_file is None:
            with importlib.resources.as_file(SCHEMA_FILE) as path:
                schema = ConfigSchema(fspath(path))
        else:
            schema = ConfigSchema(fspath(schema_file))
        self._schema = schema
        self._config = Config(schema)
        self._lock = threading.RLock()
        self._state: _State | None = None
        #: The state a thread has pinned (see `pinned`), per thread.
        self._pins = threading.local()
        self.registry = registry if registry is not None else default_registry

    # -- raw access, as in Mailman ---------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._config, name)

    def __getitem__(self, name: str) -> Any:
        """The raw (text) section *name*, including ``plugin.NAME`` sections."""
        return self._config[name]

    @property
    def layers(self) -> list[str]:
        """The names of the pushed layers, bottom first."""
        return [data.name for data in reversed(self._config.overlays[:-1])]

    def origin(self, section: str, key: str) -> str:
        """The layer the effective value of ``[section] key`` comes from.

        ``"default"`` when no pushed layer changed the schema's value.
        """
        found = "default"
        previous: object = None
        bottom = self._config.overlays[-1]
        for data in reversed(self._config.overlays):
            try:
                value = data[section][key]
            except (configparser.NoSectionError, KeyError):
                continue
            if data is not bottom and value != previous:
                found = data.name
            previous = value
        return found

    # -- layers ----------------------------------------------------------

    def push(self, name: str, text: str) -> None:
        """Lay *text* on top of the stack as the layer *name*.

        Raises `ConfigurationError` (and changes nothing) if the layer names
        an unknown section or key, has a value of the wrong type, enables a
        plugin that cannot be loaded, or is refused by a plugin's
        `mta_check_config`.
        """
        text = textwrap.dedent(text)
        with self._lock:
            self._check_layer_text(name, text)
            saved_overlays, saved_state = self._config._overlays, self._state
            try:
                self._config.push(name, text)
                try:
                    self._config.validate()
                except ConfigErrors as error:
                    problems = "; ".join(str(e) for e in error.errors)
                    raise ConfigurationError(
                        f"config layer {name!r} is not valid: {problems}", layer=name
                    ) from error
                state = self._compute_state()
                with self._pinned_to(state):
                    state.manager.hook.mta_check_config(config=self)
                # Published only once checked: no other thread sees a
                # layer that is about to be refused.
                self._state = state
            except ConfigurationError as error:
                # lazr.config keeps a bad layer on the stack, so restore it.
                self._config._overlays, self._state = saved_overlays, saved_state
                if error.layer is None:
                    error.layer = name
                    error.args = (f"config layer {name!r}: {error}",)
                raise
            except BaseException:
                self._config._overlays, self._state = saved_overlays, saved_state
                raise

    def push_file(self, path: str | PathLike[str]) -> str:
        """Push the file at *path* as a layer named after it; return that name.

        The file may extend another with ``[meta] extends: other.cfg``.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigurationError(f"cannot read config file {fspath(path)!r}: {error.strerror}") from error
        self.push(fspath(path), text)
        return path.name

    def pop(self, name: str) -> None:
        """Remove the layer *name*, and every layer pushed after it."""
        with self._lock:
            try:
                self._config.pop(name)
            except NoConfigError:
                raise ConfigurationError(
                    f"there is no config layer named {name!r} to pop "
                    f"(layers, bottom first: {', '.join(self.layers) or 'none'})",
                    layer=name,
                ) from None
            self._state = None

    @contextmanager
    def layer(self, name: str, text: str) -> Iterator[Configuration]:
        """Push a layer for the duration of a ``with`` block."""
        self.push(name, text)
        try:
            yield self
        finally:
            self.pop(name)

    # -- what the layers imply -------------------------------------------

    @property
    def settings(self) -> Settings:
        """The effective values, converted to their types."""
        return self._current().settings

    @property
    def hook(self) -> pluggy.HookRelay:
        """Call a hook on the enabled plugins: ``config.hook.mta_...(**kwargs)``."""
        return self._current().manager.hook

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """The pluggy manager holding exactly the enabled plugins."""
        return self._current().manager

    @property
    def active_plugins(self) -> dict[str, object]:
        """Name -> plugin object of the enabled plugins."""
        return dict(self._current().active_plugins)

    def pinned(self) -> _Pin:
        """Hold the current layers' settings and plugins, for this thread, for a ``with`` block.

        A `Connection` pins the configuration for each transaction, so a
        layer pushed or popped meanwhile (by another thread, or by a plugin)
        takes effect from the next transaction, never half-way through one.
        Other threads are not affected.  Nested pins keep the outer one.
        The block gets the configuration itself (``with config.pinned() as
        config``).
        """
        return _Pin(self, None)

    def _pinned_to(self, state: _State) -> _Pin:
        """Pin *state* for this thread, over any pin it holds (to check a new layer)."""
        return _Pin(self, state)

    def _current(self) -> _State:
        pinned = getattr(self._pins, "state", None)
        if pinned is not None:
            return pinned
        state = self._state
        if state is None or state.registry_generation != self.registry.generation:
            with self._lock:
                state = self._state = self._compute_state()
        return state

    def _compute_state(self) -> _State:
        generation = self.registry.generation
        settings = self._convert()
        active = {
            name: self.registry.load(name, settings.plugins[name]["class"])
            for name in registration_order(settings.plugins)
            if settings.plugins[name].enabled
        }
        manager = build_plugin_manager(active.items())
        return _State(settings, manager, active, generation)

    def _convert(self) -> Settings:
        sections: dict[str, SectionSettings] = {}
        for section in self._config:
            if section.name == f"{PLUGIN_CATEGORY}.master":
                continue
            values = {}
            for key in section.schema:
                convert = converter_for(section.name, key)
                try:
                    values[key] = convert(section[key])
                except ValueError as error:
                    raise ConfigurationError(
                        f"[{section.name}] {key}: {error}",
                        section=section.name, key=key,
                    ) from None
            sections[section.name] = SectionSettings(section.name, values)
        return Settings(sections)

    def _check_layer_text(self, name: str, text: str) -> None:
        """Refuse unparseable text and unknown sections or keys, by name."""
        parser = configparser.RawConfigParser(strict=False, interpolation=None)
        try:
            parser.read_string(text, source=name)
        except configparser.Error as error:
            raise ConfigurationError(
                f"config layer {name!r} cannot be parsed: {_parse_problem(error)}", layer=name
            ) from None
        for section in parser.sections():
            if section == "meta":
                continue
            schema = self._section_schema(section)
            if schema is None:
                known = [s.name for s in self._schema if not s.name.endswith(".master")]
                raise ConfigurationError(
                    f"config layer {name!r}: there is no section [{section}]"
                    + _did_you_mean(section, known + [f"{PLUGIN_CATEGORY}.NAME"]),
                    layer=name, section=section,
                )
            for key in parser.options(section):
                if key not in schema:
                    raise ConfigurationError(
                        f"config layer {name!r}: [{section}] has no key {key!r}"
                        + _did_you_mean(key, list(schema)),
                        layer=name, section=section, key=key,
                    )

    def _section_schema(self, section: str):
        if section in self._schema:
            return self._schema[section]
        category, _, rest = section.partition(".")
        master = f"{category}.master"
        if rest and master in self._schema:
            return self._schema[master]
        return None


def _parse_problem(error: configparser.Error) -> str:
    """What configparser found wrong, without repeating the text of the line.

    The line may hold a password (``smtp_pass s3cret``, with the colon
    forgotten), so only its number, and the word it starts with, are shown.
    """
    if isinstance(error, configparser.MissingSectionHeaderError):
        return f"line {error.lineno} comes before any [section] header"
    if isinstance(error, configparser.ParsingError):
        problems = []
        for number, line in error.errors:
            word = re.split(r"[\s:=]", str(line).strip("'\" "), maxsplit=1)[0]
            problems.append(f"line {number} (starting {word!r}) is not 'key: value'")
        return "; ".join(problems)
    return error.message.splitlines()[0]


class _Pin:
    """The context manager `Configuration.pinned` returns (a class: it runs on every send)."""

    __slots__ = ("config", "state", "previous")

    def __init__(self, config: Configuration, state: _State | None) -> None:
        self.config = config
        self.state = state

    def __enter__(self) -> Configuration:
        config = self.config
        pins = config._pins
        self.previous = getattr(pins, "state", None)
        if self.state is not None:
            pins.state = self.state
        elif self.previous is None:
            pins.state = config._current()
        return config

    def __exit__(self, *exc_info: object) -> None:
        self.config._pins.state = self.previous


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; known: {', '.join(sorted(choices))}"


#: The default configuration, used by every `Connection` given no other.
config = Configuration()
