"""Delivery results: per recipient, accepted or refused, temporary or permanent.

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

from .errors import ConfigurationError, TLSError

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
    `error` is the last exception behind a failed transaction, kept for
    logs; `transactions` counts the SMTP transactions attempted.
    """

    recipients: tuple[str, ...]
    refused: dict[str, Failure] = field(default_factory=dict)
    error: BaseException | None = None
    transactions: int = 0

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


def reply_text(reply: bytes | str) -> str:
    """An SMTP reply (smtplib keeps them as bytes) as text."""
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _text(error: smtplib.SMTPResponseException) -> str:
    return reply_text(error.smtp_error)


