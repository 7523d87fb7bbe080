"""The password never shows: not in logs, reprs, exception text or results."""

from __future__ import annotations

import base64
import hmac
import logging
import smtplib
import sys
import traceback
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.errors import ConfigurationError
from mailman_mta.secret import Secret
from mailman_mta.smtp.transport import _Credentials
from mailman_mta.testing import Action, ScriptedSMTPServer
from mailman_mta.testing.scripted import DEFAULT_EXTENSIONS

PASSWORD = "s3cr3t-Pa55word"
FORMS = [
    PASSWORD,
    base64.b64encode(PASSWORD.encode()).decode(),
    base64.b64encode(b"\0testuser\0" + PASSWORD.encode()).decode(),
]


def test_the_password_appears_nowhere(mta_config, mta_smtpd, mta_layers, caplog):
    caplog.set_level(logging.DEBUG)
    mta_layers.push("auth", f"[mta]\nsmtp_user: testuser\nsmtp_pass: {PASSWORD}\ncommand_timeout: 0.3\n")
    mta_smtpd.credentials["testuser"] = PASSWORD
    seen = [repr(mta_config.settings.mta), repr(mta_config.mta.smtp_pass is not None)]
    connection = Connection(debug=True)
    seen += [repr(connection), repr(vars(connection)), repr(connection.smtp_pass)]
    with Delivery(connection) as delivery:
        for fault in [
            {},
            {"point": "RCPT", "close": True},
            {"point": "DATA", "hang": True},
            {"point": "MAIL", "reply": "535 5.7.8 no"},
        ]:
            if fault:
                mta_smtpd.script(**fault)
            result = delivery.deliver("anne@example.com", ["bart@example.com"], "Subject: x\n\n")
            seen += [repr(result), str(result.error), repr(result.error)]
        mta_smtpd.credentials["testuser"] = "something else"
        connection.close()
        result = delivery.deliver("anne@example.com", ["bart@example.com"], "Subject: x\n\n")
        assert result.refused["bart@example.com"].code == 454
        seen += [repr(result), str(result.error), repr(result.error)]
    seen += [record.getMessage() for record in caplog.records]
    assert any("AUTH PLAIN ***" in text for text in seen), "the transcript was captured"
    for form in FORMS:
        assert not [text for text in seen if form in text], form


# -- where a password used to leak ---------------------------------------


def test_no_password_is_kept_once_logged_in(mta_smtpd):
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0, "testuser", "testpass")
    connection.sendmail("anne@example.com", ["bart@example.com"], "Subject: x\n\n")
    transport = connection.transport
    assert "testpass" not in repr(vars(transport))
    assert getattr(transport, "password", None) is None
    connection.quit()


NON_ASCII = "p\u00e4ssw\u00f6rd-\u65e5\u672c"


def test_a_non_ascii_password_is_sent_as_utf8(mta_smtpd):
    mta_smtpd.credentials["testuser"] = NON_ASCII
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0, "testuser", NON_ASCII)
    assert connection.sendmail("anne@example.com", ["bart@example.com"], "Subject: x\n\n") == {}
    connection.quit()
    expected = base64.b64encode(f"\0testuser\0{NON_ASCII}".encode()).decode()
    assert mta_smtpd.get_authentication_credentials() == f"PLAIN {expected}"


def test_a_wrong_non_ascii_password_is_nowhere_in_the_error(mta_smtpd):
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0, "testuser", NON_ASCII)
    with Delivery(connection) as delivery:
        result = delivery.deliver("anne@example.com", ["bart@example.com"], "Subject: x\n\n")
    assert result.refused["bart@example.com"].code == 454
    error = result.error
    shown = [str(error), repr(error), repr(error.args), repr(result), repr(vars(error))]
    assert not [text for text in shown if NON_ASCII in text]


def test_cram_md5_takes_a_non_ascii_password():
    challenge = b"<1896.697170952@postoffice.example.net>"
    answer = _Credentials("CRAM-MD5", "testuser", Secret(NON_ASCII))(challenge)
    assert isinstance(answer, Secret)
    expected = hmac.new(NON_ASCII.encode(), challenge, "md5").hexdigest()
    assert answer.reveal() == f"testuser {expected}"


def test_a_password_that_is_not_text_is_refused_without_showing_it(mta_smtpd):
    bad = "s3cret\ud800"
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, 0, "testuser", bad)
    with pytest.raises(ConfigurationError) as caught:
        connection.sendmail("anne@example.com", ["bart@example.com"], "Subject: x\n\n")
    error = caught.value
    assert "s3cret" not in str(error) and "s3cret" not in repr(error.args)
    assert error.__context__ is None and error.__cause__ is None, "nothing chained that holds it"


def test_a_reply_that_echoes_the_credentials_is_masked(caplog):
    caplog.set_level(logging.DEBUG)
    blob = base64.b64encode(b"\0testuser\0" + PASSWORD.encode()).decode()
    echo = f"535 5.7.8 Bad credentials {blob} ({PASSWORD})\r\n".encode()
    extensions = (*DEFAULT_EXTENSIONS, "AUTH PLAIN LOGIN")
    with ScriptedSMTPServer(extensions) as server:
        server.script(Action(), Action(), Action(reply=echo), Action(reply=echo))  # PLAIN, then LOGIN
        connection = Connection(server.hostname, server.port, 0, "testuser", PASSWORD, debug=True)
        with Delivery(connection) as delivery:
            result = delivery.deliver("anne@example.com", ["bart@example.com"], "Subject: x\n\n")
    failure = result.refused["bart@example.com"]
    assert failure.code == 454
    assert "Bad credentials *** (***)" in failure.message
    seen = [failure.message, str(result.error), repr(result.error.args)]
    seen += [record.getMessage() for record in caplog.records]
    for form in FORMS:
        assert not [text for text in seen if form in text], form


def test_a_config_line_with_a_password_is_not_echoed_when_it_cannot_be_parsed(tmp_path):
    from click.testing import CliRunner

    from mailman_mta.cli import main

    layer = tmp_path / "site.cfg"
    layer.write_text(f"[mta]\nsmtp_user: anne\nsmtp_pass {PASSWORD}\n")
    result = CliRunner().invoke(main, ["-c", str(layer), "config"])
    assert result.exit_code == 78
    assert "line 3 (starting 'smtp_pass') is not 'key: value'" in result.output
    assert PASSWORD not in result.output
    result = CliRunner().invoke(main, ["-o", f"mta.smtp_pass {PASSWORD}", "config"])
    assert result.exit_code == 2 and PASSWORD not in result.output


# -- tracebacks: no frame holds a secret as text ------------------------------
#
# Error trackers (Sentry) and pytest --showlocals record every frame's
# variables.  Whatever the relay does during AUTH, the traceback of what
# comes out, with its frames' variables and its chained exceptions, shows
# neither the password nor any wire form of it.


def _raised(call) -> BaseException | None:
    """What *call* raises, caught in a frame of its own (the test's frame holds the secrets it checks for)."""
    try:
        call()
    except Exception as error:
        return error
    return None


def _everything_shown(error: BaseException) -> str:
    shown = traceback.TracebackException.from_exception(error, capture_locals=True).format()
    return "".join(shown) + str(error) + repr(error.args)


def _secret_forms(user: str, password: str) -> list[str]:
    encoded = password.encode("utf-8")
    return [
        password,
        base64.b64encode(encoded).decode(),
        base64.b64encode(user.encode() + b"\0" + encoded).decode()[4:],
        base64.b64encode(b"\0" + user.encode() + b"\0" + encoded).decode(),
    ]


_CHALLENGE = b"334 " + base64.b64encode(b"<1896.697170952@postoffice.example.net>") + b"\r\n"
_AUTH_STEPS = st.sampled_from(
    [
        Action(reply=b"535 5.7.8 Authentication credentials invalid\r\n"),
        Action(reply=b"454 4.7.0 Temporary authentication failure\r\n"),
        Action(reply=b"334 VXNlcm5hbWU6\r\n"),  # LOGIN's "Username:"
        Action(reply=b"334 UGFzc3dvcmQ6\r\n"),  # "Password:"
        Action(reply=_CHALLENGE),
        Action(reply=b"334 this is not base64 !\r\n"),
        Action(reply=b"garbage that is no SMTP reply\r\n"),
        Action(reply=b"", close=True),
        Action(hang=True),
        Action(reply=b"235 2.7.0 Authentication successful\r\n"),
    ]
)


@pytest.mark.slow  # seconds of waiting: outside the inner loop
@settings(max_examples=60, deadline=None)
@given(
    mechanisms=st.lists(st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5"]), min_size=1, max_size=3, unique=True),
    password=st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs")), min_size=1, max_size=12),
    steps=st.lists(_AUTH_STEPS, min_size=1, max_size=5),
    through=st.sampled_from(["connect", "deliver"]),
)
def test_no_traceback_of_an_auth_failure_holds_the_password(mechanisms, password, steps, through):
    password = f"Pw-{password}-zq9"
    extensions = (*DEFAULT_EXTENSIONS, "AUTH " + " ".join(mechanisms))
    with ScriptedSMTPServer(extensions) as server:
        server.script(Action(), Action(), *steps)
        connection = Connection(server.hostname, server.port, 0, "testuser", password, command_timeout=0.3)
        error: BaseException | None
        if through == "connect":
            error = _raised(connection.connect)
        else:
            with Delivery(connection) as delivery:
                error = delivery.deliver("anne@example.com", ["bart@example.com"], "Subject: x\n\n").error
        connection.close()
    if error is not None:
        shown = _everything_shown(error)
        for form in _secret_forms("testuser", password):
            assert form not in shown, form


def test_no_traceback_of_a_refused_xoauth2_token_holds_it(mta_config, mta_layers, monkeypatch):
    token = "ya29.a0-Token-Secret-42"
    module = types.ModuleType("tests_secret_token")
    module.token = lambda user: token
    monkeypatch.setitem(sys.modules, "tests_secret_token", module)
    extensions = (*DEFAULT_EXTENSIONS, "AUTH XOAUTH2")
    error_json = base64.b64encode(b'{"status":"401","schemes":"bearer"}')
    with ScriptedSMTPServer(extensions) as server:
        server.script(
            Action(), Action(), Action(reply=b"334 " + error_json + b"\r\n"), Action(reply=b"535 5.7.8 no\r\n")
        )
        mta_layers.push(
            "oauth",
            f"[mta]\nsmtp_host: {server.hostname}\nsmtp_port: {server.port}\nsmtp_user: anne@example.com\n"
            "[plugin.xoauth2]\nenabled: yes\n[xoauth2]\ntoken_callable: tests_secret_token:token\n",
        )
        error = _raised(Connection().connect)
    assert isinstance(error, smtplib.SMTPAuthenticationError)
    shown = _everything_shown(error)
    initial = base64.b64encode(f"user=anne@example.com\x01auth=Bearer {token}\x01\x01".encode()).decode()
    assert "token refused: status 401" in shown
    assert token not in shown and initial not in shown


@pytest.mark.parametrize("script", ["exit", "timeout"])
def test_no_traceback_of_a_failed_token_command_holds_what_it_printed(mta_config, mta_layers, tmp_path, script):
    helper = tmp_path / "helper.sh"
    body = {
        "exit": "echo ya29.Printed-Secret-Token; exit 3",
        "timeout": "echo ya29.Printed-Secret-Token; sleep 30",
    }[script]
    helper.write_text(f"#!/bin/sh\n{body}\n")
    helper.chmod(0o755)
    from mailman_mta.plugins import xoauth2

    settings_ = types.SimpleNamespace(token_command=str(helper), token_callable="", token_timeout=0.5)
    error = _raised(lambda: xoauth2.fetch_token(settings_, "anne@example.com"))
    assert isinstance(error, ConfigurationError)
    shown = _everything_shown(error)
    assert "ya29.Printed-Secret-Token" not in shown
    assert ("exit status 3" if script == "exit" else "did not finish within 0.5 s") in shown
