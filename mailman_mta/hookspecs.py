"""Every hook a mailman-mta plugin can implement.

A plugin is a module or object with functions named after these specs and
decorated with `mailman_mta.hookimpl`.  An implementation may accept any
subset of a spec's arguments, and they are always passed by keyword.  A
plugin runs only while a configuration layer enables it
(``[plugin.NAME] enabled: yes``); see docs/plugins.rst.

The order of a single send through `Connection.sendmail`:

1. `mta_screen_recipients`, which may refuse or drop recipients; then,
   for a personal copy, `mta_prepare_copy`; then
   `mta_rewrite_recipients` and `mta_prepare_message`, on the envelope;
2. `mta_session_allowed`, if a connection is already open;
3. `mta_create_transport` and `mta_authenticate`, if a new connection is
   needed;
4. `mta_pace_transaction`, and the wait it asks for;
5. the SMTP transaction itself, on the transport;
6. `mta_delivery_result`, whatever the outcome.

`mailman_mta.delivery.Delivery` first asks `mta_choose_route` which relay
each recipient's domain goes through, and sends each route's recipients
over connections of their own.

`mta_declare_config` runs when a configuration first needs its schema
(for every known plugin, enabled or not), and `mta_check_config` when a
layer is pushed.

With ``[mta] max_connections`` above 1, the hooks of different
transactions may run at the same time on different threads; those of one
transaction run in order on one thread, with the configuration pinned
(see "Plugins and threads" in docs/plugins.rst).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from . import PROJECT_NAME

if TYPE_CHECKING:
    from .config import Configuration
    from .envelope import Envelope
    from .interfaces import IConnection, ITransport
    from .routes import Route
    from .schema import PluginSchema
    from .smtp.transaction import TransactionResult

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# -- Connections ---------------------------------------------------------


@hookspec(firstresult=True)
def mta_create_transport(config: Configuration, connection: IConnection) -> ITransport | None:
    """Open a new SMTP connection for *connection* and return it.

    Called whenever *connection* needs a new connection: on its first send,
    and after `mta_session_allowed` or an error closed the previous one.
    Return an object providing `ITransport`, connected, greeted and
    secured as ``connection.setting("secure_mode")`` asks (TLS, if any, is
    up before anything else is said), or None to let the next plugin try.
    The first non-None result wins.

    This is where a plugin chooses the relay (``connection.host`` and
    ``connection.port`` are the configured ones while no connection is
    open), fails over to another (the ``relays`` plugin), or supplies a
    different client.  `mailman_mta.transport.connect` opens an
    `SMTPTransport` to any host and port with the connection's TLS,
    timeouts and transcript, as the built-in ``smtp`` plugin (run last)
    does for the configured relay.  The transport's ``relay`` attribute,
    (host, port), is what ``connection.host``/``port`` and every result
    then name.

    A connection remembers which plugins implemented this hook and
    `mta_authenticate` when it opened; if a layer changes that set, it is
    replaced before its next send.
    """


@hookspec(firstresult=True)
def mta_authenticate(config: Configuration, connection: IConnection, transport: ITransport) -> bool | None:
    """Authenticate on a freshly opened *transport*.

    Called once after every `mta_create_transport`, before any message is
    sent on it.  Return True once you have authenticated (later plugins are
    then not called), or None when you have nothing to do.  Raise
    `smtplib.SMTPAuthenticationError` (or let the transport raise it) when
    the server refuses; the connection is then closed and the error reaches
    the caller of ``sendmail``.

    The built-in ``auth`` plugin runs last and logs in with
    ``connection.smtp_user`` and ``connection.smtp_pass`` when a user is set;
    a plugin for another scheme (XOAUTH2, say) runs before it and returns
    True.
    """


@hookspec
def mta_session_allowed(config: Configuration, connection: IConnection) -> bool | None:
    """May the open connection carry another session?

    Called before each send on a connection that is already open.  Return
    False to have it closed (with QUIT) and a new one opened, True or None
    to allow.  Every implementation is asked, and any False wins.  Use
    ``connection.session_count`` and ``connection.connected_at``.

    The built-in ``sessions`` plugin returns False once
    ``connection.session_count`` reaches ``sessions_per_connection``.

    When messages are chained (the next one's commands follow a message's
    final dot, see `Connection.transact`), this is asked about the next
    session while the current one is under way, between its DATA reply and
    its message: ``connection.in_flight`` is True, ``session_count``
    already counts the current session, and an implementation may look at
    the connection but must not talk on it (no NOOP: the relay would take
    it as message data).  The built-in ``liveness`` plugin has nothing to
    check then and returns None.
    """


@hookspec
def mta_pace_transaction(config: Configuration, connection: IConnection, envelope: Envelope) -> float | None:
    """How many seconds to wait before this transaction starts, or None.

    Called once per transaction, after the connection for it is open and
    allowed (so never for a connection about to be replaced, and for the
    first send on a new one too), just before MAIL FROM:
    ``connection.host`` and ``connection.port`` name the relay that will
    carry it.  `Connection` waits the longest time any plugin asks for;
    a plugin never sleeps itself, so it can be tested with a clock of its
    own.  After a wait the open connection is asked again, through
    `mta_session_allowed`, whether it may carry the session.  Return a
    reservation, not a question: a plugin that returns a delay should
    count the transaction as sent at the end of it.  The built-in
    ``ratelimit`` plugin paces messages and recipients per relay.
    """


@hookspec(firstresult=True)
def mta_choose_route(config: Configuration, domain: str) -> Route | None:
    """The route for recipients at *domain*, or None for the next plugin.

    Called by `mailman_mta.delivery.Delivery` once per post for each
    recipient domain (lower-case, as in the address after ``@``), before
    any transaction is made.  Return a `mailman_mta.routes.Route`: the
    relay (host and port, with fallbacks for the ``relays`` plugin) and
    any other ``[mta]`` connection settings for it (TLS, login, limits
    such as ``max_connections``).  The first non-None result wins; when
    every plugin returns None, the recipients go through ``[mta]``'s own
    relay.  Recipients of different routes never share a transaction, and
    each route has connections (a pool) of its own.  The built-in
    ``routes`` plugin answers from ``[routes] map``.
    """


# -- Messages ------------------------------------------------------------


@hookspec
def mta_screen_recipients(config: Configuration, connection: IConnection, envelope: Envelope) -> None:
    """Decide, recipient by recipient, who may be sent the message.

    Called once per send, first of all, with ``envelope.recipients`` the
    addresses the caller gave.  Call ``envelope.refuse(recipient, code,
    text)`` to refuse one with a reply of your choosing (``550``,
    ``"5.7.1 on the suppression list"``: permanent; a 4xx: temporary), or
    ``envelope.drop(recipient, reason)`` to leave one out: not sent, and
    reported as dropped, never as accepted.  Either takes the recipient
    out of the envelope, and its verdict stands whatever happens to the
    others' transaction.  When every recipient is taken out, nothing is
    sent and no connection is opened.  The return value is ignored.
    """


@hookspec
def mta_rewrite_recipients(config: Configuration, connection: IConnection, envelope: Envelope) -> None:
    """Change who the message in *envelope* is sent to.

    Called once per send, before the message is prepared.  Assign to or
    mutate ``envelope.recipients`` (and ``envelope.sender``, if you must);
    the return value is ignored.  The rewritten addresses are checked again,
    so an unsafe address is refused before anything is sent.

    The built-in ``devmode`` plugin runs last (``trylast``) and, when
    ``[devmode] enabled`` is yes, replaces every recipient with
    ``[devmode] recipient``.
    """


@hookspec
def mta_prepare_message(config: Configuration, connection: IConnection, envelope: Envelope) -> None:
    """Transform the message bytes in *envelope* before they are sent.

    Called once per send, after `mta_rewrite_recipients`.  Assign new bytes
    to ``envelope.message`` or add ESMTP parameters to
    ``envelope.mail_options`` / ``envelope.rcpt_options``; the return
    value is ignored.  A signing plugin (DKIM) should be ``trylast`` so it
    signs what the others produced.
    """


@hookspec
def mta_prepare_copy(config: Configuration, connection: IConnection, envelope: Envelope, recipient: str) -> None:
    """Prepare *recipient*'s own copy of a message.

    Called once per copy when `mailman_mta.delivery.Delivery` sends one
    copy per recipient (``[mta] delivery`` is ``individual`` or ``verp``),
    after `mta_screen_recipients` (a refused or dropped recipient's copy
    is not prepared) and before `mta_rewrite_recipients`, on the thread
    and with the *connection* that then sends the copy, like every other
    hook of a send.  *envelope* holds just this copy, addressed to
    *recipient*: change ``envelope.message`` to add personal headers or
    footers, or ``envelope.sender``.  The return value is ignored; a
    `mailman_mta.errors.MTAError` raised here fails this copy only.

    The built-in ``verp`` plugin sets the envelope sender from
    ``[verp] format`` when ``[mta] delivery`` is ``verp``.
    """


# -- Results -------------------------------------------------------------


@hookspec
def mta_delivery_result(
    config: Configuration,
    connection: IConnection,
    envelope: Envelope,
    refused: dict[str, tuple[int, bytes]],
    error: BaseException | None,
    result: TransactionResult,
) -> None:
    """Observe the outcome of one send.

    Called exactly once for every send that reached the point of
    connecting, whether it succeeded or failed, and for one whose every
    recipient was refused or dropped by `mta_screen_recipients` (then
    nothing was sent, and the verdicts are in ``result.verdicts``).  *refused* maps each
    recipient with a server reply against it to its (code, response), as
    `smtplib` reports refusals: its own RCPT refusal, or the reply that
    ended a failed transaction.  *error* is the exception
    `Connection.sendmail` raises for this send, or None.  *result* is the
    whole `mailman_mta.transaction.TransactionResult`, recipient by
    recipient.  The return value is ignored.  Implementations are called
    one by one: one that raises is logged, and neither changes the result
    nor keeps the others from being called (so this hook takes no
    wrappers: a plugin with one is refused when it is enabled).
    """


# -- Configuration -------------------------------------------------------


@hookspec
def mta_declare_config(schema: PluginSchema) -> None:
    """Declare the configuration sections this plugin owns.

    Called for every known plugin, enabled or not, when a configuration
    first needs its schema and again whenever the set of known plugins
    changes, so a layer may set a plugin's keys before enabling it.  Call
    ``schema.add_section(name, body, key=converter, ...)`` for each
    section and ``schema.needs_plugin_when(section, key, value)`` for a
    setting that only this plugin carries out (see
    `mailman_mta.schema.PluginSchema`).  The values are then read, typed,
    as ``config.settings.NAME.key``.  The return value is ignored.  Each
    plugin's implementation is called on its own, under the plugin's name,
    so this hook takes no wrappers (a plugin with one is refused when it
    is enabled).
    """


@hookspec
def mta_check_config(config: Configuration) -> None:
    """Check the configuration a layer is about to make effective.

    Called after a layer is pushed, with the new layers in place and only
    the plugins they enable.  Raise `mailman_mta.errors.ConfigurationError`
    naming the section and key to refuse the layer; it is then removed
    again and the caller of ``push`` gets the error.  Use it for rules that
    involve more than one key (devmode needs a recipient).
    """
