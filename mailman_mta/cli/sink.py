"""``mailman-mta sink``: a test SMTP server that keeps, refuses or fails what it is sent."""

from __future__ import annotations

import itertools
import queue
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from .app import (
    EXIT_CANTCREAT,
    CommandError,
    Invocation,
    layer_options,
    main,
    pass_invocation,
)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option(
    "-p",
    "--port",
    default=8025,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="The port to listen on (0: any free port).",
)
@click.option("-n", "--count", type=click.IntRange(1), help="Stop after this many messages.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), help="Stop after this long.")
@click.option(
    "--save-dir",
    type=click.Path(file_okay=False, writable=True),
    metavar="DIR",
    help="Write each message to DIR as NNNN.eml, with X-MailFrom and X-RcptTo headers.",
)
@click.option(
    "--reject",
    "patterns",
    multiple=True,
    metavar="PATTERN",
    help="Refuse recipients matching this shell pattern with 550 (repeatable), e.g. '*@gone.example'.",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    metavar="RATE",
    help="Refuse this share of recipients with 451, at random (0 to 1).",
)
@click.option(
    "--drop-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    metavar="RATE",
    help="Hang up after this share of messages without answering, and lose them.",
)
@click.option("--seed", type=int, help="Make --fail-rate and --drop-rate repeatable.")
@layer_options
@pass_invocation
def sink(
    invocation: Invocation,
    host: str,
    port: int,
    count: int | None,
    seconds: float | None,
    save_dir: str | None,
    patterns: tuple[str, ...],
    fail_rate: float,
    drop_rate: float,
    seed: int | None,
) -> None:
    """Run an SMTP server that prints (and keeps) what it receives, as Postfix's smtp-sink.

    A debugging MTA for developing against mailman-mta: point [mta] at it.
    It accepts everything unless told to refuse, offers no AUTH, and
    delivers nothing.  --reject, --fail-rate and --drop-rate rehearse a
    relay's failures.  Stop it with Ctrl-C (or --count / --seconds).
    """
    from ..testing import CountingSMTPServer

    arrivals = _Arrivals(_folder(save_dir))
    with invocation.reporting():
        server = CountingSMTPServer(host, port, credentials=None, on_message=arrivals)
        for pattern in patterns:
            server.refuse_matching(pattern)
        server.misbehave_at_random(fail_rate=fail_rate, drop_rate=drop_rate, seed=seed)
        server.start()
    invocation.console.print(f"listening on {server.hostname}:{server.port}", soft_wrap=True)
    try:
        received = _print_arrivals(invocation, server, arrivals, count, seconds)
    finally:
        server.stop()
    invocation.console.print(f"received {received} message(s) over {server.get_connection_count()} connection(s)")


def _folder(save_dir: str | None) -> Path | None:
    """The --save-dir folder, created if need be."""
    if not save_dir:
        return None
    directory = Path(save_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        # Not "try again later": nothing changes until someone acts.
        raise CommandError(
            f"cannot create the --save-dir folder {str(directory)!r}: {error.strerror}", EXIT_CANTCREAT
        ) from None
    return directory


class _Arrivals:
    """The server's ``on_message``: saves each message, in the server's thread
    before it is answered, and queues it to be printed."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.queue: queue.Queue = queue.Queue()
        self._numbers = itertools.count(1)

    def __call__(self, message: Any) -> str | None:
        number = next(self._numbers)
        path = None
        if self.directory is not None:
            path = self.directory / f"{number:04d}.eml"
            envelope = f"X-MailFrom: {message.mail_from}\r\nX-RcptTo: {', '.join(message.rcpt_tos)}\r\n".encode()
            try:
                path.write_bytes(envelope + message.content)
            except OSError as error:
                self.queue.put((number, message, error))
                return f"451 4.3.0 The sink could not save the message: {error.strerror}"
        self.queue.put((number, message, path))
        return None


def _print_arrivals(
    invocation: Invocation, server: Any, arrivals: _Arrivals, count: int | None, seconds: float | None
) -> int:
    """Print messages as they arrive, until *count* of them, *seconds* or Ctrl-C; how many arrived."""
    deadline = time.monotonic() + seconds if seconds else None
    received = 0
    try:
        while count is None or received < count:
            wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                number, message, saved = arrivals.queue.get(timeout=wait)
            except queue.Empty:
                continue
            if isinstance(saved, OSError):
                invocation.errors.print(
                    f"#{number} refused with 451: it cannot be saved in {str(arrivals.directory)!r}: {saved.strerror}",
                    soft_wrap=True,
                )
                continue
            received += 1
            _print_arrival(invocation.console, number, message, server.get_connection_count(), saved)
    except KeyboardInterrupt:
        pass
    return received


#: Recipients of one message listed by `sink` before "and N more".
_SHOWN_RECIPIENTS = 10


def _print_arrival(console: Console, number: int, message: Any, connections: int, saved: Path | None) -> None:
    text = message.content.decode("utf-8", "replace")
    head = text.split("\r\n\r\n", 1)[0]
    subject = next((line[9:].strip() for line in head.splitlines() if line.lower().startswith("subject: ")), "")
    recipients = list(message.rcpt_tos)
    console.print(
        f"#{number} from {message.mail_from or '<>'}, {len(recipients)} recipient(s), "
        f"{len(message.content)} bytes, subject {subject!r} (connections so far: {connections})",
        soft_wrap=True,
    )
    for recipient in recipients[:_SHOWN_RECIPIENTS]:
        console.print(f"    to {recipient}", soft_wrap=True)
    if len(recipients) > _SHOWN_RECIPIENTS:
        console.print(f"    and {len(recipients) - _SHOWN_RECIPIENTS} more", soft_wrap=True)
    if saved is not None:
        console.print(f"    saved as {saved}", soft_wrap=True)
