"""The ``deliverylog`` plugin: one JSON line per transaction, and counters."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading

import pytest

from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.envelope import Envelope
from mailman_mta.errors import ConfigurationError
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
    assert deliverylog.flush()
    first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert first["relay"] == f"127.0.0.1:{mta_smtpd.port}"
    assert (first["connection"], first["opened"], first["session"]) == (connection.number, 1, 1)
    assert second["session"] == 2
    assert (first["recipients"], first["accepted"], first["temporary"], first["permanent"]) == (2, 1, 0, 1)
    assert first["error"] is None and first["duration"] > 0 and first["sender_domain"] == "example.org"
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
        "dropped": 0,
    }


def test_a_lost_connection_after_the_message_counts_as_uncertain(mta_config, mta_smtpd, mta_layers, tmp_path, counters):
    log = tmp_path / "delivery.jsonl"
    mta_layers.push("log", f"[plugin.deliverylog]\nenabled: yes\n[deliverylog]\npath: {log}\n")
    mta_smtpd.script("END-OF-DATA", close=True, accept=True)
    with Connection() as connection:
        result = connection.transact(Envelope.build("list@example.org", ["anne@example.com"], "Subject: x\n\n"))
    assert result.may_have_been_delivered
    assert deliverylog.flush()
    line = json.loads(log.read_text())
    assert (line["accepted"], line["temporary"], line["uncertain"]) == (0, 1, 1)
    assert line["error"] == "SMTPServerDisconnected"
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


def test_no_field_holds_an_address(mta_config, mta_smtpd, mta_layers, tmp_path, counters):
    """Every recipient refused (the error once named them all), and VERP senders (which name one)."""
    log = tmp_path / "delivery.jsonl"
    mta_layers.push("log", f"[plugin.deliverylog]\nenabled: yes\n[deliverylog]\npath: {log}\n[mta]\ndelivery: verp\n")
    members = ["anne@members.example", "bart@members.example"]
    for member in [*members, "cate@members.example"]:
        # Replies that quote the address, as Postfix's do.
        mta_smtpd.refuse_recipient(member, f"550 5.1.1 <{member}>: Recipient address rejected")
    with Delivery() as delivery:
        delivery.deliver("list@lists.example.org", members, "Subject: x\n\n")
        delivery.deliver("list@lists.example.org", ["cate@members.example"], "Subject: y\n\n")
    mta_layers.push("bulk", "[mta]\ndelivery: bulk\n")
    with Delivery() as delivery:
        delivery.deliver("list@lists.example.org", members, "Subject: z\n\n")
    assert deliverylog.flush()
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 4 and {line["error"] for line in lines} == {"SMTPRecipientsRefused"}
    assert {line["sender_domain"] for line in lines} == {"lists.example.org"}
    assert "members.example" not in text and "@" not in text


@pytest.mark.parametrize("kind", ["fifo", "folder", "missing folder", "nul"])
def test_a_path_that_could_hold_up_delivery_is_refused_at_push(mta_config, mta_layers, tmp_path, kind):
    path = {
        "fifo": tmp_path / "fifo",
        "folder": tmp_path,
        "missing folder": tmp_path / "nowhere" / "log.jsonl",
        "nul": f"{tmp_path}/log\0.jsonl",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(ConfigurationError, match=r"\[deliverylog\] path") as refused:
        mta_layers.push("log", f"[plugin.deliverylog]\nenabled: yes\n[deliverylog]\npath: {path}\n")
    assert refused.value.section == "deliverylog" and refused.value.key == "path"


def test_a_fifo_put_there_later_never_holds_up_a_send(mta_config, mta_smtpd, mta_layers, tmp_path, counters, caplog):
    """Raw: a FIFO with no reader replaces the file after the check; sends go on, the lines are lost, and said so."""
    path = tmp_path / "delivery.jsonl"
    mta_layers.push("log", f"[plugin.deliverylog]\nenabled: yes\n[deliverylog]\npath: {path}\n")
    os.mkfifo(path)
    with caplog.at_level(logging.WARNING, logger="mailman_mta.delivery"):
        with Delivery() as delivery:
            results = [delivery.deliver("list@example.org", [f"m{n}@example.com"], "Subject: x\n\n") for n in range(5)]
        assert deliverylog.flush(timeout=10)
    assert all(result.ok for result in results) and len(mta_smtpd.received) == 5
    assert "is not a regular file" in caplog.text or "No such device" in caplog.text


def test_a_full_queue_drops_lines_and_counts_them(mta_config, mta_smtpd, mta_layers, tmp_path, counters, monkeypatch):
    gate = threading.Event()
    monkeypatch.setattr(deliverylog._Writer, "_append", staticmethod(lambda path, text: gate.wait(10)))
    monkeypatch.setattr(deliverylog, "_writer", deliverylog._Writer())
    monkeypatch.setattr(deliverylog._writer, "_queue", queue.Queue(2))
    path = tmp_path / "delivery.jsonl"
    mta_layers.push("log", f"[plugin.deliverylog]\nenabled: yes\n[deliverylog]\npath: {path}\n")
    with Connection() as connection:
        for n in range(6):
            connection.sendmail("list@example.org", [f"m{n}@example.com"], "Subject: x\n\n")
    assert len(mta_smtpd.received) == 6
    assert 3 <= counters()["dropped"] <= 4
    gate.set()
    assert deliverylog.flush()
