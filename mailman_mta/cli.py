"""The ``mailman-mta`` command.

``mailman-mta demo`` is the quickest way to see mailman-mta work: it starts
the embedded test SMTP server, sends a batch of messages to it through a
`Connection` with the active plugins, and reports what arrived, over how
many connections, and how fast.  No MTA needs to be installed.
"""

from __future__ import annotations

import smtplib
import sys
import time

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from . import __version__
from .config import Configuration
from .connection import Connection
from .errors import MTAError
from .testing import CountingSMTPServer


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailman-mta")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Hand outgoing mail to an SMTP server, pluggably."""
    ctx.obj = {"debug": debug}


@main.command()
@click.option("-n", "--messages", default=1000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="How many messages to send.")
@click.option("-r", "--recipients", default=3, show_default=True, type=click.IntRange(1, 1000),
              help="Recipients per message.")
@click.option("-s", "--sessions-per-connection", default=100, show_default=True, type=click.IntRange(0),
              help="Sessions before a connection is replaced (0: no limit).")
@click.option("-c", "--config", "config_files", multiple=True, type=click.Path(dir_okay=False),
              help="Push this configuration file as a layer (repeatable).")
@click.pass_context
def demo(ctx: click.Context, messages: int, recipients: int, sessions_per_connection: int,
         config_files: tuple[str, ...]) -> None:
    """Send a batch to the embedded SMTP server and report what arrived."""
    console = Console()
    config = Configuration()
    with _reporting_errors(ctx), CountingSMTPServer(credentials=None) as server:
        for path in config_files:
            config.push_file(path)
        config.push("demo-server", f"[mta]\nsmtp_host: {server.hostname}\nsmtp_port: {server.port}\n")
        connection = Connection(sessions_per_connection=sessions_per_connection, config=config)
        addresses = [f"member{i}@example.com" for i in range(recipients)]
        refused_total = 0
        started = time.perf_counter()
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task("sending", total=messages)
            for number in range(messages):
                body = (f"From: list@example.com\nTo: members@example.com\n"
                        f"Subject: demo message {number}\n\nHello from mailman-mta.\n")
                refused_total += len(connection.sendmail("list@example.com", addresses, body))
                progress.advance(task)
        connection.quit()
        elapsed = time.perf_counter() - started
        received = server.received
        delivered = sum(len(message.rcpt_tos) for message in received)

    table = Table(title="mailman-mta demo: embedded SMTP server", show_header=False)
    table.add_row("server", f"{server.hostname}:{server.port} (aiosmtpd, embedded)")
    table.add_row("active plugins", ", ".join(config.active_plugins))
    table.add_row("messages sent / received", f"{messages} / {len(received)}")
    table.add_row("recipients accepted / refused", f"{delivered} / {refused_total}")
    table.add_row("connections opened", f"{server.get_connection_count()} "
                  f"(sessions per connection: {sessions_per_connection or 'no limit'})")
    table.add_row("elapsed", f"{elapsed:.2f} s")
    table.add_row("throughput", f"{messages / elapsed:,.0f} messages/s, {delivered / elapsed:,.0f} recipients/s")
    console.print(table)
    if len(received) != messages or delivered + refused_total != messages * recipients:
        console.print("[red]Not everything sent arrived.[/red]")
        sys.exit(1)


class _reporting_errors:
    """Turn the errors a user can cause into one line and exit status 1."""

    def __init__(self, ctx: click.Context) -> None:
        self.debug = ctx.obj.get("debug", False) if ctx.obj else False

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None or self.debug:
            return False
        if isinstance(error, (MTAError, smtplib.SMTPException, OSError)):
            raise click.ClickException(f"{type(error).__name__}: {error}") from None
        return False


if __name__ == "__main__":  # pragma: no cover
    main()
