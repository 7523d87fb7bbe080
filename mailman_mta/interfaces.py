"""The contracts mailman-mta's objects keep, as zope.interface interfaces.

Plugins are handed objects providing these interfaces; a plugin that
supplies one (a transport, say) is checked with `verifyObject`.  As is the
zope.interface convention, methods are written without ``self``.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IConnection(Interface):
    """One connection to the MTA, carrying one or more SMTP sessions.

    A session is one message transaction (MAIL, RCPT..., DATA).  The
    connection opens lazily on the first `sendmail`, and after each session
    the enabled plugins decide (`mta_session_allowed`) whether the next one
    may reuse it or a new connection is opened.
    """

    host = Attribute(
        "The relay's host name: while a connection is open, the one it reached (a "
        "plugin such as relays may pick another than configured); otherwise the one "
        "given when the Connection was made, or else [mta] smtp_host."
    )
    port = Attribute("The relay's TCP port: the open connection's, else the one given, else [mta] smtp_port.")
    number = Attribute("This Connection's serial number in the process, for logs.")
    sessions_per_connection = Attribute(
        "How many sessions one connection carries before it is replaced; 0 means "
        "no limit.  The one given, or else [mta] max_sessions_per_connection."
    )
    smtp_user = Attribute("The SMTP AUTH user name, or an empty string for no authentication.")
    smtp_pass = Attribute("The SMTP AUTH password as a `mailman_mta.secret.Secret`, or None.")
    config = Attribute("The `IConfiguration` whose layers and plugins this connection uses.")
    debug = Attribute(
        "When true, the SMTP conversation is logged at DEBUG level to the "
        "'mailman_mta.transcript' logger, with AUTH secrets masked."
    )
    transport = Attribute("The open `ITransport`, or None when not connected.")
    session_count = Attribute("Sessions carried by the open connection so far.")
    connection_count = Attribute("Connections this object has opened in its lifetime.")
    connected_at = Attribute("time.monotonic() when the open connection was made, or None.")
    last_used_at = Attribute(
        "time.monotonic() when the open connection last finished a session (or was opened), or None."
    )
    in_flight = Attribute(
        "True while `mta_session_allowed` is asked about the next session with this one still under way "
        "(chained messages): look at the connection, do not talk on it."
    )
    pending = Attribute("The envelope whose commands went out behind the last message (`transact`'s *then*), or None.")

    def setting(key):
        """The value of ``[mta] key`` for this connection, typed.

        The constructor argument when one was given, else the active
        configuration's value at the time of the call.
        """

    def tls_context():
        """The client ssl.SSLContext for TLS on this connection."""

    def plugin_state(owner):
        """A dict where a plugin keeps its state for this connection.

        *owner* is a hashable key of the plugin's own (its name).  The same
        dict is returned for the lifetime of the connection object.
        """

    def send(envelope):
        """Send a `mailman_mta.envelope.Envelope`; otherwise like `sendmail`."""

    def transact(envelope, *, then=None):
        """Send a `mailman_mta.envelope.Envelope`; return its `TransactionResult`.

        Never raises for a failure to deliver: the result says, recipient by
        recipient, what the server answered, and holds the error `sendmail`
        would raise.  Raises only what the plugins that rewrite and prepare
        the envelope raise, before anything is sent.  *then* is the envelope
        the caller sends next, whose commands may follow this message's
        final dot (RFC 2920); it must then be sent next.
        """

    def connect():
        """Open the connection now rather than at the first send; False if one is open already."""

    def open_transport():
        """Open a new `ITransport` through the hooks without adopting it (diagnostics)."""

    def sendmail(envsender, recipients, msgtext):
        """Send one message in one session, opening a connection if needed.

        :param envsender: the envelope sender (MAIL FROM); may be empty.
        :param recipients: the envelope recipients, a list of strings.
        :param msgtext: the message, as str, bytes or email.message.Message;
            its bytes are sent unchanged.
        :return: a dict of the recipients the server refused, mapping each to
            its (code, response) pair, exactly as `smtplib.SMTP.sendmail`;
            an empty dict when every recipient was accepted.  Recipients a
            plugin refused or dropped (`mta_screen_recipients`) are in it
            too, with the plugin's reply (code 0 for a dropped one).
        :raises smtplib.SMTPException: as smtplib does (every recipient
            refused, sender refused, data refused, disconnection); the
            connection is closed first, so the next call reconnects.
        :raises mailman_mta.errors.EnvelopeError: for an address or message
            that cannot be sent; nothing was sent.
        """

    def send_message(msg, from_addr=None, to_addrs=None):
        """Send an email.message.Message addressed from its headers, as smtplib's ``send_message``.

        Sender: Sender: or From: (Resent- ones for a resent message);
        recipients: To:, Cc: and Bcc:.  Bcc: is never sent.
        """

    def quit():
        """End the open connection politely (QUIT), if there is one.

        Errors from a server that has already gone away are ignored.  The
        next `sendmail` opens a new connection.
        """


class ITransport(Interface):
    """An open SMTP client connection, as made by a transport plugin.

    `smtplib.SMTP` provides it; a plugin may return anything else that does
    (a client for a relay with failover, say).  A transport that also
    provides `IMessageTransactions` (as `mailman_mta.transport.SMTPTransport`
    and its subclasses do) gets exact per-recipient results and
    PIPELINING; any other is driven through its ``sendmail``, whose
    smtplib-style answer is coarser.

    Besides the members below, callers use these, when a transport has
    them, and do without them otherwise:

    ``relay``
        the (host, port) it reached, which the connection and its results
        then name; without it, the configured ones are named.
    ``message_data_sent``
        true once the current transaction has started sending message
        data; without it, a lost connection is never retried, since the
        message might have been sent.
    ``input_pending()``
        whether the server has said something unprompted or hung up (the
        ``liveness`` plugin asks before reusing a connection); without it
        the socket is looked at.
    ``sock``
        smtplib's socket, None once closed.  Only the functions of
        `mailman_mta.transport` read it (`is_closed`, `input_pending`,
        `abort`, `timeout_at_most`, `tls_facts`); no other module, and no
        plugin, needs to.
    """

    def sendmail(from_addr, to_addrs, msg, mail_options=(), rcpt_options=()):
        """Run one message transaction; return the refused recipients.

        Same contract as `smtplib.SMTP.sendmail`.
        """

    def login(user, password):
        """Authenticate with SMTP AUTH; raise smtplib.SMTPAuthenticationError."""

    def ehlo_or_helo_if_needed():
        """Send EHLO (or HELO) unless that was done on this connection."""

    esmtp_features = Attribute("The ESMTP extensions the server offered at EHLO: lower-case name -> parameters.")

    def has_extn(name):
        """Return true if the server offered the ESMTP extension *name*."""

    def noop():
        """Send NOOP; return (code, message)."""

    def set_debuglevel(level):
        """Turn the protocol transcript on (>0) or off (0)."""

    def quit():
        """Send QUIT and close."""

    def close():
        """Close the socket without saying anything."""


class IMessageTransactions(Interface):
    """A transport that runs mail transactions with exact accounting."""

    def transact(envelope, pipelining=True, deadline=None):
        """Run one mail transaction for *envelope*; return its `TransactionResult`.

        See `mailman_mta.transaction`.  Uses PIPELINING when *pipelining*
        is true and the server offers it.  With *deadline* (seconds), the
        whole transaction, every write and reply of it, ends within that
        time, however each reply comes (a timeout error in the result).
        Failures from MAIL onward are in the result, never raised; what
        stops the transaction before MAIL (a message the server cannot
        take, a failed EHLO) is raised.
        """

    def input_pending():
        """True if the server has said something unprompted, or hung up."""


class IConfiguration(Interface):
    """Layered configuration, and the plugins those layers make active."""

    def push(name, text):
        """Lay the configuration *text* on top, under *name*.

        The layer is checked first: an unknown section or key, a value of
        the wrong type, or a plugin that cannot be found raises
        `mailman_mta.errors.ConfigurationError` naming the layer, section
        and key, and leaves the configuration as it was.
        """

    def pop(name):
        """Remove the layer *name*, and every layer pushed after it."""

    layers = Attribute("The names of the pushed layers, bottom first.")
    settings = Attribute(
        "The effective values converted to their types, e.g. "
        "``settings.mta.smtp_port`` is an int; recomputed after push and pop."
    )
    hook = Attribute("The pluggy hook relay of the plugins enabled by the current layers.")
    active_plugins = Attribute("Name -> plugin object of the enabled plugins, in call-registration order.")
