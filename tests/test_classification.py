"""The classification table in docs/failures.rst is the one the code applies.

Every row of the "Server replies" table is read back and checked against
`mailman_mta.results.judge_reply`, so the documentation cannot drift from
the code (nor the code from the documentation); and every kind of error
`failure_of` knows gets the verdict the other two tables give it.
"""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest

from mailman_mta.errors import (
    ConfigurationError,
    MTAConnectionError,
    SMTPProtocolError,
    SMTPTimeoutError,
    TLSError,
    UnsendableMessageError,
)
from mailman_mta.results import failure_of, judge_reply
from mailman_mta.smtp.transaction import DATA, END_OF_DATA, MAIL, RCPT

PAGE = Path(__file__).resolve().parents[1] / "docs" / "failures.rst"
STAGES = {
    "greeting": ["greeting"],
    "mail": [MAIL],
    "rcpt": [RCPT],
    "data": [DATA],
    "end of data": [END_OF_DATA],
    "any": [MAIL, RCPT, DATA, END_OF_DATA],
}


def table_rows(name: str) -> list[list[str]]:
    """The rows of the simple RST table called *name*, cells joined across lines."""
    text = PAGE.read_text()
    start = text.index(f":name: {name}")
    lines = text[start:].splitlines()[1:]
    borders = [index for index, line in enumerate(lines) if re.fullmatch(r"\s*=+(\s+=+)+\s*", line)]
    top, below_header, bottom = borders[:3]
    spans = [match.span() for match in re.finditer(r"=+", lines[top])]
    rows: list[list[str]] = []
    for line in lines[below_header + 1 : bottom]:
        cells = [line[begin : end if i < len(spans) - 1 else None].strip() for i, (begin, end) in enumerate(spans)]
        if cells[2] or not rows:
            rows.append(cells)
        else:  # a cell continued on the next line
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
    return rows


def cases():
    for step, replies, reported, _why in table_rows("reply-classification"):
        stages = [stage for part in step.lower().split(",") for stage in STAGES[part.strip()]]
        for code in (int(code) for code in replies.split(",")):
            for stage in stages:
                yield pytest.param(stage, code, reported, id=f"{stage}-{code}")


def test_the_table_is_read_whole():
    rows = table_rows("reply-classification")
    assert len(rows) == 8
    assert all(row[3] for row in rows), "every row says why"


@pytest.mark.parametrize("stage, code, reported", list(cases()))
def test_each_row_is_what_the_code_does(stage, code, reported):
    failure = judge_reply(stage, code, b"5.0.0 the server's text")
    if reported == "as given":
        assert failure == (code, "5.0.0 the server's text")
    else:
        assert failure.code == int(reported)
        assert failure.message.endswith(f"{code} 5.0.0 the server's text"), "the server's reply is kept"
    assert failure.temporary == (failure.code < 500)


def test_only_rcpt_and_data_verdicts_are_permanent():
    permanent = {
        (stage, code)
        for stage in ("greeting", MAIL, RCPT, DATA, END_OF_DATA)
        for code in range(400, 600)
        if judge_reply(stage, code, b"").permanent
    }
    assert {stage for stage, _ in permanent} == {RCPT, DATA, END_OF_DATA}
    assert not {code for _, code in permanent} & {530, 552, 500, 502, 503, 504, 555}


ERRORS = [
    (smtplib.SMTPConnectError(554, b"5.3.2 No service"), None, 421),
    (smtplib.SMTPAuthenticationError(535, b"5.7.8 Bad credentials"), None, 454),
    (smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server."), None, 454),
    (TLSError("STARTTLS with relay:587 failed"), None, 454),
    (ConfigurationError("[mta] smtp_pass is empty"), None, 451),
    (SMTPProtocolError("relay:25 sent a reply to RCPT that is not SMTP"), RCPT, 444),
    (smtplib.SMTPServerDisconnected("relay:25 closed the connection"), END_OF_DATA, 444),
    (SMTPTimeoutError("relay:25 did not answer MAIL within 1 s"), MAIL, 444),
    (smtplib.SMTPHeloError(554, b"go away"), None, 451),
    (UnsendableMessageError(452, "4.3.4 message is too big"), None, 452),
    (smtplib.SMTPSenderRefused(550, b"5.7.1 No", "list@example.org"), MAIL, 451),
    (smtplib.SMTPDataError(554, b"5.6.0 Content rejected"), None, 554),
    (smtplib.SMTPDataError(552, b"5.3.4 Too big"), DATA, 452),
    (MTAConnectionError("cannot connect to relay:25"), None, 444),
    (ConnectionResetError(104, "Connection reset by peer"), None, 444),
    (RuntimeError("a bug"), None, 451),
]


@pytest.mark.parametrize("error, stage, code", ERRORS, ids=[type(e).__name__ for e, _, _ in ERRORS])
def test_every_kind_of_error_has_a_verdict(error, stage, code):
    failure = failure_of(error, stage)
    assert failure.code == code
    assert failure.permanent == (code >= 500)
    if stage == END_OF_DATA and code == 444:
        assert "may have arrived" in failure.message
