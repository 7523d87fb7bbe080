"""Run Django's own tests with mailman-mta's backend in place of Django's SMTP backend.

Run by tests/test_django_suite.py with the Python of an environment that
holds Django (from its sdist) and mailman-mta's wheel:

    python run.py DJANGO_TESTS_DIR [runtests.py arguments...]

Before Django's ``runtests.py`` runs, ``django.core.mail.backends.smtp.EmailBackend``
is rebound to `mailman_mta.integrations.django.EmailBackend`, so the tests
that name Django's backend (by dotted path or as ``smtp.EmailBackend``) get
ours; nothing else is changed.  The tests named in the JSON object in
``$MAILMAN_MTA_EXCLUDED`` (test id -> reason) are reported as skipped with
their reason.  The outcome of every test is written, as a JSON object of
test id -> outcome, to the file named by ``$MAILMAN_MTA_OUTCOMES`` when the
run ends, so the caller need not pick it out of interleaved output.
"""

import atexit
import json
import os
import runpy
import sys
import unittest

import django.core.mail.backends.smtp

from mailman_mta.integrations.django import EmailBackend

django.core.mail.backends.smtp.EmailBackend = EmailBackend
print(f"mailman-mta: Django's SMTP backend is now {EmailBackend.__module__}.{EmailBackend.__qualname__}", flush=True)

EXCLUDED = json.loads(os.environ.get("MAILMAN_MTA_EXCLUDED", "{}"))
_run = unittest.TestCase.run


def run(self, result=None):
    reason = EXCLUDED.get(self.id())
    if reason is not None:
        method = getattr(self, self._testMethodName)
        setattr(self, self._testMethodName, unittest.skip(f"excluded: {reason}")(method))
    return _run(self, result)


unittest.TestCase.run = run  # type: ignore[method-assign]
unittest.TextTestResult.getDescription = lambda self, test: test.id()  # type: ignore[method-assign]

OUTCOMES: dict = {}


def _recording(method, outcome):
    def record(self, test, *arguments):
        if outcome != "subtest" or arguments[-1] is not None:
            OUTCOMES[test.id() if outcome != "subtest" else arguments[0].id()] = (
                "FAIL" if outcome == "subtest" else outcome
            )
        return method(self, test, *arguments)

    return record


for name, outcome in [
    ("addSuccess", "ok"),
    ("addFailure", "FAIL"),
    ("addError", "ERROR"),
    ("addSkip", "skipped"),
    ("addExpectedFailure", "expected failure"),
    ("addUnexpectedSuccess", "unexpected success"),
    ("addSubTest", "subtest"),
]:
    setattr(unittest.TestResult, name, _recording(getattr(unittest.TestResult, name), outcome))


@atexit.register
def _write_outcomes():
    path = os.environ.get("MAILMAN_MTA_OUTCOMES")
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(OUTCOMES, file, indent=1)


tests = os.path.abspath(sys.argv[1])
sys.argv = [os.path.join(tests, "runtests.py"), *sys.argv[2:]]
sys.path.insert(0, tests)
os.chdir(tests)
runpy.run_path(sys.argv[0], run_name="__main__")
