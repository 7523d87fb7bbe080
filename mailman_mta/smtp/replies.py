"""SMTP replies, read from the server within a time and size budget.

A relay we do not control decides how long and how large its replies are.
`ReplyReader` refuses to let it decide for us:

- **time**: the socket's timeout when a read starts is the budget for the
  *whole* reply, every line of it, however the bytes trickle in (a server
  sending one byte a second does not reset the clock with each byte);
- **size**: a line longer than `MAX_LINE_OCTETS` or a reply larger than
  `MAX_REPLY_OCTETS` is refused as soon as it is seen, without buffering
  the rest, so memory stays flat whatever the server sends;
- **wake-ups**: while several pipelined replies are awaited on a plain TCP
  socket, the kernel is asked (``SO_RCVLOWAT``) not to wake us until as
  many octets have come as the replies still awaited must at least take,
  so a relay that writes each reply on its own costs fewer wake-ups; a
  wait that would outlast `LOW_WATER_PATIENCE` falls back to waking on
  any octet, and the connection stops using the mark, so a relay that
  breaks off early, is far away, or holds its replies back is read as
  without it; and while replies are awaited, TCP is asked to acknowledge
  at once (``TCP_QUICKACK``), so that a relay's Nagle algorithm does not
  hold its next reply back for 40 ms;
- **syntax** (RFC 5321 section 4.2): three digits whose first is 2 to 5,
  then a space, a hyphen (more lines follow) or the end of the line, and
  the same code on every line of a multi-line reply.

Anything else raises `mailman_mta.errors.SMTPProtocolError`: after a reply
we cannot understand, nothing more the server says can be trusted to line
up with our commands, so the connection is closed and the failure counts
as temporary, never as the server's verdict on a recipient.  Replies are
kept as bytes, and the text after the code is joined with newlines, as
`smtplib` does, so code written for `smtplib` keeps working.
"""

from __future__ import annotations

import math
import os
import re
import select
import smtplib
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from ..errors import SMTPProtocolError, SMTPTimeoutError

#: The longest reply line accepted, CRLF included.  RFC 5321 4.5.3.1.5
#: allows 512 octets; real servers sometimes exceed that a little, so this
#: is eight times as much.
MAX_LINE_OCTETS = 4096

#: The largest whole reply accepted.  A rich EHLO reply is about 300 octets.
MAX_REPLY_OCTETS = 64 * 1024

#: The most of a reply's text kept for a recipient (see `Reply.kept`).  A
#: result holds one reply per refused recipient: a relay that answers
#: 2,000 RCPTs with 64 KB each must not make a post's result weigh 128 MB.
KEPT_OCTETS = 1024

_RECV_OCTETS = 64 * 1024

#: The fewest octets a reply can take: three digits and a bare LF.
SHORTEST_REPLY_OCTETS = 4

#: The most replies after the one being read that the low-water mark
#: counts on.  Each small segment the kernel holds unread takes about a
#: kilobyte of the receive buffer: a relay writing dozens of one-line
#: replies would find the window shut until we read (seen as 20 ms a
#: message at 50 recipients against aiosmtpd).
LOW_WATER_REPLIES = 8

#: Seconds a wait for several replies holds out for all of them to have
#: begun arriving.  Past that the reader wakes on any octet, and no longer
#: uses the mark on this connection: a relay that sends fewer octets
#: (garbage, a 421 without closing), one far away, or one whose Nagle
#: algorithm holds each reply until the one before is acknowledged (the
#: kernel does not acknowledge at once while octets lie unread) is then
#: read as it would be without the mark, after this one wait.
LOW_WATER_PATIENCE = 0.01

# The usual case, a whole one-line reply already buffered, in one match.
_ONE_LINE = re.compile(rb"([2-5][0-9][0-9])(?: ([^\r\n]*))?\r?\n")


class Reply(NamedTuple):
    """One SMTP reply: its code and the text of its lines (without the code)."""

    code: int
    lines: tuple[bytes, ...]

    @classmethod
    def of(cls, code: int, text: bytes | str) -> Reply:
        """The reply smtplib reports as (*code*, *text*)."""
        if isinstance(text, str):
            text = text.encode("utf-8", "replace")
        return cls(code, tuple(text.split(b"\n")))

    @property
    def text(self) -> bytes:
        """The lines joined with newlines: what `smtplib` returns as the message."""
        return b"\n".join(self.lines)

    def kept(self) -> Reply:
        """This reply, its text cut to `KEPT_OCTETS` (saying how much was cut), to be kept in a result."""
        lines = self.lines
        if len(lines) == 1 and len(lines[0]) <= KEPT_OCTETS:
            return self  # the usual case, once per recipient
        size = sum(len(line) + 1 for line in lines) - 1
        if size <= KEPT_OCTETS:
            return self
        cut: list[bytes] = []
        room = KEPT_OCTETS
        for line in lines:
            if len(line) >= room:
                cut.append(line[:room])
                break
            cut.append(line)
            room -= len(line) + 1
        kept = sum(len(line) + 1 for line in cut) - 1
        cut[-1] += f" [{size - kept} more octets not kept]".encode()
        return Reply(self.code, tuple(cut))

    def __str__(self) -> str:
        return f"{self.code} {self.text.decode('utf-8', 'replace')}".rstrip()

    def wire_lines(self) -> list[str]:
        """The reply as the server wrote it: ``250-first``, ..., ``250 last`` (for transcripts)."""
        texts = [line.decode("utf-8", "replace") for line in self.lines]
        return [f"{self.code}-{text}" for text in texts[:-1]] + [f"{self.code} {texts[-1]}".rstrip()]


_new_tuple = tuple.__new__


class ReplyReader:
    """Reads replies from one socket; see the module docstring.

    :param sock: a connected socket (plain or TLS).
    :param where: ``host:port``, for error messages.
    :param mask: applied to each reply's text before anyone sees it, to
        hide credentials a server echoes back.

    Bytes that arrive beyond the reply being read stay buffered for the
    next one: that is how pipelined replies arrive.
    """

    def __init__(self, sock: socket.socket, where: str, mask: Callable[[bytes], bytes] | None = None) -> None:
        self.sock = sock
        self.where = where
        self.mask = mask
        self._buffer = bytearray()
        #: When waiting for the current reply began; None before any wait.
        self._started: float | None = None
        #: The socket's own timeout, while it is shortened to what is left.
        self._budget: float | None = None
        self._shortened = False
        #: When (`time.monotonic`) the transaction under way must be over,
        #: and how long it was given: every reply ends by then too.
        self.deadline: float | None = None
        self.deadline_seconds = 0.0
        #: Replies awaited after the one being read (set by `read_many`).
        self._after = 0
        tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        #: The socket's SO_RCVLOWAT, as we set it; None where it cannot be
        #: set, or once a wait with it ran out of patience (see
        #: `LOW_WATER_PATIENCE`): then it stays 1.
        self._low_water: int | None = 1 if tcp else None
        #: Whether TCP_QUICKACK may be asked for (Linux TCP), and whether
        #: it was, for the replies `read_many` is reading.
        self._quick_ack = tcp and hasattr(socket, "TCP_QUICKACK")
        self._acking = False
        #: A plain socket is waited on here and read with read(2): no
        #: timeout to shorten, and no second poll inside ``recv``.
        self._poller: select.poll | None = None
        if type(sock) is socket.socket and hasattr(select, "poll"):
            # POLLIN alone: urgent data, which read(2) never returns, must
            # not keep the poll answering at once.
            self._poller = select.poll()
            self._poller.register(sock.fileno(), select.POLLIN)

    @property
    def buffered(self) -> int:
        """Octets received but not yet read as part of a reply."""
        return len(self._buffer)

    def read(self, command: str) -> Reply:
        """Read one complete reply, the one awaited for *command*.

        Raises `SMTPTimeoutError` when the whole reply has not arrived
        within the socket's timeout, `smtplib.SMTPServerDisconnected` when
        the server closes the connection first, and `SMTPProtocolError`
        for a reply that is not SMTP or is too large.
        """
        buffer = self._buffer
        self._started = None
        try:
            quick = self._one_line_at(0) if buffer else None
            if quick is None and buffer.find(b"\n") < 0 and len(buffer) < MAX_LINE_OCTETS:
                self._receive(command)
                quick = self._one_line_at(0)
            if quick is not None:
                reply, end = quick
                del buffer[:end]
                return reply
            return self._read_lines(command)
        finally:
            if self._shortened:
                self._shortened = False
                self.sock.settimeout(self._budget)

    def read_many(self, commands: Sequence[str]) -> Iterator[Reply]:
        """The replies to *commands*, in order, each as soon as it is read.

        Stops after a 421, since the server closes the connection then and
        sends nothing more.  A reply read before a failure is never lost:
        it has been handed out already.
        """
        done = 0
        self._acking = False
        try:
            while done < len(commands):
                replies = self._buffered_replies(len(commands) - done)
                if not replies:
                    self._after = len(commands) - done - 1
                    replies = [self.read(commands[done])]
                    self._after = 0
                for reply in replies:
                    yield reply
                    if reply.code == 421:
                        return
                done += len(replies)
        finally:
            self._after = 0

    def _buffered_replies(self, most: int) -> list[Reply]:
        """Up to *most* one-line replies that are already buffered, parsed in one pass."""
        replies: list[Reply] = []
        position = 0
        while len(replies) < most:
            quick = self._one_line_at(position)
            if quick is None:
                break
            reply, position = quick
            replies.append(reply)
            if reply.code == 421:
                break
        del self._buffer[:position]
        return replies

    def _one_line_at(self, position: int) -> tuple[Reply, int] | None:
        """The whole one-line reply buffered at *position*, and where it ends; or None."""
        match = _ONE_LINE.match(self._buffer, position)
        if match is None:
            return None
        end = match.end()
        if end - position > MAX_LINE_OCTETS:
            return None
        text = match[2]
        text = text.strip(b" \t") if text else b""
        # tuple.__new__: a NamedTuple's own __new__ is Python code, and this
        # runs for every reply.
        return _new_tuple(Reply, (int(match[1]), (text if self.mask is None else self.mask(text),))), end

    def _read_lines(self, command: str) -> Reply:
        """The general case: several lines, or lines that arrive in pieces."""
        code = None
        lines = []
        total = 0
        while True:
            line = self._line(command)
            total += len(line) + 2
            if total > MAX_REPLY_OCTETS:
                raise SMTPProtocolError(f"{self.where} sent a reply to {command} larger than {MAX_REPLY_OCTETS} octets")
            this_code, more, text = self._parse(line, command)
            if code is None:
                code = this_code
            elif this_code != code:
                raise SMTPProtocolError(
                    f"{self.where} sent a multi-line reply to {command} whose lines "
                    f"disagree on the code ({code} then {this_code})"
                )
            lines.append(text if self.mask is None else self.mask(text))
            if not more:
                return Reply(code, tuple(lines))

    def _line(self, command: str) -> bytes:
        """The next line, without its line ending (CRLF, or a bare LF)."""
        buffer = self._buffer
        scanned = 0
        while True:
            end = buffer.find(b"\n", scanned)
            if end >= 0:
                if end + 1 > MAX_LINE_OCTETS:
                    break
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(buffer) >= MAX_LINE_OCTETS:
                break
            scanned = len(buffer)
            self._receive(command)
        raise SMTPProtocolError(f"{self.where} sent a reply line to {command} longer than {MAX_LINE_OCTETS} octets")

    def _receive(self, command: str) -> None:
        """Wait for more bytes, within what is left of the reply's time.

        The first wait for a reply gets the socket's whole timeout, as set;
        later ones only what is left of it (a TLS socket's timeout is
        shortened until the reply is complete; a plain socket is polled
        for what is left).
        """
        sock = self.sock
        now = time.monotonic()
        first = self._started is None
        if first:
            self._started = now
            self._budget = sock.gettimeout()
        started = self._started
        assert started is not None, "set above"
        remaining = None if self._budget is None else started + self._budget - now
        past_deadline = False
        if self.deadline is not None and (remaining is None or self.deadline - now < remaining):
            remaining, past_deadline = self.deadline - now, True
        if remaining is not None and remaining <= 0:
            raise self._timed_out(command, past_deadline)
        if self._after and self._quick_ack and not self._acking:
            self._ack_at_once()
        try:
            if self._poller is not None:
                chunk = self._wait_and_read(now, remaining)
            else:
                if remaining is not None and (past_deadline or not first):
                    sock.settimeout(remaining)
                    self._shortened = True
                chunk = sock.recv(_RECV_OCTETS)
        except TimeoutError:
            raise self._timed_out(command, past_deadline) from None
        except OSError as error:
            raise smtplib.SMTPServerDisconnected(
                f"{self.where} closed the connection while waiting for the reply to {command} ({error})"
            ) from error
        if not chunk:
            raise smtplib.SMTPServerDisconnected(
                f"{self.where} closed the connection while waiting for the reply to {command}"
            )
        self._buffer += chunk

    def _wait_and_read(self, now: float, remaining: float | None) -> bytes:
        """Wait at most *remaining* seconds from *now* (None: for ever) for the plain socket, then read what came.

        Raises TimeoutError when nothing came in time.
        """
        poller = self._poller
        assert poller is not None, "only for a plain socket"
        low_water = self._low_water
        if low_water is not None:
            wanted = 1 + SHORTEST_REPLY_OCTETS * min(self._after, LOW_WATER_REPLIES)
            if wanted != low_water:
                low_water = self._set_low_water(wanted)
        while True:
            patient = low_water not in (1, None)
            wait = remaining
            if patient and (wait is None or wait > LOW_WATER_PATIENCE):
                wait = LOW_WATER_PATIENCE
            if poller.poll(None if wait is None else math.ceil(wait * 1000)):
                try:
                    # The socket's descriptor now (-1 once closed: EBADF),
                    # never a number another socket may have taken since.
                    return os.read(self.sock.fileno(), _RECV_OCTETS)
                except BlockingIOError:
                    pass  # woken for nothing: wait again
            elif patient:
                self._set_low_water(1)
                low_water = self._low_water = None
            else:
                raise TimeoutError
            if remaining is not None:
                later = time.monotonic()
                remaining, now = max(0.0, remaining - (later - now)), later

    def _ack_at_once(self) -> None:
        """Acknowledge what arrives at once, while several replies are awaited.

        A relay that writes each reply on its own with Nagle's algorithm on
        holds every reply after the first until that one is acknowledged,
        and the kernel delays an acknowledgement up to 40 ms when we have
        nothing to send: without this, each pipelined group of such a
        relay took 40 ms.  Linux keeps acknowledging at once until we next
        send, so it is asked once per group of replies.
        """
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            self._quick_ack = False
        self._acking = True

    def settle(self) -> None:
        """Let the socket wake anyone on any octet again.

        A wait for several replies leaves ``SO_RCVLOWAT`` raised for the
        next one (setting it costs a system call); whoever looks at the
        socket otherwise (a poll for input the server sent unprompted, a
        TLS handshake) calls this first.
        """
        if self._low_water not in (1, None):
            self._set_low_water(1)

    def _set_low_water(self, octets: int) -> int | None:
        """Set the socket's SO_RCVLOWAT; a socket that refuses is not asked again."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, octets)
        except OSError:
            self._low_water = None
        else:
            self._low_water = octets
        return self._low_water

    def _timed_out(self, command: str, past_deadline: bool = False) -> SMTPTimeoutError:
        if past_deadline:
            return self.past_deadline(f"waiting for the reply to {command}")
        return SMTPTimeoutError(f"{self.where} did not answer {command} within {self._budget:g} s")

    def past_deadline(self, doing: str) -> SMTPTimeoutError:
        """The error for a transaction that ran out of its time while *doing* something."""
        return SMTPTimeoutError(
            f"{self.where}: the transaction did not end within its {self.deadline_seconds:g} s "
            f"([mta] transaction_timeout), {doing}"
        )

    def _parse(self, line: bytes, command: str) -> tuple[int, bool, bytes]:
        """(code, more lines follow, text) of one reply line, or raise."""
        head = line[:3]
        separator = line[3:4]
        if len(head) == 3 and head.isdigit() and head[:1] in b"2345" and separator in (b"", b" ", b"-"):
            return int(head), separator == b"-", line[4:].strip(b" \t")
        shown = line[:60].decode("ascii", "backslashreplace")
        raise SMTPProtocolError(f"{self.where} sent a reply to {command} that is not SMTP: {shown!r}")
