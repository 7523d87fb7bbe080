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

import contextlib
import functools
import logging
import os
import re
import smtplib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console

from .. import __version__
from ..config import Configuration
from ..errors import ConfigurationError, EnvelopeError, MTAError, NoTransportError
from ..results import reply_text
from ..values import split_host_port

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


def _config_files_option(help: str) -> Callable:
    """``-c/--config FILE``, as the group and every command take it (into ``config_files``)."""
    return click.option("-c", "--config", "config_files", multiple=True, metavar="FILE", help=help)


def _assignments_option(help: str) -> Callable:
    """``-o/--option SECTION.KEY=VALUE``, as the group and every command take it (into ``assignments``)."""
    return click.option("-o", "--option", "assignments", multiple=True, metavar="SECTION.KEY=VALUE", help=help)


def layer_options(function: Callable) -> Callable:
    """Give a command its own ``-c`` and ``-o``, pushed after those given before its name."""

    @_config_files_option("Push this configuration file as a layer (repeatable).")
    @_assignments_option("Set one key, e.g. -o mta.smtp_port=2525 (repeatable).")
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
@_config_files_option("Push this configuration file as a layer (repeatable; also after the command).")
@_assignments_option("Set one key, e.g. -o mta.smtp_port=2525 (repeatable; all go in one layer, '-o').")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, config_files: tuple[str, ...], assignments: tuple[str, ...], debug: bool) -> None:
    """Hand outgoing mail to an SMTP server, pluggably."""
    invocation = Invocation(Configuration(), debug)
    ctx.obj = invocation
    invocation.push_layers(config_files, assignments, "")


pass_invocation = click.make_pass_decorator(Invocation)
