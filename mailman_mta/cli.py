"""The ``mailman-mta`` command.

Every command works on a fresh `Configuration`, with the layers given by
``-c FILE`` (repeatable) and ``-o section.key=value`` pushed on top in the
order given, before or after the command's name, so the command line
behaves exactly like the layers a program or a test would push.

Every error a user can cause (a missing file, an unknown option, a bad
address, an unreachable MTA) is one sentence on stderr, and the same
problem gives the same exit status in every command (sysexits.h):

=====  ================================================================
0      done: every recipient took every message
1      a recipient was refused for good (a 5xx from the server)
2      a mistake on the command line
65     a message or address that cannot be sent as given
66     an input that cannot be read (a file, a closed standard input)
70     a bug in mailman-mta or a plugin (run with --debug)
74     output that cannot be written (standard output is closed)
75     try again later: the relay is unreachable, TLS failed, or every
       refusal was temporary
77     the relay refused our login
78     the configuration is wrong
130    interrupted (Ctrl-C)
=====  ================================================================

``--debug`` shows the traceback instead of the sentence.  Output is plain
text: nothing in it is read as rich markup, so ``[mta]`` prints as it is.
"""

from __future__ import annotations

import configparser
import contextlib
import functools
import itertools
import json
import logging
import os
import queue
import re
import smtplib
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import pluggy
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import PROJECT_NAME, __version__
from .config import Configuration
from .connection import Connection
from .delivery import NOT_ATTEMPTED, Delivery
from .envelope import check_address
from .errors import ConfigurationError, DeliveryInterrupted, EnvelopeError, MTAError, NoTransportError
from .manager import registration_order
from .probe import probe
from .results import DeliveryResult, Failure, reply_text
from .secret import Secret
from .values import split_host_port

EXIT_PERMANENT = 1
EXIT_USAGE = 2
EXIT_DATAERR = 65
EXIT_NOINPUT = 66
EXIT_SOFTWARE = 70
EXIT_CANTCREAT = 73
EXIT_IOERR = 74
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130

#: Where ``--user``'s password is read from when set (never from the command line).
PASSWORD_VARIABLE = "MAILMAN_MTA_PASSWORD"


class CommandError(click.ClickException):
    """A one-sentence error with the exit status its problem has in every command."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


def exit_status_of(error: BaseException) -> int:
    """The exit status for *error*, the same in every command."""
    if isinstance(error, (ConfigurationError, NoTransportError)):
        return EXIT_CONFIG
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return EXIT_NOPERM
    if isinstance(error, EnvelopeError):
        return EXIT_DATAERR
    if isinstance(error, (OSError, smtplib.SMTPException, MTAError)):
        return EXIT_TEMPFAIL
    return EXIT_SOFTWARE


def describe(error: BaseException) -> str:
    """*error* as a sentence for a person, without Python's class names."""
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return f"the relay refused the login: {error.smtp_code} {reply_text(error.smtp_error)}"
    if isinstance(error, smtplib.SMTPResponseException) and not isinstance(error, MTAError):
        return f"the relay answered {error.smtp_code} {reply_text(error.smtp_error)}"
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return "the relay refused every recipient"
    text = str(error)
    if isinstance(error, OSError) and error.strerror and not isinstance(error, MTAError):
        text = error.strerror + (f": {error.filename}" if error.filename else "")
    return text or f"an unexpected {type(error).__name__} with no message"


#: Characters shown escaped: controls (what a terminal takes as commands, such
#: as ESC), and the invisible ones that reorder text; new lines too, where
#: one line is meant.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNPRINTABLE = re.compile(f"[{_CONTROLS}]")
_UNPRINTABLE_IN_A_LINE = re.compile(f"[\n{_CONTROLS}]")


def printable(text: str, *, one_line: bool = True) -> str:
    """*text* with its control characters escaped (``\\x1b``), safe to print to a terminal.

    A relay's reply, an address a client sent the sink, a line of a
    transcript: any of them may hold terminal escape sequences (a new
    window title, a cleared screen), or a new line that forges a line of
    output where one line is meant (*one_line*).
    """
    pattern = _UNPRINTABLE_IN_A_LINE if one_line else _UNPRINTABLE
    return pattern.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), text)


class PlainConsole(Console):
    """A rich `Console` printing plain text, with every string it is given made `printable`.

    Our own output may span lines (JSON); what others said is escaped line
    by line where it is put into a sentence or a table.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(highlight=False, markup=False, emoji=False, **options)

    def print(self, *objects: Any, **options: Any) -> None:
        super().print(*(printable(o, one_line=False) if isinstance(o, str) else o for o in objects), **options)


class OneLineErrors(click.Group):
    """A click group whose errors are one sentence and a status, not a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if sys.stdout is None or sys.stdout.closed:
            _say_and_exit("standard output is closed, so there is nowhere to write", EXIT_IOERR)
        try:
            status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as error:
            hint = ""
            if isinstance(error, click.UsageError) and error.ctx is not None:
                hint = f" (see '{error.ctx.command_path} --help')"
            _say_and_exit(f"{error.format_message().rstrip('.')}{hint}", error.exit_code)
        except (click.Abort, KeyboardInterrupt):
            _say_and_exit("interrupted", EXIT_INTERRUPTED)
        except BrokenPipeError:
            # The reader went away (| head): say nothing more on stdout.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            _say_and_exit("standard output was closed while writing", EXIT_IOERR)
        sys.exit(status if isinstance(status, int) else 0)


def _say_and_exit(message: str, status: int) -> None:
    if sys.stderr is not None:
        print(f"Error: {printable(message)}", file=sys.stderr)
    sys.exit(status)


class Invocation:
    """What every command gets: the configuration, the consoles, and how to report errors.

    (Called an invocation, not a session, because an SMTP session is
    something else.)
    """

    def __init__(self, config: Configuration, debug: bool) -> None:
        self.config = config
        self.debug = debug
        self.console = PlainConsole()
        self.errors = PlainConsole(stderr=True)

    @contextmanager
    def reporting(self) -> Iterator[None]:
        """Turn the errors a user can cause into one sentence and its status (unless --debug)."""
        if self.debug:
            yield
            return
        try:
            yield
        except BrokenPipeError:
            raise
        except (MTAError, smtplib.SMTPException, OSError, UnicodeError) as error:
            raise CommandError(describe(error), exit_status_of(error)) from None

    def push_layers(self, config_files: tuple[str, ...], assignments: tuple[str, ...], where: str) -> None:
        """Push ``-c`` files, then one layer of every ``-o``."""
        with self.reporting():
            for path in config_files:
                self.config.push_file(path)
            if assignments:
                self.config.push(f"-o{where}", _options_layer(assignments))


#: The start of a ``-o`` argument that can be shown: what looks like ``section.key``.
_KEY_SHAPE = re.compile(r"[\w.-]*")


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
            # The value is never shown: it may be a password (typed after a
            # ':' or a space instead of '='), so only what looks like
            # section.key is.
            shown = _KEY_SHAPE.match(name.strip())[0] + ("=" if equals else " ") + "..."  # type: ignore[index]
            raise click.BadParameter(f"{shown!r} is not section.key=value", param_hint="'-o'")
        if "\n" in value or "\r" in value:
            raise click.BadParameter(f"the value for {name} must be one line", param_hint="'-o'")
        sections.setdefault(section, []).append(f"{key}: {value.strip()}")
    return "".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in sections.items())


def layer_options(function: Callable) -> Callable:
    """Give a command its own ``-c`` and ``-o``, pushed after those given before its name."""

    @click.option(
        "-c",
        "--config",
        "config_files",
        multiple=True,
        metavar="FILE",
        help="Push this configuration file as a layer (repeatable).",
    )
    @click.option(
        "-o",
        "--option",
        "assignments",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Set one key, e.g. -o mta.smtp_port=2525 (repeatable).",
    )
    @functools.wraps(function)
    def with_layers(*args: Any, config_files: tuple[str, ...], assignments: tuple[str, ...], **kwargs: Any):
        context = click.get_current_context()
        _invocation().push_layers(config_files, assignments, f" (after {context.info_name})")
        return function(*args, **kwargs)

    return with_layers


def relay_options(function: Callable) -> Callable:
    """``-s/--server``, ``--tls``/``--starttls`` and ``--user``: reach a relay without a config file."""

    @click.option(
        "-s", "--server", metavar="HOST[:PORT]", help="The relay, as swaks takes it: host, host:port or [IPv6]:port."
    )
    @click.option("--tls", "secure_mode", flag_value="smtps", help="TLS from the first byte (port 465).")
    @click.option("--starttls", "secure_mode", flag_value="starttls", help="STARTTLS before anything else (587).")
    @click.option(
        "--user", metavar="NAME", help=f"Log in as NAME; the password comes from ${PASSWORD_VARIABLE}, or is asked for."
    )
    @click.option(
        "--transcript",
        is_flag=True,
        help="Show the SMTP conversation on stderr as it happens (C: client, S: server), passwords masked.",
    )
    @functools.wraps(function)
    def with_relay(
        *args: Any, server: str | None, secure_mode: str | None, user: str | None, transcript: bool, **kwargs: Any
    ):
        invocation = _invocation()
        lines = []
        if server is not None:
            # An empty one (an unset $RELAY) is refused, not taken as "the configured relay".
            host, port = _host_and_port(server)
            lines += [f"smtp_host: {host}"] + ([f"smtp_port: {port}"] if port else [])
        if secure_mode:
            lines.append(f"secure_mode: {secure_mode}")
        if user:
            lines += [f"smtp_user: {user}", f"smtp_pass: {_password(user, kwargs)}"]
        if lines:
            with invocation.reporting():
                invocation.config.push("command line", "[mta]\n" + "\n".join(lines) + "\n")
        with _transcript(invocation.errors) if transcript else contextlib.nullcontext():
            return function(*args, transcript=transcript, **kwargs)

    return with_relay


def _invocation() -> Invocation:
    invocation = click.get_current_context().find_object(Invocation)
    assert invocation is not None, "the group made one"
    return invocation


def _host_and_port(server: str) -> tuple[str, int | None]:
    try:
        return split_host_port(server)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--server'") from None


def _password(user: str, arguments: dict) -> str:
    """--user's password: from the environment, else asked for (never taken from the command line)."""
    password = os.environ.get(PASSWORD_VARIABLE)
    if password is None:
        if sys.stdin is None or "-" in arguments.get("files", ()):
            raise click.UsageError(
                f"--user {user} needs a password: set {PASSWORD_VARIABLE} (standard input "
                "is closed or holds the message, so the password cannot be asked for)"
            )
        password = click.prompt(f"Password for {user}", hide_input=True, err=True)
    if "\n" in password or "\r" in password:
        raise click.BadParameter("the password must be one line", param_hint="'--user'")
    return password


class TranscriptPrinter(logging.Handler):
    """Prints the ``mailman_mta.transcript`` records: C: for the client, S: for the server."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.DEBUG)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        direction = getattr(record, "smtp_direction", "*")
        line = getattr(record, "smtp_line", record.getMessage())
        self.console.print(printable(f"{direction}: {line}"), soft_wrap=True)


@contextmanager
def _transcript(console: Console) -> Iterator[None]:
    logger = logging.getLogger("mailman_mta.transcript")
    handler = TranscriptPrinter(console)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@click.group("mailman-mta", cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailman-mta")
@click.option(
    "-c",
    "--config",
    "config_files",
    multiple=True,
    metavar="FILE",
    help="Push this configuration file as a layer (repeatable; also after the command).",
)
@click.option(
    "-o",
    "--option",
    "assignments",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Set one key, e.g. -o mta.smtp_port=2525 (repeatable; all go in one layer, '-o').",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, config_files: tuple[str, ...], assignments: tuple[str, ...], debug: bool) -> None:
    """Hand outgoing mail to an SMTP server, pluggably."""
    invocation = Invocation(Configuration(), debug)
    ctx.obj = invocation
    invocation.push_layers(config_files, assignments, "")


pass_invocation = click.make_pass_decorator(Invocation)


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
        if sys.stdin is None or sys.stdin.closed:
            raise CommandError("standard input is closed, and '-' asks to read a message from it", EXIT_NOINPUT)
        try:
            return sys.stdin.buffer.read()
        except OSError as error:
            raise CommandError(f"cannot read a message from standard input: {describe(error)}", EXIT_NOINPUT) from None
    try:
        return Path(name).read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read message {name}: {error.strerror}", EXIT_NOINPUT) from None


@main.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option(
    "-f",
    "--from",
    "sender",
    required=True,
    callback=_check_address,
    metavar="ADDR",
    help="The envelope sender (MAIL FROM).",
)
@click.option(
    "-t",
    "--to",
    "recipients",
    multiple=True,
    callback=_check_address,
    metavar="ADDR",
    help="An envelope recipient (repeatable).",
)
@click.option(
    "--to-file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="A file of recipients, one per line (# comments allowed).",
)
@layer_options
@relay_options
@pass_invocation
def send(
    invocation: Invocation,
    files: tuple[str, ...],
    sender: str,
    recipients: tuple[str, ...],
    to_file: str | None,
    transcript: bool,
) -> None:
    """Deliver message FILEs (.eml; - for standard input) through the configured MTA.

    Exit status: 0 if every recipient accepted every message, 1 if any
    refused one for good, 75 if the refusals were all temporary (or the
    relay was unreachable), 77 if it refused the login, 130 on Ctrl-C.
    """
    everyone = list(recipients) + (_read_recipients(to_file) if to_file else [])
    if not everyone:
        raise click.UsageError("no recipients: give --to or --to-file")
    messages = [(name, _read_message(name)) for name in files]
    results: list[tuple[str, DeliveryResult]] = []
    console = invocation.console
    try:
        with (
            invocation.reporting(),
            Delivery(Connection(config=invocation.config, debug=transcript)) as delivery,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
                disable=not console.is_terminal,
            ) as progress,
        ):
            task = progress.add_task("delivering", total=len(messages) * len(everyone))
            posts = ((sender, everyone, data) for _, data in messages)
            for (name, _), result in zip(
                messages, delivery.deliver_many(posts, progress=lambda n: progress.advance(task, n))
            ):
                results.append((name, result))
    except DeliveryInterrupted as interruption:
        finished = [*results, *zip((name for name, _ in messages[len(results) :]), interruption.results)]
        _report_interruption(invocation, finished, [name for name, _ in messages[len(finished) :]])
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(_report(invocation, results))


def _report(invocation: Invocation, results: list[tuple[str, DeliveryResult]]) -> int:
    """Print what happened; return the exit status."""
    failures: list[Failure] = []
    rows: list[tuple[str, str, Failure]] = []
    whole_errors: list[BaseException] = []
    for name, result in results:
        failures.extend(result.refused.values())
        distinct = set(result.refused.values())
        if result.error is not None and len(result.refused) == len(result.recipients) and len(distinct) == 1:
            failure = distinct.pop()
            whole_errors.append(result.error)
            invocation.errors.print(
                printable(f"Error: {name}: not delivered to any recipient: {failure.code} {failure.message}"),
                soft_wrap=True,
            )
            continue
        invocation.console.print(
            f"{name}: {len(result.accepted)} accepted, {len(result.refused)} refused, "
            f"{result.transactions} transaction(s)"
        )
        rows.extend((name, recipient, failure) for recipient, failure in result.refused.items())
    if rows:
        table = Table(title="Refused recipients")
        for column in ("message", "recipient", "code", "kind", "reply"):
            table.add_column(column)
        for name, recipient, failure in rows:
            kind = "permanent" if failure.permanent else "temporary"
            table.add_row(printable(name), printable(recipient), str(failure.code), kind, printable(failure.message))
        invocation.console.print(table)
    if not failures:
        return 0
    if any(failure.permanent for failure in failures):
        return EXIT_PERMANENT
    statuses = {exit_status_of(error) for error in whole_errors}
    if len(whole_errors) == len(results) and len(statuses) == 1:
        return statuses.pop()
    return EXIT_TEMPFAIL


def _report_interruption(
    invocation: Invocation, results: list[tuple[str, DeliveryResult]], never_begun: list[str]
) -> None:
    """After Ctrl-C: who got each message, who did not, who may have."""
    errors = invocation.errors
    errors.print("Interrupted: what happened to each message so far:")
    for name, result in results:
        uncertain = sorted(result.uncertain)
        unsent = [r for r, failure in result.refused.items() if failure == NOT_ATTEMPTED]
        refused = [r for r in result.refused if r not in result.uncertain and r not in unsent]
        groups = (("got it", result.accepted), ("refused", refused), ("may have", uncertain), ("not attempted", unsent))
        errors.print(
            f"{name}: " + ", ".join(f"{len(addresses)} {label}" for label, addresses in groups), soft_wrap=True
        )
        for label, addresses in groups:
            for address in addresses:
                errors.print(f"  {label}: {address}", soft_wrap=True)
    for name in never_begun:
        errors.print(f"{name}: not sent to anyone", soft_wrap=True)


# -- config and plugins --------------------------------------------------


def _shown_value(config: Configuration, section: str, key: str) -> str:
    value = config.settings[section][key]
    if isinstance(value, Secret):
        return repr(value)
    try:
        return str(config[section][key])
    except (KeyError, configparser.NoSectionError):
        # A known plugin's switch that no layer named: the template's text.
        return ("yes" if value else "no") if isinstance(value, bool) else str(value)


@main.command("config")
@click.argument("name", required=False, metavar="[SECTION.KEY]")
@click.option("--origin", is_flag=True, help="With SECTION.KEY: also say which layer the value comes from.")
@click.option("--changed", is_flag=True, help="Only what the layers changed (as postconf -n).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
@layer_options
@pass_invocation
def show_config(invocation: Invocation, name: str | None, origin: bool, changed: bool, as_json: bool) -> None:
    """Print the effective configuration and the layer each value came from.

    With SECTION.KEY (mta.smtp_port, plugin.dkim.enabled), print that one
    value.  Passwords are always shown as Secret('***').
    """
    config = invocation.config
    with invocation.reporting():
        settings = config.settings
        if name is not None:
            section, _, key = name.rpartition(".")
            if section not in settings or key not in settings[section]:
                known = [f"{s}.{k}" for s in settings for k in settings[s]]
                close = [n for n in known if n.endswith("." + key) or n.startswith(section + ".")][:3]
                raise click.UsageError(
                    f"there is no key {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                )
            value, layer = _shown_value(config, section, key), config.origin(section, key)
            if as_json:
                invocation.console.print(
                    json.dumps({"section": section, "key": key, "value": value, "origin": layer}), soft_wrap=True
                )
            else:
                invocation.console.print(f"{value} (from {layer})" if origin else value, soft_wrap=True)
            return
        rows = [
            (section, key, _shown_value(config, section, key), config.origin(section, key))
            for section in settings
            for key in settings[section]
        ]
        if changed:
            rows = [row for row in rows if row[3] != "default"]
    if as_json:
        invocation.console.print(
            json.dumps([dict(zip(("section", "key", "value", "origin"), row)) for row in rows], indent=1),
            soft_wrap=True,
        )
        return
    title = "Changed" if changed else "Effective"
    table = Table(title=f"{title} configuration (layers: {', '.join(config.layers) or 'none'})")
    for column in ("section", "key", "value", "from"):
        table.add_column(column)
    for section, key, value, layer in rows:
        table.add_row(f"[{section}]", key, value, layer)
    invocation.console.print(table)


def _hooks_of(plugin: object) -> list[str]:
    """The hooks *plugin* implements, found as pluggy would find them."""
    manager = pluggy.PluginManager(PROJECT_NAME)
    return sorted(name for name in dir(plugin) if manager.parse_hookimpl_opts(plugin, name) is not None)


@main.command()
@layer_options
@pass_invocation
def plugins(invocation: Invocation) -> None:
    """List the plugins that exist, which are active, and the hooks each implements."""
    config = invocation.config
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
        table.add_row(name, "yes" if name in active else "no", source, hooks)
    invocation.console.print(table)


# -- check ---------------------------------------------------------------


@main.command()
@click.option("--domain", metavar="DOMAIN", help="Check the relay DOMAIN's mail is routed through.")
@layer_options
@relay_options
@pass_invocation
def check(invocation: Invocation, transcript: bool, domain: str | None) -> None:
    """Connect to the configured MTA and report what it offers, sending no mail.

    With --domain, the relay of the route that domain's mail takes (see
    docs/routes.rst).  Exit status: 0 if it was reached (and the login
    worked, when a user is configured), 75 if it could not be reached, 77
    if it refused the login.
    """
    console = invocation.console
    config = invocation.config
    with invocation.reporting():
        connection = Connection(config=config, debug=transcript)
        if domain is not None:
            route = config.hooks.choose_route(domain.lower())
            if route is not None:
                connection = connection.sibling(route)
            console.print(f"route       {printable(domain)}: {route.name if route else '[mta] smtp_host'}")
        found = probe(connection)
    host, port = found.relay
    console.print(f"server      {host}:{port} ({found.secure_mode})", soft_wrap=True)
    console.print(f"greets as   {found.greeting or '?'}", soft_wrap=True)
    for name, parameters in found.extensions.items():
        console.print(f"offers      {name.upper()} {parameters}".rstrip(), soft_wrap=True)
    if found.tls_version is None:
        console.print("tls         none (plaintext)")
    else:
        verified = "verified" if found.verified else "NOT verified"
        console.print(
            f"tls         {found.tls_version}, certificate {found.certificate or '(not shown)'} ({verified})",
            soft_wrap=True,
        )
    if found.auth is None:
        console.print("auth        not configured ([mta] smtp_user is empty)")
    elif found.auth:
        console.print(f"auth        succeeded as {found.user}", soft_wrap=True)
    else:
        error = found.auth_error or smtplib.SMTPAuthenticationError(535, b"refused")
        console.print(f"auth        FAILED as {found.user}: {describe(error)}", soft_wrap=True)
        sys.exit(exit_status_of(error))


# -- sink ----------------------------------------------------------------


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
    from .testing import CountingSMTPServer

    arrivals: queue.Queue = queue.Queue()
    console = invocation.console
    directory = Path(save_dir) if save_dir else None
    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            # Not "try again later": nothing changes until someone acts.
            raise CommandError(
                f"cannot create the --save-dir folder {str(directory)!r}: {error.strerror}", EXIT_CANTCREAT
            ) from None
    numbers = itertools.count(1)

    def arrive(message: Any) -> str | None:
        """Save the message (in the server's thread, before it is answered), and queue it to be printed."""
        number = next(numbers)
        path = None
        if directory is not None:
            path = directory / f"{number:04d}.eml"
            envelope = f"X-MailFrom: {message.mail_from}\r\nX-RcptTo: {', '.join(message.rcpt_tos)}\r\n".encode()
            try:
                path.write_bytes(envelope + message.content)
            except OSError as error:
                arrivals.put((number, message, error))
                return f"451 4.3.0 The sink could not save the message: {error.strerror}"
        arrivals.put((number, message, path))
        return None

    with invocation.reporting():
        server = CountingSMTPServer(host, port, credentials=None, on_message=arrive)
        for pattern in patterns:
            server.refuse_matching(pattern)
        server.misbehave_at_random(fail_rate=fail_rate, drop_rate=drop_rate, seed=seed)
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
                number, message, saved = arrivals.get(timeout=wait)
            except queue.Empty:
                continue
            if isinstance(saved, OSError):
                invocation.errors.print(
                    f"#{number} refused with 451: it cannot be saved in {str(directory)!r}: {saved.strerror}",
                    soft_wrap=True,
                )
                continue
            received += 1
            _print_arrival(console, number, message, server.get_connection_count(), saved)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    console.print(f"received {received} message(s) over {server.get_connection_count()} connection(s)")


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


# -- demo ----------------------------------------------------------------


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
    from .testing import CountingSMTPServer

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
        accepted = refused = transactions = 0
        batch = (
            (
                "list-bounces@example.com",
                addresses,
                f"From: list@example.com\nTo: members@example.com\nSubject: post {number}\n\nHello from mailman-mta.\n",
            )
            for number in range(posts)
        )
        started = time.perf_counter()
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


if __name__ == "__main__":  # pragma: no cover
    main()
