"""`Connection`: one connection to the MTA, carrying many SMTP sessions.

Opening an SMTP connection costs a TCP handshake, a greeting, EHLO and
perhaps TLS and AUTH; a list server sending thousands of messages wants to
pay that once per many messages, but not forever (relays limit how long a
connection may live, and drop idle ones).  `Connection` keeps one open and
asks the enabled plugins, before each send, whether it may carry another
session.

Everything a send does beyond the SMTP transaction itself is a hook call
(see `mailman_mta.hookspecs`): the built-in behaviour (the session limits,
liveness checks, AUTH, devmode) is supplied by plugins in
`mailman_mta.plugins`, switched on and off by configuration layers that are
read at each send.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import time
from typing import Any

from zope.interface import implementer

from . import esmtp, tls
from .config import Configuration, converter_for
from .config import config as default_config
from .envelope import Envelope, MessageInput
from .errors import NoTransportError, SMTPTimeoutError, UnsendableMessageError
from .interfaces import IConnection, ITransport
from .secret import Secret

log = logging.getLogger("mailman_mta.connection")

RefusedRecipients = dict[str, tuple[int, bytes]]

# Constructor arguments whose names differ from their [mta] keys.
_ARGUMENT_KEYS = {
    "host": "smtp_host",
    "port": "smtp_port",
    "sessions_per_connection": "max_sessions_per_connection",
}


def failed_before_data(error: BaseException, transport: Any) -> bool:
    """Is *error* a lost connection that certainly came before any message data?

    Only then can the message be sent again on a new connection without any
    chance of delivering it twice.  A transport that cannot say whether data
    was sent (no ``message_data_sent``) is taken to have sent it.
    """
    if getattr(transport, "message_data_sent", True):
        return False
    if isinstance(error, SMTPTimeoutError):
        return False
    if isinstance(error, (smtplib.SMTPServerDisconnected, ConnectionError)):
        return True
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return bool(error.recipients) and all(code == 421 for code, _ in error.recipients.values())
    return isinstance(error, smtplib.SMTPResponseException) and error.smtp_code == 421


@implementer(IConnection)
class Connection:
    """A lazily opened, reused connection to an SMTP server.

    :param host: the SMTP server; None means ``[mta] smtp_host``.
    :param port: its port; None means ``[mta] smtp_port``.
    :param sessions_per_connection: sessions before the connection is
        replaced, 0 for no limit; None means
        ``[mta] max_sessions_per_connection``.
    :param smtp_user: the SMTP AUTH user; None means ``[mta] smtp_user``.
    :param smtp_pass: the SMTP AUTH password (str or `Secret`); None means
        ``[mta] smtp_pass``.  Never shown in repr, logs or errors.
    :param config: the `Configuration` to follow; the module-level default
        when None.
    :param debug: log the SMTP conversation (see `IConnection.debug`).
    :param ssl_context: a client `ssl.SSLContext` to use instead of one
        built from the TLS settings.
    :param settings: any other ``[mta]`` key (``secure_mode``,
        ``verify_cert``, ``command_timeout``, ...), overriding the
        configuration for this connection.

    Arguments that are given win over the configuration, and are checked
    the same way; those left out follow it live, so a layer pushed later
    takes effect on the next connection.  A `Connection` is not
    thread-safe: use one per thread.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        sessions_per_connection: int | None = None,
        smtp_user: str | None = None,
        smtp_pass: str | Secret | None = None,
        *,
        config: Configuration | None = None,
        debug: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        **settings: Any,
    ) -> None:
        self.config = config if config is not None else default_config
        given = dict(settings, host=host, port=port, sessions_per_connection=sessions_per_connection,
                     smtp_user=smtp_user, smtp_pass=smtp_pass)
        self._explicit = {
            _ARGUMENT_KEYS.get(name, name): self._check_argument(name, value)
            for name, value in given.items()
            if value is not None
        }
        self._ssl_context = ssl_context
        self._debug = bool(debug)
        self.transport: ITransport | None = None
        self.session_count = 0
        self.connection_count = 0
        self.connected_at: float | None = None
        self.last_used_at: float | None = None

    def _check_argument(self, name: str, value: Any) -> Any:
        key = _ARGUMENT_KEYS.get(name, name)
        if key not in self.config.settings.mta:
            raise TypeError(f"Connection() got an unexpected keyword argument {name!r}")
        if key == "smtp_pass":
            return Secret(value)
        text = ("yes" if value else "no") if isinstance(value, bool) else str(value)
        try:
            return converter_for("mta", key)(text)
        except ValueError as error:
            raise ValueError(f"Connection({name}=...): {error}") from None

    # -- settings: explicit, else the configuration's --------------------

    def setting(self, key: str) -> Any:
        """The value of ``[mta] key`` for this connection."""
        try:
            return self._explicit[key]
        except KeyError:
            return self.config.settings.mta[key]

    @property
    def host(self) -> str:
        return self.setting("smtp_host")

    @property
    def port(self) -> int:
        return self.setting("smtp_port")

    @property
    def sessions_per_connection(self) -> int:
        return self.setting("max_sessions_per_connection")

    @property
    def smtp_user(self) -> str:
        return self.setting("smtp_user")

    @property
    def smtp_pass(self) -> Secret | None:
        password = self.setting("smtp_pass")
        return password if password else None

    def tls_context(self) -> ssl.SSLContext:
        """The client context for TLS: the one given, or one built from the settings."""
        if self._ssl_context is not None:
            return self._ssl_context
        return tls.client_context(
            self.setting("verify_cert"), self.setting("verify_hostname"),
            self.setting("ca_file"), self.setting("ca_path"), self.setting("tls_min_version"),
        )

    @property
    def debug(self) -> bool:
        return self._debug

    @debug.setter
    def debug(self, value: bool) -> None:
        self._debug = bool(value)
        if self.transport is not None:
            self.transport.set_debuglevel(1 if self._debug else 0)

    def __repr__(self) -> str:
        state = f"{self.session_count} sessions" if self.transport is not None else "closed"
        where = f"{self._explicit.get('smtp_host', '[mta]')}:{self._explicit.get('smtp_port', '[mta]')}"
        user = self._explicit.get("smtp_user")
        shown_user = f", smtp_user={user!r}" if user else ""
        return f"<Connection {where}{shown_user}, {state}>"

    # -- sending ---------------------------------------------------------

    def sendmail(
        self,
        envsender: str,
        recipients: str | list[str] | tuple[str, ...],
        msgtext: MessageInput,
    ) -> RefusedRecipients:
        """Send one message; see `IConnection.sendmail`."""
        return self.send(Envelope.build(envsender, recipients, msgtext))

    def send(self, envelope: Envelope) -> RefusedRecipients:
        """Send an `Envelope` built by the caller; otherwise as `sendmail`.

        The envelope is rewritten in place by the plugins, so afterwards it
        shows what was actually sent.
        """
        config = self.config
        hook = config.hook
        hook.mta_rewrite_recipients(config=config, connection=self, envelope=envelope)
        envelope.check()
        hook.mta_prepare_message(config=config, connection=self, envelope=envelope)
        if self.transport is not None and False in hook.mta_session_allowed(config=config, connection=self):
            self.quit()
        refused: RefusedRecipients = {}
        error: BaseException | None = None
        try:
            refused = self._send_with_one_retry(config, hook, envelope)
        except BaseException as caught:
            error = caught
            # A message refused here, before MAIL FROM, leaves the
            # connection good; after anything else its state is unknown.
            if not isinstance(caught, UnsendableMessageError):
                self.close()
            if isinstance(caught, smtplib.SMTPRecipientsRefused):
                refused = dict(caught.recipients)
            raise
        else:
            self.session_count += 1
            self.last_used_at = time.monotonic()
        finally:
            hook.mta_delivery_result(config=config, connection=self, envelope=envelope,
                                     refused=refused, error=error)
        return refused

    def _send_with_one_retry(self, config: Configuration, hook: Any, envelope: Envelope) -> RefusedRecipients:
        reused = self.transport is not None
        try:
            return self._transact(config, hook, envelope)
        except (smtplib.SMTPException, OSError) as error:
            if not (reused and failed_before_data(error, self.transport)):
                raise
            log.info("%s:%s dropped a reused connection before the message was sent (%s); "
                     "sending it on a new connection", self.host, self.port, error)
            self.close()
            return self._transact(config, hook, envelope)

    def _transact(self, config: Configuration, hook: Any, envelope: Envelope) -> RefusedRecipients:
        if self.transport is None:
            self._connect(config, hook)
        transport = self.transport
        transport.ehlo_or_helo_if_needed()
        options = esmtp.mail_options(envelope, transport)
        return transport.sendmail(envelope.sender, envelope.recipients, envelope.message,
                                  options, envelope.rcpt_options)

    def open_transport(self) -> ITransport:
        """Open a new transport through `mta_create_transport`, without adopting it.

        For diagnostics (``mailman-mta check``): nothing is authenticated and
        the connection's own state is left alone.  Raises `NoTransportError`
        when no enabled plugin opens one.
        """
        transport = self.config.hook.mta_create_transport(config=self.config, connection=self)
        if transport is None:
            raise NoTransportError(
                "no enabled plugin opened a connection to the MTA; is "
                "[plugin.smtp] enabled, or another transport plugin?"
            )
        return transport

    def _connect(self, config: Configuration, hook: Any) -> None:
        transport = self.open_transport()
        self.transport = transport
        self.session_count = 0
        self.connection_count += 1
        self.connected_at = self.last_used_at = time.monotonic()
        try:
            hook.mta_authenticate(config=config, connection=self, transport=transport)
        except BaseException:
            self.close()
            raise

    # -- closing ---------------------------------------------------------

    def quit(self) -> None:
        """Say QUIT and close; see `IConnection.quit`."""
        transport = self.transport
        if transport is None:
            return
        sock = getattr(transport, "sock", None)
        if sock is not None:
            # Saying goodbye to a server that stopped answering should not
            # take the whole command timeout.
            sock.settimeout(min(sock.gettimeout() or float("inf"), self.setting("connect_timeout")))
        try:
            transport.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection without a word (after an error)."""
        transport, self.transport = self.transport, None
        self.session_count = 0
        self.connected_at = None
        if transport is not None:
            try:
                transport.close()
            except OSError:
                pass

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.quit()
