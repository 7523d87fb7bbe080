"""The ``xoauth2`` plugin: AUTH XOAUTH2 with a fetched token, the error exchange done right."""

from __future__ import annotations

import logging
import shlex
import smtplib
import sys

import pytest

from mailman_mta.connection import Connection
from mailman_mta.errors import ConfigurationError
from mailman_mta.testing import CountingSMTPServer

TOKEN = "ya29.a0Af-secret-token"
USER = "anne@example.com"


def good_token(user: str) -> str:
    assert user == USER
    return TOKEN


def bad_token(user: str) -> str:
    return "expired-token-value"


@pytest.fixture
def oauth_server(mta_layers):
    with CountingSMTPServer(credentials=None, oauth_tokens={USER: TOKEN}) as server:
        mta_layers.push("oauth-server", f"[mta]\nsmtp_port: {server.port}\n")
        yield server


def use(mta_layers, user=USER, **settings):
    lines = "".join(f"{key}: {value}\n" for key, value in settings.items())
    mta_layers.push("xoauth2", f"[mta]\nsmtp_user: {user}\n[plugin.xoauth2]\nenabled: yes\n[xoauth2]\n{lines}")


def send():
    with Connection() as connection:
        return connection.sendmail(USER, ["b@example.com"], "Subject: x\n\n")


def test_a_token_from_a_callable_logs_in(oauth_server, mta_layers, caplog):
    use(mta_layers, token_callable=f"{__name__}:good_token")
    with caplog.at_level(logging.DEBUG, logger="mailman_mta.transcript"):
        with Connection(debug=True) as connection:
            connection.sendmail(USER, ["b@example.com"], "Subject: x\n\n")
    assert oauth_server.received[0].authenticated_as == USER
    assert "AUTH XOAUTH2" in caplog.text
    assert TOKEN not in caplog.text


def test_a_token_from_a_command_logs_in(oauth_server, mta_layers):
    command = f"{shlex.quote(sys.executable)} -c \"print('{TOKEN}')\""
    use(mta_layers, token_command=command)
    send()
    assert oauth_server.received[0].authenticated_as == USER


def test_a_refused_token_answers_the_error_challenge_then_fails(oauth_server, mta_layers):
    use(mta_layers, token_callable=f"{__name__}:bad_token")
    with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
        send()
    assert raised.value.smtp_code == 535
    assert b"status 401" in raised.value.smtp_error
    assert oauth_server.xoauth2_error_answers == [b""]
    assert "expired-token-value" not in str(raised.value)
    assert oauth_server.received == []


def test_a_failing_command_is_a_configuration_error_without_its_output(oauth_server, mta_layers):
    command = f"{shlex.quote(sys.executable)} -c \"import sys; print('leaked-secret'); sys.exit(3)\""
    use(mta_layers, token_command=command)
    with pytest.raises(ConfigurationError, match=r"\[xoauth2\] token_command .* failed with exit status 3") as raised:
        send()
    assert "leaked-secret" not in str(raised.value)


def test_without_a_password_a_user_needs_a_plugin_like_this_one(mta_config, mta_layers):
    with pytest.raises(ConfigurationError, match=r"smtp_user is set but \[mta\] smtp_pass is empty"):
        mta_layers.push("user", f"[mta]\nsmtp_user: {USER}\n")


def test_a_relay_without_xoauth2_says_so(mta_config, mta_smtpd, mta_layers):
    use(mta_layers, token_callable=f"{__name__}:good_token")
    with pytest.raises(smtplib.SMTPNotSupportedError, match="does not offer AUTH XOAUTH2"):
        send()


@pytest.mark.parametrize("settings", [{}, {"token_command": "true", "token_callable": "os:getcwd"}])
def test_exactly_one_token_source_is_required(mta_config, mta_layers, settings):
    with pytest.raises(ConfigurationError, match="exactly one of"):
        use(mta_layers, **settings)


def test_a_user_is_required(oauth_server, mta_layers):
    use(mta_layers, user="", token_callable=f"{__name__}:good_token")
    with pytest.raises(ConfigurationError, match=r"set \[mta\] smtp_user"):
        send()


def test_a_token_command_that_times_out_is_killed_with_everything_it_started(tmp_path):
    """A wrapper script's own children go too, instead of living on, one more per connection."""
    import os
    import time
    import types
    from pathlib import Path

    from mailman_mta.errors import ConfigurationError
    from mailman_mta.plugins import xoauth2

    pids = tmp_path / "pids"
    helper = tmp_path / "helper.sh"
    helper.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pids}\nsleep 60\n")
    helper.chmod(0o755)
    settings = types.SimpleNamespace(token_command=str(helper), token_callable="", token_timeout=0.5)
    with pytest.raises(ConfigurationError, match="did not finish within 0.5 s, and was killed"):
        xoauth2.fetch_token(settings, "anne@example.com")
    child = int(pids.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # Reaped by init once killed; a zombie still answers kill(0).
        try:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        raise AssertionError("the helper's own child outlived it")
