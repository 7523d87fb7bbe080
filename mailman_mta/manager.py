"""Where plugins come from, and the pluggy manager that calls them.

A plugin has a name, and one of four sources, looked up in this order:

1. ``[plugin.NAME] class:`` in the active configuration, a dotted path;
2. a name given to ``registry.add(NAME, plugin)`` (tests, embedding apps);
3. a built-in, listed in `BUILTIN_PLUGINS` (modules of `mailman_mta.plugins`);
4. an entry point called NAME in the group ``mailman_mta.plugins``.

Which plugins are *enabled* is up to the configuration layers
(`mailman_mta.config`); this module only finds and loads them, and builds a
`pluggy.PluginManager` holding exactly the enabled ones.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from . import PROJECT_NAME, hookspecs
from .errors import ConfigurationError
from .plugins import BUILTIN_PLUGINS as _BUILTINS

#: The built-in plugins, in registration order (see `mailman_mta.plugins`).
#: pluggy calls the last-registered implementation first, so third-party
#: plugins (registered after these) run before the built-ins unless they
#: ask otherwise.
BUILTIN_PLUGINS: tuple[str, ...] = tuple(_BUILTINS)

#: Hooks mailman-mta calls implementation by implementation, not through
#: pluggy's call loop (an observer that raises must not stop the others;
#: each plugin declares its configuration under its own name), so a
#: wrapper of them would never run.
CALLED_ONE_BY_ONE = ("mta_delivery_result", "mta_declare_config")

#: The entry-point group third-party distributions declare plugins in.
ENTRY_POINT_GROUP = "mailman_mta.plugins"


def registration_order(names: Iterable[str]) -> list[str]:
    """Built-ins first, in `BUILTIN_PLUGINS` order, then the others by name."""
    names = set(names)
    return [n for n in BUILTIN_PLUGINS if n in names] + sorted(names - set(BUILTIN_PLUGINS))


class PluginRegistry:
    """The plugins that could be enabled, by name, and their loaded objects.

    Loading happens on first use and is cached, so a plugin that keeps state
    (a rate limiter, a delivery log) is one object for the whole process, no
    matter how often layers switch it on and off.  `generation` changes
    whenever the set of known plugins does, so configurations know to
    rebuild their plugin managers.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._added: dict[str, object] = {}
        self._entry_points: dict[str, importlib.metadata.EntryPoint] | None = None
        self._loaded: dict[tuple[str, str], object] = {}
        self.generation = 0

    # -- the known plugins -------------------------------------------------

    def entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        """Return the installed entry points of our group, by name (cached)."""
        with self._lock:
            if self._entry_points is None:
                found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
                self._entry_points = {ep.name: ep for ep in found}
            return self._entry_points

    def names(self) -> list[str]:
        """Every plugin name known without configuration, built-ins first."""
        return registration_order([*BUILTIN_PLUGINS, *self._added, *self.entry_points()])

    def describe(self, name: str, class_path: str = "") -> str:
        """Say where plugin *name* comes from, for people reading a listing."""
        if class_path:
            return f"class {class_path}"
        if name in self._added:
            return "added by registry.add()"
        if name in BUILTIN_PLUGINS:
            return "built-in"
        entry_point = self.entry_points().get(name)
        if entry_point is not None:
            dist = entry_point.dist
            where = f" from {dist.name} {dist.version}" if dist is not None else ""
            return f"entry point {entry_point.value}{where}"
        return "not installed"

    def add(self, name: str, plugin: object) -> None:
        """Make *plugin* (a module or object) known as *name*.

        It is still only called while a layer enables ``[plugin.NAME]``.
        """
        with self._lock:
            self._added[name] = plugin
            self._forget(name)

    def remove(self, name: str) -> None:
        """Forget a plugin given to `add`."""
        with self._lock:
            del self._added[name]
            self._forget(name)

    def refresh(self) -> None:
        """Look for entry points again (after installing a distribution)."""
        with self._lock:
            self._entry_points = None
            self._loaded = {k: v for k, v in self._loaded.items() if k[0] in BUILTIN_PLUGINS}
            self.generation += 1

    def _forget(self, name: str) -> None:
        self._loaded = {k: v for k, v in self._loaded.items() if k[0] != name}
        self.generation += 1

    # -- loading -----------------------------------------------------------

    def load(self, name: str, class_path: str = "") -> object:
        """Return the plugin object for *name*, loading it the first time.

        Raises `ConfigurationError` naming ``[plugin.NAME]`` when there is
        no such plugin or it fails to import.
        """
        key = (name, class_path)
        with self._lock:
            try:
                return self._loaded[key]
            except KeyError:
                pass
            plugin = self._find(name, class_path)
            if isinstance(plugin, type):
                plugin = plugin()
            self._loaded[key] = plugin
            return plugin

    def _find(self, name: str, class_path: str) -> Any:
        section = f"plugin.{name}"
        try:
            if class_path:
                return pkgutil.resolve_name(class_path)
            if name in self._added:
                return self._added[name]
            if name in BUILTIN_PLUGINS:
                return importlib.import_module(f"{__package__}.plugins.{name}")
            entry_point = self.entry_points().get(name)
            if entry_point is not None:
                return entry_point.load()
        except (ImportError, AttributeError, ValueError) as error:
            source = (
                f"class {class_path!r}"
                if class_path
                else "the built-in module"
                if name in BUILTIN_PLUGINS
                else "its entry point"
            )
            raise ConfigurationError(
                f"[{section}] cannot load plugin {name!r} from {source}: {error}",
                section=section,
                key="class",
            ) from error
        raise ConfigurationError(
            f"[{section}] is enabled, but there is no plugin called {name!r}: it is not "
            f"built in, not an entry point in the group {ENTRY_POINT_GROUP!r}, and the "
            "section has no class: key",
            section=section,
            key="enabled",
        )


#: The process-wide registry every `Configuration` consults.
registry = PluginRegistry()


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, which notes when someone starts watching hook calls.

    `mailman_mta.hooks.Hooks` calls the per-message hooks directly while
    nobody watches, and through pluggy (so the monitor sees them) once
    someone does.
    """

    monitored = False

    def add_hookcall_monitoring(self, before: Any, after: Any) -> Callable[[], None]:
        self.monitored = True
        return super().add_hookcall_monitoring(before, after)


def build_plugin_manager(plugins: Iterable[tuple[str, object]]) -> pluggy.PluginManager:
    """Return a plugin manager with exactly *plugins* registered, in order.

    Every hook implementation is checked against `mailman_mta.hookspecs`,
    and an implementation with no matching spec (a misspelt hook name) is an
    error, raised here as `ConfigurationError` naming the plugin.
    """
    manager = PluginManager(PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    for name, plugin in plugins:
        section = f"plugin.{name}"
        try:
            manager.register(plugin, name=name)
        except pluggy.PluginValidationError as error:
            raise ConfigurationError(f"[{section}] {error}", section=section) from error
        except ValueError as error:
            raise ConfigurationError(
                f"[{section}] cannot be enabled together with another section that "
                f"loads the same plugin object: {error}",
                section=section,
            ) from error
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as error:
        name = manager.get_name(error.plugin) or "?"
        raise ConfigurationError(
            f"[plugin.{name}] implements a hook that does not exist "
            f"(hooks are listed in mailman_mta.hookspecs): {error}",
            section=f"plugin.{name}",
        ) from error
    for hook_name in CALLED_ONE_BY_ONE:
        for implementation in getattr(manager.hook, hook_name).get_hookimpls():
            if implementation.hookwrapper or getattr(implementation, "wrapper", False):
                section = f"plugin.{implementation.plugin_name}"
                raise ConfigurationError(
                    f"[{section}] implements {hook_name} as a wrapper, which would never run: "
                    f"{hook_name} calls each implementation on its own, so it takes no wrappers "
                    "(see mailman_mta.hookspecs)",
                    section=section,
                )
    return manager
