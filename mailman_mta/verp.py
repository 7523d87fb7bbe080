"""VERP: an envelope sender that says which recipient a bounce is about.

With Variable Envelope Return Paths each copy of a message goes out with
its own envelope sender, built from the list's bounce address and the
recipient's address:

    bounces@lists.example.org + anne@example.com
        -> bounces+anne=example.com@lists.example.org

A bounce comes back to that address, and `decode` recovers
``anne@example.com`` from it, however garbled the bounce message itself.

The format is a `string.Template` over four names: ``$bounces`` and
``$bounces_domain`` (the local part and domain of the sender), ``$local``
and ``$domain`` (the recipient's).  Decoding reads the recipient's local
part greedily, so local parts containing the delimiter decode correctly as
long as the delimiter cannot appear in a domain name (``=`` cannot).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from functools import lru_cache

from .addresses import mailbox_problem
from .errors import VERPError

#: The format Mailman and most list servers use.
DEFAULT_FORMAT = "$bounces+$local=$domain@$bounces_domain"

_PATTERNS = {
    "bounces": r"(?P<bounces>[^@]+?)",
    "bounces_domain": r"(?P<bounces_domain>[^@]+)",
    "local": r"(?P<local>.+)",
    "domain": r"(?P<domain>[^@]+?)",
}


def _split(address: str, role: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise VERPError(f"{role} {address!r} is not an address of the form local@domain")
    return local, domain


def check_format(format: str) -> str:
    """Return *format* if it encodes and decodes faithfully, else raise `VERPError`."""
    template = string.Template(format)
    if not template.is_valid():
        raise VERPError(f"VERP format {format!r} has a $ that is not one of ${', $'.join(_PATTERNS)}")
    names = template.get_identifiers()
    unknown = set(names) - set(_PATTERNS)
    if unknown:
        raise VERPError(f"VERP format {format!r} uses unknown names: {', '.join(sorted(unknown))}")
    missing = {"local", "domain"} - set(names)
    if missing:
        raise VERPError(f"VERP format {format!r} must contain $local and $domain")
    used = [m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(format)]
    for name in names:
        if used.count(name) > 1:
            raise VERPError(f"VERP format {format!r} uses ${name} more than once")
    for recipient in ("anne@example.com", "a+b=c-d.e@sub-1.example.co.uk"):
        try:
            encode("bounces@lists.example.org", recipient, format)
        except VERPError:
            raise VERPError(f"VERP format {format!r} is ambiguous: {recipient!r} would not decode back") from None
    return format


def encode(sender: str, recipient: str, format: str = DEFAULT_FORMAT) -> str:
    """The VERP envelope sender for *recipient*'s copy of mail from *sender*.

    Raises `VERPError` for an address that is not local@domain, and for a
    pair that would not decode back to *recipient* (a sender whose local
    part contains the format's delimiter, say), so every address this
    returns can be decoded without knowing the sender.
    """
    bounces, bounces_domain = _split(sender, "sender")
    local, domain = _split(recipient, "recipient")
    address = _formatter(format)(bounces=bounces, bounces_domain=bounces_domain, local=local, domain=domain)
    match = _regex(format).match(address)
    if match is None or f"{match['local']}@{match['domain']}" != recipient:
        raise VERPError(
            f"cannot VERP-encode {recipient!r} for sender {sender!r} with format {format!r} "
            "so that it decodes back; does the sender contain the format's delimiter?"
        )
    problem = mailbox_problem(address)
    if problem is not None:
        raise VERPError(f"cannot VERP-encode {recipient!r}: {address!r} would not be an envelope address ({problem})")
    return address


def decode(address: str, format: str = DEFAULT_FORMAT) -> str:
    """The recipient a VERP *address* was made for; `VERPError` if it is not one."""
    match = _regex(format).match(address)
    if match is None:
        raise VERPError(f"{address!r} is not a VERP address of the form {format!r}")
    return f"{match['local']}@{match['domain']}"


def _pieces(format: str) -> list[tuple[str, str | None]]:
    """*format* read as `string.Template` reads it: (literal text, None) and ("", name) pieces.

    Raises `VERPError` for a ``$`` followed by a name not among ours.
    """
    pieces: list[tuple[str, str | None]] = []
    position = 0
    for match in string.Template.pattern.finditer(format):
        pieces.append((format[position : match.start()], None))
        name = match.group("named") or match.group("braced")
        if match.group("escaped") is not None:
            pieces.append(("$", None))
        elif name in _PATTERNS:
            pieces.append(("", name))
        else:
            raise VERPError(f"VERP format {format!r} uses an unknown name at {match.group()!r}")
        position = match.end()
    pieces.append((format[position:], None))
    return pieces


@lru_cache(maxsize=16)
def _formatter(format: str) -> Callable[..., str]:
    """``str.format`` for what `string.Template` *format* says: made once, used for every copy."""
    return "".join(
        "{" + name + "}" if name else text.replace("{", "{{").replace("}", "}}") for text, name in _pieces(format)
    ).format


@lru_cache(maxsize=16)
def _regex(format: str) -> re.Pattern[str]:
    pattern = "".join(_PATTERNS[name] if name else re.escape(text) for text, name in _pieces(format))
    return re.compile("^" + pattern + "$", re.IGNORECASE | re.DOTALL)
