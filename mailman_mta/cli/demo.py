"""``mailman-mta demo``: the main job, on the embedded server."""

from __future__ import annotations

import sys
import time

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..connection import Connection
from ..delivery import Delivery
from .app import (
    EXIT_PERMANENT,
    Invocation,
    layer_options,
    main,
    pass_invocation,
)


@main.command()
@click.option(
    "-n",
    "--posts",
    default=100,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="How many list posts to send.",
)
@click.option(
    "-m",
    "--members",
    default=50,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Recipients of each post, spread over several domains.",
)
@click.option(
    "-s",
    "--sessions-per-connection",
    default=100,
    show_default=True,
    type=click.IntRange(0),
    help="Sessions before a connection is replaced (0: no limit).",
)
@click.option(
    "--connections", type=click.IntRange(1), metavar="N", help="Connections at once (default: [mta] max_connections)."
)
@layer_options
@pass_invocation
def demo(
    invocation: Invocation, posts: int, members: int, sessions_per_connection: int, connections: int | None
) -> None:
    """Send a batch of posts to the embedded SMTP server and report what arrived.

    No MTA is needed: the server (aiosmtpd) runs inside this process on a
    free loopback port.  Posts go out through `Delivery.deliver_many` with
    the active plugins, the configured strategy ([mta] delivery) and up to
    [mta] max_connections connections at once.
    """
    from ..testing import CountingSMTPServer

    console = invocation.console
    config = invocation.config
    domains = ["example.com", "example.org", "example.net", "lists.example.edu"]
    addresses = [f"member{i}@{domains[i % len(domains)]}" for i in range(members)]
    with invocation.reporting(), CountingSMTPServer(credentials=None) as server:
        config.push(
            "demo-server",
            f"[mta]\nsmtp_host: {server.hostname}\nsmtp_port: {server.port}\n"
            + (f"max_connections: {connections}\n" if connections else ""),
        )
        connection = Connection(sessions_per_connection=sessions_per_connection, config=config)
        started = time.perf_counter()
        accepted, refused, transactions = _send_posts(console, connection, posts, addresses)
        elapsed = time.perf_counter() - started
        arrived = server.received
        delivered = sum(len(message.rcpt_tos) for message in arrived)
        opened = server.get_connection_count()

    table = Table(title="mailman-mta demo: embedded SMTP server", show_header=False)
    table.add_row("server", f"{server.hostname}:{server.port} (aiosmtpd, in this process)")
    table.add_row(
        "strategy",
        f"{connection.setting('delivery')} (max_recipients {connection.setting('max_recipients') or 'no limit'})",
    )
    table.add_row("active plugins", ", ".join(config.active_plugins))
    table.add_row("posts sent", f"{posts} to {members} members each")
    table.add_row("SMTP transactions", f"{transactions} sent, {len(arrived)} received")
    table.add_row("recipients", f"{accepted} accepted, {refused} refused; {delivered} arrived")
    table.add_row(
        "connections",
        f"{opened} (at most {connection.setting('max_connections')} at once; "
        f"sessions per connection: {sessions_per_connection or 'no limit'})",
    )
    table.add_row("elapsed", f"{elapsed:.2f} s")
    table.add_row("throughput", f"{transactions / elapsed:,.0f} transactions/s, {accepted / elapsed:,.0f} recipients/s")
    console.print(table)
    if delivered != accepted or accepted + refused != posts * members:
        console.print("Not everything sent arrived.", style="red")
        sys.exit(EXIT_PERMANENT)


def _send_posts(console: Console, connection: Connection, posts: int, addresses: list[str]) -> tuple[int, int, int]:
    """Send *posts* posts to *addresses* with a progress bar; (accepted, refused, transactions)."""
    accepted = refused = transactions = 0
    batch = (
        (
            "list-bounces@example.com",
            addresses,
            f"From: list@example.com\nTo: members@example.com\nSubject: post {number}\n\nHello from mailman-mta.\n",
        )
        for number in range(posts)
    )
    with (
        Delivery(connection) as delivery,
        Progress(console=console, transient=True, disable=not console.is_terminal) as progress,
    ):
        task = progress.add_task("sending", total=posts)
        for result in delivery.deliver_many(batch):
            accepted += len(result.accepted)
            refused += len(result.refused)
            transactions += result.transactions
            progress.advance(task)
    return accepted, refused, transactions
