"""The ``mailman-mta`` command.

Every command works on a fresh `Configuration`, with the layers given by
``--config FILE`` (repeatable) and ``-o section.key=value`` pushed on top in
the order given, so the command line behaves exactly like the layers a
program or a test would push.

Every error a user can cause (a missing file, an unknown option, a bad
address, an unreachable MTA) is one line on stderr and a non-zero exit;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import queue
import smtplib
import ssl
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import pluggy
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import PROJECT_NAME, __version__
from .config import Configuration
from .connection import Connection
from .delivery import Delivery
from .envelope import check_address
from .errors import EnvelopeError, MTAError
from .manager import registration_order
from .results import DeliveryResult, reply_text
from .secret import Secret
from .testing import CountingSMTPServer, ReceivedMessage

#: Exit status when some recipients were refused, all of them temporarily
#: (sysexits.h EX_TEMPFAIL: "try again later").
EXIT_TEMPFAIL = 75


class OneLineErrors(click.Group):
    """A click group whose usage errors are one line, not a usage screen."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as error:
            hint = ""
            if isinstance(error, click.UsageError) and error.ctx is not None:
                hint = f" (see '{error.ctx.command_path} --help')"
            click.echo(f"Error: {error.format_message().rstrip('.')}{hint}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)


class Session:
    """What every command gets: the configuration, and how to report errors."""

    def __init__(self, config: Configuration, debug: bool) -> None:
        self.config = config
        self.debug = debug
        self.console = Console(highlight=False)
        self.errors = Console(stderr=True, highlight=False)

    @contextmanager
    def reporting(self) -> Iterator[None]:
        """Turn the errors a user can cause into one line (unless --debug)."""
        if self.debug:
            yield
            return
        try:
            yield
        except (MTAError, smtplib.SMTPException, OSError, UnicodeError) as error:
            raise click.ClickException(_describe(error)) from None


def _describe(error: BaseException) -> str:
    if isinstance(error, smtplib.SMTPResponseException) and not isinstance(error, MTAError):
        return f"{type(error).__name__}: {error.smtp_code} {reply_text(error.smtp_error)}"
    return f"{type(error).__name__}: {error}"


def _options_layer(assignments: tuple[str, ...]) -> str:
    """The text of one layer holding every ``-o section.key=value``.

    One layer, not one per option, so that keys checked together (a user
    name and its password) can be given together.
    """
    sections: dict[str, list[str]] = {}
    for assignment in assignments:
        name, equals, value = assignment.partition("=")
        section, dot, key = name.strip().rpartition(".")
        if not equals or not dot or not section or not key or " " in name.strip():
            # The value is never shown: it may be a password.
            shown = f"{name.split()[0] if name.split() else ''}{'=' if equals else ' '}..."
            raise click.BadParameter(f"{shown!r} is not section.key=value", param_hint="'-o'")
        if "\n" in value or "\r" in value:
            raise click.BadParameter(f"the value for {name} must be one line", param_hint="'-o'")
        sections.setdefault(section, []).append(f"{key}: {value.strip()}")
    return "".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in sections.items())


@click.group("mailman-mta", cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailman-mta")
@click.option("-c", "--config", "config_files", multiple=True, metavar="FILE",
              help="Push this configuration file as a layer (repeatable).")
@click.option("-o", "--option", "assignments", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Set one key, e.g. -o mta.smtp_port=2525 (repeatable; all go in one layer, '-o').")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, config_files: tuple[str, ...], assignments: tuple[str, ...], debug: bool) -> None:
    """Hand outgoing mail to an SMTP server, pluggably."""
    config = Configuration()
    session = Session(config, debug)
    with session.reporting():
        for path in config_files:
            config.push_file(path)
        if assignments:
            config.push("-o", _options_layer(assignments))
    ctx.obj = session


pass_session = click.make_pass_decorator(Session)


# -- send ----------------------------------------------------------------


def _check_address(ctx: click.Context, param: click.Parameter, value):
    values = value if isinstance(value, tuple) else (value,)
    for address in values:
        if address is not None:
            try:
                check_address(address, "sender" if param.name == "sender" else "recipient")
            except EnvelopeError as error:
                raise click.BadParameter(str(error)) from None
    return value


def _read_recipients(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise click.BadParameter(f"cannot read {path}: {error.strerror}", param_hint="'--to-file'") from None
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path} is not UTF-8 text", param_hint="'--to-file'") from None
    recipients = []
    for number, line in enumerate(lines, 1):
        address = line.split("#", 1)[0].strip()
        if address:
            try:
                recipients.append(check_address(address, f"recipient on line {number} of {path}"))
            except EnvelopeError as error:
                raise click.BadParameter(str(error), param_hint="'--to-file'") from None
    return recipients


def _read_message(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as error:
        raise click.ClickException(f"cannot read message {name}: {error.strerror}") from None


@main.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("-f", "--from", "sender", required=True, callback=_check_address, metavar="ADDR",
              help="The envelope sender (MAIL FROM).")
@click.option("-t", "--to", "recipients", multiple=True, callback=_check_address, metavar="ADDR",
              help="An envelope recipient (repeatable).")
@click.option("--to-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="A file of recipients, one per line (# comments allowed).")
@pass_session
def send(session: Session, files: tuple[str, ...], sender: str, recipients: tuple[str, ...],
         to_file: str | None) -> None:
    """Deliver message FILEs (.eml; - for standard input) through the configured MTA.

    Exit status: 0 if every recipient accepted every message, 75 if some
    were refused temporarily (try again later), 1 if any permanently.
    """
    everyone = list(recipients) + (_read_recipients(to_file) if to_file else [])
    if not everyone:
        raise click.UsageError("no recipients: give --to or --to-file")
    messages = [(name, _read_message(name)) for name in files]
    results: list[tuple[str, DeliveryResult]] = []
    console = session.console
    with session.reporting(), Delivery(config=session.config) as delivery, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("delivering", total=len(messages) * len(everyone))
        posts = ((sender, everyone, data) for _, data in messages)
        for (name, _), result in zip(messages, delivery.deliver_many(
                posts, progress=lambda n: progress.advance(task, n))):
            results.append((name, result))
    sys.exit(_report(session, results))


def _report(session: Session, results: list[tuple[str, DeliveryResult]]) -> int:
    """Print what happened; return the exit status (0, EXIT_TEMPFAIL or 1)."""
    failures = []
    rows = []
    for name, result in results:
        failures.extend(result.refused.values())
        distinct = set(result.refused.values())
        if result.error is not None and len(result.refused) == len(result.recipients) and len(distinct) == 1:
            failure = distinct.pop()
            session.errors.print(f"Error: {escape(name)}: not delivered to any recipient: "
                                 f"{failure.code} {escape(failure.message)}", soft_wrap=True)
            continue
        session.console.print(f"{escape(name)}: {len(result.accepted)} accepted, {len(result.refused)} refused, "
                              f"{result.transactions} transaction(s)")
        rows.extend((name, recipient, failure) for recipient, failure in result.refused.items())
    if rows:
        table = Table(title="Refused recipients")
        for column in ("message", "recipient", "code", "kind", "reply"):
            table.add_column(column)
        for name, recipient, failure in rows:
            table.add_row(escape(name), escape(recipient), str(failure.code),
                          "permanent" if failure.permanent else "temporary", escape(failure.message))
        session.console.print(table)
    if not failures:
        return 0
    return 1 if any(failure.permanent for failure in failures) else EXIT_TEMPFAIL


# -- config and plugins --------------------------------------------------


@main.command("config")
@pass_session
def show_config(session: Session) -> None:
    """Print the effective configuration and the layer each value came from."""
    config = session.config
    table = Table(title=f"Effective configuration (layers: {', '.join(config.layers) or 'none'})")
    for column in ("section", "key", "value", "from"):
        table.add_column(column)
    for name in config.settings:
        section = config.settings[name]
        for key in section:
            value = section[key]
            shown = repr(value) if isinstance(value, Secret) else str(config[name][key])
            table.add_row(escape(f"[{name}]"), key, escape(shown), escape(config.origin(name, key)))
    session.console.print(table)


def _hooks_of(plugin: object) -> list[str]:
    """The hooks *plugin* implements, found as pluggy would find them."""
    manager = pluggy.PluginManager(PROJECT_NAME)
    return sorted(name for name in dir(plugin) if manager.parse_hookimpl_opts(plugin, name) is not None)


@main.command()
@pass_session
def plugins(session: Session) -> None:
    """List the plugins that exist, which are active, and the hooks each implements."""
    config = session.config
    configured = config.settings.plugins
    names = registration_order([*config.registry.names(), *configured])
    active = config.active_plugins
    table = Table(title="Plugins")
    for column in ("plugin", "active", "source", "hooks"):
        table.add_column(column)
    for name in names:
        class_path = configured[name]["class"] if name in configured else ""
        source = config.registry.describe(name, class_path)
        try:
            hooks = ", ".join(_hooks_of(active.get(name) or config.registry.load(name, class_path)))
        except MTAError as error:
            hooks = f"cannot load: {error}"
        table.add_row(name, "yes" if name in active else "no", escape(source), escape(hooks))
    session.console.print(table)


# -- check ---------------------------------------------------------------


@main.command()
@pass_session
def check(session: Session) -> None:
    """Connect to the configured MTA and report what it offers, sending no mail."""
    config = session.config
    connection = Connection(config=config)
    console = session.console
    with session.reporting():
        transport = connection.open_transport()
        try:
            transport.ehlo_or_helo_if_needed()
            host, port = getattr(transport, "relay", None) or (connection.host, connection.port)
            console.print(f"server      {host}:{port} ({connection.setting('secure_mode')})")
            greeting = (transport.ehlo_resp or b"").decode("utf-8", "replace").splitlines()
            console.print(f"greets as   {escape(greeting[0] if greeting else '?')}")
            for name, parameters in transport.esmtp_features.items():
                console.print(f"offers      {name.upper()} {escape(parameters.strip())}".rstrip())
            sock = getattr(transport, "sock", None)
            if isinstance(sock, ssl.SSLSocket):
                certificate = sock.getpeercert() or {}
                subject = ", ".join("=".join(part) for rdn in certificate.get("subject", ()) for part in rdn)
                verified = "verified" if connection.tls_context().verify_mode != ssl.CERT_NONE else "NOT verified"
                console.print(f"tls         {sock.version()}, certificate {escape(subject or '(not shown)')} ({verified})")
            else:
                console.print("tls         none (plaintext)")
            ok = True
            if connection.smtp_user:
                try:
                    config.hook.mta_authenticate(config=config, connection=connection, transport=transport)
                    console.print(f"auth        succeeded as {escape(connection.smtp_user)}")
                except smtplib.SMTPException as error:
                    console.print(f"auth        FAILED as {escape(connection.smtp_user)}: {escape(_describe(error))}")
                    ok = False
            else:
                console.print("auth        not configured ([mta] smtp_user is empty)")
        finally:
            try:
                transport.quit()
            except (smtplib.SMTPException, OSError):
                transport.close()
    sys.exit(0 if ok else 1)


# -- sink ----------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("-p", "--port", default=8025, show_default=True, type=click.IntRange(0, 65535),
              help="The port to listen on (0: any free port).")
@click.option("-n", "--count", type=click.IntRange(1), help="Stop after this many messages.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), help="Stop after this long.")
@pass_session
def sink(session: Session, host: str, port: int, count: int | None, seconds: float | None) -> None:
    """Run the embedded SMTP server, printing each message it receives.

    A debugging MTA for developing against mailman-mta: point [mta] at it.
    It accepts everything, offers no AUTH, and delivers nothing.  Stop it
    with Ctrl-C (or --count / --seconds).
    """
    arrivals: queue.Queue[ReceivedMessage] = queue.Queue()
    console = session.console
    server = CountingSMTPServer(host, port, credentials=None, on_message=arrivals.put)
    with session.reporting():
        server.start()
    deadline = time.monotonic() + seconds if seconds else None
    received = 0
    console.print(f"listening on {server.hostname}:{server.port}", soft_wrap=True)
    try:
        while count is None or received < count:
            wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                message = arrivals.get(timeout=wait)
            except queue.Empty:
                continue
            received += 1
            subject = next((line[9:].strip() for line in message.content.decode("utf-8", "replace").splitlines()
                            if line.lower().startswith("subject: ")), "")
            console.print(
                f"#{received} from {escape(message.mail_from or '<>')} to {escape(', '.join(message.rcpt_tos))} "
                f"({len(message.content)} bytes) {escape(subject)!s} "
                f"[connections so far: {server.get_connection_count()}]",
                soft_wrap=True,
            )
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    console.print(f"received {received} message(s) over {server.get_connection_count()} connection(s)")


# -- demo ----------------------------------------------------------------


@main.command()
@click.option("-n", "--posts", default=100, show_default=True, type=click.IntRange(1, 100_000),
              help="How many list posts to send.")
@click.option("-m", "--members", default=50, show_default=True, type=click.IntRange(1, 10_000),
              help="Recipients of each post, spread over several domains.")
@click.option("-s", "--sessions-per-connection", default=100, show_default=True, type=click.IntRange(0),
              help="Sessions before a connection is replaced (0: no limit).")
@click.option("--connections", type=click.IntRange(1), metavar="N",
              help="Connections at once (default: [mta] max_connections).")
@pass_session
def demo(session: Session, posts: int, members: int, sessions_per_connection: int, connections: int | None) -> None:
    """Send a batch of posts to the embedded SMTP server and report what arrived.

    No MTA is needed: the server (aiosmtpd) runs inside this process on a
    free loopback port.  Posts go out through `Delivery.deliver_many` with
    the active plugins, the configured strategy ([mta] delivery) and up to
    [mta] max_connections connections at once.
    """
    console = session.console
    config = session.config
    domains = ["example.com", "example.org", "example.net", "lists.example.edu"]
    addresses = [f"member{i}@{domains[i % len(domains)]}" for i in range(members)]
    with session.reporting(), CountingSMTPServer(credentials=None) as server:
        config.push("demo-server", f"[mta]\nsmtp_host: {server.hostname}\nsmtp_port: {server.port}\n"
                                   + (f"max_connections: {connections}\n" if connections else ""))
        connection = Connection(sessions_per_connection=sessions_per_connection, config=config)
        accepted = refused = transactions = 0
        batch = (("list-bounces@example.com", addresses,
                  f"From: list@example.com\nTo: members@example.com\nSubject: post {number}\n\n"
                  "Hello from mailman-mta.\n") for number in range(posts))
        started = time.perf_counter()
        with Delivery(connection) as delivery, Progress(console=console, transient=True,
                                                        disable=not console.is_terminal) as progress:
            task = progress.add_task("sending", total=posts)
            for result in delivery.deliver_many(batch):
                accepted += len(result.accepted)
                refused += len(result.refused)
                transactions += result.transactions
                progress.advance(task)
        elapsed = time.perf_counter() - started
        arrived = server.received
        delivered = sum(len(message.rcpt_tos) for message in arrived)
        opened = server.get_connection_count()

    table = Table(title="mailman-mta demo: embedded SMTP server", show_header=False)
    table.add_row("server", f"{server.hostname}:{server.port} (aiosmtpd, in this process)")
    table.add_row("strategy", f"{connection.setting('delivery')} (max_recipients "
                              f"{connection.setting('max_recipients') or 'no limit'})")
    table.add_row("active plugins", ", ".join(config.active_plugins))
    table.add_row("posts sent", f"{posts} to {members} members each")
    table.add_row("SMTP transactions", f"{transactions} sent, {len(arrived)} received")
    table.add_row("recipients", f"{accepted} accepted, {refused} refused; {delivered} arrived")
    table.add_row("connections", f"{opened} (at most {connection.setting('max_connections')} at once; "
                                  f"sessions per connection: {sessions_per_connection or 'no limit'})")
    table.add_row("elapsed", f"{elapsed:.2f} s")
    table.add_row("throughput", f"{transactions / elapsed:,.0f} transactions/s, {accepted / elapsed:,.0f} recipients/s")
    console.print(table)
    if delivered != accepted or accepted + refused != posts * members:
        console.print("[red]Not everything sent arrived.[/red]")
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
