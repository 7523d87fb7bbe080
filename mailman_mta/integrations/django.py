"""Django: an email backend that sends through mailman-mta.

In ``settings.py``::

    EMAIL_BACKEND = "mailman_mta.integrations.django.EmailBackend"

The backend keeps the contract of Django's own SMTP backend
(``django.core.mail.backends.smtp.EmailBackend``): the same constructor
arguments and settings, the same attributes (``host``, ``port``,
``username``, ``password``, ``use_tls``, ``use_ssl``, ``timeout``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_context``, ``connection``), the
same addresses on the wire (display names dropped, IDNA domains encoded, as
Django's backend and `smtplib` make them), and the same exceptions where
Django documents them.  Django's own SMTP backend tests pass on it
(tests/test_django_suite.py).

The attributes are read when a connection is opened, and become one
configuration layer, ``django``, on a `Configuration` of the backend's own:

=========================================  ==================================
Django                                     mailman-mta
=========================================  ==================================
``EMAIL_HOST``, ``EMAIL_PORT``             ``[mta] smtp_host``, ``smtp_port``
``EMAIL_HOST_USER``                        ``[mta] smtp_user``
``EMAIL_HOST_PASSWORD``                    ``[mta] smtp_pass`` (a `Secret`)
``EMAIL_USE_TLS`` / ``EMAIL_USE_SSL``      ``[mta] secure_mode``: starttls / smtps
``EMAIL_TIMEOUT``                          ``[mta] connect_timeout`` and ``command_timeout``
``EMAIL_SSL_CERTFILE``, ``_KEYFILE``       a client certificate in ``ssl_context``
=========================================  ==================================

``timeout`` is None when ``EMAIL_TIMEOUT`` is unset, as in Django; the
connection then keeps mailman-mta's bounded defaults rather than waiting
forever.  Two settings of our own: ``MAILMAN_MTA_CONFIG``, configuration
files pushed first (plugins, ``[ratelimit]``, ``ca_file``...), and
``MAILMAN_MTA_OPTIONS``, a dict of ``"section.key": value`` pushed last,
over the ``django`` layer.

As with Django's backend since 4.2, certificates are verified against the
system's CAs (or ``[mta] ca_file``), and a subclass may override
``ssl_context`` to change that.  Beyond it, addresses that could inject
SMTP commands are refused, and commands are pipelined over a connection
kept for the backend's lifetime.

``fail_silently`` silences what Django's backend silences: failing to
connect, and the server's refusals.  An address mailman-mta refuses to put
on the wire (`EnvelopeError`, a `ValueError` as Django's own "Invalid
address" is) is always raised, so a message is never lost without a word.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage, sanitize_address

from mailman_mta import tls
from mailman_mta.config import Configuration
from mailman_mta.connection import Connection
from mailman_mta.errors import MTAConnectionError

#: The name of the layer made of the backend's attributes.
LAYER = "django"
OPTIONS_LAYER = "MAILMAN_MTA_OPTIONS"


def envelope_address(address: str, encoding: str) -> str:
    """The address Django's SMTP backend would put in MAIL FROM or RCPT TO.

    Django sanitizes it (``sanitize_address``: IDNA for the domain, MIME
    words for a non-ASCII name, ValueError for what is no address), and
    `smtplib` then keeps only what is between the angle brackets
    (``smtplib.quoteaddr``).  The same two steps here give the same bytes
    on the wire; mailman-mta's own checks come after.
    """
    return smtplib.quoteaddr(sanitize_address(address, encoding))[1:-1]


class EmailBackend(BaseEmailBackend):
    """Django's ``EMAIL_BACKEND`` contract on a mailman-mta `Connection`.

    `send_messages` returns how many messages went out (a message counts
    when at least one recipient took it, as with Django's SMTP backend);
    with ``fail_silently`` a failure to connect or a refusal makes that
    count smaller instead of raising.  `open` connects now (True if it did,
    False if already open, None when it failed silently), `close` says
    QUIT, and the backend is a context manager.  ``connection`` is the open
    `Connection`, or None.
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
        self.host: str = host or settings.EMAIL_HOST
        self.port: int = port or settings.EMAIL_PORT
        self.username: str = settings.EMAIL_HOST_USER if username is None else username
        self.password: str = settings.EMAIL_HOST_PASSWORD if password is None else password
        self.use_tls: bool = settings.EMAIL_USE_TLS if use_tls is None else use_tls
        self.use_ssl: bool = settings.EMAIL_USE_SSL if use_ssl is None else use_ssl
        self.timeout: float | None = settings.EMAIL_TIMEOUT if timeout is None else timeout
        self.ssl_keyfile: str | None = settings.EMAIL_SSL_KEYFILE if ssl_keyfile is None else ssl_keyfile
        self.ssl_certfile: str | None = settings.EMAIL_SSL_CERTFILE if ssl_certfile is None else ssl_certfile
        self.config = Configuration()
        files = getattr(settings, "MAILMAN_MTA_CONFIG", ())
        for path in [files] if isinstance(files, str) else files:
            self.config.push_file(path)
        self._options = _options_layer(getattr(settings, "MAILMAN_MTA_OPTIONS", {}))
        self._laid: tuple[Any, ...] | None = None
        self._lay_settings()
        self.connection: Connection | None = None
        self._lock = threading.RLock()

    def _lay_settings(self) -> None:
        """Make the attributes the ``django`` layer (again, if they changed since)."""
        if self.use_tls and self.use_ssl:
            raise ValueError(
                "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set one of those settings to True."
            )
        values = {
            "smtp_host": self.host,
            "smtp_port": self.port,
            "smtp_user": self.username,
            "smtp_pass": self.password,
            "secure_mode": "starttls" if self.use_tls else "smtps" if self.use_ssl else "smtp",
        }
        if self.timeout is not None:
            values["connect_timeout"] = values["command_timeout"] = self.timeout
        laid = tuple(values.items())
        if laid == self._laid:
            return
        if self._laid is not None:
            self.config.pop(LAYER)  # and the options layer above it
        self.config.push(LAYER, _layer({"mta": values}, "EMAIL_*"))
        if self._options:
            self.config.push(OPTIONS_LAYER, self._options)
        self._laid = laid

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        """The client context for TLS: the ``[mta]`` TLS settings, and the client certificate if one is set.

        A context of this backend's own, so a subclass may change it, as
        Django's documentation suggests for its own backend.
        """
        mta = self.config.settings.mta
        context = tls.new_client_context(
            mta.verify_cert, mta.verify_hostname, mta.ca_file, mta.ca_path, mta.tls_min_version
        )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ImproperlyConfigured("EMAIL_SSL_KEYFILE is set without EMAIL_SSL_CERTFILE, the certificate it is for")
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context

    def open(self) -> bool | None:
        """Connect now; True if this opened the connection, False if it was open, None on a silent failure."""
        if self.connection:
            return False
        self._lay_settings()
        context = self.ssl_context if self.use_tls or self.use_ssl else None
        connection = Connection(config=self.config, ssl_context=context)
        try:
            connection.connect()
        except OSError:
            # Refused, unreachable, TLS or AUTH failed (smtplib's errors
            # are OSErrors too): what Django's backend silences here.
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
            if not self.connection or opened is None:
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
        sender = envelope_address(message.from_email, encoding)
        addresses = [envelope_address(address, encoding) for address in recipients]
        data = message.message().as_bytes(linesep="\r\n")
        assert self.connection is not None, "send_messages opened it"
        try:
            self.connection.sendmail(sender, addresses, data)
        except (smtplib.SMTPException, MTAConnectionError):
            # The server's refusals, a lost connection, or a new one that
            # could not be opened.  EnvelopeError is not among them.
            if not self.fail_silently:
                raise
            return False
        return True


def _options_layer(options: dict[str, Any]) -> str:
    """``MAILMAN_MTA_OPTIONS`` as layer text ('' when there are none)."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in options.items():
        section, dot, key = str(name).rpartition(".")
        if not dot:
            raise ImproperlyConfigured(f"MAILMAN_MTA_OPTIONS: {name!r} is not 'section.key'")
        sections.setdefault(section, {})[key] = value
    return _layer(sections, OPTIONS_LAYER) if sections else ""


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
