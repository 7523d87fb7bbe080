"""Built-in plugin ``ratelimit``: pace messages and recipients, per relay.

Many relays (and every mailbox provider behind them) limit how fast one
client may send, and answer the excess with 421 or 450.  This plugin keeps
under ``[ratelimit] messages_per_second`` and ``recipients_per_second``
(0: no limit) for each relay, across every connection in the process,
through `mta_pace_transaction`: it says how long `Connection` should wait
before each transaction, and counts the transaction as sent at the end of
that wait.  It never sleeps itself.

The limits are token buckets with a burst: after a quiet spell, up to
``[ratelimit] burst`` seconds' worth of the rate goes out at once (at
least one message, whatever its recipients); after that, one transaction
every 1/rate seconds (a transaction with many recipients waits for all
of them).  Implemented as the generic cell rate algorithm, which keeps
one number per bucket: the time the bucket is next empty.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from mailman_mta import hookimpl
from mailman_mta.values import as_rate, as_seconds

#: The clock buckets are kept by (tests replace it).
clock = time.monotonic

_lock = threading.Lock()


@dataclass
class Bucket:
    """One rate limit: *rate* units per second, with *burst* seconds of tolerance."""

    rate: float
    burst: float
    #: When the bucket next holds no debt (the "theoretical arrival time").
    empty_at: float = float("-inf")

    def allowed_at(self, now: float) -> float:
        return max(now, self.empty_at - self.burst)

    def take(self, start: float, cost: float) -> None:
        self.empty_at = max(self.empty_at, start) + cost / self.rate


#: (relay host, relay port, "messages" or "recipients", rate, burst) -> Bucket.
_buckets: dict[tuple[str, int, str, float, float], Bucket] = {}


@hookimpl
def mta_declare_config(schema):
    schema.add_section(
        "ratelimit",
        """
        # The most messages (transactions) per second to one relay; 0 means no
        # limit.
        messages_per_second: 0

        # The most recipients per second to one relay, counted over every
        # transaction; 0 means no limit.
        recipients_per_second: 0

        # After a quiet spell, how many seconds' worth of each rate may go out
        # at once.  0 spaces every transaction evenly.
        burst: 1
        """,
        messages_per_second=as_rate,
        recipients_per_second=as_rate,
        burst=as_seconds,
    )


def reserve(
    relay: tuple[str, int], messages_per_second: float, recipients_per_second: float, burst: float, recipients: int
) -> float:
    """Reserve one transaction of *recipients* to *relay*; return the seconds to wait first."""
    host, port = relay
    wanted = [
        (kind, rate, cost)
        for kind, rate, cost in (
            ("messages", messages_per_second, 1),
            ("recipients", recipients_per_second, recipients),
        )
        if rate > 0
    ]
    if not wanted:
        return 0.0
    now = clock()
    with _lock:
        buckets = []
        for kind, rate, cost in wanted:
            key = (host, port, kind, rate, burst)
            bucket = _buckets.get(key)
            if bucket is None:
                bucket = _buckets[key] = Bucket(rate, burst)
            buckets.append((bucket, cost))
        start = max(bucket.allowed_at(now) for bucket, _ in buckets)
        for bucket, cost in buckets:
            bucket.take(start, cost)
    return start - now


def forget() -> None:
    """Start every bucket afresh."""
    with _lock:
        _buckets.clear()


@hookimpl
def mta_pace_transaction(config, connection, envelope):
    limits = config.settings.ratelimit
    return (
        reserve(
            (connection.host, connection.port),
            limits.messages_per_second,
            limits.recipients_per_second,
            limits.burst,
            len(envelope.recipients),
        )
        or None
    )
