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
import queue
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future
from typing import NamedTuple

from .config import Configuration
from .connection import Connection
from .envelope import Envelope, MessageInput, check_address, message_bytes
from .errors import DeliveryInterrupted, EnvelopeError, MTAError
from .pool import ConnectionPool
from .results import CONNECTION_LOST, DeliveryResult, Failure, ending_failure, failure_of, failures_of
from .routes import Route
from .smtp.transaction import TransactionResult

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


class _Outcome(NamedTuple):
    """What one transaction meant for the caller's recipients it carried."""

    failures: dict[str, Failure]
    error: BaseException | None
    uncertain: set[str]
    relay: tuple[str, int] | None = None
    #: False when the plugins took every recipient out: nothing was sent.
    sent: bool = True


class _Post:
    """One post on its way: its recipients and what its transactions said so far."""

    def __init__(self, recipients: tuple[str, ...]) -> None:
        self.recipients = recipients
        self.refused: dict[str, Failure] = {}
        self.dropped: dict[str, str] = {}
        self.relays: dict[str, tuple[str, int]] = {}
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

    def record(self, envelope: Envelope, outcome: _Outcome) -> None:
        """Take in *outcome*; a plugin's verdict on a recipient overrides anything else."""
        self.outstanding -= 1
        if not outcome.sent:
            self.transactions -= 1
        self.attempted.update(envelope.original_recipients)
        verdicts = envelope.verdicts
        if outcome.failures:
            self.refused.update(outcome.failures)
        if outcome.uncertain:
            self.uncertain |= outcome.uncertain - verdicts.keys()
        self.error = outcome.error or self.error
        if outcome.relay is not None:
            for recipient in envelope.original_recipients:
                if recipient not in verdicts:
                    self.relays[recipient] = outcome.relay
        for recipient, verdict in verdicts.items():
            if verdict.code is None:
                self.refused.pop(recipient, None)
                self.dropped[recipient] = verdict.text
            else:
                self.refused[recipient] = Failure(verdict.code, verdict.text)

    def result(self) -> DeliveryResult:
        refused = {r: self.refused[r] for r in self.recipients if r in self.refused}
        return DeliveryResult(
            self.recipients,
            refused,
            self.error,
            self.transactions,
            frozenset(self.uncertain),
            dropped={r: self.dropped[r] for r in self.recipients if r in self.dropped},
            relays=self.relays,
        )


class _Lane:
    """The connections of one route: a `Connection`, and a pool once there is more than one."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.pool: ConnectionPool | None = None

    @property
    def connections(self) -> list[Connection]:
        return list(self.pool.connections) if self.pool is not None else [self.connection]


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
        #: The connections of each route (None: ``[mta]``'s own relay).
        self._lanes: dict[Route | None, _Lane] = {None: _Lane(self.connection)}
        #: Where every pool of this delivery hands in its finished transactions.
        self._completed: queue.SimpleQueue[Future[TransactionResult]] = queue.SimpleQueue()

    @property
    def connections(self) -> list[Connection]:
        """Every connection this delivery has used, the first one first."""
        return [connection for lane in self._lanes.values() for connection in lane.connections]

    @property
    def pools(self) -> dict[Route | None, ConnectionPool]:
        """The pool of each route used so far (None: ``[mta]``'s own relay), for diagnostics."""
        return {route: lane.pool for route, lane in self._lanes.items() if lane.pool is not None}

    @property
    def _pool(self) -> ConnectionPool | None:
        """The pool for ``[mta]``'s own relay, if there is one."""
        return self._lanes[None].pool

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
        self._resize_lanes()
        started: collections.deque[_Post] = collections.deque()
        in_flight: dict[Future, tuple[_Post, Envelope]] = {}
        current: tuple[_Post, Envelope] | None = None
        #: The envelope offered as *then* to the last inline send, and its post and lane.
        offered: tuple[_Post, Envelope, _Lane] | None = None
        try:
            work = self._work(posts, started, progress)
            following = next(work, None)
            while following is not None:
                post, envelope, lane = following
                following = next(work, None)
                pool = lane.pool
                if pool is None or (following is None and not in_flight):
                    # Alone: sent from this thread, with no hand-over; the
                    # next envelope's commands may follow its message.
                    offered = following if pool is None and following is not None and following[2] is lane else None
                    current = (post, envelope)
                    self._record(
                        post, envelope, self._outcome(envelope, lane, offered[1] if offered else None), progress
                    )
                    current = None
                else:
                    in_flight[pool.submit(envelope)] = (post, envelope)
                    while len(in_flight) >= 2 * self._capacity():
                        self._collect(in_flight, progress)
                if started and started[0].finished:
                    yield from self._finished(started)
            while in_flight:
                self._collect(in_flight, progress)
                yield from self._finished(started)
            yield from self._finished(started)
        except KeyboardInterrupt as interruption:
            if current is not None:
                post, envelope = current
                post.record(envelope, self._cut_short(envelope, interruption))
            if offered is not None and offered[2].connection.pending is offered[1]:
                self._finish_offered(*offered, progress)
            self._interrupted(started, in_flight, progress)
            raise DeliveryInterrupted([post.result() for post in started]) from interruption
        finally:
            # The caller stopped early (or something failed): nothing more
            # is begun; what is under way finishes on its own.
            for future in in_flight:
                future.cancel()

    # -- making the transactions ---------------------------------------------

    def _work(
        self, posts: Iterable[Post], started: collections.deque[_Post], progress: Callable[[int], None] | None
    ) -> Iterator[tuple[_Post, Envelope, _Lane]]:
        """Every transaction of every post, in order, with its lane; each post is noted in *started*."""
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
            bulk = self.connection.setting("delivery") == "bulk"
            for lane, members in self._routed(usable, post.refused, progress):
                envelopes: Iterable[Envelope]
                if bulk:
                    chunks = chunk_by_domain(members, lane.connection.setting("max_recipients"))
                    envelopes = (self._checked(Envelope(envsender, chunk, data, tuple(chunk))) for chunk in chunks)
                else:
                    envelopes = (self._copy(envsender, recipient, data) for recipient in members)
                for envelope in envelopes:
                    post.transactions += 1
                    post.outstanding += 1
                    yield post, envelope, lane
            post.complete = True

    def _routed(
        self, recipients: list[str], refused: dict[str, Failure], progress: Callable[[int], None] | None
    ) -> Iterator[tuple[_Lane, list[str]]]:
        """*recipients* grouped by the lane of their route, each group in their order.

        Asks `mta_choose_route` once per domain.  A recipient whose route
        cannot be had (a plugin failed, or the route's settings are wrong)
        is refused, temporarily, in *refused*.
        """
        hooks = self.connection.config.hooks
        if not hooks.routes:
            if recipients:
                yield self._lanes[None], recipients
            return
        lanes: dict[str, _Lane | Failure] = {}
        groups: dict[_Lane, list[str]] = {}
        for recipient in recipients:
            domain = recipient.rpartition("@")[2].lower()
            lane = lanes.get(domain)
            if lane is None:
                try:
                    lane = self._lane(hooks.choose_route(domain))
                except Exception as error:
                    log.error("no route for %s", domain, exc_info=not isinstance(error, MTAError))
                    lane = Failure(451, f"4.4.0 no route for {domain}: {error}")
                lanes[domain] = lane
            if isinstance(lane, Failure):
                refused[recipient] = lane
                if progress is not None:
                    progress(1)
                continue
            groups.setdefault(lane, []).append(recipient)
        yield from groups.items()

    @staticmethod
    def _copy(sender: str, recipient: str, data: bytes) -> Envelope:
        """*recipient*'s own copy; `mta_prepare_copy` runs on it where it is sent."""
        envelope = Envelope(sender, [recipient], data, (recipient,), copy_for=recipient)
        envelope.mark_checked()
        return envelope

    @staticmethod
    def _checked(envelope: Envelope) -> Envelope:
        envelope.mark_checked()
        return envelope

    # -- sending and recording -------------------------------------------

    def _outcome(self, envelope: Envelope, lane: _Lane, then: Envelope | None = None) -> _Outcome:
        """Send *envelope* from this thread (*then* next, see `Connection.transact`); what it means per recipient."""
        try:
            pool = lane.pool
            result = pool.send_here(envelope) if pool is not None else lane.connection.transact(envelope, then=then)
        except Exception as error:
            return self._failed(envelope, error)
        return self._per_recipient(envelope, result)

    def _failed(self, envelope: Envelope, error: BaseException) -> _Outcome:
        if not isinstance(error, MTAError):
            # A plugin, or mailman-mta itself, failed in a way nobody
            # foresaw: this transaction fails, temporarily; the rest go on.
            log.error(
                "sending to %d recipient(s) failed unexpectedly", len(envelope.original_recipients), exc_info=error
            )
        failure = failure_of(error)
        return _Outcome(dict.fromkeys(envelope.original_recipients, failure), error, set())

    @staticmethod
    def _record(post: _Post, envelope: Envelope, outcome: _Outcome, progress: Callable[[int], None] | None) -> None:
        post.record(envelope, outcome)
        if progress is not None:
            progress(len(envelope.original_recipients))

    def _collect(self, in_flight: dict[Future, tuple[_Post, Envelope]], progress: Callable[[int], None] | None) -> None:
        """Wait for the next transaction to be done, and record it."""
        future = self._completed.get()
        while future not in in_flight:  # already recorded (see _interrupted), or an earlier call's
            future = self._completed.get()
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
    def _per_recipient(envelope: Envelope, result: TransactionResult) -> _Outcome:
        """Map the failures of the addresses sent back to the caller's addresses.

        Plugins may have rewritten the recipients (devmode); while they keep
        one address per original, in order, each original gets the result
        of the address sent in its place.  Otherwise results are matched by
        address, and an original that was not sent at all shares the fate
        of the transaction.  Recipients a plugin judged are left to their
        verdicts (see `_Post.record`).
        """
        verdicts = envelope.verdicts
        if not result.recipients and verdicts:
            return _Outcome({}, None, set(), sent=False)
        failures = failures_of(result)
        sent = result.recipients
        asked = (
            [r for r in envelope.original_recipients if r not in verdicts] if verdicts else envelope.original_recipients
        )
        uncertain = set(asked) if result.may_have_been_delivered else set()
        if len(sent) == len(asked):
            mapped = {asked[index]: failure for index, failure in failures.items()}
            return _Outcome(mapped, result.error, uncertain, result.relay)
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
        return _Outcome(mapped, result.error, uncertain, result.relay)

    # -- Ctrl-C ----------------------------------------------------------

    def _finish_offered(
        self, post: _Post, envelope: Envelope, lane: _Lane, progress: Callable[[int], None] | None
    ) -> None:
        """Send the envelope whose commands went out behind the last message: it is under way.

        (A second Ctrl-C cuts it short, and the connection is dropped.)
        """
        try:
            outcome = self._outcome(envelope, lane)
        except KeyboardInterrupt as again:
            lane.connection.close()
            outcome = self._cut_short(envelope, again)
        self._record(post, envelope, outcome, progress)

    def _interrupted(
        self,
        started: collections.deque[_Post],
        in_flight: dict[Future, tuple[_Post, Envelope]],
        progress: Callable[[int], None] | None,
    ) -> None:
        """Settle every post begun after Ctrl-C, and say QUIT everywhere."""
        for future in in_flight:
            future.cancel()
        try:
            futures.wait(list(in_flight))
        except KeyboardInterrupt:
            for lane in self._lanes.values():
                if lane.pool is not None:
                    lane.pool.interrupt()
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
    def _cut_short(envelope: Envelope, interruption: BaseException) -> _Outcome:
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
        return _Outcome(
            dict.fromkeys(envelope.original_recipients, failure),
            interruption,
            (set(envelope.original_recipients) if maybe else set()),
        )

    # -- the connections -------------------------------------------------

    def _lane(self, route: Route | None) -> _Lane:
        """The connections for *route*, made on first use.

        Each route has its own pool (``max_connections`` as the route
        sets it, else ``[mta]``'s); ``[mta]``'s own relay has one only when
        it may use more than one connection.
        """
        lane = self._lanes.get(route)
        if lane is None:
            lane = _Lane(self.connection.sibling(route))
            self._lanes[route] = lane
            self._resize(lane, route)
        return lane

    def _resize_lanes(self) -> None:
        """Follow a layer that changed ``max_connections`` since the last call."""
        for route, lane in self._lanes.items():
            self._resize(lane, route)

    def _resize(self, lane: _Lane, route: Route | None) -> None:
        size = lane.connection.setting("max_connections")
        if lane.pool is not None and lane.pool.size != size:
            lane.pool.close()
            lane.pool = None
        if lane.pool is None and (size > 1 or route is not None):
            # A route's pool, even of one, sends on a thread of its own, so
            # that routes go out side by side.
            lane.pool = ConnectionPool(lane.connection, size, completed=self._completed)

    def _capacity(self) -> int:
        """How many transactions may be under way at once, over every lane."""
        return sum(lane.pool.size if lane.pool is not None else 1 for lane in self._lanes.values())

    def close(self) -> None:
        """Say goodbye to the server, on every connection of every route."""
        for lane in self._lanes.values():
            pool, lane.pool = lane.pool, None
            if pool is not None:
                pool.close()
            else:
                lane.connection.quit()

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
