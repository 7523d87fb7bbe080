"""Suite-wide rules."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mailman_mta.manager import registry
from mailman_mta.testing import CountingSMTPServer
from mailman_mta.testing import postfix as testbed


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (CI=true) a skipped test is a failure: everything must really run."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and reporter is not None:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; in CI every test must run", red=True)
        for report in skipped:
            reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
            reporter.write_line(f"  skipped: {report.nodeid}: {reason}")
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
def enabled(mta_layers):
    """``with enabled(name=plugin, ...):`` registers plugins and enables them in a layer, for the block."""

    @contextmanager
    def enable(**plugins: object) -> Iterator[None]:
        for name, plugin in plugins.items():
            registry.add(name, plugin)
        try:
            mta_layers.push("enabled-plugins", "".join(f"[plugin.{name}]\nenabled: yes\n" for name in plugins))
            yield
        finally:
            mta_layers.pop("enabled-plugins")
            for name in plugins:
                registry.remove(name)

    return enable


@pytest.fixture
def shout_distribution(site):
    """Install the distribution ``mta-shout`` declaring the entry point ``shout``."""
    site.module("mta_test_shout", SHOUT_PLUGIN)
    site.distribution("mta-shout", {"shout": "mta_test_shout"})
    return "shout"


# -- a real Postfix ---------------------------------------------------------

#: Seconds spent installing and starting Postfix, for the closing summary.
POSTFIX_TIMINGS: dict[str, float] = {}

REFUSED = {"refused@example.com": "550 5.1.1 Mailbox unavailable"}


def _provide_postfix() -> None:
    """Install Postfix when it is missing and this process may (root + apt-get).

    Set MAILMAN_MTA_NO_INSTALL=1 to forbid it; the tests then skip.
    """
    reason = testbed.unavailable()
    if reason is None or os.geteuid() != 0 or os.environ.get("MAILMAN_MTA_NO_INSTALL"):
        return
    if shutil.which("apt-get") is None:
        return
    print(f"\ninstalling {' '.join(testbed.PACKAGES)} with apt-get for the postfix tests", flush=True)
    started = time.monotonic()
    testbed.install()
    POSTFIX_TIMINGS["install"] = time.monotonic() - started


@pytest.fixture(scope="session")
def postfix_capture():
    """The server Postfix relays to: what it receives is what Postfix delivered."""
    with CountingSMTPServer(credentials=None) as capture:
        yield capture


@pytest.fixture(scope="session")
def postfix(postfix_capture):
    """A running `PostfixTestbed` relaying to ``postfix_capture``."""
    _provide_postfix()
    reason = testbed.unavailable()
    if reason is not None:
        pytest.skip(f"no real Postfix here: {reason}; run scripts/postfix-testbed install as root")
    with testbed.PostfixTestbed(relay_port=postfix_capture.port, refused=REFUSED) as instance:
        POSTFIX_TIMINGS["start"] = instance.setup_seconds
        yield instance


def pytest_terminal_summary(terminalreporter) -> None:
    if POSTFIX_TIMINGS:
        parts = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in POSTFIX_TIMINGS.items())
        terminalreporter.write_line(f"Postfix testbed set-up: {parts}")
    module = next((m for name, m in list(sys.modules.items()) if name.rpartition(".")[2] == "test_mailman"), None)
    counts = getattr(module, "MAILMAN_COUNTS", None)
    if counts:
        terminalreporter.write_line(
            "GNU Mailman 3.3.10 mta suite on mailman-mta's Connection: "
            f"{counts.get('mailman_passed', '?')} of {counts.get('mailman_tests', '?')} passed, "
            f"{counts.get('mailman_excluded', '?')} excluded; our outgoing tests in Mailman's layers: "
            f"{counts.get('outgoing_passed', '?')} of {counts.get('outgoing_tests', '?')} passed"
        )
