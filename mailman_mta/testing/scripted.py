"""`ScriptedSMTPServer`: a raw-socket SMTP server that misbehaves on cue.

`CountingSMTPServer` is aiosmtpd, a well-behaved server with a few faults
bolted on.  A relay in the wild can send anything: a reply that is not
SMTP, a multi-line reply whose codes disagree, a line of 10,000 octets, one
byte a second, or nothing at all; it can hang up at any point, and keep a
message it never acknowledged.  This server speaks plain SMTP over a raw
socket and lets a script replace any of its answers with any bytes, so
tests (and property tests generating the script) can throw at the client
what nobody thought of.

Every step of the conversation is one `Action`, taken from the script in
order; when the script runs out the server behaves.  The steps are the
greeting, each command line, and the end of the message data.  What the
server saw and kept is recorded, so a test can compare what the client
reported with what really happened:

    with ScriptedSMTPServer() as server:
        server.script(Action(), Action(), Action(),          # greeting, EHLO, MAIL
                      Action(reply=b"421 4.3.2 Bye\\r\\n", close=True))  # first RCPT
        ...
        server.transactions   # what each MAIL FROM led to, message kept or not
        server.reads          # every recv(), to see how commands were batched

It listens on 127.0.0.1 and a free port, serves one connection at a time
per thread, and every wait in it is bounded, so `stop()` always returns.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from dataclasses import dataclass, field

#: The ESMTP extensions offered unless told otherwise.
DEFAULT_EXTENSIONS = ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 52428800", "ENHANCEDSTATUSCODES")

#: A hanging step waits at most this long (the client's timeout, or stop(),
#: normally ends it first).
HANG_SECONDS = 30.0

#: The largest message kept; more is read and thrown away.
MAX_DATA_OCTETS = 64 * 1024 * 1024

_POLL_SECONDS = 0.05


@dataclass
class Action:
    """What the server does at one step.

    :param reply: the exact bytes to send instead of the normal reply
        (None: the normal reply).  Anything goes: garbage, no CRLF, many
        lines.
    :param delay: seconds to wait before replying.
    :param trickle: seconds to wait between the reply's bytes (it is sent
        one byte at a time).
    :param hang: never reply (until the client hangs up or the server stops).
    :param close: hang up after the reply (right away if *reply* is b"").
    :param keep: at the end of DATA, keep the message whatever is replied
        (True) or drop it (False); None keeps it exactly when the reply is
        a 2xx.
    """

    reply: bytes | None = None
    delay: float = 0.0
    trickle: float = 0.0
    hang: bool = False
    close: bool = False
    keep: bool | None = None


@dataclass
class Recipient:
    """One RCPT TO the server answered, and the code it answered with."""

    address: str
    code: int | None


@dataclass
class ServerTransaction:
    """One MAIL FROM and what became of it, as the server saw it."""

    connection: int
    mail_from: str
    mail_code: int | None
    recipients: list[Recipient] = field(default_factory=list)
    data_code: int | None = None
    data: bytes | None = None
    final_code: int | None = None
    kept: bool = False

    @property
    def accepted(self) -> list[str]:
        """Recipients given a 2xx at RCPT (after a 2xx to MAIL)."""
        if not _positive(self.mail_code):
            return []
        return [r.address for r in self.recipients if _positive(r.code)]


def _positive(code: int | None) -> bool:
    return code is not None and 200 <= code < 300


def reply_code(reply: bytes) -> int | None:
    """The code a reply starts with, if it starts with three digits."""
    head = reply[:3]
    return int(head) if len(head) == 3 and head.isdigit() else None


class _Hangup(Exception):
    """The step closed the connection (or the client did)."""


class ScriptedSMTPServer:
    """A raw SMTP server on loopback driven by a script; see the module docstring.

    :param extensions: the EHLO keywords offered, in order.
    :param hostname: where to listen (loopback).
    :param max_data_octets: how much of each message to keep; the rest is
        read and thrown away (0 keeps none, for measuring the client alone).
    :param connection_limit: the most connections served at once; one more
        is sent *over_limit* (raw bytes, a greeting or not) and closed.

    `reads` records every read outside message data.
    """

    def __init__(
        self,
        extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
        hostname: str = "127.0.0.1",
        *,
        max_data_octets: int = MAX_DATA_OCTETS,
        connection_limit: int | None = None,
        over_limit: bytes = b"421 4.7.0 Too many connections\r\n",
    ) -> None:
        #: With a limit, a connection beyond it gets *over_limit* (any
        #: bytes) instead of a session, and is closed; it takes no action
        #: from the script.  `refused_connections` counts them.
        self.connection_limit = connection_limit
        self.over_limit = over_limit
        self.refused_connections = 0
        self.extensions = tuple(extensions)
        self.hostname = hostname
        self.max_data_octets = max_data_octets
        self.port = 0
        self._lock = threading.Lock()
        self._actions: collections.deque[Action] = collections.deque()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._clients: set[socket.socket] = set()
        self.connections = 0
        #: (number of reads before it, line) for every command line.
        self.commands: list[tuple[int, bytes]] = []
        self.reads: list[tuple[int, bytes]] = []
        self.auth_lines: list[bytes] = []
        self.transactions: list[ServerTransaction] = []

    # -- lifecycle -------------------------------------------------------

    def start(self) -> ScriptedSMTPServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.hostname, 0))
        listener.listen(16)
        listener.settimeout(_POLL_SECONDS)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Stop listening, hang up on every client, and wait for every thread."""
        self._stopping.set()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            _shut(client)
        for thread in list(self._threads):
            thread.join(timeout=HANG_SECONDS + 5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> ScriptedSMTPServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the script ------------------------------------------------------

    def script(self, *actions: Action) -> None:
        """Queue *actions* for the next steps, in order."""
        with self._lock:
            self._actions.extend(actions)

    @property
    def kept(self) -> list[ServerTransaction]:
        """The transactions whose message the server kept."""
        with self._lock:
            return [t for t in self.transactions if t.kept]

    def _next_action(self) -> Action:
        with self._lock:
            return self._actions.popleft() if self._actions else Action()

    # -- serving ---------------------------------------------------------

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="scripted-smtp")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None, "started"
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                over = self.connection_limit is not None and len(self._clients) >= self.connection_limit
                if over:
                    self.refused_connections += 1
                else:
                    self.connections += 1
                    number = self.connections
                    self._clients.add(client)
            if over:
                try:
                    client.sendall(self.over_limit)
                except OSError:
                    pass
                _shut(client)
                continue
            self._spawn(self._serve, client, number)

    def _serve(self, client: socket.socket, number: int) -> None:
        session = _Session(self, client, number)
        try:
            session.run()
        except (_Hangup, OSError):
            pass
        finally:
            with self._lock:
                self._clients.discard(client)
            _shut(client)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Session:
    """One client connection: read lines, take actions, record."""

    def __init__(self, server: ScriptedSMTPServer, client: socket.socket, number: int) -> None:
        self.server = server
        self.client = client
        self.number = number
        self.buffer = bytearray()
        self.transaction: ServerTransaction | None = None
        self.in_data = False
        client.settimeout(_POLL_SECONDS)

    def run(self) -> None:
        self.finish(self.step(b"220 scripted.example ESMTP ready\r\n")[0])
        while True:
            line = self.read_line()
            with self.server._lock:
                self.server.commands.append((len(self.server.reads), line))
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
            handler = getattr(self, f"on_{verb.decode('ascii', 'replace')}", None)
            if handler is None:
                self.finish(self.step(b"502 5.5.2 Command not recognized\r\n")[0])
            else:
                handler(line)

    # -- input -------------------------------------------------------

    def receive(self) -> bytes:
        deadline = time.monotonic() + HANG_SECONDS
        while not self.server._stopping.is_set() and time.monotonic() < deadline:
            try:
                chunk = self.client.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise _Hangup()
            if not self.in_data:
                with self.server._lock:
                    self.server.reads.append((self.number, chunk))
            return chunk
        raise _Hangup()

    def read_line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end]).rstrip(b"\r")
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > 65536:
                raise _Hangup()
            self.buffer += self.receive()

    def read_data(self) -> bytes:
        """The message up to the lone dot, un-dot-stuffed."""
        data = bytearray()
        size = 0
        limit = self.server.max_data_octets
        self.in_data = True
        try:
            while True:
                line = self.read_line()
                if line == b".":
                    return bytes(data)
                if line.startswith(b"."):
                    line = line[1:]
                size += len(line) + 2
                if size <= limit:
                    data += line + b"\r\n"
        finally:
            self.in_data = False

    # -- output ------------------------------------------------------

    def step(self, normal: bytes) -> tuple[Action, bytes]:
        """Take the next action in place of sending *normal*; return it and what was sent."""
        action = self.server._next_action()
        return action, self.perform(action, normal)

    def perform(self, action: Action, normal: bytes) -> bytes:
        self.wait(action.delay)
        if action.hang:
            self.wait(HANG_SECONDS, until_hangup=True)
            raise _Hangup()
        reply = normal if action.reply is None else action.reply
        if action.trickle:
            for index in range(len(reply)):
                self.client.sendall(reply[index : index + 1])
                self.wait(action.trickle)
        elif reply:
            self.client.sendall(reply)
        return reply

    def finish(self, action: Action) -> None:
        if action.close:
            raise _Hangup()

    def wait(self, seconds: float, until_hangup: bool = False) -> None:
        deadline = time.monotonic() + seconds
        while not self.server._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if until_hangup:
                self.client.settimeout(min(remaining, _POLL_SECONDS))
                try:
                    if not self.client.recv(65536):
                        return
                except TimeoutError:
                    continue
            else:
                time.sleep(min(remaining, _POLL_SECONDS))

    # -- commands ----------------------------------------------------

    def on_EHLO(self, line: bytes) -> None:
        lines = [b"scripted.example", *(extension.encode() for extension in self.server.extensions)]
        normal = b"".join(
            b"250" + (b" " if index == len(lines) - 1 else b"-") + text + b"\r\n" for index, text in enumerate(lines)
        )
        self.finish(self.step(normal)[0])

    def on_HELO(self, line: bytes) -> None:
        self.finish(self.step(b"250 scripted.example\r\n")[0])

    def on_MAIL(self, line: bytes) -> None:
        self.transaction = None
        action, reply = self.step(b"250 2.1.0 Ok\r\n")
        code = reply_code(reply)
        transaction = ServerTransaction(self.number, _path(line), code)
        with self.server._lock:
            self.server.transactions.append(transaction)
        if _positive(code):
            self.transaction = transaction
        self.finish(action)

    def on_RCPT(self, line: bytes) -> None:
        transaction = self.transaction
        action, reply = self.step(b"250 2.1.5 Ok\r\n" if transaction else b"503 5.5.1 Error: need MAIL command\r\n")
        if transaction is not None:
            transaction.recipients.append(Recipient(_path(line), reply_code(reply)))
        self.finish(action)

    def on_DATA(self, line: bytes) -> None:
        transaction = self.transaction
        ready = transaction is not None and transaction.accepted
        action, reply = self.step(
            b"354 End data with <CR><LF>.<CR><LF>\r\n" if ready else b"503 5.5.1 Error: no valid recipients\r\n"
        )
        if transaction is not None:
            transaction.data_code = reply_code(reply)
        self.finish(action)
        if reply_code(reply) != 354:
            return
        data = self.read_data()
        self.transaction = None
        final = self.server._next_action()
        if transaction is not None:
            transaction.data = data
            # A hang keeps the message only when told to.
            transaction.kept = bool(final.keep)
        reply = self.perform(final, b"250 2.0.0 Ok: queued\r\n")
        if transaction is not None:
            transaction.final_code = reply_code(reply)
            transaction.kept = final.keep if final.keep is not None else _positive(transaction.final_code)
        self.finish(final)

    def on_AUTH(self, line: bytes) -> None:
        """Any credentials will do (unless the script says otherwise)."""
        with self.server._lock:
            self.server.auth_lines.append(line)
        self.finish(self.step(b"235 2.7.0 Authentication successful\r\n")[0])

    def on_RSET(self, line: bytes) -> None:
        self.transaction = None
        self.finish(self.step(b"250 2.0.0 Ok\r\n")[0])

    def on_NOOP(self, line: bytes) -> None:
        self.finish(self.step(b"250 2.0.0 Ok\r\n")[0])

    def on_QUIT(self, line: bytes) -> None:
        self.step(b"221 2.0.0 Bye\r\n")
        raise _Hangup()


def _path(line: bytes) -> str:
    """The address between < and > in a MAIL or RCPT line."""
    start, end = line.find(b"<"), line.find(b">")
    return line[start + 1 : end].decode("utf-8", "replace") if 0 <= start < end else ""
