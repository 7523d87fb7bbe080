"""GNU Mailman 3: mailman-mta as Mailman's outgoing delivery, following its configuration.

A Mailman site switches its delivery to mailman-mta with one line in
``mailman.cfg``::

    [mta]
    outgoing: mailman_mta.integrations.mailman.deliver

Importing this module makes mailman-mta's default configuration follow
Mailman's, live (`mailman_mta.config.Configuration.follow`): a push or
pop of Mailman's ``[mta]`` or ``[devmode]`` drives our settings and
plugins from the next send.  The keys, theirs on the left:

======================================  ==============================================
Mailman                                 mailman-mta
======================================  ==============================================
``[mta] smtp_host``                     ``[mta] smtp_host``
``[mta] smtp_port``                     ``[mta] smtp_port``
``[mta] smtp_user``                     ``[mta] smtp_user``
``[mta] smtp_pass``                     ``[mta] smtp_pass``
``[mta] smtp_secure_mode``              ``[mta] secure_mode``
``[mta] smtp_verify_cert``              ``[mta] verify_cert``
``[mta] smtp_verify_hostname``          ``[mta] verify_hostname``
``[mta] max_recipients``                ``[mta] max_recipients``
``[mta] max_sessions_per_connection``   ``[mta] max_sessions_per_connection``
``[mta] verp_format``                   ``[verp] format`` (with ``@$bounces_domain``)
``[devmode] enabled``                   ``[devmode] enabled``
``[devmode] recipient``                 ``[devmode] recipient``
======================================  ==============================================

A layer pushed on mailman-mta's own configuration (``-c``, a site file)
still wins over a followed value.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mailman.config import config as mailman_config
from mailman.interfaces.mailinglist import Personalization
from mailman.interfaces.mta import SomeRecipientsFailed
from mailman.mta.deliver import Deliver

from mailman_mta import verp
from mailman_mta.config import Configuration
from mailman_mta.config import config as default_config
from mailman_mta.connection import Connection
from mailman_mta.delivery import Delivery
from mailman_mta.results import DeliveryResult

log = logging.getLogger("mailman.smtp")

#: Our key -> Mailman's key (and how its text becomes ours).
MAILMAN_KEYS: Mapping[str, Any] = {
    "mta.smtp_host": "mta.smtp_host",
    "mta.smtp_port": "mta.smtp_port",
    "mta.smtp_user": "mta.smtp_user",
    "mta.smtp_pass": "mta.smtp_pass",
    "mta.secure_mode": ("mta.smtp_secure_mode", str.lower),
    "mta.verify_cert": "mta.smtp_verify_cert",
    "mta.verify_hostname": "mta.smtp_verify_hostname",
    "mta.max_recipients": "mta.max_recipients",
    "mta.max_sessions_per_connection": "mta.max_sessions_per_connection",
    "verp.format": ("mta.verp_format", lambda text: f"{text}@$bounces_domain"),
    "devmode.enabled": "devmode.enabled",
    "devmode.recipient": "devmode.recipient",
}

NAME = "Mailman's configuration"


def follow_mailman(config: Configuration = default_config) -> None:
    """Make *config* follow Mailman's ``[mta]`` and ``[devmode]`` (done on import for the default)."""
    config.follow(lambda: getattr(mailman_config, "_config", None), MAILMAN_KEYS, name=NAME)


follow_mailman()


def deliver(mlist: Any, msg: Any, msgdata: dict) -> None:
    """Mailman's outgoing delivery function, sending through mailman-mta.

    The contract of ``mailman.mta.deliver.deliver``: send *msg* to
    ``msgdata['recipients']``; return None when every recipient took it,
    or raise `SomeRecipientsFailed` naming the recipients to retry and
    those refused for good (with the code and reply for the bounce that
    Mailman makes).  A recipient is permanent only when the server
    refused it with a 5xx (see `mailman_mta.results`), so a relay's
    trouble never registers bounces.

    Bulk posts go out as mailman-mta's bulk delivery (by domain, in
    ``max_recipients`` chunks, over ``[mta] max_connections`` connections).
    VERP'd and personalized posts get one copy per recipient, each made by
    Mailman's own per-recipient steps (its ``Deliver`` agent's callbacks:
    duplicate marking, decoration, personalization, ARC signing), then sent
    over the same pool; the VERP sender follows Mailman's ``verp_format``.
    """
    recipients = msgdata.get("recipients")
    if not recipients:
        return
    sender = msgdata.get("sender") or (mailman_config.mailman.site_owner if mlist is None else mlist.bounces_address)
    individual = msgdata.get("verp", False) or (mlist is not None and mlist.personalize != Personalization.none)
    message_id = (msg.get("message-id") or "n/a").strip()
    with Delivery(Connection(delivery="bulk")) as delivery:
        if individual:
            results = list(delivery.deliver_many(_copies(mlist, msg, msgdata, sender, sorted(recipients))))
        else:
            results = [delivery.deliver(sender, sorted(recipients), msg)]
    temporary, permanent = _verdicts(results)
    log.info(
        "%s mailman-mta delivered to %d of %d recipients (%d temporary, %d permanent failures)",
        message_id,
        len(recipients) - len(temporary) - len(permanent),
        len(recipients),
        len(temporary),
        len(permanent),
    )
    if temporary or permanent:
        raise SomeRecipientsFailed(temporary, permanent)


def _copies(
    mlist: Any, msg: Any, msgdata: dict, sender: str, recipients: Sequence[str]
) -> Iterator[tuple[str, list[str], Any]]:
    """(sender, [recipient], message) for each recipient, made by Mailman's own per-copy steps."""
    agent = Deliver()
    verp_format = default_config.settings.verp.format
    for recipient in recipients:
        message = copy.deepcopy(msg)
        data = dict(
            msgdata, recipient=recipient, member=mlist.members.get_member(recipient) if mlist is not None else None
        )
        for callback in agent.callbacks:
            callback(mlist, message, data)
        copy_sender = sender
        if data.get("verp", False) and "@" in recipient:
            copy_sender = verp.encode(sender, recipient, verp_format)
        yield copy_sender, [recipient], message


def _verdicts(results: list[DeliveryResult]) -> tuple[list[str], list[tuple[str, int, str]]]:
    """Mailman's form: recipients to retry, and (recipient, code, reply) refused for good."""
    temporary: list[str] = []
    permanent: list[tuple[str, int, str]] = []
    for result in results:
        for recipient, failure in result.refused.items():
            if failure.permanent:
                permanent.append((recipient, failure.code, failure.message))
            else:
                temporary.append(recipient)
    return temporary, permanent
