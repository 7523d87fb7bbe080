"""One SMTP mail transaction (MAIL, RCPT..., DATA), with exact accounting.

Written here rather than taken from `smtplib`, on purpose.  ``smtplib``'s
``sendmail`` keys its bookkeeping by address and gives up part-way: a 421
or a dropped connection at the second of three RCPTs leaves the first and
third looking accepted although no copy was sent; it rewrites addresses it
cannot parse; it pays one round trip per recipient; and it copies the
message several times.  A list server's delivery layer must know, for
every recipient, whether the server took the message.  The rules here:

- A recipient is accepted only if its RCPT got a 2xx *and* the end of
  DATA got a 2xx.  Every other recipient gets a result: the reply its RCPT
  got if that was a refusal, else the reply or error that ended the
  transaction (see `TransactionResult`).
- With PIPELINING (RFC 2920) MAIL, every RCPT and DATA go out in one write
  and every reply is then read, in order; without it, one command at a
  time.  Either way, when no recipient was accepted no message data is
  sent: a server that still answers DATA with 354 is disconnected, so it
  cannot deliver even an empty message.
- Addresses go out exactly as given between ``<`` and ``>`` (they were
  checked as RFC 5321 mailboxes before), with ESMTP parameters checked by
  `mailman_mta.esmtp`.
- The message is dot-stuffed and sent without being copied (see
  `data_segments`).

The engine talks to a `Channel`: something that writes bytes and reads
`Reply` objects within its timeouts.  `mailman_mta.transport.SMTPTransport`
is one.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..envelope import DROPPED, Verdict
from ..errors import SMTPProtocolError
from .replies import Reply

#: The names under which each step appears in results and error messages.
MAIL, RCPT, DATA, MESSAGE, END_OF_DATA = "MAIL", "RCPT", "DATA", "the message data", "the end of DATA"

#: Where a failure before the transaction (connecting, TLS, AUTH, a message
#: the server cannot take) is reported as having happened.
BEFORE = "before MAIL"

#: The most octets of commands written before their replies are read.
#: Small enough that the commands and their replies fit in any TCP
#: buffers, so a server that stops reading while its replies wait to be
#: read cannot deadlock us.
PIPELINE_OCTETS = 16 * 1024

# The replies that mean yes to each command (RFC 5321 4.3.2; 252 at RCPT is
# taken as 250, as some servers use it so).  Any other code below 400 makes
# no sense there: a reply for another command, arrived out of turn.
_SUCCESS = {
    MAIL: frozenset({250}),
    RCPT: frozenset({250, 251, 252}),
    DATA: frozenset({354}),
    END_OF_DATA: frozenset({250}),
}

#: Messages shorter than this are copied once to go out in one write.
SHORT_MESSAGE_OCTETS = 32 * 1024

#: Message data is written in pieces of at most this many octets, each of
#: which must go out within the command timeout.
DATA_CHUNK_OCTETS = 1 << 20

# A line that starts with a dot (sre finds it several times faster than ``in``).
_DOT_LINE = re.compile(rb"\n\.")


class Channel(Protocol):
    """What the engine needs from a connection."""

    @property
    def where(self) -> str:
        """host:port, for messages."""

    def write(self, data: bytes, command: str) -> None:
        """Send *data*, which starts with *command*; raise `smtplib.SMTPServerDisconnected` on failure."""

    def write_data(self, segments: Iterable[bytes | memoryview]) -> None:
        """Send the message data, segment by segment."""

    def read_reply(self, command: str) -> Reply:
        """Read the reply to *command* (see `mailman_mta.replies.ReplyReader.read`)."""

    def read_replies(self, commands: Sequence[str]) -> Iterator[Reply]:
        """Read the replies to *commands*, stopping after a 421 (see `ReplyReader.read_many`).

        The caller closes the channel when reading fails.
        """

    def unread(self) -> int:
        """Octets received but not read as replies yet."""

    def close(self) -> None:
        """Drop the connection."""


@dataclass
class TransactionResult:
    """What happened to one message transaction, recipient by recipient.

    `recipients` are the addresses as sent (duplicates included), and
    `rcpt_replies[i]` is the reply to the RCPT of ``recipients[i]``, or None
    when none was read (never sent, or the transaction ended first).  The
    transaction delivered the message when `error` is None.  Otherwise
    `stage` names the step that failed (`MAIL`, `RCPT`, `DATA`, `MESSAGE`,
    `END_OF_DATA`, or `BEFORE` for failures before the transaction), and
    `reply` is the server's reply that ended it, if a reply did.  `error`
    is the exception ``smtplib.SMTP.sendmail`` would raise for it.
    """

    sender: str
    recipients: tuple[str, ...]
    rcpt_replies: list[Reply | None] = field(default_factory=list)
    error: BaseException | None = None
    stage: str | None = None
    reply: Reply | None = None
    #: True once any message data went out: the message cannot be re-sent
    #: elsewhere without the risk of delivering it twice.
    data_sent: bool = False
    pipelined: bool = False
    #: False when the replies may not line up with the commands (the
    #: transaction ended part-way through a pipelined group's replies, or
    #: with a reply that made no sense): then no refusal in it is a verdict.
    in_step: bool = True
    #: (host, port) of the relay that carried it, once `Connection` knows.
    relay: tuple[str, int] | None = None
    #: Seconds from the start of `Connection.transact` to its result.
    duration: float | None = None
    #: The transaction's number on its connection (1 for the first), once
    #: `Connection` knows.
    session: int | None = None
    #: What plugins decided for the recipients they took out before
    #: anything was sent (see `Envelope.refuse`), by the caller's address;
    #: none of them is in `recipients`.
    verdicts: dict[str, Verdict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rcpt_replies:
            self.rcpt_replies = [None] * len(self.recipients)

    @classmethod
    def failed(
        cls, sender: str, recipients: Sequence[str], error: BaseException, stage: str = BEFORE, data_sent: bool = False
    ) -> TransactionResult:
        """A transaction that failed before any recipient was answered."""
        return cls(sender, tuple(recipients), error=error, stage=stage, data_sent=data_sent)

    @property
    def delivered(self) -> bool:
        """Did the server take the message (2xx at the end of DATA)?"""
        return self.error is None

    @property
    def may_have_been_delivered(self) -> bool:
        """The message went out whole and no verdict came back: it may have arrived."""
        return self.error is not None and self.stage == END_OF_DATA and self.reply is None

    def outcome(self, index: int) -> tuple[Reply | None, BaseException | None]:
        """Why recipient *index* did not get the message: (reply, error).

        Its own RCPT refusal if it got one; else the reply that ended the
        transaction; else (None, the error), for a transaction that ended
        without a reply (a lost connection, a timeout, a reply we could not
        read).  (None, None) means it was accepted.  When MAIL was refused,
        that refusal is everyone's: replies to pipelined RCPTs after it
        only say there was no transaction.
        """
        own = self.rcpt_replies[index]
        if own is not None and own.code >= 400 and self.stage != MAIL:
            return own, None
        if self.error is None:
            return None, None
        return self.reply, (self.error if self.reply is None else None)

    @property
    def refused(self) -> dict[str, tuple[int, bytes]]:
        """Recipients the server refused, as `smtplib.SMTP.sendmail` reports them.

        Every recipient with a server reply against it: its RCPT refusal,
        or the reply that ended a failed transaction.  A recipient whose
        transaction ended without a reply is not in it; `error` says why.
        A recipient a plugin refused has the plugin's reply; one it dropped
        has the code `mailman_mta.envelope.DROPPED` (0).  Worked out once,
        when first asked for after the transaction.  (Kept by hand: Python
        3.11's ``functools.cached_property`` takes a lock on every read.)
        """
        cached = self.__dict__.get("_refused")
        if cached is not None:
            return cached
        refused = {
            recipient: (DROPPED if verdict.code is None else verdict.code, verdict.text.encode("utf-8"))
            for recipient, verdict in self.verdicts.items()
        }
        for index, recipient in enumerate(self.recipients):
            reply, _ = self.outcome(index)
            if reply is not None:
                refused[recipient] = (reply.code, reply.text)
        self.__dict__["_refused"] = refused
        return refused


def data_segments(data: bytes) -> Iterable[bytes | memoryview]:
    """The DATA payload for *data* (CRLF line endings): dot-stuffed, then ``.``.

    RFC 5321 4.5.2: a line that starts with a dot gets a second one.  The
    message itself is never copied: the pieces between stuffed dots are
    views of it, at most `DATA_CHUNK_OCTETS` each.  (A short message with
    no line to stuff goes out as one piece with its terminator: copying a
    few kilobytes costs less than a second write.)
    """
    terminator = b".\r\n" if not data or data.endswith(b"\r\n") else b"\r\n.\r\n"
    if len(data) < SHORT_MESSAGE_OCTETS and _DOT_LINE.search(data) is None and not data.startswith(b"."):
        return (data + terminator,)
    return _stuffed(data, terminator)


def _stuffed(data: bytes, terminator: bytes) -> Iterator[bytes | memoryview]:
    view = memoryview(data)
    start = 0
    if data.startswith(b"."):
        yield b"."
    position = data.find(b"\n.")
    while position >= 0:
        yield from _chunks(view, start, position + 1)
        yield b"."
        start = position + 1
        position = data.find(b"\n.", start)
    yield from _chunks(view, start, len(data))
    yield terminator


def _chunks(view: memoryview, start: int, end: int) -> Iterator[memoryview]:
    for offset in range(start, end, DATA_CHUNK_OCTETS):
        yield view[offset : min(offset + DATA_CHUNK_OCTETS, end)]


def _parameters(options: Sequence[str]) -> str:
    return " " + " ".join(options) if options else ""


class Transaction:
    """Run one transaction on *channel*; see the module docstring.

    :param sender: the envelope sender, already checked.
    :param recipients: the envelope recipients, already checked.
    :param message: the message, CRLF line endings.
    :param mail_options: ESMTP parameters for MAIL, already checked.
    :param rcpt_options: ESMTP parameters for every RCPT, already checked.
    :param pipelining: send MAIL, RCPT and DATA in one write (only when the
        server offered PIPELINING).
    """

    def __init__(
        self,
        channel: Channel,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        *,
        pipelining: bool = False,
    ) -> None:
        self.channel = channel
        self.message = message
        self.result = TransactionResult(sender, tuple(recipients), pipelined=pipelining)
        self._reading_group = False
        self._mail = f"MAIL FROM:<{sender}>{_parameters(mail_options) if mail_options else ''}\r\n".encode()
        suffix = f">{_parameters(rcpt_options)}\r\n" if rcpt_options else ">\r\n"
        self._rcpts = [f"RCPT TO:<{recipient}{suffix}".encode() for recipient in recipients]
        octets = len(self._mail) + sum(map(len, self._rcpts)) + len(b"DATA\r\n")
        #: MAIL, every RCPT and DATA fit in one pipelined group.
        self._one_group = octets <= PIPELINE_OCTETS
        self._commands_sent = False
        self._then: Callable[[], bytes] | None = None
        #: The next transaction's commands were written behind this message.
        self.chained = False

    def group(self) -> bytes | None:
        """MAIL, every RCPT and DATA as one pipelined group, or None when they do not go as one.

        What may be written behind another transaction's final dot (see `run`).
        """
        if not self.result.pipelined or not self._one_group:
            return None
        return b"".join([self._mail, *self._rcpts, b"DATA\r\n"])

    def run(self, *, commands_sent: bool = False, then: Callable[[], bytes] | None = None) -> TransactionResult:
        """Run the transaction; return its result.  Never raises for an SMTP failure.

        The connection is closed when its state is unknown afterwards (a
        lost connection, a timeout, an unreadable reply, a 421).

        RFC 2920 lets the commands of the next transaction follow a
        message's final dot in the same write, which saves a round trip
        per message.  *then*, called once the message is about to go,
        returns those commands (the next transaction's `group`, or
        nothing); they are written with the message, and `chained` says
        whether they were (not when this transaction ends before its
        message).  *commands_sent* says this transaction's own `group`
        went out so, behind the previous message: only its replies are
        read.
        """
        result = self.result
        self._commands_sent = commands_sent
        self._then = then
        try:
            if self._commands():
                self._send_message()
        except (smtplib.SMTPException, OSError) as error:
            result.error = error
            result.reply = None
            # A reply that made no sense may be one meant for another
            # command; and a pipelined group that did not get all its
            # replies may have lost one on the way, so that every reply
            # after it answers another command.  Either way, no reply in
            # this transaction can be taken as a verdict.
            if isinstance(error, SMTPProtocolError) or self._reading_group:
                result.in_step = False
            self.channel.close()
        return result

    # -- the command phase: MAIL, RCPT..., DATA ---------------------------

    def _commands(self) -> bool:
        """Send MAIL, RCPT... and DATA and read their replies; True if the message may follow.

        No further command is sent once MAIL has failed, and DATA is not
        sent once every RCPT has been refused.
        """
        if self.result.pipelined:
            return self._pipelined_commands()
        mail = self._command(self._mail, MAIL)
        if mail is None:
            return False
        accepted = 0
        if mail.code < 400:
            replies = self.result.rcpt_replies
            for index, line in enumerate(self._rcpts):
                reply = self._command(line, RCPT)
                if reply is None:
                    return False
                replies[index] = reply
                accepted += reply.code < 400
        data = None
        if accepted:
            data = self._command(b"DATA\r\n", DATA)
            if data is None:
                return False
        return self._data_invited(mail, data, accepted)

    def _command(self, line: bytes, name: str) -> Reply | None:
        """Send one command and read its reply (no pipelining): see `_checked`."""
        self.result.stage = name
        channel = self.channel
        channel.write(line, name)
        reply = self._checked(name, channel.read_reply(name))
        if channel.unread():
            raise self._out_of_step(name)
        return reply

    def _checked(self, name: str, reply: Reply) -> Reply | None:
        """*reply* to *name* as kept in the result; None after a 421, the connection closed.

        Raises `SMTPProtocolError` for a success code that makes no sense
        for the command.
        """
        code = reply.code
        if code < 400 and code not in _SUCCESS[name]:
            raise self._protocol_error(name, reply)
        if code == 421:
            # RFC 5321 3.8: the server is closing the connection.
            self._fail(name, reply.kept())
            self.channel.close()
            return None
        return reply.kept()

    def _pipelined_commands(self) -> bool:
        """`_commands` with PIPELINING: the commands go out in groups.

        Every reply of a group is read before the next group is written, so
        neither side can block writing while the other waits to be read
        (RFC 2920 section 3.1).
        """
        channel = self.channel
        result = self.result
        lines = [self._mail, *self._rcpts, b"DATA\r\n"]
        names = [MAIL, *(RCPT for _ in self._rcpts), DATA]
        last = len(lines) - 1
        mail: Reply | None = None
        data: Reply | None = None
        accepted = 0
        position = 0
        while position <= last:
            if mail is not None and mail.code >= 400:
                break
            if position == last and not accepted:
                break
            end = self._group_end(lines, position)
            result.stage = names[position]
            if position == 0 and self._commands_sent:
                assert end == len(lines), "only a transaction whose commands are one group is chained"
            else:
                channel.write(b"".join(lines[position:end]), names[position])
            self._reading_group = True
            for index, reply in enumerate(channel.read_replies(names[position:end]), position):
                name = result.stage = names[index]
                kept = self._checked(name, reply)
                if kept is None:
                    return False
                if index == 0:
                    mail = kept
                elif index == last:
                    data = kept
                else:
                    result.rcpt_replies[index - 1] = kept
                    accepted += kept.code < 400
            if channel.unread():
                raise self._out_of_step(names[end - 1])
            self._reading_group = False
            position = end
        assert mail is not None, "MAIL is always in the first group"
        return self._data_invited(mail, data, accepted)

    def _data_invited(self, mail: Reply, data: Reply | None, accepted: int) -> bool:
        """After the commands: True if the message may follow; else the failure is recorded.

        A server that answered DATA with 354 for a transaction it refused
        is disconnected; one that refused it is told RSET.
        """
        channel = self.channel
        transaction_open = mail.code < 400 and accepted > 0
        if transaction_open and data is not None and data.code == 354:
            return True
        if transaction_open:
            self._fail(DATA, data)
        elif mail.code >= 400:
            self._fail(MAIL, mail)
        else:
            self._fail(RCPT, None)
        if data is not None and data.code == 354:
            # RFC 2920 would have us send a lone dot; a server that invites
            # data for a transaction it refused might then deliver an empty
            # message, so it is disconnected instead.
            channel.close()
        elif mail.code < 400:
            self._reset()
        return False

    def _group_end(self, lines: list[bytes], position: int) -> int:
        """Where the pipelined group of commands starting at *position* ends."""
        if position == 0 and self._one_group:
            return len(lines)
        end = position + 1
        octets = len(lines[position])
        while end < len(lines) and octets + len(lines[end]) <= PIPELINE_OCTETS:
            octets += len(lines[end])
            end += 1
        return end

    def _fail(self, stage: str, reply: Reply | None) -> bool:
        """Record that the transaction ended at *stage*; always False."""
        result = self.result
        result.stage = stage
        result.reply = reply
        if stage == RCPT:
            result.error = smtplib.SMTPRecipientsRefused(self._everyone_refused(reply))
            return False
        code, text = (reply.code, reply.text) if reply is not None else (451, b"no reply")
        if stage == MAIL:
            result.error = smtplib.SMTPSenderRefused(code, text, result.sender)
        else:
            result.error = smtplib.SMTPDataError(code, text)
        return False

    def _everyone_refused(self, ending: Reply | None) -> dict[str, tuple[int, bytes]]:
        """Every recipient with the reply that refused it (*ending* for the rest)."""
        refused = {}
        for recipient, reply in zip(self.result.recipients, self.result.rcpt_replies):
            if reply is not None and reply.code >= 400:
                refused[recipient] = (reply.code, reply.text)
            elif ending is not None:
                refused[recipient] = (ending.code, ending.text)
        return refused

    def _reset(self) -> bool:
        """End a transaction the server holds open (RFC 5321 4.1.1.5); always False.

        The RSET is also a check that the replies read so far lined up with
        the commands: if its reply is not a lone 250, the refusals read
        before it cannot be trusted as verdicts, the failure becomes an
        `SMTPProtocolError` (temporary), and the connection is dropped.
        """
        try:
            self.channel.write(b"RSET\r\n", "RSET")
            reply = self.channel.read_reply("RSET")
            if reply.code == 250 and not self.channel.unread():
                return False
            problem = f"answered RSET with {reply}"
        except (smtplib.SMTPException, OSError) as error:
            problem = f"did not answer RSET properly ({error})"
        result = self.result
        result.error = SMTPProtocolError(
            f"{self.channel.where} {problem} after refusing the transaction, so its refusals "
            f"({result.error}) cannot be trusted"
        )
        result.reply = None
        result.in_step = False
        self.channel.close()
        return False

    def _out_of_step(self, command: str) -> SMTPProtocolError:
        """Every reply due has been read, and there is more: the replies no
        longer line up with the commands, and none of them can be trusted."""
        return SMTPProtocolError(
            f"{self.channel.where} sent more than one reply per command (found after the reply to "
            f"{command}); its replies cannot be matched to the commands"
        )

    def _protocol_error(self, command: str, reply: Reply) -> SMTPProtocolError:
        return SMTPProtocolError(
            f"{self.channel.where} answered {command} with {reply.code}, which makes no sense there: {reply}"
        )

    # -- the message ------------------------------------------------------

    def _send_message(self) -> None:
        result = self.result
        following = self._then() if self._then is not None else b""
        result.stage = MESSAGE
        result.data_sent = True
        segments = data_segments(self.message)
        if following:
            segments = (*segments, following)
        self.channel.write_data(segments)
        self.chained = bool(following)
        result.stage = END_OF_DATA
        final = self.channel.read_reply(END_OF_DATA)
        if final.code < 400 and final.code not in _SUCCESS[END_OF_DATA]:
            raise self._protocol_error(END_OF_DATA, final)
        if self.channel.unread() and not self.chained:
            # (Behind a chained message, what follows is the next
            # transaction's replies, checked when it reads them.)
            raise self._out_of_step(END_OF_DATA)
        if final.code >= 400:
            self._fail(END_OF_DATA, final.kept())
            if final.code == 421:
                self.channel.close()
            return
        result.stage = None
