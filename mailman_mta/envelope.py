"""`Envelope`: one message on its way out, as the hooks see and change it.

Plugins rewrite recipients and transform message bytes by mutating the
envelope they are handed (as pytest's ``pytest_collection_modifyitems``
mutates its list), so several plugins compose without knowing of each other.
"""

from __future__ import annotations

import copy
import email.message
import io
import re
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from typing import NamedTuple

from .addresses import MAX_ADDRESS_OCTETS, mailbox_problem
from .errors import EnvelopeError

MessageInput = str | bytes | bytearray | email.message.Message

__all__ = ["MAX_ADDRESS_OCTETS", "Envelope", "MessageInput", "Verdict", "check_address", "crlf", "message_bytes"]

#: Headers that name blind-copy recipients: they must not reach anyone.
BLIND_HEADERS = ("Bcc", "Resent-Bcc")


def check_address(address: object, role: str) -> str:
    """Return *address* if it can go on the wire as it is, else raise `EnvelopeError`.

    *role* names the address in the error ("sender", "recipient 3").  The
    address must be an RFC 5321 mailbox (see `mailman_mta.addresses`) of
    at most `MAX_ADDRESS_OCTETS`; the empty sender is allowed (the null
    reverse-path of bounces), an empty recipient is not.
    """
    if not isinstance(address, str):
        raise EnvelopeError(f"{role} must be a string, not {type(address).__name__}: {_shown(address)}")
    if not address:
        if role == "sender":
            return address
        raise EnvelopeError(f"{role} is empty")
    problem = mailbox_problem(address)
    if problem is not None:
        raise EnvelopeError(f"{role} {_shown(address)} is not an envelope address: {problem}")
    if len(address) > MAX_ADDRESS_OCTETS // 4 and len(address.encode("utf-8")) > MAX_ADDRESS_OCTETS:
        raise EnvelopeError(
            f"{role} is {len(address.encode('utf-8'))} octets long; "
            f"SMTP allows at most {MAX_ADDRESS_OCTETS} (RFC 5321 4.5.3.1.3): {address[:40]!r}..."
        )
    return address


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


_LINE_END = re.compile(rb"\r\n|\r|\n")


def crlf(data: bytes) -> bytes:
    """*data* with every line ending (CRLF, bare LF, bare CR) made CRLF.

    SMTP requires CRLF, and a bare LF or CR passed on as it is is what
    "SMTP smuggling" exploits.  Costs no copy when *data* is already CRLF
    throughout, and one `bytes.replace` when it uses LF alone.
    """
    carriage_returns = data.count(b"\r")
    line_feeds = data.count(b"\n")
    if carriage_returns == line_feeds and data.count(b"\r\n") == line_feeds:
        return data
    if not carriage_returns:
        return data.replace(b"\n", b"\r\n")
    return _LINE_END.sub(b"\r\n", data)


def message_bytes(message: MessageInput) -> bytes:
    """Return *message* as the bytes to send, with CRLF line endings.

    `str` is encoded as UTF-8 (never squeezed into ASCII with ``?``; a
    string decoded with ``surrogateescape`` gets its original bytes back),
    `bytes` are taken as they are, and an `email.message.Message` is
    flattened with its own policy, no ``>From`` mangling, and without its
    ``Bcc:`` and ``Resent-Bcc:`` headers, as `smtplib.SMTP.send_message`
    does.  Then every line ending becomes CRLF (see `crlf`).  No other
    byte is changed.
    """
    if isinstance(message, bytes):
        data = message
    elif isinstance(message, bytearray):
        data = bytes(message)
    elif isinstance(message, str):
        try:
            data = message.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as error:
            raise EnvelopeError(
                f"the message text has {error.object[error.start]!r} at position {error.start}: a lone "
                "surrogate, which has no UTF-8 form (decode bytes with errors='surrogateescape' to keep them)"
            ) from None
    elif isinstance(message, email.message.Message):
        if any(name in message for name in BLIND_HEADERS):
            message = copy.copy(message)
            for name in BLIND_HEADERS:
                del message[name]
        # BytesGenerator, not as_bytes(): subclasses (GNU Mailman's) override
        # as_bytes() without its policy argument.
        buffer = io.BytesIO()
        BytesGenerator(buffer, mangle_from_=False, policy=message.policy.clone(linesep="\r\n")).flatten(message)
        data = buffer.getvalue()
    else:
        raise EnvelopeError(f"message must be str, bytes or email.message.Message, not {type(message).__name__}")
    return crlf(data)


class Verdict(NamedTuple):
    """What a plugin decided for one recipient in `mta_screen_recipients`.

    `code` is the reply the recipient is refused with (4xx: temporary, 5xx:
    permanent), or None when the plugin dropped it: not sent, and reported
    as dropped, neither accepted nor to be tried again.  `text` is the
    reply's text, or why it was dropped.
    """

    code: int | None
    text: str

    @property
    def dropped(self) -> bool:
        return self.code is None


#: The code a dropped recipient has in a `Connection.sendmail` refused
#: dict, which has a (code, reply) for everyone not accepted: no SMTP
#: reply, as nothing was said to the server about it.
DROPPED = 0


@dataclass(eq=False)
class Envelope:
    """What one SMTP transaction sends.

    `sender` and `recipients` are the envelope addresses (MAIL FROM and RCPT
    TO), `message` the exact bytes after DATA.  `original_recipients` keeps
    the recipients the caller asked for, whatever plugins later rewrite.
    `mail_options` and `rcpt_options` are ESMTP parameters for MAIL and RCPT
    (``"BODY=8BITMIME"``, ``"NOTIFY=NEVER"``).  `verdicts` holds what
    plugins decided for recipients they took out (see `refuse` and `drop`),
    by the address the caller gave.  `copy_for` names the recipient of a
    personal copy (``[mta] delivery`` individual or verp), which
    `mta_prepare_copy` prepares on the thread that sends it.
    """

    sender: str
    recipients: list[str]
    message: bytes
    original_recipients: tuple[str, ...] = ()
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    copy_for: str | None = None
    #: The (sender, recipients) last checked, so `check` can skip an
    #: envelope no plugin changed.
    _checked: tuple[str, tuple[str, ...]] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, sender: str, recipients: str | list[str] | tuple[str, ...], message: MessageInput) -> Envelope:
        """Check the caller's input and make an envelope of it.

        A lone string recipient is taken as a list of one, as smtplib does.
        Raises `EnvelopeError` naming the bad address before anything is sent.
        """
        if isinstance(recipients, str):
            recipients = [recipients]
        recipients = list(recipients)
        if not recipients:
            raise EnvelopeError("no recipients: at least one is needed")
        envelope = cls(sender, recipients, message_bytes(message), tuple(recipients))
        envelope.check()
        return envelope

    def check(self) -> None:
        """Raise `EnvelopeError` unless every address can go on the wire as it is.

        Cheap when nothing changed since the last check: only addresses
        that plugins set are checked again.
        """
        current = (self.sender, tuple(self.recipients))
        checked = self._checked
        if current == checked:
            return
        if checked is None or current[0] != checked[0]:
            check_address(self.sender, "sender")
        if not self.recipients:
            raise EnvelopeError("a plugin removed every recipient")
        if checked is None or current[1] != checked[1]:
            for number, recipient in enumerate(self.recipients, 1):
                check_address(recipient, f"recipient {number}")
        self._checked = current

    def mark_checked(self) -> None:
        """Record that the caller has checked every address already."""
        self._checked = (self.sender, tuple(self.recipients))

    def refuse(self, recipient: str, code: int, text: str) -> None:
        """Refuse *recipient* with the reply (*code*, *text*): it is not sent.

        For `mta_screen_recipients`.  A 4xx *code* is a temporary refusal
        (the caller tries again later), a 5xx a permanent one (a bounce);
        the recipient is reported so on every path, whatever happens to
        the transaction of the others.  Raises ValueError for a code that
        is not 4xx or 5xx, or an address not among the recipients.
        """
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
            raise ValueError(f"refusing {recipient!r}: the code must be 4xx or 5xx, not {code!r}")
        self._judge(recipient, Verdict(code, _one_line(text)))

    def drop(self, recipient: str, reason: str) -> None:
        """Drop *recipient*: it is not sent, and reported as dropped for *reason*.

        For `mta_screen_recipients`.  Dropped is neither accepted nor
        refused: nothing is retried and no bounce is counted.  Raises
        ValueError for an address not among the recipients.
        """
        self._judge(recipient, Verdict(None, _one_line(reason)))

    def _judge(self, recipient: str, verdict: Verdict) -> None:
        if recipient not in self.recipients:
            raise ValueError(f"{recipient!r} is not a recipient of this message: {_shown(self.recipients)}")
        self.recipients = [address for address in self.recipients if address != recipient]
        self.verdicts[recipient] = verdict


def _one_line(text: object) -> str:
    """A plugin's reply text, made safe to log and to hand on as one reply line."""
    return " ".join(str(text).split())[:512]
