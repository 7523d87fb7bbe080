"""The typed, read-only views of one configuration state: ``settings.mta.smtp_port``."""

from __future__ import annotations

import keyword
from collections.abc import Iterator, Mapping
from typing import Any

from ..schema import PLUGIN_CATEGORY


class SectionSettings(Mapping[str, Any]):
    """The typed, read-only values of one section: ``section.smtp_port``.

    Keys that are Python keywords (``class``) are read with ``section['class']``,
    as are keys that share a name with a `Mapping` method (``section['items']``).
    Every other key is also a plain attribute, because plugins read them on
    every message and an attribute costs no Python call.
    """

    def __init__(self, name: str, values: dict[str, Any]) -> None:
        fields = self.__dict__
        fields["name"] = name
        fields["_values"] = values
        for key, value in values.items():
            if key.isidentifier() and not keyword.iskeyword(key) and not hasattr(SectionSettings, key):
                fields.setdefault(key, value)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"[{self.name}] is read-only: push a configuration layer to change {key!r}")

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
