"""`probe`: what a relay offers, found by talking to it without sending mail.

``mailman-mta check`` prints this; a program (a health check, a site's
set-up page) can call it directly.  The connection is opened as for
sending (the enabled plugins choose the relay, TLS and AUTH), asked EHLO,
logged in when a user name is configured, and closed with QUIT.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field

from .connection import Connection
from .smtp.transport import tls_facts


@dataclass
class Probe:
    """What `probe` found.

    `auth` is None when no user name is configured, else whether logging
    in worked; `auth_error` says why it did not.  `certificate` and
    `verified` are None for a plaintext connection.
    """

    relay: tuple[str, int]
    secure_mode: str
    greeting: str
    extensions: dict[str, str] = field(default_factory=dict)
    tls_version: str | None = None
    certificate: str | None = None
    verified: bool | None = None
    user: str = ""
    auth: bool | None = None
    auth_error: smtplib.SMTPException | None = None

    @property
    def ok(self) -> bool:
        """Reached, and logged in if a user is configured."""
        return self.auth is not False


def probe(connection: Connection) -> Probe:
    """Connect as *connection* would, report what the relay offers, and QUIT.

    Raises what opening a connection raises (`MTAConnectionError`,
    `TLSError`, `smtplib.SMTPConnectError`...); a refused login is
    reported in the result, not raised.
    """
    config = connection.config
    transport = connection.open_transport()
    try:
        transport.ehlo_or_helo_if_needed()
        relay = getattr(transport, "relay", None) or (connection.host, connection.port)
        greeting = (getattr(transport, "ehlo_resp", None) or b"").decode("utf-8", "replace").splitlines()
        found = Probe(
            relay=tuple(relay),
            secure_mode=connection.setting("secure_mode"),
            greeting=greeting[0] if greeting else "",
            extensions={name: parameters.strip() for name, parameters in transport.esmtp_features.items()},
            user=connection.smtp_user,
        )
        tls = tls_facts(transport)
        if tls is not None:
            found.tls_version, certificate = tls
            found.certificate = ", ".join("=".join(part) for rdn in certificate.get("subject", ()) for part in rdn)
            found.verified = connection.tls_context().verify_mode != ssl.CERT_NONE
        if connection.smtp_user:
            try:
                config.hooks.authenticate(connection, transport)
                found.auth = True
            except smtplib.SMTPException as error:
                found.auth, found.auth_error = False, error
        return found
    finally:
        try:
            transport.quit()
        except (smtplib.SMTPException, OSError):
            transport.close()
