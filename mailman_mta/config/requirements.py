"""Settings only a plugin carries out: the complaint when one is on and its plugin off."""

from __future__ import annotations

from ..schema import Requirement
from .settings import Settings


def _unmet(requirement: Requirement, settings: Settings) -> str | None:
    """The complaint about *requirement*, if the settings switch its feature on."""
    value = settings[requirement.section][requirement.key]
    if not requirement.met_by(value):
        return None
    shown = ("yes" if value else "no") if isinstance(value, bool) else str(value)
    return requirement.describe(shown)
