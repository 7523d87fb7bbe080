"""SMTP replies, read from the server within a time and size budget.

A relay we do not control decides how long and how large its replies are.
`ReplyReader` refuses to let it decide for us:

- **time**: the socket's timeout when a read starts is the budget for the
  *whole* reply, every line of it, however the bytes trickle in (a server
  sending one byte a second does not reset the clock with each byte);
- **size**: a line longer than `MAX_LINE_OCTETS` or a reply larger than
  `MAX_REPLY_OCTETS` is refused as soon as it is seen, without buffering
  the rest, so memory stays flat whatever the server sends;
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

import smtplib
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

from .errors import SMTPProtocolError, SMTPTimeoutError

#: The longest reply line accepted, CRLF included.  RFC 5321 4.5.3.1.5
#: allows 512 octets; real servers sometimes exceed that a little, so this
#: is eight times as much.
MAX_LINE_OCTETS = 4096

#: The largest whole reply accepted.  A rich EHLO reply is about 300 octets.
MAX_REPLY_OCTETS = 64 * 1024

_RECV_OCTETS = 64 * 1024


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

    def __str__(self) -> str:
        return f"{self.code} {self.text.decode('utf-8', 'replace')}".rstrip()


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
        budget = self.sock.gettimeout()
        deadline = None if budget is None else time.monotonic() + budget
        code = None
        lines = []
        total = 0
        try:
            while True:
                line = self._line(command, deadline, budget)
                total += len(line) + 2
                if total > MAX_REPLY_OCTETS:
                    raise SMTPProtocolError(
                        f"{self.where} sent a reply to {command} larger than {MAX_REPLY_OCTETS} octets"
                    )
                this_code, more, text = self._parse(line, command)
                if code is None:
                    code = this_code
                elif this_code != code:
                    raise SMTPProtocolError(
                        f"{self.where} sent a multi-line reply to {command} whose lines "
                        f"disagree on the code ({code} then {this_code})"
                    )
                lines.append(text)
                if not more:
                    break
        finally:
            if budget is not None and self.sock.gettimeout() != budget:
                self.sock.settimeout(budget)
        if self.mask is not None:
            lines = [self.mask(text) for text in lines]
        return Reply(code, tuple(lines))

    def _line(self, command: str, deadline: float | None, budget: float | None) -> bytes:
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
            self._receive(command, deadline, budget)
        raise SMTPProtocolError(
            f"{self.where} sent a reply line to {command} longer than {MAX_LINE_OCTETS} octets"
        )

    def _receive(self, command: str, deadline: float | None, budget: float | None) -> None:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SMTPTimeoutError(f"{self.where} did not answer {command} within {budget:g} s")
            self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(_RECV_OCTETS)
        except TimeoutError:
            raise SMTPTimeoutError(f"{self.where} did not answer {command} within {budget:g} s") from None
        except OSError as error:
            raise smtplib.SMTPServerDisconnected(
                f"{self.where} closed the connection while waiting for the reply to {command} ({error})"
            ) from error
        if not chunk:
            raise smtplib.SMTPServerDisconnected(
                f"{self.where} closed the connection while waiting for the reply to {command}"
            )
        self._buffer += chunk

    def _parse(self, line: bytes, command: str) -> tuple[int, bool, bytes]:
        """(code, more lines follow, text) of one reply line, or raise."""
        head = line[:3]
        separator = line[3:4]
        if (
            len(head) == 3
            and head.isdigit()
            and head[:1] in b"2345"
            and separator in (b"", b" ", b"-")
        ):
            return int(head), separator == b"-", line[4:].strip(b" \t")
        shown = line[:60].decode("ascii", "backslashreplace")
        raise SMTPProtocolError(f"{self.where} sent a reply to {command} that is not SMTP: {shown!r}")
