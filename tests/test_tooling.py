"""The linter, the formatter and the type checker are clean, as part of the suite.

They run here, not in a separate CI step, so the README's one test command
is the whole check.  Their settings are in ruff.toml and setup.cfg
([mypy], with the zope plugin so that interfaces type-check).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    done = run("ruff", "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_code_is_formatted_as_ruff_formats_it():
    done = run("ruff", "format", "--check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing():
    """mypy, through scripts/typecheck: the package as installed, every product function body checked."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "typecheck")], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout


def typecheck(probe: Path, source: str) -> subprocess.CompletedProcess:
    """scripts/typecheck run on the package and on *source*, written to *probe*."""
    probe.write_text(source)
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "typecheck"), str(probe)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_mypy_sees_the_plugins_and_the_schema_as_installed(tmp_path):
    """No Any from the layout: mailman_mta.plugins and mailman_mta.schema resolve to the real code."""
    done = typecheck(
        tmp_path / "typecheck_probe.py",
        "from mailman_mta.config import config\n"
        "from mailman_mta.plugins import routes\n"
        "reveal_type(config.schema)\n"
        "reveal_type(routes.as_route_map)\n",
    )
    revealed = [line.partition("typecheck_probe.py:")[2] for line in done.stdout.splitlines() if "Revealed" in line]
    assert revealed == [
        '3: note: Revealed type is "mailman_mta.schema.Schema"',
        '4: note: Revealed type is "def (value: str) -> mailman_mta.plugins.routes.RouteMap"',
    ], done.stdout


def test_a_hook_called_with_a_wrong_keyword_is_a_type_error(tmp_path):
    """Hooks are called through mailman_mta.hooks.Hooks, whose methods mypy checks."""
    done = typecheck(
        tmp_path / "hook_probe.py",
        "from mailman_mta.config import config\n"
        "config.hooks.choose_route(domian='example.org')\n"
        "route = config.hooks.choose_route('example.org')\n"
        "reveal_type(route)\n",
    )
    said = [line.partition("hook_probe.py:")[2] for line in done.stdout.splitlines() if "hook_probe.py:" in line]
    assert any(line.startswith('2: error: Unexpected keyword argument "domian"') for line in said), done.stdout
    assert '4: note: Revealed type is "mailman_mta.routes.Route | None"' in said, done.stdout
