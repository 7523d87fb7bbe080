"""Built-in plugin ``smtp``: open connections to the configured relay.

Connects to the connection's host and port with its timeouts, and secures
the connection as ``secure_mode`` says: not at all (``smtp``), TLS from the
start (``smtps``), or STARTTLS before anything else is said (``starttls``),
never falling back to plaintext (`mailman_mta.smtp.transport.connect`).  It
runs last (``trylast``), so a plugin that supplies its own transport or
picks another relay (``relays``) is asked first.
"""

from mailman_mta import hookimpl
from mailman_mta.smtp.transport import connect


@hookimpl(trylast=True)
def mta_create_transport(connection):
    return connect(connection)
