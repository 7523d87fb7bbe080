"""The password never shows: not in logs, reprs, exception text or results."""

from __future__ import annotations

import base64
import logging

import pytest

from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.errors import ConfigurationError
from mailman_mta.testing import Action, ScriptedSMTPServer
from mailman_mta.testing.scripted import DEFAULT_EXTENSIONS
from mailman_mta.transport import SMTPTransport

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
    transport = SMTPTransport()
    transport.user, transport.password = "testuser", NON_ASCII
    answer = transport.auth_cram_md5(b"<1896.697170952@postoffice.example.net>")
    assert answer.startswith("testuser ") and len(answer.split()[1]) == 32


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
