"""The mailman-mta command, driven through click's runner and as a subprocess."""

from __future__ import annotations

import _thread
import json
import re
import smtplib
import ssl
import subprocess
import sys
import threading

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
    result = run(
        "-o",
        "mta.delivery=verp",
        "-o",
        "devmode.enabled=yes",
        "-o",
        "devmode.recipient=dev@example.com",
        "demo",
        "-n",
        "2",
        "-m",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert "6 sent, 6 received" in result.output
    assert "verp" in result.output


# -- send ----------------------------------------------------------------


def test_send_delivers_files_and_stdin(mta_smtpd, eml, tmp_path):
    members = tmp_path / "members.txt"
    members.write_text("# the list\ncate@example.org\n\ndave@example.net  # moderator\n")
    result = run(
        *at(mta_smtpd),
        "send",
        "-f",
        "list-bounces@example.com",
        "-t",
        "bart@example.com",
        "--to-file",
        str(members),
        eml,
        "-",
        input=MESSAGE,
    )
    assert result.exit_code == 0, result.output
    assert "post.eml: 3 accepted, 0 refused, 1 transaction(s)" in result.output
    assert "-: 3 accepted, 0 refused" in result.output
    assert [r.content for r in mta_smtpd.received] == [MESSAGE, MESSAGE]
    assert set(mta_smtpd.received[0].rcpt_tos) == {"bart@example.com", "cate@example.org", "dave@example.net"}


def test_send_with_verp_sends_one_copy_each(mta_smtpd, eml):
    result = run(
        *at(mta_smtpd),
        "-o",
        "mta.delivery=verp",
        "send",
        "-f",
        "bounces@lists.example.org",
        "-t",
        "anne@example.com",
        "-t",
        "bart@example.com",
        eml,
    )
    assert result.exit_code == 0, result.output
    assert sorted(r.mail_from for r in mta_smtpd.received) == [
        "bounces+anne=example.com@lists.example.org",
        "bounces+bart=example.com@lists.example.org",
    ]


@pytest.mark.parametrize(
    "reply, status, kind",
    [("550 5.1.1 No such user", 1, "permanent"), ("450 4.2.1 Try later", EXIT_TEMPFAIL, "temporary")],
)
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
    result = run(
        "-o",
        f"mta.smtp_port={port}",
        "-o",
        "mta.smtp_host=127.0.0.1",
        "send",
        "-f",
        "a@example.com",
        "-t",
        "b@example.com",
        eml,
    )
    assert result.exit_code == EXIT_TEMPFAIL
    assert one_line(result) == (
        f"Error: {eml}: not delivered to any recipient: 444 4.4.2 cannot connect to "
        f"127.0.0.1:{port}: Connection refused"
    )


@pytest.mark.parametrize(
    "args, status, words",
    [
        (
            ["send", "-f", "a@example.com", "-t", "b@example.com", "missing.eml"],
            66,
            "cannot read message missing.eml: No such file",
        ),
        (
            ["send", "-f", "a@example.com", "-t", "b c@example.com", "x.eml"],
            2,
            "Invalid value for '-t' / '--to': recipient 'b c@example.com' is not an envelope address: "
            "the local part 'b c' contains ' '",
        ),
        (
            ["send", "-f", "a@example.com\r\n", "-t", "b@example.com", "x.eml"],
            2,
            "sender 'a@example.com\\r\\n' is not an envelope address: it contains '\\r', a control character",
        ),
        (["send", "-f", "a@example.com", "x.eml"], 2, "no recipients: give --to or --to-file"),
        (["send", "--bogus"], 2, "No such option '--bogus'"),
        (["frobnicate"], 2, "No such command 'frobnicate'"),
        (["-o", "mta.smtp_port=abc", "config"], 78, "config layer '-o': [mta] smtp_port: 'abc' is not a port number"),
        (["config", "-o", "mta.smtp_port=abc"], 78, "config layer '-o (after config)': [mta] smtp_port: 'abc' is not"),
        (["-o", "smtp_port=25", "config"], 2, "'smtp_port=...' is not section.key=value"),
        (["-o", "mta.smtp_pass s3cret", "config"], 2, "'mta.smtp_pass ...' is not section.key=value"),
        (["-c", "nowhere.cfg", "config"], 78, "cannot read config file 'nowhere.cfg'"),
        (["-o", "plugin.smtp.enabled=no", "check"], 78, "Error: no enabled plugin opened a connection"),
        (["send", "-f", "a@example.com", "--to-file", "nowhere.txt", "x.eml"], 2, "cannot read nowhere.txt"),
    ],
)
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
    assert one_line(plain).startswith("Error: cannot connect to 127.0.0.1:")
    assert plain.exit_code == EXIT_TEMPFAIL


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
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
        for line in result.output.splitlines()
        if line.count("│") >= 4
    }
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
    assert result.exit_code == 77, "the same status as send gives a refused login"
    assert "auth        FAILED as testuser: the relay refused the login: 535 5.7.8" in result.output
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
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"COLUMNS": "250", "PATH": ""},
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
    assert lines[0].startswith("#1 from anne@example.com, 1 recipient(s), ") and "'cli'" in lines[0]
    assert lines[0].endswith("(connections so far: 1)")
    assert lines[1:5] == [
        "    to bart@example.com",
        f"#2 from anne@example.com, 2 recipient(s), {len(MESSAGE)} bytes, subject 'cli' (connections so far: 1)",
        "    to cate@example.com",
        "    to dave@example.com",
    ]
    assert lines[-1] == "received 2 message(s) over 1 connection(s)"


def test_the_module_runs_as_a_program():
    result = subprocess.run(
        [sys.executable, "-m", "mailman_mta", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "mailman-mta, version 0.1.0"


# -- the habits of swaks and postconf users (issue #12) ----------------------


def test_send_reaches_a_server_without_a_config_file(mta_smtpd, eml):
    result = run(
        "send", "-s", f"{mta_smtpd.hostname}:{mta_smtpd.port}", "-f", "a@example.com", "-t", "b@example.com", eml
    )
    assert result.exit_code == 0, result.output
    assert mta_smtpd.received[0].rcpt_tos == ("b@example.com",)


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("mx.example.com", ("mx.example.com", None)),
        ("mx.example.com:587", ("mx.example.com", 587)),
        ("[::1]:2525", ("::1", 2525)),
        ("[2001:db8::1]", ("2001:db8::1", None)),
    ],
)
def test_server_is_written_as_swaks_writes_it(server, expected):
    from mailman_mta.cli import _host_and_port

    assert _host_and_port(server) == expected


def test_a_bad_server_is_a_usage_error(eml):
    result = run("send", "-s", "mx.example.com:99999", "-f", "a@example.com", "-t", "b@example.com", eml)
    assert result.exit_code == 2
    assert "'99999' is not a port number" in one_line(result)


def test_layers_may_follow_the_command(mta_smtpd, eml):
    result = run(
        "send",
        "-f",
        "a@example.com",
        "-t",
        "b@example.com",
        "-o",
        f"mta.smtp_port={mta_smtpd.port}",
        "-o",
        f"mta.smtp_host={mta_smtpd.hostname}",
        eml,
    )
    assert result.exit_code == 0, result.output
    shown = run("-o", "mta.smtp_port=2500", "config", "-o", "mta.smtp_port=2600", "mta.smtp_port", "--origin")
    assert shown.output.strip() == "2600 (from -o (after config))"


def test_user_takes_the_password_from_the_environment_or_a_prompt(mta_smtpd, eml, caplog):
    relay = ["-s", f"{mta_smtpd.hostname}:{mta_smtpd.port}", "--user", "testuser"]
    from_env = CliRunner(env={"MAILMAN_MTA_PASSWORD": "testpass"}).invoke(
        main, ["send", *relay, "-f", "a@example.com", "-t", "b@example.com", eml]
    )
    assert from_env.exit_code == 0, from_env.output
    prompted = run("send", *relay, "-f", "a@example.com", "-t", "b@example.com", eml, input=b"testpass\n")
    assert prompted.exit_code == 0, prompted.output
    assert "Password for testuser" in prompted.output and "testpass" not in prompted.output
    assert [m.authenticated_as for m in mta_smtpd.received] == ["testuser", "testuser"]
    from_stdin = run("send", *relay, "-f", "a@example.com", "-t", "b@example.com", "-", input=MESSAGE)
    assert from_stdin.exit_code == 2
    assert "set MAILMAN_MTA_PASSWORD" in one_line(from_stdin)


def test_starttls_refused_is_the_same_status_in_send_and_check(mta_smtpd, eml):
    relay = ["-s", f"{mta_smtpd.hostname}:{mta_smtpd.port}", "--starttls"]
    sent = run("send", *relay, "-f", "a@example.com", "-t", "b@example.com", eml)
    checked = run("check", *relay)
    assert sent.exit_code == checked.exit_code == EXIT_TEMPFAIL
    assert "does not offer STARTTLS" in sent.output and "does not offer STARTTLS" in checked.output
    assert mta_smtpd.received == []


def test_a_refused_login_is_77_in_send_and_check(mta_smtpd, eml):
    relay = ["-s", f"{mta_smtpd.hostname}:{mta_smtpd.port}", "--user", "testuser"]
    environment = {"MAILMAN_MTA_PASSWORD": "wrong"}
    sent = CliRunner(env=environment).invoke(main, ["send", *relay, "-f", "a@example.com", "-t", "b@example.com", eml])
    checked = CliRunner(env=environment).invoke(main, ["check", *relay])
    assert (sent.exit_code, checked.exit_code) == (77, 77), sent.output + checked.output
    assert "wrong" not in sent.output + checked.output


def test_transcript_shows_the_conversation_with_secrets_masked(mta_smtpd, eml):
    result = CliRunner(env={"MAILMAN_MTA_PASSWORD": "testpass", "COLUMNS": "250"}).invoke(
        main,
        [
            "send",
            "-s",
            f"{mta_smtpd.hostname}:{mta_smtpd.port}",
            "--user",
            "testuser",
            "--transcript",
            "-f",
            "a@example.com",
            "-t",
            "b@example.com",
            eml,
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"*: connecting to {mta_smtpd.hostname}:{mta_smtpd.port}" in lines
    assert "S: 220 localhost Python SMTP 1.4.6" in lines[1]
    assert "C: AUTH PLAIN ***" in lines and "S: 250-PIPELINING" in lines
    assert f"C: MAIL FROM:<a@example.com> SIZE={len(MESSAGE)}" in lines and "C: RCPT TO:<b@example.com>" in lines
    assert lines.index("C: DATA") < lines.index("S: 354 End data with <CR><LF>.<CR><LF>")
    assert "testpass" not in result.output and "dGVzdHBhc3M" not in result.output
    checked = run("check", "-s", f"{mta_smtpd.hostname}:{mta_smtpd.port}", "--transcript")
    assert "C: quit" in checked.output


def test_config_prints_one_value_the_changes_or_json(mta_smtpd):
    assert run("config", "mta.smtp_port").output == "25\n"
    assert run("config", "--origin", "plugin.devmode.enabled").output == "yes (from default)\n"
    changed = run("-o", "mta.smtp_port=2525", "-o", "mta.smtp_pass=hunter2", "config", "--changed")
    rows = [line for line in changed.output.splitlines() if line.startswith("│")]
    assert [row.split("│")[2].strip() for row in rows] == ["smtp_port", "smtp_pass"]
    assert "hunter2" not in changed.output
    as_json = json.loads(run("-o", "mta.smtp_pass=hunter2", "config", "--json").output)
    assert {"section": "mta", "key": "smtp_pass", "value": "Secret('***')", "origin": "-o"} in as_json
    assert json.loads(run("config", "--json", "ratelimit.burst").output)["value"] == "1"
    unknown = run("config", "mta.smtp_prot")
    assert unknown.exit_code == 2 and "there is no key 'mta.smtp_prot'" in one_line(unknown)


def test_square_brackets_are_printed_as_they_are(mta_smtpd):
    result = run("-o", "mta.smtp_user=x", "config")
    assert result.exit_code == 78
    assert one_line(result) == ("Error: config layer '-o': [mta] smtp_user is set but [mta] smtp_pass is empty")
    table = run("config")
    assert "│ [mta]" in table.output and "│ [plugin.smtp]" in table.output


@pytest.mark.slow  # seconds of waiting: outside the inner loop
def test_an_interrupted_send_says_who_got_it_and_exits_130(mta_smtpd, tmp_path, ctrl_c):
    """Ctrl-C while the second message is under way: the first went, the second may or may not."""
    first, second = tmp_path / "one.eml", tmp_path / "two.eml"
    first.write_bytes(MESSAGE)
    second.write_bytes(MESSAGE)
    mta_smtpd.script("END-OF-DATA", delay=0.0)
    mta_smtpd.script("END-OF-DATA", delay=5.0)
    fired = []

    def interrupt(message):
        if not fired:
            fired.append(message)
            threading.Timer(0.3, _thread.interrupt_main).start()

    mta_smtpd.on_message = interrupt
    result = run(
        "-o",
        "mta.max_connections=1",
        "send",
        "-s",
        f"{mta_smtpd.hostname}:{mta_smtpd.port}",
        "-f",
        "a@example.com",
        "-t",
        "b@example.com",
        str(first),
        str(second),
        str(first),
    )
    assert result.exit_code == 130, result.output
    out = result.output
    assert f"{first}: 1 got it, 0 refused, 0 may have, 0 not attempted" in out
    assert f"{second}: 0 got it, 0 refused, 1 may have, 0 not attempted" in out
    assert "  may have: b@example.com" in out
    assert out.rstrip().endswith(
        f"{first}: 0 got it, 0 refused, 0 may have, 1 not attempted\n  not attempted: b@example.com"
    ) or out.rstrip().endswith(f"{first}: not sent to anyone"), "the third message was begun (looked ahead) or not"


def _shell(command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60, **kwargs)


def test_a_closed_stdout_or_stdin_is_a_one_line_error(eml):
    program = f"{sys.executable} -m mailman_mta"
    closed_out = _shell(f"{program} config >&-")
    assert closed_out.returncode == 74
    assert closed_out.stderr.strip() == "Error: standard output is closed, so there is nowhere to write"
    closed_in = _shell(f"{program} send -s 127.0.0.1:9 -f a@example.com -t b@example.com - <&-")
    assert closed_in.returncode == 66
    assert closed_in.stderr.strip() == "Error: standard input is closed, and '-' asks to read a message from it"


def test_sink_saves_refuses_and_fails_as_told_and_send_reaches_it_with_a_transcript(tmp_path, eml):
    """Real processes: a sink rehearsing failures, and send --server --transcript against it."""
    saved = tmp_path / "saved"
    sink = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailman_mta",
            "sink",
            "--port",
            "0",
            "--count",
            "1",
            "--seconds",
            "30",
            "--save-dir",
            str(saved),
            "--reject",
            "*@gone.example",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"COLUMNS": "250", "PATH": ""},
    )
    try:
        port = int(sink.stdout.readline().rsplit(":", 1)[1])
        sent = subprocess.run(
            [
                sys.executable,
                "-m",
                "mailman_mta",
                "send",
                "--server",
                f"127.0.0.1:{port}",
                "--transcript",
                "-f",
                "list@example.com",
                "-t",
                "anne@example.com",
                "-t",
                "x@gone.example",
                eml,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"COLUMNS": "250", "PATH": ""},
        )
        output, errors = sink.communicate(timeout=30)
    finally:
        sink.kill()
        sink.wait()
    assert sent.returncode == 1, sent.stdout + sent.stderr
    assert "C: RCPT TO:<x@gone.example>" in sent.stderr and "S: 550 5.1.1 No such user" in sent.stderr
    assert "x@gone.example" in sent.stdout and "permanent" in sent.stdout
    assert sink.returncode == 0, errors
    (path,) = saved.iterdir()
    assert path.name == "0001.eml"
    assert path.read_bytes() == b"X-MailFrom: list@example.com\r\nX-RcptTo: anne@example.com\r\n" + MESSAGE
    assert f"    saved as {path}" in output


def test_sink_fail_and_drop_rates_reach_the_sender(eml):
    with subprocess.Popen(
        [sys.executable, "-m", "mailman_mta", "sink", "--port", "0", "--seconds", "20", "--fail-rate", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"COLUMNS": "250", "PATH": ""},
    ) as sink:
        try:
            port = int(sink.stdout.readline().rsplit(":", 1)[1])
            result = run("send", "-s", f"127.0.0.1:{port}", "-f", "a@example.com", "-t", "b@example.com", eml)
        finally:
            sink.terminate()
            sink.communicate(timeout=30)
    assert result.exit_code == EXIT_TEMPFAIL
    assert "not delivered to any recipient: 451 4.3.0 Temporary failure" in result.output


def test_configuration_mistakes_exit_78_naming_what_was_wrong_and_never_a_password(tmp_path):
    latin = tmp_path / "latin1.cfg"
    latin.write_bytes("[mta]\nsmtp_user: j\xf6rg\n".encode("latin-1"))
    result = run("-c", str(latin), "config")
    assert result.exit_code == 78 and "latin1.cfg' is not UTF-8 text" in result.output
    result = run("-o", "mta.smtp_pass:Secret-PW-99", "config")
    assert result.exit_code == 2 and "Secret-PW-99" not in result.output and "'mta.smtp_pass ...'" in result.output
    result = run("-o", "mta.smtp_host=bücher.example", "-o", "mta.smtp_pass=pässwörd", "config", "--changed")
    assert result.exit_code == 0 and "bücher.example" in result.output and "pässwörd" not in result.output


def test_an_empty_server_is_refused_not_taken_for_the_configured_relay(mta_smtpd, tmp_path):
    eml = tmp_path / "m.eml"
    eml.write_text("Subject: x\n\nHello\n")
    here = ["-o", f"mta.smtp_host={mta_smtpd.hostname}", "-o", f"mta.smtp_port={mta_smtpd.port}"]
    result = run(*here, "send", "-s", "", "-f", "a@example.com", "-t", "b@example.com", str(eml))
    assert result.exit_code == 2 and "'--server'" in result.output
    assert mta_smtpd.received == []


def test_a_save_dir_that_cannot_be_created_is_no_temporary_failure(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("sink", "--port", "0", "--seconds", "0.1", "--save-dir", str(blocker / "inside"))
    assert result.exit_code == 73 and "cannot create the --save-dir folder" in result.output


def test_a_message_the_sink_cannot_save_is_answered_451_and_the_sink_goes_on(tmp_path):
    """Raw: the save folder vanishes while the sink runs."""
    import shutil

    from mailman_mta.cli import main as cli

    folder = tmp_path / "saved"
    port = _free_port()
    outcome: dict = {}
    sink = threading.Thread(
        target=lambda: outcome.update(
            result=CliRunner().invoke(
                cli, ["sink", "-p", str(port), "--seconds", "4", "-n", "2", "--save-dir", str(folder)]
            )
        )
    )
    sink.start()
    try:
        _wait_listening(port)
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            client.sendmail("a@example.com", ["b@example.com"], "Subject: one\r\n\r\nx\r\n")
            shutil.rmtree(folder)
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@example.com", ["b@example.com"], "Subject: two\r\n\r\nx\r\n")
            assert refused.value.smtp_code == 451
            folder.mkdir()
            client.sendmail("a@example.com", ["b@example.com"], "Subject: three\r\n\r\nx\r\n")
    finally:
        sink.join(10)
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    assert "#2 refused with 451" in result.output and "#3 from a@example.com" in result.output
    assert "Traceback" not in result.output


def test_what_a_relay_says_reaches_the_terminal_escaped(tmp_path):
    """Raw: a reply carrying terminal escape sequences is printed with them escaped."""
    from mailman_mta.testing.scripted import Action, ScriptedSMTPServer

    eml = tmp_path / "m.eml"
    eml.write_text("Subject: x\n\nHello\n")
    evil = b"554 5.7.1 \x1b]0;owned\x07\x1b[2J refused\r\n"
    with ScriptedSMTPServer() as server:
        server.script(Action(), Action(), Action(reply=evil))
        relay = f"{server.hostname}:{server.port}"
        result = run("send", "-s", relay, "--transcript", "-f", "a@example.com", "-t", "b@example.com", str(eml))
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\x1b]0;owned\\x07\\x1b[2J refused" in result.output


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_listening(port: int) -> None:
    import socket
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")
