"""A Django ``EMAIL_BACKEND`` that hands each message to the Celery workers.

``EMAIL_BACKEND = "mailman_mta.integrations.django_celery.QueuedEmailBackend"``
returns as soon as each message is stored and queued (see
`mailman_mta.integrations.celery`), as django-celery-email does, but every
recipient's fate is then kept in the post's ledger: ``backend.handles``
holds the `PostHandle` of each message sent, for a caller that wants to
wait or look.  Addresses are made envelope addresses exactly as the
synchronous backend (`mailman_mta.integrations.django`) makes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage

from mailman_mta.errors import EnvelopeError
from mailman_mta.integrations.celery import PostHandle, PostStore, submit
from mailman_mta.integrations.django import envelope_address


class QueuedEmailBackend(BaseEmailBackend):
    """Queue each message for the workers; `send_messages` returns how many were queued."""

    def __init__(self, fail_silently: bool = False, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.handles: list[PostHandle] = []
        self._store: PostStore | None = None

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        queued = 0
        for message in email_messages:
            recipients = message.recipients()
            if not recipients:
                continue
            encoding = message.encoding or settings.DEFAULT_CHARSET
            try:
                if self._store is None:
                    self._store = PostStore.from_url()
                handle = submit(
                    envelope_address(message.from_email, encoding),
                    [envelope_address(address, encoding) for address in recipients],
                    message.message().as_bytes(linesep="\r\n"),
                    store=self._store,
                )
            except EnvelopeError:
                raise
            except Exception:
                # The store or the broker could not be reached.
                if not self.fail_silently:
                    raise
                continue
            self.handles.append(handle)
            queued += 1
        return queued
