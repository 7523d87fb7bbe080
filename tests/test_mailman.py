"""GNU Mailman 3.3.10's own MTA tests, run on mailman-mta's Connection; and our outgoing function.

Mailman is GPL and pins its own versions of our dependencies, so it is
never imported here: it is installed into an environment of its own
(cached between runs), with mailman-mta's wheel as a site installs it (not
this checkout; see the ``host_environment`` fixture), and its ``mailman.mta`` tests and
doctests run there as Mailman's tox configuration runs them (nose2 with
Mailman's layers), with ``tests/mailman_suite/swap.py`` putting our class
in place of Mailman's.  ``tests/mailman_suite/outgoing.py``, our tests of
``[mta] outgoing: mailman_mta.integrations.mailman.deliver``, runs in the
same process, inside Mailman's own test layers.

When the environment cannot be built the test skips, saying why, and
under CI=true a skip is a failure (tests/conftest.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SUITE = Path(__file__).resolve().parent / "mailman_suite"
REQUIREMENTS = ["mailman==3.3.10", "nose2==0.16.0", "flufl.testing==0.8", "hypothesis==6.170.17"]

#: The one test of Mailman's left out (see swap.py for why), and only it.
EXCLUDED = ["mailman.mta.tests.test_connection.TestSMTPConnectionCount.test_exception_is_raised_from_connect"]

#: Counts from the run, for the closing summary (tests/conftest.py).
MAILMAN_COUNTS: dict[str, int] = {}

pytestmark = pytest.mark.mailman


@pytest.fixture(scope="module")
def nose2_run(host_environment):
    """Mailman's mta tests and ours, in one nose2 run: (exit status, output)."""
    python = host_environment("mailman-3.3.10", REQUIREMENTS)
    environment = dict(os.environ, PYTHONPATH=str(SUITE.parent))
    environment.pop("CI", None)
    done = subprocess.run(
        [str(python), "-m", "nose2", "-v", "mailman.mta", "mailman_suite.outgoing"],
        cwd=SUITE,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, done.stdout + done.stderr


def _results(output: str) -> dict[str, str]:
    """Test name -> ok / FAIL / ERROR / skipped, from nose2's verbose lines."""
    results = {}
    for line in output.splitlines():
        match = re.match(r"^(\S+) \((\S+)\) \.\.\. (ok|FAIL|ERROR|skipped)", line)
        if match:
            results[match[2]] = match[3]
        match = re.match(r"^(/\S+\.rst) \.\.\. (ok|FAIL|ERROR)", line)
        if match:
            results[Path(match[1]).name] = match[2]
    return results


def test_mailmans_mta_suite_passes_on_our_connection(nose2_run):
    status, output = nose2_run
    results = _results(output)
    theirs = {name: outcome for name, outcome in results.items() if not name.startswith("mailman_suite.")}
    MAILMAN_COUNTS.update(
        mailman_tests=len(theirs),
        mailman_passed=sum(outcome == "ok" for outcome in theirs.values()),
        mailman_excluded=sum(outcome == "skipped" for outcome in theirs.values()),
    )
    failed = {name: outcome for name, outcome in theirs.items() if outcome in ("FAIL", "ERROR")}
    assert failed == {}, output[-6000:]
    assert sorted(name for name, outcome in theirs.items() if outcome == "skipped") == EXCLUDED
    assert "skipped excluded: mocks smtplib.SMTP" in output
    assert "Mailman's Connection is now mailman_mta.connection.Connection" in output
    for page in (
        "authentication.rst",
        "bulk.rst",
        "connection.rst",
        "decorating.rst",
        "mta.rst",
        "personalized.rst",
        "verp.rst",
    ):
        assert theirs.get(page) == "ok", page
    assert len(theirs) >= 60
    assert status == 0, output[-3000:]


def test_our_outgoing_function_passes_inside_mailmans_layers(nose2_run):
    status, output = nose2_run
    ours = {name: outcome for name, outcome in _results(output).items() if name.startswith("mailman_suite.")}
    MAILMAN_COUNTS.update(outgoing_tests=len(ours), outgoing_passed=sum(o == "ok" for o in ours.values()))
    assert len(ours) == 21 and set(ours.values()) == {"ok"}, output[-6000:]
    assert (
        "mailman_suite.outgoing.TestOutgoingRunner.test_permanent_failures_bounce_and_temporary_ones_are_retried"
        in ours
    )
