"""The password never shows: not in logs, reprs, exception text or results."""

from __future__ import annotations

import base64
import logging

from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery

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
        for fault in [{}, {"point": "RCPT", "close": True}, {"point": "DATA", "hang": True},
                      {"point": "MAIL", "reply": "535 5.7.8 no"}]:
            if fault:
                mta_smtpd.script(**fault)
            result = delivery.deliver("anne@example.com", ["bart@example.com"], "Subject: x\n\n")
            seen += [repr(result), str(result.error), repr(result.error)]
        mta_smtpd.credentials["testuser"] = "something else"
        result = delivery.deliver("anne@example.com", ["bart@example.com"], "Subject: x\n\n")
        assert result.refused["bart@example.com"].code == 454
        seen += [repr(result), str(result.error), repr(result.error)]
    seen += [record.getMessage() for record in caplog.records]
    assert any("AUTH PLAIN ***" in text for text in seen), "the transcript was captured"
    for form in FORMS:
        assert not [text for text in seen if form in text], form
