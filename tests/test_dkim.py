"""The ``dkim`` plugin: every message and every copy signed last, verified by dkimpy."""

from __future__ import annotations

import dkim
import pytest

from mailman_mta import hookimpl
from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.errors import ConfigurationError

MESSAGE = (
    "From: list@example.org\nTo: members@example.org\nSubject: news\nDate: Mon, 23 Nov 2026 20:00:00 +0000\n\nHello.\n"
)


@pytest.fixture
def signing(mta_config, mta_layers, key_pair):
    path, _ = key_pair
    mta_layers.push(
        "dkim",
        f"[plugin.dkim]\nenabled: yes\n[dkim]\ndomain: example.org\nselector: mm2026\nprivate_key_file: {path}\n",
    )


def verifies(content: bytes, key_pair) -> bool:
    _, record = key_pair

    def dns(name, timeout=5):
        return record if name == b"mm2026._domainkey.example.org." else None

    return dkim.verify(content, dnsfunc=dns)


def test_a_message_is_signed_and_verifies(signing, mta_smtpd, key_pair):
    with Connection() as connection:
        connection.sendmail("list@example.org", ["anne@example.com"], MESSAGE)
    content = mta_smtpd.received[0].content
    assert content.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;")
    unfolded = b"".join(content.split(b"\r\n\r\n")[0].split()).lower()
    assert b"h=from:subject:date:to;" in unfolded
    assert verifies(content, key_pair)
    tampered = content.replace(b"Hello.", b"Hello!")
    assert not verifies(tampered, key_pair)


def test_each_copy_is_signed_after_every_other_change(signing, mta_smtpd, mta_layers, key_pair, enabled):
    class Personal:
        @hookimpl
        def mta_prepare_copy(self, envelope, recipient):
            envelope.message = f"X-Member: {recipient}\r\n".encode() + envelope.message

    class Footer:
        @hookimpl(trylast=True)
        def mta_prepare_message(self, envelope):
            envelope.message += b"-- \r\nthe list\r\n"

    mta_layers.push("individual", "[mta]\ndelivery: verp\n")
    with enabled(personal=Personal(), footer=Footer()), Delivery() as delivery:
        result = delivery.deliver("list-bounces@example.org", ["anne@example.com", "bart@example.com"], MESSAGE)
    assert result.ok and result.transactions == 2
    for received in mta_smtpd.received:
        assert received.content.endswith(b"the list\r\n")
        assert verifies(received.content, key_pair), received.rcpt_tos
    assert len({r.content.split(b"\r\n\r\n")[0] for r in mta_smtpd.received}) == 2


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ("domain: example.org\nselector: s1\n", r"\[dkim\] private_key_file is empty"),
        ("selector: s1\nprivate_key_file: {key}\n", r"\[dkim\] domain is empty"),
        ("domain: example.org\nselector: s1\nprivate_key_file: {key}\nheaders: Subject To\n", "must include From"),
        ("domain: exa mple.org\nselector: s1\nprivate_key_file: {key}\n", r"\[dkim\] domain: 'exa mple.org'"),
        ("domain: example.org\nselector: s1\nprivate_key_file: {other}\n", "holds no PEM private key"),
        (
            "domain: example.org\nselector: s1\nprivate_key_file: {garbage}\n",
            r"\[dkim\] private_key_file '.*garbage.pem' holds no RSA private key dkimpy can use \(Error: ",
        ),
        (
            "domain: example.org\nselector: s1\nprivate_key_file: {shared}\n",
            r"\[dkim\] private_key_file '.*shared.pem' may be read by others \(mode 0644\): .*chmod 600",
        ),
    ],
)
def test_incomplete_settings_are_refused_at_push(mta_config, mta_layers, key_pair, tmp_path, settings, problem):
    other = tmp_path / "not-a-key.pem"
    other.write_text("hello\n")
    other.chmod(0o600)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nthis is no base64!\n-----END PRIVATE KEY-----\n")
    garbage.chmod(0o600)
    shared = tmp_path / "shared.pem"
    shared.write_bytes(key_pair[0].read_bytes())
    shared.chmod(0o644)
    text = settings.format(key=key_pair[0], other=other, garbage=garbage, shared=shared)
    with pytest.raises(ConfigurationError, match=problem):
        mta_layers.push("dkim", f"[plugin.dkim]\nenabled: yes\n[dkim]\n{text}")
