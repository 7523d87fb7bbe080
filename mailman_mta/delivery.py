"""`Delivery`: one message to many recipients, with a result for each.

`Connection.sendmail` raises as `smtplib` does, which suits code written for
smtplib.  A list server's delivery loop wants something else: one post goes
to thousands of members, and for each the loop needs to know whether the
message was accepted, and if not, whether to try again later or give up.
`Delivery.deliver` does the sending and answers exactly that (see
`mailman_mta.results`), never raising for a delivery failure.

How the recipients are split into SMTP transactions is ``[mta] delivery``:

- ``bulk``: recipients sorted by domain (so one relay's recipients travel
  together) and sent ``[mta] max_recipients`` at a time;
- ``individual``: one transaction per recipient, each copy first offered to
  the `mta_prepare_copy` hook for personal headers or footers;
- ``verp``: individual, with each copy's envelope sender encoding its
  recipient (the built-in ``verp`` plugin).
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future

from .config import Configuration
from .connection import Connection
from .envelope import Envelope, MessageInput, check_address, message_bytes
from .errors import DeliveryInterrupted, EnvelopeError, MTAError
from .pool import ConnectionPool
from .results import CONNECTION_LOST, DeliveryResult, Failure, ending_failure, failure_of, failures_of
from .transaction import TransactionResult
from .verp import VERPError

log = logging.getLogger("mailman_mta.delivery")

__all__ = ["CONNECTION_LOST", "Delivery", "DeliveryResult", "Failure", "chunk_by_domain"]


def domain_of(address: str) -> tuple[str, ...]:
    """A sort key that keeps a domain's addresses, and its subdomains', together."""
    return tuple(reversed(address.rpartition("@")[2].lower().split(".")))


def chunk_by_domain(recipients: Iterable[str], max_per_chunk: int) -> list[list[str]]:
    """Split *recipients* into transactions of at most *max_per_chunk* (0: no limit).

    Recipients are sorted by domain.  A domain's recipients share a chunk
    unless there are more of them than fit in one; small domains are packed
    together.  Every recipient (duplicates included) is in exactly one chunk.
    """
    ordered = sorted(recipients, key=lambda address: (domain_of(address), address))
    if not max_per_chunk:
        return [ordered] if ordered else []
    chunks: list[list[str]] = []
    current: list[str] = []
    for _, same_domain in itertools.groupby(ordered, key=domain_of):
        group = list(same_domain)
        if len(current) + len(group) > max_per_chunk:
            if current:
                chunks.append(current)
            current = []
            while len(group) > max_per_chunk:
                chunks.append(group[:max_per_chunk])
                group = group[max_per_chunk:]
        current.extend(group)
    if current:
        chunks.append(current)
    return chunks


Post = tuple[str, Sequence[str], MessageInput]


class _Post:
    """One post on its way: its recipients and what its transactions said so far."""

    def __init__(self, recipients: tuple[str, ...]) -> None:
        self.recipients = recipients
        self.refused: dict[str, Failure] = {}
        self.uncertain: set[str] = set()
        self.attempted: set[str] = set()
        self.error: BaseException | None = None
        self.transactions = 0
        self.outstanding = 0
        #: Every transaction of the post has been made (not necessarily sent).
        self.complete = False

    @property
    def finished(self) -> bool:
        return self.complete and not self.outstanding

    def refuse(self, error: BaseException, failure: Failure) -> None:
        """The post is not sent at all: every recipient gets *failure*."""
        self.refused = dict.fromkeys(self.recipients, failure)
        self.error = error
        self.complete = True

    def record(
        self, envelope: Envelope, failures: dict[str, Failure], error: BaseException | None, uncertain: set[str]
    ) -> None:
        self.outstanding -= 1
        self.attempted.update(envelope.original_recipients)
        self.refused.update(failures)
        self.uncertain |= uncertain
        self.error = error or self.error

    def result(self) -> DeliveryResult:
        refused = {r: self.refused[r] for r in self.recipients if r in self.refused}
        return DeliveryResult(self.recipients, refused, self.error, self.transactions, frozenset(self.uncertain))


#: Given to recipients whose transaction never started because of an interruption.
NOT_ATTEMPTED = Failure(451, "4.3.0 not attempted: the delivery was interrupted")


class Delivery:
    """Deliver messages, reporting per recipient, over up to ``[mta] max_connections``.

    :param connection: the first connection to use, a template for the
        others (see `Connection.sibling`); by default a new `Connection`
        that follows *config*.
    :param config: the configuration for that default connection.

    The strategy, chunk size and number of connections are read from the
    connection's settings (``delivery``, ``max_recipients``,
    ``max_connections``) at each call, so a pushed layer changes them.  With
    more than one connection, transactions run on several threads at once:
    plugins must then be safe to call from several threads (see
    docs/plugins.rst).  Close a `Delivery` (or use ``with``) to say QUIT on
    every connection.
    """

    def __init__(self, connection: Connection | None = None, *, config: Configuration | None = None) -> None:
        self.connection = connection if connection is not None else Connection(config=config)
        self._pool: ConnectionPool | None = None

    @property
    def connections(self) -> list[Connection]:
        """Every connection this delivery has used, the first one first."""
        return list(self._pool.connections) if self._pool is not None else [self.connection]

    def deliver(
        self,
        envsender: str,
        recipients: Sequence[str],
        msgtext: MessageInput,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> DeliveryResult:
        """Send *msgtext* to *recipients*; never raises for a delivery failure.

        A recipient address that cannot be used is refused (553) on its own,
        and the message still goes to the others.  *progress*, if given, is
        called with the number of recipients each finished transaction
        covered.  Raises `EnvelopeError` only for an empty recipient list or
        a message that is not text, bytes or an email message (or text that
        has no UTF-8 form): mistakes in the calling code.  Anything else
        that goes wrong, even an exception nobody foresaw, becomes a
        temporary failure of the recipients it concerns.  Ctrl-C raises
        `DeliveryInterrupted`, which holds the result so far.
        """
        if isinstance(recipients, str):
            recipients = [recipients]
        if not recipients:
            raise EnvelopeError("no recipients: at least one is needed")
        data = message_bytes(msgtext)  # raises EnvelopeError now, before anything is sent
        (result,) = self.deliver_many([(envsender, recipients, data)], progress=progress)
        return result

    def deliver_many(
        self,
        posts: Iterable[Post],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[DeliveryResult]:
        """Send each (sender, recipients, message) in *posts*; yield their results, in order.

        Transactions of later posts go out while earlier ones are still
        under way, so every connection stays busy; at most a few
        transactions per connection are made ahead of time, so a long
        iterable of posts is read only as fast as mail goes out.  Each post
        is checked and reported as `deliver` does, except that a post
        `deliver` would refuse (no recipients, or a message that is not
        text, bytes or an email message) does not stop the others: it gets
        a result of its own, whose ``error`` is the `EnvelopeError` and in
        which every recipient it has is refused, temporarily (451), as
        never sent.  So every post begun gets its result, and a caller
        never has to send a batch again to learn what became of it.

        Ctrl-C (KeyboardInterrupt) stops taking new work; transactions under
        way are finished (a second Ctrl-C cuts them short); every connection
        says QUIT; and `DeliveryInterrupted` is raised with a result for
        every post begun whose result was not yielded yet: who got it, who
        did not ("not attempted"), and who may have (cut off after the end
        of the message).
        """
        size = self.connection.setting("max_connections")
        pool = self._pool_of(size)
        window = 2 * size
        started: collections.deque[_Post] = collections.deque()
        in_flight: dict[Future, tuple[_Post, Envelope]] = {}
        current: tuple[_Post, Envelope] | None = None
        try:
            work = self._work(posts, started, progress)
            following = next(work, None)
            while following is not None:
                post, envelope = following
                following = next(work, None)
                if pool is None or (following is None and not in_flight):
                    # Alone: sent from this thread, with no hand-over.
                    current = (post, envelope)
                    self._record(post, envelope, self._outcome(envelope, pool), progress)
                    current = None
                else:
                    in_flight[pool.submit(envelope)] = (post, envelope)
                    while len(in_flight) >= window:
                        self._collect(pool, in_flight, progress)
                yield from self._finished(started)
            while in_flight:
                assert pool is not None, "only a pool has transactions in flight"
                self._collect(pool, in_flight, progress)
                yield from self._finished(started)
            yield from self._finished(started)
        except KeyboardInterrupt as interruption:
            if current is not None:
                post, envelope = current
                post.record(envelope, *self._cut_short(envelope, interruption))
            self._interrupted(started, in_flight, pool, progress)
            raise DeliveryInterrupted([post.result() for post in started]) from interruption
        finally:
            # The caller stopped early (or something failed): nothing more
            # is begun; what is under way finishes on its own.
            for future in in_flight:
                future.cancel()

    # -- making the transactions ---------------------------------------------

    def _work(
        self, posts: Iterable[Post], started: collections.deque[_Post], progress: Callable[[int], None] | None
    ) -> Iterator[tuple[_Post, Envelope]]:
        """Every transaction of every post, in order; each post is noted in *started*."""
        for envsender, recipients, msgtext in posts:
            if isinstance(recipients, str):
                recipients = [recipients]
            recipients = tuple(recipients)
            post = _Post(recipients)
            started.append(post)
            try:
                if not recipients:
                    raise EnvelopeError("no recipients: at least one is needed")
                data = message_bytes(msgtext)
            except EnvelopeError as error:
                # The caller's mistake, with this post only: it is never sent.
                post.refuse(error, Failure(451, f"4.3.0 not sent: {error}"))
                continue
            try:
                check_address(envsender, "sender")
            except EnvelopeError as error:
                # The sender is the list's own address: never the recipients' fault.
                post.refuse(error, Failure(451, f"4.1.7 {error}"))
                continue
            usable = []
            for recipient in recipients:
                try:
                    usable.append(check_address(recipient, "recipient"))
                except EnvelopeError as error:
                    post.refused[recipient] = Failure(553, f"5.1.3 {error}")
            if len(usable) < len(recipients) and progress is not None:
                progress(len(recipients) - len(usable))
            envelopes: Iterable[Envelope]
            if self.connection.setting("delivery") == "bulk":
                chunks = chunk_by_domain(usable, self.connection.setting("max_recipients"))
                envelopes = (self._checked(Envelope(envsender, chunk, data, tuple(chunk))) for chunk in chunks)
            else:
                envelopes = self._copies(envsender, usable, data, post.refused)
            for envelope in envelopes:
                post.transactions += 1
                post.outstanding += 1
                yield post, envelope
            post.complete = True

    def _copies(
        self, envsender: str, recipients: list[str], data: bytes, refused: dict[str, Failure]
    ) -> Iterable[Envelope]:
        connection = self.connection
        for recipient in recipients:
            envelope = self._checked(Envelope(envsender, [recipient], data, (recipient,)))
            try:
                connection.config.hook.mta_prepare_copy(
                    config=connection.config, connection=connection, envelope=envelope, recipient=recipient
                )
            except VERPError as error:
                refused[recipient] = Failure(553, f"5.1.3 {error}")
                continue
            except MTAError as error:
                refused[recipient] = failure_of(error)
                continue
            yield envelope

    @staticmethod
    def _checked(envelope: Envelope) -> Envelope:
        envelope.mark_checked()
        return envelope

    # -- sending and recording -------------------------------------------

    def _outcome(self, envelope: Envelope, pool: ConnectionPool | None) -> tuple[dict, BaseException | None, set]:
        """Send *envelope* from this thread; what it means for each original recipient."""
        try:
            result = pool.send_here(envelope) if pool is not None else self.connection.transact(envelope)
        except Exception as error:
            return self._failed(envelope, error)
        return self._per_recipient(envelope, result)

    def _failed(self, envelope: Envelope, error: BaseException) -> tuple[dict, BaseException, set]:
        if not isinstance(error, MTAError):
            # A plugin, or mailman-mta itself, failed in a way nobody
            # foresaw: this transaction fails, temporarily; the rest go on.
            log.error(
                "sending to %d recipient(s) failed unexpectedly", len(envelope.original_recipients), exc_info=error
            )
        failure = failure_of(error)
        return dict.fromkeys(envelope.original_recipients, failure), error, set()

    @staticmethod
    def _record(post: _Post, envelope: Envelope, outcome: tuple, progress: Callable[[int], None] | None) -> None:
        post.record(envelope, *outcome)
        if progress is not None:
            progress(len(envelope.original_recipients))

    def _collect(
        self,
        pool: ConnectionPool,
        in_flight: dict[Future, tuple[_Post, Envelope]],
        progress: Callable[[int], None] | None,
    ) -> None:
        """Wait for the next transaction to be done, and record it."""
        future = pool.completed()
        while future not in in_flight:  # already recorded (see _interrupted)
            future = pool.completed()
        self._settle(future, in_flight, progress)

    def _settle(
        self, future: Future, in_flight: dict[Future, tuple[_Post, Envelope]], progress: Callable[[int], None] | None
    ) -> None:
        """Record a finished transaction, then forget it (in that order, so
        that an interruption in between records it twice at worst, never
        not at all)."""
        post, envelope = in_flight[future]
        if not future.cancelled():
            error = future.exception()
            if error is None:
                outcome = self._per_recipient(envelope, future.result())
            elif isinstance(error, Exception):
                outcome = self._failed(envelope, error)
            else:
                outcome = self._cut_short(envelope, error)
            self._record(post, envelope, outcome, progress)
        del in_flight[future]

    @staticmethod
    def _finished(started: collections.deque[_Post]) -> Iterator[DeliveryResult]:
        while started and started[0].finished:
            yield started.popleft().result()

    @staticmethod
    def _per_recipient(envelope: Envelope, result: TransactionResult) -> tuple[dict, BaseException | None, set]:
        """Map the failures of the addresses sent back to the caller's addresses.

        Plugins may have rewritten the recipients (devmode); while they keep
        one address per original, in order, each original gets the result
        of the address sent in its place.  Otherwise results are matched by
        address, and an original that was not sent at all shares the fate
        of the transaction.  Returns (failures, error, the originals that
        may have received the message).
        """
        failures = failures_of(result)
        sent, asked = result.recipients, envelope.original_recipients
        uncertain = set(asked) if result.may_have_been_delivered else set()
        if len(sent) == len(asked):
            return {asked[index]: failure for index, failure in failures.items()}, result.error, uncertain
        by_address: dict[str, Failure] = {}
        for index, failure in failures.items():
            by_address.setdefault(sent[index], failure)
        ending = ending_failure(result)
        mapped = {}
        for address in asked:
            if address in by_address:
                mapped[address] = by_address[address]
            elif address not in sent and ending is not None:
                mapped[address] = ending
        return mapped, result.error, uncertain

    # -- Ctrl-C ----------------------------------------------------------

    def _interrupted(
        self,
        started: collections.deque[_Post],
        in_flight: dict[Future, tuple[_Post, Envelope]],
        pool: ConnectionPool | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        """Settle every post begun after Ctrl-C, and say QUIT everywhere."""
        for future in in_flight:
            future.cancel()
        try:
            futures.wait(list(in_flight))
        except KeyboardInterrupt:
            if pool is not None:
                pool.interrupt()
            futures.wait(list(in_flight))
        for future in list(in_flight):
            self._settle(future, in_flight, progress)
        for post in started:
            for recipient in post.recipients:
                if recipient not in post.attempted and recipient not in post.refused:
                    post.refused[recipient] = NOT_ATTEMPTED
            post.outstanding = 0
            post.complete = True
        self.close()

    @staticmethod
    def _cut_short(envelope: Envelope, interruption: BaseException) -> tuple[dict, BaseException | None, set]:
        """A transaction an interruption stopped part-way: sent, perhaps.

        `Connection.transact` hangs the transaction's result on an
        interruption that came while it was sending; without one, nothing
        had been sent.
        """
        result = getattr(interruption, "transaction", None)
        if result is not None and result.error is not interruption:
            # It had finished: the interruption came after.
            return Delivery._per_recipient(envelope, result)
        maybe = result is not None and result.data_sent
        failure = (
            Failure(CONNECTION_LOST, "4.4.2 interrupted after the message was sent; it may have arrived")
            if maybe
            else NOT_ATTEMPTED
        )
        return (
            dict.fromkeys(envelope.original_recipients, failure),
            interruption,
            (set(envelope.original_recipients) if maybe else set()),
        )

    # -- the connections -------------------------------------------------

    def _pool_of(self, size: int) -> ConnectionPool | None:
        """The pool for *size* connections (None for one: `connection` alone)."""
        if self._pool is not None and self._pool.size != size:
            # A layer changed max_connections: start afresh.
            self._pool.close()
            self._pool = None
        if self._pool is None and size > 1:
            self._pool = ConnectionPool(self.connection, size)
        return self._pool

    def close(self) -> None:
        """Say goodbye to the server, on every connection."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        else:
            self.connection.quit()

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
