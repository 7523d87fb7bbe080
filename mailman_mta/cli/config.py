"""``mailman-mta config``: the effective configuration, and where each value came from."""

from __future__ import annotations

import configparser
import json

import click
from rich.table import Table

from ..config import Configuration
from ..secret import Secret
from .app import (
    Invocation,
    layer_options,
    main,
    pass_invocation,
)


def _shown_value(config: Configuration, section: str, key: str) -> str:
    value = config.settings[section][key]
    if isinstance(value, Secret):
        return repr(value)
    try:
        return str(config[section][key])
    except (KeyError, configparser.NoSectionError):
        # A known plugin's switch that no layer named: the template's text.
        return ("yes" if value else "no") if isinstance(value, bool) else str(value)


@main.command("config")
@click.argument("name", required=False, metavar="[SECTION.KEY]")
@click.option("--origin", is_flag=True, help="With SECTION.KEY: also say which layer the value comes from.")
@click.option("--changed", is_flag=True, help="Only what the layers changed (as postconf -n).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
@layer_options
@pass_invocation
def show_config(invocation: Invocation, name: str | None, origin: bool, changed: bool, as_json: bool) -> None:
    """Print the effective configuration and the layer each value came from.

    With SECTION.KEY (mta.smtp_port, plugin.dkim.enabled), print that one
    value.  Passwords are always shown as Secret('***').
    """
    config = invocation.config
    with invocation.reporting():
        settings = config.settings
        if name is not None:
            section, _, key = name.rpartition(".")
            if section not in settings or key not in settings[section]:
                known = [f"{s}.{k}" for s in settings for k in settings[s]]
                close = [n for n in known if n.endswith("." + key) or n.startswith(section + ".")][:3]
                raise click.UsageError(
                    f"there is no key {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                )
            value, layer = _shown_value(config, section, key), config.origin(section, key)
            if as_json:
                invocation.console.print(
                    json.dumps({"section": section, "key": key, "value": value, "origin": layer}), soft_wrap=True
                )
            else:
                invocation.console.print(f"{value} (from {layer})" if origin else value, soft_wrap=True)
            return
        rows = [
            (section, key, _shown_value(config, section, key), config.origin(section, key))
            for section in settings
            for key in settings[section]
        ]
        if changed:
            rows = [row for row in rows if row[3] != "default"]
    if as_json:
        invocation.console.print(
            json.dumps([dict(zip(("section", "key", "value", "origin"), row)) for row in rows], indent=1),
            soft_wrap=True,
        )
        return
    title = "Changed" if changed else "Effective"
    table = Table(title=f"{title} configuration (layers: {', '.join(config.layers) or 'none'})")
    for column in ("section", "key", "value", "from"):
        table.add_column(column)
    for section, key, value, layer in rows:
        table.add_row(f"[{section}]", key, value, layer)
    invocation.console.print(table)
