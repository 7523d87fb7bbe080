"""Suite-wide rules."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from mailman_mta.manager import registry


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (CI=true) a skipped test is a failure: everything must really run."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; in CI every test must run", red=True)
        for report in skipped:
            reporter.write_line(f"  skipped: {report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


SHOUT_PLUGIN = '''
"""A third-party plugin that marks every message it sees."""
from mailman_mta import hookimpl

@hookimpl
def mta_prepare_message(envelope):
    envelope.message = b"X-Shout: yes\\r\\n" + envelope.message
'''

class Site:
    """A folder on sys.path where a test installs modules and distributions."""

    def __init__(self, path) -> None:
        self.path = path

    def module(self, name: str, source: str) -> None:
        (self.path / f"{name}.py").write_text(textwrap.dedent(source))

    def distribution(self, name: str, entry_points: dict[str, str]) -> None:
        info = self.path / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[mailman_mta.plugins]\n{lines}")
        registry.refresh()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A `Site` on sys.path, forgotten (with its modules) after the test."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield Site(path)
    for name in [n for n in sys.modules if n.startswith("mta_test_")]:
        del sys.modules[name]
    registry.refresh()


@pytest.fixture
def shout_distribution(site):
    """Install the distribution ``mta-shout`` declaring the entry point ``shout``."""
    site.module("mta_test_shout", SHOUT_PLUGIN)
    site.distribution("mta-shout", {"shout": "mta_test_shout"})
    return "shout"
