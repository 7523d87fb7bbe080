"""`Configuration`: the layer stack, the state it implies, and the plugins it makes active."""

from __future__ import annotations

import configparser
import io
import logging
import textwrap
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import pluggy
from lazr.config import Config, ConfigSchema
from lazr.config.interfaces import NoConfigError
from zope.interface import implementer

from ..errors import ConfigurationError
from ..hooks import Hooks
from ..interfaces import IConfiguration
from ..manager import PluginRegistry, build_plugin_manager, registration_order
from ..manager import registry as default_registry
from ..schema import PLUGIN_CATEGORY, SCHEMA_FILE, Schema
from .following import _Following
from .layers import _copy_of, _did_you_mean, _lay, _lay_again, _parse_problem, as_is
from .pinning import _Pin
from .requirements import _unmet
from .settings import SectionSettings, Settings

log = logging.getLogger("mailman_mta.config")


@dataclass(frozen=True)
class _State:
    """What one layer stack implies; replaced, never changed."""

    settings: Settings
    manager: pluggy.PluginManager
    active_plugins: dict[str, object]
    registry_generation: int
    #: Why the layers cannot be used as they stand (`Requirement` not met),
    #: or None.  Refused at push; a pop can still leave one, and then
    #: nothing is sent until it is mended.
    problem: str | None
    #: The plugins that open and authenticate connections: a connection
    #: opened by a different set is replaced before its next send.
    opening_plugins: tuple[object, ...]
    #: The followed configuration's layers these settings were made from.
    followed_overlays: object = None
    #: (section, key) -> the text each followed key took, where no layer
    #: of ours set it.
    followed: dict[tuple[str, str], str] = field(default_factory=dict)
    #: The typed hook caller for this state, made on first use.
    hooks: Hooks | None = field(default=None, compare=False)


#: Per plugin registry, the schema its plugins declared (see `Configuration._collect_schema`).
_COLLECTED: weakref.WeakKeyDictionary[PluginRegistry, dict[tuple[int, str], Schema]] = weakref.WeakKeyDictionary()


@implementer(IConfiguration)
class Configuration:
    """A stack of configuration layers over the schema's defaults.

    Independent `Configuration` objects do not share layers, so one process
    can drive connections with different settings; `mailman_mta.config.config`
    is the default that `Connection` uses when it is given none.  Sections
    are looked up on every access (``config.mta.smtp_host``), so never keep
    a section object across a push or pop: it would be stale.

    The schema is ``schema.cfg`` (or *schema_file*) plus the sections every
    known plugin declares (`mta_declare_config`, see `mailman_mta.schema`).
    It is collected on first use, not at construction, so plugins may
    import this module; and again whenever the registry's plugins change.
    """

    def __init__(
        self,
        schema_file: str | PathLike[str] | None = None,
        *,
        registry: PluginRegistry | None = None,
    ) -> None:
        if schema_file is None:
            self._core_schema_text = SCHEMA_FILE.read_text(encoding="utf-8")
        else:
            self._core_schema_text = Path(schema_file).read_text(encoding="utf-8")
        self._lock = threading.RLock()
        self._state: _State | None = None
        #: The state a thread has pinned (see `pinned`), per thread.
        self._pins = threading.local()
        self.registry = registry if registry is not None else default_registry
        self._schema_generation = -1
        self._declared: Schema | None = None
        self._lazr: Config | None = None
        self._following: _Following | None = None

    # -- the schema, as the known plugins declare it ---------------------

    @property
    def schema(self) -> Schema:
        """Every section and key this configuration knows, with their types."""
        self._up_to_date()
        assert self._declared is not None
        return self._declared

    @property
    def _config(self) -> Config:
        """The layer stack: the published one, or, in a thread checking a push, the one being checked."""
        checking = getattr(self._pins, "lazr", None)
        if checking is not None:
            return checking
        self._up_to_date()
        assert self._lazr is not None
        return self._lazr

    def _up_to_date(self) -> None:
        if self._schema_generation == self.registry.generation and self._lazr is not None:
            return
        with self._lock:
            generation = self.registry.generation
            if self._schema_generation == generation and self._lazr is not None:
                return
            declared = self._collect_schema()
            if self._declared is None or declared.text != self._declared.text:
                lazr = Config(ConfigSchema("schema.cfg", io.StringIO(declared.text)))
                if self._lazr is not None:
                    _lay_again(self._lazr, lazr)
                self._lazr = lazr
            self._declared = declared
            self._schema_generation = generation
            self._state = None

    def _collect_schema(self) -> Schema:
        """Ask every known plugin, enabled or not, for the sections it declares.

        A plugin that cannot be loaded declares nothing; the same error is
        raised, naming it, if a layer enables it.  Asking costs
        milliseconds, and an application may make a `Configuration` per
        message (Django makes a backend per ``send_mail``), so what the
        plugins of one registry generation declare is collected once and
        shared: a collected `Schema` is never changed.
        """
        generation = self.registry.generation
        collected = _COLLECTED.setdefault(self.registry, {})
        schema = collected.get((generation, self._core_schema_text))
        if schema is None:
            for stale in [key for key in collected if key[0] != generation]:
                del collected[stale]
            schema = collected[generation, self._core_schema_text] = self._ask_plugins()
        return schema

    def _ask_plugins(self) -> Schema:
        schema = Schema(self._core_schema_text)
        for name in self.registry.names():
            try:
                manager = build_plugin_manager([(name, self.registry.load(name))])
            except ConfigurationError as error:
                log.warning("plugin %r declares no configuration, since it cannot be loaded: %s", name, error)
                continue
            for implementation in manager.hook.mta_declare_config.get_hookimpls():
                arguments = {"schema": schema.for_plugin(name)}
                implementation.function(**{arg: arguments[arg] for arg in implementation.argnames})
        return schema

    def converter_for(self, section: str, key: str) -> Callable[[str], Any]:
        """The converter that types ``[section] key`` (see `mailman_mta.values`)."""
        return self.schema.converter(section, key)

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

        ``"default"`` when no pushed layer changed the schema's value; the
        followed configuration's name (see `follow`) when it gave the value.
        """
        if (section, key) in self._current().followed:
            return self._followed_name()
        return self._lazr_origin(section, key)

    def _followed_name(self) -> str:
        return self._following.name if self._following is not None else "another configuration"

    def _lazr_origin(self, section: str, key: str) -> str:
        found = "default"
        overlays = self._config.overlays
        bottom = overlays[-1]
        previous: object = None
        if section.startswith(PLUGIN_CATEGORY + "."):
            # A [plugin.NAME] section a layer made starts from the template's values.
            try:
                previous = bottom[f"{PLUGIN_CATEGORY}.master"][key]
            except (configparser.NoSectionError, KeyError):
                pass
        for data in reversed(overlays):
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
        plugin that cannot be loaded, leaves a setting on whose plugin is
        off (see `mailman_mta.schema.PluginSchema.needs_plugin_when`), is
        refused by a plugin's `mta_check_config`, or extends a file
        (``[meta] extends``) that cannot be read as UTF-8 text.

        The layer is checked on a copy of the stack, and published only once
        it passed: another thread never sees, in any form (typed settings,
        raw sections, `origin`, `layers`), a layer that is about to be
        refused.  Values may be any text (a UTF-8 password, an
        internationalised host name), though lazr.config itself takes only
        ASCII; a NUL character is refused in any value.
        """
        text = textwrap.dedent(text)
        with self._lock:
            self._check_layer_text(name, text)
            candidate = _copy_of(self._config)
            checking, self._pins.lazr = getattr(self._pins, "lazr", None), candidate
            try:
                _lay(candidate, name, text)
                state = self._compute_state()
                if state.problem is not None:
                    raise ConfigurationError(state.problem)
                with self._pinned_to(state):
                    state.manager.hook.mta_check_config(config=self)
            except ConfigurationError as error:
                if error.layer is None:
                    error.layer = name
                    error.args = (f"config layer {name!r}: {error}",)
                raise
            finally:
                self._pins.lazr = checking
            self._lazr, self._state = candidate, state

    def push_file(self, path: str | PathLike[str]) -> str:
        """Push the file at *path* as a layer named after it; return that name.

        The file may extend another with ``[meta] extends: other.cfg``.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigurationError(f"cannot read config file {fspath(path)!r}: {error.strerror}") from error
        except UnicodeDecodeError as error:
            raise ConfigurationError(
                f"config file {fspath(path)!r} is not UTF-8 text (byte {error.start} is not)"
            ) from None
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
        state = getattr(self._pins, "state", None)
        return (state if state is not None else self._latest()).settings

    @property
    def hook(self) -> pluggy.HookRelay:
        """Call a hook on the enabled plugins: ``config.hook.mta_...(**kwargs)``."""
        return self._current().manager.hook

    @property
    def hooks(self) -> Hooks:
        """The enabled plugins' hooks as typed methods (see `mailman_mta.hooks`)."""
        state = getattr(self._pins, "state", None)
        if state is None:
            state = self._latest()
        hooks = state.hooks
        if hooks is None:
            hooks = Hooks(self, state.manager, state.settings)
            object.__setattr__(state, "hooks", hooks)
        return hooks

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

    def pin_is_latest(self) -> bool:
        """Is the state this thread pinned still what the layers imply?  False after a push or pop meanwhile.

        (Not pinned: True.)  A `Connection` that would prepare the next
        transaction inside this one asks first, so that a layer pushed in
        between still takes effect from the next transaction.
        """
        pinned = getattr(self._pins, "state", None)
        return pinned is None or pinned is self._latest()

    def _current(self) -> _State:
        pinned = getattr(self._pins, "state", None)
        if pinned is not None:
            return pinned
        return self._latest()

    def _latest(self) -> _State:
        state = self._state
        following = self._following
        if (
            state is None
            or state.registry_generation != self.registry.generation
            or (following is not None and following.overlays() is not state.followed_overlays)
        ):
            with self._lock:
                state = self._compute_state()
                if following is not None:
                    state = self._checked_by_plugins(state)
                self._state = state
        return state

    def _checked_by_plugins(self, state: _State) -> _State:
        """*state*, with what the plugins' `mta_check_config` refuses as its problem.

        For changes made where no push could refuse them: in a followed
        configuration.  Nothing is sent while there is a problem.
        """
        if state.problem is not None:
            return state
        try:
            with self._pinned_to(state):
                state.manager.hook.mta_check_config(config=self)
        except ConfigurationError as error:
            log.error("the configuration, following %s, is refused: %s", self._followed_name(), error)
            return replace(state, problem=f"following {self._followed_name()}: {error}")
        return state

    def follow(
        self,
        source: Callable[[], Any],
        keys: Mapping[str, str | tuple[str, Callable[[str], str]]],
        *,
        name: str,
    ) -> None:
        """Take *keys* from another lazr.config configuration, live, below our own layers.

        For an application with a configuration of its own (GNU Mailman):
        *source* returns its `lazr.config.Config` (or None while it has
        none), and *keys* maps ``"our_section.our_key"`` to
        ``"their_section.their_key"``, or to that and a function turning
        their text into ours.  A followed value is used where none of our
        layers sets the key, and `origin` names *name* for it; a push or
        pop over there takes effect at our next use, checked as a push
        would be: a value we refuse stops all sending until it is mended
        (`problem` says why).  *source* is asked at every use, so it must
        be cheap; it is compared by the identity of its layer stack.
        """
        table = {}
        for ours, theirs in keys.items():
            translate: Callable[[str], str] = as_is
            if isinstance(theirs, tuple):
                theirs, translate = theirs
            our_section, _, our_key = ours.partition(".")
            their_section, _, their_key = theirs.partition(".")
            table[(our_section, our_key)] = (their_section, their_key, translate)
        with self._lock:
            self._following = _Following(source, table, name)
            self._state = None

    @property
    def problem(self) -> str | None:
        """Why the current layers may not be used to send, or None.

        A layer that leaves a plugin's setting on with the plugin disabled
        is refused at push, but popping a layer can leave the same state
        behind (``[devmode] enabled`` from a lower layer, with the layer
        that enabled ``[plugin.devmode]`` popped).  `Connection` then
        sends nothing, rather than let mail reach real people.
        """
        return self._current().problem

    @property
    def state_token(self) -> object:
        """An object that is the same exactly while what the layers imply is the same.

        For caches of values derived from the settings: compare it by
        identity (the pinned state's, inside a send).
        """
        return self._current()

    @property
    def opening_plugins(self) -> tuple[object, ...]:
        """The enabled plugins that open or authenticate connections."""
        return self._current().opening_plugins

    def _compute_state(self) -> _State:
        generation = self.registry.generation
        self._up_to_date()
        followed_overlays, followed = self._followed_values()
        settings = self._convert(followed)
        active = {
            name: self.registry.load(name, settings.plugins[name]["class"])
            for name in registration_order(settings.plugins)
            if settings.plugins[name].enabled
        }
        manager = build_plugin_manager(active.items())
        unmet = (_unmet(r, settings) for r in self.schema.requirements if r.plugin not in active)
        problem = next((complaint for complaint in unmet if complaint is not None), None)
        opening = tuple(
            implementation.plugin
            for hook in (manager.hook.mta_create_transport, manager.hook.mta_authenticate)
            for implementation in hook.get_hookimpls()
        )
        return _State(settings, manager, active, generation, problem, opening, followed_overlays, followed)

    def _convert(self, followed: dict[tuple[str, str], str]) -> Settings:
        sections: dict[str, SectionSettings] = {}
        schema = self.schema
        for section in self._config:
            if section.name == f"{PLUGIN_CATEGORY}.master":
                continue
            values = {}
            for key in section.schema:
                convert = schema.converter(section.name, key)
                text = followed.get((section.name, key))
                try:
                    values[key] = convert(section[key] if text is None else text)
                except ValueError as error:
                    where = "" if text is None else f" (following {self._followed_name()})"
                    raise ConfigurationError(
                        f"[{section.name}] {key}{where}: {error}",
                        section=section.name,
                        key=key,
                    ) from None
            sections[section.name] = SectionSettings(section.name, values)
        master = self._config.schema[f"{PLUGIN_CATEGORY}.master"]
        for name in self.registry.names():
            # A known plugin no layer named: its switch, as the template has it.
            section_name = f"{PLUGIN_CATEGORY}.{name}"
            if section_name not in sections:
                values = {key: schema.converter(section_name, key)(master[key]) for key in master}
                sections[section_name] = SectionSettings(section_name, values)
        return Settings(sections)

    def _followed_values(self) -> tuple[object, dict[tuple[str, str], str]]:
        """The followed configuration's layers, and its values for keys none of our layers set."""
        following = self._following
        if following is None:
            return None, {}
        overlays = following.overlays()
        values = following.values()
        return overlays, {ours: text for ours, text in values.items() if self._lazr_origin(*ours) == "default"}

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
                known = [s.name for s in self._config.schema if not s.name.endswith(".master")]
                raise ConfigurationError(
                    f"config layer {name!r}: there is no section [{section}]"
                    + _did_you_mean(section, known + [f"{PLUGIN_CATEGORY}.NAME"]),
                    layer=name,
                    section=section,
                )
            for key in parser.options(section):
                if key not in schema:
                    raise ConfigurationError(
                        f"config layer {name!r}: [{section}] has no key {key!r}" + _did_you_mean(key, list(schema)),
                        layer=name,
                        section=section,
                        key=key,
                    )
                if "\0" in parser.get(section, key):
                    # No setting means anything with one; the value is not
                    # shown (it may be a password).
                    raise ConfigurationError(
                        f"config layer {name!r}: [{section}] {key} holds a NUL character",
                        layer=name,
                        section=section,
                        key=key,
                    )

    def _section_schema(self, section: str):
        schema = self._config.schema
        if section in schema:
            return schema[section]
        category, _, rest = section.partition(".")
        master = f"{category}.master"
        if rest and master in schema:
            return schema[master]
        return None
