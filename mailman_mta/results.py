"""Delivery results: per recipient, accepted or refused, temporary or permanent.

Each refused recipient maps to a `Failure`, a ``(code, message)`` pair
whose code is the verdict: 4xx is temporary (try again later), 5xx is
permanent (give up, and perhaps count a bounce against the recipient).  A
list server acts on that verdict for thousands of members at once, so the
rule is that **nothing is permanent unless the server refused that
recipient with a 5xx** at RCPT, or refused the message with a 5xx at DATA
or the end of DATA, after the recipient had been named.  Every problem on
our side of the conversation, or with the relay itself, is temporary; its
message keeps the server's own reply.  The rules, with their reasons, are
`judge_reply` and `failure_of`; docs/failures.rst has them as one table,
which tests/test_classification.py checks against this code.

Codes that are not the server's own:

==== ===================================================================
444  no usable answer: the connection was lost, a reply did not come in
     time, or could not be understood (4.4.2, 4.5.0); when that happened
     after the end of DATA the message may have arrived, and is never
     re-sent by mailman-mta
451  mailman-mta, a plugin, or the envelope sender is the problem
     (4.3.0, 4.3.5, 4.1.7), or the relay lacks an extension the message
     needs (4.6.3, 4.6.7)
452  the message is larger than the relay accepts (4.3.4)
454  TLS or authentication with the relay failed or is missing (4.7.0)
553  the recipient's address is not a mailbox SMTP can carry (5.1.3)
==== ===================================================================
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import ConfigurationError, SMTPProtocolError, TLSError, VERPError
from .smtp.replies import Reply
from .smtp.transaction import DATA, END_OF_DATA, MAIL, RCPT, TransactionResult

#: The code for "no usable answer" (not an SMTP reply code).
CONNECTION_LOST = 444

#: Replies that say the server did not understand our command (RFC 5321
#: 4.2.4 and 4.3.2; 555 is RFC 5321's "parameters not recognized"): a
#: disagreement about the protocol, never a verdict on a recipient.
PROTOCOL_CODES = frozenset({500, 502, 503, 504, 555})


class Failure(NamedTuple):
    """Why one recipient did not get the message: an SMTP-style code and text."""

    code: int
    message: str

    @property
    def permanent(self) -> bool:
        """5xx: do not try again; the recipient or the message is at fault."""
        return self.code >= 500

    @property
    def temporary(self) -> bool:
        """4xx: try again later."""
        return not self.permanent


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one `Delivery.deliver` call.

    `refused` maps each recipient (as the caller gave it) that did not get
    the message to its `Failure`, in the order of `recipients`; every other
    recipient was accepted.  `error` is the last exception behind a failed
    transaction, kept for logs; `transactions` counts the SMTP transactions
    attempted.  `uncertain` holds the refused recipients that may have got
    the message after all: the connection was lost, or the delivery
    interrupted, after the whole message had been sent (their failures are
    temporary; mailman-mta never sends those again by itself).  `dropped`
    maps each recipient a plugin left out (`Envelope.drop`) to the reason:
    neither accepted nor refused, so neither retried nor a bounce.
    `relays` maps each recipient whose transaction reached a relay to that
    relay's (host, port); one whose transaction never connected is not in
    it.
    """

    recipients: tuple[str, ...]
    refused: dict[str, Failure] = field(default_factory=dict)
    error: BaseException | None = None
    transactions: int = 0
    uncertain: frozenset[str] = frozenset()
    dropped: dict[str, str] = field(default_factory=dict)
    relays: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def accepted(self) -> tuple[str, ...]:
        return tuple(r for r in self.recipients if r not in self.refused and r not in self.dropped)

    @property
    def ok(self) -> bool:
        """Was every recipient accepted (none refused, none dropped)?"""
        return not self.refused and not self.dropped

    @property
    def temporary(self) -> dict[str, Failure]:
        return {r: f for r, f in self.refused.items() if f.temporary}

    @property
    def permanent(self) -> dict[str, Failure]:
        return {r: f for r, f in self.refused.items() if f.permanent}


def judge_reply(stage: str, code: int, text: bytes | str) -> Failure:
    """The `Failure` a server reply *code* at *stage* means for a recipient.

    *stage* is where the reply came: ``"greeting"``, `MAIL`, `RCPT`, `DATA`
    or `END_OF_DATA` (see `mailman_mta.transaction`).
    """
    said = f"{code} {reply_text(text)}".rstrip()
    if stage == "greeting":
        # RFC 5321 3.1: a 554 (or 421) greeting means this server will not
        # talk to us now; it says nothing about any recipient.
        return Failure(421, f"4.3.2 the server would not take mail: {said}")
    if code == 530:
        # RFC 4954 section 6: "authentication required" is our configuration.
        return Failure(454, f"4.7.0 the relay requires authentication ([mta] smtp_user): {said}")
    if code == 552:
        # RFC 5321 4.5.3.1.10: a client should take 552 as temporary (the
        # correct code for "too many recipients" is 452); Mailman does too.
        return Failure(452, f"4.3.1 taken as temporary (RFC 5321 4.5.3.1.10): {said}")
    if code < 500:
        return Failure(code, reply_text(text))
    if code in PROTOCOL_CODES:
        # The server did not understand what we sent: our side.
        return Failure(451, f"4.5.0 the relay did not understand the {stage} command: {said}")
    if stage == MAIL:
        # The envelope sender is the list's own address, refused before
        # any recipient was looked at: never the recipients' fault.
        return Failure(451, f"4.1.7 the relay refused the envelope sender: {said}")
    # A 5xx at RCPT is the server's verdict on that recipient; at DATA or
    # the end of DATA, on this message for the recipients it had accepted.
    return Failure(code, reply_text(text))


def failure_of(error: BaseException, stage: str | None = None) -> Failure:
    """The `Failure` that *error* means for every recipient it stopped.

    *stage* is where it happened (see `TransactionResult.stage`), which
    matters for a lost connection after the end of DATA.
    """
    if isinstance(error, smtplib.SMTPConnectError):
        return judge_reply("greeting", error.smtp_code, error.smtp_error)
    if isinstance(error, smtplib.SMTPAuthenticationError):
        # RFC 4954: our credentials; the recipients are not to blame.
        return Failure(454, f"4.7.0 authentication with the relay failed: {_text(error)}")
    if isinstance(error, smtplib.SMTPNotSupportedError) and not isinstance(error, smtplib.SMTPResponseException):
        return Failure(454, f"4.7.0 {error}")
    if isinstance(error, TLSError):
        # RFC 3207: TLS is between us and the relay.
        return Failure(454, f"4.7.0 {error}")
    if isinstance(error, VERPError):
        # The recipient's address cannot be encoded in a VERP sender.
        return Failure(553, f"5.1.3 {error}")
    if isinstance(error, ConfigurationError):
        return Failure(451, f"4.3.5 mailman-mta is misconfigured: {error}")
    if isinstance(error, SMTPProtocolError):
        return Failure(CONNECTION_LOST, f"4.5.0 {error}{_MAYBE if stage == END_OF_DATA else ''}")
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return Failure(CONNECTION_LOST, f"4.4.2 {error}{_MAYBE if stage == END_OF_DATA else ''}")
    if isinstance(error, smtplib.SMTPHeloError):
        return Failure(451, f"4.5.0 the relay refused EHLO and HELO: {error.smtp_code} {_text(error)}")
    if isinstance(error, smtplib.SMTPResponseException):
        return judge_reply(stage or DATA, error.smtp_code, error.smtp_error)
    # smtplib.SMTPException is itself an OSError, so this comes after it.
    if isinstance(error, OSError) and not isinstance(error, smtplib.SMTPException):
        return Failure(CONNECTION_LOST, f"4.4.2 {error}")
    return Failure(451, f"4.3.0 {type(error).__name__}: {error}")


_MAYBE = " (the whole message had been sent, so it may have arrived; it is not sent again)"


def failures_of(result: TransactionResult) -> dict[int, Failure]:
    """The `Failure` of each recipient (by index) who did not get the message.

    A transaction whose replies may not line up with its commands
    (``result.in_step`` is false) gives no verdicts at all: a shifted reply
    can make one recipient's refusal look like another's, so every
    recipient gets the same temporary failure.
    """
    if not result.in_step:
        assert result.error is not None, "a transaction out of step failed"
        failure = failure_of(result.error, result.stage)
        return dict.fromkeys(range(len(result.recipients)), failure)
    failures = {}
    for index, own in enumerate(result.rcpt_replies):
        reply, error = result.outcome(index)
        if reply is not None:
            failures[index] = judge_reply(RCPT if reply is own else result.stage or DATA, reply.code, reply.text)
        elif error is not None:
            failures[index] = failure_of(error, result.stage)
    return failures


def ending_failure(result: TransactionResult) -> Failure | None:
    """What stopped the transaction as a whole, or None if it delivered."""
    if result.error is None:
        return None
    if result.reply is not None:
        return judge_reply(result.stage or DATA, result.reply.code, result.reply.text)
    if isinstance(result.error, smtplib.SMTPRecipientsRefused):
        return Failure(451, "4.3.0 the server refused every address the message was sent to")
    return failure_of(result.error, result.stage)


def reply_text(reply: bytes | str) -> str:
    """An SMTP reply (smtplib keeps them as bytes) as text, at most `KEPT_OCTETS` of it.

    What is kept for each refused recipient is bounded whatever a relay (or
    a foreign transport) says; the cut is marked.
    """
    if isinstance(reply, str):
        reply = reply.encode("utf-8", "surrogateescape")
    return Reply.of(0, reply).kept().text.decode("utf-8", "replace")


def _text(error: smtplib.SMTPResponseException) -> str:
    return reply_text(error.smtp_error)
