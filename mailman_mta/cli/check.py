"""``mailman-mta check``: what a relay offers, found without sending."""

from __future__ import annotations

import smtplib
import sys

import click

from ..connection import Connection
from ..probe import probe
from .app import (
    Invocation,
    describe,
    exit_status_of,
    layer_options,
    main,
    pass_invocation,
    printable,
    relay_options,
)


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
