"""A transaction through a transport that is not ours: one with only smtplib's ``sendmail``.

A plugin's `mta_create_transport` may return any object with smtplib's
methods (`mailman_mta.interfaces.ITransport`).  Without
`IMessageTransactions` nobody can see its replies one by one, so what
smtplib's ``sendmail`` answers or raises is turned into a
`TransactionResult` as faithfully as it allows, never claiming more than
it knows.
"""

from __future__ import annotations

import smtplib
from typing import Any

from ..envelope import Envelope
from . import esmtp
from .replies import Reply
from .transaction import DATA, END_OF_DATA, MAIL, RCPT, TransactionResult


def foreign_transaction(transport: Any, envelope: Envelope) -> TransactionResult:
    """Run a transaction through a transport without `IMessageTransactions`.

    Its ``sendmail`` answers as smtplib does, which is all we can report.
    """
    transport.ehlo_or_helo_if_needed()
    options = esmtp.mail_options(envelope, transport)
    sender, recipients = envelope.sender, tuple(envelope.recipients)
    if hasattr(transport, "message_data_sent"):
        transport.message_data_sent = False
    try:
        refused = transport.sendmail(sender, list(recipients), envelope.message, options, envelope.rcpt_options)
    except smtplib.SMTPRecipientsRefused as error:
        replies = [Reply.of(*error.recipients[r]) if r in error.recipients else None for r in recipients]
        return TransactionResult(sender, recipients, replies, error=error, stage=RCPT)
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as error:
        stage = MAIL if isinstance(error, smtplib.SMTPSenderRefused) else DATA
        result = TransactionResult(
            sender, recipients, error=error, stage=stage, reply=Reply.of(error.smtp_code, error.smtp_error)
        )
        result.data_sent = stage == DATA and getattr(transport, "message_data_sent", True)
        return result
    except (smtplib.SMTPException, OSError) as error:
        # Without a way to tell, a message that may have gone out whole is
        # reported as "may have arrived", and never sent again.
        data_sent = getattr(transport, "message_data_sent", True)
        return TransactionResult.failed(
            sender, recipients, error, stage=END_OF_DATA if data_sent else MAIL, data_sent=data_sent
        )
    accepted = Reply(250, (b"",))
    replies = [Reply.of(*refused[r]) if r in refused else accepted for r in recipients]
    return TransactionResult(sender, recipients, replies)
