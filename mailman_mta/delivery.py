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

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence

from .config import Configuration
from .connection import Connection
from .envelope import Envelope, MessageInput, check_address, message_bytes
from .errors import EnvelopeError, MTAError
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


class Delivery:
    """Deliver messages over one `Connection`, reporting per recipient.

    :param connection: the connection to use; by default a new
        `Connection` that follows *config*.
    :param config: the configuration for that default connection.

    The strategy and chunk size are read from the connection's settings
    (``delivery`` and ``max_recipients``) at each call, so a pushed layer
    changes them.
    """

    def __init__(self, connection: Connection | None = None, *, config: Configuration | None = None) -> None:
        self.connection = connection if connection is not None else Connection(config=config)

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
        temporary failure of the recipients it concerns.
        """
        if isinstance(recipients, str):
            recipients = [recipients]
        recipients = tuple(recipients)
        if not recipients:
            raise EnvelopeError("no recipients: at least one is needed")
        data = message_bytes(msgtext)
        try:
            check_address(envsender, "sender")
        except EnvelopeError as error:
            # The sender is the list's own address: never the recipients' fault.
            bad_sender = Failure(451, f"4.1.7 {error}")
            return DeliveryResult(recipients, {r: bad_sender for r in recipients}, error)
        refused: dict[str, Failure] = {}
        usable = []
        for recipient in recipients:
            try:
                usable.append(check_address(recipient, "recipient"))
            except EnvelopeError as error:
                refused[recipient] = Failure(553, f"5.1.3 {error}")
        if len(usable) < len(recipients) and progress is not None:
            progress(len(recipients) - len(usable))

        if self.connection.setting("delivery") == "bulk":
            chunks = chunk_by_domain(usable, self.connection.setting("max_recipients"))
            envelopes = (self._checked(Envelope(envsender, chunk, data, tuple(chunk))) for chunk in chunks)
        else:
            envelopes = self._copies(envsender, usable, data, refused)
        error = None
        transactions = 0
        for envelope in envelopes:
            transactions += 1
            failures, transaction_error = self._transaction(envelope)
            refused.update(failures)
            error = transaction_error or error
            if progress is not None:
                progress(len(envelope.original_recipients))
        return DeliveryResult(recipients, refused, error, transactions)

    def _copies(self, envsender: str, recipients: list[str], data: bytes,
                refused: dict[str, Failure]) -> Iterable[Envelope]:
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

    def _transaction(self, envelope: Envelope) -> tuple[dict[str, Failure], BaseException | None]:
        """Send one envelope; return its refusals by original recipient, and the error."""
        try:
            result = self.connection.transact(envelope)
        except Exception as error:
            if not isinstance(error, MTAError):
                # A plugin, or mailman-mta itself, failed in a way nobody
                # foresaw: this transaction fails, temporarily; the rest go on.
                log.exception("sending to %d recipient(s) failed unexpectedly", len(envelope.original_recipients))
            failure = failure_of(error)
            return {r: failure for r in envelope.original_recipients}, error
        return self._per_recipient(envelope, result), result.error

    @staticmethod
    def _per_recipient(envelope: Envelope, result: TransactionResult) -> dict[str, Failure]:
        """Map the failures of the addresses sent back to the caller's addresses.

        Plugins may have rewritten the recipients (devmode); while they keep
        one address per original, in order, each original gets the result
        of the address sent in its place.  Otherwise results are matched by
        address, and an original that was not sent at all shares the fate
        of the transaction.
        """
        failures = failures_of(result)
        sent, asked = result.recipients, envelope.original_recipients
        if len(sent) == len(asked):
            return {asked[index]: failure for index, failure in failures.items()}
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
        return mapped

    def close(self) -> None:
        """Say goodbye to the server."""
        self.connection.quit()

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
