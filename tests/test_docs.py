"""The plugin guide keeps pace with the hook specs."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from mailman_mta import hookspecs
from mailman_mta.plugins import BUILTIN_PLUGINS

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


def signature_line(name: str) -> str:
    """``name(arg: Type, ...) -> Type`` as written in the spec (annotations are not evaluated)."""
    signature = inspect.signature(getattr(hookspecs, name))
    arguments = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"{name}({arguments}) -> {signature.return_annotation}"


def test_every_hook_signature_is_in_the_plugin_guide_exactly():
    """As datasette's docs test does: the guide shows each spec's full signature, kept in step."""
    text = " ".join(GUIDE.read_text().split())
    missing = [signature_line(name) for name in sorted(spec_names()) if signature_line(name) not in text]
    assert missing == [], "signatures missing from docs/plugins.rst (or out of date)"


def test_the_plugin_guide_names_every_built_in_plugin():
    text = GUIDE.read_text()
    assert [name for name in BUILTIN_PLUGINS if f"``{name}``" not in text] == []
