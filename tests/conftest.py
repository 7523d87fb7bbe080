"""Suite-wide rules, and the fixtures several test modules share."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: pytest keeps its rewritten test modules in __pycache__ only where bytecode
#: may be written; under PYTHONDONTWRITEBYTECODE (set in many containers) every
#: process of every run compiled them all again, a third of the inner loop's CPU.
sys.dont_write_bytecode = False

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailman_mta.manager import registry
from mailman_mta.testing import CountingSMTPServer, workers
from mailman_mta.testing import postfix as testbed

#: Markers of tests that start real hosts (Postfix, Mailman, Django, Celery and Redis).
HOST_MARKERS = frozenset({"postfix", "mailman", "django", "celery"})

#: Modules that test the project rather than the product (builds, installs,
#: the tools, the benchmarks) or search at length (property tests of a
#: hostile relay): slow by nature, so left out of the inner loop.
SLOW_MODULES = frozenset(
    {"test_packaging", "test_tooling", "test_benchmarks", "test_example_plugin", "test_hostile_relay", "test_imports"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` what the inner loop (``pytest -m "not slow"``) leaves out; the full run runs everything."""
    for item in items:
        module = item.path.stem
        if module in SLOW_MODULES or any(item.get_closest_marker(name) for name in HOST_MARKERS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """Python's own SIGINT handler, for tests that press Ctrl-C (``_thread.interrupt_main``).

    A pytest started in the background inherits SIGINT ignored, and then
    ``interrupt_main`` does nothing; these tests must behave the same
    whatever the shell did.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory) -> tuple[Path, bytes]:
    """An RSA key for DKIM or ARC signing, in a PEM file, and the DNS TXT record that publishes it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("keys") / "private.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


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
def redis_installed() -> None:
    """Debian's redis-server, installed when missing and this process may (root + apt-get).

    The packaged service is stopped again: the tests run servers of their
    own (`mailman_mta.testing.workers.RedisServer`).
    """
    if workers.redis_unavailable() is not None and os.geteuid() == 0 and not os.environ.get("MAILMAN_MTA_NO_INSTALL"):
        if shutil.which("apt-get") is not None:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", workers.REDIS_PACKAGE],
                check=True,
                env=env,
            )
            subprocess.run(["service", "redis-server", "stop"], check=False, env=env, capture_output=True)
    reason = workers.redis_unavailable()
    if reason is not None:
        pytest.skip(f"no Redis here: {reason}")


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


def _test_module(name: str):
    """The test module *name*, if this run imported it (importlib mode gives it a longer name)."""
    return next((m for key, m in list(sys.modules.items()) if key.rpartition(".")[2] == name), None)


def pytest_terminal_summary(terminalreporter) -> None:
    if POSTFIX_TIMINGS:
        parts = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in POSTFIX_TIMINGS.items())
        terminalreporter.write_line(f"Postfix testbed set-up: {parts}")
    django = getattr(_test_module("test_django_suite"), "DJANGO_COUNTS", None)
    for version, (total, passed, excluded) in sorted((django or {}).items()):
        terminalreporter.write_line(
            f"Django {version}'s SMTP backend tests on our backend, from the wheel: "
            f"{passed} of {total} passed, {excluded} excluded"
        )
    counts = getattr(_test_module("test_mailman"), "MAILMAN_COUNTS", None)
    if counts:
        terminalreporter.write_line(
            "GNU Mailman 3.3.10 mta suite on mailman-mta's Connection: "
            f"{counts.get('mailman_passed', '?')} of {counts.get('mailman_tests', '?')} passed, "
            f"{counts.get('mailman_excluded', '?')} excluded; our outgoing tests in Mailman's layers: "
            f"{counts.get('outgoing_passed', '?')} of {counts.get('outgoing_tests', '?')} passed"
        )


# -- what users install ------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]

#: What is never part of a build: caches, environments and earlier builds.
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache")


@dataclass(frozen=True)
class Distributions:
    """This checkout as users get it: its sdist, and the wheel built from that sdist."""

    sdist: Path
    wheel: Path


@pytest.fixture(scope="session")
def distributions(tmp_path_factory) -> Distributions:
    """Build the sdist, then the wheel from it, as ``python -m build`` does for a release.

    Built from a copy, since setuptools writes build/ and *.egg-info into
    the tree it builds, and the checkout must stay as git left it.
    """
    where = tmp_path_factory.mktemp("distributions")
    source = where / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(where), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (sdist,) = where.glob("mailman[-_]mta-*.tar.gz")
    (wheel,) = where.glob("mailman_mta-*.whl")
    return Distributions(sdist, wheel)


def _pip(python: Path, *arguments: str) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *arguments], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(arguments)} failed: {done.stderr[-1500:]}")


def install_environment(venv: Path, requirements: list[str], wheel: Path) -> Path:
    """Make *venv* hold *requirements* and *wheel* (not editable); return its Python.

    The requirements are installed once (a stamp file remembers them); the
    wheel every time, even over one of the same version, with our
    dependencies resolved against what the requirements pinned.  Raises
    RuntimeError (or OSError) saying what failed.  Then checks that
    mailman_mta is imported from the environment, not from a checkout.
    """
    python = venv / "bin" / "python"
    stamp = venv / "installed.txt"
    wanted = "\n".join(requirements)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    if requirements and (not stamp.exists() or stamp.read_text() != wanted):
        _pip(python, *requirements)
        stamp.write_text(wanted)
    _pip(python, str(wheel))
    _pip(python, "--force-reinstall", "--no-deps", str(wheel))
    where = subprocess.run(
        [str(python), "-c", "import mailman_mta; print(mailman_mta.__file__)"],
        capture_output=True,
        text=True,
        cwd=venv,
    ).stdout.strip()
    if not where.startswith(str(venv)):
        raise RuntimeError(f"mailman_mta is imported from {where!r}, not from the wheel installed in {venv}")
    return python


@pytest.fixture(scope="session")
def host_environment(distributions) -> Callable[[str, list[str]], Path]:
    """``host_environment(name, requirements)``: the Python of a virtual environment holding *requirements*
    and this checkout's wheel, installed as users install it (see `install_environment`).

    For the frameworks mailman-mta plugs into (GNU Mailman, Django), which
    pin their own versions of our dependencies and are never installed in
    the test environment itself.  Environments are kept between runs in
    ``$MAILMAN_MTA_HOSTS`` (default ``~/.cache/mailman-mta``), one folder
    per *name*.  When one cannot be built the test skips, saying why (and
    under CI=true a skip fails the run).
    """
    cache = Path(os.environ.get("MAILMAN_MTA_HOSTS", Path.home() / ".cache" / "mailman-mta"))
    built: dict[str, Path] = {}

    def build(name: str, requirements: list[str]) -> Path:
        if name not in built:
            try:
                built[name] = install_environment(cache / name, requirements, distributions.wheel)
            except (OSError, subprocess.SubprocessError, RuntimeError) as error:
                pytest.skip(f"cannot build the {name} environment in {cache / name}: {error}")
        return built[name]

    return build


@pytest.fixture
def fresh_environment(distributions, tmp_path) -> Path:
    """The Python of a new virtual environment holding only the wheel and what it requires."""
    return install_environment(tmp_path / "venv", [], distributions.wheel)
