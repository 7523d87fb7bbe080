"""The ESMTP parameters a message needs, given what the server offers.

Checked after EHLO and before MAIL FROM, so a message the server cannot take
as it is fails cleanly and is never rewritten:

- 8-bit bytes anywhere in the message need 8BITMIME (RFC 6152), declared
  with ``BODY=8BITMIME``;
- a non-ASCII envelope address needs SMTPUTF8 (RFC 6531), declared with
  ``SMTPUTF8``; so do non-ASCII header fields (RFC 6532), when the server
  offers it;
- a message larger than the server's advertised SIZE (RFC 1870) is refused
  here rather than after it has been transmitted.  smtplib itself declares
  ``SIZE=`` when the server offers SIZE.
"""

from __future__ import annotations

from .envelope import Envelope
from .errors import UnsendableMessageError
from .interfaces import ITransport


def mail_options(envelope: Envelope, transport: ITransport) -> list[str]:
    """Return ``envelope.mail_options`` plus what this message needs here.

    *transport* must have said EHLO.  Raises `UnsendableMessageError` when the
    server lacks an extension the message cannot do without, or the message
    exceeds the server's SIZE.
    """
    options = list(envelope.mail_options)
    declared = {option.split("=", 1)[0].upper() for option in options}
    message = envelope.message
    where = f"{getattr(transport, '_host', '') or 'the server'}"

    size_limit = _size_limit(transport)
    if size_limit and len(message) > size_limit:
        raise UnsendableMessageError(
            552, f"5.3.4 message is {len(message)} bytes; {where} accepts at most {size_limit}"
        )

    addresses_ascii = envelope.sender.isascii() and all(r.isascii() for r in envelope.recipients)
    if not addresses_ascii:
        if not transport.has_extn("smtputf8"):
            raise UnsendableMessageError(
                553, f"5.6.7 an envelope address is not ASCII and {where} does not offer SMTPUTF8"
            )
        if "SMTPUTF8" not in declared:
            options.append("SMTPUTF8")
            declared.add("SMTPUTF8")

    if not message.isascii():
        if not transport.has_extn("8bitmime"):
            raise UnsendableMessageError(
                554, f"5.6.3 the message has 8-bit content and {where} does not offer 8BITMIME; "
                "encode it (quoted-printable or base64) first"
            )
        if "BODY" not in declared:
            options.append("BODY=8BITMIME")
        headers = message.split(b"\r\n\r\n", 1)[0]
        if not headers.isascii() and "SMTPUTF8" not in declared and transport.has_extn("smtputf8"):
            options.append("SMTPUTF8")
    return options


def _size_limit(transport: ITransport) -> int:
    features = getattr(transport, "esmtp_features", {}) or {}
    try:
        return int(features.get("size", "0").split()[0] or 0)
    except (ValueError, IndexError):
        return 0
