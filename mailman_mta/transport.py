"""`SMTPTransport`: the standard library's SMTP client, made safe to debug.

smtplib's debug output goes to stderr and includes the AUTH exchange, whose
base64 is the password in all but name.  This subclass sends the transcript
to the ``mailman_mta.transcript`` logger at DEBUG level and masks everything
the client sends while authenticating.
"""

from __future__ import annotations

import logging
import smtplib

from zope.interface import classImplements

from .interfaces import ITransport

transcript = logging.getLogger("mailman_mta.transcript")

MASK = "***"


class SMTPTransport(smtplib.SMTP):
    """An `smtplib.SMTP` whose ``set_debuglevel(1)`` transcript is logged, masked."""

    _authenticating = False
    _port = 0

    def auth(self, mechanism, authobject, *, initial_response_ok=True):
        self._authenticating = True
        try:
            return super().auth(mechanism, authobject, initial_response_ok=initial_response_ok)
        finally:
            self._authenticating = False

    def _print_debug(self, *args) -> None:
        if self._authenticating and args and args[0] == "send:":
            # Keep "AUTH PLAIN" so the transcript shows what happened.
            sent = args[1] if len(args) > 1 else ""
            words = sent.strip("'\"").split()
            shown = " ".join(words[:2]) + f" {MASK}" if sent.lstrip("'\"").startswith("AUTH") else MASK
            args = ("send:", shown)
        if transcript.isEnabledFor(logging.DEBUG):
            transcript.debug("%s:%s %s", self._host, self._port, " ".join(map(str, args)))

    def connect(self, host="localhost", port=0, source_address=None):
        # smtplib remembers the host only when given to the constructor, and
        # STARTTLS checks the certificate against that remembered name.
        self._host, self._port = host, port
        return super().connect(host, port, source_address)


classImplements(smtplib.SMTP, ITransport)
