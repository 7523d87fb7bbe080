"""The classification table in docs/failures.rst is the one the code applies.

Every row of the "Server replies" table is read back and checked against
`mailman_mta.results.judge_reply`, so the documentation cannot drift from
the code (nor the code from the documentation).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailman_mta.results import judge_reply
from mailman_mta.transaction import DATA, END_OF_DATA, MAIL, RCPT

PAGE = Path(__file__).resolve().parents[1] / "docs" / "failures.rst"
STAGES = {"greeting": ["greeting"], "mail": [MAIL], "rcpt": [RCPT], "data": [DATA], "end of data": [END_OF_DATA],
          "any": [MAIL, RCPT, DATA, END_OF_DATA]}


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
        cells = [line[begin:end if i < len(spans) - 1 else None].strip()
                 for i, (begin, end) in enumerate(spans)]
        if cells[2] or not rows:
            rows.append(cells)
        else:  # a cell continued on the next line
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
    return rows


def cases():
    for step, replies, reported, why in table_rows("reply-classification"):
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
