"""Envelope addresses: RFC 5321 ``Mailbox`` syntax, with RFC 6531 UTF-8.

An address goes on the wire byte for byte between ``<`` and ``>``, so it
must already be exactly what SMTP allows there: ``local-part@domain``,
where the local part is a dot-atom or a quoted string, and the domain is
a dotted host name or an address literal (``[192.0.2.1]``,
``[IPv6:2001:db8::1]``).  Anything else is refused rather than repaired:
``smtplib`` "repairs" ``a@y,b@z`` or ``evil@z.example(@good.example`` by
parsing them as header addresses, and sends something other than what the
caller asked for.

UTF-8 (RFC 6531) is accepted in local parts and domain labels; whether the
server can take it (SMTPUTF8) is decided later, in `mailman_mta.esmtp`.

One exception to ``local-part@domain``: a bare dot-atom local part
(``postmaster``, ``person_00``) is passed as it is, as smtplib passes it.
RFC 5321 allows only ``Postmaster`` unqualified, but relays qualify such
names with their own domain (Postfix's ``$myorigin``) or refuse them with
a reply, which is then the recipient's honest verdict; GNU Mailman's own
tests send to them.  It cannot carry anything but a name.
"""

from __future__ import annotations

import functools
import ipaddress
import re

#: The longest address that fits in an SMTP path of 256 octets with its brackets.
MAX_ADDRESS_OCTETS = 254

# Non-ASCII characters allowed by RFC 6531 (UTF8-non-ascii): any character
# beyond ASCII except surrogates, which are not Unicode scalar values and
# have no UTF-8 form, and except the C1 controls and the line and paragraph
# separators, which some software takes for the end of a line (NEL, U+2028).
_U = "\u00a0-\u2027\u202a-\ud7ff\ue000-\U0010ffff"

# RFC 5321 4.1.2 atext, extended by RFC 6531.
_ATEXT = rf"A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_U}"
_DOT_STRING = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
# qtextSMTP is %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP is "\" %d32-126.
_QUOTED_STRING = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e])*"'
_LABEL = rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9\-{_U}]{{0,61}}[A-Za-z0-9{_U}])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"

_BARE_LOCAL_PART = re.compile(_DOT_STRING)
_MAILBOX = re.compile(rf"(?P<local>{_DOT_STRING}|{_QUOTED_STRING})@(?P<domain>{_DOMAIN}|{_LITERAL})")
# Most addresses are plain ASCII dot-atoms: one quick match settles them.
_PLAIN = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*"
)
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?:[\x21-\x5a\x5e-\x7e]+")


@functools.lru_cache(maxsize=1 << 16)
def mailbox_problem(address: str) -> str | None:
    """Why *address* is not an RFC 5321 ``Mailbox``, or None if it is one.

    The reason completes a sentence such as "recipient 'x' is not an
    envelope address: ...".  The length limit, `MAX_ADDRESS_OCTETS`, is
    the caller's to check.  Answers are remembered: a list server sends to
    the same members again and again.
    """
    if _PLAIN.fullmatch(address) is not None:
        return None
    if not address.isascii():
        space = next((c for c in address if not c.isascii() and c.isspace()), None)
        if space is not None:
            return f"it contains {space!r}, a space that is not ASCII (and looks like none, or like a plain one)"
    if "@" not in address and _BARE_LOCAL_PART.fullmatch(address) is not None:
        return None
    match = _MAILBOX.fullmatch(address)
    if match is None:
        return _diagnose(address)
    domain = match["domain"]
    if domain.startswith("[") and not _valid_literal(domain[1:-1]):
        return f"{domain} is not an IPv4, IPv6 or tagged address literal"
    return None


def _valid_literal(literal: str) -> bool:
    """RFC 5321 4.1.3: IPv4, ``IPv6:`` followed by an IPv6 address, or ``tag:content``."""
    if literal[:5].upper() == "IPV6:":
        try:
            ipaddress.IPv6Address(literal[5:])
        except ValueError:
            return False
        return True
    if literal[:1].isdigit() and ":" not in literal:
        try:
            ipaddress.IPv4Address(literal)
        except ValueError:
            return False
        return True
    return _GENERAL_LITERAL.fullmatch(literal) is not None


_LOCAL_PART = re.compile(rf"{_DOT_STRING}|{_QUOTED_STRING}")
_DOMAIN_PART = re.compile(rf"{_DOMAIN}|{_LITERAL}")


def _diagnose(address: str) -> str:
    """Name the first thing wrong with an address that did not match."""
    for character in address:
        if character < " " or "\x7f" <= character <= "\x9f":
            return f"it contains {character!r}, a control character"
        if character in "\u2028\u2029":
            return f"it contains {character!r}, a line or paragraph separator"
        if "\ud800" <= character <= "\udfff":
            return f"it contains {character!r}, which is not a Unicode character (a lone surrogate)"
    if address.endswith('"') or "@" not in address:
        return "it has no @domain part"
    local, _, domain = address.rpartition("@")
    if not domain:
        return "the domain after the last @ is empty"
    if _DOMAIN_PART.fullmatch(domain) is None:
        if domain.endswith("."):
            return f"the domain {domain!r} ends with a dot"
        return f"the domain {domain!r} is not a host name or address literal"
    if not local:
        return "the local part before the @ is empty"
    if _LOCAL_PART.fullmatch(local) is None:
        if local.startswith("@") or ":" in local:
            return f"the local part {local!r} looks like a source route or group, which SMTP does not allow here"
        bad = next((c for c in local if not re.fullmatch(rf"[{_ATEXT}.]", c)), None)
        if bad is not None and not local.startswith('"'):
            return f"the local part {local!r} contains {bad!r}; quote it (RFC 5321 4.1.2) or remove it"
        return f"the local part {local!r} is not a dot-atom or a quoted string"
    return "it is not local-part@domain"
