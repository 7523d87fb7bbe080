"""The ``deliverylog`` plugin: one JSON line per transaction, and counters."""

from __future__ import annotations

import json
import logging

import pytest

from mailman_mta.connection import Connection
from mailman_mta.envelope import Envelope
from mailman_mta.plugins import deliverylog


@pytest.fixture
def counters():
    deliverylog.reset()
    yield deliverylog.counters
    deliverylog.reset()


def test_each_transaction_is_one_json_line(mta_config, mta_smtpd, mta_layers, tmp_path, counters):
    log = tmp_path / "delivery.jsonl"
    mta_layers.push("log", f"[plugin.deliverylog]\nenabled: yes\n[deliverylog]\npath: {log}\n")
    mta_smtpd.refuse_recipient("gone@example.com")
    with Connection() as connection:
        connection.sendmail("list@example.org", ["anne@example.com", "gone@example.com"], "Subject: x\n\n")
        connection.sendmail("list@example.org", ["bart@example.com"], "Subject: y\n\n")
    first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert first["relay"] == f"127.0.0.1:{mta_smtpd.port}"
    assert (first["connection"], first["opened"], first["session"]) == (connection.number, 1, 1)
    assert second["session"] == 2
    assert (first["recipients"], first["accepted"], first["temporary"], first["permanent"]) == (2, 1, 0, 1)
    assert first["error"] is None and first["duration"] > 0 and first["sender"] == "list@example.org"
    assert "anne@example.com" not in log.read_text()
    assert counters() == {
        "transactions": 2,
        "delivered": 2,
        "failed": 0,
        "recipients": 3,
        "accepted": 2,
        "temporary": 0,
        "permanent": 1,
        "uncertain": 0,
    }


def test_a_lost_connection_after_the_message_counts_as_uncertain(mta_config, mta_smtpd, mta_layers, tmp_path, counters):
    log = tmp_path / "delivery.jsonl"
    mta_layers.push("log", f"[plugin.deliverylog]\nenabled: yes\n[deliverylog]\npath: {log}\n")
    mta_smtpd.script("END-OF-DATA", close=True, accept=True)
    with Connection() as connection:
        result = connection.transact(Envelope.build("list@example.org", ["anne@example.com"], "Subject: x\n\n"))
    assert result.may_have_been_delivered
    line = json.loads(log.read_text())
    assert (line["accepted"], line["temporary"], line["uncertain"]) == (0, 1, 1)
    assert line["error"].startswith("SMTPServerDisconnected")
    assert counters()["failed"] == 1


def test_without_a_path_it_logs(mta_config, mta_smtpd, mta_layers, caplog, counters):
    mta_layers.push("log", "[plugin.deliverylog]\nenabled: yes\n")
    with caplog.at_level(logging.INFO, logger="mailman_mta.delivery"), Connection() as connection:
        connection.sendmail("list@example.org", ["anne@example.com"], "Subject: x\n\n")
    record = json.loads(caplog.records[-1].getMessage())
    assert record["accepted"] == 1


def test_disabled_it_counts_nothing(mta_config, mta_smtpd, counters):
    with Connection() as connection:
        connection.sendmail("list@example.org", ["anne@example.com"], "Subject: x\n\n")
    assert counters()["transactions"] == 0
