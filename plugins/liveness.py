"""Built-in plugin ``liveness``: do not send on a connection the server dropped.

Relays close idle connections (Amazon SES and friends do it within
seconds), and the client only finds out on its next command.  Before a
connection is reused this plugin checks, in order of cost:

1. idle longer than ``[mta] max_idle_time``: replace it without asking;
2. anything waiting to be read, such as the end of the stream or a
   ``421`` sent before closing: the server has hung up, replace it;
3. idle longer than ``[mta] noop_after_idle``: send NOOP (waiting at most
   ``connect_timeout``) and replace it unless the answer is 250.

A drop that slips past these (between the check and MAIL FROM) is still
caught: `Connection` retries on a new connection when the failure certainly
came before any message data was sent.
"""

import smtplib
import time

from mailman_mta import hookimpl
from mailman_mta.transport import readable_now


def has_pending_input(transport) -> bool:
    """True if the server has said something (or hung up) unprompted.

    Asks the transport when it can tell (``input_pending``, as
    `mailman_mta.transport.SMTPTransport` can); otherwise looks at its
    ``sock``.  A transport without one cannot be looked into and is
    trusted; one whose socket has already been closed is stale.
    """
    input_pending = getattr(transport, "input_pending", None)
    if input_pending is not None:
        return input_pending()
    if not hasattr(transport, "sock"):
        return False
    sock = transport.sock
    if sock is None:
        return True
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    return readable_now(sock)


@hookimpl
def mta_session_allowed(connection):
    transport = connection.transport
    idle = time.monotonic() - connection.last_used_at
    max_idle = connection.setting("max_idle_time")
    if max_idle and idle > max_idle:
        return False
    if has_pending_input(transport):
        return False
    noop_after = connection.setting("noop_after_idle")
    if noop_after and idle > noop_after:
        sock = getattr(transport, "sock", None)
        timeout = sock.gettimeout() if sock is not None else None
        if sock is not None:
            sock.settimeout(connection.setting("connect_timeout"))
        try:
            code, _ = transport.noop()
        except (smtplib.SMTPException, OSError):
            return False
        finally:
            if getattr(transport, "sock", None) is not None:
                transport.sock.settimeout(timeout)
        return code == 250
    return None
