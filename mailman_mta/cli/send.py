"""``mailman-mta send``: messages from files, to recipients, with a result for each."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..connection import Connection
from ..delivery import NOT_ATTEMPTED, Delivery
from ..envelope import check_address
from ..errors import DeliveryInterrupted, EnvelopeError
from ..results import DeliveryResult, Failure
from .app import (
    EXIT_INTERRUPTED,
    EXIT_NOINPUT,
    EXIT_PERMANENT,
    EXIT_TEMPFAIL,
    CommandError,
    Invocation,
    describe,
    exit_status_of,
    layer_options,
    main,
    pass_invocation,
    printable,
    relay_options,
)


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
