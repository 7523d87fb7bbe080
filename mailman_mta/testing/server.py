"""`CountingSMTPServer`: a real SMTP server for tests, built on aiosmtpd.

It runs aiosmtpd in a background thread on a loopback port, accepts every
message, and records what a test wants to assert on: how many connections
were made, what AUTH the client sent, and every message received, as an
`email.message.Message` with ``X-Peer``, ``X-MailFrom`` and ``X-RcptTo``
headers (aiosmtpd's convention) and as raw bytes.

    with CountingSMTPServer() as smtpd:
        Connection(smtpd.hostname, smtpd.port, 0).sendmail(...)
        assert smtpd.get_connection_count() == 1
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import fnmatch
import functools
import json
import logging
import random
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from email.message import Message as EmailMessage
from typing import Any, AnyStr

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import MessageBase
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, auth_mechanism

#: The credentials the server accepts unless told otherwise (as in the
#: Mailman connection doctests).
DEFAULT_CREDENTIALS: Mapping[str, str] = {"testuser": "testpass"}


class _HideLoginDataNotice(logging.Filter):
    """aiosmtpd 1.4 sets its own deprecated ``Session.login_data`` on every
    successful AUTH and logs a warning about it that no caller can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Session.login_data is deprecated")


logging.getLogger("mail.log").addFilter(_HideLoginDataNotice())


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as the server received it, byte for byte."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[str, ...] = ()
    peer: Any = None
    authenticated_as: str | None = None


#: Where in the conversation `CountingSMTPServer.script` can inject a fault:
#: before the greeting, at each command, after the 354 while the message is
#: arriving, and after its final dot (instead of the "250 OK").
FAULT_POINTS = (
    "CONNECT",
    "HELO",
    "EHLO",
    "STARTTLS",
    "AUTH",
    "MAIL",
    "RCPT",
    "DATA",
    "MID-DATA",
    "END-OF-DATA",
    "NOOP",
    "RSET",
    "QUIT",
)

#: A "hang" fault stops answering for this long at most; the client's own
#: timeout, or the server's stop(), normally ends it first.
HANG_SECONDS = 120.0

_REPLY = re.compile(r"^[2-5]\d\d[ -]")

#: How long `CountingSMTPServer.script` waits for connections that are
#: over to be gone from the server too.
SETTLE_SECONDS = 2.0

_POLLRDHUP = getattr(select, "POLLRDHUP", 0)


def _ending(protocol: SMTP) -> bool:
    """Is *protocol*'s connection over, closed by either side, though the server is not done with it?

    The client's side is looked at with poll(2), without reading.
    """
    transport = protocol.transport
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    poller = select.poll()
    try:
        poller.register(sock.fileno(), select.POLLIN | _POLLRDHUP)
        events = poller.poll(0)
    except (AttributeError, OSError, ValueError):  # no socket, or closed meanwhile
        return True
    return any(mask & (_POLLRDHUP | select.POLLHUP | select.POLLERR) for _, mask in events)


@dataclass
class Fault:
    """One scripted misbehaviour; see `CountingSMTPServer.script`."""

    point: str
    reply: str | None = None
    close: bool = False
    delay: float = 0.0
    hang: bool = False
    accept: bool = False
    times: int = 1

    def replaces_answer(self) -> bool:
        return bool(self.reply or self.close or self.hang)


@dataclass
class _Record:
    connections: int = 0
    auth_lines: list[str] = field(default_factory=list)
    messages: list[EmailMessage] = field(default_factory=list)
    received: list[ReceivedMessage] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)


class _Handler(MessageBase):
    """aiosmtpd handler: turns each event into a record on the server."""

    def __init__(self, server: CountingSMTPServer) -> None:
        super().__init__()
        self.server = server

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.server._chance("drop"):
            # The relay dies after the message, before its answer: lost.
            await server._drop()
            return "451 4.3.0 Not kept"  # never seen: the connection is gone
        fault = self.server._take_fault("END-OF-DATA")
        refusal = None
        if fault is None or fault.accept or not fault.replaces_answer():
            refusal = self._record(session, envelope)
        if fault is None:
            return refusal or "250 OK"
        # A reply that closes is pushed before closing; one that does not
        # is aiosmtpd's answer, returned.
        await server._misbehave(fault, push_reply=fault.close)
        return fault.reply or "250 OK"

    def _record(self, session, envelope) -> str | None:
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        received = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=bytes(envelope.original_content or envelope.content),
            mail_options=tuple(envelope.mail_options),
            rcpt_options=tuple(envelope.rcpt_options),
            peer=session.peer,
            authenticated_as=login,
        )
        message = self.prepare_message(session, envelope)
        return self.server._on_message(received, message)

    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        session.host_name = hostname
        hidden = set(self.server.hidden_extensions)
        if self.server.credentials is None and self.server.oauth_tokens is None:
            # aiosmtpd would still offer an empty "AUTH" line.
            hidden.add("AUTH")
        # aiosmtpd reads commands one line at a time, so it handles
        # pipelined commands; it just does not say so.
        responses = [*responses[:-1], "250-PIPELINING", responses[-1]]
        return [line for line in responses if line[4:].split(" ", 1)[0].upper() not in hidden]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        reply = self.server._refusal_for(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope) -> str:
        # A client that says RSET before saying hello is not in a mail
        # transaction: that is the "reset the counters" signal of the Mailman
        # doctests.  smtplib's own RSETs, after EHLO, leave the counts alone.
        if session.host_name is None:
            self.server.reset()
        return "250 OK"


class _CountingSMTP(SMTP):
    """aiosmtpd's protocol, reporting connections and raw AUTH lines."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._counting_server = handler.server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:  # not the STARTTLS upgrade of a connection already counted
            if self._counting_server.nagle:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            self._counting_server._on_connection(self, transport.get_extra_info("peername"))

    def connection_lost(self, error: Exception | None) -> None:
        self._counting_server._live.discard(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        server = self._counting_server
        if server._over_limit(self):
            await self.push("421 4.7.0 Error: too many connections from your host")
            await self._drop()
            return
        fault = server._take_fault("CONNECT")
        server._awaiting_greeting(+1)
        try:
            # A refusal instead of the greeting always ends the connection.
            if fault is not None and await self._misbehave(replace(fault, close=fault.replaces_answer())):
                return
        finally:
            server._awaiting_greeting(-1)
        await super()._handle_client()

    async def _fault(self, point: str) -> bool:
        """Apply the fault scripted at *point*, if any; True if it replaced the answer.

        A command read after either side closed the connection (the
        commands a client pipelined behind a 421, or before it gave up on
        a reply) gets no answer, and takes no fault: a fault is scripted
        for the next connection to reach its point, not for one that is
        already gone but that this server, when busy, reads late.
        """
        if _ending(self) or self._reader.at_eof():
            return True
        fault = self._counting_server._take_fault(point)
        return fault is not None and await self._misbehave(fault)

    async def push(self, status: AnyStr) -> None:
        """Send a reply; after a 421, close the connection, as RFC 5321 3.8 says a server does."""
        await super().push(status)
        code = status[:3] if isinstance(status, str) else status[:3].decode("ascii", "replace")
        if code == "421" and self.transport is not None:
            self.transport.close()

    async def _misbehave(self, fault: Fault, *, push_reply: bool = True) -> bool:
        """Carry out *fault*, the one way every point does: wait, hang, reply, close.

        Returns True if the fault replaced the normal answer.  With
        *push_reply* false the reply is left for the caller to return (as
        aiosmtpd's handlers answer).
        """
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.hang:
            await self._hang()
        if fault.reply and push_reply:
            await self.push(fault.reply)
        if fault.close:
            await self._drop()
        return fault.replaces_answer()

    async def _hang(self) -> None:
        try:
            await asyncio.sleep(HANG_SECONDS)
        finally:
            # Also when cancelled (the client left, or the server stops).
            if isinstance(self.transport, asyncio.WriteTransport):
                self.transport.abort()
        await self._drop()

    async def _drop(self) -> None:
        """Close the connection at once, and wait to be cancelled by it."""
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()
        await asyncio.sleep(1)

    @auth_mechanism("XOAUTH2")
    async def auth_XOAUTH2(self, _server: SMTP, args: list[str]) -> AuthResult:
        """XOAUTH2 as the big mailbox providers speak it.

        A good token (``oauth_tokens[user]``) gets 235.  A bad one gets a
        334 carrying a JSON error, to which the client must answer with an
        empty line before the 535 comes; what it answered is recorded in
        `xoauth2_error_answers`.
        """
        if len(args) > 1:  # ["XOAUTH2", initial response]
            try:
                response = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                return AuthResult(success=False, handled=True, message="501 5.5.2 Cannot decode response")
        else:
            answer = await self.challenge_auth("", log_client_response=False)
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True, message="501 5.7.0 Auth aborted")
            response = answer
        server = self._counting_server
        fields = dict(part.split("=", 1) for part in response.decode("utf-8", "replace").split("\x01") if "=" in part)
        user, bearer = fields.get("user", ""), fields.get("auth", "")
        if server.oauth_tokens and bearer == f"Bearer {server.oauth_tokens.get(user, object())}":
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "https://mail.example.com/"})
        answer = await self.challenge_auth(error, log_client_response=False)
        with server._lock:
            server.xoauth2_error_answers.append(answer if isinstance(answer, bytes) else None)
        return AuthResult(success=False, handled=False)

    async def smtp_AUTH(self, arg: str) -> None:
        self._counting_server._on_auth(arg)
        self._counting_server._on_command("AUTH")
        if not await self._fault("AUTH"):
            await super().smtp_AUTH(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self._counting_server._on_command("DATA")
        if await self._fault("DATA"):
            return
        fault = self._counting_server._take_fault("MID-DATA")
        if fault is None or self.envelope is None or not self.envelope.rcpt_tos:
            await super().smtp_DATA(arg)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        await self._reader.readuntil(b"\r\n")
        await self._misbehave(replace(fault, close=True))


def _with_faults(verb: str):
    """Wrap aiosmtpd's handler of *verb* so scripted faults can replace it."""
    original = getattr(SMTP, f"smtp_{verb}")

    @functools.wraps(original)
    async def smtp_verb(self: _CountingSMTP, arg: str) -> None:
        self._counting_server._on_command(verb)
        if not await self._fault(verb):
            await original(self, arg)

    return smtp_verb


for _verb in ("HELO", "EHLO", "STARTTLS", "MAIL", "RCPT", "NOOP", "RSET", "QUIT"):
    setattr(_CountingSMTP, f"smtp_{_verb}", _with_faults(_verb))


class _Controller(Controller):
    def __init__(self, server: CountingSMTPServer, **kwargs: Any) -> None:
        super().__init__(_Handler(server), **kwargs)
        self._counting_server = server

    def factory(self) -> SMTP:
        return _CountingSMTP(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # aiosmtpd connects to self.port to check the server is up, so with
        # port 0 it would connect to port 0.  Read the port the listener was
        # really given, and connect from a port we tell the server to ignore,
        # so the probe is not counted as a client.
        assert isinstance(self.server, asyncio.Server), "listening"
        self.port = self.server.sockets[0].getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(self.ready_timeout)
            probe.bind((self.hostname, 0))
            self._counting_server._probe_ports.add(probe.getsockname()[1])
            probe.connect((self.hostname, self.port))
            if self.ssl_context is not None:
                client = ssl.create_default_context()
                client.check_hostname = False
                client.verify_mode = ssl.CERT_NONE
                with client.wrap_socket(probe) as tls:
                    tls.recv(1024)
            else:
                probe.recv(1024)


class CountingSMTPServer:
    """An aiosmtpd SMTP server on loopback that counts and records.

    :param hostname: the address to listen on; loopback by default.
    :param port: the port; 0 (the default) takes a free one, read back
        from `port` after `start`.
    :param credentials: user name -> password pairs that AUTH accepts
        (AUTH PLAIN and LOGIN are offered, without TLS); None offers no AUTH.
        Anything else gets ``535 5.7.8`` and the client raises
        `smtplib.SMTPAuthenticationError`.
    :param oauth_tokens: user name -> the access token AUTH XOAUTH2
        accepts; None (the default) does not offer XOAUTH2.
    :param ssl_context: a server-side context for implicit TLS (SMTPS).
    :param hidden_extensions: ESMTP extensions to leave out of the EHLO
        reply (``"8BITMIME"``, ``"SMTPUTF8"``, ``"SIZE"``, ``"STARTTLS"``,
        ``"PIPELINING"``...).  PIPELINING is offered unless hidden, as
        Postfix and Exim offer it.
    :param on_message: called with each `ReceivedMessage`, in the server's
        thread, as it arrives, before the client is answered.  It may
        return an SMTP reply line (``"451 4.3.0 ..."``) to answer instead
        of 250; the message is then not kept.
    :param connection_limit: the most connections open at once; one more
        is greeted with ``421 4.7.0`` and closed, as Postfix does for a
        client over its ``smtpd_client_connection_count_limit``.  None (the
        default): no limit.  `most_connections` and `connections_refused`
        say what happened.
    :param nagle: leave Nagle's algorithm on (asyncio turns it off), so
        that every reply after the first of a pipelined group waits until
        the client acknowledges the one before, as with servers that write
        replies one by one without ``TCP_NODELAY``.
    :param smtp_options: further keyword arguments for `aiosmtpd.smtp.SMTP`
        (``tls_context``, ``require_starttls``, ``data_size_limit``, ...).

    Connections are counted from the moment they are accepted; the count and
    the last AUTH line are reset by `reset()`, or by a client that connects
    and sends RSET before HELO/EHLO (what Mailman's doctests do).
    """

    def __init__(
        self,
        hostname: str = "127.0.0.1",
        port: int = 0,
        credentials: Mapping[str, str] | None = DEFAULT_CREDENTIALS,
        *,
        oauth_tokens: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        hidden_extensions: Iterable[str] = (),
        on_message: Callable[[ReceivedMessage], str | None] | None = None,
        ready_timeout: float = 10.0,
        connection_limit: int | None = None,
        nagle: bool = False,
        **smtp_options: Any,
    ) -> None:
        self.connection_limit = connection_limit
        self.nagle = nagle
        #: The most connections that were open at one moment.
        self.most_connections = 0
        #: Connections greeted with 421 for being over `connection_limit`.
        self.connections_refused = 0
        self.hostname = hostname
        self._requested_port = port
        self.credentials = dict(credentials) if credentials is not None else None
        self.oauth_tokens = dict(oauth_tokens) if oauth_tokens is not None else None
        #: What clients answered to XOAUTH2's error challenge (b"" is right).
        self.xoauth2_error_answers: list[bytes | None] = []
        self._ssl_context = ssl_context
        self._ready_timeout = ready_timeout
        self._smtp_options = smtp_options
        self._lock = threading.Lock()
        self._record = _Record()
        self.hidden_extensions = {name.upper() for name in hidden_extensions}
        self.on_message = on_message
        self._probe_ports: set[int] = set()
        self._greeting_pending = 0
        #: The most connections that were, at one moment, waiting for their
        #: greeting (a ``CONNECT`` fault with a delay keeps them waiting).
        self.most_awaiting_greeting = 0
        self._refusals: dict[str, str] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        self._rates = {"fail": 0.0, "drop": 0.0}
        self._random = random.Random()
        self._faults: list[Fault] = []
        self._live: set[_CountingSMTP] = set()
        self._controller: _Controller | None = None

    # -- lifecycle -------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on, or last listened on.

        After `stop`, `start` listens on this same port again, so a test can
        restart "the same" server under a client.
        """
        if self._controller is None:
            return self._requested_port
        return self._controller.port

    def start(self) -> CountingSMTPServer:
        """Start listening; return self.  Raises if it is already running."""
        if self._controller is not None:
            raise RuntimeError("CountingSMTPServer is already running")
        options = dict(self._smtp_options)
        options.setdefault("auth_require_tls", False)
        excluded = list(options.pop("auth_exclude_mechanism", ()))
        if self.oauth_tokens is None:
            excluded.append("XOAUTH2")
        if self.credentials is None:
            excluded += ["LOGIN", "PLAIN"]
        else:
            options["authenticator"] = self._authenticate
        controller = _Controller(
            self,
            hostname=self.hostname,
            port=self._requested_port,
            ssl_context=self._ssl_context,
            ready_timeout=self._ready_timeout,
            auth_exclude_mechanism=excluded,
            **options,
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop listening and close every client connection."""
        controller, self._controller = self._controller, None
        if controller is not None:
            self._requested_port = controller.port
            controller.stop()

    def __enter__(self) -> CountingSMTPServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._controller is not None else "stopped"
        return f"<CountingSMTPServer {self.hostname}:{self.port} {state}>"

    # -- what the tests read ---------------------------------------------

    def get_connection_count(self) -> int:
        """Connections accepted since the last reset."""
        with self._lock:
            return self._record.connections

    def get_authentication_credentials(self) -> str | None:
        """The last AUTH command's arguments as sent, e.g. ``PLAIN AHRl...``."""
        with self._lock:
            return self._record.auth_lines[-1] if self._record.auth_lines else None

    @property
    def messages(self) -> list[EmailMessage]:
        """Every message received since the last `clear`, oldest first."""
        with self._lock:
            return list(self._record.messages)

    @property
    def received(self) -> list[ReceivedMessage]:
        """The same messages as raw `ReceivedMessage` records."""
        with self._lock:
            return list(self._record.received)

    @property
    def copies(self) -> collections.Counter[str]:
        """How many copies of a message each recipient got since the last `clear`: "once each" is a test."""
        return collections.Counter(recipient for message in self.received for recipient in message.rcpt_tos)

    def wait_for_messages(self, count: int, timeout: float = 15.0) -> list[ReceivedMessage]:
        """Wait until at least *count* messages have arrived; return them all.

        For mail that reaches this server through another MTA, which queues
        it first.  Raises `TimeoutError` after *timeout* seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            received = self.received
            if len(received) >= count:
                return received
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(received)} message(s) arrived within {timeout:g} s, not {count}")
            time.sleep(0.02)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._lock:
            self._record.messages.clear()
            self._record.received.clear()
            self._record.commands.clear()

    def reset(self) -> None:
        """Set the connection count back to zero and forget AUTH lines."""
        with self._lock:
            self._record.connections = 0
            self._record.auth_lines.clear()

    @property
    def commands(self) -> list[str]:
        """Every command verb received since the last `clear`, in order."""
        with self._lock:
            return list(self._record.commands)

    def script(
        self,
        point: str,
        *,
        reply: str | None = None,
        close: bool = False,
        delay: float = 0.0,
        hang: bool = False,
        accept: bool = False,
        times: int = 1,
    ) -> None:
        """Misbehave at *point* (one of `FAULT_POINTS`) the next *times* times.

        :param reply: answer with this line (``"421 4.3.2 Going down"``)
            instead of the real answer.
        :param close: close the connection (after *reply*, if given).
        :param delay: wait this many seconds first (then answer normally,
            unless *reply*, *close* or *hang* say otherwise).
        :param hang: never answer (until the client gives up, the server
            stops, or `HANG_SECONDS` pass).
        :param accept: at ``END-OF-DATA``, keep the message even though the
            client is not told so (the "was it delivered?" case).
        :param times: how many times the fault fires; 0 means always.

        At ``CONNECT`` a *reply* replaces the greeting and ends the
        connection.  ``MID-DATA`` reads the first line of the message and
        then closes (or hangs).  Faults at one point fire in the order
        they were scripted, on the next connections to reach it: first
        the server finishes with every connection that is already over
        (waiting `SETTLE_SECONDS` at most).
        """
        point = point.upper()
        if point not in FAULT_POINTS:
            raise ValueError(f"cannot script a fault at {point!r}; the points are {', '.join(FAULT_POINTS)}")
        if reply is not None and not _REPLY.match(reply):
            raise ValueError(f"reply {reply!r} is not an SMTP reply line like '421 4.3.2 Going down'")
        if hang and (reply or close):
            raise ValueError("a fault that hangs cannot also reply or close")
        if point == "MID-DATA" and reply:
            raise ValueError("MID-DATA faults can close or hang, not reply")
        if accept and point != "END-OF-DATA":
            raise ValueError("accept= only means something at END-OF-DATA")
        if times < 0 or delay < 0:
            raise ValueError("times and delay cannot be negative")
        self._settle()
        with self._lock:
            self._faults.append(Fault(point, reply, close, delay, hang, accept, times))

    def _settle(self) -> None:
        """Wait until this server is done with every connection that is over (`SETTLE_SECONDS` at most).

        A busy server reads the last commands a client pipelined before it
        gave up late, after the client has moved on: a fault scripted now
        is for the next connection, and must not go to them.
        """
        deadline = time.monotonic() + SETTLE_SECONDS
        while any(_ending(protocol) for protocol in list(self._live)) and time.monotonic() < deadline:
            time.sleep(0.005)

    def clear_faults(self) -> None:
        """Forget every scripted fault that has not fired yet."""
        with self._lock:
            self._faults.clear()

    def accept_recipient(self, address: str) -> None:
        """Take back `refuse_recipient` for *address*: it is accepted from now on."""
        with self._lock:
            self._refusals.pop(address, None)

    def clear_refusals(self) -> None:
        """Forget every `refuse_recipient` and `refuse_matching`."""
        with self._lock:
            self._refusals.clear()
            self._patterns.clear()

    def drop_connections(self, reply: str | None = None) -> int:
        """Close every open client connection now, as a relay's idle timeout does.

        With *reply* (``"421 4.4.2 Idle timeout"``), say it first.  Returns
        how many connections were closed.
        """
        controller = self._controller
        if controller is None:
            return 0

        async def drop() -> int:
            protocols = list(self._live)
            for protocol in protocols:
                if isinstance(protocol.transport, asyncio.WriteTransport):
                    if reply:
                        protocol.transport.write(reply.encode() + b"\r\n")
                    protocol.transport.close()
            await asyncio.sleep(0)
            return len(protocols)

        return asyncio.run_coroutine_threadsafe(drop(), controller.loop).result(timeout=10)

    def refuse_recipient(self, address: str, reply: str = "550 5.1.1 No such user") -> None:
        """Answer RCPT TO for *address* with *reply* (a full SMTP reply line)."""
        with self._lock:
            self._refusals[address] = reply

    def refuse_matching(self, pattern: str, reply: str = "550 5.1.1 No such user") -> None:
        """Answer RCPT TO with *reply* for every address matching the shell-style *pattern*.

        Case-insensitive: ``*@example.org``, ``bounce-*``, ``?@*``.
        """
        if not _REPLY.match(reply):
            raise ValueError(f"reply {reply!r} is not an SMTP reply line like '550 5.1.1 No such user'")
        with self._lock:
            self._patterns.append((re.compile(fnmatch.translate(pattern), re.IGNORECASE), reply))

    def misbehave_at_random(self, *, fail_rate: float = 0.0, drop_rate: float = 0.0, seed: int | None = None) -> None:
        """Refuse a share of recipients for now, and drop a share of messages, at random.

        *fail_rate* of RCPTs get ``451 4.3.0`` (try again later); after
        *drop_rate* of messages the connection is closed before the answer
        to the final dot, and the message is not kept (the client cannot
        tell whether it arrived).  *seed* makes the choices repeatable.
        """
        for name, rate in (("fail_rate", fail_rate), ("drop_rate", drop_rate)):
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be from 0 to 1, not {rate!r}")
        with self._lock:
            self._rates = {"fail": fail_rate, "drop": drop_rate}
            self._random = random.Random(seed)

    # -- called from the server thread -----------------------------------

    def _on_connection(self, protocol: _CountingSMTP, peer: Any) -> None:
        if peer is not None and peer[1] in self._probe_ports:
            self._probe_ports.discard(peer[1])
            return
        self._live.add(protocol)
        with self._lock:
            self._record.connections += 1

    def _over_limit(self, protocol: _CountingSMTP) -> bool:
        """Is *protocol* one connection too many?  (It is then not counted as open.)"""
        with self._lock:
            if self.connection_limit is not None and len(self._live) > self.connection_limit:
                self._live.discard(protocol)
                self.connections_refused += 1
                return True
            self.most_connections = max(self.most_connections, len(self._live))
            return False

    def _on_command(self, verb: str) -> None:
        with self._lock:
            self._record.commands.append(verb)

    def _refusal_for(self, address: str) -> str | None:
        with self._lock:
            reply = self._refusals.get(address)
            if reply is None:
                reply = next((reply for pattern, reply in self._patterns if pattern.fullmatch(address)), None)
        if reply is None and self._chance("fail"):
            reply = "451 4.3.0 Temporary failure, chosen at random (misbehave_at_random)"
        return reply

    def _chance(self, what: str) -> bool:
        with self._lock:
            rate = self._rates[what]
            return rate > 0 and self._random.random() < rate

    def _take_fault(self, point: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.point == point:
                    if fault.times == 1:
                        self._faults.remove(fault)
                    elif fault.times > 1:
                        fault.times -= 1
                    return fault
        return None

    def _on_auth(self, arg: str) -> None:
        with self._lock:
            self._record.auth_lines.append(arg)

    def _awaiting_greeting(self, change: int) -> None:
        with self._lock:
            self._greeting_pending += change
            self.most_awaiting_greeting = max(self.most_awaiting_greeting, self._greeting_pending)

    def _on_message(self, received: ReceivedMessage, message: EmailMessage) -> str | None:
        """Keep the message, unless `on_message` refuses it: its reply, or None."""
        if self.on_message is not None:
            refusal = self.on_message(received)
            if refusal is not None:
                return refusal
        with self._lock:
            self._record.received.append(received)
            self._record.messages.append(message)
        return None

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if (
            isinstance(auth_data, LoginPassword)
            and self.credentials is not None
            and self.credentials.get(auth_data.login.decode("utf-8", "replace"))
            == auth_data.password.decode("utf-8", "replace")
        ):
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)
