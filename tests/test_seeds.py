"""Run the two documents mailman-mta was specified from, verbatim.

The seeds are Mailman's "MTA connections" doctest pages (``000_`` for Python
2, ``001_`` for Python 3 with SMTP AUTH).  They live outside the repository,
in ``../shared/seeds`` beside the clone (or wherever ``MAILMAN_MTA_SEEDS``
points).  Exactly two translations are made, and no others:

- ``from mailman.mta.connection import Connection`` resolves to
  `mailman_mta.connection`, through a `sys.modules` alias that exists only
  during the test (the package never ships a ``mailman`` module);
- the ``000_`` page's one Python 2 ``print`` statement becomes a call.
"""

from __future__ import annotations

import doctest
import gc
import io
import os
import sys
import types
import warnings
from pathlib import Path

import pytest

import mailman_mta.connection

SEEDS = Path(os.environ.get("MAILMAN_MTA_SEEDS") or Path(__file__).resolve().parents[2] / "shared" / "seeds")
PY2_PRINT = "print messages[0].as_string()"


def seed_files() -> list[Path]:
    return sorted(SEEDS.glob("*.txt")) if SEEDS.is_dir() else []


def seed_source(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if path.name.startswith("000_"):
        assert text.count(PY2_PRINT) == 1, "the 000_ page should hold exactly one Python 2 print"
        text = text.replace(PY2_PRINT, "print(messages[0].as_string())")
    return text


def test_seeds_are_present() -> None:
    """Fail in CI, skip loudly elsewhere, when the seed documents are missing."""
    if not seed_files():
        message = f"the seed documents are not at {SEEDS} (set MAILMAN_MTA_SEEDS)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert {p.name[:4] for p in seed_files()} >= {"000_", "001_"}


@pytest.fixture
def mailman_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``mailman.mta.connection`` mean ``mailman_mta.connection``, for one test."""
    mailman = types.ModuleType("mailman")
    mailman.__path__ = []
    mta = types.ModuleType("mailman.mta")
    mta.__path__ = []
    setattr(mta, "connection", mailman_mta.connection)  # noqa: B010 (modules made here have no such attribute)
    setattr(mailman, "mta", mta)  # noqa: B010
    monkeypatch.setitem(sys.modules, "mailman", mailman)
    monkeypatch.setitem(sys.modules, "mailman.mta", mta)
    monkeypatch.setitem(sys.modules, "mailman.mta.connection", mailman_mta.connection)


@pytest.mark.parametrize("path", seed_files(), ids=lambda p: p.name)
def test_seed_document(path: Path, mta_config, mta_smtpd, mailman_alias) -> None:
    globs = {"config": mta_config, "smtpd": mta_smtpd, "__name__": "seed"}
    test = doctest.DocTestParser().get_doctest(seed_source(path), globs, path.name, str(path), 0)
    assert len(test.examples) > 30, "the seed should hold dozens of examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    # The seeds drop connections without QUIT on purpose (reset() never
    # quits); their sockets are collected here, with the warning about that.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            result = runner.run(test, out=report.write, clear_globs=False)
        finally:
            for value in list(test.globs.values()):
                if isinstance(value, mailman_mta.connection.Connection):
                    value.close()
            test.globs.clear()
            gc.collect()
    assert result.failed == 0, report.getvalue()
    assert result.attempted == len(test.examples)
