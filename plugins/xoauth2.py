"""Built-in plugin ``xoauth2``: SMTP AUTH with an OAuth 2.0 access token.

Gmail, Outlook.com and Microsoft 365 no longer take passwords for SMTP;
they take ``AUTH XOAUTH2`` with an access token that expires within the
hour.  This plugin fetches a fresh token for every new connection, from
``[xoauth2] token_command`` (a program that prints it, such as
``oauth2l fetch`` or a site's own helper; run without a shell) or
``[xoauth2] token_callable`` (``package.module:function``, called with the
user name), and logs in as ``connection.smtp_user`` (``[mta] smtp_user``).

A refused token gets the error exchange right: the server answers with a
334 carrying a JSON error, the client must send an empty line, and only
then comes the 535 (as OAUTHBEARER, RFC 7628 3.2.3, does it).  The token
is a `Secret`: it is masked in the transcript and in any reply that
echoes it, and never appears in an error message.  It runs before the
password ``auth`` plugin and returns True, so that one is skipped.
"""

from __future__ import annotations

import json
import os
import pkgutil
import shlex
import signal
import smtplib
import subprocess

from mailman_mta import hookimpl
from mailman_mta.errors import ConfigurationError
from mailman_mta.interfaces import IMessageTransactions
from mailman_mta.secret import Secret
from mailman_mta.values import as_positive_seconds, as_python_path, as_text


@hookimpl
def mta_declare_config(schema):
    schema.add_section(
        "xoauth2",
        """
        # A command whose standard output is the access token, split into
        # words as a shell would but run without one.  Run once for every new
        # connection.
        token_command:

        # Instead: a Python callable, package.module:function, called with the
        # user name and returning the access token.
        token_callable:

        # Seconds token_command may take.
        token_timeout: 30
        """,
        token_command=as_text,
        token_callable=as_python_path,
        token_timeout=as_positive_seconds,
    )


@hookimpl
def mta_check_config(config):
    settings = config.settings.xoauth2
    if bool(settings.token_command) == bool(settings.token_callable):
        raise ConfigurationError(
            "[plugin.xoauth2] is enabled: set exactly one of [xoauth2] token_command and token_callable",
            section="xoauth2",
            key="token_command",
        )
    if settings.token_command:
        try:
            shlex.split(settings.token_command)
        except ValueError as error:
            raise ConfigurationError(
                f"[xoauth2] token_command cannot be split into words: {error}", section="xoauth2", key="token_command"
            ) from None


def fetch_token(settings, user: str) -> Secret:
    """The access token for *user*, from the command or the callable.

    It is a `Secret` from the moment it is read, and no frame here holds it
    as text when anything fails (a traceback keeps its frames' variables).
    """
    if settings.token_callable:
        try:
            function = pkgutil.resolve_name(settings.token_callable)
        except (ImportError, AttributeError, ValueError) as error:
            raise ConfigurationError(
                f"[xoauth2] token_callable cannot be loaded: {error}", section="xoauth2", key="token_callable"
            ) from None
        token = Secret(str(Secret(function(user)).reveal()).strip())
    else:
        token = _run_token_command(settings.token_command, settings.token_timeout)
    if not _one_printable_word(token):
        raise ConfigurationError(
            "[xoauth2] the access token is empty or not one printable word", section="xoauth2", key="token_command"
        )
    return token


def _one_printable_word(token: Secret) -> bool:
    text = token.reveal()
    return bool(text) and not any(c.isspace() or not c.isprintable() for c in text)


def _run_token_command(command: str, timeout: float) -> Secret:
    """What *command* prints, as a `Secret`; the command and everything it started are killed at *timeout*.

    The command runs in a session of its own, so that a helper script's
    own children (a ``sleep`` in a wrapper) go with it rather than living
    on, one more for every connection.  Its output is never shown: it may
    hold a token or a secret.
    """
    words = shlex.split(command)
    try:
        process = subprocess.Popen(
            words, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
    except OSError as error:
        raise ConfigurationError(
            f"[xoauth2] token_command {words[0]!r} could not be run: {error.strerror or error}",
            section="xoauth2",
            key="token_command",
        ) from None
    timed_out = False
    try:
        token = Secret(process.communicate(timeout=timeout)[0].decode("utf-8", "replace").strip())
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _stop_group(process)
    if timed_out:
        # Raised outside the handler: TimeoutExpired holds what was printed so far.
        raise ConfigurationError(
            f"[xoauth2] token_command {words[0]!r} did not finish within {timeout:g} s, and was killed",
            section="xoauth2",
            key="token_command",
        )
    if process.returncode != 0:
        raise ConfigurationError(
            f"[xoauth2] token_command {words[0]!r} failed with exit status {process.returncode}",
            section="xoauth2",
            key="token_command",
        )
    return token


def _stop_group(process: subprocess.Popen) -> None:
    """Kill whatever is left of *process*'s session (its own children too) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    process.wait()


def initial_response(user: str, token: Secret) -> Secret:
    """The XOAUTH2 client response, before base64."""
    return Secret(f"user={user}\x01auth=Bearer {token.reveal()}\x01\x01")


@hookimpl
def mta_authenticate(config, connection, transport):
    user = connection.smtp_user
    if not user:
        raise ConfigurationError(
            "[plugin.xoauth2] is enabled but there is no user name: set [mta] smtp_user", section="mta", key="smtp_user"
        )
    transport.ehlo_or_helo_if_needed()
    offered = transport.esmtp_features.get("auth", "").upper().split()
    if "XOAUTH2" not in offered:
        raise smtplib.SMTPNotSupportedError(
            f"the relay does not offer AUTH XOAUTH2 (it offers: {' '.join(offered) or 'no AUTH'})"
        )
    token = fetch_token(config.settings.xoauth2, user)
    ours = IMessageTransactions.providedBy(transport)
    errors = []

    def respond(challenge=None):
        if challenge is None:
            # Ours takes the Secret itself; smtplib's needs the text.
            response = initial_response(user, token)
            return response if ours else response.reveal()
        # A challenge after the initial response is the server's error, as
        # JSON; the exchange ends with an empty response, then 535.
        errors.append(_error_status(challenge))
        return ""

    try:
        # Our transport also masks the bare token, should a reply echo it.
        transport.auth("XOAUTH2", respond, initial_response_ok=True, **({"secrets": [token]} if ours else {}))
    except smtplib.SMTPAuthenticationError as error:
        if errors and errors[0]:
            said = error.smtp_error if isinstance(error.smtp_error, bytes) else str(error.smtp_error).encode()
            raise smtplib.SMTPAuthenticationError(
                error.smtp_code, said + f" (token refused: {errors[0]})".encode()
            ) from None
        raise
    return True


def _error_status(challenge: bytes) -> str:
    """The status the server's JSON error names, to say why the token was refused."""
    try:
        status = json.loads(challenge).get("status", "")
    except (ValueError, AttributeError):
        return ""
    return f"status {status}" if isinstance(status, str) and status.isalnum() else ""
