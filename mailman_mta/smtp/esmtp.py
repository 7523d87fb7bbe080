"""The ESMTP parameters a message needs, given what the server offers.

Checked after EHLO and before MAIL FROM, so a message the server cannot take
as it is fails cleanly and is never rewritten.  Such a failure is
temporary (4xx): what the relay lacks is not the recipients' fault.

- 8-bit bytes anywhere in the message need 8BITMIME (RFC 6152), declared
  with ``BODY=8BITMIME``;
- a non-ASCII envelope address needs SMTPUTF8 (RFC 6531), declared with
  ``SMTPUTF8``; so do non-ASCII header fields (RFC 6532), when the server
  offers it;
- a message larger than the server's advertised SIZE (RFC 1870) is refused
  here rather than after it has been transmitted, and its size is declared
  with ``SIZE=`` whenever the server offers SIZE.  A SIZE limit that is not
  a plain decimal number, or is 0, sets no limit: RFC 1870 defines 0 as
  "no fixed maximum", and a server's nonsense must not refuse mail.

Every parameter, ours or a plugin's, must be ``keyword[=value]`` as RFC
5321 4.1.2 has it, so that no parameter can smuggle a space, a line break
or a second command onto the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from ..envelope import Envelope
from ..errors import EnvelopeError, SMTPUTF8NotOffered, UnsendableMessageError
from ..interfaces import ITransport

# esmtp-keyword ["=" esmtp-value]; the value is any printable ASCII but "=".
_PARAMETER = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*(?:=[\x21-\x3c\x3e-\x7e]+)?")


def check_parameters(parameters: Iterable[str], command: str) -> None:
    """Raise `EnvelopeError` for a parameter that is not ``keyword[=value]``."""
    for parameter in parameters:
        if not isinstance(parameter, str) or _PARAMETER.fullmatch(parameter) is None:
            raise EnvelopeError(
                f"{parameter!r} is not an ESMTP parameter for {command} (keyword or keyword=value, "
                "printable ASCII without spaces; RFC 5321 4.1.2)"
            )


def mail_options(envelope: Envelope, transport: ITransport) -> list[str]:
    """Return ``envelope.mail_options`` plus what this message needs here.

    *transport* must have said EHLO.  Raises `UnsendableMessageError` when the
    server lacks an extension the message cannot do without, or the message
    exceeds the server's SIZE, and `EnvelopeError` for a malformed parameter.
    """
    options = list(envelope.mail_options)
    declared: set[str] = set()
    if options or envelope.rcpt_options:
        check_parameters(options, "MAIL")
        check_parameters(envelope.rcpt_options, "RCPT")
        declared = {option.split("=", 1)[0].upper() for option in options}
    message = envelope.message

    if transport.has_extn("size"):
        size_limit = _size_limit(transport)
        if size_limit and len(message) > size_limit:
            raise UnsendableMessageError(
                452, f"4.3.4 message is {len(message)} bytes; {_where(transport)} accepts at most {size_limit}"
            )
        if "SIZE" not in declared:
            options.append(f"SIZE={len(message)}")

    addresses_ascii = envelope.sender.isascii() and "".join(envelope.recipients).isascii()
    if not addresses_ascii:
        if not transport.has_extn("smtputf8"):
            raise SMTPUTF8NotOffered(
                451, f"4.6.7 an envelope address is not ASCII and {_where(transport)} does not offer SMTPUTF8"
            )
        if "SMTPUTF8" not in declared:
            options.append("SMTPUTF8")
            declared.add("SMTPUTF8")

    if not message.isascii():
        if not transport.has_extn("8bitmime"):
            raise UnsendableMessageError(
                451,
                f"4.6.3 the message has 8-bit content and {_where(transport)} does not offer 8BITMIME; "
                "encode it (quoted-printable or base64) first",
            )
        if "BODY" not in declared:
            options.append("BODY=8BITMIME")
        end_of_headers = message.find(b"\r\n\r\n")
        headers_ascii = end_of_headers >= 0 and message[:end_of_headers].isascii()
        if not headers_ascii and "SMTPUTF8" not in declared and transport.has_extn("smtputf8"):
            options.append("SMTPUTF8")
    return options


def _where(transport: ITransport) -> str:
    return getattr(transport, "_host", "") or "the server"


def _size_limit(transport: ITransport) -> int:
    """The server's SIZE limit; 0 for none, or for one that makes no sense."""
    features = getattr(transport, "esmtp_features", None) or {}
    return _parsed_size(str(features.get("size", "")))


@lru_cache(maxsize=64)
def _parsed_size(text: str) -> int:
    """The limit in a SIZE keyword's text; parsed once per text, not once per message."""
    words = text.split()
    if len(words) != 1 or not words[0].isascii() or not words[0].isdigit() or len(words[0]) > 20:
        return 0
    return int(words[0])
