"""`ConnectionPool`: several connections to the relay, sending at once.

One connection sends one transaction at a time, and mostly waits: for the
relay's replies, and for the relay to write the message to its queue.  A
list server sending a post to thousands of members, or thousands of VERP
copies, gets through them faster over a few connections at once, as MTAs
themselves do (Postfix opens up to 20 per destination).

Each connection in the pool is a full `Connection`: its own session limits,
liveness checks, TLS, AUTH, retries and plugins, exactly as when used
alone.  A connection is used by one thread at a time; transactions run on
the threads of a `concurrent.futures.ThreadPoolExecutor`, each taking an
idle connection (the most recently used first, so a light load keeps to
one connection) and giving it back when done.  A connection that fails
fails only the transaction it was carrying.
"""

from __future__ import annotations

import logging
import queue
import smtplib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from .connection import Connection
from .envelope import Envelope
from .results import reply_text
from .smtp import transport
from .smtp.transaction import TransactionResult

log = logging.getLogger("mailman_mta.pool")

#: How long a pool keeps its concurrency lowered after the relay refused a
#: connection, before successes may raise it again, one at a time.
FEEDBACK_SECONDS = 30.0

#: The clock for that (tests replace it).
clock = time.monotonic


def pushed_back(error: smtplib.SMTPConnectError) -> bool:
    """Does a refused greeting say "too many connections" (421, or 4.7.x)?

    RFC 5321 3.8 and 4.3.2: 421 is "service not available"; Postfix's
    anvil and most relays answer a client over its connection limit with
    ``421 4.7.0``, and RFC 3463 puts policy refusals in 4.7.x.
    """
    text = error.smtp_error if isinstance(error.smtp_error, bytes) else str(error.smtp_error).encode()
    if error.smtp_code == 421:
        return True
    # A multi-line reply may carry its enhanced code on any line (RFC 2034).
    return 400 <= error.smtp_code < 500 and any(line.lstrip().startswith(b"4.7.") for line in text.splitlines())


class ConnectionPool:
    """Up to *size* connections like *first* (its `Connection.sibling`s).

    Connections are made when there is work for them (a new one only when
    every other is busy, and while the relay has not pushed back: see
    `concurrency`); one at a time: the connections of a
    pool share an `opening lock <Connection.opening_lock>`, so a relay slow
    to greet is never asked for many connections at once (relays ban hosts
    that do that).
    """

    def __init__(
        self, first: Connection, size: int, *, completed: queue.SimpleQueue[Future[TransactionResult]] | None = None
    ) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one connection, not {size}")
        self.size = size
        self._opening = threading.Lock()
        first.opening_lock = self._opening
        self.connections = [first]
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._idle.put(first)
        self._lock = threading.Lock()
        #: How many connections the pool may have now: `size`, lowered
        #: while the relay pushes back (see `_opened`).
        self.concurrency = size
        self._lowered_until = float("-inf")
        self._successes = 0
        self._executor: ThreadPoolExecutor | None = None
        #: Where finished futures go; several pools may share one.
        self._completed: queue.SimpleQueue[Future[TransactionResult]] = (
            completed if completed is not None else queue.SimpleQueue()
        )

    def submit(self, envelope: Envelope) -> Future[TransactionResult]:
        """Send *envelope* on the next idle connection; its result, in the future.

        The future raises only what `Connection.transact` raises: what
        plugins raise while preparing the envelope, or an interruption.
        Once done (or cancelled) it is handed out by `completed`.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="mailman-mta")
        future = self._executor.submit(self._send, envelope)
        future.add_done_callback(self._completed.put)
        return future

    def completed(self) -> Future[TransactionResult]:
        """The next submitted future to be done or cancelled, waiting for one."""
        return self._completed.get()

    def send_here(self, envelope: Envelope) -> TransactionResult:
        """Send *envelope* from the calling thread, on an idle connection.

        For a transaction with nothing else under way: no hand-over to
        another thread.
        """
        return self._send(envelope)

    def _send(self, envelope: Envelope) -> TransactionResult:
        connection = self._take()
        try:
            result = connection.transact(envelope)
        finally:
            self._idle.put(connection)
        if result.error is None:
            self._succeeded()
        return result

    def _take(self) -> Connection:
        """An idle connection; a new one while the pool is below its `concurrency`.

        At most `size` transactions run at once, and every connection but
        one refused by the relay is given back, so one always comes.
        """
        while True:
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                pass
            with self._lock:
                grow = len(self.connections) < self.concurrency
                if grow:
                    connection = self.connections[0].sibling()
                    connection.opening_lock = self._opening
                    self.connections.append(connection)
            if not grow:
                return self._idle.get()
            if self._opened(connection):
                return connection

    def _opened(self, connection: Connection) -> bool:
        """Open a new *connection* before it is given work; False if the relay pushed back.

        A relay that answers a new connection with 421, or a 4.7.x "too
        many connections", while others of ours are open, is telling us the
        destination's concurrency: the pool lowers its `concurrency` to the
        connections it has for `FEEDBACK_SECONDS` (as Postfix's destination
        concurrency feedback does), and the transaction waits for one of
        those instead of failing.  When none of ours is open, or opening
        failed otherwise, the connection is handed over unopened: its
        transaction tries again and reports what it meets.
        """
        try:
            connection.connect()
        except smtplib.SMTPConnectError as error:
            if not pushed_back(error):
                return True
            with self._lock:
                others = [other for other in self.connections if other is not connection and other.transport]
                if not others:
                    return True
                self.connections.remove(connection)
                self.concurrency = len(others)
                self._lowered_until = clock() + FEEDBACK_SECONDS
                self._successes = 0
            log.info(
                "%s:%s refused another connection (%s %s); using at most %d for %g s",
                connection.host,
                connection.port,
                error.smtp_code,
                reply_text(error.smtp_error),
                self.concurrency,
                FEEDBACK_SECONDS,
            )
            return False
        except Exception:  # noqa: BLE001 (reported by the transaction that meets it again)
            return True
        return True

    def _succeeded(self) -> None:
        """Count a delivered transaction; after enough of them, allow one more connection."""
        if self.concurrency >= self.size:
            return
        with self._lock:
            if clock() < self._lowered_until:
                return
            self._successes += 1
            if self._successes >= self.concurrency:
                self.concurrency = min(self.size, self.concurrency + 1)
                self._successes = 0

    def interrupt(self) -> None:
        """Cut every connection now, so transactions under way end at once.

        For a second Ctrl-C: what was under way fails (and counts as "may
        have arrived" if its message data had been sent); see
        `mailman_mta.transport.abort`.
        """
        for connection in list(self.connections):
            transport.abort(connection.transport)

    def close(self) -> None:
        """Wait for what is under way, then say QUIT on every connection, all at once.

        Each QUIT waits for its reply at most the connection's
        ``connect_timeout`` (see `Connection.quit`).  Said one connection
        after another, a relay that never answers QUIT would hold the caller
        that long per connection; said on all at once, closing takes one
        such timeout at most, however many connections there are.
        """
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        open_now = [connection for connection in self.connections if connection.transport is not None]
        quitting = [
            threading.Thread(target=connection.quit, name="mailman-mta-quit", daemon=True)
            for connection in open_now[1:]
        ]
        for thread in quitting:
            thread.start()
        try:
            for connection in open_now[:1]:
                connection.quit()
        finally:
            for thread in quitting:
                thread.join()
