"""Built-in plugin ``liveness``: do not send on a connection the server dropped.

Relays close idle connections (Amazon SES and friends do it within
seconds), and the client only finds out on its next command.  Before a
connection is reused this plugin checks, in order of cost:

1. idle longer than ``[mta] max_idle_time``: replace it without asking;
2. anything waiting to be read, such as the end of the stream or a
   ``421`` sent before closing: the server has hung up, replace it.  Not
   looked for when the connection finished a transaction less than
   `RECENT_SECONDS` ago, as between the messages of a burst: a hang-up in
   so short a gap is met at MAIL FROM, before any data, and is retried
   (below), while looking costs a system call on every message;
3. idle longer than ``[mta] noop_after_idle``: send NOOP (waiting at most
   ``connect_timeout``) and replace it unless the answer is 250.

A drop that slips past these (between the check and MAIL FROM) is still
caught: `Connection` retries on a new connection when the failure certainly
came before any message data was sent.
"""

import smtplib
import time

from mailman_mta import hookimpl
from mailman_mta.smtp.transport import input_pending, timeout_at_most

#: Kept under its old name for plugins that imported it.
has_pending_input = input_pending

#: Seconds since the last transaction within which the socket is not polled.
RECENT_SECONDS = 0.005


@hookimpl
def mta_session_allowed(connection):
    if connection.in_flight:
        # Asked with a transaction under way (messages chained): the
        # connection answered a moment ago, and must not be talked on.
        return None
    transport = connection.transport
    idle = time.monotonic() - connection.last_used_at
    max_idle = connection.setting("max_idle_time")
    if max_idle and idle > max_idle:
        return False
    if idle >= RECENT_SECONDS and has_pending_input(transport):
        return False
    noop_after = connection.setting("noop_after_idle")
    if noop_after and idle > noop_after:
        try:
            with timeout_at_most(transport, connection.setting("connect_timeout")):
                code, _ = transport.noop()
        except (smtplib.SMTPException, OSError):
            return False
        return code == 250
    return None
