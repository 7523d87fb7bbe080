"""`Connection`: one connection to the MTA, carrying many SMTP sessions.

Opening an SMTP connection costs a TCP handshake, a greeting, EHLO and
perhaps TLS and AUTH; a list server sending thousands of messages wants to
pay that once per many messages, but not forever (relays limit how long a
connection may live).  `Connection` keeps one open and asks the enabled
plugins, before each send, whether it may carry another session.

Everything a send does beyond the SMTP transaction itself is a hook call
(see `mailman_mta.hookspecs`): the built-in behaviour (the session limit,
AUTH, devmode) is supplied by plugins in `mailman_mta.plugins`, switched on
and off by configuration layers that are read at each send.
"""

from __future__ import annotations

import smtplib
import time
from typing import Any

from zope.interface import implementer

from .config import Configuration
from .config import config as default_config
from .envelope import Envelope, MessageInput
from .errors import NoTransportError
from .interfaces import IConnection, ITransport
from .secret import Secret

RefusedRecipients = dict[str, tuple[int, bytes]]


@implementer(IConnection)
class Connection:
    """A lazily opened, reused connection to an SMTP server.

    :param host: the SMTP server; None means ``[mta] smtp_host`` of the
        configuration at the time each connection is opened.
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

    The arguments that are given win over the configuration; those left as
    None follow it live, so a layer pushed later takes effect on the next
    connection.  A `Connection` is not thread-safe: use one per thread.
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
    ) -> None:
        if sessions_per_connection is not None and sessions_per_connection < 0:
            raise ValueError(
                f"sessions_per_connection must be 0 (no limit) or more, not {sessions_per_connection}"
            )
        self.config = config if config is not None else default_config
        self._host = host
        self._port = None if port is None else int(port)
        self._sessions_per_connection = sessions_per_connection
        self._smtp_user = smtp_user
        self._smtp_pass = None if smtp_pass is None else Secret(smtp_pass)
        self._debug = bool(debug)
        self.transport: ITransport | None = None
        self.session_count = 0
        self.connection_count = 0
        self.connected_at: float | None = None

    # -- settings: explicit, else the configuration's --------------------

    @property
    def host(self) -> str:
        return self._host if self._host is not None else self.config.settings.mta.smtp_host

    @property
    def port(self) -> int:
        return self._port if self._port is not None else self.config.settings.mta.smtp_port

    @property
    def sessions_per_connection(self) -> int:
        if self._sessions_per_connection is not None:
            return self._sessions_per_connection
        return self.config.settings.mta.max_sessions_per_connection

    @property
    def smtp_user(self) -> str:
        return self._smtp_user if self._smtp_user is not None else self.config.settings.mta.smtp_user

    @property
    def smtp_pass(self) -> Secret | None:
        if self._smtp_pass is not None:
            return self._smtp_pass
        configured = self.config.settings.mta.smtp_pass
        return configured if configured else None

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
        user = f", smtp_user={self._smtp_user!r}" if self._smtp_user else ""
        return f"<Connection {self._host or '[mta]'}:{self._port or '[mta]'}{user}, {state}>"

    # -- sending ---------------------------------------------------------

    def sendmail(
        self,
        envsender: str,
        recipients: str | list[str] | tuple[str, ...],
        msgtext: MessageInput,
    ) -> RefusedRecipients:
        """Send one message; see `IConnection.sendmail`."""
        config = self.config
        hook = config.hook
        envelope = Envelope.build(envsender, recipients, msgtext)
        hook.mta_rewrite_recipients(config=config, connection=self, envelope=envelope)
        envelope.check()
        hook.mta_prepare_message(config=config, connection=self, envelope=envelope)
        if self.transport is not None and False in hook.mta_session_allowed(config=config, connection=self):
            self.quit()
        refused: RefusedRecipients = {}
        try:
            if self.transport is None:
                self._connect(config, hook)
            refused = self.transport.sendmail(
                envelope.sender, envelope.recipients, envelope.message,
                envelope.mail_options, envelope.rcpt_options,
            )
        except (smtplib.SMTPException, OSError) as error:
            self.close()
            if isinstance(error, smtplib.SMTPRecipientsRefused):
                refused = dict(error.recipients)
            hook.mta_delivery_result(
                config=config, connection=self, envelope=envelope, refused=refused, error=error
            )
            raise
        self.session_count += 1
        hook.mta_delivery_result(
            config=config, connection=self, envelope=envelope, refused=refused, error=None
        )
        return refused

    def _connect(self, config: Configuration, hook: Any) -> None:
        transport = hook.mta_create_transport(config=config, connection=self)
        if transport is None:
            raise NoTransportError(
                "no enabled plugin opened a connection to the MTA; is "
                "[plugin.smtp] enabled, or another transport plugin?"
            )
        self.transport = transport
        self.session_count = 0
        self.connection_count += 1
        self.connected_at = time.monotonic()
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
