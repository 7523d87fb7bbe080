"""The example third-party distribution, installed with pip as a user would, then used."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailman_mta.connection import Connection
from mailman_mta.errors import ConfigurationError
from mailman_mta.manager import registry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mailman-mta-signature"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example installed with pip into a folder of its own, put on sys.path."""
    source = tmp_path_factory.mktemp("source") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source)  # pip builds in the source tree; keep the checkout clean
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    registry.refresh()
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("mailman_mta_signature", None)
    registry.refresh()


def test_the_plugin_is_small():
    assert len((EXAMPLE / "mailman_mta_signature.py").read_text().splitlines()) <= 30


def test_pip_installs_it_as_an_entry_point_that_is_off(installed, mta_config, mta_smtpd):
    assert registry.describe("signature").startswith("entry point mailman_mta_signature from mailman-mta-signature 1.0")
    assert "signature" not in mta_config.active_plugins
    assert mta_config.settings.signature.text == "-- sent through our lists"


def test_its_section_configures_it(installed, mta_config, mta_smtpd, mta_layers):
    mta_layers.push("signed", "[plugin.signature]\nenabled: yes\n[signature]\ntext: -- the anne list\n")
    with Connection() as connection:
        connection.sendmail("a@example.com", ["b@example.com"], "Subject: x\n\nHello\n")
        connection.sendmail("a@example.com", ["b@example.com"], "Subject: x\n\nHello\n-- the anne list\n")
    assert [m.content.count(b"-- the anne list") for m in mta_smtpd.received] == [1, 1]
    with pytest.raises(ConfigurationError, match=r"\[signature\] repeat: 'sometimes' is not yes or no"):
        mta_layers.push("bad", "[signature]\nrepeat: sometimes\n")


def test_the_cli_sets_its_keys(installed, mta_smtpd, tmp_path):
    from click.testing import CliRunner

    from mailman_mta.cli import main

    message = tmp_path / "m.eml"
    message.write_text("Subject: x\n\nHello\n")
    result = CliRunner().invoke(
        main,
        [
            "-o",
            f"mta.smtp_host={mta_smtpd.hostname}",
            "-o",
            f"mta.smtp_port={mta_smtpd.port}",
            "-o",
            "plugin.signature.enabled=yes",
            "-o",
            "signature.text=-- from the command line",
            "send",
            "-f",
            "a@example.com",
            "-t",
            "b@example.com",
            str(message),
        ],
    )
    assert result.exit_code == 0, result.output
    assert mta_smtpd.received[0].content.endswith(b"-- from the command line\r\n")
