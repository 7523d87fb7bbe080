"""The mailman-mta command, driven through click's runner and as a subprocess."""

from __future__ import annotations

import re

import smtplib
import ssl
import subprocess
import sys

import pytest
import trustme
from click.testing import CliRunner

from mailman_mta.cli import EXIT_TEMPFAIL, main
from mailman_mta.errors import MTAConnectionError
from mailman_mta.testing import CountingSMTPServer

MESSAGE = b"From: anne@example.com\r\nTo: list@example.com\r\nSubject: cli\r\n\r\nHello\r\n"


def run(*args: str, input: bytes | None = None):
    return CliRunner(env={"COLUMNS": "250"}).invoke(main, list(args), input=input)


def at(server: CountingSMTPServer) -> list[str]:
    return ["-o", f"mta.smtp_host={server.hostname}", "-o", f"mta.smtp_port={server.port}"]


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def eml(tmp_path):
    path = tmp_path / "post.eml"
    path.write_bytes(MESSAGE)
    return str(path)


# -- demo ----------------------------------------------------------------


def test_demo_sends_a_batch_and_reports_it():
    result = run("demo", "-n", "5", "-m", "6", "-s", "2", "--connections", "1")
    assert result.exit_code == 0, result.output
    assert "5 sent, 5 received" in result.output
    assert "30 accepted, 0 refused; 30 arrived" in result.output
    assert "3 (at most 1 at once; sessions per connection: 2)" in result.output
    assert "bulk (max_recipients 500)" in result.output


def test_demo_over_several_connections():
    result = run("demo", "-n", "12", "-m", "4", "--connections", "3")
    assert result.exit_code == 0, result.output
    assert "48 accepted, 0 refused; 48 arrived" in result.output
    assert "(at most 3 at once;" in result.output


def test_demo_follows_the_layers():
    result = run("-o", "mta.delivery=verp", "-o", "devmode.enabled=yes", "-o", "devmode.recipient=dev@example.com",
                 "demo", "-n", "2", "-m", "3")
    assert result.exit_code == 0, result.output
    assert "6 sent, 6 received" in result.output
    assert "verp" in result.output


# -- send ----------------------------------------------------------------


def test_send_delivers_files_and_stdin(mta_smtpd, eml, tmp_path):
    members = tmp_path / "members.txt"
    members.write_text("# the list\ncate@example.org\n\ndave@example.net  # moderator\n")
    result = run(*at(mta_smtpd), "send", "-f", "list-bounces@example.com", "-t", "bart@example.com",
                 "--to-file", str(members), eml, "-", input=MESSAGE)
    assert result.exit_code == 0, result.output
    assert "post.eml: 3 accepted, 0 refused, 1 transaction(s)" in result.output
    assert "-: 3 accepted, 0 refused" in result.output
    assert [r.content for r in mta_smtpd.received] == [MESSAGE, MESSAGE]
    assert set(mta_smtpd.received[0].rcpt_tos) == {"bart@example.com", "cate@example.org", "dave@example.net"}


def test_send_with_verp_sends_one_copy_each(mta_smtpd, eml):
    result = run(*at(mta_smtpd), "-o", "mta.delivery=verp", "send", "-f", "bounces@lists.example.org",
                 "-t", "anne@example.com", "-t", "bart@example.com", eml)
    assert result.exit_code == 0, result.output
    assert sorted(r.mail_from for r in mta_smtpd.received) == [
        "bounces+anne=example.com@lists.example.org", "bounces+bart=example.com@lists.example.org"]


@pytest.mark.parametrize("reply, status, kind", [("550 5.1.1 No such user", 1, "permanent"),
                                                 ("450 4.2.1 Try later", EXIT_TEMPFAIL, "temporary")])
def test_send_reports_refused_recipients(mta_smtpd, eml, reply, status, kind):
    mta_smtpd.refuse_recipient("gone@example.com", reply)
    result = run(*at(mta_smtpd), "send", "-f", "a@example.com", "-t", "b@example.com", "-t", "gone@example.com", eml)
    assert result.exit_code == status, result.output
    assert "1 accepted, 1 refused" in result.output
    row = next(line for line in result.output.splitlines() if "gone@example.com" in line)
    assert reply[:3] in row and kind in row and reply[4:] in row


def test_send_to_an_unreachable_mta_is_one_line(eml):
    with CountingSMTPServer() as server:
        port = server.port
    result = run("-o", f"mta.smtp_port={port}", "-o", "mta.smtp_host=127.0.0.1", "send", "-f", "a@example.com",
                 "-t", "b@example.com", eml)
    assert result.exit_code == EXIT_TEMPFAIL
    assert one_line(result) == (f"Error: {eml}: not delivered to any recipient: 444 4.4.2 cannot connect to "
                                f"127.0.0.1:{port}: Connection refused")


@pytest.mark.parametrize("args, status, words", [
    (["send", "-f", "a@example.com", "-t", "b@example.com", "missing.eml"], 1, "cannot read message missing.eml: No such file"),
    (["send", "-f", "a@example.com", "-t", "b c@example.com", "x.eml"], 2, "Invalid value for '-t' / '--to': recipient 'b c@example.com' is not an envelope address: the local part 'b c' contains ' '"),
    (["send", "-f", "a@example.com\r\n", "-t", "b@example.com", "x.eml"], 2, "sender 'a@example.com\\r\\n' is not an envelope address: it contains '\\r', a control character"),
    (["send", "-f", "a@example.com", "x.eml"], 2, "no recipients: give --to or --to-file"),
    (["send", "--bogus"], 2, "No such option '--bogus' (see 'mailman-mta send --help')"),
    (["frobnicate"], 2, "No such command 'frobnicate'"),
    (["-o", "mta.smtp_port=abc", "config"], 1, "config layer '-o': [mta] smtp_port: 'abc' is not a port number"),
    (["-o", "smtp_port=25", "config"], 2, "'smtp_port=...' is not section.key=value"),
    (["-o", "mta.smtp_pass s3cret", "config"], 2, "'mta.smtp_pass ...' is not section.key=value"),
    (["-c", "nowhere.cfg", "config"], 1, "cannot read config file 'nowhere.cfg'"),
    (["-o", "plugin.smtp.enabled=no", "check"], 1, "NoTransportError: no enabled plugin opened a connection"),
    (["send", "-f", "a@example.com", "--to-file", "nowhere.txt", "x.eml"], 2, "cannot read nowhere.txt"),
])
def test_user_errors_are_one_line(args, status, words):
    result = CliRunner(env={"COLUMNS": "250"}).invoke(main, args, prog_name="mailman-mta")
    assert result.exit_code == status, result.output
    assert words in one_line(result)


def test_debug_shows_the_traceback():
    with CountingSMTPServer() as server:
        port = server.port
    result = run("--debug", "-o", "mta.smtp_host=127.0.0.1", "-o", f"mta.smtp_port={port}", "check")
    assert isinstance(result.exception, MTAConnectionError)
    plain = run("-o", "mta.smtp_host=127.0.0.1", "-o", f"mta.smtp_port={port}", "check")
    assert one_line(plain).startswith("Error: MTAConnectionError: cannot connect to 127.0.0.1:")


# -- config and plugins --------------------------------------------------


def test_config_shows_values_and_their_layers(tmp_path):
    site = tmp_path / "site.cfg"
    site.write_text("[mta]\nsmtp_host: relay.example.com\nsmtp_pass: hunter2\n")
    result = run("-c", str(site), "-o", "mta.smtp_port=2525", "config")
    assert result.exit_code == 0, result.output
    rows = {tuple(cell.strip() for cell in line.split("│")[1:5]) for line in result.output.splitlines() if "│" in line}
    assert ("[mta]", "smtp_host", "relay.example.com", "site.cfg") in rows
    assert ("[mta]", "smtp_port", "2525", "-o") in rows
    assert ("[mta]", "smtp_pass", "Secret('***')", "site.cfg") in rows
    assert ("[devmode]", "enabled", "no", "default") in rows
    assert "hunter2" not in result.output


def test_plugins_lists_what_exists_and_what_is_active(shout_distribution):
    result = run("plugins")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
            for line in result.output.splitlines() if line.count("│") >= 4}
    assert rows["devmode"] == ["yes", "built-in", "mta_check_config, mta_declare_config, mta_rewrite_recipients"]
    assert rows["shout"] == ["no", "entry point mta_test_shout from mta-shout 1.0", "mta_prepare_message"]
    enabled = run("-o", "plugin.shout.enabled=yes", "plugins")
    assert re.search(r"│ shout +│ yes", enabled.output)


def test_plugins_shows_a_plugin_that_cannot_load():
    result = run("-o", "plugin.ghost.enabled=no", "plugins")
    assert result.exit_code == 0
    assert "ghost" in result.output and "cannot load" in result.output


# -- check ---------------------------------------------------------------


def test_check_reports_extensions_and_auth(mta_smtpd):
    result = run(*at(mta_smtpd), "-o", "mta.smtp_user=testuser", "-o", "mta.smtp_pass=testpass", "check")
    assert result.exit_code == 0, result.output
    assert "offers      AUTH LOGIN PLAIN" in result.output
    assert "offers      8BITMIME" in result.output
    assert "tls         none (plaintext)" in result.output
    assert "auth        succeeded as testuser" in result.output
    assert mta_smtpd.received == [] and "MAIL" not in mta_smtpd.commands


def test_check_reports_failed_auth(mta_smtpd):
    result = run(*at(mta_smtpd), "-o", "mta.smtp_user=testuser", "-o", "mta.smtp_pass=wrong", "check")
    assert result.exit_code == 1
    assert "auth        FAILED as testuser: SMTPAuthenticationError: 535 5.7.8" in result.output
    assert "wrong" not in result.output


def test_check_reports_tls(tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with CountingSMTPServer(tls_context=context) as server:
        result = run(*at(server), "-o", "mta.secure_mode=starttls", "-o", f"mta.ca_file={tmp_path / 'ca.pem'}", "check")
    assert result.exit_code == 0, result.output
    assert "tls         TLSv1.3, certificate" in result.output and "(verified)" in result.output


# -- sink ----------------------------------------------------------------


def test_sink_prints_what_arrives():
    sink = subprocess.Popen(
        [sys.executable, "-m", "mailman_mta", "sink", "--port", "0", "--count", "2", "--seconds", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"COLUMNS": "250", "PATH": ""},
    )
    try:
        first = sink.stdout.readline()
        assert first.startswith("listening on 127.0.0.1:"), first + sink.stderr.read()
        port = int(first.rsplit(":", 1)[1])
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("anne@example.com", ["bart@example.com"], MESSAGE)
            client.sendmail("anne@example.com", ["cate@example.com", "dave@example.com"], MESSAGE)
        output, errors = sink.communicate(timeout=30)
    finally:
        sink.kill()
        sink.wait()
    assert sink.returncode == 0, errors
    lines = output.splitlines()
    assert lines[0].startswith("#1 from anne@example.com to bart@example.com (") and "cli" in lines[0]
    assert lines[1].startswith("#2 from anne@example.com to cate@example.com, dave@example.com")
    assert lines[-1] == "received 2 message(s) over 1 connection(s)"


def test_the_module_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "mailman_mta", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "mailman-mta, version 0.1.0"
