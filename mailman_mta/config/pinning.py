"""Pinning: one configuration state for a whole transaction, whatever layers come and go."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .configuration import Configuration, _State


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
