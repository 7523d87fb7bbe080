"""The mailman-mta command."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from mailman_mta.cli import main


def test_demo_sends_a_batch_and_reports_it():
    result = CliRunner().invoke(main, ["demo", "-n", "25", "-r", "2", "-s", "10"])
    assert result.exit_code == 0, result.output
    assert "25 / 25" in result.output
    assert "50 / 0" in result.output
    assert "3 (sessions per connection: 10)" in result.output


def test_demo_with_a_config_layer(tmp_path):
    layer = tmp_path / "dev.cfg"
    layer.write_text("[devmode]\nenabled: yes\nrecipient: dev@example.com\n")
    result = CliRunner().invoke(main, ["demo", "-n", "3", "-c", str(layer)])
    assert result.exit_code == 0, result.output
    assert "smtp, sessions, liveness, auth, devmode" in result.output


def test_a_bad_config_file_is_one_line_and_exit_1(tmp_path):
    layer = tmp_path / "bad.cfg"
    layer.write_text("[mta]\nsmtp_prot: 25\n")
    result = CliRunner().invoke(main, ["demo", "-c", str(layer)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: ConfigurationError: config layer '{layer}': [mta] has no key 'smtp_prot' "
        "(did you mean 'smtp_port'?)"
    ]
    missing = CliRunner().invoke(main, ["demo", "-c", str(tmp_path / "missing.cfg")])
    assert missing.exit_code == 1
    assert "cannot read config file" in missing.output
    assert "Traceback" not in missing.output


def test_the_module_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "mailman_mta", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "mailman-mta, version 0.1.0"
