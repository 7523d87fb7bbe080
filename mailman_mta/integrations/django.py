"""Django: an email backend that sends through mailman-mta.

In ``settings.py``::

    EMAIL_BACKEND = "mailman_mta.integrations.django.EmailBackend"

Django's own settings (or the backend's keyword arguments, which win, as
for Django's SMTP backend) become one configuration layer, ``django``:

=========================================  ==================================
Django                                     mailman-mta
=========================================  ==================================
``EMAIL_HOST``, ``EMAIL_PORT``             ``[mta] smtp_host``, ``smtp_port``
``EMAIL_HOST_USER``                        ``[mta] smtp_user``
``EMAIL_HOST_PASSWORD``                    ``[mta] smtp_pass`` (a `Secret`)
``EMAIL_USE_TLS`` / ``EMAIL_USE_SSL``      ``[mta] secure_mode``: starttls / smtps
``EMAIL_TIMEOUT``                          ``[mta] connect_timeout`` and ``command_timeout``
``EMAIL_SSL_CERTFILE``, ``_KEYFILE``       a client certificate for TLS
=========================================  ==================================

Two settings of our own: ``MAILMAN_MTA_CONFIG``, configuration files
pushed first (under the ``django`` layer: plugins, ``[ratelimit]``,
``ca_file``...), and ``MAILMAN_MTA_OPTIONS``, a dict of ``"section.key":
value`` pushed last.  Each backend has a `Configuration` of its own, so
two backends with different settings never mix.

Unlike Django's SMTP backend, certificates are verified against the
system's CAs (or ``[mta] ca_file``), addresses that could inject SMTP
commands are refused, and the message goes out with pipelining over a
connection kept for the backend's lifetime.  Bcc recipients get the
message and are never named in it.
"""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage, sanitize_address

from mailman_mta import tls
from mailman_mta.config import Configuration
from mailman_mta.connection import Connection
from mailman_mta.errors import MTAError


class EmailBackend(BaseEmailBackend):
    """Django's ``EMAIL_BACKEND`` contract on a mailman-mta `Connection`.

    `send_messages` returns how many messages went out (a message counts
    when at least one recipient took it, as with Django's SMTP backend);
    with ``fail_silently`` it returns instead of raising.  `open` connects
    now (True if it did, False if already open), `close` says QUIT, and
    the backend is a context manager.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        use_tls: bool | None = None,
        fail_silently: bool = False,
        use_ssl: bool | None = None,
        timeout: float | None = None,
        ssl_keyfile: str | None = None,
        ssl_certfile: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(fail_silently=fail_silently)
        use_tls = settings.EMAIL_USE_TLS if use_tls is None else use_tls
        use_ssl = settings.EMAIL_USE_SSL if use_ssl is None else use_ssl
        if use_tls and use_ssl:
            raise ValueError(
                "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set one of those settings to True."
            )
        self.config = Configuration()
        files = getattr(settings, "MAILMAN_MTA_CONFIG", ())
        for path in [files] if isinstance(files, str) else files:
            self.config.push_file(path)
        values = {
            "smtp_host": host or settings.EMAIL_HOST,
            "smtp_port": port or settings.EMAIL_PORT,
            "smtp_user": settings.EMAIL_HOST_USER if username is None else username,
            "smtp_pass": settings.EMAIL_HOST_PASSWORD if password is None else password,
            "secure_mode": "starttls" if use_tls else "smtps" if use_ssl else "smtp",
        }
        timeout = settings.EMAIL_TIMEOUT if timeout is None else timeout
        if timeout is not None:
            values["connect_timeout"] = values["command_timeout"] = timeout
        self.config.push("django", _layer({"mta": values}, "EMAIL_*"))
        options = getattr(settings, "MAILMAN_MTA_OPTIONS", {})
        if options:
            sections: dict[str, dict[str, Any]] = {}
            for name, value in options.items():
                section, dot, key = str(name).rpartition(".")
                if not dot:
                    raise ImproperlyConfigured(f"MAILMAN_MTA_OPTIONS: {name!r} is not 'section.key'")
                sections.setdefault(section, {})[key] = value
            self.config.push("MAILMAN_MTA_OPTIONS", _layer(sections, "MAILMAN_MTA_OPTIONS"))
        self.ssl_certfile = settings.EMAIL_SSL_CERTFILE if ssl_certfile is None else ssl_certfile
        self.ssl_keyfile = settings.EMAIL_SSL_KEYFILE if ssl_keyfile is None else ssl_keyfile
        self.connection: Connection | None = None
        self._lock = threading.RLock()

    def _ssl_context(self):
        """The TLS settings' context, with the client certificate when one is set; else None."""
        if not self.ssl_certfile:
            return None
        mta = self.config.settings.mta
        context = tls.new_client_context(
            mta.verify_cert, mta.verify_hostname, mta.ca_file, mta.ca_path, mta.tls_min_version
        )
        context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
        return context

    def open(self) -> bool | None:
        """Connect now; True if this opened the connection, False if it was open, None on a silent failure."""
        if self.connection is not None:
            return False
        try:
            connection = Connection(config=self.config, ssl_context=self._ssl_context())
            connection.connect()
        except (OSError, smtplib.SMTPException, MTAError):
            if not self.fail_silently:
                raise
            return None
        self.connection = connection
        return True

    def close(self) -> None:
        """Say QUIT and forget the connection."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.quit()

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Send each message; return how many went out."""
        if not email_messages:
            return 0
        with self._lock:
            opened = self.open()
            if self.connection is None or opened is None:
                return 0
            sent = 0
            try:
                for message in email_messages:
                    if self._send(message):
                        sent += 1
            finally:
                if opened:
                    self.close()
        return sent

    def _send(self, message: EmailMessage) -> bool:
        recipients = message.recipients()
        if not recipients:
            return False
        encoding = message.encoding or settings.DEFAULT_CHARSET
        sender = sanitize_address(message.from_email, encoding)
        addresses = [sanitize_address(address, encoding) for address in recipients]
        data = message.message().as_bytes(linesep="\r\n")
        assert self.connection is not None, "send_messages opened it"
        try:
            self.connection.sendmail(sender, addresses, data)
        except (OSError, smtplib.SMTPException, MTAError):
            if not self.fail_silently:
                raise
            return False
        return True


def _layer(sections: dict[str, dict[str, Any]], where: str) -> str:
    """Configuration text for *sections*; a value that would break a line is refused, unshown."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            text = ("yes" if value else "no") if isinstance(value, bool) else "" if value is None else str(value)
            if "\n" in text or "\r" in text:
                raise ImproperlyConfigured(f"{where}: the value for [{section}] {key} must be one line")
            lines.append(f"{key}: {text}")
    return "\n".join(lines) + "\n"
