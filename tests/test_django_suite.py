"""Django's own SMTP backend tests, run on mailman-mta's backend, installed from the wheel.

For each Django version below, its sdist is fetched from the package index
(pinned by version and SHA-256), installed with our wheel into an
environment of its own, and the SMTP backend tests from the sdist's
``tests/mail/tests.py`` (``SMTPBackendTests``, with the
``BaseEmailBackendTests`` it inherits, and ``SMTPBackendStoppedServerTests``)
are run by Django's ``runtests.py``, with Django's backend replaced by ours
(``tests/django_suite/run.py``) and nothing else changed.  Every test must
pass except those in `EXCLUDED`, which test smtplib's or Django's private
internals; each is reported as skipped with its reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.django

RUNNER = Path(__file__).resolve().parent / "django_suite" / "run.py"

#: Django version -> SHA-256 of its sdist on the package index.
DJANGO_SDISTS = {
    "4.2.30": "4ebc7a434e3819db6cf4b399fb5b3f536310a30e8486f08b66886840be84b37c",
    "5.2.19": "ad03d8abc51dbff95ebf34b27123cf0c26a3b62db7ba0cd520783686362533d1",
}

LABELS = ["mail.tests.SMTPBackendTests", "mail.tests.SMTPBackendStoppedServerTests"]

#: Why a test cannot pass on any backend but Django's own.
SMTPLIB_WRITES = (
    "replaces smtplib.SMTP.send, smtplib's private write path, and looks for the lowercase 'data' "
    "command smtplib writes; mailman-mta writes its own transaction (CRLF on the wire is checked "
    "in tests/test_django.py)"
)
PARTIAL_CONNECTION = (
    "checks Django's private _partial_connection (5.1 and later): the smtplib.SMTP Django keeps "
    "half-open after a failed AUTH, where mailman-mta closes such a connection at once"
)

#: Per Django version: the tests excluded there, with their reasons.
EXCLUDED = {
    "4.2.30": {"mail.tests.SMTPBackendTests.test_email_msg_uses_crlf": SMTPLIB_WRITES},
    "5.2.19": {
        "mail.tests.SMTPBackendTests.test_email_msg_uses_crlf": SMTPLIB_WRITES,
        "mail.tests.SMTPBackendTests.test_server_open": PARTIAL_CONNECTION,
        "mail.tests.SMTPBackendTests.test_reopen_replaces_partial_connection": PARTIAL_CONNECTION,
    },
}

#: How many tests each version's run reports (excluded ones included).
EXPECTED = {"4.2.30": 48, "5.2.19": 52}

#: Counts from the runs, for the closing summary (tests/conftest.py).
DJANGO_COUNTS: dict[str, tuple[int, int, int]] = {}


def _cache() -> Path:
    return Path(os.environ.get("MAILMAN_MTA_HOSTS", Path.home() / ".cache" / "mailman-mta")) / "sdists"


def django_sdist(version: str) -> Path:
    """Django's sdist, fetched once from the package index and checked against its pinned SHA-256."""
    cache = _cache()
    cache.mkdir(parents=True, exist_ok=True)
    found = list(cache.glob(f"[Dd]jango-{version}.tar.gz"))
    if not found:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
            + ["--dest", str(cache), f"Django=={version}"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        found = list(cache.glob(f"[Dd]jango-{version}.tar.gz"))
        if fetched.returncode != 0 or not found:
            pytest.skip(f"cannot fetch Django {version}'s sdist from the package index: {fetched.stderr[-800:]}")
    (sdist,) = found
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != DJANGO_SDISTS[version]:
        sdist.unlink()
        pytest.fail(f"{sdist.name} has SHA-256 {digest}, not the pinned {DJANGO_SDISTS[version]}; removed it")
    return sdist


def django_tests(sdist: Path, version: str) -> Path:
    """The ``tests`` folder of the sdist, unpacked once next to it."""
    where = sdist.parent / f"django-{version}-tests"
    tests = where / f"django-{version}" / "tests"
    if not (tests / "runtests.py").exists():
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(f"django-{version}/tests/")]
            archive.extractall(where, members=members, filter="data")
    return tests


@pytest.mark.parametrize("version", sorted(DJANGO_SDISTS))
def test_djangos_smtp_backend_tests_pass_on_our_backend(version, host_environment, tmp_path):
    sdist = django_sdist(version)
    tests = django_tests(sdist, version)
    python = host_environment(f"django-{version}", [str(sdist)])
    done = subprocess.run(
        [str(python), str(RUNNER), str(tests), *LABELS, "--parallel=1", "--verbosity=2"],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(
            os.environ,
            MAILMAN_MTA_EXCLUDED=json.dumps(EXCLUDED[version]),
            MAILMAN_MTA_OUTCOMES=str(tmp_path / "outcomes.json"),
            PYTHONDONTWRITEBYTECODE="1",
        ),
    )
    output = done.stdout + done.stderr
    assert "Django's SMTP backend is now mailman_mta.integrations.django.EmailBackend" in output
    outcomes = json.loads((tmp_path / "outcomes.json").read_text())
    total, excluded = EXPECTED[version], EXCLUDED[version]
    failed = {name: outcome for name, outcome in outcomes.items() if outcome not in ("ok", "skipped")}
    assert failed == {}, output[-8000:]
    assert sorted(name for name, outcome in outcomes.items() if outcome == "skipped") == sorted(excluded), output
    assert len(outcomes) == total, output[-3000:]
    assert re.search(rf"^Ran {total} tests", output, re.M), output[-3000:]
    assert done.returncode == 0, output[-3000:]
    DJANGO_COUNTS[version] = (total, total - len(excluded), len(excluded))
