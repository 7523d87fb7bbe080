"""nose2 plugin module: run GNU Mailman's tests with mailman-mta's Connection in place of Mailman's.

Loaded with ``--plugin mailman_suite.swap`` (see tests/test_mailman.py),
early enough that every test module imports our class: the two names
Mailman binds (`mailman.mta.connection.Connection`, and the copy in
`mailman.mta.base`) are rebound to `mailman_mta.connection.Connection`
itself, with no adapter.  Importing `mailman_mta.integrations.mailman`
makes mailman-mta's configuration follow Mailman's, as it does in a site
that delivers through mailman-mta.

Tests of Mailman's private internals, which no other class can pass, are
skipped with their reason, so the run's report names them.
"""

import sys
import unittest

import mailman.mta.base
import mailman.mta.connection
import mailman.mta.tests.test_connection

import mailman_mta.integrations.mailman  # noqa: F401  (follows Mailman's configuration)
from mailman_mta.connection import Connection

mailman.mta.connection.Connection = Connection
mailman.mta.base.Connection = Connection
print(f"mailman-mta: Mailman's Connection is now {Connection.__module__}.{Connection.__qualname__}", file=sys.stderr)

#: (test class, method) -> why it cannot pass on another class.
EXCLUDED = {
    (mailman.mta.tests.test_connection.TestSMTPConnectionCount, "test_exception_is_raised_from_connect"): (
        "mocks smtplib.SMTP and calls Mailman's private Connection._connect()"
    ),
}

for (case, name), reason in EXCLUDED.items():
    setattr(case, name, unittest.skip(f"excluded: {reason}")(getattr(case, name)))
