"""Exceptions raised by mailman-mta itself, all under `MTAError`.

Each also has the standard base that means the same thing, so code that
catches those keeps working: a lost or unreachable connection is a
`ConnectionError`, a timeout a `TimeoutError`, a failed TLS handshake an
`ssl.SSLError`, bad input a `ValueError`, and what smtplib would raise
for the same event is a base too (`smtplib.SMTPServerDisconnected` for a
reply that never came).  Replies the server gives (a refused recipient, a
refused message) are reported as `smtplib` reports them, by
`Connection.sendmail`, and in results by `Delivery`; those exceptions are
smtplib's own.  `DeliveryInterrupted` alone is not an `MTAError`: it is a
`KeyboardInterrupt`, so that ``except Exception`` never swallows Ctrl-C.
tests/test_errors.py pins every class's bases.
"""

from __future__ import annotations

import smtplib
import ssl


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


class MTAConnectionError(MTAError, ConnectionError):
    """The MTA could not be reached, or the connection could not be secured.

    A `ConnectionError` (an `OSError`), which is what socket failures
    raise, so code that already handles those (Django's
    ``fail_silently``, GNU Mailman's delivery) keeps working.  The message
    names the host and port.
    """


class TLSError(MTAConnectionError):
    """TLS was required and could not be set up (not offered, or refused)."""


class TLSHandshakeError(TLSError, ssl.SSLError):
    """The TLS handshake failed: an unverifiable certificate, or no TLS at all on the other side.

    Also the `ssl.SSLError` that `smtplib` and `ssl` raise for it, so code
    written for them (Django's SMTP backend tests) catches it.
    """

    def __str__(self) -> str:
        # ssl.SSLError would show the arguments' tuple.
        return str(self.args[0]) if self.args else ""


class STARTTLSNotOffered(TLSError, smtplib.SMTPNotSupportedError):
    """``secure_mode`` is starttls and the server does not offer STARTTLS.

    Both a `TLSError` and what smtplib raises for it
    (`smtplib.SMTPNotSupportedError`), so code written for smtplib, such as
    GNU Mailman's, catches it where it expects to.
    """


class ConnectTimeoutError(MTAConnectionError, TimeoutError):
    """The TCP connection to the MTA was not made within ``connect_timeout``.

    Distinct from `SMTPTimeoutError` (a connected server that did not
    answer a command): nothing was said, so nothing can have been sent.
    """


class SMTPTimeoutError(MTAError, smtplib.SMTPServerDisconnected, TimeoutError):
    """The MTA did not answer in time.

    A subclass of `smtplib.SMTPServerDisconnected`, since the connection is
    closed when it happens, and a `TimeoutError`.  The message names the
    host, the port, the command that went unanswered and the timeout.
    """


class SMTPProtocolError(MTAError, smtplib.SMTPServerDisconnected):
    """The server said something that is not an SMTP reply, or too much of it.

    A line that is not ``NNN text``, a multi-line reply whose codes
    disagree, a line or reply over the size limits (see
    `mailman_mta.replies`), or data sent where no reply was due.  The
    connection is closed, since what follows can no longer be matched to
    our commands; like a lost connection it is a temporary failure.  The
    message names the host, the port and the command.
    """


class UnsendableMessageError(MTAError, smtplib.SMTPResponseException):
    """The message cannot be sent to this server as it is, so it was not.

    Raised before MAIL FROM, with an SMTP-style code that says why, always
    temporary since the recipients are not to blame: 452 (4.3.4) for a
    message larger than the server's SIZE, 451 (4.6.3) for 8-bit content
    when the server lacks 8BITMIME, 451 (4.6.7) for non-ASCII addresses
    when it lacks SMTPUTF8.  Nothing is rewritten to make it fit.
    """

    def __init__(self, code: int, message: str) -> None:
        smtplib.SMTPResponseException.__init__(self, code, message)

    def __str__(self) -> str:
        text = self.smtp_error.decode("utf-8", "replace") if isinstance(self.smtp_error, bytes) else self.smtp_error
        return f"{self.smtp_code} {text}"


class SMTPUTF8NotOffered(UnsendableMessageError, smtplib.SMTPNotSupportedError):
    """An envelope address is not ASCII and the server lacks SMTPUTF8 (451 4.6.7).

    Also the `smtplib.SMTPNotSupportedError` smtplib raises in that case,
    so code written for smtplib catches it; either way it is temporary.
    """


class DeliveryInterrupted(KeyboardInterrupt):
    """Ctrl-C during `Delivery.deliver` or `deliver_many`, with what was done by then.

    A `KeyboardInterrupt`, so whatever stops a program on Ctrl-C still
    does.  `results` holds a `mailman_mta.results.DeliveryResult` for every
    post begun whose result had not been handed out yet, in order:
    recipients not refused got the message; refused ones did not, or were
    not attempted; those in a result's ``uncertain`` may have (the
    connection was cut after the whole message was sent).
    """

    def __init__(self, results: list) -> None:
        super().__init__(f"delivery interrupted after {len(results)} post(s) were begun")
        self.results = results

    @property
    def result(self):
        """The first (for `Delivery.deliver`, the only) post's result."""
        return self.results[0]


class VERPError(MTAError, ValueError):
    """An address cannot be VERP-encoded, or is not a VERP address."""
