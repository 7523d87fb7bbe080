"""Test helpers that ship with mailman-mta, for its own suite and for plugin authors.

`CountingSMTPServer` is a real SMTP server (aiosmtpd) on loopback that
records what it receives, with a few scripted faults.  `ScriptedSMTPServer`
is a raw-socket server whose every answer a script can replace with any
bytes, for rehearsing what a broken or hostile relay does.  The pytest plugin in `mailman_mta.testing.pytest_plugin`
is registered through the ``pytest11`` entry point and gives every test
session the ``mta_smtpd`` and ``mta_config`` fixtures.
"""

from .scripted import Action, ScriptedSMTPServer
from .server import DEFAULT_CREDENTIALS, FAULT_POINTS, CountingSMTPServer, Fault, ReceivedMessage

__all__ = [
    "DEFAULT_CREDENTIALS",
    "FAULT_POINTS",
    "Action",
    "CountingSMTPServer",
    "Fault",
    "ReceivedMessage",
    "ScriptedSMTPServer",
]
