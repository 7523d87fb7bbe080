"""``mailman-mta plugins``: the plugins that exist, which are active, and their hooks."""

from __future__ import annotations

import pluggy
from rich.table import Table

from .. import PROJECT_NAME
from ..errors import MTAError
from ..manager import registration_order
from .app import (
    Invocation,
    layer_options,
    main,
    pass_invocation,
)


def _hooks_of(plugin: object) -> list[str]:
    """The hooks *plugin* implements, found as pluggy would find them."""
    manager = pluggy.PluginManager(PROJECT_NAME)
    return sorted(name for name in dir(plugin) if manager.parse_hookimpl_opts(plugin, name) is not None)


@main.command()
@layer_options
@pass_invocation
def plugins(invocation: Invocation) -> None:
    """List the plugins that exist, which are active, and the hooks each implements."""
    config = invocation.config
    configured = config.settings.plugins
    names = registration_order([*config.registry.names(), *configured])
    active = config.active_plugins
    table = Table(title="Plugins")
    for column in ("plugin", "active", "source", "hooks"):
        table.add_column(column)
    for name in names:
        class_path = configured[name]["class"] if name in configured else ""
        source = config.registry.describe(name, class_path)
        try:
            hooks = ", ".join(_hooks_of(active.get(name) or config.registry.load(name, class_path)))
        except MTAError as error:
            hooks = f"cannot load: {error}"
        table.add_row(name, "yes" if name in active else "no", source, hooks)
    invocation.console.print(table)
