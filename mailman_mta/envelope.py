"""`Envelope`: one message on its way out, as the hooks see and change it.

Plugins rewrite recipients and transform message bytes by mutating the
envelope they are handed (as pytest's ``pytest_collection_modifyitems``
mutates its list), so several plugins compose without knowing of each other.
"""

from __future__ import annotations

import email.message
import re
from dataclasses import dataclass, field

from .errors import EnvelopeError

# Characters that can never appear in an address we put on an SMTP command
# line: control characters (CR and LF end the command early, which is how
# header and command injection works), NUL, and the angle brackets smtplib
# wraps the address in.  Whitespace is refused because smtplib's address
# parsing would silently shorten "john doe@example.com" to "john".
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f<>]")

MessageInput = str | bytes | bytearray | email.message.Message

#: The longest address that fits in an SMTP path of 256 octets with its brackets.
MAX_ADDRESS_OCTETS = 254


def check_address(address: object, role: str) -> str:
    """Return *address* if it is safe to use in an SMTP command, else raise.

    *role* names the address in the error ("sender", "recipient 3").  The
    empty sender is allowed (the null reverse-path of bounces); an empty
    recipient is not.
    """
    if not isinstance(address, str):
        raise EnvelopeError(f"{role} must be a string, not {type(address).__name__}: {address!r}")
    if not address and role != "sender":
        raise EnvelopeError(f"{role} is empty")
    octets = len(address.encode("utf-8", "surrogateescape"))
    if octets > MAX_ADDRESS_OCTETS:
        raise EnvelopeError(
            f"{role} is {octets} octets long; "
            f"SMTP allows at most {MAX_ADDRESS_OCTETS} (RFC 5321 4.5.3.1.3): {address[:40]!r}..."
        )
    bad = _FORBIDDEN.search(address)
    if bad is not None:
        raise EnvelopeError(
            f"{role} {address!r} contains {bad.group()!r}, which cannot appear "
            "in an SMTP envelope address"
        )
    return address


_LINE_END = re.compile(rb"\r\n|\r|\n")


def message_bytes(message: MessageInput) -> bytes:
    """Return *message* as the bytes to send.

    `str` is encoded as UTF-8 (never squeezed into ASCII with ``?``),
    `bytes` are taken as they are, and an `email.message.Message` is
    flattened with its own policy and no ``>From`` mangling.  Then every line
    ending becomes CRLF, as SMTP requires: smtplib does that for `str` only,
    and a bare LF sent as-is is what "SMTP smuggling" exploits.  No other
    byte is changed.
    """
    if isinstance(message, (bytes, bytearray)):
        data = bytes(message)
    elif isinstance(message, str):
        data = message.encode("utf-8", "surrogateescape")
    elif isinstance(message, email.message.Message):
        data = message.as_bytes()
    else:
        raise EnvelopeError(
            f"message must be str, bytes or email.message.Message, not {type(message).__name__}"
        )
    return _LINE_END.sub(b"\r\n", data)


@dataclass(eq=False)
class Envelope:
    """What one SMTP transaction sends.

    `sender` and `recipients` are the envelope addresses (MAIL FROM and RCPT
    TO), `message` the exact bytes after DATA.  `original_recipients` keeps
    the recipients the caller asked for, whatever plugins later rewrite.
    `mail_options` and `rcpt_options` are ESMTP parameters for MAIL and RCPT
    (``"BODY=8BITMIME"``, ``"NOTIFY=NEVER"``).
    """

    sender: str
    recipients: list[str]
    message: bytes
    original_recipients: tuple[str, ...] = ()
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)

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
        check_address(sender, "sender")
        for number, recipient in enumerate(recipients, 1):
            check_address(recipient, f"recipient {number}")
        return cls(sender, recipients, message_bytes(message), tuple(recipients))

    def check(self) -> None:
        """Check the addresses again after plugins have rewritten them."""
        check_address(self.sender, "sender")
        if not self.recipients:
            raise EnvelopeError("a plugin removed every recipient")
        for number, recipient in enumerate(self.recipients, 1):
            check_address(recipient, f"recipient {number}")
