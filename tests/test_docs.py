"""The plugin guide keeps pace with the hook specs."""

from __future__ import annotations

import re
from pathlib import Path

from mailman_mta import hookspecs

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.rst"


def spec_names() -> set[str]:
    return {name for name in dir(hookspecs) if name.startswith("mta_")}


def test_every_hook_spec_has_a_section_in_the_plugin_guide():
    sections = set(re.findall(r"^(mta_\w+)\n-+$", GUIDE.read_text(), re.M))
    assert spec_names() - sections == set(), "hooks missing from docs/plugins.rst"
    assert sections - spec_names() == set(), "docs/plugins.rst describes hooks that do not exist"


def test_every_hook_spec_says_what_it_is_for():
    for name in spec_names():
        assert len((getattr(hookspecs, name).__doc__ or "").split()) > 30, name
