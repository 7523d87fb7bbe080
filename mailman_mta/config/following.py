"""Following another lazr.config configuration (GNU Mailman's) below our own layers."""

from __future__ import annotations

import configparser
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Following:
    """Another lazr.config configuration whose values ours take (see `Configuration.follow`)."""

    source: Callable[[], Any]
    #: (our section, our key) -> (their section, their key, translation).
    keys: dict[tuple[str, str], tuple[str, str, Callable[[str], str]]]
    name: str

    def overlays(self) -> object:
        """The followed configuration's layer stack: a new object after each push or pop."""
        return getattr(self.source(), "overlays", None)

    def values(self) -> dict[tuple[str, str], str]:
        """Our (section, key) -> text, for every followed key the other configuration has."""
        other = self.source()
        if other is None:
            return {}
        values = {}
        for ours, (section, key, translate) in self.keys.items():
            try:
                text = other[section][key]
            except (KeyError, configparser.NoSectionError):
                continue
            values[ours] = translate(text)
        return values
