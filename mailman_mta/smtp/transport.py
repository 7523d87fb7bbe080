"""`SMTPTransport`: the standard library's SMTP client, made safe to run unattended.

`smtplib` still connects, says EHLO, starts TLS and logs in; what this
module changes is everything a hostile or broken relay could exploit:

- every reply is read by `mailman_mta.replies.ReplyReader`: bounded in
  time (the whole reply within the command timeout) and size, and refused
  when it is not SMTP, instead of `smtplib`'s unbounded ``readline``;
- the mail transaction (MAIL, RCPT, DATA) is `mailman_mta.transaction`'s,
  with exact per-recipient results and PIPELINING, instead of
  ``smtplib.SMTP.sendmail``;
- separate connect and per-command timeouts, and errors that name the
  host, the port and the command that went unanswered;
- implicit TLS (SMTPS) and STARTTLS that refuses to carry on in plaintext,
  or after a server slipped data in behind its 220 to STARTTLS;
- AUTH that sends UTF-8 (RFC 4616), keeps no password once logged in, and
  masks the credentials in the transcript sent to the
  ``mailman_mta.transcript`` logger and in any reply that echoes them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import os
import select
import selectors
import smtplib
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from zope.interface import classImplements, implementer

from ..envelope import Envelope
from ..errors import (
    ConfigurationError,
    ConnectTimeoutError,
    MTAConnectionError,
    SMTPTimeoutError,
    STARTTLSNotOffered,
    TLSError,
    TLSHandshakeError,
)
from ..interfaces import IConnection, IMessageTransactions, ITransport
from ..secret import Secret
from . import esmtp
from .replies import Reply, ReplyReader
from .transaction import Transaction, TransactionResult

transcript = logging.getLogger("mailman_mta.transcript")

MASK = "***"

#: Seconds to wait for a TCP connection, and for each reply, by default.
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_COMMAND_TIMEOUT = 300.0

#: Small writes are gathered into one up to this size, so a short message
#: and its terminating dot leave in a single segment.
_COALESCE_OCTETS = 64 * 1024

#: Whether a plain socket's writes may go straight to its descriptor (see `SMTPTransport._sendall`).
_WRITES_DIRECTLY = os.name == "posix"

#: AUTH challenges answered before the exchange is abandoned.
_MAX_CHALLENGES = 5


def connect(connection: IConnection, host: str | None = None, port: int | None = None) -> SMTPTransport:
    """Open an `SMTPTransport` to *host*:*port* on *connection*'s terms, greeted and secured.

    The host and port default to the connection's configured ones; the
    timeouts, ``secure_mode`` (TLS from the first byte, or STARTTLS before
    anything else is said, never falling back to plaintext), the TLS
    context (certificates checked against *host*) and the transcript are
    the connection's.  This is what the built-in ``smtp`` plugin returns
    from `mta_create_transport`, and what a plugin that picks the relay
    itself (``relays``) calls for each one it tries.  Raises
    `MTAConnectionError` (`TLSError` for TLS), or
    `smtplib.SMTPConnectError` for a greeting other than 220.
    """
    host = connection.setting("smtp_host") if host is None else host
    port = connection.setting("smtp_port") if port is None else port
    mode = connection.setting("secure_mode")
    context = connection.tls_context() if mode != "smtp" else None
    transport = SMTPTransport(
        connect_timeout=connection.setting("connect_timeout"),
        command_timeout=connection.setting("command_timeout"),
        implicit_tls=context if mode == "smtps" else None,
    )
    transport.set_debuglevel(1 if connection.debug else 0)
    transport.connect(host, port)
    if context is not None and mode == "starttls":
        transport.starttls_or_refuse(context)
    return transport


def readable_now(sock: socket.socket) -> bool:
    """True if *sock* has input waiting (or the peer hung up), without blocking.

    Uses poll(2) where there is one, so it works for any file descriptor,
    not only those below FD_SETSIZE (1024) as ``select.select`` does.
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    with selectors.DefaultSelector() as selector:  # pragma: no cover
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(0))


# -- what callers ask of any transport ---------------------------------------
#
# The one place outside SMTPTransport that looks at a transport's socket
# (smtplib's ``sock`` attribute, None once closed; see `ITransport`), so
# that a transport without one is handled the same way everywhere.


def is_closed(transport: object) -> bool:
    """Has *transport* closed its connection?  (One without a socket to look at: no.)"""
    return getattr(transport, "sock", True) is None


def input_pending(transport: object) -> bool:
    """Has the server said something unprompted, or hung up?

    Asks the transport when it can tell (``input_pending``, as
    `SMTPTransport` can); otherwise looks at its socket without blocking.
    A transport that cannot be looked into is trusted; one whose socket
    was closed is stale.
    """
    ask = getattr(transport, "input_pending", None)
    if ask is not None:
        return bool(ask())
    if not hasattr(transport, "sock"):
        return False
    sock = transport.sock
    if sock is None:
        return True
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    return readable_now(sock)


def abort(transport: object) -> None:
    """Cut *transport*'s connection now, from any thread.

    The plain socket is shut down rather than closed (even under TLS, whose
    state belongs to the thread using the transport): that wakes a thread
    waiting on it, which then closes it as after any lost connection.
    """
    sock = getattr(transport, "sock", None)
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


@contextlib.contextmanager
def timeout_at_most(transport: object, seconds: float) -> Iterator[None]:
    """Wait at most *seconds* for each reply while inside the block (a NOOP, a QUIT)."""
    sock = getattr(transport, "sock", None)
    if sock is None:
        yield
        return
    before = sock.gettimeout()
    sock.settimeout(min(before or float("inf"), seconds))
    try:
        yield
    finally:
        now = getattr(transport, "sock", None)
        if now is not None:
            now.settimeout(before)


def tls_facts(transport: object) -> tuple[str, dict[str, Any]] | None:
    """(TLS version, the relay's certificate) when *transport* talks TLS, else None."""
    sock = getattr(transport, "sock", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    return sock.version() or "", sock.getpeercert() or {}


@implementer(IMessageTransactions)
class SMTPTransport(smtplib.SMTP):
    """An `smtplib.SMTP` with bounded replies, our own transaction, TLS modes
    and a masked transcript.

    :param connect_timeout: seconds to wait for the TCP connection.
    :param command_timeout: seconds to wait for each whole reply (and for
        each write to make progress); RFC 5321 suggests minutes.
    :param implicit_tls: a client context to wrap the connection in TLS
        as soon as it opens (SMTPS, usually port 465).
    """

    _authenticating = False
    _logging_in = False
    _host = ""
    _port = 0
    _reader: ReplyReader | None = None

    def __init__(
        self,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        implicit_tls: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.implicit_tls = implicit_tls
        #: The command whose reply is awaited, for error messages.
        self.last_command = "the greeting"
        #: True once the current transaction started sending message data.
        self.message_data_sent = False
        self._auth_secrets: set[bytes] = set()
        super().__init__(local_hostname=local_hostname, timeout=command_timeout)

    @property
    def where(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def relay(self) -> tuple[str, int]:
        """(host, port) this transport connected to."""
        return self._host, self._port

    # -- connecting ------------------------------------------------------

    def connect(self, host="localhost", port=0, source_address=None):
        # smtplib remembers the host only when given to the constructor, and
        # TLS checks the certificate against that remembered name.
        self._host, self._port = host, port
        self.last_command = "the greeting"
        code, reply = super().connect(host, port, source_address)
        if code != 220:
            # smtplib checks the greeting only when connecting from __init__.
            self.close()
            raise smtplib.SMTPConnectError(code, reply)
        return code, reply

    def _get_socket(self, host, port, timeout):
        if self.debuglevel > 0:
            self._transcribe("*", [f"connecting to {host}:{port}"])
        try:
            sock = socket.create_connection((host, port), self.connect_timeout, self.source_address)
        except TimeoutError as error:
            raise ConnectTimeoutError(
                f"connecting to {host}:{port} timed out after {self.connect_timeout:g} s"
            ) from error
        except OSError as error:
            raise MTAConnectionError(f"cannot connect to {host}:{port}: {error.strerror or error}") from error
        except (UnicodeError, ValueError, OverflowError) as error:
            # A name the IDNA codec refuses, a NUL in the name, a port or
            # timeout out of range: nothing to do with the server.
            raise MTAConnectionError(f"cannot connect to {host!r}:{port}: {error}") from error
        # Commands are batched by us; Nagle's algorithm would only hold back
        # the last piece of each batch until the previous one is acknowledged.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        if self.implicit_tls is not None:
            sock = self._wrap(sock, self.implicit_tls, host, port, "implicit TLS (SMTPS)")
        return sock

    def _wrap(self, sock: socket.socket, context: ssl.SSLContext, host: str, port: int, how: str) -> ssl.SSLSocket:
        try:
            return context.wrap_socket(sock, server_hostname=host)
        except (ssl.SSLError, ssl.CertificateError, OSError) as error:
            sock.close()
            reason = getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error)
            failure = TLSHandshakeError if isinstance(error, ssl.SSLError) else TLSError
            raise failure(f"{how} with {host}:{port} failed: {reason}") from error

    def starttls_or_refuse(self, context: ssl.SSLContext) -> None:
        """Upgrade to TLS with STARTTLS, or raise `TLSError` and close.

        Never falls back to plaintext: if the server does not offer
        STARTTLS, or refuses it, or the handshake fails, nothing more is said.
        Nor does it go on when the server sent anything after its 220: such
        bytes arrived in plaintext, and taking them as replies inside TLS is
        the STARTTLS command injection of CVE-2011-0411.
        """
        self.ehlo_or_helo_if_needed()
        if not self.has_extn("starttls"):
            self.close()
            # smtplib's words first, which code written for it looks for.
            raise STARTTLSNotOffered(
                f"STARTTLS extension not supported by server. {self.where} does not offer STARTTLS, "
                "and secure_mode is starttls: refusing to send in plaintext"
            )
        code, reply = self.docmd("STARTTLS")
        if code != 220:
            self.close()
            raise TLSError(f"{self.where} refused STARTTLS: {code} {reply.decode(errors='replace')}")
        if self.unread():
            self.close()
            raise TLSError(
                f"{self.where} sent data after its 220 reply to STARTTLS; refusing to go on "
                "(what was sent in plaintext could pass for replies inside TLS)"
            )
        assert self.sock is not None, "connected, since STARTTLS was answered"
        if self._reader is not None:
            self._reader.settle()
        self.sock = self._wrap(self.sock, context, self._host, self._port, "STARTTLS")
        self.file = None
        # RFC 3207: forget everything learnt before TLS; EHLO again.
        self.helo_resp = self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False
        self.ehlo()

    # -- replies ---------------------------------------------------------

    def _reply_reader(self) -> ReplyReader:
        reader = self._reader
        if reader is None or reader.sock is not self.sock:
            if self.sock is None:
                raise smtplib.SMTPServerDisconnected("please run connect() first")
            if reader is not None:
                reader.settle()
            reader = self._reader = ReplyReader(self.sock, self.where)
        return reader

    def read_reply(self, command: str) -> Reply:
        """Read the reply to *command*; see `mailman_mta.replies.ReplyReader.read`.

        On any failure the connection is closed first.
        """
        reader = self._reader
        if reader is None or reader.sock is not self.sock:
            reader = self._reply_reader()
        try:
            reply = reader.read(command)
        except smtplib.SMTPServerDisconnected:
            self.close()
            raise
        if self.debuglevel > 0:
            self._transcribe("S", reply.wire_lines())
        return reply

    def read_replies(self, commands: Sequence[str]) -> Iterator[Reply]:
        """The replies to pipelined *commands*; see `ReplyReader.read_many`.

        The caller closes the connection if reading fails part-way.
        """
        replies = self._reply_reader().read_many(commands)
        return replies if self.debuglevel <= 0 else self._logged(replies)

    def _logged(self, replies: Iterator[Reply]) -> Iterator[Reply]:
        for reply in replies:
            self._transcribe("S", reply.wire_lines())
            yield reply

    def unread(self) -> int:
        """Octets received from the server and not yet read as a reply."""
        reader = self._reader
        return len(reader._buffer) if reader is not None and reader.sock is self.sock else 0

    def getreply(self):
        """`smtplib`'s reply reader, replaced by ours: (code, text) as smtplib returns them."""
        reply = self.read_reply(self.last_command)
        return reply.code, reply.text

    def input_pending(self) -> bool:
        """Has the server said something unprompted, or hung up?

        Looks at what is buffered (ours and TLS's) and asks the socket,
        without blocking.  A closed transport counts as having hung up.
        """
        sock = self.sock
        if sock is None:
            return True
        if self.unread():
            return True
        if self._reader is not None:
            self._reader.settle()
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():
            return True
        return readable_now(sock)

    # -- the conversation ------------------------------------------------

    def putcmd(self, cmd, args=""):
        self.last_command = cmd.upper()
        super().putcmd(cmd, args)

    def send(self, s):
        """smtplib's writer of commands (EHLO, AUTH, QUIT...), through our one write path."""
        if self.debuglevel > 0:
            text = s if isinstance(s, str) else s.decode("utf-8", "backslashreplace")
            self._transcribe("C", text.rstrip("\r\n").split("\r\n"))
        if isinstance(s, str):
            s = s.encode(self.command_encoding)
        sys.audit("smtplib.send", self, s)
        self._sendall(s)

    def write(self, data: bytes, command: str) -> None:
        """Send *data*, one or more command lines starting with *command*."""
        self.last_command = command
        if self.debuglevel > 0:
            self._transcribe("C", data.decode("utf-8", "backslashreplace").rstrip("\r\n").split("\r\n"))
        self._sendall(data)

    def write_data(self, segments: Iterable[bytes | memoryview]) -> None:
        """Send message data, gathering small segments into larger writes."""
        self.last_command = "the message data"
        self.message_data_sent = True
        sent = 0
        pending: list[bytes | memoryview] = []
        pending_octets = 0
        for segment in segments:
            if len(segment) >= _COALESCE_OCTETS:
                if pending:
                    self._sendall(b"".join(pending))
                    pending, pending_octets = [], 0
                self._sendall(segment)
            else:
                pending.append(segment)
                pending_octets += len(segment)
                if pending_octets >= _COALESCE_OCTETS:
                    self._sendall(b"".join(pending))
                    pending, pending_octets = [], 0
            sent += len(segment)
        self.last_command = "the end of DATA"
        if pending:
            self._sendall(b"".join(pending))
        if self.debuglevel > 0:
            self._transcribe("C", [f"(the message data: {sent} octets, with the final dot)"])

    def _sendall(self, data: bytes | memoryview) -> None:
        sock = self.sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected(f"{self.where} is not connected (sending {self.last_command})")
        timeout = sock.gettimeout()
        # The transaction's deadline is kept by its reader (see transact);
        # when it comes before the timeout, it bounds this write.
        reader = self._reader
        bounded_by: ReplyReader | None = None
        if reader is not None and reader.deadline is not None:
            left = reader.deadline - time.monotonic()
            if timeout is None or left < timeout:
                bounded_by = reader
                if left <= 0:
                    self.close()
                    raise reader.past_deadline(f"sending {self.last_command}")
        if timeout is not None and _WRITES_DIRECTLY and type(sock) is socket.socket:
            # A plain socket with a timeout is non-blocking underneath, and
            # its sendall polls before every send: what fits in its buffer
            # now goes straight to the descriptor, in one system call.  (A
            # TLS socket's data must go through TLS.)
            try:
                sent = os.write(sock.fileno(), data)
            except BlockingIOError:
                sent = 0
            except OSError as error:
                raise self._lost_while_sending(error) from error
            if sent == len(data):
                return
            if sent:
                data = memoryview(data)[sent:]
        if bounded_by is not None:
            sock.settimeout(left)
        try:
            sock.sendall(data)
        except TimeoutError:
            self.close()
            if bounded_by is not None:
                raise bounded_by.past_deadline(f"sending {self.last_command}") from None
            raise SMTPTimeoutError(f"{self.where} did not accept {self.last_command} within {timeout:g} s") from None
        except OSError as error:
            raise self._lost_while_sending(error) from error
        if bounded_by is not None:
            sock.settimeout(timeout)

    def _lost_while_sending(self, error: OSError) -> smtplib.SMTPServerDisconnected:
        self.close()
        return smtplib.SMTPServerDisconnected(
            f"{self.where} closed the connection while sending {self.last_command} ({error})"
        )

    # -- transactions ----------------------------------------------------

    def transact(self, envelope: Envelope, pipelining: bool = True, deadline: float | None = None) -> TransactionResult:
        """Run one mail transaction for *envelope*; see `IMessageTransactions`.

        Says EHLO first if that has not been done.  Raises what stops the
        transaction before MAIL (`mailman_mta.errors.UnsendableMessageError`,
        `mailman_mta.errors.EnvelopeError`, a failed EHLO); every failure
        after that is in the result.  With *deadline* (seconds), every write
        and every reply of the transaction must be over by then: a relay
        answering each command just within ``command_timeout`` cannot
        stretch one transaction to many of them.
        """
        return self.run_transaction(self.transaction_for(envelope, pipelining), deadline)

    def transaction_for(self, envelope: Envelope, pipelining: bool = True) -> Transaction:
        """The `Transaction` that would send *envelope* here; raises as `transact` does before MAIL."""
        self.ehlo_or_helo_if_needed()
        options = esmtp.mail_options(envelope, self)
        return Transaction(
            self,
            envelope.sender,
            envelope.recipients,
            envelope.message,
            options,
            envelope.rcpt_options,
            pipelining=pipelining and "pipelining" in self.esmtp_features,
        )

    def run_transaction(
        self,
        transaction: Transaction,
        deadline: float | None = None,
        *,
        commands_sent: bool = False,
        then: Callable[[], bytes] | None = None,
    ) -> TransactionResult:
        """Run *transaction* (see `Transaction.run` for *commands_sent* and *then*), within *deadline*."""
        self.message_data_sent = False
        if deadline is None:
            return transaction.run(commands_sent=commands_sent, then=then)
        # The reader keeps the deadline, for the writes too (see _sendall).
        reader = self._reply_reader()
        reader.deadline, reader.deadline_seconds = time.monotonic() + deadline, deadline
        try:
            return transaction.run(commands_sent=commands_sent, then=then)
        finally:
            reader.deadline = None

    def sendmail(self, from_addr, to_addrs, msg, mail_options=(), rcpt_options=()):
        """Run one transaction with the contract of `smtplib.SMTP.sendmail`.

        Returns the recipients the server refused, or raises the exception
        smtplib would.  Unlike smtplib, an address is sent exactly as given
        or refused (`mailman_mta.errors.EnvelopeError`), and a transaction
        that fails after some recipients were accepted raises, so nobody is
        counted as accepted who got nothing.
        """
        envelope = Envelope.build(from_addr, to_addrs, msg)
        envelope.mail_options = list(mail_options)
        envelope.rcpt_options = list(rcpt_options)
        result = self.transact(envelope)
        if result.error is not None:
            raise result.error
        return result.refused

    def close(self):
        self._reader = None
        super().close()

    # -- authentication --------------------------------------------------

    def login(self, user, password, *, initial_response_ok=True):
        """SMTP AUTH with *user* and *password* (a `Secret`, or text), as `smtplib.SMTP.login` does it.

        The same mechanisms in the same order (CRAM-MD5, PLAIN, LOGIN, of
        those the server offers), the same exceptions and words, the
        password sent as UTF-8 (RFC 4616), and no copy of it kept
        afterwards.  smtplib's own ``login`` is not used: its frame holds
        the password as text while the exchange that may fail runs, and a
        traceback keeps every frame's variables (error trackers and
        ``pytest --showlocals`` record them).  Here the password stays a
        `Secret` in every frame, and what is sent for it exists as text only
        while it is written (see `_send_secret`).  What each mechanism sends
        stays masked in replies until every one has been tried, since a
        server may echo an earlier attempt's secrets.
        """
        password = Secret(password)
        self.ehlo_or_helo_if_needed()
        if not self.has_extn("auth"):
            raise smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
        offered = self.esmtp_features["auth"].upper().split()
        mechanisms = [mechanism for mechanism in ("CRAM-MD5", "PLAIN", "LOGIN") if mechanism in offered]
        if not mechanisms:
            raise smtplib.SMTPException("No suitable authentication method found.")
        self.user = user
        self._logging_in = True
        refused: smtplib.SMTPAuthenticationError | None = None
        try:
            for mechanism in mechanisms:
                try:
                    return self.auth(
                        mechanism,
                        _Credentials(mechanism, user, password),
                        initial_response_ok=initial_response_ok,
                        secrets=[password],
                    )
                except smtplib.SMTPAuthenticationError as error:
                    refused = error
        finally:
            self._logging_in = False
            self._auth_secrets.clear()
        assert refused is not None, "every mechanism tried either returned or was refused"
        raise refused

    def auth(self, mechanism, authobject, *, initial_response_ok=True, secrets: Iterable[Secret] = ()):
        """One SASL exchange (RFC 4954), in UTF-8, with what is sent kept secret.

        *authobject* is called with None for the initial response, then
        with each decoded challenge, and returns the response: a `Secret`
        (or, as with smtplib, text).  Everything sent is masked in the
        transcript, and any reply that echoes it (or any of *secrets*, such
        as a password or token, given as `Secret`s) has it replaced by ``***``, so the
        credentials reach neither logs nor exceptions; nor tracebacks,
        since no frame here holds them as text while it can fail.
        """
        self._authenticating = True
        reader = self._reply_reader()
        reader.mask = self._mask_secrets
        self._auth_secrets.update(secret.reveal().encode("utf-8", "surrogatepass") for secret in secrets)
        try:
            mechanism = mechanism.upper()
            initial = self._respond(authobject, None) if initial_response_ok else None
            if initial is not None:
                code, reply = self._send_secret(f"AUTH {mechanism} ", initial)
                self._auth_challenge_count = 1
            else:
                code, reply = self.docmd("AUTH", mechanism)
                self._auth_challenge_count = 0
            while code == 334:
                self._auth_challenge_count += 1
                if self._auth_challenge_count > _MAX_CHALLENGES:
                    raise smtplib.SMTPAuthenticationError(code, b"the server keeps sending AUTH challenges")
                try:
                    challenge = base64.b64decode(reply, validate=True)
                except (binascii.Error, ValueError):
                    raise smtplib.SMTPAuthenticationError(code, b"the server's AUTH challenge is not base64") from None
                code, reply = self._send_secret("", self._respond(authobject, challenge) or Secret(""))
            if code in (235, 503):
                return code, reply
            raise smtplib.SMTPAuthenticationError(code, reply)
        finally:
            self._authenticating = False
            if not self._logging_in:
                self._auth_secrets.clear()
            if self._reader is reader:
                reader.mask = None

    def _respond(self, authobject, challenge: bytes | None) -> Secret | None:
        """The base64 answer *authobject* gives to *challenge*, as a `Secret` (and remembered, to mask)."""
        answer = authobject(challenge) if challenge is not None else authobject()
        if answer is None:
            return None
        encodable = True
        octets = wire = b""
        try:
            octets = Secret(answer).reveal().encode("utf-8", "surrogateescape")
            wire = base64.b64encode(octets)
            self._auth_secrets.update((octets, wire))
            return Secret(wire.decode("ascii"))
        except UnicodeError:
            encodable = False
        finally:
            # No text of the answer outlives the call.
            octets = wire = b""
            answer = None
        assert not encodable, "returned above"
        # Raised here, outside the handler, so that no exception carrying
        # the password hangs on to this one as its context.
        raise ConfigurationError(
            "the SMTP user name or password cannot be sent: it is not valid text (it holds a lone surrogate)",
            section="mta",
            key="smtp_pass",
        )

    def _send_secret(self, prefix: str, answer: Secret) -> tuple[int, bytes]:
        """Send *prefix* and *answer* as one command line (masked in the transcript); the reply.

        The line exists as plain bytes only in this frame, and only while it
        is written: it is gone before any failure is raised.
        """
        self.last_command = "AUTH"
        if self.debuglevel > 0:
            self._transcribe("C", [f"{prefix}{MASK}"])
        sock = self.sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected(f"{self.where} is not connected (sending AUTH)")
        failure: OSError | None = None
        line = (prefix + answer.reveal() + "\r\n").encode("ascii")
        try:
            sock.sendall(line)
        except OSError as error:
            failure = error
        finally:
            line = b""
        if isinstance(failure, TimeoutError):
            self.close()
            raise SMTPTimeoutError(f"{self.where} did not accept AUTH within {sock.gettimeout():g} s") from None
        if failure is not None:
            self.close()
            raise smtplib.SMTPServerDisconnected(
                f"{self.where} closed the connection while sending AUTH ({failure.strerror or failure})"
            ) from None
        return self.getreply()

    def _mask_secrets(self, text: bytes) -> bytes:
        for secret in self._auth_secrets:
            if secret and secret in text:
                text = text.replace(secret, MASK.encode())
        return text

    # -- the transcript --------------------------------------------------

    def _transcribe(self, direction: str, lines: list[str]) -> None:
        """Log *lines* of the conversation to the ``mailman_mta.transcript`` logger, one record each.

        *direction* is ``C`` (we said it), ``S`` (the server did) or ``*``
        (a note).  While authenticating, what we say is masked, keeping
        ``AUTH MECHANISM`` so the transcript shows what happened; replies
        were masked by the reader.  Each record carries ``smtp_relay``,
        ``smtp_direction`` and ``smtp_line`` for handlers that print it
        (``mailman-mta --transcript``).
        """
        if not transcript.isEnabledFor(logging.DEBUG):
            return
        for line in lines:
            if direction == "C" and self._authenticating:
                words = line.split()
                line = " ".join(words[:2] + [MASK]) if words[:1] == ["AUTH"] else MASK
            transcript.debug(
                "%s %s: %s",
                self.where,
                direction,
                line,
                extra={"smtp_relay": self.where, "smtp_direction": direction, "smtp_line": line},
            )

    def _print_debug(self, *args) -> None:
        """smtplib's own debug output: only its copy of the greeting is left, which we log as a reply."""


class _Credentials:
    """The responses of one SASL mechanism for a user name and a `Secret` password, each a `Secret`.

    Called as smtplib's ``auth_*`` methods are: with None for the initial
    response, then with each challenge.  The password is revealed only in
    the expression that builds a response, and goes straight into a new
    `Secret`.
    """

    def __init__(self, mechanism: str, user: str, password: Secret) -> None:
        self.mechanism = mechanism
        self.user = user
        self.password = password
        self.challenges = 0

    def __repr__(self) -> str:
        return f"<{self.mechanism} credentials for {self.user!r}>"

    def __call__(self, challenge: bytes | None = None) -> Secret | None:
        if self.mechanism == "PLAIN":
            return Secret(f"\0{self.user}\0{self.password.reveal()}")
        if self.mechanism == "LOGIN":
            if challenge is None:
                return None
            self.challenges += 1
            # RFC-less LOGIN: the first challenge asks for the user name.
            return Secret(self.user) if self.challenges == 1 else self.password
        if challenge is None:
            return None
        return Secret(f"{self.user} {_cram_md5(self.password, challenge)}")


def _cram_md5(password: Secret, challenge: bytes) -> str:
    """The CRAM-MD5 digest (RFC 2195) of *challenge*, keyed with the password as UTF-8."""
    try:
        return hmac.new(password.reveal().encode("utf-8", "surrogateescape"), challenge, "md5").hexdigest()
    except ValueError:
        pass
    # Raised outside the handler: MD5 is refused here (FIPS mode).
    raise smtplib.SMTPException("CRAM-MD5 cannot be computed here (MD5 is disabled)")


classImplements(smtplib.SMTP, ITransport)
