"""`Delivery`: send a message and get a per-recipient result, never an exception.

`Connection.sendmail` raises as `smtplib` does, which suits code that was
written for smtplib.  A list server's delivery loop wants something else:
for every recipient, whether the message was accepted, and if not, whether
to try again later (temporary) or give up and bounce (permanent).
`Delivery.deliver` answers exactly that.

Each refused recipient maps to a `Failure`, an ``(code, message)`` pair
whose code says which it is: 4xx is temporary, 5xx permanent.  Failures
that are not about the recipient get codes chosen so that nobody is bounced
for a problem on our side:

==== ===================================================================
444  no answer, or the connection was lost (the message may have arrived
     if it was lost after the end of DATA; it is never re-sent by us)
451  mailman-mta is misconfigured (4.3.5)
454  TLS or authentication with the relay failed (4.7.0)
552  the message is larger than the server accepts (5.3.4)
553  a bad address (5.1.3 recipient, 5.1.7 sender), or a non-ASCII address
     and the server lacks SMTPUTF8 (5.6.7)
554  8-bit content and the server lacks 8BITMIME (5.6.3)
==== ===================================================================

Any other code is the server's own reply to MAIL, RCPT or DATA.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass, field
from typing import NamedTuple

from .config import Configuration
from .connection import Connection
from .envelope import Envelope, MessageInput, check_address, message_bytes
from .errors import ConfigurationError, EnvelopeError, MTAError, TLSError

#: The code for "no answer / connection lost" (not an SMTP reply code).
CONNECTION_LOST = 444


class Failure(NamedTuple):
    """Why one recipient did not get the message: an SMTP-style code and text."""

    code: int
    message: str

    @property
    def permanent(self) -> bool:
        """5xx: do not try again; the recipient or message is at fault."""
        return self.code >= 500

    @property
    def temporary(self) -> bool:
        """4xx: try again later."""
        return not self.permanent


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one `Delivery.deliver` call.

    `refused` maps each recipient (as the caller gave it) that did not get
    the message to its `Failure`; every other recipient was accepted.
    `error` is the exception behind a failure of the whole message, kept
    for logs.
    """

    recipients: tuple[str, ...]
    refused: dict[str, Failure] = field(default_factory=dict)
    error: BaseException | None = None

    @property
    def accepted(self) -> tuple[str, ...]:
        return tuple(r for r in self.recipients if r not in self.refused)

    @property
    def ok(self) -> bool:
        return not self.refused

    @property
    def temporary(self) -> dict[str, Failure]:
        return {r: f for r, f in self.refused.items() if f.temporary}

    @property
    def permanent(self) -> dict[str, Failure]:
        return {r: f for r, f in self.refused.items() if f.permanent}


def failure_of(error: BaseException) -> Failure:
    """The `Failure` that *error* means for every recipient of the message."""
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return Failure(454, f"4.7.0 authentication with the relay failed: {_text(error)}")
    if isinstance(error, TLSError):
        return Failure(454, f"4.7.0 {error}")
    if isinstance(error, ConfigurationError):
        return Failure(451, f"4.3.5 mailman-mta is misconfigured: {error}")
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return Failure(CONNECTION_LOST, f"4.4.2 {error}")
    if isinstance(error, smtplib.SMTPResponseException):
        return Failure(error.smtp_code, _text(error))
    # smtplib.SMTPException is itself an OSError, so this comes after it.
    if isinstance(error, OSError) and not isinstance(error, smtplib.SMTPException):
        return Failure(CONNECTION_LOST, f"4.4.2 {error}")
    return Failure(451, f"4.3.0 {type(error).__name__}: {error}")


def _text(error: smtplib.SMTPResponseException) -> str:
    reply = error.smtp_error
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


class Delivery:
    """Deliver messages over one `Connection`, reporting per recipient.

    :param connection: the connection to use; by default a new
        `Connection` that follows *config*.
    :param config: the configuration for that default connection.
    """

    def __init__(self, connection: Connection | None = None, *, config: Configuration | None = None) -> None:
        self.connection = connection if connection is not None else Connection(config=config)

    def deliver(self, envsender: str, recipients: list[str] | tuple[str, ...], msgtext: MessageInput) -> DeliveryResult:
        """Send *msgtext* to *recipients*; never raises for a delivery failure.

        A recipient address that cannot be used is refused (553) on its own,
        and the message still goes to the others.  Raises `EnvelopeError`
        only for an empty recipient list or a message that is not text,
        bytes or an email message: mistakes in the calling code.
        """
        if isinstance(recipients, str):
            recipients = [recipients]
        recipients = tuple(recipients)
        if not recipients:
            raise EnvelopeError("no recipients: at least one is needed")
        data = message_bytes(msgtext)
        refused: dict[str, Failure] = {}
        try:
            check_address(envsender, "sender")
        except EnvelopeError as error:
            bad_sender = Failure(553, f"5.1.7 {error}")
            return DeliveryResult(recipients, {r: bad_sender for r in recipients}, error)
        usable = []
        for recipient in recipients:
            try:
                usable.append(check_address(recipient, "recipient"))
            except EnvelopeError as error:
                refused[recipient] = Failure(553, f"5.1.3 {error}")
        if not usable:
            return DeliveryResult(recipients, refused)
        envelope = Envelope(envsender, list(usable), data, tuple(usable))
        try:
            server_refused = self.connection.send(envelope)
        except smtplib.SMTPRecipientsRefused as error:
            refused.update(self._per_recipient(envelope, error.recipients))
            return DeliveryResult(recipients, refused, error)
        except (smtplib.SMTPException, OSError, MTAError) as error:
            failure = failure_of(error)
            refused.update({r: failure for r in usable})
            return DeliveryResult(recipients, refused, error)
        refused.update(self._per_recipient(envelope, server_refused))
        return DeliveryResult(recipients, refused)

    @staticmethod
    def _per_recipient(envelope: Envelope, server_refused: dict) -> dict[str, Failure]:
        """Map refusals of the addresses sent back to the caller's addresses.

        Plugins may have rewritten the recipients (devmode); when they kept
        one address per original, the original is reported.
        """
        sent, asked = envelope.recipients, envelope.original_recipients
        originals: dict[str, list[str]] = {}
        if len(sent) == len(asked):
            for sent_address, asked_address in zip(sent, asked):
                originals.setdefault(sent_address, []).append(asked_address)
        failures: dict[str, Failure] = {}
        for address, (code, reply) in server_refused.items():
            text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
            for original in originals.get(address, [address]):
                failures[original] = Failure(code, text)
        return failures

    def close(self) -> None:
        """Say goodbye to the server."""
        self.connection.quit()

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
