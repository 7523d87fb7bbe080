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

import email.message
import email.utils
import enum
import itertools
import logging
import smtplib
import ssl
import threading
import time
from typing import Any, cast

from zope.interface import implementer

from .config import Configuration
from .config import config as default_config
from .envelope import Envelope, MessageInput
from .errors import (
    ConfigurationError,
    EnvelopeError,
    MTAConnectionError,
    NoTransportError,
    SMTPProtocolError,
    SMTPTimeoutError,
    UnsendableMessageError,
)
from .hooks import Hooks
from .interfaces import IConnection, IMessageTransactions, ITransport
from .routes import Route
from .secret import Secret
from .smtp import esmtp, tls
from .smtp.foreign import foreign_transaction
from .smtp.transaction import BEFORE, END_OF_DATA, Transaction, TransactionResult
from .smtp.transport import is_closed, timeout_at_most

log = logging.getLogger("mailman_mta.connection")

RefusedRecipients = dict[str, tuple[int, bytes]]

#: The [mta] keys that decide what a connection is: when a layer changes
#: one, an open connection is replaced before its next send.
CONNECTION_KEYS = (
    "smtp_host",
    "smtp_port",
    "smtp_user",
    "smtp_pass",
    "secure_mode",
    "verify_cert",
    "verify_hostname",
    "ca_file",
    "ca_path",
    "tls_min_version",
)

#: The slowest transfer of message data a transaction's deadline allows
#: for (see `Connection.transaction_deadline`).
OCTETS_PER_SECOND_AT_LEAST = 10_000

#: Serial numbers of `Connection` objects, for logs.
_numbers = itertools.count(1)


def pause(seconds: float) -> None:
    """Wait *seconds*, as `mta_pace_transaction` asked (tests replace this)."""
    time.sleep(seconds)


# Constructor arguments whose names differ from their [mta] keys.
_ARGUMENT_KEYS = {
    "host": "smtp_host",
    "port": "smtp_port",
    "sessions_per_connection": "max_sessions_per_connection",
}


def retryable(result: TransactionResult) -> bool:
    """May *result*'s message be sent again on a new connection?

    Only when the old connection certainly failed before any message data:
    it was lost (not timed out: a slow server may still act on what it
    got), or the server said 421, with nothing sent after DATA.  Sending
    again then cannot deliver the message twice.
    """
    if result.error is None or result.data_sent:
        return False
    if result.reply is not None:
        return result.reply.code == 421
    error = result.error
    if isinstance(error, (SMTPTimeoutError, SMTPProtocolError, MTAConnectionError)):
        # A slow server may still act on what it got; and a new connection
        # that could not be opened is no dropped one.
        return False
    return isinstance(error, (smtplib.SMTPServerDisconnected, ConnectionError))


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
    :param secure_mode: ``smtp``, ``smtps`` or ``starttls`` (or an enum
        whose values are those, such as GNU Mailman's ``SecureMode``); None
        means ``[mta] secure_mode``.
    :param verify_cert: check the server's certificate; None means
        ``[mta] verify_cert``.
    :param verify_hostname: check that it names the host; None means
        ``[mta] verify_hostname``.
    :param config: the `Configuration` to follow; the module-level default
        when None.
    :param debug: log the SMTP conversation (see `IConnection.debug`).
    :param ssl_context: a client `ssl.SSLContext` to use instead of one
        built from the TLS settings.
    :param settings: any other ``[mta]`` key (``command_timeout``,
        ``pipelining``, ``delivery``, ...), overriding the configuration for
        this connection.

    The first eight arguments are GNU Mailman's, in Mailman's order, so
    the class can stand in for Mailman's own.  Arguments that are given win
    over the configuration, and are checked the same way; those left out
    follow it live, so a layer pushed later takes effect on the next
    connection.  A `Connection` is not thread-safe: use one per thread.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        sessions_per_connection: int | None = None,
        smtp_user: str | None = None,
        smtp_pass: str | Secret | None = None,
        secure_mode: str | enum.Enum | None = None,
        verify_cert: bool | None = None,
        verify_hostname: bool | None = None,
        *,
        config: Configuration | None = None,
        debug: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        **settings: Any,
    ) -> None:
        self.config = config if config is not None else default_config
        if isinstance(secure_mode, enum.Enum):
            secure_mode = secure_mode.value
        given = dict(
            settings,
            host=host,
            port=port,
            sessions_per_connection=sessions_per_connection,
            smtp_user=smtp_user,
            smtp_pass=smtp_pass,
            secure_mode=secure_mode,
            verify_cert=verify_cert,
            verify_hostname=verify_hostname,
        )
        self._explicit = {
            _ARGUMENT_KEYS.get(name, name): self._check_argument(name, value)
            for name, value in given.items()
            if value is not None
        }
        #: The arguments without any route's settings (see `sibling`).
        self._unrouted = self._explicit
        self._ssl_context = ssl_context
        self._debug = bool(debug)
        self.transport: ITransport | None = None
        #: Whether the open transport runs our exact transactions.
        self._exact = False
        #: What the open transport was opened with (see `_opening_terms`).
        self._opened_with: tuple[Any, ...] | None = None
        #: (configuration state, `_opening_terms` in it), the last worked out.
        self._terms: tuple[object, tuple[Any, ...]] | None = None
        #: (host, port) of the relay the open transport reached.
        self._relay: tuple[str, int] | None = None
        #: (envelope, its transaction, the transport) when that envelope's
        #: commands went out behind the last message (see `transact`'s *then*).
        self._chained: tuple[Envelope, Transaction, ITransport] | None = None
        #: (envelope, what preparing it gave) for one prepared ahead as *then*:
        #: its hooks must not run twice.
        self._prepared: tuple[Envelope, bool | Exception] | None = None
        #: See `in_flight`.
        self._in_flight = False
        self._plugin_state: dict[object, dict[str, Any]] = {}
        #: The route this connection serves (see `sibling`), or None for
        #: ``[mta]``'s own relay.
        self.route: Route | None = None
        #: Held while this connection opens (connects, is greeted, secured
        #: and logged in): a pool gives its connections one lock, so that a
        #: relay is asked for one new connection at a time.
        self.opening_lock: threading.Lock | None = None
        #: This connection's serial number in the process, for logs.
        self.number = next(_numbers)
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
            return self.config.converter_for("mta", key)(text)
        except ValueError as error:
            raise ValueError(f"Connection({name}=...): {error}") from None

    # -- settings: explicit, else the configuration's --------------------

    def setting(self, key: str) -> Any:
        """The value of ``[mta] key`` for this connection."""
        explicit = self._explicit
        if key in explicit:
            return explicit[key]
        try:
            # An attribute: no Python call (plugins ask on every message).
            return getattr(self.config.settings.mta, key)
        except AttributeError:
            raise KeyError(key) from None

    @property
    def host(self) -> str:
        """The relay's host: the one the open connection reached, else the configured one."""
        relay = self._relay
        return relay[0] if relay is not None else self.setting("smtp_host")

    @property
    def port(self) -> int:
        """The relay's port: the one the open connection reached, else the configured one."""
        relay = self._relay
        return relay[1] if relay is not None else self.setting("smtp_port")

    def plugin_state(self, owner: object) -> dict[str, Any]:
        """A dict a plugin keeps its state for this connection in, kept for its lifetime.

        *owner* is any hashable key of the plugin's own (its name, or the
        plugin object).  The dict outlives the open transport; clear what
        belongs to one transport in `mta_create_transport`.  Used by one
        thread at a time, like the connection.
        """
        try:
            return self._plugin_state[owner]
        except KeyError:
            return self._plugin_state.setdefault(owner, {})

    @property
    def pending(self) -> Envelope | None:
        """The envelope whose commands went out behind the last message (see `transact`'s *then*), or None.

        It must be the next one sent on this connection.
        """
        chain = self._chained
        return chain[0] if chain is not None else None

    @property
    def in_flight(self) -> bool:
        """True while `mta_session_allowed` is asked about the next session with this one still under way.

        That happens when messages are chained (see `transact`'s *then*):
        the relay is between a DATA reply and the message, so a plugin may
        look at the connection but must not talk on it.
        """
        return self._in_flight

    @property
    def sessions_per_connection(self) -> int:
        return self.setting("max_sessions_per_connection")

    @property
    def timeout(self) -> float:
        """Seconds to wait for each reply (``[mta] command_timeout``), as `smtplib.SMTP.timeout` says."""
        return self.setting("command_timeout")

    @property
    def smtp_user(self) -> str:
        return self.setting("smtp_user")

    @property
    def smtp_pass(self) -> Secret | None:
        password = self.setting("smtp_pass")
        return password if password else None

    def sibling(self, route: Route | None = None) -> Connection:
        """A new, unopened `Connection` with this one's arguments and configuration.

        For a pool: another connection to the same relay, on the same terms;
        or, given a *route*, to that route's relay, with the route's
        settings over this connection's.  Raises `ConfigurationError` for a
        route setting that is not an ``[mta]`` key or has a bad value.
        """
        sibling = Connection(config=self.config, debug=self._debug, ssl_context=self._ssl_context)
        sibling._unrouted = self._unrouted
        if route is None or route == self.route:
            sibling._explicit, sibling.route = dict(self._explicit), self.route
            return sibling
        # Another route: its settings over the arguments this connection
        # was made with, never over its own route's.
        explicit = dict(self._unrouted)
        for key, value in route.connection_settings().items():
            try:
                explicit[key] = sibling._check_argument(key, value)
            except (TypeError, ValueError) as error:
                raise ConfigurationError(f"route {route.name}: {key}: {error}", key=key) from None
        sibling._explicit, sibling.route = explicit, route
        return sibling

    def tls_context(self) -> ssl.SSLContext:
        """The client context for TLS: the one given, or one built from the settings."""
        if self._ssl_context is not None:
            return self._ssl_context
        return tls.client_context(
            self.setting("verify_cert"),
            self.setting("verify_hostname"),
            self.setting("ca_file"),
            self.setting("ca_path"),
            self.setting("tls_min_version"),
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
        """Send one message; see `IConnection.sendmail`.

        With no recipients at all, raises `smtplib.SMTPRecipientsRefused`
        with an empty dict, as `smtplib.SMTP.sendmail` ends up doing (code
        written for smtplib, such as GNU Mailman's bulk delivery, catches
        that); nothing is sent.
        """
        if not isinstance(recipients, str) and not recipients:
            raise smtplib.SMTPRecipientsRefused({})
        return self.send(Envelope.build(envsender, recipients, msgtext))

    def send_message(
        self,
        msg: email.message.Message,
        from_addr: str | None = None,
        to_addrs: str | list[str] | tuple[str, ...] | None = None,
    ) -> RefusedRecipients:
        """Send an `email.message.Message`, addressed from its headers, as smtplib's ``send_message``.

        The sender is *from_addr*, else the address in Sender:, else in
        From:; the recipients are *to_addrs*, else every address in To:,
        Cc: and Bcc:.  When the message has one Resent- block (one
        Resent-Date:), its Resent- fields are used instead.  Bcc: and
        Resent-Bcc: are never sent.  Raises `EnvelopeError` naming the
        header when there is no sender or no recipient to be found, and
        ValueError for more than one Resent- block, as smtplib does.
        """
        resent = msg.get_all("Resent-Date", [])
        if len(resent) > 1:
            raise ValueError("the message has more than one Resent- block, so who it is to is ambiguous")
        prefix = "Resent-" if resent else ""
        if from_addr is None:
            field = f"{prefix}Sender" if msg.get(f"{prefix}Sender") is not None else f"{prefix}From"
            found = [address for _, address in email.utils.getaddresses(msg.get_all(field, [])) if address]
            if not found:
                raise EnvelopeError(f"no sender: the message has no address in its {field}: header")
            from_addr = found[0]
        if to_addrs is None:
            fields = [f"{prefix}To", f"{prefix}Cc", f"{prefix}Bcc"]
            values = [value for name in fields for value in msg.get_all(name, [])]
            to_addrs = [address for _, address in email.utils.getaddresses(values) if address]
            if not to_addrs:
                raise EnvelopeError(f"no recipients: the message has no address in {', '.join(fields)}")
        return self.sendmail(from_addr, to_addrs, msg)

    def send(self, envelope: Envelope) -> RefusedRecipients:
        """Send an `Envelope` built by the caller; otherwise as `sendmail`.

        Recipients refused or dropped by `mta_screen_recipients` are in the
        refused dict with the plugin's reply (a dropped one with code 0),
        and when nobody is left, `smtplib.SMTPRecipientsRefused` is raised
        with all of them, as smtplib does when every recipient is refused.
        The envelope is rewritten in place by the plugins, so afterwards it
        shows what was actually sent.
        """
        result = self.transact(envelope)
        error = result.error
        if error is not None:
            if result.verdicts and isinstance(error, smtplib.SMTPRecipientsRefused):
                # Everyone sent was refused: so is everyone judged.
                raise smtplib.SMTPRecipientsRefused(result.refused) from error.__cause__
            raise error
        return result.refused

    def transact(self, envelope: Envelope, *, then: Envelope | None = None) -> TransactionResult:
        """Send *envelope*, and say what happened to each of its recipients.

        *then* is the envelope the caller will send next on this connection,
        if it knows.  When the relay offers PIPELINING, no plugin paces the
        sends and the connection may carry one more session, *then* is
        prepared (its hooks run) just before *envelope*'s message goes out,
        and its MAIL, RCPT and DATA follow the final dot in the same write
        (RFC 2920): a round trip less per message.  The caller must send
        *then* next on this connection; anything else drops the connection
        without QUIT (the relay may be waiting for *then*'s message).  A
        *then* whose commands did not go out is sent from the start,
        prepared once; nothing of it is ever sent twice.

        Never raises for a failure to deliver, whatever its cause: it is in
        the result's ``error``, with the reply each recipient got (see
        `mailman_mta.transaction.TransactionResult`).  Raises only what
        the plugins that rewrite and prepare the envelope raise (such as
        `EnvelopeError` for an address they made unsendable), before
        anything is sent, and exceptions that are not errors
        (KeyboardInterrupt), after closing the connection.  A connection
        left in a known state by a refused transaction is kept.  The
        configuration is pinned for the whole transaction (see
        `Configuration.pinned`).  An interruption (Ctrl-C) that comes once
        sending has begun carries the transaction's result as its
        ``transaction`` attribute: the real one if the transaction had
        finished, else one whose ``error`` is the interruption.
        """
        with self.config.pinned() as config:
            problem = config.problem
            if problem is not None:
                raise ConfigurationError(f"nothing is sent while the configuration is inconsistent: {problem}")
            hooks = config.hooks
            chained = self._continuing(envelope)
            if chained is None:
                if not self._prepare_once(hooks, envelope):
                    judged = TransactionResult(envelope.sender, (), stage=BEFORE, verdicts=dict(envelope.verdicts))
                    judged.error = smtplib.SMTPRecipientsRefused(judged.refused)
                    self._report(hooks, envelope, judged)
                    return judged
                if self.transport is not None and not self._may_carry_another(config, hooks):
                    self.quit()
            result = None
            started = time.monotonic()
            try:
                result = self._send_with_one_retry(config, hooks, envelope, chained, then)
                result.verdicts = dict(envelope.verdicts)
                ended = time.monotonic()
                result.duration = ended - started
                if self.transport is not None:
                    if result.stage != BEFORE or result.error is None:
                        self.session_count += 1
                    self.last_used_at = ended
                self._report(hooks, envelope, result)
            except BaseException as interruption:
                if result is None:
                    # Ctrl-C while sending: the message went out if its
                    # data had begun to.
                    data_sent = getattr(self.transport, "message_data_sent", self.transport is not None)
                    self.close()
                    result = TransactionResult.failed(
                        envelope.sender,
                        envelope.recipients,
                        interruption,
                        stage=END_OF_DATA if data_sent else BEFORE,
                        data_sent=data_sent,
                    )
                    result.verdicts = dict(envelope.verdicts)
                    self._report(hooks, envelope, result)
                # For the caller to report: what happened before the interruption.
                setattr(interruption, "transaction", result)  # noqa: B010 (not a declared attribute)
                raise
        return result

    def _continuing(self, envelope: Envelope) -> Transaction | None:
        """*envelope*'s transaction if its commands went out behind the last message, on the open connection.

        Commands of any other envelope outstanding leave the connection in
        a state nobody else can use (the relay may be waiting for message
        data): it is dropped.
        """
        chain, self._chained = self._chained, None
        if chain is None:
            return None
        chained_envelope, transaction, transport = chain
        if chained_envelope is envelope and transport is self.transport and not is_closed(transport):
            self._prepared = None
            return transaction
        self.close()
        return None

    def _prepare_once(self, hooks: Hooks, envelope: Envelope) -> bool:
        """`_prepare`, unless *envelope* was prepared ahead (as *then*): then what that gave."""
        ahead, self._prepared = self._prepared, None
        if ahead is None or ahead[0] is not envelope:
            return self._prepare(hooks, envelope)
        if isinstance(ahead[1], Exception):
            raise ahead[1]
        return ahead[1]

    def _chain_ahead(self, config: Configuration, hooks: Hooks, transport: Any, then: Envelope) -> Transaction | None:
        """*then*'s transaction, whose commands may follow the message about to go out; or None.

        Called between the DATA reply and the message.  *then* is prepared
        here, once, whatever is decided.  Not when a plugin paces the sends
        (a pace is decided just before each one), nor when a layer was
        pushed or popped since this transaction began (it takes effect from
        the next), nor when the connection may not carry a session after
        this one.
        """
        if hooks.implemented("mta_pace_transaction") or not config.pin_is_latest():
            return None
        try:
            ready = self._prepare(hooks, then)
        except Exception as error:
            self._prepared = (then, error)
            return None
        self._prepared = (then, ready)
        if not ready:
            return None
        # Asked as it will stand: this session counted, the connection busy.
        self.session_count += 1
        self._in_flight = True
        try:
            allowed = self._may_carry_another(config, hooks)
        finally:
            self.session_count -= 1
            self._in_flight = False
        if not allowed:
            return None
        try:
            transaction = transport.transaction_for(then, pipelining=self.setting("pipelining"))
        except (UnsendableMessageError, EnvelopeError):
            return None
        return transaction if transaction.group() is not None else None

    def _prepare(self, hooks: Hooks, envelope: Envelope) -> bool:
        """Run the hooks that judge, personalise, rewrite and prepare *envelope*.

        False when the plugins took every recipient out: nothing to send.
        """
        hooks.screen_recipients(self, envelope)
        if not envelope.recipients and envelope.verdicts:
            return False
        if envelope.copy_for is not None:
            hooks.prepare_copy(self, envelope, envelope.copy_for)
        hooks.rewrite_recipients(self, envelope)
        envelope.check()
        hooks.prepare_message(self, envelope)
        if envelope.mail_options or envelope.rcpt_options:
            esmtp.check_parameters(envelope.mail_options, "MAIL")
            esmtp.check_parameters(envelope.rcpt_options, "RCPT")
        return True

    def transaction_deadline(self, envelope: Envelope) -> float:
        """Seconds *envelope*'s whole transaction may take: ``[mta] transaction_timeout``, and 1 s per 10 KB."""
        return self.setting("transaction_timeout") + len(envelope.message) / OCTETS_PER_SECOND_AT_LEAST

    def _may_carry_another(self, config: Configuration, hooks: Hooks) -> bool:
        """May the open connection carry the next session, as it is and as the plugins say?"""
        if self._opened_with != self._opening_terms(config):
            return False
        return hooks.session_allowed(self)

    def _opening_terms(self, config: Configuration) -> tuple[Any, ...]:
        """What a connection opened now would be opened with: the plugins, and the [mta] keys.

        Asked before every send, so kept until the configuration's state
        changes (this connection's own arguments never do).
        """
        token = config.state_token
        cached = self._terms
        if cached is not None and cached[0] is token:
            return cached[1]
        terms = (config.opening_plugins, *(self.setting(key) for key in CONNECTION_KEYS))
        self._terms = (token, terms)
        return terms

    def _send_with_one_retry(
        self,
        config: Configuration,
        hooks: Hooks,
        envelope: Envelope,
        chained: Transaction | None = None,
        then: Envelope | None = None,
    ) -> TransactionResult:
        reused = self.transport is not None
        result = self._transact(config, hooks, envelope, pace=chained is None, chained=chained, then=then)
        if reused and retryable(result):
            log.info(
                "%s:%s dropped a reused connection before the message was sent (%s); sending it on a new connection",
                self.host,
                self.port,
                result.error,
            )
            self.close()
            result = self._transact(config, hooks, envelope, pace=False)
        return result

    def _pace(self, config: Configuration, hooks: Hooks, envelope: Envelope) -> None:
        """Wait as long as the slowest `mta_pace_transaction` asks, then check the connection again."""
        delay = hooks.pace_transaction(self, envelope)
        if delay <= 0:
            return
        pause(delay)
        if not self._may_carry_another(config, hooks):
            self.quit()
            self._connect(config, hooks)

    def _transact(
        self,
        config: Configuration,
        hooks: Hooks,
        envelope: Envelope,
        *,
        pace: bool,
        chained: Transaction | None = None,
        then: Envelope | None = None,
    ) -> TransactionResult:
        """One attempt: connect if needed, wait if a plugin paces, then run the transaction.

        *chained*: *envelope*'s transaction, whose commands went out already.
        *then*: the next envelope, whose commands may follow this message.
        """
        relay = session = None
        try:
            if self.transport is None:
                self._connect(config, hooks)
            if pace:
                self._pace(config, hooks, envelope)
            transport = self.transport
            assert transport is not None, "connected above"
            relay, session = self._relay, self.session_count + 1
            ours = self._exact
            if ours and (chained is not None or then is not None) and hasattr(transport, "run_transaction"):
                result = self._run_chained(config, hooks, transport, envelope, chained, then)
            elif ours:
                result = cast(IMessageTransactions, transport).transact(
                    envelope, pipelining=self.setting("pipelining"), deadline=self.transaction_deadline(envelope)
                )
            else:
                result = foreign_transaction(transport, envelope)
        except (UnsendableMessageError, EnvelopeError) as error:
            # Refused before MAIL FROM: the connection is as good as before.
            result = TransactionResult.failed(envelope.sender, envelope.recipients, error)
            result.relay, result.session = relay, session
            return result
        except Exception as error:
            self.close()
            result = TransactionResult.failed(envelope.sender, envelope.recipients, error)
            result.relay, result.session = relay, session
            return result
        result.relay, result.session = relay, session
        if is_closed(transport):
            # Our engine closed it: its state could not be vouched for.
            self.close()
        elif result.error is not None and not ours:
            # What a foreign transport's connection is fit for after an
            # error is unknown.
            self.close()
        return result

    def _run_chained(
        self,
        config: Configuration,
        hooks: Hooks,
        transport: Any,
        envelope: Envelope,
        chained: Transaction | None,
        then: Envelope | None,
    ) -> TransactionResult:
        """Run *envelope*'s transaction (*chained* if its commands went out), *then*'s commands behind it."""
        pipelining = self.setting("pipelining")
        transaction = chained if chained is not None else transport.transaction_for(envelope, pipelining)
        following: list[Transaction] = []

        def commands_of_then() -> bytes:
            ahead = self._chain_ahead(config, hooks, transport, then) if then is not None else None
            if ahead is None:
                return b""
            following.append(ahead)
            return ahead.group() or b""

        result = transport.run_transaction(
            transaction,
            self.transaction_deadline(envelope),
            commands_sent=chained is not None,
            then=commands_of_then if then is not None else None,
        )
        if following and transaction.chained and not is_closed(transport):
            assert then is not None, "following holds then's transaction"
            self._chained = (then, following[0], transport)
        return result

    def _report(self, hooks: Hooks, envelope: Envelope, result: TransactionResult) -> None:
        """Call every `mta_delivery_result` implementation, each on its own.

        They only observe: one that raises is logged and cannot change the
        result, nor keep the others from seeing it.
        """
        if not hooks.implemented("mta_delivery_result"):
            return
        config = self.config
        implementations = config.hook.mta_delivery_result.get_hookimpls()
        arguments = dict(
            config=config, connection=self, envelope=envelope, refused=result.refused, error=result.error, result=result
        )
        for implementation in reversed(implementations):
            try:
                implementation.function(**{name: arguments[name] for name in implementation.argnames})
            except Exception:
                log.exception("plugin %r raised in mta_delivery_result; the result stands", implementation.plugin_name)

    def connect(self) -> bool:
        """Open the connection now (connect, TLS, AUTH), rather than at the first send.

        Returns False when one is already open, True when this call opened
        it.  Raises what opening raises (`MTAConnectionError`, `TLSError`,
        `smtplib.SMTPAuthenticationError`, ...), for callers that want to
        know before they have mail to send, as Django's ``open()`` does.
        """
        if self.transport is not None:
            return False
        with self.config.pinned() as config:
            self._connect(config, config.hooks)
        return True

    def open_transport(self) -> ITransport:
        """Open a new transport through `mta_create_transport`, without adopting it.

        For diagnostics (``mailman-mta check``): nothing is authenticated and
        the connection's own state is left alone.  Raises `NoTransportError`
        when no enabled plugin opens one.
        """
        transport = self.config.hooks.create_transport(self)
        if transport is None:
            raise NoTransportError(
                "no enabled plugin opened a connection to the MTA; is "
                "[plugin.smtp] enabled, or another transport plugin?"
            )
        return transport

    def _connect(self, config: Configuration, hooks: Hooks) -> None:
        if self.opening_lock is None:
            self._open(config, hooks)
            return
        with self.opening_lock:
            self._open(config, hooks)

    def _open(self, config: Configuration, hooks: Hooks) -> None:
        terms = self._opening_terms(config)
        transport = self.open_transport()
        self.transport = transport
        self._opened_with = terms
        relay = getattr(transport, "relay", None)
        self._relay = tuple(relay) if relay else (self.setting("smtp_host"), self.setting("smtp_port"))
        self._exact = IMessageTransactions.providedBy(transport)
        self.session_count = 0
        self.connection_count += 1
        self.connected_at = self.last_used_at = time.monotonic()
        try:
            hooks.authenticate(self, transport)
        except BaseException:
            self.close()
            raise

    # -- closing ---------------------------------------------------------

    def quit(self) -> None:
        """Say QUIT and close; see `IConnection.quit`."""
        transport = self.transport
        if transport is None:
            return
        if self._chained is not None:
            # Commands went out for a message never sent: the relay may be
            # waiting for its data, and would take QUIT as part of it.
            self.close()
            return
        try:
            # Saying goodbye to a server that stopped answering should not
            # take the whole command timeout.
            with timeout_at_most(transport, self.setting("connect_timeout")):
                transport.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection without a word (after an error)."""
        transport, self.transport = self.transport, None
        self._chained = None
        self.session_count = 0
        self.connected_at = None
        self._relay = self._opened_with = None
        if transport is not None:
            try:
                transport.close()
            except OSError:
                pass

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.quit()
