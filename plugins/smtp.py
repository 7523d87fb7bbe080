"""Built-in plugin ``smtp``: open connections with the standard library's client.

It runs last (``trylast``), so any plugin that supplies its own transport
(a pipelining client, relays with failover) is asked first.
"""

from mailman_mta import hookimpl
from mailman_mta.transport import SMTPTransport


@hookimpl(trylast=True)
def mta_create_transport(connection):
    transport = SMTPTransport()
    transport.set_debuglevel(1 if connection.debug else 0)
    transport.connect(connection.host, connection.port)
    return transport
