"""Exceptions raised by mailman-mta itself.

Errors that come from the SMTP conversation are the standard library's
`smtplib.SMTPException` family and propagate unchanged, so code written for
`smtplib` keeps working.  The classes here cover what happens before any
SMTP: bad configuration and bad input.
"""

from __future__ import annotations


class MTAError(Exception):
    """Base class of every exception mailman-mta raises itself."""


class ConfigurationError(MTAError, ValueError):
    """A configuration layer, section or key is wrong.

    The message names what was wrong; `layer`, `section` and `key` carry the
    same facts for programs (each may be None where it does not apply).
    """

    def __init__(
        self,
        message: str,
        *,
        layer: str | None = None,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.layer = layer
        self.section = section
        self.key = key


class EnvelopeError(MTAError, ValueError):
    """A sender, recipient or message cannot be sent as given.

    Raised before anything is written to the server, so nothing was sent.
    """


class NoTransportError(MTAError):
    """No enabled plugin was able to open a connection to the MTA."""
