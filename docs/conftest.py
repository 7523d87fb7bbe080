"""Run every page in docs/ as a doctest, with ``smtpd`` and ``config`` ready.

Each page gets a fresh `CountingSMTPServer` (``smtpd``) and the default
configuration pointed at it (``config``), like the Mailman doctests
mailman-mta grew from.
"""

from __future__ import annotations

import doctest
import gc
import warnings

import pytest
from sybil import Sybil
from sybil.integration import pytest as sybil_pytest
from sybil.parsers.rest import DocTestParser, PythonCodeBlockParser

from mailman_mta.connection import Connection
from mailman_mta.testing import CountingSMTPServer
from mailman_mta.testing.pytest_plugin import pointed_at


@pytest.fixture(scope="module")
def smtpd():
    with CountingSMTPServer() as server:
        yield server


@pytest.fixture(scope="module")
def config(smtpd):
    with pointed_at(smtpd) as config:
        yield config


def close_connections(namespace: dict) -> None:
    """Close what a page left open, so no socket outlives its server."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for value in list(namespace.values()):
            if isinstance(value, Connection):
                value.close()
        namespace.clear()
        gc.collect()


_sybil_traceback_filter = sybil_pytest.SybilItem._traceback_filter


def _traceback_filter(self, excinfo):
    """sybil's, but for an error that did not come from the example too.

    sybil 10 assumes every failure's traceback passes through the example,
    and raises IndexError otherwise (say, for pytest's own warning about an
    exception no one could catch, raised as an error here), which becomes
    an INTERNALERROR that hides the failure and stops the run.
    """
    try:
        return _sybil_traceback_filter(self, excinfo)
    except IndexError:
        return excinfo.traceback


sybil_pytest.SybilItem._traceback_filter = _traceback_filter

pytest_collect_file = Sybil(
    parsers=[
        DocTestParser(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE),
        PythonCodeBlockParser(),
    ],
    patterns=["*.rst"],
    fixtures=["smtpd", "config"],
    teardown=close_connections,
).pytest()
